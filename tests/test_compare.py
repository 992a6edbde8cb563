"""experiments.compare on tiny fake run folders written in the run-directory schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.metadata import TOP_GENRES
from experiments import compare

CLASSES = list(TOP_GENRES[:4])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_fold(exp_dir, fold, *, task, val_losses, metrics):
    fold_dir = exp_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True)
    epochs = np.arange(len(val_losses))
    pd.DataFrame({"epoch": epochs, "loss": np.asarray(val_losses) * 0.9, "val_loss": val_losses,
                  "val_accuracy": np.linspace(0.3, 0.6, len(epochs))}).to_csv(fold_dir / "history.csv", index=False)
    summary = {"experiment": exp_dir.name, "fold": fold, "task": task, "model": "crnn", "params": 12345,
               "epochs": len(epochs), "best_epoch": int(np.argmin(val_losses)), "seconds_per_epoch": 2.5,
               "metrics": metrics, "date": "2026-01-02T03:04:05"}
    (fold_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def write_experiment(runs, name, *, log_losses, task="single", finished=True, seed=0):
    exp_dir = runs / name
    folds = [write_fold(exp_dir, k, task=task, val_losses=[1.5, 1.2, ll + 0.05, ll],
                        metrics={"log_loss": ll, "macro_f1": 1 / (1 + ll), "accuracy": 1 / (1 + ll)})
             for k, ll in enumerate(log_losses)]
    rng = np.random.default_rng(seed)
    n = 40
    target = rng.integers(0, len(CLASSES), n)
    probs = rng.dirichlet(np.ones(len(CLASSES)), n)
    probs[np.arange(n), target] += 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    oof = pd.DataFrame(probs, columns=CLASSES)
    oof.insert(0, "target", np.asarray(CLASSES)[target])
    oof.insert(0, "fold", np.arange(n) % len(log_losses))
    oof.insert(0, "id", [str(1000 + i) for i in range(n)])
    oof.to_csv(exp_dir / "oof.csv", index=False)
    if finished:
        cv = {m: {"mean": float(np.mean([f["metrics"][m] for f in folds])),
                  "std": float(np.std([f["metrics"][m] for f in folds]))} for m in compare.METRICS}
        summary = {"experiment": name, "task": task, "model": "crnn", "params": 12345, "seconds_per_epoch": 2.5,
                   "date": "2026-01-02T03:04:05", "folds": folds, "cv": cv,
                   "test": {"log_loss": float(np.mean(log_losses)) + 0.1, "macro_f1": 0.4, "accuracy": 0.5}}
        (exp_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def runs(tmp_path):
    runs = tmp_path / "runs"
    write_experiment(runs, "worse", log_losses=[1.30, 1.40], seed=1)
    write_experiment(runs, "better", log_losses=[0.90, 1.00], seed=2)
    write_experiment(runs, "training", log_losses=[0.5], finished=False, seed=3)
    (runs / "just_started" / "fold_0").mkdir(parents=True)
    return runs


def test_compare_ranks_by_log_loss_and_writes_reports(runs, capsys):
    out = runs / "compare"
    assert compare.main(["--runs", str(runs), "--out", str(out)]) == 0
    printed, notes = capsys.readouterr()
    assert "skipped" in notes and "just_started" in notes  # notes on stderr, the table on stdout
    assert "skipped" not in printed and "better" in printed
    table = pd.read_csv(out / "compare.csv")
    assert tuple(table.columns) == compare.TABLE_COLUMNS
    assert table["experiment"].tolist() == ["training", "better", "worse"]
    better = table.set_index("experiment").loc["better"]
    assert better["cv_log_loss_mean"] == pytest.approx(0.95)
    assert better["cv_log_loss_std"] == pytest.approx(0.05)
    assert better["test_log_loss"] == pytest.approx(1.05)
    assert better["status"] == "complete" and better["folds"] == 2 and better["params"] == 12345
    training = table.set_index("experiment").loc["training"]
    assert training["status"].startswith("incomplete") and np.isnan(training["test_log_loss"])
    markdown = (out / "compare.md").read_text()
    assert "| better | single | crnn | complete | 0.9500 ± 0.0500 |" in markdown
    # The best complete single-label experiment gets the confusion matrix.
    assert not (out / "confusion_training.png").exists()
    for png in ("learning_curves.png", "confusion_better.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    # Running again (report folder inside RUNS) is not mistaken for an experiment.
    assert compare.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().err  # a note: stderr
    assert pd.read_csv(out / "compare.csv")["experiment"].tolist() == ["training", "better", "worse"]


def test_tasks_ranked_separately_and_bad_oof_reported(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_experiment(runs, "tags", log_losses=[0.1, 0.2], task="multi")
    write_experiment(runs, "genres", log_losses=[1.0, 1.1])
    (runs / "genres" / "oof.csv").write_text("track,proba\n1,0.5\n")
    assert compare.main(["--runs", str(runs)]) == 1
    assert "oof.csv: expected columns id, fold, target" in capsys.readouterr().err
    table, _ = compare.collect(runs)
    assert table["experiment"].tolist() == ["genres", "tags"]


def test_empty_runs_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert compare.main(["--runs", str(tmp_path / "runs")]) == 1
    assert "no experiment with a finished fold" in capsys.readouterr().err


def test_compare_finds_experiments_one_level_down_as_make_demo_writes_them(tmp_path, capsys):
    """`make demo` trains into runs/demo/demo; `make compare` (RUNS=runs) then finds it beside runs/<exp>."""
    runs = tmp_path / "runs"
    write_experiment(runs / "demo", "demo", log_losses=[0.9, 1.0])
    (runs / "demo" / "compare").mkdir()  # the demo's own report folder: not an experiment
    (runs / "demo" / "compare" / "compare.csv").write_text("experiment\n")
    write_experiment(runs, "crnn", log_losses=[1.2, 1.3])
    assert compare.main(["--runs", str(runs)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" not in printed
    table = pd.read_csv(runs / "compare" / "compare.csv")
    assert table["experiment"].tolist() == ["demo/demo", "crnn"]
    assert (runs / "compare" / "confusion_demo_demo.png").read_bytes()[:8] == PNG_MAGIC
    assert (runs / "compare" / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC
    # the demo's own call, RUNS=runs/demo, still names it "demo"
    assert compare.main(["--runs", str(runs / "demo")]) == 0
    assert pd.read_csv(runs / "demo" / "compare" / "compare.csv")["experiment"].tolist() == ["demo"]
