"""Tags of one song over time: segments, table, whole-song summary, JSON, taggram PNG.

Generic over *views*: a view is a name (``"genres"``, ``"tags"``) with its class
names and one probability row per segment, so the same code serves musicnn's
zero-shot tags and a trained experiment's genre ensemble. A segment row of the
table reads::

    0:00–0:10  Jazz 0.61 · Rock 0.22 · Experimental 0.07  |  jazz 0.55 · instrumental 0.31 · ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, ToolkitError
from common.io import write_text_atomic


@dataclasses.dataclass(frozen=True)
class View:
    """Probabilities of one set of classes for every segment.

    Attributes
    ----------
    names : tuple of str, length n_classes
    probs : np.ndarray, shape (n_segments, n_classes)
    """

    names: tuple[str, ...]
    probs: np.ndarray

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or self.probs.shape[1] != len(self.names):
            raise ToolkitError(f"view probabilities {self.probs.shape} do not match {len(self.names)} names")


def segment_bounds(duration: float, *, window: float, hop: float) -> np.ndarray:
    """Start and end (seconds) of the analysis segments of a song.

    Segment ``i`` starts at ``i * hop`` and ends ``window`` later or at the end of the
    song; segments start while ``start < duration``.

    Returns
    -------
    np.ndarray, shape (n_segments, 2), float64
    """
    if window <= 0 or hop <= 0:
        raise ConfigError(f"--window and --hop must be positive, got window={window} hop={hop}")
    starts = np.arange(0.0, duration, hop)
    return np.stack([starts, np.minimum(starts + window, duration)], axis=1)


def pool_segments(times: np.ndarray, probs: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average per-frame (or per-patch) probabilities over segments.

    Parameters
    ----------
    times : np.ndarray, shape (n,)
        Centre time (s) of each row of ``probs``.
    probs : np.ndarray, shape (n, n_classes)
    bounds : np.ndarray, shape (n_segments, 2)

    Returns
    -------
    bounds : np.ndarray, shape (m, 2)
        The segments holding at least one centre (``m <= n_segments``).
    pooled : np.ndarray, shape (m, n_classes)
    """
    inside = (times[None, :] >= bounds[:, :1]) & (times[None, :] < bounds[:, 1:])
    keep = inside.any(axis=1)
    pooled = (inside[keep] @ probs) / inside[keep].sum(axis=1, keepdims=True)
    return bounds[keep], pooled


def format_time(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``."""
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def format_scores(names: Sequence[str], probs: np.ndarray, *, top: int = 3) -> str:
    """The ``top`` classes of one probability row: ``"Jazz 0.61 · Rock 0.22 · Experimental 0.07"``."""
    order = np.argsort(-probs, kind="stable")[:top]
    return " · ".join(f"{names[i]} {probs[i]:.2f}" for i in order)


def summarize(views: Mapping[str, View], bounds: np.ndarray) -> dict[str, np.ndarray]:
    """Whole-song probabilities per view: segment rows averaged, weighted by segment length.

    Returns
    -------
    dict of str to np.ndarray, shape (n_classes,)
    """
    weights = bounds[:, 1] - bounds[:, 0]
    return {name: np.average(view.probs, axis=0, weights=weights) for name, view in views.items()}


def segment_table(views: Mapping[str, View], bounds: np.ndarray, *, top: int = 3) -> str:
    """One line per segment, the views side by side, then the whole-song summary line."""
    lines = [
        f"{format_time(start)}–{format_time(end)}  "
        + "  |  ".join(format_scores(view.names, view.probs[i], top=top) for view in views.values())
        for i, (start, end) in enumerate(bounds)
    ]
    summary = summarize(views, bounds)
    lines.append("whole song  " + "  |  ".join(
        format_scores(view.names, summary[name], top=top) for name, view in views.items()))
    return "\n".join(lines)


def tags_document(
    views: Mapping[str, View], bounds: np.ndarray, *, source: str | Path, model: str,
    window: float, hop: float, notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-ready record: per-segment and whole-song probabilities of every view."""
    summary = summarize(views, bounds)
    return {
        "file": str(source),
        "model": model,
        "window_seconds": window,
        "hop_seconds": hop,
        **({"notes": dict(notes)} if notes else {}),
        "segments": [
            {"start": round(float(start), 3), "end": round(float(end), 3),
             **{name: dict(zip(view.names, np.round(view.probs[i], 6).tolist())) for name, view in views.items()}}
            for i, (start, end) in enumerate(bounds)
        ],
        "summary": {name: dict(zip(view.names, np.round(summary[name], 6).tolist())) for name, view in views.items()},
    }


def _check_new(path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ToolkitError(f"{path}: already exists; remove it or pass --overwrite")


def write_json(document: Mapping[str, Any], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``document`` as indented JSON (refuses to replace a file unless ``overwrite``)."""
    path = Path(path)
    _check_new(path, overwrite=overwrite)
    return write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n", overwrite=True)


def save_taggram(
    view: View, bounds: np.ndarray, path: str | Path, *, title: str, overwrite: bool = False
) -> Path:
    """Taggram PNG: classes (rows) x segments (columns), probability as colour.

    Parameters
    ----------
    view : View
    bounds : np.ndarray, shape (n_segments, 2)
    path : path-like
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    _check_new(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_classes = len(view.names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(bounds) + 3.0), 0.28 * n_classes + 1.5))
    image = ax.imshow(view.probs.T, aspect="auto", origin="upper", cmap="viridis", vmin=0.0,
                      vmax=max(float(view.probs.max()), 1e-6), interpolation="nearest")
    ax.set_yticks(range(n_classes), view.names, fontsize=8)
    step = max(1, len(bounds) // 12)
    ax.set_xticks(range(0, len(bounds), step), [format_time(start) for start in bounds[::step, 0]], fontsize=8)
    ax.set_xlabel("segment start (m:ss)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
