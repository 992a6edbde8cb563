"""Feature-extraction throughput: the toolkit against the original single-process way.

On the same 30-s 44.1-kHz stereo mp3s, in one run, measures clips per second of

(a) ``common.features.extract`` on all cores (default CRNN settings, worker pool
    started beforehand by a warm-up extraction, as it is after the first shard of a
    long run). Its time includes the end of the run, where one core idles while
    another finishes the last shard: with 96 clips in shards of 4 that costs a few
    percent, which a real run of thousands of clips in shards of 256 does not pay
    (48 clips: about 10 %, ratio ~2.9 instead of ~3.3),
(b) the original way, one process: ``librosa.load(path, sr=12000)``,
    ``librosa.feature.melspectrogram(n_fft=512, hop_length=256, n_mels=96)``,
    ``librosa.power_to_db``,
(c) decoding only (the toolkit's decoder to mono, no resampling; one process): the
    per-core ceiling. The toolkit decodes mp3 through the system libmpg123 when it is
    installed (:mod:`common.mp3`), else through soundfile; the JSON says which.

Runs ``--rounds`` rounds of the three back to back; prints each round and the
medians (rates, and the ratio a/b as the median of the rounds' ratios), and writes
them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import mp3
from common.io import write_text_atomic

SAMPLE_RATE = 44100
SECONDS = 30.0


def _music(rng: np.random.Generator) -> np.ndarray:
    """30 s of stereo music-like signal: chords, percussive noise bursts, a little noise."""
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    root = rng.uniform(80, 400)
    tones = sum(np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 6)) / (k + 1)
                for k, ratio in enumerate((1.0, 1.25, 1.5, 2.0, 3.0)))
    beat = rng.uniform(1.5, 3.0)
    bursts = rng.standard_normal(t.size) * np.exp(-12 * ((t * beat) % 1.0))
    mono = 0.15 * tones + 0.2 * bursts + 0.01 * rng.standard_normal(t.size)
    pan = rng.uniform(0.3, 0.7)
    stereo = np.stack([mono * pan, mono * (1 - pan)], axis=1)
    return stereo / np.abs(stereo).max() * 0.8


def make_mp3s(folder: Path, *, n_clips: int, seed: int = 0) -> list[Path]:
    """Write (or reuse) ``n_clips`` 30-s 44.1-kHz stereo 128-kbit/s mp3s encoded with lameenc."""
    import lameenc

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:04d}.mp3" for i in range(n_clips)]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        pcm = (_music(np.random.default_rng([seed, i])) * 32767).astype(np.int16)
        encoder = lameenc.Encoder()
        encoder.set_bit_rate(128)
        encoder.set_in_sample_rate(SAMPLE_RATE)
        encoder.set_channels(2)
        encoder.set_quality(2)
        data = encoder.encode(pcm.tobytes()) + encoder.flush()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return paths


def usable_cores() -> int:
    """Cores this process may run on (what joblib's ``n_jobs=-1`` uses)."""
    import joblib

    return joblib.cpu_count()


def _rate(function, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        function(path)
    return len(paths) / (time.perf_counter() - start)


def baseline_clip(path: Path) -> np.ndarray:
    """The original single-process feature of one clip (96 x ~1400 dB mel)."""
    import librosa

    y, sr = librosa.load(path, sr=12000)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, hop_length=256, n_mels=96)
    return librosa.power_to_db(mel)


def decode_only(path: Path) -> np.ndarray:
    """The toolkit's decode to mono at the file's own rate (no resampling)."""
    from common.audio import load_audio

    return load_audio(path, sample_rate=SAMPLE_RATE)


def toolkit_rate(paths: list[Path], *, cache_dir: Path, shard_size: int) -> float:
    """Clips/s of :func:`common.features.extract` on all cores into a new ``cache_dir``."""
    from common.features import extract
    from common.settings import FeatureSettings

    items = [(path.stem, path) for path in paths]
    summary = extract(items, settings=FeatureSettings(), cache_dir=cache_dir, shard_size=shard_size,
                      progress=False)
    return summary.n_ok / summary.seconds


def warm_up(paths: list[Path], *, work: Path) -> None:
    """Imports, first calls and the worker pool, none of it timed."""
    from common.features import extract
    from common.settings import FeatureSettings

    baseline_clip(paths[0]), decode_only(paths[0])
    warm = [(f"warm{i}", path) for i, path in enumerate(paths[:usable_cores()])]
    extract(warm, settings=FeatureSettings(), cache_dir=work / "warm", shard_size=1, progress=False)


def run(*, n_clips: int, mp3_dir: Path, shard_size: int, rounds: int) -> dict:
    """``rounds`` rounds of (a), (b), (c) on the same clips; medians over rounds.

    The machine's speed drifts by tens of percent within a minute (other tenants,
    clock changes), so each round measures the three back to back and the ratio is
    the median of the per-round ratios.
    """
    paths = make_mp3s(mp3_dir, n_clips=n_clips)
    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    per_round = []
    try:
        warm_up(paths, work=work)
        for round_ in range(rounds):
            toolkit = toolkit_rate(paths, cache_dir=work / f"cache{round_}", shard_size=shard_size)
            shutil.rmtree(work / f"cache{round_}")
            baseline = _rate(baseline_clip, paths)
            decode = _rate(decode_only, paths)
            per_round.append({"toolkit_clips_per_s": round(toolkit, 2), "baseline_clips_per_s": round(baseline, 2),
                              "decode_only_clips_per_s": round(decode, 2), "ratio": round(toolkit / baseline, 2)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {key: round(float(np.median([r[key] for r in per_round])), 2) for key in per_round[0]}
    # Other processes on the machine take cores from (a) more than from (b): keep the
    # load beside the numbers so that a contended run can be recognised.
    return {**medians, "rounds": per_round, "cores": cores, "clips": n_clips,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "mp3_decoder": "libmpg123 (mono mix)" if mp3.available() else "soundfile"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/features.json"), help="JSON result file")
    parser.add_argument("--clips", type=int, default=96, help="number of 30-s mp3s (default 96)")
    parser.add_argument("--mp3-dir", type=Path, default=Path(tempfile.gettempdir()) / "fma-bench-mp3",
                        help="where the generated mp3s are kept between runs")
    parser.add_argument("--shard-size", type=int, default=4, help="clips per shard for (a)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a), (b), (c); medians are reported")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.rounds < 1:
        parser.error("--clips and --rounds must be at least 1")
    result = run(n_clips=args.clips, mp3_dir=args.mp3_dir, shard_size=args.shard_size, rounds=args.rounds)
    for number, measured in enumerate(result["rounds"], 1):
        print(f"round {number}: toolkit {measured['toolkit_clips_per_s']:.1f}, original "
              f"{measured['baseline_clips_per_s']:.1f}, decode only {measured['decode_only_clips_per_s']:.1f} "
              f"clips/s, ratio {measured['ratio']:.2f}")
    print(f"medians over {args.rounds} rounds:")
    print(f"(a) toolkit, {result['cores']} cores: {result['toolkit_clips_per_s']:.1f} clips/s")
    print(f"(b) original, 1 process:   {result['baseline_clips_per_s']:.1f} clips/s")
    print(f"(c) decode only, 1 process: {result['decode_only_clips_per_s']:.1f} clips/s "
          f"(mp3 decoder: {result['mp3_decoder']})")
    print(f"ratio a/b: {result['ratio']:.2f} (load average {result['load_average_1min']:.1f} "
          f"on {result['cores']} cores)")
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
