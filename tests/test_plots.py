"""Plots CLI on the session's demo dataset."""

from __future__ import annotations

import json
from pathlib import Path

from common import plots
from common.metadata import FmaDataset

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def test_genre_split_counts(demo_data_dir):
    tracks = FmaDataset.open(demo_data_dir, "small").tracks
    counts = plots.genre_split_counts(tracks)
    assert list(counts.columns) == ["training", "validation", "test"]
    assert counts.to_numpy().sum() == tracks[("track", "genre_top")].notna().sum()
    assert counts.loc["Rock"].sum() == (tracks[("track", "genre_top")] == "Rock").sum()


def test_cli_writes_pngs(demo_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data", str(demo_data_dir), "--subset", "small", "--config", str(CONFIG),
            "--out", str(out)]
    assert plots.main(argv) == 0
    pngs = sorted(out.glob("*.png"))
    names = [p.name for p in pngs]
    assert "genre_histogram_small.png" in names and len(names) == 2
    for path in pngs:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    track_id = int(next(n for n in names if n.startswith("logmel_"))[7:-4])
    assert track_id in FmaDataset.open(demo_data_dir, "small").tracks.index
    assert "wrote" in capsys.readouterr().out
    assert plots.main([*argv, "--track", str(track_id)]) == 0
    assert "replaced" in capsys.readouterr().out


def test_cli_names_a_broken_track(demo_data_dir, tmp_path, capsys):
    broken = json.loads((demo_data_dir / "demo.json").read_text())["broken"]
    zero = next(b["id"] for b in broken if b["kind"] == "zero_byte" and b["path"].startswith("fma_small"))
    argv = ["--data", str(demo_data_dir), "--config", str(CONFIG), "--out", str(tmp_path),
            "--track", zero]
    assert plots.main(argv) == 1
    assert f"{int(zero):06d}.mp3" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
