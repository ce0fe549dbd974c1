"""Shared fixtures: both fast-path implementations, and the messages of PROTOCOLS §1.3."""

from __future__ import annotations

import collections
import importlib
import os

import pytest

IMPLEMENTATIONS = ["relay._fastpath_py", "relay._fastpath"]

# CI must not pass when the Postgres tests did not run: count those that passed and, when
# RELAY_POSTGRES_REPORT names a file, write the count there for .ci/run to check.
_passed: collections.Counter[str] = collections.Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _passed["postgres"] += 1


# Every log record of the whole run, at DEBUG, goes to one file per test process, so a test can
# prove that no secret reached a log (tests/test_zz_secrets.py greps them; with several workers,
# pytest-xdist's, the run's end greps every worker's file again, once all have finished). The
# run's id is the first process's, which its workers inherit.
RUN_ID = os.environ.setdefault("RELAY_TEST_RUN_ID", str(os.getpid()))
RUN_LOG_DIR = os.environ.get("PYTEST_RUN_LOG_DIR") or __import__("tempfile").gettempdir()
RUN_LOG = os.path.join(RUN_LOG_DIR, f"relay-test-run-{RUN_ID}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log")
RUN_LOG_JSON = RUN_LOG.removesuffix(".log") + ".jsonl"  # the same records, as RELAY_LOG_FORMAT=json writes them


# The secret values the tests hand the relay (keys, tokens, passwords); none may be logged.
SECRETS = (
    "sim-auth-token",
    "sk-sim",
    "sim-key-not-secret",
    "sk-test-secret-value",
    "twilio-test-secret-token",
    "tok-secret-123",
    "s3cr3t-xyz",
    "s3cret-",
    "hunter2",
    "bench-auth-token",
    "sk-bench-not-a-secret",
    "acme-subaccount-token",
    "acct-token-",  # the simulated Twilio accounts' tokens (tests/test_outbound_*), which sign and authenticate
)


def run_logs() -> list[str]:
    """Every log file of this run (each worker's), text and JSON."""
    import glob

    return sorted(glob.glob(os.path.join(RUN_LOG_DIR, f"relay-test-run-{RUN_ID}-*.log*")))


def leaked_secrets(paths: list[str]) -> dict[str, list[str]]:
    """The secrets each log file holds (none, it is hoped)."""
    found = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        leaked = [secret for secret in SECRETS if secret in text]
        if leaked:
            found[path] = leaked
    return found


def pytest_configure(config: pytest.Config) -> None:
    import logging

    handler = logging.FileHandler(RUN_LOG, mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from relay.logs import JsonFormatter

    as_json = logging.FileHandler(RUN_LOG_JSON, mode="w", encoding="utf-8")
    as_json.setLevel(logging.DEBUG)
    as_json.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.addHandler(as_json)
    root.setLevel(logging.DEBUG)
    # websockets logs every frame at DEBUG (the simulators use it): held at INFO as relay does.
    for noisy in ("websockets", "asyncio", "hypothesis", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # a worker: its reports reach the first process, which counts and checks them all
    path = os.environ.get("RELAY_POSTGRES_REPORT")
    if path:
        with open(path, "w") as f:
            f.write(f"{_passed['postgres']}\n")
    if session.config.getoption("numprocesses", None):
        # Workers ran in parallel: some logged after tests/test_zz_secrets.py ran. Every file again.
        leaked = leaked_secrets(run_logs())
        if leaked:
            session.config.get_terminal_writer().line(f"secrets in the logs of the run: {leaked}", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=IMPLEMENTATIONS, ids=["python", "cython"])
def fp(request: pytest.FixtureRequest):
    """Each fast-path implementation in turn; the compiled one must be built."""
    return importlib.import_module(request.param)


# The examples of Twilio's Media Streams message reference (PROTOCOLS §1.3), verbatim shapes.
CONNECTED = b'{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    b'{"event":"start","sequenceNumber":"1","start":{"accountSid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","callSid":"CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    b'"customParameters":{"FirstName":"Jane"}},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
MEDIA = (
    b'{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
    b'"payload":"no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhQMCAYIDBEaKdCdkYuIh4mNlK0t"},'
    b'"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
DTMF = (
    b'{"event":"dtmf","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","sequenceNumber":"5",'
    b'"dtmf":{"track":"inbound_track","digit":"1"}}'
)
MARK = (
    b'{"event":"mark","sequenceNumber":"4","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","mark":{"name":"my label"}}'
)
STOP = (
    b'{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"callSid":"CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
