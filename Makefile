# Two commands for a newcomer:  `make train` (set up + default Pong run, Ctrl-C stops cleanly)
#                               `make test`  (set up + the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup train test bench clean

setup: $(STAMP)

# The pinned CPU wheel goes in first, so that resolving the package never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/stm-rl train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
