"""K-fold assignment of FMA tracks, stratified by top genre and grouped by artist.

FMA's official split is artist-filtered: the same artist in training and validation
inflates scores. The folds here keep that property: every artist's tracks are in one
fold (scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`, shuffled
with a seed), and each fold gets about the same share of every top genre.

Which tracks get a fold: the tracks of the subset whose official split is ``training``
or ``validation``. The official ``test`` split is never in any fold; it is the held-out
set the fold ensemble is scored on. Tracks without a top genre (only the ``multi`` task
uses them) get folds too: they are stratified as one more stratum, ``"none"``, so they
spread evenly over the folds; they are grouped by artist like every other track. A track
without an artist id is its own group.

The folds file is a CSV with columns ``track_id, fold, artist_id, genre_top`` (empty
``genre_top`` for tracks without one) and a sidecar JSON (``<file>.json``) holding
``k``, ``seed``, ``subset``, ``n_tracks``, ``checksum``, the SHA-256 of the sorted
track ids, and ``csv``, the size and SHA-256 of the CSV's bytes. :func:`read_folds` refuses
a CSV of another size or hash (a copy cut short, flipped bytes: every later step reads the
folds, and hashing a folds file costs little next to any of them), and a file whose tracks
are not exactly the eligible tracks of the metadata it is used with. Files are written once:
:func:`write_folds` never replaces an existing file unless asked to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from common.errors import ConfigError, MetadataError, OutputExistsError
from common.io import sidecar_path, write_bytes_atomic, write_text_atomic
from common.runs import bytes_record, file_damage

#: Columns of the folds CSV, in order.
FOLD_COLUMNS: tuple[str, ...] = ("track_id", "fold", "artist_id", "genre_top")

#: Official splits whose tracks are assigned folds.
FOLD_SPLITS: tuple[str, ...] = ("training", "validation")

#: Stratum of the tracks without a top genre.
NO_GENRE = "none"


def eligible_tracks(tracks: pd.DataFrame) -> pd.DataFrame:
    """The tracks that get a fold: official split ``training`` or ``validation``.

    Parameters
    ----------
    tracks : pd.DataFrame
        FMA tracks table (index ``track_id``, two-level columns with ``('set', 'split')``,
        ``('artist', 'id')``, ``('track', 'genre_top')``), e.g. ``FmaDataset.open(...).tracks``.

    Returns
    -------
    pd.DataFrame
        Index ``track_id`` (sorted), columns ``artist_id`` (nullable int) and ``genre_top``
        (str, NaN when the track has none).
    """
    for column in (("set", "split"), ("artist", "id"), ("track", "genre_top")):
        if column not in tracks.columns:
            raise MetadataError(f"tracks table has no column {column}")
    selected = tracks[tracks[("set", "split")].astype(str).isin(FOLD_SPLITS)]
    genre = selected[("track", "genre_top")].astype("object")
    flat = pd.DataFrame({
        "artist_id": selected[("artist", "id")].astype("Int64").array,
        "genre_top": genre.where(genre.notna(), np.nan),
    }, index=pd.Index(selected.index.astype(np.int64), name="track_id"))
    return flat.sort_index()


def track_ids_checksum(track_ids: Iterable[int]) -> str:
    """SHA-256 (hex) of the sorted track ids, one per line."""
    text = "\n".join(str(i) for i in sorted(int(i) for i in track_ids))
    return hashlib.sha256(text.encode()).hexdigest()


def assignment_checksum(folds: pd.DataFrame) -> str:
    """SHA-256 (hex) of which fold each track is in: ``track_id,fold`` lines sorted by track id.

    Two folds files with this checksum split the same tracks the same way, whatever their path,
    seed record or column order (:func:`read_folds`'s frame, index ``track_id``).
    """
    pairs = sorted(zip(folds.index.astype(int).tolist(), folds["fold"].astype(int).tolist()))
    return hashlib.sha256("\n".join(f"{track},{fold}" for track, fold in pairs).encode()).hexdigest()


def make_folds(tracks: pd.DataFrame, *, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Assign each eligible track a fold in ``[0, k)``.

    Parameters
    ----------
    tracks : pd.DataFrame
        FMA tracks table (see :func:`eligible_tracks`).
    k : int
        Number of folds, at least 2.
    seed : int
        Seed of the shuffle, so the assignment is reproducible.

    Returns
    -------
    pd.DataFrame
        Columns :data:`FOLD_COLUMNS`, one row per eligible track, sorted by ``track_id``.
    """
    if k < 2:
        raise ConfigError(f"k: need at least 2 folds, got {k}")
    flat = eligible_tracks(tracks)
    if flat.empty:
        raise MetadataError(f"no tracks with official split in {FOLD_SPLITS}: nothing to fold")
    strata = flat["genre_top"].fillna(NO_GENRE).astype(str).to_numpy()
    # A track without an artist id is its own group (negative ids cannot clash with artists).
    groups = flat["artist_id"].fillna(pd.Series(-flat.index.to_numpy(), index=flat.index)).to_numpy(np.int64)
    n_artists = len(np.unique(groups))
    if n_artists < k:
        raise ConfigError(f"k: {k} folds need at least {k} artists, the tracks have {n_artists}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.empty(len(flat), dtype=np.int64)
    for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(flat)), strata, groups)):
        fold[held_out] = index
    return pd.DataFrame({
        "track_id": flat.index.to_numpy(), "fold": fold,
        "artist_id": flat["artist_id"].to_numpy(), "genre_top": flat["genre_top"].to_numpy(),
    })[list(FOLD_COLUMNS)]


def write_folds(path: str | Path, folds: pd.DataFrame, *, subset: str, k: int, seed: int,
                overwrite: bool = False) -> Path:
    """Write a folds CSV and its sidecar JSON.

    Parameters
    ----------
    path : path-like
        CSV to write; the sidecar goes to :func:`sidecar_path`.
    folds : pd.DataFrame
        Output of :func:`make_folds`.
    subset, k, seed
        Recorded in the sidecar.
    overwrite : bool
        Replace existing files. Without it an existing file raises :class:`ToolkitError`.

    Returns
    -------
    Path
        The CSV path.
    """
    path = Path(path)
    if not overwrite:
        for existing in (path, sidecar_path(path)):
            if existing.exists():
                raise OutputExistsError(existing)
    data = folds[list(FOLD_COLUMNS)].to_csv(index=False).encode("utf-8")
    meta = {
        "k": int(k), "seed": int(seed), "subset": subset, "n_tracks": int(len(folds)),
        "checksum": track_ids_checksum(folds["track_id"]),
        "tracks_per_fold": [int(n) for n in np.bincount(folds["fold"], minlength=k)],
        "splits": list(FOLD_SPLITS), "stratified_by": "genre_top (none for tracks without one)",
        "grouped_by": "artist_id", "csv": bytes_record(data),
    }
    write_text_atomic(sidecar_path(path), json.dumps(meta, indent=2) + "\n", overwrite=overwrite)
    write_bytes_atomic(path, data, overwrite=overwrite)
    return path


def read_folds(path: str | Path, *, tracks: pd.DataFrame) -> pd.DataFrame:
    """Read a folds file and check that it belongs to ``tracks``.

    Parameters
    ----------
    path : path-like
        Folds CSV written by :func:`write_folds` (with its sidecar JSON).
    tracks : pd.DataFrame
        The metadata the folds are used with (see :func:`eligible_tracks`).

    Returns
    -------
    pd.DataFrame
        Index ``track_id`` (int), columns ``fold`` (int), ``artist_id``, ``genre_top``.

    Raises
    ------
    MetadataError
        The file or its sidecar is missing or malformed, the CSV differs in size or SHA-256
        from what its sidecar records (damaged), or its tracks are not exactly the eligible
        tracks of ``tracks`` (other subset, other metadata). The messages name the command
        that writes the file again.
    """
    path = Path(path)
    meta_path = sidecar_path(path)
    legacy_meta_path = path.with_name(path.name + ".json")  # folds files written before 2026-12: <name>.csv.json
    if not meta_path.is_file() and legacy_meta_path.is_file():
        meta_path = legacy_meta_path
    for required in (path, meta_path):
        if not required.is_file():
            raise MetadataError(f"{required}: folds file not found; write it with `make folds` "
                                "(python -m experiments.folds)")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as error:
        raise MetadataError(f"{meta_path}: cannot read the folds file's sidecar ({error}); write both again with "
                            f"`{rewrite_command(path, {})}`") from error
    damage = file_damage(path, meta["csv"], hash=True) if "csv" in meta else None  # older files: not recorded
    if damage:
        raise MetadataError(f"{path}: damaged: {damage} (recorded in {meta_path}); write it again with "
                            f"`{rewrite_command(path, meta)}`")
    try:
        folds = pd.read_csv(path, dtype={"genre_top": "object"})
    except (ValueError, OSError) as error:
        raise MetadataError(f"{path}: cannot read folds file: {error}") from error
    if tuple(folds.columns) != FOLD_COLUMNS:
        raise MetadataError(f"{path}: columns {list(folds.columns)}, expected {list(FOLD_COLUMNS)}")
    for key in ("k", "subset", "n_tracks", "checksum"):
        if key not in meta:
            raise MetadataError(f"{meta_path}: missing field {key!r}")
    if not folds["fold"].between(0, meta["k"] - 1).all() or folds["track_id"].duplicated().any():
        raise MetadataError(f"{path}: folds outside [0, {meta['k']}) or duplicated track ids")
    if track_ids_checksum(folds["track_id"]) != meta["checksum"]:
        raise MetadataError(f"{path}: track ids do not match the checksum in {meta_path}; "
                            "the file was edited")
    expected = eligible_tracks(tracks).index
    if track_ids_checksum(expected) != meta["checksum"]:
        in_file = set(folds["track_id"].tolist())
        missing, extra = len(set(expected) - in_file), len(in_file - set(expected))
        raise MetadataError(
            f"{path}: folds made for subset {meta['subset']!r} with {meta['n_tracks']} tracks do "
            f"not match the metadata ({len(expected)} training/validation tracks; {missing} of them "
            f"not in the file, {extra} tracks of the file not in the metadata). Use the folds file of "
            f"this data and subset, or write it again for them with `{rewrite_command(path, meta)}`.")
    return folds.set_index("track_id")


def rewrite_command(path: str | Path, meta: dict) -> str:
    """The command that writes the folds file ``path`` again, with the ``subset``, ``k`` and ``seed``
    of its sidecar ``meta`` (placeholders where it lacks them)."""
    return (f"python -m experiments.folds --data DATA --subset {meta.get('subset', 'SUBSET')} "
            f"--k {meta.get('k', 'K')} --seed {meta.get('seed', 0)} --out {path} --force")


def fold_track_ids(folds: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation track ids of one fold.

    Parameters
    ----------
    folds : pd.DataFrame
        Output of :func:`read_folds` (index ``track_id``).
    fold : int

    Returns
    -------
    train_ids, val_ids : np.ndarray of int
    """
    if fold not in set(folds["fold"].tolist()):
        raise ConfigError(f"fold: {fold} is not in the folds file (folds {sorted(set(folds['fold']))})")
    held_out = (folds["fold"] == fold).to_numpy()
    return folds.index.to_numpy()[~held_out], folds.index.to_numpy()[held_out]
