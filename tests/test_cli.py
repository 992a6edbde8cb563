"""The command-line contract (common.cli): every console script, its exit status and its two streams.

Each console script of pyproject.toml is called in process, as its ``main(argv)``: with a
bad argument (argparse: exit 2, usage on stderr) and with a missing file or folder (exit 1,
one line ``fma-<command>: error: ...`` naming the path). Pipes closed by their reader are
checked in subprocesses, where stdout is a real pipe.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from common.cli import EXIT_BROKEN_PIPE, command
from common.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

#: Per console script, arguments naming ``{missing}`` (a path that does not exist) or ``{file}``
#: (a regular file, where the command creates a folder), and nothing else the command would
#: need to fetch or compute first. Every other argument is valid, so that an added bad option
#: is the only usage error.
MISSING_PATH_ARGS: dict[str, list[str]] = {
    "fma-download": ["--subset", "small", "--data", "{file}", "--no-progress"],
    "fma-demo-data": ["--out", "{file}"],
    "fma-features": ["--config", "{missing}", "--audio-dir", "{missing}", "--cache", "{missing}"],
    "fma-plots": ["--config", str(ROOT / "experiments/configs/demo.yaml"), "--data", "{missing}", "--out", "{missing}"],
    "fma-weights": ["--dest", "{missing}", "--wheel", "{missing}"],
    "fma-folds": ["--data", "{missing}", "--subset", "small"],
    "fma-train": ["--config", "{missing}", "--data", "{missing}", "--folds", "{missing}"],
    "fma-compare": ["--runs", "{missing}"],
    "fma-blend": ["--exp", "a,b", "--runs", "{missing}"],
    "fma-zero-shot-oof": ["--data", "{missing}", "--subset", "small", "--folds", "{missing}", "--runs", "{missing}"],
    "fma-submit": ["--exp", "a", "--runs", "{missing}", "--test-dir", "{missing}"],
    "fma-validate": ["{missing}", "--test-dir", "{missing}"],
    "fma-score": ["{missing}", "--labels", "{missing}"],
    "fma-tag": ["{missing}", "--out", "{missing}"],
    "fma-upload": ["{missing}", "--test-dir", "{missing}"],
    "fma-package": ["--exp", "a", "--runs", "{missing}", "--out", "{missing}"],
    "fma-pseudo": ["--exp", "a", "--runs", "{missing}", "--unlabelled", "{missing}", "--out", "{missing}"],
}


def script_main(name: str):
    module, function = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), function)


def case_args(name: str, tmp_path: Path) -> tuple[list[str], str]:
    """The arguments of :data:`MISSING_PATH_ARGS` for ``name``, and the path the error must name."""
    missing, regular = tmp_path / "no such (dir)" / "thing.csv", tmp_path / "a file.txt"
    regular.write_text("not a folder\n")
    args = [arg.format(missing=missing, file=regular) for arg in MISSING_PATH_ARGS[name]]
    return args, str(regular if "{file}" in MISSING_PATH_ARGS[name] else missing.parent)


def test_every_console_script_has_a_case():
    assert sorted(MISSING_PATH_ARGS) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_bad_argument_is_a_usage_error(name, tmp_path, capsys):
    args, _ = case_args(name, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        script_main(name)([*args, "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {name} ")
    assert err.splitlines()[-1] == f"{name}: error: unrecognized arguments: --no-such-option"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_missing_path_is_one_error_line(name, tmp_path, capsys):
    args, path = case_args(name, tmp_path)
    assert script_main(name)(args) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith(f"{name}: error: ") and path in err


# --- the contract itself, on a command made for the test ------------------------------------------

def test_status_errors_and_interruptions(capsys):
    def make(raised: BaseException | None):
        @command("fma-x", resume="run it again")
        def main(argv: list[str] | None = None) -> int:
            """A test command."""
            print("result")
            if raised is not None:
                raise raised
            return 3

        return main

    assert make(None)([]) == 3 and capsys.readouterr() == ("result\n", "")
    assert make(None).__doc__ == "A test command."
    assert make(ToolkitError("data/x.csv: missing"))([]) == 1
    assert capsys.readouterr().err == "fma-x: error: data/x.csv: missing\n"
    assert make(KeyboardInterrupt())([]) == 130
    assert capsys.readouterr().err == "fma-x: interrupted; run it again\n"
    with pytest.raises(ValueError, match="a bug"):  # a bug keeps its traceback
        make(ValueError("a bug"))([])
    with pytest.raises(BrokenPipeError):  # not stdout's: a bug like any other
        make(BrokenPipeError())([])


PIPED = textwrap.dedent("""
    import sys
    from common.cli import command

    def main(argv):
        for i in range(int(argv[0])):
            print(f"line {i}")
        return 0

    if sys.argv[2] == "contract":
        main = command("fma-lines")(main)
    raise SystemExit(main(sys.argv[1:]))
""")


def run_with_closed_reader(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with stdout a pipe whose reader is closed before the command writes."""
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, "", err)


@pytest.mark.parametrize("lines", [3, 100_000])  # flushed at the end, or failing inside main
def test_output_piped_into_a_closed_reader_ends_quietly(lines):
    result = run_with_closed_reader([sys.executable, "-c", PIPED, str(lines), "contract"])
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
    bare = run_with_closed_reader([sys.executable, "-c", PIPED, str(lines), "bare"])  # the control
    assert "BrokenPipeError" in bare.stderr


def test_a_real_command_piped_into_a_closed_reader_ends_quietly(tmp_path):
    from common.metadata import TOP_GENRES
    from crowdai.submission import write_submission

    ids = [f"id{i}" for i in range(4)]
    submission = write_submission(tmp_path / "s.csv", ids, np.full((4, 16), 1 / 16))
    labels = tmp_path / "labels.csv"
    labels.write_text("file_id,genre\n" + "".join(f"{i},{TOP_GENRES[0]}\n" for i in ids))
    result = run_with_closed_reader([sys.executable, "-m", "crowdai.score", str(submission), "--labels", str(labels)])
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
