"""musicnn: checkpoint loading, parity with the original code, the tagging CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, ToolkitError
from common.pretrained import (
    MUSICNN_CHECKPOINTS,
    MUSICNN_WHEEL,
    extract_musicnn_weights,
    load_musicnn_checkpoint,
)
from common.tagging import View, format_scores, pool_segments, segment_bounds

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
GOLDEN = Path(__file__).parent / "data" / "musicnn_golden"
needs_audio = pytest.mark.skipif(
    not AUDIO.is_dir(), reason=f"real recordings not found at {AUDIO} (../shared/audio; absent in a fresh clone)"
)


@pytest.fixture(scope="module")
def wheel(musicnn_wheel) -> Path:
    return musicnn_wheel


@pytest.fixture(scope="module")
def weights_dir(musicnn_weights_dir) -> Path:
    return musicnn_weights_dir


@pytest.fixture(scope="module")
def models(weights_dir):
    from common.models.musicnn import build_pretrained_musicnn

    return {name: build_pretrained_musicnn(name, weights_dir=weights_dir) for name in MUSICNN_CHECKPOINTS}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((GOLDEN / "manifest.json").read_text())


# --- weights -----------------------------------------------------------------------------------

def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(ToolkitError, match="make weights"):
        load_musicnn_checkpoint("MSD_musicnn", weights_dir=tmp_path)


def test_wheel_with_wrong_checksum_is_rejected(tmp_path):
    fake = tmp_path / MUSICNN_WHEEL
    fake.write_bytes(b"not the wheel")
    with pytest.raises(ToolkitError, match="sha256"):
        extract_musicnn_weights(fake, tmp_path / "weights")
    assert not (tmp_path / "weights").exists()


def test_extraction_writes_only_checkpoints_and_never_overwrites(wheel, weights_dir, tmp_path):
    files = sorted(str(p.relative_to(weights_dir)) for p in weights_dir.rglob("*") if p.is_file())
    assert files == ["LICENSE.md"] + [f"{name}/model{suffix}" for name in MUSICNN_CHECKPOINTS
                                      for suffix in (".data-00000-of-00001", ".index")]
    target = tmp_path / "weights"
    (target / "MSD_musicnn").mkdir(parents=True)
    with pytest.raises(ToolkitError, match="already holds"):
        extract_musicnn_weights(wheel, target)
    assert list(target.rglob("*")) == [target / "MSD_musicnn"]


@pytest.mark.parametrize("checkpoint", MUSICNN_CHECKPOINTS)
def test_every_checkpoint_variable_is_used_exactly_once(weights_dir, checkpoint):
    from common.models import build_model
    from common.models.musicnn import CHECKPOINT_LAYERS, assign_checkpoint

    variables = load_musicnn_checkpoint(checkpoint, weights_dir=weights_dir)
    model = build_model("musicnn", input_shape=(96, 187), n_outputs=50, activation="sigmoid")
    used = assign_checkpoint({layer.name: layer for layer in model.layers}, checkpoint, weights_dir=weights_dir)
    assert used == set(variables)
    scopes = [name.rsplit("/", 1)[0] for name in variables]
    assert sorted(set(scopes)) == sorted(CHECKPOINT_LAYERS.values())
    assert model.count_params() == sum(value.size for value in variables.values()) == 792_079
    assert model.get_layer("frontend").output.shape[-1] == 561
    assert model.get_layer("midend").output.shape[-1] == 753


def test_pretrained_body_gets_a_fresh_head_for_fine_tuning(weights_dir):
    from common.models import build_model

    model = build_model("musicnn", input_shape=(96, 187), n_outputs=16, activation="softmax",
                        pretrained="MSD_musicnn", weights_dir=str(weights_dir))
    kernel = load_musicnn_checkpoint("MSD_musicnn", weights_dir=weights_dir)["conv2d_5/kernel"]
    np.testing.assert_array_equal(model.get_layer("midend_1_conv").get_weights()[0], kernel[:, :, 0, :])
    assert model.output_shape == (None, 16)
    with pytest.raises(ConfigError, match="96 mel bands"):
        build_model("musicnn", input_shape=(48, 187), n_outputs=16, activation="softmax",
                    pretrained="MSD_musicnn", weights_dir=str(weights_dir))


# --- parity with the original implementation ---------------------------------------------------

#: Patches compared per recording (first and last of the golden span): musicnn costs about
#: 2.5 GFLOP per 3-s patch, so all 104 would take most of a minute on 2 cores.
#: tools/make_musicnn_golden.py's docstring says how to check all of them.
PARITY_PATCHES = [0, -1]


@pytest.fixture(scope="module")
def golden_patches(manifest) -> dict[str, np.ndarray]:
    """Our log-mel patches (:data:`PARITY_PATCHES`) of the golden span of each recording."""
    from common.audio import load_audio
    from common.models.musicnn import musicnn_logmel, patches

    if not AUDIO.is_dir():
        pytest.skip(f"real recordings not found at {AUDIO} (../shared/audio; absent in a fresh clone)")
    samples = int(manifest["seconds"] * 16000)
    return {name: patches(musicnn_logmel(load_audio(AUDIO / name, sample_rate=16000)[:samples]))
            for name in manifest["files"]}


@pytest.mark.parametrize("checkpoint", MUSICNN_CHECKPOINTS)
def test_taggrams_match_the_original_musicnn(models, golden_patches, checkpoint):
    names = list(golden_patches)
    goldens = [np.load(GOLDEN / f"{Path(name).stem}.{checkpoint}.npy") for name in names]
    for name, golden in zip(names, goldens):
        assert golden_patches[name].shape[0] == golden.shape[0], name
    batch = np.concatenate([golden_patches[name][PARITY_PATCHES] for name in names])
    from common.models.musicnn import musicnn_forward_function

    for ours in (models[checkpoint].predict(batch, verbose=0), musicnn_forward_function(models[checkpoint])(batch)):
        for name, taggram, golden in zip(names, ours.reshape(len(names), len(PARITY_PATCHES), -1), goldens):
            np.testing.assert_allclose(taggram, golden[PARITY_PATCHES], atol=1e-3, err_msg=f"{name} {checkpoint}")


def test_pruned_inference_of_both_taggers_equals_the_keras_models(models):
    """Dead front-end filters left out: same tags, on any input in range, for both models in one graph."""
    from common.models.musicnn import MAX_LOGMEL, musicnn_forward_function, prune_frontend

    rng = np.random.default_rng(0)
    batch = np.concatenate([rng.uniform(0.0, 4.0, (3, 96, 187)), np.zeros((1, 96, 187)),
                            np.full((1, 96, 187), MAX_LOGMEL), rng.uniform(0.0, 4.0, (1, 96, 250))[..., :187]])
    batch = batch.astype(np.float32)
    expected = np.concatenate([models[name].predict(batch, verbose=0) for name in MUSICNN_CHECKPOINTS], axis=1)
    fused = musicnn_forward_function(*(models[name] for name in MUSICNN_CHECKPOINTS))
    np.testing.assert_allclose(fused(batch), expected, atol=1e-5)
    np.testing.assert_allclose(fused(batch[:1]), expected[:1], atol=1e-5)  # any batch size, one trace
    timbral = [b for b in prune_frontend(models["MSD_musicnn"]) if b.name.startswith("timbral")]
    assert sum(len(b.live) for b in timbral) < 0.15 * sum(len(b.dead_values) for b in timbral)
    live_mtt = sum(len(b.live) for b in prune_frontend(models["MTT_musicnn"]))
    assert 0 < live_mtt < 561


# --- zero-shot genres (mapping, speech, golden genres: tests/test_zero_shot.py) -------------------

@needs_audio
def test_tag_cli_writes_table_json_png_and_overwrites_its_outputs(weights_dir, tmp_path, capsys):
    from crowdai.tag import main

    argv = [str(AUDIO / "198-209-0000.ogg"), "--exp", "musicnn", "--out", str(tmp_path),
            "--weights", str(weights_dir)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "0:00–0:10  Spoken" in printed and "whole song  Spoken" in printed
    document = json.loads((tmp_path / "198-209-0000_tags.json").read_text())
    assert [s["start"] for s in document["segments"]] == [0.0, 10.0]
    assert max(document["summary"]["genres"], key=document["summary"]["genres"].get) == "Spoken"
    assert set(document["summary"]) == {"genres", "msd_tags", "mtt_tags", "speech", "speech_evidence"}
    assert "speech_evidence" not in printed and "low_energy_ratio" not in printed
    assert sorted(document["notes"]["genres_without_tags"]) == ["Old-Time / Historic", "Spoken"]
    png = tmp_path / "198-209-0000_taggram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.stat().st_mtime_ns
    assert main(argv) == 0  # derived files: replaced, and said so
    assert f"overwrote {tmp_path / '198-209-0000_tags.json'} and {png}" in capsys.readouterr().out
    assert png.stat().st_mtime_ns > before


# --- generic tagging helpers -------------------------------------------------------------------

def test_segments_pooling_and_formatting():
    np.testing.assert_allclose(segment_bounds(25.0, window=10.0, hop=10.0), [[0, 10], [10, 20], [20, 25]])
    np.testing.assert_allclose(segment_bounds(20.0, window=10.0, hop=5.0)[:, 0], [0, 5, 10, 15])
    times = np.array([1.5, 4.5, 7.5, 10.5])
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    bounds, pooled = pool_segments(times, probs, np.array([[0.0, 6.0], [6.0, 9.0], [12.0, 20.0]]))
    np.testing.assert_allclose(bounds, [[0, 6], [6, 9]])
    np.testing.assert_allclose(pooled, [[0.5, 0.5], [0.5, 0.5]])
    assert format_scores(("Jazz", "Rock", "Pop"), np.array([0.22, 0.61, 0.07])) == "Rock 0.61 · Jazz 0.22 · Pop 0.07"
    with pytest.raises(ToolkitError):
        View(("a", "b"), np.zeros((3, 3)))
