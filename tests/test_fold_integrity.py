"""Issue 25: a damaged or diverged fold stops submit, blend and compare with one clear error."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from conftest import write_tiny_config

from common.errors import DamagedFoldError, DivergedFoldError
from common.io import file_sha256
from common.runs import has_diverged, verify_fold
from crowdai import blend
from crowdai.ensemble import load_ensemble
from experiments import compare, runner

SUBSET = "small"
NAME = "tiny_integrity"


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
    assert summary["diverged"] is (summary["metrics"]["log_loss"] > 5 * summary["prior_log_loss"])
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
    for key in ("files", "diverged", "prior_log_loss"):
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


def test_a_diverged_fold_is_marked_warned_shown_and_refused(tiny_training_data, tmp_path, capsys):
    name = "tiny_diverged"
    config = write_tiny_config(tmp_path, name, epochs=1, optimizer={"name": "adam", "learning_rate": 1.0e6})
    runs = tmp_path / "runs"
    assert runner.main(args(tiny_training_data, config, runs, "--fold", "0")) == 0
    err = capsys.readouterr().err
    fold = runs / name / "fold_0"
    summary = json.loads((fold / "summary.json").read_text())
    assert summary["diverged"] is True
    assert not summary["metrics"]["log_loss"] <= summary["prior_log_loss"]
    assert f"fma-train: warning: {fold / 'summary.json'}: fold 0 diverged" in err
    with pytest.raises(DivergedFoldError, match=rf"fold 0 diverged: validation log loss .* over 5 times the uniform "
                                                rf"prior's .*`make train EXP={name} FOLD=0`.*learning_rate"):
        load_ensemble(runs, name)
    with pytest.raises(DivergedFoldError):
        verify_fold(fold)
    table, _ = compare.collect(runs)
    assert table.loc[0, "status"] == "incomplete (1 fold done); diverged fold 0"


def test_finite_but_worse_than_prior_is_refused_and_old_summaries_pass(tmp_path):
    from common.tasks import Task
    from common.training import prior_log_loss

    assert prior_log_loss(Task("single", ("a", "b", "c"), (1, 2, 3))) == pytest.approx(math.log(3))
    assert prior_log_loss(Task("multi", ("a", "b", "c"), (1, 2, 3))) == pytest.approx(math.log(2))
    fold = tmp_path / "demo" / "fold_2"
    fold.mkdir(parents=True)
    summary = {"experiment": "demo", "fold": 2, "metrics": {"log_loss": 28.9}, "prior_log_loss": math.log(16),
               "diverged": True}
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
