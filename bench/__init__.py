"""relay's benchmarks: per-function suites (pytest-benchmark) and the end-to-end load harness."""
