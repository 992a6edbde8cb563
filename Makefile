# FMA genre toolkit. `make help` lists the targets; the logic lives in Python.
# Variables can be set on the command line: make train EXP=crnn SUBSET=medium
# `make tag FILE=song.mp3` without EXP tags with the pretrained musicnn (zero-shot).
# Paths may hold spaces, parentheses, quotes and any Unicode: recipes pass each path
# variable to the shell as one word ($(call quote,...)); VENV, a make target, may not.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_SYSTEM ?= python3.11
VENV      ?= .venv
PY        := $(VENV)/bin/python
EXTRAS    ?= dev
comma := ,
STAMP     := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DATA      ?= data
SUBSET    ?= medium
EXP       ?= crnn
CONFIG    ?= experiments/configs/$(EXP).yaml
CACHE     ?= cache
RUNS      ?= runs
K         ?= 5
FOLDS     ?= $(DATA)/folds-$(SUBSET)-k$(K).csv
FOLD      ?=
JOBS      ?= -1
SCHEDULER ?=
# SOURCE=test: `make features` caches the crowdAI test folder TEST_DIR instead of DATA/fma_SUBSET.
SOURCE    ?=
TEST_DIR  ?= $(DATA)/crowdai_fma_test
# `make pseudo`: the folder of unlabelled <id>.mp3 clips and the smallest confidence kept.
UNLABELLED ?=
THRESHOLD ?= 0
SUBMISSION ?= $(lastword $(sort $(wildcard submissions/*.csv)))
LABELS    ?=
FILE      ?=
OUT       ?= out
PYTEST_ARGS ?=
WEIGHTS   ?= models/musicnn
MEAN      ?= arithmetic
BLEND     ?=
BLEND_WEIGHTS ?=
NAME      ?=
BLEND_ARGS ?=
# `make zero-shot-oof`: e.g. --overwrite, --name NAME, --smoothing W.
ZERO_SHOT_ARGS ?=
SUBMIT_ARGS ?=
TAG_ARGS  ?=
TEST      ?=
CHALLENGE ?=
DRY_RUN   ?=
SMOKE     ?=
WHEELHOUSE ?= .whl
# VERIFY=1: features and compare re-hash every file against its record; FORCE=1: features start on a
# nearly full disk, demo-data replaces an older demo dataset; ALLOW_DIVERGED=1: blend, submit and
# package accept runs whose folds diverged (never failed ones).
VERIFY    ?=
FORCE     ?=
ALLOW_DIVERGED ?=
# `make bench-learn`: the training seeds of every variant (the median over them is reported).
SEEDS     ?= 0,1,2

# Quieter TensorFlow start-up (errors still show).
export TF_CPP_MIN_LOG_LEVEL ?= 2

# What `make demo` writes (and `make clean` removes): its data, runs, feature caches and
# plots/tags, never CACHE (the real feature cache), RUNS or submissions/.
DEMO_DATA := data/demo
DEMO_RUNS := runs/demo
DEMO_CACHE := cache/demo
DEMO_OUT   = $(OUT)/demo
DEMO_TEST := $(DEMO_DATA)/crowdai_fma_test
# The folds and runs of `make bench-learn` (on the demo data and cache; `make clean` removes them too).
LEARN_RUNS := runs/bench-learn
# The demo tags the largest demo song (never one of the broken files) with the trained
# ensemble, and a real recording with musicnn where ../shared/audio exists. The song is
# picked by the shell when the line runs: the demo data does not exist before the recipe starts.
DEMO_SONG = "$$(ls -S $(DEMO_DATA)/fma_small/*/*.mp3 | head -n 1)"
REAL_SONG = $(or $(wildcard ../shared/audio/Kevin_MacLeod_-_Vibe_Ace.ogg),$(DEMO_SONG))

# One shell word for a value, whatever it holds ('...', its own single quotes escaped); nothing when empty.
quote = $(if $(1),'$(subst ','\'',$(1))')

TAG_EXP = $(if $(filter command line environment override,$(origin EXP)),$(EXP),musicnn)
SCHEDULER_ARG = $(if $(SCHEDULER),--scheduler $(call quote,$(SCHEDULER)),)
FOLD_ARG = $(if $(FOLD),--fold $(FOLD),)
VERIFY_ARG = $(if $(VERIFY),--verify,)
FORCE_ARG = $(if $(FORCE),--force,)
ALLOW_DIVERGED_ARG = $(if $(ALLOW_DIVERGED),--allow-diverged,)
# crowdai.submit is given only what it uses: a fitted blend, the zero-shot musicnn (nothing trained,
# cached or combined: it refuses --runs, --cache, --mean), or the fold ensembles of EXP.
SUBMIT_TRAINED = --runs $(call quote,$(RUNS)) --cache $(call quote,$(CACHE)) $(ALLOW_DIVERGED_ARG)
SUBMIT_SOURCE = $(if $(BLEND),--blend $(call quote,$(BLEND)) $(SUBMIT_TRAINED),$(if $(filter musicnn,$(EXP)),\
  --exp musicnn --data $(call quote,$(DATA)) --subset $(SUBSET),\
  --exp $(EXP) --mean $(MEAN) $(if $(BLEND_WEIGHTS),--blend-weights $(BLEND_WEIGHTS),) $(SUBMIT_TRAINED)))
# The variables recipes read, shown by `make help`.
HELP_VARIABLES := DATA SUBSET EXP CONFIG CACHE RUNS K FOLDS FOLD JOBS SCHEDULER SOURCE TEST_DIR UNLABELLED THRESHOLD TEST FILE OUT \
                  WEIGHTS MEAN BLEND BLEND_WEIGHTS NAME BLEND_ARGS ZERO_SHOT_ARGS SUBMIT_ARGS TAG_ARGS SUBMISSION LABELS CHALLENGE \
                  DRY_RUN SMOKE VERIFY FORCE ALLOW_DIVERGED SEEDS PYTEST_ARGS WHEELHOUSE EXTRAS VENV PYTHON_SYSTEM

.PHONY: help setup download demo-data features plots folds train compare zero-shot-oof blend submit pseudo validate upload package score tag \
        weights demo test lint typecheck test-package gpu-check bench bench-features bench-train bench-predict bench-tag bench-metadata bench-blend bench-learn clean

# `make help` lists the targets in the order a newcomer runs them; a target missing here
# is listed after these, in file order.
HELP_ORDER := help setup download demo-data demo features plots folds train compare zero-shot-oof blend submit pseudo validate \
              upload package score tag weights test lint typecheck test-package gpu-check bench-features bench-train bench-predict bench-tag bench-metadata bench-blend bench-learn bench clean

help: ## List the targets in the order a newcomer runs them, and what they do
	@awk -v order="$(HELP_ORDER)" 'BEGIN {FS = ":.*## "} \
	  /^[a-zA-Z_-]+:.*## / {n++; name[n] = $$1; text[$$1] = $$2} \
	  function show(t) {printf "  \033[36m%-15s\033[0m %s\n", t, text[t]; shown[t] = 1} \
	  END {k = split(order, wanted, " "); for (i = 1; i <= k; i++) if (wanted[i] in text) show(wanted[i]); \
	       for (i = 1; i <= n; i++) if (!(name[i] in shown)) show(name[i])}' $(MAKEFILE_LIST)
	@echo Variables '(current value):' $(foreach v,$(HELP_VARIABLES),$(call quote,$(v)=$($(v))))

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the toolkit (fast when nothing changed; GPU machines: EXTRAS=dev,gpu)

download: setup ## Fetch fma_metadata + fma_SUBSET (+ crowdAI test set with TEST=1), SHA-1 checked, resumable; unpack into DATA
	$(PY) -m common.download --subset $(SUBSET) --data $(call quote,$(DATA)) $(if $(TEST),--test,)

demo-data: setup ## Generate the mini-FMA (metadata, mp3s, crowdAI-style test folder, fma_large extras) under data/demo (FORCE=1 replaces an older one)
	$(PY) -m common.demo_data --out $(call quote,$(DEMO_DATA)) $(FORCE_ARG)

features: setup ## Log-mel cache for DATA/fma_SUBSET (or TEST_DIR with SOURCE=test) with EXP's feature settings
	$(PY) -m common.features --config $(call quote,$(CONFIG)) --cache $(call quote,$(CACHE)) --jobs $(JOBS) \
	  --weights $(call quote,$(WEIGHTS)) $(SCHEDULER_ARG) $(VERIFY_ARG) $(FORCE_ARG) \
	  $(if $(filter test,$(SOURCE)),--audio-dir $(call quote,$(TEST_DIR)),--data $(call quote,$(DATA)) --subset $(SUBSET))

plots: setup ## Genre histogram of SUBSET and the log-mel image of one track, as PNGs in OUT
	$(PY) -m common.plots --data $(call quote,$(DATA)) --subset $(SUBSET) --config $(call quote,$(CONFIG)) \
	  --out $(call quote,$(OUT))

folds: setup ## Write the K-fold file (stratified by genre, grouped by artist) once
	$(PY) -m experiments.folds --data $(call quote,$(DATA)) --subset $(SUBSET) --k $(K) --out $(call quote,$(FOLDS))

train: setup ## Train every fold (or FOLD) of experiment EXP; finished folds are kept, interrupted ones resume
	$(PY) -m experiments.runner --config $(call quote,$(CONFIG)) --data $(call quote,$(DATA)) --subset $(SUBSET) \
	  --folds $(call quote,$(FOLDS)) --cache $(call quote,$(CACHE)) --runs $(call quote,$(RUNS)) $(FOLD_ARG) $(SCHEDULER_ARG)

compare: setup ## Table of all experiments in RUNS (CSV, Markdown, learning curves, confusion matrix)
	$(PY) -m experiments.compare --runs $(call quote,$(RUNS)) --out $(call quote,$(RUNS)/compare) $(VERIFY_ARG)

zero-shot-oof: setup weights ## Zero-shot musicnn predictions of the FOLDS tracks of DATA/fma_SUBSET as RUNS/musicnn/oof.csv, for make blend EXP=musicnn,a [ZERO_SHOT_ARGS=--overwrite]
	$(PY) -m crowdai.zero_shot_oof --data $(call quote,$(DATA)) --subset $(SUBSET) --folds $(call quote,$(FOLDS)) \
	  --runs $(call quote,$(RUNS)) --weights $(call quote,$(WEIGHTS)) $(ZERO_SHOT_ARGS)

blend: setup ## Fit temperatures, pool weights (and stacking) on the out-of-fold predictions of EXP=a,b [NAME=, BLEND_ARGS=--stacking]
	$(PY) -m crowdai.blend --exp $(EXP) --runs $(call quote,$(RUNS)) $(if $(NAME),--name $(call quote,$(NAME)),) \
	  $(ALLOW_DIVERGED_ARG) $(BLEND_ARGS)

submit: setup $(if $(filter musicnn,$(EXP)),weights,) ## crowdAI CSV for TEST_DIR: fitted BLEND=name, or EXP=a,b [MEAN, BLEND_WEIGHTS=0.7,0.3]; SUBMIT_ARGS=--adapt-prior; EXP=musicnn: zero-shot, no training
	$(PY) -m crowdai.submit $(SUBMIT_SOURCE) --test-dir $(call quote,$(TEST_DIR)) --out submissions \
	  --weights $(call quote,$(WEIGHTS)) $(SUBMIT_ARGS)

pseudo: setup ## Soft targets of UNLABELLED/<id>.mp3 (or an FMA audio folder's NNN/<id>.mp3) from EXP=a,b or BLEND=name (confidence >= THRESHOLD) into RUNS/pseudo/; drops tracks of FOLDS and the test split
	$(PY) -m crowdai.pseudo $(if $(BLEND),--blend $(call quote,$(BLEND)),--exp $(EXP)) --runs $(call quote,$(RUNS)) \
	  --unlabelled $(call quote,$(UNLABELLED)) --cache $(call quote,$(CACHE)) --threshold $(THRESHOLD) \
	  --out $(call quote,$(RUNS)/pseudo/$(or $(BLEND),$(subst $(comma),+,$(EXP)))_$(notdir $(UNLABELLED))_t$(THRESHOLD).csv) \
	  --data $(call quote,$(DATA)) --subset $(SUBSET) --folds $(call quote,$(FOLDS)) --weights $(call quote,$(WEIGHTS)) \
	  --jobs $(JOBS) $(ALLOW_DIVERGED_ARG)

validate: setup ## Check SUBMISSION (default: newest) against TEST_DIR before upload
	$(PY) -m crowdai.validate $(call quote,$(SUBMISSION)) --test-dir $(call quote,$(TEST_DIR))

upload: setup ## Validate SUBMISSION (default: newest) against TEST_DIR, then send it with aicrowd-cli (DRY_RUN=1: only print)
	$(PY) -m crowdai.upload $(call quote,$(SUBMISSION)) --test-dir $(call quote,$(TEST_DIR)) \
	  $(if $(CHALLENGE),--challenge $(call quote,$(CHALLENGE)),) $(if $(DRY_RUN),--dry-run,)

package: setup ## Round-2 folder OUT (default out/round2-EXP) from EXP's fold models (BLEND: fitted blend name or JSON)
	$(PY) -m crowdai.package --exp $(EXP) --runs $(call quote,$(RUNS)) --mean $(MEAN) --weights $(call quote,$(WEIGHTS)) \
	  --jobs $(JOBS) --out $(call quote,$(if $(filter command line,$(origin OUT)),$(OUT),$(OUT)/round2-$(subst $(comma),+,$(EXP)))) \
	  $(if $(BLEND),--blend $(call quote,$(BLEND)),) $(if $(BLEND_WEIGHTS),--blend-weights $(BLEND_WEIGHTS),) \
	  $(ALLOW_DIVERGED_ARG)

score: setup ## Leaderboard metrics of SUBMISSION against LABELS
	$(PY) -m crowdai.score $(call quote,$(SUBMISSION)) --labels $(call quote,$(LABELS))

weights: setup ## Fetch musicnn's published checkpoints (PyPI wheel, sha256-checked) into WEIGHTS
	$(PY) -m common.pretrained --dest $(call quote,$(WEIGHTS))

tag: setup $(if $(filter musicnn,$(TAG_EXP)),weights,) ## Genre tags over time for FILE: EXP's fold ensemble, or musicnn zero-shot without EXP
	$(PY) -m crowdai.tag $(call quote,$(FILE)) --exp $(TAG_EXP) --runs $(call quote,$(RUNS)) --out $(call quote,$(OUT)) \
	  --weights $(call quote,$(WEIGHTS)) $(TAG_ARGS)

demo: setup ## Whole chain on the generated mini-FMA: data, features, folds, train (2 experiments), compare, blend, submit, validate, score (vs zero-shot), tag, upload (dry run)
	$(MAKE) demo-data
	$(MAKE) features DATA=$(DEMO_DATA) SUBSET=small EXP=demo CACHE=$(DEMO_CACHE)
	$(MAKE) folds DATA=$(DEMO_DATA) SUBSET=small
	$(MAKE) train DATA=$(DEMO_DATA) SUBSET=small EXP=demo RUNS=$(DEMO_RUNS) CACHE=$(DEMO_CACHE)
	$(MAKE) features DATA=$(DEMO_DATA) SUBSET=small EXP=demo_crnn CACHE=$(DEMO_CACHE)
	$(MAKE) train DATA=$(DEMO_DATA) SUBSET=small EXP=demo_crnn RUNS=$(DEMO_RUNS) CACHE=$(DEMO_CACHE)
	$(MAKE) compare RUNS=$(DEMO_RUNS)
	$(MAKE) plots DATA=$(DEMO_DATA) SUBSET=small EXP=demo OUT=$(call quote,$(DEMO_OUT))
	$(MAKE) submit EXP=demo RUNS=$(DEMO_RUNS) TEST_DIR=$(DEMO_TEST) CACHE=$(DEMO_CACHE)
	$(MAKE) validate TEST_DIR=$(DEMO_TEST)
	$(MAKE) score LABELS=$(DEMO_DATA)/crowdai_fma_test_labels.csv
	$(MAKE) blend EXP=demo,demo_crnn NAME=demo RUNS=$(DEMO_RUNS) BLEND_ARGS="--stacking --overwrite"
	$(MAKE) submit BLEND=demo RUNS=$(DEMO_RUNS) TEST_DIR=$(DEMO_TEST) CACHE=$(DEMO_CACHE)
	$(MAKE) validate TEST_DIR=$(DEMO_TEST)
	$(MAKE) score LABELS=$(DEMO_DATA)/crowdai_fma_test_labels.csv
	$(MAKE) submit EXP=musicnn TEST_DIR=$(DEMO_TEST) DATA=$(DEMO_DATA) SUBSET=small
	$(PY) -m crowdai.score $$(ls submissions/*_demo.csv | tail -n 1) $$(ls submissions/*_demo+demo_crnn.csv | tail -n 1) \
	  $$(ls submissions/*_musicnn.csv | tail -n 1) --labels $(DEMO_DATA)/crowdai_fma_test_labels.csv
	$(MAKE) tag EXP=demo RUNS=$(DEMO_RUNS) FILE=$(DEMO_SONG) OUT=$(call quote,$(DEMO_OUT))
	$(MAKE) tag FILE=$(REAL_SONG) OUT=$(call quote,$(DEMO_OUT))
	$(MAKE) upload TEST_DIR=$(DEMO_TEST) DRY_RUN=1 SUBMISSION="$$(ls submissions/*_demo+demo_crnn.csv | tail -n 1)"

test: setup ## Run the test suite (small sizes; about 13 minutes on 2 cores)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup typecheck ## Check the code with ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and mypy (settings in pyproject.toml)
	$(PY) -m ruff check .

typecheck: setup ## Check the types of common/, crowdai/, experiments/ and bench/ with mypy (settings in pyproject.toml)
	$(PY) -m mypy

test-package: setup ## Package a tiny trained experiment, install it offline from WHEELHOUSE into a fresh virtualenv, run it (minutes)
	FMA_WHEELHOUSE=$(call quote,$(WHEELHOUSE)) $(PY) -m pytest -m package $(PYTEST_ARGS)

gpu-check: setup ## First command on a GPU machine (after make setup EXTRAS=dev,gpu): GPU tests, training and prediction speed, 2-epoch demo -> bench/gpu.json (SMOKE=1: tiny shapes on CPU -> bench/gpu-smoke.json)
	$(PY) -m bench.gpu $(if $(SMOKE),--smoke --out bench/gpu-smoke.json,--out bench/gpu.json)

bench-features: setup ## Feature extraction clips/s on real (../shared/audio) and synthetic mp3s: toolkit vs single-process librosa vs decode only; 10x-clips scaling
	$(PY) -m bench.features --out bench/features.json

bench-train: setup ## Training samples/s: toolkit pipeline vs naive per-file loop; full-size CRNN: pipeline or model the limit
	$(PY) -m bench.train --out bench/train.json
	$(PY) -m bench.pipeline --out bench/pipeline.json

bench-predict: setup ## Submission clips/s for a K-fold ensemble, feature vs model time, batched vs per-clip, predicted hours
	$(PY) -m bench.predict --out bench/predict.json

bench-tag: setup weights ## Seconds of audio tagged per second: our musicnn vs the original (fetches WEIGHTS; needs recordings in ../shared/audio)
	$(PY) -m bench.tag --out bench/tag.json --weights $(call quote,$(WEIGHTS))

bench-blend: setup ## Cross-fitted OOF log loss of the demo runs: best single, each calibrated, the chosen blend (after make demo)
	$(PY) -m bench.blend --runs $(call quote,$(DEMO_RUNS)) --exp demo,demo_crnn --out bench/blend.json

bench-learn: setup demo-data ## CV log loss of the demo's data levers (multi-root, multi-task, pseudo-labels, short clips) against demo, median over SEEDS, 3 shared artist-grouped folds (about 20 minutes on 2 cores)
	$(PY) -m bench.learn --data $(DEMO_DATA) --cache $(DEMO_CACHE) --work $(LEARN_RUNS) --seeds $(SEEDS) \
	  --threshold $(THRESHOLD) --out bench/learn.json

bench-metadata: setup ## Seconds and peak memory of loading a generated full-size (106,574-row) tracks.csv
	$(PY) -m bench.metadata --out bench/metadata.json

bench: bench-features bench-train bench-predict bench-metadata bench-blend bench-tag bench-learn ## All benchmarks (each bench-* target; bench-blend after make demo, bench-tag fetches WEIGHTS), summarised in bench/summary.json and bench/summary.md
	$(PY) -m bench.summary --dir bench

clean: ## Remove what make demo and make bench-learn made: demo data, runs, feature caches and OUT/demo (never CACHE, RUNS or submissions/)
	@removed=; for path in $(foreach path,$(DEMO_DATA) $(DEMO_RUNS) $(LEARN_RUNS) $(DEMO_CACHE) $(DEMO_OUT),$(call quote,$(path))); do \
	  if [ -e "$$path" ]; then rm -rf -- "$$path" && removed="$$removed $$path"; fi; \
	done; echo "clean: removed$${removed:- nothing}"
