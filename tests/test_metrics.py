"""Leaderboard metrics: values checked against hand computations and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics

from common import metrics
from common.metadata import TOP_GENRES


def test_uniform_log_loss_is_ln_c():
    y = np.arange(16) % 16
    probs = np.full((16, 16), 1 / 16)
    assert metrics.log_loss(y, probs) == pytest.approx(math.log(16))


def test_log_loss_clips_and_renormalises_like_leaderboard():
    # A zero on the true class costs -ln(1e-15), not infinity; rows are renormalised.
    y = np.array([0, 1])
    probs = np.array([[0.0, 1.0], [0.2, 0.6]])
    clipped = np.clip(probs, 1e-15, 1 - 1e-15)
    clipped /= clipped.sum(axis=1, keepdims=True)
    expected = -(np.log(clipped[0, 0]) + np.log(clipped[1, 1])) / 2
    assert metrics.log_loss(y, probs) == pytest.approx(expected)
    assert metrics.log_loss(y, probs) == pytest.approx((-math.log(1e-15) - math.log(0.75)) / 2, rel=1e-6)


def test_single_label_f1_and_accuracy():
    y = np.array([0, 0, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 2]]
    assert metrics.accuracy(y, probs) == pytest.approx(0.75)
    assert metrics.macro_f1(y, probs) == pytest.approx(
        sklearn.metrics.f1_score(y, [0, 1, 1, 2], average="macro"))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="rows"):
        metrics.log_loss(np.array([0, 1]), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        metrics.log_loss(np.array([0]), np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="outside"):
        metrics.accuracy(np.array([2]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="unknown task"):
        metrics.score("both", np.array([0]), np.array([[1.0]]), ["a"])


def test_multilabel_metrics_skip_classes_without_both_labels():
    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.6], [0.7, 0.4, 0.9], [0.3, 0.1, 0.8]])
    # Class 2 is positive everywhere: no ROC-AUC, skipped by all macro averages.
    assert metrics.scorable_classes(targets).tolist() == [0, 1]
    result = metrics.score("multi", targets, probs, ["a", "b", "c"])
    assert result["n_classes_scored"] == 2
    assert result["roc_auc"] == pytest.approx(np.mean([
        sklearn.metrics.roc_auc_score(targets[:, c], probs[:, c]) for c in (0, 1)]))
    assert result["pr_auc"] == pytest.approx(np.mean([
        sklearn.metrics.average_precision_score(targets[:, c], probs[:, c]) for c in (0, 1)]))
    # Class 1 at 0.5: predicted [0,1,0,0] vs true [0,1,1,0] -> F1 2/3; class 0 perfect.
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    expected_bce = -np.mean(targets * np.log(probs) + (1 - targets) * np.log(1 - probs))
    assert result["log_loss"] == pytest.approx(expected_bce)
    assert result["accuracy"] == pytest.approx(1.0)  # every arg-max is a true genre


def test_per_class_table_single():
    y = np.array([0, 0, 1, 15])
    probs = np.eye(16)[[0, 1, 1, 15]]
    table = metrics.per_class_table(y, probs, class_names=TOP_GENRES)
    assert list(table.index) == list(TOP_GENRES)
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    assert table.loc["Blues", "recall"] == pytest.approx(0.5)
    assert table.loc["Classical", "precision"] == pytest.approx(0.5)
    assert table.loc["Spoken", "f1"] == pytest.approx(1.0)
    assert table["support"].sum() == 4


def test_score_single_keys():
    y = np.array([0, 1, 1])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    result = metrics.score("single", y, probs, ["x", "y"])
    assert set(result) == {"log_loss", "macro_f1", "accuracy", "n"}
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4])))
