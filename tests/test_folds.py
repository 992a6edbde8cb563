"""Folds: grouped by artist, stratified by genre, official test split excluded, written once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.errors import MetadataError, ToolkitError
from common.folds import FOLD_COLUMNS, fold_track_ids, make_folds, read_folds, write_folds
from common.io import file_sha256, sidecar_path
from common.metadata import TOP_GENRES
from experiments import folds as folds_cli


def fake_tracks(*, n_artists: int = 80, seed: int = 1, start_id: int = 2) -> pd.DataFrame:
    """An FMA-like nested tracks table: artists with 2-9 tracks, one genre each, artist-level split."""
    rng = np.random.default_rng(seed)
    rows = []
    track_id = start_id
    for artist in range(n_artists):
        genre = TOP_GENRES[artist % 4] if artist % 10 else None  # 4 genres + some without a genre
        split = rng.choice(["training", "validation", "test"], p=[0.7, 0.15, 0.15])
        for _ in range(rng.integers(2, 10)):
            rows.append((track_id, 1000 + artist, genre, split))
            track_id += 1
    frame = pd.DataFrame(rows, columns=["track_id", "artist", "genre", "split"]).set_index("track_id")
    columns = pd.MultiIndex.from_tuples([("artist", "id"), ("track", "genre_top"), ("set", "split")])
    tracks = pd.DataFrame(frame.to_numpy(), index=frame.index, columns=columns)
    tracks[("artist", "id")] = tracks[("artist", "id")].astype(np.int64)
    tracks[("set", "split")] = pd.Categorical(tracks[("set", "split")], categories=["training", "validation", "test"])
    return tracks


@pytest.fixture(scope="module")
def tracks() -> pd.DataFrame:
    return fake_tracks()


def test_folds_group_artists_exclude_test_and_stratify(tracks):
    folds = make_folds(tracks, k=5, seed=0)
    assert tuple(folds.columns) == FOLD_COLUMNS
    # Every training/validation track exactly once; no official test track.
    split = tracks[("set", "split")]
    expected = sorted(tracks.index[split.isin(["training", "validation"])])
    assert folds["track_id"].tolist() == expected
    assert not set(folds["track_id"]) & set(tracks.index[split == "test"])
    # No artist in two folds.
    assert (folds.groupby("artist_id")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    # Stratified: every genre (and the no-genre stratum) is in at least 4 of the 5 folds.
    strata = folds["genre_top"].fillna("none")
    assert (folds.groupby(strata)["fold"].nunique() >= 4).all()
    assert folds["genre_top"].isna().any()  # tracks without a genre got folds too


def test_folds_are_reproducible_and_seeded(tracks):
    a, b = make_folds(tracks, k=5, seed=0), make_folds(tracks, k=5, seed=0)
    pd.testing.assert_frame_equal(a, b)
    assert not make_folds(tracks, k=5, seed=1)["fold"].equals(a["fold"])


def test_write_read_round_trip_and_never_overwrite(tracks, tmp_path):
    folds = make_folds(tracks, k=3, seed=0)
    path = write_folds(tmp_path / "folds.csv", folds, subset="small", k=3, seed=0)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["k"] == 3 and meta["subset"] == "small" and meta["n_tracks"] == len(folds)
    read = read_folds(path, tracks=tracks)
    assert read.index.name == "track_id"
    assert read["fold"].tolist() == folds["fold"].tolist()
    train, val = fold_track_ids(read, 1)
    assert len(train) + len(val) == len(folds) and not set(train) & set(val)
    before = path.read_text()
    with pytest.raises(ToolkitError, match="folds.csv already exists"):
        write_folds(path, make_folds(tracks, k=3, seed=5), subset="small", k=3, seed=5)
    assert path.read_text() == before
    write_folds(path, make_folds(tracks, k=3, seed=5), subset="small", k=3, seed=5, overwrite=True)
    assert path.read_text() != before


def test_read_folds_rejects_other_metadata(tracks, tmp_path):
    path = write_folds(tmp_path / "folds-small-k3.csv", make_folds(tracks, k=3, seed=0),
                       subset="small", k=3, seed=0)
    other = fake_tracks(n_artists=60, seed=2, start_id=5000)
    with pytest.raises(MetadataError, match=r"folds-small-k3\.csv.*do not match the metadata"):
        read_folds(path, tracks=other)
    with pytest.raises(MetadataError, match="folds file not found"):
        read_folds(tmp_path / "nope.csv", tracks=tracks)
    # A hand-edited file no longer matches the size and sha256 its sidecar records.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(MetadataError, match="damaged"):
        read_folds(path, tracks=tracks)


def copy_test_metadata(data: Path) -> Path:
    """``data/fma_metadata/`` with the test tracks.csv and genres.csv; returns ``data``."""
    metadata = data / "fma_metadata"
    metadata.mkdir(parents=True)
    for name in ("tracks.csv", "genres.csv"):
        shutil.copy(Path(__file__).parent / "data" / name, metadata / name)
    return data


def test_cli_writes_once_and_checks_existing_file(tmp_path, capsys):
    out = tmp_path / "folds.csv"
    argv = ["--data", str(copy_test_metadata(tmp_path / "data")), "--subset", "small", "--k", "2", "--out", str(out)]
    assert folds_cli.main(argv) == 0
    written = out.read_text()
    assert "wrote" in capsys.readouterr().out
    assert folds_cli.main(argv) == 0
    assert "exists and matches" in capsys.readouterr().out
    assert out.read_text() == written
    # Same file used with another subset's metadata: refused, file kept.
    assert folds_cli.main(argv[:3] + ["medium"] + argv[4:]) == 1
    assert "do not match the metadata" in capsys.readouterr().err
    assert out.read_text() == written


def test_folds_sidecar_is_beside_the_csv_and_old_folds_files_still_read(tracks, tmp_path):
    folds = make_folds(tracks, k=3, seed=0)
    path = write_folds(tmp_path / "folds.csv", folds, subset="small", k=3, seed=0)
    assert sidecar_path(path) == tmp_path / "folds.json" and (tmp_path / "folds.json").is_file()
    # folds files are written once and kept: one written with the old <name>.csv.json sidecar still reads
    (tmp_path / "folds.json").rename(tmp_path / "folds.csv.json")
    assert read_folds(path, tracks=tracks)["fold"].tolist() == folds["fold"].tolist()


def move_first_track_to_another_fold(path: Path) -> None:
    """Flip the fold digit of the first data row: same size, same track ids, another assignment."""
    lines = path.read_bytes().split(b"\n")
    track, fold, rest = lines[1].split(b",", 2)
    lines[1] = b",".join([track, b"1" if fold == b"0" else b"0", rest])
    path.write_bytes(b"\n".join(lines))


def test_a_damaged_folds_file_is_refused_naming_the_command_that_rewrites_it(tracks, tmp_path):
    """Issue 25: a folds CSV with flipped bytes (same size, same tracks) was read as it was, moving a track
    from one fold to another for every later step; a truncated one was refused only for its track ids."""
    path = write_folds(tmp_path / "folds.csv", make_folds(tracks, k=3, seed=4), subset="small", k=3, seed=4)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["csv"] == {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    good = path.read_bytes()
    rewrite = f"`python -m experiments.folds --data DATA --subset small --k 3 --seed 4 --out {path} --force`"
    move_first_track_to_another_fold(path)
    assert path.stat().st_size == len(good)
    with pytest.raises(MetadataError) as flipped:
        read_folds(path, tracks=tracks)
    assert str(flipped.value).startswith(f"{path}: damaged: sha256 ") and "(same size)" in str(flipped.value)
    assert str(flipped.value).endswith(rewrite)
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(MetadataError, match=rf"damaged: {len(good) // 2} bytes, but {len(good)} were written"):
        read_folds(path, tracks=tracks)


def test_make_folds_reports_a_damaged_file_and_force_repairs_it(tmp_path, capsys):
    out = tmp_path / "folds.csv"
    argv = ["--data", str(copy_test_metadata(tmp_path / "data")), "--subset", "small", "--k", "2", "--out", str(out)]
    assert folds_cli.main(argv) == 0
    written = out.read_bytes()
    move_first_track_to_another_fold(out)
    capsys.readouterr()
    assert folds_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"fma-folds: error: {out}: damaged: ") and "--force`" in err
    assert folds_cli.main([*argv, "--force"]) == 0
    assert out.read_bytes() == written  # same metadata, k and seed: the same folds
