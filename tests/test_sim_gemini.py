"""The simulated Gemini Live server (BACKENDS §3): the sans-I/O session on a fake clock, the shell over loopback."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.sim import audio
from relay.sim.agent import default_reply
from relay.sim.gemini import (
    GEMINI_PATH,
    GeminiConfig,
    GeminiLive,
    GeminiSession,
    GeminiSessionLog,
    ResumptionState,
)

KEY = {"x-goog-api-key": "sim-key-not-secret"}
INPUT_MIME = "audio/pcm;rate=16000"
SETUP: dict[str, Any] = {
    "model": "models/gemini-3.8-live",
    "generationConfig": {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}},
    },
    "systemInstruction": {"parts": [{"text": "You are the front desk."}]},
    "realtimeInputConfig": {
        "automaticActivityDetection": {"silenceDurationMs": 300},
        "activityHandling": "START_OF_ACTIVITY_INTERRUPTS",
    },
    "inputAudioTranscription": {},
    "outputAudioTranscription": {},
}
END_CALL = {
    "name": "end_call",
    "description": "Hang up after saying goodbye.",
    "parameters": {"type": "OBJECT", "properties": {}},
}
GET_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
FAST = GeminiConfig(think_ms=50, silence_ms=300, transcription_delay_ms=20)


def long_to_hello(transcript: str, history: list[tuple[str, str]]) -> str:
    """A long answer to "hello" (long enough to talk over), the default answer to anything else."""
    return LONG if transcript == "hello" else default_reply(transcript, history)


def setup_with(**changes: Any) -> dict[str, Any]:
    setup = copy.deepcopy(SETUP)
    setup.update(changes)
    return setup


def upsample16(ulaw: bytes, phase: int = 0) -> bytes:
    """The caller's μ-law as relay sends it: PCM16 at 16 kHz, the original samples kept at ``phase``
    and the samples between them interpolated."""
    pcm = audio.ulaw_decode(ulaw).astype(np.int32)
    out = np.empty(2 * len(pcm), dtype=np.int32)
    if phase == 0:
        out[0::2] = pcm
        out[1::2] = (pcm + np.append(pcm[1:], pcm[-1])) // 2
    else:
        out[1::2] = pcm
        out[0::2] = (np.insert(pcm[:-1], 0, pcm[0]) + pcm) // 2
    return out.astype("<i2").tobytes()


def audio_message(pcm: bytes) -> dict[str, Any]:
    return {"realtimeInput": {"audio": {"data": base64.b64encode(pcm).decode(), "mimeType": INPUT_MIME}}}


def caller(text: str, silence_ms: int = 600, phase: int = 0) -> bytes:
    """A caller line and the silence after it, as 16 kHz PCM."""
    return upsample16(audio.speak(text) + audio.silence(silence_ms), phase)


def heard(pcm24: bytes) -> str:
    """What the model's 24 kHz audio says: every third sample is the synthesis' own."""
    return audio.transcribe(audio.ulaw_encode(np.frombuffer(pcm24, dtype="<i2")[::3]))


def content(msg: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = msg.get("serverContent", {})
    return body


def pcm_of(msg: dict[str, Any]) -> bytes:
    return b"".join(
        base64.b64decode(p["inlineData"]["data"]) for p in content(msg).get("modelTurn", {}).get("parts", [])
    )


class Gem:
    """One ``GeminiSession`` on a fake clock: every message it sends is kept with the time it was sent."""

    def __init__(
        self,
        config: GeminiConfig = FAST,
        setup: dict[str, Any] | None = SETUP,
        handles: dict[str, ResumptionState] | None = None,
        index: int = 0,
    ) -> None:
        self.log = GeminiSessionLog(index=index)
        self.core = GeminiSession(config, self.log, handles)
        self.now = 1000.0
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.core.connect(self.now)
        if setup is not None:
            self.send({"setup": setup})

    def send(self, msg: dict[str, Any] | str | bytes) -> None:
        self.core.receive(msg if isinstance(msg, (str, bytes)) else json.dumps(msg), self.now)
        self._collect()

    def _collect(self) -> None:
        self.events += [(self.now, dict(e)) for e in self.core.take_events()]

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while (deadline := self.core.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.core.advance(self.now)
            self._collect()
        self.now = end
        self.core.advance(end)
        self._collect()

    def say(self, pcm: bytes) -> None:
        """The caller's audio, 20 ms at a time in real time, as relay forwards Twilio's frames."""
        for i in range(0, len(pcm), 640):
            self.send(audio_message(pcm[i : i + 640]))
            self.run(0.02)

    def timed(self, key: str) -> list[tuple[float, dict[str, Any]]]:
        """Messages with ``key`` at the top level or in their serverContent."""
        return [(t, e) for t, e in self.events if key in e or key in content(e)]

    def texts(self, key: str) -> str:
        return "".join(content(e)[key]["text"] for _, e in self.timed(key))

    def output(self) -> bytes:
        return b"".join(pcm_of(e) for _, e in self.events)


# ---- one turn -----------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", [0, 1])
def test_a_turn_is_heard_answered_faster_than_real_time_and_completed_when_played(phase: int) -> None:
    g = Gem()
    assert g.events == [(1000.0, {"setupComplete": {}})]
    g.say(caller("hello there friend", phase=phase))
    g.run(6)
    assert g.texts("inputTranscription") == "hello there friend"
    answer = "You said: hello there friend"
    chunks = g.timed("modelTurn")
    for _, e in chunks:
        (part,) = content(e)["modelTurn"]["parts"]
        assert part["inlineData"]["mimeType"] == "audio/pcm;rate=24000"
    sizes = [len(pcm_of(e)) for _, e in chunks]
    assert set(sizes[:-1]) == {40 * 48} and 0 < sizes[-1] <= 40 * 48  # 40 ms of 24 kHz PCM16 each
    times = [t for t, _ in chunks]
    assert np.allclose(np.diff(times), 0.010)  # one every 10 ms: 4x real time
    assert heard(g.output()) == answer
    assert g.texts("outputTranscription") == answer
    duration = sum(sizes) / 48_000
    ((generated, _),) = g.timed("generationComplete")
    ((completed, done),) = g.timed("turnComplete")
    assert generated == pytest.approx(times[-1])
    assert completed == pytest.approx(times[0] + duration, abs=1e-6)  # when it would have finished playing
    assert generated - times[0] < duration / 3
    usage = done["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["responseTokenCount"]
    assert {d["modality"] for d in usage["promptTokensDetails"]} == {"TEXT", "AUDIO"}
    assert usage["responseTokensDetails"] == [{"modality": "AUDIO", "tokenCount": round(duration * 32)}]
    assert g.log.turns == [("user", "hello there friend"), ("model", answer)]
    ((words, start, end),) = g.log.spoken
    assert words == answer and end - start == pytest.approx(duration * 1000, abs=1)
    assert g.log.violations == [] and g.log.interruptions == []


def test_the_answer_begins_think_ms_after_the_callers_silence() -> None:
    g = Gem(GeminiConfig(think_ms=200, silence_ms=500, transcription_delay_ms=20))
    g.say(caller("hello", silence_ms=1000))
    g.run(2)
    speech_end = len(audio.speak("hello")) / 8000  # session seconds (the audio began at session time 0)
    first = g.timed("modelTurn")[0][0] - g.core._session_t0
    # setup's silenceDurationMs (300) wins over the config's 500; the silence is counted in 20 ms frames
    assert first == pytest.approx(speech_end + 0.3 + 0.2, abs=0.045)


def test_transcriptions_are_sent_only_when_setup_asks_for_them() -> None:
    setup = setup_with()
    del setup["inputAudioTranscription"], setup["outputAudioTranscription"]
    g = Gem(setup=setup)
    g.say(caller("hello"))
    g.run(4)
    assert g.timed("inputTranscription") == g.timed("outputTranscription") == []
    assert heard(g.output()) == "You said: hello"


def test_bundled_messages_carry_transcripts_with_their_audio() -> None:
    g = Gem(GeminiConfig(think_ms=50, transcription_delay_ms=20, bundle=True))
    g.say(caller("hello"))
    g.run(4)
    bundled = [e for _, e in g.timed("modelTurn") if "outputTranscription" in content(e)]
    assert "".join(content(e)["outputTranscription"]["text"] for e in bundled) == "You said: hello"
    assert "generationComplete" in content(g.timed("modelTurn")[-1][1])


# ---- barge-in -----------------------------------------------------------------------------------
def test_caller_speech_while_the_answer_plays_interrupts_it() -> None:
    g = Gem(GeminiConfig(think_ms=50, transcription_delay_ms=20, reply=long_to_hello))
    g.say(caller("hello"))
    g.run(1.7)  # the answer is all sent by now; it plays for seconds more
    assert g.timed("generationComplete") and not g.timed("turnComplete")
    g.say(caller("wait", silence_ms=400))
    ((cut, _),) = g.timed("interrupted")
    after = [e for t, e in g.events if t >= cut]
    kinds = [next(iter(content(e) or e)) for e in after]
    assert kinds[:2] == ["interrupted", "turnComplete"]
    g.run(5)
    # the only audio after the cut is the answer to "wait": none of the old answer's words
    new = b"".join(pcm_of(e) for t, e in g.events if t >= cut)
    assert heard(new) == "You said: wait"
    ((at, heard_ms),) = g.log.interruptions
    first = g.timed("modelTurn")[0][0]
    assert heard_ms == pytest.approx((at - first) * 1000, abs=1)
    said = g.log.turns[1]
    assert said[0] == "model" and LONG.startswith(said[1]) and 0 < len(said[1]) < len(LONG)
    assert g.log.turns[2:] == [("user", "wait"), ("model", "You said: wait")]


def test_no_interruption_lets_the_answer_play_out() -> None:
    setup = setup_with(realtimeInputConfig={"activityHandling": "NO_INTERRUPTION"})
    g = Gem(GeminiConfig(think_ms=50, reply=long_to_hello), setup=setup)
    g.say(caller("hello"))
    g.run(0.5)
    g.say(caller("wait"))
    g.run(12)
    assert g.timed("interrupted") == [] and g.log.interruptions == []
    # the model's turn joins the context when it completes, after the line said over it
    assert g.log.turns == [("user", "hello"), ("user", "wait"), ("model", LONG), ("model", "You said: wait")]


def test_with_activity_detection_off_the_client_marks_the_turns() -> None:
    setup = setup_with(realtimeInputConfig={"automaticActivityDetection": {"disabled": True}})
    g = Gem(setup=setup)
    g.send({"realtimeInput": {"activityStart": {}}})
    g.say(caller("hello", silence_ms=1000))
    assert g.timed("modelTurn") == []  # silence alone ends no turn
    g.send({"realtimeInput": {"activityEnd": {}}})
    g.run(4)
    assert heard(g.output()) == "You said: hello" and g.log.violations == []
    automatic = Gem()
    automatic.send({"realtimeInput": {"activityStart": {}}})
    assert automatic.core.close_request is not None and automatic.core.close_request[0] == 1007


# ---- text ---------------------------------------------------------------------------------------
def test_client_content_alone_starts_no_answer_and_the_blank_text_nudge_does() -> None:
    g = Gem()
    say = "Say to the caller now, in these words: Welcome to the front desk"
    g.send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": say}]}], "turnComplete": True}})
    g.run(2)
    assert g.timed("modelTurn") == []  # 3.x: clientContent adds context only (BACKENDS §3.8 pitfall 3)
    g.send({"realtimeInput": {"text": " "}})
    g.run(4)
    assert heard(g.output()) == "Welcome to the front desk"
    assert g.log.turns == [("user", say), ("model", "Welcome to the front desk")]


def test_pressed_keys_are_read_back_and_a_text_line_is_answered() -> None:
    g = Gem()
    g.send({"realtimeInput": {"text": "The caller pressed: 12#"}})
    g.run(4)
    assert heard(g.output()) == "You pressed 1 2 #"
    g.send({"realtime_input": {"text": "what time is it"}})  # snake_case, as the SDK sends it
    g.run(4)
    assert g.log.turns[-1] == ("model", "You said: what time is it")


# ---- tools --------------------------------------------------------------------------------------
def test_a_tool_call_round_trip() -> None:
    g = Gem(setup=setup_with(tools=[{"functionDeclarations": [END_CALL, GET_WEATHER]}]))
    g.say(caller("what is the weather"))
    g.run(4)
    ((t_call, msg),) = g.timed("toolCall")
    (call,) = msg["toolCall"]["functionCalls"]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    assert call["id"].startswith("function-call-")
    assert t_call == g.timed("modelTurn")[0][0]  # NON_BLOCKING on 3.8: with its line's audio
    assert heard(g.output()) == "Let me check the weather."
    g.send({"toolResponse": {"functionResponses": [{"id": "function-call-1", "name": "get_weather", "response": {}}]}})
    g.send({"toolResponse": {"functionResponses": [{"name": "get_weather", "response": {}}]}})
    assert len(g.log.violations) == 2 and all("id" in v for v in g.log.violations)
    before = len(g.events)
    response = {"id": call["id"], "name": "get_weather", "response": {"output": "sunny and warm"}}
    g.send({"toolResponse": {"functionResponses": [response]}})
    g.run(5)
    assert heard(b"".join(pcm_of(e) for _, e in g.events[before:])) == "The weather is sunny and warm"
    (record,) = g.log.tool_calls
    assert record["response"] == {"output": "sunny and warm"} and record["cancelled_at"] is None


def test_goodbye_calls_end_call_with_the_farewell() -> None:
    g = Gem(setup=setup_with(tools=[{"function_declarations": [END_CALL]}]))  # snake_case too
    g.say(caller("thanks goodbye"))
    g.run(5)
    ((_, msg),) = g.timed("toolCall")
    assert msg["toolCall"]["functionCalls"][0]["name"] == "end_call"
    assert heard(g.output()) == FAST.farewell and g.timed("turnComplete")


def test_a_blocking_call_holds_the_answer_and_an_interruption_cancels_it() -> None:
    weather = {**GET_WEATHER, "behavior": "BLOCKING"}
    g = Gem(setup=setup_with(tools=[{"functionDeclarations": [weather]}]))
    g.say(caller("weather please"))
    g.run(2)
    ((_, msg),) = g.timed("toolCall")
    assert g.timed("modelTurn") == [] and g.timed("turnComplete") == []  # waiting for the result
    g.say(caller("never mind"))
    (call_id,) = [c["id"] for c in msg["toolCall"]["functionCalls"]]
    ((_, cancel),) = g.timed("toolCallCancellation")
    assert cancel["toolCallCancellation"]["ids"] == [call_id]
    order = [
        next(iter(content(e) or e)) for _, e in g.events if content(e).keys() - {"inputTranscription"} or not content(e)
    ]
    assert order[order.index("toolCall") + 1 : order.index("toolCall") + 4] == [
        "interrupted",
        "toolCallCancellation",
        "turnComplete",
    ]
    g.send({"toolResponse": {"functionResponses": [{"id": call_id, "name": "get_weather", "response": {}}]}})
    assert g.log.violations == []  # a result racing its cancellation is dropped, not a mistake


# ---- setup and client mistakes (fake clock) ---------------------------------------------------
@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"voice": "Kore"}, 1007, "Unknown name \"voice\" at 'setup': Cannot find field."),
        (
            {"generationConfig": {"responseModalities": ["TEXT", "AUDIO"]}},
            1007,
            "response modalities ['TEXT', 'AUDIO'] are not supported",
        ),
        ({"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}, 1007, "thinking_config is not supported"),
        ({"model": "models/gemini-2.0-flash-live-001"}, 1008, "is not found for API version v1beta"),
        ({"model": "gemini-3.8-live"}, 1008, "is not found"),
        ({"systemInstruction": "You are the front desk."}, 1007, "Invalid value at 'setup.system_instruction'"),
        (
            {
                "tools": [
                    {
                        "functionDeclarations": [
                            {**END_CALL, "parameters": {"type": "OBJECT", "additionalProperties": False}}
                        ]
                    }
                ]
            },
            1007,
            "Unknown name \"additionalProperties\" at 'setup.tools[0].function_declarations[0].parameters'",
        ),
        ({"generationConfig": {"responseModalities": "AUDIO"}}, 1007, "Invalid value at"),
    ],
)
def test_setup_is_parsed_strictly(change: dict[str, Any], code: int, reason: str) -> None:
    g = Gem(setup=setup_with(**change))
    assert g.core.close_request is not None
    assert g.core.close_request[0] == code and reason in g.core.close_request[1]
    assert len(g.log.violations) == 1 and g.events == []


def test_snake_case_setup_is_accepted() -> None:
    setup = {
        "model": "models/gemini-3.1-flash-live-preview",
        "generation_config": {"response_modalities": ["AUDIO"], "thinking_config": {"thinking_budget": 0}},
        "realtime_input_config": {"automatic_activity_detection": {"silence_duration_ms": "300"}},
        "input_audio_transcription": {},
    }
    g = Gem(setup=setup)
    assert g.core.close_request is None and g.events == [(1000.0, {"setupComplete": {}})]
    assert g.core._silence_ms == 300


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (json.dumps(audio_message(b"\0\0")), "The first message must be setup"),
        (b'{"setup": {}}', "Binary frames are not supported"),
        ("{not json", "Invalid JSON payload received"),
        (json.dumps({"setup": SETUP, "clientContent": {}}), "Oneof field 'message_type' is already set"),
        (json.dumps({"config": SETUP}), 'Unknown name "config": Cannot find field.'),
    ],
)
def test_a_bad_first_message_closes_1007(message: str | bytes, reason: str) -> None:
    g = Gem(setup=None)
    g.send(message)
    assert g.core.close_request is not None
    assert g.core.close_request[0] == 1007 and reason in g.core.close_request[1]
    assert len(g.log.violations) == 1


def test_audio_mistakes_are_violations() -> None:
    g = Gem()
    pcm = caller("hello")
    g.send(
        {"realtimeInput": {"audio": {"data": base64.b64encode(pcm[:640]).decode(), "mimeType": "audio/pcm;rate=8000"}}}
    )
    g.send({"realtimeInput": {"audio": {"data": base64.b64encode(pcm[:641]).decode(), "mimeType": INPUT_MIME}}})
    assert len(g.log.violations) == 2 and g.core.close_request is None
    g.send({"realtimeInput": {"mediaChunks": [{"data": "not base64!", "mimeType": INPUT_MIME}]}})
    assert g.core.close_request is not None and "Base64 decoding failed" in g.core.close_request[1]


def test_audio_before_setup_complete_is_dropped_and_recorded() -> None:
    g = Gem(GeminiConfig(setup_delay_ms=200))
    g.send(audio_message(caller("hello")[:640]))
    g.run(0.3)
    assert g.log.audio_before_setup_complete == 1
    assert g.log.violations == ["realtimeInput sent before setupComplete: dropped (wait for setupComplete)"]
    assert [e for _, e in g.events] == [{"setupComplete": {}}]


# ---- limits and resumption (fake clock) -------------------------------------------------------
def test_go_away_comes_a_minute_before_the_connection_limit() -> None:
    g = Gem(GeminiConfig(), setup=setup_with(contextWindowCompression={"slidingWindow": {}}))
    g.run(599.9)
    ((t, msg),) = g.timed("goAway")
    assert msg == {"goAway": {"timeLeft": "60s"}} and t == pytest.approx(1540.0)
    assert g.core.close_request is None
    g.run(0.2)
    assert g.core.close_request == (1000, "connection time limit")


def test_without_compression_the_session_ends_at_15_minutes_across_resumptions() -> None:
    handles: dict[str, ResumptionState] = {}
    setup = setup_with(sessionResumption={})
    g = Gem(setup=setup, handles=handles)
    g.send({"realtimeInput": {"text": "hello"}})
    g.run(5)
    ((_, update),) = g.timed("sessionResumptionUpdate")
    handle = update["sessionResumptionUpdate"]["newHandle"]
    assert update["sessionResumptionUpdate"]["resumable"] is True and handles[handle].turns == g.log.turns
    g.run(595)
    assert g.core.close_request == (1000, "connection time limit")
    g.core.connection_lost()
    again = Gem(setup=None, handles=handles, index=1)
    again.now = g.now
    again.send({"setup": setup_with(sessionResumption={"handle": handle})})
    assert again.log.resumed_from == handle and again.log.turns == g.log.turns
    again.run(299.9)  # the session began 600 s ago: 300 s are left
    assert [m for _, m in again.timed("goAway")] == [{"goAway": {"timeLeft": "60s"}}]
    again.run(0.2)
    assert again.core.close_request == (1000, "session time limit")
    again.core.connection_lost()
    late = Gem(setup=None, handles=handles, index=2)
    late.now = again.now
    late.send({"setup": setup_with(sessionResumption={"handle": handle})})
    assert late.core.close_request == (1007, "Session resumption handle has expired.")
    assert late.log.violations == []


def test_handles_expire_after_their_ttl() -> None:
    handles: dict[str, ResumptionState] = {}
    setup = setup_with(sessionResumption={}, contextWindowCompression={})
    g = Gem(GeminiConfig(think_ms=50, handle_ttl_s=10), setup=setup, handles=handles)
    g.send({"realtimeInput": {"text": "hello"}})
    g.run(5)
    (handle,) = g.log.handles
    g.core.connection_lost()
    resumed = Gem(GeminiConfig(handle_ttl_s=10), setup=None, handles=handles, index=1)
    resumed.now = g.now + 11
    resumed.send({"setup": setup_with(sessionResumption={"handle": handle}, contextWindowCompression={})})
    assert resumed.core.close_request == (1007, "Session resumption handle has expired.")


# ---- over loopback --------------------------------------------------------------------------------
async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def until(ws: ClientConnection, done: Any, timeout: float = 10.0) -> list[tuple[float, dict[str, Any]]]:
    """Read messages (with their arrival time) until ``done(message)``, that one included."""
    loop = asyncio.get_running_loop()
    out = []
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            out.append((loop.time(), msg))
            if done(msg):
                return out


async def open_session(server: GeminiLive, setup: dict[str, Any] = SETUP) -> ClientConnection:
    ws = await connect(server.url, additional_headers=KEY)
    await ws.send(json.dumps({"setup": setup}))
    assert await recv_json(ws) == {"setupComplete": {}}
    return ws


async def send_audio(ws: ClientConnection, pcm: bytes) -> None:
    for i in range(0, len(pcm), 1280):  # 40 ms a message, all at once: the server hears it in real time
        await ws.send(json.dumps(audio_message(pcm[i : i + 1280])))


async def test_handshake_refusals_are_googles() -> None:
    async with GeminiLive(GeminiConfig(api_key="sim-key-not-secret")) as server:
        assert server.url.startswith("ws://127.0.0.1:") and server.url.endswith(GEMINI_PATH)
        refusals = [
            (server.url, {}, 401, "UNAUTHENTICATED"),
            (server.url, {"Authorization": "Bearer sk-test"}, 401, "UNAUTHENTICATED"),
            (server.url + "?key=wrong", {}, 400, "INVALID_ARGUMENT"),
            (server.url.replace("BidiGenerateContent", "Bidi"), KEY, 404, "NOT_FOUND"),
        ]
        for url, headers, status, name in refusals:
            with pytest.raises(InvalidStatus) as exc:
                await connect(url, additional_headers=headers)
            response = exc.value.response
            assert response.status_code == status
            error = json.loads(response.body)["error"]
            assert error["code"] == status and error["status"] == name and error["message"]
        assert [s for s, _ in server.rejected] == [401, 401, 400, 404]
        assert all("?" not in path for _, path in server.rejected)  # the key stays out of the record
        async with connect(server.url + "?key=sim-key-not-secret") as ws:
            await ws.send(json.dumps({"setup": SETUP}))
            assert await recv_json(ws) == {"setupComplete": {}}
        assert server.sessions[0].path == GEMINI_PATH and server.violations == []


async def test_setup_errors_close_the_connection_over_loopback() -> None:
    async with GeminiLive(FAST) as server:
        for setup, code, reason in [
            (setup_with(speech={}), 1007, "Unknown name \"speech\" at 'setup'"),
            (setup_with(generationConfig={"responseModalities": ["TEXT", "AUDIO"]}), 1007, "modalities"),
            (setup_with(model="models/nope"), 1008, "models/nope is not found"),
        ]:
            async with connect(server.url, additional_headers=KEY) as ws:
                await ws.send(json.dumps({"setup": setup}))
                with pytest.raises(ConnectionClosed):
                    await recv_json(ws)
                assert ws.close_code == code and reason in (ws.close_reason or "")
        for slog in server.sessions:
            await server.wait_closed(slog, 2)
        assert [s.close_code for s in server.sessions] == [1007, 1007, 1008]
        assert len(server.violations) == 3


async def test_audio_before_setup_complete_over_loopback() -> None:
    async with GeminiLive(GeminiConfig(setup_delay_ms=300)) as server:
        async with connect(server.url, additional_headers=KEY) as ws:
            await ws.send(json.dumps({"setup": SETUP}))
            await ws.send(json.dumps(audio_message(caller("hi")[:1280])))
            assert await recv_json(ws) == {"setupComplete": {}}
        (slog,) = server.sessions
        await server.wait_closed(slog, 2)
        assert slog.audio_before_setup_complete == 1 and len(server.violations) == 1


async def test_a_whole_turn_over_loopback() -> None:
    async with GeminiLive(FAST) as server:
        ws = await open_session(server)
        async with ws:
            await send_audio(ws, caller("hello there", silence_ms=600, phase=1))
            messages = await until(ws, lambda m: content(m).get("turnComplete"))
        said = "".join(
            content(m)["inputTranscription"]["text"] for _, m in messages if "inputTranscription" in content(m)
        )
        assert said == "hello there"
        chunks = [(t, pcm_of(m)) for t, m in messages if "modelTurn" in content(m)]
        assert heard(b"".join(pcm for _, pcm in chunks)) == "You said: hello there"
        out = "".join(
            content(m)["outputTranscription"]["text"] for _, m in messages if "outputTranscription" in content(m)
        )
        assert out == "You said: hello there"
        (generated,) = [t for t, m in messages if content(m).get("generationComplete")]
        completed, last = messages[-1]
        duration = sum(len(pcm) for _, pcm in chunks) / 48_000
        first = chunks[0][0]
        assert generated - first < duration / 2  # faster than real time
        assert completed - first == pytest.approx(duration, abs=0.15)  # turnComplete when played
        assert last["usageMetadata"]["responseTokenCount"] > 0
        (slog,) = server.sessions
        assert slog.turns == [("user", "hello there"), ("model", "You said: hello there")]
        assert server.violations == []
        # Gemini's messages carry no type: the log names them by their fields
        names = [name for _, name in slog.sent]
        assert names[0] == "setupComplete" and names[-1] == "serverContent.turnComplete+usageMetadata"
        assert {
            "serverContent.modelTurn",
            "serverContent.inputTranscription",
            "serverContent.generationComplete",
        } <= set(names)
        assert ("realtimeInput.audio" in {name for _, name in slog.received}) and slog.received[0][1] == "setup"


async def test_barge_in_over_loopback() -> None:
    async with GeminiLive(GeminiConfig(think_ms=50, silence_ms=300, reply=long_to_hello)) as server:
        ws = await open_session(server)
        async with ws:
            await send_audio(ws, caller("hello", silence_ms=400))
            await until(ws, lambda m: "modelTurn" in content(m))
            await asyncio.sleep(0.4)
            await send_audio(ws, caller("stop", silence_ms=400))
            messages = await until(ws, lambda m: content(m).get("interrupted"))
            assert messages[-1][1] == {"serverContent": {"interrupted": True}}
            rest = await until(ws, lambda m: content(m).get("turnComplete"))
            assert [m for _, m in rest if "modelTurn" in content(m)] == []  # none of the old answer after the cut
            answer = await until(ws, lambda m: content(m).get("turnComplete"))
        assert heard(b"".join(pcm_of(m) for _, m in answer)) == "You said: stop"
        (slog,) = server.sessions
        ((_, heard_ms),) = slog.interruptions
        assert 300 <= heard_ms < 2000
        assert slog.turns[1][0] == "model" and LONG.startswith(slog.turns[1][1]) and slog.turns[1][1] != LONG


async def test_tool_call_round_trip_over_loopback() -> None:
    async with GeminiLive(FAST) as server:
        ws = await open_session(server, setup_with(tools=[{"functionDeclarations": [GET_WEATHER, END_CALL]}]))
        async with ws:
            await send_audio(ws, caller("weather today", silence_ms=400))
            messages = await until(ws, lambda m: "toolCall" in m)
            (call,) = messages[-1][1]["toolCall"]["functionCalls"]
            await until(ws, lambda m: content(m).get("turnComplete"))
            response = {"id": call["id"], "name": call["name"], "response": {"output": "rainy"}}
            await ws.send(json.dumps({"tool_response": {"function_responses": [response]}}))
            answer = await until(ws, lambda m: content(m).get("turnComplete"))
        assert heard(b"".join(pcm_of(m) for _, m in answer)) == "The weather is rainy"
        assert server.violations == []


async def test_go_away_then_resume_with_the_handle_over_loopback() -> None:
    config = GeminiConfig(think_ms=50, connection_s=2.0, go_away_lead_s=1.0)
    async with GeminiLive(config) as server:
        ws = await open_session(server, setup_with(sessionResumption={}))
        async with ws:
            await ws.send(json.dumps({"realtimeInput": {"text": "Say to the caller now, in these words: Hi"}}))
            handles, go_away = [], None
            with pytest.raises(ConnectionClosed):
                while True:
                    msg = await recv_json(ws)
                    if "sessionResumptionUpdate" in msg:
                        handles.append(msg["sessionResumptionUpdate"]["newHandle"])
                    go_away = msg.get("goAway", go_away)
            assert ws.close_code == 1000 and ws.close_reason == "connection time limit"
        assert go_away == {"timeLeft": "1s"} and len(handles) == 1
        first = server.sessions[0]
        ws = await open_session(server, setup_with(sessionResumption={"handle": handles[0]}))
        async with ws:
            second = server.sessions[1]
            assert second.resumed_from == handles[0] and second.turns == first.turns
            assert first.turns == [("user", "Say to the caller now, in these words: Hi"), ("model", "Hi")]
            server.go_away(second, 0.3)  # the shell's fault: goAway now, the close 0.3 s later
            assert await recv_json(ws) == {"goAway": {"timeLeft": "0.300s"}}
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1000
        async with connect(server.url, additional_headers=KEY) as ws:
            await ws.send(json.dumps({"setup": setup_with(sessionResumption={"handle": "no-such-handle"})}))
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1007 and ws.close_reason == "Session resumption handle is invalid."
        assert server.violations == ["session 2: close 1007: Session resumption handle is invalid."]


async def test_close_with_and_kill_over_loopback() -> None:
    async with GeminiLive(FAST) as server:
        ws = await open_session(server)
        async with ws:
            await server.close_with(server.sessions[0], 1011, "Internal error occurred.")
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1011
        ws = await open_session(server)
        async with ws:
            server.kill(server.sessions[1])
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
        await server.wait_closed(server.sessions[1], 2)
        assert server.violations == []
