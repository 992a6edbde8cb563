"""Short clips: the feature cache records how much of each clip is audio, and chunk evaluation,
training crops and the musicnn embedding keep to it (issue 23)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.features import FeatureCache, extract, folder_items
from common.inference import chunk_starts, predict_clips
from common.io import bytes_record, sidecar_path
from common.settings import FeatureSettings
from common.store import ClipStore, audio_lengths
from tests.conftest import make_signal, write_audio

SETTINGS = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=256, n_mels=8, clip_seconds=4.0, min_seconds=1.0)


def _frame_model(n_mels: int, crop: int):
    """A fixed model whose 2 outputs depend on where a crop lies: softmax of (mean, -mean) of the crop."""
    import keras

    inputs = keras.Input((n_mels, crop))
    mean = keras.layers.GlobalAveragePooling1D()(keras.layers.Flatten()(inputs)[..., None])
    return keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Concatenate()([mean, -mean]) / 50.0))


@pytest.fixture(scope="module")
def short_and_long_cache(tmp_path_factory):
    """A cache of a 2.5-s clip (padded to 4 s) and a 5-s clip (cropped): ``(cache, {id: seconds})``."""
    folder = tmp_path_factory.mktemp("short_audio")
    seconds = {"a_short": 2.5, "b_long": 5.0}
    for name, length in seconds.items():
        write_audio(folder / f"{name}.wav", make_signal("chirp", sr=8000, seconds=length), sr=8000)
    cache_dir = tmp_path_factory.mktemp("short_cache") / "cache"
    extract(folder_items(folder), settings=SETTINGS, cache_dir=cache_dir, n_jobs=1, progress=False)
    return FeatureCache.open(cache_dir), seconds


def test_the_cache_records_the_audio_samples_of_short_clips_only(short_and_long_cache):
    cache, seconds = short_and_long_cache
    np.testing.assert_array_equal(cache.audio_samples(["a_short", "b_long"]),
                                  [int(seconds["a_short"] * 8000), SETTINGS.clip_samples])
    index = pd.read_csv(cache.directory / "index.csv", dtype={"id": str})
    assert list(index.columns) == ["id", "shard", "row", "samples"]
    store = ClipStore(cache, ["b_long", "a_short"])
    # the log-mel frames of the unpadded 2.5-s audio; the long clip is whole
    np.testing.assert_array_equal(store.valid_lengths, [SETTINGS.n_frames, 1 + 20000 // 256])
    assert ClipStore(cache, ["b_long"]).valid_lengths is None


def test_an_old_cache_without_lengths_loads_as_full_length(short_and_long_cache, tmp_path):
    import shutil

    cache, _ = short_and_long_cache
    old = shutil.copytree(cache.directory, tmp_path / "old")
    index_csv = pd.read_csv(old / "index.csv", dtype={"id": str}).drop(columns="samples").to_csv(
        index=False, lineterminator="\n").encode()
    (old / "index.csv").write_bytes(index_csv)
    checks = json.loads(sidecar_path(old / "index.csv").read_text())
    sidecar_path(old / "index.csv").write_text(json.dumps({**checks, "index.csv": bytes_record(index_csv)}))
    for record in old.glob("shard_*.json"):
        data = json.loads(record.read_text())
        for item in data["items"]:
            item.pop("samples", None)
        record.write_text(json.dumps(data))
    reopened = FeatureCache.open(old)
    np.testing.assert_array_equal(reopened.samples, [SETTINGS.clip_samples] * 2)
    assert ClipStore(reopened, ["a_short", "b_long"]).valid_lengths is None
    np.testing.assert_array_equal(reopened.get(["a_short"]), cache.get(["a_short"]))


def test_full_length_settings_keep_their_digest():
    # the names of existing caches: the default settings and the demo's
    assert FeatureSettings().digest() == "d743b2fa1db2"
    assert FeatureSettings(sample_rate=12000, n_mels=48, clip_seconds=9.5).digest() == "3bdc7afe5d51"


def test_audio_lengths_by_layout():
    samples = np.array([SETTINGS.clip_samples, 20000])
    np.testing.assert_array_equal(audio_lengths(FeatureSettings(**{**SETTINGS.to_dict(), "kind": "waveform"}),
                                                samples), samples)
    assert audio_lengths(SETTINGS, np.array([SETTINGS.clip_samples] * 3)) is None


@pytest.mark.parametrize("eval", ["chunks", "center"])
def test_a_short_clips_prediction_is_the_mean_over_its_audio_chunks_only(eval):
    rng = np.random.default_rng(0)
    n_mels, n_frames, crop, hop = 4, 40, 10, 5
    clips = rng.normal(size=(3, n_mels, n_frames)).astype(np.float32) * 20
    valid = np.array([n_frames, 23, 6])  # full, short, shorter than one crop
    clips[1, :, 23:] = clips[2, :, 6:] = -100.0  # the padding's log-mel
    model = _frame_model(n_mels, crop)
    store = ClipStore.from_array(clips, valid_lengths=valid)
    probs = predict_clips(model, store, crop_frames=crop, eval=eval, chunk_hop_frames=hop, batch_size=4)

    def expected(clip, length):
        starts = (chunk_starts(length, crop_frames=crop, hop_frames=hop) if eval == "chunks"
                  else [(length - crop) // 2])
        return np.mean([model(clip[None, :, s:s + crop]).numpy()[0] for s in starts], axis=0)

    for clip, length, got in zip(clips, np.maximum(valid, crop), probs):
        np.testing.assert_allclose(got, expected(clip, length), rtol=1e-5)
    padded = predict_clips(model, clips, crop_frames=crop, eval=eval, chunk_hop_frames=hop, batch_size=4)
    np.testing.assert_allclose(padded[0], probs[0], rtol=1e-6)  # full-length clips are unchanged
    assert np.abs(padded[1] - probs[1]).max() > 1e-3  # the silent chunks moved the short clip's prediction
    # the same numbers from lengths given explicitly
    np.testing.assert_allclose(predict_clips(model, clips, crop_frames=crop, eval=eval, chunk_hop_frames=hop,
                                             batch_size=4, valid_lengths=valid), probs, rtol=1e-6)


def _crops(store: ClipStore, *, n: int, crop: int) -> np.ndarray:
    """Every training crop of 20 epochs of the clips of ``store``: ``(n_crops, 2, crop)``."""
    from common.data import train_dataset

    y = np.eye(2, dtype=np.float32)[np.arange(n) % 2]
    dataset = train_dataset(store, np.arange(n), y, crop_frames=crop, batch_size=n, seed=3, n_epochs=20)
    return np.concatenate([x.numpy() for x, _ in dataset])


def test_training_crops_of_short_clips_stay_inside_the_audio():
    n, n_frames, crop = 6, 50, 12
    valid = np.array([50, 30, 20, 13, 12, 8])
    clips = np.zeros((n, 2, n_frames), dtype=np.float16)
    clips[:, 0] = np.arange(n_frames)  # band 0: the frame number, -1 in the padding
    clips[:, 1] = np.arange(n)[:, None]  # band 1: the row
    for row, length in enumerate(valid):
        clips[row, 0, length:] = -1
    crops = _crops(ClipStore.from_array(clips, valid_lengths=valid), n=n, crop=crop)
    rows, starts = crops[:, 1, 0].astype(int), crops[:, 0, 0].astype(int)
    ends = starts + crop
    assert (starts >= 0).all() and (ends <= np.maximum(valid[rows], crop)).all()
    assert (starts[valid[rows] < crop] == 0).all()  # shorter than a crop: from its start
    assert ends[rows == 0].max() == n_frames and ends[rows == 1].max() == 30  # every place in the audio is drawn
    assert (crops[valid[rows] >= crop, 0] >= 0).all()  # crops of clips at least a crop long are all audio
    # without the lengths, crops of the same clips land in the padding
    unmasked = _crops(ClipStore.from_array(clips), n=n, crop=crop)
    assert (unmasked[:, 0] < 0).any(axis=1).mean() > 0.3


def test_padding_patches_are_not_musicnn_patches():
    from common.models.musicnn import PATCH_FRAMES, musicnn_logmel, patches

    audio = make_signal("chirp", sr=16000, seconds=6.5)
    padded = np.pad(audio, (0, 16000 * 3))
    ours = patches(musicnn_logmel(padded), audio_frames=1 + len(audio) // 256)
    np.testing.assert_array_equal(ours, patches(musicnn_logmel(audio)))  # the unpadded audio's 2 patches
    assert len(ours) == 2 and len(patches(musicnn_logmel(padded))) == 3
    # audio shorter than a patch keeps the first one
    assert len(patches(musicnn_logmel(padded), audio_frames=PATCH_FRAMES // 2)) == 1


def test_padding_does_not_move_the_musicnn_embedding(musicnn_weights_dir, tmp_path):
    from common.embeddings import embed_clip

    settings = FeatureSettings(kind="musicnn", sample_rate=16000, n_fft=512, hop_length=256, n_mels=96,
                               log_scale="log1p", clip_seconds=9.0, min_seconds=3.0)
    audio = make_signal("chirp", sr=16000, seconds=6.5)
    write_audio(tmp_path / "audio" / "short.wav", audio, sr=16000)
    cache_dir = tmp_path / "cache"
    extract(folder_items(tmp_path / "audio"), settings=settings, cache_dir=cache_dir, n_jobs=1, progress=False,
            weights_dir=musicnn_weights_dir)
    cache = FeatureCache.open(cache_dir)
    stored = cache.get(["short"])[0].astype(np.float32)
    unpadded = embed_clip(audio, settings=settings, weights_dir=musicnn_weights_dir)
    padded = embed_clip(np.pad(audio, (0, settings.clip_samples - len(audio))), settings=settings,
                        weights_dir=musicnn_weights_dir)
    np.testing.assert_allclose(stored, unpadded, atol=2e-2, rtol=1e-2)  # float16 in the cache
    assert np.abs(padded - unpadded).max() > 10 * np.abs(stored - unpadded).max()  # the silent patch moved it
    assert cache.audio_samples(["short"])[0] == len(audio)


# --- data.short_clips: masking is a config's choice; the default reads clips as before --------


def test_short_clips_is_pad_by_default_and_written_only_when_set():
    from common.config import config_from_dict
    from common.errors import ConfigError

    default = config_from_dict({}, name="x", check_model=False)
    assert default.data.short_clips == "pad" and "short_clips" not in default.to_dict()["data"]
    masked = config_from_dict({"data": {"short_clips": "mask"}}, name="x", check_model=False)
    assert masked.to_dict()["data"]["short_clips"] == "mask"
    with pytest.raises(ConfigError, match="data.short_clips"):
        config_from_dict({"data": {"short_clips": "loop"}}, name="x", check_model=False)


def test_a_padded_view_reads_short_clips_as_they_are_stored(short_and_long_cache):
    cache, _ = short_and_long_cache
    store = ClipStore(cache, ["a_short", "b_long"])
    padded = store.padded()
    assert store.valid_lengths is not None and padded.valid_lengths is None
    np.testing.assert_array_equal(padded.gather(np.array([1, 0])), store.gather(np.array([1, 0])))
    assert padded.subset(np.array([0])).valid_lengths is None


@pytest.mark.parametrize("short_clips", ["pad", "mask"])
def test_an_experiment_masks_short_clips_only_when_its_config_asks(tiny_training_data, tmp_path, short_clips):
    import yaml
    from conftest import write_tiny_config

    from common.config import load_config
    from experiments.experiment import open_experiment_data

    path = write_tiny_config(tmp_path, "tiny")
    values = yaml.safe_load(path.read_text())
    values["data"]["short_clips"] = short_clips
    path.write_text(yaml.safe_dump(values))
    exp_data = open_experiment_data(load_config(path), data=tiny_training_data["data"], subset="small",
                                    folds_path=tiny_training_data["folds"], cache=tiny_training_data["cache"])
    lengths = exp_data.store.valid_lengths
    if short_clips == "pad":
        assert lengths is None  # the demo fixture's 6-s clips read padded to 8 s, as before issue 23
    else:
        assert lengths is not None and (lengths < exp_data.store.clip_shape[-1]).mean() > 0.5


def test_feature_statistics_of_masked_short_clips_leave_out_their_padding():
    from common.data import feature_stats

    rng = np.random.default_rng(1)
    clips = rng.normal(-20, 5, size=(5, 3, 30))
    valid = np.array([30, 12, 30, 7, 20])
    for row, length in enumerate(valid):
        clips[row, :, length:] = -100.0  # the padding's log-mel
    audio = np.concatenate([clips[row, :, :length] for row, length in enumerate(valid)], axis=1)  # (3, frames)
    masked = ClipStore.from_array(clips, valid_lengths=valid)
    for chunk_bytes in (1, 10**9):  # chunked or whole: the same numbers
        mean, std = feature_stats(masked, np.arange(5), chunk_bytes=chunk_bytes)
        np.testing.assert_allclose(mean, audio.mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(std, audio.std(axis=1), rtol=1e-5)
    padded_mean, _ = feature_stats(masked.padded(), np.arange(5))
    np.testing.assert_allclose(padded_mean, clips.mean(axis=(0, 2)), rtol=1e-5)  # pad: every frame counts
