"""Nothing on disk silently hurts a feature cache: damaged shards and CSVs, a full disk, two writers at once."""

from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from test_features import SETTINGS, _files, _tone

import common.features as features
from common.errors import FeatureCacheError
from common.features import FeatureCache, bytes_per_clip, cache_dir_for, extract, folder_items, main
from common.io import TEMPORARY_GLOB, format_bytes
from common.locks import read_holder
from common.settings import FeatureSettings
from common.store import ClipStore

REPO = Path(__file__).resolve().parents[1]
#: 9 items in shards of 2: shard_00000 holds the broken file and song00, shard_00004 song07 alone.
SHARD_SIZE = 2


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """8 short WAV tones and one broken file, in a folder named ``songs``."""
    folder = tmp_path_factory.mktemp("integrity") / "songs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        sf.write(folder / f"song{i:02d}.wav", _tone(rng, 8000, 2.0), 8000)
    (folder / "broken.wav").write_text("not audio\n")
    return folder


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity_config") / "exp.yaml"
    path.write_text(yaml.safe_dump({"features": SETTINGS.to_dict()}))
    return path


@pytest.fixture(scope="module")
def clean(songs, config, tmp_path_factory) -> Path:
    """The cache of ``songs`` made by one uninterrupted CLI run."""
    root = tmp_path_factory.mktemp("integrity_clean")
    assert main(_args(songs, config, root)) == 0
    return cache_dir_for(root, "songs", SETTINGS)


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    """A copy of the clean cache, where :func:`_args` with ``tmp_path / "cache"`` finds it."""
    return Path(shutil.copytree(clean, tmp_path / "cache" / clean.name))


def _args(songs: Path, config: Path, root: Path, *extra: str, jobs: int = 1) -> list[str]:
    return ["--config", str(config), "--audio-dir", str(songs), "--cache", str(root), "--jobs", str(jobs),
            "--shard-size", str(SHARD_SIZE), "--no-progress", *extra]


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_bytes(path: Path) -> None:
    """Invert 16 bytes in the data of a ``.npy`` (its size stays)."""
    data = bytearray(path.read_bytes())
    data[-40:-24] = bytes(255 - byte for byte in data[-40:-24])
    path.write_bytes(bytes(data))


def _damage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "computing the shard again" in line]


# --- damaged shards: recomputed by the next `make features`, an error naming the shard for readers ---


def test_a_truncated_shard_is_computed_again_by_the_next_run_naming_it(songs, config, clean, copy, capsys):
    _truncate(copy / "shard_00001.npy")
    assert main(_args(songs, config, copy.parent)) == 0
    out, err = capsys.readouterr()
    size = (clean / "shard_00001.npy").stat().st_size
    assert _damage_lines(err) == [f"features: {copy / 'shard_00001.npy'}: {size // 2} bytes, but {size} were written; "
                                  f"computing the shard again"]
    assert out.startswith("features: 8 ok, 1 failed, 7 cached")  # shard_00001's 2 clips computed again
    assert _files(copy) == _files(clean)


def test_a_shard_with_flipped_bytes_is_computed_again_when_its_hash_is_checked(songs, config, clean, copy, capsys):
    _flip_bytes(copy / "shard_00002.npy")
    assert main(_args(songs, config, copy.parent)) == 0
    assert _damage_lines(capsys.readouterr().err) == []  # the size is right: only the hash tells
    assert (copy / "shard_00002.npy").read_bytes() != (clean / "shard_00002.npy").read_bytes()

    assert main(_args(songs, config, copy.parent, "--verify")) == 0
    out, err = capsys.readouterr()
    [line] = _damage_lines(err)
    assert f"{copy / 'shard_00002.npy'}: sha256 " in line and "(same size)" in line
    assert out.startswith("features: 8 ok, 1 failed, 7 cached")
    assert _files(copy) == _files(clean)


def test_an_unreadable_shard_record_is_computed_again(songs, config, clean, copy, capsys):
    _truncate(copy / "shard_00003.json")
    assert main(_args(songs, config, copy.parent)) == 0
    [line] = _damage_lines(capsys.readouterr().err)
    assert f"{copy / 'shard_00003.json'}: unreadable shard record" in line
    assert _files(copy) == _files(clean)


def test_reading_a_truncated_shard_is_an_error_naming_it_and_the_command_that_heals_it(copy):
    _truncate(copy / "shard_00001.npy")
    heal = r"shard_00001\.npy: \d+ bytes, but \d+ were written; .*`make features`"
    with pytest.raises(FeatureCacheError, match=heal):
        FeatureCache.open(copy)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "memory_mapped"])
def test_reading_a_shard_with_flipped_bytes_is_an_error_before_its_rows_are_used(clean, copy, in_memory):
    _flip_bytes(copy / "shard_00002.npy")
    cache = FeatureCache.open(copy)  # sizes only: opening reads no shard
    heal = r"shard_00002\.npy: sha256 .* \(same size\); .*`make features VERIFY=1`"
    with pytest.raises(FeatureCacheError, match=heal):
        store = ClipStore(cache, ["song00", "song03"], in_memory=in_memory)  # song03 is in shard_00002
        store.gather(np.arange(2))
    np.testing.assert_array_equal(cache.get(["song00"]), FeatureCache.open(clean).get(["song00"]))  # others are read


def test_a_damaged_index_is_an_error_and_the_next_run_rewrites_it(songs, config, clean, copy):
    index = copy / "index.csv"
    index.write_text(index.read_text().replace("song03,2,0", "song03,2,1"))  # same size, another row
    with pytest.raises(FeatureCacheError, match=r"index\.csv: sha256 .*`make features`"):
        FeatureCache.open(copy)
    assert main(_args(songs, config, copy.parent)) == 0
    assert _files(copy) == _files(clean)


def test_a_cache_written_before_checks_were_recorded_is_read_and_verify_records_them(clean, copy, songs):
    """Old records were a bare list of items, and there was no index.json: accepted unchecked; ``verify``
    records the checks of the shards that load as the shard's array, and computes the others again."""
    for record in copy.glob("shard_*.json"):
        record.write_text(json.dumps(json.loads(record.read_text())["items"], indent=1) + "\n")
    (copy / "index.json").unlink()
    np.testing.assert_array_equal(FeatureCache.open(copy).get(), FeatureCache.open(clean).get())
    items = folder_items(songs)
    assert extract(items, settings=SETTINGS, cache_dir=copy, n_jobs=1, shard_size=SHARD_SIZE,
                   progress=False).n_cached == 9
    assert json.loads((copy / "index.json").read_text())["shards"]["shard_00000.npy"] is None  # unchecked
    _truncate(copy / "shard_00004.npy")

    lines: list[str] = []
    summary = extract(items, settings=SETTINGS, cache_dir=copy, n_jobs=1, shard_size=SHARD_SIZE, progress=False,
                      verify=True, notify=lines.append)
    assert summary.n_cached == 8
    [line] = lines
    assert line.startswith(f"features: {copy / 'shard_00004.npy'}: unreadable (")
    assert line.endswith("; computing the shard again")
    assert _files(copy) == _files(clean)


# --- disk space: checked before any work, a full disk while writing is one error naming the folder ---


def test_bytes_per_clip_are_the_readme_table():
    assert bytes_per_clip(FeatureSettings()) == 262_272  # crnn / shortchunk: 96 x 1366
    assert bytes_per_clip(FeatureSettings(kind="waveform", sample_rate=16000)) == 931_840  # samplecnn
    assert bytes_per_clip(SETTINGS) == 16 * 126 * 2


def test_too_little_free_space_stops_the_run_before_any_work_with_both_numbers(songs, config, clean, tmp_path,
                                                                                monkeypatch, capsys):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    root = tmp_path / "cache"
    cache_dir = cache_dir_for(root, "songs", SETTINGS)
    assert main(_args(songs, config, root)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    needed = format_bytes(9 * bytes_per_clip(SETTINGS))
    assert err[-1] == (f"fma-features: error: {cache_dir}: the feature cache needs {needed} more (9 clips of 4,032 "
                       f"bytes; {needed} when complete), but its file system has 4.9 KiB free; free some space "
                       f"or choose another cache folder (--cache, make's CACHE), or pass --force to start anyway")
    assert not list(cache_dir.glob("shard_*"))

    assert main(_args(songs, config, root, "--force")) == 0
    assert _files(cache_dir) == _files(clean)


def test_a_resumed_run_needs_space_for_its_missing_shards_only(songs, config, copy, monkeypatch, capsys):
    (copy / "shard_00004.npy").unlink()
    (copy / "shard_00004.json").unlink()
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4032, 4032))
    assert main(_args(songs, config, copy.parent)) == 0  # one clip of 4,032 bytes left to write
    (copy / "shard_00004.npy").unlink()
    (copy / "shard_00004.json").unlink()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1500, 1500))
    assert main(_args(songs, config, copy.parent)) == 1
    assert ("needs 3.9 KiB more (1 clip of 4,032 bytes; 35.4 KiB when complete), but its file system has 1.5 KiB "
            "free") in capsys.readouterr().err


def _full_disk_on(function_name: str, *, when):
    """``common.features.<function_name>`` raising ENOSPC for the calls whose path satisfies ``when``."""
    real = getattr(features, function_name)

    def write(path, *args, **kwargs):
        if when(Path(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)
    return write


@pytest.mark.parametrize("function_name, when", [
    ("write_npy_atomic", lambda path: path.name == "shard_00002.npy"),
    ("write_bytes_atomic", lambda path: path.name == "shard_00002.json"),
    ("write_bytes_atomic", lambda path: path.name == "index.csv"),
], ids=["shard", "record", "index"])
def test_a_full_disk_while_writing_is_one_error_naming_the_folder_and_the_run_resumes(
        songs, config, clean, tmp_path, monkeypatch, capsys, function_name, when):
    root = tmp_path / "cache"
    cache_dir = cache_dir_for(root, "songs", SETTINGS)
    monkeypatch.setattr(features, function_name, _full_disk_on(function_name, when=when))
    assert main(_args(songs, config, root)) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"fma-features: error: {cache_dir}: no space left on its file system (No space "
                                    f"left on device); free some space and run the command again: the work "
                                    f"finished so far is kept")
    assert "Traceback" not in err and not list(cache_dir.glob(TEMPORARY_GLOB))

    monkeypatch.undo()  # space freed
    assert main(_args(songs, config, root)) == 0
    assert _files(cache_dir) == _files(clean)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16-KiB tmpfs (``mount`` needs root: skipped elsewhere); ``grow()`` gives it 1 MiB."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=1m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_file_system_is_refused_then_one_error_then_resumed(songs, config, clean, small_tmpfs, capsys):
    """9 clips of 4,032 bytes do not fit in 16 KiB: refused; forced, two workers fill the disk and the run
    stops with one line; once the tmpfs has grown the next run finishes the same cache as a clean run."""
    mount, grow = small_tmpfs
    cache_dir = cache_dir_for(mount, "songs", SETTINGS)
    assert main(_args(songs, config, mount, jobs=2)) == 1
    assert f"{cache_dir}: the feature cache needs 35.4 KiB more" in capsys.readouterr().err
    assert main(_args(songs, config, mount, "--force", jobs=2)) == 1
    err = capsys.readouterr().err
    assert f"fma-features: error: {cache_dir}: no space left on its file system" in err and "Traceback" not in err
    assert not list(cache_dir.glob(TEMPORARY_GLOB))
    grow()
    assert main(_args(songs, config, mount, jobs=2)) == 0
    assert _files(cache_dir) == _files(clean)


# --- one writer per cache: a second run waits, then finds the work done; a killed holder blocks nothing ---


#: ``fma-features`` with every shard slowed down, so that a second run surely starts while it works.
SLOW = ("import sys, time, common.features as f; run = f._extract_shard; "
        "f._extract_shard = lambda *a: (time.sleep(0.4), run(*a))[1]; "
        "raise SystemExit(f.main(sys.argv[1:]))")


def _start_holder(args: list[str], cache_dir: Path) -> subprocess.Popen:
    """A slow ``fma-features`` run, returned once it holds the cache's lock."""
    process = subprocess.Popen([sys.executable, "-c", SLOW, *args], cwd=REPO, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while (read_holder(cache_dir) or {}).get("pid") != process.pid:
        assert process.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)
    return process


def _start_waiter(args: list[str], holder: subprocess.Popen) -> tuple[subprocess.Popen, str]:
    """A second ``fma-features`` run on the same cache, returned with the line that names the holder."""
    process = subprocess.Popen([sys.executable, "-m", "common.features", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "in use by" in line:
            return process, line.strip()
    raise AssertionError(f"the second run did not wait: {process.wait()}")


def test_a_second_run_on_the_same_cache_waits_for_the_first_and_finds_the_work_done(songs, config, clean, tmp_path):
    args = _args(songs, config, tmp_path / "cache")
    cache_dir = cache_dir_for(tmp_path / "cache", "songs", SETTINGS)
    first = _start_holder(args, cache_dir)
    second, line = _start_waiter(args, first)
    assert line.startswith(f"{cache_dir}: in use by pid {first.pid} on {socket.gethostname()} (")
    assert line.endswith("; waiting for it to finish")
    first_out, _ = first.communicate(timeout=300)
    second_out, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and first_out.strip().startswith("features: 8 ok, 1 failed, 0 cached")
    assert second.returncode == 0 and second_out.strip().startswith("features: 8 ok, 1 failed, 9 cached")
    assert _files(cache_dir) == _files(clean)


def test_a_killed_holder_never_blocks_the_next_run(songs, config, clean, tmp_path):
    args = _args(songs, config, tmp_path / "cache")
    cache_dir = cache_dir_for(tmp_path / "cache", "songs", SETTINGS)
    first = _start_holder(args, cache_dir)
    second, _line = _start_waiter(args, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    second_out, _ = second.communicate(timeout=300)
    assert second.returncode == 0 and second_out.strip().startswith("features: 8 ok, 1 failed")
    assert _files(cache_dir) == _files(clean)


# --- a local pool's break costs the clip that killed its worker only ---


def test_the_clip_whose_worker_dies_alone_is_charged_and_the_bystanders_are_acquitted(tmp_path, monkeypatch):
    """loky ends every worker when one dies: both in-flight rows are suspects; each is computed alone."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    tasks = [(str(tmp_path), shard, [(f"id{shard}{row}", f"/audio/{shard}{row}.wav") for row in range(4)],
              SETTINGS, "weights", None) for shard in (1, 2)]
    (tmp_path / "shard_00001.progress").write_text("0\n1\n")  # a bystander, killed on row 1
    (tmp_path / "shard_00002.progress").write_text("0\n1\n2\n")  # the killer: row 2
    probed = []

    def probe(clip):
        probed.append(clip[0])
        if clip[0] == "/audio/22.wav":
            raise TerminatedWorkerError("killed")

    assert features._find_the_killers(tasks, probe=probe) == ["/audio/22.wav"]
    assert probed == ["/audio/11.wav", "/audio/22.wav"]
    assert not (tmp_path / "shard_00001.crashed").exists() and not list(tmp_path.glob("*.progress"))
    assert features._rows_that_killed_a_worker(tmp_path, "shard_00002") == {2}  # skipped from now on


def test_when_no_clip_kills_a_worker_alone_the_charges_stand(tmp_path):
    tasks = [(str(tmp_path), 1, [(f"id{row}", f"/audio/{row}.wav") for row in range(4)], SETTINGS, "weights", None)]
    (tmp_path / "shard_00001.progress").write_text("0\n3\n")
    assert features._find_the_killers(tasks, probe=lambda clip: None) == []
    assert (tmp_path / "shard_00001.crashed").read_text() == "3\n"  # one death: tried once more
