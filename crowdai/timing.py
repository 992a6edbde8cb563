"""How long a submission takes: the run-time model ``T(K) = F + K * M`` of a K-fold ensemble.

Features are computed once and shared by every fold model, so predicting a test folder
should cost ``F + K * M`` (F: the features, M: one fold model over the folder), not
``K * (F + M)``. :func:`time_test_folder` measures it on this machine: a test folder of
generated 30-s 44.1-kHz stereo mp3s (FMA's format: harmonic tones over coloured noise,
encoded with lameenc), and for each ensemble size K a runs folder of K *untrained* fold
models of an experiment's real architecture (random weights cost the same as trained
ones), predicted by :func:`crowdai.submit.predict_test_folder` with a fresh feature cache.

``crowdai.package`` scales the result to the 3,000 clips of round 2 for its README;
``bench.predict`` adds the batched-against-per-clip comparison and predicted hours.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.runs import FOLD_SUMMARY, fold_dir

#: ``after_each(ensemble, predictions, row) -> dict``: more fields for the row of one K.
AfterEach = Callable[[Any, Any, dict[str, Any]], dict[str, Any]]


def device_name() -> str:
    """``"N x <GPU name>"``, or ``"cpu (<cores> cores, <processor>)"`` where TensorFlow sees no GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"{len(gpus)} x {tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')}"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def write_test_folder(directory: Path, *, n_clips: int, seconds: float, seed: int = 0) -> list[Path]:
    """``n_clips`` mp3s named ``bench-NNNN.mp3`` (44.1-kHz stereo, FMA's format)."""
    from common.demo_data import CHANNELS, SAMPLE_RATE, encode_mp3

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    paths = []
    for i in range(n_clips):
        tone = sum(np.sin(2 * np.pi * rng.uniform(80, 1000) * k * t) / k for k in range(1, 5))
        y = 0.2 * tone + 0.05 * rng.standard_normal(t.shape)
        stereo = np.repeat((y / np.abs(y).max() * 0.5)[:, None], CHANNELS, axis=1)
        path = directory / f"bench-{i:04d}.mp3"
        path.write_bytes(encode_mp3(stereo.astype(np.float32)))
        paths.append(path)
    return paths


def write_untrained_runs(runs: Path, *, config_path: Path, n_folds: int) -> str:
    """``runs/<exp>/fold_<k>/`` with untrained models of the config's architecture; returns ``<exp>``."""
    import keras
    import yaml

    from common import models
    from common.config import load_config
    from common.metadata import TOP_GENRE_IDS, TOP_GENRES
    from common.tasks import Task

    config = load_config(config_path)
    task = Task(name="single", class_names=TOP_GENRES, genre_ids=tuple(TOP_GENRE_IDS[g] for g in TOP_GENRES))
    crop = config.data.crop_frames(config.features)
    exp_dir = runs / f"{config.name}_bench_k{n_folds}"
    for fold in range(n_folds):
        keras.utils.set_random_seed(fold)
        model = models.build_model(config.model.name, input_shape=(*config.features.clip_shape[:-1], crop),
                                   n_outputs=task.n_classes, activation=task.activation, **config.model.params)
        fold_path = fold_dir(exp_dir, fold)
        fold_path.mkdir(parents=True)
        model.save(fold_path / "model.keras")
        (fold_path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        task.save(fold_path / "classes.json")
        (fold_path / FOLD_SUMMARY).write_text(json.dumps({"note": "untrained benchmark model"}) + "\n")
    return exp_dir.name


def fit_run_time(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares ``T(K) = F + K * M`` over the timed rows (``folds``, ``seconds``); one row: ``F = 0``."""
    k = np.array([row["folds"] for row in rows], dtype=float)
    t = np.array([row["seconds"] for row in rows])
    per_fold, features = np.polyfit(k, t, 1) if len(rows) > 1 else (t[0], 0.0)
    return {"formula": "T(K) = F + K * M", "F_seconds": round(float(features), 3),
            "M_seconds_per_fold": round(float(per_fold), 3)}


def time_test_folder(*, n_clips: int, seconds: float, folds: Sequence[int], config_path: Path, jobs: int,
                     after_each: AfterEach | None = None) -> dict[str, Any]:
    """Seconds to predict ``n_clips`` generated clips with K untrained fold models, for each K of ``folds``.

    Parameters
    ----------
    n_clips : int
        mp3s in the generated test folder.
    seconds : float
        Length of each mp3.
    folds : sequence of int
        Ensemble sizes K to time.
    config_path : Path
        Experiment config whose architecture and feature settings are timed.
    jobs : int
        Feature extraction workers.
    after_each : callable, optional
        ``after_each(ensemble, predictions, row)`` after each K's timed run, while its test
        folder and feature cache exist; the dict it returns joins that K's row.

    Returns
    -------
    dict
        ``device``, ``load_average`` (1, 5, 15 min, after the runs), ``runs`` (one row per K:
        ``folds``, ``seconds``, ``feature_seconds``, ``model_seconds``, ``clips_per_s``), ``fit``
        (:func:`fit_run_time`) and ``measured_means`` (``feature_seconds``,
        ``model_seconds_per_fold``: direct means, steadier than the fit on a noisy machine).
    """
    from crowdai.ensemble import load_ensemble
    from crowdai.submit import predict_test_folder

    with tempfile.TemporaryDirectory(prefix="fma-timing-") as tmp:
        root = Path(tmp)
        test_dir = root / "test"
        write_test_folder(test_dir, n_clips=n_clips, seconds=seconds)
        rows = []
        for k in folds:
            name = write_untrained_runs(root / "runs", config_path=config_path, n_folds=k)
            ensemble = load_ensemble(root / "runs", name, require_top_genres=True)
            # trace the batch shape once, untimed: as many clips as the run, so the same batch
            ensemble.predict(np.zeros((n_clips, *ensemble.settings.clip_shape), np.float32))
            start = time.perf_counter()
            predictions = predict_test_folder([ensemble], test_dir=test_dir, cache_root=root / f"cache_k{k}",
                                              n_jobs=jobs, progress=False)
            total = time.perf_counter() - start
            row = {"folds": k, "seconds": round(total, 3), "feature_seconds": round(predictions.feature_seconds, 3),
                   "model_seconds": round(predictions.model_seconds, 3), "clips_per_s": round(n_clips / total, 2)}
            if after_each is not None:
                row.update(after_each(ensemble, predictions, row))
            rows.append(row)
    feature_mean = float(np.mean([row["feature_seconds"] for row in rows]))
    model_mean = float(np.mean([row["model_seconds"] / row["folds"] for row in rows]))
    return {"device": device_name(), "load_average": list(os.getloadavg()), "runs": rows,
            "fit": fit_run_time(rows),
            "measured_means": {"feature_seconds": round(feature_mean, 3),
                               "model_seconds_per_fold": round(model_mean, 3)}}
