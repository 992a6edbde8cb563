"""The Makefile: `make help` in a newcomer's order, paths as one shell word, what `clean` removes, `make bench`.

Dry runs (``make -n``, with ``PY=python``) need no virtualenv: they print the commands a
target would run, which are split here as the shell splits them.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

#: A path with what breaks an unquoted shell word: spaces, parentheses, quotes, ;, &, a backquote, Unicode.
AWKWARD = "/music/Mötley Crüe – Guns N' Roses (live) \"1989\"; `x` & y/song.mp3"


def dry_run(*args: str, cwd: Path = ROOT) -> str:
    """What ``make -n ARGS`` prints (the recipes' commands, sub-makes included)."""
    result = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(ROOT / "Makefile"), *args, "PY=python"],
                            cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def commands(output: str, module: str) -> list[list[str]]:
    """The words of every printed command that runs ``python -m module``, as the shell splits them."""
    lines = output.replace("\\\n", " ").splitlines()
    found = []
    for line in lines:
        if f"-m {module}" in line:
            words = shlex.split(line)
            found += [words for i in range(len(words) - 1) if words[i:i + 2] == ["-m", module]]
    return found


def test_help_lists_targets_in_newcomer_order_and_new_ones_after(tmp_path):
    extra = tmp_path / "extra.mk"  # what another branch adds: a target not in HELP_ORDER yet
    extra.write_text("zzz-new: ## A target not in HELP_ORDER yet\n\t@true\n")
    result = subprocess.run(["make", "--no-print-directory", "-f", "Makefile", "-f", str(extra), "help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    targets = [re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0] for line in result.stdout.splitlines()
               if line.startswith("  ")]
    documented = re.findall(r"^([a-zA-Z_-]+):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    assert sorted(targets) == sorted([*documented, "zzz-new"])
    newcomer = ["setup", "download", "demo-data", "demo", "features", "folds", "train", "compare", "blend",
                "submit", "validate", "score", "tag", "weights", "test", "bench", "clean"]
    assert [t for t in targets if t in newcomer] == newcomer
    assert targets[-1] == "zzz-new"


#: (target, variable, option that takes it (None: the first argument), module the target runs, more variables)
PATH_ARGUMENTS = [
    ("download", "DATA", "--data", "common.download", ()),
    ("features", "CONFIG", "--config", "common.features", ()),
    ("features", "CACHE", "--cache", "common.features", ()),
    ("features", "WEIGHTS", "--weights", "common.features", ()),
    ("features", "DATA", "--data", "common.features", ()),
    ("features", "TEST_DIR", "--audio-dir", "common.features", ("SOURCE=test",)),
    ("plots", "DATA", "--data", "common.plots", ()),
    ("plots", "CONFIG", "--config", "common.plots", ()),
    ("plots", "OUT", "--out", "common.plots", ()),
    ("folds", "DATA", "--data", "experiments.folds", ()),
    ("folds", "FOLDS", "--out", "experiments.folds", ()),
    ("train", "CONFIG", "--config", "experiments.runner", ()),
    ("train", "DATA", "--data", "experiments.runner", ()),
    ("train", "FOLDS", "--folds", "experiments.runner", ()),
    ("train", "CACHE", "--cache", "experiments.runner", ()),
    ("train", "RUNS", "--runs", "experiments.runner", ()),
    ("compare", "RUNS", "--runs", "experiments.compare", ()),
    ("zero-shot-oof", "DATA", "--data", "crowdai.zero_shot_oof", ()),
    ("zero-shot-oof", "FOLDS", "--folds", "crowdai.zero_shot_oof", ()),
    ("zero-shot-oof", "RUNS", "--runs", "crowdai.zero_shot_oof", ()),
    ("zero-shot-oof", "WEIGHTS", "--weights", "crowdai.zero_shot_oof", ()),
    ("blend", "RUNS", "--runs", "crowdai.blend", ("EXP=a,b",)),
    ("submit", "RUNS", "--runs", "crowdai.submit", ()),
    ("submit", "CACHE", "--cache", "crowdai.submit", ()),
    ("submit", "TEST_DIR", "--test-dir", "crowdai.submit", ()),
    ("submit", "WEIGHTS", "--weights", "crowdai.submit", ()),
    ("submit", "BLEND", "--blend", "crowdai.submit", ()),
    ("pseudo", "UNLABELLED", "--unlabelled", "crowdai.pseudo", ()),
    ("pseudo", "RUNS", "--runs", "crowdai.pseudo", ("UNLABELLED=u",)),
    ("pseudo", "FOLDS", "--folds", "crowdai.pseudo", ("UNLABELLED=u",)),
    ("pseudo", "BLEND", "--blend", "crowdai.pseudo", ("UNLABELLED=u",)),
    ("validate", "SUBMISSION", None, "crowdai.validate", ()),
    ("validate", "TEST_DIR", "--test-dir", "crowdai.validate", ()),
    ("upload", "SUBMISSION", None, "crowdai.upload", ()),
    ("upload", "TEST_DIR", "--test-dir", "crowdai.upload", ()),
    ("package", "RUNS", "--runs", "crowdai.package", ()),
    ("package", "WEIGHTS", "--weights", "crowdai.package", ()),
    ("package", "OUT", "--out", "crowdai.package", ()),
    ("score", "SUBMISSION", None, "crowdai.score", ()),
    ("score", "LABELS", "--labels", "crowdai.score", ()),
    ("weights", "WEIGHTS", "--dest", "common.pretrained", ()),
    ("tag", "FILE", None, "crowdai.tag", ()),
    ("tag", "RUNS", "--runs", "crowdai.tag", ()),
    ("tag", "OUT", "--out", "crowdai.tag", ()),
    ("tag", "WEIGHTS", "--weights", "crowdai.tag", ()),
    ("bench-tag", "WEIGHTS", "--weights", "bench.tag", ()),
]


@pytest.mark.parametrize(("target", "variable", "option", "module", "more"), PATH_ARGUMENTS,
                         ids=[f"{t}-{v}" for t, v, *_ in PATH_ARGUMENTS])
def test_a_path_variable_is_one_shell_word(target, variable, option, module, more):
    (words,) = commands(dry_run(target, f"{variable}={AWKWARD}", *more), module)
    start = words.index(module) + 1
    assert words[words.index(option, start) + 1 if option else start] == AWKWARD, words


def test_the_wheelhouse_is_one_shell_word():
    (words,) = commands(dry_run("test-package", f"WHEELHOUSE={AWKWARD}"), "pytest")
    assert words[0] == f"FMA_WHEELHOUSE={AWKWARD}"


def test_an_empty_path_is_no_argument():
    """`make validate` without a submission: crowdai.validate says the file is required (not "file ''")."""
    (words,) = commands(dry_run("validate", "SUBMISSION="), "crowdai.validate")
    assert words[words.index("crowdai.validate") + 1] == "--test-dir"


def test_the_zero_shot_submission_gets_only_what_it_uses():
    """`make submit EXP=musicnn` passes nothing that crowdai.zero_shot_submit refuses; trained ones get it all."""
    from crowdai import submit, zero_shot_submit

    (words,) = commands(dry_run("submit", "EXP=musicnn"), "crowdai.submit")
    argv = words[words.index("crowdai.submit") + 1:]
    assert zero_shot_submit.build_parser().parse_args(argv).exp == "musicnn"
    assert not set(argv) & set(zero_shot_submit.TRAINED_ONLY_OPTIONS)
    (words,) = commands(dry_run("submit", "EXP=crnn,cnn", "BLEND_WEIGHTS=0.7,0.3"), "crowdai.submit")
    args = submit.build_parser().parse_args(words[words.index("crowdai.submit") + 1:])
    assert (args.exp, args.mean, args.blend_weights, str(args.runs), str(args.cache)) == (
        "crnn,cnn", "arithmetic", "0.7,0.3", "runs", "cache")


def test_the_demo_has_its_own_feature_cache():
    output = dry_run("demo")
    caches = {words[words.index("--cache") + 1]
              for module in ("common.features", "experiments.runner", "crowdai.submit")
              for words in commands(output, module) if "--cache" in words}
    assert caches == {"cache/demo"}


def test_clean_removes_only_what_the_demo_made(tmp_path):
    made_by_demo = ["data/demo/fma_small/000/000002.mp3", "runs/demo/demo/fold_0/model.keras",
                    "cache/demo/fma_small-logmel-0123/shard_00000.npy", "out/demo/logmel_2.png"]
    kept = ["cache/fma_medium-logmel-4567/shard_00000.npy", "data/fma_metadata/tracks.csv",
            "runs/crnn/fold_0/model.keras", "out/round2-crnn/run.sh", "submissions/2024_crnn.csv"]
    for name in made_by_demo + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    result = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "clean: removed data/demo runs/demo cache/demo out/demo\n"
    assert [name for name in made_by_demo + kept if (tmp_path / name).exists()] == kept
    again = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert again.stdout == "clean: removed nothing\n"


def test_bench_runs_every_benchmark_target():
    makefile = (ROOT / "Makefile").read_text()
    benchmarks = set(re.findall(r"^(bench-[a-z]+):", makefile, flags=re.M))
    prerequisites = re.search(r"^bench:([^#]*)##", makefile, flags=re.M).group(1).split()
    assert benchmarks and set(prerequisites) == benchmarks


def test_every_variable_a_recipe_reads_is_declared_and_shown_by_help():
    makefile = (ROOT / "Makefile").read_text()
    recipes = "\n".join(line for line in makefile.splitlines() if line.startswith("\t"))
    used = set(re.findall(r"\$\(([A-Z][A-Z_]*)\)", recipes))
    defined = set(re.findall(r"^([A-Z][A-Z_]*)\s*[:?]?=", makefile, flags=re.M)) | {"MAKE", "MAKEFILE_LIST"}
    assert used <= defined, sorted(used - defined)
    shown = re.search(r"^HELP_VARIABLES := (.*?)(?<!\\)$", makefile, flags=re.M | re.S).group(1).split()
    user_set = {name for name in used if re.search(rf"^{name}\s*\?=", makefile, flags=re.M)}
    assert user_set <= set(shown) - {"\\"}, sorted(user_set - set(shown))
