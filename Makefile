# Two entry points:  `make demo` (set up, then the whole pipeline on generated data)
#                    `make test` (set up, then the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: setup test demo clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
