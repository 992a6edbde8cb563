"""A real ``dask worker`` process in another working directory, given relative paths by its client.

On a cluster, workers run on other hosts in their own directories and see the data on a
shared mount at the same absolute path. LocalCluster workers share the client's working
directory, so they cannot show a relative path slipping through; these tests start
``dask scheduler`` and ``dask worker`` as subprocesses whose working directory is elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FEATURES, write_tiny_config

from common.features import cache_dir_for
from common.features import main as features_main
from common.settings import FeatureSettings
from experiments import runner

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Kill a process group started with ``start_new_session`` (the worker's nanny and its child)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def remote_worker(tmp_path_factory):
    """``dask scheduler`` + one ``dask worker`` (1 process, 1 thread), both running in their own folder.

    Yields ``(address, worker_home)``. The processes import this checkout through PYTHONPATH.
    """
    home = tmp_path_factory.mktemp("worker_home")
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    dask = [sys.executable, "-m", "dask"]
    log = open(home / "dask.log", "wb")
    processes = []
    try:
        processes.append(subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        processes.append(subprocess.Popen(
            [*dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
             "--memory-limit", "0", "--local-directory", str(home / "dask-scratch")],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            assert client.run(os.getcwd) == {next(iter(client.scheduler_info()["workers"])): str(home)}
        yield address, home
    finally:
        for process in processes:
            _stop(process)
        log.close()


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_features_with_relative_paths_on_a_worker_elsewhere_equal_a_local_run(
        remote_worker, tiny_training_data, tmp_path, monkeypatch):
    address, home = remote_worker
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    config = write_tiny_config(tmp_path, "tiny")
    monkeypatch.chdir(client_dir)  # as `make features DATA=<relative> CACHE=cache` from the project root
    data = os.path.relpath(tiny_training_data["data"], client_dir)
    assert not Path(data).is_absolute()
    assert features_main(["--config", str(config), "--data", data, "--subset", "small", "--cache", "cache",
                          "--scheduler", address, "--no-progress"]) == 0

    settings = FeatureSettings.from_dict(TINY_FEATURES)
    remote = cache_dir_for(client_dir / "cache", "fma_small", settings)
    local = cache_dir_for(tiny_training_data["cache"], "fma_small", settings)  # extract() in this process
    assert _files(remote) == _files(local)
    assert not (home / "cache").exists(), "the worker wrote into its own working directory"


@pytest.mark.slow
def test_one_fold_with_relative_paths_on_a_worker_elsewhere_equals_a_local_run(
        remote_worker, tiny_training_data, tmp_path, monkeypatch, capsys):
    address, home = remote_worker
    config = write_tiny_config(tmp_path, "tiny", epochs=2)
    local_runs = tmp_path / "local"
    assert runner.main(["--config", str(config), "--data", str(tiny_training_data["data"]), "--subset", "small",
                        "--folds", str(tiny_training_data["folds"]), "--cache", str(tiny_training_data["cache"]),
                        "--runs", str(local_runs), "--fold", "0"]) == 0

    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)

    def relative(path: Path) -> str:
        return os.path.relpath(path, client_dir)

    assert runner.main(["--config", relative(config), "--data", relative(tiny_training_data["data"]),
                        "--subset", "small", "--folds", relative(tiny_training_data["folds"]),
                        "--cache", relative(tiny_training_data["cache"]), "--runs", "runs", "--fold", "0",
                        "--scheduler", address]) == 0
    assert "tiny: fold 0 done on" in capsys.readouterr().out  # trained by the worker, not by the client
    assert not (home / "runs").exists(), "the worker wrote into its own working directory"

    local, remote = local_runs / "tiny" / "fold_0", client_dir / "runs" / "tiny" / "fold_0"
    assert _run_files(remote) == _run_files(local)
    for name in ("config.yaml", "classes.json"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    # The numbers too, bit for bit: a fold depends only on config, data and seed, not on the
    # process or thread that trains it (common.training.keras_seeds). Only wall times differ.
    assert (remote / "oof.csv").read_bytes() == (local / "oof.csv").read_bytes()
    local_history, remote_history = (pd.read_csv(d / "history.csv") for d in (local, remote))
    assert remote_history["epoch"].tolist() == [1, 2]
    pd.testing.assert_frame_equal(remote_history.drop(columns="seconds"), local_history.drop(columns="seconds"),
                                  check_exact=True)

    import keras

    import common.models  # noqa: F401  (registers the custom layers)

    weights = [keras.models.load_model(d / "model.keras").get_weights() for d in (local, remote)]
    assert len(weights[0]) == len(weights[1]) and weights[0]
    for local_weight, remote_weight in zip(*weights):
        np.testing.assert_array_equal(remote_weight, local_weight)


def _run_files(fold_dir: Path) -> list[str]:
    """Files of a fold run; TensorBoard event names hold host and time, so only their folder."""
    return sorted(str(p.relative_to(fold_dir).parent) + "/<events>" if "tensorboard" in p.parts
                  else str(p.relative_to(fold_dir)) for p in fold_dir.rglob("*") if p.is_file())
