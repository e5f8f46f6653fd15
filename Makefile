# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/cpu_gemma3_270m.yaml
# Extra papermill-style arguments, e.g. ARGS="-p run_name demo -y 'overrides: {train: {max_steps: 3}}'"
ARGS   ?=
KERNEL := kaggle-lib
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint lock clean-venv

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
	$(PY) -m ruff check kaggle_lib scripts tests

# Regenerate the lock from requirements.in in a throwaway venv.
lock:
	rm -rf /tmp/kaggle-lib-lock && $(PYTHON) -m venv /tmp/kaggle-lib-lock
	/tmp/kaggle-lib-lock/bin/pip install --quiet -r requirements.in
	( head -2 requirements.lock; /tmp/kaggle-lib-lock/bin/pip freeze | grep -v '^-e' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
