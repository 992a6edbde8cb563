"""Tagging throughput: seconds of audio tagged per second, our musicnn against the original.

On the same recordings (default ``../shared/audio/*.ogg``, whole files), in one run:

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

Each side processes every file once after one warm-up file. Writes the rates and
the ratios as JSON (``speedup``: against the original as shipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic

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


def run_ours(files: list[Path], *, weights_dir: Path, rounds: int = 3) -> tuple[float, float]:
    """Wall seconds to tag ``files`` MSD-only and fused: the fastest of ``rounds`` alternating rounds.

    Both sides are warmed up on the first file first.

    Returns
    -------
    msd_only, fused : float
    """
    from common.audio import load_audio
    from common.models.musicnn import MUSICNN_FEATURES
    from common.zero_shot import MusicnnTaggers

    taggers = MusicnnTaggers.load(weights_dir=weights_dir)
    sides = {"msd_only": lambda y: _msd_only(y, model=taggers.msd), "fused": lambda y: _fused(y, taggers=taggers)}
    warm = load_audio(files[0], sample_rate=MUSICNN_FEATURES.sample_rate)
    best = {}
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
    parser.add_argument("--audio", type=Path, default=Path("../shared/audio"), help="folder of recordings (*.ogg)")
    parser.add_argument("--weights", type=Path, default=Path("models/musicnn"), help="our musicnn weights folder")
    parser.add_argument("--original-python", type=Path, default=Path("/tmp/musicnn-venv/bin/python"),
                        help="python of a virtualenv with the original musicnn (skipped when absent)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of MSD-only and fused tagging")
    parser.add_argument("--out", type=Path, default=Path("bench/tag.json"))
    return parser


@command("python -m bench.tag")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import soundfile as sf

    files = sorted(args.audio.glob("*.ogg"))
    if not files:
        raise ToolkitError(f"{args.audio}: no .ogg recordings")
    audio_seconds = sum(sf.info(path).duration for path in files)
    result: dict = {"files": len(files), "audio_seconds": round(audio_seconds, 2)}
    ours, fused = run_ours(files, weights_dir=args.weights, rounds=args.rounds)
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
    raise SystemExit(main())
