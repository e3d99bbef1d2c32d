# Two commands do all set-up on a fresh machine with Python 3.12:
#   make demo   the main job on the embedded default (creates/reuses .venv with the pinned stack)
#   make test   the test suite (same venv)
# Everything else here is a convenience around those two.

SHELL := /bin/bash
VENV ?= .venv
# The first interpreter that really is 3.12 (a pyenv shim named python3.12 can exist and still fail).
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo $$p; break; }; done)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The suite runs on two pytest-xdist workers, one test module per worker at a time (module fixtures such as a shared
# training run are built once), one thread each: most of a test's time is single-threaded Python and subprocess
# start-up, so two workers on two cores halve the wall time where one process with two torch threads did not.
# The 25 slowest tests are listed at the end of every run, to keep the CI budget (well under 30 min) in view.
PYTEST_PARALLEL ?= -n 2 --dist loadscope --durations=25
SMOKE_ARGS := +experiment=volta train.train_iters=10 out_dir=runs/smoke

.PHONY: venv test lint format demo smoke lock clean-venv bench

$(VENV)/.installed: requirements/pins.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
	@echo "creating $(VENV) with $(PYTHON) (pinned stack from requirements/pins.txt; first time ~2-5 min)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r requirements/pins.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

demo: venv
	$(VENV)/bin/smartpt demo

# Ten steps of the two-phase blend on the bundled data (~1 min); again: "run complete".
smoke: venv
	$(VENV)/bin/smartpt train $(SMOKE_ARGS)

bench: venv
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

# Re-resolve the lock from requirements/top-level.txt (needs the package index).
lock:
	rm -rf /tmp/smartpt-lock && $(PYTHON) -m venv /tmp/smartpt-lock
	/tmp/smartpt-lock/bin/pip install -r <(grep -v -e '^megatron-core' -e '^megatron-bridge' -e '^nvidia-modelopt' -e '^nemo-run' requirements/top-level.txt)
	/tmp/smartpt-lock/bin/pip install --no-deps megatron-core==0.19.2 megatron-bridge==0.6.2 nvidia-modelopt==0.47.0
	/tmp/smartpt-lock/bin/pip install --no-deps -r requirements/nemo-run.txt
	{ awk '/^#/{print; next} {exit}' requirements/pins.txt; /tmp/smartpt-lock/bin/pip freeze; } > requirements/pins.new && mv requirements/pins.new requirements/pins.txt

clean-venv:
	rm -rf $(VENV)
