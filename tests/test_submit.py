"""Unit tests of the ensemble arithmetic, output naming and refusals of crowdai.submit (no training)."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest

from common.errors import ConfigError, OutputExistsError, ToolkitError
from common.io import sidecar_path
from common.metadata import TOP_GENRES
from common.settings import FeatureSettings
from crowdai import submit
from crowdai.ensemble import combine, load_ensemble, parse_weights, segment_spans
from crowdai.submission import claim_submission_path, publish_submission, submission_path


def random_probs(n, k, *, seed):
    p = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    return p


def test_arithmetic_mean_is_the_weighted_average():
    a, b = random_probs(5, 16, seed=0), random_probs(5, 16, seed=1)
    np.testing.assert_allclose(combine([a, b]), (a + b) / 2)
    np.testing.assert_allclose(combine([a, b], weights=np.array([3.0, 1.0])), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(combine([a]), a)


def test_geometric_mean_is_the_renormalised_weighted_product():
    a, b = random_probs(5, 4, seed=2), random_probs(5, 4, seed=3)
    w = np.array([0.7, 0.3])
    expected = a ** 0.7 * b ** 0.3
    expected /= expected.sum(axis=1, keepdims=True)
    out = combine([a, b], weights=w, mean="geometric")
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)
    # a class one experiment rules out stays (near) out in the geometric pool, not in the arithmetic one
    a[:, 0] = 0.0
    b[:, 0] = 9 * b[:, 1:].sum(axis=1)  # 0.9 once renormalised
    a, b = a / a.sum(axis=1, keepdims=True), b / b.sum(axis=1, keepdims=True)
    assert (combine([a, b], mean="geometric")[:, 0] < 1e-5).all()
    np.testing.assert_allclose(combine([a, b], mean="arithmetic")[:, 0], 0.45)


def test_geometric_equals_arithmetic_for_identical_inputs_and_rows_sum_to_one():
    a = random_probs(50, 16, seed=4).astype(np.float32)  # float32 rows are off 1 by ~1e-7
    for mean in ("arithmetic", "geometric"):
        out = combine([a, a], mean=mean)
        np.testing.assert_allclose(out, a / a.sum(axis=1, keepdims=True), rtol=1e-6)
        assert np.abs(out.sum(axis=1) - 1).max() < 1e-12


def test_parse_weights_and_bad_means():
    np.testing.assert_allclose(parse_weights("0.7,0.3", n=2), [0.7, 0.3])
    np.testing.assert_allclose(parse_weights("2,2,4", n=3), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(parse_weights(None, n=4), [0.25] * 4)
    for text, message in (("0.7", "1 weights for 2"), ("a,b", "comma-separated numbers"), ("1,-1", "positive"),
                          ("1,nan", "positive")):
        with pytest.raises(ConfigError, match=message):
            parse_weights(text, n=2)
    with pytest.raises(ConfigError, match="--mean"):
        combine([random_probs(2, 3, seed=0)], mean="harmonic")


def test_segment_spans_widen_short_segments_to_the_model_input():
    settings = FeatureSettings(sample_rate=8000, hop_length=200)  # 40 frames per second
    bounds = np.array([[0.0, 10.0], [10.0, 20.0], [20.0, 22.0]])
    spans = segment_spans(bounds, settings=settings, n_total=881, min_length=120)
    np.testing.assert_array_equal(spans, [[0, 400], [400, 800], [761, 881]])  # last: 3 s ending at the song's end
    short = segment_spans(np.array([[0.0, 2.0]]), settings=settings, n_total=81, min_length=120)
    np.testing.assert_array_equal(short, [[0, 81]])  # song shorter than the input: whole song (padded later)
    wave = segment_spans(np.array([[1.0, 2.0]]), settings=FeatureSettings(kind="waveform", sample_rate=8000),
                         n_total=80000, min_length=16000)
    np.testing.assert_array_equal(wave, [[4000, 20000]])


def test_submission_names_and_no_overwrite(tmp_path):
    now = datetime.datetime(2026, 3, 1, 12, 5, 1, tzinfo=datetime.UTC)
    path = submission_path(tmp_path, ["crnn", "shortchunk"], now=now)
    assert path == tmp_path / "20260301T120501Z_crnn+shortchunk.csv"
    assert sidecar_path(path) == tmp_path / "20260301T120501Z_crnn+shortchunk.json"
    with pytest.raises(ToolkitError, match="json"):
        sidecar_path(tmp_path / "x.json")
    assert claim_submission_path(output=None, out_dir=tmp_path, names=["crnn"]).parent == tmp_path
    ids = ["a", "b"]
    predictions = submit.TestPredictions(ids=ids, probs=np.full((2, 16), 1 / 16), per_experiment={}, fallbacks=[],
                                         cache_dirs=[], feature_seconds=0.0, model_seconds=0.0)
    sidecar = sidecar_path(path)
    sidecar.write_text("{}")  # an existing sidecar blocks the CSV too: nothing is written
    with pytest.raises(OutputExistsError):
        claim_submission_path(output=path, out_dir=tmp_path, names=["crnn"])
    with pytest.raises(OutputExistsError):
        publish_submission(predictions, path, test_dir=tmp_path, method="", seconds="",
                           record=submit.sidecar_record(predictions, ensembles=[], mean="arithmetic",
                                                        weights=np.array([])))
    assert not path.exists() and sidecar.read_text() == "{}"


def fake_experiment(runs, name, *, task, class_names):
    fold = runs / name / "fold_0"
    fold.mkdir(parents=True)
    (fold / "summary.json").write_text("{}")
    (fold / "classes.json").write_text(json.dumps({"task": task, "class_names": list(class_names),
                                                   "genre_ids": list(range(len(class_names)))}))


def test_submission_refuses_experiments_that_are_not_the_16_top_genres(tmp_path, capsys):
    fake_experiment(tmp_path, "tree", task="multi", class_names=["Rock", "Punk"])
    fake_experiment(tmp_path, "reordered", task="single", class_names=TOP_GENRES[::-1])
    for name in ("tree", "reordered"):
        with pytest.raises(ToolkitError, match=f"{name}.*16 top genres"):
            load_ensemble(tmp_path, name, require_top_genres=True)
    with pytest.raises(ToolkitError, match="no such experiment.*reordered"):
        load_ensemble(tmp_path, "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolkitError, match="no finished fold"):
        load_ensemble(tmp_path, "empty")
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    code = submit.main(["--exp", "tree", "--runs", str(tmp_path), "--test-dir", str(test_dir),
                        "--out", str(tmp_path / "subs"), "--no-progress"])
    assert code == 1 and "16 top genres" in capsys.readouterr().err
    assert submit.main(["--exp", "a,a", "--runs", str(tmp_path), "--test-dir", str(test_dir)]) == 1
    assert "distinct" in capsys.readouterr().err
    assert submit.main(["--exp", "tree", "--blend-weights", "1,2", "--runs", str(tmp_path), "--test-dir",
                        str(test_dir)]) == 1
    assert "--blend-weights '1,2': 2 weights for 1" in capsys.readouterr().err
    # the old spelling of hand-typed weights is now the musicnn weights folder: say so, do not ignore it
    assert submit.main(["--exp", "tree", "--weights", "0.7,0.3", "--runs", str(tmp_path), "--test-dir",
                        str(test_dir)]) == 1
    assert "--blend-weights" in capsys.readouterr().err
    assert submit.main(["--runs", str(tmp_path), "--test-dir", str(test_dir)]) == 1
    assert "give --exp" in capsys.readouterr().err
    assert submit.main(["--blend", "nothing", "--runs", str(tmp_path), "--test-dir", str(test_dir)]) == 1
    assert "no such blend" in capsys.readouterr().err
    assert not (tmp_path / "subs").exists()


def write_blend_file(path, *, chosen="arithmetic", weights=(0.25, 0.75), temperatures=(2.0, 0.5)):
    document = {"name": "x", "experiments": [{"name": "a"}, {"name": "b"}], "class_names": list(TOP_GENRES),
                "chosen": chosen, "floor": 1e-4, "final_scores": {"log_loss": 1.0},
                "train_prior": dict(zip(TOP_GENRES, np.full(16, 1 / 16))),
                "stages": {"arithmetic": {"kind": "arithmetic", "params": {"temperatures": list(temperatures),
                                                                            "weights": list(weights)}},
                           "calibrated:b": {"kind": "calibrated", "params": {"temperature": 2.0}}}}
    path.write_text(json.dumps(document))
    return path


def test_a_fitted_blend_sets_the_combination_and_the_floor(tmp_path):
    from crowdai.blend import load_blend
    from crowdai.calibration import apply_temperature

    path = write_blend_file(tmp_path / "blend.json")
    combination = submit.resolve_combination(exp=None, blend=str(path), blend_weights=None, mean=None, runs=tmp_path)
    assert combination.names == ["a", "b"] and combination.mean == "blend:arithmetic"
    np.testing.assert_allclose(combination.weights, [0.25, 0.75])
    a, b = random_probs(4, 16, seed=5), random_probs(4, 16, seed=6)
    expected = 0.25 * apply_temperature(a, 2.0) + 0.75 * apply_temperature(b, 0.5)
    np.testing.assert_allclose(combination.apply({"a": a, "b": b}), expected)
    predictions = submit.TestPredictions(ids=["1", "2", "3", "4"], probs=a, per_experiment={"a": a, "b": b},
                                         fallbacks=[], cache_dirs=[], feature_seconds=0.0, model_seconds=0.0)
    final, record = submit.finalise(predictions, combination=combination, ensembles=[], adapt=False)
    np.testing.assert_allclose(final.probs, (expected + 1e-4) / (1 + 16e-4))
    assert record["floor"] == 1e-4 and record["prior"] is None
    assert record["blend"]["sha256"] == load_blend(str(path), runs=tmp_path).sha256
    for kwargs, match in (({"blend_weights": "1,1"}, "drop --blend-weights"), ({"mean": "geometric"}, "--mean"),
                          ({"exp": "a,c"}, "differs")):
        with pytest.raises(ConfigError, match=match):
            submit.resolve_combination(**{"exp": None, "blend": str(path), "blend_weights": None, "mean": None,
                                          "runs": tmp_path, **kwargs})
    calibrated = write_blend_file(tmp_path / "calibrated.json", chosen="calibrated:b")
    combination = submit.resolve_combination(exp="b,a", blend=str(calibrated), blend_weights=None, mean=None,
                                             runs=tmp_path)
    assert combination.weights is None
    np.testing.assert_allclose(combination.apply({"a": a, "b": b}), apply_temperature(b, 2.0))


def test_hand_typed_weights_get_the_default_floor():
    combination = submit.resolve_combination(exp="a,b", blend=None, blend_weights="3,1", mean="geometric", runs=".")
    certain = np.zeros((2, 16))
    certain[:, 3] = 1.0
    predictions = submit.TestPredictions(ids=["1", "2"], probs=certain, per_experiment={"a": certain, "b": certain},
                                         fallbacks=[], cache_dirs=[], feature_seconds=0.0, model_seconds=0.0)
    final, record = submit.finalise(predictions, combination=combination, ensembles=[], adapt=False)
    from crowdai.submission import PROBABILITY_FLOOR

    assert record["floor"] == PROBABILITY_FLOOR and record["blend"] is None
    assert (final.probs > 0).all() and (final.probs < 1).all()
