"""The memory budget: RAM, the container's cgroup limit and ``$FMA_MEMORY_LIMIT``."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.memory import cgroup_memory_limit, memory_budget_bytes, parse_memory_size, physical_memory_bytes


def test_cgroup_memory_limit_reads_v2_then_v1_and_knows_unlimited(tmp_path):
    v2, v1, none = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    for folder in (v2, v1 / "memory", none):
        folder.mkdir(parents=True)
    (v2 / "memory.max").write_text("8589934592\n")
    assert cgroup_memory_limit(root=v2) == 8 << 30
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(root=v2) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("2147483648\n")
    assert cgroup_memory_limit(root=v1) == 2 << 30
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory_limit(root=v1) is None
    assert cgroup_memory_limit(root=none) is None


def test_memory_budget_is_the_least_of_ram_cgroup_and_environment(tmp_path):
    (tmp_path / "memory.max").write_text(str(3 << 30))
    ram = physical_memory_bytes()
    assert memory_budget_bytes(cgroup_root=tmp_path / "absent", environ={}) == ram
    assert memory_budget_bytes(cgroup_root=tmp_path, environ={}) == min(ram, 3 << 30)
    assert memory_budget_bytes(cgroup_root=tmp_path, environ={"FMA_MEMORY_LIMIT": "1G"}) == min(ram, 1 << 30)
    assert memory_budget_bytes(cgroup_root=tmp_path, environ={"FMA_MEMORY_LIMIT": str(1 << 50)}) == min(ram, 3 << 30)
    assert [parse_memory_size(t) for t in ("512M", "16g", "2GiB", "1000", "1.5K")] == [
        512 << 20, 16 << 30, 2 << 30, 1000, 1536]
    for bad in ("lots", "-1G", "0", "G"):
        with pytest.raises(ConfigError, match="FMA_MEMORY_LIMIT"):
            parse_memory_size(bad)
