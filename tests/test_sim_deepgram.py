"""The simulated Deepgram Voice Agent: the sans-I/O session on a fake clock, the shell over loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from relay.sim import audio
from relay.sim.deepgram import (
    CLIENT_MESSAGE_TIMEOUT,
    DEEPGRAM_PATH,
    INVALID_SETTINGS,
    SESSION_LIMIT,
    SETTINGS_NOT_APPLIED,
    UNKNOWN_FUNCTION_CALL,
    UNPARSABLE,
    DeepgramAgent,
    DeepgramConfig,
    DeepgramSession,
    DeepgramSessionLog,
)

AUTH = {"Authorization": "Token dg-test-key"}
END_CALL = {"name": "end_call", "description": "Hang up.", "parameters": {"type": "object", "properties": {}}}
GET_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SETTINGS: dict[str, Any] = {  # BACKENDS §4.2, the Twilio passthrough
    "type": "Settings",
    "tags": ["tenant42"],
    "mip_opt_out": True,
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3", "keyterms": ["order"]}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4.1-nano", "temperature": 0.5},
            "prompt": "You are the front desk.",
            "functions": [END_CALL, GET_WEATHER],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
    },
}
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
FAST = {"think_ms": 20, "tts_ms": 10, "silence_ms": 200}  # quick turns for the loopback tests


def settings(**agent: Any) -> dict[str, Any]:
    """SETTINGS with ``agent`` fields replaced (None removes one)."""
    s = copy.deepcopy(SETTINGS)
    for key, value in agent.items():
        if value is None:
            s["agent"].pop(key, None)
        else:
            s["agent"][key] = value
    return s


class Dg:
    """One ``DeepgramSession`` on a fake clock: every event it sends is kept with the time it was sent."""

    def __init__(self, config: DeepgramConfig | None = None, first: dict[str, Any] | None = SETTINGS) -> None:
        self.log = DeepgramSessionLog()
        self.core = DeepgramSession(config or DeepgramConfig(), self.log)
        self.now = 1000.0
        self.events: list[tuple[float, dict[str, Any] | bytes]] = []
        self.core.connect(self.now)
        self._collect()
        if first is not None:
            self.send(first)

    def _collect(self) -> None:
        self.events += [(self.now, e) for e in self.core.take_events()]

    def send(self, message: dict[str, Any] | str | bytes) -> list[dict[str, Any]]:
        """Send one client message; return the JSON events it got at once."""
        before = len(self.events)
        self.core.receive(json.dumps(message) if isinstance(message, dict) else message, self.now)
        self._collect()
        return [e for _, e in self.events[before:] if isinstance(e, dict)]

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while (deadline := self.core.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.core.advance(self.now)
            self._collect()
        self.now = end
        self.core.advance(end)
        self._collect()

    def say(self, ulaw: bytes) -> None:
        """The caller's audio, one 20 ms binary frame at a time, in real time (as relay forwards Twilio's)."""
        for i in range(0, len(ulaw), 160):
            self.send(ulaw[i : i + 160])
            self.run(0.02)

    def kinds(self) -> list[str]:
        return ["<binary>" if isinstance(e, bytes) else e["type"] for _, e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if isinstance(e, dict) and e["type"] == kind]

    def output(self, start: int = 0) -> bytes:
        return b"".join(e for _, e in self.events[start:] if isinstance(e, bytes))

    def errors(self) -> list[dict[str, Any]]:
        return self.of("Error")


def speech(text: str, pause_ms: int = 600) -> bytes:
    return audio.speak(text) + audio.silence(pause_ms)


# ---- loopback helpers --------------------------------------------------------------------------
Message = dict[str, Any] | bytes


async def receive(ws: ClientConnection, timeout: float = 2.0) -> Message:
    message = await asyncio.wait_for(ws.recv(), timeout)
    return message if isinstance(message, bytes) else json.loads(message)


async def receive_until(ws: ClientConnection, kind: str, timeout: float = 3.0) -> list[Message]:
    """Every message up to and including the first JSON message of type ``kind``."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await receive(ws, timeout)
            got.append(message)
            if isinstance(message, dict) and message["type"] == kind:
                return got


async def receive_all(ws: ClientConnection, timeout: float = 2.0) -> list[Message]:
    """Every message until the server closes the connection."""
    got: list[Message] = []
    with pytest.raises(ConnectionClosed):
        while True:
            got.append(await receive(ws, timeout))
    return got


async def start_session(ws: ClientConnection, first: dict[str, Any] = SETTINGS) -> None:
    welcome = await receive(ws)
    assert isinstance(welcome, dict) and welcome["type"] == "Welcome"
    await ws.send(json.dumps(first))
    assert await receive(ws) == {"type": "SettingsApplied"}


async def send_audio(ws: ClientConnection, ulaw: bytes) -> None:
    for i in range(0, len(ulaw), 160):
        await ws.send(ulaw[i : i + 160])


def kinds(messages: list[Message]) -> list[str]:
    return ["<binary>" if isinstance(m, bytes) else m["type"] for m in messages]


def binary(messages: list[Message]) -> bytes:
    return b"".join(m for m in messages if isinstance(m, bytes))


def texts(messages: list[Message], role: str) -> list[str]:
    return [
        m["content"] for m in messages if isinstance(m, dict) and m["type"] == "ConversationText" and m["role"] == role
    ]


# ---- handshake -----------------------------------------------------------------------------------
async def test_handshake_auth_and_refusals() -> None:
    async with DeepgramAgent(DeepgramConfig(api_key="dg-test-key")) as agent:
        assert agent.url.startswith("ws://127.0.0.1:") and agent.url.endswith(DEEPGRAM_PATH)
        refusals = [
            (agent.url, {}, 401),
            (agent.url, {"Authorization": "Token other-key"}, 401),
            (agent.url, {"Authorization": "Basic dg-test-key"}, 401),
            (agent.url.replace(DEEPGRAM_PATH, "/v1/agent"), AUTH, 404),
        ]
        for url, headers, status in refusals:
            with pytest.raises(InvalidStatus) as exc:
                await connect(url, additional_headers=headers)
            assert exc.value.response.status_code == status
            body = json.loads(exc.value.response.body or b"{}")
            assert set(body) == {"err_code", "err_msg", "request_id"}
        assert [s for s, _ in agent.rejected] == [401, 401, 401, 404]
        assert agent.sessions == []

        async with connect(agent.url, additional_headers=AUTH) as ws:
            welcome = await receive(ws)
            assert isinstance(welcome, dict) and welcome["type"] == "Welcome"
            assert re.fullmatch(
                r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", welcome["request_id"]
            )
        async with connect(agent.url, additional_headers={"Authorization": "Bearer dg-test-key"}) as ws:
            await start_session(ws)
        # clients that cannot set headers (browsers) offer the key as a subprotocol; "token" is echoed
        async with connect(agent.url, subprotocols=[Subprotocol("token"), Subprotocol("dg-test-key")]) as ws:
            assert ws.subprotocol == "token"
            await start_session(ws)
        await agent.wait_until(lambda: all(s.closed.is_set() for s in agent.sessions), 2)
        assert [s.auth for s in agent.sessions] == ["token", "bearer", "subprotocol token"]
        assert agent.sessions[0].request_id == welcome["request_id"]
        assert agent.violations == []


# ---- Settings ------------------------------------------------------------------------------------
async def test_unknown_settings_field_is_an_error_and_the_end() -> None:
    async with DeepgramAgent() as agent, connect(agent.url, additional_headers=AUTH) as ws:
        assert kinds([await receive(ws)]) == ["Welcome"]
        bad = settings(think={"provider": {"type": "open_ai", "model": "gpt-4.1-nano", "temprature": 0.5}})
        await ws.send(json.dumps(bad))
        (error,) = await receive_all(ws)
        assert isinstance(error, dict) and error["type"] == "Error" and error["code"] == UNPARSABLE
        assert "agent.think.provider.temprature" in error["description"]
        assert ws.close_code == 1000
        (slog,) = agent.sessions
        await agent.wait_closed(slog, 2)
        assert slog.settings == bad and slog.settings_applied_at is None
        assert len(slog.violations) == 1 and "temprature" in slog.violations[0]


@pytest.mark.parametrize(
    ("change", "code", "where"),
    [
        (lambda s: s["audio"]["input"].update(sample_rate="8000"), UNPARSABLE, "audio.input.sample_rate"),
        (lambda s: s["audio"].pop("input"), INVALID_SETTINGS, "linear16 at 24000"),  # the service's default
        (lambda s: s["audio"]["input"].update(encoding="linear16", sample_rate=16000), INVALID_SETTINGS, "linear16"),
        (lambda s: s["audio"]["output"].update(container="wav"), INVALID_SETTINGS, "container wav"),
        (lambda s: s["audio"]["output"].update(encoding="opus"), INVALID_SETTINGS, "opus"),
        (lambda s: s.pop("audio"), UNPARSABLE, "audio"),
        (lambda s: s.update(mip_opt_out="yes"), UNPARSABLE, "mip_opt_out"),
        (lambda s: s.update(flags={"history": True, "debug": True}), UNPARSABLE, "flags.debug"),
        (lambda s: s["agent"]["think"]["provider"].update(type="mistral"), UNPARSABLE, "agent.think.provider.type"),
        (lambda s: s["agent"]["think"]["functions"][0].pop("name"), UNPARSABLE, "functions[0].name"),
        (lambda s: s["agent"]["think"]["functions"].append({**END_CALL}), INVALID_SETTINGS, "unique"),
        (
            lambda s: s["agent"]["think"]["functions"][0].update(initial_agent_filler=True),
            INVALID_SETTINGS,
            "think_live",
        ),
        (lambda s: s["agent"]["speak"]["provider"].update(voice="alloy"), UNPARSABLE, "agent.speak.provider.voice"),
        (
            lambda s: s["agent"]["listen"]["provider"].update(version="v2", model=None),
            UNPARSABLE,
            "listen.provider.model",
        ),
        (lambda s: s["agent"].update(greeting=["Hi"]), UNPARSABLE, "agent.greeting"),
        (
            lambda s: s["agent"].update(context={"messages": [{"type": "Text", "role": "user", "content": "x"}]}),
            UNPARSABLE,
            "agent.context.messages[0].type",
        ),
        (lambda s: s["agent"].update(messages=[]), UNPARSABLE, "agent.messages"),
    ],
)
def test_settings_are_validated_strictly(change: Any, code: str, where: str) -> None:
    bad = copy.deepcopy(SETTINGS)
    change(bad)
    dg = Dg(first=None)
    (error,) = dg.send(bad)
    assert error["type"] == "Error" and error["code"] == code
    assert where in error["description"]
    assert dg.core.close_request == (1000, "")
    assert dg.log.violations and dg.log.settings == bad


def test_settings_the_schema_allows() -> None:
    fallback = [
        {"provider": {"type": "open_ai", "model": "gpt-4.1-nano"}, "functions": [END_CALL], "prompt": "Be brief."},
        {"provider": {"type": "anthropic", "model": "claude-sonnet-4-20250514"}, "context_length": "max"},
    ]
    s = settings(
        think=fallback,
        speak=[{"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}],
        language="en",  # deprecated, still accepted
        context={
            "messages": [
                {"type": "History", "role": "user", "content": "My order is late."},
                {"type": "History", "role": "assistant", "content": "Let me look."},
                {
                    "type": "History",
                    "function_calls": [
                        {"id": "c1", "name": "end_call", "client_side": True, "arguments": "{}", "response": "ok"}
                    ],
                },
            ]
        },
    )
    s.update(experimental=False, flags={"history": False}, tags=None)  # null: an omitted optional field
    dg = Dg(first=s)
    assert dg.kinds() == ["Welcome", "SettingsApplied"]
    assert dg.log.turns == [("user", "My order is late."), ("assistant", "Let me look.")]
    dg.send({"type": "Settings", **{k: v for k, v in s.items() if k != "type"}})
    assert dg.errors()[0]["code"] == INVALID_SETTINGS  # Settings once per session


def test_messages_and_audio_before_settings_applied() -> None:
    dg = Dg(DeepgramConfig(settings_applied_delay_ms=100), first=None)
    assert dg.send({"type": "KeepAlive"}) == []  # allowed from the start
    dg.send(SETTINGS)
    dg.send(audio.silence(20))  # between Settings and SettingsApplied: dropped
    dg.send(audio.silence(20))
    assert dg.log.audio_before_settings_applied == 2
    assert dg.log.violations == ["audio before SettingsApplied: dropped"]
    (error,) = dg.send({"type": "InjectAgentMessage", "message": "Hello"})
    assert error["code"] == SETTINGS_NOT_APPLIED and "before SettingsApplied" in error["description"]
    assert "SettingsApplied" not in dg.kinds()


# ---- audio is binary ----------------------------------------------------------------------------
async def test_audio_in_json_is_unparsable() -> None:
    async with DeepgramAgent() as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)
        await ws.send(audio.silence(20))  # binary: fine
        payload = base64.b64encode(audio.silence(20)).decode()
        await ws.send(json.dumps({"type": "Media", "media": {"payload": payload}}))  # pitfall §4.6.2
        (error,) = await receive_all(ws)
        assert isinstance(error, dict) and error["type"] == "Error" and error["code"] == UNPARSABLE
        assert "binary" in error["description"]
        await agent.wait_closed(agent.sessions[0], 2)
        assert agent.sessions[0].audio_messages == 1 and len(agent.violations) == 1


@pytest.mark.parametrize("frame", ["not json", '["KeepAlive"]', '{"type": "SayHello"}', "{}"])
def test_text_frames_that_are_not_control_messages(frame: str) -> None:
    dg = Dg()
    (error,) = dg.send(frame)
    assert error["code"] == UNPARSABLE and dg.core.close_request == (1000, "")


def test_a_control_message_in_a_binary_frame_is_heard_as_audio() -> None:
    dg = Dg()
    assert dg.send(b'{"type":"KeepAlive"}') == []
    assert dg.log.keepalives == [] and "binary frame" in dg.log.violations[0]


# ---- the agent speaks ---------------------------------------------------------------------------
async def test_greeting_first() -> None:
    async with DeepgramAgent(DeepgramConfig(**FAST)) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws, settings(greeting="Thanks for calling, how can I help?"))
        got = await receive_until(ws, "AgentAudioDone")
        assert kinds(got)[0] == "AgentStartedSpeaking"
        assert kinds(got)[-2:] == ["ConversationText", "AgentAudioDone"]
        assert set(kinds(got)[1:-2]) == {"<binary>"}
        assert audio.transcribe(binary(got)) == "Thanks for calling, how can I help?"
        assert texts(got, "assistant") == ["Thanks for calling, how can I help?"]
        (slog,) = agent.sessions
        assert slog.turns == [("assistant", "Thanks for calling, how can I help?")]
        ((text, start, end),) = slog.spoken
        assert text == "Thanks for calling, how can I help?" and end - start == len(binary(got)) // 8


async def test_a_whole_turn_binary_both_ways() -> None:
    async with DeepgramAgent(DeepgramConfig(**FAST)) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)
        await send_audio(ws, speech("where is my order number 42", 300))
        got = await receive_until(ws, "AgentAudioDone")
        order = [k for k in kinds(got) if k != "<binary>"]
        assert order == [
            "UserStartedSpeaking",
            "ConversationText",
            "AgentThinking",
            "AgentStartedSpeaking",
            "ConversationText",
            "AgentAudioDone",
        ]
        assert texts(got, "user") == ["where is my order number 42"]  # read from the bytes, exactly
        answer = "You said: where is my order number 42"
        assert audio.transcribe(binary(got)) == answer and texts(got, "assistant") == [answer]
        started = next(m for m in got if isinstance(m, dict) and m["type"] == "AgentStartedSpeaking")
        assert started["ttt_latency"] == 0.02 and started["tts_latency"] == 0.01 and started["total_latency"] >= 0.03
        chunks = [m for m in got if isinstance(m, bytes)]
        assert all(len(c) == 320 for c in chunks[:-1])  # 40 ms of μ-law, raw: no header, no container
        (slog,) = agent.sessions
        assert slog.turns == [("user", "where is my order number 42"), ("assistant", answer)]
        assert slog.largest_audio_message == 160 and agent.violations == []


def test_audio_goes_out_faster_than_real_time() -> None:
    dg = Dg(DeepgramConfig(chunk_ms=40, chunk_interval_ms=10, tts_ms=10))
    dg.send({"type": "InjectAgentMessage", "message": LONG})
    dg.run(10)
    chunk_times = [t for t, e in dg.events if isinstance(e, bytes)]
    seconds = len(dg.output()) / 8000
    assert chunk_times[-1] - chunk_times[0] == pytest.approx((len(chunk_times) - 1) * 0.01)
    assert chunk_times[-1] - chunk_times[0] < seconds / 3
    done_at = next(t for t, e in dg.events if isinstance(e, dict) and e["type"] == "AgentAudioDone")
    assert done_at == chunk_times[-1]  # AgentAudioDone: sent, not played
    ((text, start, end),) = dg.log.spoken
    assert text == LONG and end - start == round(seconds * 1000)


# ---- barge-in ------------------------------------------------------------------------------------
async def test_barge_in_over_loopback() -> None:
    config = DeepgramConfig(**FAST, reply=lambda transcript, history: LONG if "first" in transcript else "Sure.")
    async with DeepgramAgent(config) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)
        await send_audio(ws, speech("the first question", 300))
        await receive_until(ws, "AgentStartedSpeaking")
        await send_audio(ws, speech("wait stop", 300))  # while the long answer plays
        got = await receive_until(ws, "UserStartedSpeaking")
        assert audio.transcribe(binary(got)) != LONG  # cut before all of it went out
        after = await receive_until(ws, "AgentAudioDone")
        late = kinds(after)[: kinds(after).index("AgentStartedSpeaking")].count("<binary>")
        assert late <= config.in_flight_chunks  # what relay must drop (§4.4)
        new_answer = after[kinds(after).index("AgentStartedSpeaking") :]
        assert audio.transcribe(binary(new_answer)) == "Sure."
        assert texts(after, "assistant") == [LONG, "Sure."]  # the cut answer's text comes in full
        assert texts(after, "user") == ["wait stop"]
        (slog,) = agent.sessions
        (cut,) = slog.interruptions
        assert cut["text"] == LONG and cut["sending"] and cut["late_chunks"] == late
        assert LONG.startswith(cut["heard"]) and slog.spoken[0][0] == cut["heard"]
        assert "AgentAudioDone" not in kinds(got + after[: kinds(after).index("AgentStartedSpeaking")])


@pytest.mark.parametrize("in_flight", [0, 1, 3])
def test_barge_in_lets_at_most_in_flight_chunks_out(in_flight: int) -> None:
    dg = Dg(DeepgramConfig(in_flight_chunks=in_flight, reply=lambda t, h: LONG))
    dg.say(speech("hello there"))
    dg.run(0.31)  # the answer has begun
    assert dg.of("AgentStartedSpeaking")
    stop_at = dg.core.session_ms(dg.now)
    dg.say(audio.speak("stop"))
    uss = [i for i, (_, e) in enumerate(dg.events) if isinstance(e, dict) and e["type"] == "UserStartedSpeaking"][-1]
    dg.run(1)
    after = dg.kinds()[uss + 1 :]
    assert after.count("<binary>") == in_flight
    (cut,) = dg.log.interruptions
    assert cut["late_chunks"] == in_flight and cut["sending"]
    # the agent stops once the caller's speech has lasted yield_ms (a word's first frame is faint),
    # and the log says what had played by then on the real-time clock from the answer's first chunk
    assert 60 <= cut["at_ms"] - stop_at <= 100
    text, _, end = dg.log.spoken[0]
    assert end == cut["at_ms"] and text == cut["heard"] and LONG.startswith(text)


def test_a_caller_who_speaks_after_the_answer_played_is_no_barge_in() -> None:
    dg = Dg(DeepgramConfig(reply=lambda t, h: "Yes."))
    dg.say(speech("hello"))
    dg.run(3)
    dg.say(speech("thanks"))
    assert len(dg.of("UserStartedSpeaking")) == 2 and dg.log.interruptions == []


def test_a_cough_is_not_a_turn() -> None:
    dg = Dg()
    click = audio.speak("x")[:320]  # 40 ms of sound: shorter than yield_ms
    dg.say(click + audio.silence(700))
    assert dg.of("UserStartedSpeaking") == [] and dg.of("ConversationText") == []


def test_unmarked_speech_is_transcribed_by_length() -> None:
    dg = Dg()
    marked = audio.speak("hello")
    unmarked = bytes(b & 0xFE for b in marked)  # the word without its mark
    dg.say(unmarked + audio.silence(600))
    (line,) = dg.of("ConversationText")
    assert re.fullmatch(r"\[speech \d\.\d s\]", line["content"])


# ---- tools ---------------------------------------------------------------------------------------
async def test_a_tool_round_trip() -> None:
    async with DeepgramAgent(DeepgramConfig(**FAST)) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)
        await send_audio(ws, speech("what is the weather", 300))
        got = await receive_until(ws, "AgentAudioDone")
        ((request, *_),) = [m["functions"] for m in got if isinstance(m, dict) and m["type"] == "FunctionCallRequest"]
        assert request["name"] == "get_weather" and request["client_side"] is True
        assert json.loads(request["arguments"]) == {"city": "Paris"}
        assert kinds(got).index("AgentStartedSpeaking") < kinds(got).index("FunctionCallRequest")
        assert audio.transcribe(binary(got)) == "Let me check the weather."
        reply = {"type": "FunctionCallResponse", "id": request["id"], "name": "get_weather", "content": "sunny"}
        await ws.send(json.dumps(reply))
        got = await receive_until(ws, "AgentAudioDone")
        assert audio.transcribe(binary(got)) == "The weather is sunny"

        await send_audio(ws, speech("thanks goodbye", 300))
        got = await receive_until(ws, "AgentAudioDone")
        ((hangup,),) = [m["functions"] for m in got if isinstance(m, dict) and m["type"] == "FunctionCallRequest"]
        assert hangup["name"] == "end_call" and hangup["arguments"] == "{}" and hangup["client_side"] is True
        assert audio.transcribe(binary(got)) == "Thank you for calling. Goodbye!"
        (slog,) = agent.sessions
        assert [(c["name"], c["response"]) for c in slog.function_calls] == [
            ("get_weather", "sunny"),
            ("end_call", None),
        ]
        assert agent.violations == []


def test_function_call_responses_are_checked() -> None:
    dg = Dg(DeepgramConfig(tts_ms=10))
    dg.say(speech("what is the weather"))
    dg.run(1)
    (call,) = dg.of("FunctionCallRequest")[0]["functions"]
    (warning,) = dg.send({"type": "FunctionCallResponse", "id": "nope", "name": "get_weather", "content": "x"})
    assert warning["type"] == "Warning" and warning["code"] == UNKNOWN_FUNCTION_CALL
    (warning,) = dg.send({"type": "FunctionCallResponse", "id": call["id"], "name": "end_call", "content": "x"})
    assert warning["code"] == UNKNOWN_FUNCTION_CALL and len(dg.log.violations) == 2
    dg.send(
        {"type": "FunctionCallResponse", "id": call["id"], "name": "get_weather", "content": '{"say": "It is dry."}'}
    )
    dg.run(1)
    assert audio.transcribe(dg.output()).endswith("It is dry.")
    (error,) = dg.send({"type": "FunctionCallResponse", "name": "get_weather", "content": "x"})
    assert error["type"] == "Error" and "id" in error["description"] and dg.core.close_request


def test_server_side_functions_are_answered_by_the_server() -> None:
    lookup = {**GET_WEATHER, "endpoint": {"url": "https://tools.example/weather", "method": "post"}}
    dg = Dg(DeepgramConfig(tts_ms=10), first=settings(think={**SETTINGS["agent"]["think"], "functions": [lookup]}))
    dg.say(speech("what is the weather"))
    dg.run(2)
    (call,) = dg.of("FunctionCallRequest")[0]["functions"]
    assert call["client_side"] is False
    (answer,) = dg.of("FunctionCallResponse")
    assert answer == {"type": "FunctionCallResponse", "id": call["id"], "name": "get_weather", "content": "Done."}
    assert audio.transcribe(dg.output()).endswith("The weather is Done.")


def test_history_messages_when_asked_for() -> None:
    s = copy.deepcopy(SETTINGS)
    s["flags"] = {"history": True}
    dg = Dg(DeepgramConfig(tts_ms=10), first=s)
    dg.say(speech("goodbye"))
    dg.run(3)
    (call,) = dg.of("FunctionCallRequest")[0]["functions"]
    dg.send({"type": "FunctionCallResponse", "id": call["id"], "name": "end_call", "content": "ok"})
    history = dg.of("History")
    assert [h.get("role") for h in history] == ["user", "assistant", None]
    assert history[2]["function_calls"][0] == {**call, "response": "ok"}
    assert dg.of("ConversationText")[-1]["content"] == "Thank you for calling. Goodbye!"  # nothing said after end_call


# ---- injections and updates ----------------------------------------------------------------------
def test_inject_agent_message_is_refused_mid_turn() -> None:
    dg = Dg(DeepgramConfig(tts_ms=10))
    dg.send(audio.speak("hello"))  # the caller is mid-turn (until silence_ms of silence)
    (refused,) = dg.send({"type": "InjectAgentMessage", "message": "Are you there?"})
    assert refused["type"] == "InjectionRefused" and "user" in refused["message"]
    dg.send(audio.silence(600))
    dg.run(0.1)
    (refused,) = dg.send({"type": "InjectAgentMessage", "message": "One more thing."})  # the agent is answering
    assert refused["type"] == "InjectionRefused" and "agent" in refused["message"]
    assert dg.log.injections_refused == ["Are you there?", "One more thing."]
    dg.send({"type": "InjectAgentMessage", "message": "Queued line.", "behavior": "queue"})
    dg.run(5)
    assert dg.send({"type": "InjectAgentMessage", "message": "Are you there?"}) == []
    dg.run(5)
    assert [c["content"] for c in dg.of("ConversationText") if c["role"] == "assistant"] == [
        "You said: hello",
        "Queued line.",
        "Are you there?",
    ]
    assert dg.log.violations == []


def test_inject_agent_message_interrupt_replaces_the_answer() -> None:
    dg = Dg(DeepgramConfig(tts_ms=10, in_flight_chunks=0))
    dg.send({"type": "InjectAgentMessage", "message": LONG})
    dg.run(0.5)
    dg.send({"type": "InjectAgentMessage", "message": "Sorry, urgent news.", "behavior": "interrupt"})
    dg.run(5)
    assert len(dg.of("AgentAudioDone")) == 1 and len(dg.of("AgentStartedSpeaking")) == 2
    assert dg.log.spoken[0][0] != LONG and dg.log.spoken[1][0] == "Sorry, urgent news."


def test_inject_user_message_is_answered() -> None:
    dg = Dg(DeepgramConfig(tts_ms=10))
    dg.send({"type": "InjectUserMessage", "content": "The caller pressed keys: 123#"})
    dg.run(2)
    assert audio.transcribe(dg.output()) == "You pressed 1 2 3 #"
    dg.send({"type": "InjectUserMessage", "content": "What is the weather like?"})
    dg.run(2)
    assert dg.of("FunctionCallRequest")[0]["functions"][0]["name"] == "get_weather"
    assert dg.log.turns[0] == ("user", "The caller pressed keys: 123#")


def test_updates_are_acknowledged_and_checked() -> None:
    dg = Dg()
    assert dg.send({"type": "UpdatePrompt", "prompt": "Be terse."}) == [{"type": "PromptUpdated"}]
    assert dg.core.settings["agent"]["think"]["prompt"] == "Be terse." and dg.log.prompt_updates == ["Be terse."]
    speak = {"provider": {"type": "open_ai", "model": "tts-1", "voice": "alloy"}}
    assert dg.send({"type": "UpdateSpeak", "speak": speak}) == [{"type": "SpeakUpdated"}]
    listen = {"provider": {"type": "deepgram", "model": "flux-general-en"}}  # v2 when no v1-only key
    assert dg.send({"type": "UpdateListen", "listen": listen}) == [{"type": "ListenUpdated"}]
    assert dg.send({"type": "UpdateThink", "think": {"provider": {"type": "groq"}}}) == [{"type": "ThinkUpdated"}]
    assert dg.core.settings["agent"]["think"] == {"provider": {"type": "groq"}}  # functions gone with it
    (error,) = dg.send({"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}})
    assert error["code"] == UNPARSABLE and "speak.provider.model" in error["description"]


# ---- limits --------------------------------------------------------------------------------------
async def test_keepalive_holds_an_idle_session_then_silence_times_out() -> None:
    config = DeepgramConfig(idle_timeout_s=0.3)
    async with DeepgramAgent(config) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)
        for _ in range(6):  # 0.6 s, twice the timeout, kept alive
            await asyncio.sleep(0.1)
            await ws.send(json.dumps({"type": "KeepAlive"}))
        (error,) = await receive_all(ws, timeout=2)
        assert isinstance(error, dict) and error["code"] == CLIENT_MESSAGE_TIMEOUT and error["type"] == "Error"
        assert ws.close_code == 1000
        (slog,) = agent.sessions
        await agent.wait_closed(slog, 2)
        assert len(slog.keepalives) == 6 and slog.closed_at is not None
        assert slog.closed_at - slog.keepalives[-1] == pytest.approx(0.3, abs=0.1)  # counted from the last one
        assert any(CLIENT_MESSAGE_TIMEOUT in v for v in agent.violations)


async def test_the_session_ends_at_max_session_s() -> None:
    config = DeepgramConfig(max_session_s=0.4)
    async with DeepgramAgent(config) as agent, connect(agent.url, additional_headers=AUTH) as ws:
        await start_session(ws)

        async def stream() -> None:  # traffic does not extend the session
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.send(audio.silence(20))
                    await asyncio.sleep(0.02)

        streaming = asyncio.create_task(stream())
        (error,) = await receive_all(ws)
        await streaming
        assert isinstance(error, dict) and error["type"] == "Error" and error["code"] == SESSION_LIMIT
        (slog,) = agent.sessions
        await agent.wait_closed(slog, 2)
        (error,) = slog.errors_sent
        assert error["code"] == SESSION_LIMIT and error["type"] == "Error"
        assert slog.closed_at is not None and slog.settings_applied_at is not None
        assert slog.closed_at - slog.settings_applied_at == pytest.approx(0.4, abs=0.15)
        assert slog.close_code == 1000 and agent.violations == []


async def test_fail_and_kill_over_loopback() -> None:
    async with DeepgramAgent() as agent:
        async with connect(agent.url, additional_headers=AUTH) as ws:
            await start_session(ws)
            await agent.fail(agent.sessions[0])
            (error,) = await receive_all(ws)
            assert isinstance(error, dict) and error["code"] == "INTERNAL_SERVER_ERROR"
        async with connect(agent.url, additional_headers=AUTH) as ws:
            await start_session(ws)
            agent.kill(agent.sessions[1])
            assert await receive_all(ws) == []
        await agent.wait_closed(agent.sessions[1], 2)
        assert agent.sessions[1].errors_sent == [] and agent.violations == []


async def test_start_checks_the_config() -> None:
    with pytest.raises(ValueError, match="faster than real time"):
        await DeepgramAgent(DeepgramConfig(chunk_ms=20, chunk_interval_ms=40)).start()
