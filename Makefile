# make run  : install into .venv and run the main job (the CPU cold-start experiment)
# make resume: continue an interrupted `make run` from its checkpoints (same results as uninterrupted)
# make test : install into .venv, check the import layers (lint-imports), run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev,lora,trl,gym,gguf

.PHONY: install run resume test test-verl lint clean

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

resume: install
	$(VENV)/bin/tsallis-rl train --resume

test: install
	$(VENV)/bin/lint-imports  # the layers of ARCHITECTURE.md (contracts in pyproject.toml)
	$(PY) -m pytest
	$(MAKE) test-verl

# verl 0.9 pins transformers<5.11, so its tests run in a second venv (CPU only, about 3.5 min to build)
VERL_VENV ?= .venv-verl
$(VERL_VENV)/.installed: pyproject.toml
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VERL_VENV)/bin/python -m pip install -q -e ".[dev,verl]"
	touch $@

test-verl: $(VERL_VENV)/.installed
	OMP_NUM_THREADS=1 $(VERL_VENV)/bin/python -m pytest tests/test_integrations_verl.py tests/test_export_verl.py \
		tests/test_verl_teacher_forced.py tests/test_verl_trainer.py tests/test_verl_actor.py

lint: install
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) $(VERL_VENV) build dist src/*.egg-info
