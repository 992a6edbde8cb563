"""Transfer learning as ordinary experiments: a head on cached musicnn embeddings, and fine-tuning.

Both shipped configs (experiments/configs/musicnn_head.yaml, musicnn_finetune.yaml) train
one epoch on the demo data through experiments.runner, with sizes shrunk here: musicnn
costs about 2.5 GFLOP per 3-s patch, so clips are short and fine-tuning crops are 1 s
(the network is convolutional with global pooling: any length loads the same weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from common.errors import ConfigError, ToolkitError
from experiments import runner

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
SUBSET = "small"
RUN_FILES = ("config.yaml", "git_commit.txt", "history.csv", "model.keras", "oof.csv", "summary.json")


def shrunk_config(directory, name, *, features=None, data=None, params=None):
    """The shipped config ``name``, trained for 1 epoch with the given overrides."""
    values = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    values["features"].update(features or {})
    values["data"].update(data or {})
    values["model"]["params"].update(params or {})
    values["training"].update(epochs=1, early_stopping_patience=0)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def env(demo_data_dir, musicnn_weights_dir, tmp_path_factory):
    """A 2-fold file of the demo data and an empty cache root."""
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset

    root = tmp_path_factory.mktemp("transfer")
    dataset = FmaDataset.open(demo_data_dir, SUBSET)
    folds = root / "folds.csv"
    write_folds(folds, make_folds(dataset.tracks, k=2, seed=0), subset=SUBSET, k=2, seed=0)
    return {"data": demo_data_dir, "dataset": dataset, "cache": root / "cache", "folds": folds,
            "weights": musicnn_weights_dir}


def extract_for(env, config_path):
    from common.config import load_config
    from common.features import cache_dir_for, extract

    settings = load_config(config_path).features
    cache_dir = cache_dir_for(env["cache"], f"fma_{SUBSET}", settings)
    extract(env["dataset"].items(), settings=settings, cache_dir=cache_dir, n_jobs=1, progress=False,
            weights_dir=env["weights"])
    return cache_dir


def run(env, config_path, runs, *extra):
    return runner.main(["--config", str(config_path), "--data", str(env["data"]), "--subset", SUBSET,
                        "--folds", str(env["folds"]), "--cache", str(env["cache"]), "--runs", str(runs), *extra])


def check_fold_files(fold_dir):
    for name in RUN_FILES:
        assert (fold_dir / name).is_file(), fold_dir / name
    summary = json.loads((fold_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and np.isfinite(summary["metrics"]["log_loss"])
    return summary


def check_run_files(exp_dir, *, n_folds=2):
    for k in range(n_folds):
        check_fold_files(exp_dir / f"fold_{k}")
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert len(summary["folds"]) == n_folds and summary["test"]["n"] > 0
    assert np.isfinite([summary["cv"]["log_loss"]["mean"], summary["test"]["log_loss"]]).all()
    return summary


@pytest.fixture(scope="module")
def head_run(env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("head")
    config = shrunk_config(directory, "musicnn_head", features={"clip_seconds": 3.0, "min_seconds": 3.0},
                           data={"batch_size": 16})
    cache_dir = extract_for(env, config)
    assert run(env, config, directory / "runs") == 0
    return {"cache_dir": cache_dir, "exp_dir": directory / "runs" / "musicnn_head"}


def test_embedding_cache_holds_the_penultimate_features_of_musicnn(env, head_run):
    from common.audio import load_clip
    from common.features import FeatureCache
    from common.models.musicnn import build_pretrained_musicnn, musicnn_logmel, patches

    cache = FeatureCache.open(head_run["cache_dir"])
    assert head_run["cache_dir"].name.startswith("fma_small-musicnn-")
    assert cache.settings.clip_shape == (200,)
    x = cache.get().astype(np.float32)
    assert x.shape == (len(cache.ids), 200) and len(cache.ids) >= 50
    assert np.isfinite(x).all() and x.std(axis=0).mean() > 0.1  # clips differ
    # The tagger's output layer on a cached embedding gives the tagger's tags for that clip
    # (a 3-s clip is one patch; the embedding is the input of the 50-tag layer).
    tagger = build_pretrained_musicnn("MSD_musicnn", weights_dir=env["weights"])
    paths = dict(env["dataset"].items())
    for item in cache.ids[:2]:
        patch = patches(musicnn_logmel(load_clip(paths[item], settings=cache.settings)))
        assert patch.shape == (1, 96, 187)
        expected = tagger.predict_on_batch(patch)[0]
        kernel, bias = tagger.get_layer("logits").get_weights()
        from_cache = 1.0 / (1.0 + np.exp(-(cache.get([item])[0].astype(np.float32) @ kernel + bias)))
        np.testing.assert_allclose(from_cache, expected, atol=2e-2)


def test_head_on_embeddings_trains_through_the_runner(head_run):
    exp_dir = head_run["exp_dir"]
    summary = check_run_files(exp_dir)
    assert summary["model"] == "mlp"
    model = keras.models.load_model(exp_dir / "fold_0" / "model.keras", compile=False)
    assert model.input_shape == (None, 200)
    assert model.get_layer("standardize") is not None  # per-component training statistics
    resolved = yaml.safe_load((exp_dir / "fold_0" / "config.yaml").read_text())
    assert resolved["features"]["kind"] == "musicnn" and resolved["data"]["crop_seconds"] is None


def test_tagging_a_song_with_the_head_embeds_every_segment(env, head_run, audio_writer, signal):
    from crowdai.ensemble import experiment_song, load_ensemble

    # one epoch on a few clips: the head scores worse than the uniform prior (marked diverged)
    ensemble = load_ensemble(head_run["exp_dir"].parent, "musicnn_head", allow_diverged=True)
    song = audio_writer("song.wav", signal("chirp", sr=22050, seconds=7.0), sr=22050)
    bounds, views, notes = experiment_song(song, ensemble=ensemble, window=2.0, hop=2.0, weights_dir=env["weights"])
    probs = views["genres"].probs
    assert bounds.shape == (4, 2) and probs.shape == (4, 16) and notes["eval"] == "embedding"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.ptp(probs, axis=0).max() > 0  # segments are analysed separately, not one vector cut up


def test_fine_tuning_starts_from_the_checkpoint_and_trains_the_whole_network(env, tmp_path):
    from common.pretrained import load_musicnn_checkpoint

    config = shrunk_config(tmp_path, "musicnn_finetune", features={"clip_seconds": 2.0},
                           data={"crop_seconds": 1.0, "batch_size": 64},
                           params={"weights_dir": str(env["weights"])})
    extract_for(env, config)
    # one fold of the two (musicnn's graph costs seconds to trace per model; the fold-ensemble
    # summary is the same code as for the head, tested above)
    assert run(env, config, tmp_path / "runs", "--fold", "0") == 0
    fold_dir = tmp_path / "runs" / "musicnn_finetune" / "fold_0"
    assert check_fold_files(fold_dir)["model"] == "musicnn"
    model = keras.models.load_model(fold_dir / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert "standardize" not in names and names[:3] == ["logmel", "time_first", "add_channel"]
    assert model.input_shape == (None, 96, 63)  # 1-s crops
    checkpoint = load_musicnn_checkpoint("MSD_musicnn", weights_dir=env["weights"])
    for layer, variable in (("midend_1_conv", "conv2d_5/kernel"), ("timbral_74_conv", "conv2d/kernel")):
        tuned = model.get_layer(layer).get_weights()[0]
        published = checkpoint[variable][:, :, 0, :] if layer.startswith("midend") else checkpoint[variable]
        change = np.abs(tuned - published).max()
        assert 0 < change < 1e-2  # trained, a few Adam steps of lr 1e-4 away from the checkpoint


def test_missing_weights_are_a_clear_error(env, tmp_path):
    from common.features import cache_dir_for, extract
    from common.settings import FeatureSettings

    settings = FeatureSettings(kind="musicnn", sample_rate=16000, log_scale="log1p", clip_seconds=3.0)
    cache_dir = cache_dir_for(tmp_path / "cache", "fma_small", settings)
    with pytest.raises(ToolkitError, match="make weights"):
        extract(env["dataset"].items()[:2], settings=settings, cache_dir=cache_dir, n_jobs=1,
                progress=False, weights_dir=tmp_path / "nowhere")
    assert not cache_dir.exists()  # checked before anything is written


def test_fine_tuning_without_weights_fails_naming_the_fetch_command(env, tmp_path, capsys):
    config = shrunk_config(tmp_path, "musicnn_finetune", features={"clip_seconds": 2.0}, data={"crop_seconds": 1.0},
                           params={"weights_dir": str(tmp_path / "nowhere")})
    extract_for(env, config)  # the same log-mel cache as the fine-tuning test when run after it
    assert run(env, config, tmp_path / "runs") == 1
    assert "make weights" in capsys.readouterr().err


@pytest.mark.parametrize(("features", "data", "model", "match"), [
    ({"kind": "musicnn", "log_scale": "log1p"}, {}, "mlp", "features.sample_rate"),
    ({"kind": "musicnn", "sample_rate": 16000, "log_scale": "log1p", "n_mels": 48}, {}, "mlp", "features.n_mels"),
    ({"kind": "musicnn", "sample_rate": 16000, "log_scale": "log1p", "clip_seconds": 2.0}, {}, "mlp",
     "features.clip_seconds"),
    ({"kind": "musicnn", "sample_rate": 16000, "log_scale": "log1p"}, {"crop_seconds": 3.0}, "mlp",
     "data.crop_seconds"),
    ({"kind": "musicnn", "sample_rate": 16000, "log_scale": "log1p"}, {}, "shortchunk", "reads logmel"),
    ({}, {}, "mlp", "reads vector"),
])
def test_embedding_configs_are_checked(features, data, model, match):
    from common.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"features": features, "data": data, "model": {"name": model}}, name="bad")
