"""Fetch and unpack the FMA archives (``make download``): resumable, verified, idempotent.

For ``--subset medium`` it fetches ``fma_metadata.zip`` and ``fma_medium.zip`` (and the
crowdAI round-1 test set with ``--test``) into the archive folder (default: ``DATA``),
checks each against its published SHA-1, and unpacks it into ``DATA``::

    DATA/fma_metadata/tracks.csv, genres.csv, ...
    DATA/fma_medium/NNN/NNNNNN.mp3
    DATA/crowdai_fma_test/<uuid>.mp3            (--test)

* **Resumable.** Bytes go to ``<archive>.part``; after an interrupted transfer (dropped
  connection, Ctrl-C) the next attempt asks the server for the rest with an HTTP
  ``Range`` request, within the same run (a few retries) or the next one.
* **Verified.** A finished transfer is checked against the SHA-1 published with it
  (:data:`ARCHIVES`, with its source). A mismatch deletes nothing: a download of ours is
  renamed ``<archive>.corrupt``, an archive that was already there is left as it is,
  and the error names the file.
* **Idempotent.** Each unpacked folder gets a marker file (:data:`MARKER`) once every
  member is written (members go to a staging folder, renamed into place at the end); a
  folder with its marker is neither fetched nor unpacked again, a verified archive is
  not fetched again. A folder that exists without the marker (unpacked by hand) is
  never touched: the command stops and names it.

Unpacking streams one member at a time (``zipfile`` reads zip64, so ``fma_large.zip``'s
93 GiB are fine); the members' own CRCs are checked as they are read.

Command line (the Makefile's ``download`` target)::

    python -m common.download --subset medium --data data [--test] [--archives DIR] [--delete-archives]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

from common.cli import command
from common.errors import ToolkitError
from common.io import make_folder

#: Where FMA's archives are hosted (links of https://github.com/mdeff/fma, README.md, "Data").
FMA_BASE_URL = "https://os.unil.cloud.switch.ch/fma/"

#: Source of the FMA URLs and SHA-1 sums below.
FMA_SOURCE = ("https://github.com/mdeff/fma README.md: links of the 'Data' section and the sha1 sums "
              "of 'History', 2017-05-09 pre-publication release (rc1, the version the crowdAI challenge uses)")

#: Source of the crowdAI test set's name and URL.
CROWDAI_SOURCE = ("file name from https://github.com/crowdAI/crowdai-musical-genre-recognition-starter-kit "
                  "README.md ('Test mp3 files from fma_crowdai_www2018_test.tar.gz are accessible at "
                  "data/crowdai_fma_test/*.mp3'; the kit links only to crowdAI's dataset page, which needs a "
                  "login); hosted beside FMA's archives. No checksum is published for it.")

#: Marker written into an unpacked folder once every member is in place.
MARKER = ".fma-download.json"

#: Bytes per read while downloading, hashing and unpacking.
CHUNK_BYTES = 1 << 20


class DownloadError(ToolkitError):
    """A transfer failed (HTTP error, connection lost after every retry)."""


class ChecksumError(DownloadError):
    """An archive does not match its published checksum (or its announced length)."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One published archive.

    Attributes
    ----------
    name : str
        File name, e.g. ``fma_medium.zip``.
    url : str
    sha1 : str or None
        Published SHA-1 (hex); None where none is published (only the length the server
        announces and the archive's own CRCs are checked, with a warning).
    folder : str
        Folder under ``DATA`` the archive unpacks to.
    source : str
        Where ``url`` and ``sha1`` are published.
    """

    name: str
    url: str
    sha1: str | None
    folder: str
    source: str


def _fma(stem: str, sha1: str) -> Archive:
    return Archive(f"{stem}.zip", f"{FMA_BASE_URL}{stem}.zip", sha1, stem, FMA_SOURCE)


#: Every archive ``make download`` knows, by key (``metadata``, a subset, ``test``).
ARCHIVES: dict[str, Archive] = {
    "metadata": _fma("fma_metadata", "f0df49ffe5f2a6008d7dc83c6915b31835dfe733"),
    "small": _fma("fma_small", "ade154f733639d52e35e32f5593efe5be76c6d70"),
    "medium": _fma("fma_medium", "c67b69ea232021025fca9231fc1c7c1a063ab50b"),
    "large": _fma("fma_large", "497109f4dd721066b5ce5e5f250ec604dc78939e"),
    "test": Archive("fma_crowdai_www2018_test.tar.gz", f"{FMA_BASE_URL}fma_crowdai_www2018_test.tar.gz",
                    None, "crowdai_fma_test", CROWDAI_SOURCE),
}

#: Subsets ``--subset`` accepts (those of :mod:`common.metadata`).
SUBSETS: tuple[str, ...] = ("small", "medium", "large")


def sha1_of(path: str | Path, *, progress: bool = False) -> str:
    """SHA-1 (hex) of a file, read in :data:`CHUNK_BYTES` blocks."""
    from tqdm.auto import tqdm

    path = Path(path)
    digest = hashlib.sha1()
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                         desc=f"verify {path.name}", disable=not progress, leave=False) as bar:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _announced_total(response, *, offset: int) -> int | None:
    """Length of the whole file from ``Content-Range`` (206, 416) or ``Content-Length`` (200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    if response.status_code == 200 and "Content-Length" in response.headers:
        return int(response.headers["Content-Length"])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _transfer(archive: Archive, part: Path, *, session, progress: bool) -> int | None:
    """One HTTP request appending the rest of ``archive`` to ``part``.

    Returns
    -------
    int or None
        The file's total length as the server announced it (None if it did not).

    Raises
    ------
    DownloadError
        An HTTP status other than 200, 206 and 416.
    requests.RequestException, urllib3.exceptions.HTTPError
        The connection failed or was cut (the bytes received so far stay in ``part``).
    """
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(archive.url, headers=headers, stream=True, timeout=(30, 120)) as response:
        if response.status_code == 416:  # nothing left to send: the part is (at least) complete
            return _announced_total(response, offset=offset)
        if response.status_code not in (200, 206):
            raise DownloadError(f"{archive.url}: HTTP {response.status_code} {response.reason}")
        if response.status_code == 206:
            start = int(response.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != offset:
                raise DownloadError(f"{archive.url}: asked for bytes from {offset}, the server sent from {start}")
        elif offset:
            print(f"download: {archive.url} ignored the range request; starting {part.name} over", file=sys.stderr)
            offset = 0
        total = _announced_total(response, offset=offset)
        with part.open("ab" if offset else "wb") as handle, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=archive.name, disable=not progress) as bar:
            # read1 hands over every byte as it arrives: a cut transfer keeps all it received
            # (iter_content would drop its half-filled last chunk), so a resume refetches nothing.
            while block := response.raw.read1(CHUNK_BYTES, decode_content=True):
                handle.write(block)
                bar.update(len(block))
    return total


def _reject(path: Path, *, ours: bool, detail: str) -> ChecksumError:
    """The error for a corrupt archive; our own download is kept aside as ``.corrupt``, never deleted."""
    if ours:
        corrupt = path.with_name(path.name.removesuffix(".part") + ".corrupt")
        os.replace(path, corrupt)
        return ChecksumError(f"{corrupt}: {detail}; the download is corrupt (kept as {corrupt.name}: delete it "
                             f"and run `make download` again)")
    return ChecksumError(f"{path}: {detail}; this archive was already there and is left as it is: move it "
                         f"away (or delete it) and run `make download` again")


def verify(path: Path, archive: Archive, *, ours: bool, total: int | None = None, progress: bool = False) -> None:
    """Check ``path`` against ``archive.sha1`` (or, without one, the announced length ``total``).

    Raises
    ------
    ChecksumError
        Naming the file; ``ours`` (a download of this run or an earlier one) renames it
        ``<archive>.corrupt``, otherwise the file is not touched.
    """
    size = path.stat().st_size
    if total is not None and size != total:
        raise _reject(path, ours=ours, detail=f"{size} bytes, the server announced {total}")
    if archive.sha1 is None:
        print(f"download: WARNING: no checksum is published for {archive.name}; only its length "
              f"({size} bytes) and, while unpacking, its own CRCs are checked. Source: {archive.source}",
              file=sys.stderr)
        return
    actual = sha1_of(path, progress=progress)
    if actual != archive.sha1:
        raise _reject(path, ours=ours, detail=f"sha1 {actual} differs from the published {archive.sha1} "
                                              f"({archive.source})")


def fetch(archive: Archive, *, archive_dir: str | Path, session=None, retries: int = 4,
          retry_wait: float = 5.0, progress: bool = True) -> Path:
    """Download ``archive`` into ``archive_dir`` (resuming a partial download) and verify it.

    Parameters
    ----------
    archive : Archive
    archive_dir : path-like
        Where ``<name>`` (verified) and ``<name>.part`` (in transfer) live.
    session : requests.Session, optional
    retries : int
        Further attempts after a dropped connection, each resuming with a Range request.
    retry_wait : float
        Seconds before a retry (doubled each time).
    progress : bool
        tqdm progress bars.

    Returns
    -------
    Path
        The verified archive. One already in ``archive_dir`` is verified, not fetched again.
    """
    import requests
    import urllib3

    archive_dir = Path(archive_dir)
    final, part = archive_dir / archive.name, archive_dir / f"{archive.name}.part"
    if final.exists():
        verify(final, archive, ours=False, progress=progress)
        return final
    make_folder(archive_dir)
    session = session or requests.Session()
    for attempt in range(retries + 1):
        try:
            total = _transfer(archive, part, session=session, progress=progress)
            break
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            received = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f"{archive.url}: transfer failed after {retries + 1} attempts ({error}); "
                                    f"{received} bytes are kept in {part}; run `make download` again to "
                                    f"resume") from error
            wait = retry_wait * 2 ** attempt
            print(f"download: {archive.name}: connection lost after {received} bytes ({type(error).__name__}); "
                  f"resuming in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    verify(part, archive, ours=True, total=total, progress=progress)
    os.replace(part, final)
    return final


def is_unpacked(archive: Archive, *, data_dir: str | Path) -> bool:
    """Whether ``DATA/<archive.folder>`` holds the marker of a complete unpack."""
    return (Path(data_dir) / archive.folder / MARKER).is_file()


def _members(path: Path, staging: Path, *, progress: bool) -> int:
    """Stream every member of the zip or tar archive ``path`` into ``staging``; returns the member count."""
    from tqdm.auto import tqdm

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            with tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"unpack {path.name}", disable=not progress) as bar:
                for member in members:
                    archive.extract(member, staging)  # streams; sanitises the path; checks the CRC
                    bar.update(member.file_size)
            return len(members)
    if tarfile.is_tarfile(path):
        count = 0
        with tarfile.open(path, "r|*") as archive, \
                tqdm(unit=" files", desc=f"unpack {path.name}", disable=not progress) as bar:
            for entry in archive:
                archive.extract(entry, staging, filter="data")
                count += 1
                bar.update(1)
        return count
    raise ChecksumError(f"{path}: neither a zip nor a tar archive")


def unpack(path: str | Path, archive: Archive, *, data_dir: str | Path, progress: bool = True) -> Path:
    """Unpack ``path`` into ``DATA/<archive.folder>`` through a staging folder and mark it complete.

    The archive's single top-level folder (``fma_medium/`` in ``fma_medium.zip``) becomes
    ``DATA/<archive.folder>``; an archive of loose files is unpacked into it. The folder is
    renamed into place only when every member is written, with :data:`MARKER` inside.

    Returns
    -------
    Path
        ``DATA/<archive.folder>``.

    Raises
    ------
    ToolkitError
        The folder exists without the marker (it is left untouched), or the archive is
        unreadable (the archive is named; its CRCs are checked while reading).
    """
    path, data_dir = Path(path), Path(data_dir)
    target = data_dir / archive.folder
    if is_unpacked(archive, data_dir=data_dir):
        return target
    if target.exists():
        raise ToolkitError(f"{target}: exists but was not unpacked by `make download` (no {MARKER} in it); "
                           f"it is left as it is: move it away to unpack {path.name} there")
    staging = data_dir / f".{archive.folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # an unpack of ours that was interrupted
    staging.mkdir(parents=True)
    try:
        count = _members(path, staging, progress=progress)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ChecksumError(f"{path}: cannot be unpacked ({error}); the archive is corrupt or incomplete") from error
    entries = list(staging.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    (root / MARKER).write_text(json.dumps({
        "archive": archive.name, "url": archive.url, "sha1": archive.sha1, "members": count,
        "unpacked": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }, indent=2) + "\n")
    os.replace(root, target)
    if root != staging:
        staging.rmdir()
    return target


def archives_for(subset: str, *, test: bool = False,
                 table: Mapping[str, Archive] | None = None) -> list[Archive]:
    """The archives of ``make download SUBSET=subset [TEST=1]``: metadata, the subset, the test set.

    ``table`` defaults to :data:`ARCHIVES`.
    """
    table = ARCHIVES if table is None else table
    if subset not in SUBSETS:
        raise ToolkitError(f"--subset {subset!r}: expected one of {', '.join(SUBSETS)}")
    return [table["metadata"], table[subset], *([table["test"]] if test else [])]


def download(subset: str, *, data_dir: str | Path, test: bool = False, archive_dir: str | Path | None = None,
             delete_archives: bool = False, table: Mapping[str, Archive] | None = None, session=None,
             retries: int = 4, retry_wait: float = 5.0, progress: bool = True) -> list[Path]:
    """Fetch, verify and unpack the archives of ``subset`` into ``data_dir``; skip what is done.

    Parameters
    ----------
    subset : {"small", "medium", "large"}
    data_dir : path-like
        ``DATA``: receives ``fma_metadata/``, ``fma_<subset>/`` and, with ``test``, ``crowdai_fma_test/``.
    test : bool
        Also the crowdAI round-1 test set.
    archive_dir : path-like, optional
        Where the archives are kept (default: ``data_dir``).
    delete_archives : bool
        Remove each archive once it is unpacked (fma_large: 93 GiB back).
    table : mapping, optional
        URL and checksum table (default :data:`ARCHIVES`; tests inject their own).
    session, retries, retry_wait, progress
        As in :func:`fetch`.

    Returns
    -------
    list of Path
        The unpacked folders.
    """
    data_dir = make_folder(data_dir)  # before any download: a wrong DATA fails at once
    archive_dir = make_folder(archive_dir) if archive_dir is not None else data_dir
    folders = []
    for archive in archives_for(subset, test=test, table=table):
        target = data_dir / archive.folder
        if is_unpacked(archive, data_dir=data_dir):
            print(f"download: {target} already unpacked from {archive.name}; nothing to do")
        else:
            path = fetch(archive, archive_dir=archive_dir, session=session, retries=retries,
                         retry_wait=retry_wait, progress=progress)
            unpack(path, archive, data_dir=data_dir, progress=progress)
            print(f"download: {archive.name} verified and unpacked into {target}")
            if delete_archives:
                path.unlink()
                print(f"download: removed {path}")
        folders.append(target)
    return folders


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-download", description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=SUBSETS, default="medium", help="FMA subset (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder to unpack into (default: %(default)s)")
    parser.add_argument("--test", action="store_true", help="also the crowdAI round-1 test set (crowdai_fma_test/)")
    parser.add_argument("--archives", type=Path, default=None, help="folder for the archives (default: --data)")
    parser.add_argument("--delete-archives", action="store_true", help="remove each archive once it is unpacked")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@command("fma-download", resume="run it again to resume")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    download(args.subset, data_dir=args.data, test=args.test, archive_dir=args.archives,
             delete_archives=args.delete_archives, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
