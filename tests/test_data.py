"""tf.data pipeline, inference helpers and a learning test on synthetic features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.config import SpecAugmentConfig, config_from_dict
from common.data import class_sample_weights, feature_stats, train_dataset
from common.errors import ConfigError
from common.inference import chunk_starts, predict_clips
from common.store import ClipStore
from common.tasks import Task

N_MELS, N_FRAMES, N_CLASSES = 12, 40, 4


def synthetic(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel-like clips whose class lights up one band of three mel bins, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    x = rng.normal(-40.0, 6.0, (n, N_MELS, N_FRAMES))
    for i, c in enumerate(labels):
        x[i, 3 * c:3 * c + 3, :] += 12.0
    return x.astype(np.float16), np.eye(N_CLASSES, dtype=np.float32)[labels]


def test_train_dataset_batches_crops_and_weights():
    x, y = synthetic(50, seed=0)
    store = ClipStore.from_array(x)
    positions = np.arange(10, 50)
    ds = train_dataset(store, positions, y[positions], crop_frames=16, batch_size=8, seed=3,
                       balance="class_weights")
    batches = list(ds)
    assert len(batches) == 5
    xb, yb, wb = batches[0]
    assert xb.shape == (8, N_MELS, 16) and xb.dtype.name == "float32"
    assert yb.shape == (8, N_CLASSES) and wb.shape == (8,)
    # every crop is a contiguous window of one of the selected clips, with its label
    for crop, label in zip(xb.numpy(), yb.numpy()):
        matches = [(p, s) for p in positions for s in range(N_FRAMES - 15)
                   if np.array_equal(x[p, :, s:s + 16].astype(np.float32), crop)]
        assert matches and np.array_equal(y[matches[0][0]], label)
    # one epoch covers every training row once; the next epoch is reshuffled; a rerun repeats it;
    # a dataset starting at epoch 1 (a resumed run) gives exactly the batches of epoch 1
    epoch = np.concatenate([b[1].numpy() for b in batches])
    assert np.array_equal(np.sort(epoch.argmax(1)), np.sort(y[positions].argmax(1)))
    two = [b[0].numpy() for b in train_dataset(store, positions, y[positions], crop_frames=16, batch_size=8,
                                              seed=3, balance="class_weights", n_epochs=2)]
    assert len(two) == 10 and all(np.array_equal(a, b[0].numpy()) for a, b in zip(two[:5], batches))
    assert not np.array_equal(two[5], two[0])
    resumed = [b[0].numpy() for b in train_dataset(store, positions, y[positions], crop_frames=16, batch_size=8,
                                                  seed=3, balance="class_weights", first_epoch=1)]
    assert len(resumed) == 5 and all(np.array_equal(a, b) for a, b in zip(resumed, two[5:]))
    assert all(np.array_equal(a[0].numpy(), b[0].numpy()) for a, b in zip(ds, batches))


def test_mixup_specaugment_and_balanced_sampling():
    x, y = synthetic(64, seed=1)
    y = np.eye(N_CLASSES, dtype=np.float32)[np.r_[np.zeros(56, int), np.arange(8) % 3 + 1]]
    store = ClipStore.from_array(x)
    fill = np.full(N_MELS, 123.0, np.float32)
    ds = train_dataset(store, np.arange(64), y, crop_frames=N_FRAMES, batch_size=16, seed=0, mixup_alpha=0.4,
                       specaugment=SpecAugmentConfig(time_masks=2, time_width=5, freq_masks=1, freq_width=3),
                       fill=fill, balance="sampling")
    x_batches, y_batches = zip(*[(b[0].numpy(), b[1].numpy()) for _ in range(5) for b in ds])
    ys = np.concatenate(y_batches)
    np.testing.assert_allclose(ys.sum(axis=1), 1.0, atol=1e-5)
    assert ((ys > 0.01) & (ys < 0.99)).any()  # mixed targets
    assert np.isclose(np.concatenate(x_batches), 123.0).any()  # masked cells get the fill value
    # inverse-frequency sampling: the rare classes (1/8 of the data) make up about half the targets
    assert 0.3 < ys[:, 1:].sum() / len(ys) < 0.8


def test_class_weights_and_feature_stats():
    y = np.eye(3, dtype=np.float32)[[0, 0, 0, 1, 2, 2]]
    w = class_sample_weights(y)
    assert np.isclose(w.mean(), 1.0) and w[3] > w[4] > w[0]
    x = np.random.default_rng(0).normal(5.0, 2.0, (20, 4, 30)).astype(np.float16)
    x[:, 2] += 10
    mean, std = feature_stats(ClipStore.from_array(x), np.arange(10), chunk_bytes=3 * 4 * 30 * 8)
    np.testing.assert_allclose(mean, x[:10].astype(np.float64).mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, x[:10].astype(np.float64).std(axis=(0, 2)), rtol=1e-4)
    wave_mean, _ = feature_stats(ClipStore.from_array(x[:, 0, :]), np.arange(20))
    assert wave_mean.shape == (1,)


def test_sample_weights_are_yielded_per_row_and_leave_the_batches_alone():
    x, y = synthetic(40, seed=2)
    store = ClipStore.from_array(x)
    positions = np.arange(40)
    per_class = np.array([0.5, 1.0, 2.0, 4.0], np.float32)  # a row's weight tells its class
    sample_weights = per_class[y.argmax(1)]
    plain = list(train_dataset(store, positions, y, crop_frames=16, batch_size=8, seed=5))
    weighted = list(train_dataset(store, positions, y, crop_frames=16, batch_size=8, seed=5,
                                  sample_weights=sample_weights))
    assert all(len(b) == 2 for b in plain) and all(len(b) == 3 for b in weighted)
    for (xp, yp), (xw, yw, ww) in zip(plain, weighted):  # same rows, crops and order; the weights added
        assert np.array_equal(xp.numpy(), xw.numpy()) and np.array_equal(yp.numpy(), yw.numpy())
        np.testing.assert_array_equal(ww.numpy(), per_class[yw.numpy().argmax(1)])
    balanced = list(train_dataset(store, positions, y, crop_frames=16, batch_size=8, seed=5,
                                  balance="class_weights", sample_weights=sample_weights))
    class_w = class_sample_weights(y)[[int(np.flatnonzero(y.argmax(1) == c)[0]) for c in range(N_CLASSES)]]
    for _, yb, wb in balanced:
        labels = yb.numpy().argmax(1)
        np.testing.assert_allclose(wb.numpy(), class_w[labels] * per_class[labels], rtol=1e-6)
    with pytest.raises(ValueError, match="sample_weights"):
        train_dataset(store, positions, y, crop_frames=16, batch_size=8, seed=5, sample_weights=sample_weights[:-1])


def _mean_model(input_shape: tuple[int, ...]):
    """Stand-in model: the probability of class 1 is the mean of the crop."""
    import keras

    def probs(t):
        m = keras.ops.mean(keras.ops.reshape(t, (keras.ops.shape(t)[0], -1)), axis=1)
        return keras.ops.stack([1 - m, m], axis=1)

    return keras.Sequential([keras.Input(input_shape), keras.layers.Lambda(probs, output_shape=(2,))])


def test_chunks_and_predict_clips():
    assert chunk_starts(10, crop_frames=4, hop_frames=4).tolist() == [0, 4, 6]
    assert chunk_starts(3, crop_frames=4, hop_frames=2).tolist() == [0]
    x = np.zeros((3, 2, 10), np.float32)
    x[:, :, 8:] = 1.0  # only the last two frames are on
    model = _mean_model((2, 4))
    center = predict_clips(model, x, crop_frames=4, eval="center")
    np.testing.assert_allclose(center[:, 1], 0.0)
    chunks = predict_clips(model, x, crop_frames=4, eval="chunks", chunk_hop_frames=4, batch_size=2)
    np.testing.assert_allclose(chunks[:, 1], (0 + 0 + 0.5) / 3)
    wave = predict_clips(_mean_model((8,)), np.ones((2, 5), np.float32), crop_frames=8, eval="center")
    np.testing.assert_allclose(wave[:, 1], 1.0)


def _random_model(seed: int, *, crop: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((N_MELS, crop)), keras.layers.Conv1D(6, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(N_CLASSES, activation="softmax")])


def _per_clip_reference(models, clips, *, crop, hop):
    """Each clip's chunks as their own batch through ``predict_on_batch``; mean over chunks, then models."""
    rows = []
    for clip in clips:
        starts = chunk_starts(clip.shape[-1], crop_frames=crop, hop_frames=hop)
        chunks = np.stack([clip[:, s:s + crop] for s in starts]).astype(np.float32)
        rows.append(np.mean([np.asarray(m.predict_on_batch(chunks)).mean(axis=0) for m in models], axis=0))
    return np.array(rows)


def test_batched_predictions_equal_per_clip_for_different_chunk_counts_with_one_trace(caplog):
    from common.inference import forward_function

    crop, hop, batch = 8, 4, 16
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 1, (N_MELS, n)).astype(np.float32) for n in (8, 13, 40, 21, 9, 30, 40, 17)]
    models = [_random_model(seed, crop=crop) for seed in range(5)]  # a 5-fold ensemble
    expected = _per_clip_reference(models, clips, crop=crop, hop=hop)
    caplog.clear()  # predict_on_batch per clip retraces (and warns) itself: that is what is replaced
    counts = [len(chunk_starts(c.shape[-1], crop_frames=crop, hop_frames=hop)) for c in clips]
    assert len(set(counts)) >= 4 and sum(counts) > 2 * batch  # chunks of one clip span batches
    got = predict_clips(models, clips, crop_frames=crop, eval="chunks", chunk_hop_frames=hop, batch_size=batch)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # an equal-length array and a second call reuse the same traced function
    same = np.stack([c[:, :40] for c in clips if c.shape[-1] == 40] * 5)
    got_same = predict_clips(models, same, crop_frames=crop, eval="chunks", chunk_hop_frames=hop, batch_size=batch)
    assert forward_function(tuple(models), batch).traced.experimental_get_tracing_count() == 1
    assert "retracing" not in caplog.text
    np.testing.assert_allclose(got_same, _per_clip_reference(models, same, crop=crop, hop=hop), rtol=1e-5, atol=1e-6)


def test_every_model_sees_a_batch_before_the_next_is_read(monkeypatch):
    import common.inference as inference

    log = []

    class Features:
        shape = (12, N_MELS, 20)

        def __len__(self):
            return 12

        def __getitem__(self, index):
            log.append(("read", index.start))
            return np.zeros((len(range(*index.indices(12))), N_MELS, 20), np.float32)

    class Model:
        output_shape = (None, 2)

        def __init__(self, name):
            self.name = name

    def fake_forward(models, batch):
        def forward(x):
            assert x.shape == (batch, N_MELS, 8)
            log.extend(("model", model.name) for model in models)
            return np.full((len(models), batch, 2), 0.5)
        return forward

    monkeypatch.setattr(inference, "forward_function", fake_forward)
    probs = predict_clips([Model("a"), Model("b")], Features(), crop_frames=8, eval="chunks",
                          chunk_hop_frames=4, batch_size=8)
    np.testing.assert_allclose(probs, 0.5)
    calls = [name for kind, name in log if kind == "model"]
    assert calls == ["a", "b"] * (len(calls) // 2) and len(calls) >= 8  # 12 clips x 4 chunks / 8
    reads = [i for i, (kind, _) in enumerate(log) if kind == "read"]
    assert len(reads) > 1 and reads[-1] > log.index(("model", "b"))  # read as it goes, not all up front


def test_small_model_learns_on_held_out_clips(tmp_path):
    """Through the real fold trainer: loss falls, held-out accuracy >= 2x chance."""
    from common.training import train_fold

    x, y = synthetic(240, seed=5)
    store = ClipStore.from_array(x)
    config = config_from_dict({
        "features": {"n_mels": N_MELS, "clip_seconds": (N_FRAMES - 1) * 256 / 12000},
        "model": {"name": "shortchunk", "params": {"channels": [16], "dense_units": 16, "dropout": 0.1}},
        "data": {"crop_seconds": 24 * 256 / 12000, "eval": "chunks", "batch_size": 16},
        "training": {"epochs": 6, "optimizer": {"learning_rate": 0.003}, "early_stopping_patience": 0},
    }, name="learning")
    assert config.features.n_frames == N_FRAMES and config.data.crop_frames(config.features) == 25
    task = Task(name="single", class_names=tuple("abcd"), genre_ids=(1, 2, 3, 4))
    train, val = np.arange(160), np.arange(160, 240)
    summary = train_fold(config, task=task, fold=0, store=store, train_positions=train, y_train=y[train],
                         val_positions=val, y_val=y[val], run_dir=tmp_path / "fold_0")
    history = pd.read_csv(tmp_path / "fold_0" / "history.csv")
    assert list(history.columns[:3]) == ["epoch", "loss", "val_loss"]
    assert history["epoch"].tolist() == list(range(1, 7))
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert summary["metrics"]["accuracy"] >= 2 * (1 / N_CLASSES)
    assert json.loads((tmp_path / "fold_0" / "summary.json").read_text())["best_epoch"] >= 1
    oof = pd.read_csv(tmp_path / "fold_0" / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "target", "a", "b", "c", "d"] and len(oof) == 80


class _GatherSpy(ClipStore):
    """An in-memory store that records the number of rows of every gather."""

    def gather(self, positions):
        self.sizes.append(len(positions))
        return super().gather(positions)


def test_waveform_stats_are_computed_in_bounded_chunks_and_equal_the_whole_computation():
    rng = np.random.default_rng(4)
    x = (rng.normal(0.01, 0.2, (37, 3000)) + rng.normal(0, 0.05, (37, 1))).astype(np.float16)
    store = _GatherSpy.from_array(x)
    store.sizes = []
    chunk_bytes = 5 * 3000 * 8
    positions = np.arange(2, 37)
    mean, std = feature_stats(store, positions, layout="waveform", chunk_bytes=chunk_bytes)
    whole = x[2:].astype(np.float64)
    np.testing.assert_allclose(mean, [whole.mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [whole.std()], rtol=1e-6)
    assert max(store.sizes) * 3000 * 8 <= chunk_bytes and sum(store.sizes) == len(positions)
    assert len(store.sizes) == 7
    # a chunk smaller than one clip still reads one clip at a time
    store.sizes = []
    again = feature_stats(store, positions, layout="waveform", chunk_bytes=100)
    assert set(store.sizes) == {1} and np.allclose(again, (mean, std), rtol=1e-6)


def test_subsets_are_views_of_the_store():
    x, _ = synthetic(20, seed=5)
    store = ClipStore.from_array(x)
    part = store.subset(np.array([3, 7, 11, 19]))
    assert part._array is store._array  # read through the store, not copied
    inner = part.subset(np.array([2, 0]))
    assert inner._array is store._array and list(inner.ids) == ["11", "3"]
    np.testing.assert_array_equal(inner[:], x[[11, 3]])
    np.testing.assert_array_equal(part[1:3], x[[7, 11]])
    assert part.shape == (4, N_MELS, N_FRAMES) and part.nbytes == 4 * N_MELS * N_FRAMES * 2


class _FakeCache:
    """A feature cache of ``n`` clips of ``(16, 1000)`` that records how many rows each read asked for."""

    def __init__(self, n):
        from common.settings import FeatureSettings

        self.settings = FeatureSettings.from_dict({"sample_rate": 8000, "n_fft": 256, "hop_length": 256,
                                                  "n_mels": 16, "clip_seconds": 8.0})
        self.n, self.reads = n, []

    def get(self, ids):
        self.reads.append(len(ids))
        return np.zeros((len(ids), *self.settings.clip_shape), np.float16)

    def audio_samples(self, ids):
        return np.full(len(ids), self.settings.clip_samples)


def test_an_environment_limit_below_the_cache_size_makes_auto_memory_map(monkeypatch):
    cache = _FakeCache(400)
    ids = [str(i) for i in range(400)]
    size = 400 * int(np.prod(cache.settings.clip_shape)) * 2
    monkeypatch.setenv("FMA_MEMORY_LIMIT", str(size))  # the cache would take all of it: more than the share
    store = ClipStore(cache, ids, in_memory="auto")
    assert not store.in_memory and cache.reads == [] and store.nbytes == size
    assert store.gather(np.array([1, 2])).shape == (2, *cache.settings.clip_shape)
    assert cache.reads == [2]  # the batch only
    monkeypatch.setenv("FMA_MEMORY_LIMIT", str(8 * size))
    store = ClipStore(cache, ids, in_memory="auto")
    assert store.in_memory and cache.reads == [2, 400]
    assert not ClipStore(cache, ids, in_memory="auto", memory_limit=size).in_memory  # a Dask worker's limit
    assert cache.reads == [2, 400]
    monkeypatch.setenv("FMA_MEMORY_LIMIT", "a lot")
    with pytest.raises(ConfigError, match="FMA_MEMORY_LIMIT"):
        ClipStore(cache, ids, in_memory="auto")
