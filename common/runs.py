"""The fold folders of an experiment's run directory, found one way everywhere.

An experiment trains into ``runs/<exp>/fold_<k>/`` (see :mod:`common.training`), one
folder per fold ``k`` of the folds file. A fold is *finished* once its ``summary.json``
exists: training writes it last. Anything else in ``runs/<exp>`` named ``fold_*`` (a
user's ``fold_1.bak`` or ``fold_old`` copy, a file) is no fold and is skipped.

A finished fold's ``summary.json`` records the size and sha256 of its ``model.keras`` and
``oof.csv`` (``"files"``; none when the fold kept no model) and its ``"status"``
(:func:`fold_status`): ``"ok"``; ``"diverged"``, its validation log loss is not finite or
over :data:`DIVERGENCE_FACTOR` times the uniform prior's (``"prior_log_loss"``); ``"failed"``,
training stopped on a non-finite loss (``"failure"``: the epoch and the loss).
:func:`verify_fold` checks both before a fold's files are used. Summaries written before
these keys existed are read too: one with only ``"diverged": true`` is diverged, one without
``"files"`` is accepted unchecked.

Keras-free: run folders are listed by the CLIs that only read JSON and CSV.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

from common.errors import DamagedFoldError, DivergedFoldError, FailedFoldError, ToolkitError
from common.io import file_sha256

#: Written last into a fold folder: its presence marks the fold as finished.
FOLD_SUMMARY = "summary.json"

#: The files of a finished fold whose size and sha256 its summary records (``"files"``).
FOLD_CHECKED_FILES = ("model.keras", "oof.csv")

_PREFIX = "fold_"
_FOLD_NAME = re.compile(rf"{_PREFIX}(0|[1-9][0-9]*)", flags=re.ASCII)


def fold_dir(exp_dir: str | Path, fold: int) -> Path:
    """The folder of fold ``fold`` of an experiment: ``exp_dir/fold_<fold>``."""
    return Path(exp_dir) / f"{_PREFIX}{int(fold)}"


def fold_number(path: str | Path) -> int | None:
    """The fold ``k`` of a folder named ``fold_<k>`` as :func:`fold_dir` names it, else None
    (``fold_x``, ``fold_1.bak``, ``fold_01``)."""
    match = _FOLD_NAME.fullmatch(Path(path).name)
    return int(match[1]) if match else None


def is_finished(fold_path: str | Path) -> bool:
    """Whether a fold folder holds its ``summary.json`` (training wrote everything)."""
    return (Path(fold_path) / FOLD_SUMMARY).is_file()


def fold_dirs(exp_dir: str | Path) -> list[Path]:
    """Every fold folder of an experiment, finished or not, in fold order.

    Parameters
    ----------
    exp_dir : path-like
        ``runs/<exp>``; a missing folder has no folds.

    Returns
    -------
    list of Path
        The ``fold_<k>`` folders, sorted by ``k`` as a number (``fold_2`` before ``fold_10``).
        Other names (``fold_x``, ``fold_1.bak``) and files are skipped.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    folds = [path for path in exp_dir.glob(f"{_PREFIX}*") if path.is_dir() and fold_number(path) is not None]
    return sorted(folds, key=lambda path: fold_number(path) or 0)


def finished_fold_dirs(exp_dir: str | Path, *, required: bool = False) -> list[Path]:
    """The finished fold folders of an experiment (with ``summary.json``), in fold order.

    Parameters
    ----------
    exp_dir : path-like
        ``runs/<exp>``.
    required : bool
        Raise when there is none, for callers that need a trained model.

    Returns
    -------
    list of Path
        Subset of :func:`fold_dirs`.

    Raises
    ------
    ToolkitError
        ``required`` and no fold is finished.
    """
    finished = [path for path in fold_dirs(exp_dir) if is_finished(path)]
    if required and not finished:
        raise ToolkitError(f"{exp_dir}: no finished fold (fold_<k>/summary.json); train the experiment first")
    return finished


def file_record(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file, as a fold summary's ``"files"`` holds it
    (and a folds file's sidecar, a blend's ``blend.json``); checked by :func:`file_damage`."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def bytes_record(data: bytes) -> dict:
    """:func:`file_record` of a file that will hold ``data``, before it is written."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def retrain_command(fold_path: str | Path, summary: dict | None = None) -> str:
    """``make train EXP=<exp> FOLD=<k>``: the command that trains a fold again.

    ``<exp>`` is the summary's ``experiment`` (the config's name), else the folder's parent.
    """
    fold_path = Path(fold_path)
    exp = (summary or {}).get("experiment") or fold_path.parent.name
    return f"make train EXP={exp} FOLD={fold_number(fold_path)}"


#: A fold diverged when its validation log loss is not finite or over this many times the
#: uniform prior's. A weak or over-confident model (a few epochs on little data) can score a few
#: times the prior and is still a model a blend's temperature calibrates (a 1-epoch musicnn head
#: on the demo: 8.0 and 9.3 against 2.77; a 2-epoch demo fold: 2.87); a diverged one scores far
#: worse (a learning rate of 1e6: 28.9) or not at all (NaN probabilities).
DIVERGENCE_FACTOR = 5.0

#: The ``"status"`` of a fold summary: trained as asked; finished but diverged
#: (:func:`has_diverged`); stopped on a non-finite training loss.
FOLD_STATUSES = ("ok", "diverged", "failed")


def has_diverged(log_loss: float, *, prior: float) -> bool:
    """Whether a fold's validation ``log_loss`` marks it diverged against the uniform ``prior``'s."""
    return not (math.isfinite(log_loss) and log_loss <= DIVERGENCE_FACTOR * prior)


def fold_outcome(log_loss: float, *, prior: float, failed: bool) -> str:
    """The ``"status"`` a fold summary records: ``"failed"`` when training stopped on a non-finite
    loss, else ``"diverged"`` or ``"ok"`` by :func:`has_diverged` of its validation ``log_loss``."""
    if failed:
        return "failed"
    return "diverged" if has_diverged(log_loss, prior=prior) else "ok"


def fold_status(summary: dict) -> str:
    """One of :data:`FOLD_STATUSES`: the summary's ``"status"``; for a summary that predates it,
    ``"diverged"`` when it is marked ``"diverged": true``, else ``"ok"``."""
    if "status" in summary:
        return summary["status"]
    return "diverged" if summary.get("diverged", False) else "ok"


def status_detail(fold_path: str | Path, summary: dict) -> str:
    """One line on a fold whose status is not ``"ok"``: the failing epoch and loss, or its validation
    log loss against the uniform prior's."""
    head = f"{Path(fold_path) / FOLD_SUMMARY}: fold {fold_number(fold_path)}"
    if fold_status(summary) == "failed":
        failure = summary.get("failure") or {}
        return (f"{head} failed: its training loss became {failure.get('loss', math.nan)} in epoch "
                f"{failure.get('epoch', '?')}, and training stopped there")
    loss = (summary.get("metrics") or {}).get("log_loss", math.nan)
    prior = summary.get("prior_log_loss", math.nan)
    return (f"{head} diverged: validation log loss {loss:.4g}, over {DIVERGENCE_FACTOR:g} times the uniform "
            f"prior's {prior:.4g}")


#: What to change before training a failed or diverged fold again.
RETRAIN_HINT = "lower training.optimizer.learning_rate of the config first"


def folds_complete(exp_dir: str | Path, folds: Iterable[int]) -> bool:
    """Whether every fold of ``folds`` is finished and none failed: the experiment can be summarised."""
    paths = [fold_dir(exp_dir, k) for k in folds]
    return all(is_finished(p) for p in paths) and not any(fold_status(read_fold_summary(p)) == "failed"
                                                          for p in paths)


def read_fold_summary(fold_path: str | Path) -> dict:
    """The ``summary.json`` of a finished fold.

    Raises
    ------
    DamagedFoldError
        Unreadable or not a JSON object, naming the file and the retrain command.
    """
    path = Path(fold_path) / FOLD_SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DamagedFoldError(fold_path, f"{path}: cannot read the fold summary ({error})",
                               retrain=retrain_command(fold_path)) from error
    if not isinstance(summary, dict):
        raise DamagedFoldError(fold_path, f"{path}: not a JSON object", retrain=retrain_command(fold_path))
    return summary


def verify_fold(fold_path: str | Path, *, files: Iterable[str] | None = None, hash: bool = True,
                allow_diverged: bool = False) -> dict:
    """Check a finished fold's recorded files (and that it neither diverged nor failed) before using it.

    Parameters
    ----------
    fold_path : path-like
        ``runs/<exp>/fold_<k>`` with its ``summary.json``.
    files : iterable of str, optional
        The recorded files the caller reads (``("model.keras",)`` to predict, ``("oof.csv",)``
        to blend); every recorded file when omitted. A packaged submission carries the models
        only, so prediction must not ask for ``oof.csv``.
    hash : bool
        Also compare each file's sha256 with the recorded one (its size is always checked);
        what a command's ``--verify`` asks for where it is not the default.
    allow_diverged : bool
        Accept a fold whose status is ``"diverged"`` or ``"failed"`` (``compare`` shows them;
        submissions, blends and packages refuse them unless told ``--allow-diverged``).

    Returns
    -------
    dict
        The fold summary. A summary without ``"files"`` (written before they were recorded)
        is accepted unchecked.

    Raises
    ------
    DamagedFoldError
        A recorded file is missing, of another size, or (``hash``) of another sha256.
    DivergedFoldError
        The fold diverged and ``allow_diverged`` is false.
    FailedFoldError
        The fold failed and ``allow_diverged`` is false, or it kept none of ``files`` (it
        failed in its first epoch, before any model was kept).
    """
    fold_path = Path(fold_path)
    summary = read_fold_summary(fold_path)
    retrain = retrain_command(fold_path, summary)
    records = summary.get("files")  # None: written before files were recorded
    recorded: dict = records or {}
    wanted = set(recorded) if files is None else set(files)
    for name in sorted(wanted & set(recorded)):
        path = fold_path / name
        what = file_damage(path, recorded[name], hash=hash)
        if what:
            raise DamagedFoldError(fold_path, f"{path}: {what} (fold {fold_number(fold_path)} is damaged)",
                                   retrain=retrain)
    status = fold_status(summary)
    unkept = sorted(wanted - set(recorded)) if records is not None else []
    if status != "ok" and (unkept or not allow_diverged):
        error = FailedFoldError if status == "failed" else DivergedFoldError
        detail = status_detail(fold_path, summary) + (f"; it kept no {', '.join(unkept)}" if unkept else "")
        raise error(fold_path, detail, retrain=retrain, hint=RETRAIN_HINT)
    return summary


def file_damage(path: Path, record: dict, *, hash: bool) -> str | None:
    """What is wrong with ``path`` against its recorded ``{"bytes", "sha256"}`` (:func:`file_record`), or None.

    The size is always compared, the sha256 only with ``hash``.
    """
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{size} bytes, but {record.get('bytes')} were written"
    digest = file_sha256(path) if hash and record.get("sha256") else None
    if digest is not None and digest != record["sha256"]:
        return f"sha256 {digest[:12]}… differs from the recorded {record['sha256'][:12]}… (same size)"
    return None


def verify_folds(exp_dir: str | Path, *, files: Iterable[str] | None = None, hash: bool = True,
                 allow_diverged: bool = False) -> list[dict]:
    """:func:`verify_fold` of every finished fold of an experiment, in fold order; their summaries."""
    files = None if files is None else tuple(files)
    return [verify_fold(d, files=files, hash=hash, allow_diverged=allow_diverged) for d in finished_fold_dirs(exp_dir)]
