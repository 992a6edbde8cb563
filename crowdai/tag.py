"""Genre tags of one song over time: a per-segment table, JSON and a taggram PNG.

``--exp musicnn`` (the default) needs no training: the published ``MSD_musicnn`` and
``MTT_musicnn`` taggers tag each 3-s patch, the patches are averaged per segment, and
the MSD tags are mapped to FMA genres, with MTT tags and a speech detector adding the
genres MSD cannot name when their evidence is strong (``common.zero_shot``). Prints, per
segment, the top genres, the top tags of each tagger and the speech probability, then
the whole song (the JSON adds the speech evidence); writes
``OUT/<stem>_tags.json`` and ``OUT/<stem>_taggram.png`` (genres x time); both are derived
from the song and the models, so a second run replaces them and says so (``overwrote ...``)::

    python -m crowdai.tag song.mp3 --exp musicnn --out out [--window 10 --hop 10]

Any other ``--exp`` names a trained experiment in ``--runs``: its fold ensemble
(``crowdai.ensemble.experiment_song``) predicts every segment, over the 16 top genres
(``single``) or the genre tree's classes, sub-genres included (``multi``); a multi-task
experiment (``task.auxiliary: genres_all``) adds its auxiliary head's sub-genres beside the
16 top genres, in the table and the JSON (the taggram stays the top genres')::

    python -m crowdai.tag song.mp3 --exp crnn --runs runs --out out [--window 10 --hop 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import command
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.tagging import save_taggram, segment_table, tags_document, write_json

ZERO_SHOT_EXP = "musicnn"

#: Views of ``common.zero_shot.pooled_views`` printed in the zero-shot table, and written to its JSON.
ZERO_SHOT_TABLE_VIEWS: tuple[str, ...] = ("genres", "msd_tags", "mtt_tags", "speech")
ZERO_SHOT_JSON_VIEWS: tuple[str, ...] = (*ZERO_SHOT_TABLE_VIEWS, "speech_evidence")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-tag", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="audio file (mp3, ogg, wav, flac)")
    parser.add_argument("--exp", default=ZERO_SHOT_EXP,
                        help=f"experiment whose fold ensemble tags the song; {ZERO_SHOT_EXP!r}: zero-shot musicnn")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder of trained experiments")
    parser.add_argument("--out", type=Path, default=Path("out"),
                        help="folder for <stem>_tags.json and <stem>_taggram.png")
    parser.add_argument("--window", type=float, default=10.0, help="segment length in seconds (default %(default)s)")
    parser.add_argument("--hop", type=float, default=10.0, help="segment step in seconds (default %(default)s)")
    parser.add_argument("--top", type=int, default=3, help="classes shown per segment (default %(default)s)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights folder, for zero-shot tagging and musicnn-embedding experiments "
                             "(default %(default)s; fetched by `make weights`)")
    return parser


def _report_written(paths: tuple[Path, ...], *, existed: set[Path]) -> None:
    """``wrote A and B``, or ``overwrote ...`` for the outputs that were already there."""
    for verb, group in (("overwrote", [p for p in paths if p in existed]),
                        ("wrote", [p for p in paths if p not in existed])):
        if group:
            print(f"{verb} {' and '.join(str(p) for p in group)}")


def _tag_with_experiment(args: argparse.Namespace, *, json_path: Path, png_path: Path) -> None:
    """Tag ``args.file`` with the fold ensemble of the trained experiment ``args.exp``."""
    from crowdai.ensemble import experiment_song, load_ensemble

    ensemble = load_ensemble(args.runs, args.exp)
    bounds, views, notes = experiment_song(args.file, ensemble=ensemble, window=args.window, hop=args.hop,
                                           weights_dir=args.weights)
    model = (f"{args.exp} fold ensemble ({len(ensemble.models)} folds, {ensemble.config.model.name}, "
             f"task {ensemble.task.name}, {ensemble.task.n_classes} classes)")
    print(f"{args.file}: {model}; segment  {'  |  '.join(views)}")
    print(segment_table(views, bounds, top=args.top))
    document = tags_document(views, bounds, source=args.file, model=model, window=args.window, hop=args.hop,
                             notes={**notes, "exp_dir": str(ensemble.exp_dir)})
    write_json(document, json_path, overwrite=True)
    save_taggram(views["genres"], bounds, png_path, title=f"{args.file.name}: {args.exp} ({ensemble.task.name})",
                 overwrite=True)


@command("fma-tag")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_path = args.out / f"{args.file.stem}_tags.json"
    png_path = args.out / f"{args.file.stem}_taggram.png"
    existed = {path for path in (json_path, png_path) if path.exists()}
    if args.exp != ZERO_SHOT_EXP:
        _tag_with_experiment(args, json_path=json_path, png_path=png_path)
        _report_written((json_path, png_path), existed=existed)
        return 0
    from common.zero_shot import UNTAGGED_GENRES, zero_shot_song

    bounds, views = zero_shot_song(args.file, window=args.window, hop=args.hop, weights_dir=args.weights)
    model = ("musicnn zero-shot: MSD_musicnn tags, plus MTT_musicnn tags and a speech detector for the genres MSD "
             "cannot name (common.zero_shot)")
    print(f"{args.file}: {model}; segment  genres  |  MSD tags  |  MTT tags  |  speech")
    print(segment_table({name: views[name] for name in ZERO_SHOT_TABLE_VIEWS}, bounds, top=args.top))
    document = tags_document({name: views[name] for name in ZERO_SHOT_JSON_VIEWS}, bounds, source=args.file,
                             model=model, window=args.window, hop=args.hop,
                             notes={"genres_without_tags": dict(UNTAGGED_GENRES)})
    write_json(document, json_path, overwrite=True)
    save_taggram(views["genres"], bounds, png_path, title=f"{args.file.name}: zero-shot genres (musicnn)",
                 overwrite=True)
    _report_written((json_path, png_path), existed=existed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
