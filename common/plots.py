"""Figures of a dataset: top-genre histogram per split and the log-mel image of one track.

``python -m common.plots --data D --subset S --config EXP.yaml --out OUT [--track ID]`` writes
``OUT/genre_histogram_<subset>.png`` and ``OUT/logmel_<track_id>.png``.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, which render PNGs with
the Agg canvas without touching pyplot's global backend state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from common.audio import load_clip, logmel
from common.cli import command
from common.config import load_config
from common.errors import AudioError, MetadataError
from common.io import make_folder
from common.metadata import SPLITS, TOP_GENRES, FmaDataset
from common.settings import FeatureSettings


def genre_split_counts(tracks: pd.DataFrame) -> pd.DataFrame:
    """Tracks per top-level genre and official split.

    Parameters
    ----------
    tracks : pandas.DataFrame
        As returned by :func:`common.metadata.load_tracks`.

    Returns
    -------
    pandas.DataFrame, shape (n_genres_present, 3)
        Index: genre titles (leaderboard order, only those present); columns :data:`SPLITS`.
        Tracks without a ``genre_top`` are not counted.
    """
    table = pd.crosstab(tracks[("track", "genre_top")], tracks[("set", "split")], dropna=True)
    table = table.reindex(index=list(TOP_GENRES), columns=list(SPLITS), fill_value=0)
    return table[table.sum(axis=1) > 0]


def plot_genre_histogram(tracks: pd.DataFrame, *, title: str, path: str | Path) -> Path:
    """Horizontal stacked bars of :func:`genre_split_counts`, most frequent genre on top."""
    counts = genre_split_counts(tracks)
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    n_none = int(tracks[("track", "genre_top")].isna().sum())
    fig = Figure(figsize=(8, 0.35 * len(counts) + 1.8))
    ax = fig.subplots()
    left = np.zeros(len(counts))
    for split in SPLITS:
        ax.barh(counts.index, counts[split], left=left, label=split)
        left += counts[split].to_numpy()
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.set_xlabel("tracks")
    ax.set_title(f"{title}\n{int(left.sum())} tracks with a top genre, {n_none} without")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.margins(x=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_logmel(mel: np.ndarray, *, settings: FeatureSettings, title: str,
                path: str | Path) -> Path:
    """Image of a log-mel spectrogram.

    Parameters
    ----------
    mel : np.ndarray, shape (n_mels, n_frames)
        As :func:`common.audio.logmel` returns it.
    settings : FeatureSettings
        For the time and frequency axes.
    title : str
    path : path-like
    """
    import librosa.display

    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    image = librosa.display.specshow(
        mel, sr=settings.sample_rate, hop_length=settings.hop_length, x_axis="time",
        y_axis="mel", fmin=settings.fmin, fmax=settings.fmax or settings.sample_rate / 2, ax=ax)
    fig.colorbar(image, ax=ax, label="dB" if settings.log_scale == "db" else "log1p")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def _first_loadable(dataset: FmaDataset, settings: FeatureSettings,
                    track_id: int | None) -> tuple[int, np.ndarray]:
    """The requested track's clip, or that of the first track that decodes."""
    candidates = [(tid, path) for tid, path in dataset.items()
                  if track_id is None or tid == str(track_id)]
    if not candidates:
        raise MetadataError(f"track {track_id} is not in subset {dataset.subset!r}")
    errors = []
    for tid, path in candidates:
        try:
            return int(tid), load_clip(path, settings=settings)
        except AudioError as exc:
            if track_id is not None:
                raise
            errors.append(str(exc))
        if len(errors) >= 20:
            break
    raise MetadataError(f"{dataset.audio_dir}: none of the first {len(errors)} tracks decodes: "
                        + "; ".join(errors[:3]))


@command("fma-plots")
def main(argv: list[str] | None = None) -> int:
    """Write the genre histogram and one log-mel image; print their paths."""
    parser = argparse.ArgumentParser(prog="fma-plots", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder holding fma_metadata/ (default: data)")
    parser.add_argument("--subset", default="small", help="small, medium or large (default: small)")
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML whose features: to use")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    parser.add_argument("--track", type=int, default=None,
                        help="track id for the log-mel (default: first that decodes)")
    args = parser.parse_args(argv)
    settings = load_config(args.config, check_model=False).features
    dataset = FmaDataset.open(args.data, args.subset)
    make_folder(args.out)
    hist_path = args.out / f"genre_histogram_{args.subset}.png"
    track_id, clip = _first_loadable(dataset, settings, args.track)
    mel_path = args.out / f"logmel_{track_id}.png"
    replaced = {p for p in (hist_path, mel_path) if p.exists()}
    plot_genre_histogram(
        dataset.tracks, title=f"{args.data.name or args.data} fma_{args.subset}: top genres per split",
        path=hist_path)
    genre = dataset.top_genre_labels()[track_id]
    plot_logmel(
        logmel(clip, settings=settings), settings=settings,
        title=f"track {track_id} ({'no top genre' if pd.isna(genre) else genre}): "
              f"{settings.n_mels} mels, {settings.sample_rate} Hz, hop {settings.hop_length}",
        path=mel_path)
    for path in (hist_path, mel_path):
        print(f"{'replaced' if path in replaced else 'wrote'} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
