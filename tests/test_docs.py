"""The user docs (README.md, docs/*.md): numbers that a program writes, commands that exist, links that resolve.

Every benchmark figure (a throughput, a speed ratio, a timing, a peak memory) quoted in the
docs must be one that ``make bench`` wrote into the committed ``bench/summary.md``
(``bench/summary.py``); where that file is not committed, the docs quote none and link to it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "bench/summary.md"
#: Files that ``make`` writes and the docs may link to before they exist.
GENERATED = {ROOT / SUMMARY, ROOT / "bench/summary.json", ROOT / "bench/gpu-smoke.json"}

_NUMBER = r"(\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?)"
#: What follows a number that makes it a benchmark figure.
FIGURE_PATTERNS = (
    # throughput: clips/s, s/s, samples/s, MiB/s, TFLOP/s, "s of audio per second", ...
    _NUMBER + r"\s?(?:clips|samples|steps|tracks|rows|songs|files|s|[KMGT]i?B|[KMGT]?FLOP)(?:/s\b|/second\b)",
    _NUMBER + r"\s?(?:clips|samples|s of audio|seconds of audio) per second\b",
    # speed ratios: "1.34 ×", "2.3 x pandas", "3.78 times the original"; not a shape "96 × 1366" nor "1 x GPU"
    _NUMBER + r"\s?[×x](?=\s*(?:$|[^\w\s-]|(?:the|as|faster|slower|speedup|in|on|of|over|than|against|what|per|"
              r"pandas|librosa|numpy)\b))",
    _NUMBER + r" times (?:faster|slower|as fast|the speed|that speed|the original|the per-clip)",
    # timings and memory
    _NUMBER + r"\s?ms\b",
    _NUMBER + r"\s?s (?:per|an?) (?:epoch|clip|step|batch)\b",
    r"peak (?:of )?" + _NUMBER + r"\s?[KMGT]i?B\b",
)


def benchmark_figures(text: str) -> list[tuple[str, float]]:
    """Every benchmark figure quoted in ``text``: ``(the matched words, the number)``, in order."""
    found = []
    for pattern in FIGURE_PATTERNS:
        for match in re.finditer(pattern, text, flags=re.IGNORECASE | re.MULTILINE):
            found.append((match.group(0), float(match.group(1).replace(",", ""))))
    return found


def numbers_in(text: str) -> set[float]:
    """Every number written in ``text`` (thousands separators dropped, exponents read)."""
    return {float(token.replace(",", "")) for token in re.findall(_NUMBER, text)}


def committed_summary() -> str | None:
    """The committed ``bench/summary.md``; None when it is not committed.

    In a checkout, what ``HEAD`` holds (a summary generated locally but not committed does not
    count); outside git (an unpacked source archive), the file as it is.
    """
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        shown = subprocess.run([git, "show", f"HEAD:{SUMMARY}"], cwd=ROOT, capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else None
    path = ROOT / SUMMARY
    return path.read_text() if path.is_file() else None


def unsourced_figures(text: str, *, summary: str | None) -> list[str]:
    """The figures of ``text`` that ``summary`` (a ``bench/summary.md``, or None) does not hold."""
    held = numbers_in(summary) if summary is not None else set()
    return [words for words, number in benchmark_figures(text) if number not in held]


def user_docs() -> list[Path]:
    """README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize(("text", "figures"), [
    ("extracted real music at 98.3 clips/s against 26.0 for the original way", ["98.3 clips/s"]),
    ("gave 1.34 × (59.6 against 44.5 s of audio per second)", ["1.34 ×", "44.5 s of audio per second"]),
    ("0.95 × in a run under a load of 10 (31.0 against 32.8 s/s)", ["32.8 s/s", "0.95 ×"]),
    ("2.3 x what pandas' `read_csv` alone takes, with a peak of 84 MB", ["2.3 x", "peak of 84 MB"]),
    ("features: 16 ok, 0 failed, 0 cached, 2.3 clips/s", ["2.3 clips/s"]),
    ("it reads 0.3 to 0.7 GB/s; a clip costs about 19 ms of one core", ["0.7 GB/s", "19 ms"]),
    ("3.78 times the original way", ["3.78 times the original"]),
    ("1,709.8 samples/s", ["1,709.8 samples/s"]),
])
def test_the_detector_finds_benchmark_figures(text, figures):
    assert sorted(words for words, _ in benchmark_figures(text)) == sorted(figures)


@pytest.mark.parametrize("text", [
    "96 × 1366 log-mel, 12 kHz", "the demo fold must say `1 x GPU`", "262,272 bytes per clip (fma_large 26.0 GiB)",
    "validation log loss over 5 times the uniform prior's", "`features: N ok, M failed, K cached, R clips/s`",
    "T(K) = F + K × M", "samples/s, step time, peak memory", "10x-clips scaling", "within 0.5 % of the best",
])
def test_the_detector_leaves_settings_shapes_and_sizes_alone(text):
    assert benchmark_figures(text) == []


def test_a_figure_is_allowed_only_when_the_summary_holds_it():
    text = "extraction at 98.3 clips/s, 1.02e+03 samples/s, and 2.5 x the naive loop"
    summary = "- Features: 98.3 clips/s on 2 cores\n| train | toolkit_samples_per_s | 1.02e+03 |\n"
    assert unsourced_figures(text, summary=summary) == ["2.5 x"]
    assert unsourced_figures("1,020 samples/s", summary=summary) == []
    assert unsourced_figures(text, summary=None) == ["98.3 clips/s", "1.02e+03 samples/s", "2.5 x"]


@pytest.mark.parametrize("doc", user_docs(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_the_docs_quote_no_benchmark_figure_that_bench_summary_does_not_hold(doc):
    unsourced = unsourced_figures(doc.read_text(), summary=committed_summary())
    assert not unsourced, (f"{doc.name} quotes benchmark figures that the committed {SUMMARY} does not hold: "
                           f"{unsourced}; link to {SUMMARY} (written by `make bench`) instead")


def makefile_targets() -> set[str]:
    """The targets of the Makefile."""
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def code_of(text: str) -> list[str]:
    """The fenced code blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return blocks + spans


@pytest.mark.parametrize("doc", user_docs(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_make_command_in_the_docs_names_a_target_and_known_variables(doc):
    """`make <target> VAR=…` in code: the target exists, and VAR is a Makefile variable or one the code reads."""
    makefile = (ROOT / "Makefile").read_text()
    variables = set(re.findall(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)\s*[:?]?=", makefile, flags=re.M))
    sources = "\n".join(path.read_text() for folder in ("common", "crowdai", "experiments", "bench")
                        for path in (ROOT / folder).rglob("*") if path.suffix in {".py", ".sh"})
    wrong = []
    for code in code_of(doc.read_text()):
        for line in code.splitlines():
            for target in re.findall(r"(?:^|[\s;(])make ([a-z][a-z0-9-]*)", line):
                if target not in makefile_targets():
                    wrong.append(f"target {target!r} in {line.strip()!r}")
            if re.search(r"(?:^|[\s;(])make\b", line):
                for name in re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", line):
                    if name not in variables and not re.search(rf"\b{name}\b", sources):
                        wrong.append(f"variable {name!r} in {line.strip()!r}")
    assert not wrong, wrong


@pytest.mark.parametrize("doc", user_docs(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_of_the_docs_resolves(doc):
    """Links to files point at files of the checkout (or at what `make` generates), links to anchors at headings."""
    text = doc.read_text()
    anchors = {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        if target and not (doc.parent / target).resolve().exists() and (doc.parent / target).resolve() not in GENERATED:
            broken.append(target)
        if not target and anchor not in anchors:
            broken.append(f"#{anchor}")
    assert not broken, broken
