"""Pseudo-labels: soft targets of unlabelled clips predicted by trained models, with their provenance.

``fma-pseudo`` (:mod:`crowdai.pseudo`) writes them; an experiment trains on them with
``data: {pseudo_labels: {path: FILE, weight: W}}`` (:mod:`experiments.experiment`).

The file
    ``FILE.csv``: ``id`` (the clip's file stem in the unlabelled folder), one probability
    column per class (the 16 ``TOP_GENRES``, in leaderboard order) and ``confidence`` (the
    largest of them). Beside it ``FILE.json`` (:func:`common.io.sidecar_path`): ``format``,
    ``class_names``, ``source`` (the unlabelled folder, absolute) and ``source_name`` (its
    feature-cache source, :func:`common.features.cache_dir_for`), ``threshold``, ``rows``
    (how many clips were predicted, kept and dropped, and why), ``experiments`` (each fold
    model with the sha256 its fold summary records), ``blend`` (file and sha256, or null) and
    ``mean``.
    ``FILE.folds.csv`` (:func:`fold_labels_path`), written when the folds file is known:
    ``id, fold`` and the 16 probabilities that fold ``fold``'s models alone gave each clip
    (their blend or mean over the experiments, as in ``FILE.csv``), and the sidecar's
    ``folds_checksum`` (:func:`common.folds.assignment_checksum`). With ``pseudo_labels:
    {per_fold: true}`` fold ``k`` of an experiment on the same folds trains on the labels of
    fold ``k``'s models, which never saw fold ``k``'s validation tracks, so its CV stays
    honest; the ensemble's labels in ``FILE.csv`` come from models that did.

Leakage
    A clip whose id is an FMA track id (all digits: ``000123`` is track 123) of the folds
    file (every fold track is in one fold's validation set) or of the test split never
    trains: :func:`leaking_ids` finds them; ``fma-pseudo`` drops them when given the
    metadata and folds, and an experiment refuses a file that holds any.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import ConfigError
from common.io import sidecar_path, write_text_atomic

#: Version of the pseudo-label file (its sidecar's ``"format"``).
PSEUDO_FORMAT = 1
#: Column of each row's largest probability.
CONFIDENCE = "confidence"
#: Prefix of the pseudo-labelled clips' ids in an experiment's store (never an FMA id).
PSEUDO_PREFIX = "pseudo:"
#: Largest deviation of a row's sum from 1 that a file may hold (it is written with 6 decimals).
ROW_SUM_TOLERANCE = 1e-3
#: Why a clip is refused, by the set its track belongs to (:func:`leaking_ids`).
LEAK_REASONS = ("a fold's validation set", "the test split")


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """A pseudo-label file read back.

    Attributes
    ----------
    path : Path
        The CSV.
    ids : list of str
        Clip ids (file stems of the unlabelled folder), in file order.
    probs : np.ndarray, shape (n, n_classes), float32
        Soft targets; rows sum to 1.
    record : dict
        The sidecar (provenance).
    fold_probs : dict of int to np.ndarray, shape (n, n_classes) float32 each, or None
        The labels of each fold's models (``FILE.folds.csv``), rows in ``ids`` order; None
        when the file has none.
    """

    path: Path
    ids: list[str]
    probs: np.ndarray
    record: dict[str, Any]
    fold_probs: dict[int, np.ndarray] | None = None

    @property
    def source_name(self) -> str:
        """Source name of the unlabelled folder's feature cache (the folder's name)."""
        return str(self.record["source_name"])


def fold_labels_path(path: str | Path) -> Path:
    """``FILE.folds.csv`` beside the pseudo-label file ``FILE.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.folds.csv")


def confidence_of(probs: np.ndarray) -> np.ndarray:
    """Each row's largest probability: shape ``(n,)`` of ``probs`` ``(n, C)``."""
    return np.asarray(probs).max(axis=1)


def fma_track_id(file_id: str) -> int | None:
    """The FMA track id a clip id names (``"000123"`` -> 123), or None (a crowdAI uuid, any other name)."""
    return int(file_id) if file_id.isascii() and file_id.isdigit() else None


def leaking_ids(ids: Sequence[str], *, fold_track_ids: Collection[int],
                test_track_ids: Collection[int]) -> dict[str, list[str]]:
    """The clip ids that must never train, by reason (:data:`LEAK_REASONS`).

    Parameters
    ----------
    ids : sequence of str
        Clip ids, shape (n,).
    fold_track_ids : collection of int
        Every track of the folds file (each is in the validation set of its fold).
    test_track_ids : collection of int
        Every track of the metadata's test split.

    Returns
    -------
    dict of str to list of str
        ``{reason: ids}`` for both reasons (a track in both is counted under the first).
    """
    fold_set, test_set = set(fold_track_ids), set(test_track_ids)
    leaks: dict[str, list[str]] = {reason: [] for reason in LEAK_REASONS}
    for file_id in ids:
        track = fma_track_id(file_id)
        if track in fold_set:
            leaks[LEAK_REASONS[0]].append(file_id)
        elif track in test_set:
            leaks[LEAK_REASONS[1]].append(file_id)
    return leaks


def describe_leaks(leaks: dict[str, list[str]]) -> str:
    """``"3 clips are tracks of a fold's validation set (e.g. [...]), 1 clip is a track of the test split (...)"``;
    ``""`` when ``leaks`` (:func:`leaking_ids`) holds none."""
    return ", ".join(f"{len(found)} {'clips are tracks' if len(found) > 1 else 'clip is a track'} of {reason} "
                     f"(e.g. {found[:3]})" for reason, found in leaks.items() if found)


def split_track_ids(tracks: pd.DataFrame, *, split: str = "test") -> list[int]:
    """Track ids of ``split`` in an FMA tracks table (:func:`common.metadata.load_tracks`, any subset)."""
    return tracks.index[tracks[("set", "split")] == split].tolist()


def find_leaks(ids: Sequence[str], *, metadata_dir: str | Path, folds: pd.DataFrame) -> dict[str, list[str]]:
    """:func:`leaking_ids` against a folds file (:func:`common.folds.read_folds`) and the test split of
    ``metadata_dir/tracks.csv`` (every subset: a larger subset's test tracks never train either)."""
    from common.metadata import load_tracks

    tracks = load_tracks(Path(metadata_dir) / "tracks.csv")
    return leaking_ids(ids, fold_track_ids=folds.index, test_track_ids=split_track_ids(tracks))


def write_pseudo_labels(path: str | Path, *, ids: Sequence[str], probs: np.ndarray, class_names: Sequence[str],
                        record: dict[str, Any], fold_probs: dict[int, np.ndarray] | None = None) -> Path:
    """Write the CSV, its fold labels when given, and its sidecar (``record`` plus ``format``,
    ``class_names`` and ``fold_labels``), never overwriting.

    Parameters
    ----------
    path : path-like
        The CSV (its sidecar is the same name with ``.json``).
    ids : sequence of str, shape (n,)
    probs : np.ndarray, shape (n, len(class_names))
    class_names : sequence of str
    record : dict
        Provenance: at least ``source`` and ``source_name`` (and ``folds_checksum`` with ``fold_probs``).
    fold_probs : dict of int to np.ndarray, shape (n, len(class_names)) each, optional
        The labels of each fold's models, rows in ``ids`` order (``FILE.folds.csv``).

    Returns
    -------
    Path
        The CSV.

    Raises
    ------
    OutputExistsError
        The CSV, its fold labels or its sidecar exists.
    """
    path = Path(path)
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(class_names))
    frame.insert(0, "id", list(ids))
    frame[CONFIDENCE] = confidence_of(probs)
    document = {"format": PSEUDO_FORMAT, "class_names": list(class_names), **record,
                "fold_labels": None if fold_probs is None else fold_labels_path(path).name}
    write_text_atomic(sidecar_path(path), json.dumps(document, indent=2) + "\n")
    if fold_probs is not None:
        folds = pd.concat([pd.DataFrame({"id": list(ids), "fold": fold}).join(
            pd.DataFrame(np.asarray(fold_probs[fold], dtype=np.float64), columns=list(class_names)))
            for fold in sorted(fold_probs)])
        write_text_atomic(fold_labels_path(path), folds.to_csv(index=False, float_format="%.6f"))
    return write_text_atomic(path, frame.to_csv(index=False, float_format="%.6f"))


def read_pseudo_labels(path: str | Path, *, class_names: Sequence[str]) -> PseudoLabels:
    """Read a pseudo-label file for a task over ``class_names``.

    Raises
    ------
    ConfigError
        Missing CSV or sidecar, another format, other classes, or probabilities that are not
        finite, negative, or rows that do not sum to 1 (naming the file).
    """
    path = Path(path)
    meta = sidecar_path(path)
    hint = "write it with `make pseudo` (python -m crowdai.pseudo)"
    if not path.is_file() or not meta.is_file():
        raise ConfigError(f"{path if not path.is_file() else meta}: no such pseudo-label file; {hint}")
    try:
        record = json.loads(meta.read_text())
        frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise ConfigError(f"{path}: not a pseudo-label file ({error}); {hint}") from error
    if not isinstance(record, dict) or record.get("format") != PSEUDO_FORMAT:
        raise ConfigError(f"{meta}: not a pseudo-label sidecar of format {PSEUDO_FORMAT}; {hint}")
    expected = ["id", *class_names, CONFIDENCE]
    if list(frame.columns) != expected or record.get("class_names") != list(class_names):
        raise ConfigError(f"{path}: columns {list(frame.columns)[:4]}... differ from the task's "
                          f"id + {len(class_names)} classes + {CONFIDENCE}; {hint}")
    probs = _probabilities(frame, class_names=class_names, path=path)
    if frame["id"].duplicated().any():
        raise ConfigError(f"{path}: repeated ids {frame['id'][frame['id'].duplicated()].tolist()[:3]}")
    ids = frame["id"].tolist()
    fold_probs = None if not record.get("fold_labels") else _read_fold_labels(path, ids=ids, class_names=class_names)
    return PseudoLabels(path=path, ids=ids, probs=probs, record=record, fold_probs=fold_probs)


def _probabilities(frame: pd.DataFrame, *, class_names: Sequence[str], path: Path) -> np.ndarray:
    """The class columns of ``frame`` as float32 rows that sum to 1, shape ``(len(frame), len(class_names))``.

    Raises
    ------
    ConfigError
        Values that are not finite, negative, or rows that do not sum to 1 (naming ``path``).
    """
    probs = frame[list(class_names)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    sums = probs.sum(axis=1)
    if not np.isfinite(probs).all() or (probs < 0).any() or (np.abs(sums - 1) > ROW_SUM_TOLERANCE).any():
        raise ConfigError(f"{path}: every row must hold probabilities that sum to 1")
    return (probs / sums[:, None]).astype(np.float32)


def _read_fold_labels(path: Path, *, ids: list[str], class_names: Sequence[str]) -> dict[int, np.ndarray]:
    """``FILE.folds.csv``: each fold's labels of ``ids``, in that order.

    Raises
    ------
    ConfigError
        Missing or malformed file, or a fold that does not label exactly ``ids``.
    """
    folds_path = fold_labels_path(path)
    if not folds_path.is_file():
        raise ConfigError(f"{folds_path}: missing; its sidecar {sidecar_path(path)} names it; "
                          "write the pseudo-labels again with `make pseudo`")
    try:
        frame = pd.read_csv(folds_path, dtype={"id": str, "fold": np.int64}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise ConfigError(f"{folds_path}: not a fold-label file ({error})") from error
    if list(frame.columns) != ["id", "fold", *class_names]:
        raise ConfigError(f"{folds_path}: expected columns id, fold and the {len(class_names)} classes")
    fold_probs = {}
    for fold in sorted(frame["fold"].unique()):
        rows = frame[frame["fold"] == fold]
        if rows["id"].tolist() != ids:
            raise ConfigError(f"{folds_path}: fold {fold} does not label the clips of {path} in their order")
        fold_probs[int(fold)] = _probabilities(rows, class_names=class_names, path=folds_path)
    return fold_probs


class JoinedCache:
    """Two feature caches of the same settings under one id space, as :class:`common.store.ClipStore` reads them.

    An id that starts with :data:`PSEUDO_PREFIX` is read from ``pseudo`` (without the prefix),
    every other id from ``main``.

    Parameters
    ----------
    main, pseudo : common.features.FeatureCache
    """

    def __init__(self, main, pseudo) -> None:
        self.main, self.pseudo = main, pseudo
        self.settings = main.settings

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Features of ``ids`` in the order given: shape ``(len(ids), *settings.clip_shape)``, float16."""
        return self._joined(ids, lambda cache, some: cache.get(some))

    def audio_samples(self, ids: Sequence[str]) -> np.ndarray:
        """Audio samples of ``ids`` in the given order (``FeatureCache.audio_samples``), shape ``(len(ids),)``."""
        return self._joined(ids, lambda cache, some: cache.audio_samples(some))

    def _joined(self, ids: Sequence[str], read) -> np.ndarray:
        """``read(cache, ids)`` of each cache for its ids, reassembled in the order of ``ids``."""
        ids = [str(i) for i in ids]
        mine = np.array([i.startswith(PSEUDO_PREFIX) for i in ids], dtype=bool)
        parts = [(~mine, self.main, [i for i, m in zip(ids, mine) if not m]),
                 (mine, self.pseudo, [i[len(PSEUDO_PREFIX):] for i, m in zip(ids, mine) if m])]
        values = [(rows, read(cache, some)) for rows, cache, some in parts if some]
        out = np.empty((len(ids), *values[0][1].shape[1:]), dtype=values[0][1].dtype) if values else np.empty(0)
        for rows, value in values:
            out[rows] = value
        return out
