"""Calibration, blends fitted on out-of-fold predictions, test-prior adaptation (synthetic, no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats

from crowdai import blend, calibration
from crowdai.submission import apply_floor

N_FOLDS = 5


def test_temperature_recovers_a_known_logit_scale():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(20000, 10))
    y = np.array([rng.choice(10, p=p) for p in scipy.special.softmax(logits, axis=1)])
    for factor in (3.0, 0.5):  # over- and under-confident
        temperature = calibration.fit_temperature(scipy.special.softmax(factor * logits, axis=1), y)
        assert temperature == pytest.approx(factor, rel=0.05)
    # calibrated probabilities are already right: T stays near 1
    assert calibration.fit_temperature(scipy.special.softmax(logits, axis=1), y) == pytest.approx(1.0, rel=0.05)


def synthetic_experiment(y, *, rng, strong_classes, strength, overconfidence, n_classes):
    """Probabilities that know the classes in ``strong_classes`` well and the others barely, overconfident."""
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += np.where(np.isin(y, strong_classes), strength, 0.3)
    return scipy.special.softmax(overconfidence * logits, axis=1)


def out_of_fold(probs, y, *, names):
    n_classes = probs[0].shape[1]
    return blend.OutOfFold(experiments=list(names), class_names=tuple(f"c{i}" for i in range(n_classes)),
                           ids=np.array([str(i) for i in range(len(y))]), y=y, folds=np.arange(len(y)) % N_FOLDS,
                           probs=list(probs), sources=[{"name": n} for n in names], folds_agree=True)


@pytest.fixture(scope="module")
def complementary():
    rng = np.random.default_rng(1)
    n_classes, n = 8, 1500
    y = rng.integers(n_classes, size=n)
    a = synthetic_experiment(y, rng=rng, strong_classes=[0, 1, 2, 3], strength=3.5, overconfidence=2.0,
                             n_classes=n_classes)
    b = synthetic_experiment(y, rng=rng, strong_classes=[4, 5, 6, 7], strength=2.5, overconfidence=2.0,
                             n_classes=n_classes)
    return out_of_fold([a, b], y, names=["a", "b"])


def test_blend_of_complementary_experiments_beats_both_cross_fitted(complementary):
    document, cross_fitted = blend.fit_blend(complementary)
    scores = {name: stage["scores"]["log_loss"] for name, stage in document["stages"].items()}
    best_single = min(scores[f"{kind}:{e}"] for kind in ("raw", "calibrated") for e in ("a", "b"))
    chosen = document["chosen"]
    assert chosen in ("arithmetic", "geometric"), scores
    assert scores[chosen] < 0.95 * best_single, scores
    # calibration alone helps the overconfident experiments
    assert scores["calibrated:a"] < scores["raw:a"] and scores["calibrated:b"] < scores["raw:b"]
    weights = document["stages"]["geometric"]["params"]["weights"]
    assert abs(weights[0] - weights[1]) > 0.05 and sum(weights) == pytest.approx(1.0)
    assert all(t > 1.2 for t in document["stages"]["arithmetic"]["params"]["temperatures"])  # overconfident: T > 1
    # the reported scores are those of the held-out predictions, not of an in-sample fit
    held_out = cross_fitted[chosen]
    assert scores[chosen] == pytest.approx(calibration.nll(held_out, complementary.y), rel=1e-6)
    in_sample = blend.Stage.parse(chosen, ["a", "b"]).apply(document["stages"][chosen]["params"], complementary.probs)
    assert not np.allclose(in_sample, held_out)
    # the fitted floor does not hurt (its smallest eps costs at most C * eps)
    assert document["final_scores"]["log_loss"] <= scores[chosen] + 8 * blend.FLOOR_BOUNDS[0]


def test_blend_of_identical_experiments_is_no_better_than_one(complementary):
    twins = out_of_fold([complementary.probs[0]] * 2, complementary.y, names=["a", "twin"])
    document, _ = blend.fit_blend(twins)
    scores = {name: stage["scores"]["log_loss"] for name, stage in document["stages"].items()}
    for pool in ("arithmetic", "geometric"):
        assert scores[pool] >= scores["calibrated:a"] - 1e-9, scores
    assert document["chosen"] == "calibrated:a"  # the simplest stage that is not worse


def test_cross_fitting_needs_two_folds(complementary):
    one_fold = out_of_fold(complementary.probs, complementary.y, names=["a", "b"])
    one_fold.folds = np.zeros_like(one_fold.folds)
    with pytest.raises(blend.ToolkitError, match="two"):
        blend.cross_fit(blend.Stage("calibrated", 0), one_fold)


def prior_shift_data(test_prior, *, n, seed):
    """Exact posteriors of four 1-D Gaussian classes under a uniform training prior; labels from ``test_prior``."""
    rng = np.random.default_rng(seed)
    means, train_prior = np.array([0.0, 1.5, 3.0, 4.5]), np.full(4, 0.25)
    y = rng.choice(4, size=n, p=test_prior)
    x = rng.normal(means[y], 1.0)
    likelihood = scipy.stats.norm.pdf(x[:, None], loc=means[None, :])
    posterior = likelihood * train_prior
    return posterior / posterior.sum(axis=1, keepdims=True), y, train_prior


@pytest.mark.parametrize("pseudo_tracks", [None, 0.0])  # default MAP, plain EM
def test_adapt_prior_recovers_a_shifted_prior_and_lowers_log_loss(pseudo_tracks):
    shifted = np.array([0.55, 0.25, 0.15, 0.05])
    probs, y, train_prior = prior_shift_data(shifted, n=6000, seed=2)
    adapted, prior, iterations = calibration.adapt_prior(probs, train_prior=train_prior, pseudo_tracks=pseudo_tracks)
    assert np.abs(prior - shifted).sum() < 0.05, prior
    assert np.abs(probs.mean(axis=0) - shifted).sum() > 0.1  # the naive mean of the posteriors is off
    assert calibration.nll(adapted, y) < calibration.nll(probs, y) - 0.02
    np.testing.assert_allclose(adapted.sum(axis=1), 1.0)
    assert 1 < iterations < 1000


def test_adapt_prior_without_shift_changes_almost_nothing():
    probs, y, train_prior = prior_shift_data(np.full(4, 0.25), n=6000, seed=3)
    adapted, prior, _ = calibration.adapt_prior(probs, train_prior=train_prior)
    assert np.abs(prior - train_prior).sum() < 0.05
    assert np.abs(adapted - probs).mean() < 0.01
    assert abs(calibration.nll(adapted, y) - calibration.nll(probs, y)) < 0.005


def test_floor_keeps_every_value_inside_zero_one():
    probs = np.zeros((3, 16))
    probs[:, 0] = 1.0
    floored = apply_floor(probs)
    assert (floored > 0).all() and (floored < 1).all()
    np.testing.assert_allclose(floored.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        apply_floor(probs, 0.0)
    # a fitted floor grows with the rate of confident mistakes
    y = np.zeros(200, dtype=np.int64)
    y[:20] = 1
    assert blend.fit_floor(probs[[0] * 200], y) > blend.fit_floor(probs[[0] * 200], np.zeros(200, np.int64))


def write_oof(runs, name, probs, y, folds, *, class_names, ids=None):
    exp_dir = runs / name
    for fold in np.unique(folds):
        (exp_dir / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (exp_dir / f"fold_{fold}" / "git_commit.txt").write_text(f"commit-{name}\n")
    ids = ids if ids is not None else [str(1000 + i) for i in range(len(y))]
    table = pd.DataFrame({"id": ids, "fold": folds, "target": np.asarray(class_names)[y]})
    table = pd.concat([table, pd.DataFrame(probs, columns=list(class_names))], axis=1)
    table.to_csv(exp_dir / "oof.csv", index=False)


def test_cli_fits_on_common_tracks_writes_report_and_never_overwrites(complementary, tmp_path, capsys):
    runs, names = tmp_path / "runs", complementary.class_names
    n = 600  # a part of the rows: stacking's cross-validated fits are the slow part
    complementary = out_of_fold([p[:n] for p in complementary.probs], complementary.y[:n], names=["a", "b"])
    write_oof(runs, "a", complementary.probs[0], complementary.y, complementary.folds, class_names=names)
    keep = np.arange(n) >= 100  # b lacks the first 100 tracks: the blend uses the common ones only
    write_oof(runs, "b", complementary.probs[1][keep], complementary.y[keep], complementary.folds[keep],
              class_names=names, ids=[str(1000 + i) for i in np.flatnonzero(keep)])
    assert blend.main(["--exp", "a,b", "--runs", str(runs), "--stacking"]) == 0
    printed = capsys.readouterr().out
    out = runs / "blends" / "a+b"
    document = json.loads((out / "blend.json").read_text())
    assert document["common_tracks"] == n - 100 and document["folds"] == list(range(N_FOLDS))
    assert [e["git_commits"] for e in document["experiments"]] == [["commit-a"], ["commit-b"]]
    assert set(document["stages"]) == {"raw:a", "raw:b", "calibrated:a", "calibrated:b", "arithmetic", "geometric",
                                       "stacking"}
    assert f"chose {document['chosen']}" in printed and "calibrated:a" in printed
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "blend.csv")
    assert list(table["stage"][:2]) == ["raw:a", "raw:b"] and table["chosen"].sum() == 2  # chosen, + floor
    assert "| stage | log_loss |" in (out / "blend.md").read_text()
    # the fitted blend reproduces its cross-fitted score's in-sample version on the OOF rows
    fitted = blend.load_blend("a+b", runs=runs)
    probs = fitted.apply({"a": complementary.probs[0], "b": complementary.probs[1]})
    assert probs.shape == (n, len(names)) and np.allclose(probs.sum(axis=1), 1.0)
    before = (out / "blend.json").read_bytes()
    assert blend.main(["--exp", "a,b", "--runs", str(runs)]) == 1
    assert "--overwrite" in capsys.readouterr().err and (out / "blend.json").read_bytes() == before
    assert blend.main(["--exp", "a,b", "--runs", str(runs), "--overwrite"]) == 0
    assert json.loads((out / "blend.json").read_text())["stages"].keys() == document["stages"].keys() - {"stacking"}


def test_cli_refuses_bad_experiments(complementary, tmp_path, capsys):
    runs = tmp_path / "runs"
    write_oof(runs, "a", complementary.probs[0], complementary.y, complementary.folds,
              class_names=complementary.class_names)
    assert blend.main(["--exp", "a,missing", "--runs", str(runs)]) == 1
    assert "missing/oof.csv: missing" in capsys.readouterr().err
    other = tuple(reversed(complementary.class_names))
    write_oof(runs, "reordered", complementary.probs[0], complementary.y, complementary.folds, class_names=other)
    assert blend.main(["--exp", "a,reordered", "--runs", str(runs)]) == 1
    assert "differ" in capsys.readouterr().err
    assert not (runs / "blends").exists()
    with pytest.raises(blend.ToolkitError, match="no such blend"):
        blend.load_blend("nothing", runs=runs)


def test_bench_blend_records_the_gain_and_the_summary_shows_it(complementary, tmp_path):
    from bench import blend as bench_blend
    from bench.summary import headlines

    runs, n = tmp_path / "runs", 400
    for i, name in enumerate(("a", "b")):
        write_oof(runs, name, complementary.probs[i][:n], complementary.y[:n], complementary.folds[:n],
                  class_names=complementary.class_names)
    out = tmp_path / "blend.json"
    assert bench_blend.main(["--runs", str(runs), "--exp", "a,b", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["best_single_log_loss"] == min(record["raw_log_loss"].values())
    assert record["ratio_to_best_single"] == pytest.approx(record["chosen_log_loss"] / record["best_single_log_loss"])
    assert record["meets_target"] and record["chosen"] in ("arithmetic", "geometric", "stacking")
    assert "Blend of a+b" in "\n".join(headlines({"blend": record}, {"cores": 2}))
    assert bench_blend.main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 1


def flip_a_digit(path, *, after: str) -> None:
    """Change the first digit after ``after`` in a text file: same size, still JSON, another value."""
    text = path.read_text()
    at = text.index(after) + len(after)
    at += next(i for i, c in enumerate(text[at:]) if c.isdigit() and c != "0")
    path.write_text(text[:at] + str(int(text[at]) % 9 + 1) + text[at + 1:])


def test_a_damaged_blend_is_refused_naming_the_command_that_fits_it_again(complementary, tmp_path, capsys):
    """Issue 25: a blend.json with a flipped digit (its floor, a weight) was applied as it was by submit."""
    from crowdai import package, submit

    runs, n = tmp_path / "runs", 300
    for i, name in enumerate(("a", "b")):
        write_oof(runs, name, complementary.probs[i][:n], complementary.y[:n], complementary.folds[:n],
                  class_names=complementary.class_names)
    assert blend.main(["--exp", "a,b", "--runs", str(runs), "--name", "ab"]) == 0
    path = runs / "blends" / "ab" / "blend.json"
    document = json.loads(path.read_text())
    assert document["checksum"] == blend.blend_checksum(document)
    assert blend.load_blend("ab", runs=runs).document == document
    good = path.read_bytes()
    flip_a_digit(path, after='"floor": ')
    assert path.stat().st_size == len(good)
    refit = 'fit it again with `make blend EXP=a,b NAME=ab BLEND_ARGS="--overwrite"`'
    with pytest.raises(blend.ToolkitError) as damaged:
        blend.load_blend("ab", runs=runs)
    assert str(damaged.value) == (f"{path}: damaged: its content differs from the checksum it was written with; "
                                  f"{refit}")
    capsys.readouterr()
    for command, main, argv in (
            ("fma-submit", submit.main, ["--blend", "ab", "--runs", str(runs), "--test-dir", str(tmp_path),
                                         "--output", str(tmp_path / "s.csv")]),
            ("fma-package", package.main, ["--exp", "a,b", "--runs", str(runs), "--out", str(tmp_path / "p"),
                                           "--blend", "ab"])):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err == f"{command}: error: {damaged.value}\n"
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p").exists()
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(blend.ToolkitError, match=r"not a blend file .*it is damaged: fit it again with "
                                                 r"`make blend EXP=<experiments> NAME=ab"):
        blend.load_blend("ab", runs=runs)
