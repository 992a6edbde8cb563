"""Issue 25, one writer per fold: two runs of one fold, started apart, never train it at once.

Real processes (``python -m experiments.runner``) on a tiny config: the first holds each
epoch's end until the test lets it go, so that the second surely arrives while the first
trains, whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_config

from common.locks import read_holder
from experiments import runner

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny_locks"

#: ``python -c HOLD_EPOCHS RELEASE <runner args>``: the runner, each epoch's end held until the file RELEASE exists.
HOLD_EPOCHS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from common import training
    from experiments import runner

    release = Path(sys.argv[1])
    end = training.FoldCheckpoint.on_epoch_end

    def held(self, epoch, logs=None):
        end(self, epoch, logs)
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    training.FoldCheckpoint.on_epoch_end = held
    raise SystemExit(runner.main(sys.argv[2:]))
""")

#: ``python -c HOLD_FOLDER FOLDER``: holds FOLDER's writer lock until killed.
HOLD_FOLDER = textwrap.dedent("""
    import sys, time
    from common.locks import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(300)
""")


@pytest.fixture
def experiment(tiny_training_data, tmp_path):
    """A 2-epoch tiny config, its runs folder and the runner's arguments for fold 0."""
    config = write_tiny_config(tmp_path, NAME, epochs=2)
    runs = tmp_path / "runs"
    argv = ["--config", str(config), "--data", str(tiny_training_data["data"]), "--subset", "small",
            "--folds", str(tiny_training_data["folds"]), "--cache", str(tiny_training_data["cache"]),
            "--runs", str(runs)]
    return {"argv": argv, "runs": runs, "fold": runs / NAME / "fold_0", "tmp": tmp_path}


def start(*args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_until(condition, *, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def first_line_with(stream, text: str) -> str:
    """The first line of ``stream`` holding ``text``, or ``""`` when the stream ends without one."""
    return next((line for line in stream if text in line), "")


def holds_lock(folder: Path, process: subprocess.Popen) -> bool:
    return (read_holder(folder) or {}).get("pid") == process.pid


def test_a_second_run_of_a_fold_waits_for_the_first_then_skips_it(experiment):
    """The issue's reproduction: two runners of fold 0, the second started while the first trains. Both
    used to train it, and ``history.csv`` held both runs interleaved (epochs 1, 1, 2, 2)."""
    release, fold = experiment["tmp"] / "release", experiment["fold"]
    argv = [*experiment["argv"], "--fold", "0"]
    with open(experiment["tmp"] / "first.err", "w") as first_err:
        first = start("-c", HOLD_EPOCHS, str(release), *argv, stderr=first_err)
    second = None
    try:
        wait_until(lambda: holds_lock(fold, first) or first.poll() is not None)
        second = start("-m", "experiments.runner", *argv)
        waiting = first_line_with(second.stderr, "in use by")
        release.touch()
        first_out, _ = first.communicate(timeout=300)
        second_out, second_err = second.communicate(timeout=300)
    finally:
        release.touch()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert first.returncode == 0 and second.returncode == 0, second_err
    assert waiting.startswith(f"fma-train: {fold}: in use by pid {first.pid} on {socket.gethostname()} (")
    assert "waiting for it to finish" in waiting
    assert "fold 0 done" in first_out and "fold 0 done" in second_out
    assert pd.read_csv(fold / "history.csv")["epoch"].tolist() == [1, 2]  # one run's epochs, once


def test_a_killed_run_never_blocks_the_next(experiment):
    """A run killed mid-fold leaves its holder record, not its lock: the next run resumes at once."""
    fold = experiment["fold"]
    argv = [*experiment["argv"], "--fold", "0"]
    first = start("-c", HOLD_EPOCHS, str(experiment["tmp"] / "never"), *argv, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (fold / "checkpoint" / "state.json").exists() or first.poll() is not None)
        assert holds_lock(fold, first)  # held in its first epoch's end, checkpoint written
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = subprocess.run([sys.executable, "-m", "experiments.runner", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode == 0, second.stderr
    assert "in use by" not in second.stderr
    assert pd.read_csv(fold / "history.csv")["epoch"].tolist() == [1, 2]  # resumed after epoch 1


def test_the_experiment_files_wait_for_the_experiment_lock(experiment, capsys):
    """Folds done, the experiment's oof.csv and summary.json are written under ``runs/<exp>``'s lock."""
    assert runner.main(experiment["argv"]) == 0
    exp_dir = experiment["runs"] / NAME
    (exp_dir / "summary.json").unlink()
    holder = start("-c", HOLD_FOLDER, str(exp_dir), stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == "held"
        subprocess.Popen(["sh", "-c", f"sleep 2; kill {holder.pid}"])
        capsys.readouterr()
        assert runner.main(experiment["argv"]) == 0
    finally:
        holder.kill()
        holder.wait()
    assert f"fma-train: {exp_dir}: in use by pid {holder.pid} on " in capsys.readouterr().err
    assert (exp_dir / "summary.json").is_file()
