"""FMA metadata: ``tracks.csv`` (three header rows), ``genres.csv``, audio paths, subsets.

Constants here are the single source of the genre order used by every model
output and every leaderboard CSV.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.errors import MetadataError

#: The 16 top-level genres in the crowdAI leaderboard's column order.
TOP_GENRES: tuple[str, ...] = (
    "Blues", "Classical", "Country", "Easy Listening", "Electronic", "Experimental",
    "Folk", "Hip-Hop", "Instrumental", "International", "Jazz", "Old-Time / Historic",
    "Pop", "Rock", "Soul-RnB", "Spoken",
)

#: FMA ``genre_id`` of each top-level genre.
TOP_GENRE_IDS: dict[str, int] = {
    "Blues": 3, "Classical": 5, "Country": 9, "Easy Listening": 13, "Electronic": 15,
    "Experimental": 38, "Folk": 17, "Hip-Hop": 21, "Instrumental": 1235, "International": 2,
    "Jazz": 4, "Old-Time / Historic": 8, "Pop": 10, "Rock": 12, "Soul-RnB": 14, "Spoken": 20,
}

#: Nested subsets, smallest first: small is inside medium, medium inside large.
SUBSETS: tuple[str, ...] = ("small", "medium", "large")

#: Audio archives, smallest first; each holds the tracks of the ones before it
#: (fma_full holds every track untrimmed, the others 30-s clips).
AUDIO_ARCHIVES: tuple[str, ...] = ("small", "medium", "large", "full")

#: Official split names in ``('set', 'split')``.
SPLITS: tuple[str, ...] = ("training", "validation", "test")

#: Training tracks known to have no audio or too little (FMA issue tracker). Detection
#: must not rely on this list: the feature extractor finds such files by decoding them.
KNOWN_FAULTY_TRACK_IDS: frozenset[int] = frozenset({
    1486, 5574, 65753, 80391, 98558, 98559, 98560, 98565, 98566, 98567, 98568, 98569,
    98571, 99134, 105247, 108924, 108925, 126981, 127336, 133297, 143992,
})

#: The 52 columns of the real ``tracks.csv``, in file order, as ``(group, column)``.
TRACKS_COLUMNS: tuple[tuple[str, str], ...] = (
    *(("album", c) for c in (
        "comments", "date_created", "date_released", "engineer", "favorites", "id",
        "information", "listens", "producer", "tags", "title", "tracks", "type")),
    *(("artist", c) for c in (
        "active_year_begin", "active_year_end", "associated_labels", "bio", "comments",
        "date_created", "favorites", "id", "latitude", "location", "longitude", "members",
        "name", "related_projects", "tags", "website", "wikipedia_page")),
    ("set", "split"), ("set", "subset"),
    *(("track", c) for c in (
        "bit_rate", "comments", "composer", "date_created", "date_recorded", "duration",
        "favorites", "genre_top", "genres", "genres_all", "information", "interest",
        "language_code", "license", "listens", "lyricist", "number", "publisher", "tags",
        "title")),
)

#: Columns every loader user relies on; a ``tracks.csv`` without one is rejected.
REQUIRED_TRACKS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("set", "split"), ("set", "subset"), ("artist", "id"),
    ("track", "genre_top"), ("track", "genres"), ("track", "genres_all"),
)

#: Columns nothing in the toolkit reads: typed when they parse, but a malformed cell there
#: becomes missing (None / NaT) with a warning instead of aborting the load.
LENIENT_TRACKS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("track", "tags"), ("album", "tags"), ("artist", "tags"),
    ("track", "date_created"), ("track", "date_recorded"),
    ("album", "date_created"), ("album", "date_released"),
    ("artist", "date_created"), ("artist", "active_year_begin"), ("artist", "active_year_end"),
)

#: Columns holding genre-id lists such as ``"[21, 100]"``.
GENRE_LIST_COLUMNS: tuple[tuple[str, str], ...] = (("track", "genres"), ("track", "genres_all"))

#: Columns holding tag lists such as ``"['indie', 'lo-fi']"``.
TAG_LIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("track", "tags"), ("album", "tags"), ("artist", "tags"),
)

#: Date columns (``YYYY-MM-DD HH:MM:SS`` or empty).
DATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("track", "date_created"), ("track", "date_recorded"),
    ("album", "date_created"), ("album", "date_released"),
    ("artist", "date_created"), ("artist", "active_year_begin"), ("artist", "active_year_end"),
)

#: Columns of ``genres.csv`` besides the ``genre_id`` index.
GENRES_COLUMNS: tuple[str, ...] = ("#tracks", "parent", "title", "top_level")

#: Where each file comes from, for "file missing" messages.
_ARCHIVE_HINT = "download fma_metadata.zip and unpack it so that this file exists (data/fma_metadata/)"


def _require_file(path: Path, hint: str) -> None:
    if not path.is_file():
        raise MetadataError(f"{path}: file not found; {hint}")


#: A list of integers as FMA writes it (``[]``, ``[21]``, ``[21, 100]``): parsed without ``ast``.
_INT_LIST = re.compile(r"\[\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*)?\]")


def _parse_list(text: object) -> list:
    """Parse one list-string cell safely; an empty cell is an empty list."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return []
    if isinstance(text, list):
        return text
    value = ast.literal_eval(str(text).strip() or "[]")
    if not isinstance(value, list):
        raise ValueError(f"not a list: {text!r}")
    return value


def parse_id_list(text: object) -> list[int]:
    """Parse a genre-id list cell such as ``"[21, 100]"`` without ``eval``.

    Parameters
    ----------
    text : str or NaN
        The cell; an empty cell (NaN, ``""``) gives ``[]``.

    Returns
    -------
    list of int

    Raises
    ------
    MetadataError
        If the text is not a Python-literal list of integers.
    """
    if isinstance(text, str) and _INT_LIST.fullmatch(text.strip()):
        return [int(v) for v in re.findall(r"-?\d+", text)]
    try:
        value = _parse_list(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise MetadataError(f"not a list of genre ids: {text!r} ({exc})") from exc
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise MetadataError(f"not a list of genre ids: {text!r}")
    return value


def _parse_tag_list(text: object) -> list[str]:
    try:
        value = _parse_list(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise MetadataError(f"not a list of tags: {text!r} ({exc})") from exc
    return [str(v) for v in value]


def _bad_cell(path: Path, column: tuple[str, str], track_id: object, detail: str) -> MetadataError:
    return MetadataError(f"{path}: column {column!r}, track_id {track_id}: {detail}")


def _warn_lenient(path: Path, column: tuple[str, str], bad: pd.Series, what: str) -> None:
    """Warn that ``bad`` (boolean per track) cells of an unused column were set missing."""
    track_id = bad.idxmax()
    warnings.warn(f"{path}: column {column!r}: {int(bad.sum())} cell(s) are not {what} (first at track_id "
                  f"{track_id}); they are left missing (no command uses this column)", stacklevel=3)


def _parse_column(path: Path, tracks: pd.DataFrame, column: tuple[str, str], parse, *,
                  strict: bool = True, what: str = "a list") -> pd.Series:
    """``parse`` each distinct cell of ``column`` once; every row gets its own copy of the list.

    A cell ``parse`` rejects raises :class:`MetadataError` naming the column and track id
    (``strict``), or becomes None with one warning for the column.
    """
    codes, uniques = pd.factorize(tracks[column], use_na_sentinel=True)
    parsed: list[list | None] = []
    for code, cell in enumerate(uniques):
        try:
            parsed.append(parse(cell))
        except MetadataError as exc:
            if strict:
                raise _bad_cell(path, column, tracks.index[(codes == code).argmax()], str(exc)) from exc
            parsed.append(None)
    empty = parse(None)
    values = [list(empty) if code < 0 else _copy_list(parsed[code]) for code in codes]
    result = pd.Series(values, index=tracks.index, dtype=object, name=column)
    if not strict and result.isna().any():
        _warn_lenient(path, column, result.isna(), what)
    return result


def _copy_list(value: list | None) -> list | None:
    """A row's own copy of a parsed list (None stays None)."""
    return None if value is None else list(value)


def _to_category(path: Path, tracks: pd.DataFrame, column: tuple[str, str],
                 dtype: pd.CategoricalDtype) -> pd.Series:
    raw = tracks[column]
    converted = raw.astype(dtype)
    unknown = converted.isna() & raw.notna()
    if unknown.any():
        first = int(unknown.to_numpy().argmax())
        raise _bad_cell(path, column, tracks.index[first],
                        f"unknown value {raw.iloc[first]!r}; expected one of {list(dtype.categories)}")
    return converted


def load_tracks(path: str | Path) -> pd.DataFrame:
    """Load FMA ``tracks.csv`` (three header rows) with typed columns.

    Works with pandas 3 / numpy 2: categorical columns are built from explicit
    :class:`pandas.CategoricalDtype` objects, list cells are parsed with
    :func:`ast.literal_eval`, never ``eval``.

    Parameters
    ----------
    path : path-like
        ``fma_metadata/tracks.csv``. Columns beyond :data:`REQUIRED_TRACKS_COLUMNS`
        are optional; those present are typed. The whole FMA (106,574 rows) loads in
        seconds: list cells are parsed once per distinct value.

    Returns
    -------
    pandas.DataFrame, shape (n_tracks, n_columns)
        Index ``track_id`` (int); two-level columns. ``('set', 'subset')`` is an ordered
        categorical over :data:`SUBSETS`, ``('set', 'split')`` a categorical over
        :data:`SPLITS`, ``('track', 'genre_top')`` a categorical over :data:`TOP_GENRES`
        (NA where FMA leaves it empty), ``('track', 'genres')`` / ``('track', 'genres_all')``
        lists of int, tag columns lists of str, date columns ``datetime64``.

    Raises
    ------
    MetadataError
        Missing file, missing required column, or a malformed cell of a column the
        toolkit uses (names the file, the column and the track id). A malformed cell of
        a :data:`LENIENT_TRACKS_COLUMNS` column is set missing with a warning instead.
    """
    path = Path(path)
    _require_file(path, _ARCHIVE_HINT)
    try:
        tracks = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"{path}: cannot parse as FMA tracks.csv ({exc})") from exc
    if not isinstance(tracks.columns, pd.MultiIndex) or tracks.columns.nlevels != 2:
        raise MetadataError(f"{path}: expected two header rows (group, column) and a track_id row")
    missing = [c for c in REQUIRED_TRACKS_COLUMNS if c not in tracks.columns]
    if missing:
        raise MetadataError(f"{path}: required column {missing[0]!r} is missing"
                            + (f" (also missing: {missing[1:]})" if len(missing) > 1 else ""))
    try:
        tracks.index = tracks.index.astype(int)
    except (ValueError, TypeError) as exc:
        raise MetadataError(f"{path}: track_id index is not integer ({exc})") from exc
    tracks.index.name = "track_id"

    for column in GENRE_LIST_COLUMNS:
        tracks[column] = _parse_column(path, tracks, column, parse_id_list)
    for column in TAG_LIST_COLUMNS:
        if column in tracks.columns:
            tracks[column] = _parse_column(path, tracks, column, _parse_tag_list,
                                           strict=column not in LENIENT_TRACKS_COLUMNS, what="a list of tags")
    for column in DATE_COLUMNS:
        if column in tracks.columns:
            raw = tracks[column]
            parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
            bad = parsed.isna() & raw.notna()
            if bad.any():
                if column not in LENIENT_TRACKS_COLUMNS:
                    first = int(bad.to_numpy().argmax())
                    raise _bad_cell(path, column, tracks.index[first], f"not a date: {raw.iloc[first]!r}")
                _warn_lenient(path, column, bad, "a date")
            tracks[column] = parsed
    tracks[("set", "subset")] = _to_category(
        path, tracks, ("set", "subset"), pd.CategoricalDtype(list(SUBSETS), ordered=True))
    tracks[("set", "split")] = _to_category(
        path, tracks, ("set", "split"), pd.CategoricalDtype(list(SPLITS)))
    tracks[("track", "genre_top")] = _to_category(
        path, tracks, ("track", "genre_top"), pd.CategoricalDtype(list(TOP_GENRES)))
    artist = pd.to_numeric(tracks[("artist", "id")], errors="coerce")
    if artist.isna().any():
        track_id = artist.isna().idxmax()
        raise _bad_cell(path, ("artist", "id"), track_id,
                        f"not an artist id: {tracks.at[track_id, ('artist', 'id')]!r}")
    tracks[("artist", "id")] = artist.astype(int)
    return tracks


def load_genres(path: str | Path) -> pd.DataFrame:
    """Load FMA ``genres.csv``.

    Parameters
    ----------
    path : path-like
        ``fma_metadata/genres.csv`` with header ``genre_id,#tracks,parent,title,top_level``.

    Returns
    -------
    pandas.DataFrame, shape (n_genres, 4)
        Index ``genre_id`` (int); columns ``#tracks``, ``parent`` (0 for a top-level
        genre), ``title``, ``top_level``.

    Raises
    ------
    MetadataError
        Missing file or missing column.
    """
    path = Path(path)
    _require_file(path, _ARCHIVE_HINT)
    try:
        genres = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"{path}: cannot parse as FMA genres.csv ({exc})") from exc
    for column in ("genre_id", *GENRES_COLUMNS):
        if column not in genres.columns:
            raise MetadataError(f"{path}: required column {column!r} is missing")
    genres = genres.set_index("genre_id")
    for column in ("#tracks", "parent", "top_level"):
        values = pd.to_numeric(genres[column], errors="coerce")
        if values.isna().any():
            genre_id = values.isna().idxmax()
            raise MetadataError(f"{path}: column {column!r}, genre_id {genre_id}: not an integer")
        genres[column] = values.astype(int)
    genres.index = genres.index.astype(int)
    return genres[list(GENRES_COLUMNS)]


#: The folders of an FMA audio archive (``fma_large/000/``), as a glob pattern: see :func:`audio_path`.
AUDIO_FOLDER_GLOB = "[0-9][0-9][0-9]"


def audio_path(audio_dir: str | Path, track_id: int) -> Path:
    """Path of a track's mp3: ``audio_dir/NNN/NNNNNN.mp3`` (track 2 -> ``000/000002.mp3``)."""
    name = f"{int(track_id):06d}"
    return Path(audio_dir) / name[:3] / f"{name}.mp3"


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise MetadataError(f"unknown subset {subset!r}; valid subsets: {', '.join(SUBSETS)}")


def select_subset(tracks: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Rows of ``tracks`` that belong to ``subset`` (nested: small ⊂ medium ⊂ large).

    Parameters
    ----------
    tracks : pandas.DataFrame
        As returned by :func:`load_tracks`.
    subset : {'small', 'medium', 'large'}

    Returns
    -------
    pandas.DataFrame
        A copy holding the tracks whose ``('set', 'subset')`` is ``subset`` or smaller.
    """
    _check_subset(subset)
    return tracks[tracks[("set", "subset")] <= subset].copy()


def _holds_audio(folder: Path) -> bool:
    """Whether ``folder`` holds at least one ``NNN/*.mp3`` (stops at the first)."""
    return folder.is_dir() and next(folder.glob("*/*.mp3"), None) is not None


@dataclass(frozen=True, eq=False)
class FmaDataset:
    """One FMA subset: its tracks, the genre tree and where the audio lies.

    Use :meth:`open`; ``data_dir`` holds ``fma_metadata/`` and ``fma_<subset>/``.
    """

    data_dir: Path
    subset: str
    tracks: pd.DataFrame
    genres: pd.DataFrame

    @classmethod
    def open(cls, data_dir: str | Path, subset: str) -> FmaDataset:
        """Load ``data_dir/fma_metadata/{tracks,genres}.csv`` restricted to ``subset``."""
        _check_subset(subset)
        data_dir = Path(data_dir)
        metadata_dir = data_dir / "fma_metadata"
        tracks = select_subset(load_tracks(metadata_dir / "tracks.csv"), subset)
        genres = load_genres(metadata_dir / "genres.csv")
        return cls(data_dir=data_dir, subset=subset, tracks=tracks, genres=genres)

    @property
    def metadata_dir(self) -> Path:
        """``data_dir/fma_metadata``."""
        return self.data_dir / "fma_metadata"

    @property
    def audio_dir(self) -> Path:
        """The audio folder read: ``data_dir/fma_<subset>``, or else the smallest superset archive present.

        Subsets are nested, so ``fma_large/`` holds every ``medium`` track (``fma_full/`` too,
        untrimmed). A folder without any ``NNN/*.mp3`` counts as absent. When none is
        present this is ``data_dir/fma_<subset>`` (see :meth:`require_audio_dir`).
        """
        for archive in AUDIO_ARCHIVES[AUDIO_ARCHIVES.index(self.subset):]:
            folder = self.data_dir / f"fma_{archive}"
            if _holds_audio(folder):
                return folder
        return self.data_dir / f"fma_{self.subset}"

    @property
    def feature_source(self) -> str:
        """Source name of this subset's feature cache (:func:`common.features.cache_dir_for`).

        ``fma_<subset>``: the 30-s clips are the same in every archive that holds them.
        ``fma_<subset>_untrimmed`` when they are read from ``fma_full/`` (whole tracks),
        so that those features never mix with the clips' in one cache.
        """
        untrimmed = self.audio_dir.name == "fma_full"
        return f"fma_{self.subset}_untrimmed" if untrimmed else f"fma_{self.subset}"

    def require_audio_dir(self) -> Path:
        """Return :attr:`audio_dir`, or raise :class:`MetadataError` naming the folder and the archive to unpack."""
        folder = self.audio_dir
        if _holds_audio(folder):
            return folder
        supersets = [f"fma_{archive}.zip" for archive in AUDIO_ARCHIVES[AUDIO_ARCHIVES.index(self.subset) + 1:]]
        state = "holds no NNN/NNNNNN.mp3 files" if folder.is_dir() else "audio folder not found"
        raise MetadataError(f"{folder}: {state} (nor does any superset folder); download fma_{self.subset}.zip "
                            f"(or a superset: {', '.join(supersets)}) and unpack it into {self.data_dir}/")

    def items(self) -> list[tuple[str, Path]]:
        """``(str(track_id), mp3 path)`` for every track of the subset, in index order."""
        return [(str(tid), audio_path(self.audio_dir, tid)) for tid in self.tracks.index]

    def top_genre_labels(self) -> pd.Series:
        """``('track', 'genre_top')`` per track: a title of :data:`TOP_GENRES` or NA."""
        return self.tracks[("track", "genre_top")].rename("genre_top")

    def artist_ids(self) -> pd.Series:
        """``('artist', 'id')`` per track (int), for artist-grouped folds."""
        return self.tracks[("artist", "id")].rename("artist_id")
