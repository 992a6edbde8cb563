"""Experiment configs: defaults, validation errors naming the key, the shipped YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.config import ExperimentConfig, config_from_dict, load_config
from common.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))


def test_defaults_resolve_and_round_trip(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {name: shortchunk, params: {channels: [8]}}\ndata: {crop_seconds: 3.0}\n")
    cfg = load_config(path)
    assert cfg.name == "tiny" and cfg.task.name == "single" and cfg.training.precision == "auto"
    assert cfg.data.crop_frames(cfg.features) == cfg.features.frames_for(3.0)
    assert cfg.data.chunk_hop_frames(cfg.features) == cfg.data.crop_frames(cfg.features)
    resolved = yaml.safe_load(cfg.to_yaml())
    assert set(resolved) == {"features", "task", "model", "data", "training"}
    assert resolved["data"]["specaugment"] == {"time_masks": 0, "time_width": 0, "freq_masks": 0, "freq_width": 0}
    assert config_from_dict(resolved, name="tiny") == cfg


@pytest.mark.parametrize("values, key", [
    ({"trainig": {}}, "trainig"),
    ({"data": {"batch": 3}}, "data.batch"),
    ({"data": {"specaugment": {"time_mask": 1}}}, "data.specaugment.time_mask"),
    ({"training": {"optimizer": {"name": "rmsprop"}}}, "training.optimizer.name"),
    ({"training": {"precision": "float16"}}, "training.precision"),
    ({"training": {"epochs": "ten"}}, "training.epochs"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"data": {"in_memory": "yes"}}, "data.in_memory"),
    ({"task": {"name": "tagging"}}, "task.name"),
    ({"model": {"name": "resnet"}}, "model.name"),
    ({"features": {"n_mel": 3}}, "n_mel"),
    ({"features": {"kind": "waveform"}, "data": {"specaugment": {"time_masks": 1, "time_width": 4}}},
     "data.specaugment"),
    ({"task": {"multi_root": "hard"}}, "task.multi_root"),
    ({"task": {"multi_root": True}}, "task.multi_root"),
    ({"task": {"name": "multi", "multi_root": "soft"}}, "task.multi_root"),
    ({"task": {"multi_root": "soft", "multi_root_weight": 0}}, "task.multi_root_weight"),
    ({"task": {"multi_root": "soft", "multi_root_weight": "half"}}, "task.multi_root_weight"),
    ({"task": {"multi_root_weight": 0.5}}, "task.multi_root_weight"),
])
def test_bad_configs_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(values, name="bad")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and cfg.name == path.stem


def test_shipped_configs_cover_the_issue():
    assert {p.stem for p in CONFIGS} >= {"crnn", "crnn_multi", "shortchunk", "samplecnn", "demo"}
    crnn = load_config(CONFIGS[[p.stem for p in CONFIGS].index("crnn")])
    assert crnn.features.clip_shape == (96, 1366) and crnn.data.crop_frames(crnn.features) == 1366
    samplecnn = load_config(CONFIGS[[p.stem for p in CONFIGS].index("samplecnn")])
    assert samplecnn.data.crop_frames(samplecnn.features) == 3 ** 10


def test_multi_root_keys_are_written_only_when_set():
    plain = config_from_dict({"task": {"name": "single"}}, name="plain", check_model=False)
    assert plain.task.multi_root == "none" and plain.task.multi_root_weight == 1.0
    # a config without the keys resolves to the config.yaml it had before they existed (runs resume)
    assert plain.to_dict()["task"] == {"name": "single", "min_tracks": 20}
    soft = config_from_dict({"task": {"multi_root": "soft", "multi_root_weight": 1}}, name="soft", check_model=False)
    assert soft.task.multi_root_weight == 1.0 and isinstance(soft.task.multi_root_weight, float)
    assert soft.to_dict()["task"] == {"name": "single", "min_tracks": 20, "multi_root": "soft"}
    half = config_from_dict({"task": {"multi_root": "soft", "multi_root_weight": 0.5}}, name="half",
                            check_model=False)
    assert half.to_dict()["task"]["multi_root_weight"] == 0.5
    for cfg in (plain, soft, half):
        assert config_from_dict(yaml.safe_load(cfg.to_yaml()), name=cfg.name, check_model=False) == cfg
