# Two commands for a fresh machine: `make demo` (the paper's comparison on the tiny world)
# and `make test` (ruff, then all tests; `make test-fast` leaves out the slow ones). Both create .venv from
# requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: demo test test-fast lint tiny-world

$(VENV)/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/installed
	$(OFFLINE) $(PY) demo.py

# lint, then every test
test: lint
	$(OFFLINE) $(PY) -m pytest -q

lint: $(VENV)/installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# the fast loop while changing code: everything but the tests marked slow (pytest.ini)
test-fast: $(VENV)/installed
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

tiny-world: $(VENV)/installed
	$(OFFLINE) $(PY) -m exp_datasets.tiny_world
