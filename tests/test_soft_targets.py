"""Soft targets for the tracks without a genre_top (``task.multi_root: soft``) on the demo's subset large.

What is checked: the targets (uniform over the roots of ``genres_all``) and loss weights
fed to the model, that such a track never trains a fold that validates its artist, that a
run with them is scored on exactly the tracks a run without them is scored on, that the
default selection is unchanged, and that the model learns the soft targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_FEATURES, write_tiny_config

from common.config import load_config
from common.errors import ConfigError, MetadataError
from common.metadata import TOP_GENRE_IDS, TOP_GENRES, FmaDataset, load_tracks
from common.tasks import Task, build_task
from experiments import experiment

DATA = Path(__file__).parent / "data"
SUBSET = "large"

#: Loss weight of a multi-root track in the runs below.
WEIGHT = 0.5

SINGLE = Task(name="single", class_names=TOP_GENRES, genre_ids=tuple(TOP_GENRE_IDS[g] for g in TOP_GENRES))


def roots_of(genres_all: list[int]) -> list[int]:
    """Class indices (TOP_GENRES order) of the top-level genres in a ``genres_all`` list."""
    return sorted(SINGLE.genre_ids.index(g) for g in genres_all if g in SINGLE.genre_ids)


def test_root_targets_on_the_real_tracks_csv():
    tracks = load_tracks(DATA / "tracks.csv")
    ids, y = SINGLE.root_targets(tracks)
    assert ids.tolist() == [20, 26]  # the two rows of the excerpt without a genre_top: [17, 10, 76, 103]
    expected = np.zeros(SINGLE.n_classes, np.float32)
    expected[[TOP_GENRES.index("Folk"), TOP_GENRES.index("Pop")]] = 0.5
    np.testing.assert_array_equal(y, [expected, expected])
    labelled, _ = SINGLE.targets(tracks)
    assert not set(labelled.tolist()) & set(ids.tolist())  # Task.targets still leaves them out
    multi = build_task("multi", tracks=tracks, genres=pd.read_csv(DATA / "genres.csv").set_index("genre_id"),
                       train_ids=tracks.index.tolist(), min_tracks=1)
    with pytest.raises(ConfigError, match="task.multi_root"):
        multi.root_targets(tracks)


@pytest.fixture(scope="module")
def large_data(demo_data_dir, tmp_path_factory) -> dict:
    """``TINY_FEATURES`` of the demo's subset ``large`` and a 2-fold file of it."""
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, write_folds
    from common.settings import FeatureSettings

    root = tmp_path_factory.mktemp("soft_targets")
    dataset = FmaDataset.open(demo_data_dir, SUBSET)
    settings = FeatureSettings.from_dict(TINY_FEATURES)
    extract(dataset.items(), settings=settings, cache_dir=cache_dir_for(root / "cache", dataset.feature_source,
                                                                         settings), n_jobs=2, progress=False)
    folds = write_folds(root / "folds.csv", make_folds(dataset.tracks, k=2, seed=0), subset=SUBSET, k=2, seed=0)
    return {"data": demo_data_dir, "cache": root / "cache", "folds": folds, "tracks": dataset.tracks}


def tiny_config(directory: Path, name: str, **task):
    """The tiny short-chunk config with enough steps to learn (batch 8, 3 epochs, lr 0.01), plus ``task`` keys."""
    path = write_tiny_config(directory, name, epochs=3, batch_size=8, optimizer={"name": "adam", "learning_rate": 0.01})
    values = yaml.safe_load(path.read_text())
    values["task"].update(task)
    path.write_text(yaml.safe_dump(values))
    return load_config(path)


def open_data(config, env, folds=None):
    return experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=folds or env["folds"],
                                           cache=env["cache"])


def test_default_selection_is_the_labelled_tracks_and_soft_adds_the_others_as_train_only(large_data, tmp_path):
    from common.features import FeatureCache, cache_dir_for
    from common.settings import FeatureSettings

    tracks = large_data["tracks"]
    plain = open_data(tiny_config(tmp_path, "plain"), large_data)
    soft = open_data(tiny_config(tmp_path, "soft", multi_root="soft", multi_root_weight=WEIGHT), large_data)
    # without the key: the tracks with a genre_top, fold tracks then the test split, one-hot targets
    ids = np.array(plain.store.ids, dtype=np.int64)
    cached = {int(t) for t in FeatureCache.open(cache_dir_for(
        large_data["cache"], f"fma_{SUBSET}", FeatureSettings.from_dict(TINY_FEATURES))).ids}
    top = tracks[("track", "genre_top")]
    split = tracks[("set", "split")].astype(str)
    eligible = [t for t in tracks.index if pd.notna(top[t]) and t in cached]
    assert ids.tolist() == ([t for t in eligible if split[t] != "test"] + [t for t in eligible if split[t] == "test"])
    assert plain.train_only is None and len(plain.folds) == len(ids) - plain.n_test
    np.testing.assert_array_equal(plain.y, np.eye(16)[[TOP_GENRES.index(top[t]) for t in ids]])
    # with it: the same labelled rows, folds and test rows, then the multi-root fold tracks, train-only
    n_labelled = len(plain.folds)
    soft_ids = np.array(soft.store.ids, dtype=np.int64)
    assert soft_ids[:n_labelled].tolist() == ids[:n_labelled].tolist()
    assert soft_ids[len(soft.folds):].tolist() == ids[n_labelled:].tolist() and soft.n_test == plain.n_test
    np.testing.assert_array_equal(soft.folds[:n_labelled], plain.folds)
    np.testing.assert_array_equal(soft.y[:n_labelled], plain.y[:n_labelled])
    np.testing.assert_array_equal(soft.y[len(soft.folds):], plain.y[n_labelled:])
    assert soft.train_only.tolist() == [False] * n_labelled + [True] * (len(soft.folds) - n_labelled)
    extra = soft_ids[n_labelled:len(soft.folds)]
    assert len(extra) >= 30 and top[extra].isna().all() and (split[extra] != "test").all()
    for track_id, target in zip(extra, soft.y[n_labelled:len(soft.folds)]):
        roots = roots_of(tracks.loc[track_id, ("track", "genres_all")])
        assert len(roots) >= 2 and np.isclose(target.sum(), 1.0)
        np.testing.assert_allclose(target[roots], 1 / len(roots))
    # fold rows: a train-only row trains the other fold, never validates
    for fold in (0, 1):
        train, val = soft.fold_rows(fold)
        assert not soft.train_only[val].any() and (soft.folds[val] == fold).all()
        assert set(np.flatnonzero(soft.train_only & (soft.folds != fold))) <= set(train.tolist())
        assert not (soft.folds[train] == fold).any()


def test_folds_not_grouped_by_artist_are_refused_with_soft_targets(large_data, tmp_path):
    from common.folds import read_folds, write_folds

    tracks = large_data["tracks"]
    folds = read_folds(large_data["folds"], tracks=tracks).reset_index()
    without_top = tracks[("track", "genre_top")].isna()
    artist = int(folds.loc[folds["track_id"].isin(tracks.index[without_top]), "artist_id"].iloc[0])
    labelled = folds["track_id"].isin(tracks.index[~without_top]) & (folds["artist_id"] == artist)
    moved_folds = folds["fold"].to_numpy().copy()
    first = int(labelled.to_numpy().argmax())
    moved_folds[first] = 1 - moved_folds[first]  # one labelled track of that artist moves
    folds["fold"] = moved_folds
    moved = write_folds(tmp_path / "moved.csv", folds, subset=SUBSET, k=2, seed=0)
    open_data(tiny_config(tmp_path, "plain"), large_data, folds=moved)  # without the key: read as before
    with pytest.raises(MetadataError, match=rf"moved\.csv: artist {artist} .*not grouped by artist"):
        open_data(tiny_config(tmp_path, "soft", multi_root="soft"), large_data, folds=moved)


def test_soft_targets_train_on_other_folds_only_and_are_learnt(large_data, tmp_path, monkeypatch):
    import keras

    import common.training
    from common.inference import predict_clips

    fed = []
    real_train_dataset = common.training.train_dataset

    def recording(store, positions, y, **kwargs):
        fed.append({"ids": np.array(store.ids)[positions].astype(np.int64), "y": np.array(y),
                    "weights": kwargs.get("sample_weights")})
        return real_train_dataset(store, positions, y, **kwargs)

    monkeypatch.setattr(common.training, "train_dataset", recording)
    tracks = large_data["tracks"]
    runs = tmp_path / "runs"
    configs = {"plain": tiny_config(tmp_path, "plain"),
               "soft": tiny_config(tmp_path, "soft", multi_root="soft", multi_root_weight=WEIGHT)}
    data = {name: open_data(config, large_data) for name, config in configs.items()}
    summaries = {}
    for name, config in configs.items():
        summary = experiment.train_experiment(config, data[name], runs=runs)
        assert summary is not None
        summaries[name] = summary
    plain_fed, soft_fed = fed[:2], fed[2:]
    assert all(f["weights"] is None for f in plain_fed)
    oof = {name: pd.read_csv(runs / name / "oof.csv", dtype={"id": str}) for name in configs}
    # scored on exactly the same tracks: out-of-fold ids and folds, test-split count
    assert oof["soft"][["id", "fold"]].equals(oof["plain"][["id", "fold"]])
    assert summaries["soft"]["test"]["n"] == summaries["plain"]["test"]["n"] > 0
    assert not tracks.loc[oof["soft"]["id"].astype(int), ("track", "genre_top")].isna().any()
    artist = tracks[("artist", "id")]
    for fold, (plain, soft) in enumerate(zip(plain_fed, soft_fed)):
        multi = tracks.loc[soft["ids"], ("track", "genre_top")].isna().to_numpy()
        assert multi.sum() >= 10 and soft["ids"][~multi].tolist() == plain["ids"].tolist()
        np.testing.assert_array_equal(soft["y"][~multi], plain["y"])
        for track_id, target in zip(soft["ids"][multi], soft["y"][multi]):  # a distribution over its roots
            roots = roots_of(tracks.loc[track_id, ("track", "genres_all")])
            expected = np.zeros(16, np.float32)
            expected[roots] = 1 / len(roots)
            np.testing.assert_allclose(target, expected, rtol=1e-6)
        np.testing.assert_array_equal(soft["weights"], np.where(multi, WEIGHT, 1.0))
        validated = oof["soft"].loc[oof["soft"]["fold"] == fold, "id"].astype(int)
        assert not set(soft["ids"][multi].tolist()) & set(validated)
        assert not set(artist[soft["ids"][multi]]) & set(artist[validated])  # never trains its artist's fold
    # it learns: the training loss falls in every fold, and each soft fold model fits the soft targets
    # of the multi-root tracks it trained on better than the fold model that never saw them
    soft_data, config = data["soft"], configs["soft"]
    for fold in (0, 1):
        history = pd.read_csv(runs / "soft" / f"fold_{fold}" / "history.csv")
        assert history["loss"].iloc[-1] < history["loss"].iloc[0]
        rows = np.flatnonzero(soft_data.train_only & (soft_data.folds != fold))
        y = soft_data.y[rows]
        cross_entropy = {}
        for name in configs:
            model = keras.models.load_model(runs / name / f"fold_{fold}" / "model.keras", compile=False)
            probs = predict_clips(model, soft_data.store.subset(rows), crop_frames=config.data.crop_frames(
                config.features), eval=config.data.eval, chunk_hop_frames=config.data.chunk_hop_frames(
                config.features), batch_size=64)
            cross_entropy[name] = float(-(y * np.log(np.clip(probs, 1e-7, 1.0))).sum(axis=1).mean())
        print(f"fold {fold}: cross-entropy on its {len(rows)} multi-root training tracks {cross_entropy}; "
              f"CV log loss {summaries['plain']['cv']['log_loss']['mean']:.3f} without, "
              f"{summaries['soft']['cv']['log_loss']['mean']:.3f} with them")
        assert cross_entropy["soft"] < min(cross_entropy["plain"], np.log(16))
    fold_summary = json.loads((runs / "soft" / "fold_0" / "summary.json").read_text())
    assert fold_summary["n_train"] == len(soft_fed[0]["ids"])
