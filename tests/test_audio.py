"""Decoding of every format, rate and channel count; broken files; excerpts of long files; crop/pad; log-mel."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr
from bad_audio import DECODERS, chirp_signal, encode_mp3, use_decoder

from common import audio, mp3
from common.audio import crop_or_pad, load_audio, load_clip, load_excerpt, logmel
from common.errors import SilentAudioError, TooShortAudioError, UnreadableAudioError
from common.settings import FeatureSettings

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
SMALL = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                        clip_seconds=2.0, min_seconds=1.0)
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def write_tone(path: Path, *, rate: int, channels: int = 1, seconds: float = 3.0,
               freq: float = 440.0, amplitude: float = 0.3) -> Path:
    """A sine tone (same in every channel) in the format given by ``path``'s suffix."""
    t = np.arange(int(seconds * rate)) / rate
    y = amplitude * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.repeat(y[:, None], channels, axis=1), rate, format=FORMATS[path.suffix])
    return path


def dominant_frequency(y: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("suffix", "rate", "channels"), [
    (".wav", 8000, 1), (".wav", 96000, 6), (".flac", 44100, 2), (".flac", 16000, 1),
    (".ogg", 22050, 2), (".ogg", 48000, 1), (".mp3", 44100, 2), (".mp3", 32000, 1),
])
def test_every_format_rate_and_channel_count_decodes_to_mono_at_the_target_rate(
        tmp_path, suffix, rate, channels):
    path = write_tone(tmp_path / f"tone{suffix}", rate=rate, channels=channels, seconds=3.0, freq=440.0)
    y = load_audio(path, sample_rate=12000)
    assert y.dtype == np.float32 and y.ndim == 1
    # mp3 adds encoder delay / padding of a few frames; everything else is exact to the resampler
    assert abs(y.size - 3 * 12000) < (0.1 * 12000 if suffix == ".mp3" else 2)
    assert dominant_frequency(y, 12000) == pytest.approx(440.0, abs=2.0)
    assert 0.2 < np.abs(y).max() < 0.4


def test_channels_are_averaged(tmp_path):
    rate = 8000
    t = np.arange(2 * rate) / rate
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, rate)
    y = load_audio(tmp_path / "s.wav", sample_rate=rate)
    np.testing.assert_allclose(y, 0.2 * np.sin(2 * np.pi * 300 * t), atol=1e-4)


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(),
                    reason=f"real recordings not found at {SHARED_AUDIO} (a fresh clone lacks ../shared/audio)")
def test_real_recordings_decode_into_non_silent_clips_and_logmels():
    paths = sorted(SHARED_AUDIO.glob("*.ogg"))
    assert paths, f"no .ogg files in {SHARED_AUDIO}"
    settings = FeatureSettings(clip_seconds=10.0)
    for path in paths:
        info = sf.info(path)
        clip = load_clip(path, settings=settings)
        assert clip.shape == (settings.clip_samples,)
        assert np.abs(clip).max() > 0.01, path
        features = logmel(clip, settings=settings)
        assert features.shape == settings.clip_shape and np.isfinite(features).all()
        assert info.duration > 10 or np.all(clip[int(info.duration * 12000) + 100:] == 0)


def test_broken_files_give_typed_errors_naming_the_file(tmp_path):
    good = write_tone(tmp_path / "good.mp3", rate=44100, channels=2, seconds=3.0)
    data = good.read_bytes()
    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "head.mp3").write_bytes(data[:300])
    (tmp_path / "text.mp3").write_text("not audio at all\n" * 50)
    write_tone(tmp_path / "silent.wav", rate=8000, amplitude=1e-4)
    write_tone(tmp_path / "short.flac", rate=8000, seconds=0.5)
    expected = {"missing.mp3": UnreadableAudioError, "empty.mp3": UnreadableAudioError,
                "head.mp3": UnreadableAudioError, "text.mp3": UnreadableAudioError,
                "silent.wav": SilentAudioError, "short.flac": TooShortAudioError}
    for name, error_type in expected.items():
        with pytest.raises(error_type) as raised:
            load_clip(tmp_path / name, settings=SMALL)
        assert raised.value.path == tmp_path / name
        assert str(tmp_path / name) in str(raised.value) and raised.value.detail
    with pytest.raises(TooShortAudioError, match=r"0\.50 s"):
        load_clip(tmp_path / "short.flac", settings=SMALL)


def test_truncated_mp3_that_still_decodes_enough_is_kept(tmp_path):
    good = write_tone(tmp_path / "good.mp3", rate=44100, channels=2, seconds=4.0)
    data = good.read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) * 2 // 3])
    clip = load_clip(tmp_path / "cut.mp3", settings=SMALL)
    assert clip.shape == (SMALL.clip_samples,) and np.abs(clip).max() > 0.2


def test_crop_center_start_and_zero_pad():
    y = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(y, n_samples=4, crop="center"), [3, 4, 5, 6])
    np.testing.assert_array_equal(crop_or_pad(y, n_samples=4, crop="start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(crop_or_pad(y, n_samples=12, crop="center"), [*range(10), 0, 0])


def test_load_clip_pads_audio_between_min_and_clip_length(tmp_path):
    path = write_tone(tmp_path / "mid.wav", rate=8000, seconds=1.5)
    clip = load_clip(path, settings=SMALL)
    assert clip.shape == (16000,)
    assert np.abs(clip[:11900]).max() > 0.2 and np.all(clip[12000:] == 0)


@pytest.fixture(params=DECODERS)
def mp3_decoder(request, monkeypatch) -> str:
    """Which decoder reads mp3s (:func:`bad_audio.use_decoder`)."""
    use_decoder(request.param, monkeypatch)
    return request.param


def test_resampled_length_is_the_length_soxr_returns():
    for rate, sample_rate in [(22050, 12000), (8000, 12000), (96000, 12000), (44100, 16000), (11025, 8000)]:
        for n in [1, 2, 3, 7, 146, 147, 148, 1000, 12345, 44101]:
            resampled = soxr.resample(np.zeros(n, dtype=np.float32), rate, sample_rate, quality=audio.RESAMPLE_QUALITY)
            assert audio._resampled_length(n, rate, sample_rate) == resampled.shape[0], (n, rate, sample_rate)


def _check_excerpt(path: Path, *, crop: str, sample_rate: int = 12000, seconds: float = 2.0) -> None:
    """load_excerpt of ``path`` equals the crop of its whole decode, to float32 rounding."""
    whole = load_audio(path, sample_rate=sample_rate)
    n_samples = int(seconds * sample_rate)
    assert whole.size > 2 * n_samples + audio.RESAMPLE_MARGIN_SECONDS * sample_rate  # decoded in part
    y, decoded_seconds = load_excerpt(path, sample_rate=sample_rate, n_samples=n_samples, crop=crop)
    expected = crop_or_pad(whole, n_samples=n_samples, crop=crop)
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() > 0.1
    assert decoded_seconds == whole.size / sample_rate if crop == "center" else decoded_seconds > seconds


@pytest.mark.parametrize("crop", ["center", "start"])
@pytest.mark.parametrize(("suffix", "rate", "channels"), [
    (".wav", 96000, 6), (".wav", 8000, 1), (".flac", 44100, 2), (".ogg", 22050, 1), (".wav", 12000, 2),
])
def test_excerpt_of_a_long_file_is_the_crop_of_its_whole_decode(tmp_path, suffix, rate, channels, crop):
    """Down- and upsampled, and at the target rate: only the clip and a margin are decoded."""
    path = tmp_path / f"long{suffix}"
    sf.write(path, chirp_signal(6.0, rate=rate, channels=channels), rate, format=FORMATS[suffix])
    _check_excerpt(path, crop=crop)


@pytest.mark.parametrize("crop", ["center", "start"])
def test_excerpt_of_a_long_mp3_is_the_crop_of_its_whole_decode(tmp_path, mp3_decoder, crop):
    path = tmp_path / "long.mp3"
    path.write_bytes(encode_mp3(chirp_signal(6.0, rate=44100, channels=2), rate=44100, kbps=128))
    _check_excerpt(path, crop=crop)


def test_excerpt_of_an_mp3_shorter_than_libsndfile_estimates(tmp_path, mp3_decoder):
    """libsndfile extrapolates an mp3's length from its first frame's bit rate: 1 s at 64 kbit/s then
    20 s at 320 kbit/s reads as 102 s. The clip around that centre lies past the end; soundfile
    reads the file again for the length found, libmpg123 scans it."""
    path = tmp_path / "variable.mp3"
    path.write_bytes(encode_mp3(chirp_signal(1.0, rate=44100), rate=44100, kbps=64)
                     + encode_mp3(chirp_signal(20.0, rate=44100, seed=4), rate=44100, kbps=320))
    assert sf.info(path).duration > 100
    _check_excerpt(path, crop="center", seconds=4.0)


def test_soundfile_reads_a_low_bit_rate_mp3_like_one_read(tmp_path, monkeypatch):
    """libsndfile 1.2.2 returns wrong samples after a read that ends inside a frame of an 8-kbit/s
    mp3; reads of whole frames (:data:`common.audio.SOUNDFILE_BLOCK_FRAMES`) give what one read does."""
    path = tmp_path / "low.mp3"
    path.write_bytes(encode_mp3(chirp_signal(20.0, rate=8000), rate=8000, kbps=8))
    expected, rate = sf.read(path, dtype="float32")
    assert expected.size > 2 * audio.SOUNDFILE_BLOCK_FRAMES
    monkeypatch.setattr(mp3, "available", lambda: False)
    decoded = audio._decode(path)
    assert decoded.rate == rate and np.array_equal(decoded.y, expected)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_mel_spectrogram_blocks_change_no_bit(monkeypatch, power):
    """Frames go through the FFT in cache-sized blocks: any block size gives the same numbers
    (to float32 rounding: BLAS may sum a narrow block's mel product in another order)."""
    settings = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, clip_seconds=2.0)
    y = np.random.default_rng(1).standard_normal(settings.clip_samples).astype(np.float32)
    whole = audio.mel_spectrogram(y, settings=settings, power=power)
    monkeypatch.setattr(audio, "STFT_BLOCK_FRAMES", 7)  # 126 frames: 18 blocks, none ragged
    np.testing.assert_allclose(audio.mel_spectrogram(y, settings=settings, power=power), whole, rtol=1e-6)
    monkeypatch.setattr(audio, "STFT_BLOCK_FRAMES", 20)  # 6 blocks and a ragged seventh
    np.testing.assert_allclose(audio.mel_spectrogram(y, settings=settings, power=power), whole, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Empty filters detected")
@pytest.mark.parametrize("sample_rate, n_fft, n_mels", [(12000, 512, 96), (8000, 128, 64), (22050, 1024, 128)],
                         ids=["default", "empty_filters", "wide"])
def test_mel_band_groups_hold_every_nonzero_weight(sample_rate, n_fft, n_mels):
    """The grouped mel product leaves out only exact-zero weights of the filter bank."""
    options = dict(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None)
    basis = audio.mel_basis(**options)
    groups = audio._mel_band_groups(**options)
    rebuilt = np.zeros_like(basis)
    for bands, bins, weights in groups:
        rebuilt[bands, bins] = weights
    assert np.array_equal(rebuilt, basis)
    assert [bands.start for bands, _, _ in groups] == sorted({bands.start for bands, _, _ in groups})
    assert sum(bands.stop - bands.start for bands, _, _ in groups) == n_mels
    assert sum(weights.size for _, _, weights in groups) < 0.4 * basis.size  # the point of grouping


@pytest.mark.parametrize("log_scale", ["db", "log1p"])
def test_logmel_matches_librosa(log_scale):
    settings = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, clip_seconds=2.0,
                               log_scale=log_scale, fmin=50.0, fmax=3500.0)
    y = np.random.default_rng(0).standard_normal(settings.clip_samples).astype(np.float32) * 0.1
    mel = librosa.feature.melspectrogram(y=y, sr=8000, n_fft=256, hop_length=128, n_mels=16,
                                         fmin=50.0, fmax=3500.0, power=2.0)
    expected = (librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None) if log_scale == "db"
                else np.log10(1 + 10000 * mel))
    result = logmel(y, settings=settings)
    assert result.shape == settings.clip_shape == (16, settings.n_frames) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-3)

