"""The simulated OpenAI GPT-Live server: the sans-I/O session on a fake clock, the shell over loopback."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.sim import audio
from relay.sim.live import (
    DEFAULT_DELEGATION_MODEL,
    LIVE_PATH,
    LiveAgent,
    LiveConfig,
    LiveSession,
    LiveSessionLog,
    _alaw_encode,
)

WALL = 1_800_000_000.0
AUTH = {"Authorization": "Bearer sk-test"}
PCMU = {"type": "audio/pcmu", "rate": 8000}
PCMA = {"type": "audio/pcma", "rate": 8000}
SESSION: dict[str, Any] = {
    "model": "gpt-live-1",
    "instructions": "You are the front desk.",
    "audio": {"format": PCMU, "output": {"voice": "cedar"}},
    "store": False,
}
END_CALL = {
    "type": "function",
    "name": "end_call",
    "description": "Hang up after saying goodbye.",
    "parameters": {"type": "object", "properties": {}},
}
GET_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"


def with_tools(*tools: dict[str, Any]) -> dict[str, Any]:
    session = copy.deepcopy(SESSION)
    session["delegation"] = {
        "type": "responses",
        "responses": {"model": "gpt-5-mini", "tools": list(tools), "tool_choice": "auto"},
    }
    return session


class Live:
    """One ``LiveSession`` on a fake clock: every event it sends is kept with the time it was sent."""

    def __init__(self, config: LiveConfig | None = None, session: dict[str, Any] | None = SESSION) -> None:
        self.log = LiveSessionLog()
        self.config = config or LiveConfig()
        self.live = LiveSession(self.config, self.log, wall_clock=lambda: WALL)
        self.now = 1000.0
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.live.connect(self.now)
        if session is not None:
            self.send({"type": "session.start", "event_id": "evt_start", "session": session})

    @property
    def t0(self) -> float:
        assert self.log.started_at is not None
        return self.log.started_at

    def ms(self, t: float) -> float:
        """Loop time ``t`` on the session timeline."""
        return round((t - self.t0) * 1000, 3)

    def send(self, event: dict[str, Any] | str) -> list[dict[str, Any]]:
        """Send one client event; return what the session sent in reply at once."""
        before = len(self.events)
        self.live.receive(event if isinstance(event, str) else json.dumps(event), self.now)
        self._collect()
        return [e for _, e in self.events[before:] if e["type"] != "session.output_audio.delta"]

    def _collect(self) -> None:
        self.events += [(self.now, e) for e in self.live.take_events()]

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while (deadline := self.live.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.live.advance(self.now)
            self._collect()
        self.now = end
        self.live.advance(end)
        self._collect()

    def say(self, ulaw: bytes) -> None:
        """The caller's audio, one 20 ms append at a time, in real time (as relay forwards Twilio's)."""
        for i in range(0, len(ulaw), 160):
            self.send({"type": "session.input_audio.append", "audio": base64.b64encode(ulaw[i : i + 160]).decode()})
            self.run(0.02)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def timed(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    def output(self) -> bytes:
        """The whole output stream: byte k is at session ms k/8."""
        return b"".join(base64.b64decode(e["delta"]) for e in self.of("session.output_audio.delta"))

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.of("error")]

    def inner(self) -> list[dict[str, Any]]:
        """The Responses events wrapped in response.event, in order."""
        return [e["event"] for e in self.of("response.event")]


def transcript(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events)


# ---- session.start -----------------------------------------------------------------------------
def test_session_start_must_come_first() -> None:
    live = Live(session=None)
    replies = live.send({"type": "session.input_audio.append", "event_id": "a1", "audio": "////"})
    assert replies[0]["type"] == "error"
    assert replies[0]["client_event_id"] == "a1"
    assert replies[0]["error"]["code"] == "session_not_started"
    assert replies[0]["error"]["client_event_id"] == "a1"
    live.send({"type": "session.commentary.append", "content": "Say hello: Hi", "delegation_id": None})
    live.send({"type": "session.update", "session": {"model": "gpt-live-1"}})  # the alpha protocol's opener
    assert [e["code"] for e in live.errors()] == ["session_not_started"] * 3
    assert live.log.appends == live.log.appends_before_started == 1
    assert len(live.log.violations) == 3
    assert live.send({"type": "session.start", "session": SESSION})[0]["type"] == "session.started"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"turn_detection": {"type": "server_vad"}}, "session.turn_detection"),
        ({"output_modalities": ["audio"]}, "session.output_modalities"),
        ({"voice": "marin"}, "session.voice"),
        ({"audio": {"input": {"format": PCMU}}}, "session.audio.input"),
        ({"audio": {"format": {**PCMU, "channels": 1}}}, "session.audio.format.channels"),
        ({"audio": {"output": {"voice": "marin", "speed": 1.0}}}, "session.audio.output.speed"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi", "x": 1}]}]},
            "session.input[0].content[0].x",
        ),
        ({"delegation": {"type": "client", "timeout_ms": 5}}, "session.delegation.timeout_ms"),
        (
            {"delegation": {"type": "responses", "responses": {"model": "m", "temperature": 1}}},
            "session.delegation.responses.temperature",
        ),
        (
            {"delegation": {"type": "responses", "responses": {"model": "m", "tools": [{**END_CALL, "x": 1}]}}},
            "session.delegation.responses.tools[0].x",
        ),
    ],
)
def test_session_start_refuses_unknown_fields(patch: dict[str, Any], param: str) -> None:
    live = Live(session={**SESSION, **patch})
    (error,) = live.errors()
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == ("unknown_parameter", param)
    assert error["client_event_id"] == "evt_start"
    assert live.log.violations and live.log.started_at is None
    assert not live.of("session.started") and not live.of("session.output_audio.delta")


@pytest.mark.parametrize(
    ("patch", "code", "param"),
    [
        ({"model": None}, "missing_required_parameter", "session.model"),
        ({"model": "gpt-realtime"}, "invalid_value", "session.model"),
        ({"model": 1}, "invalid_type", "session.model"),
        ({"audio": {"format": {"type": "audio/pcm", "rate": 8000}}}, "invalid_value", "session.audio.format.rate"),
        ({"audio": {"format": {"type": "audio/pcmu", "rate": 16000}}}, "invalid_value", "session.audio.format.rate"),
        ({"audio": {"format": {"type": "audio/pcmu"}}}, "missing_required_parameter", "session.audio.format.rate"),
        ({"audio": {"format": {"type": "g711_ulaw"}}}, "invalid_value", "session.audio.format.type"),
        ({"audio": {"output": {"voice": "nova"}}}, "invalid_value", "session.audio.output.voice"),
        ({"instructions": ["a"]}, "invalid_type", "session.instructions"),
        ({"store": "no"}, "invalid_type", "session.store"),
        ({"input": [{"role": "system", "content": [{"text": "x"}]}]}, "invalid_value", "session.input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]},
            "invalid_value",
            "session.input[0].content",
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "a"}]}]},
            "invalid_value",
            "session.input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "a"}]}]},
            "invalid_value",
            "session.input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"text": "a"}]}] * 129},
            "array_above_max_length",
            "session.input",
        ),
        (
            {"delegation": {"type": "responses", "responses": {"tools": [END_CALL]}}},
            "missing_required_parameter",
            "session.delegation.responses.model",
        ),
        ({"delegation": {"type": "server"}}, "invalid_value", "session.delegation.type"),
        (
            {"delegation": {"type": "responses", "responses": {"model": "m", "tools": [{"type": "function"}]}}},
            "missing_required_parameter",
            "session.delegation.responses.tools[0].name",
        ),
        (
            {"delegation": {"type": "responses", "responses": {"model": "m", "reasoning": {"effort": "max"}}}},
            "invalid_value",
            "session.delegation.responses.reasoning.effort",
        ),
    ],
)
def test_session_start_refuses_invalid_values(patch: dict[str, Any], code: str, param: str) -> None:
    session = {k: v for k, v in {**SESSION, **patch}.items() if v is not None}
    live = Live(session=session)
    (error,) = live.errors()
    assert (error["code"], error["param"]) == (code, param), error["message"]
    assert live.log.violations and not live.of("session.started")


def test_corrected_start_is_accepted_and_a_second_start_refused() -> None:
    live = Live(session={**SESSION, "turn_detection": None, "output_modalities": ["audio"]})
    assert live.errors()[0]["param"] == "session.turn_detection"  # unknown even when null
    started = live.send({"type": "session.start", "event_id": "evt_again", "session": SESSION})
    assert [e["type"] for e in started] == ["session.started"]
    assert started[0]["client_event_id"] == "evt_again"
    again = live.send({"type": "session.start", "session": SESSION})
    assert again[0]["error"]["code"] == "session_already_started"
    assert len(live.of("session.started")) == 1
    assert len(live.log.violations) == 2


def test_event_level_unknown_fields_are_errors() -> None:
    live = Live(session=None)
    live.send({"type": "session.start", "session": SESSION, "model": "gpt-live-1"})
    assert live.errors()[-1]["param"] == "model" and not live.of("session.started")
    live.send({"type": "session.start", "session": SESSION})
    live.send({"type": "session.commentary.append", "content": "hi", "delegation_id": None, "role": "user"})
    live.send({"type": "session.input_audio.append", "audio": "////", "format": "pcmu"})
    live.send({"type": "input_audio_buffer.append", "audio": "////"})  # Realtime's name
    assert [e["param"] for e in live.errors()] == ["model", "role", "format", "type"]
    assert len(live.log.violations) == 4


def test_session_started_is_the_resolved_config() -> None:
    seeded = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "earlier"}]}]
    session = {**with_tools(END_CALL), "input": seeded, "safety_identifier": "tenant:caller"}
    live = Live(session=session)
    (started,) = live.of("session.started")
    resolved = started["session"]
    assert started["client_event_id"] == "evt_start" and started["event_id"].startswith("event_")
    assert resolved["id"].startswith("sess_") and resolved["id"] == live.log.session_id
    assert resolved["expires_at"] == int(WALL + 3600)
    assert resolved["model"] == "gpt-live-1" and resolved["status"] == "active"
    assert resolved["audio"] == {"format": PCMU, "output": {"voice": "cedar"}}
    assert resolved["instructions"] == "You are the front desk."
    assert resolved["store"] is False and resolved["safety_identifier"] == "tenant:caller"
    assert resolved["input"] == seeded
    assert resolved["delegation"]["type"] == "responses"
    assert resolved["delegation"]["responses"]["tools"] == [END_CALL]
    assert resolved["delegation"]["acknowledgement_delay_ms"] == 0
    assert live.log.session_config == session and live.log.started_at == live.now


def test_server_defaults_fill_what_start_omits() -> None:
    live = Live(session={"model": "gpt-live-1.1"})
    resolved = live.of("session.started")[0]["session"]
    assert resolved["audio"] == {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}}
    assert resolved["delegation"] is None and resolved["store"] is False
    live.run(0.1)
    assert {base64.b64decode(e["delta"]) for e in live.of("session.output_audio.delta")} == {bytes(1920)}


def test_delegation_model_may_be_optional() -> None:
    session = with_tools(END_CALL)
    del session["delegation"]["responses"]["model"]
    live = Live(LiveConfig(delegation_model_required=False), session=session)
    resolved = live.of("session.started")[0]["session"]
    assert resolved["delegation"]["responses"]["model"] == DEFAULT_DELEGATION_MODEL
    assert not live.log.violations


def test_session_error_answers_start_and_closes() -> None:
    live = Live(LiveConfig(session_error=("insufficient_quota", "You exceeded your current quota.")))
    (error,) = live.errors()
    assert error == {
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "message": "You exceeded your current quota.",
        "client_event_id": "evt_start",
    }
    assert live.live.close_request == (1000, "")
    assert not live.of("session.started") and not live.log.violations


# ---- the output stream ---------------------------------------------------------------------------
def test_output_is_continuous_real_time_silence() -> None:
    live = Live()
    live.run(1.0 - 1e-6)
    deltas = live.timed("session.output_audio.delta")
    assert len(deltas) == 1000 // 40
    assert [round(live.ms(t)) for t, _ in deltas] == [40 * n for n in range(25)]
    assert all(set(e) == {"type", "delta"} for _, e in deltas)  # no event_id, no start_ms/end_ms on the primary WS
    assert live.output() == bytes([0xFF]) * 8000
    assert live.live.next_deadline() == pytest.approx(live.t0 + 1.0)


@pytest.mark.parametrize(
    ("fmt", "silence"),
    [
        ({"type": "audio/pcma", "rate": 8000}, bytes([0xD5]) * 320),
        ({"type": "audio/pcm", "rate": 16000}, bytes(1280)),
        ({"type": "audio/pcm", "rate": 24000}, bytes(1920)),
    ],
)
def test_output_in_other_formats(fmt: dict[str, Any], silence: bytes) -> None:
    live = Live(session={**SESSION, "audio": {"format": fmt}})
    live.run(0.2)
    assert {base64.b64decode(e["delta"]) for e in live.of("session.output_audio.delta")} == {silence}


@pytest.mark.parametrize("rate", [16000, 24000])
def test_pcm_session_hears_and_answers_in_pcm(rate: int) -> None:
    live = Live(session={**SESSION, "audio": {"format": {"type": "audio/pcm", "rate": rate}}})
    line = audio.speak("is it open") + audio.silence(1500)
    step = rate // 8000
    pcm = audio.ulaw_decode(line).repeat(step).astype("<i2").tobytes()
    for i in range(0, len(pcm), 320 * step):  # 20 ms of PCM16
        live.send({"type": "session.input_audio.append", "audio": base64.b64encode(pcm[i : i + 320 * step]).decode()})
        live.run(0.02)
    live.run(2)
    assert transcript(live.of("session.input_transcript.delta")) == "is it open"
    out = np.frombuffer(live.output(), dtype="<i2")[::step]
    assert [w for _, w in audio.words_heard(audio.ulaw_encode(out))] == ["You", "said:", "is", "it", "open"]


def test_pcma_session_hears_speech() -> None:
    live = Live(LiveConfig(reply=lambda text, history: "Heard you."), session={**SESSION, "audio": {"format": PCMA}})
    alaw = _alaw_encode(audio.ulaw_decode(audio.speak("is it open") + audio.silence(1500)))
    live.say(alaw)  # A-law keeps the speech, not the word marks, so the line is heard as its length
    live.run(2)
    assert live.log.turns[0][1].startswith("[speech ") and live.log.spoken[0][0] == "Heard you."


# ---- a caller turn and its answer ------------------------------------------------------------------
def test_answer_with_timed_output_transcript() -> None:
    live = Live()
    live.run(0.5)
    caller = audio.silence(200) + audio.speak("what time is it") + audio.silence(1500)
    live.say(caller)
    live.run(2)
    assert live.log.turns == [("user", "what time is it"), ("assistant", "You said: what time is it")]
    (text, start_ms, end_ms), *_ = live.log.spoken
    assert text == "You said: what time is it"
    fragments = live.timed("session.output_transcript.delta")
    assert transcript([e for _, e in fragments]) == text
    assert [e["delta"] for _, e in fragments][:2] == ["You", " said:"]
    out = live.output()
    heard = audio.words_heard(out)
    assert [w for _, w in heard] == text.split()
    for (offset, word), (t, fragment) in zip(heard, fragments, strict=True):
        assert fragment["delta"].strip() == word
        assert fragment["start_ms"] <= offset / 8 < fragment["end_ms"]
        # sent with the delta holding the word's last audio, which begins at most a chunk earlier
        assert fragment["end_ms"] - 40 <= live.ms(t) <= fragment["end_ms"]
        assert set(out[fragment["end_ms"] * 8 : fragment["end_ms"] * 8 + 8]) <= {0xFF}
    assert fragments[0][1]["start_ms"] == start_ms and fragments[-1][1]["end_ms"] == end_ms
    # the answer begins think_ms after the caller's turn ended (silence_ms after the speech), on a chunk
    speech_end_ms = 500 + (200 + len(audio.speak("what time is it")) / 8)
    assert speech_end_ms + 500 + 300 - 40 <= start_ms <= speech_end_ms + 500 + 300 + 40
    assert start_ms % 40 == 0
    assert set(out[: start_ms * 8]) == {0xFF} and set(out[end_ms * 8 :]) == {0xFF}


def test_input_transcript_fragments_with_spans() -> None:
    live = Live()
    live.run(0.3)
    words = audio.speak("please book a table")
    live.say(audio.silence(100) + words + audio.silence(800))
    fragments = live.timed("session.input_transcript.delta")
    assert [e["delta"] for _, e in fragments] == ["please", " book", " a", " table"]
    origin_ms = 300  # the first append arrived 300 ms into the session
    for (offset, word), (t, fragment) in zip(audio.words_heard(words), fragments, strict=True):
        mark_ms = origin_ms + 100 + offset / 8
        assert fragment["start_ms"] <= mark_ms < fragment["end_ms"]
        assert fragment["end_ms"] - fragment["start_ms"] >= 200  # the word's audio, not just its mark
        assert live.ms(t) >= fragment["end_ms"] + 100 - 1  # transcription_delay_ms after the word arrived
        assert word in fragment["delta"]
    assert fragments[0][1]["start_ms"] == pytest.approx(origin_ms + 100, abs=1)


def test_unmarked_speech_is_transcribed_as_its_length() -> None:
    live = Live()
    unmarked = bytes(b & 0xFE for b in audio.speak("hello"))  # speech-like audio without its word mark
    live.say(unmarked + audio.silence(900))
    (fragment,) = live.of("session.input_transcript.delta")
    assert fragment["delta"].startswith("[speech ")
    assert live.log.turns[0][0] == "user" and live.log.turns[0][1].startswith("[speech ")


@pytest.mark.parametrize(
    ("delay", "cut", "cut_word_heard"),
    [
        (0.30, "one two three", True),  # stopped in "three", after its mark: a fragment up to the stop
        (0.46, "one two three", False),  # stopped early in "four", before its mark: no fragment
        (0.58, "one two three four", True),
    ],
)
def test_model_yields_when_the_caller_talks_over_it(delay: float, cut: str, cut_word_heard: bool) -> None:
    live = Live(LiveConfig(reply=lambda text, history: LONG if "story" in text else "Okay, stopping."))
    live.say(audio.speak("tell me a story") + audio.silence(1200))
    live.run(delay)
    assert live.log.spoken == [] and len(live.of("session.output_transcript.delta")) >= 2
    onset_ms = live.ms(live.now)
    live.say(audio.speak("wait stop") + audio.silence(1500))
    live.run(2)
    (yielded_at, stopped_ms), *_ = live.log.yields
    assert stopped_ms - onset_ms <= 60 + 40 + 40  # yield_ms + a chunk + a frame of detection
    assert live.ms(yielded_at) <= stopped_ms
    (said, start_ms, end_ms), (answer, *_) = live.log.spoken
    assert (said, end_ms, answer) == (cut, stopped_ms, "Okay, stopping.")
    out = live.output()
    # what was said is what went out: every word whose mark was sent
    assert [w for _, w in audio.words_heard(out[start_ms * 8 : end_ms * 8])] == cut.split()
    fragments = [e for e in live.of("session.output_transcript.delta") if e["start_ms"] < end_ms]
    assert transcript(fragments) == cut
    if cut_word_heard:
        assert fragments[-1]["end_ms"] == stopped_ms
    else:
        assert fragments[-1]["end_ms"] < stopped_ms
        assert set(out[fragments[-1]["end_ms"] * 8 : stopped_ms * 8]) != {0xFF}  # part of a word went out
    next_start = live.log.spoken[1][1]
    assert set(out[end_ms * 8 : next_start * 8]) == {0xFF}
    assert live.log.turns == [
        ("user", "tell me a story"),
        ("assistant", cut),
        ("user", "wait stop"),
        ("assistant", "Okay, stopping."),
    ]


def test_a_short_noise_does_not_make_the_model_yield() -> None:
    live = Live(LiveConfig(reply=lambda text, history: LONG))
    live.say(audio.speak("hello") + audio.silence(1200))
    live.run(0.5)
    live.say(audio.speak("mm")[400:720] + audio.silence(800))  # 40 ms: under yield_ms
    live.run(6)
    assert live.log.yields == []
    assert [s[0] for s in live.log.spoken] == [LONG]
    assert live.log.turns == [("user", "hello"), ("assistant", LONG)]  # not a line of the caller's either


def test_seeded_input_reaches_turns_and_reply_history() -> None:
    seen: list[list[tuple[str, str]]] = []

    def reply(text: str, history: list[tuple[str, str]]) -> str:
        seen.append(list(history))
        return "Noted."

    seeded = [
        {"role": "developer", "content": [{"text": "The caller is a member."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I called before."}]},
        {"role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "Welcome back."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
    ]
    live = Live(LiveConfig(reply=reply), session={**SESSION, "input": seeded})
    earlier = [
        ("developer", "The caller is a member."),
        ("user", "I called before."),
        ("assistant", "Welcome back."),
        ("assistant", "How can I help?"),
    ]
    assert live.log.turns == earlier
    live.say(audio.speak("my order") + audio.silence(1500))
    assert seen == [earlier]
    assert live.log.turns == [*earlier, ("user", "my order"), ("assistant", "Noted.")]


# ---- appended context ----------------------------------------------------------------------------
def test_commentary_is_spoken() -> None:
    live = Live()
    greeting = "Say to the caller now, in these words: Hello, thanks for calling Acme."
    (ack,) = live.send(
        {"type": "session.commentary.append", "event_id": "c1", "content": greeting, "delegation_id": None}
    )
    assert ack == {
        "type": "session.commentary.appended",
        "event_id": ack["event_id"],
        "start_ms": 0,
        "end_ms": 0,
        "client_event_id": "c1",
    }
    live.run(3)
    assert live.log.spoken[0][0] == "Hello, thanks for calling Acme."
    assert transcript(live.of("session.output_transcript.delta")) == "Hello, thanks for calling Acme."
    live.send({"type": "session.commentary.append", "content": "The table is booked.", "delegation_id": None})
    live.run(3)
    assert live.log.spoken[1][0] == "Here is an update: The table is booked."
    assert live.log.turns == [("assistant", s[0]) for s in live.log.spoken]
    assert not live.log.violations


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"content": "Say: hi"}, "missing_required_parameter"),
        ({"delegation_id": None}, "missing_required_parameter"),
        ({"content": 5, "delegation_id": None}, "invalid_type"),
        ({"content": "x" * 2001, "delegation_id": None}, "string_above_max_length"),
        ({"content": "Say: hi", "delegation_id": "dlg_unknown"}, "invalid_value"),
    ],
)
def test_bad_appends_are_refused(event: dict[str, Any], code: str) -> None:
    for kind in ("session.commentary.append", "session.thinking.append", "session.instructions.append"):
        live = Live(session=with_tools(END_CALL))
        (error,) = [e["error"] for e in live.send({"type": kind, **event})]
        assert error["code"] == code
        assert len(live.log.violations) == 1
        live.run(2)
        assert live.log.spoken == []


def test_thinking_is_silent_but_keys_are_read_back() -> None:
    live = Live()
    (ack,) = live.send({"type": "session.thinking.append", "content": "The caller is in Paris.", "delegation_id": None})
    assert ack["type"] == "session.thinking.appended" and "client_event_id" not in ack
    live.run(2)
    assert live.log.spoken == [] and live.log.turns == [("developer", "The caller is in Paris.")]
    keys = "The caller pressed these keys on the phone keypad: 12#"
    live.send({"type": "session.thinking.append", "content": keys, "delegation_id": None})
    (ack,) = live.send({"type": "session.instructions.append", "content": "Be brief.", "delegation_id": None})
    assert ack["type"] == "session.instructions.appended" and ack["start_ms"] == ack["end_ms"] == 2000
    live.run(3)
    assert [s[0] for s in live.log.spoken] == ["You pressed 1 2 #"]
    assert live.log.turns[1:] == [("developer", keys), ("developer", "Be brief."), ("assistant", "You pressed 1 2 #")]


# ---- tools through Responses delegation --------------------------------------------------------------
def test_end_call_round_trip() -> None:
    live = Live(session=with_tools(END_CALL))
    live.say(audio.speak("that is all goodbye") + audio.silence(900))
    live.run(0.5)
    (created,) = live.timed("session.delegation.created")
    farewell_ms = round(live.ms(created[0]))
    delegation = created[1]["delegation"]
    assert delegation["type"] == "delegation" and delegation["target"] == "responses"
    assert delegation["id"].startswith("dlg_") and created[1]["offset_ms"] == farewell_ms
    assert live.log.spoken == [] and live.of("session.output_transcript.delta")[0]["start_ms"] == farewell_ms
    assert all(e["delegation_id"] == delegation["id"] for e in live.of("response.event"))
    inner = live.inner()
    assert [e["type"] for e in inner] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in inner] == list(range(7))
    assert inner[0]["response"]["id"] == delegation["response_id"]
    assert inner[0]["response"]["status"] == "in_progress" and inner[0]["response"]["output"] == []
    call = inner[5]["item"]
    assert call["type"] == "function_call" and call["status"] == "completed"
    assert (call["name"], call["arguments"]) == ("end_call", "{}")
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    usage = inner[6]["response"]["usage"]
    assert inner[6]["response"]["status"] == "completed"
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_tokens_details"]) == {"cached_tokens"}
    assert set(usage["output_tokens_details"]) == {"reasoning_tokens"}
    # wrong orders: going on before answering, answering a call that does not exist, answering twice
    live.send({"type": "response.create"})
    live.send(
        {"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "call_x", "output": "{}"}}
    )
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok": true}'}
    assert live.send({"type": "response.item.create", "event_id": "out1", "item": output}) == []  # no ack exists
    live.send({"type": "response.item.create", "item": output})
    assert [e["code"] for e in live.errors()] == ["function_call_output_missing", "invalid_value", "invalid_value"]
    assert live.errors()[1]["param"] == live.errors()[2]["param"] == "item.call_id"
    assert live.send({"type": "response.create"}) == [
        {"type": "response.event", "event_id": e["event_id"], "delegation_id": delegation["id"], "event": e["event"]}
        for e in live.of("response.event")[7:]
    ]
    cont = live.inner()[7:]
    assert [e["type"] for e in cont] == [
        "response.created",
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert cont[4]["item"]["content"][0]["text"] == "Done."
    assert cont[0]["response"]["id"] != delegation["response_id"] and cont[-1]["response"]["usage"]["total_tokens"] > 0
    assert live.send({"type": "response.create"})[0]["error"]["code"] == "no_delegated_response"
    live.run(4)
    assert [s[0] for s in live.log.spoken] == ["Thank you for calling. Goodbye!"]  # nothing after the farewell
    assert live.log.tool_outputs == [(call["call_id"], '{"ok": true}')]
    (record,) = live.log.delegations
    assert record["name"] == "end_call" and record["call_id"] == call["call_id"]
    assert record["output"] == '{"ok": true}' and record["continued_at"] is not None
    assert len(live.log.violations) == 4


def test_response_create_and_close_wait_for_response_completed() -> None:
    live = Live(session=with_tools(END_CALL))
    live.say(audio.speak("bye") + audio.silence(600))
    while not live.of("session.delegation.created"):
        live.run(0.01)
    (call,) = [e["item"] for e in live.inner() if e["type"] == "response.output_item.done"]
    assert [e["type"] for e in live.inner()][-1] == "response.output_item.done"
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}
    live.send({"type": "response.item.create", "item": output})
    assert live.send({"type": "response.create"})[0]["error"]["code"] == "response_in_progress"
    assert live.send({"type": "session.close"}) == []  # the service drains the delegation first
    live.run(0.05)
    assert live.inner()[-1]["type"] == "response.completed"
    assert live.of("session.closed")[0]["reason"] == "close_requested"
    assert live.events[-1][1]["type"] == "session.closed" and live.live.close_request == (1000, "")
    assert len(live.log.violations) == 1


def test_weather_round_trip_speaks_the_tool_output() -> None:
    live = Live(session=with_tools(END_CALL, GET_WEATHER))
    live.say(audio.speak("what is the weather") + audio.silence(900))
    live.run(0.5)
    (call,) = [e["item"] for e in live.inner() if e["type"] == "response.output_item.done"]
    assert (call["name"], call["arguments"]) == ("get_weather", '{"city": "Paris"}')
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny and 24 degrees"}
    live.send({"type": "response.item.create", "item": output})
    live.send({"type": "response.create"})
    live.run(4)
    assert [s[0] for s in live.log.spoken] == ["Let me check the weather.", "The weather is sunny and 24 degrees"]
    assert not live.log.violations


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.create"},
        {"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "c", "output": ""}},
    ],
)
def test_responses_events_need_responses_delegation(event: dict[str, Any]) -> None:
    live = Live()
    assert live.send(event)[0]["error"]["code"] == "responses_delegation_required"
    assert len(live.log.violations) == 1


def test_only_function_call_outputs_are_taken() -> None:
    live = Live(session=with_tools(END_CALL))
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    assert live.send({"type": "response.item.create", "item": message})[0]["error"]["param"] == "item.type"
    extra = {"type": "function_call_output", "call_id": "c", "output": "", "name": "end_call"}
    assert live.send({"type": "response.item.create", "item": extra})[0]["error"]["param"] == "item.name"
    assert len(live.log.violations) == 2


def test_session_update_changes_only_delegation_settings() -> None:
    live = Live(session=with_tools(END_CALL))
    update = {"delegation": {"type": "responses", "responses": {"tools": [END_CALL, GET_WEATHER]}}}
    (updated,) = live.send({"type": "session.update", "event_id": "u1", "session": update})
    assert updated["type"] == "session.updated" and updated["client_event_id"] == "u1"
    assert updated["session"]["delegation"]["responses"]["tools"] == [END_CALL, GET_WEATHER]
    assert updated["session"]["delegation"]["responses"]["model"] == "gpt-5-mini"
    refused = [
        {"delegation": {"type": "client"}},  # the delegation type cannot change
        {"instructions": "Be terse."},  # immutable after start
        {"audio": {"output": {"voice": "ash"}}},
    ]
    for session in refused:
        assert live.send({"type": "session.update", "session": session})[0]["type"] == "error"
    assert [e["param"] for e in live.errors()] == ["session.delegation.type", "session.instructions", "session.audio"]
    live.say(audio.speak("and the weather") + audio.silence(1200))
    live.run(2)
    assert [s[0] for s in live.log.spoken] == ["Let me check the weather."]
    assert [d["name"] for d in live.log.delegations] == ["get_weather"]


def test_muted_input_is_not_heard() -> None:
    live = Live()
    assert live.send({"type": "session.input_audio.mute", "event_id": "m"})[0] == {
        "type": "session.input_audio.muted",
        "event_id": live.of("session.input_audio.muted")[0]["event_id"],
        "client_event_id": "m",
    }
    live.say(audio.speak("can you hear me") + audio.silence(1200))
    assert live.of("session.input_transcript.delta") == [] and live.log.turns == []
    assert live.send({"type": "session.input_audio.unmute"})[0]["type"] == "session.input_audio.unmuted"
    live.say(audio.speak("hello again") + audio.silence(1200))
    assert transcript(live.of("session.input_transcript.delta")) == "hello again"


# ---- usage and the end of a session --------------------------------------------------------------------
def test_usage_is_cumulative_and_close_requested_ends_the_session() -> None:
    live = Live(LiveConfig(usage_interval_s=1.0))
    live.run(3.5)
    usage = live.of("session.usage.updated")
    assert [u["usage"] for u in usage] == [{"seconds": float(s), "active_seconds": s} for s in (1, 2, 3)]
    assert live.log.usage_sent == [u["usage"] for u in usage]
    (closed,) = [e for e in live.send({"type": "session.close", "event_id": "bye"}) if e["type"] == "session.closed"]
    assert closed["reason"] == "close_requested" and closed["client_event_id"] == "bye"
    assert closed["usage"] == {"seconds": 3.0, "active_seconds": 3}
    assert closed["session"]["id"] == live.log.session_id and closed["session"]["status"] == "active"
    assert live.live.close_request == (1000, "") and live.log.closed_reason == "close_requested"
    assert live.live.next_deadline() is None
    live.send({"type": "session.close"})  # after the close: ignored
    assert len(live.of("session.closed")) == 1


def test_closing_mid_answer_logs_what_went_out() -> None:
    live = Live(LiveConfig(reply=lambda text, history: LONG))
    live.say(audio.speak("hello") + audio.silence(1200))
    live.run(0.6)
    live.send({"type": "session.close"})
    [(said, _, end_ms)] = live.log.spoken
    assert said == transcript(live.of("session.output_transcript.delta")) and LONG.startswith(said)
    assert end_ms == len(live.output()) // 8 and live.log.turns[-1] == ("assistant", said)
    assert [e["type"] for _, e in live.events][-1] == "session.closed"


def test_session_expires() -> None:
    live = Live(LiveConfig(max_session_s=2.0))
    assert live.of("session.started")[0]["session"]["expires_at"] == int(WALL + 2)
    live.run(5)
    (t, closed), *_ = live.timed("session.closed")
    assert closed["reason"] == "expired" and live.ms(t) == pytest.approx(2000)
    assert live.live.close_request == (1000, "") and live.log.closed_reason == "expired"
    assert len(live.of("session.output_audio.delta")) == 2000 // 40  # the stream ends where the session does


def test_audio_before_session_started_is_dropped() -> None:
    live = Live(LiveConfig(started_delay_ms=200))
    assert not live.of("session.started")
    live.send({"type": "session.input_audio.append", "audio": base64.b64encode(audio.silence(20)).decode()})
    assert live.errors()[0]["code"] == "session_not_started" and live.log.appends_before_started == 1
    live.run(0.2)
    assert live.of("session.started")[0]["client_event_id"] == "evt_start" and live.log.started_at == live.now


def test_fixture_plays_and_mutes_input() -> None:
    live = Live(LiveConfig(reply=lambda text, history: LONG))
    live.say(audio.speak("hi") + audio.silence(1200))
    live.run(0.5)
    pcm24 = base64.b64encode(bytes(2) * 24 * 300).decode()  # 300 ms of PCM16 zeros at 24 kHz
    assert [e["type"] for e in live.send({"type": "session.output_audio.fixture.play", "audio": pcm24})] == [
        "session.output_audio.fixture.playing"
    ]
    refused = live.send({"type": "session.commentary.append", "content": "Say: hi", "delegation_id": None})
    assert refused[0]["error"]["code"] == "fixture_active"
    live.run(0.5)
    assert len(live.of("session.output_audio.fixture.played")) == 1
    assert LONG.startswith(live.log.spoken[0][0]) and live.log.spoken[0][0] != LONG
    assert live.log.yields == []  # cut by the fixture, not by the caller


# ---- over loopback -------------------------------------------------------------------------------
async def test_handshake_and_a_session_over_loopback() -> None:
    async with LiveAgent(LiveConfig(chunk_ms=20)) as agent:
        assert agent.url.endswith(LIVE_PATH) and agent.url.startswith("ws://127.0.0.1:")
        refusals = [
            (agent.url.replace(LIVE_PATH, "/v1/live"), AUTH, 404),
            (agent.url, {}, 401),
            (agent.url + "?model=gpt-live-1", AUTH, 400),
            (agent.url, {**AUTH, "OpenAI-Alpha": "quicksilver=v2"}, 400),
            (agent.url, {**AUTH, "OpenAI-Beta": "realtime=v1"}, 400),
        ]
        for url, headers, status in refusals:
            with pytest.raises(InvalidStatus) as exc:
                await connect(url, additional_headers=headers)
            assert exc.value.response.status_code == status
        assert [s for s, _ in agent.rejected] == [404, 401, 400, 400, 400]
        assert len(agent.violations) == 3 and agent.sessions == []

        async with connect(agent.url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "session.start", "session": SESSION}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            deltas = [json.loads(await ws.recv()) for _ in range(5)]
            assert {d["type"] for d in deltas} == {"session.output_audio.delta"}
            await ws.send(json.dumps({"type": "session.close"}))
            kinds = []
            with pytest.raises(ConnectionClosed):
                while True:
                    kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 2))["type"])
            assert kinds[-1] == "session.closed"
            assert ws.close_code == 1000
        (slog,) = agent.sessions
        await agent.wait_closed(slog, 2)
        assert slog.closed_reason == "close_requested" and slog.close_code == 1000
        assert slog.received[0][1] == "session.start" and slog.sent[0][1] == "session.started"
        assert len(agent.violations) == 3


async def test_close_with_and_kill_over_loopback() -> None:
    async with LiveAgent() as agent:
        async with connect(agent.url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "session.start", "session": SESSION}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            await agent.close_with(agent.sessions[0], "content")
            events = []
            with pytest.raises(ConnectionClosed):
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
            assert events[-1]["type"] == "session.closed" and events[-1]["reason"] == "content"
            assert ws.close_code == 1000
        async with connect(agent.url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "session.start", "session": SESSION}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            agent.kill(agent.sessions[1])
            with pytest.raises(ConnectionClosed):
                while True:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 2))["type"] != "session.closed"
        await agent.wait_closed(agent.sessions[1], 2)
        assert agent.sessions[1].closed_reason is None
        assert agent.sessions[0].closed_reason == "content"
        with pytest.raises(ValueError, match="reason"):
            await agent.close_with(agent.sessions[0], "hung_up")
