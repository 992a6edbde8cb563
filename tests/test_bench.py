"""Smoke tests of the benchmarks: each runs end to end at a tiny size and writes the keys
its issue and ``bench.summary`` rely on. Speed itself is measured by ``make bench`` (as
ratios in one run), never asserted here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf


def test_features_benchmark_reports_medians_of_its_rounds_both_sets_and_scaling(tmp_path):
    from bench import features, summary
    from common import mp3

    source = tmp_path / "recordings"  # stands in for ../shared/audio: one 40-s recording -> one segment
    source.mkdir()
    rng = np.random.default_rng(0)
    sf.write(source / "song.ogg", (0.3 * rng.standard_normal(40 * 22050)).astype(np.float32), 22050)
    out = tmp_path / "features.json"
    assert features.main(["--clips", "2", "--rounds", "2", "--shard-size", "1", "--scale", "2",
                          "--real-audio", str(source), "--mp3-dir", str(tmp_path / "mp3"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["set"] == "real" and set(result["sets"]) == {"real", "synthetic"}
    assert len(result["rounds"]) == 2 and result["clips"] == 2 and result["cores"] >= 1
    for measured_set in result["sets"].values():
        for key in ("toolkit_clips_per_s", "baseline_clips_per_s", "decode_only_clips_per_s", "ratio"):
            assert measured_set[key] > 0
            assert measured_set[key] == pytest.approx(np.median([r[key] for r in measured_set["rounds"]]), abs=0.011)
    scaling = result["scaling"]
    assert scaling["scaled_clips"] == 4 and len(scaling["scaled_rounds"]) == 2
    paired = [scaled / row["toolkit_clips_per_s"] for scaled, row in zip(scaling["scaled_rounds"], result["rounds"])]
    assert scaling["agreement_rounds"] == pytest.approx(paired, abs=0.01)
    assert scaling["agreement"] == pytest.approx(np.median(paired), abs=0.01)
    real = sorted((tmp_path / "mp3" / "real-192k").glob("segment*.mp3"))
    assert len(real) == 1 and sf.info(real[0]).samplerate == 44100 and sf.info(real[0]).channels == 2
    assert result["mp3_decoder"].startswith("libmpg123" if mp3.available() else "soundfile")

    assert summary.main(["--dir", str(tmp_path)]) == 0
    markdown = (tmp_path / "summary.md").read_text()
    assert "clips/s per core" in markdown and "real" in markdown
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["features"] == result


def test_features_benchmark_without_real_recordings_runs_the_synthetic_set(tmp_path):
    from bench import features

    out = tmp_path / "features.json"
    assert features.main(["--clips", "1", "--rounds", "1", "--shard-size", "1", "--scale", "1",
                          "--real-audio", str(tmp_path / "absent"), "--mp3-dir", str(tmp_path / "mp3"),
                          "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["set"] == "synthetic" and list(result["sets"]) == ["synthetic"]


def test_tag_benchmark_without_the_original_reports_ours_only(tmp_path, musicnn_weights_dir):
    from bench import tag

    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(7 * 16000) / 16000
    sf.write(audio / "chirp.ogg", (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), 16000)
    out = tmp_path / "tag.json"
    assert tag.main(["--audio", str(audio), "--shared-audio", str(tmp_path / "absent"),
                     "--weights", str(musicnn_weights_dir),
                     "--original-python", str(tmp_path / "no-venv" / "python"), "--rounds", "1",
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["files"] == 1 and result["audio_seconds"] == pytest.approx(7.0, abs=0.01)
    assert result["ours"]["audio_seconds_per_second"] > 0 and result["fused"]["audio_seconds_per_second"] > 0
    assert result["fused"]["ratio_to_msd_only"] == pytest.approx(
        result["fused"]["audio_seconds_per_second"] / result["ours"]["audio_seconds_per_second"], abs=0.01)
    assert result["original"] is None and result["original_onednn"] is None and "speedup" not in result
    assert result["accuracy"]["all"]["recordings"] == 0  # an unlabelled folder is timed, not scored


def test_metadata_benchmark_reports_load_time_and_memory_and_the_summary_reads_them(tmp_path):
    from bench import metadata, summary

    out = tmp_path / "metadata.json"
    assert metadata.main(["--rows", "3000", "--distinct-rows", "300", "--rounds", "2",
                          "--csv-dir", str(tmp_path / "csv"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == 3000 and result["distinct_rows"] == 300 and len(result["rounds"]) == 2
    for key in ("load_seconds", "read_csv_seconds", "ratio", "rows_per_s", "peak_memory_mb", "max_rss_mb"):
        assert result[key] > 0, key
    assert result["load_seconds"] == pytest.approx(np.median([r["load_seconds"] for r in result["rounds"]]))
    assert summary.main(["--dir", str(tmp_path)]) == 0
    assert "tracks.csv of 3000 rows" in (tmp_path / "summary.md").read_text()


def test_predict_benchmark_compares_batched_and_per_clip_paths_and_predicts_hours(tmp_path):
    from bench import predict

    out = tmp_path / "predict.json"
    assert predict.main(["--config", "experiments/configs/demo.yaml", "--clips", "3", "--seconds", "10",
                         "--folds", "1,2", "--rounds", "1", "--jobs", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["folds"] for row in result["runs"]] == [1, 2]
    for row in result["runs"]:
        assert row["max_abs_difference"] < 1e-5  # the two paths agree
        assert row["batched_model_seconds"] > 0 and row["per_clip_model_seconds"] > 0
    hours = result["predicted_hours"]
    assert hours["folds"] == 5 and hours["clips"]["crowdai_round1_test"] == 35_000
    assert 0 < hours["fma_medium"] < hours["crowdai_round1_test"] < hours["fma_large"]


def test_summary_headlines_every_target_of_the_throughput_issue():
    from bench.summary import headlines

    results = {
        "features": {"toolkit_clips_per_s": 60.0, "cores": 2, "set": "real",
                     "sets": {"real": {"ratio": 4.1, "decode_only_clips_per_s": 40.0},
                              "synthetic": {"ratio": 4.3, "decode_only_clips_per_s": 42.0}},
                     "scaling": {"clips": 96, "clips_per_s": 60.0, "scaled_clips": 960, "scaled_clips_per_s": 62.0,
                                 "agreement": 1.03}},
        "train": {"ratio": 1.4, "model": "shortchunk", "augmentations": ["crop", "mixup"],
                  "toolkit_samples_per_s": 140.0, "baseline_samples_per_s": 100.0},
        "pipeline": {"training_clips_per_s": 1.0, "input_shape": [96, 1366], "model": "crnn", "device": "cpu",
                     "precision": "float32", "batch_size": 8, "limit": "model", "pipeline_clips_per_s": 1000.0,
                     "model_clips_per_s": 1.1},
        "predict": {"device": "cpu", "batched_speedup": 1.2, "batched_cpu_speedup": 1.1,
                    "predicted_hours": {"folds": 5, "clips": {"fma_medium": 25000}, "fma_medium": 3.5}},
    }
    text = "\n".join(headlines(results, {"cores": 2}))
    for expected in ("real mp3s: 4.1 x", "synthetic mp3s: 4.3 x", "agreement 1.03", "crop + mixup on both sides",
                     "1.4 x the naive", "0.11 % of a training step", "1.2 x the per-clip path",
                     "fma_medium (25,000 clips) 3.5 h"):
        assert expected in text


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section_of_the_full_check(tmp_path, demo_data_dir):
    """`make gpu-check SMOKE=1`: the GPU check's own code on a CPU, so it cannot rot while no GPU is around."""
    from bench import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--demo-data", str(demo_data_dir), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert tuple(record) == gpu.SECTIONS and record["smoke"] is True and record["backend"] == "tensorflow"
    assert record["tests"]["returncode"] == 0 and record["tests"]["failed"] == 0
    assert record["tests"]["passed"] + record["tests"]["skipped"] >= 1
    rows = record["training"]["rows"]
    expected = {(w.name, p, j) for w in gpu.SMOKE_WORKLOADS for p in gpu.SMOKE.precisions for j in gpu.jit_modes(w)}
    assert {(r["workload"], r["precision"], r["jit_compile"]) for r in rows} == expected
    assert {r["workload"] for r in rows if r["jit_compile"]} == {w.name for w in gpu.SMOKE_WORKLOADS if w.xla}
    for row in rows:
        assert row["samples_per_s"] > 0 and np.isfinite(row["final_loss"]) and row["training_gflops_per_sample"] > 0
        assert row["xla"] == row["jit_compile"]  # Keras compiled what was asked for
        assert row["cudnn_grus"] == (1 if "cudnn" in row["workload"] else 0)
        assert row["peak_memory_bytes"] is None  # no GPU here
    assert [p["workload"] for p in record["training"]["pipeline"]] == [w.name for w in gpu.SMOKE_WORKLOADS]
    assert all(p["share_of_step"] > 0 for p in record["training"]["pipeline"])
    prediction = record["prediction"]
    assert prediction["batched_clips_per_s"] > 0 and prediction["max_abs_difference"] < 1e-5
    demo = record["demo"]
    assert demo["ok"] and demo["epochs"] == 2 and (demo["device"], demo["precision"]) == ("cpu", "float32")
    for seconds in record["predicted"]["by_workload"].values():
        assert set(seconds) == {*gpu.SUBSET_CLIPS, "achieved_fraction_of_h100_peak"}
        assert all(seconds[name]["measured"] > 0 for name in gpu.SUBSET_CLIPS)


def _learn_seed(seed: int, shift: dict[str, float]) -> dict:
    """What :func:`bench.learn.run_seed` returns for one seed: every variant scored on the same 3 tracks."""
    from bench.learn import BASELINE, LEVERS

    return {name: {"ids": ["1", "2", "3"], "log_loss": 1.0 + 0.1 * seed + shift.get(name, 0.0), "accuracy": 0.5,
                   "test_log_loss": 1.2 + 0.1 * seed + shift.get(name, 0.0) / 2, "train_seconds": 2.0}
            for name in (BASELINE, *LEVERS.values())}


def test_learn_summary_pairs_each_lever_with_the_baseline_of_its_seed():
    from bench.learn import summarise, summary_lines
    from bench.summary import headlines
    from common.errors import ToolkitError

    # seeds move every variant together: the paired difference sees through them
    shifts = {0: {"demo_multi_root": -0.2, "demo_pseudo": 0.05}, 1: {"demo_multi_root": -0.1, "demo_pseudo": -0.05},
              2: {"demo_multi_root": -0.3, "demo_pseudo": 0.1}}
    record = summarise({seed: _learn_seed(seed, shift) for seed, shift in shifts.items()})
    assert record["scored_tracks"] == 3 and record["seeds"] == [0, 1, 2]
    assert record["variants"]["demo"]["log_loss"]["median"] == pytest.approx(1.1)
    assert record["variants"]["demo"]["log_loss"]["min"] == pytest.approx(1.0)
    multi_root = record["levers"]["multi_root"]
    assert multi_root["log_loss_difference"]["median"] == pytest.approx(-0.2)
    assert multi_root["verdict"] == "lower in every seed"
    assert record["levers"]["pseudo_labels"]["verdict"] == "mixed: lower in 1, higher in 2 of 3 seeds"
    assert record["levers"]["multitask"]["verdict"] == "mixed: lower in 0, higher in 0 of 3 seeds"  # no change
    record.update(k=3)
    text = "\n".join(headlines({"learn": record}, {"cores": 2}))
    assert "Data levers on the demo (3 scored tracks, 3 folds" in text
    assert all(line in text for line in summary_lines(record))
    assert ("multi_root (demo_multi_root): 0.9000 [0.8000, 1.0000], difference -0.2000 [-0.3000, -0.1000]: "
            "lower in every seed; test split -0.1000 [-0.1500, -0.0500]") in text
    # variants scored on other tracks are not compared
    other = _learn_seed(0, {})
    other["demo_multitask"]["ids"] = ["1", "2"]
    with pytest.raises(ToolkitError, match="demo_multitask scored other tracks"):
        summarise({0: other})


@pytest.mark.slow
def test_learn_benchmark_trains_every_lever_on_the_same_folds_and_tracks(tmp_path, demo_data_dir):
    from bench import learn
    from common.folds import read_folds
    from common.metadata import FmaDataset

    out, work = tmp_path / "learn.json", tmp_path / "work"
    # the levers that add training rows (each lever's own training is tested in its test module)
    levers = ["multi_root", "pseudo_labels"]
    argv = ["--data", str(demo_data_dir), "--cache", str(tmp_path / "cache"), "--work", str(work), "--seeds", "0",
            "--k", "2", "--epochs", "1", "--jobs", "2", "--levers", ",".join(levers), "--out", str(out)]
    assert learn.main(argv) == 0
    record = json.loads(out.read_text())
    assert set(record["variants"]) == {"demo", "demo_multi_root", "demo_pseudo"} and list(record["levers"]) == levers
    tracks = FmaDataset.open(demo_data_dir, "large").tracks
    folds = read_folds(work / "folds-large-k2.csv", tracks=tracks)
    labelled = tracks.loc[folds.index, ("track", "genre_top")].notna()
    seed_runs = work / "seed_0"
    scored = {name: pd.read_csv(seed_runs / name / "oof.csv", dtype={"id": str})["id"] for name in record["variants"]}
    # every variant is scored on the labelled fold tracks (those whose features decode), none on the others
    assert record["scored_tracks"] == len(scored["demo"])
    assert 0.8 * labelled.sum() <= len(scored["demo"]) <= labelled.sum()
    assert all(set(ids) == set(scored["demo"]) for ids in scored.values())
    assert set(scored["demo"].astype(int)) <= set(labelled.index[labelled])
    # the levers changed training: more training rows with multi-root and pseudo-labels
    n_train = {name: json.loads((seed_runs / name / "fold_0" / "summary.json").read_text())["n_train"]
               for name in ("demo", "demo_multi_root", "demo_pseudo")}
    assert n_train["demo_multi_root"] > n_train["demo"] and n_train["demo_pseudo"] > n_train["demo"]
    assert record["pseudo_rows_seed_0"]["kept"] > 0
    # a second call keeps what is finished and reports the same numbers
    assert learn.main([*argv[:-1], str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    for name, measured in record["variants"].items():
        assert again["variants"][name]["log_loss"] == measured["log_loss"], name
        assert again["variants"][name]["train_seconds"] == measured["train_seconds"] > 0, name
