"""Upload a submission CSV to AIcrowd with the platform's official client, after validating it.

Usage::

    python -m crowdai.upload SUBMISSION.csv --test-dir data/crowdai_fma_test \\
        [--challenge SLUG] [--description TEXT] [--dry-run]

The file is first checked exactly as ``python -m crowdai.validate`` checks it (same
function, same output); a file with any problem is never sent. It is then sent with
``aicrowd submission create -c CHALLENGE -f FILE -d DESCRIPTION``, the command of the
official client ``aicrowd-cli`` (``pip install 'fma-genre-toolkit[upload]'``), run as a
subprocess. The legacy ``crowdai`` client of the 2018 starter kit no longer installs on
Python 3.11 (its pinned MarkupSafe 1.0 does not build), so it is not used.

API key: the environment variable ``AICROWD_API_KEY``, or the client's own login
(``aicrowd login``, kept in the client's config outside the repository). With the
variable set, the key reaches the client only through its environment: ``aicrowd
--config-path TMP login`` stores it in a temporary client config that is deleted after
the upload, so it is written nowhere else and never appears on a command line.

Every upload attempt that reaches the client is appended to the submission's sidecar
JSON (``uploads``: time, challenge, sha256, command, exit status, the client's output
or error).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.cli import command
from common.errors import ToolkitError
from common.io import file_sha256

#: The challenge on AIcrowd (the 2018 crowdAI challenge's slug; the client also takes its URL).
DEFAULT_CHALLENGE = "www-2018-challenge-learning-to-recognize-musical-genre"

#: Environment variable holding the API key (the client's own ``login --api-key`` reads it too).
API_KEY_ENV = "AICROWD_API_KEY"

#: The official client's executable (package ``aicrowd-cli``, the ``upload`` extra).
CLIENT = "aicrowd"

_INSTALL_HINT = ("install the official client: pip install 'fma-genre-toolkit[upload]' "
                 "(aicrowd-cli, pinned in pyproject.toml), or `make setup EXTRAS=dev,upload`")

#: Lines aicrowd-cli prints around every error (skipped when saying what went wrong).
_GENERIC_LINES = ("An unexpected error occured", "To get more information", "To increase level of verbosity")

#: Characters of the client's stdout and stderr kept in the sidecar.
_OUTPUT_CHARS = 4000


class MissingApiKeyError(ToolkitError):
    """Neither ``AICROWD_API_KEY`` nor the client's own login provides an API key."""

    def __init__(self) -> None:
        super().__init__(f"no AIcrowd API key: set the environment variable {API_KEY_ENV} to the key "
                         f"shown on your AIcrowd profile page, or log the client in once with `aicrowd login`")


@dataclasses.dataclass(frozen=True)
class SubmissionFacts:
    """What an upload sends.

    Attributes
    ----------
    path : Path
    sha256 : str
        Hex digest of the file's bytes.
    rows : int
        Data rows (test files).
    challenge : str
    """

    path: Path
    sha256: str
    rows: int
    challenge: str


@dataclasses.dataclass(frozen=True)
class ClientRun:
    """One run of the client: its arguments (never the key), exit status and output."""

    argv: list[str]
    returncode: int | None  # None: it could not start or timed out
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error(self) -> str:
        """One line saying why the run failed."""
        lines = [line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines()
                 if line.strip() and not line.strip().startswith(_GENERIC_LINES)]
        status = "did not finish" if self.returncode is None else f"exited with status {self.returncode}"
        return f"{Path(self.argv[0]).name} {status}" + (f": {lines[0]}" if lines else "")


def describe(path: str | Path, *, challenge: str) -> SubmissionFacts:
    """File, sha256, row count and challenge of an upload."""
    from crowdai.submission import count_rows

    path = Path(path)
    return SubmissionFacts(path=path, sha256=file_sha256(path),
                           rows=count_rows(path), challenge=challenge)


def find_client(client: str | Path | None = None) -> Path:
    """The ``aicrowd`` executable: ``client`` when given, else on ``PATH``, else beside this Python.

    Raises
    ------
    ToolkitError
        Not found; the message says how to install it.
    """
    if client is not None:
        found = shutil.which(str(client))
        if found is None:
            raise ToolkitError(f"{client}: no such executable; {_INSTALL_HINT}")
        return Path(found)
    found = shutil.which(CLIENT) or shutil.which(CLIENT, path=str(Path(sys.executable).parent))
    if found is None:
        raise ToolkitError(f"the AIcrowd client `{CLIENT}` is not installed; {_INSTALL_HINT}")
    return Path(found)


def run_client(argv: list[str], *, env: Mapping[str, str], timeout: float) -> ClientRun:
    """Run the client, capturing its output; never raises for a failing client."""
    try:
        done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        return ClientRun(argv, None, _text(error.stdout), _text(error.stderr) + f"\ntimed out after {timeout:g} s")
    except OSError as error:
        return ClientRun(argv, None, "", f"cannot run {argv[0]}: {error}")
    return ClientRun(argv, done.returncode, done.stdout, done.stderr)


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


def client_logged_in(client: Path, *, env: Mapping[str, str], timeout: float = 60) -> bool:
    """Whether the client's own config holds an API key (``aicrowd config get aicrowd_api_key``)."""
    run = run_client([str(client), "config", "get", "aicrowd_api_key"], env=env, timeout=timeout)
    return run.ok and run.stdout.strip() not in ("", "None")


def create_command(client: Path, facts: SubmissionFacts, *, description: str,
                   config_path: Path | None = None) -> list[str]:
    """``aicrowd [--config-path CONFIG] submission create -c CHALLENGE -f FILE -d DESCRIPTION``."""
    config = ["--config-path", str(config_path)] if config_path is not None else []
    return [str(client), *config, "submission", "create", "-c", facts.challenge, "-f", str(facts.path),
            "-d", description]


def send(facts: SubmissionFacts, *, description: str, client: Path, env: Mapping[str, str],
         timeout: float = 600) -> list[ClientRun]:
    """Submit ``facts.path`` with the client; the runs made, the last one deciding the outcome.

    With ``AICROWD_API_KEY`` in ``env``: ``login`` into a temporary client config, then
    ``submission create`` with it (two runs; a failed login stops there). Without it: one
    ``submission create`` with the client's own login.

    Raises
    ------
    MissingApiKeyError
        No key in ``env`` and the client is not logged in (nothing is run beyond that check).
    """
    if not env.get(API_KEY_ENV):
        if not client_logged_in(client, env=env):
            raise MissingApiKeyError()
        return [run_client(create_command(client, facts, description=description), env=env, timeout=timeout)]
    with tempfile.TemporaryDirectory(prefix="aicrowd-config-") as tmp:
        config_path = Path(tmp) / "config.toml"
        config_path.touch(mode=0o600)
        login = run_client([str(client), "--config-path", str(config_path), "login"], env=env, timeout=timeout)
        if not login.ok:
            return [login]
        create = run_client(create_command(client, facts, description=description, config_path=config_path),
                            env=env, timeout=timeout)
        return [login, create]


def upload_record(facts: SubmissionFacts, runs: list[ClientRun], *, description: str,
                  started: datetime.datetime) -> dict[str, Any]:
    """The sidecar entry of one upload attempt."""
    last = runs[-1]
    return {
        "time": started.isoformat(timespec="seconds"),
        "challenge": facts.challenge,
        "file": facts.path.name,
        "sha256": facts.sha256,
        "rows": facts.rows,
        "description": description,
        "client": "aicrowd-cli",
        "commands": [shlex.join([Path(run.argv[0]).name, *run.argv[1:]]) for run in runs],
        "ok": last.ok,
        "returncode": last.returncode,
        "response": last.stdout.strip()[-_OUTPUT_CHARS:],
        "error": None if last.ok else last.error(),
        "stderr": last.stderr.strip()[-_OUTPUT_CHARS:],
    }


def record_upload(csv_path: str | Path, record: dict[str, Any]) -> Path:
    """Append ``record`` to the ``uploads`` list of the submission's sidecar JSON (created if absent).

    Raises
    ------
    ToolkitError
        The sidecar exists but is not a JSON object (it is left untouched).
    """
    from common.io import sidecar_path, write_text_atomic

    json_path = sidecar_path(csv_path)
    sidecar: dict[str, Any] = {"submission": Path(csv_path).name}
    if json_path.exists():
        try:
            sidecar = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ToolkitError(f"{json_path}: cannot read the sidecar to record the upload ({error})") from None
        if not isinstance(sidecar, dict):
            raise ToolkitError(f"{json_path}: the sidecar is not a JSON object; upload not recorded")
    sidecar.setdefault("uploads", []).append(record)
    return write_text_atomic(json_path, json.dumps(sidecar, indent=2) + "\n", overwrite=True)


def print_dry_run(facts: SubmissionFacts, *, description: str, client: str | None, env: Mapping[str, str]) -> None:
    """What an upload would send, and whether the client and a key are there."""
    try:
        executable = find_client(client)
        client_line = str(executable)
    except ToolkitError:
        executable, client_line = Path(CLIENT), f"not installed; {_INSTALL_HINT}"
    key = f"{API_KEY_ENV} is set" if env.get(API_KEY_ENV) else f"{API_KEY_ENV} not set (the client's own login is used)"
    command = shlex.join([CLIENT, *create_command(executable, facts, description=description)[1:]])
    print("upload dry run: nothing sent")
    for name, value in (("file", facts.path), ("sha256", facts.sha256), ("rows", facts.rows),
                        ("challenge", facts.challenge), ("command", command), ("client", client_line),
                        ("api key", key)):
        print(f"  {name + ':':<11}{value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-upload", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="submission CSV (its sidecar JSON is the same name with .json)")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s (for validation)")
    parser.add_argument("--challenge", default=DEFAULT_CHALLENGE, help="AIcrowd challenge slug or URL "
                        "(default: %(default)s)")
    parser.add_argument("--description", default=None, help="submission description (default: the file name)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print what would be sent; send nothing")
    parser.add_argument("--client", default=None, help=f"the client executable (default: `{CLIENT}` on PATH or "
                        "beside this Python)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per client run (default: 600)")
    return parser


@command("fma-upload")
def main(argv: list[str] | None = None) -> int:
    from crowdai.submission import judge_submission

    args = build_parser().parse_args(argv)
    verdict = judge_submission(args.file, test_dir=args.test_dir)
    print("\n".join(verdict.report))
    verdict.require_valid(consequence="not sent")
    facts = describe(args.file, challenge=args.challenge)
    description = args.description if args.description is not None else f"{args.file.name} (fma-genre-toolkit)"
    if args.dry_run:
        print_dry_run(facts, description=description, client=args.client, env=os.environ)
        return 0
    started = datetime.datetime.now(datetime.UTC)
    client = find_client(args.client)
    runs = send(facts, description=description, client=client, env=os.environ, timeout=args.timeout)
    json_path = record_upload(args.file, upload_record(facts, runs, description=description, started=started))
    last = runs[-1]
    if not last.ok:
        raise ToolkitError(f"FAILED: {last.error()} (recorded in {json_path})")
    response = last.stdout.strip()
    print(f"upload: {facts.path} ({facts.rows} rows, sha256 {facts.sha256[:12]}) sent to {facts.challenge}"
          f"{': ' + response if response else ''} (recorded in {json_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
