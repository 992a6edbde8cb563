"""Generated mini-FMA: layout, real header, decodable audio, broken kinds, the large subset, determinism."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common import demo_data
from common.demo_data import generate_demo_dataset
from common.errors import ToolkitError
from common.metadata import SPLITS, SUBSETS, TOP_GENRE_IDS, TOP_GENRES, FmaDataset, load_genres

DATA = Path(__file__).parent / "data"
TINY: dict[str, Any] = {"n_tracks": 32, "n_test": 6, "clip_seconds": 3.0, "seed": 5}


def _manifest(root: Path) -> dict:
    return json.loads((root / "demo.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "demo"
    generate_demo_dataset(out, n_jobs=2, **TINY)
    return out


def test_layout(demo_data_dir):
    root = demo_data_dir
    for name in ("fma_metadata/tracks.csv", "fma_metadata/genres.csv", "demo.json",
                 "crowdai_fma_test_labels.csv"):
        assert (root / name).is_file(), name
    folders = {p.name for p in (root / "fma_small").iterdir()}
    assert len(folders) >= 5 and all(len(f) == 3 and f.isdigit() for f in folders)
    test_files = sorted((root / "crowdai_fma_test").iterdir())
    assert len(test_files) == 12
    labels = pd.read_csv(root / "crowdai_fma_test_labels.csv")
    assert list(labels.columns) == ["file_id", "genre"]
    assert sorted(f"{i}.mp3" for i in labels["file_id"]) == [p.name for p in test_files]
    assert set(labels["genre"]) <= set(TOP_GENRES)
    assert all(len(p.stem) == 36 and p.stem[14] == "4" for p in test_files)  # uuid4


def test_header_matches_real_layout(demo_data_dir):
    ours = (demo_data_dir / "fma_metadata/tracks.csv").read_text().splitlines()[:3]
    real = (DATA / "tracks.csv").read_text().splitlines()[:3]
    assert ours == real


def test_metadata_content(demo_data_dir):
    ds = FmaDataset.open(demo_data_dir, "small")
    tracks = ds.tracks
    assert len(tracks) == 64
    large = FmaDataset.open(demo_data_dir, "large").tracks
    assert len(large) > len(FmaDataset.open(demo_data_dir, "medium").tracks) > 64
    top = ds.top_genre_labels()
    assert top.nunique() >= 8
    assert top.isna().sum() >= 2
    for tid in top[top.isna()].index:  # empty genre_top: genres from several top-levels
        roots = {g for g in tracks.loc[tid, ("track", "genres_all")] if g in ds.genres.index
                 and ds.genres.loc[g, "parent"] == 0}
        assert len(roots) >= 2
    artists = ds.artist_ids()
    assert (artists.groupby(top).nunique() >= 3).all()
    assert (tracks[("set", "split")].groupby(artists).nunique() == 1).all()  # artist-filtered
    assert set(tracks[("set", "split")]) == set(SPLITS)
    genres = ds.genres
    for genres_list, genres_all in zip(tracks[("track", "genres")], tracks[("track", "genres_all")]):
        for g in genres_list:  # genres_all holds every ancestor
            while g:
                assert g in genres_all
                g = genres.loc[g, "parent"]
    counts = pd.Series([g for cell in tracks[("track", "genres_all")] for g in cell]).value_counts()
    assert (genres.loc[counts.index, "#tracks"] >= counts).all()
    assert genres.equals(load_genres(demo_data_dir / "fma_metadata/genres.csv"))


def test_default_size_supports_multilabel_subgenres():
    rows, specs, labels = demo_data._plan(n_tracks=320, n_test=48, n_large=320, clip_seconds=10.0, seed=0)
    parents = {gid: parent for gid, parent, _, _ in demo_data.GENRE_TREE}
    counts = pd.Series([g for _, row in rows if row[("set", "subset")] == "small"
                        for g in eval_list(row[("track", "genres_all")]) if parents[g]])
    assert (counts.value_counts() >= 10).sum() >= 10
    assert len(rows) == 320 + 320 // 16 + 320
    assert len(specs) == len(rows) + 48  # every track (one "missing" file among them) and the test folder
    assert len(labels) == 48


def eval_list(cell: str) -> list[int]:
    from common.metadata import parse_id_list
    return parse_id_list(cell)


def test_audio_decodes_as_fma(demo_data_dir):
    manifest = _manifest(demo_data_dir)
    broken = {Path(b["path"]).name for b in manifest["broken"]}  # fma_large holds copies of fma_small's
    good = [p for p in sorted(demo_data_dir.rglob("*.mp3")) if p.name not in broken]
    durations, levels = [], []
    for path in good[::4]:
        y, sr = sf.read(path, dtype="float32")
        assert sr == 44100 and y.ndim == 2 and y.shape[1] == 2
        durations.append(len(y) / sr)
        levels.append(20 * np.log10(np.sqrt(np.mean(y ** 2))))
    assert 6.0 * 0.9 - 0.1 <= min(durations) and max(durations) <= 6.0 * 1.1 + 0.1
    assert np.std(durations) > 0.1 and np.std(levels) > 2.0  # neither is a constant


def test_broken_kinds(demo_data_dir):
    manifest = _manifest(demo_data_dir)
    kinds = {(b["path"].split("/")[0], b["kind"]) for b in manifest["broken"]}
    assert kinds == {("fma_small", k) for k in demo_data.TRAIN_BROKEN_KINDS} | {
        ("crowdai_fma_test", k) for k in demo_data.TEST_BROKEN_KINDS}
    tracks = FmaDataset.open(demo_data_dir, "small").tracks
    for item in manifest["broken"]:
        path = demo_data_dir / item["path"]
        if item["path"].startswith("fma_small"):
            assert int(item["id"]) in tracks.index
        if item["kind"] == "missing":
            assert not path.exists()
        elif item["kind"] == "zero_byte":
            assert path.stat().st_size == 0
        elif item["kind"] == "silent":
            y, _ = sf.read(path)
            assert len(y) > 44100 and np.abs(y).max() < 1e-4
        elif item["kind"] == "too_short":
            y, sr = sf.read(path)
            assert 1.5 < len(y) / sr < 2.5 and np.abs(y).max() > 1e-3
        elif item["kind"] == "truncated":
            data = path.read_bytes()
            assert 0 < len(data) < 0.25 * 6 * 128000 / 8
            assert data[:2] == b"\xff\xfb"  # starts as a real mp3 frame


def _mel_stats(path: Path) -> np.ndarray:
    """Mean and std of each of 32 mel bands (dB) over the first 3 s of an mp3, shape (64,)."""
    import librosa

    y, sr = sf.read(path, dtype="float32")
    mel = librosa.power_to_db(librosa.feature.melspectrogram(
        y=y.mean(axis=1)[: 3 * sr], sr=sr, n_fft=2048, hop_length=1024, n_mels=32), ref=np.max)
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)])


def _genre_classifier(ds: FmaDataset, splits: set[str]):
    """Logistic regression on :func:`_mel_stats` of the ``small`` tracks with a genre_top in ``splits``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    top = ds.top_genre_labels()
    rows = [(tid, path) for tid, path in ds.items()
            if ds.tracks.loc[int(tid), ("set", "subset")] == "small" and pd.notna(top[int(tid)])
            and ds.tracks.loc[int(tid), ("set", "split")] in splits and path.is_file() and path.stat().st_size > 20000]
    X = np.array([_mel_stats(path) for _, path in rows])
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        X, np.array([top[int(tid)] for tid, _ in rows]))


def test_genre_is_learnable_from_audio_on_held_out_artists(demo_data_dir):
    ds = FmaDataset.open(demo_data_dir, "small")
    model = _genre_classifier(ds, {"training"})
    top = ds.top_genre_labels()
    held_out = [(tid, path) for tid, path in ds.items()
                if pd.notna(top[int(tid)]) and ds.tracks.loc[int(tid), ("set", "split")] != "training"
                and path.is_file() and path.stat().st_size > 20000]
    predicted = model.predict(np.array([_mel_stats(path) for _, path in held_out]))
    accuracy = (predicted == np.array([top[int(tid)] for tid, _ in held_out])).mean()
    assert len(held_out) >= 10
    print(f"held-out accuracy {accuracy:.2f} on {len(held_out)} tracks")
    assert accuracy >= 0.5, accuracy  # chance is 1/8; held-out splits are unseen artists


def _roots(genres_all: Any) -> set[str]:
    """Titles of the top-level genres in a ``genres_all`` list of ids."""
    names = {gid: title for title, gid in TOP_GENRE_IDS.items()}
    return {names[g] for g in genres_all if g in names}


def test_large_subset_is_half_multi_root_tracks_in_fma_format(demo_data_dir):
    subsets = {s: FmaDataset.open(demo_data_dir, s) for s in SUBSETS}
    ids = {s: set(d.tracks.index) for s, d in subsets.items()}
    assert ids["small"] < ids["medium"] < ids["large"]  # nested; ('set', 'subset') is the smallest one
    large = subsets["large"]
    tracks = large.tracks
    assert all(set(tracks.loc[list(ids[s] - (ids[SUBSETS[i - 1]] if i else set())), ("set", "subset")]) == {s}
               for i, s in enumerate(SUBSETS))
    without_top = tracks[("track", "genre_top")].isna()
    assert 0.4 <= without_top.mean() <= 0.6, without_top.mean()  # as in fma_large: about half
    large_only = tracks[tracks[("set", "subset")] == "large"]
    extra = large_only[large_only[("track", "genre_top")].isna()]
    assert len(extra) == _manifest(demo_data_dir)["parameters"]["n_large"] == 64
    assert all(len(_roots(g)) >= 2 for g in extra[("track", "genres_all")])  # every one spans 2+ roots
    assert {len(_roots(g)) for g in extra[("track", "genres_all")]} == {2, 3}
    counts = tracks.loc[without_top, ("set", "subset")].value_counts()
    assert _manifest(demo_data_dir)["without_genre_top_by_subset"] == {s: int(counts.get(s, 0)) for s in SUBSETS}
    # the cells are written as FMA writes them: an empty genre_top, genre-id lists
    raw = pd.read_csv(demo_data_dir / "fma_metadata/tracks.csv", index_col=0, header=[0, 1], dtype=str,
                      keep_default_na=False)
    assert (raw.loc[[str(t) for t in extra.index], ("track", "genre_top")] == "").all()
    # artists have tracks with and without a genre_top; every artist is in one split (artist-filtered)
    artists = tracks[("artist", "id")]
    assert artists[without_top].isin(artists[~without_top]).all()
    assert (tracks[("set", "split")].groupby(artists).nunique() == 1).all()
    # fma_large holds every track, fma_small's as byte-identical copies; large reads it
    assert large.audio_dir == demo_data_dir / demo_data.LARGE_AUDIO
    missing = {int(b["id"]) for b in _manifest(demo_data_dir)["broken"] if b["kind"] == "missing"}
    assert {int(tid) for tid, path in large.items() if path.is_file()} == ids["large"] - missing
    for _, path in subsets["small"].items():
        if path.is_file():
            assert path.read_bytes() == (large.audio_dir / path.relative_to(subsets["small"].audio_dir)).read_bytes()


def test_multi_root_audio_mixes_the_styles_of_its_roots(demo_data_dir):
    """A classifier of the labelled tracks puts far more than chance mass on a multi-root track's roots."""
    large = FmaDataset.open(demo_data_dir, "large")
    model = _genre_classifier(large, {"training"})
    classes = list(model.classes_)
    tracks = large.tracks
    held_out = [(tid, path) for tid, path in large.items() if tracks.loc[int(tid), ("set", "subset")] == "large"
                and tracks.loc[int(tid), ("set", "split")] != "training"]
    probs = model.predict_proba(np.array([_mel_stats(path) for _, path in held_out]))
    roots = [_roots(tracks.loc[int(tid), ("track", "genres_all")]) for tid, _ in held_out]
    mass = np.mean([sum(p[classes.index(r)] for r in rs) for p, rs in zip(probs, roots)])
    chance = np.mean([len(rs) / len(classes) for rs in roots])
    print(f"probability on the roots {mass:.2f} (chance {chance:.2f}) over {len(held_out)} unseen-artist tracks")
    assert len(held_out) >= 10 and mass >= 1.5 * chance


def test_rows_and_files_of_format_1_are_unchanged(tiny_dir):
    """The generator before the large subset (format 1) wrote these rows and files, hashed in
    tests/data/demo_v1_tiny.json: the large subset draws from its own random stream and changes none.
    (The mp3 bytes also depend on lameenc, soxr and numpy: a new version of one may change them all.)"""
    golden = json.loads((DATA / "demo_v1_tiny.json").read_text())
    lines = (tiny_dir / "fma_metadata/tracks.csv").read_text().splitlines()[3:]
    rows = {line.split(",", 1)[0]: hashlib.sha256(line.encode()).hexdigest() for line in lines}
    assert {tid: rows.get(tid) for tid in golden["rows"]} == golden["rows"]
    assert len(rows) == len(golden["rows"]) + TINY["n_tracks"]
    files = {name: hashlib.sha256((tiny_dir / name).read_bytes()).hexdigest() for name in golden["files"]
             if (tiny_dir / name).is_file()}
    assert files == golden["files"]


def test_deterministic_noop_and_refusal(tiny_dir, tmp_path):
    again = tmp_path / "again"
    generate_demo_dataset(again, n_jobs=1, **TINY)
    assert _files(again) == _files(tiny_dir)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    result = generate_demo_dataset(again, **TINY)
    assert result["reused"] is True
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before
    with pytest.raises(ToolkitError, match=r"demo\.json.*other parameters.*--force"):
        generate_demo_dataset(again, **{**TINY, "seed": 6})
    assert _files(again) == _files(tiny_dir)


def test_force_replaces_and_different_seed_differs(tiny_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    result = generate_demo_dataset(other, n_jobs=2, force=True, **{**TINY, "seed": 6})
    assert result["reused"] is False and _manifest(other)["parameters"]["seed"] == 6
    assert (other / "fma_metadata/tracks.csv").read_bytes() != (
        tiny_dir / "fma_metadata/tracks.csv").read_bytes()


def test_refuses_a_dataset_of_the_previous_format(tiny_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    manifest = _manifest(old)
    manifest["format"] = 1
    del manifest["parameters"]["n_large"]
    (old / "demo.json").write_text(json.dumps(manifest))
    with pytest.raises(ToolkitError, match=r"format 1; this generator writes format 2.*--force"):
        generate_demo_dataset(old, **TINY)


def test_refuses_foreign_or_interrupted_folder(tmp_path):
    (tmp_path / "fma_small").mkdir()
    with pytest.raises(ToolkitError, match=r"no demo\.json.*--force"):
        generate_demo_dataset(tmp_path, **TINY)


@pytest.mark.parametrize("bad", [{"n_tracks": 10}, {"n_test": 2}, {"n_large": -1}, {"clip_seconds": 1.0}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ToolkitError):
        generate_demo_dataset(tmp_path, **{**TINY, **bad})


def test_cli(tiny_dir, tmp_path, capsys):
    argv = ["--out", str(tiny_dir), "--tracks", "32", "--test", "6", "--seconds", "3", "--seed", "5"]
    assert demo_data.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert demo_data.main([*argv[:-1], "7"]) == 1
    assert "--force" in capsys.readouterr().err
