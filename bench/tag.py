"""Zero-shot tagging: both genre mappings' picks and accuracy, and speed, on real recordings.

On every real recording at hand -- those of ``../shared/audio`` (``--shared-audio``; used when
present) and of every folder given with ``--audio DIR`` (repeatable) -- whole files, any of
``.ogg .mp3 .wav .flac``, in one run:

**Picks and accuracy of both mappings** (:mod:`common.zero_shot`): the MSD-only baseline
(``msd_only``: MSD tags mapped to the 12 genres they name) and the fused mapping
(``fused``: the same, plus MTT tags and the speech detector for Classical, International
and Spoken when their evidence reaches 1/2). Each recording is scored as a zero-shot
submission scores a clip (every 3-s patch averaged). A table gives, per recording, its
label, each mapping's top genre and probability, and the added genres' evidence (``*``:
the rule passed, so the fused pick may differ from MSD's); then each mapping's accuracy
over the labelled recordings, over those of a genre MSD names and over those of a genre
it cannot name. Labels come with each folder: ``labels.csv`` (columns ``file,genre``) or,
failing that, the Markdown table of its ``README.md`` (columns ``file`` and ``genre ...``,
as in ``../shared/audio``); a genre of ``unknown`` or an empty one marks a recording
without a label (scored, not counted). Licences stay beside the recordings (``NAME.txt``).

**Speed**: seconds of audio tagged per second, our musicnn against the original:

(a) ours, MSD only (``ours``): the zero-shot path before the fusion of both taggers --
    decode + resample (``common.audio.load_audio``), log-mel, 3-s patches, the
    ``MSD_musicnn`` Keras model 8 patches per call (model built once, as ``crowdai.tag``
    does per call);
(a') ours, fused (``fused``): today's ``common.zero_shot`` path -- the same decoding and
    log-mel, both ``MSD_musicnn`` and ``MTT_musicnn`` on every patch in one graph, the
    low-energy ratio and the fused genre scores. (a) and (a') alternate for ``--rounds``
    rounds and each keeps its fastest round, so that other load on the machine hits both
    alike; ``fused.ratio_to_msd_only`` is the fused speed over the MSD-only speed;
(b) the original ``musicnn.extractor.extractor(file, model="MSD_musicnn",
    extract_features=False)``, which rebuilds and restores its TF-1 graph for every
    file and runs patches one at a time. It needs musicnn's own environment, a
    throwaway virtualenv (see ``tools/make_musicnn_golden.py`` for how to make it,
    default ``/tmp/musicnn-venv``); its float16 cast is fixed the same way there.
    Without that virtualenv this half is skipped with a message. It runs twice:
    as shipped (TensorFlow's default kernels), and with ``TF_ENABLE_ONEDNN_OPTS=1``,
    the oneDNN kernels the toolkit turns on (``common/__init__.py``), so that the
    report separates what the setting gives from what the code gives.

Each side processes every file once after one warm-up file. Writes the picks, the
accuracies, the rates and the ratios as JSON (``speedup``: against the original as shipped).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic

#: Audio files a folder is searched for.
AUDIO_SUFFIXES: tuple[str, ...] = (".ogg", ".mp3", ".wav", ".flac")

#: A label that marks a recording of unknown genre (scored, not counted).
UNKNOWN_LABEL = "unknown"

_ORIGINAL = r"""
import json, sys, time
sys.path.insert(0, {tools!r})
from make_musicnn_golden import patch_batch_data
patch_batch_data(None)
from musicnn import extractor
files = {files!r}
extractor.extractor(files[0], model="MSD_musicnn", extract_features=False)  # warm-up
start = time.perf_counter()
for path in files:
    extractor.extractor(path, model="MSD_musicnn", extract_features=False)
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def _label(value: str, *, source: Path, file: str) -> str | None:
    """A label cell: a top-level genre, or None for ``unknown`` / empty."""
    from common.metadata import TOP_GENRES

    value = value.strip()
    if value.lower() in ("", UNKNOWN_LABEL):
        return None
    if value not in TOP_GENRES:
        raise ToolkitError(f"{source}: genre of {file!r} is {value!r}, not one of the 16 FMA top-level genres "
                           f"(or {UNKNOWN_LABEL!r})")
    return value


def _markdown_labels(path: Path) -> dict[str, str | None]:
    """``file -> genre`` from the first Markdown table of ``path`` with a ``file`` and a ``genre...`` column."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip().startswith("|")]
    for index, header in enumerate(rows):
        names = [cell.lower() for cell in header]
        genre_columns = [i for i, name in enumerate(names) if name.startswith("genre")]
        if "file" in names and genre_columns:
            file_column, genre_column = names.index("file"), genre_columns[0]
            body = [row for row in rows[index + 1:] if not set("".join(row)) <= set("-: ")]
            return {row[file_column]: _label(row[genre_column], source=path, file=row[file_column])
                    for row in body if len(row) == len(header)}
    raise ToolkitError(f"{path}: no Markdown table with a 'file' and a 'genre' column")


def read_labels(folder: str | Path) -> tuple[dict[str, str | None], Path | None]:
    """The genre label of each recording of ``folder``: its ``labels.csv``, else its ``README.md`` table.

    Returns
    -------
    labels : dict of str to (str or None)
        File name -> top-level genre (None: unknown); empty when the folder has neither file
        (its recordings are timed and their picks shown, not scored).
    source : Path or None
        The file they were read from.

    Raises
    ------
    ToolkitError
        A ``labels.csv`` without ``file`` and ``genre`` columns, or a genre that is not one
        of ``TOP_GENRES`` (names the file and the recording).
    """
    folder = Path(folder)
    source = folder / "labels.csv"
    if source.is_file():
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"file", "genre"} <= set(reader.fieldnames or ()):
                raise ToolkitError(f"{source}: expected columns 'file' and 'genre', got {reader.fieldnames}")
            return {row["file"]: _label(row["genre"], source=source, file=row["file"]) for row in reader}, source
    source = folder / "README.md"
    if source.is_file():
        return _markdown_labels(source), source
    return {}, None


def audio_files(folder: str | Path) -> list[Path]:
    """The recordings of ``folder`` (:data:`AUDIO_SUFFIXES`), sorted; a ToolkitError when there are none."""
    folder = Path(folder)
    files = sorted(path for path in folder.glob("*") if path.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ToolkitError(f"{folder}: no recordings ({', '.join(AUDIO_SUFFIXES)})")
    return files


def mapping_record(name: str, label: str | None, views: dict) -> dict[str, Any]:
    """One recording's line: its label, each mapping's pick and probability, the added genres' evidence.

    Parameters
    ----------
    name : str
        The recording's file name.
    label : str or None
        Its top-level genre, if known.
    views : dict
        :func:`common.zero_shot.clip_views` of the recording (one row per view).
    """
    from common.metadata import TOP_GENRES
    from common.zero_shot import ADDED_GENRES, MAPPING_VIEWS, STRONG_EVIDENCE

    record: dict[str, Any] = {"file": name, "label": label}
    for mapping, view in MAPPING_VIEWS.items():
        probs = views[view].probs[0]
        pick = int(np.argmax(probs))
        record[mapping] = {"genre": TOP_GENRES[pick], "probability": round(float(probs[pick]), 4)}
    evidence = views["added_evidence"].probs[0]
    record["added_evidence"] = dict(zip(ADDED_GENRES, np.round(evidence, 4).tolist()))
    record["rule_passed"] = bool(evidence.max() >= STRONG_EVIDENCE)
    return record


def accuracy(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each mapping's top-genre accuracy over the labelled recordings: all, MSD-named genres, the others.

    Returns
    -------
    dict
        ``{group: {"recordings": n, mapping: {"correct": k, "accuracy": k / n or None}}}`` for the
        groups ``all``, ``msd_genres`` and ``other_genres``.
    """
    from common.zero_shot import MAPPINGS, MSD_GENRES

    labelled = [r for r in records if r["label"] is not None]
    groups = {"all": labelled, "msd_genres": [r for r in labelled if r["label"] in MSD_GENRES],
              "other_genres": [r for r in labelled if r["label"] not in MSD_GENRES]}
    result: dict[str, dict[str, Any]] = {}
    for group, rows in groups.items():
        result[group] = {"recordings": len(rows)}
        for mapping in MAPPINGS:
            correct = sum(r[mapping]["genre"] == r["label"] for r in rows)
            result[group][mapping] = {"correct": correct, "accuracy": round(correct / len(rows), 4) if rows else None}
    return result


def score_mappings(folders: list[Path], *, taggers) -> list[dict[str, Any]]:
    """:func:`mapping_record` of every recording of ``folders`` (labels from :func:`read_labels`)."""
    from common.audio import load_audio
    from common.models.musicnn import MUSICNN_FEATURES
    from common.zero_shot import clip_views

    records = []
    for folder in folders:
        labels, _ = read_labels(folder)
        for path in audio_files(folder):
            y = load_audio(path, sample_rate=MUSICNN_FEATURES.sample_rate)
            record = mapping_record(path.name, labels.get(path.name), clip_views(y, taggers=taggers))
            records.append({"folder": str(folder), "seconds": round(y.shape[0] / MUSICNN_FEATURES.sample_rate, 3),
                            **record})
    return records


def mapping_table(records: list[dict[str, Any]], scores: dict[str, dict[str, Any]]) -> str:
    """The picks of both mappings, one recording a line, then their accuracies side by side."""
    from common.zero_shot import ADDED_GENRES, MAPPINGS

    width = max(len(r["file"]) for r in records)
    lines = [f"{'recording':{width}s}  {'label':14s}  {'MSD only':20s}  {'fused':20s}  "
             f"evidence ({' / '.join(ADDED_GENRES)})"]
    for r in records:
        picks = [f"{r[m]['genre']} {r[m]['probability']:.2f}" for m in MAPPINGS]
        evidence = " / ".join(f"{v:.2f}" for v in r["added_evidence"].values())
        lines.append(f"{r['file']:{width}s}  {r['label'] or '(unknown)':14s}  {picks[0]:20s}  {picks[1]:20s}  "
                     f"{evidence}{' *' if r['rule_passed'] else ''}")
    titles = {"all": "all labelled", "msd_genres": "genres MSD names", "other_genres": "genres MSD cannot name"}
    for group, title in titles.items():
        n = scores[group]["recordings"]
        cells = [f"{scores[group][m]['correct']}/{n}" + (f" = {100 * scores[group][m]['accuracy']:.0f} %" if n else "")
                 for m in MAPPINGS]
        lines.append(f"accuracy, {title} ({n}): MSD only {cells[0]}, fused {cells[1]}")
    return "\n".join(lines)


def _msd_only(y, *, model) -> None:
    """The MSD-only zero-shot forward pass (log-mel, patches, 8 per call), as it was before the fusion."""
    from common.inference import forward_function
    from common.models.musicnn import musicnn_logmel, patches

    batch, forward = patches(musicnn_logmel(y)), forward_function(model)
    for start in range(0, len(batch), 8):
        forward(batch[start:start + 8])


def _fused(y, *, taggers) -> None:
    """Today's zero-shot pass: both taggers, the low-energy ratio, the whole song's genre scores."""
    from common.zero_shot import patch_evidence, pooled_views

    evidence = patch_evidence(y, taggers=taggers)
    pooled_views(evidence.stacked().mean(axis=0, keepdims=True))


def run_ours(files: list[Path], *, taggers, rounds: int = 3) -> tuple[float, float]:
    """Wall seconds to tag ``files`` MSD-only and fused: the fastest of ``rounds`` alternating rounds.

    Both sides are warmed up on the first file first.

    Parameters
    ----------
    files : list of Path
    taggers : common.zero_shot.MusicnnTaggers
    rounds : int

    Returns
    -------
    msd_only, fused : float
    """
    from common.audio import load_audio
    from common.models.musicnn import MUSICNN_FEATURES

    sides = {"msd_only": lambda y: _msd_only(y, model=taggers.msd), "fused": lambda y: _fused(y, taggers=taggers)}
    warm = load_audio(files[0], sample_rate=MUSICNN_FEATURES.sample_rate)
    best: dict[str, float] = {}
    for side in sides.values():
        side(warm)
    for _ in range(rounds):
        for name, side in sides.items():
            start = time.perf_counter()
            for path in files:
                side(load_audio(path, sample_rate=MUSICNN_FEATURES.sample_rate))
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return best["msd_only"], best["fused"]


def run_original(files: list[Path], *, python: Path, onednn: bool) -> float:
    """Wall seconds the original musicnn needs for ``files`` (in its own virtualenv).

    ``onednn``: run it with ``TF_ENABLE_ONEDNN_OPTS=1``; otherwise with TensorFlow's default.
    """
    tools = Path(__file__).resolve().parents[1] / "tools"
    code = _ORIGINAL.format(tools=str(tools), files=[str(p) for p in files])
    env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"}
    if onednn:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"original musicnn failed: {result.stderr.strip()[-800:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.tag", description=__doc__.splitlines()[0])
    parser.add_argument("--shared-audio", type=Path, default=Path("../shared/audio"),
                        help="the project's shared recordings, used when present (default: %(default)s)")
    parser.add_argument("--audio", type=Path, action="append", default=[],
                        help="another folder of labelled recordings (labels.csv, or a README.md genre table); "
                             "repeat for more")
    parser.add_argument("--weights", type=Path, default=Path("models/musicnn"), help="our musicnn weights folder")
    parser.add_argument("--original-python", type=Path, default=Path("/tmp/musicnn-venv/bin/python"),
                        help="python of a virtualenv with the original musicnn (skipped when absent)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of MSD-only and fused tagging")
    parser.add_argument("--out", type=Path, default=Path("bench/tag.json"))
    return parser


@command("python -m bench.tag")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from common.zero_shot import MusicnnTaggers

    folders = list(dict.fromkeys(([args.shared_audio] if args.shared_audio.is_dir() or not args.audio else [])
                                 + args.audio))
    files = [path for folder in folders for path in audio_files(folder)]
    for folder in folders:  # a malformed label file fails before any tagging
        if read_labels(folder)[1] is None:
            print(f"{folder}: no labels.csv (columns file,genre) or README.md genre table; its recordings are "
                  "timed and tagged, not scored", file=sys.stderr)
    taggers = MusicnnTaggers.load(weights_dir=args.weights)
    records = score_mappings(folders, taggers=taggers)
    scores = accuracy(records)
    print(mapping_table(records, scores))
    audio_seconds = sum(record["seconds"] for record in records)
    result: dict = {"folders": [str(folder) for folder in folders], "files": len(files),
                    "audio_seconds": round(audio_seconds, 2), "recordings": records, "accuracy": scores}
    ours, fused = run_ours(files, taggers=taggers, rounds=args.rounds)
    result["rounds"] = args.rounds
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    result["ours"] = {"wall_seconds": round(ours, 3), "audio_seconds_per_second": round(audio_seconds / ours, 2)}
    print(f"{'ours (MSD only):':17s} {audio_seconds:.0f} s of audio in {ours:.1f} s = {audio_seconds / ours:.1f} s/s")
    result["ours"]["tf_enable_onednn_opts"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    result["fused"] = {"wall_seconds": round(fused, 3), "audio_seconds_per_second": round(audio_seconds / fused, 2),
                       "ratio_to_msd_only": round(ours / fused, 3)}
    print(f"{'fused (MSD+MTT):':17s} {audio_seconds:.0f} s of audio in {fused:.1f} s = "
          f"{audio_seconds / fused:.1f} s/s, {ours / fused:.2f} x the MSD-only speed")
    if args.original_python.is_file():
        for key, onednn in (("original", False), ("original_onednn", True)):
            original = run_original(files, python=args.original_python, onednn=onednn)
            result[key] = {"wall_seconds": round(original, 3),
                           "audio_seconds_per_second": round(audio_seconds / original, 2)}
            print(f"{key + ':':17s} {audio_seconds:.0f} s of audio in {original:.1f} s = "
                  f"{audio_seconds / original:.1f} s/s, ours is {original / ours:.2f}x faster")
        result["speedup"] = round(result["original"]["wall_seconds"] / ours, 2)
        result["speedup_vs_original_onednn"] = round(result["original_onednn"]["wall_seconds"] / ours, 2)
    else:
        result["original"] = result["original_onednn"] = None
        print(f"original: skipped, no musicnn virtualenv at {args.original_python} "
              "(tools/make_musicnn_golden.py says how to make one)", file=sys.stderr)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n", overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
