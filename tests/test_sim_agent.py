"""The simulated OpenAI Realtime (GA) server, driven over real loopback WebSockets."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.sim.agent import AgentConfig, RealtimeAgent, RealtimeSession, SessionLog
from relay.sim.audio import FRAME_BYTES, silence, speak, transcribe

AUTH = {"Authorization": "Bearer sk-test"}
FAST = AgentConfig(think_ms=20, chunk_ms=(40, 120), realtime_factor=50.0, transcription_delay_ms=30)
PCMU_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
            },
            "output": {"format": {"type": "audio/pcmu"}},
        },
    },
}


@pytest.fixture
async def agent():
    a = RealtimeAgent(FAST)
    await a.start()
    yield a
    await a.stop()


async def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(event))


async def recv(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(ws: ClientConnection, kind: str, timeout: float = 5.0) -> tuple[dict[str, Any], list[dict]]:
    """Read events until one of type ``kind``; return it and everything read before it."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await recv(ws, timeout)
            if event["type"] == kind:
                return event, seen
            seen.append(event)


async def append(ws: ClientConnection, data: bytes) -> None:
    for i in range(0, len(data), FRAME_BYTES):
        await send(
            ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i : i + FRAME_BYTES]).decode()}
        )


def model_url(agent: RealtimeAgent, model: str = "gpt-realtime-2.1") -> str:
    """The agent's endpoint for one model (the client names it in the query, as relay does)."""
    return f"{agent.url}?model={model}"


async def configured(agent: RealtimeAgent, update: dict[str, Any] = PCMU_UPDATE) -> ClientConnection:
    ws = await connect(model_url(agent), additional_headers=AUTH)
    assert (await recv(ws))["type"] == "session.created"
    await send(ws, update)
    assert (await until(ws, "session.updated"))[0]["session"]["audio"]["input"]["format"]["type"] == "audio/pcmu"
    return ws


async def run_turn(ws: ClientConnection, text: str) -> tuple[list[dict], dict[str, Any]]:
    """Speak ``text`` and collect every event until response.done."""
    await append(ws, silence(300) + speak(text) + silence(800))
    done, events = await until(ws, "response.done")
    return events, done


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")


# ---- handshake ---------------------------------------------------------------------------------
async def test_handshake_rejections(agent: RealtimeAgent) -> None:
    with pytest.raises(InvalidStatus) as exc:
        await connect(model_url(agent))
    assert exc.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as exc:
        await connect(model_url(agent), additional_headers={"Authorization": "Bearer "})
    assert exc.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as exc:
        await connect(model_url(agent).replace("/v1/realtime", "/v1/chat"), additional_headers=AUTH)
    assert exc.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as exc:
        await connect(agent.url, additional_headers=AUTH)
    assert exc.value.response.status_code == 400
    assert [s for s, _ in agent.rejected] == [401, 401, 404, 400]
    assert agent.sessions == []


async def test_beta_header_is_refused_with_4000(agent: RealtimeAgent) -> None:
    async with connect(model_url(agent), additional_headers={**AUTH, "OpenAI-Beta": "realtime=v1"}) as ws:
        event = await recv(ws)
        assert event["type"] == "error"
        assert event["error"]["code"] == "beta_api_shape_disabled"
        assert event["error"]["message"] == (
            "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
        )
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4000
    await agent.wait_closed(agent.sessions[0], 2)
    assert agent.sessions[0].close_code == 4000
    assert agent.violations and "beta_api_shape_disabled" in agent.violations[0]


async def test_beta_session_update_is_refused_with_4000(agent: RealtimeAgent) -> None:
    async with connect(model_url(agent), additional_headers=AUTH) as ws:
        await recv(ws)
        await send(ws, {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
        assert (await recv(ws))["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4000


# ---- session -------------------------------------------------------------------------------------
async def test_session_created_shape(agent: RealtimeAgent) -> None:
    async with connect(model_url(agent), additional_headers=AUTH) as ws:
        event = await recv(ws)
    assert event["type"] == "session.created" and event["event_id"].startswith("event_")
    s = event["session"]
    assert s["object"] == "realtime.session" and s["type"] == "realtime" and s["id"].startswith("sess_")
    assert s["model"] == "gpt-realtime-2.1"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["audio"]["input"]["transcription"] is None
    td = s["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad" and td["threshold"] == 0.5 and td["prefix_padding_ms"] == 300
    assert td["create_response"] is True and td["interrupt_response"] is True


async def test_session_update_merges(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    s = agent.sessions[0].session_config
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0}
    td = s["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 300 and td["threshold"] == 0.5 and td["prefix_padding_ms"] == 300
    assert agent.sessions[0].session_updated_at is not None
    # an invalid update is rejected and changes nothing
    await send(
        ws,
        {
            "type": "session.update",
            "event_id": "ev1",
            "session": {"type": "realtime", "audio": {"output": {"voice": "nova"}}},
        },
    )
    err = await recv(ws)
    assert err["type"] == "error" and err["error"]["param"] == "session.audio.output.voice"
    assert err["error"]["event_id"] == "ev1"
    await send(ws, {"type": "session.update", "session": {"audio": {}}})
    assert (await recv(ws))["error"]["param"] == "session.type"
    await send(ws, {"type": "session.update", "session": {"type": "realtime", "reasoning": {"effort": "none"}}})
    assert (await recv(ws))["error"]["param"] == "session.reasoning.effort"  # GPT-Live has none; Realtime not
    await send(ws, {"type": "session.update", "session": {"type": "realtime", "reasoning": {"effort": "medium"}}})
    assert (await recv(ws))["type"] == "session.updated" and s["reasoning"] == {"effort": "medium"}
    assert s["audio"]["output"]["voice"] == "marin"
    assert len(agent.sessions[0].violations) == 3
    await ws.close()


async def test_append_before_session_updated_is_a_violation() -> None:
    async with RealtimeAgent(AgentConfig(session_updated_delay_ms=200)) as agent:
        async with connect(model_url(agent), additional_headers=AUTH) as ws:
            await recv(ws)
            await send(ws, PCMU_UPDATE)
            await append(ws, silence(40))  # two frames, sent before session.updated arrives
            await until(ws, "session.updated")
            await append(ws, silence(20))
            # The server handles a connection's messages in order: once this update is
            # answered, the append before it has been counted.
            await send(ws, PCMU_UPDATE)
            await until(ws, "session.updated")
        slog = agent.sessions[0]
        assert slog.appends == 3 and slog.appends_before_session_updated == 2
        assert slog.first_append_at < slog.session_updated_at
        assert agent.violations.count("session 0: audio appended before session.updated confirmed audio/pcmu") == 2


# ---- a full turn ---------------------------------------------------------------------------------
async def test_vad_turn_transcription_and_response(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    events, done = await run_turn(ws, "book a table for two")
    kinds = [e["type"] for e in events]
    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    committed = events[kinds.index("input_audio_buffer.committed")]
    assert started["audio_start_ms"] == 0  # onset at ~300 ms minus 300 ms prefix padding
    assert 1500 < stopped["audio_end_ms"] < 2500
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert (
        kinds.index("input_audio_buffer.speech_stopped")
        < kinds.index("input_audio_buffer.committed")
        < kinds.index("response.created")
        < kinds.index("response.output_audio.delta")
    )
    for kind in (
        "conversation.item.added",
        "conversation.item.done",
        "rate_limits.updated",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds, kind
    assert transcribe(audio_of(events)) == "You said: book a table for two"
    t_done = events[kinds.index("response.output_audio_transcript.done")]
    assert t_done["transcript"] == "You said: book a table for two"
    assert (
        "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
        == t_done["transcript"]
    )
    assert done["response"]["status"] == "completed" and done["response"]["id"].startswith("resp_")
    assert done["response"]["output"][0]["status"] == "completed"
    if "conversation.item.input_audio_transcription.completed" in kinds:
        tr = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    else:
        tr, _ = await until(ws, "conversation.item.input_audio_transcription.completed")
    assert tr["transcript"] == "book a table for two" and tr["item_id"] == committed["item_id"]
    assert tr["content_index"] == 0 and tr["usage"]["type"] == "duration"
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    await ws.close()
    slog = agent.sessions[0]
    assert slog.turns == [("user", "book a table for two"), ("assistant", "You said: book a table for two")]
    assert slog.violations == []


async def test_truncate_past_produced_audio_is_rejected(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    events, done = await run_turn(ws, "book a table for two")
    item_id = done["response"]["output"][0]["id"]
    produced = len(audio_of(events)) // 8
    await send(
        ws,
        {
            "type": "conversation.item.truncate",
            "event_id": "ev_t1",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": produced + 60,
        },
    )
    err, _ = await until(ws, "error")
    assert err["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "param": "audio_end_ms",
        "event_id": "ev_t1",
        "message": f"Audio content of {produced}ms is already shorter than {produced + 60}ms",
    }
    half = produced // 2
    await send(ws, {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": half})
    ok, _ = await until(ws, "conversation.item.truncated")
    assert (ok["item_id"], ok["content_index"], ok["audio_end_ms"]) == (item_id, 0, half)
    # the item is now only `half` ms long
    await send(
        ws, {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": half + 1}
    )
    err2, _ = await until(ws, "error")
    assert err2["error"]["message"] == f"Audio content of {half}ms is already shorter than {half + 1}ms"
    await ws.close()
    slog = agent.sessions[0]
    assert slog.truncates == [{"item_id": item_id, "content_index": 0, "audio_end_ms": half}]
    assert len(slog.violations) == 2
    kept = slog.turns[-1]
    assert kept[0] == "assistant" and kept[1] == "You said: book"  # the first three words, half the answer


async def test_response_cancel_without_response_is_harmless(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    await send(ws, {"type": "response.cancel"})
    err = await recv(ws)
    assert err["type"] == "error" and err["error"]["code"] == "response_cancel_not_active"
    await ws.close()
    assert agent.violations == [] and len(agent.sessions[0].errors_sent) == 1


async def test_barge_in_cancels_with_turn_detected() -> None:
    config = AgentConfig(think_ms=10, chunk_ms=(40, 40), realtime_factor=1.0, transcription_delay_ms=10)
    async with RealtimeAgent(config) as agent:
        ws = await configured(agent)
        await append(ws, silence(300) + speak("book a table for two") + silence(800))
        deltas = [(await until(ws, "response.output_audio.delta"))[0] for _ in range(3)]  # well under way
        await append(ws, speak("wait") + silence(100))
        _started, before = await until(ws, "input_audio_buffer.speech_started")
        done, events = await until(ws, "response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert done["response"]["output"][0]["status"] == "incomplete"
        kinds = [e["type"] for e in events]
        assert kinds[:5] == [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
        ]
        produced = len(b"".join(base64.b64decode(d["delta"]) for d in deltas) + audio_of(before)) // 8
        assert 100 <= produced < 1500  # stopped well before the ~2.5 s reply ended
        await ws.close()
        assert agent.violations == []


async def test_response_create_and_active_response(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    await send(ws, {"type": "response.create", "response": {"instructions": "Welcome to the bistro"}})
    await send(ws, {"type": "response.create"})
    err, _ = await until(ws, "error")
    assert err["error"]["code"] == "conversation_already_has_active_response"
    _done, events = await until(ws, "response.done")
    assert transcribe(audio_of(events)) == "Welcome to the bistro"
    await send(ws, {"type": "response.cancel"})
    assert (await until(ws, "error"))[0]["error"]["code"] == "response_cancel_not_active"
    await ws.close()
    assert len(agent.sessions[0].violations) == 1


async def test_unknown_event_and_bad_input(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    await send(ws, {"type": "response.audio.delta", "event_id": "x1"})
    err = await recv(ws)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["code"] == "invalid_event" and err["error"]["event_id"] == "x1"
    await ws.send("{not json")
    assert (await recv(ws))["error"]["code"] == "invalid_json"
    await send(ws, {"type": "input_audio_buffer.append", "audio": "@@@"})
    assert (await recv(ws))["error"]["param"] == "audio"
    await ws.close()
    assert len(agent.sessions[0].violations) == 3


async def test_client_close_is_recorded(agent: RealtimeAgent) -> None:
    ws = await configured(agent)
    await ws.close()
    slog = agent.sessions[0]
    await agent.wait_closed(slog, 2)
    assert slog.closed_at is not None and slog.closed_at >= slog.opened_at and slog.close_code == 1000
    with pytest.raises(TimeoutError):
        await agent.wait_closed(SessionLog(), 0.01)


def test_sans_io_core_is_deterministic() -> None:
    def run() -> list[dict[str, Any]]:
        core = RealtimeSession(AgentConfig(seed=7), SessionLog())
        core.connect(0.0)
        core.receive(json.dumps({"type": "response.create"}), 0.0)
        core.advance(100.0)
        return core.take_events()

    a, b = run(), run()
    for event in a + b:
        event.get("session", {}).pop("expires_at", None)
    assert a == b and a[-1]["type"] == "response.done"
    pcm_bytes = sum(len(base64.b64decode(e["delta"])) for e in a if e["type"] == "response.output_audio.delta")
    assert pcm_bytes % 48 == 0  # default output is 24 kHz PCM16: 48 bytes per ms


async def test_truncate_while_generating_stops_audio_and_voice_is_locked() -> None:
    config = AgentConfig(think_ms=10, chunk_ms=(40, 40), realtime_factor=1.0)
    async with RealtimeAgent(config) as agent:
        ws = await configured(agent)
        other = await configured(agent)  # a second, well-behaved session on the same agent
        await send(ws, {"type": "response.create", "response": {"instructions": "one two three four five six"}})
        first, _ = await until(ws, "response.output_audio.delta")
        await send(
            ws,
            {"type": "conversation.item.truncate", "item_id": first["item_id"], "content_index": 0, "audio_end_ms": 20},
        )
        ok, _ = await until(ws, "conversation.item.truncated")
        assert ok["audio_end_ms"] == 20
        done, _ = await until(ws, "response.done")
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        await send(
            ws, {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}}
        )
        assert (await until(ws, "error"))[0]["error"]["code"] == "cannot_update_voice"
        await send(ws, {"type": "bogus"})
        await until(ws, "error")
        await send(other, {"type": "response.create"})
        other_done, other_events = await until(other, "response.done")
        assert other_done["response"]["status"] == "completed"
        assert transcribe(audio_of(other_events)) == "Hello, how can I help you?"
        await ws.close()
        await other.close()
        assert len(agent.sessions[0].violations) == 2 and agent.sessions[1].violations == []
        assert agent.sessions[0].turns == []  # 20 ms of "one two ..." keeps no whole word


def _session_with_tools(tools: list[dict[str, Any]]) -> tuple[RealtimeSession, SessionLog]:
    slog = SessionLog()
    core = RealtimeSession(AgentConfig(think_ms=0, realtime_factor=1000.0, transcription_delay_ms=0), slog)
    core.connect(0.0)
    update = json.loads(json.dumps(PCMU_UPDATE))
    update["session"]["tools"] = tools
    core.receive(json.dumps(update), 0.0)
    return core, slog


END_CALL = {
    "type": "function",
    "name": "end_call",
    "description": "Hang up.",
    "parameters": {"type": "object", "properties": {}, "required": []},
}


def test_a_goodbye_gets_the_farewell_then_an_end_call_tool_call() -> None:
    core, slog = _session_with_tools([END_CALL])
    core.take_events()
    t = 0.0
    for i in range(0, len(speech := speak("Thanks, goodbye.") + silence(800)), FRAME_BYTES):
        core.receive(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(speech[i : i + FRAME_BYTES]).decode()}
            ),
            t,
        )
        t += 0.02
    for _ in range(2000):
        t += 0.01
        core.advance(t)
    events = core.take_events()
    kinds = [e["type"] for e in events]
    audio_bytes = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert transcribe(audio_bytes) == AgentConfig().farewell
    # The GA function-call lifecycle, after the audio, in the same response (output_index 1).
    call_events = [e for e in events if e["type"].startswith("response.function_call_arguments")]
    assert [e["type"] for e in call_events] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    done = call_events[-1]
    assert done["name"] == "end_call" and done["arguments"] == "{}" and done["output_index"] == 1
    assert kinds.index("response.output_audio.done") < kinds.index("response.function_call_arguments.done")
    [response_done] = [e for e in events if e["type"] == "response.done"]
    output = response_done["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert output[1]["name"] == "end_call" and output[1]["call_id"] == done["call_id"]
    assert slog.violations == []


def test_without_the_tool_a_goodbye_is_just_a_line() -> None:
    core, _slog = _session_with_tools([])
    assert core._wants_hangup("Thanks, goodbye.") is False


def test_a_malformed_tool_is_refused() -> None:
    core, _slog = _session_with_tools([{"type": "function"}])
    [error] = [e for e in core.take_events() if e["type"] == "error"]
    assert error["error"]["param"] == "session.tools[0]"


def test_say_exactly_makes_the_agent_say_that_line() -> None:
    core, _slog = _session_with_tools([])
    core.take_events()
    core.receive(
        json.dumps(
            {
                "type": "response.create",
                "response": {
                    "instructions": "Say exactly the following to the caller, and nothing else: Hello and welcome."
                },
            }
        ),
        0.0,
    )
    for k in range(1, 2000):
        core.advance(k * 0.01)
    events = core.take_events()
    audio_bytes = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert transcribe(audio_bytes) == "Hello and welcome."
