"""The memory this process may use: installed RAM, the container's cgroup limit and ``$FMA_MEMORY_LIMIT``.

:func:`memory_budget_bytes` is the least of the three; :class:`common.store.ClipStore`
decides from it whether ``in_memory: auto`` loads a feature cache into memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from common.errors import ConfigError

#: Environment variable capping the memory budget of ``in_memory: auto``, in bytes (a
#: ``k``/``M``/``G``/``T`` suffix multiplies by powers of 1024), e.g. ``FMA_MEMORY_LIMIT=16G``.
MEMORY_LIMIT_ENV = "FMA_MEMORY_LIMIT"

#: cgroup limits at or above this many bytes mean "no limit" (v1 writes 2**63 rounded to pages).
_UNLIMITED = 1 << 60

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def physical_memory_bytes() -> int:
    """Installed RAM in bytes (POSIX ``sysconf``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup_memory_limit(*, root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The container's memory limit in bytes, or None when there is none.

    Reads cgroup v2 ``root/memory.max`` or, failing that, cgroup v1
    ``root/memory/memory.limit_in_bytes`` (or ``root/memory.limit_in_bytes``); ``max``,
    a value of 2**60 or more, or no readable file means unlimited.
    """
    root = Path(root)
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes", root / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _UNLIMITED else value
    return None


def parse_memory_size(text: str, *, name: str = MEMORY_LIMIT_ENV) -> int:
    """Bytes of ``"17179869184"``, ``"16G"``, ``"512M"`` (powers of 1024); ConfigError naming ``name`` if bad."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = value[-1:] if value[-1:] in _SUFFIXES else ""
    try:
        number = float(value[:len(value) - len(suffix)])
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ConfigError(f"{name}={text!r}: expected a positive number of bytes, e.g. 17179869184 or 16G")
    return int(number * _SUFFIXES[suffix])


def memory_budget_bytes(*, cgroup_root: str | Path = "/sys/fs/cgroup",
                        environ: Mapping[str, str] | None = None) -> int:
    """Memory this process may use: the least of RAM, the cgroup limit and ``$FMA_MEMORY_LIMIT``."""
    environ = os.environ if environ is None else environ
    limits = [physical_memory_bytes(), cgroup_memory_limit(root=cgroup_root)]
    if environ.get(MEMORY_LIMIT_ENV, "").strip():
        limits.append(parse_memory_size(environ[MEMORY_LIMIT_ENV]))
    return min(limit for limit in limits if limit is not None)
