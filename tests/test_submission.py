"""Submission format: writer, validator (each broken kind), reader, validate and score CLIs."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest

from common.errors import OutputExistsError, ToolkitError
from common.metadata import TOP_GENRES
from crowdai import score as score_cli
from crowdai import validate as validate_cli
from crowdai.submission import SUBMISSION_COLUMNS, read_submission, validate_submission, write_submission

N_FILES = 6


@pytest.fixture()
def test_dir(tmp_path):
    folder = tmp_path / "crowdai_test"
    folder.mkdir()
    for i in range(N_FILES):
        (folder / f"{uuid.UUID(int=i + 1)}.mp3").write_bytes(b"")
    (folder / "notes.txt").write_text("not a test file")
    return folder


@pytest.fixture()
def ids(test_dir):
    return sorted(p.stem for p in test_dir.glob("*.mp3"))


@pytest.fixture()
def good(tmp_path, ids):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(TOP_GENRES)), size=len(ids))
    return write_submission(tmp_path / "sub.csv", ids, probs)


def rewrite(path, edit):
    """Apply ``edit(lines) -> lines`` to a CSV (lines without newline) and write it next to it."""
    lines = edit(path.read_text().splitlines())
    broken = path.with_name("broken.csv")
    broken.write_text("\n".join(lines) + "\n")
    return broken


def set_cell(row: int, column: str, text: str):
    def edit(lines):
        cells = lines[row].split(",")
        cells[SUBMISSION_COLUMNS.index(column)] = text
        lines[row] = ",".join(cells)
        return lines
    return edit


def test_good_file_passes_and_round_trips(good, test_dir, ids):
    assert good.read_text().splitlines()[0] == ",".join(SUBMISSION_COLUMNS)
    assert validate_submission(good, test_dir=test_dir) == []
    frame = read_submission(good)
    assert list(frame.index) == ids and list(frame.columns) == list(TOP_GENRES)
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, atol=1e-9)


def test_writer_never_overwrites_and_rejects_bad_rows(good, ids):
    before = good.read_text()
    with pytest.raises(OutputExistsError, match="sub.csv already exists") as info:
        write_submission(good, ids, np.full((len(ids), 16), 1 / 16))
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ToolkitError)
    assert good.read_text() == before
    with pytest.raises(ValueError, match="sum to 1"):
        write_submission(good.with_name("new.csv"), ids, np.full((len(ids), 16), 0.1))
    assert not good.with_name("new.csv").exists()


SWAP_HEADER = lambda lines: [lines[0].replace("Blues,Classical", "Classical,Blues")] + lines[1:]  # noqa: E731


@pytest.mark.parametrize("edit, kind, row, needle", [
    (SWAP_HEADER, "header", None, "wrong order: column 2 is 'Classical', expected 'Blues'"),
    (lambda lines: lines[:3] + lines[4:], "missing_id", None, "no row for"),
    (lambda lines: lines + [lines[1].replace(lines[1].split(",")[0], "not-a-test-file")],
     "extra_id", N_FILES + 1, "no not-a-test-file.mp3"),
    (lambda lines: lines + [lines[2]], "duplicate_id", N_FILES + 1, "duplicate of row 2"),
    (set_cell(4, "Jazz", "NaN"), "nan", 4, "column 'Jazz': NaN value"),
    (set_cell(4, "Jazz", ""), "empty", 4, "column 'Jazz': empty cell"),
    (set_cell(5, "Rock", "0.9"), "row_sum", 5, "sum to"),
    (set_cell(3, "Pop", "1.5"), "out_of_range", 3, "column 'Pop': 1.5 is outside [0, 1]"),
    (set_cell(3, "Pop", "abc"), "not_numeric", 3, "'abc' is not a number"),
])
def test_validator_catches_each_broken_kind(good, test_dir, ids, edit, kind, row, needle):
    broken = rewrite(good, edit)
    problems = validate_submission(broken, test_dir=test_dir)
    matching = [p for p in problems if p.kind == kind]
    assert matching, problems
    assert matching[0].row == row
    assert needle in str(matching[0])
    if row is not None:
        assert f"row {row} (line {row + 1})" in str(matching[0])
        assert matching[0].file_id  # the id of the row is named
    if kind == "missing_id":
        assert matching[0].file_id == ids[2]
    if kind in ("missing_id", "extra_id"):  # the format is fine, only the ids are wrong
        assert len(read_submission(broken)) == len(ids) + (kind == "extra_id") - (kind == "missing_id")
    else:
        with pytest.raises(ToolkitError, match="broken.csv: not a valid submission"):
            read_submission(broken)


def test_validate_cli(good, test_dir, capsys):
    assert validate_cli.main([str(good), "--test-dir", str(test_dir)]) == 0
    assert f"OK: {N_FILES} rows" in capsys.readouterr().out
    broken = rewrite(good, set_cell(2, "Spoken", "2"))
    assert validate_cli.main([str(broken), "--test-dir", str(test_dir)]) == 1
    out, err = capsys.readouterr()
    assert "row 2 (line 3)" in out and "outside [0, 1]" in out  # the report is the result: stdout
    assert err == f"fma-validate: error: INVALID: 1 problem (out_of_range 1) in {broken}\n"


def test_validate_reports_the_probability_range_and_the_floor(good, tmp_path, test_dir, ids, capsys):
    from crowdai.submission import apply_floor, probability_range

    certain = np.zeros((len(ids), 16))
    certain[:, 2] = 1.0
    hard = write_submission(tmp_path / "hard.csv", ids, certain)
    assert validate_cli.main([str(hard), "--test-dir", str(test_dir)]) == 0  # valid, but reported
    out = capsys.readouterr().out
    assert "floor broken" in out and f"{15 * len(ids)} values are exactly 0 and {len(ids)} exactly 1" in out
    floored = write_submission(tmp_path / "floored.csv", ids, apply_floor(certain))
    assert validate_cli.main([str(floored), "--test-dir", str(test_dir)]) == 0
    assert "floor holds" in capsys.readouterr().out
    value_range = probability_range(floored)
    assert value_range.floor_holds and 0 < value_range.min < 1e-5 and 0.9999 < value_range.max < 1


@pytest.fixture()
def labels(tmp_path, ids):
    path = tmp_path / "labels.csv"
    genres = [TOP_GENRES[i % 16] for i in range(len(ids))]
    path.write_text("file_id,genre\n" + "".join(f"{i},{g}\n" for i, g in zip(ids, genres)))
    return path, genres


def test_score_uniform_is_ln16(tmp_path, ids, labels, capsys):
    uniform = write_submission(tmp_path / "uniform.csv", ids, np.full((len(ids), 16), 1 / 16))
    out_json = tmp_path / "score.json"
    assert score_cli.main([str(uniform), "--labels", str(labels[0]), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "log loss (primary):   2.7726" in printed and "Old-Time / Historic" in printed
    saved = json.loads(out_json.read_text())
    assert saved["log_loss"] == pytest.approx(math.log(16))
    assert saved["n"] == len(ids) and len(saved["per_genre"]) == 16
    # The JSON is never overwritten.
    assert score_cli.main([str(uniform), "--labels", str(labels[0]), "--json", str(out_json)]) == 1


def test_score_of_confident_right_answers(tmp_path, ids, labels, capsys):
    probs = np.full((len(ids), 16), 0.01 / 15)
    probs[np.arange(len(ids)), [TOP_GENRES.index(g) for g in labels[1]]] = 0.99
    sub = write_submission(tmp_path / "right.csv", ids, probs)
    assert score_cli.main([str(sub), "--labels", str(labels[0])]) == 0
    printed = capsys.readouterr().out
    assert f"log loss (primary):   {-math.log(0.99):.4f}" in printed
    assert "accuracy:             1.0000" in printed


def test_score_rejects_bad_labels(good, tmp_path, capsys):
    bad = tmp_path / "bad_labels.csv"
    bad.write_text("file_id,genre\nabc,Polka\n")
    assert score_cli.main([str(good), "--labels", str(bad)]) == 1
    assert "bad_labels.csv" in capsys.readouterr().err
