"""Feature cache: failures, resume after a kill, settings digests, random access."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from common.audio import load_clip, load_clip_with_length, logmel
from common.errors import FeatureCacheError
from common.features import FeatureCache, _is_glibc, cache_dir_for, extract, features_for, folder_items, main
from common.io import TEMPORARY_GLOB
from common.settings import FeatureSettings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                           clip_seconds=2.0, min_seconds=1.0)
BROKEN = {"b_empty": "unreadable", "b_text": "unreadable", "b_head": "unreadable",
          "b_silent": "silent", "b_short": "too_short"}


def _tone(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
            + 0.02 * rng.standard_normal(t.size))


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    """24 good clips of mixed formats, rates and lengths, plus one file of every broken kind."""
    folder = tmp_path_factory.mktemp("features") / "songs"
    folder.mkdir()
    rng = np.random.default_rng(7)
    formats = [(".wav", "WAV", 8000), (".flac", "FLAC", 16000), (".ogg", "OGG", 22050), (".mp3", "MP3", 44100)]
    for i in range(24):
        suffix, fmt, rate = formats[i % 4]
        y = _tone(rng, rate, rng.uniform(1.5, 3.0))
        sf.write(folder / f"song{i:02d}{suffix}", np.stack([y, y], axis=1), rate, format=fmt)
    good_mp3 = (folder / "song03.mp3").read_bytes()
    (folder / "b_empty.mp3").write_bytes(b"")
    (folder / "b_text.wav").write_text("this is not audio\n" * 40)
    (folder / "b_head.mp3").write_bytes(good_mp3[:300])
    sf.write(folder / "b_silent.wav", np.zeros(3 * 8000), 8000)
    sf.write(folder / "b_short.flac", _tone(rng, 8000, 0.4), 8000)
    (folder / "notes.txt").write_text("ignored: not an audio suffix\n")
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "exp.yaml"
    path.write_text(yaml.safe_dump({"features": SETTINGS.to_dict(), "model": {"name": "crnn"}}))
    return path


@pytest.fixture(scope="module")
def clean_cache(audio_folder, config_file, tmp_path_factory) -> Path:
    """One uninterrupted CLI run on two workers."""
    root = tmp_path_factory.mktemp("clean")
    assert main(["--config", str(config_file), "--audio-dir", str(audio_folder), "--cache", str(root),
                 "--jobs", "2", "--shard-size", "4", "--no-progress"]) == 0
    return cache_dir_for(root, "songs", SETTINGS)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _files_renamed(directory: Path, rename: tuple[Path, Path] | None = None) -> dict[str, bytes]:
    """:func:`_files` but ``index.json``, whose sha256 of ``failures.csv`` covers the audio paths; with
    ``rename=(read, original)``, of a cache of audio read from a copy, once it is named as the original
    (paths and decoder messages hold it)."""
    old, new = (str(path).encode() for path in rename) if rename else (b"", b"")
    return {name: data.replace(old, new) if rename else data
            for name, data in _files(directory).items() if name != "index.json"}


def test_features_for_dispatches_on_kind():
    y = np.random.default_rng(1).standard_normal(SETTINGS.clip_samples).astype(np.float32)
    features = features_for(y, settings=SETTINGS)
    assert features.shape == SETTINGS.clip_shape
    np.testing.assert_array_equal(features, logmel(y, settings=SETTINGS))
    waveform = FeatureSettings(kind="waveform", sample_rate=8000, clip_seconds=2.0)
    np.testing.assert_array_equal(features_for(y, settings=waveform), y)


def test_folder_items_are_every_audio_file_by_stem(audio_folder):
    items = folder_items(audio_folder)
    assert len(items) == 24 + len(BROKEN)
    assert items[0] == ("b_empty", audio_folder / "b_empty.mp3")
    assert "notes" not in {item_id for item_id, _ in items}


def test_folder_items_read_an_fma_audio_folder_and_only_its_nnn_folders(tmp_path):
    from common.errors import FeatureCacheError
    from common.metadata import audio_path

    for track in (2, 1502, 153000):
        path = audio_path(tmp_path / "fma_large", track)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (tmp_path / "fma_large" / "extra").mkdir()
    (tmp_path / "fma_large" / "extra" / "000009.mp3").write_bytes(b"")  # not an FMA folder: not listed
    (tmp_path / "fma_large" / "README.txt").write_text("")
    items = folder_items(tmp_path / "fma_large")
    assert items == [(f"{t:06d}", audio_path(tmp_path / "fma_large", t)) for t in (2, 1502, 153000)]
    (tmp_path / "fma_large" / "000002.mp3").write_bytes(b"")  # the same id twice
    with pytest.raises(FeatureCacheError, match="000002"):
        folder_items(tmp_path / "fma_large")


def test_every_broken_kind_is_a_failure_row_and_the_run_completes(clean_cache, audio_folder):
    cache = FeatureCache.open(clean_cache)
    assert cache.settings == SETTINGS
    assert sorted(cache.ids) == [f"song{i:02d}" for i in range(24)]
    failures = cache.failures.set_index("id")
    assert failures["reason"].to_dict() == BROKEN
    assert (failures["detail"].str.len() > 0).all()
    assert failures.loc["b_short", "path"] == str(audio_folder / "b_short.flac")
    assert (clean_cache / "settings.json").exists() and len(list(clean_cache.glob("shard_*.npy"))) == 8
    shard = np.load(clean_cache / "shard_00000.npy")
    assert shard.dtype == np.float16 and shard.shape == (4, *SETTINGS.clip_shape)


def test_get_returns_the_right_rows_in_the_order_asked(clean_cache, audio_folder):
    cache = FeatureCache.open(clean_cache)
    ids = ["song17", "song02", "song17", "song23", "song00"]
    batch = cache.get(ids)
    assert batch.shape == (5, *SETTINGS.clip_shape) and batch.dtype == np.float16
    for row, item_id in zip(batch, ids):
        path = next(audio_folder.glob(f"{item_id}.*"))
        expected = features_for(load_clip(path, settings=SETTINGS), settings=SETTINGS).astype(np.float16)
        np.testing.assert_array_equal(row, expected)
    everything = cache.get()
    assert everything.shape == (24, *SETTINGS.clip_shape)
    np.testing.assert_array_equal(everything[list(cache.ids).index("song02")], batch[1])
    with pytest.raises(KeyError, match="b_silent"):
        cache.get(["song01", "b_silent"])


def test_killed_run_resumes_to_the_same_cache_as_a_clean_run(clean_cache, audio_folder, config_file, tmp_path):
    root = tmp_path / "cache"
    cache_dir = cache_dir_for(root, "songs", SETTINGS)
    args = ["--config", str(config_file), "--audio-dir", str(audio_folder), "--cache", str(root),
            "--jobs", "1", "--shard-size", "4", "--no-progress"]
    # One job runs the shards in this subprocess; each shard is slowed down so that the
    # kill surely lands mid-run, after the first shard and before the last.
    slow = ("import sys, time, common.features as f; run = f._extract_shard; "
            "f._extract_shard = lambda *a: (time.sleep(0.5), run(*a))[1]; "
            "raise SystemExit(f.main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=REPO, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (cache_dir / "shard_00000.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "first shard never appeared"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (cache_dir / "index.csv").exists()
    with pytest.raises(FeatureCacheError, match="make features"):
        FeatureCache.open(cache_dir)
    done = len(list(cache_dir.glob("shard_*.json")))
    assert 1 <= done < 8

    # resumed as `make features` runs it: the module as __main__, its tasks in loky workers
    resume = [*args[:args.index("--jobs")], "--jobs", "2", *args[args.index("--jobs") + 2:]]
    result = subprocess.run([sys.executable, "-m", "common.features", *resume], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("features: 24 ok, 5 failed, ")
    cached = int(summary[0].split(", ")[2].split()[0])
    assert cached == 4 * done
    assert not list(cache_dir.glob(TEMPORARY_GLOB))
    assert _files(cache_dir) == _files(clean_cache)


def test_a_finished_cache_is_all_cached_on_rerun(clean_cache, audio_folder, capsys):
    items = folder_items(audio_folder)
    summary = extract(items, settings=SETTINGS, cache_dir=clean_cache, shard_size=4, progress=False)
    assert (summary.n_ok, summary.n_failed, summary.n_cached) == (24, 5, 29)
    assert summary.line() == "features: 24 ok, 5 failed, 29 cached, 0.0 clips/s"
    assert capsys.readouterr().out == ""  # the library returns the line; fma-features prints it


def test_another_item_list_or_shard_size_for_the_same_cache_is_refused(clean_cache, audio_folder):
    items = folder_items(audio_folder)
    before = _files(clean_cache)
    with pytest.raises(FeatureCacheError, match="another item list"):
        extract(items[:-1], settings=SETTINGS, cache_dir=clean_cache, shard_size=4, progress=False)
    with pytest.raises(FeatureCacheError, match="another item list"):
        extract(items, settings=SETTINGS, cache_dir=clean_cache, shard_size=8, progress=False)
    with pytest.raises(FeatureCacheError, match="other settings"):
        extract(items, settings=FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=20,
                                                clip_seconds=2.0, min_seconds=1.0),
                cache_dir=clean_cache, shard_size=4, progress=False)
    assert _files(clean_cache) == before


def test_a_settings_change_makes_a_new_cache_dir(tmp_path, audio_folder):
    other = FeatureSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, clip_seconds=2.0,
                            min_seconds=1.0, log_scale="log1p")
    first, second = cache_dir_for(tmp_path, "songs", SETTINGS), cache_dir_for(tmp_path, "songs", other)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith("songs-logmel-") and first.name == cache_dir_for(tmp_path, "songs", SETTINGS).name
    waveform = FeatureSettings(kind="waveform", sample_rate=8000, clip_seconds=2.0, min_seconds=1.0)
    waveform_dir = cache_dir_for(tmp_path, "songs", waveform)
    assert waveform_dir.name.startswith("songs-waveform-")
    items = [item for item in folder_items(audio_folder) if item[0].startswith("song0")]
    extract(items, settings=waveform, cache_dir=waveform_dir, n_jobs=1, progress=False)
    cache = FeatureCache.open(waveform_dir)
    assert cache.get(["song05"]).shape == (1, 16000)


def test_open_names_the_command_when_the_cache_is_missing(tmp_path):
    with pytest.raises(FeatureCacheError, match="make features"):
        FeatureCache.open(tmp_path / "nothing")


def test_cli_reports_bad_input_with_the_file_name(tmp_path, config_file, capsys):
    assert main(["--config", str(config_file), "--audio-dir", str(tmp_path / "absent"),
                 "--cache", str(tmp_path)]) == 1
    assert str(tmp_path / "absent") in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  n_melz: 3\n")
    assert main(["--config", str(bad), "--audio-dir", str(tmp_path), "--cache", str(tmp_path)]) == 1
    assert "n_melz" in capsys.readouterr().err


def test_dask_cluster_with_a_worker_killed_mid_run_gives_the_same_cache(clean_cache, audio_folder, tmp_path):
    distributed = pytest.importorskip("distributed")

    def slow_down_shards() -> None:  # runs inside each worker; shipped by value (a local function)
        import time as worker_time

        from common import features

        run = features._extract_shard

        def slow(*args):
            worker_time.sleep(0.4)
            return run(*args)

        features._extract_shard = slow

    cache_dir = cache_dir_for(tmp_path, "songs", SETTINGS)
    items = folder_items(audio_folder)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(slow_down_shards)
        pids = client.run(os.getpid)
        victim = pids[min(pids)]
        killer_done = []

        def kill_after_first_shard() -> None:
            deadline = time.monotonic() + 60
            while not (cache_dir / "shard_00000.json").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(victim, signal.SIGKILL)
            killer_done.append(len(list(cache_dir.glob("shard_*.json"))))

        killer = threading.Thread(target=kill_after_first_shard)
        killer.start()
        summary = extract(items, settings=SETTINGS, cache_dir=cache_dir, shard_size=4,
                          scheduler=cluster.scheduler_address, progress=False)
        killer.join()
    assert killer_done and killer_done[0] < 8, "the worker was not killed mid-run"
    assert (summary.n_ok, summary.n_failed, summary.n_cached) == (24, 5, 0)
    assert _files(cache_dir) == _files(clean_cache)


def test_the_same_items_given_by_relative_paths_resume_the_same_cache(clean_cache, audio_folder, tmp_path,
                                                                      monkeypatch):
    relative = [(item_id, Path(os.path.relpath(path, tmp_path))) for item_id, path in folder_items(audio_folder)]
    copy = shutil.copytree(clean_cache, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    summary = extract(relative, settings=SETTINGS, cache_dir=copy, shard_size=4, progress=False)
    assert summary.n_cached == 29 and summary.n_ok == 24


# --- failure kinds: transient (missing file, unexpected exception) are retried, decode failures are kept ---


def _load_clip_failing(failures: dict[str, BaseException]):
    """A ``load_clip_with_length`` that raises ``failures[stem]`` for those files (n_jobs=1 runs in this process)."""
    def load(path, *, settings):
        error = failures.get(Path(path).stem)
        if error is not None:
            raise error
        return load_clip_with_length(path, settings=settings)
    return load


def test_unexpected_exceptions_are_transient_rows_retried_on_the_next_run(clean_cache, audio_folder, tmp_path,
                                                                         monkeypatch):
    import common.features as features

    cache_dir = tmp_path / "cache"
    items = folder_items(audio_folder)
    monkeypatch.setattr(features, "load_clip_with_length", _load_clip_failing(
        {"song05": RuntimeError("resampler exploded"), "song10": MemoryError("cannot allocate"),
         "b_silent": OSError("ctypes call failed")}))
    summary = extract(items, settings=SETTINGS, cache_dir=cache_dir, n_jobs=1, shard_size=4, progress=False)
    assert (summary.n_ok, summary.n_failed) == (22, 7)
    failures = FeatureCache.open(cache_dir).failures.set_index("id")
    assert list(FeatureCache.open(cache_dir).failures.columns) == ["id", "path", "reason", "detail", "kind"]
    assert list(failures.loc["song05", ["reason", "detail", "kind"]]) == [
        "RuntimeError", "resampler exploded", "transient"]
    assert list(failures.loc["song10", ["reason", "kind"]]) == ["MemoryError", "transient"]
    assert list(failures.loc["b_silent", ["reason", "kind"]]) == ["OSError", "transient"]
    assert list(failures.loc["b_short", ["reason", "kind"]]) == ["too_short", "permanent"]
    assert summary.n_transient == 3 and "3 transient failures will be retried" in summary.line()

    monkeypatch.undo()
    healed = extract(items, settings=SETTINGS, cache_dir=cache_dir, n_jobs=1, shard_size=4, progress=False)
    assert (healed.n_ok, healed.n_failed, healed.n_cached) == (24, 5, 29 - 3)
    assert _files(cache_dir) == _files(clean_cache)


def test_a_missing_file_is_retried_and_the_healed_cache_equals_a_clean_one(clean_cache, audio_folder, tmp_path):
    folder = shutil.copytree(audio_folder, tmp_path / "songs")
    items = folder_items(folder)
    kept = tmp_path / "song07.mp3"
    shutil.move(folder / "song07.mp3", kept)
    cache_dir = tmp_path / "cache"
    first = extract(items, settings=SETTINGS, cache_dir=cache_dir, n_jobs=1, shard_size=4, progress=False)
    assert (first.n_ok, first.n_failed) == (23, 6)
    row = FeatureCache.open(cache_dir).failures.set_index("id").loc["song07"]
    assert (row["reason"], row["kind"]) == ("missing", "transient") and "song07.mp3" in row["detail"]

    shutil.move(kept, folder / "song07.mp3")
    healed = extract(items, settings=SETTINGS, cache_dir=cache_dir, n_jobs=1, shard_size=4, progress=False)
    assert (healed.n_ok, healed.n_failed, healed.n_cached) == (24, 5, 28)
    assert _files_renamed(cache_dir, rename=(folder, audio_folder)) == _files_renamed(clean_cache)
    FeatureCache.open(cache_dir).get()  # its index.json holds the checks of its own files


def test_decode_failures_stay_cached_unless_retry_failed(clean_cache, audio_folder, tmp_path, monkeypatch):
    import common.features as features

    copy = shutil.copytree(clean_cache, tmp_path / "copy")
    items = folder_items(audio_folder)
    calls = []

    def counted_load_clip(path, *, settings):
        calls.append(Path(path).stem)
        return load_clip_with_length(path, settings=settings)

    monkeypatch.setattr(features, "load_clip_with_length", counted_load_clip)
    assert extract(items, settings=SETTINGS, cache_dir=copy, n_jobs=1, shard_size=4, progress=False).n_cached == 29
    assert calls == []
    again = extract(items, settings=SETTINGS, cache_dir=copy, n_jobs=1, shard_size=4, progress=False,
                    retry_failed=True)
    assert sorted(calls) == sorted(BROKEN) and again.n_cached == 24
    assert _files(copy) == _files(clean_cache)


def test_a_run_where_most_clips_fail_exits_non_zero_with_the_top_reasons(tmp_path, config_file, capsys):
    folder = tmp_path / "mostly_broken"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "good.wav", _tone(rng, 8000, 2.0), 8000)
    for name in ("e1.mp3", "e2.mp3", "e3.mp3"):
        (folder / name).write_bytes(b"")
    sf.write(folder / "quiet.wav", np.zeros(16000), 8000)
    assert main(["--config", str(config_file), "--audio-dir", str(folder), "--cache", str(tmp_path / "cache"),
                 "--jobs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "4 of 5 clips failed" in err
    assert "3 unreadable" in err and "1 silent" in err and "e1.mp3" in err


# --- the audio folder: missing or empty stops before anything is cached; supersets are read ---


@pytest.fixture
def metadata_only(demo_data_dir, tmp_path) -> Path:
    """A data folder with the demo's fma_metadata/ and no audio."""
    data = tmp_path / "data"
    shutil.copytree(demo_data_dir / "fma_metadata", data / "fma_metadata")
    return data


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty"])
def test_a_data_folder_without_audio_caches_nothing(metadata_only, config_file, tmp_path, capsys, empty):
    if empty:
        (metadata_only / "fma_small").mkdir()
    cache = tmp_path / "cache"
    assert main(["--config", str(config_file), "--data", str(metadata_only), "--subset", "small",
                 "--cache", str(cache), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert str(metadata_only / "fma_small") in err and "fma_small.zip" in err
    assert not cache.exists()


def test_a_superset_archive_is_read_and_named(metadata_only, demo_data_dir, tiny_training_data, tmp_path, capsys):
    from conftest import TINY_FEATURES

    (metadata_only / "fma_large").symlink_to(demo_data_dir / "fma_small", target_is_directory=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"features": TINY_FEATURES}))
    assert main(["--config", str(config), "--data", str(metadata_only), "--subset", "small",
                 "--cache", str(tmp_path / "cache"), "--jobs", "2", "--no-progress"]) == 0
    assert f"audio: {metadata_only / 'fma_large'}" in capsys.readouterr().err
    settings = FeatureSettings.from_dict(TINY_FEATURES)
    ours = _files_renamed(cache_dir_for(tmp_path / "cache", "fma_small", settings),
                          rename=(metadata_only / "fma_large", demo_data_dir / "fma_small"))
    local = _files_renamed(cache_dir_for(tiny_training_data["cache"], "fma_small", settings))
    FeatureCache.open(cache_dir_for(tmp_path / "cache", "fma_small", settings)).get()
    assert ours == local


# Loaded by every Python process of the test's run (the CLI and its loky workers): the clip
# named by FMA_TEST_KILLER kills the process computing it, as a crash in native code would.
_KILLER_HOOK = """
import os
if os.environ.get("FMA_TEST_KILLER"):
    from pathlib import Path
    import common.features as features
    real_load_clip = features.load_clip_with_length
    def load_clip(path, *, settings):
        if Path(path).stem == os.environ["FMA_TEST_KILLER"]:
            os._exit(70)
        return real_load_clip(path, settings=settings)
    features.load_clip_with_length = load_clip
"""


def _cli_with_a_killing_clip(tmp_path: Path, *, config_file: Path, audio_folder: Path, jobs: int,
                             killer: str = "song05") -> tuple[list[str], dict[str, str], Path]:
    """The features CLI as a command, its environment with the :data:`_KILLER_HOOK`, and its cache root."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILLER_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "FMA_TEST_KILLER": killer}
    root = tmp_path / "cache"
    command = [sys.executable, "-c",
               "import sys; from common.features import main; raise SystemExit(main(sys.argv[1:]))",
               "--config", str(config_file), "--audio-dir", str(audio_folder), "--cache", str(root),
               "--jobs", str(jobs), "--shard-size", "4", "--no-progress"]
    return command, env, root


def test_a_clip_that_kills_its_worker_costs_that_clip_only_and_heals_on_the_next_run(
        clean_cache, audio_folder, config_file, tmp_path):
    run, env, root = _cli_with_a_killing_clip(tmp_path, config_file=config_file, audio_folder=audio_folder, jobs=2)
    cache_dir = cache_dir_for(root, "songs", SETTINGS)
    crashed = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 0, crashed.stderr
    assert "a worker process died" in crashed.stderr
    assert crashed.stdout.strip().splitlines()[-1].startswith("features: 23 ok, 6 failed, 0 cached")
    cache = FeatureCache.open(cache_dir)
    assert list(cache.failures.set_index("id").loc["song05", ["reason", "kind"]]) == ["worker_died", "transient"]
    assert not [*cache_dir.glob("*.progress"), *cache_dir.glob("*.crashed")]
    others = [item_id for item_id in FeatureCache.open(clean_cache).ids if item_id != "song05"]
    np.testing.assert_array_equal(cache.get(others), FeatureCache.open(clean_cache).get(others))

    del env["FMA_TEST_KILLER"]  # the crash was the worker's, not the file's: the next run heals it
    healed = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert healed.stdout.strip().splitlines()[-1].startswith("features: 24 ok, 5 failed, 28 cached")
    assert _files(cache_dir) == _files(clean_cache)


def test_on_a_dask_cluster_a_clip_that_kills_its_worker_costs_that_clip_only(
        clean_cache, audio_folder, tmp_path, monkeypatch):
    """Dask's path: the scheduler gives the shard of a killing clip to a restarted worker, which skips the
    clip after its second death (fewer than Dask's ``allowed-failures``, so the run never sees a
    ``KilledWorker``); a local run without the crash heals it."""
    distributed = pytest.importorskip("distributed")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILLER_HOOK)
    # the workers the nanny (re)starts are new interpreters: they load the hook from these
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(REPO)]))
    monkeypatch.setenv("FMA_TEST_KILLER", "song05")
    cache_dir = cache_dir_for(tmp_path / "cache", "songs", SETTINGS)
    items = folder_items(audio_folder)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        summary = extract(items, settings=SETTINGS, cache_dir=cache_dir, shard_size=4,
                          scheduler=cluster.scheduler_address, progress=False)
    assert (summary.n_ok, summary.n_failed) == (23, 6)
    cache = FeatureCache.open(cache_dir)
    assert list(cache.failures.set_index("id").loc["song05", ["reason", "kind"]]) == ["worker_died", "transient"]
    assert not [*cache_dir.glob("*.progress"), *cache_dir.glob("*.crashed")]
    others = [item_id for item_id in FeatureCache.open(clean_cache).ids if item_id != "song05"]
    np.testing.assert_array_equal(cache.get(others), FeatureCache.open(clean_cache).get(others))
    healed = extract(items, settings=SETTINGS, cache_dir=cache_dir, shard_size=4, n_jobs=1, progress=False)
    assert (healed.n_ok, healed.n_failed) == (24, 5)
    assert _files(cache_dir) == _files(clean_cache)


def test_with_one_job_a_killing_clip_stops_two_runs_then_is_skipped_and_an_interruption_costs_nothing(
        clean_cache, audio_folder, config_file, tmp_path):
    run, env, root = _cli_with_a_killing_clip(tmp_path, config_file=config_file, audio_folder=audio_folder, jobs=1)
    # one job computes in the command's own process: the clip kills the command itself
    for _ in range(2):
        assert subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, timeout=300).returncode == 70
    third = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and third.stdout.strip().splitlines()[-1].startswith("features: 23 ok, 6 failed")
    # one death is no verdict (an interrupted run looks the same): without the killer it all heals
    del env["FMA_TEST_KILLER"]
    subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, timeout=300, check=True)
    assert _files(cache_dir_for(root, "songs", SETTINGS)) == _files(clean_cache)


#: One clip's allocations in miniature: the decode buffer (16 MB, 2.6 MB written, shrunk in
#: place) and 8 MB of heap-sized arrays, all freed; minor page faults of the last 5 of 8 clips,
#: in 4-KiB pages (transparent huge pages off for the process, whatever the system's setting).
_CLIP_ALLOCATIONS = """
import ctypes, resource, sys
import numpy as np
from common.features import _keep_freed_memory_for_the_next_clip
PR_SET_THP_DISABLE = 41
ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
if sys.argv[1] == "fixed":
    assert _keep_freed_memory_for_the_next_clip()
def clip():
    buffer = np.empty(1 << 22, dtype=np.float32)
    buffer[:660_000] = 1.0
    buffer.resize(660_000, refcheck=False)
    arrays = [np.ones(1 << 18, dtype=np.float32) for _ in range(8)]
    del buffer, arrays
for _ in range(3):
    clip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    clip()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


@pytest.mark.skipif(not _is_glibc(), reason="glibc's malloc thresholds only")
def test_extraction_workers_reuse_freed_memory_instead_of_page_faulting():
    """glibc's adaptive thresholds return each clip's memory to the kernel; fixed ones keep it."""
    def faults_per_clip(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _CLIP_ALLOCATIONS, mode], capture_output=True, text=True,
                                cwd=REPO, check=True)
        return int(result.stdout)

    assert faults_per_clip("adaptive") > 1000  # 4-KiB pages of the 8 MB, faulted in again
    assert faults_per_clip("fixed") < 100
