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
	@echo "make demo       build a tiny random reference checkpoint, convert it, transcribe a clip"
	@echo "make test       the full test suite (what CI runs; includes the full-size parity test)"
	@echo "make test-fast  the tests without the full-size (0.8B) parity test"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,convert,reference,eval,test]'
	touch $@

demo: setup
	$(RUN) -m tests.reference build $(WORK)/demo/upstream --size tiny
	rm -rf $(WORK)/demo/mlx
	$(RUN) -m funasr_nano_mlx convert $(WORK)/demo/upstream $(WORK)/demo/mlx --dtype float32
	$(RUN) -m tests.speech "the quick brown fox jumps over the lazy dog" $(WORK)/demo/fox.wav
	$(RUN) -m funasr_nano_mlx transcribe $(WORK)/demo/mlx $(WORK)/demo/fox.wav --format json --max-new-tokens 32

test: setup
	$(RUN) -m pytest -q

test-fast: setup
	$(RUN) -m pytest -q -m "not full"

clean:
	rm -rf $(WORK)
