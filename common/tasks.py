"""Label construction for the two tasks.

``single``
    The 16 top-level genres of :data:`common.metadata.TOP_GENRES`, in leaderboard order;
    one-hot targets, softmax output, categorical cross-entropy. Tracks without a
    ``('track', 'genre_top')`` are left out, unless the experiment asks for their soft
    targets (``task.multi_root: soft``, :meth:`Task.root_targets`): in FMA they are the
    tracks whose ``genres_all`` spans several roots, about half of ``fma_large``.
``multi``
    Every genre id of ``('track', 'genres_all')`` that at least ``min_tracks`` training
    tracks carry, in genre-id order, named by the genre's title; 0/1 targets, sigmoid
    output, binary cross-entropy. Tracks with none of these genres are left out.

A :class:`Task` is saved with every run as ``classes.json`` so that predictions can be
read back with the right column order.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from common.errors import ConfigError, MetadataError
from common.metadata import TOP_GENRE_IDS, TOP_GENRES

#: The task names, the one list of them (config validation, metrics and labels read it).
TaskName = Literal["single", "multi"]
TASKS: tuple[str, ...] = typing.get_args(TaskName)

#: What a ``single`` experiment does with the tracks without a ``genre_top`` (``task.multi_root``):
#: ``none`` leaves them out; ``soft`` trains on them with :meth:`Task.root_targets`.
MultiRoot = Literal["none", "soft"]

#: The auxiliary head of a ``single`` experiment (``task.auxiliary``): ``none``, or ``genres_all``,
#: a sigmoid head over the classes of the ``multi`` task (:func:`build_task`), trained beside the
#: 16-way head with ``task.auxiliary_weight`` in the loss (:func:`common.training.train_fold`).
Auxiliary = Literal["none", "genres_all"]

#: A multi-task run's auxiliary classes, saved beside ``classes.json`` (:meth:`Task.save`).
AUXILIARY_CLASSES = "auxiliary_classes.json"


@dataclasses.dataclass(frozen=True)
class Task:
    """Classes of one task and how to turn metadata into targets.

    Attributes
    ----------
    name : {"single", "multi"}
    class_names : tuple of str
        Output column order.
    genre_ids : tuple of int
        FMA ``genre_id`` of each class.
    """

    name: str
    class_names: tuple[str, ...]
    genre_ids: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def activation(self) -> str:
        return "softmax" if self.name == "single" else "sigmoid"

    @property
    def loss(self) -> str:
        return "categorical_crossentropy" if self.name == "single" else "binary_crossentropy"

    def targets(self, tracks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Targets of the tracks that have at least one class of this task.

        Parameters
        ----------
        tracks : pd.DataFrame
            FMA tracks table (index ``track_id``, two-level columns).

        Returns
        -------
        track_ids : np.ndarray, shape (n,), int64
            The labelled tracks, in the order of ``tracks``.
        y : np.ndarray, shape (n, n_classes), float32
            One-hot (``single``) or 0/1 multi-hot (``multi``) targets.
        """
        if self.name == "single":
            top = tracks[("track", "genre_top")]
            index = {name: i for i, name in enumerate(self.class_names)}
            codes = np.array([index.get(g, -1) if isinstance(g, str) else -1 for g in top], dtype=np.int64)
            keep = codes >= 0
            y = np.eye(self.n_classes, dtype=np.float32)[codes[keep]]
            return tracks.index.to_numpy(np.int64)[keep], y
        y = self.genres_all_hot(tracks)
        tagged = y.any(axis=1)
        return tracks.index.to_numpy(np.int64)[tagged], y[tagged]

    def genres_all_hot(self, tracks: pd.DataFrame) -> np.ndarray:
        """``(n_tracks, n_classes)`` float32: 1 where the class's genre id is in the track's ``genres_all``.

        The targets of the auxiliary head (``task.auxiliary: genres_all``) too: there a track
        with none of the classes keeps its row of zeros.
        """
        column = {gid: i for i, gid in enumerate(self.genre_ids)}
        y = np.zeros((len(tracks), self.n_classes), dtype=np.float32)
        for row, genres in enumerate(tracks[("track", "genres_all")]):
            for gid in genres:
                if gid in column:
                    y[row, column[gid]] = 1.0
        return y

    def root_targets(self, tracks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Soft targets of the tracks without a ``genre_top``: uniform over the roots of their ``genres_all``.

        A track without a ``('track', 'genre_top')`` whose ``('track', 'genres_all')`` holds
        ``k >= 1`` of this task's top-level genre ids gets ``1 / k`` on each of them and 0
        elsewhere (FMA leaves ``genre_top`` empty when a track's genres span several roots,
        so ``k`` is 2 or more there). Tracks without any root are left out.

        Parameters
        ----------
        tracks : pd.DataFrame
            FMA tracks table (index ``track_id``, two-level columns).

        Returns
        -------
        track_ids : np.ndarray, shape (m,), int64
            The tracks without a ``genre_top`` that have a root, in the order of ``tracks``.
        y : np.ndarray, shape (m, n_classes), float32
            Rows summing to 1.

        Raises
        ------
        ConfigError
            The task is not ``single`` (the ``multi`` task already uses these tracks).
        """
        if self.name != "single":
            raise ConfigError(f"task.multi_root: soft targets over the top-level genres are for task 'single', "
                              f"not {self.name!r}")
        y = self.genres_all_hot(tracks)
        roots = y.sum(axis=1)
        keep = tracks[("track", "genre_top")].isna().to_numpy() & (roots > 0)
        return tracks.index.to_numpy(np.int64)[keep], y[keep] / roots[keep, None]

    def target_strings(self, y: np.ndarray) -> list[str]:
        """Human-readable targets: the class name (``single``) or names joined by ``'|'``."""
        names = np.asarray(self.class_names, dtype=object)
        if self.name == "single":
            return list(names[np.argmax(y, axis=1)])
        return ["|".join(names[row > 0.5]) for row in y]

    def score_targets(self, y: np.ndarray) -> np.ndarray:
        """Targets as :func:`common.metrics.score` takes them: indices (single) or 0/1 (multi)."""
        return np.argmax(y, axis=1).astype(np.int64) if self.name == "single" else (y > 0.5).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.name, "class_names": list(self.class_names), "genre_ids": list(self.genre_ids)}

    def save(self, path: str | Path) -> None:
        """Write ``classes.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Task:
        """Read a ``classes.json`` written by :meth:`save`."""
        values = json.loads(Path(path).read_text())
        return cls(name=values["task"], class_names=tuple(values["class_names"]),
                   genre_ids=tuple(int(g) for g in values["genre_ids"]))


def build_task(name: str, *, tracks: pd.DataFrame, genres: pd.DataFrame,
               train_ids: Iterable[int], min_tracks: int = 20) -> Task:
    """The classes of a task.

    Parameters
    ----------
    name : {"single", "multi"}
    tracks : pd.DataFrame
        FMA tracks table (index ``track_id``).
    genres : pd.DataFrame
        FMA genres table (index ``genre_id``, column ``title``).
    train_ids : iterable of int
        Training tracks (the folds' tracks); ``multi`` counts genres over these only.
    min_tracks : int
        ``multi``: minimum number of training tracks per kept genre.

    Raises
    ------
    ConfigError
        Unknown task name, or no genre reaches ``min_tracks``.
    MetadataError
        A kept genre id is missing from the genres table.
    """
    if name not in TASKS:
        raise ConfigError(f"task.name: unknown task {name!r} (known: {list(TASKS)})")
    if name == "single":
        return Task(name="single", class_names=TOP_GENRES, genre_ids=tuple(TOP_GENRE_IDS[g] for g in TOP_GENRES))
    train = tracks.loc[tracks.index.isin(list(train_ids)), ("track", "genres_all")]
    counts = pd.Series([gid for genres_ in train.to_numpy() for gid in genres_], dtype=np.int64).value_counts()
    kept = sorted(int(g) for g in counts.index[counts >= min_tracks])
    if not kept:
        raise ConfigError(f"task.min_tracks: no genre has {min_tracks} training tracks "
                          f"(most: {int(counts.max()) if len(counts) else 0})")
    missing = [g for g in kept if g not in genres.index]
    if missing:
        raise MetadataError(f"genres table: genre ids {missing[:5]} used in genres_all are missing")
    titles = tuple(str(genres.loc[g, "title"]) for g in kept)
    if len(set(titles)) != len(titles):
        titles = tuple(f"{t} ({g})" if titles.count(t) > 1 else t for t, g in zip(titles, kept))
    return Task(name="multi", class_names=titles, genre_ids=tuple(kept))
