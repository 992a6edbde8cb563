"""FMA metadata: ``tracks.csv`` (three header rows), ``genres.csv``, audio paths, subsets.

Constants here are the single source of the genre order used by every model
output and every leaderboard CSV.
"""

from __future__ import annotations

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

#: Official split names in ``('set', 'split')``.
SPLITS: tuple[str, ...] = ("training", "validation", "test")

#: Training tracks known to have no audio or too little (FMA issue tracker). Detection
#: must not rely on this list: the feature extractor finds such files by decoding them.
KNOWN_FAULTY_TRACK_IDS: frozenset[int] = frozenset({
    1486, 5574, 65753, 80391, 98558, 98559, 98560, 98565, 98566, 98567, 98568, 98569,
    98571, 99134, 105247, 108924, 108925, 126981, 127336, 133297, 143992,
})
