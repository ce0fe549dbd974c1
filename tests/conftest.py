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


# Every log record of the whole run, at DEBUG, goes to one file, so a test can prove that no
# secret reached a log (tests/test_zz_secrets.py runs last and greps it).
RUN_LOG = os.path.join(
    os.environ.get("PYTEST_RUN_LOG_DIR") or __import__("tempfile").gettempdir(), f"relay-test-run-{os.getpid()}.log"
)
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
    path = os.environ.get("RELAY_POSTGRES_REPORT")
    if path:
        with open(path, "w") as f:
            f.write(f"{_passed['postgres']}\n")


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
