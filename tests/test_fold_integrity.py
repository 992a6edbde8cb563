"""Issue 25: a damaged, diverged or failed fold stops submit, blend, package and compare with one clear error;
a fold whose training loss stops being finite stops at once and fails ``make train``."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from conftest import write_tiny_config

from common.errors import DamagedFoldError, DivergedFoldError, FailedFoldError
from common.io import file_sha256
from common.runs import has_diverged, verify_fold
from crowdai import blend
from crowdai.ensemble import load_ensemble
from experiments import compare, runner

SUBSET = "small"
NAME = "tiny_integrity"
DIVERGED = "tiny_diverged"


def args(env, config, runs, *extra):
    return ["--config", str(config), "--data", str(env["data"]), "--subset", SUBSET, "--folds", str(env["folds"]),
            "--cache", str(env["cache"]), "--runs", str(runs), *extra]


@pytest.fixture(scope="module")
def trained(tiny_training_data, tmp_path_factory):
    """``runs/tiny_integrity`` with both folds trained for one epoch (read-only: copy it to damage it)."""
    root = tmp_path_factory.mktemp("integrity")
    config = write_tiny_config(root, NAME, epochs=1)
    assert runner.main(args(tiny_training_data, config, root / "runs")) == 0
    return root / "runs"


@pytest.fixture
def runs(trained, tmp_path):
    """A private copy of the trained runs folder."""
    return shutil.copytree(trained, tmp_path / "runs")


def one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), err
    return lines[0]


def test_summary_records_the_files_and_the_prior(trained):
    fold = trained / NAME / "fold_0"
    summary = json.loads((fold / "summary.json").read_text())
    assert set(summary["files"]) == {"model.keras", "oof.csv"}
    for name, record in summary["files"].items():
        assert record == {"bytes": (fold / name).stat().st_size, "sha256": file_sha256(fold / name)}
    n_classes = len(json.loads((trained / NAME / "classes.json").read_text())["class_names"])
    assert summary["prior_log_loss"] == pytest.approx(math.log(n_classes))
    diverged = summary["metrics"]["log_loss"] > 5 * summary["prior_log_loss"]
    assert summary["status"] == ("diverged" if diverged else "ok") and summary["failure"] is None
    assert verify_fold(fold, allow_diverged=True) == summary


def test_truncated_model_names_the_fold_and_the_retrain_command(runs, capsys):
    model = runs / NAME / "fold_1" / "model.keras"
    model.write_bytes(model.read_bytes()[:model.stat().st_size // 2])
    with pytest.raises(DamagedFoldError, match=rf"fold_1/model.keras: \d+ bytes, but \d+ were written.*"
                                               rf"move .*fold_1 away .*`make train EXP={NAME} FOLD=1`"):
        load_ensemble(runs, NAME, allow_diverged=True)
    assert compare.main(["--runs", str(runs), "--out", str(runs.parent / "report")]) == 1
    line = one_error_line(capsys, "fma-compare")
    assert "fold_1/model.keras" in line and f"make train EXP={NAME} FOLD=1" in line


def test_truncated_model_of_an_old_summary_is_a_clear_error_too(runs):
    """A summary that predates ``"files"`` is not checked, but Keras' failure still names the fold."""
    fold = runs / NAME / "fold_1"
    summary = json.loads((fold / "summary.json").read_text())
    for key in ("files", "status", "failure", "prior_log_loss"):
        del summary[key]
    (fold / "summary.json").write_text(json.dumps(summary))
    assert verify_fold(fold) == summary  # accepted as before
    model = fold / "model.keras"
    model.write_bytes(model.read_bytes()[:model.stat().st_size // 2])
    with pytest.raises(DamagedFoldError, match=rf"fold_1/model.keras: Keras cannot load this model.*"
                                               rf"`make train EXP={NAME} FOLD=1`"):
        load_ensemble(runs, NAME, allow_diverged=True)


def test_flipped_bytes_in_oof_are_caught_by_the_hash(runs, capsys):
    oof = runs / NAME / "fold_0" / "oof.csv"
    data = bytearray(oof.read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("3")
    oof.write_bytes(bytes(data))
    verify_fold(oof.parent, hash=False, allow_diverged=True)  # same size: only the hash sees it
    with pytest.raises(DamagedFoldError, match=r"fold_0/oof.csv: sha256 .* differs .*FOLD=0"):
        verify_fold(oof.parent, allow_diverged=True)
    assert blend.main(["--exp", NAME, "--runs", str(runs)]) == 1
    line = one_error_line(capsys, "fma-blend")
    assert "fold_0/oof.csv" in line and f"make train EXP={NAME} FOLD=0" in line


def test_prediction_reads_only_the_models_so_a_package_without_oof_loads(runs):
    """A packaged submission carries each fold's model, not its oof.csv (the CI failure of stop 27)."""
    for fold in sorted((runs / NAME).glob("fold_*")):
        (fold / "oof.csv").unlink()
    ensemble = load_ensemble(runs, NAME, allow_diverged=True)
    assert len(ensemble.models) == 2
    with pytest.raises(DamagedFoldError, match=r"fold_0/oof.csv: missing"):
        verify_fold(runs / NAME / "fold_0", allow_diverged=True)


@pytest.fixture(scope="module")
def diverged(tiny_training_data, tmp_path_factory):
    """``runs/tiny_diverged``: both folds trained 3 epochs at a learning rate of 1e6 (the issue's reproduction).

    The training loss stays finite (about 1e12), so the folds finish: diverged, not failed.
    """
    root = tmp_path_factory.mktemp("diverged")
    config = write_tiny_config(root, DIVERGED, epochs=3, optimizer={"name": "adam", "learning_rate": 1.0e6})
    assert runner.main(args(tiny_training_data, config, root / "runs")) == 0
    return {"config": config, "runs": root / "runs"}


def test_a_diverged_fold_is_marked_warned_shown_and_refused(tiny_training_data, diverged, capsys):
    runs = diverged["runs"]
    assert runner.main(args(tiny_training_data, diverged["config"], runs)) == 0  # finished: warned again, exit 0
    err = capsys.readouterr().err
    for k in (0, 1):
        fold = runs / DIVERGED / f"fold_{k}"
        summary = json.loads((fold / "summary.json").read_text())
        assert summary["status"] == "diverged" and summary["failure"] is None and summary["epochs"] == 3
        assert not summary["metrics"]["log_loss"] <= 5 * summary["prior_log_loss"]
        assert (f"fma-train: warning: {fold / 'summary.json'}: fold {k} diverged" in err
                and f"`make train EXP={DIVERGED} FOLD={k}`" in err)
    with pytest.raises(DivergedFoldError, match=rf"fold 0 diverged: validation log loss .* over 5 times the uniform "
                                                rf"prior's .*`make train EXP={DIVERGED} FOLD=0`.*learning_rate"):
        load_ensemble(runs, DIVERGED)
    with pytest.raises(DivergedFoldError):
        verify_fold(runs / DIVERGED / "fold_1")
    table, _ = compare.collect(runs)
    assert table.loc[0, "status"] == "complete; diverged folds 0, 1"


def test_blend_submit_and_package_refuse_diverged_folds_unless_allowed(tiny_training_data, diverged, tmp_path,
                                                                      capsys):
    from crowdai import package, submit

    runs = diverged["runs"]
    test_dir = tiny_training_data["data"] / "crowdai_fma_test"
    submit_args = ["--exp", DIVERGED, "--runs", str(runs), "--test-dir", str(test_dir),
                   "--cache", str(tiny_training_data["cache"]), "--output", str(tmp_path / "s.csv"), "--no-progress"]
    package_args = ["--exp", DIVERGED, "--runs", str(runs), "--out", str(tmp_path / "package"), "--timing-clips", "0"]
    for command, main, argv in (("fma-blend", blend.main, ["--exp", DIVERGED, "--runs", str(runs)]),
                                ("fma-submit", submit.main, submit_args),
                                ("fma-package", package.main, package_args)):
        assert main(argv) == 1
        line = one_error_line(capsys, command)
        assert "fold_0/summary.json: fold 0 diverged" in line and f"`make train EXP={DIVERGED} FOLD=0`" in line
        assert main([*argv, "--allow-diverged"]) == 0, capsys.readouterr().err
    assert (runs / "blends" / DIVERGED / "blend.json").is_file() and (tmp_path / "s.csv").is_file()
    assert json.loads((tmp_path / "package" / "package.json").read_text())["allow_diverged"] is True
    assert 'export ALLOW_DIVERGED="${ALLOW_DIVERGED:-1}"' in (tmp_path / "package" / "run.sh").read_text()


def failing_config(directory, name, *, batch_size):
    """A tiny config whose learning rate of 1e30 makes the training loss NaN after the first update."""
    return write_tiny_config(directory, name, epochs=3, batch_size=batch_size,
                             optimizer={"name": "adam", "learning_rate": 1.0e30})


def test_a_fold_whose_loss_becomes_nan_stops_at_once_and_fails_the_run(tiny_training_data, tmp_path, capsys):
    """Batches of 8: the second batch of the first epoch has a NaN loss; both folds stop there, keeping no model."""
    name = "tiny_failed"
    config, runs = failing_config(tmp_path, name, batch_size=8), tmp_path / "runs"
    for attempt in ("trains", "skips the finished folds"):
        assert runner.main(args(tiny_training_data, config, runs)) == 1, attempt
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "done" not in out and "CV log loss" not in out
        errors = [line for line in err.splitlines() if line.startswith("fma-train: error: ")]
        assert len(errors) == 2, err  # one line per failed fold: fold 1 trained after fold 0 failed
        for k, line in enumerate(errors):
            assert (f"{runs / name / f'fold_{k}' / 'summary.json'}: fold {k} failed: its training loss became nan "
                    f"in epoch 1" in line and f"`make train EXP={name} FOLD={k}`" in line and "learning_rate" in line)
    for k in (0, 1):
        fold = runs / name / f"fold_{k}"
        summary = json.loads((fold / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["failure"]["epoch"] == 1
        assert math.isnan(summary["failure"]["loss"]) and summary["epochs"] == 0
        assert summary["metrics"] is None and summary["files"] == {}
        assert not (fold / "model.keras").exists() and not (fold / "history.csv").exists()
        assert not (fold / "checkpoint").exists()
    assert not (runs / name / "summary.json").exists() and not (runs / name / "oof.csv").exists()
    with pytest.raises(FailedFoldError, match=r"fold 0 failed: its training loss became nan in epoch 1"):
        load_ensemble(runs, name)
    with pytest.raises(FailedFoldError, match=r"it kept no model.keras"):  # nothing to use, even when allowed
        load_ensemble(runs, name, allow_diverged=True)
    table, _ = compare.collect(runs)
    assert table.loc[0, "status"] == "incomplete (2 folds done); failed folds 0, 1"


def test_a_fold_that_fails_later_keeps_its_best_finite_epoch(tiny_training_data, tmp_path, capsys):
    """One batch per epoch: the loss is NaN from the second epoch; the first epoch's model is kept, and used
    only when allowed."""
    name = "tiny_failed_later"
    config, runs = failing_config(tmp_path, name, batch_size=32), tmp_path / "runs"
    assert runner.main(args(tiny_training_data, config, runs, "--fold", "0")) == 1
    line = one_error_line(capsys, "fma-train")
    assert "fold 0 failed: its training loss became nan in epoch 2" in line
    fold = runs / name / "fold_0"
    summary = json.loads((fold / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs"] == 1 and summary["best_epoch"] == 1
    assert pd.read_csv(fold / "history.csv")["epoch"].tolist() == [1]  # stopped at once: no epoch 3
    assert set(summary["files"]) == {"model.keras", "oof.csv"}
    with pytest.raises(FailedFoldError, match="epoch 2"):
        verify_fold(fold)
    assert verify_fold(fold, allow_diverged=True) == summary
    assert len(load_ensemble(runs, name, allow_diverged=True).models) == 1


def test_compare_verify_checks_the_hashes(runs, capsys):
    oof = runs / NAME / "fold_1" / "oof.csv"
    data = bytearray(oof.read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("3")
    oof.write_bytes(bytes(data))
    report = runs.parent / "report"
    assert compare.main(["--runs", str(runs), "--out", str(report)]) == 0  # same size: only the hash sees it
    capsys.readouterr()
    assert compare.main(["--runs", str(runs), "--out", str(report), "--verify"]) == 1
    line = one_error_line(capsys, "fma-compare")
    assert "fold_1/oof.csv: sha256" in line and f"make train EXP={NAME} FOLD=1" in line


def test_finite_but_worse_than_prior_is_refused_and_old_summaries_pass(tmp_path):
    from common.tasks import Task
    from common.training import prior_log_loss

    assert prior_log_loss(Task("single", ("a", "b", "c"), (1, 2, 3))) == pytest.approx(math.log(3))
    assert prior_log_loss(Task("multi", ("a", "b", "c"), (1, 2, 3))) == pytest.approx(math.log(2))
    fold = tmp_path / "demo" / "fold_2"
    fold.mkdir(parents=True)
    summary = {"experiment": "demo", "fold": 2, "metrics": {"log_loss": 28.9}, "prior_log_loss": math.log(16),
               "diverged": True}  # as written before "status"
    (fold / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DivergedFoldError, match=r"fold 2 diverged: validation log loss 28.9, over 5 times the "
                                                r"uniform prior's 2.773; .*`make train EXP=demo FOLD=2`"):
        verify_fold(fold)
    assert verify_fold(fold, allow_diverged=True) == summary
    prior = math.log(16)  # weak or over-confident folds are no diverged ones; 5x the prior and NaN are
    assert not has_diverged(2.87, prior=prior) and not has_diverged(9.3, prior=prior)
    assert has_diverged(28.9, prior=prior) and has_diverged(math.nan, prior=prior)
    (fold / "summary.json").write_text(json.dumps({"metrics": {"log_loss": 1.0}}))  # predates the checks
    assert verify_fold(fold) == {"metrics": {"log_loss": 1.0}}
