"""JSON logs (RELAY_LOG_FORMAT=json): one object per line, tagged with the call they belong to."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import orjson
import pytest

from relay import logs
from relay.config import Settings
from relay.errors import ConfigError
from relay.sim.caller import TwilioCaller
from tests.conftest import SECRETS
from tests.test_call import SHORT, stack


async def test_a_whole_call_logs_json_lines_that_carry_its_call_sid_and_no_secret(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    relay_log = logging.getLogger("relay")
    relay_log.addHandler(handler)
    level = relay_log.level
    relay_log.setLevel(logging.DEBUG)
    try:
        async with stack(tmp_path) as s:
            result = await TwilioCaller(s.webhook, dataclasses.replace(SHORT, utterances=("Hello there.",))).run()
            for task in list(s.relay.sessions):
                await task
    finally:
        relay_log.removeHandler(handler)
        relay_log.setLevel(level)
    text = out.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines)
    # Every line the call's session wrote names the call (and its stream and tenant).
    session_lines = [line for line in lines if line["logger"] == "relay.session"]
    assert session_lines, "the call logged nothing: the check would prove nothing"
    assert all(line.get("call_sid") == result.call_sid for line in session_lines)
    assert all(line.get("tenant") == "default" and line.get("stream_sid") for line in session_lines)
    # The webhook's lines name the call too.
    webhook = [line for line in lines if line["msg"].startswith("webhook: call")]
    assert webhook and all(line.get("call_sid") == result.call_sid for line in webhook)
    assert [secret for secret in SECRETS if secret in text] == []


def test_the_log_format_is_json_or_text() -> None:
    good = {"OPENAI_API_KEY": "k", "RELAY_PUBLIC_URL": "https://relay.example.com", "TWILIO_AUTH_TOKEN": "t"}
    assert Settings.from_env({**good, "RELAY_LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(ConfigError, match="RELAY_LOG_FORMAT"):
        Settings.from_env({**good, "RELAY_LOG_FORMAT": "xml"})


def test_a_record_outside_any_call_has_no_call_fields() -> None:
    record = logging.LogRecord("relay.server", logging.INFO, __file__, 1, "listening on %s", ("x",), None)
    line = orjson.loads(logs.JsonFormatter().format(record))
    assert line["msg"] == "listening on x" and "call_sid" not in line
