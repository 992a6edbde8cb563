"""Bad audio at large (issue 25): the corpus of tests/bad_audio.py through decoding, ``fma-features``
and the zero-shot submission.

Every file decodes or fails with an :class:`~common.errors.AudioError` naming it, on both mp3
decoders (the system libmpg123 and soundfile); nothing hangs (each test runs under a time
limit, :func:`_time_limit`); the 30-minute file in a 30-s clip setting decodes only what the
clip needs (samples decoded and peak memory are bounded, and the clip equals the one cut from
the whole file).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from bad_audio import (
    CORPUS,
    DECODERS,
    LONG,
    LONG_RATE,
    LONG_SECONDS,
    MIN_DECODED_SECONDS,
    SOURCE_TAG_BYTES,
    use_decoder,
    write_corpus,
)

from common import audio, mp3
from common.audio import crop_or_pad, load_audio, load_clip, load_excerpt
from common.errors import AudioError, SilentAudioError, TooShortAudioError, UnreadableAudioError
from common.features import cache_dir_for
from common.features import main as features_main
from common.settings import FeatureSettings
from common.zero_shot import SUBMISSION_CLIP_SECONDS

REPO = Path(__file__).resolve().parents[1]
#: A 30-s clip setting (8 kHz, small mel bank: the analysis is not what is tested).
SETTINGS = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, clip_seconds=30.0,
                           min_seconds=1.0)
#: What a file can fail with: the reasons of the AudioError family.
REASONS = {error.reason for error in (UnreadableAudioError, TooShortAudioError, SilentAudioError)}
#: Seconds a test of this module may run, unless :func:`time_limit` gives it more.
DEFAULT_TIME_LIMIT_S = 60
#: Largest peak of Python-allocated memory (numpy arrays included) that the 30-s clip of any file of
#: the corpus may take: measured 2-4 MiB. The whole 30-minute file is 55 MiB of float32 samples at
#: 8 kHz (a 69 MiB peak before the fix); libmpg123's first output buffer was 16 MiB for any mp3, and
#: soundfile allocated 26 MiB for the 6-s mp3 behind a 1.1-MiB ID3 tag.
PEAK_BYTES = 8 << 20
#: Longest the 30-minute file decodes to, in seconds (30 repetitions of a minute and LAME's padding).
LONG_DECODED_SECONDS = LONG_SECONDS + 10
#: Seconds of the 30-minute file (at its 8-kHz rate) each decoder may decode for the clip, by crop:
#: libmpg123 decodes up to twice the clip from the start (to learn that the file is longer),
#: then seeks (16 frames of 72 ms decoded before the target); soundfile reads whole blocks.
#: soundfile's centre crop reads an mp3 to its end for its length, then to the clip's end:
#: 1.5 decodes, memory bounded all the same.
_SOUNDFILE_BLOCK_S = audio.SOUNDFILE_BLOCK_FRAMES / LONG_RATE
LONG_FILE_DECODED_SECONDS = {
    ("libmpg123", "start"): SETTINGS.clip_seconds + 1,
    ("libmpg123", "center"): 3 * SETTINGS.clip_seconds + 2,
    ("soundfile", "start"): SETTINGS.clip_seconds + _SOUNDFILE_BLOCK_S,
    ("soundfile", "center"): 1.5 * LONG_DECODED_SECONDS + 2 * _SOUNDFILE_BLOCK_S,
}


def time_limit(seconds: float) -> Callable[[Callable], Callable]:
    """Give a test of this module ``seconds`` instead of :data:`DEFAULT_TIME_LIMIT_S`."""
    def limit(test: Callable) -> Callable:
        test.time_limit_s = seconds  # type: ignore[attr-defined]
        return test

    return limit


@pytest.fixture(autouse=True)
def _time_limit(request) -> Iterator[None]:
    """Fail a test that runs over its limit: a ``TimeoutError`` where Python code loops (SIGALRM),
    and, at twice the limit, faulthandler's tracebacks and exit for a hang inside a C call."""
    limit = getattr(request.function, "time_limit_s", DEFAULT_TIME_LIMIT_S)

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} still running after {limit} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    faulthandler.dump_traceback_later(2 * limit, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The folder of :data:`bad_audio.CORPUS`, written once."""
    return write_corpus(tmp_path_factory.mktemp("bad_audio") / "corpus")


@pytest.fixture(params=DECODERS)
def decoder(request, monkeypatch) -> str:
    use_decoder(request.param, monkeypatch)
    return request.param


class _DecodedSamples:
    """Samples the decoders hand out: libmpg123's ``mpg123_read`` (mono) and ``SoundFile.read`` (frames)."""

    def __init__(self, lib) -> None:
        self._lib = lib
        self.count = 0

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def mpg123_read(self, handle, buffer, size, done):
        code = self._lib.mpg123_read(handle, buffer, size, done)
        self.count += done._obj.value // np.dtype(np.float32).itemsize
        return code


@pytest.fixture
def decoded_samples(decoder, monkeypatch) -> _DecodedSamples:
    """Counts what ``decoder`` decodes (the library behind :mod:`common.mp3` is wrapped)."""
    counter = _DecodedSamples(mp3._library())
    if decoder == "libmpg123":
        monkeypatch.setattr(mp3, "_library", lambda: counter)
    read = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        counter.count += data.shape[0]
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    return counter


def _outcome(path: Path) -> tuple[str, float]:
    """What the 30-s clip of ``path`` gives, after checking that an error names the file.

    Returns
    -------
    outcome : str
        ``"ok"``, or the reason of the AudioError :func:`load_clip` raises.
    seconds : float
        Decoded length (:func:`load_excerpt`); 0 when nothing decodes.
    """
    try:
        seconds = load_excerpt(path, sample_rate=SETTINGS.sample_rate, n_samples=SETTINGS.clip_samples,
                               crop=SETTINGS.crop)[1]
    except UnreadableAudioError:
        seconds = 0.0
    try:
        clip = load_clip(path, settings=SETTINGS)
    except AudioError as error:
        assert error.path == path and str(path) in str(error) and error.detail, error
        return error.reason, seconds
    assert clip.shape == (SETTINGS.clip_samples,) and clip.dtype == np.float32 and np.isfinite(clip).all()
    return "ok", seconds


def _expected(outcome: str, stem: str) -> bool:
    """Whether ``outcome`` is what :data:`CORPUS` says of ``stem`` (a truncated copy: any but silent)."""
    expected = CORPUS[stem].outcome
    return outcome == expected if expected is not None else outcome in {"ok", "too_short", "unreadable"}


def test_corpus_holds_what_it_says(corpus):
    assert SETTINGS.min_seconds <= MIN_DECODED_SECONDS  # the outcomes of CORPUS hold for SETTINGS
    sizes = {stem: (corpus / bad.name).stat().st_size for stem, bad in CORPUS.items()}
    assert sorted(path.name for path in corpus.iterdir()) == sorted(bad.name for bad in CORPUS.values())
    assert all(sizes[stem] == bad.truncated_at for stem, bad in CORPUS.items() if bad.truncated_at is not None)
    assert len([bad for bad in CORPUS.values() if bad.truncated_at is not None]) == 64
    assert sizes["zero_bytes"] == 0 and sizes["id3_only"] == SOURCE_TAG_BYTES
    assert sf.info(corpus / "six_channel_96k.flac").channels == 6 and sf.info(corpus / "wav_named.mp3").format == "WAV"
    assert sum(sizes.values()) < 7 << 20


@pytest.mark.parametrize("stem", sorted(CORPUS))
def test_every_file_decodes_or_fails_naming_it(corpus, decoder, stem):
    tracemalloc.start()
    try:
        outcome, seconds = _outcome(corpus / CORPUS[stem].name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _expected(outcome, stem), (stem, outcome)
    assert peak < PEAK_BYTES, peak
    assert outcome != "ok" or seconds >= SETTINGS.min_seconds


def test_truncated_copies_keep_every_whole_frame_before_the_cut(corpus, decoder):
    """An mp3 cut after k KiB decodes to the frames before the cut (128 kbit/s: 16,000 bytes a second),
    one frame (26 ms) less at most; cut inside its ID3 tag, it is unreadable."""
    frame_seconds = 1152 / 44100
    for stem, bad in CORPUS.items():
        if bad.truncated_at is None:
            continue
        outcome, seconds = _outcome(corpus / bad.name)
        audio_seconds = (bad.truncated_at - SOURCE_TAG_BYTES) / 16000
        if audio_seconds < 0:
            assert outcome == "unreadable", stem
        else:
            assert audio_seconds - 2 * frame_seconds < seconds <= audio_seconds, (stem, outcome, seconds)
            assert outcome == ("ok" if seconds >= SETTINGS.min_seconds else "too_short"), stem


@pytest.mark.parametrize("stem", sorted(CORPUS))
def test_both_decoders_agree(corpus, stem, monkeypatch):
    """Same outcome, same length to the sample (the truncated copies included)."""
    use_decoder("libmpg123", monkeypatch)
    path = corpus / CORPUS[stem].name
    fast = _outcome(path)
    monkeypatch.setattr(mp3, "available", lambda: False)
    slow = _outcome(path)
    assert fast[0] == slow[0] and abs(fast[1] - slow[1]) <= 1 / SETTINGS.sample_rate, (fast, slow)


@pytest.mark.parametrize("crop", ["center", "start"])
def test_long_file_decodes_only_its_clip(corpus, decoder, decoded_samples, crop):
    """The 30-s clip of the 30-minute file: peak memory and samples decoded are bounded by the clip,
    not the file, and the clip is the one cut from the whole file."""
    path = corpus / CORPUS[LONG].name
    tracemalloc.start()
    try:
        y, seconds = load_excerpt(path, sample_rate=SETTINGS.sample_rate, n_samples=SETTINGS.clip_samples,
                                  crop=crop)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = decoded_samples.count
    whole = load_audio(path, sample_rate=SETTINGS.sample_rate)  # the reference: every sample, once measured
    assert LONG_SECONDS <= whole.size / SETTINGS.sample_rate < LONG_DECODED_SECONDS
    assert peak < PEAK_BYTES < whole.nbytes
    assert decoded <= LONG_FILE_DECODED_SECONDS[decoder, crop] * LONG_RATE, decoded / LONG_RATE
    np.testing.assert_allclose(y, crop_or_pad(whole, n_samples=SETTINGS.clip_samples, crop=crop), rtol=0, atol=1e-5)
    assert np.abs(y).max() > 0.1
    assert seconds == whole.size / SETTINGS.sample_rate if crop == "center" else seconds > SETTINGS.clip_seconds


@time_limit(300)
def test_fma_features_over_the_corpus(corpus, decoder, tmp_path, capsys):
    """``make features`` on the corpus folder (``fma-features --audio-dir``; one job, in this process,
    so that the decoder choice holds): every file is in index.csv or a permanent, typed failure."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"features": SETTINGS.to_dict()}))
    assert features_main(["--config", str(config), "--audio-dir", str(corpus), "--cache", str(tmp_path / "cache"),
                          "--jobs", "1", "--shard-size", "16", "--no-progress"]) == 0
    cache_dir = cache_dir_for(tmp_path / "cache", corpus.name, SETTINGS)
    index = pd.read_csv(cache_dir / "index.csv", dtype={"id": str})
    failures = pd.read_csv(cache_dir / "failures.csv", dtype=str, keep_default_na=False)
    reasons: dict[str, str] = dict(zip(failures["id"], failures["reason"]))
    ok = set(index["id"])
    assert ok.isdisjoint(reasons) and ok | set(reasons) == set(CORPUS)
    assert set(reasons.values()) <= REASONS and (failures["kind"] == "permanent").all()
    assert (failures["detail"] != "").all()
    assert sorted(Path(path).name for path in failures["path"]) == sorted(CORPUS[stem].name for stem in reasons)
    for stem in CORPUS:
        assert _expected(reasons.get(stem, "ok"), stem), (stem, reasons.get(stem, "ok"))
    n_ok, n_failed = len(index), len(failures)
    assert f"features: {n_ok} ok, {n_failed} failed" in capsys.readouterr().out


def _fake_scores(calls: list[int]) -> Callable[..., np.ndarray]:
    """A stand-in for ``common.zero_shot.clip_genre_scores`` that records the samples it is given."""
    def scores(y: np.ndarray, *, taggers) -> np.ndarray:
        calls.append(y.shape[0])
        return np.full(16, 1 / 16)

    return scores


def _predict_zero_shot(test_dir: Path, calls: list[int], monkeypatch):
    """:func:`crowdai.zero_shot_submit.predict_zero_shot` with the taggers replaced by :func:`_fake_scores`."""
    import common.zero_shot
    from crowdai.zero_shot_submit import predict_zero_shot, submission_prior

    monkeypatch.setattr(common.zero_shot, "clip_genre_scores", _fake_scores(calls))
    return predict_zero_shot(test_dir, prior=submission_prior(test_dir / "no data"), taggers=object(),
                             progress=False)


@time_limit(120)
def test_zero_shot_decodes_every_mp3_or_gives_it_the_prior(corpus, decoder, monkeypatch):
    """The decoding half of the zero-shot submission over every mp3 of the corpus (the networks
    replaced): an unreadable file gets the prior with its reason, a decoded one is scored."""
    calls: list[int] = []
    predictions = _predict_zero_shot(corpus, calls, monkeypatch)
    mp3_stems = sorted(stem for stem, bad in CORPUS.items() if bad.name.endswith(".mp3"))
    assert list(predictions.ids) == mp3_stems
    prior = {record["id"]: record for record in predictions.fallbacks if record["fallback"] == "prior"}
    for stem in mp3_stems:
        if CORPUS[stem].outcome == "unreadable":
            assert prior[stem]["reason"] == "unreadable" and CORPUS[stem].name in prior[stem]["detail"], stem
        elif CORPUS[stem].outcome == "ok":
            assert stem not in prior, stem
    assert len(calls) == len(mp3_stems) - len(prior) and min(calls) > 0
    np.testing.assert_allclose(predictions.probs.sum(axis=1), 1.0)


@time_limit(120)
def test_zero_shot_decodes_only_a_clip_of_a_long_file(corpus, decoder, tmp_path, monkeypatch):
    """A 30-minute mp3 is tagged on its centre 30 s, decoded alone: memory stays that of a clip
    (whole, 30 min at 16 kHz is 110 MiB of samples and 600 patches per tagger)."""
    folder = tmp_path / "long"
    folder.mkdir()
    (folder / CORPUS[LONG].name).symlink_to(corpus / CORPUS[LONG].name)
    calls: list[int] = []
    tracemalloc.start()
    try:
        _predict_zero_shot(folder, calls, monkeypatch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(calls) == 1
    assert peak < 2 * PEAK_BYTES and calls[0] == int(SUBMISSION_CLIP_SECONDS * 16000)


@time_limit(600)
def test_zero_shot_submission_over_the_corpus(corpus, musicnn_weights_dir, tmp_path):
    """``make submit EXP=musicnn`` (``python -m crowdai.submit --exp musicnn``) on the corpus, in its own
    process, with the published weights: a valid row per mp3, the unreadable ones on the prior.
    The 30-minute file is left out: tagging all of it takes a minute and 400 MB (the test above)."""
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    stems = sorted(stem for stem, bad in CORPUS.items() if bad.name.endswith(".mp3") and stem != LONG)
    for stem in stems:
        (test_dir / CORPUS[stem].name).symlink_to(corpus / CORPUS[stem].name)
    out = tmp_path / "zero_shot.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "crowdai.submit", "--exp", "musicnn", "--test-dir", str(test_dir),
                             "--output", str(out), "--weights", str(musicnn_weights_dir), "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    submission = pd.read_csv(out, index_col=0)
    assert sorted(submission.index.astype(str)) == stems and np.isfinite(submission.to_numpy()).all()
    fallbacks = json.loads(out.with_suffix(".json").read_text())["fallbacks"]
    unreadable = {record["id"] for record in fallbacks if record["reason"] == "unreadable"}
    assert {stem for stem in stems if CORPUS[stem].outcome == "unreadable"} <= unreadable
    assert not {stem for stem in stems if CORPUS[stem].outcome == "ok"} & unreadable
