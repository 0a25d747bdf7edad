# Entry points for maintainers and CI. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# MLX's CPU wheel ships a slow reference BLAS; OpenBLAS (Debian libopenblas0-pthread) is used when present.
OPENBLAS := $(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)
RUN := $(if $(OPENBLAS),LD_PRELOAD=$(OPENBLAS) ,)$(PY)

.PHONY: help setup demo test test-fast clean

help:
	@echo "make setup      create $(VENV) with the package and everything the tests need"
	@echo "make demo       run the 4bit-llm recipe on a tiny random official checkpoint, transcribe a clip"
	@echo "make quantize RECIPE=name   download, convert and quantize one recipe (recipes/*.yaml) under $(WORK)/"
	@echo "make publish RECIPE=name    every stage up to publish (evaluate, card and publish are not built yet)"
	@echo "make test       the full test suite (what CI runs; includes the full-size parity test)"
	@echo "make test-fast  the tests without the full-size (0.8B) parity test"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,convert,reference,eval,test]'
	touch $@

# The main job on a built-in default: a tiny random checkpoint from the official code stands in for the
# hub download, the 4bit-llm recipe runs on it end to end, and the result transcribes a synthetic clip.
demo: setup
	$(RUN) -m tests.reference build $(WORK)/demo/upstream --size tiny
	$(RUN) -m funasr_nano_mlx run 4bit-llm --work $(WORK)/demo --source $(WORK)/demo/upstream
	$(RUN) -m tests.speech "the quick brown fox jumps over the lazy dog" $(WORK)/demo/fox.wav
	$(RUN) -m funasr_nano_mlx transcribe $(WORK)/demo/4bit-llm/quantize $(WORK)/demo/fox.wav --format json --max-new-tokens 32

test: setup
	$(RUN) -m pytest -q

test-fast: setup
	$(RUN) -m pytest -q -m "not full"

clean:
	rm -rf $(WORK)

# Recipe stages (recipes/*.yaml): `make quantize RECIPE=4bit-llm` builds $(WORK)/4bit-llm/{download,convert,quantize}.
# Each stage directory appears only when complete; Make (like `run`) skips one newer than its inputs.
# RUN_ARGS passes overrides to `run`, e.g. RUN_ARGS="--source DIR" or "--revision SHA --sha256 HASH".
RECIPE ?= 4bit-llm
RUN_ARGS ?=
STAGE_DIR := $(WORK)/$(RECIPE)
RECIPE_FILE := recipes/$(RECIPE).yaml
RUN_STAGE = $(RUN) -m funasr_nano_mlx run $(RECIPE) --work $(WORK) $(RUN_ARGS) --until

.PHONY: download convert quantize publish
download convert quantize: %: $(STAGE_DIR)/%

$(STAGE_DIR)/download: $(RECIPE_FILE) | $(VENV)/.installed
	$(RUN_STAGE) download

$(STAGE_DIR)/convert: $(STAGE_DIR)/download $(RECIPE_FILE)
	$(RUN_STAGE) convert

$(STAGE_DIR)/quantize: $(STAGE_DIR)/convert $(RECIPE_FILE)
	$(RUN_STAGE) quantize

# evaluate, card and publish come with their issues; until then publish stops after the last stage built.
publish: $(STAGE_DIR)/quantize
	@echo "publish is not built yet: stopped after quantize; the variant is in $(STAGE_DIR)/quantize (nothing was uploaded)"
