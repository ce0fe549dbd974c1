"""Settings from the environment: defaults, every problem reported at once, secrets kept out of repr."""

from __future__ import annotations

import pytest

from relay.config import DEFAULT_REALTIME_URL, Settings
from relay.errors import ConfigError

GOOD = {
    "RELAY_PUBLIC_URL": "https://relay.example.com",
    "OPENAI_API_KEY": "sk-test-secret-value",
    "TWILIO_AUTH_TOKEN": "twilio-test-secret-token",
}


def test_defaults_with_the_three_required_values() -> None:
    s = Settings.from_env(GOOD)
    assert s.realtime_url == DEFAULT_REALTIME_URL
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.stream_url == "wss://relay.example.com/twilio/voice"
    assert s.database_url == ""


def test_loopback_may_use_plain_http() -> None:
    s = Settings.from_env({**GOOD, "RELAY_PUBLIC_URL": "http://127.0.0.1:8080"})
    assert s.stream_url == "ws://127.0.0.1:8080/twilio/voice"


def test_every_problem_is_listed_in_one_error() -> None:
    env = {
        "RELAY_PORT": "eighty",
        "RELAY_PUBLIC_URL": "http://relay.example.com",
        "RELAY_REALTIME_URL": "https://api.openai.com/v1/realtime",
        "RELAY_AGENT_VOICE": "nova",
        "RELAY_AGENT_REASONING_EFFORT": "none",
        "RELAY_VAD_THRESHOLD": "2",
        "DATABASE_URL": "mysql://x",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    text = str(info.value)
    assert len(info.value.problems) == 9, info.value.problems
    for needle in (
        "RELAY_PORT",
        "RELAY_PUBLIC_URL",
        "RELAY_REALTIME_URL",
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "nova",
        "RELAY_AGENT_REASONING_EFFORT='none'",
        "RELAY_VAD_THRESHOLD",
        "DATABASE_URL",
    ):
        assert needle in text


def test_missing_public_url_is_explained() -> None:
    with pytest.raises(ConfigError, match="RELAY_PUBLIC_URL is required"):
        Settings.from_env({"OPENAI_API_KEY": "k"})


def test_secrets_stay_out_of_repr_and_errors() -> None:
    s = Settings.from_env({**GOOD, "DATABASE_URL": "postgresql://u:hunter2@db/relay"})
    assert "sk-test-secret-value" not in repr(s)
    assert "hunter2" not in repr(s)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**GOOD, "DATABASE_URL": "mysql://u:hunter2@db/relay", "RELAY_PORT": "x"})
    assert "hunter2" not in str(info.value)


def test_conversation_settings_shape_every_call() -> None:
    s = Settings.from_env(
        {
            **GOOD,
            "RELAY_PLAYOUT_LEAD_MS": "160",
            "RELAY_MARK_INTERVAL_MS": "40",
            "RELAY_GREETING": " Hello! ",
            "RELAY_RECONNECT_MESSAGE": "One moment.",
            "RELAY_UPSTREAM_MAX_SESSION_S": "1800",
            "RELAY_DTMF_TIMEOUT_MS": "900",
            "RELAY_HANGUP_GRACE_MS": "500",
            "RELAY_END_CALL_TOOL": "0",
        }
    )
    options = s.call_options
    assert (options.lead_ms, options.mark_frames) == (160, 2)
    assert (options.dtmf_timeout_ms, options.hangup_grace_ms) == (900, 500)
    assert options.reconnect_message == "One moment."
    assert (s.greeting, s.upstream_max_session_s, s.end_call_tool) == ("Hello!", 1800, False)
    defaults = Settings.from_env(GOOD).call_options
    assert (defaults.lead_ms, defaults.mark_frames, defaults.reconnect_message) == (100, 5, "")


def test_conversation_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(
            {**GOOD, "RELAY_PLAYOUT_LEAD_MS": "10", "RELAY_UPSTREAM_MAX_SESSION_S": "5", "RELAY_END_CALL_TOOL": "maybe"}
        )
    text = str(err.value)
    assert "RELAY_PLAYOUT_LEAD_MS" in text and "RELAY_UPSTREAM_MAX_SESSION_S" in text and "RELAY_END_CALL_TOOL" in text


def test_the_pacer_interval_is_whole_frames_and_leaves_the_lead_a_frame_of_room() -> None:
    s = Settings.from_env({**GOOD, "RELAY_PACER_INTERVAL_MS": "40"})
    assert s.call_options.pacer_interval_ms == 40 and s.call_options.lead_ms == 100
    assert Settings.from_env({**GOOD, "RELAY_PLAYOUT_LEAD_MS": "20"}).call_options.pacer_interval_ms == 20
    for bad in ({"RELAY_PACER_INTERVAL_MS": "30"}, {"RELAY_PACER_INTERVAL_MS": "100"}):
        with pytest.raises(ConfigError, match="RELAY_PACER_INTERVAL_MS"):
            Settings.from_env({**GOOD, **bad})
