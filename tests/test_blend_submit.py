"""End to end: two experiments with different features (tiny log-mel CNN, musicnn_head on musicnn
embeddings) -> make blend -> submit --blend --adapt-prior on the demo test folder -> validate.

Both train for 1-2 epochs on 2 folds of the ``demo_data_dir`` fixture: the point is the
plumbing (common tracks, two feature caches, the blend file applied to the test set, the
floor, the prior), not the scores.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import write_tiny_config
from test_transfer import shrunk_config

from crowdai import blend, submit, validate
from crowdai.submission import read_submission
from experiments import runner

pytestmark = pytest.mark.slow

SUBSET = "small"


@pytest.fixture(scope="module")
def trained(tiny_training_data, musicnn_weights_dir, tmp_path_factory):
    """``tiny`` (log-mel) and ``musicnn_head`` (embeddings) trained on the same 2 folds."""
    from common.config import load_config
    from common.features import cache_dir_for, extract
    from common.metadata import FmaDataset

    root = tmp_path_factory.mktemp("blend_submit")
    data, cache, folds = tiny_training_data["data"], tiny_training_data["cache"], tiny_training_data["folds"]
    head = shrunk_config(root, "musicnn_head", features={"clip_seconds": 3.0, "min_seconds": 3.0},
                         data={"batch_size": 16})
    extract(FmaDataset.open(data, SUBSET).items(), settings=load_config(head).features,
            cache_dir=cache_dir_for(cache, f"fma_{SUBSET}", load_config(head).features), n_jobs=1, progress=False,
            weights_dir=musicnn_weights_dir)
    tiny = write_tiny_config(root, "tiny", epochs=2, min_tracks=2, batch_size=8)
    runs = root / "runs"
    for config in (tiny, head):
        assert runner.main(["--config", str(config), "--data", str(data), "--subset", SUBSET, "--folds", str(folds),
                            "--cache", str(cache), "--runs", str(runs)]) == 0
    return {"runs": runs, "cache": cache, "test_dir": data / "crowdai_fma_test", "weights": musicnn_weights_dir}


def test_blend_of_different_features_submits_and_validates(trained, tmp_path, capsys):
    runs = trained["runs"]
    assert blend.main(["--exp", "tiny,musicnn_head", "--runs", str(runs), "--stacking"]) == 0
    blend_file = runs / "blends" / "tiny+musicnn_head" / "blend.json"
    document = json.loads(blend_file.read_text())
    assert document["folds_agree"] and 30 < document["common_tracks"] <= min(e["rows"] for e in document["experiments"])
    capsys.readouterr()
    output = tmp_path / "blended.csv"
    assert submit.main(["--blend", "tiny+musicnn_head", "--runs", str(runs), "--test-dir", str(trained["test_dir"]),
                        "--cache", str(trained["cache"]), "--output", str(output), "--weights",
                        str(trained["weights"]), "--adapt-prior", "--jobs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "12 rows valid" in printed and "floor holds" in printed and "estimated on the test set" in printed
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["blend"]["sha256"] == hashlib.sha256(blend_file.read_bytes()).hexdigest()
    assert sidecar["blend"]["path"] == str(blend_file) and sidecar["mean"] == f"blend:{document['chosen']}"
    used = ["tiny", "musicnn_head"] if ":" not in document["chosen"] else [document["chosen"].split(":")[1]]
    assert [e["name"] for e in sidecar["experiments"]] == used
    assert len(sidecar["feature_caches"]) == len(used)  # one per feature setting
    assert sidecar["floor"] == pytest.approx(document["floor"])
    prior = sidecar["prior"]
    assert sum(prior["test"].values()) == pytest.approx(1.0, abs=1e-4) and prior["train"] == pytest.approx(
        document["train_prior"], abs=1e-6)
    values = read_submission(output).to_numpy()
    assert values.min() > 0 and values.max() < 1
    assert validate.main([str(output), "--test-dir", str(trained["test_dir"])]) == 0
    assert "floor holds" in capsys.readouterr().out
    # the same blend without prior adaptation: a different, also valid, submission
    plain = tmp_path / "plain.csv"
    assert submit.main(["--blend", str(blend_file), "--runs", str(runs), "--test-dir", str(trained["test_dir"]),
                        "--cache", str(trained["cache"]), "--output", str(plain), "--weights",
                        str(trained["weights"]), "--no-progress"]) == 0
    assert json.loads(plain.with_suffix(".json").read_text())["prior"] is None
    assert not np.allclose(read_submission(plain).to_numpy(), values)


def test_a_blend_stage_of_one_experiment_predicts_only_that_one(trained, tmp_path, capsys):
    """A blend whose chosen stage calibrates one experiment computes neither the features nor the
    predictions of the others: one feature cache, one ensemble in the sidecar."""
    runs = trained["runs"]
    if not (runs / "blends" / "tiny+musicnn_head" / "blend.json").exists():
        assert blend.main(["--exp", "tiny,musicnn_head", "--runs", str(runs)]) == 0
    document = json.loads((runs / "blends" / "tiny+musicnn_head" / "blend.json").read_text())
    document["chosen"] = "calibrated:musicnn_head"
    document["checksum"] = blend.blend_checksum(document)  # edited on purpose: sealed again
    one = tmp_path / "one" / "blend.json"
    one.parent.mkdir()
    one.write_text(json.dumps(document))
    output = tmp_path / "one.csv"
    assert submit.main(["--blend", str(one), "--runs", str(runs), "--test-dir", str(trained["test_dir"]),
                        "--cache", str(trained["cache"]), "--output", str(output), "--weights",
                        str(trained["weights"]), "--no-progress"]) == 0
    assert "musicnn_head(2 folds)" in capsys.readouterr().out
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert [e["name"] for e in sidecar["experiments"]] == ["musicnn_head"]
    assert len(sidecar["feature_caches"]) == 1 and "musicnn" in sidecar["feature_caches"][0]
    assert validate.main([str(output), "--test-dir", str(trained["test_dir"])]) == 0
