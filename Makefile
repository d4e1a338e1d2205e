# The two commands of the README: `make demo` and `make test`.
# Both create .venv (the full install: nightowl[train,dev]) when it is missing.
# `make scoring-venv` builds .venv-scoring: nightowl[scoring] only, no torch, what a
# nightly scoring worker needs (the test suite builds it too). torch is installed first and pinned:
# on a CPU machine pip takes the local CPU wheel (2.13.0+cpu); an unpinned torch
# could pull a multi-GB CUDA build. For a GPU host see README ("GPU hosts").

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
SCORING_VENV ?= .venv-scoring
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for the torch install only, e.g. a CUDA index on GPU hosts.
TORCH_PIP_ARGS ?=
# Test processes (pytest-xdist; each worker its own Prefect home): 2 suits the 2-core CI box,
# where the suite waits on servers and subprocesses as much as it computes.
TEST_WORKERS ?= 2
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: demo test test-unit test-integration test-all install scoring-venv bench clean lock

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	touch $@

install: $(VENV)/.installed

# Torch-free: the same lock, only the `scoring` extra (ONNX Runtime, no torch).
$(SCORING_VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(SCORING_VENV)/bin/python || $(PYTHON) -m venv $(SCORING_VENV)
	$(SCORING_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[scoring]'
	touch $@

scoring-venv: $(SCORING_VENV)/.installed

demo: install
	$(VENV)/bin/nightowl demo

# Test tiers (markers in pyproject.toml): `make test` is what CI runs (unit + integration, not
# slow); tests that need the public data (../shared/data) skip with the reason where it is absent.
test: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-unit: install
	$(PY) -m pytest -q -m "unit and not slow" -n $(TEST_WORKERS) --dist loadfile

test-integration: install
	$(PY) -m pytest -q -m "integration and not slow" -n $(TEST_WORKERS) --dist loadfile

# The off-the-shelf baselines (PyOD) of the benchmark suite: the optional `bench` extra.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	touch $@

test-all: $(VENV)/.bench-installed
	$(PY) -m pytest -q

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf .nightowl .pytest_cache

lock: install
	{ echo "# Lock of the tested dependency set (pip freeze of a working CPU venv, torch excluded"; \
	  echo "# so a GPU host can take its CUDA build). Regenerate: make lock"; \
	  $(PY) -m pip freeze | grep -v -iE '^(nightowl|-e |torch==|# Editable)'; } > constraints.txt
