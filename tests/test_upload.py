"""crowdai.upload: validation gates the upload, the official client's command line, the sidecar record.

The client is a stub ``aicrowd`` executable put first on ``PATH``: it appends its argv, the
API key it sees and the content of the config it was pointed at to a JSON-lines log, and
behaves like ``aicrowd-cli`` 0.1.18 (``login`` stores the key from ``AICROWD_API_KEY`` in
``--config-path``; ``submission create`` needs a key in its config). Nothing reaches a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid

import numpy as np
import pytest

from common.metadata import TOP_GENRES
from crowdai import upload
from crowdai.submission import write_submission

STUB = r'''#!{python}
"""Stub of aicrowd-cli's `aicrowd`: logs each call, fails where STUB_FAIL says."""
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
config = None
if argv[:1] == ["--config-path"]:
    config, argv = Path(argv[1]), argv[2:]
home_config = Path(os.environ["STUB_HOME_CONFIG"])
config = config or home_config
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "key_env": os.environ.get("AICROWD_API_KEY"),
                          "config": config.read_text() if config.is_file() else None}}) + "\n")
if argv[:1] == ["login"]:
    if os.environ.get("STUB_FAIL") == "login":
        print("Invalid API Key provided"); sys.exit(5)
    config.write_text('aicrowd_api_key = "%s"\n' % os.environ["AICROWD_API_KEY"]); print("API Key valid")
elif argv[:3] == ["config", "get", "aicrowd_api_key"]:
    text = config.read_text() if config.is_file() else ""
    if "aicrowd_api_key" not in text:
        print("Unknown config key: aicrowd_api_key"); sys.exit(2)
    print(text.split('"')[1])
elif argv[:2] == ["submission", "create"]:
    if "aicrowd_api_key" not in (config.read_text() if config.is_file() else ""):
        print("Config property aicrowd_api_key not set"); sys.exit(4)
    if os.environ.get("STUB_FAIL") == "create":
        print("Submission failed: challenge not accepting submissions", file=sys.stderr); sys.exit(1)
    print("Successfully submitted! id 4242")
else:
    sys.exit(64)
'''


@pytest.fixture()
def test_dir(tmp_path):
    folder = tmp_path / "crowdai_test"
    folder.mkdir()
    for i in range(5):
        (folder / f"{uuid.UUID(int=i + 1)}.mp3").write_bytes(b"")
    return folder


@pytest.fixture()
def submission(tmp_path, test_dir):
    ids = sorted(p.stem for p in test_dir.glob("*.mp3"))
    probs = np.random.default_rng(0).dirichlet(np.ones(len(TOP_GENRES)), size=len(ids))
    path = write_submission(tmp_path / "subs" / "20260301T120000Z_tiny.csv", ids, probs)
    path.with_suffix(".json").write_text(json.dumps({"submission": path.name, "rows": len(ids)}) + "\n")
    return path


@pytest.fixture()
def client(tmp_path, monkeypatch):
    """The stub client first on PATH; returns a reader of its call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "aicrowd"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "client_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setenv("STUB_HOME_CONFIG", str(tmp_path / "home_config.toml"))
    monkeypatch.delenv("AICROWD_API_KEY", raising=False)
    monkeypatch.delenv("STUB_FAIL", raising=False)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return calls


def uploads(submission):
    return json.loads(submission.with_suffix(".json").read_text()).get("uploads", [])


def test_upload_with_the_key_in_the_environment(submission, test_dir, client, monkeypatch, capsys):
    monkeypatch.setenv("AICROWD_API_KEY", "k-123")
    assert upload.main([str(submission), "--test-dir", str(test_dir), "--challenge", "my-challenge",
                        "--description", "tiny ensemble"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 5 rows") and "sent to my-challenge: Successfully submitted! id 4242" in out
    login, create = client()
    assert login["argv"][0] == "--config-path" and login["argv"][2:] == ["login"]
    assert login["key_env"] == "k-123"
    config = login["argv"][1]
    assert create["argv"] == ["--config-path", config, "submission", "create", "-c", "my-challenge",
                              "-f", str(submission), "-d", "tiny ensemble"]
    assert create["config"] == 'aicrowd_api_key = "k-123"\n'  # the client got the key from its own login
    assert not os.path.exists(config)  # the temporary config holding the key is gone
    assert all("k-123" not in arg for call in client() for arg in call["argv"])  # never on a command line
    (record,) = uploads(submission)
    assert record["ok"] and record["returncode"] == 0 and record["challenge"] == "my-challenge"
    assert record["sha256"] == hashlib.sha256(submission.read_bytes()).hexdigest() and record["rows"] == 5
    assert record["response"] == "Successfully submitted! id 4242" and record["error"] is None
    assert "k-123" not in submission.with_suffix(".json").read_text()
    assert json.loads(submission.with_suffix(".json").read_text())["rows"] == 5  # the rest of the sidecar kept


def test_upload_with_the_clients_own_login(submission, test_dir, client, tmp_path):
    (tmp_path / "home_config.toml").write_text('aicrowd_api_key = "from-login"\n')
    assert upload.main([str(submission), "--test-dir", str(test_dir)]) == 0
    check, create = client()
    assert check["argv"] == ["config", "get", "aicrowd_api_key"]
    assert create["argv"] == ["submission", "create", "-c", upload.DEFAULT_CHALLENGE, "-f", str(submission),
                              "-d", f"{submission.name} (fma-genre-toolkit)"]
    assert uploads(submission)[0]["ok"]


def test_missing_key_names_the_variable_and_sends_nothing(submission, test_dir, client, capsys):
    assert upload.main([str(submission), "--test-dir", str(test_dir)]) == 1
    err = capsys.readouterr().err
    assert "AICROWD_API_KEY" in err and "aicrowd login" in err
    assert [call["argv"][:2] for call in client()] == [["config", "get"]]  # only the login check ran
    assert uploads(submission) == []


@pytest.mark.parametrize("stage", ["login", "create"])
def test_failed_upload_is_recorded_in_the_sidecar(submission, test_dir, client, monkeypatch, capsys, stage):
    monkeypatch.setenv("AICROWD_API_KEY", "k-123")
    monkeypatch.setenv("STUB_FAIL", stage)
    assert upload.main([str(submission), "--test-dir", str(test_dir)]) == 1
    assert "FAILED" in capsys.readouterr().err
    (record,) = uploads(submission)
    assert not record["ok"] and record["returncode"] == (5 if stage == "login" else 1)
    expected = "Invalid API Key provided" if stage == "login" else "challenge not accepting submissions"
    assert expected in record["error"]
    assert len(client()) == (1 if stage == "login" else 2)  # a failed login sends nothing
    # a second, successful attempt is appended: the history stays
    monkeypatch.delenv("STUB_FAIL")
    assert upload.main([str(submission), "--test-dir", str(test_dir)]) == 0
    assert [r["ok"] for r in uploads(submission)] == [False, True]


def test_an_invalid_file_is_never_sent(submission, test_dir, client, monkeypatch, capsys):
    monkeypatch.setenv("AICROWD_API_KEY", "k-123")
    lines = submission.read_text().splitlines()
    broken = submission.with_name("broken.csv")
    broken.write_text("\n".join(lines[:-1]) + "\n")  # one test file without a row
    for extra in ([], ["--dry-run"]):
        assert upload.main([str(broken), "--test-dir", str(test_dir), *extra]) == 1
        captured = capsys.readouterr()
        assert "no row for" in captured.out
        assert captured.err == f"fma-upload: error: INVALID: 1 problem (missing_id 1) in {broken}; not sent\n"
    assert upload.main([str(submission.with_name("absent.csv")), "--test-dir", str(test_dir)]) == 1
    assert client() == [] and not broken.with_suffix(".json").exists()


def test_dry_run_prints_file_sha256_rows_challenge(submission, test_dir, client, monkeypatch, capsys):
    monkeypatch.setenv("AICROWD_API_KEY", "k-123")
    assert upload.main([str(submission), "--test-dir", str(test_dir), "--dry-run", "--challenge", "c-1"]) == 0
    out = capsys.readouterr().out
    sha = hashlib.sha256(submission.read_bytes()).hexdigest()
    for line in (f"file:      {submission}", f"sha256:    {sha}", "rows:      5", "challenge: c-1",
                 f"command:   aicrowd submission create -c c-1 -f {submission}", "AICROWD_API_KEY is set"):
        assert line in out
    assert "k-123" not in out and client() == [] and uploads(submission) == []


def test_missing_client_says_how_to_install(submission, test_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aicrowd anywhere
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("AICROWD_API_KEY", "k-123")
    assert upload.main([str(submission), "--test-dir", str(test_dir)]) == 1
    assert "fma-genre-toolkit[upload]" in capsys.readouterr().err
    assert uploads(submission) == []
