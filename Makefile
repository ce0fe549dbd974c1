# The two commands a newcomer needs, each doing its own set-up on a fresh machine:
#   make demo    virtualenv, dependencies, the Cython build, then simulated calls end to end
#   make test    the same set-up, then the whole test suite (and the benchmarks, correctness only)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml setup.py relay/_fastpath.pyx relay/_fastpath.pxd relay/*.pxi 2>/dev/null | cksum | cut -d' ' -f1)
ARGS   ?=

.PHONY: demo test bench loadtest serve build clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

build: $(STAMP)

demo: $(STAMP)
	$(BIN)/relay demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -c 'import relay.fastpath as f; assert f.IMPLEMENTATION == "cython", "compiled fast path not built"'
	$(BIN)/pytest tests bench --benchmark-disable -q $(ARGS)

# Per-function benchmarks; saved runs live in bench/saved (compare with --benchmark-compare).
bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-storage=bench/saved $(ARGS)

# The end-to-end harness: relay beside the baselines under one load (see bench/README.md).
loadtest: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

serve: $(STAMP)
	$(BIN)/relay serve

clean:
	rm -rf $(VENV) build relay/_fastpath.c relay/*.so relay/*.html *.egg-info
