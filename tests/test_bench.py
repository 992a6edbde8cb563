"""Smoke tests of the benchmarks: each runs end to end at a tiny size and writes the keys
its issue and ``bench.summary`` rely on. Speed itself is measured by ``make bench`` (as
ratios in one run), never asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf


def test_features_benchmark_reports_medians_of_its_rounds_and_the_summary_reads_them(tmp_path):
    from bench import features, summary
    from common import mp3

    out = tmp_path / "features.json"
    assert features.main(["--clips", "2", "--rounds", "2", "--shard-size", "1",
                          "--mp3-dir", str(tmp_path / "mp3"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rounds"]) == 2 and result["clips"] == 2 and result["cores"] >= 1
    for key in ("toolkit_clips_per_s", "baseline_clips_per_s", "decode_only_clips_per_s", "ratio"):
        assert result[key] > 0
        assert result[key] == pytest.approx(np.median([measured[key] for measured in result["rounds"]]), abs=0.011)
    assert result["mp3_decoder"] == ("libmpg123 (mono mix)" if mp3.available() else "soundfile")

    assert summary.main(["--dir", str(tmp_path)]) == 0
    assert "clips/s per core" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["features"] == result


def test_tag_benchmark_without_the_original_reports_ours_only(tmp_path, musicnn_weights_dir):
    from bench import tag

    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(7 * 16000) / 16000
    sf.write(audio / "chirp.ogg", (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), 16000)
    out = tmp_path / "tag.json"
    assert tag.main(["--audio", str(audio), "--weights", str(musicnn_weights_dir),
                     "--original-python", str(tmp_path / "no-venv" / "python"), "--rounds", "1",
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["files"] == 1 and result["audio_seconds"] == pytest.approx(7.0, abs=0.01)
    assert result["ours"]["audio_seconds_per_second"] > 0 and result["fused"]["audio_seconds_per_second"] > 0
    assert result["fused"]["ratio_to_msd_only"] == pytest.approx(
        result["fused"]["audio_seconds_per_second"] / result["ours"]["audio_seconds_per_second"], abs=0.01)
    assert result["original"] is None and result["original_onednn"] is None and "speedup" not in result


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
