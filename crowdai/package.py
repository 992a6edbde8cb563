"""A self-contained crowdAI round-2 folder: fold models, code, environment, README.

Usage::

    python -m crowdai.package --exp crnn,shortchunk --runs runs --out package_round2 \\
        [--blend runs/blends/NAME/blend.json] [--mean geometric] [--blend-weights 0.7,0.3] [--gpu] \\
        [--allow-diverged]

Round 2 of the challenge took a repository that ``repo2docker`` builds into an image; the
grader runs ``/home/crowdai/run.sh`` offline with ``TEST_DIRECTORY`` and ``OUTPUT_PATH``.
The folder written holds::

    run.sh              entry point: the packaged experiments, mean and weights as defaults
    crowdai/, common/   the toolkit's code run.sh needs (crowdai/run.sh -> crowdai.submit)
    runs/<exp>/         every finished fold's model.keras, config.yaml, classes.json,
                        summary.json, and the experiment's summary.json, oof.csv (training prior)
    models/musicnn/     musicnn's checkpoints, when an experiment uses them
    blend.json          the fitted blend, when --blend is given
    requirements.txt    exact pins, from pyproject.toml's dependencies (the one place they live)
    runtime.txt         python-3.11 (repo2docker's Python)
    apt.txt             system libraries (libsndfile1, libmpg123-0)
    aicrowd.json        the challenge's submission metadata (challenge_id, authors, description)
    package.json        what was packaged (experiments, CV scores, timing, blend)
    README.md           models, their CV scores, the expected run time for 3,000 clips

The expected run time comes from the fit ``T(K) = F + K * M`` of :mod:`crowdai.timing`,
measured on this machine with untrained models of each experiment's architecture and
feature settings over generated 30-s clips. Nothing in the folder needs the network.
An existing ``--out`` is never touched: the folder is built beside it and moved in place.

Every fold model is checked against the size and sha256 its fold's summary records, the blend
against its checksum, and a failed or diverged fold is refused unless ``--allow-diverged``
(the package's ``run.sh`` then exports ``ALLOW_DIVERGED=1``, for ``crowdai/run.sh`` to pass
``--allow-diverged`` on to ``crowdai.submit``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import command
from common.errors import OutputExistsError, ToolkitError
from common.io import _umask
from common.runs import finished_fold_dirs

#: The project root (pyproject.toml, common/, crowdai/).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Packages of the project the round-2 runner imports.
CODE_PACKAGES = ("common", "crowdai")

#: System libraries for repo2docker's apt.txt: soundfile's libsndfile, common.mp3's libmpg123.
APT_PACKAGES = ("libsndfile1", "libmpg123-0")

#: The round-2 challenge id of the starter kit's crowdai.json.
CHALLENGE_ID = "WWWMusicalGenreRecognitionChallenge"

#: Test clips of round 2, for the run-time estimate.
ROUND2_CLIPS = 3000

#: Files of ``runs/<exp>`` the runner reads (beside the finished folds).
EXPERIMENT_FILES = ("summary.json", "oof.csv", "classes.json")

#: Files of each finished ``runs/<exp>/fold_<k>`` the runner reads.
FOLD_FILES = ("model.keras", "config.yaml", "classes.json", "summary.json")


def pinned_requirements(pyproject: str | Path = PROJECT_ROOT / "pyproject.toml", *,
                        extras: Sequence[str] = ()) -> list[str]:
    """The project's dependencies (and those of ``extras``) as written in pyproject.toml.

    Raises
    ------
    ToolkitError
        pyproject.toml is missing, an extra is unknown, or a requirement is not an exact ``==`` pin.
    """
    pyproject = Path(pyproject)
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
        raise ToolkitError(f"{pyproject}: cannot read the project's dependencies ({error})") from None
    requirements = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ToolkitError(f"{pyproject}: no optional dependencies {extra!r} (known: {sorted(optional)})")
        requirements += optional[extra]
    loose = [r for r in requirements if "==" not in r]
    if loose:
        raise ToolkitError(f"{pyproject}: requirements without an exact == pin: {loose}")
    if "gpu" in extras:  # tensorflow[and-cuda]==X replaces tensorflow==X
        requirements = [r for r in requirements if not r.startswith("tensorflow==")]
    return requirements


def experiment_files(exp_dir: Path) -> list[Path]:
    """Paths, relative to ``exp_dir``, of what the runner needs from a trained experiment."""
    folds = finished_fold_dirs(exp_dir)
    files = [Path(name) for name in EXPERIMENT_FILES if (exp_dir / name).is_file()]
    for fold in folds:
        missing = [name for name in FOLD_FILES if not (fold / name).is_file()]
        if missing:
            raise ToolkitError(f"{fold}: finished fold without {missing}")
        files += [Path(fold.name) / name for name in FOLD_FILES]
    if not (exp_dir / "oof.csv").is_file():
        raise ToolkitError(f"{exp_dir / 'oof.csv'}: missing (written when every fold is trained); the runner "
                           f"needs it for files that do not decode")
    return files


def uses_musicnn_weights(config) -> bool:
    """Whether an experiment reads musicnn's checkpoints at prediction time (embedding features),
    or was built from them (pretrained musicnn body)."""
    from common.embeddings import EMBEDDING_CHECKPOINTS

    return config.features.kind in EMBEDDING_CHECKPOINTS or config.model.name == "musicnn"


def estimate_run_time(ensembles: Sequence, *, n_clips: int, clip_seconds: float = 30.0, jobs: int = -1,
                      target_clips: int = ROUND2_CLIPS) -> dict[str, Any]:
    """Expected seconds for ``target_clips`` clips: features once per feature setting plus K fold models each.

    Runs :func:`crowdai.timing.time_test_folder` for each experiment (its saved config,
    untrained models, K = 1 and the experiment's K (at least 2) over ``n_clips`` generated
    clips) and scales its fit ``T(K) = F + K * M``.

    Returns
    -------
    dict
        ``device``, ``load_average`` (1 min, during the runs), ``clips``, ``clip_seconds``,
        ``per_experiment`` (F, M, K), and
        ``features_seconds``, ``models_seconds``, ``total_seconds`` for ``target_clips``.
    """
    from crowdai.timing import time_test_folder

    per_experiment, feature_seconds, model_seconds, seen_settings, device, loads = {}, 0.0, 0.0, set(), None, []
    for ensemble in ensembles:
        config_path = ensemble.fold_dirs[0] / "config.yaml"
        result = time_test_folder(n_clips=n_clips, seconds=clip_seconds, folds=[1, max(len(ensemble.models), 2)],
                                  config_path=config_path, jobs=jobs)
        fit, means = result["fit"], result["measured_means"]
        features, per_fold, method = fit["F_seconds"], fit["M_seconds_per_fold"], "fit"
        if features <= 0 or per_fold <= 0:  # timing noise as large as one of the terms: use the direct means
            features, per_fold = means["feature_seconds"], means["model_seconds_per_fold"]
            method = "measured means (the fit had a term <= 0)"
        scale = target_clips / n_clips
        per_experiment[ensemble.name] = {"F_seconds": features, "M_seconds_per_fold": per_fold,
                                         "folds": len(ensemble.models), "method": method,
                                         "runs": result["runs"]}
        if ensemble.settings not in seen_settings:  # features are computed once per setting
            seen_settings.add(ensemble.settings)
            feature_seconds += features * scale
        model_seconds += len(ensemble.models) * per_fold * scale
        device = result["device"]
        loads.append(result["load_average"][0])
    return {"device": device, "load_average": round(max(loads), 1), "clips": n_clips, "clip_seconds": clip_seconds,
            "target_clips": target_clips, "per_experiment": per_experiment,
            "features_seconds": round(feature_seconds, 1), "models_seconds": round(model_seconds, 1),
            "total_seconds": round(feature_seconds + model_seconds, 1)}


def run_sh(names: Sequence[str], *, mean: str, weights: str | None, blend: bool = False,
           allow_diverged: bool = False) -> str:
    """The package's entry point: ``crowdai/run.sh`` with the packaged experiments (or blend) as defaults,
    and ``ALLOW_DIVERGED=1`` when the package holds failed or diverged folds on purpose."""
    lines = [
        "#!/usr/bin/env bash",
        "# crowdAI round-2 entry point (written by fma-package): predicts every mp3 of $TEST_DIRECTORY",
        "# into the CSV $OUTPUT_PATH with the packaged fold models, offline. See README.md.",
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        f'export EXP="${{EXP:-{",".join(names)}}}" MEAN="${{MEAN:-{mean}}}" RUNS="${{RUNS:-$HERE/runs}}"',
    ]
    if weights:
        lines.append(f'export BLEND_WEIGHTS="${{BLEND_WEIGHTS:-{weights}}}"')
    if blend:
        lines.append('export BLEND="${BLEND:-$HERE/blend.json}"')
    if allow_diverged:
        lines.append('export ALLOW_DIVERGED="${ALLOW_DIVERGED:-1}"')
    lines += ['exec "$HERE/crowdai/run.sh"', ""]
    return "\n".join(lines)


def _score(cv: dict | None, key: str) -> str:
    if not cv or key not in cv:
        return "n/a"
    return f"{cv[key]['mean']:.4f} ± {cv[key]['std']:.4f}"


def readme(manifest: dict[str, Any]) -> str:
    """README.md of the package: models, CV scores, expected run time, how to run and build."""
    names = [e["name"] for e in manifest["experiments"]]
    rows = "\n".join(
        f"| {e['name']} | {e['model']} | {len(e['folds'])} | {_score(e['cv'], 'log_loss')} | "
        f"{_score(e['cv'], 'macro_f1')} | {_score(e['cv'], 'accuracy')} | {e['features']['kind']} "
        f"{e['features']['sample_rate']} Hz |" for e in manifest["experiments"])
    weights = ", ".join(f"{name} {w:.3g}" for name, w in manifest["weights"].items())
    timing = manifest["timing"]
    if timing is None:
        time_text = "Not measured (`--timing-clips 0`)."
    else:
        per = "; ".join(f"{name}: F = {t['F_seconds']:.2f} s, M = {t['M_seconds_per_fold']:.2f} s per fold, "
                        f"K = {t['folds']} ({t['method']})" for name, t in timing["per_experiment"].items())
        time_text = (
            f"Measured on {timing['device']} (load average {timing['load_average']}) when the package was built, with "
            f"`crowdai.timing` (untrained models of the same architectures and feature settings, "
            f"{timing['clips']} generated {timing['clip_seconds']:g}-s clips, fit T(K) = F + K × M): {per}.\n\n"
            f"For {timing['target_clips']:,} clips: features {timing['features_seconds'] / 60:.1f} min + fold models "
            f"{timing['models_seconds'] / 60:.1f} min = **{timing['total_seconds'] / 60:.1f} min** "
            f"({timing['total_seconds'] / 3600:.2f} h; the grader allows 10 h). Feature extraction scales with "
            f"cores (the grader has 5), the models with a GPU.")
    blend = (f"`blend.json` is the fitted blend `{manifest['blend']}`, packaged for the runner; run.sh combines "
             f"the experiments by the mean and weights above." if manifest["blend"] else "No blend.")
    return f"""# FMA genre classifier: crowdAI round-2 package

Written by fma-genre-toolkit's `fma-package` on {manifest['created']}. Experiments
{', '.join(names)}: fold ensembles combined by the {manifest['mean']} mean (weights {weights}). {blend}

## Run

```bash
TEST_DIRECTORY=/path/to/mp3s OUTPUT_PATH=/tmp/output.csv ./run.sh
```

writes one row per mp3 of `TEST_DIRECTORY` (every file gets a row: files that do not
decode get the training genre frequencies) and its sidecar JSON beside it (same name,
`.json`: models, CV scores, fallbacks). Nothing is
downloaded at run time. Locally, create the environment first:
`python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt` (run.sh uses
`.venv/bin/python` when present, else `python3`). As the grader does:

```bash
repo2docker --no-run --user-id 1001 --user-name crowdai --image-name my_submission_image .
docker run -v /path/to/mp3s:/crowdai-payload -e TEST_DIRECTORY=/crowdai-payload \\
  -e OUTPUT_PATH=/tmp/output.csv my_submission_image /home/crowdai/run.sh
```

Fill in your user name in `aicrowd.json` before handing the repository over.

## Models

| experiment | model | folds | CV log loss | CV macro F1 | CV accuracy | features |
|---|---|---|---|---|---|---|
{rows}

## Expected run time

{time_text}

## Contents

`run.sh` (entry point), `crowdai/` and `common/` (code), `runs/` (fold models),
{'`models/musicnn/` (pretrained checkpoints), ' if manifest['musicnn_weights'] else ''}`requirements.txt`,
`runtime.txt`, `apt.txt` (repo2docker), `aicrowd.json`, `package.json` (what was packaged).
"""


def _copy_code(out: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE_PACKAGES:
        shutil.copytree(PROJECT_ROOT / name, out / name, ignore=ignore)


def _check_blend(blend: Path) -> None:
    """Refuse a missing or damaged blend file (:func:`crowdai.blend.read_blend`) before any work."""
    from crowdai.blend import read_blend

    if not blend.is_file():
        raise ToolkitError(f"{blend}: blend file not found")
    read_blend(blend)


def _copy_blend(blend: Path | None, out: Path) -> str | None:
    """Copy the fitted blend (``runs/blends/<name>/blend.json``, :mod:`crowdai.blend`) as ``blend.json``.

    The package's ``run.sh`` then submits through it (``BLEND``, ``crowdai.submit --blend``).
    """
    if blend is None:
        return None
    shutil.copy2(blend, out / "blend.json")
    return str(blend)


def resolve_blend(text: str, *, runs: Path) -> Path:
    """A blend JSON path, or a blend name meaning ``runs/blends/<name>/blend.json``."""
    path = Path(text)
    named = Path(runs) / "blends" / text / "blend.json"
    return named if not path.is_file() and path.suffix != ".json" and named.is_file() else path


def build_package(*, names: Sequence[str], runs: Path, out: Path, blend: Path | None = None, mean: str = "arithmetic",
                  weights: str | None = None, gpu: bool = False, authors: Sequence[str] = ("your-aicrowd-user-name",),
                  musicnn_dir: Path | None = None, timing_clips: int = 16, timing_seconds: float = 30.0,
                  jobs: int = -1, allow_diverged: bool = False) -> dict[str, Any]:
    """Write the round-2 folder ``out`` (see the module docstring); returns its manifest.

    ``allow_diverged`` packages experiments with failed or diverged folds too (refused otherwise).

    Raises
    ------
    OutputExistsError
        ``out`` exists (it is left untouched).
    ToolkitError
        Unknown or unfinished experiment, not the 16 top genres, missing musicnn weights,
        bad weights or mean, unreadable or damaged blend.
    DamagedFoldError, DivergedFoldError
        A fold's model differs from what its summary records, or (without ``allow_diverged``)
        a fold failed or diverged.
    """
    from common.pretrained import DEFAULT_WEIGHTS_DIR, weights_present
    from crowdai.ensemble import MEANS, load_ensemble, parse_weights

    out = Path(out)
    if out.exists():
        raise OutputExistsError(out)
    if not names or len(set(names)) != len(names):
        raise ToolkitError(f"--exp {','.join(names)!r}: give distinct experiment names, comma-separated")
    if mean not in MEANS:
        raise ToolkitError(f"--mean {mean!r}: one of {list(MEANS)}")
    weight_values = parse_weights(weights, n=len(names))
    if blend is not None:
        _check_blend(blend)
    ensembles = [load_ensemble(runs, name, require_top_genres=True, allow_diverged=allow_diverged) for name in names]
    files = {e.name: experiment_files(e.exp_dir) for e in ensembles}
    musicnn_dir = Path(musicnn_dir or DEFAULT_WEIGHTS_DIR)
    needs_weights = any(uses_musicnn_weights(e.config) for e in ensembles)
    if needs_weights and not weights_present(weights_dir=musicnn_dir):
        raise ToolkitError(f"{musicnn_dir}: musicnn weights missing (an experiment uses them); run `make weights`")
    requirements = pinned_requirements(extras=("gpu",) if gpu else ())
    timing = (estimate_run_time(ensembles, n_clips=timing_clips, clip_seconds=timing_seconds, jobs=jobs)
              if timing_clips > 0 else None)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _copy_code(staging)
        for ensemble in ensembles:
            for relative in files[ensemble.name]:
                target = staging / "runs" / ensemble.name / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ensemble.exp_dir / relative, target)
        if needs_weights:
            shutil.copytree(musicnn_dir, staging / "models" / "musicnn")
        manifest = {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "experiments": [{**e.describe(), "exp_dir": f"runs/{e.name}"} for e in ensembles],
            "mean": mean, "weights": {e.name: float(w) for e, w in zip(ensembles, weight_values)},
            "blend": _copy_blend(blend, staging), "musicnn_weights": needs_weights,
            "requirements": requirements, "timing": timing, "allow_diverged": allow_diverged,
        }
        (staging / "run.sh").write_text(run_sh(names, mean=mean, weights=weights, blend=blend is not None,
                                               allow_diverged=allow_diverged))
        (staging / "run.sh").chmod(0o755)
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (staging / "runtime.txt").write_text("python-3.11\n")
        (staging / "apt.txt").write_text("\n".join(APT_PACKAGES) + "\n")
        (staging / "aicrowd.json").write_text(json.dumps({
            "challenge_id": CHALLENGE_ID, "authors": list(authors),
            "description": f"fold ensembles of {', '.join(names)} (fma-genre-toolkit)", "gpu": gpu}, indent=2) + "\n")
        (staging / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "README.md").write_text(readme(manifest))
        staging.chmod(0o777 & ~_umask())
        if out.exists():  # appeared while building
            raise OutputExistsError(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-package", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", required=True, help="experiment name(s), comma-separated: crnn,shortchunk")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    parser.add_argument("--blend", default=None, help="fitted blend to package as blend.json: a JSON path, or a "
                        "name meaning RUNS/blends/NAME/blend.json")
    parser.add_argument("--mean", default="arithmetic", help="how run.sh combines the experiments")
    parser.add_argument("--blend-weights", default=None, help="one positive weight per experiment, e.g. 0.7,0.3")
    parser.add_argument("--gpu", action="store_true", help="pin tensorflow[and-cuda] (the gpu extra) and set "
                        "\"gpu\": true in aicrowd.json")
    parser.add_argument("--authors", default="your-aicrowd-user-name", help="aicrowd.json authors, comma-separated")
    parser.add_argument("--weights", type=Path, default=None, help="musicnn checkpoints folder "
                        "(default: models/musicnn), packaged when an experiment uses them")
    parser.add_argument("--timing-clips", type=int, default=16,
                        help="generated clips for the run-time estimate (0: do not measure)")
    parser.add_argument("--timing-seconds", type=float, default=30.0,
                        help="length of those clips (default: 30, the test clips' length)")
    parser.add_argument("--jobs", type=int, default=-1, help="feature workers of the timing run")
    parser.add_argument("--allow-diverged", action="store_true",
                        help="package experiments with failed or diverged folds too (refused by default)")
    return parser


@command("fma-package")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.exp.split(",") if name.strip()]
    blend = resolve_blend(args.blend, runs=args.runs) if args.blend else None
    manifest = build_package(names=names, runs=args.runs, out=args.out, blend=blend, mean=args.mean,
                             weights=args.blend_weights, gpu=args.gpu,
                             authors=[a.strip() for a in args.authors.split(",") if a.strip()],
                             musicnn_dir=args.weights, timing_clips=args.timing_clips,
                             timing_seconds=args.timing_seconds, jobs=args.jobs, allow_diverged=args.allow_diverged)
    models = "+".join(f"{e['name']}({len(e['folds'])} folds)" for e in manifest["experiments"])
    timing = manifest["timing"]
    expected = (f"; expected {timing['total_seconds'] / 60:.1f} min for {timing['target_clips']:,} clips here"
                if timing else "")
    print(f"package: {models}{', blend' if manifest['blend'] else ''}{expected} -> {args.out} "
          f"(TEST_DIRECTORY=... OUTPUT_PATH=... {args.out}/run.sh)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
