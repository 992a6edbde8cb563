"""FMA metadata loader on a fixture tracks.csv with the real three-row header."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from common.errors import MetadataError
from common.metadata import (
    SUBSETS,
    TOP_GENRES,
    FmaDataset,
    audio_path,
    load_genres,
    load_tracks,
    parse_id_list,
    select_subset,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tracks() -> pd.DataFrame:
    return load_tracks(DATA / "tracks.csv")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    meta = tmp_path / "fma_metadata"
    meta.mkdir()
    for name in ("tracks.csv", "genres.csv"):
        shutil.copy(DATA / name, meta / name)
    return tmp_path


def test_header_is_the_real_three_row_layout():
    lines = (DATA / "tracks.csv").read_text().splitlines()
    assert lines[0].startswith(",album,album")
    assert lines[1].startswith(",comments,date_created")
    assert lines[2].startswith("track_id,,,")


def test_load_tracks_types(tracks):
    assert tracks.index.name == "track_id"
    assert tracks.index.dtype.kind == "i"
    assert tracks.shape == (8, 52)
    subset = tracks[("set", "subset")]
    assert isinstance(subset.dtype, pd.CategoricalDtype) and subset.dtype.ordered
    assert list(subset.dtype.categories) == list(SUBSETS)
    assert list(tracks[("track", "genre_top")].dtype.categories) == list(TOP_GENRES)
    assert tracks.loc[20, ("track", "genres_all")] == [17, 10, 76, 103]
    assert tracks.loc[1482, ("track", "genres")] == [240]
    assert tracks.loc[10, ("track", "tags")] == ["philly", "lo-fi"]
    assert tracks.loc[140, ("artist", "tags")] == ["singer-songwriter", "rock 'n' roll"]
    assert tracks.loc[2, ("track", "tags")] == []
    assert tracks.loc[1482, ("track", "title")] == 'Ninja, "Part 2"'
    assert tracks[("artist", "id")].dtype.kind == "i"
    assert tracks.loc[2, ("track", "date_created")] == pd.Timestamp("2008-11-26 01:48:12")
    assert pd.isna(tracks.loc[20, ("artist", "active_year_begin")])


def test_empty_genre_top_is_na(tracks):
    top = tracks[("track", "genre_top")]
    assert top.isna().tolist() == [t in (20, 26) for t in tracks.index]
    assert top[2] == "Hip-Hop"


@pytest.mark.parametrize(("subset", "expected"), [
    ("small", [2, 5, 10, 140, 1482]),
    ("medium", [2, 3, 5, 10, 26, 140, 1482]),
    ("large", [2, 3, 5, 10, 20, 26, 140, 1482]),
])
def test_subsets_are_nested(tracks, subset, expected):
    assert select_subset(tracks, subset).index.tolist() == expected


def test_load_genres():
    genres = load_genres(DATA / "genres.csv")
    assert genres.index.name == "genre_id"
    assert list(genres.columns) == ["#tracks", "parent", "title", "top_level"]
    assert genres.loc[240, "parent"] == 297 and genres.loc[240, "top_level"] == 15


@pytest.mark.parametrize(("text", "expected"), [
    ("[21]", [21]), ("[17, 10, 76, 103]", [17, 10, 76, 103]), ("[]", []), ("", []),
    (float("nan"), []),
])
def test_parse_id_list(text, expected):
    assert parse_id_list(text) == expected


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "[1, 'a']", "21", "[1,"])
def test_parse_id_list_rejects(text):
    with pytest.raises(MetadataError):
        parse_id_list(text)


def test_bad_list_cell_names_file_column_and_track(tmp_path):
    text = (DATA / "tracks.csv").read_text().replace('[240, 297, 15]', '[240, oops]')
    path = tmp_path / "tracks.csv"
    path.write_text(text)
    with pytest.raises(MetadataError, match=r"tracks\.csv.*genres_all.*1482"):
        load_tracks(path)


def test_unknown_subset_value_in_file(tmp_path):
    text = (DATA / "tracks.csv").read_text().replace(",validation,small,", ",validation,tiny,")
    path = tmp_path / "tracks.csv"
    path.write_text(text)
    with pytest.raises(MetadataError, match=r"subset.*140.*tiny"):
        load_tracks(path)


def test_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(MetadataError, match=r"tracks\.csv.*not found.*fma_metadata\.zip"):
        load_tracks(tmp_path / "tracks.csv")
    with pytest.raises(MetadataError, match=r"fma_metadata\.zip"):
        FmaDataset.open(tmp_path, "small")


def test_missing_column_is_named(tmp_path):
    tracks = pd.read_csv(DATA / "tracks.csv", index_col=0, header=[0, 1])
    path = tmp_path / "tracks.csv"
    tracks.drop(columns=[("set", "split")]).to_csv(path)
    with pytest.raises(MetadataError, match=r"\('set', 'split'\)"):
        load_tracks(path)
    genres = tmp_path / "genres.csv"
    genres.write_text("genre_id,#tracks,parent,top_level\n10,1,0,10\n")
    with pytest.raises(MetadataError, match=r"genres\.csv.*'title'"):
        load_genres(genres)


def test_unknown_subset_lists_valid_ones(data_dir, tracks):
    with pytest.raises(MetadataError, match=r"'tiny'.*small, medium, large"):
        FmaDataset.open(data_dir, "tiny")
    with pytest.raises(MetadataError, match="valid subsets"):
        select_subset(tracks, "full")


def test_audio_path():
    assert audio_path("fma_small", 2) == Path("fma_small/000/000002.mp3")
    assert audio_path(Path("d/fma_large"), 155320) == Path("d/fma_large/155/155320.mp3")


def test_fma_dataset(data_dir):
    ds = FmaDataset.open(data_dir, "medium")
    assert ds.metadata_dir == data_dir / "fma_metadata"
    assert ds.audio_dir == data_dir / "fma_medium"
    assert ds.items()[0] == ("2", data_dir / "fma_medium" / "000" / "000002.mp3")
    assert len(ds.items()) == len(ds.tracks) == 7
    labels = ds.top_genre_labels()
    assert labels[3] == "Hip-Hop" and pd.isna(labels[26])
    assert ds.artist_ids().loc[[2, 10]].tolist() == [1, 6]
    assert len(ds.genres) == 8
    with pytest.raises(MetadataError, match=r"fma_medium\.zip"):
        ds.require_audio_dir()


@pytest.mark.parametrize("present, expected", [
    (["fma_medium", "fma_large", "fma_full"], "fma_medium"),
    (["fma_small", "fma_large", "fma_full"], "fma_large"),
    (["fma_full"], "fma_full"),
])
def test_a_subset_reads_its_own_archive_or_the_smallest_superset(data_dir, present, expected):
    for archive in present:
        (data_dir / archive / "000").mkdir(parents=True)
        (data_dir / archive / "000" / "000002.mp3").write_bytes(b"ID3")
    ds = FmaDataset.open(data_dir, "medium")
    assert ds.require_audio_dir() == ds.audio_dir == data_dir / expected
    assert ds.items()[0] == ("2", data_dir / expected / "000" / "000002.mp3")


def test_no_superset_or_an_empty_one_names_the_archive_to_unpack(data_dir):
    (data_dir / "fma_small" / "000").mkdir(parents=True)  # a subset of medium: not enough
    (data_dir / "fma_small" / "000" / "000002.mp3").write_bytes(b"ID3")
    (data_dir / "fma_large").mkdir()  # empty: as if the unzip never ran
    ds = FmaDataset.open(data_dir, "medium")
    with pytest.raises(MetadataError, match=r"fma_medium.*fma_medium\.zip"):
        ds.require_audio_dir()
