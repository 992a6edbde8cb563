"""Out-of-fold predictions of the zero-shot musicnn tagger, so that it joins a blend (``make zero-shot-oof``).

Usage::

    python -m crowdai.zero_shot_oof --data data --subset medium --folds data/folds-medium-k5.csv --runs runs \\
        [--weights models/musicnn] [--name musicnn] [--smoothing W] [--overwrite]

The tagger never trained on FMA, so its predictions on the training tracks are out of fold as
they stand. Every track of the folds file (:func:`common.folds.read_folds`) that has a top genre
is predicted from ``DATA/fma_SUBSET`` by :func:`crowdai.zero_shot_submit.predict_zero_shot_files`:
the decoding, scoring and smoothing of the zero-shot submission, toward the same prior (the
subset's genre frequencies from ``DATA/fma_metadata/tracks.csv``,
:func:`crowdai.zero_shot_submit.submission_prior`) with the same weight
(:data:`common.zero_shot.PRIOR_WEIGHT`, or ``--smoothing``). The prior counts the whole subset,
as the submission's does: sixteen frequencies shared by every row, no track's own label (a
trained fold learns the same frequencies from its training folds). Writes, into ``RUNS/<name>/``
(default name ``musicnn``):

``oof.csv``
    ``id, fold, target``, then the 16 genres: the columns of a trained experiment's out-of-fold
    file, so ``make blend EXP=musicnn,crnn`` fits temperatures and pool weights on it like on
    any other (:mod:`crowdai.blend` copies the record below into ``blend.json``);
``zero_shot.json`` (:data:`RECORD_FILE`), written last
    the rule (:func:`crowdai.zero_shot_submit.zero_shot_record`: fusion, smoothing, speech
    detector), the prior's probabilities in full precision and its weight, the weights folder
    with the sha256 of every checkpoint file, the data folder, subset and folds file (sha256),
    the rows, the fallbacks and the size and sha256 of ``oof.csv``.

``make submit BLEND=<name>`` predicts the test folder with the recorded prior and weight
(:func:`crowdai.zero_shot_submit.predict_zero_shot`, the zero-shot submission's code) after
checking that the weights are the recorded ones. A folder holding trained folds is never
written into, and existing files are replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.cli import command
from common.errors import OutputExistsError, ToolkitError
from common.io import file_sha256, write_text_atomic
from common.metadata import SUBSETS
from common.pretrained import DEFAULT_WEIGHTS_DIR
from crowdai.zero_shot_submit import (
    ZERO_SHOT_EXP,
    SubmissionPrior,
    ZeroShotPredictions,
    predict_zero_shot_files,
    submission_prior,
    zero_shot_record,
)

#: The record beside a zero-shot ``oof.csv``; its presence makes an experiment folder zero-shot.
RECORD_FILE = "zero_shot.json"


def refit_command(name: str, *, overwrite: bool = False) -> str:
    """The ``make zero-shot-oof`` command that writes the zero-shot out-of-fold file of ``name`` (again)."""
    options = ([] if name == ZERO_SHOT_EXP else [f"--name {name}"]) + (["--overwrite"] if overwrite else [])
    extra = f' ZERO_SHOT_ARGS="{" ".join(options)}"' if options else ""
    return f"make zero-shot-oof DATA=<data> SUBSET=<subset>{extra}"


def fold_track_files(*, data_dir: str | Path, subset: str, folds_path: str | Path) -> pd.DataFrame:
    """The tracks of the folds file that have a top genre, with their fold and audio file.

    Parameters
    ----------
    data_dir : path-like
        Folder of ``fma_metadata/`` and ``fma_<subset>/``.
    subset : str
    folds_path : path-like
        Folds file of that data and subset (:func:`common.folds.read_folds` checks it).

    Returns
    -------
    pd.DataFrame
        Index ``id`` (str, sorted by track id), columns ``fold`` (int), ``target`` (str, a
        genre of ``TOP_GENRES``) and ``path`` (Path): one row per labelled fold track.

    Raises
    ------
    MetadataError
        Missing metadata or audio folder, or a folds file of other data (names the file).
    """
    from common.folds import read_folds
    from common.metadata import FmaDataset, audio_path

    dataset = FmaDataset.open(data_dir, subset)
    folds = read_folds(folds_path, tracks=dataset.tracks)
    audio_dir = dataset.require_audio_dir()
    genres = dataset.top_genre_labels().reindex(folds.index)
    labelled = folds.index[genres.notna().to_numpy()].sort_values()
    return pd.DataFrame({"fold": folds.loc[labelled, "fold"].to_numpy(np.int64),
                         "target": genres.loc[labelled].astype(str).to_numpy(),
                         "path": [audio_path(audio_dir, int(tid)) for tid in labelled]},
                        index=pd.Index([str(tid) for tid in labelled], name="id"))


def oof_table(tracks: pd.DataFrame, predictions: ZeroShotPredictions) -> pd.DataFrame:
    """``id, fold, target`` then one column per genre (``TOP_GENRES``): a trained experiment's ``oof.csv``.

    Parameters
    ----------
    tracks : pd.DataFrame
        :func:`fold_track_files`.
    predictions : ZeroShotPredictions
        Of ``tracks``' files, in their order: ``probs`` of shape ``(len(tracks), 16)``.
    """
    from common.metadata import TOP_GENRES

    table = pd.DataFrame({"id": tracks.index.to_numpy(), "fold": tracks["fold"].to_numpy(),
                          "target": tracks["target"].to_numpy()})
    return pd.concat([table, pd.DataFrame(predictions.probs, columns=list(TOP_GENRES))], axis=1)


def weights_checksums(weights_dir: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every musicnn checkpoint file in ``weights_dir``.

    Raises
    ------
    ToolkitError
        A checkpoint is missing (names the folder and ``make weights``).
    """
    from common.pretrained import MUSICNN_CHECKPOINTS, checkpoint_prefix, weights_present

    if not weights_present(weights_dir=weights_dir):
        raise ToolkitError(f"{weights_dir}: musicnn weights missing; fetch them with `make weights`")
    files = [path for name in MUSICNN_CHECKPOINTS
             for path in sorted(checkpoint_prefix(name, weights_dir=weights_dir).parent.iterdir())]
    return {str(path.relative_to(weights_dir)): file_sha256(path) for path in files if path.is_file()}


def predict_fold_tracks(*, data_dir: str | Path, subset: str, folds_path: str | Path,
                        weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, smoothing: float | None = None,
                        taggers=None, progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The zero-shot out-of-fold table of a folds file and its record.

    Parameters
    ----------
    data_dir, subset, folds_path
        As for :func:`fold_track_files`; ``data_dir`` also gives the prior
        (:func:`~crowdai.zero_shot_submit.submission_prior`).
    weights_dir : path-like
        musicnn weights; their checksums are recorded.
    smoothing : float, optional
        Weight of the prior (default :data:`common.zero_shot.PRIOR_WEIGHT`).
    taggers : common.zero_shot.MusicnnTaggers, optional
        Networks to reuse (default: loaded from ``weights_dir``).
    progress : bool

    Returns
    -------
    table : pd.DataFrame
        :func:`oof_table`, ``(n, 3 + 16)``.
    record : dict
        What :data:`RECORD_FILE` holds, less the ``oof.csv`` checksum.
    """
    tracks = fold_track_files(data_dir=data_dir, subset=subset, folds_path=folds_path)
    checksums = weights_checksums(weights_dir)
    predictions = predict_zero_shot_files(list(zip(tracks.index, tracks["path"])), weights_dir=weights_dir,
                                          prior=submission_prior(data_dir, subset), smoothing=smoothing,
                                          taggers=taggers, progress=progress)
    prior = predictions.prior
    record = {
        **zero_shot_record(predictions, weights_dir=weights_dir),
        "weights_sha256": checksums,
        "prior": {"probs": prior.probs.tolist(), "source": prior.source, "description": prior.description,
                  "tracks": prior.tracks},
        "weight": predictions.weight,
        "data": str(data_dir), "subset": subset,
        "folds": {"path": str(folds_path), "sha256": file_sha256(folds_path)},
        "rows": len(tracks), "fallbacks": predictions.fallbacks,
    }
    return oof_table(tracks, predictions), record


def check_output(exp_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """``[exp_dir/oof.csv, exp_dir/RECORD_FILE]``, once sure they may be written.

    Raises
    ------
    ToolkitError
        ``exp_dir`` holds trained folds (a trained experiment of that name).
    OutputExistsError
        One of them exists and ``overwrite`` is false.
    """
    from common.runs import fold_dirs

    exp_dir = Path(exp_dir)
    if fold_dirs(exp_dir):
        raise ToolkitError(f"{exp_dir}: holds trained folds; a zero-shot out-of-fold file needs a name of its own "
                           f"(--name)")
    paths = [exp_dir / "oof.csv", exp_dir / RECORD_FILE]
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(path)
    return paths


def write_zero_shot_oof(exp_dir: str | Path, table: pd.DataFrame, record: dict[str, Any], *,
                        overwrite: bool = False) -> list[Path]:
    """Write ``exp_dir/oof.csv``, then ``exp_dir/`` :data:`RECORD_FILE` with the csv's size and sha256.

    Raises
    ------
    ToolkitError, OutputExistsError
        :func:`check_output`'s (nothing is written).
    """
    from common.runs import bytes_record

    exp_dir = Path(exp_dir)
    paths = check_output(exp_dir, overwrite=overwrite)
    data = table.to_csv(index=False)
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths[0], data, overwrite=overwrite)
    record = {**record, "oof": bytes_record(data.encode())}
    write_text_atomic(paths[1], json.dumps(record, indent=2) + "\n", overwrite=overwrite)
    return paths


def read_zero_shot_record(exp_dir: str | Path) -> dict[str, Any] | None:
    """The record of a zero-shot experiment folder, checked against its ``oof.csv``; None for a trained one.

    Raises
    ------
    ToolkitError
        An unreadable record, or an ``oof.csv`` whose size or sha256 differs from the record's;
        the message names the file and the command that writes both again.
    """
    from common.runs import file_damage

    exp_dir = Path(exp_dir)
    path = exp_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        damage = file_damage(exp_dir / "oof.csv", record["oof"], hash=True)
        SubmissionPrior(**record["prior"])
        float(record["weight"])
    except (ValueError, KeyError, TypeError) as error:
        raise ToolkitError(f"{path}: not a zero-shot record ({error}); write it again with "
                           f"`{refit_command(exp_dir.name, overwrite=True)}`") from error
    if damage:
        raise ToolkitError(f"{exp_dir / 'oof.csv'}: damaged: {damage} (recorded in {path}); write it again with "
                           f"`{refit_command(exp_dir.name, overwrite=True)}`")
    return record


def recorded_prior(record: dict[str, Any]) -> SubmissionPrior:
    """The prior a zero-shot out-of-fold file was smoothed toward (full precision), from its record."""
    values = record["prior"]
    return SubmissionPrior(probs=np.asarray(values["probs"], dtype=np.float64), source=values["source"],
                           description=values["description"], tracks=int(values["tracks"]))


def check_weights(record: dict[str, Any], *, weights_dir: str | Path, name: str) -> None:
    """Refuse musicnn weights other than those a zero-shot out-of-fold file was predicted with.

    Raises
    ------
    ToolkitError
        Missing weights, or checksums that differ from ``record["weights_sha256"]`` (names both folders).
    """
    if weights_checksums(weights_dir) != record["weights_sha256"]:
        raise ToolkitError(f"{weights_dir}: musicnn weights differ from those {name!r} was predicted with "
                           f"({record['weights_dir']}); pass those with --weights, or write the out-of-fold "
                           f"file again with `{refit_command(name, overwrite=True)}` and fit the blend again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-zero-shot-oof", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of fma_metadata/ and fma_SUBSET/")
    parser.add_argument("--subset", choices=SUBSETS, required=True, help="subset of the folds file")
    parser.add_argument("--folds", type=Path, required=True, help="folds file (make folds)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--name", default=ZERO_SHOT_EXP,
                        help="experiment name to write, RUNS/<name>/ (default: %(default)s)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights folder (default: %(default)s; `make weights`)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="weight of the prior, in (0, 1) (default: 2 (1 - ROC-AUC of MSD_musicnn) = 0.240)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zero-shot oof.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@command("fma-zero-shot-oof")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exp_dir = args.runs / args.name
    check_output(exp_dir, overwrite=args.overwrite)  # before the tagger's work
    table, record = predict_fold_tracks(data_dir=args.data, subset=args.subset, folds_path=args.folds,
                                        weights_dir=args.weights, smoothing=args.smoothing,
                                        progress=not args.no_progress)
    written = write_zero_shot_oof(exp_dir, table, record, overwrite=args.overwrite)
    print(f"zero-shot oof: {len(table)} fold tracks of {args.subset} ({len(record['fallbacks'])} given the prior "
          f"or padded), prior {record['smoothing']['prior']}, weight {record['weight']:.3f}, "
          f"{record['seconds']:.1f} s -> " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
