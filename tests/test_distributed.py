"""Folds on a real dask.distributed LocalCluster: same run files as a local run, a killed worker, no re-dispatch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest
from conftest import write_tiny_config

from common.errors import ToolkitError
from experiments import runner
from experiments.distributed import fold_resources, train_folds_on_dask

distributed = pytest.importorskip("distributed")

SUBSET = "small"
EPOCHS = 2


@pytest.fixture(scope="module")
def env(tiny_training_data, tmp_path_factory):
    """Tiny features and a 2-fold file of the demo data (shared), and a tiny experiment config."""
    config = write_tiny_config(tmp_path_factory.mktemp("distributed"), "tiny", epochs=EPOCHS)
    return {**tiny_training_data, "config": config}


@pytest.fixture(scope="module")
def cluster():
    """Scheduler + 2 worker processes on loopback, each declaring one GPU (as `--resources GPU=1`)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, resources={"GPU": 1}) as local_cluster:
        yield local_cluster


def args(env, runs, *extra):
    return ["--config", str(env["config"]), "--data", str(env["data"]), "--subset", SUBSET,
            "--folds", str(env["folds"]), "--cache", str(env["cache"]), "--runs", str(runs), *extra]


def run_files(exp_dir):
    """Relative paths of the run files (TensorBoard event names hold host and time: only their folder)."""
    return sorted({str(p.relative_to(exp_dir).parent) + "/<events>" if "tensorboard" in p.parts
                   else str(p.relative_to(exp_dir)) for p in exp_dir.rglob("*") if p.is_file()})


def slow_down_epochs() -> None:  # runs inside each worker: a window to kill it after a checkpoint
    import time as worker_time

    from common import training

    end = training.FoldCheckpoint.on_epoch_end

    def slow(self, epoch, logs=None):
        end(self, epoch, logs)
        worker_time.sleep(1.0)

    training.FoldCheckpoint.on_epoch_end = slow


def kill_worker_of_fold_0(client, fold_dir, record: dict) -> None:
    """Kill the worker process training fold 0 once its first epoch is checkpointed."""
    state = fold_dir / "checkpoint" / "state.json"
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = [address for address, keys in client.processing().items()
            if any(str(key).startswith("fold-tiny-0-") for key in keys)]
    if busy and state.exists():
        os.kill(pids[busy[0]], signal.SIGKILL)
        record.update(epoch=json.loads(state.read_text())["epoch"], history=pd.read_csv(fold_dir / "history.csv"),
                      finished=(fold_dir / "summary.json").exists())


def test_folds_on_a_cluster_with_a_killed_worker_leave_the_files_of_a_local_run(env, cluster, tmp_path, capsys,
                                                                               monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "dask"
    assert runner.main(args(env, local)) == 0
    # the client reads no feature row: the folds and the summary (test-split scores) run on the workers
    from common.features import FeatureCache

    def client_reads_features(self, *args, **kwargs):
        raise AssertionError("the client of --scheduler training read features")

    monkeypatch.setattr(FeatureCache, "get", client_reads_features)
    record: dict = {}
    with distributed.Client(cluster) as client:
        client.run(slow_down_epochs)
        killer = threading.Thread(target=kill_worker_of_fold_0, args=(client, remote / "tiny" / "fold_0", record))
        killer.start()
        assert runner.main(args(env, remote, "--scheduler", cluster.scheduler_address)) == 0
        killer.join()
    out = capsys.readouterr().out
    assert "tiny: fold 0 done on" in out and "tiny: fold 1 done on" in out and "CV log loss" in out

    assert record, "the worker training fold 0 was not killed"
    assert not record["finished"] and 1 <= record["epoch"] < EPOCHS
    history = pd.read_csv(remote / "tiny" / "fold_0" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    # resumed from the checkpoint: the epochs done before the kill are kept as they were, not retrained
    before = record["history"][record["history"]["epoch"] <= record["epoch"]]
    pd.testing.assert_frame_equal(history.iloc[:len(before)], before)

    assert run_files(remote / "tiny") == run_files(local / "tiny")
    for exp_dir in (local / "tiny", remote / "tiny"):
        assert "fold_0/summary.json" in run_files(exp_dir) and "summary.json" in run_files(exp_dir)
    local_summary = json.loads((local / "tiny" / "summary.json").read_text())
    remote_summary = json.loads((remote / "tiny" / "summary.json").read_text())
    assert set(remote_summary) == set(local_summary) and set(remote_summary["cv"]) == set(local_summary["cv"])
    assert [f["epochs"] for f in remote_summary["folds"]] == [EPOCHS, EPOCHS]
    local_oof = pd.read_csv(local / "tiny" / "oof.csv", dtype={"id": str})
    remote_oof = pd.read_csv(remote / "tiny" / "oof.csv", dtype={"id": str})
    assert list(remote_oof.columns) == list(local_oof.columns)
    assert sorted(remote_oof["id"]) == sorted(local_oof["id"])

    # only unfinished folds are dispatched: fold 1 of a copy whose fold 1 is removed, then none
    from common.config import load_config

    shutil.copytree(remote, tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "tiny" / "fold_1")
    (tmp_path / "again" / "tiny" / "summary.json").unlink()
    stamp = (tmp_path / "again" / "tiny" / "fold_0" / "model.keras").stat().st_mtime_ns
    lines: list[str] = []
    dispatch = {"scheduler": cluster.scheduler_address, "data": env["data"], "subset": SUBSET,
                "folds_path": env["folds"], "cache": env["cache"], "runs": tmp_path / "again", "folds": [0, 1],
                "log": lines.append}
    done = train_folds_on_dask(load_config(env["config"]), **dispatch)
    assert list(done) == [1] and done[1]["fold"] == 1 and done[1]["epochs"] == EPOCHS
    assert len(lines) == 1 and "fold 1 done" in lines[0]
    assert not (tmp_path / "again" / "tiny" / "summary.json").exists()  # written by summarise_on_dask afterwards
    assert train_folds_on_dask(load_config(env["config"]), **dispatch) == {}
    assert (tmp_path / "again" / "tiny" / "fold_0" / "model.keras").stat().st_mtime_ns == stamp


def test_a_fold_error_on_a_worker_reaches_the_client(env, cluster, tmp_path):
    from common.config import load_config

    config = load_config(env["config"])
    fold_dir = tmp_path / "runs" / "tiny" / "fold_1"
    fold_dir.mkdir(parents=True)
    (fold_dir / "config.yaml").write_text("another: config\n")  # a different run: never overwritten
    with pytest.raises(ToolkitError, match="different config"):
        train_folds_on_dask(config, scheduler=cluster.scheduler_address, data=env["data"], subset=SUBSET,
                            folds_path=env["folds"], cache=env["cache"], runs=tmp_path / "runs", folds=[1], retries=0)
    assert (fold_dir / "config.yaml").read_text() == "another: config\n"


def test_unreachable_scheduler_is_a_clear_error(env, tmp_path):
    from common.config import load_config

    with pytest.raises(ToolkitError, match="cannot reach the Dask scheduler"):
        train_folds_on_dask(load_config(env["config"]), scheduler="tcp://127.0.0.1:9", data=env["data"],
                            subset=SUBSET, folds_path=env["folds"], cache=env["cache"], runs=tmp_path, folds=[0],
                            timeout=1)


def test_fold_tasks_budget_memory_against_their_workers_memory_limit(cluster):
    from experiments.distributed import _worker_memory_limit

    assert _worker_memory_limit() is None  # not in a worker
    with distributed.Client(cluster) as client:
        declared = {address: info["memory_limit"] for address, info in client.scheduler_info()["workers"].items()}
        limits = {address: client.submit(_worker_memory_limit, workers=[address], pure=False).result()
                  for address in declared}  # as in a fold task
    assert limits == declared and all(limit > 0 for limit in limits.values())


def test_folds_ask_for_a_gpu_only_when_workers_declare_gpus():
    assert fold_resources({"tcp://a:1": {"resources": {"GPU": 1}}, "tcp://b:1": {"resources": {}}}) == {"GPU": 1}
    assert fold_resources({"tcp://a:1": {"resources": {}}, "tcp://b:1": {}}) is None
    assert fold_resources({}) is None


def test_a_copied_finished_run_is_left_alone(env, tmp_path):
    """No scheduler contacted when every requested fold already has its summary."""
    from common.config import load_config

    config = load_config(env["config"])
    for k in (0, 1):
        (tmp_path / "tiny" / f"fold_{k}").mkdir(parents=True)
        (tmp_path / "tiny" / f"fold_{k}" / "summary.json").write_text("{}")
    assert train_folds_on_dask(config, scheduler="tcp://127.0.0.1:9", data=env["data"], subset=SUBSET,
                               folds_path=env["folds"], cache=env["cache"], runs=tmp_path, folds=[0, 1],
                               timeout=1) == {}
