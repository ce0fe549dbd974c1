#!/bin/sh
# The image's runtime stage (Dockerfile), and what tests/test_deploy.py runs in a fresh
# virtualenv: relay from the wheels build-wheels.sh made, offline, then proof that the compiled
# fast path is the one that loads.
set -eu
wheels="${1:?usage: install.sh WHEELS}"
python -m pip install --no-cache-dir --no-index --find-links "$wheels" "relay[otel]"
python -c 'import relay.fastpath as f; assert f.IMPLEMENTATION == "cython", f.IMPLEMENTATION'
