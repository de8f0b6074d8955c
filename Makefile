# Every target builds what it needs from a fresh clone: .venv, then the package.
PYTHON ?= python3
VENV ?= .venv
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
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
