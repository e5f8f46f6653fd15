# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/cpu_gemma3_270m.yaml
# Extra papermill-style arguments, e.g. ARGS="-p run_name demo -y 'overrides: {train: {max_steps: 3}}'"
ARGS   ?=
KERNEL := kaggle-lib
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint lock tested-versions bench clean-venv

setup: $(STAMP)

# Re-installs only when the lock or the package metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (kaggle-lib)" >/dev/null
	@touch $(STAMP)
	@echo "environment ready: $(VENV) (kernel '$(KERNEL)')"

run: setup
	PYTHONUNBUFFERED=1 $(PY) -m kaggle_lib run --config $(CONFIG) --kernel $(KERNEL) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check kaggle_lib scripts tests benchmarks

# Regenerate the lock from requirements.in in a throwaway venv, from plain PyPI: --isolated
# ignores this machine's pip config and environment (a local wheel mirror or file index would
# leak `+cpu` builds into the lock). Keeps the lock's header comment; checks the result
# resolves from PyPI alone.
LOCK_VENV := /tmp/kaggle-lib-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --isolated --quiet -r requirements.in
	( grep '^#' requirements.lock; $(LOCK_VENV)/bin/pip freeze --isolated --all \
	    | grep -v -e '^-e' -e '^pip==' | LC_ALL=C sort -f ) > requirements.lock.new
	mv requirements.lock.new requirements.lock
	$(LOCK_VENV)/bin/pip install --isolated --dry-run --ignore-installed --quiet -r requirements.lock
	$(MAKE) tested-versions

# kaggle_lib/compat/tested_versions.json from the lock (the Kaggle bundle carries the package,
# not the lock); tests/unit/test_compat.py fails while the two differ.
tested-versions:
	PYTHONPATH=. $(PY) -c 'from kaggle_lib.compat import write_tested_versions as w; print(w())'

# The only target that installs PyTorch (CPU build, PyTorch's index; where that index cannot be
# reached, pip takes the same version from the machine's configured find-links): transformers is
# the generation peer. Also the environment for the reference-fixture scripts. Runs the whole
# harness (ours vs Tunix's default recipe vs transformers) and writes
# evidence/bench/<UTC time>-<host kind>/bench.{json,md}; BENCH_ARGS=--quick for a short version.
BENCH_ARGS ?=
bench: setup
	$(PY) -m pip install --quiet -r requirements-bench.txt
	PYTHONUNBUFFERED=1 $(PY) benchmarks/harness.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
