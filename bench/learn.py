"""Cross-validated log loss of the demo's data levers against `demo`, as a median over seeds.

    python -m bench.learn --data data/demo --cache cache/demo --work runs/bench-learn \\
        --seeds 0,1,2 --k 3 --out bench/learn.json

Every variant trains on the demo's subset ``large`` (``make demo-data``: about half of its
extra tracks have no ``genre_top``) with one artist-grouped K-fold file written once into
``--work``, and is scored on the same out-of-fold tracks, those with a ``genre_top``; each
seed trains every variant again (``training.seed``). The baseline is ``demo``; each lever
(:data:`LEVERS`) is the demo config that asks for it, identical otherwise:

- ``multi_root``: ``demo_multi_root``, the tracks without a ``genre_top`` as soft targets;
- ``multitask``: ``demo_multitask``, an auxiliary sigmoid head over the genre tree;
- ``pseudo_labels``: ``demo_pseudo``, trained again on the demo's unlabelled test folder with
  the pseudo-labels of the same seed's ``demo`` fold models (``--threshold``), fold ``k`` on
  those of fold ``k``'s model (``per_fold``);
- ``pseudo_labels_ensemble``: the same with the whole fold ensemble's labels for every fold
  (``per_fold: false``), whose other models saw fold ``k``'s validation tracks: how much
  that flatters the CV;
- ``short_clips``: ``demo_short_clips``, chunks and crops of clips under 9.5 s kept to their audio.

Records per variant the out-of-fold log loss and accuracy of each seed (pooled over the
scored tracks) with their median, min and max, the test-split log loss of the fold ensemble,
and per lever the paired differences of both to the baseline of the same seed (no model or
pseudo-label ever saw a test-split track). ``--work`` keeps the runs: a second call reuses
finished folds and pseudo-label files (delete it to measure afresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.cli import command
from common.config import ExperimentConfig, config_from_dict, load_config
from common.errors import ToolkitError
from common.io import write_text_atomic

#: The experiment every lever is compared with.
BASELINE = "demo"
#: Lever name -> the variant that pulls it: a demo config, or one of :data:`DERIVED`.
LEVERS: dict[str, str] = {"multi_root": "demo_multi_root", "multitask": "demo_multitask",
                          "pseudo_labels": "demo_pseudo", "pseudo_labels_ensemble": "demo_pseudo_ensemble_labels",
                          "short_clips": "demo_short_clips"}
#: Variants without a config of their own: name -> (the demo config, keys of its data.pseudo_labels replaced).
DERIVED: dict[str, tuple[str, dict[str, Any]]] = {"demo_pseudo_ensemble_labels": ("demo_pseudo", {"per_fold": False})}
#: The subset every variant trains on: the only demo subset with tracks without a genre_top.
SUBSET = "large"
#: The demo's unlabelled folder (crowdAI-style test clips), relative to ``--data``.
UNLABELLED = "crowdai_fma_test"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where the variants of one call train: data folder, folds file, feature cache root, runs root."""

    data: Path
    folds: Path
    cache: Path
    work: Path
    pseudo_threshold: float


def config_file(name: str) -> Path:
    """The demo config a variant trains (:data:`DERIVED` or its own name)."""
    return CONFIG_DIR / f"{DERIVED.get(name, (name, {}))[0]}.yaml"


def variant_config(name: str, *, seed: int, epochs: int | None, pseudo_labels: Path) -> ExperimentConfig:
    """:func:`config_file` of ``name`` with ``training.seed``, optionally ``training.epochs``, and the
    path (and :data:`DERIVED` keys) of its ``data.pseudo_labels`` replaced."""
    values = yaml.safe_load(config_file(name).read_text())
    values["training"] = {**values.get("training", {}), "seed": seed, **({"epochs": epochs} if epochs else {})}
    if "pseudo_labels" in values.get("data", {}):
        values["data"]["pseudo_labels"] = {**values["data"]["pseudo_labels"], "path": str(pseudo_labels),
                                           **DERIVED.get(name, (name, {}))[1]}
    return config_from_dict(values, name=name)


def prepare(*, data: Path, cache: Path, work: Path, k: int, n_jobs: int, pseudo_threshold: float) -> Setup:
    """Extract the demo features of subset ``large`` (only missing shards) and write the folds file once.

    Raises
    ------
    ToolkitError
        The variants do not share the baseline's feature settings, or the data folder is not
        a demo dataset with a ``large`` subset (``make demo-data``).
    """
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, read_folds, write_folds
    from common.metadata import FmaDataset

    settings = load_config(config_file(BASELINE)).features
    for lever, name in LEVERS.items():
        if load_config(config_file(name)).features != settings:
            raise ToolkitError(f"{config_file(name)}: its features differ from {BASELINE}.yaml's; lever {lever!r} "
                               "must change one thing only")
    dataset = FmaDataset.open(data, SUBSET)
    if not (data / UNLABELLED).is_dir():
        raise ToolkitError(f"{data / UNLABELLED}: missing; generate the demo dataset with make demo-data")
    extract(dataset.items(), settings=settings, cache_dir=cache_dir_for(cache, dataset.feature_source, settings),
            n_jobs=n_jobs, progress=False)
    folds = work / f"folds-{SUBSET}-k{k}.csv"
    if folds.exists():
        read_folds(folds, tracks=dataset.tracks)  # checked against the metadata
    else:
        write_folds(folds, make_folds(dataset.tracks, k=k, seed=0), subset=SUBSET, k=k, seed=0)
    return Setup(data=data, folds=folds, cache=cache, work=work, pseudo_threshold=pseudo_threshold)


def train_variant(config: ExperimentConfig, setup: Setup, *, runs: Path) -> dict:
    """Train (or finish) every fold of ``config`` into ``runs/<name>``; the experiment summary."""
    from experiments.experiment import open_experiment_data, train_experiment

    exp_data = open_experiment_data(config, data=setup.data, subset=SUBSET, folds_path=setup.folds,
                                    cache=setup.cache)
    summary = train_experiment(config, exp_data, runs=runs)
    if summary is None:
        raise ToolkitError(f"{runs / config.name}: a fold failed (its loss stopped being finite); see its summary.json")
    return summary


def pseudo_label_file(setup: Setup, *, runs: Path, out: Path) -> dict[str, Any]:
    """Write ``out`` once: the pseudo-labels of the unlabelled folder from ``runs/demo``'s fold models, with
    labels per fold; the counts of its sidecar."""
    from common.io import sidecar_path
    from crowdai.pseudo import build_parser, make_pseudo_labels

    if not out.exists():
        args = build_parser().parse_args([
            "--exp", BASELINE, "--runs", str(runs), "--unlabelled", str(setup.data / UNLABELLED),
            "--cache", str(setup.cache), "--out", str(out), "--threshold", str(setup.pseudo_threshold),
            "--data", str(setup.data), "--subset", SUBSET, "--folds", str(setup.folds), "--no-progress"])
        make_pseudo_labels(args)
    return json.loads(sidecar_path(out).read_text())["rows"]


def score_variant(runs: Path, name: str) -> dict[str, Any]:
    """Out-of-fold log loss and accuracy of ``runs/<name>`` over all its scored tracks, and their ids."""
    from common.metrics import accuracy, log_loss
    from crowdai.blend import read_oof

    oof = read_oof(runs, name)
    classes = list(oof.columns[2:])
    y = oof["target"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    probs = oof[classes].to_numpy(np.float64)
    return {"ids": sorted(oof.index), "log_loss": log_loss(y, probs), "accuracy": accuracy(y, probs)}


def training_seconds(summary: dict) -> float:
    """Seconds its folds trained: epochs times seconds per epoch, summed over the experiment summary's folds."""
    return round(sum(fold["epochs"] * (fold["seconds_per_epoch"] or 0.0) for fold in summary["folds"]), 1)


def run_seed(setup: Setup, *, seed: int, epochs: int | None, levers: Sequence[str] = tuple(LEVERS),
             report: Callable[[str], object] = lambda line: None) -> dict[str, dict[str, Any]]:
    """Train and score the baseline and the ``levers`` (names of :data:`LEVERS`) with one seed, in ``work/seed_<seed>``.

    The pseudo-labels come from the baseline's fold models once they are trained.

    Returns
    -------
    dict
        Variant name -> ``log_loss``, ``accuracy``, ``test_log_loss``, ``train_seconds`` (its folds'
        epochs, as their summaries record them: the same when a second call reuses them), ``ids``
        (and ``pseudo_rows``, the counts of the pseudo-label file, for the variants that use it).
    """
    runs = setup.work / f"seed_{seed}"
    pseudo = runs / "pseudo" / f"{BASELINE}_t{setup.pseudo_threshold:g}.csv"
    results: dict[str, dict[str, Any]] = {}
    for name in (BASELINE, *(LEVERS[lever] for lever in levers)):
        config = variant_config(name, seed=seed, epochs=epochs, pseudo_labels=pseudo)
        extra = {"pseudo_rows": pseudo_label_file(setup, runs=runs, out=pseudo)} if config.data.pseudo_labels else {}
        summary = train_variant(config, setup, runs=runs)
        results[name] = {**score_variant(runs, name), **extra, "train_seconds": training_seconds(summary),
                         "test_log_loss": (summary.get("test") or {}).get("log_loss")}
        report(f"seed {seed} {name}: out-of-fold log loss {results[name]['log_loss']:.4f}, "
               f"accuracy {results[name]['accuracy']:.3f} ({results[name]['train_seconds']:.0f} s of training)")
    return results


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``{"values", "median", "min", "max"}`` of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return {"values": [round(float(v), 5) for v in array], "median": float(np.median(array)),
            "min": float(array.min()), "max": float(array.max())}


def summarise(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The benchmark record of :func:`run_seed`'s results by seed.

    Raises
    ------
    ToolkitError
        The variants of a seed scored different tracks (they would not be comparable).
    """
    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]])
    for seed in seeds:
        ids = per_seed[seed][BASELINE]["ids"]
        for name in names:
            if per_seed[seed][name]["ids"] != ids:
                raise ToolkitError(f"seed {seed}: {name} scored other tracks than {BASELINE}; not comparable")
    variants = {name: {"log_loss": spread([per_seed[s][name]["log_loss"] for s in seeds]),
                       "accuracy": spread([per_seed[s][name]["accuracy"] for s in seeds]),
                       "test_log_loss": spread([per_seed[s][name]["test_log_loss"] for s in seeds]),
                       "train_seconds": round(sum(per_seed[s][name]["train_seconds"] for s in seeds), 1)}
                for name in names}
    levers = {}
    for lever, name in ((lever, name) for lever, name in LEVERS.items() if name in names):
        differences = [per_seed[s][name]["log_loss"] - per_seed[s][BASELINE]["log_loss"] for s in seeds]
        lower, higher = sum(d < 0 for d in differences), sum(d > 0 for d in differences)
        test_differences = [per_seed[s][name]["test_log_loss"] - per_seed[s][BASELINE]["test_log_loss"]
                            for s in seeds]
        levers[lever] = {"config": name, "log_loss_difference": spread(differences), "lower_in_seeds": lower,
                         "higher_in_seeds": higher, "test_log_loss_difference": spread(test_differences),
                         "verdict": ("lower in every seed" if lower == len(seeds) else
                                     "higher in every seed" if higher == len(seeds) else
                                     f"mixed: lower in {lower}, higher in {higher} of {len(seeds)} seeds")}
    pseudo_rows = next((v["pseudo_rows"] for v in per_seed[seeds[0]].values() if "pseudo_rows" in v), None)
    return {"baseline": BASELINE, "subset": SUBSET, "seeds": seeds,
            "scored_tracks": len(per_seed[seeds[0]][BASELINE]["ids"]), "variants": variants, "levers": levers,
            "pseudo_rows_seed_0": pseudo_rows}


def measure(*, data: Path, cache: Path, work: Path, seeds: Sequence[int], k: int, epochs: int | None,
            n_jobs: int, pseudo_threshold: float, levers: Sequence[str] = tuple(LEVERS),
            report: Callable[[str], object] = lambda line: None) -> dict:
    """Prepare once, run every seed, summarise (see the module docstring)."""
    setup = prepare(data=data, cache=cache, work=work, k=k, n_jobs=n_jobs, pseudo_threshold=pseudo_threshold)
    per_seed = {seed: run_seed(setup, seed=seed, epochs=epochs, levers=levers, report=report) for seed in seeds}
    return {**summarise(per_seed), "k": k, "epochs": epochs or "as configured",
            "pseudo_threshold": pseudo_threshold, "folds": str(setup.folds)}


def _spread_text(measured: dict[str, Any], *, signed: bool = False) -> str:
    """``"median [min, max]"`` of a :func:`spread`, 4 decimals (with the sign when ``signed``)."""
    form = "+.4f" if signed else ".4f"
    return f"{measured['median']:{form}} [{measured['min']:{form}}, {measured['max']:{form}}]"


def summary_lines(record: dict) -> list[str]:
    """One line per variant: median CV log loss [min, max] over seeds, and the lever's paired differences
    (CV, then the test split's)."""
    variants = record["variants"]
    lines = [f"{record['baseline']}: CV log loss {_spread_text(variants[record['baseline']]['log_loss'])}"]
    for lever, measured in record["levers"].items():
        cv, test = measured["log_loss_difference"], measured["test_log_loss_difference"]
        lines.append(f"{lever} ({measured['config']}): {_spread_text(variants[measured['config']]['log_loss'])}, "
                     f"difference {_spread_text(cv, signed=True)}: {measured['verdict']}; "
                     f"test split {_spread_text(test, signed=True)}")
    return lines


def _levers(text: str) -> list[str]:
    levers = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(levers) - set(LEVERS))
    if not levers or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown lever(s) {unknown}; choose from {','.join(LEVERS)}")
    return levers


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds, e.g. 0,1,2")
    return seeds


@command("python -m bench.learn", resume="run it again: finished folds and pseudo-label files are kept")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learn", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="demo dataset (make demo-data)")
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="feature cache root")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-learn"), help="folds and runs of the benchmark")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="training seeds (default: 0,1,2)")
    parser.add_argument("--k", type=int, default=3, help="folds (default: 3)")
    parser.add_argument("--levers", type=_levers, default=list(LEVERS),
                        help=f"levers to measure, comma-separated (default: all of {','.join(LEVERS)})")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs (default: the configs')")
    parser.add_argument("--threshold", type=float, default=0.0, help="pseudo-label confidence threshold (default 0)")
    parser.add_argument("--jobs", type=int, default=-1, help="feature extraction processes (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path("bench/learn.json"), help="result JSON (replaced)")
    args = parser.parse_args(argv)
    record = measure(data=args.data, cache=args.cache, work=args.work, seeds=args.seeds, k=args.k,
                     epochs=args.epochs, n_jobs=args.jobs, pseudo_threshold=args.threshold, levers=args.levers,
                     report=lambda line: print(f"learn bench: {line}", flush=True))
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    print(f"learn bench: {record['scored_tracks']} scored tracks, {args.k} folds, seeds {record['seeds']} "
          f"(median [min, max] over seeds) -> {args.out}")
    for line in summary_lines(record):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
