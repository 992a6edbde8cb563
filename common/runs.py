"""The fold folders of an experiment's run directory, found one way everywhere.

An experiment trains into ``runs/<exp>/fold_<k>/`` (see :mod:`common.training`), one
folder per fold ``k`` of the folds file. A fold is *finished* once its ``summary.json``
exists: training writes it last. Anything else in ``runs/<exp>`` named ``fold_*`` (a
user's ``fold_1.bak`` or ``fold_old`` copy, a file) is no fold and is skipped.

Keras-free: run folders are listed by the CLIs that only read JSON and CSV.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import ToolkitError

#: Written last into a fold folder: its presence marks the fold as finished.
FOLD_SUMMARY = "summary.json"

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
    return sorted(folds, key=fold_number)


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
