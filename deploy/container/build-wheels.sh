#!/bin/sh
# The image's build stage (Dockerfile), and what tests/test_deploy.py runs in a fresh virtualenv:
# relay's wheel, its compiled fast path built in, and a wheel of everything it runs with, into
# OUT, so the runtime stage installs with no compiler and no network.
set -eu
out="${1:?usage: build-wheels.sh OUT}"
src="$(cd "$(dirname "$0")/../.." && pwd)"
python -m pip wheel --wheel-dir "$out" "$src[otel]"
