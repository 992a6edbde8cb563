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
