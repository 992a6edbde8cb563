"""Fitted post-processing of class probabilities: temperature, pool weights, stacking, test prior.

Every function works on single-label probabilities ``(n, C)`` with integer targets
``(n,)`` and fits with scipy or scikit-learn (no hand-written optimiser):

* :func:`fit_temperature` — one scalar ``T`` per experiment, ``softmax(log p / T)``
  (Guo et al. 2017), minimising log loss (``scipy.optimize.minimize_scalar``).
* :func:`fit_pool_weights` — weights on the simplex of the arithmetic or geometric pool
  of several experiments (:func:`crowdai.ensemble.combine`), parametrised as
  ``softmax(theta)`` and fitted with ``scipy.optimize.minimize`` (L-BFGS-B).
* :func:`fit_stacking` — a multinomial logistic regression on the experiments'
  log-probabilities, its ``C`` chosen by cross-validation (``LogisticRegressionCV``).
* :func:`adapt_prior` — EM re-estimation of the class prior of unlabelled (test)
  predictions (Saerens, Latinne & Decaestecker 2002).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special

from crowdai.ensemble import combine

#: Smallest probability whose log is taken (the leaderboard's clipping bound).
LOG_FLOOR = 1e-15

#: Range searched for a temperature.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)

#: Default strength of :func:`adapt_prior`'s Dirichlet prior, in pseudo-tracks per class.
PRIOR_PSEUDO_TRACKS_PER_CLASS = 10

#: Inverse regularisation strengths tried by stacking's cross-validation.
STACKING_CS: tuple[float, ...] = tuple(np.logspace(-3, 1, 5))

#: Smallest probability of stacking's log-probability features (bounds the features to
#: ``[-13.8, 0]``: the solver converges in a few dozen iterations).
STACKING_FLOOR = 1e-6


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), LOG_FLOOR))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored at :data:`LOG_FLOOR`).

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
    y : np.ndarray, shape (n,), int
    """
    return float(-_log(probs[np.arange(len(y)), y]).mean())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens.

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
    temperature : float

    Returns
    -------
    np.ndarray, shape (n, C), rows sum to 1
    """
    return scipy.special.softmax(_log(probs) / temperature, axis=1)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the log loss of :func:`apply_temperature` on ``(probs, y)``.

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
    y : np.ndarray, shape (n,), int

    Returns
    -------
    float
        In :data:`TEMPERATURE_BOUNDS`.
    """
    logits, rows = _log(probs), np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-scipy.special.log_softmax(logits / np.exp(log_t), axis=1)[rows, y].mean())

    low, high = np.log(TEMPERATURE_BOUNDS)
    result = scipy.optimize.minimize_scalar(loss, bounds=(low, high), method="bounded",
                                            options={"xatol": 1e-6})
    return float(np.exp(result.x))


def fit_pool_weights(probs: Sequence[np.ndarray], y: np.ndarray, *, mean: str) -> np.ndarray:
    """Simplex weights of :func:`crowdai.ensemble.combine` minimising the pooled log loss.

    Parameters
    ----------
    probs : sequence of np.ndarray, each shape (n, C)
        One matrix per experiment.
    y : np.ndarray, shape (n,), int
    mean : {"arithmetic", "geometric"}

    Returns
    -------
    np.ndarray, shape (len(probs),)
        Positive, summing to 1.
    """
    if len(probs) == 1:
        return np.ones(1)

    def loss(theta: np.ndarray) -> float:
        return nll(combine(probs, weights=scipy.special.softmax(theta), mean=mean), y)

    # bounded logits keep every weight above e^-30 (combine needs positive weights)
    result = scipy.optimize.minimize(loss, np.zeros(len(probs)), method="L-BFGS-B", bounds=[(-15.0, 15.0)] * len(probs))
    return scipy.special.softmax(result.x)


def stacking_features(probs: Sequence[np.ndarray]) -> np.ndarray:
    """The experiments' centred log-probabilities side by side: ``(n, len(probs) * C)``.

    Each experiment's ``log max(p, STACKING_FLOOR)`` minus its row mean (the centred
    logits, which carry the same information): the solver then needs 5x fewer iterations.
    """
    logs = [np.log(np.maximum(np.asarray(p, dtype=np.float64), STACKING_FLOOR)) for p in probs]
    return np.concatenate([x - x.mean(axis=1, keepdims=True) for x in logs], axis=1)


def fit_stacking(probs: Sequence[np.ndarray], y: np.ndarray, *, groups: np.ndarray, seed: int = 0) -> dict:
    """Multinomial logistic regression on :func:`stacking_features`, ``C`` chosen by cross-validation.

    The cross-validation splits by ``groups`` (the folds the out-of-fold rows came from)
    when there are at least two, otherwise by three shuffled folds.

    Parameters
    ----------
    probs : sequence of np.ndarray, each shape (n, C)
    y : np.ndarray, shape (n,), int
    groups : np.ndarray, shape (n,)
    seed : int

    Returns
    -------
    dict
        JSON-ready ``C``, ``classes`` (the class indices seen in ``y``), ``coef``
        (``len(classes)`` lists of ``len(probs) * C`` floats) and ``intercept``.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold, PredefinedSplit

    cv = PredefinedSplit(groups) if len(np.unique(groups)) >= 2 else KFold(3, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(Cs=list(STACKING_CS), l1_ratios=(0.0,), cv=cv, scoring="neg_log_loss",
                                 max_iter=2000, use_legacy_attributes=False, random_state=seed)
    model.fit(stacking_features(probs), y)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: logit of the second
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return {"C": float(model.C_), "classes": [int(c) for c in model.classes_],
            "coef": coef.tolist(), "intercept": intercept.tolist()}


def apply_stacking(params: dict, probs: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities ``(n, C)`` of a :func:`fit_stacking` model; classes it never saw get 0."""
    logits = stacking_features(probs) @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    out = np.zeros((len(logits), probs[0].shape[1]))
    out[:, params["classes"]] = scipy.special.softmax(logits, axis=1)
    return out


def adapt_prior(probs: np.ndarray, *, train_prior: np.ndarray, pseudo_tracks: float | None = None,
                max_iter: int = 1000, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, int]:
    """Re-estimate the class prior of unlabelled predictions by EM (Saerens et al. 2002).

    E step: ``p'(c|x) ∝ p(c|x) · π(c) / π_train(c)``; M step (MAP under a Dirichlet prior
    centred on the training prior): ``π(c) = (sum_x p'(c|x) + λ π_train(c)) / (n + λ)``;
    from ``π = π_train`` until ``π`` moves less than ``tol`` (L1). Plain EM (``λ = 0``) is
    the maximum-likelihood estimate, which on a few dozen sharp predictions can drive a
    present class to 0 (seen on the demo's 48 test files: Jazz, 5 of them, went to 0 and
    the log loss from 0.55 to 1.79); ``λ`` pseudo-tracks keep it near the training prior
    until the test set is large enough to say otherwise.

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
        Posteriors of a model trained (and calibrated) under ``train_prior``.
    train_prior : np.ndarray, shape (C,)
        Positive, sums to 1.
    pseudo_tracks : float, optional
        ``λ`` (default :data:`PRIOR_PSEUDO_TRACKS_PER_CLASS` × C); 0 is plain EM.
    max_iter : int
    tol : float

    Returns
    -------
    adapted : np.ndarray, shape (n, C)
        Posteriors under the estimated prior.
    prior : np.ndarray, shape (C,)
        Estimated test prior.
    iterations : int
    """
    probs = np.asarray(probs, dtype=np.float64)
    train_prior = np.asarray(train_prior, dtype=np.float64)
    if train_prior.shape != probs.shape[1:] or (train_prior <= 0).any():
        raise ValueError(f"train_prior must be {probs.shape[1]} positive numbers, got {train_prior}")
    train_prior = train_prior / train_prior.sum()
    strength = PRIOR_PSEUDO_TRACKS_PER_CLASS * len(train_prior) if pseudo_tracks is None else pseudo_tracks
    prior, adapted = train_prior, probs
    for iteration in range(1, max_iter + 1):
        adapted = probs * (prior / train_prior)
        adapted /= adapted.sum(axis=1, keepdims=True)
        new_prior = (adapted.sum(axis=0) + strength * train_prior) / (len(adapted) + strength)
        moved = np.abs(new_prior - prior).sum()
        prior = new_prior
        if moved < tol or iteration == max_iter:
            break
    adapted = probs * (prior / train_prior)
    return adapted / adapted.sum(axis=1, keepdims=True), prior, iteration
