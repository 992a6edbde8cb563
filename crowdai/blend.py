"""Calibrate and blend experiments on their out-of-fold predictions (``make blend``).

Usage::

    python -m crowdai.blend --exp crnn,shortchunk --runs runs [--name NAME] [--stacking] [--overwrite] \
        [--allow-diverged]

Reads ``RUNS/<exp>/oof.csv`` of every experiment and keeps the tracks they all predicted
(the *common* tracks; nothing else is fitted on). Each experiment's finished folds are checked
first (sizes and sha256 of their files; a failed or diverged fold is refused unless
``--allow-diverged``). Stages, each fitted with scipy or
scikit-learn (:mod:`crowdai.calibration`):

``raw:<exp>``
    the experiment's fold-ensemble probabilities as they are;
``calibrated:<exp>``
    one temperature per experiment;
``arithmetic`` / ``geometric``
    the calibrated experiments pooled with simplex weights (:func:`crowdai.ensemble.combine`);
``stacking`` (``--stacking``)
    multinomial logistic regression on the experiments' log-probabilities, C by CV.

Every stage is scored *cross-fitted*: for each fold ``k`` of the folds the out-of-fold
rows came from, it is fitted on the other folds and predicts fold ``k``; the scores (log
loss, macro F1, accuracy, expected calibration error) are those of the held-out
predictions, so an in-sample fit cannot pass for an improvement. The blend keeps the
simplest stage whose cross-fitted log loss is within ``--tolerance`` (relative) of the
best, refits it on every common track, and fits the submission's probability floor
(:func:`crowdai.submission.apply_floor`) on that stage's cross-fitted predictions.

The zero-shot musicnn tagger joins like any experiment once ``make zero-shot-oof`` has written
its ``RUNS/musicnn/oof.csv`` (:mod:`crowdai.zero_shot_oof`): ``--exp musicnn,crnn``.

Writes ``OUT/<name>/`` (default ``RUNS/blends/<exp1+exp2>``): ``blend.json`` (every fitted
parameter of every stage, the chosen stage, the floor, the training prior, the
experiments with their ``oof.csv`` sha256 and git commits, a zero-shot experiment with its
record: weights, rule, prior and weight; the scores), ``blend.md`` and
``blend.csv`` (the score table) and ``reliability.png``. An existing blend is never
replaced without ``--overwrite``. ``make submit BLEND=<name>`` applies it to the test set.

``blend.json`` is written last and carries its own ``"checksum"``: the sha256 of its content
without that key, in canonical JSON (:func:`blend_checksum`). :func:`read_blend` (``submit``,
``package``) checks it every time (a blend is small): a damaged blend is an error naming the file
and the ``make blend`` command that fits it again. Blends written before the checksum are read
unchecked. The report files (``blend.md``, ``blend.csv``, ``reliability.png``) are never read back.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from common import metrics
from common.cli import command
from common.errors import ConfigError, OutputExistsError, ToolkitError
from common.io import file_sha256
from common.runs import fold_dirs, verify_folds
from crowdai import calibration
from crowdai.ensemble import combine
from crowdai.submission import PROBABILITY_FLOOR, apply_floor
from crowdai.zero_shot_oof import read_zero_shot_record
from crowdai.zero_shot_oof import refit_command as zero_shot_refit
from crowdai.zero_shot_submit import ZERO_SHOT_EXP

#: Stage kinds, simplest first (ties in cross-fitted log loss go to the simpler one).
STAGE_KINDS: tuple[str, ...] = ("raw", "calibrated", "arithmetic", "geometric", "stacking")

#: Default relative log-loss margin within which a simpler stage is kept.
DEFAULT_TOLERANCE = 0.005

#: Bins of the reliability diagram and of the expected calibration error.
N_BINS = 10

#: Range searched for a fitted probability floor.
FLOOR_BOUNDS: tuple[float, float] = (PROBABILITY_FLOOR, 0.05)

#: Files of a blend folder.
BLEND_FILES: tuple[str, ...] = ("blend.json", "blend.md", "blend.csv", "reliability.png")


@dataclasses.dataclass
class OutOfFold:
    """Out-of-fold predictions of several experiments on their common tracks.

    Attributes
    ----------
    experiments : list of str
    class_names : tuple of str, length C
    ids : np.ndarray, shape (n,), str
        Common track ids, sorted.
    y : np.ndarray, shape (n,), int
        True class indices.
    folds : np.ndarray, shape (n,), int
        Fold of each row in the first experiment (the cross-fitting folds).
    probs : list of np.ndarray, each shape (n, C)
        One matrix per experiment, rows aligned with ``ids``.
    sources : list of dict
        Per experiment: ``name, oof, oof_sha256, rows, git_commits``.
    folds_agree : bool
        Every experiment put every common track in the same fold.
    """

    experiments: list[str]
    class_names: tuple[str, ...]
    ids: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    probs: list[np.ndarray]
    sources: list[dict[str, Any]]
    folds_agree: bool

    def take(self, rows: np.ndarray) -> list[np.ndarray]:
        """Every experiment's probabilities of ``rows``."""
        return [p[rows] for p in self.probs]


def _git_commits(exp_dir: Path) -> list[str]:
    commits = (fold / "git_commit.txt" for fold in fold_dirs(exp_dir))
    return sorted({path.read_text().strip() for path in commits if path.is_file()})


def read_oof(runs: str | Path, name: str, *, allow_diverged: bool = False) -> pd.DataFrame:
    """``RUNS/<name>/oof.csv`` of a single-label experiment, indexed by ``id`` (str).

    The experiment's finished folds are checked first (:func:`common.runs.verify_folds`,
    with sha256): a damaged fold is not blended, nor a failed or diverged one unless
    ``allow_diverged``.

    Raises
    ------
    ToolkitError
        Missing file, wrong columns, or targets that are not class columns (a multi-label
        experiment), naming the file.
    DamagedFoldError, DivergedFoldError
        A fold's ``model.keras`` or ``oof.csv`` differs from what its summary records, or it
        failed or diverged (:class:`~common.errors.FailedFoldError` is a ``DivergedFoldError``).

    A zero-shot experiment (``RUNS/<name>/zero_shot.json``, :mod:`crowdai.zero_shot_oof`) has no
    folds; its ``oof.csv`` is checked against the size and sha256 its record holds.
    """
    verify_folds(Path(runs) / name, hash=True, allow_diverged=allow_diverged)
    read_zero_shot_record(Path(runs) / name)
    path = Path(runs) / name / "oof.csv"
    if not path.is_file():
        if name == ZERO_SHOT_EXP:
            raise ToolkitError(f"{path}: missing; the zero-shot tagger's out-of-fold file is written by "
                               f"{zero_shot_refit(name)}")
        raise ToolkitError(f"{path}: missing; it is written when every fold of {name!r} is trained "
                           f"(make train EXP={name})")
    oof = pd.read_csv(path, dtype={"id": str, "target": str}, keep_default_na=False)
    if list(oof.columns[:3]) != ["id", "fold", "target"] or len(oof.columns) < 5:
        raise ToolkitError(f"{path}: expected columns id, fold, target, then one per class; got {list(oof.columns)}")
    classes = list(oof.columns[3:])
    unknown = sorted(set(oof["target"]) - set(classes))
    if unknown:
        raise ToolkitError(f"{path}: targets {unknown[:3]} are not class columns; only single-label "
                           f"experiments can be blended")
    if oof["id"].duplicated().any():
        raise ToolkitError(f"{path}: duplicated id {oof['id'][oof['id'].duplicated()].iloc[0]!r}")
    return oof.set_index("id")


def load_out_of_fold(runs: str | Path, names: Sequence[str], *, allow_diverged: bool = False) -> OutOfFold:
    """The out-of-fold predictions of ``names`` on the tracks they all predicted.

    ``allow_diverged``: blend experiments with failed or diverged folds too (:func:`read_oof`).

    Raises
    ------
    ToolkitError
        An experiment is missing or multi-label, the experiments have different classes,
        disagree on a track's target, or share no track; a fold is damaged, failed or diverged.
    """
    tables = [read_oof(runs, name, allow_diverged=allow_diverged) for name in names]
    class_names = tuple(tables[0].columns[2:])
    for name, table in zip(names, tables):
        if tuple(table.columns[2:]) != class_names:
            raise ToolkitError(f"{Path(runs) / name / 'oof.csv'}: classes {list(table.columns[2:])} differ from "
                               f"those of {names[0]!r} {list(class_names)}")
    ids = tables[0].index
    for table in tables[1:]:
        ids = ids.intersection(table.index)
    ids = ids.sort_values()
    if not len(ids):
        raise ToolkitError(f"experiments {list(names)} share no out-of-fold track")
    targets = tables[0].loc[ids, "target"]
    for name, table in zip(names[1:], tables[1:]):
        differ = table.loc[ids, "target"] != targets
        if differ.any():
            raise ToolkitError(f"{name!r} and {names[0]!r} disagree on the target of {int(differ.sum())} tracks, "
                               f"e.g. {differ.index[differ.to_numpy()][0]!r}")
    folds = [table.loc[ids, "fold"].to_numpy(np.int64) for table in tables]
    sources = [_source(Path(runs), name, table) for name, table in zip(names, tables)]
    return OutOfFold(experiments=list(names), class_names=class_names, ids=ids.to_numpy(),
                     y=targets.map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64),
                     folds=folds[0], probs=[t.loc[ids, list(class_names)].to_numpy(np.float64) for t in tables],
                     sources=sources, folds_agree=all(np.array_equal(folds[0], f) for f in folds[1:]))


def _source(runs: Path, name: str, table: pd.DataFrame) -> dict[str, Any]:
    """What ``blend.json`` records of one experiment: ``name, oof, oof_sha256, rows, git_commits``, and
    for a zero-shot experiment its ``zero_shot`` record (weights, rule, prior and weight)."""
    source = {"name": name, "oof": str(runs / name / "oof.csv"), "oof_sha256": file_sha256(runs / name / "oof.csv"),
              "rows": int(len(table)), "git_commits": _git_commits(runs / name)}
    record = read_zero_shot_record(runs / name)
    return source if record is None else {**source, "zero_shot": record}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One way of turning the experiments' probabilities into one matrix.

    Attributes
    ----------
    kind : str
        One of :data:`STAGE_KINDS`.
    experiment : int or None
        Index of the experiment of a ``raw`` or ``calibrated`` stage.
    """

    kind: str
    experiment: int | None = None

    def name(self, experiments: Sequence[str]) -> str:
        return self.kind if self.experiment is None else f"{self.kind}:{experiments[self.experiment]}"

    @property
    def index(self) -> int:
        """Position of the one experiment of a ``raw`` or ``calibrated`` stage."""
        if self.experiment is None:
            raise ValueError(f"stage {self.kind!r} pools every experiment, not one")
        return self.experiment

    def fit(self, probs: list[np.ndarray], y: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
        """JSON-ready parameters fitted on ``(probs, y)``; ``folds`` groups stacking's CV."""
        if self.kind == "raw":
            return {}
        if self.kind == "calibrated":
            return {"temperature": calibration.fit_temperature(probs[self.index], y)}
        if self.kind in ("arithmetic", "geometric"):
            temperatures = [calibration.fit_temperature(p, y) for p in probs]
            calibrated = [calibration.apply_temperature(p, t) for p, t in zip(probs, temperatures)]
            weights = calibration.fit_pool_weights(calibrated, y, mean=self.kind)
            return {"temperatures": temperatures, "weights": weights.tolist()}
        return calibration.fit_stacking(probs, y, groups=folds)

    def apply(self, params: dict[str, Any], probs: list[np.ndarray]) -> np.ndarray:
        """Probabilities ``(n, C)`` of fitted ``params`` on the experiments' ``probs``."""
        if self.kind == "raw":
            return np.asarray(probs[self.index], dtype=np.float64)
        if self.kind == "calibrated":
            return calibration.apply_temperature(probs[self.index], params["temperature"])
        if self.kind in ("arithmetic", "geometric"):
            calibrated = [calibration.apply_temperature(p, t) for p, t in zip(probs, params["temperatures"])]
            return combine(calibrated, weights=np.asarray(params["weights"]), mean=self.kind)
        return calibration.apply_stacking(params, probs)

    @classmethod
    def parse(cls, name: str, experiments: Sequence[str]) -> Stage:
        kind, _, experiment = name.partition(":")
        if kind not in STAGE_KINDS or bool(experiment) != (kind in ("raw", "calibrated")):
            raise ConfigError(f"unknown blend stage {name!r}")
        return cls(kind, experiments.index(experiment) if experiment else None)


def stages_for(n_experiments: int, *, stacking: bool) -> list[Stage]:
    """Every stage of a blend of ``n_experiments``, simplest first."""
    stages = [Stage(kind, i) for kind in ("raw", "calibrated") for i in range(n_experiments)]
    if n_experiments > 1:
        stages += [Stage("arithmetic"), Stage("geometric")]
    if stacking:
        stages.append(Stage("stacking"))
    return stages


def cross_fit(stage: Stage, oof: OutOfFold) -> np.ndarray:
    """Held-out predictions ``(n, C)``: for each fold, ``stage`` fitted on the other folds.

    Raises
    ------
    ToolkitError
        The rows come from fewer than two folds.
    """
    fold_values = np.unique(oof.folds)
    if len(fold_values) < 2:
        raise ToolkitError(f"the out-of-fold rows come from {len(fold_values)} fold; cross-fitting needs two")
    out = np.empty_like(oof.probs[0])
    for fold in fold_values:
        held_out = oof.folds == fold
        train = ~held_out
        params = stage.fit(oof.take(train), oof.y[train], oof.folds[train])
        out[held_out] = stage.apply(params, oof.take(held_out))
    return out


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, *, n_bins: int = N_BINS) -> float:
    """Top-class expected calibration error: ``sum_b |acc_b - conf_b| n_b / n`` over ``n_bins`` equal bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return float(sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
                     for b in np.unique(bins)) / len(y))


def score(probs: np.ndarray, oof: OutOfFold) -> dict[str, float]:
    """Leaderboard scores (:func:`common.metrics.score`) and the ECE of ``probs`` against ``oof.y``."""
    scores = metrics.score("single", oof.y, probs, oof.class_names)
    scores["ece"] = expected_calibration_error(probs, oof.y)
    return scores


def choose(scores: dict[str, dict[str, float]], stages: Sequence[Stage], experiments: Sequence[str], *,
           tolerance: float) -> Stage:
    """The simplest stage whose log loss is at most ``(1 + tolerance)`` times the best one."""
    best = min(s["log_loss"] for s in scores.values())
    kept = [s for s in stages if scores[s.name(experiments)]["log_loss"] <= best * (1 + tolerance)]
    return min(kept, key=lambda s: (STAGE_KINDS.index(s.kind), scores[s.name(experiments)]["log_loss"]))


def fit_floor(probs: np.ndarray, y: np.ndarray) -> float:
    """The ``eps`` of :func:`crowdai.submission.apply_floor` minimising the log loss of ``probs``."""
    import scipy.optimize

    low, high = np.log(FLOOR_BOUNDS)
    result = scipy.optimize.minimize_scalar(
        lambda log_eps: calibration.nll(apply_floor(probs, float(np.exp(log_eps))), y),
        bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def train_prior(oof: OutOfFold) -> np.ndarray:
    """Class frequencies of the common tracks' targets, add-one smoothed: ``(C,)``."""
    counts = np.bincount(oof.y, minlength=len(oof.class_names)).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + len(counts))


def fit_blend(oof: OutOfFold, *, stacking: bool = False, tolerance: float = DEFAULT_TOLERANCE,
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Cross-fit and score every stage, choose one, refit everything on all common tracks.

    Parameters
    ----------
    oof : OutOfFold
    stacking : bool
        Include the stacking stage.
    tolerance : float
        Relative log-loss margin of :func:`choose`.

    Returns
    -------
    document : dict
        What ``blend.json`` holds (without the name and file paths): ``stages`` (name →
        ``params``, cross-fitted ``scores``), ``chosen``, ``floor``, ``final_scores`` (the
        chosen stage's cross-fitted predictions with the floor), ``train_prior`` …
    cross_fitted : dict of str to np.ndarray, shape (n, C)
        Held-out predictions of every stage (for the reliability diagram).
    """
    from threadpoolctl import threadpool_limits

    experiments = oof.experiments
    stages = stages_for(len(experiments), stacking=stacking)
    # One BLAS thread: these problems are small, and on a busy machine OpenBLAS threads
    # spinning inside L-BFGS-B made stacking 15x slower (98 s against 6 s, 1500 rows).
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_blend(oof, stages, tolerance=tolerance)


def _fit_blend(oof: OutOfFold, stages: list[Stage], *, tolerance: float,
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    experiments = oof.experiments
    cross_fitted = {s.name(experiments): cross_fit(s, oof) for s in stages}
    scores = {name: score(probs, oof) for name, probs in cross_fitted.items()}
    chosen = choose(scores, stages, experiments, tolerance=tolerance)
    chosen_name = chosen.name(experiments)
    floor = fit_floor(cross_fitted[chosen_name], oof.y)
    document = {
        "experiments": oof.sources, "class_names": list(oof.class_names),
        "common_tracks": int(len(oof.ids)), "folds": sorted(int(f) for f in np.unique(oof.folds)),
        "folds_agree": oof.folds_agree, "tolerance": tolerance,
        "stages": {s.name(experiments): {"kind": s.kind, "params": s.fit(oof.probs, oof.y, oof.folds),
                                         "scores": scores[s.name(experiments)]} for s in stages},
        "chosen": chosen_name, "floor": floor,
        "final_scores": score(apply_floor(cross_fitted[chosen_name], floor), oof),
        "train_prior": dict(zip(oof.class_names, train_prior(oof).tolist())),
    }
    return document, cross_fitted


@dataclasses.dataclass(frozen=True)
class FittedBlend:
    """A ``blend.json``, ready to apply to test predictions.

    Attributes
    ----------
    path : Path
    sha256 : str
        Of the ``blend.json`` file.
    document : dict
        Its contents.
    """

    path: Path
    sha256: str
    document: dict[str, Any]

    @property
    def experiments(self) -> list[str]:
        return [source["name"] for source in self.document["experiments"]]

    @property
    def chosen(self) -> str:
        return self.document["chosen"]

    @property
    def floor(self) -> float:
        return float(self.document["floor"])

    @property
    def train_prior(self) -> np.ndarray:
        """``(C,)`` in ``class_names`` order."""
        return np.array([self.document["train_prior"][c] for c in self.document["class_names"]])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.document["class_names"])

    @property
    def zero_shot(self) -> dict[str, dict[str, Any]]:
        """Zero-shot experiment name → its record (:mod:`crowdai.zero_shot_oof`), for those the blend holds."""
        return {source["name"]: source["zero_shot"] for source in self.document["experiments"] if "zero_shot" in source}

    @property
    def used_experiments(self) -> list[str]:
        """The experiments the chosen stage reads: its one for ``raw``/``calibrated``, else all."""
        stage = Stage.parse(self.chosen, self.experiments)
        return self.experiments if stage.experiment is None else [self.experiments[stage.experiment]]

    def weights(self) -> dict[str, float] | None:
        """Experiment → weight of a pool stage (None for the other stages)."""
        params = self.document["stages"][self.chosen]["params"]
        return dict(zip(self.experiments, params["weights"])) if "weights" in params else None

    def apply(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The chosen stage on test probabilities (experiment name → ``(n, C)``; those of
        :attr:`used_experiments` are enough), before the floor."""
        missing = [name for name in self.used_experiments if name not in probs]
        if missing:
            raise ToolkitError(f"{self.path}: no predictions of experiments {missing}")
        stage = Stage.parse(self.chosen, self.experiments)
        # the stage reads only the used experiments' entries; the others may be None
        by_position = cast(list[np.ndarray], [probs.get(name) for name in self.experiments])
        return stage.apply(self.document["stages"][self.chosen]["params"], by_position)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for a submission's sidecar."""
        return {"path": str(self.path), "sha256": self.sha256, "name": self.document.get("name"),
                "chosen": self.chosen, "floor": self.floor,
                "cross_fitted_log_loss": self.document["final_scores"]["log_loss"]}


def blend_path(name: str, *, runs: str | Path) -> Path:
    """``RUNS/blends/<name>/blend.json``, or ``name`` itself when it is a ``.json`` file."""
    path = Path(name)
    if path.suffix == ".json":
        return path
    return Path(runs) / "blends" / name / "blend.json"


def blend_checksum(document: dict[str, Any]) -> str:
    """The sha256 of a blend document without its ``"checksum"``, in canonical JSON (sorted keys,
    no spaces): what ``blend.json`` records as ``"checksum"`` (whitespace and key order aside,
    any change of its content changes it)."""
    content = {key: value for key, value in document.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def refit_command(path: Path, document: dict[str, Any] | None = None) -> str:
    """The ``make blend`` command that fits the blend of ``path`` again (its experiments, name and
    stacking from ``document`` when it is readable)."""
    document = document or {}
    experiments = ",".join(str(s.get("name")) for s in document.get("experiments") or []) or "<experiments>"
    stacking = "--stacking " if "stacking" in (document.get("stages") or {}) else ""
    return (f"make blend EXP={experiments} NAME={document.get('name') or path.parent.name} "
            f'BLEND_ARGS="{stacking}--overwrite"')


def load_blend(name: str, *, runs: str | Path) -> FittedBlend:
    """The fitted blend ``name`` (a name under ``RUNS/blends`` or a ``blend.json`` path), checked by :func:`read_blend`.

    Raises
    ------
    ToolkitError
        No such blend (the message lists the blends there), or :func:`read_blend`'s errors.
    """
    path = blend_path(name, runs=runs)
    if not path.is_file():
        folder = Path(runs) / "blends"
        known = sorted(p.parent.name for p in folder.glob("*/blend.json")) if folder.is_dir() else []
        raise ToolkitError(f"{path}: no such blend (in {folder}: {known}); fit one with make blend EXP=a,b")
    return read_blend(path)


def read_blend(path: Path) -> FittedBlend:
    """The blend file ``path``, its ``"checksum"`` checked (:func:`blend_checksum`; a blend written before
    the checksum is read unchecked).

    Raises
    ------
    ToolkitError
        An unreadable file, not a blend, or one whose content does not match its checksum; the
        message names the file and the command that fits the blend again.
    """
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
        Stage.parse(document["chosen"], [s["name"] for s in document["experiments"]])
    except (ValueError, KeyError, TypeError) as error:
        raise ToolkitError(f"{path}: not a blend file ({error}); if it was one, it is damaged: fit it again "
                           f"with `{refit_command(path)}`") from error
    if "checksum" in document and document["checksum"] != blend_checksum(document):
        raise ToolkitError(f"{path}: damaged: its content differs from the checksum it was written with; "
                           f"fit it again with `{refit_command(path, document)}`")
    return FittedBlend(path=path, sha256=hashlib.sha256(raw).hexdigest(), document=document)


def report_table(document: dict[str, Any]) -> pd.DataFrame:
    """One row per stage, then the chosen stage with its floor: scores and parameters."""
    rows = []
    for name, stage in document["stages"].items():
        params = stage["params"]
        if "temperature" in params:
            shown = f"T={params['temperature']:.3f}"
        elif "weights" in params:
            shown = ("T=" + "/".join(f"{t:.3f}" for t in params["temperatures"])
                     + " w=" + "/".join(f"{w:.3f}" for w in params["weights"]))
        elif "C" in params:
            shown = f"C={params['C']:.3g}"
        else:
            shown = ""
        rows.append({"stage": name, **{k: stage["scores"][k] for k in ("log_loss", "macro_f1", "accuracy", "ece")},
                     "params": shown, "chosen": name == document["chosen"]})
    final = document["final_scores"]
    rows.append({"stage": f"{document['chosen']} + floor", **{k: final[k] for k in ("log_loss", "macro_f1",
                                                                                        "accuracy", "ece")},
                 "params": f"eps={document['floor']:.3g}", "chosen": True})
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, document: dict[str, Any]) -> str:
    """The report: what was blended, then the score table (cross-fitted, out of fold)."""
    shown = table.assign(**{k: table[k].map(lambda v: f"{v:.4f}") for k in ("log_loss", "macro_f1", "accuracy",
                                                                           "ece")})
    shown["chosen"] = shown["chosen"].map({True: "✓", False: ""})
    names = ", ".join(s["name"] for s in document["experiments"])
    folds_note = "" if document["folds_agree"] else " (of the first experiment; the experiments used other folds)"
    head = (f"# Blend {document['name']}\n\nExperiments: {names}; {document['common_tracks']} common tracks, "
            f"folds {document['folds']}{folds_note}. "
            f"Scores are cross-fitted: each fold is predicted by the stage fitted on the other folds. "
            f"Chosen: the simplest stage within {document['tolerance']:.1%} of the best log loss.\n\n")
    lines = ["| " + " | ".join(shown.columns) + " |", "| " + " | ".join(["---"] * len(shown.columns)) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return head + "\n".join(lines) + "\n"


def plot_reliability(curves: dict[str, np.ndarray], y: np.ndarray, *, out: Path, title: str) -> Path:
    """Reliability diagram: top-class confidence against accuracy in :data:`N_BINS` bins per curve.

    Parameters
    ----------
    curves : dict of str to np.ndarray, shape (n, C)
        Label → predicted probabilities.
    y : np.ndarray, shape (n,), int
    out : Path
        PNG to write.
    title : str
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, probs in curves.items():
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
        bins = np.minimum((confidence * N_BINS).astype(int), N_BINS - 1)
        used = np.unique(bins)
        ax.plot([confidence[bins == b].mean() for b in used], [correct[bins == b].mean() for b in used],
                marker="o", label=f"{label} (ECE {expected_calibration_error(probs, y):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-class confidence (mean per bin)", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    figure.savefig(out, dpi=110)
    return out


def write_blend(out_dir: Path, document: dict[str, Any], cross_fitted: dict[str, np.ndarray], oof: OutOfFold, *,
                overwrite: bool = False) -> list[Path]:
    """Write the :data:`BLEND_FILES` of a fitted blend into ``out_dir``, ``blend.json`` last with its ``"checksum"``.

    Raises
    ------
    OutputExistsError
        ``out_dir/blend.json`` exists and ``overwrite`` is false (nothing is written).
    """
    from common.io import write_text_atomic

    json_path = out_dir / "blend.json"
    if json_path.exists() and not overwrite:
        raise OutputExistsError(json_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = report_table(document)
    write_text_atomic(out_dir / "blend.csv", table.to_csv(index=False, float_format="%.6g"), overwrite=True)
    write_text_atomic(out_dir / "blend.md", to_markdown(table, document), overwrite=True)
    best_raw = min((n for n in cross_fitted if n.startswith("raw:")), key=lambda n: document["stages"][n]["scores"]
                   ["log_loss"])
    curves = {best_raw: cross_fitted[best_raw], best_raw.replace("raw:", "calibrated:"):
              cross_fitted[best_raw.replace("raw:", "calibrated:")]}
    curves.setdefault(document["chosen"], cross_fitted[document["chosen"]])
    plot_reliability(curves, oof.y, out=out_dir / "reliability.png",
                     title=f"blend {document['name']}: cross-fitted out-of-fold reliability")
    document = {**document, "checksum": blend_checksum(json.loads(json.dumps(document)))}  # as it will be read
    write_text_atomic(json_path, json.dumps(document, indent=2) + "\n", overwrite=overwrite)
    return [out_dir / name for name in BLEND_FILES]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-blend", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", required=True, help="experiment names, comma-separated: crnn,shortchunk")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--name", default=None, help="blend name (default: exp1+exp2)")
    parser.add_argument("--out", type=Path, default=None, help="blends folder (default: RUNS/blends)")
    parser.add_argument("--stacking", action="store_true",
                        help="also fit a logistic-regression stack on the log-probabilities (C by CV)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"keep the simplest stage within this relative log loss of the best "
                             f"(default: {DEFAULT_TOLERANCE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing blend of that name")
    parser.add_argument("--allow-diverged", action="store_true",
                        help="blend experiments with failed or diverged folds too (refused by default)")
    return parser


@command("fma-blend")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.exp.split(",") if name.strip()]
    name = args.name or "+".join(names)
    out_dir = (args.out or args.runs / "blends") / name
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--exp {args.exp!r}: give distinct experiment names, comma-separated")
    if not 0 <= args.tolerance < 1:
        raise ConfigError(f"--tolerance {args.tolerance}: must be in [0, 1)")
    if (out_dir / "blend.json").exists() and not args.overwrite:
        raise ToolkitError(f"{out_dir / 'blend.json'} already exists; not overwriting it "
                           f"(choose another --name, or pass --overwrite)")
    oof = load_out_of_fold(args.runs, names, allow_diverged=args.allow_diverged)
    document, cross_fitted = fit_blend(oof, stacking=args.stacking, tolerance=args.tolerance)
    document = {"name": name, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                **document}
    written = write_blend(out_dir, document, cross_fitted, oof, overwrite=args.overwrite)
    table = report_table(document)
    print(f"blend {name}: {document['common_tracks']} common tracks of {', '.join(names)}; cross-fitted "
          f"out-of-fold scores over folds {document['folds']}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"blend: chose {document['chosen']} (floor eps {document['floor']:.3g}) -> "
          + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
