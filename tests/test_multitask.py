"""Multi-task models (``task.auxiliary: genres_all``): the 16-way head plus a sigmoid head over the genre tree.

What is checked: the config keys and their errors; every registry model gets both heads;
the loss is the main head's plus the weighted auxiliary binary cross-entropy; the training
batches carry both targets; a short training lowers both losses; the fold and experiment
files (``oof.csv``, ``summary.json``) are those a single-task run writes; the fold ensemble
predicts the 16 top genres; ``fma-tag`` shows the auxiliary head's sub-genres; a config
without the keys trains a one-output model as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_tiny_config
from test_precision import TINY as TINY_MODELS

from common.config import load_config
from common.errors import ConfigError, ToolkitError
from common.metadata import TOP_GENRE_IDS, TOP_GENRES
from common.models import MODEL_NAMES, build_model
from common.tasks import AUXILIARY_CLASSES, Task
from experiments import experiment

SUBSET = "small"
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"

#: Loss weight of the auxiliary head in the runs below.
WEIGHT = 0.3

SINGLE = Task(name="single", class_names=TOP_GENRES, genre_ids=tuple(TOP_GENRE_IDS[g] for g in TOP_GENRES))


def tiny_config(directory: Path, name: str, *, epochs: int = 3, **task):
    """The tiny short-chunk config (batch 8, lr 0.01, genres with 2 training tracks), plus ``task`` keys."""
    path = write_tiny_config(directory, name, epochs=epochs, batch_size=8, min_tracks=2,
                             optimizer={"name": "adam", "learning_rate": 0.01})
    values = yaml.safe_load(path.read_text())
    values["task"].update(task)
    path.write_text(yaml.safe_dump(values))
    return load_config(path)


def test_config_keys_and_their_errors(tmp_path):
    demo = load_config(CONFIGS / "demo.yaml", check_model=False)
    multitask = load_config(CONFIGS / "demo_multitask.yaml", check_model=False)
    assert (multitask.task.auxiliary, multitask.task.auxiliary_weight) == ("genres_all", WEIGHT)
    assert (multitask.features, multitask.model, multitask.data, multitask.training) == (
        demo.features, demo.model, demo.data, demo.training)
    assert "auxiliary" not in demo.to_dict()["task"] and "auxiliary_weight" not in demo.to_dict()["task"]
    assert multitask.to_dict()["task"]["auxiliary"] == "genres_all"
    cases = [({"auxiliary": "genres_all", "name": "multi"}, r"task\.auxiliary: 'genres_all' .* task\.name 'single'"),
             ({"auxiliary": "genres"}, r"task\.auxiliary: 'genres' is not one of \['none', 'genres_all'\]"),
             ({"auxiliary": "genres_all", "auxiliary_weight": 0}, r"task\.auxiliary_weight: 0\.0 must be a positive"),
             ({"auxiliary_weight": 0.5}, r"task\.auxiliary_weight: .*set auxiliary: genres_all or remove")]
    for task, message in cases:
        path = write_tiny_config(tmp_path, "bad")
        values = yaml.safe_load(path.read_text())
        values["task"].update(task)
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ConfigError, match=message):
            load_config(path, check_model=False)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registry_model_gets_both_heads(name):
    shape, params = TINY_MODELS[name]
    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=shape, n_outputs=16, activation="softmax", auxiliary_outputs=5, **params)
    assert model.output_shape == [(None, 16), (None, 5)]
    main, auxiliary = model(np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32), training=False)
    np.testing.assert_allclose(np.sum(main, axis=1), 1.0, rtol=1e-5)
    assert auxiliary.dtype == "float32" and np.ptp(np.sum(auxiliary, axis=1)) > 0  # sigmoids, not a distribution
    assert model.get_layer("auxiliary").activation.__name__ == "sigmoid"
    plain = build_model(name, input_shape=shape, n_outputs=16, activation="softmax", **params)
    assert plain.output_shape == (None, 16)  # without it: the one output of before
    assert len(model.weights) == len(plain.weights) + 2  # the auxiliary head's kernel and bias only


def test_loss_is_main_plus_weighted_auxiliary(tmp_path):
    from common.store import ClipStore
    from common.training import _build_or_resume_model, _fold_inputs, fold_globals, select_runtime

    config = tiny_config(tmp_path, "loss", auxiliary="genres_all", auxiliary_weight=WEIGHT)
    auxiliary = Task(name="multi", class_names=("Rock", "Punk", "Jazz"), genre_ids=(12, 25, 4))
    rng = np.random.default_rng(0)
    x = rng.normal(-30.0, 10.0, size=(8, *config.features.clip_shape)).astype(np.float32)
    inputs = _fold_inputs(config, store=ClipStore.from_array(x), train_positions=np.arange(8),
                          val_positions=np.arange(2))
    runtime = select_runtime(config.training)
    with fold_globals(runtime, seed=0):
        model, _ = _build_or_resume_model(config, task=SINGLE, auxiliary=auxiliary, run_dir=tmp_path / "unused",
                                          runtime=runtime, inputs=inputs)
    crops = x[..., :inputs.crop_frames]
    y = np.eye(16, dtype=np.float32)[rng.integers(0, 16, 8)]
    y_aux = (rng.random((8, 3)) > 0.5).astype(np.float32)
    logs = model.evaluate(crops, [y, y_aux], batch_size=8, return_dict=True, verbose=0)
    main, aux = (np.asarray(p, np.float64) for p in model(crops, training=False))
    cross_entropy = -np.mean(np.sum(y * np.log(main), axis=1))
    binary = -np.mean(y_aux * np.log(aux) + (1 - y_aux) * np.log(1 - aux))
    assert logs["probabilities_loss"] == pytest.approx(cross_entropy, rel=1e-4)
    assert logs["auxiliary_loss"] == pytest.approx(binary, rel=1e-4)
    assert logs["loss"] == pytest.approx(cross_entropy + WEIGHT * binary, rel=1e-4)


def test_training_batches_carry_both_targets_mixed_alike():
    from common.data import train_dataset
    from common.store import ClipStore

    rng = np.random.default_rng(0)
    store = ClipStore.from_array(rng.normal(size=(10, 4, 12)).astype(np.float32))
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)]
    y_aux = np.concatenate([y, 1 - y[:, :2]], axis=1)  # mixed with y's partners and weights, it stays this of y
    common = {"crop_frames": 8, "batch_size": 4, "seed": 3, "mixup_alpha": 0.4, "n_epochs": 2}
    plain = list(train_dataset(store, np.arange(10), y, **common))
    both = list(train_dataset(store, np.arange(10), y, auxiliary_targets=y_aux, **common))
    assert len(plain) == len(both) == 6
    for (x0, y0), (x1, (y1, a1)) in zip(plain, both, strict=True):
        np.testing.assert_array_equal(x0, x1)  # the same crops and mixup as without the auxiliary targets
        np.testing.assert_array_equal(y0, y1)
        np.testing.assert_allclose(a1, np.concatenate([y1, 1 - y1[:, :2]], axis=1), atol=1e-6)


def test_auxiliary_targets_of_the_real_tracks_csv_and_clips_that_are_not_tracks(tmp_path):
    from common.metadata import load_tracks
    from common.store import ClipStore

    data = Path(__file__).parent / "data"
    tracks = load_tracks(data / "tracks.csv")
    genres = pd.read_csv(data / "genres.csv").set_index("genre_id")
    folds = pd.DataFrame({"fold": 0}, index=tracks.index)
    config = tiny_config(tmp_path, "aux", auxiliary="genres_all")
    clips = np.zeros((len(tracks), 2, 3), np.float32)
    auxiliary, y = experiment.auxiliary_targets(config, tracks=tracks, genres=genres, folds=folds,
                                                store=ClipStore.from_array(clips, ids=tracks.index[::-1]))
    assert auxiliary.genre_ids == tuple(sorted(auxiliary.genre_ids)) and 76 in auxiliary.genre_ids  # a sub-genre
    for track_id, row in zip(tracks.index[::-1], y, strict=True):  # in the store's row order
        expected = set(tracks.loc[track_id, ("track", "genres_all")]) & set(auxiliary.genre_ids)
        assert {g for g, hot in zip(auxiliary.genre_ids, row) if hot} == expected
    assert experiment.auxiliary_targets(tiny_config(tmp_path, "plain"), tracks=tracks, genres=genres, folds=folds,
                                        store=ClipStore.from_array(clips)) == (None, None)
    pseudo = ClipStore.from_array(clips[:2], ids=[str(tracks.index[0]), "pseudo:0c4e"])
    with pytest.raises(ConfigError, match=r"task\.auxiliary: 1 training clips are not FMA tracks"):
        experiment.auxiliary_targets(config, tracks=tracks, genres=genres, folds=folds, store=pseudo)


@pytest.fixture(scope="module")
def trained(tiny_training_data, tmp_path_factory) -> dict:
    """A single-task (1 epoch: its files, not its learning, are compared) and a multi-task tiny
    experiment (3 epochs), trained on the 2 tiny folds."""
    root = tmp_path_factory.mktemp("multitask")
    env = tiny_training_data
    configs = {"plain": tiny_config(root, "plain", epochs=1),
               "multitask": tiny_config(root, "multitask", auxiliary="genres_all", auxiliary_weight=WEIGHT)}
    runs = root / "runs"
    data, summaries = {}, {}
    for name, config in configs.items():
        data[name] = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET,
                                                     folds_path=env["folds"], cache=env["cache"])
        summaries[name] = experiment.train_experiment(config, data[name], runs=runs)
        assert summaries[name] is not None
    return {"runs": runs, "configs": configs, "data": data, "summaries": summaries}


def test_auxiliary_targets_are_the_genre_tree(trained, tiny_training_data):
    from common.metadata import FmaDataset

    plain, multitask = trained["data"]["plain"], trained["data"]["multitask"]
    assert plain.auxiliary is None and plain.y_auxiliary is None
    np.testing.assert_array_equal(multitask.store.ids, plain.store.ids)  # the same rows, targets and folds
    np.testing.assert_array_equal(multitask.y, plain.y)
    auxiliary = multitask.auxiliary
    assert auxiliary.name == "multi" and set(auxiliary.genre_ids) - set(TOP_GENRE_IDS.values())  # sub-genres too
    tracks = FmaDataset.open(tiny_training_data["data"], SUBSET).tracks
    for track_id, row in zip(multitask.store.ids[:5], multitask.y_auxiliary[:5]):
        genres_all = set(tracks.loc[int(track_id), ("track", "genres_all")])
        assert {g for g, hot in zip(auxiliary.genre_ids, row) if hot} == genres_all & set(auxiliary.genre_ids)


def test_both_losses_fall_and_the_run_files_are_the_single_task_ones(trained):
    runs, summaries = trained["runs"], trained["summaries"]
    for fold in (0, 1):
        history = pd.read_csv(runs / "multitask" / f"fold_{fold}" / "history.csv")
        print(f"fold {fold}:\n{history[['epoch', 'loss', 'probabilities_loss', 'auxiliary_loss', 'val_loss']]}")
        for column in ("probabilities_loss", "auxiliary_loss"):
            assert history[column].iloc[-1] < history[column].iloc[0]
        plain = pd.read_csv(runs / "plain" / f"fold_{fold}" / "history.csv")
        assert list(history.columns[:2]) == ["epoch", "loss"] and list(history.columns[4:]) == list(plain.columns[2:])
        assert set(history.columns[2:4]) == {"probabilities_loss", "auxiliary_loss"}  # each head's, in the log's order
        assert not any(c.endswith("_loss") and c != "val_loss" for c in plain.columns)  # single-task: as before
    # oof.csv and summary.json: the 16-way ones, on the same tracks and folds, with the same keys
    oof = {name: pd.read_csv(runs / name / "oof.csv", dtype={"id": str}) for name in ("plain", "multitask")}
    assert list(oof["multitask"].columns) == ["id", "fold", "target", *TOP_GENRES] == list(oof["plain"].columns)
    assert oof["multitask"][["id", "fold", "target"]].equals(oof["plain"][["id", "fold", "target"]])
    np.testing.assert_allclose(oof["multitask"][list(TOP_GENRES)].sum(axis=1), 1.0, atol=1e-5)
    for fold in (0, 1):
        fold_summaries = [json.loads((runs / name / f"fold_{fold}" / "summary.json").read_text())
                          for name in ("plain", "multitask")]
        assert fold_summaries[0].keys() == fold_summaries[1].keys()
        assert fold_summaries[0]["metrics"].keys() == fold_summaries[1]["metrics"].keys()
        assert fold_summaries[1]["task"] == "single" and fold_summaries[1]["n_val"] == fold_summaries[0]["n_val"]
    assert summaries["plain"].keys() == summaries["multitask"].keys()
    assert summaries["multitask"]["test"]["n"] == summaries["plain"]["test"]["n"] > 0
    # the fold files: the multi-task run adds the auxiliary classes only
    fold_files = {name: sorted(p.name for p in (runs / name / "fold_0").iterdir()) for name in ("plain", "multitask")}
    assert sorted([*fold_files["plain"], AUXILIARY_CLASSES]) == fold_files["multitask"]
    saved = Task.load(runs / "multitask" / "fold_0" / AUXILIARY_CLASSES)
    assert saved == trained["data"]["multitask"].auxiliary
    assert keras.models.load_model(runs / "plain" / "fold_0" / "model.keras", compile=False).output_shape == (None, 16)


def test_oof_is_the_main_head_of_the_saved_model(trained):
    from common.inference import predict_clips

    runs, config, data = trained["runs"], trained["configs"]["multitask"], trained["data"]["multitask"]
    model = keras.models.load_model(runs / "multitask" / "fold_0" / "model.keras", compile=False)
    assert len(model.outputs) == 2
    _, val = data.fold_rows(0)
    probs = predict_clips(model, data.store.subset(val), crop_frames=config.data.crop_frames(config.features),
                          eval=config.data.eval, chunk_hop_frames=config.data.chunk_hop_frames(config.features),
                          batch_size=4)
    oof = pd.read_csv(runs / "multitask" / "fold_0" / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == list(data.store.ids[val])
    np.testing.assert_allclose(oof[list(TOP_GENRES)].to_numpy(), probs, atol=1e-6)


def test_fold_ensemble_predicts_16_columns(trained):
    from crowdai.ensemble import load_ensemble

    data = trained["data"]["multitask"]
    clips = data.store.subset(np.arange(len(data.store) - data.n_test, len(data.store)))
    ensemble = load_ensemble(trained["runs"], "multitask")
    probs = ensemble.predict(clips)
    assert probs.shape == (data.n_test, 16)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    auxiliary = ensemble.predict_auxiliary(clips)
    assert auxiliary.shape == (data.n_test, data.auxiliary.n_classes)
    assert not np.allclose(auxiliary.sum(axis=1), 1.0)
    with pytest.raises(ToolkitError, match="no auxiliary head"):
        load_ensemble(trained["runs"], "plain").predict_auxiliary(clips)


def test_tag_shows_the_sub_genres(trained, tmp_path, capsys, signal, audio_writer):
    from crowdai import tag

    file = audio_writer("chirp.wav", signal("chirp", sr=48000, seconds=12.0, channels=2), sr=48000)
    assert tag.main([str(file), "--exp", "multitask", "--runs", str(trained["runs"]), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "segment  genres  |  sub-genres" in printed
    document = json.loads((tmp_path / "chirp_tags.json").read_text())
    auxiliary = trained["data"]["multitask"].auxiliary
    sub_genres = [name for name, g in zip(auxiliary.class_names, auxiliary.genre_ids)
                  if g not in TOP_GENRE_IDS.values()]
    assert len(document["segments"]) == 2
    for record in [*document["segments"], document["summary"]]:
        assert list(record["genres"]) == list(TOP_GENRES)
        assert list(record["sub-genres"]) == sub_genres
    rows = [line for line in printed.splitlines() if "–" in line or line.startswith("whole song")]
    assert len(rows) == 3 and all(line.count("  |  ") == 1 for line in rows)
    assert tag.main([str(file), "--exp", "plain", "--runs", str(trained["runs"]), "--out", str(tmp_path)]) == 0
    assert "segment  genres\n" in capsys.readouterr().out  # a single-head experiment: as before
