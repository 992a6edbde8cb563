"""common.runs: the one listing of an experiment's fold folders, and the callers that use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ToolkitError
from common.inference import load_fold_models, load_run_config
from common.runs import finished_fold_dirs, fold_dir, fold_dirs, fold_number
from crowdai import package
from experiments import compare


def make_fold(exp_dir, name, *, finished, config_yaml="training: {seed: 1}\n"):
    """``exp_dir/<name>/`` with ``config.yaml``, and ``summary.json`` when ``finished``."""
    path = exp_dir / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(config_yaml)
    if finished:
        (path / "summary.json").write_text(json.dumps({"metrics": {"log_loss": 1.0, "accuracy": 0.5}}))
    return path


def test_fold_dirs_in_numeric_order_skipping_other_names_and_files(tmp_path):
    for k in (10, 2, 0):
        make_fold(tmp_path, f"fold_{k}", finished=True)
    for stray in ("fold_x", "fold_1.bak", "fold_01", "fold_", "folds"):
        make_fold(tmp_path, stray, finished=True)
    (tmp_path / "fold_3").write_text("a file, not a fold folder")

    assert [d.name for d in fold_dirs(tmp_path)] == ["fold_0", "fold_2", "fold_10"]
    assert fold_dir(tmp_path, 2) == tmp_path / "fold_2" and fold_number(fold_dir(tmp_path, 10)) == 10
    assert fold_number(tmp_path / "fold_x") is None and fold_number(tmp_path / "fold_01") is None
    assert fold_dirs(tmp_path / "missing") == []


def test_finished_fold_dirs_excludes_unfinished_folds(tmp_path):
    make_fold(tmp_path, "fold_10", finished=True)
    make_fold(tmp_path, "fold_2", finished=False)
    make_fold(tmp_path, "fold_1", finished=True)
    (tmp_path / "fold_3").mkdir()
    (tmp_path / "fold_3" / "summary.json").mkdir()  # not a file: not finished

    assert [d.name for d in fold_dirs(tmp_path)] == ["fold_1", "fold_2", "fold_3", "fold_10"]
    assert [d.name for d in finished_fold_dirs(tmp_path, required=True)] == ["fold_1", "fold_10"]


def test_no_finished_fold_is_an_error_only_when_one_is_required(tmp_path):
    make_fold(tmp_path, "fold_0", finished=False)
    make_fold(tmp_path, "fold_old", finished=True)

    assert finished_fold_dirs(tmp_path) == []
    with pytest.raises(ToolkitError, match=r"no finished fold \(fold_<k>/summary.json\); train the experiment"):
        finished_fold_dirs(tmp_path, required=True)


def test_callers_survive_a_stray_fold_folder(tmp_path):
    """A user's ``fold_old`` copy crashed load_fold_models and experiment_files (ValueError), and
    ``fold_1.bak`` counted as a second fold in compare; load_run_config read ``fold_10`` (sorted
    before ``fold_2``, and unfinished)."""
    stray_only = tmp_path / "stray_only"
    make_fold(stray_only, "fold_old", finished=True)
    with pytest.raises(ToolkitError, match="no finished fold"):
        load_fold_models(stray_only)

    exp_dir = tmp_path / "exp"
    fold = make_fold(exp_dir, "fold_2", finished=True, config_yaml="training: {seed: 7}\n")
    for name in package.FOLD_FILES:
        if not (fold / name).exists():
            (fold / name).write_text("{}")
    make_fold(exp_dir, "fold_10", finished=False, config_yaml="training: {seed: 99}\n")
    make_fold(exp_dir, "fold_old", finished=True)
    make_fold(exp_dir, "fold_1.bak", finished=True)
    (exp_dir / "oof.csv").write_text("id\n")

    assert load_run_config(exp_dir).training.seed == 7
    assert package.experiment_files(exp_dir) == [Path("oof.csv")] + [
        Path("fold_2") / name for name in package.FOLD_FILES]
    record = compare.load_experiment(exp_dir)
    assert record["folds"] == 1 and record["status"] == "incomplete (1 fold done)"
