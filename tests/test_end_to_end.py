"""End to end on the generated mini-FMA: features -> folds -> train -> submit -> validate -> score, and tag.

A tiny short-chunk CNN is trained for a few epochs on 2 folds of the ``demo_data_dir``
fixture (~60 usable tracks of 8 genres). In that budget it learns the genre
distribution and little of the audio, so the honest bar is the uniform prior:
its submission must score a log loss below ln 16 on the labelled test folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_config

from crowdai import score, submit, tag, validate
from crowdai.submission import list_test_ids, read_submission
from experiments import runner

SUBSET = "small"
SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


@pytest.fixture(scope="module")
def trained(tiny_training_data, tmp_path_factory):
    """Two trained tiny experiments (single and multi) on the shared tiny features and folds."""
    root = tmp_path_factory.mktemp("end_to_end")
    data, cache, folds = tiny_training_data["data"], tiny_training_data["cache"], tiny_training_data["folds"]
    runs = root / "runs"
    for name, task, epochs in (("tiny", "single", 8), ("tiny_multi", "multi", 1)):
        config = write_tiny_config(root, name, task=task, epochs=epochs, min_tracks=2, dense_units=16, batch_size=8,
                                   optimizer={"learning_rate": 0.01})
        assert runner.main(["--config", str(config), "--data", str(data), "--subset", SUBSET,
                            "--folds", str(folds), "--cache", str(cache), "--runs", str(runs)]) == 0
    return {"root": root, "runs": runs, "cache": cache, "test_dir": data / "crowdai_fma_test",
            "labels": data / "crowdai_fma_test_labels.csv", "demo": data}


def test_submit_validate_score(trained, tmp_path, capsys):
    out = tmp_path / "submissions"
    args = ["--exp", "tiny", "--runs", str(trained["runs"]), "--test-dir", str(trained["test_dir"]),
            "--cache", str(trained["cache"]), "--out", str(out), "--jobs", "2", "--no-progress"]
    assert submit.main(args) == 0
    assert "12 rows valid" in capsys.readouterr().out
    (csv_path,) = out.glob("*.csv")
    assert csv_path.name.endswith("_tiny.csv")
    assert validate.main([str(csv_path), "--test-dir", str(trained["test_dir"])]) == 0
    submission = read_submission(csv_path)
    assert sorted(submission.index) == list_test_ids(trained["test_dir"])

    sidecar = json.loads(csv_path.with_suffix(".json").read_text())
    assert sidecar["rows"] == 12 and sidecar["mean"] == "arithmetic" and sidecar["weights"] == {"tiny": 1.0}
    import hashlib

    assert sidecar["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    (experiment,) = sidecar["experiments"]
    assert experiment["folds"] == ["fold_0", "fold_1"] and experiment["features"]["n_mels"] == 16
    assert set(experiment["cv"]) >= {"log_loss", "macro_f1", "accuracy"}
    # every deliberately broken test file is listed with its reason and fallback
    broken = {b["id"]: b["kind"] for b in json.loads((trained["demo"] / "demo.json").read_text())["broken"]
              if b["path"].startswith("crowdai_fma_test/")}
    fallbacks = {f["id"]: f for f in sidecar["fallbacks"]}
    assert set(fallbacks) == set(broken)
    expected = {"silent": ("silent", submit.FALLBACK_MODEL), "too_short": ("too_short", submit.FALLBACK_MODEL),
                "zero_byte": ("unreadable", submit.FALLBACK_PRIOR)}
    for file_id, kind in broken.items():
        assert (fallbacks[file_id]["reason"], fallbacks[file_id]["fallback"]) == expected[kind]
    prior_id = next(i for i, k in broken.items() if k == "zero_byte")
    from crowdai.ensemble import load_ensemble
    from crowdai.submission import apply_floor

    prior = load_ensemble(trained["runs"], "tiny").prior()
    np.testing.assert_allclose(submission.loc[prior_id], apply_floor(prior[None, :])[0], atol=1e-9)
    assert sidecar["floor"] > 0 and sidecar["blend"] is None and sidecar["prior"] is None

    scores_path = tmp_path / "scores.json"
    assert score.main([str(csv_path), "--labels", str(trained["labels"]), "--json", str(scores_path)]) == 0
    scores = json.loads(scores_path.read_text())
    print(f"test-folder log loss {scores['log_loss']:.3f} (uniform {math.log(16):.3f}), "
          f"accuracy {scores['accuracy']:.2f}")
    assert scores["n"] == 12 and scores["log_loss"] < math.log(16)


def test_two_experiments_share_features_and_never_overwrite(trained, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"] / "tiny", runs / "tiny")
    shutil.copytree(trained["runs"] / "tiny", runs / "twin")
    output = tmp_path / "predictions.csv"
    args = ["--exp", "tiny,twin", "--runs", str(runs), "--test-dir", str(trained["test_dir"]),
            "--cache", str(trained["cache"]), "--output", str(output), "--mean", "geometric",
            "--blend-weights", "0.7,0.3", "--no-progress"]
    assert submit.main(args) == 0
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert len(sidecar["feature_caches"]) == 1  # one feature extraction for both experiments
    assert sidecar["weights"] == pytest.approx({"tiny": 0.7, "twin": 0.3}) and sidecar["mean"] == "geometric"
    single = tmp_path / "single.csv"
    assert submit.main(["--exp", "tiny", "--runs", str(runs), "--test-dir", str(trained["test_dir"]),
                        "--cache", str(trained["cache"]), "--output", str(single), "--no-progress"]) == 0
    # identical fold models: the weighted geometric pool equals either one
    pd.testing.assert_frame_equal(read_submission(output), read_submission(single), atol=1e-7)
    capsys.readouterr()
    before = output.read_bytes()
    assert submit.main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert output.read_bytes() == before


def tag_and_check(file: Path, *, exp: str, runs: Path, out: Path, capsys) -> dict:
    assert tag.main([str(file), "--exp", exp, "--runs", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / f"{file.stem}_tags.json").read_text())
    png = out / f"{file.stem}_taggram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segments = document["segments"]
    assert segments and segments[0]["start"] == 0.0
    assert all(s["end"] - s["start"] <= 10.0 + 1e-9 for s in segments)
    lines = [line for line in printed.splitlines() if "–" in line]
    assert len(lines) == len(segments) and lines[0].startswith("0:00–0:")
    assert "whole song" in printed
    return document


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"real recordings not found at {SHARED_AUDIO} "
                    "(../shared/audio beside the repository; absent in a fresh clone)")
@pytest.mark.parametrize("stem", ["Karissa_Hobbs_-_Lets_Go_Fishin", "admiralbob77_-_Choice_-_Drum-bass",
                                  "198-209-0000"])  # long song, short song, speech
def test_tag_real_recordings_with_a_trained_experiment(trained, tmp_path, capsys, stem):
    import soundfile as sf

    from common.metadata import TOP_GENRES

    file = SHARED_AUDIO / f"{stem}.ogg"
    document = tag_and_check(file, exp="tiny", runs=trained["runs"], out=tmp_path, capsys=capsys)
    duration = sf.info(file).duration
    assert len(document["segments"]) == math.ceil(duration / 10.0)
    assert document["segments"][-1]["end"] == pytest.approx(duration, abs=1e-3)
    for record in [*document["segments"], document["summary"]]:
        genres = record["genres"]
        assert list(genres) == list(TOP_GENRES)
        assert sum(genres.values()) == pytest.approx(1.0, abs=1e-4)
    assert document["notes"]["folds"] == 2 and document["notes"]["task"] == "single"


def test_tag_with_a_multi_experiment_uses_the_genre_tree(trained, tmp_path, capsys, signal, audio_writer):
    file = audio_writer("chirp.wav", signal("chirp", sr=48000, seconds=4.0, channels=2), sr=48000)
    document = tag_and_check(file, exp="tiny_multi", runs=trained["runs"], out=tmp_path, capsys=capsys)
    classes = json.loads((trained["runs"] / "tiny_multi" / "classes.json").read_text())["class_names"]
    assert len(document["segments"]) == 1
    assert list(document["segments"][0]["genres"]) == classes
    from common.metadata import TOP_GENRES

    assert set(classes) - set(TOP_GENRES)  # sub-genres such as Punk or IDM, not only the 16 top genres
    # a second run replaces the derived JSON and PNG and says so
    (tmp_path / "chirp_tags.json").write_text("{}")
    assert tag.main([str(file), "--exp", "tiny_multi", "--runs", str(trained["runs"]), "--out", str(tmp_path)]) == 0
    assert f"overwrote {tmp_path / 'chirp_tags.json'} and {tmp_path / 'chirp_taggram.png'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "chirp_tags.json").read_text()) == document
