"""Feature-extraction throughput: the toolkit against the original single-process way.

On two sets of 30-s 44.1-kHz stereo 192-kbit/s mp3s (FMA's format), in one run,
measures clips per second of

(a) ``common.features.extract`` on all cores (default CRNN settings, worker pool
    started beforehand by a warm-up extraction, as it is after the first shard of a
    long run), :data:`SHORT_RUNS` whole runs back to back, pooled (on the headline set,
    twice as many: that many before and after the scaling run). Each run's time
    includes its start and its end, where one core may idle while another finishes the
    last shard,
(b) the original way, one process on one core (BLAS limited to one thread, as the
    toolkit's workers are): ``librosa.load(path, sr=12000)``,
    ``librosa.feature.melspectrogram(n_fft=512, hop_length=256, n_mels=96)``,
    ``librosa.power_to_db``,
(c) decoding only (the toolkit's decoder to mono at the file's own rate, no
    resampling; one process): the per-core decode ceiling. The toolkit decodes mp3
    through the system libmpg123 when it is installed (:mod:`common.mp3`), else through
    soundfile; the JSON says which,
(d) CPU milliseconds per clip of (b) and of the toolkit's per-clip work in this process
    (``cpu_ratio_per_core``: their ratio). On a machine shared with other work, wall-clock
    ratios of a 2-process run against a 1-process run swing widely; CPU time per clip
    barely moves, and (a) on ``cores`` idle cores approaches ``cores`` times it.

The sets: ``real``, 30-s segments of the recordings in ``--real-audio`` (default
``../shared/audio`` beside the repository; a fresh clone lacks it and the set is then
left out), cycled to ``--clips`` files; and ``synthetic``, generated chords and noise
bursts. The headline numbers (top-level keys) are the real set's when present.

Scaling: each round also runs (a) once on ``--scale`` times the clips (symbolic links to
the same files) of the headline set, between its short runs; ``scaling.agreement`` is the
median over the rounds of its clips/s over (a)'s in the same round, which should be
within 10 % of 1 (a run's rate does not depend on its length: what each short run pays at
its start and end would show here).

Runs ``--rounds`` rounds, each measuring everything back to back; prints each round
and the medians (rates, and the ratio a/b as the median of the rounds' ratios), and
writes them as JSON.
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
from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic

SAMPLE_RATE = 44100
SECONDS = 30.0
BIT_RATE = 192

#: Runs of (a) per round on ``--clips`` clips, pooled: one 2-s run swings by +-20 % on a
#: shared machine (35 to 54 clips/s within one ``make bench``), while runs back to back on
#: 96 and on 960 clips agree within 1 % (medians of 4 alternations).
SHORT_RUNS = 3

#: Where the real recordings are in a checkout of the project (absent in a fresh clone).
DEFAULT_REAL_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


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


def _write_mp3(path: Path, stereo: np.ndarray) -> None:
    """Encode ``stereo`` ``(n, 2)`` in [-1, 1] at 44.1 kHz, :data:`BIT_RATE` kbit/s, atomically."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(BIT_RATE)
    encoder.set_in_sample_rate(SAMPLE_RATE)
    encoder.set_channels(2)
    encoder.set_quality(2)
    pcm = np.round(np.clip(stereo, -1, 1) * 32767).astype("<i2")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(encoder.encode(pcm.tobytes()) + encoder.flush()))
    os.replace(tmp, path)


def make_mp3s(folder: Path, *, n_clips: int, seed: int = 0) -> list[Path]:
    """Write (or reuse) ``n_clips`` synthetic 30-s 44.1-kHz stereo mp3s encoded with lameenc."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:04d}.mp3" for i in range(n_clips)]
    for i, path in enumerate(paths):
        if not path.exists():
            _write_mp3(path, _music(np.random.default_rng([seed, i])))
    return paths


def real_segments(source_dir: Path) -> list[np.ndarray]:
    """30-s stereo 44.1-kHz segments of every recording in ``source_dir``, in name order.

    Consecutive non-overlapping segments of each recording; one shorter than 30 s is
    looped to 30 s. The second channel is the first at 80 % level (the files are mono),
    so decoders do stereo work.

    Returns
    -------
    list of np.ndarray, each shape (1323000, 2), float32
    """
    import soundfile as sf
    import soxr

    n = int(SECONDS * SAMPLE_RATE)
    segments = []
    for path in sorted(p for p in source_dir.iterdir() if p.suffix.lower() in (".ogg", ".flac", ".wav", ".mp3")):
        y, rate = sf.read(path, dtype="float32", always_2d=True)
        y = soxr.resample(y.mean(axis=1), rate, SAMPLE_RATE).astype(np.float32)
        if y.shape[0] < n:
            y = np.tile(y, -(-n // y.shape[0]))
        for start in range(0, y.shape[0] - n + 1, n):
            mono = y[start:start + n]
            segments.append(np.stack([mono, 0.8 * mono], axis=1))
    return segments


def make_real_mp3s(folder: Path, *, source_dir: Path, n_clips: int) -> list[Path]:
    """``n_clips`` mp3s cycling through :func:`real_segments` (each encoded once, repeats linked).

    Returns
    -------
    list of Path
        Empty when ``source_dir`` holds no recordings.
    """
    folder.mkdir(parents=True, exist_ok=True)
    encoded = sorted(folder.glob("segment*.mp3"))
    if not encoded:
        for i, segment in enumerate(real_segments(source_dir)):
            _write_mp3(folder / f"segment{i:03d}.mp3", segment)
        encoded = sorted(folder.glob("segment*.mp3"))
    if not encoded:
        return []
    return link_copies(encoded, folder / f"clips{n_clips}", n_clips=n_clips)


def link_copies(paths: list[Path], folder: Path, *, n_clips: int) -> list[Path]:
    """``n_clips`` symbolic links in ``folder`` cycling through ``paths`` (reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    links = [folder / f"clip{i:05d}.mp3" for i in range(n_clips)]
    for i, link in enumerate(links):
        if not link.exists():
            link.symlink_to(paths[i % len(paths)].resolve())
    return links


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


def toolkit_rate(paths: list[Path], *, cache_dir: Path, shard_size: int, runs: int = 1) -> float:
    """Clips/s of :func:`common.features.extract` on all cores: ``runs`` whole runs back to back,
    each into a new cache under ``cache_dir`` (removed after), their clips over their seconds."""
    from common.features import extract
    from common.settings import FeatureSettings

    items = [(path.stem, path) for path in paths]
    seconds = 0.0
    for run_number in range(runs):
        summary = extract(items, settings=FeatureSettings(), cache_dir=cache_dir / str(run_number),
                          shard_size=shard_size, progress=False)
        shutil.rmtree(cache_dir / str(run_number))
        if summary.n_ok != len(paths):
            raise ToolkitError(f"{len(paths) - summary.n_ok} of {len(paths)} clips failed")
        seconds += summary.seconds
    return runs * len(paths) / seconds


def warm_up(paths: list[Path], *, work: Path) -> None:
    """Imports, first calls and the worker pool, none of it timed."""
    from common.features import extract
    from common.settings import FeatureSettings

    baseline_clip(paths[0]), decode_only(paths[0]), toolkit_clip(paths[0])
    warm = [(f"warm{i}", path) for i, path in enumerate(paths[:usable_cores()])]
    extract(warm, settings=FeatureSettings(), cache_dir=work / "warm", shard_size=1, progress=False)


def toolkit_clip(path: Path) -> np.ndarray:
    """The toolkit's stored feature of one clip, in this process (what a worker computes per clip)."""
    from common.audio import load_clip
    from common.features import features_for
    from common.settings import FeatureSettings

    settings = FeatureSettings()
    return features_for(load_clip(path, settings=settings), settings=settings).astype(np.float16)


def _cpu_ms_per_clip(function, paths: list[Path]) -> float:
    """CPU milliseconds of this process per clip: unlike wall time, barely moved by other tenants."""
    start = time.process_time()
    for path in paths:
        function(path)
    return 1000 * (time.process_time() - start) / len(paths)


def _one_round(paths: list[Path], *, cache_dir: Path, shard_size: int,
               scaled: list[Path] | None = None) -> tuple[dict[str, float], float | None]:
    """One round on one set: its measurements, and the rate of the ``scaled`` run (None without one).

    The ``scaled`` run goes between two pooled short runs, and (a) is their pool: drift of
    the machine's speed within the round then weighs on both sides of the agreement alike.
    """
    from threadpoolctl import threadpool_limits

    toolkit = toolkit_rate(paths, cache_dir=cache_dir / "before", shard_size=shard_size, runs=SHORT_RUNS)
    scaled_rate = None
    if scaled is not None:
        scaled_rate = toolkit_rate(scaled, cache_dir=cache_dir / "scaled", shard_size=shard_size)
        after = toolkit_rate(paths, cache_dir=cache_dir / "after", shard_size=shard_size, runs=SHORT_RUNS)
        toolkit = 2 / (1 / toolkit + 1 / after)  # the same clips each: all clips over all seconds
    # one core for the single-process measurements, as the toolkit's workers have: an
    # idle BLAS thread spinning on the second core would count as CPU time
    with threadpool_limits(limits=1):
        baseline_start = time.process_time()
        baseline = _rate(baseline_clip, paths)
        baseline_cpu = 1000 * (time.process_time() - baseline_start) / len(paths)
        decode = _rate(decode_only, paths)
        toolkit_cpu = _cpu_ms_per_clip(toolkit_clip, paths)
    return {"toolkit_clips_per_s": round(toolkit, 2), "baseline_clips_per_s": round(baseline, 2),
            "decode_only_clips_per_s": round(decode, 2), "ratio": round(toolkit / baseline, 2),
            "toolkit_cpu_ms_per_clip": round(toolkit_cpu, 2), "baseline_cpu_ms_per_clip": round(baseline_cpu, 2),
            "cpu_ratio_per_core": round(baseline_cpu / toolkit_cpu, 2)}, scaled_rate


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.median([row[key] for row in rows])), 2) for key in rows[0]}


def run(*, n_clips: int, mp3_dir: Path, shard_size: int, rounds: int, real_audio: Path | None,
        scale: int = 10) -> dict:
    """``rounds`` rounds of (a), (b), (c) on every set, and (a) at ``scale`` times the clips.

    The machine's speed drifts by tens of percent within a minute (other tenants,
    clock changes), so each round measures everything back to back and the ratio is
    the median of the per-round ratios.
    """
    sets = {"synthetic": make_mp3s(mp3_dir / f"synthetic-{BIT_RATE}k", n_clips=n_clips)}
    if real_audio is not None and real_audio.is_dir():
        real = make_real_mp3s(mp3_dir / f"real-{BIT_RATE}k", source_dir=real_audio, n_clips=n_clips)
        if real:
            sets = {"real": real, **sets}
    headline = next(iter(sets))
    scaled = link_copies(sets[headline], mp3_dir / f"{headline}-x{scale}-{n_clips}", n_clips=scale * n_clips)
    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in sets}
    scaled_rates = []
    try:
        warm_up(sets[headline], work=work)
        for round_ in range(rounds):
            for name, paths in sets.items():
                row, scaled_rate = _one_round(paths, cache_dir=work / f"{name}{round_}", shard_size=shard_size,
                                              scaled=scaled if name == headline else None)
                per_round[name].append(row)
                if scaled_rate is not None:
                    scaled_rates.append(scaled_rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {name: {**_medians(rows), "rounds": rows, "clips": n_clips} for name, rows in per_round.items()}
    base_rate = results[headline]["toolkit_clips_per_s"]
    scaled_rate = float(np.median(scaled_rates))
    # paired within each round, like the headline ratio: the machine's speed drifts between rounds
    agreements = [scaled / row["toolkit_clips_per_s"] for scaled, row in zip(scaled_rates, per_round[headline])]
    # Other processes on the machine take cores from (a) more than from (b): keep the
    # load beside the numbers so that a contended run can be recognised.
    return {**results[headline], "set": headline, "sets": results, "cores": cores,
            "scaling": {"set": headline, "clips": n_clips, "clips_per_s": base_rate, "scaled_clips": scale * n_clips,
                        "scaled_clips_per_s": round(scaled_rate, 2),
                        "scaled_rounds": [round(rate, 2) for rate in scaled_rates],
                        "agreement_rounds": [round(agreement, 3) for agreement in agreements],
                        "agreement": round(float(np.median(agreements)), 3)},
            "load_average_1min": round(os.getloadavg()[0], 2),
            "mp3_decoder": "libmpg123 (mono mix, reduced-rate synthesis)" if mp3.available() else "soundfile"}


@command("python -m bench.features")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/features.json"), help="JSON result file")
    parser.add_argument("--clips", type=int, default=96, help="30-s mp3s per set (default 96)")
    parser.add_argument("--scale", type=int, default=10, help="the scaling run uses this many times --clips")
    parser.add_argument("--real-audio", type=Path, default=DEFAULT_REAL_AUDIO,
                        help="folder of real recordings cut into the real set (default ../shared/audio; "
                             "left out when absent)")
    parser.add_argument("--mp3-dir", type=Path, default=Path(tempfile.gettempdir()) / "fma-bench-mp3",
                        help="where the encoded mp3s are kept between runs")
    parser.add_argument("--shard-size", type=int, default=4, help="clips per shard for (a)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (a), (b), (c); medians are reported")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.rounds < 1 or args.scale < 1:
        parser.error("--clips, --rounds and --scale must be at least 1")
    result = run(n_clips=args.clips, mp3_dir=args.mp3_dir, shard_size=args.shard_size, rounds=args.rounds,
                 real_audio=args.real_audio, scale=args.scale)
    for name, measured_set in result["sets"].items():
        for number, measured in enumerate(measured_set["rounds"], 1):
            print(f"{name} round {number}: toolkit {measured['toolkit_clips_per_s']:.1f}, original "
                  f"{measured['baseline_clips_per_s']:.1f}, decode only {measured['decode_only_clips_per_s']:.1f} "
                  f"clips/s, ratio {measured['ratio']:.2f}")
        print(f"{name}, medians over {args.rounds} rounds: (a) toolkit, {result['cores']} cores: "
              f"{measured_set['toolkit_clips_per_s']:.1f} clips/s; (b) original, 1 process: "
              f"{measured_set['baseline_clips_per_s']:.1f}; (c) decode only, 1 process: "
              f"{measured_set['decode_only_clips_per_s']:.1f}; ratio a/b {measured_set['ratio']:.2f}; CPU per clip: "
              f"toolkit {measured_set['toolkit_cpu_ms_per_clip']:.1f} ms, original "
              f"{measured_set['baseline_cpu_ms_per_clip']:.1f} ms "
              f"(ratio per core {measured_set['cpu_ratio_per_core']:.2f})")
    scaling = result["scaling"]
    print(f"scaling ({scaling['set']}): {scaling['clips']} clips {scaling['clips_per_s']:.1f} clips/s, "
          f"{scaling['scaled_clips']} clips {scaling['scaled_clips_per_s']:.1f} clips/s "
          f"(agreement {scaling['agreement']:.2f}); mp3 decoder: {result['mp3_decoder']}; "
          f"load average {result['load_average_1min']:.1f} on {result['cores']} cores")
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
