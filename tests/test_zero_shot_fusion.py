"""The fused zero-shot mapping's rule (add, never override), the prior and its weight, and ``bench.tag``'s
labels, accuracy and report. Only the last test runs the taggers; the rule on the shared recordings is
in ``tests/test_zero_shot.py``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolkitError
from common.metadata import TOP_GENRES
from common.models.musicnn import MSD_TAGS, MTT_TAGS, N_TAGS
from common.tagging import View
from common.zero_shot import (
    ADDED_GENRES,
    BASELINE,
    FUSED,
    MAPPING_VIEWS,
    MAPPINGS,
    MSD_GENRES,
    MSD_ROC_AUC,
    MTT_ROC_AUC,
    PRIOR_WEIGHT,
    STRONG_EVIDENCE,
    UNMAPPED_TAGS,
    fuse,
    genre_frequency_prior,
    genre_scores,
    msd_only_scores,
    pooled_views,
    smooth_toward_prior,
)

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
MSD_COLUMNS = [TOP_GENRES.index(genre) for genre in MSD_GENRES]
ADDED_COLUMNS = [TOP_GENRES.index(genre) for genre in ADDED_GENRES]


def _random_baseline(rng: np.random.Generator, n: int) -> np.ndarray:
    """MSD-only rows: positive on the 12 MSD genres, 0 elsewhere, sums of 1."""
    rows = np.zeros((n, len(TOP_GENRES)))
    rows[:, MSD_COLUMNS] = rng.dirichlet(np.full(len(MSD_COLUMNS), 0.5), size=n) + 1e-9
    return rows / rows.sum(axis=1, keepdims=True)


# --- the rule ------------------------------------------------------------------------------------

def test_fusion_keeps_msds_ranking_and_pick_unless_some_evidence_is_strong():
    """On 4,000 random rows (a quarter with strong evidence): every property the module docstring states."""
    rng = np.random.default_rng(0)
    baseline = _random_baseline(rng, 4000)
    evidence = rng.uniform(0.0, STRONG_EVIDENCE, size=(4000, len(ADDED_GENRES)))
    strong_rows = rng.random(4000) < 0.25
    evidence[strong_rows, rng.integers(len(ADDED_GENRES), size=strong_rows.sum())] = rng.uniform(
        STRONG_EVIDENCE, 1.0, size=strong_rows.sum())
    fused = fuse(baseline, evidence)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)
    assert fused.min() >= 0.0
    np.testing.assert_allclose(fused[:, MSD_COLUMNS] / fused[:, MSD_COLUMNS].sum(axis=1, keepdims=True),
                               baseline[:, MSD_COLUMNS], rtol=1e-9)  # MSD's 12 genres: its ranking, one factor
    picks, msd_picks = fused.argmax(axis=1), baseline.argmax(axis=1)
    strong = evidence.max(axis=1) >= STRONG_EVIDENCE
    np.testing.assert_array_equal(picks[~strong], msd_picks[~strong])
    np.testing.assert_array_equal(picks[strong], np.array(ADDED_COLUMNS)[evidence[strong].argmax(axis=1)])
    assert strong.sum() == strong_rows.sum() and 0 < strong.sum() < len(strong)


def test_a_strong_genre_takes_its_evidence_and_a_weak_one_weighs_2e_times_msds_top_genre():
    baseline = np.zeros((1, 16))
    baseline[0, [TOP_GENRES.index("Jazz"), TOP_GENRES.index("Rock")]] = [0.6, 0.4]
    evidence = np.array([[0.8, 0.25, 0.0]])  # Classical strong, International weak, no speech
    fused = fuse(baseline, evidence)[0]
    assert fused[TOP_GENRES.index("Classical")] == pytest.approx(0.8)
    weights = {"Jazz": 0.6, "Rock": 0.4, "International": 2 * 0.25 * 0.6}  # the rest, 0.2, shared by these
    total = sum(weights.values())
    for genre, weight in weights.items():
        assert fused[TOP_GENRES.index(genre)] == pytest.approx(0.2 * weight / total)
    assert fused[TOP_GENRES.index("Spoken")] == 0.0


def test_two_strong_genres_past_a_whole_split_it_and_the_larger_evidence_wins():
    baseline = _random_baseline(np.random.default_rng(1), 1)
    fused = fuse(baseline, np.array([[0.7, 0.0, 0.8]]))[0]  # Classical 0.7, Spoken 0.8: 1.5 in all
    np.testing.assert_allclose(fused[[TOP_GENRES.index("Classical"), TOP_GENRES.index("Spoken")]],
                               [0.7 / 1.5, 0.8 / 1.5])
    assert fused[MSD_COLUMNS].max() == 0.0
    assert fuse(baseline, np.array([[0.8, 0.0, 0.7]]))[0].argmax() == TOP_GENRES.index("Classical")  # not by order


def test_mtt_tags_of_the_genres_msd_names_change_nothing():
    """Issue 26: with MTT's pop, electronic, ... competing, pop went to Electronic and hip-hop to Pop."""
    rng = np.random.default_rng(2)
    msd, mtt = rng.uniform(0, 0.6, size=(50, N_TAGS)), rng.uniform(0, 0.3, size=(50, N_TAGS))
    loud = mtt.copy()
    loud[:, [MTT_TAGS.index(tag) for tag in ("pop", "electronic", "techno", "rock", "country", "weird")]] = 0.95
    low_energy = np.zeros(50)
    np.testing.assert_allclose(genre_scores(msd, loud, low_energy), genre_scores(msd, mtt, low_energy))
    assert {"pop", "electronic", "techno", "rock", "country", "weird"} <= set(UNMAPPED_TAGS["MTT_musicnn"])
    assert msd_only_scores(msd)[:, ADDED_COLUMNS].max() == 0.0


def test_fuse_says_what_shapes_it_expected():
    with pytest.raises(ToolkitError, match=r"fuse: expected \(n, 16\) scores and \(n, 3\) evidence"):
        fuse(np.zeros((2, 16)), np.zeros((2, 2)))


def test_pooled_views_hold_both_mappings_and_the_evidence_and_crowdai_tag_prints_a_subset():
    from crowdai.tag import ZERO_SHOT_JSON_VIEWS, ZERO_SHOT_TABLE_VIEWS

    rng = np.random.default_rng(3)
    views = pooled_views(np.concatenate([rng.uniform(0, 1, (2, 2 * N_TAGS)), np.full((2, 1), 0.1)], axis=1))
    assert set(MAPPING_VIEWS.values()) | set(ZERO_SHOT_JSON_VIEWS) <= set(views) and MAPPINGS == (BASELINE, FUSED)
    assert set(ZERO_SHOT_TABLE_VIEWS) <= set(ZERO_SHOT_JSON_VIEWS)
    np.testing.assert_allclose(views[MAPPING_VIEWS[BASELINE]].probs, msd_only_scores(views["msd_tags"].probs))
    np.testing.assert_allclose(views[MAPPING_VIEWS[FUSED]].probs,
                               fuse(views[MAPPING_VIEWS[BASELINE]].probs, views["added_evidence"].probs))
    assert views["added_evidence"].names == ADDED_GENRES and len(MSD_TAGS) == N_TAGS


# --- the prior and its weight ------------------------------------------------------------------------

def test_the_prior_weight_is_twice_the_msd_taggers_published_roc_auc_shortfall(musicnn_wheel):
    """2 (1 - ROC-AUC): the share of pairwise decisions no better than chance, from the wheel's own results."""
    with zipfile.ZipFile(musicnn_wheel) as wheel:
        published = {name: float(next(line for line in wheel.read(f"musicnn/{name}/experiment.result").decode()
                                      .splitlines() if "AUC" in line).split(":")[1])
                     for name in ("MSD_musicnn", "MTT_musicnn")}
    assert published == {"MSD_musicnn": MSD_ROC_AUC, "MTT_musicnn": MTT_ROC_AUC}
    assert MSD_ROC_AUC < MTT_ROC_AUC  # the lower of the two, and the tagger that ranks MSD's 12 genres
    chance_share = 1.0 - (2.0 * MSD_ROC_AUC - 1.0)  # ROC-AUC = q + (1 - q) / 2, solved for 1 - q
    assert PRIOR_WEIGHT == pytest.approx(chance_share) == pytest.approx(0.2396, abs=1e-4)


def test_smoothing_defaults_to_the_derived_weight():
    sharp = np.eye(16)[[0, 9]]
    prior = genre_frequency_prior(["Rock"] * 30 + ["Jazz"] * 5)
    np.testing.assert_allclose(smooth_toward_prior(sharp, prior=prior),
                               (1 - PRIOR_WEIGHT) * sharp + PRIOR_WEIGHT * prior)


def test_genre_frequency_prior_counts_add_one_and_names_a_bad_genre():
    prior = genre_frequency_prior(["Rock", "Rock", "Rock", "Spoken"])
    expected = np.ones(16)
    expected[TOP_GENRES.index("Rock")], expected[TOP_GENRES.index("Spoken")] = 4, 2
    np.testing.assert_allclose(prior, expected / 20)
    with pytest.raises(ToolkitError, match="genre_top: 'Reggae' is not one of the 16"):
        genre_frequency_prior(["Rock", "Reggae"])


def test_without_tracks_csv_the_submission_prior_is_uniform_and_says_why(tmp_path):
    from crowdai.zero_shot_submit import submission_prior

    prior = submission_prior(tmp_path, "medium")
    np.testing.assert_allclose(prior.probs, np.full(16, 1 / 16))
    assert prior.source == "uniform" and prior.tracks == 0
    assert str(tmp_path / "fma_metadata" / "tracks.csv") in prior.description


# --- bench.tag: labels and accuracy ------------------------------------------------------------------

@pytest.mark.skipif(not AUDIO.is_dir(), reason=f"real recordings not found at {AUDIO} (absent in a fresh clone)")
def test_the_shared_recordings_are_labelled_by_their_readme_table():
    from bench.tag import audio_files, read_labels

    labels, source = read_labels(AUDIO)
    assert source == AUDIO / "README.md"
    assert {path.name for path in audio_files(AUDIO)} == set(labels)
    assert sorted(label for label in labels.values() if label) == ["Classical", "Classical", "Jazz", "Spoken"]
    assert all((AUDIO / name).with_suffix(".txt").is_file() for name in labels)  # each with its licence


def test_a_folder_given_with_labels_csv(tmp_path):
    from bench.tag import audio_files, read_labels

    (tmp_path / "labels.csv").write_text("file,genre\na.mp3,Rock\nb.mp3,unknown\nc.mp3,\n")
    (tmp_path / "README.md").write_text("| file | genre |\n| --- | --- |\n| a.mp3 | Jazz |\n")  # labels.csv wins
    assert read_labels(tmp_path) == ({"a.mp3": "Rock", "b.mp3": None, "c.mp3": None}, tmp_path / "labels.csv")
    with pytest.raises(ToolkitError, match="no recordings"):
        audio_files(tmp_path)
    (tmp_path / "labels.csv").write_text("file,genre\na.mp3,Reggae\n")
    with pytest.raises(ToolkitError, match=r"labels.csv: genre of 'a.mp3' is 'Reggae', not one of the 16"):
        read_labels(tmp_path)
    (tmp_path / "labels.csv").write_text("name,label\na.mp3,Rock\n")
    with pytest.raises(ToolkitError, match="labels.csv: expected columns 'file' and 'genre'"):
        read_labels(tmp_path)
    (tmp_path / "labels.csv").unlink()
    assert read_labels(tmp_path)[0] == {"a.mp3": "Jazz"}
    (tmp_path / "README.md").write_text("no table here\n")
    with pytest.raises(ToolkitError, match="README.md: no Markdown table with a 'file' and a 'genre' column"):
        read_labels(tmp_path)
    (tmp_path / "README.md").unlink()
    assert read_labels(tmp_path) == ({}, None)  # unlabelled: timed and tagged, not scored


def test_accuracy_and_table_put_both_mappings_side_by_side():
    from bench.tag import accuracy, mapping_record, mapping_table

    def views(msd_top: str, evidence: list[float]) -> dict:
        msd = np.zeros((1, N_TAGS))
        msd[0, MSD_TAGS.index(msd_top)] = 0.6
        baseline = msd_only_scores(msd)
        added = np.array([evidence])
        return {MAPPING_VIEWS[BASELINE]: View(TOP_GENRES, baseline),
                MAPPING_VIEWS[FUSED]: View(TOP_GENRES, fuse(baseline, added)),
                "added_evidence": View(ADDED_GENRES, added)}

    records = [mapping_record("jazz.ogg", "Jazz", views("jazz", [0.3, 0.0, 0.0])),
               mapping_record("strings.ogg", "Classical", views("jazz", [0.7, 0.0, 0.0])),
               mapping_record("talk.ogg", "Spoken", views("Hip-Hop", [0.0, 0.0, 0.2])),
               mapping_record("song.ogg", None, views("pop", [0.0, 0.0, 0.0]))]
    assert [(r["msd_only"]["genre"], r["fused"]["genre"], r["rule_passed"]) for r in records] == [
        ("Jazz", "Jazz", False), ("Jazz", "Classical", True), ("Hip-Hop", "Hip-Hop", False), ("Pop", "Pop", False)]
    scores = accuracy(records)
    assert scores["all"] == {"recordings": 3, "msd_only": {"correct": 1, "accuracy": 0.3333},
                             "fused": {"correct": 2, "accuracy": 0.6667}}
    assert scores["msd_genres"]["recordings"] == 1 and scores["other_genres"]["fused"]["correct"] == 1
    lines = mapping_table(records, scores).splitlines()
    assert lines[0].split()[:4] == ["recording", "label", "MSD", "only"]
    assert lines[2].split()[:6] == ["strings.ogg", "Classical", "Jazz", "1.00", "Classical", "0.70"]
    assert lines[2].endswith("0.70 / 0.00 / 0.00 *") and "(unknown)" in lines[4]
    assert lines[5] == "accuracy, all labelled (3): MSD only 1/3 = 33 %, fused 2/3 = 67 %"


def test_bench_tag_reports_both_mappings_for_a_folder_given_with_labels(musicnn_weights_dir, tmp_path, capsys):
    """``python -m bench.tag --audio DIR``: picks, accuracy and speed of a labelled folder, in print and JSON."""
    import json

    import soundfile as sf

    from bench.tag import main

    folder = tmp_path / "clips"
    folder.mkdir()
    rate = 16000
    t = np.arange(4 * rate) / rate
    sf.write(folder / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    sf.write(folder / "chord.flac", 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330)), rate)
    (folder / "labels.csv").write_text("file,genre\ntone.wav,Classical\nchord.flac,unknown\n")
    out = tmp_path / "tag.json"
    assert main(["--shared-audio", str(tmp_path / "absent"), "--audio", str(folder), "--weights",
                 str(musicnn_weights_dir), "--original-python", str(tmp_path / "none"), "--rounds", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:5] == ["recording", "label", "MSD", "only", "fused"]
    assert [line.split()[:2] for line in printed[1:3]] == [["chord.flac", "(unknown)"], ["tone.wav", "Classical"]]
    assert printed[3].startswith("accuracy, all labelled (1): MSD only ")
    assert printed[6].startswith("ours (MSD only):") and printed[7].startswith("fused (MSD+MTT):")
    result = json.loads(out.read_text())
    assert result["folders"] == [str(folder)] and result["files"] == 2 and result["audio_seconds"] == 8.0
    tone = result["recordings"][1]
    assert set(tone) >= {"msd_only", "fused", "added_evidence", "rule_passed", "label"}
    correct = {mapping: int(tone[mapping]["genre"] == "Classical") for mapping in MAPPINGS}
    assert {m: result["accuracy"]["all"][m]["correct"] for m in MAPPINGS} == correct
    assert result["accuracy"]["other_genres"]["recordings"] == 1 and result["original"] is None
