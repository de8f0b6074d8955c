# Every target builds what it needs from a fresh clone: .venv, then the package.
# PYTHON=pypy3 (or any other interpreter) gets a virtualenv of its own.
PYTHON ?= python3
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/twistd -n mailsvc $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)
	cd examples/chatbot && ../../$(BIN)/python -m twisted.trial test_bot_trial

clean:
	rm -rf .venv .venv-* build *.egg-info twisted/plugins/dropin.cache
