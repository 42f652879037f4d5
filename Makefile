# make run  : install into .venv and run the main job (the CPU cold-start experiment)
# make test : install into .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev,lora,trl,gym

.PHONY: install run test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a plain `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tsallis-rl train

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) build dist src/*.egg-info
