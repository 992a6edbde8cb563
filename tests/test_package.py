"""crowdai.package: the round-2 folder's contents, and (marker ``package``) that it runs offline from a clean copy.

The ``package`` test installs the folder's own requirements.txt into a fresh virtualenv
with ``pip install --no-index`` from a wheel cache, so a requirement missing from the
file makes its run.sh fail. The cache is ``$FMA_WHEELHOUSE`` (default ``.whl/`` in the
repository, git-ignored, reused across runs); it is filled with ``pip download``
beforehand, which needs the package registry (a complete cache is enough offline). Several minutes (TensorFlow): run it
with ``make test-package``, not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import write_tiny_config

from common.errors import OutputExistsError
from crowdai import package
from crowdai.submission import validate_submission
from experiments import runner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_training_data, tmp_path_factory):
    """One trained tiny single-label experiment (2 folds) in a runs folder of its own."""
    root = tmp_path_factory.mktemp("package")
    config = write_tiny_config(root, "tiny", epochs=1, min_tracks=2, dense_units=16, batch_size=8)
    runs = root / "runs"
    assert runner.main(["--config", str(config), "--data", str(tiny_training_data["data"]), "--subset", "small",
                        "--folds", str(tiny_training_data["folds"]), "--cache", str(tiny_training_data["cache"]),
                        "--runs", str(runs)]) == 0
    return {"runs": runs, "test_dir": tiny_training_data["data"] / "crowdai_fma_test", "root": root}


@pytest.fixture(scope="module")
def packaged(trained):
    """The package of ``tiny`` with a blend fitted on its out-of-fold predictions, timed on 3 generated 8-s clips."""
    from crowdai import blend as blend_cli

    assert blend_cli.main(["--exp", "tiny", "--runs", str(trained["runs"]), "--name", "solo"]) == 0
    blend = trained["runs"] / "blends" / "solo" / "blend.json"
    out = trained["root"] / "round2"
    assert package.main(["--exp", "tiny", "--runs", str(trained["runs"]), "--out", str(out), "--blend", str(blend),
                         "--timing-clips", "3", "--timing-seconds", "8", "--jobs", "1", "--authors", "alice,bob"]) == 0
    return out


def test_package_holds_models_code_environment_and_readme(packaged, trained):
    files = {p.relative_to(packaged).as_posix() for p in packaged.rglob("*") if p.is_file()}
    for fold in ("fold_0", "fold_1"):
        assert {f"runs/tiny/{fold}/{name}" for name in package.FOLD_FILES} <= files
    assert {"runs/tiny/oof.csv", "runs/tiny/summary.json", "run.sh", "crowdai/run.sh", "crowdai/submit.py",
            "common/features.py", "requirements.txt", "runtime.txt", "apt.txt", "aicrowd.json", "README.md",
            "package.json", "blend.json"} <= files
    assert not any("__pycache__" in f or "checkpoint" in f or f.startswith("models/") for f in files)
    assert os.access(packaged / "run.sh", os.X_OK) and os.access(packaged / "crowdai" / "run.sh", os.X_OK)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (packaged / "requirements.txt").read_text().splitlines() == pyproject["dependencies"]
    assert (packaged / "apt.txt").read_text().split() == ["libsndfile1", "libmpg123-0"]
    assert json.loads((packaged / "aicrowd.json").read_text()) == {
        "challenge_id": "WWWMusicalGenreRecognitionChallenge", "authors": ["alice", "bob"],
        "description": "fold ensembles of tiny (fma-genre-toolkit)", "gpu": False}
    assert 'EXP="${EXP:-tiny}"' in (packaged / "run.sh").read_text()

    summary = json.loads((trained["runs"] / "tiny" / "summary.json").read_text())
    manifest = json.loads((packaged / "package.json").read_text())
    timing = manifest["timing"]
    assert timing["target_clips"] == 3000 and timing["per_experiment"]["tiny"]["folds"] == 2
    assert timing["total_seconds"] == pytest.approx(timing["features_seconds"] + timing["models_seconds"], abs=0.2)
    assert timing["models_seconds"] > 0 and timing["features_seconds"] > 0
    text = (packaged / "README.md").read_text()
    assert f"{summary['cv']['log_loss']['mean']:.4f} ± {summary['cv']['log_loss']['std']:.4f}" in text
    assert f"= **{timing['total_seconds'] / 60:.1f} min**" in text and "3,000 clips" in text


def test_existing_output_and_bad_input_are_refused(packaged, trained, tmp_path, capsys):
    before = sorted(p.name for p in packaged.iterdir())
    args = ["--exp", "tiny", "--runs", str(trained["runs"]), "--timing-clips", "0"]
    assert package.main([*args, "--out", str(packaged)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in packaged.iterdir()) == before
    with pytest.raises(OutputExistsError):
        package.build_package(names=["tiny"], runs=trained["runs"], out=packaged, timing_clips=0)
    for extra, message in ((["--exp", "nope"], "no such experiment"), (["--blend", str(tmp_path / "b.json")],
                                                                        "blend file not found"),
                           (["--blend-weights", "1,2"], "2 weights for 1")):
        assert package.main([*args, "--out", str(tmp_path / "p"), *extra]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))  # no partial folder left


def test_musicnn_weights_are_packaged_when_an_experiment_uses_them(trained, tmp_path, capsys):
    import yaml

    from common.pretrained import MUSICNN_CHECKPOINTS, checkpoint_prefix

    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"] / "tiny", runs / "tuned")
    for config_path in (runs / "tuned").glob("fold_*/config.yaml"):  # as if fine-tuned from musicnn
        config = yaml.safe_load(config_path.read_text())
        config["model"] = {"name": "musicnn", "params": {"pretrained": "MSD_musicnn"}}
        config_path.write_text(yaml.safe_dump(config))
    weights = tmp_path / "musicnn"
    args = ["--exp", "tuned", "--runs", str(runs), "--timing-clips", "0", "--weights", str(weights)]
    assert package.main([*args, "--out", str(tmp_path / "no_weights")]) == 1
    assert "make weights" in capsys.readouterr().err
    for name in MUSICNN_CHECKPOINTS:
        for suffix in (".index", ".data-00000-of-00001"):
            path = Path(f"{checkpoint_prefix(name, weights_dir=weights)}{suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())
    assert package.main([*args, "--out", str(tmp_path / "pkg")]) == 0
    out = tmp_path / "pkg"
    packaged = sorted(p.relative_to(out).as_posix() for p in (out / "models").rglob("*.index"))
    assert packaged == ["models/musicnn/MSD_musicnn/model.index", "models/musicnn/MTT_musicnn/model.index"]
    assert json.loads((out / "package.json").read_text())["musicnn_weights"] is True


def test_pinned_requirements_need_exact_pins(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["numpy==2.0", "pandas>=2"]\n')
    with pytest.raises(package.ToolkitError, match="pandas>=2"):
        package.pinned_requirements(pyproject)
    pyproject.write_text('[project]\ndependencies = ["tensorflow==2.21.0", "numpy==2.0"]\n'
                         '[project.optional-dependencies]\ngpu = ["tensorflow[and-cuda]==2.21.0"]\n')
    assert package.pinned_requirements(pyproject, extras=["gpu"]) == ["numpy==2.0", "tensorflow[and-cuda]==2.21.0"]


def wheelhouse() -> Path:
    return Path(os.environ.get("FMA_WHEELHOUSE", REPO / ".whl"))


def run(argv, **kwargs):
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.package
def test_package_runs_offline_from_a_clean_copy(packaged, trained, tmp_path_factory):
    """Copy outside the repo, install only its requirements.txt offline, run its run.sh, validate the CSV."""
    clean = tmp_path_factory.mktemp("clean_copy") / "submission"
    shutil.copytree(packaged, clean)
    assert REPO not in clean.parents
    cache = wheelhouse()
    cache.mkdir(parents=True, exist_ok=True)
    # fill the cache (a no-op download when it is complete); without a registry the cache must already be complete
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "-r", str(clean / "requirements.txt"),
                    "-d", str(cache)], capture_output=True, timeout=1800)
    venv = clean / ".venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(cache),
         "-r", str(clean / "requirements.txt")], timeout=1800)
    output = clean.parent / "out" / "predictions.csv"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TEST_DIRECTORY=str(trained["test_dir"]), OUTPUT_PATH=str(output), JOBS="2",
               HOME=str(clean.parent), PIP_NO_INDEX="1")
    done = run([str(clean / "run.sh")], cwd=str(clean.parent), env=env, timeout=1800)
    assert "12 rows valid" in done.stdout
    assert validate_submission(output, test_dir=trained["test_dir"]) == []
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert [e["name"] for e in sidecar["experiments"]] == ["tiny"]
    assert sidecar["experiments"][0]["exp_dir"] == str(clean / "runs" / "tiny")  # the packaged models ran
    assert sidecar["blend"]["path"] == str(clean / "blend.json")  # through the packaged blend


def test_blend_by_name_or_path(tmp_path):
    named = tmp_path / "runs" / "blends" / "b1" / "blend.json"
    named.parent.mkdir(parents=True)
    named.write_text("{}")
    assert package.resolve_blend("b1", runs=tmp_path / "runs") == named
    assert package.resolve_blend(str(tmp_path / "mine.json"), runs=tmp_path / "runs") == tmp_path / "mine.json"
