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

# Ctrl-C: twistd stops gracefully, then ends by the signal it got, which make
# would report as "*** [run] Interrupt". The recipe's shell waits for it (a
# trap, not an ignore, which twistd would inherit and so miss Ctrl-C) and turns
# that status, and SIGTERM's, into success; any other failure stays loud.
run: $(VENV)/.installed
	@echo '$(BIN)/twistd -n mailsvc $(subst ','\'',$(ARGS))'
	@trap : INT; $(BIN)/twistd -n mailsvc $(ARGS); status=$$?; \
	case $$status in 130|143) exit 0 ;; *) exit $$status ;; esac

# Two nodes, Redis and haproxy in a temporary directory (examples/cluster/run).
.PHONY: run-cluster
run-cluster: $(VENV)/.installed
	@trap : INT; TWISTD=$(BIN)/twistd examples/cluster/run; status=$$?; \
	case $$status in 130|143) exit 0 ;; *) exit $$status ;; esac

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)
	cd examples/chatbot && ../../$(BIN)/python -m twisted.trial test_bot_trial

clean:
	rm -rf .venv .venv-* build *.egg-info twisted/plugins/dropin.cache

# make bench [PYTHON=pypy3] [BENCH_QUICK=1]: the figures of docs/performance.md.
# twistd runs from $(VENV); the harness, plot and py-spy from .venv (CPython,
# with the bench extra); bench/loadgen.c and bench/sendcost.c are compiled with gcc.
.PHONY: bench
bench:
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	    echo "bench: $(PYTHON) is not installed: skipping the $(PYTHON) bench"; exit 0; fi; \
	command -v gcc >/dev/null 2>&1 || { echo "bench: gcc is needed to build bench/loadgen.c"; exit 1; }; \
	set -e; \
	$(MAKE) --no-print-directory $(VENV)/.installed; \
	$(MAKE) --no-print-directory .venv/.installed PYTHON=python3 VENV=.venv; \
	if [ ! .venv/.installed-bench -nt setup.cfg ]; then \
	    .venv/bin/python -m pip install --quiet -e '.[bench]' && touch .venv/.installed-bench; fi; \
	mkdir -p bench/build; \
	for c in loadgen sendcost; do \
	    if [ ! bench/build/$$c -nt bench/$$c.c ]; then \
	        gcc -O2 -Wall -o bench/build/$$c bench/$$c.c; fi; done; \
	.venv/bin/python bench/run.py --server-python $(BIN)/python \
	    $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

# make bench-mailclients [PYTHON=pypy3] [BENCH_QUICK=1]: SMTP and POP3 at 50
# connections, POP3 beside Dovecot (dovecot-pop3d); bench/mailclients.py.
.PHONY: bench-mailclients
bench-mailclients:
	@command -v dovecot >/dev/null 2>&1 || { echo "bench: apt-get install dovecot-pop3d"; exit 1; }; \
	set -e; \
	$(MAKE) --no-print-directory $(VENV)/.installed; \
	$(MAKE) --no-print-directory .venv/.installed PYTHON=python3 VENV=.venv; \
	.venv/bin/python bench/mailclients.py --server-python $(BIN)/python \
	    $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

# make bench-cluster [BENCH_QUICK=1]: the chat across nodes (bench/cluster.py):
# its own redis-server, one and two nodes; figures in docs/performance.md.
.PHONY: bench-cluster
bench-cluster: $(VENV)/.installed
	@command -v redis-server >/dev/null || { echo "bench-cluster: redis-server is needed"; exit 1; }
	@mkdir -p bench/build
	@if [ ! bench/build/loadgen -nt bench/loadgen.c ]; then gcc -O2 -Wall -o bench/build/loadgen bench/loadgen.c; fi
	$(BIN)/python bench/cluster.py --server-python $(BIN)/python \
	    $(if $(filter-out 0,$(BENCH_QUICK)),--quick)
