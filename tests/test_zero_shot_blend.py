"""The zero-shot musicnn tagger in a blend: its out-of-fold file on the fold tracks (``make zero-shot-oof``),
a blend with a trained experiment (``make blend EXP=musicnn,tiny``) and the submission that reproduces the
blend on the demo test folder (``make submit BLEND=...``).

The taggers are replaced by a stand-in for :func:`common.zero_shot.clip_genre_scores` that is a
deterministic function of the audio (its spectrum in 16 bands), and the weights by two small
checkpoint-shaped files: the point is the plumbing (rows, folds, prior, weight, provenance, the
same code on the test folder), which the real networks would only make slower.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_config

import common.zero_shot
from common.metadata import TOP_GENRES
from common.pretrained import MUSICNN_CHECKPOINTS, checkpoint_prefix
from crowdai import blend, submit, validate, zero_shot_oof
from crowdai.ensemble import load_ensemble
from crowdai.submission import apply_floor, read_submission
from crowdai.zero_shot_submit import predict_zero_shot
from experiments import runner

pytestmark = pytest.mark.slow

SUBSET = "small"

#: Stands in for the loaded networks (the stand-in scores never look at them).
FAKE_TAGGERS = object()


def fake_scores(y: np.ndarray, *, taggers) -> np.ndarray:
    """``(16,)`` genre scores from the log energy of ``y`` in 16 frequency bands (softmax): same audio, same scores."""
    assert taggers is FAKE_TAGGERS
    energy = np.log([band.mean() + 1e-9 for band in np.array_split(np.abs(np.fft.rfft(y)) ** 2, len(TOP_GENRES))])
    scores = np.exp(energy - energy.max())
    return scores / scores.sum()


@pytest.fixture(scope="module", autouse=True)
def fake_musicnn():
    """The module's taggers: :func:`fake_scores`, loaded from any weights folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.zero_shot, "clip_genre_scores", fake_scores)
        patch.setattr(common.zero_shot.MusicnnTaggers, "load", classmethod(lambda cls, *, weights_dir: FAKE_TAGGERS))
        yield


def fake_weights(folder: Path) -> Path:
    """Checkpoint-shaped files under ``folder`` (what :func:`common.pretrained.weights_present` looks for)."""
    for name in MUSICNN_CHECKPOINTS:
        prefix = checkpoint_prefix(name, weights_dir=folder)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".index", ".data-00000-of-00001"):
            Path(f"{prefix}{suffix}").write_bytes(f"{name}{suffix}".encode())
    return folder


@pytest.fixture(scope="module")
def runs(tiny_training_data, tmp_path_factory) -> dict:
    """``tiny`` trained on the 2 folds of the tiny training data, and ``musicnn``'s zero-shot oof.csv beside it."""
    root = tmp_path_factory.mktemp("zero_shot_blend")
    data, cache, folds = tiny_training_data["data"], tiny_training_data["cache"], tiny_training_data["folds"]
    runs = root / "runs"
    config = write_tiny_config(root, "tiny", epochs=1, min_tracks=2, batch_size=8)
    assert runner.main(["--config", str(config), "--data", str(data), "--subset", SUBSET, "--folds", str(folds),
                        "--cache", str(cache), "--runs", str(runs)]) == 0
    weights = fake_weights(root / "weights")
    assert zero_shot_oof.main(["--data", str(data), "--subset", SUBSET, "--folds", str(folds), "--runs", str(runs),
                               "--weights", str(weights), "--no-progress"]) == 0
    return {"runs": runs, "data": data, "cache": cache, "folds": folds, "weights": weights,
            "test_dir": data / "crowdai_fma_test"}


def test_zero_shot_oof_has_one_row_per_labelled_fold_track(runs, capsys):
    from common.audio import load_excerpt
    from common.folds import read_folds
    from common.metadata import FmaDataset

    exp_dir = runs["runs"] / "musicnn"
    oof = pd.read_csv(exp_dir / "oof.csv", dtype={"id": str})
    trained = pd.read_csv(runs["runs"] / "tiny" / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == list(trained.columns) == ["id", "fold", "target", *TOP_GENRES]
    dataset = FmaDataset.open(runs["data"], SUBSET)
    folds = read_folds(runs["folds"], tracks=dataset.tracks)
    labelled = dataset.top_genre_labels().reindex(folds.index).dropna()
    assert sorted(oof["id"]) == sorted(str(t) for t in labelled.index) and not oof["id"].duplicated().any()
    by_id = oof.set_index("id")
    assert all(by_id.loc[str(t), "fold"] == folds.loc[t, "fold"] for t in labelled.index)
    assert all(by_id.loc[str(t), "target"] == genre for t, genre in labelled.items())
    # every trained out-of-fold track is predicted, in the same fold with the same target
    assert set(trained["id"]) <= set(oof["id"])
    shared = by_id.loc[trained["id"]]
    assert (shared["fold"].to_numpy() == trained["fold"].to_numpy()).all()
    assert (shared["target"].to_numpy() == trained["target"].to_numpy()).all()

    record = json.loads((exp_dir / zero_shot_oof.RECORD_FILE).read_text())
    probs = by_id[list(TOP_GENRES)].to_numpy()
    prior = np.array(record["prior"]["probs"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.min() >= record["weight"] * prior.min() - 1e-12
    assert record["weight"] == common.zero_shot.PRIOR_WEIGHT and record["rows"] == len(oof)
    assert record["subset"] == SUBSET and record["prior"]["tracks"] > 0  # the demo's genre frequencies
    assert sorted(record["weights_sha256"]) == sorted(str(p.relative_to(runs["weights"]))
                                                      for p in runs["weights"].rglob("*") if p.is_file())
    # a row is the submission's rule on that track's audio: the tagger's scores smoothed toward the prior
    track = labelled.index[0]
    y, _ = load_excerpt(dataset.items()[list(dataset.tracks.index).index(track)][1], sample_rate=16000,
                        n_samples=int(common.zero_shot.SUBMISSION_CLIP_SECONDS * 16000), crop="center")
    expected = common.zero_shot.smooth_toward_prior(fake_scores(y, taggers=FAKE_TAGGERS)[None, :], prior=prior,
                                                    weight=record["weight"])
    np.testing.assert_allclose(by_id.loc[str(track), list(TOP_GENRES)].to_numpy(), expected[0], atol=1e-9)
    # written once: a second run is refused without --overwrite, before any work
    capsys.readouterr()
    assert zero_shot_oof.main(["--data", str(runs["data"]), "--subset", SUBSET, "--folds", str(runs["folds"]),
                               "--runs", str(runs["runs"]), "--weights", str(runs["weights"])]) == 1
    assert "already exists" in capsys.readouterr().err
    before = (runs["runs"] / "tiny" / "oof.csv").read_bytes()  # nor is a trained experiment's file replaced
    assert zero_shot_oof.main(["--data", str(runs["data"]), "--subset", SUBSET, "--folds", str(runs["folds"]),
                               "--runs", str(runs["runs"]), "--weights", str(runs["weights"]), "--name", "tiny",
                               "--overwrite"]) == 1
    assert "holds trained folds" in capsys.readouterr().err
    assert (runs["runs"] / "tiny" / "oof.csv").read_bytes() == before


def test_blend_with_a_trained_experiment_records_musicnn(runs, tmp_path, capsys):
    assert blend.main(["--exp", "musicnn,tiny", "--runs", str(runs["runs"])]) == 0
    document = json.loads((runs["runs"] / "blends" / "musicnn+tiny" / "blend.json").read_text())
    musicnn, tiny = document["experiments"]
    assert musicnn["name"] == "musicnn" and "zero_shot" not in tiny
    record = musicnn["zero_shot"]
    assert record["weights_sha256"] and record["weight"] == common.zero_shot.PRIOR_WEIGHT
    assert sum(record["prior"]["probs"]) == pytest.approx(1.0) and "fusion" in record
    assert document["folds_agree"] and document["common_tracks"] == tiny["rows"] <= musicnn["rows"]
    assert document["stages"]["calibrated:musicnn"]["params"]["temperature"] > 0
    assert len(document["stages"]["geometric"]["params"]["weights"]) == 2
    assert blend.load_blend("musicnn+tiny", runs=runs["runs"]).zero_shot == {"musicnn": record}

    # a damaged zero-shot oof.csv is not blended: the error names it and the command that writes it again
    copy = tmp_path / "runs"
    shutil.copytree(runs["runs"] / "musicnn", copy / "musicnn")
    shutil.copytree(runs["runs"] / "tiny", copy / "tiny")
    oof = copy / "musicnn" / "oof.csv"
    oof.write_text(oof.read_text().replace("0.", "1.", 1))
    capsys.readouterr()
    assert blend.main(["--exp", "musicnn,tiny", "--runs", str(copy)]) == 1
    err = capsys.readouterr().err
    assert str(oof) in err and "damaged" in err and "make zero-shot-oof" in err


def sealed_blend(runs: dict, tmp_path: Path, chosen: str) -> Path:
    """The fitted ``musicnn+tiny`` blend with its chosen stage set to ``chosen``, sealed again."""
    source = runs["runs"] / "blends" / "musicnn+tiny" / "blend.json"
    if not source.exists():
        assert blend.main(["--exp", "musicnn,tiny", "--runs", str(runs["runs"])]) == 0
    document = json.loads(source.read_text())
    document["chosen"] = chosen
    document["checksum"] = blend.blend_checksum(document)
    path = tmp_path / chosen.replace(":", "_") / "blend.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document))
    return path


def submit_args(runs: dict, blend_path: Path, output: Path, *extra: str) -> list[str]:
    return ["--blend", str(blend_path), "--runs", str(runs["runs"]), "--test-dir", str(runs["test_dir"]),
            "--cache", str(runs["cache"]), "--output", str(output), "--weights", str(runs["weights"]), "--jobs", "2",
            "--no-progress", *extra]


def test_submit_reproduces_the_blend_on_the_test_folder(runs, tmp_path, capsys):
    path = sealed_blend(runs, tmp_path, "geometric")  # a pool: both experiments are predicted
    output = tmp_path / "blended.csv"
    assert submit.main(submit_args(runs, path, output)) == 0
    assert "tiny(2 folds)+musicnn(zero-shot)" in capsys.readouterr().out
    assert validate.main([str(output), "--test-dir", str(runs["test_dir"])]) == 0
    # the same by hand: the zero-shot submission's code with the recorded prior and weight, the fold ensemble,
    # the blend's stage and floor
    fitted = blend.read_blend(path)
    record = fitted.zero_shot["musicnn"]
    zero_shot = predict_zero_shot(runs["test_dir"], prior=zero_shot_oof.recorded_prior(record),
                                  smoothing=record["weight"], taggers=FAKE_TAGGERS, progress=False)
    trained = submit.predict_test_folder([load_ensemble(runs["runs"], "tiny")], test_dir=runs["test_dir"],
                                         cache_root=runs["cache"], n_jobs=2, progress=False)
    expected = apply_floor(fitted.apply({"musicnn": zero_shot.probs, "tiny": trained.per_experiment["tiny"]}),
                           fitted.floor)
    submission = read_submission(output)
    assert list(submission.index) == zero_shot.ids
    np.testing.assert_allclose(submission[list(TOP_GENRES)].to_numpy(), expected, atol=1e-9)
    assert not np.allclose(expected, apply_floor(trained.per_experiment["tiny"], fitted.floor), atol=1e-3)
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert [e["name"] for e in sidecar["experiments"]] == ["tiny"] and list(sidecar["zero_shot"]) == ["musicnn"]
    assert sidecar["zero_shot"]["musicnn"]["smoothing"]["weight"] == record["weight"]
    assert set(sidecar["weights"]) == {"musicnn", "tiny"} and sidecar["mean"] == "blend:geometric"


def test_a_blend_stage_of_the_zero_shot_tagger_alone_needs_no_features(runs, tmp_path, capsys):
    path = sealed_blend(runs, tmp_path, "calibrated:musicnn")
    output = tmp_path / "zero_shot_only.csv"
    assert submit.main(submit_args(runs, path, output, "--adapt-prior")) == 0
    assert "estimated on the test set" in capsys.readouterr().out
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["experiments"] == [] and sidecar["feature_caches"] == [] and list(sidecar["zero_shot"]) == [
        "musicnn"]
    assert validate.main([str(output), "--test-dir", str(runs["test_dir"])]) == 0


def test_other_musicnn_weights_are_refused(runs, tmp_path, capsys):
    path = sealed_blend(runs, tmp_path, "geometric")
    other = tmp_path / "other weights"
    shutil.copytree(runs["weights"], other)
    Path(f"{checkpoint_prefix('MSD_musicnn', weights_dir=other)}.index").write_bytes(b"other")
    args = submit_args(runs, path, tmp_path / "refused.csv")
    args[args.index("--weights") + 1] = str(other)
    capsys.readouterr()
    assert submit.main(args) == 1
    err = capsys.readouterr().err
    assert str(other) in err and "differ" in err and not (tmp_path / "refused.csv").exists()
