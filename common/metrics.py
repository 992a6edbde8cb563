"""Leaderboard metrics for single-label and multi-label genre predictions.

Single-label (``task="single"``): ``probs`` is ``(n, C)`` class probabilities, ``y_true``
is ``(n,)`` integer class indices in ``[0, C)``.

* :func:`log_loss` — the crowdAI leaderboard's primary score. Exactly like the
  leaderboard's scorer (scikit-learn's historical ``log_loss(eps=1e-15)``), every
  probability is first clipped to ``[1e-15, 1 - 1e-15]`` and each row is then
  renormalised to sum to 1, so one confident mistake costs at most ``-ln(1e-15) ≈ 34.5``
  instead of infinity.
* :func:`macro_f1` — the secondary score: F1 of the arg-max prediction, averaged with
  equal weight over the classes that occur in the true labels or the predictions
  (scikit-learn's ``average="macro"`` default, as on the leaderboard).
* :func:`accuracy` — fraction of arg-max predictions that are right.

Multi-label (``task="multi"``): ``probs`` is ``(n, C)`` independent (sigmoid)
probabilities, ``targets`` is ``(n, C)`` 0/1.

* :func:`binary_log_loss` — mean binary cross-entropy over all ``n × C`` entries, with
  the same clipping to ``[1e-15, 1 - 1e-15]`` (no renormalisation: rows need not sum to 1).
* :func:`macro_roc_auc`, :func:`macro_average_precision` (PR-AUC) and
  :func:`multilabel_macro_f1` (threshold 0.5) — averaged over the classes that have both
  positive and negative targets. Classes with only one kind of target have no defined
  ROC-AUC and are skipped by all three, so the three averages are over the same classes;
  :func:`score` reports how many classes were scored.
* ``accuracy`` for ``multi`` in :func:`score` is the top-1 hit rate: the fraction of
  tracks whose highest-probability genre is one of their true genres.

:func:`score` is the single entry point used by training, comparison and the crowdAI
scorer, so every number in the toolkit is computed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sklearn.metrics

from common.tasks import TASKS

#: Clipping bound of the leaderboard's log loss.
EPS = 1e-15


def clip_probabilities(probs: np.ndarray, *, eps: float = EPS, renormalise: bool = True) -> np.ndarray:
    """Clip probabilities to ``[eps, 1 - eps]`` and, optionally, renormalise rows to sum to 1.

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
        Probabilities; must be finite.
    eps : float
        Clipping bound.
    renormalise : bool
        Divide each row by its sum after clipping (single-label log loss).

    Returns
    -------
    np.ndarray, shape (n, C), float64
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return p / p.sum(axis=1, keepdims=True) if renormalise else p


def _check_probs(probs: np.ndarray, n: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, C), got {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"probs has {p.shape[0]} rows but there are {n} labels")
    if not np.isfinite(p).all():
        raise ValueError(f"probs holds {int((~np.isfinite(p)).sum())} NaN or infinite values")
    return p


def _check_single(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must be integer class indices of shape (n,), got {y.dtype} {y.shape}")
    p = _check_probs(probs, len(y))
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"y_true holds class indices outside [0, {p.shape[1]})")
    return y, p


def _check_multi(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets)
    p = _check_probs(probs, len(t))
    if t.shape != p.shape:
        raise ValueError(f"targets shape {t.shape} differs from probs shape {p.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return t.astype(np.int64), p


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean categorical log loss with the leaderboard's clipping and row renormalisation.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int
        True class indices.
    probs : np.ndarray, shape (n, C)
        Predicted class probabilities.

    Returns
    -------
    float
        ``ln C`` for uniform predictions; 0 for perfect ones (up to clipping).
    """
    y, p = _check_single(y_true, probs)
    return float(sklearn.metrics.log_loss(y, clip_probabilities(p), labels=np.arange(p.shape[1])))


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro-averaged F1 of the arg-max predictions.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int
    probs : np.ndarray, shape (n, C)

    Returns
    -------
    float
        Average over the classes present in ``y_true`` or in the predictions.
    """
    y, p = _check_single(y_true, probs)
    return float(sklearn.metrics.f1_score(y, p.argmax(axis=1), average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of arg-max predictions equal to the true class.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int
    probs : np.ndarray, shape (n, C)
    """
    y, p = _check_single(y_true, probs)
    return float(sklearn.metrics.accuracy_score(y, p.argmax(axis=1)))


def binary_log_loss(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy over all entries, probabilities clipped to ``[1e-15, 1-1e-15]``.

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1
    probs : np.ndarray, shape (n, C)
    """
    t, p = _check_multi(targets, probs)
    p = clip_probabilities(p, renormalise=False)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log1p(-p)))


def scorable_classes(targets: np.ndarray) -> np.ndarray:
    """Indices of the classes that have both positive and negative targets.

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1

    Returns
    -------
    np.ndarray, shape (k,), int
    """
    t = np.asarray(targets)
    positives = t.sum(axis=0)
    return np.flatnonzero((positives > 0) & (positives < t.shape[0]))


def _macro_over_scorable(metric, targets: np.ndarray, probs: np.ndarray) -> float:
    t, p = _check_multi(targets, probs)
    classes = scorable_classes(t)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([metric(t[:, c], p[:, c]) for c in classes]))


def macro_roc_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """Macro ROC-AUC over the classes with both labels (NaN when there is none).

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1
    probs : np.ndarray, shape (n, C)
    """
    return _macro_over_scorable(sklearn.metrics.roc_auc_score, targets, probs)


def macro_average_precision(targets: np.ndarray, probs: np.ndarray) -> float:
    """Macro PR-AUC (average precision) over the classes with both labels.

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1
    probs : np.ndarray, shape (n, C)
    """
    return _macro_over_scorable(sklearn.metrics.average_precision_score, targets, probs)


def multilabel_macro_f1(targets: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5) -> float:
    """Macro F1 of ``probs >= threshold`` over the classes with both labels.

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1
    probs : np.ndarray, shape (n, C)
    threshold : float
    """
    def f1(t: np.ndarray, p: np.ndarray) -> float:
        return sklearn.metrics.f1_score(t, p >= threshold, zero_division=0)

    return _macro_over_scorable(f1, targets, probs)


def top1_hit_rate(targets: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of rows whose highest-probability class is a positive target.

    Parameters
    ----------
    targets : np.ndarray, shape (n, C), 0/1
    probs : np.ndarray, shape (n, C)
    """
    t, p = _check_multi(targets, probs)
    return float(t[np.arange(len(t)), p.argmax(axis=1)].mean()) if len(t) else float("nan")


def per_class_table(y_true: np.ndarray, probs: np.ndarray, *, class_names: Sequence[str],
                    task: str = "single", threshold: float = 0.5) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class.

    Parameters
    ----------
    y_true : np.ndarray
        ``(n,)`` class indices for ``single``, ``(n, C)`` 0/1 targets for ``multi``.
    probs : np.ndarray, shape (n, C)
    class_names : sequence of str, length C
    task : {"single", "multi"}
        ``single`` scores arg-max predictions, ``multi`` scores ``probs >= threshold``.
    threshold : float
        Decision threshold of ``multi``.

    Returns
    -------
    pd.DataFrame
        Index ``genre`` (class names in order), columns ``precision``, ``recall``, ``f1``,
        ``support`` (number of true examples).
    """
    _check_task(task)
    n_classes = len(class_names)
    if task == "single":
        y, p = _check_single(y_true, probs)
        truth, predicted, labels = y, p.argmax(axis=1), np.arange(n_classes)
    else:
        truth, p = _check_multi(y_true, probs)
        predicted, labels = (p >= threshold).astype(np.int64), None
    if p.shape[1] != n_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but {n_classes} class names were given")
    precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                        index=pd.Index(list(class_names), name="genre"))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def score(task: str, y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float | int]:
    """All headline metrics of one set of predictions.

    Parameters
    ----------
    task : {"single", "multi"}
    y_true : np.ndarray
        ``(n,)`` integer class indices (``single``) or ``(n, C)`` 0/1 targets (``multi``).
    probs : np.ndarray, shape (n, C)
    class_names : sequence of str, length C

    Returns
    -------
    dict
        ``single``: ``log_loss``, ``macro_f1``, ``accuracy``, ``n``.
        ``multi``: ``log_loss`` (binary), ``macro_f1`` (at 0.5), ``accuracy`` (top-1 hit
        rate), ``roc_auc``, ``pr_auc``, ``n``, ``n_classes_scored``.
    """
    _check_task(task)
    p = _check_probs(probs)
    if p.shape[1] != len(class_names):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(class_names)} class names were given")
    if task == "single":
        return {"log_loss": log_loss(y_true, p), "macro_f1": macro_f1(y_true, p),
                "accuracy": accuracy(y_true, p), "n": int(len(p))}
    return {"log_loss": binary_log_loss(y_true, p), "macro_f1": multilabel_macro_f1(y_true, p),
            "accuracy": top1_hit_rate(y_true, p), "roc_auc": macro_roc_auc(y_true, p),
            "pr_auc": macro_average_precision(y_true, p), "n": int(len(p)),
            "n_classes_scored": int(len(scorable_classes(y_true)))}
