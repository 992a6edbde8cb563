"""libmpg123 mono-mix decoding (common.mp3) against the soundfile path it replaces for mp3."""

from __future__ import annotations

import os
from pathlib import Path

import lameenc
import numpy as np
import pytest
import soundfile as sf
from bad_audio import id3v2_tag

from common import audio, mp3
from common.errors import UnreadableAudioError
from common.settings import FeatureSettings

if not mp3.available():
    pytest.skip("the system libmpg123 is not installed (Debian/Ubuntu: apt-get install libmpg123-0); "
                "common.audio decodes mp3 through soundfile instead", allow_module_level=True)

#: Largest |libmpg123 mono mix - soundfile channel mean| allowed; measured <= 1.1e-6
#: on stereo 44.1/48 kHz and exactly 0 on mono files.
SAMPLE_TOLERANCE = 1e-5
#: Largest log-mel difference (dB) allowed between the two paths after load_clip.
LOGMEL_TOLERANCE_DB = 0.05
#: The reduced-rate decode (libmpg123 at 22.05 kHz, soxr HQ to 12 kHz) against the
#: reference path, librosa.load + melspectrogram, on real music: mean and 99th-percentile
#: |dB difference| with dB floored 80 dB below the clip's peak. Measured 0.0006 and 0.007
#: on 30-s 192-kbps segments of ../shared/audio.
REAL_MEAN_DB_TOLERANCE = 0.01
REAL_P99_DB_TOLERANCE = 0.1
#: Largest log-mel difference (dB) between the paths when libmpg123 synthesises at half
#: rate (the top mel bands differ most).
REDUCED_RATE_LOGMEL_TOLERANCE_DB = 0.2


def _encode(path: Path, *, sr: int, channels: int, seconds: float = 6.0, seed: int = 0) -> Path:
    """A lameenc mp3 of a chirp plus noise (channels of different loudness)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    y = chirp[:, None] * np.linspace(1.0, 0.6, channels)[None, :] + 0.1 * rng.standard_normal((t.size, channels))
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(128 if channels == 2 else 64)
    encoder.set_in_sample_rate(sr)
    encoder.set_channels(channels)
    encoder.set_quality(7)
    pcm = np.round(np.clip(y, -1, 1) * 32767).astype("<i2")
    path.write_bytes(bytes(encoder.encode(pcm.tobytes()) + encoder.flush()))
    return path


def _encode_lame_tagged(path: Path, *, seconds: float = 4.0) -> Path:
    """A libsndfile mp3: a Xing/LAME header frame (gapless length), and an ID3v1 tag at the end."""
    t = np.arange(int(44100 * seconds)) / 44100
    y = 0.3 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1)
    with sf.SoundFile(path, "w", 44100, 2, format="MP3", subtype="MPEG_LAYER_III") as file:
        file.title = "A title"
        file.write(y)
    return path


@pytest.fixture(scope="module")
def mp3s(tmp_path_factory) -> dict[str, Path]:
    """Encoded test files: 44.1-kHz stereo, 22.05-kHz mono, a truncated copy of the first, and
    tagged files as real ones come (ID3v2 in front, a Xing/LAME header, ID3v1 at the end)."""
    folder = tmp_path_factory.mktemp("mp3")
    files = {
        "stereo_44k": _encode(folder / "stereo_44k.mp3", sr=44100, channels=2),
        "mono_22k": _encode(folder / "mono_22k.mp3", sr=22050, channels=1, seed=1),
        "lame_tagged": _encode_lame_tagged(folder / "lame_tagged.mp3"),
    }
    data = files["stereo_44k"].read_bytes()
    files["truncated"] = folder / "truncated.mp3"
    files["truncated"].write_bytes(data[: int(0.4 * len(data))])  # cut mid-frame
    files["id3v2_tagged"] = folder / "id3v2_tagged.mp3"
    files["id3v2_tagged"].write_bytes(id3v2_tag() + files["lame_tagged"].read_bytes())
    # a cover picture larger than one feed block: the first frame arrives in a later block
    files["cover_art"] = folder / "cover_art.mp3"
    files["cover_art"].write_bytes(id3v2_tag(picture_bytes=mp3.FEED_BYTES + 12345) + data)
    return files


def _decode(path: Path, **options) -> tuple[np.ndarray, int]:
    """``common.audio``'s decode of the whole file: ``(y, rate)``."""
    decoded = audio._decode(path, **options)
    return decoded.y, decoded.rate


def _soundfile_decode(path: Path, monkeypatch) -> tuple[np.ndarray, int]:
    with monkeypatch.context() as patch:
        patch.setattr(mp3, "available", lambda: False)
        return _decode(path)


def _outcome(decode, path: Path):
    """(y, rate), or the (class, reason) of the error ``decode(path)`` raises."""
    try:
        return decode(path)
    except UnreadableAudioError as error:
        return type(error), error.reason


@pytest.mark.parametrize("name", ["stereo_44k", "mono_22k", "truncated", "lame_tagged", "id3v2_tagged"])
def test_decode_mono_matches_soundfile(mp3s, name, monkeypatch):
    """Same length too: the LAME header's encoder delay and padding are cut by both (gapless)."""
    y, rate = mp3.decode_mono(mp3s[name])
    expected, expected_rate = _soundfile_decode(mp3s[name], monkeypatch)
    assert rate == expected_rate == (22050 if name == "mono_22k" else 44100)
    if name.endswith("tagged"):
        assert y.shape == (4 * 44100,)  # exactly the 4 s written
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.shape == expected.shape  # the truncated file keeps exactly the frames soundfile keeps
    assert np.abs(y - expected).max() < SAMPLE_TOLERANCE
    assert np.abs(expected).max() > 0.1  # real signal, not two arrays of zeros


def test_cover_art_larger_than_a_feed_block_is_skipped(mp3s):
    y, rate = mp3.decode_mono(mp3s["cover_art"])
    expected, expected_rate = mp3.decode_mono(mp3s["stereo_44k"])
    assert rate == expected_rate and np.array_equal(y, expected)


@pytest.mark.parametrize("name", ["stereo_44k", "lame_tagged", "truncated"])
def test_feed_block_size_does_not_change_the_samples(mp3s, name, monkeypatch):
    """Blocks that split frames and tags anywhere (1,000 bytes) decode to the same samples."""
    expected, _ = mp3.decode_mono(mp3s[name], min_rate=13200)
    monkeypatch.setattr(mp3, "FEED_BYTES", 1000)
    assert mp3s[name].stat().st_size > 20 * mp3.FEED_BYTES
    y, _ = mp3.decode_mono(mp3s[name], min_rate=13200)
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("min_rate", [None, 13200], ids=["full_rate", "half_rate"])
@pytest.mark.parametrize("name", ["stereo_44k", "lame_tagged", "truncated"])
def test_max_seconds_stops_decoding_after_that_much(mp3s, name, min_rate):
    full, rate = mp3.decode_mono(mp3s[name], min_rate=min_rate)
    part, part_rate = mp3.decode_mono(mp3s[name], min_rate=min_rate, max_seconds=1.0)
    assert part_rate == rate and part.shape == (rate + 1,)  # floor(max_seconds * rate) + 1: longer than 1 s
    assert np.array_equal(part, full[:part.size])
    longer, _ = mp3.decode_mono(mp3s[name], min_rate=min_rate, max_seconds=full.size / rate + 1.0)
    assert np.array_equal(longer, full)


class _FixedSpan:
    """A ``span`` for :func:`common.mp3.decode_span` that picks ``[start, stop)`` and records what it was told."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.asked: list[tuple[int, int]] = []

    def __call__(self, length: int, rate: int) -> tuple[int, int]:
        self.asked.append((length, rate))
        return self.start, self.stop


@pytest.mark.parametrize("min_rate", [None, 13200], ids=["full_rate", "half_rate"])
@pytest.mark.parametrize("name", ["stereo_44k", "mono_22k", "lame_tagged", "id3v2_tagged", "cover_art", "truncated"])
def test_decode_span_decodes_that_stretch_of_the_whole_decode(mp3s, name, min_rate):
    """The scan counts what a full decode yields (gapless, tags skipped, a truncated end), and a
    seek lands on the sample: the stretch equals the full decode's to float32 rounding."""
    full, rate = mp3.decode_mono(mp3s[name], min_rate=min_rate)
    third = full.size // 3 + 7
    for start, stop in [(0, full.size), (third, third + 20000), (full.size - 999, full.size)]:
        span = _FixedSpan(start, stop)
        y, span_rate, first, length = mp3.decode_span(mp3s[name], min_rate=min_rate, span=span)
        assert span.asked == [(full.size, rate)] and (span_rate, first, length) == (rate, start, full.size)
        assert y.shape == (stop - start,)
        np.testing.assert_allclose(y, full[start:stop], rtol=0, atol=1e-6)


def test_seek_decodes_enough_frames_before_the_target_at_low_bit_rates(tmp_path, monkeypatch):
    """At 8 kbit/s the bit reservoir reaches back ~4 frames: libmpg123's default of 4 frames
    decoded before a seek target leaves errors of ~1 in the first frames after it."""
    from bad_audio import chirp_signal, encode_mp3

    path = tmp_path / "low.mp3"
    path.write_bytes(encode_mp3(chirp_signal(20.0, rate=8000, seed=5), rate=8000, kbps=8))
    full, _ = mp3.decode_mono(path)
    starts = [full.size // 2 + 1, full.size // 3, full.size - 4000]

    def largest_error() -> float:
        return max(float(np.abs(mp3.decode_span(path, span=_FixedSpan(start, start + 2000))[0]
                                - full[start:start + 2000]).max()) for start in starts)

    assert largest_error() < 1e-6
    monkeypatch.setattr(mp3, "SEEK_PREFRAMES", 4)
    assert largest_error() > 0.1


def test_a_change_of_sampling_rate_ends_the_stream(mp3s, tmp_path, monkeypatch):
    """Two mp3s of different rates concatenated: both decoders keep the first, rather than the
    second's samples at the first's rate (20 s of the wrong speed, before)."""
    path = tmp_path / "two_rates.mp3"
    path.write_bytes(mp3s["stereo_44k"].read_bytes() + mp3s["mono_22k"].read_bytes())
    first, rate = mp3.decode_mono(mp3s["stereo_44k"])
    y, y_rate = mp3.decode_mono(path)
    assert y_rate == rate and np.array_equal(y, first)
    assert _soundfile_decode(path, monkeypatch)[0].shape == first.shape
    with pytest.raises(UnreadableAudioError, match="sampling rate changes"):
        mp3.decode_span(path, span=_FixedSpan(first.size - 100, first.size + 100))


def test_truncated_file_keeps_its_first_frames(mp3s):
    full, _ = mp3.decode_mono(mp3s["stereo_44k"])
    part, _ = mp3.decode_mono(mp3s["truncated"])
    assert 0.3 * full.size < part.size < 0.5 * full.size
    np.testing.assert_allclose(part[:1000], full[:1000], atol=1e-6)


@pytest.mark.parametrize("name", ["stereo_44k", "mono_22k"])
@pytest.mark.parametrize("sample_rate", [22050, 12000], ids=["full_rate", "reduced_rate"])
def test_logmel_of_clip_matches_soundfile_path(mp3s, name, sample_rate, monkeypatch):
    """At 12 kHz a 44.1-kHz file decodes at 22.05 kHz (measured: 0.1 dB max, 0.002 mean)."""
    settings = FeatureSettings(sample_rate=sample_rate)
    fast = audio.logmel(audio.load_clip(mp3s[name], settings=settings), settings=settings)
    with monkeypatch.context() as patch:
        patch.setattr(mp3, "available", lambda: False)
        slow = audio.logmel(audio.load_clip(mp3s[name], settings=settings), settings=settings)
    assert fast.shape == slow.shape == settings.clip_shape
    error = np.abs(fast - slow)
    reduced = name == "stereo_44k" and sample_rate == 12000
    assert error.max() < (REDUCED_RATE_LOGMEL_TOLERANCE_DB if reduced else LOGMEL_TOLERANCE_DB)
    assert error.mean() < REAL_MEAN_DB_TOLERANCE


def test_every_demo_mp3_decodes_as_through_soundfile(demo_data_dir, monkeypatch):
    """The generated mini-FMA, broken files included (zero-byte, truncated, silent, 2-s)."""
    paths = sorted((demo_data_dir / "fma_small").rglob("*.mp3"))
    assert len(paths) > 10
    for path in paths:
        fast = _outcome(_decode, path)
        slow = _outcome(lambda p: _soundfile_decode(p, monkeypatch), path)
        if isinstance(slow[0], np.ndarray):
            assert fast[1] == slow[1] and fast[0].shape == slow[0].shape, path
            assert np.abs(fast[0] - slow[0]).max() < SAMPLE_TOLERANCE, path
        else:
            assert fast == slow, path


def _write_bad(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.mp3"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("track_id,genre\n2,Hip-Hop\n" * 500)
    else:  # random bytes; "random_after_sync" gets past the start test to mpg123's own checks
        noise = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
        path.write_bytes((b"\xff\xfb\x90\x64" if kind == "random_after_sync" else b"") + noise)
    return path


@pytest.mark.parametrize("kind", ["zero_bytes", "text", "random_bytes", "random_after_sync"])
def test_non_mp3_data_is_unreadable_for_both_decoders(tmp_path, kind, monkeypatch):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(UnreadableAudioError) as fast:
        mp3.decode_mono(path)
    with pytest.raises(UnreadableAudioError) as slow:
        _soundfile_decode(path, monkeypatch)
    with pytest.raises(UnreadableAudioError) as through_audio:
        _decode(path)
    assert fast.value.reason == slow.value.reason == through_audio.value.reason == "unreadable"
    assert fast.value.path == path and "libmpg123" in fast.value.detail


def test_corrupt_stretch_stops_decoding_instead_of_garbage(mp3s, tmp_path):
    data = mp3s["stereo_44k"].read_bytes()
    half = len(data) // 2
    noise = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(data[:half] + noise + data[half:])
    full, _ = mp3.decode_mono(mp3s["stereo_44k"])
    y, _ = mp3.decode_mono(path)
    assert 0.4 * full.size < y.size < 0.6 * full.size
    assert np.abs(y).max() < 1.0


@pytest.fixture
def decode_spy(monkeypatch) -> list[Path]:
    """Paths that went through mp3.decode_mono (which still decodes them)."""
    calls: list[Path] = []
    real = mp3.decode_mono

    def spy(path, **options):
        calls.append(path)
        return real(path, **options)

    monkeypatch.setattr(mp3, "decode_mono", spy)
    return calls


@pytest.mark.parametrize("suffix", [".mp3", ".MP3"])
def test_decode_uses_libmpg123_for_mp3(mp3s, tmp_path, suffix, decode_spy):
    path = tmp_path / f"song{suffix}"
    path.write_bytes(mp3s["stereo_44k"].read_bytes())
    y, rate = _decode(path)
    assert decode_spy == [path] and rate == 44100 and y.size > 0


def test_decode_uses_soundfile_without_libmpg123(mp3s, decode_spy, monkeypatch):
    monkeypatch.setattr(mp3, "available", lambda: False)
    y, rate = _decode(mp3s["stereo_44k"])
    assert decode_spy == [] and rate == 44100 and y.size > 0


def test_other_formats_go_through_soundfile(tmp_path, signal, decode_spy):
    wav = tmp_path / "tone.wav"
    sf.write(wav, signal("sine", sr=16000, seconds=1.0, channels=2), 16000)
    y, rate = _decode(wav)
    assert decode_spy == [] and rate == 16000 and y.shape == (16000,)


def test_wav_named_mp3_still_decodes_through_soundfile(tmp_path, signal, decode_spy):
    """libmpg123 refuses it (it would find "frames" in a sine's PCM); soundfile reads it as before."""
    path = tmp_path / "really_a_wav.mp3"
    sf.write(path, signal("sine", sr=16000, seconds=1.0), 16000, format="WAV")
    with pytest.raises(UnreadableAudioError):
        mp3.decode_mono(path)
    decode_spy.clear()
    y, rate = _decode(path)
    assert decode_spy == [path] and rate == 16000 and y.shape == (16000,)


def test_without_the_library_mp3s_go_through_soundfile(mp3s, monkeypatch):
    monkeypatch.setattr(mp3.ctypes.util, "find_library", lambda name: None)
    mp3._library.cache_clear()
    try:
        assert not mp3.available()
        with pytest.raises(UnreadableAudioError, match="libmpg123 is not installed"):
            mp3.decode_mono(mp3s["stereo_44k"])
        y, rate = _decode(mp3s["stereo_44k"])
        assert rate == 44100 and y.size > 0
    finally:
        mp3._library.cache_clear()


SHARED_AUDIO = Path(os.environ.get("FMA_SHARED_AUDIO", Path(__file__).resolve().parents[1].parent / "shared" / "audio"))


@pytest.fixture(scope="module")
def real_mp3(tmp_path_factory) -> Path:
    """The first 30-s segment of a real recording, as a 44.1-kHz stereo 192-kbps mp3."""
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_AUDIO} (a fresh clone lacks ../shared/audio)")
    from bench.features import make_real_mp3s

    return make_real_mp3s(tmp_path_factory.mktemp("real"), source_dir=SHARED_AUDIO, n_clips=3)[2]


def test_reduced_rate_decode_goes_half_rate_only_with_margin(mp3s):
    assert mp3.decode_mono(mp3s["stereo_44k"], min_rate=13200)[1] == 22050
    assert mp3.decode_mono(mp3s["stereo_44k"], min_rate=8800)[1] == 11025
    assert mp3.decode_mono(mp3s["stereo_44k"], min_rate=24255)[1] == 44100
    assert mp3.decode_mono(mp3s["mono_22k"], min_rate=13200)[1] == 22050  # 11025 is too low: reopened
    y, rate = _decode(mp3s["stereo_44k"], sample_rate=12000)
    assert rate == 22050 and y.dtype == np.float32
    assert _decode(mp3s["stereo_44k"], sample_rate=22050)[1] == 44100  # no margin at 22.05 kHz


@pytest.mark.parametrize("settings", [FeatureSettings(), FeatureSettings(sample_rate=8000, n_mels=64)],
                         ids=["12k", "8k"])
def test_real_music_logmel_matches_librosa_reference_within_tolerance(real_mp3, settings):
    import librosa

    reference_y, _ = librosa.load(real_mp3, sr=settings.sample_rate)
    reference = audio.logmel(audio.crop_or_pad(reference_y, n_samples=settings.clip_samples, crop="center"),
                             settings=settings)
    ours = audio.logmel(audio.load_clip(real_mp3, settings=settings), settings=settings)
    floor = reference.max() - 80.0
    error = np.abs(np.maximum(ours, floor) - np.maximum(reference, floor))
    assert error.mean() < REAL_MEAN_DB_TOLERANCE
    assert np.percentile(error, 99) < REAL_P99_DB_TOLERANCE
