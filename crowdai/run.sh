#!/usr/bin/env bash
# crowdAI round-2 runner: predict every mp3 of $TEST_DIRECTORY with the packaged fold models,
# write the submission CSV to $OUTPUT_PATH (and its sidecar JSON beside it). Fully offline.
#
#   TEST_DIRECTORY=/data/test OUTPUT_PATH=/out/predictions.csv crowdai/run.sh
#
# Optional environment: EXP (comma-separated experiments, default crnn), RUNS (packaged
# runs folder with <exp>/fold_<k>/model.keras, default runs beside this repository),
# CACHE (feature cache root, default a temporary folder), MEAN (arithmetic|geometric),
# BLEND_WEIGHTS (e.g. 0.7,0.3), or BLEND (a fitted blend: name under RUNS/blends or a
# blend.json path; replaces EXP, MEAN and BLEND_WEIGHTS), ADAPT_PRIOR=1 (EM test-prior
# adaptation), ALLOW_DIVERGED=1 (use runs whose folds diverged), WEIGHTS (musicnn weights
# folder, for musicnn-embedding experiments),
# PYTHON (default .venv/bin/python, else python3), JOBS (-1: all cores).
set -euo pipefail

: "${TEST_DIRECTORY:?set TEST_DIRECTORY to the folder of test mp3s}"
: "${OUTPUT_PATH:?set OUTPUT_PATH to the CSV file to write}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXP="${EXP:-crnn}"
RUNS="${RUNS:-$ROOT/runs}"
MEAN="${MEAN:-arithmetic}"
JOBS="${JOBS:--1}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [[ -z "${CACHE:-}" ]]; then
  CACHE="$(mktemp -d "${TMPDIR:-/tmp}/fma-genre-cache.XXXXXX")"
  trap 'rm -rf "$CACHE"' EXIT
fi

# offline: no downloads, quiet TensorFlow
export PIP_NO_INDEX=1 TF_CPP_MIN_LOG_LEVEL=2

args=(--runs "$RUNS" --test-dir "$TEST_DIRECTORY" --cache "$CACHE" --output "$OUTPUT_PATH" --jobs "$JOBS")
if [[ -n "${BLEND:-}" ]]; then
  args+=(--blend "$BLEND")
else
  args+=(--exp "$EXP" --mean "$MEAN")
  [[ -n "${BLEND_WEIGHTS:-}" ]] && args+=(--blend-weights "$BLEND_WEIGHTS")
fi
[[ -n "${WEIGHTS:-}" ]] && args+=(--weights "$WEIGHTS")
[[ "${ADAPT_PRIOR:-0}" == 1 ]] && args+=(--adapt-prior)
[[ "${ALLOW_DIVERGED:-0}" == 1 ]] && args+=(--allow-diverged)
mkdir -p "$(dirname "$OUTPUT_PATH")"
cd "$ROOT"
"$PYTHON" -m crowdai.submit "${args[@]}"
