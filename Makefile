# The two commands a newcomer needs, each doing its own set-up on a fresh machine:
#   make demo    virtualenv, dependencies, the Cython build, then simulated calls end to end
#   make test    the same set-up, then the whole test suite (and the benchmarks, correctness only)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml setup.py relay/_fastpath.pyx relay/_fastpath.pxd 2>/dev/null | cksum | cut -d' ' -f1)
ARGS   ?=

.PHONY: demo test bench serve build clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

build: $(STAMP)

demo: $(STAMP)
	$(BIN)/relay demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -c 'import relay.fastpath as f; assert f.IMPLEMENTATION == "cython", "compiled fast path not built"'
	$(BIN)/pytest tests bench --benchmark-disable -q $(ARGS)

bench: $(STAMP)
	$(BIN)/pytest bench $(ARGS)

serve: $(STAMP)
	$(BIN)/relay serve

clean:
	rm -rf $(VENV) build relay/_fastpath.c relay/*.so relay/*.html *.egg-info
