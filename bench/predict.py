"""Submission throughput of a K-fold ensemble: feature time vs model time.

    python -m bench.predict --out bench/predict.json [--clips 48 --folds 1,3 --config experiments/configs/crnn.yaml]

The product's run-time model (:func:`crowdai.timing.time_test_folder`, which
``crowdai.package`` uses for its estimate) times ``--clips`` generated 30-s mp3s through
K *untrained* fold models of the real architecture of ``--config`` (default the reference
CRNN, 96 x 1366 log-mels) for each K, with a fresh feature cache: wall time, feature
seconds and model seconds.

Features are computed once and shared by every fold model, so the cost should grow as
``F + K * M`` (F: features, M: one fold model over the folder), not ``K * (F + M)``
(re-extracting per model, as a per-model predict script would). The JSON holds the
measured times, the least-squares fit of ``T(K) = F + K * M``, the naive
``K * (F + M)`` for comparison, and from the measured means the predicted hours of a 5-fold
ensemble over fma_medium, fma_large and the round-1 test set on this machine.

For each K the same cached features also go through the *per-clip* path: each clip's
chunks as their own batch through every fold model (one traced function with a free
batch dimension, so no retracing either), against the toolkit's batched path
(:func:`common.inference.predict_clips`: chunks of many clips in fixed-size batches).
``per_clip_model_seconds`` and ``batched_speedup`` report it, and ``max_abs_difference``
checks both give the same probabilities.

GPU check (one command, on a machine with a GPU)::

    python -m bench.predict --config experiments/configs/shortchunk.yaml --clips 256 --folds 1,5
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from common.cli import command
from common.io import write_text_atomic
from crowdai.timing import time_test_folder

#: Clips of the sets the README predicts hours for.
PREDICTED_SETS: dict[str, int] = {"fma_medium": 25_000, "fma_large": 106_574, "crowdai_round1_test": 35_000}
#: Ensemble size of those predictions.
PREDICTED_FOLDS = 5

T = TypeVar("T")


def _timed(function: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process, all threads) of ``function()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def per_clip_probs(ensemble, store) -> np.ndarray:
    """The per-clip path: each clip's chunks as one batch through every fold model (traced once);
    a short clip's chunks keep to its audio (``store.valid_lengths``), as in the batched path."""
    from common.inference import eval_starts, forward_function

    data = ensemble.config.data
    crop, hop = ensemble.crop_frames, data.chunk_hop_frames(ensemble.settings)
    forward = forward_function(tuple(ensemble.models))
    rows = []
    for index in range(len(store)):
        clip = np.asarray(store[index:index + 1], dtype=np.float32)[0]
        if store.valid_lengths is not None:
            clip = clip[..., :max(int(store.valid_lengths[index]), crop)]
        starts = eval_starts(clip.shape[-1], crop_frames=crop, eval=data.eval, chunk_hop_frames=hop)
        chunks = np.stack([clip[..., s:s + crop] for s in starts])
        rows.append(forward(chunks).mean(axis=(0, 1)))
    return np.array(rows)


def compare_paths(ensemble, store, *, rounds: int) -> dict:
    """Model seconds (wall and CPU) of the batched and per-clip paths, ``rounds`` alternating rounds, medians."""
    per_clip_probs(ensemble, store.subset(np.arange(1)))  # trace the per-clip function, untimed
    batched, per_clip = [], []
    for _ in range(rounds):
        batched_probs, *batched_times = _timed(lambda: ensemble.predict(store))
        per_clip_result, *per_clip_times = _timed(lambda: per_clip_probs(ensemble, store))
        batched.append(batched_times)
        per_clip.append(per_clip_times)
    batched_wall, batched_cpu = np.median(batched, axis=0)
    per_clip_wall, per_clip_cpu = np.median(per_clip, axis=0)
    return {"batched_model_seconds": round(float(batched_wall), 3),
            "batched_model_cpu_seconds": round(float(batched_cpu), 3),
            "per_clip_model_seconds": round(float(per_clip_wall), 3),
            "per_clip_model_cpu_seconds": round(float(per_clip_cpu), 3),
            "batched_speedup": round(float(per_clip_wall / batched_wall), 2),
            "batched_cpu_speedup": round(float(per_clip_cpu / batched_cpu), 2),
            "max_abs_difference": float(np.abs(per_clip_result - batched_probs).max())}


def predicted_hours(*, feature_seconds_per_clip: float, model_seconds_per_clip_and_fold: float) -> dict[str, float]:
    """Hours of :data:`PREDICTED_FOLDS`-fold prediction over each of :data:`PREDICTED_SETS`."""
    per_clip = feature_seconds_per_clip + PREDICTED_FOLDS * model_seconds_per_clip_and_fold
    return {name: round(n * per_clip / 3600, 2) for name, n in PREDICTED_SETS.items()}


def run(*, n_clips: int, seconds: float, folds: list[int], config_path: Path, jobs: int, rounds: int = 3) -> dict:
    """:func:`crowdai.timing.time_test_folder`, each K's cached features also through both model paths."""
    from common.features import FeatureCache
    from common.store import ClipStore

    def compare(ensemble, predictions, row: dict) -> dict:
        store = ClipStore(FeatureCache.open(predictions.cache_dirs[0]), predictions.ids)
        paths = compare_paths(ensemble, store, rounds=rounds)
        print(f"K={row['folds']}: {row['seconds']:.1f} s (features {row['feature_seconds']:.1f} s, models "
              f"{row['model_seconds']:.1f} s), {row['clips_per_s']:.1f} clips/s; models batched "
              f"{paths['batched_model_seconds']:.1f} s, per clip {paths['per_clip_model_seconds']:.1f} s "
              f"(speed-up {paths['batched_speedup']:.2f}, CPU time {paths['batched_cpu_speedup']:.2f})", flush=True)
        return paths

    timing = time_test_folder(n_clips=n_clips, seconds=seconds, folds=folds, config_path=config_path, jobs=jobs,
                              after_each=compare)
    rows, means = timing["runs"], timing["measured_means"]
    feature_mean, model_mean = means["feature_seconds"], means["model_seconds_per_fold"]
    # hours from the measured means (the fit's intercept and slope swing with a noisy machine)
    feature_per_clip, model_per_clip = feature_mean / n_clips, model_mean / n_clips
    return {
        "device": timing["device"], "config": str(config_path), "models": "untrained, real architecture of the config",
        "clips": n_clips, "clip_seconds": seconds, "jobs": jobs, "load_average": timing["load_average"],
        "runs": rows, "fit": timing["fit"], "measured_means": means,
        "naive_K_times_features_plus_model": {str(r["folds"]): round(r["folds"] * (feature_mean + model_mean), 3)
                                              for r in rows},
        "batched_speedup": float(np.median([r["batched_speedup"] for r in rows])),
        "batched_cpu_speedup": float(np.median([r["batched_cpu_speedup"] for r in rows])),
        "predicted_hours": {"folds": PREDICTED_FOLDS, "clips": PREDICTED_SETS,
                            **predicted_hours(feature_seconds_per_clip=feature_per_clip,
                                              model_seconds_per_clip_and_fold=model_per_clip)},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/predict.json"), help="JSON to write (replaced)")
    parser.add_argument("--clips", type=int, default=48, help="mp3s in the generated test folder")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each mp3")
    parser.add_argument("--folds", default="1,3", help="ensemble sizes K to measure, comma-separated")
    parser.add_argument("--config", type=Path, default=Path("experiments/configs/crnn.yaml"),
                        help="experiment whose architecture and features are measured")
    parser.add_argument("--jobs", type=int, default=-1, help="feature extraction workers")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of the batched and per-clip model paths (medians)")
    return parser


@command("python -m bench.predict")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folds = sorted({int(k) for k in args.folds.split(",")})
    result = run(n_clips=args.clips, seconds=args.seconds, folds=folds, config_path=args.config, jobs=args.jobs,
                 rounds=args.rounds)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n", overwrite=True)
    fit = result["fit"]
    hours = result["predicted_hours"]
    print(f"predict: T(K) = {fit['F_seconds']:.1f} s + K x {fit['M_seconds_per_fold']:.1f} s for {args.clips} clips; "
          f"naive K x (F + M): {result['naive_K_times_features_plus_model']}; batched / per-clip speed-up "
          f"{result['batched_speedup']:.2f}; {hours['folds']}-fold hours: "
          + ", ".join(f"{name} {hours[name]:.2f} h" for name in PREDICTED_SETS) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
