"""Pseudo-labels (issue 23): ``fma-pseudo`` writes soft targets with their provenance, an experiment trains on them.

What is checked: the file and its sidecar (fold models and their sha256, threshold, folder,
counts), the threshold, that no track of the folds file or of the test split enters training
through it (dropped when written, refused when read), and that a run with pseudo-labels adds
them to every fold's training side only, with their weight, while the scored tracks stay
those of the same run without them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_tiny_config

import common.training
from common.config import load_config
from common.errors import ConfigError, OutputExistsError
from common.folds import read_folds
from common.metadata import TOP_GENRES, FmaDataset, audio_path
from common.pseudo import (
    CONFIDENCE,
    LEAK_REASONS,
    describe_leaks,
    fma_track_id,
    leaking_ids,
    read_pseudo_labels,
    write_pseudo_labels,
)
from crowdai import pseudo
from experiments import experiment, runner

SUBSET = "small"
#: Loss weight of a pseudo-labelled clip in the runs below.
WEIGHT = 0.5


def random_probs(n: int, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(16), size=n)


# --- the file format and the leakage rule, without models ---------------------------------------

def test_file_round_trips_with_its_provenance_and_is_never_overwritten(tmp_path):
    probs = random_probs(3, seed=0)
    path = write_pseudo_labels(tmp_path / "p.csv", ids=["a", "000007", "b"], probs=probs, class_names=TOP_GENRES,
                               record={"source": "/x/folder", "source_name": "folder", "threshold": 0.0})
    frame = pd.read_csv(path, dtype={"id": str})
    assert list(frame.columns) == ["id", *TOP_GENRES, CONFIDENCE]
    np.testing.assert_allclose(frame[CONFIDENCE], probs.max(axis=1), atol=1e-6)
    labels = read_pseudo_labels(path, class_names=TOP_GENRES)
    assert labels.ids == ["a", "000007", "b"] and labels.source_name == "folder"
    np.testing.assert_allclose(labels.probs, probs, atol=1e-5)
    assert labels.record["format"] == 1 and labels.record["class_names"] == list(TOP_GENRES)
    with pytest.raises(OutputExistsError):
        write_pseudo_labels(path, ids=["a"], probs=probs[:1], class_names=TOP_GENRES,
                            record={"source": "/x", "source_name": "x"})
    with pytest.raises(ConfigError, match="columns"):
        read_pseudo_labels(path, class_names=TOP_GENRES[::-1])
    bad = tmp_path / "bad.csv"
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    bad.write_text(path.read_text().replace(frame["id"][0] + ",0.", frame["id"][0] + ",9.", 1))
    with pytest.raises(ConfigError, match="sum to 1"):
        read_pseudo_labels(bad, class_names=TOP_GENRES)
    with pytest.raises(ConfigError, match="no such pseudo-label file"):
        read_pseudo_labels(tmp_path / "none.csv", class_names=TOP_GENRES)


def test_threshold_keeps_the_confident_usable_clips():
    probs = np.full((4, 16), 0.04)
    probs[:, 0] = [0.4, 0.9, 0.7, 0.95]
    probs[:, 1] = 1 - probs.sum(axis=1) + probs[:, 1]
    ids = ["a", "b", "000003", "c"]
    leaks = leaking_ids(ids, fold_track_ids={3}, test_track_ids=set())
    keep, rows = pseudo.select_rows(ids, probs, no_features={"c"}, leaks=leaks, threshold=0.6)
    assert keep.tolist() == [False, True, False, False]
    assert rows == {"predicted": 4, "kept": 1, "no_features": 1, "below_threshold": 1,
                    "refused": {LEAK_REASONS[0]: 1, LEAK_REASONS[1]: 0}}
    keep, _ = pseudo.select_rows(ids, probs, no_features=set(), leaks=leaking_ids(ids, fold_track_ids=(),
                                                                                   test_track_ids=()), threshold=0.0)
    assert keep.all()


def test_leaking_ids_are_fma_track_ids_of_the_folds_or_the_test_split():
    assert fma_track_id("000123") == 123 and fma_track_id("0a1b") is None and fma_track_id("٣") is None
    leaks = leaking_ids(["000002", "2", "000005", "000009", "f00d"], fold_track_ids={2, 9}, test_track_ids={5, 9})
    assert leaks == {LEAK_REASONS[0]: ["000002", "2", "000009"], LEAK_REASONS[1]: ["000005"]}
    assert describe_leaks(leaks) == ("3 clips are tracks of a fold's validation set (e.g. ['000002', '2', "
                                     "'000009']), 1 clip is a track of the test split (e.g. ['000005'])")
    assert describe_leaks(leaking_ids(["1"], fold_track_ids=(), test_track_ids=())) == ""


# --- fma-pseudo on trained folds, and training with its file ------------------------------------

@pytest.fixture(scope="module")
def pseudo_env(tiny_training_data, tmp_path_factory):
    """``tiny`` trained on the 2 demo folds; an unlabelled folder of the demo's test clips plus one fold
    track and one test-split track (named by track id); pseudo-labels of it at threshold 0."""
    data, cache, folds_path = tiny_training_data["data"], tiny_training_data["cache"], tiny_training_data["folds"]
    root = tmp_path_factory.mktemp("pseudo")
    config = write_tiny_config(root, "tiny", epochs=2, min_tracks=2, batch_size=8)
    runs = root / "runs"
    common_args = ["--data", str(data), "--subset", SUBSET, "--folds", str(folds_path), "--cache", str(cache)]
    assert runner.main(["--config", str(config), *common_args, "--runs", str(runs)]) == 0
    dataset = FmaDataset.open(data, SUBSET)
    folds = read_folds(folds_path, tracks=dataset.tracks)
    test_track = int(dataset.tracks.index[dataset.tracks[("set", "split")] == "test"][0])
    fold_track = int(folds.index[0])
    unlabelled = root / "unlabelled_pseudo"
    shutil.copytree(data / "crowdai_fma_test", unlabelled)
    for track in (fold_track, test_track):
        source = audio_path(dataset.audio_dir, track)
        shutil.copy(source, unlabelled / source.name)
    out = root / "out" / "p.csv"
    base = ["--exp", "tiny", "--runs", str(runs), "--unlabelled", str(unlabelled), "--cache", str(cache),
            "--jobs", "2", "--no-progress"]
    assert pseudo.main([*base, "--out", str(out), *common_args[:6]]) == 0
    return {"runs": runs, "root": root, "base": base, "out": out, "guard": common_args[:6], "data": data,
            "cache": cache, "folds": folds_path, "unlabelled": unlabelled,
            "leaky": {f"{fold_track:06d}", f"{test_track:06d}"}}


def test_pseudo_file_records_its_models_and_drops_leaking_tracks(pseudo_env, capsys):
    out = pseudo_env["out"]
    record = json.loads(out.with_suffix(".json").read_text())
    n_files = len(list(pseudo_env["unlabelled"].glob("*.mp3")))
    rows = record["rows"]
    assert rows["predicted"] == n_files and rows["refused"] == {LEAK_REASONS[0]: 1, LEAK_REASONS[1]: 1}
    assert rows["no_features"] >= 1 and rows["below_threshold"] == 0  # the demo's broken test files
    assert rows["kept"] == n_files - 2 - rows["no_features"]
    assert record["source"] == str(pseudo_env["unlabelled"].resolve()) and record["source_name"] == "unlabelled_pseudo"
    assert record["threshold"] == 0.0 and record["blend"] is None and record["mean"] == "arithmetic"
    (exp,) = record["experiments"]
    for fold in exp["folds"]:
        summary = json.loads((pseudo_env["runs"] / "tiny" / fold["fold"] / "summary.json").read_text())
        assert fold["model_sha256"] == summary["files"]["model.keras"]["sha256"]
    assert [f["fold"] for f in exp["folds"]] == ["fold_0", "fold_1"]
    labels = read_pseudo_labels(out, class_names=TOP_GENRES)
    assert len(labels.ids) == rows["kept"] and not set(labels.ids) & pseudo_env["leaky"]
    # a threshold keeps exactly the clips at least that confident; the same folder's features are reused
    confidence = np.sort(labels.probs.max(axis=1))
    middle = int(np.argmax(np.diff(confidence))) + 1  # the widest gap between two clips: far from rounding
    threshold = float(confidence[middle - 1] + confidence[middle]) / 2
    assert confidence[middle] - confidence[middle - 1] > 1e-4
    strict = pseudo_env["root"] / "out" / "strict.csv"
    capsys.readouterr()
    assert pseudo.main([*pseudo_env["base"], *pseudo_env["guard"], "--out", str(strict), "--threshold",
                        str(threshold)]) == 0
    assert f"-> {strict}" in capsys.readouterr().out
    strict_labels = read_pseudo_labels(strict, class_names=TOP_GENRES)
    assert strict_labels.ids == [i for i, p in zip(labels.ids, labels.probs) if p.max() > threshold]
    assert json.loads(strict.with_suffix(".json").read_text())["rows"]["below_threshold"] == middle
    # without the guard the leaking tracks stay in the file ... and training refuses it
    assert pseudo.main([*pseudo_env["base"], "--out", str(pseudo_env["root"] / "out" / "bare.csv")]) == 0
    assert pseudo.main([*pseudo_env["base"], "--out", str(strict)]) == 1  # never overwritten
    assert "exists" in capsys.readouterr().err


def test_a_larger_subsets_audio_folder_gives_only_its_tracks_outside_the_folds_and_test_split(pseudo_env):
    # `make pseudo UNLABELLED=data/fma_large` for a run trained on fma_small: the FMA layout is read
    # as it is, and every fold track and test-split track in it is dropped
    large = FmaDataset.open(pseudo_env["data"], "large")
    out = pseudo_env["root"] / "out" / "large.csv"
    base = [a if a != str(pseudo_env["unlabelled"]) else str(large.audio_dir) for a in pseudo_env["base"]]
    assert pseudo.main([*base, *pseudo_env["guard"], "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    folds = read_folds(pseudo_env["folds"], tracks=FmaDataset.open(pseudo_env["data"], SUBSET).tracks)
    on_disk = {int(p.stem) for p in large.audio_dir.glob("*/*.mp3")}
    test_split = set(large.tracks.index[large.tracks[("set", "split")] == "test"])
    assert rows["predicted"] == len(on_disk)
    assert rows["refused"][LEAK_REASONS[0]] == len(on_disk & set(folds.index)) > 0
    assert rows["refused"][LEAK_REASONS[1]] == len(on_disk & test_split - set(folds.index)) > 0
    kept = {int(i) for i in read_pseudo_labels(out, class_names=TOP_GENRES).ids}
    assert len(kept) == rows["kept"] > 0 and not kept & (set(folds.index) | test_split)


def pseudo_config(directory: Path, name: str, *, path: Path):
    config = write_tiny_config(directory, name, epochs=3, batch_size=8, min_tracks=2,
                               optimizer={"name": "adam", "learning_rate": 0.01})
    values = yaml.safe_load(config.read_text())
    values["data"]["pseudo_labels"] = {"path": str(path), "weight": WEIGHT}
    config.write_text(yaml.safe_dump(values))
    return load_config(config)


def open_data(config, env):
    return experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                           cache=env["cache"])


def test_training_refuses_validation_and_test_tracks(pseudo_env, tmp_path):
    bare = pseudo_env["root"] / "out" / "bare.csv"
    if not bare.exists():
        assert pseudo.main([*pseudo_env["base"], "--out", str(bare)]) == 0
    assert pseudo_env["leaky"] <= set(read_pseudo_labels(bare, class_names=TOP_GENRES).ids)
    with pytest.raises(ConfigError) as error:
        open_data(pseudo_config(tmp_path, "leaky", path=bare), pseudo_env)
    assert "1 clip is a track of a fold's validation set" in str(error.value)
    assert "1 clip is a track of the test split" in str(error.value) and str(bare) in str(error.value)


def test_pseudo_rows_train_every_fold_with_their_weight_and_scores_stay_on_the_same_tracks(
        pseudo_env, tmp_path, monkeypatch):
    labels = read_pseudo_labels(pseudo_env["out"], class_names=TOP_GENRES)
    plain_config = load_config(write_tiny_config(tmp_path, "plain", epochs=3, batch_size=8, min_tracks=2,
                                                 optimizer={"name": "adam", "learning_rate": 0.01}))
    with_config = pseudo_config(tmp_path, "with_pseudo", path=pseudo_env["out"])
    plain, with_pseudo = open_data(plain_config, pseudo_env), open_data(with_config, pseudo_env)
    n_fold, n = len(plain.folds), len(labels.ids)
    assert with_pseudo.n_pseudo == n and with_pseudo.n_test == plain.n_test
    ids = with_pseudo.store.ids.tolist()
    assert ids[n_fold:n_fold + n] == [f"pseudo:{i}" for i in labels.ids]
    assert ids[:n_fold] + ids[n_fold + n:] == plain.store.ids.tolist()
    np.testing.assert_allclose(with_pseudo.y[n_fold:n_fold + n], labels.probs)
    np.testing.assert_array_equal(with_pseudo.store.gather(np.arange(n_fold, n_fold + n)),
                                  pseudo_env_cache(pseudo_env, with_config).get(labels.ids))
    fed = []
    real_train_dataset = common.training.train_dataset

    def recording(store, positions, y, **kwargs):
        fed.append({"ids": np.array(store.ids)[positions], "y": np.array(y), "weights": kwargs.get("sample_weights")})
        return real_train_dataset(store, positions, y, **kwargs)

    monkeypatch.setattr(common.training, "train_dataset", recording)
    runs = tmp_path / "runs"
    summaries = {name: experiment.train_experiment(config, data, runs=runs)
                 for name, config, data in (("plain", plain_config, plain), ("with_pseudo", with_config, with_pseudo))}
    oof = {name: pd.read_csv(runs / name / "oof.csv", dtype={"id": str}) for name in summaries}
    assert oof["with_pseudo"][["id", "fold"]].equals(oof["plain"][["id", "fold"]])  # same scored tracks
    assert summaries["with_pseudo"]["test"]["n"] == summaries["plain"]["test"]["n"] > 0
    for fold, (without, fed_with) in enumerate(zip(fed[:2], fed[2:])):
        added = np.char.startswith(fed_with["ids"].astype(str), "pseudo:")
        assert added.sum() == n and fed_with["ids"][~added].tolist() == without["ids"].tolist()
        np.testing.assert_array_equal(fed_with["y"][~added], without["y"])
        assert without["weights"] is None
        np.testing.assert_array_equal(fed_with["weights"], np.where(added, WEIGHT, 1.0))
        train, val = with_pseudo.fold_rows(fold)
        assert set(range(n_fold, n_fold + n)) <= set(train.tolist()) and (val < n_fold).all()
        history = pd.read_csv(runs / "with_pseudo" / f"fold_{fold}" / "history.csv")
        assert history["loss"].iloc[-1] < history["loss"].iloc[0]  # it learns
    print(f"CV log loss without {summaries['plain']['cv']['log_loss']['mean']:.3f}, with "
          f"{n} pseudo-labelled clips {summaries['with_pseudo']['cv']['log_loss']['mean']:.3f}")


def pseudo_env_cache(env, config):
    """The feature cache of the unlabelled folder under ``config``'s settings."""
    from common.features import FeatureCache, cache_dir_for

    return FeatureCache.open(cache_dir_for(env["cache"], env["unlabelled"].name, config.features))


# --- labels per fold: fold k trains on what fold k's models alone said ----------------------------


def test_fold_labels_round_trip_and_a_damaged_fold_file_is_refused(tmp_path):
    from common.pseudo import fold_labels_path

    probs = random_probs(3, seed=1)
    by_fold = {0: random_probs(3, seed=2), 1: random_probs(3, seed=3)}
    path = write_pseudo_labels(tmp_path / "p.csv", ids=["a", "b", "c"], probs=probs, class_names=TOP_GENRES,
                               record={"source": "/x", "source_name": "x", "folds_checksum": "abc"},
                               fold_probs=by_fold)
    labels = read_pseudo_labels(path, class_names=TOP_GENRES)
    for fold, expected in by_fold.items():
        np.testing.assert_allclose(labels.fold_probs[fold], expected, atol=1e-5)
    table = pd.read_csv(fold_labels_path(path), dtype={"id": str})
    table.drop(index=4).to_csv(fold_labels_path(path), index=False)  # fold 1 loses clip "b"
    with pytest.raises(ConfigError, match="fold 1 does not label the clips"):
        read_pseudo_labels(path, class_names=TOP_GENRES)
    fold_labels_path(path).unlink()
    with pytest.raises(ConfigError, match="p.folds.csv: missing"):
        read_pseudo_labels(path, class_names=TOP_GENRES)


def test_a_guarded_pseudo_label_file_holds_each_fold_models_labels(pseudo_env):
    from common.folds import assignment_checksum
    from common.pseudo import fold_labels_path
    from crowdai.ensemble import load_ensemble

    out = pseudo_env["out"]
    record = json.loads(out.with_suffix(".json").read_text())
    folds = read_folds(pseudo_env["folds"], tracks=FmaDataset.open(pseudo_env["data"], SUBSET).tracks)
    assert record["fold_labels"] == fold_labels_path(out).name == "p.folds.csv"
    assert record["folds_checksum"] == assignment_checksum(folds) and record["fold_labels_refused"] is None
    labels = read_pseudo_labels(out, class_names=TOP_GENRES)
    assert sorted(labels.fold_probs) == [0, 1]
    ensemble = load_ensemble(pseudo_env["runs"], "tiny")
    with_config = pseudo_config(pseudo_env["root"], "fold_probe", path=out)
    from common.store import ClipStore

    store = ClipStore(pseudo_env_cache(pseudo_env, with_config), labels.ids)
    for fold, probs in ensemble.predict_each_fold(store).items():
        np.testing.assert_allclose(labels.fold_probs[fold], probs, atol=2e-6)  # fold k's model alone
    # the ensemble's labels are the mean of its folds' (one experiment, arithmetic mean)
    np.testing.assert_allclose(np.mean([labels.fold_probs[0], labels.fold_probs[1]], axis=0), labels.probs, atol=2e-6)
    assert np.abs(labels.fold_probs[0] - labels.fold_probs[1]).max() > 1e-3  # the folds' models disagree


def test_per_fold_training_takes_fold_ks_labels_for_fold_k(pseudo_env, tmp_path, monkeypatch):
    labels = read_pseudo_labels(pseudo_env["out"], class_names=TOP_GENRES)
    config = pseudo_config(tmp_path, "per_fold", path=pseudo_env["out"])
    values = yaml.safe_load((tmp_path / "per_fold.yaml").read_text())
    values["data"]["pseudo_labels"]["per_fold"] = True
    (tmp_path / "per_fold.yaml").write_text(yaml.safe_dump(values))
    config = load_config(tmp_path / "per_fold.yaml")
    assert config.to_dict()["data"]["pseudo_labels"]["per_fold"] is True
    exp_data = open_data(config, pseudo_env)
    fed = {}
    monkeypatch.setattr(common.training, "train_fold",
                        lambda config, *, fold, y_train, train_positions, **kwargs: fed.update(
                            {fold: (train_positions, y_train)}) or {})
    n_fold, n = len(exp_data.folds), exp_data.n_pseudo
    for fold in (0, 1):
        experiment.train_one_fold(config, exp_data, runs=tmp_path / "runs", fold=fold)
        positions, y = fed[fold]
        pseudo = (positions >= n_fold) & (positions < n_fold + n)
        assert pseudo.sum() == n == len(labels.ids)
        np.testing.assert_allclose(y[pseudo], labels.fold_probs[fold])
        np.testing.assert_array_equal(y[~pseudo], exp_data.y[positions[~pseudo]])  # labelled rows as ever
    assert np.abs(fed[0][1][-n:] - fed[1][1][-n:]).max() > 1e-3


def test_per_fold_labels_are_refused_without_them_or_on_other_folds(pseudo_env, tmp_path):
    from common.folds import make_folds, write_folds
    from crowdai.ensemble import load_ensemble

    tracks = FmaDataset.open(pseudo_env["data"], SUBSET).tracks
    folds = read_folds(pseudo_env["folds"], tracks=tracks)
    bare = pseudo_env["root"] / "out" / "bare.csv"
    if not bare.exists():
        assert pseudo.main([*pseudo_env["base"], "--out", str(bare)]) == 0
    with pytest.raises(ConfigError, match="has no labels per fold"):
        experiment.check_fold_labels(read_pseudo_labels(bare, class_names=TOP_GENRES), folds=folds)
    other_path = write_folds(tmp_path / "other.csv", make_folds(tracks, k=2, seed=7), subset=SUBSET, k=2, seed=7)
    other = read_folds(other_path, tracks=tracks)
    assert not other["fold"].equals(folds.loc[other.index, "fold"])
    with pytest.raises(ConfigError, match="made on other folds"):
        experiment.check_fold_labels(read_pseudo_labels(pseudo_env["out"], class_names=TOP_GENRES), folds=other)
    # models trained on other folds give no labels per fold
    reason = pseudo.folds_mismatch([load_ensemble(pseudo_env["runs"], "tiny")], other)
    assert reason is not None and "was validated on tracks outside fold" in reason
    out = tmp_path / "other_folds.csv"
    guard = ["--data", str(pseudo_env["data"]), "--subset", SUBSET, "--folds", str(other_path)]
    assert pseudo.main([*pseudo_env["base"], *guard, "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["fold_labels"] is None and "outside fold" in record["fold_labels_refused"]
    assert read_pseudo_labels(out, class_names=TOP_GENRES).fold_probs is None
