# The two commands a newcomer needs, each doing its own set-up on a fresh machine:
#   make demo    virtualenv, dependencies, the Cython build, then simulated calls end to end
#   make test    the same set-up, then make lint, then the whole test suite (and the benchmarks,
#                correctness only); the tests run even when lint fails, and either failing fails it
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml setup.py relay/_fastpath.pyx relay/_fastpath.pxd relay/*.pxi 2>/dev/null | cksum | cut -d' ' -f1)
ARGS   ?=
# Lint, format and types (configured in pyproject.toml): every check runs, any failure fails it.
# stubtest holds relay/_fastpath.pyi to the compiled module, so it needs the build.
LINT_CHECKS := "ruff check relay tests bench" "ruff format --check --output-format concise relay tests bench" \
               "mypy" "python -m mypy.stubtest relay._fastpath --allowlist tests/stubtest_allowlist.txt"
LINT := status=0; for check in $(LINT_CHECKS); do echo "$(BIN)/$$check"; $(BIN)/$$check || status=1; done; \
        [ $$status -eq 0 ]

.PHONY: demo test lint bench loadtest serve build clean

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
	@lint=0; ( $(LINT) ) || lint=1; \
	echo '$(BIN)/pytest tests bench --benchmark-disable -q -n 3 $(ARGS)'; \
	$(BIN)/pytest tests bench --benchmark-disable -q -n 3 $(ARGS) || exit $$?; \
	if [ $$lint -ne 0 ]; then echo "make test: the tests passed, make lint did not (see above)" >&2; exit 1; fi

lint: $(STAMP)
	@$(LINT)

# Per-function benchmarks; saved runs live in bench/saved (compare with --benchmark-compare).
bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-storage=bench/saved $(ARGS)

# The end-to-end harness: relay beside the baselines under one load (see bench/README.md).
loadtest: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

serve: $(STAMP)
	$(BIN)/relay serve

clean:
	rm -rf $(VENV) build relay/_fastpath.c relay/*.so relay/*.html *.egg-info .mypy_cache .ruff_cache
