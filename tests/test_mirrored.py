"""Several replicas without GPUs: ``strategy: mirrored`` over the CPU split into two logical devices.

This is what ``strategy: auto`` does on a machine with several GPUs (``MirroredStrategy``),
with logical CPUs standing in for the GPUs. TensorFlow splits the CPU only before it starts,
so every case runs in one subprocess (tests/mirrored_cases.py, one TensorFlow start-up) that
writes its measurements as JSON; the tests here assert on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("mirrored_cases.py")
REPLICAS = 2
CPU = "/job:localhost/replica:0/task:0/device:CPU:{}"

#: How far the mirrored fold's out-of-fold log loss may lie from the single-replica fold's: same seed,
#: same batches, 4 epochs of the tiny demo model without dropout (log losses about 2.5). Left to differ:
#: float32 summation order (the gradients are all-reduced, batch-norm moments are summed per replica)
#: and the epoch's last, partial batch, whose 2 + 1 clips weigh each replica's mean loss equally.
#: Measured: 0.0009 at this seed, at most 0.0032 over seeds 0-4, against a spread of the single-replica
#: fold's log loss over those seeds of 0.045 (std). With the demo's dropout of 0.1 the two runs drift
#: apart much further, as far as seeds do (0.014-0.13 over seeds 0-4, std 0.14 over seeds): a replica
#: draws the dropout masks of its share of the batch from the same seed state as every other replica.
OOF_LOG_LOSS_TOLERANCE = 0.01

#: "The same fold result" of a killed-and-resumed mirrored fold and an uninterrupted one: as for one
#: replica (tests/test_training.py), op determinism holds on the logical CPUs and this only absorbs
#: float32 summation order in a saved-and-reloaded model.
SAME_RESULT_ATOL = 1e-5


def _load_waveform_features() -> dict:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from mirrored_cases import WAVEFORM_FEATURES
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return WAVEFORM_FEATURES


@pytest.fixture(scope="module")
def results(tiny_training_data, tmp_path_factory) -> dict:
    """tests/mirrored_cases.py run once on the tiny demo features (and 2-s waveforms for samplecnn)."""
    from common.features import cache_dir_for, extract
    from common.metadata import FmaDataset
    from common.settings import FeatureSettings

    root = tmp_path_factory.mktemp("mirrored")
    waveform = FeatureSettings.from_dict(_load_waveform_features())
    extract(FmaDataset.open(tiny_training_data["data"], "small").items(), settings=waveform,
            cache_dir=cache_dir_for(root / "cache", "fma_small", waveform), n_jobs=2, progress=False)
    spec = {**{key: str(value) for key, value in tiny_training_data.items()}, "wave_cache": str(root / "cache"),
            "work": str(root / "work")}
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPT.parent)]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(root / "spec.json"), str(root / "results.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


def case(results: dict, name: str) -> dict:
    """One case's result; the case's own error and traceback when it raised."""
    result = results[name]
    assert "error" not in result, result.get("traceback", result.get("error"))
    return result


def test_mirrored_mirrors_over_every_logical_cpu(results):
    runtime = case(results, "runtime")
    assert runtime["logical_cpus"] == REPLICAS
    assert runtime["strategy"] == "MirroredStrategy" and runtime["replicas"] == REPLICAS
    assert runtime["devices"] == [CPU.format(i) for i in range(REPLICAS)]
    assert runtime["device"] == f"{REPLICAS} x CPU (mirrored)"
    assert runtime["same_strategy_again"]  # one strategy per process: the folds' all-reduces do not collide
    assert runtime["default_device"] == "cpu" and runtime["default_replicas"] == 1  # auto without GPUs


def test_a_mirrored_fold_trains_with_several_steps_per_epoch(results):
    """The issue's failure: under ``MirroredStrategy``, Keras' several-steps-per-call loop died in the first
    epoch (``INVALID_ARGUMENT``, a placeholder in ``multi_step_on_iterator``); a mirrored fold runs one
    step per call, a single-replica fold still runs several."""
    same_seed = case(results, "same_seed")
    mirrored, single = same_seed["mirrored"], same_seed["default"]
    assert mirrored["replicas"] == REPLICAS and mirrored["steps"] > 1 and mirrored["steps_per_execution"] == 1
    assert mirrored["summary"]["epochs"] == 4
    assert single["replicas"] == 1 and single["steps_per_execution"] == single["steps"] > 1


@pytest.mark.parametrize("name", ["shortchunk", "crnn", "samplecnn", "musicnn", "mlp"])
def test_every_registry_model_trains_a_mirrored_fold_like_a_single_replica_one(results, name):
    """The fold's loss falls and it writes the run files of a single-replica fold; its summary names the
    replicas, and every batch norm of its model normalises over the global batch."""
    fold = case(results, "same_seed")["mirrored"] if name == "shortchunk" else case(results, "models")[name]
    assert "error" not in fold, fold.get("traceback")
    assert fold["replicas"] == REPLICAS and fold["steps_per_execution"] == 1
    assert fold["loss"][-1] < fold["loss"][0] - 0.1, fold["loss"]
    assert fold["files"] == results["same_seed"]["default"]["files"]
    assert {"config.yaml", "history.csv", "model.keras", "oof.csv", "summary.json"} <= set(fold["files"])
    summary = fold["summary"]
    assert summary["model"] == name and summary["device"] == f"{REPLICAS} x CPU (mirrored)"
    assert summary["epochs"] == 4 and np.isfinite(summary["metrics"]["log_loss"])
    assert fold["synchronized"] == fold["batch_norms"] and (fold["batch_norms"] > 0) == (name != "mlp")


def test_the_global_batch_is_split_across_the_replicas(results):
    """``data.batch_size`` is the global batch: 8 clips are 4 per replica (18 clips: 8, 8 and 2)."""
    batches = case(results, "global_batch")
    assert batches["global"] == [8, 8, 2]
    assert batches["per_replica"] == [[4, 4], [4, 4], [1, 1]]


def test_the_first_step_equals_the_single_replica_step(results):
    """Same weights, same global batch, one step: the loss and the updated weights of one replica. Keras
    averages the loss over the global batch (each replica's mean over its share, divided by the replicas,
    gradients summed), the learning rate is the config's, and the batch norms are synchronised (with each
    replica's own statistics the step differs by 0.02)."""
    step = case(results, "first_step")
    assert step["replicas"] == [1, REPLICAS] and step["batch_norms_synchronized"] == [0, 5]
    assert step["initial_weight_difference"] == 0  # same seed, same initial weights under the strategy
    assert step["learning_rate"][0] == step["learning_rate"][1] == pytest.approx(0.01)
    assert step["loss"]["mirrored"] == pytest.approx(step["loss"]["default"], rel=1e-5)
    assert step["moved"] > 0.1  # the step changed the weights ...
    assert step["max_weight_difference"] < 1e-5  # ... as one replica's step changes them


def test_the_mirrored_fold_scores_as_the_single_replica_fold(results):
    same_seed = case(results, "same_seed")
    single, mirrored = same_seed["default"]["log_loss"], same_seed["mirrored"]["log_loss"]
    assert abs(single - mirrored) <= OOF_LOG_LOSS_TOLERANCE, (single, mirrored)
    assert same_seed["default"]["summary"]["device"] == "cpu"


def test_a_killed_and_resumed_mirrored_fold_ends_as_an_uninterrupted_one(results):
    """The crnn fold (GRUs, dropout) copied after its first epoch and resumed there: the history, predictions and
    best weights of the uninterrupted mirrored fold (optimizer, dropout seeds, batches)."""
    resume = case(results, "resume")
    assert resume["killed_at_epoch"] == 1
    assert resume["resumed"]["replicas"] == REPLICAS and resume["resumed"]["summary"]["epochs"] == 4
    assert resume["difference"] <= SAME_RESULT_ATOL


def test_prediction_runs_on_one_device_with_the_plain_model_s_probabilities(results):
    """A model trained under the strategy predicts outside it: its traced forward function reads every variable
    on the default device (the first CPU here, the first GPU on a GPU machine), and its probabilities are those
    of a plain model holding the same weights."""
    prediction = case(results, "prediction")
    assert not results["same_seed"]["mirrored"]["epoch_end_in_strategy"]  # where a fold validates
    assert prediction["replicas"] == REPLICAS
    assert prediction["variable_devices"] == [CPU.format(0)]
    assert prediction["max_difference"] < 1e-6
    np.testing.assert_allclose(prediction["sums"], 1.0, atol=1e-5)


def test_a_global_batch_the_replicas_cannot_share_is_a_config_error(results):
    error = case(results, "indivisible_batch")
    assert error["message"] is not None and error["message"].startswith("data.batch_size: 9 ")
    assert f"{REPLICAS} replicas" in error["message"]
    assert not error["run_dir_created"]  # checked before anything is written
