"""Published musicnn weights: fetch them once from the PyPI wheel, read them offline.

musicnn (Pons & Serra 2019, ISC licence) ships its trained TensorFlow-1 checkpoints
inside the wheel ``musicnn==0.1.0``. The package itself cannot be installed in a
modern environment (it pins numpy < 1.17), so :func:`fetch_musicnn_weights`
downloads the wheel *without its dependencies*, checks its sha256 and extracts only
the two checkpoints this toolkit uses::

    <weights_dir>/MSD_musicnn/model.index
    <weights_dir>/MSD_musicnn/model.data-00000-of-00001
    <weights_dir>/MTT_musicnn/model.index
    <weights_dir>/MTT_musicnn/model.data-00000-of-00001
    <weights_dir>/LICENSE.md            (musicnn's ISC licence notice)

(the wheel names them ``.index`` / ``.data-00000-of-00001`` with an empty prefix; they
are renamed to the prefix ``model``). Nothing here touches the network at run time:
:func:`load_musicnn_checkpoint` reads the files with :func:`tf.train.load_checkpoint`
and raises a :class:`~common.errors.ToolkitError` naming ``make weights`` when they
are missing.

Command line (the Makefile's ``weights`` target)::

    python -m common.pretrained --dest models/musicnn [--wheel musicnn-0.1.0-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from common.cli import command
from common.errors import ToolkitError
from common.io import file_sha256

#: The checkout this module belongs to (``common/`` is directly inside it).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Where the weights live unless told otherwise: ``$FMA_WEIGHTS`` when set (read at import),
#: else ``<project root>/models/musicnn``; absolute either way, so that neither a script run
#: from another folder nor a Dask worker with its own working directory looks elsewhere.
DEFAULT_WEIGHTS_DIR = (Path(os.path.abspath(os.environ["FMA_WEIGHTS"])) if os.environ.get("FMA_WEIGHTS")
                       else PROJECT_ROOT / "models" / "musicnn")

#: The wheel that carries the weights, and its sha256 as published on PyPI.
MUSICNN_WHEEL = "musicnn-0.1.0-py3-none-any.whl"
MUSICNN_REQUIREMENT = "musicnn==0.1.0"
MUSICNN_WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"

#: Checkpoints extracted from the wheel.
MUSICNN_CHECKPOINTS: tuple[str, ...] = ("MSD_musicnn", "MTT_musicnn")

#: Suffixes of one TF checkpoint (the wheel stores them with an empty prefix).
_CHECKPOINT_SUFFIXES: tuple[str, ...] = (".index", ".data-00000-of-00001")
_PREFIX = "model"
_FETCH_HINT = "run `make weights` (python -m common.pretrained --dest {dest}) once, with network access"


def checkpoint_prefix(name: str, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path:
    """Path prefix of checkpoint ``name`` (``MSD_musicnn`` or ``MTT_musicnn``) in ``weights_dir``."""
    if name not in MUSICNN_CHECKPOINTS:
        raise ToolkitError(f"musicnn checkpoint {name!r} is unknown; known: {list(MUSICNN_CHECKPOINTS)}")
    return Path(weights_dir) / name / _PREFIX


def weights_present(*, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> bool:
    """Whether every checkpoint file is in ``weights_dir``."""
    return all(
        Path(f"{checkpoint_prefix(name, weights_dir=weights_dir)}{suffix}").is_file()
        for name in MUSICNN_CHECKPOINTS
        for suffix in _CHECKPOINT_SUFFIXES
    )


def download_musicnn_wheel(dest_dir: str | Path) -> Path:
    """Download the musicnn wheel (no dependencies) into ``dest_dir`` with pip.

    Returns
    -------
    Path
        The downloaded wheel.
    """
    dest_dir = Path(dest_dir)
    command = [
        sys.executable, "-m", "pip", "download", MUSICNN_REQUIREMENT,
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
        "--dest", str(dest_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = dest_dir / MUSICNN_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        raise ToolkitError(
            f"could not download {MUSICNN_REQUIREMENT} with pip (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-500:]}"
        )
    return wheel


def extract_musicnn_weights(wheel: str | Path, dest_dir: str | Path) -> list[Path]:
    """Check the wheel's sha256 and extract the checkpoints into ``dest_dir``.

    ``dest_dir`` must not hold weights yet (nothing is overwritten); the files are
    written to a temporary sibling directory first and moved in place at the end.

    Returns
    -------
    list of Path
        The files written.
    """
    wheel, dest_dir = Path(wheel), Path(dest_dir)
    if not wheel.is_file():
        raise ToolkitError(f"{wheel}: no such wheel file")
    actual = file_sha256(wheel)
    if actual != MUSICNN_WHEEL_SHA256:
        raise ToolkitError(f"{wheel}: sha256 {actual} differs from the published {MUSICNN_WHEEL_SHA256}")
    targets = [dest_dir / name for name in MUSICNN_CHECKPOINTS] + [dest_dir / "LICENSE.md"]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise ToolkitError(f"{dest_dir}: already holds {existing}; remove them to fetch again")
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".musicnn-", dir=dest_dir))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in MUSICNN_CHECKPOINTS:
                (staging / name).mkdir()
                for suffix in _CHECKPOINT_SUFFIXES:
                    with archive.open(f"musicnn/{name}/{suffix}") as source, \
                            (staging / name / f"{_PREFIX}{suffix}").open("wb") as target:
                        shutil.copyfileobj(source, target)
            with archive.open("musicnn-0.1.0.dist-info/LICENSE.md") as source, \
                    (staging / "LICENSE.md").open("wb") as target:
                shutil.copyfileobj(source, target)
        for final in targets:
            (staging / final.name).rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [Path(f"{checkpoint_prefix(name, weights_dir=dest_dir)}{suffix}")
            for name in MUSICNN_CHECKPOINTS for suffix in _CHECKPOINT_SUFFIXES]


def fetch_musicnn_weights(
    dest_dir: str | Path = DEFAULT_WEIGHTS_DIR, *, wheel: str | Path | None = None
) -> Path:
    """Make the musicnn checkpoints available in ``dest_dir`` (download once).

    Parameters
    ----------
    dest_dir : path-like
        Weights folder; nothing happens when it already holds every checkpoint.
    wheel : path-like, optional
        A ``musicnn-0.1.0`` wheel already on disk (offline installs); by default pip
        downloads it into a temporary directory that is removed afterwards.

    Returns
    -------
    Path
        ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    if weights_present(weights_dir=dest_dir):
        return dest_dir
    if wheel is not None:
        extract_musicnn_weights(wheel, dest_dir)
        return dest_dir
    with tempfile.TemporaryDirectory(prefix="musicnn-wheel-") as tmp:
        extract_musicnn_weights(download_musicnn_wheel(tmp), dest_dir)
    return dest_dir


def load_musicnn_checkpoint(
    name: str, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR
) -> dict[str, np.ndarray]:
    """Read the model variables of checkpoint ``name`` (optimiser slots left out).

    Returns
    -------
    dict of str to np.ndarray
        TF-1 variable name (``conv2d_5/kernel``, ``batch_normalization_3/moving_mean``, ...)
        to its value; Adam slots and ``beta*_power`` are not included.
    """
    import tensorflow as tf

    prefix = checkpoint_prefix(name, weights_dir=weights_dir)
    if not Path(f"{prefix}.index").is_file():
        raise ToolkitError(
            f"{prefix}.index: musicnn weights are missing; {_FETCH_HINT.format(dest=weights_dir)}"
        )
    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in sorted(reader.get_variable_to_shape_map())
        if not key.endswith(("/Adam", "/Adam_1")) and not key.startswith("beta")
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fma-weights",
        description=f"Fetch the musicnn checkpoints from the PyPI wheel {MUSICNN_REQUIREMENT} (no dependencies).",
    )
    parser.add_argument("--dest", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights folder (default: %(default)s)")
    parser.add_argument("--wheel", type=Path, default=None, help="use this wheel instead of downloading it")
    return parser


@command("fma-weights")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    already = weights_present(weights_dir=args.dest)
    fetch_musicnn_weights(args.dest, wheel=args.wheel)
    print(f"weights: {', '.join(MUSICNN_CHECKPOINTS)} {'already in' if already else 'extracted to'} {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
