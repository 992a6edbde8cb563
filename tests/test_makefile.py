"""`make help`: every documented target, in the order a newcomer runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_help_lists_targets_in_newcomer_order_and_new_ones_after(tmp_path):
    extra = tmp_path / "extra.mk"  # what another branch adds: a target not in HELP_ORDER yet
    extra.write_text("zzz-new: ## A target not in HELP_ORDER yet\n\t@true\n")
    result = subprocess.run(["make", "--no-print-directory", "-f", "Makefile", "-f", str(extra), "help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    targets = [re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0] for line in result.stdout.splitlines()
               if line.startswith("  ")]
    documented = re.findall(r"^([a-zA-Z_-]+):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    assert sorted(targets) == sorted([*documented, "zzz-new"])
    newcomer = ["setup", "download", "demo-data", "demo", "features", "folds", "train", "compare", "blend",
                "submit", "validate", "score", "tag", "weights", "test", "bench", "clean"]
    assert [t for t in targets if t in newcomer] == newcomer
    assert targets[-1] == "zzz-new"
