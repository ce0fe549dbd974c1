"""The model outlives January: the default is the current line, the URL's model comes from the
setting (or the agent), and ``relay serve`` warns at start about any model on OpenAI's shutdown list
(BACKENDS §5.1)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay import models
from relay.config import Settings
from relay.errors import ConfigError
from tests.pgutil import AGENT, create_database, drop_database, dsn

ROOT = Path(__file__).resolve().parent.parent
SERVE_ENV = {
    "RELAY_PUBLIC_URL": "http://127.0.0.1:8080",
    "OPENAI_API_KEY": "sk-test-secret-value",
    "TWILIO_AUTH_TOKEN": "twilio-test-secret-token",
    "RELAY_HOST": "127.0.0.1",
    "RELAY_PORT": "0",
}


def test_the_defaults_are_the_current_line_and_on_no_list() -> None:
    settings = Settings()
    assert (settings.realtime_model, settings.transcription_model) == ("gpt-realtime-2.1", "gpt-realtime-whisper")
    assert models.shutdown_warnings([(settings.realtime_model, "x"), (settings.transcription_model, "y")]) == []
    assert settings.realtime_url_for("gpt-realtime-2.1") == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    assert (
        Settings(realtime_url="ws://127.0.0.1:9/v1/realtime?x=1").realtime_url_for("m")
        == "ws://127.0.0.1:9/v1/realtime?x=1&model=m"
    )


@pytest.mark.parametrize(
    "model, date, announced",
    [
        ("gpt-realtime", "2027-01-20", True),
        ("gpt-realtime-mini-2025-12-15", "2027-01-20", True),
        ("gpt-4o-realtime-preview-2024-12-17", "2027-01-20", False),
        ("gpt-4o-mini-transcribe", "2027-02-26", False),
        ("whisper-1", "2027-02-26", False),
    ],
)
def test_each_model_on_the_list_is_warned_about_with_its_date(model: str, date: str, announced: bool) -> None:
    [line] = models.shutdown_warnings([(model, "agent acme/default")])
    assert model in line and date in line and "agent acme/default" in line
    assert ("announced" if announced else "reported") in line
    assert models.shutdown_warnings([("gpt-realtime-2.1-mini", "x")]) == []


def test_the_model_is_a_setting_not_part_of_the_url() -> None:
    env = {**SERVE_ENV, "RELAY_REALTIME_URL": "wss://api.openai.com/v1/realtime?model=gpt-realtime"}
    with pytest.raises(ConfigError, match="RELAY_REALTIME_MODEL"):
        Settings.from_env(env)
    settings = Settings.from_env({**SERVE_ENV, "RELAY_REALTIME_MODEL": "gpt-realtime-2.1-mini"})
    assert settings.agent.model == "gpt-realtime-2.1-mini"
    with pytest.raises(ConfigError, match="RELAY_REALTIME_MODEL"):
        Settings.from_env({**SERVE_ENV, "RELAY_REALTIME_MODEL": "gpt realtime"})


def serve_log(tmp_path: Path, **env: str) -> str:
    """Start ``relay serve`` with ``env``, wait until it listens, stop it; its log."""
    full = {
        **os.environ,
        **SERVE_ENV,
        "RELAY_SQLITE_PATH": str(tmp_path / "relay.sqlite3"),
        "RELAY_SPOOL_PATH": str(tmp_path / "relay.spool"),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"], cwd=ROOT, env=full, stderr=subprocess.PIPE, text=True
    )
    lines = []
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if " listening on " in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest or "")
    text = "".join(lines)
    assert " listening on " in text, text
    return text


def test_serve_warns_about_a_model_being_shut_down(tmp_path: Path) -> None:
    text = serve_log(tmp_path, RELAY_REALTIME_MODEL="gpt-realtime", RELAY_TRANSCRIPTION_MODEL="gpt-4o-mini-transcribe")
    assert "model 'gpt-realtime' (RELAY_REALTIME_MODEL) shuts down on 2027-01-20" in text
    assert "model 'gpt-4o-mini-transcribe' (RELAY_TRANSCRIPTION_MODEL) shuts down on 2027-02-26" in text


def test_serve_with_the_defaults_warns_about_nothing(tmp_path: Path) -> None:
    text = serve_log(tmp_path)
    assert "shuts down" not in text and "WARNING" not in text, text


@pytest.mark.postgres
def test_serve_warns_about_each_agent_on_the_list(tmp_path: Path) -> None:
    name = asyncio.run(create_database())

    async def agents() -> None:
        from relay.pg import Directory

        async with Directory.connect(dsn(name)) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.set_agent("acme", "default", model="gpt-realtime-mini")

    try:
        asyncio.run(agents())
        text = serve_log(tmp_path, DATABASE_URL=dsn(name))
    finally:
        asyncio.run(drop_database(name))
    assert "model 'gpt-realtime-mini' (agent acme/default) shuts down on 2027-01-20" in text
    assert "RELAY_REALTIME_MODEL" not in text  # the default itself is fine
