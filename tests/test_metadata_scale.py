"""tracks.csv at FMA scale: list cells parsed once per distinct value, unused columns parsed leniently."""

from __future__ import annotations

import ast
import re

import pandas as pd
import pytest

from common import metadata
from common.demo_data import synthetic_tracks
from common.errors import MetadataError
from common.metadata import load_tracks

N_ROWS = 20_000


@pytest.fixture(scope="module")
def big_tracks() -> pd.DataFrame:
    """A generated 20,000-row tracks table (2,000 distinct rows, every one of the 52 columns)."""
    return synthetic_tracks(N_ROWS, seed=1, distinct_rows=2000)


@pytest.fixture(scope="module")
def big_csv(big_tracks, tmp_path_factory):
    path = tmp_path_factory.mktemp("tracks") / "tracks.csv"
    big_tracks.to_csv(path)
    return path


def write_with_cells(tracks: pd.DataFrame, path, cells: dict) -> None:
    """Write ``tracks`` to ``path`` with ``{(track_id, column): text}`` replaced."""
    tracks = tracks.copy()
    for (track_id, column), text in cells.items():
        tracks[column] = tracks[column].astype(object)
        tracks.loc[track_id, column] = text
    tracks.to_csv(path)


def test_a_large_generated_tracks_csv_loads_with_the_values_of_a_cell_by_cell_parse(big_csv, monkeypatch):
    lines = big_csv.read_text().splitlines()[:3]
    assert lines[0].startswith(",album,album") and lines[2].startswith("track_id,,,")
    evaluated = []
    literal_eval = ast.literal_eval

    def counting_literal_eval(text):
        evaluated.append(text)
        return literal_eval(text)

    monkeypatch.setattr(metadata.ast, "literal_eval", counting_literal_eval)
    tracks = load_tracks(big_csv)
    assert tracks.shape == (N_ROWS, 52) and tracks.index.is_unique
    assert tracks[("set", "subset")].value_counts().to_dict() == {"small": 1502, "medium": 3190, "large": 15308}
    raw = pd.read_csv(big_csv, index_col=0, header=[0, 1], dtype=str, keep_default_na=False)
    for column in (("track", "genres"), ("track", "genres_all"), ("track", "tags"), ("artist", "tags")):
        expected = [literal_eval(cell) if cell else [] for cell in raw[column]]
        assert tracks[column].tolist() == expected, column
    # list cells are parsed once per distinct value (genre lists without ast at all), never row by row
    distinct_tags = sum(raw[c].nunique() for c in metadata.TAG_LIST_COLUMNS)
    assert 0 < len(evaluated) <= distinct_tags < N_ROWS
    assert not any(text.startswith("[") and text[1:2].isdigit() for text in evaluated)
    # each row owns its list: changing one changes no other row
    first, second = tracks.index[:2]
    tracks.at[first, ("track", "genres")].append(-1)
    assert -1 not in tracks.at[second, ("track", "genres")]


def test_an_odd_cell_in_an_unused_column_is_left_missing_with_a_warning(big_tracks, tmp_path):
    bad_tags, bad_date = big_tracks.index[10], big_tracks.index[20]
    path = tmp_path / "tracks.csv"
    write_with_cells(big_tracks, path, {(bad_tags, ("track", "tags")): "['unclosed",
                                        (bad_date, ("album", "date_created")): "sometime in 2009",
                                        (big_tracks.index[30], ("album", "listens")): "many"})  # stays text
    with pytest.warns(UserWarning) as caught:
        tracks = load_tracks(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "('track', 'tags')" in messages and f"track_id {bad_tags}" in messages
    assert "('album', 'date_created')" in messages and f"track_id {bad_date}" in messages
    assert tracks.at[bad_tags, ("track", "tags")] is None
    assert pd.isna(tracks.at[bad_date, ("album", "date_created")])
    assert tracks[("track", "tags")].notna().sum() == N_ROWS - 1
    assert len(tracks) == N_ROWS and tracks.at[big_tracks.index[30], ("album", "listens")] == "many"


@pytest.mark.parametrize(("column", "value", "match"), [
    (("track", "genres"), "[21, x]", "not a list of genre ids"),
    (("set", "split"), "trainning", "unknown value"),
    (("artist", "id"), "n/a", "not an artist id"),
])
def test_a_bad_cell_in_a_used_column_names_the_column_and_the_row(big_tracks, tmp_path, column, value, match):
    track_id = big_tracks.index[12345]
    path = tmp_path / "tracks.csv"
    write_with_cells(big_tracks, path, {(track_id, column): value})
    with pytest.raises(MetadataError, match=re.escape(f"tracks.csv: column {column!r}, track_id {track_id}: ") + match):
        load_tracks(path)
