"""The compiled per-frame core (``WsCore``, ``MediaCore``) equals its Python twin, call for call.

Each example is one call driven through the whole per-frame stack twice: bytes from Twilio and
from the backend into each leg's ``WsCore.data_received`` (routed to the conversation, as a
session routes it), the messages the legs leave to ``recv`` handed to the conversation the way
the session's pumps hand them, the shared clock's ticks, marks echoed back from what was
written. Once on the compiled cores, once on the twins (``relay._wscore_py``,
``relay._media_py``); every byte written to either socket, every record submitted, every
counter and the state of every answer must be the same. Masking keys come from a patched
``os.urandom``, so the client frames compare byte for byte.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _fastpath_py as ref
from relay import _media_py, _wscore_py, twilio
from relay.backends import WIRES, realtime
from relay.call_options import CallOptions
from relay.conversation import AssistantTurn, Conversation

fast = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")

START = twilio.Start(
    stream_sid="MZ" + "5" * 32,
    call_sid="CA" + "7" * 32,
    account_sid="AC" + "1" * 32,
    tracks=("inbound",),
    encoding="audio/x-mulaw",
    sample_rate=8000,
    channels=1,
)
UPDATED = {
    "type": "session.updated",
    "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}},
}
ITEMS = ("item_a", "item_b", "it\u00e9m_c")
RESPONSES = ("resp_1", "resp_2", None)  # None: a delta naming no response


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


def _leg_class(core: type) -> type:
    class Leg(core):  # type: ignore[misc, valid-type]
        """The hooks ``relay.ws.Connection`` gives a core, recorded."""

        __slots__ = ("events",)

        def _violation(self, kind: str, reason: str, code: int) -> None:
            self.events.append(("violation", kind, code))
            self.state = "closing"

        def _on_close_frame(self, payload: bytes) -> None:
            self.events.append(("close", payload))
            self.state = "closing"

        def _wake(self) -> None:
            self.events.append(("wake",))

    return Leg


LEGS = {"compiled": _leg_class(fast.WsCore), "twin": _leg_class(_wscore_py.WsCore)}
CORES = {"compiled": fast.MediaCore, "twin": _media_py.MediaCore}


class Keys:
    """A deterministic ``os.urandom`` (masking keys), restarted for each run."""

    def __init__(self) -> None:
        self.rng = random.Random(7)

    def __call__(self, n: int) -> bytes:
        return self.rng.randbytes(n)


def _drop_wall_clock(value: Any) -> Any:
    if isinstance(value, AssistantTurn):  # its audio's counts are the core's: compared in its state
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name != "audio"}
        fields.update(produced=value.produced, interrupted=value.interrupted, heard_ms=value.heard_ms)
    else:
        fields = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)
    return type(value).__name__, {
        k: v for k, v in fields.items() if k not in ("started_at", "ended_at", "interrupted_at")
    }


def run(
    impl: str,
    steps: list[tuple[Any, ...]],
    options: CallOptions,
    monkeypatch: pytest.MonkeyPatch,
    backend: str = "openai-realtime",
) -> Any:
    monkeypatch.setattr(os, "urandom", Keys())
    now = [0.0]
    records: list[Any] = []
    twilio_t, backend_t = Transport(), Transport()
    Leg = LEGS[impl]
    twilio_leg = Leg(twilio_t, False, 1 << 20, 0, lambda: now[0])
    backend_leg = Leg(backend_t, True, 1 << 20, 0, lambda: now[0])
    twilio_leg.events, backend_leg.events = [], []
    live = backend == "openai-live"
    agent = realtime.AgentProfile(instructions="x", backend=backend, model=MODELS[backend])
    call = Conversation(START, agent, twilio_leg, records.append, options, core=CORES[impl])
    backend_leg.wire = WIRES[backend]  # as the server opens the backend's connection
    call.attach_backend(backend_leg)
    twilio_leg.route(call.media, 0)
    backend_leg.route(call.media, 1)
    outcome: list[Any] = []

    def pump() -> None:
        # What the session's pumps do with the messages a leg left to ``recv``.
        for leg, handle in ((twilio_leg, call.twilio_message), (backend_leg, call.backend_message)):
            while leg.messages:
                message = leg.messages.popleft()
                try:
                    outcome.append(("slow", handle(message, now[0])))
                except Exception as exc:  # noqa: BLE001 - the class is what we compare
                    outcome.append(("raise", type(exc).__name__))

    ts = 0
    for step in steps:
        kind = step[0]
        now[0] += step[-1] / 1000
        if kind == "media":
            _, jump, size, split, _ = step
            ts = max(0, ts + jump)
            payload = base64.b64encode(bytes(range(size % 256)) * (size // 256 + 1))[: 4 * ((size + 2) // 3)]
            message = (
                b'{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2",'
                b'"timestamp":"%d","payload":"%s"},"streamSid":"%s"}' % (ts, payload, START.stream_sid.encode())
            )
            data = ref.build_frame(ref.OP_TEXT, message, b"k3y!")
            if split:
                twilio_leg.data_received(data[: split % len(data)])
                twilio_leg.data_received(data[split % len(data) :])
            else:
                twilio_leg.data_received(data)
        elif kind == "delta":
            _, item, size, bad, *response, _ = step  # (the response: resp_1 unless given)
            delta = base64.b64encode(bytes((i * 7) & 0xFF for i in range(size)))
            if bad and delta:
                delta = delta[:-1] + b"*"
            event = {
                "type": "response.output_audio.delta",
                "response_id": RESPONSES[response[0] if response else 0],
                "item_id": ITEMS[item],
                "output_index": 0,
                "content_index": 0,
                "delta": delta.decode(),
            }
            if event["response_id"] is None:
                del event["response_id"]
            if live:  # GPT-Live: one stream of audio, no items
                event = {"type": "session.output_audio.delta", "event_id": "evt_1", "delta": delta.decode()}
            if backend == "gemini-live":  # PCM16 at 24 kHz, no items (an odd size: not whole samples)
                inline = {"mimeType": "audio/pcm;rate=24000", "data": delta.decode()}
                event = {"serverContent": {"modelTurn": {"parts": [{"inlineData": inline}]}}}
            if backend == "deepgram":  # raw μ-law in a binary frame
                raw = bytes((i * 7) & 0xFF for i in range(size))
                backend_leg.data_received(ref.build_frame(ref.OP_BINARY, raw))
            else:
                backend_leg.data_received(ref.build_frame(ref.OP_TEXT, orjson.dumps(event)))
        elif kind == "event":
            _, event, item, _ = step
            payload = dict(event)
            if "item_id" in payload:
                payload["item_id"] = ITEMS[item]
            backend_leg.data_received(ref.build_frame(ref.OP_TEXT, orjson.dumps(payload)))
        elif kind == "mark":
            _, pick, _ = step
            names = [
                orjson.loads(frame[1])["mark"]["name"]
                for frame in _frames(twilio_t.writes)
                if b'"event":"mark"' in frame[1]
            ]
            name = names[pick % len(names)] if names else "nothing:0"
            message = orjson.dumps(
                {"event": "mark", "streamSid": START.stream_sid, "sequenceNumber": "9", "mark": {"name": name}}
            )
            twilio_leg.data_received(ref.build_frame(ref.OP_TEXT, message, b"m4sk"))
        elif kind == "dtmf":
            _, digit, _ = step
            message = orjson.dumps(
                {
                    "event": "dtmf",
                    "streamSid": START.stream_sid,
                    "sequenceNumber": "5",
                    "dtmf": {"track": "inbound_track", "digit": digit},
                }
            )
            twilio_leg.data_received(ref.build_frame(ref.OP_TEXT, message, b"dtmf"))
        elif kind == "tick":
            outcome.append(("tick", call.tick(now[0]), call.media.tick(now[0])))
        elif kind == "raw":
            _, leg, data, _ = step
            (twilio_leg if leg else backend_leg).data_received(data)
        pump()
    stats = dataclasses.asdict(call.stats)
    answers = [_drop_wall_clock(turn) for turn in call._assistants.values()]
    return {
        "twilio writes": twilio_t.writes,
        "backend writes": backend_t.writes,
        "twilio events": twilio_leg.events,
        "backend events": backend_leg.events,
        "outcome": outcome,
        "records": [_drop_wall_clock(r) for r in records],
        "stats": stats,
        "answers": answers,
        **call.media.state(),
    }


def _frames_masked(result: dict[str, Any]) -> list[tuple[int, bytes]]:
    """What relay sent the backend (client frames, masked)."""
    reader = ref.FrameReader(True, 1 << 20)
    reader.feed(b"".join(result["backend writes"]))
    out = []
    while (frame := reader.read()) is not None:
        out.append(frame)
    return out


def _frames(writes: list[bytes]) -> list[tuple[int, bytes]]:
    reader = ref.FrameReader(False, 1 << 20)
    reader.feed(b"".join(writes))
    out = []
    while (frame := reader.read()) is not None:
        out.append(frame)
    return out


STARTED = {
    "type": "session.started",
    "event_id": "evt_s",
    "session": {
        "id": "sess_1",
        "expires_at": 4_000_000_000,
        "model": "gpt-live-1",
        "status": "active",
        "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}},
    },
}
# GPT-Live's events (a Realtime call ignores them, as a GPT-Live call ignores Realtime's).
LIVE_EVENTS = [
    STARTED,
    {"type": "session.output_transcript.delta", "event_id": "e1", "delta": "One", "start_ms": 0, "end_ms": 300},
    {"type": "session.output_transcript.delta", "event_id": "e2", "delta": " two", "start_ms": 350, "end_ms": 700},
    {"type": "session.output_transcript.delta", "event_id": "e3", "delta": " three", "start_ms": 2900, "end_ms": 3300},
    {"type": "session.input_transcript.delta", "event_id": "e4", "delta": "Wait", "start_ms": 500, "end_ms": 800},
    {"type": "session.usage.updated", "event_id": "e5", "usage": {"seconds": 3.5}},
    {
        "type": "response.event",
        "event_id": "e6",
        "delegation_id": "dlg_1",
        "event": {
            "type": "response.output_item.done",
            "item": {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        },
    },
    {
        "type": "response.event",
        "event_id": "e7",
        "delegation_id": "dlg_1",
        "event": {"type": "response.completed", "response": {"id": "resp_9", "status": "completed"}},
    },
]

EVENTS = [
    UPDATED,
    {"type": "response.created", "response": {"id": "resp_1"}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": "x"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "x"},
    {"type": "input_audio_buffer.committed", "item_id": "user_1"},
    {"type": "response.output_item.added", "item": {"type": "message", "role": "assistant", "id": "item_a"}},
    {"type": "response.output_audio.done", "item_id": "x"},
    {"type": "response.output_audio_transcript.done", "item_id": "x", "transcript": "one two three four"},
    {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": []}},
    {
        "type": "response.done",
        "response": {"id": "resp_1", "status": "completed", "output": [{"type": "message", "id": "item_a"}]},
    },
    {
        "type": "response.done",
        "response": {"id": "resp_2", "status": "cancelled", "output": [{"type": "message", "id": "item_b"}]},
    },
]

# Gemini Live's and Deepgram's (each backend ignores the others' events).
GEMINI_EVENTS = [
    {"setupComplete": {}},
    {"serverContent": {"inputTranscription": {"text": "Wait a"}}},
    {"serverContent": {"outputTranscription": {"text": "One two"}}},
    {"serverContent": {"interrupted": True}},
    {"serverContent": {"generationComplete": True}},
    {"serverContent": {"turnComplete": True}, "usageMetadata": {"promptTokenCount": 40, "responseTokenCount": 90}},
    {"toolCall": {"functionCalls": [{"id": "fc_1", "name": "lookup", "args": {}}]}},
    {"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}},
    {
        "serverContent": {
            "interrupted": True,
            "modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAABAAIA"}}]},
        }
    },
]
DEEPGRAM_EVENTS = [
    {"type": "Welcome", "request_id": "r1"},
    {"type": "SettingsApplied"},
    {"type": "UserStartedSpeaking"},
    {"type": "ConversationText", "role": "user", "content": "Hello there"},
    {"type": "ConversationText", "role": "assistant", "content": "One two three"},
    {"type": "AgentStartedSpeaking", "total_latency": 0.5, "tts_latency": 0.1, "ttt_latency": 0.4},
    {"type": "AgentAudioDone"},
    {
        "type": "FunctionCallRequest",
        "functions": [{"id": "f1", "name": "lookup", "arguments": "{}", "client_side": True}],
    },
]
MODELS = {
    "openai-realtime": "gpt-realtime-2.1",
    "openai-live": "gpt-live-1",
    "gemini-live": "gemini-3.8-live",
    "deepgram": "gpt-4.1-nano",
}

ms = st.integers(0, 45)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("media"),
            st.sampled_from([20, 20, 20, 20, 0, -20, 40, 60, 1500, 7]),
            st.sampled_from([160, 160, 80, 0, 161]),
            st.sampled_from([0, 0, 0, 1, 7, 100, 300]),
            ms,
        ),
        st.tuples(
            st.just("delta"),
            st.integers(0, 2),
            st.sampled_from([160, 160, 320, 800, 80, 1, 0, 4000]),
            st.sampled_from([False, False, False, True]),
            st.sampled_from([0, 0, 1, 2]),
            ms,
        ),
        st.tuples(
            st.just("event"),
            st.sampled_from(EVENTS + LIVE_EVENTS + GEMINI_EVENTS + DEEPGRAM_EVENTS),
            st.integers(0, 2),
            ms,
        ),
        st.tuples(st.just("mark"), st.integers(0, 1000), ms),
        st.tuples(st.just("tick"), st.sampled_from([0, 20, 20, 40, 1600])),
        st.tuples(st.just("dtmf"), st.sampled_from(["1", "5", "#"]), ms),
        st.tuples(st.just("raw"), st.booleans(), st.binary(max_size=40), ms),
    ),
    max_size=80,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    steps=steps,
    lead=st.sampled_from([60, 100, 200]),
    mark_frames=st.sampled_from([1, 5, 10]),
    pace=st.sampled_from([20, 20, 40]),
    backend=st.sampled_from(["openai-realtime", "openai-realtime", "openai-live", "gemini-live", "deepgram"]),
)
def test_compiled_core_equals_its_twin(
    steps: list[tuple[Any, ...]],
    lead: int,
    mark_frames: int,
    pace: int,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = CallOptions(
        lead_ms=lead,
        mark_frames=mark_frames,
        presession_buffer_ms=200,
        max_gap_fill_ms=200,
        pacer_interval_ms=pace,
        live_lead_ms=lead,
    )
    compiled = run("compiled", steps, options, monkeypatch, backend)
    twin = run("twin", steps, options, monkeypatch, backend)
    for key in twin:
        assert compiled[key] == twin[key], key


def test_a_plain_call_is_exercised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted path the property explores from: audio both ways, marks, an answer stored."""
    script: list[tuple[Any, ...]] = [("event", UPDATED, 0, 0), ("event", EVENTS[1], 0, 0)]
    for i in range(30):
        script += [("media", 20, 160, 0, 20), ("delta", 0, 160, False, 0)]
        if i % 5 == 4:
            script.append(("mark", -1, 1))
    script += [
        ("event", {"type": "response.output_audio.done", "item_id": "x"}, 0, 0),
        ("event", {"type": "response.output_audio_transcript.done", "item_id": "x", "transcript": "hi"}, 0, 0),
        ("event", EVENTS[-2], 0, 0),
        ("tick", 20),
        ("mark", -1, 5),
    ]
    options = CallOptions()
    compiled = run("compiled", script, options, monkeypatch)
    twin = run("twin", script, options, monkeypatch)
    assert compiled == twin
    assert compiled["stats"]["frames_in"] == 30 and compiled["stats"]["frames_out"] == 30
    assert len(compiled["backend writes"]) > 30  # session.update, then one append per frame
    assert any(r[0] == "TurnRecord" and r[1]["role"] == "assistant" for r in compiled["records"])
    assert not compiled["outcome"] or all(o[0] != "raise" for o in compiled["outcome"])


def test_deltas_after_a_barge_in_are_dropped_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Late deltas of an interrupted answer take the fast path's shortcut; it must drop them too."""
    script: list[tuple[Any, ...]] = [("event", UPDATED, 0, 0), ("event", EVENTS[1], 0, 0)]
    script += [("delta", 0, 800, False, 5) for _ in range(6)]
    script += [("tick", 20), ("event", EVENTS[2], 0, 3)]
    script += [("delta", 0, 800, False, 5) for _ in range(4)] + [("tick", 20), ("tick", 20)]
    compiled = run("compiled", script, CallOptions(), monkeypatch)
    twin = run("twin", script, CallOptions(), monkeypatch)
    assert compiled == twin
    answer = compiled["answers"][0][1]
    assert answer["interrupted"] and answer["produced"] == 6 * 800  # nothing pushed after the cut
    assert compiled["ring"][0] == 0


def test_a_preambles_answer_after_the_caller_cut_the_preamble_is_never_played(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reasoning model's response: a preamble item, then the answer item (BACKENDS §5.4). The
    caller talks over the preamble: the answer's deltas that follow, however late the events
    announcing it reach the conversation, are dropped; the next response plays."""
    script: list[tuple[Any, ...]] = [("event", UPDATED, 0, 0), ("event", EVENTS[1], 0, 0)]
    script += [("delta", 0, 800, False, 0, 5) for _ in range(4)]  # the preamble, item_a of resp_1
    script += [("tick", 20), ("event", EVENTS[2], 0, 3)]  # the caller speaks: barge-in
    script += [("delta", 1, 800, False, 0, 5) for _ in range(4)]  # the answer, item_b of resp_1
    script += [("delta", 2, 800, False, 1, 5) for _ in range(2)]  # the next response's answer
    script += [("tick", 20)]
    compiled = run("compiled", script, CallOptions(), monkeypatch)
    twin = run("twin", script, CallOptions(), monkeypatch)
    assert compiled == twin
    produced = {answer[1]["item_id"]: answer[1]["produced"] for answer in compiled["answers"]}
    assert produced == {"item_a": 4 * 800, "item_b": 0, ITEMS[2]: 2 * 800}
    assert compiled["cut"] == "resp_1" and compiled["dropped"] == ["item_a", "item_b"]


def test_a_gpt_live_stream_goes_to_its_segment_and_a_clear_opens_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-Live's deltas have no item: the first opens the session's first segment; after relay
    cleared a backlog (the caller spoke while relay held more than the lead), the stream goes on
    in a second segment, where the first one's produced audio ends. Both cores alike."""
    script: list[tuple[Any, ...]] = [("event", STARTED, 0, 0)]
    script += [("delta", 0, 800, False, 0) for _ in range(3)]  # a burst after a stall: 300 ms
    script += [("event", LIVE_EVENTS[4], 0, 1)]  # the caller speaks: relay holds > the lead, clears
    script += [("delta", 0, 160, False, 20) for _ in range(3)] + [("tick", 20)]
    options = CallOptions(live_lead_ms=60)
    compiled = run("compiled", script, options, monkeypatch, "openai-live")
    twin = run("twin", script, options, monkeypatch, "openai-live")
    assert compiled == twin
    items = {item[0]: item for item in compiled["items"]}
    assert list(items) == ["live1.1", "live1.2"] and compiled["live"] == "live1.2"
    assert items["live1.1"][1] == 3 * 800 and items["live1.1"][9]  # produced, interrupted
    assert items["live1.2"][1] == 3 * 160 and not items["live1.2"][9]
    assert compiled["stats"]["barge_ins"] == 1
    script = [("event", STARTED, 0, 0), ("media", 20, 160, 0, 20)]
    sent = b"".join(f[1] for f in _frames_masked(run("compiled", script, options, monkeypatch, "openai-live")))
    assert b'{"type":"session.input_audio.append","audio":"' in sent  # the caller's audio, in GPT-Live's append


@pytest.mark.parametrize("name", ["WsCore", "MediaCore"])
def test_both_cores_expose_the_same_surface(name: str) -> None:
    """What a subclass or a caller can reach on the compiled core, the twin has too (the twin
    shows its private state as slots besides; the compiled core keeps it in C)."""
    twin = {"WsCore": _wscore_py.WsCore, "MediaCore": _media_py.MediaCore}[name]
    compiled_names = {n for n in dir(getattr(fast, name)) if not n.startswith("__")}
    twin_names = {n for n in dir(twin) if not n.startswith("__")}
    assert compiled_names <= twin_names
    assert {n for n in compiled_names if not n.startswith("_")} == {n for n in twin_names if not n.startswith("_")}
    assert fast.LEG_TWILIO == _wscore_py.LEG_TWILIO and fast.LEG_BACKEND == _wscore_py.LEG_BACKEND


@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_a_burst_of_deltas_in_one_read_leaves_in_one_write(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything a read of the backend leg makes due goes to Twilio in one write."""
    twilio_t, backend_t = Transport(), Transport()
    leg = LEGS[impl]
    twilio_leg = leg(twilio_t, False, 1 << 20, 0, lambda: 1.0)
    backend_leg = leg(backend_t, True, 1 << 20, 0, lambda: 1.0)
    twilio_leg.events, backend_leg.events = [], []
    call = Conversation(
        START, realtime.AgentProfile(instructions="x"), twilio_leg, [].append, CallOptions(), core=CORES[impl]
    )
    call.attach_backend(backend_leg)
    call.backend_message(orjson.dumps(UPDATED), 1.0)
    backend_leg.route(call.media, 1)
    delta = base64.b64encode(bytes(160)).decode()
    burst = b"".join(
        ref.build_frame(
            ref.OP_TEXT, orjson.dumps({"type": "response.output_audio.delta", "item_id": "item_a", "delta": delta})
        )
        for _ in range(8)
    )
    backend_leg.data_received(burst)
    assert len(twilio_t.writes) == 1  # the lead's worth (100 ms: 5 frames), with its marks, in one write
    assert [f[1].count(b'"event":"media"') for f in _frames(twilio_t.writes)].count(1) == 5
    assert call.media.buffered == 3 * 160  # the rest waits for the clock


@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_a_session_that_takes_over_hears_the_pre_roll_first(impl: str) -> None:
    """GPT-Live has no speech events to wait for: a session taking over is sent the caller's last
    frames again (the pre-roll), then what was held, so a line begun at the switch is heard whole."""

    class Sink:
        def __init__(self) -> None:
            self.appends: list[bytes] = []

        def send_append(self, payload: bytes) -> None:
            self.appends.append(payload)

    core = CORES[impl](
        Transport(), START.stream_sid, lead_ms=80, mark_frames=5, held_frames=10, max_gap_fill_ms=200, preroll_frames=3
    )
    old, new = Sink(), Sink()
    core.attach(old)
    core.open_gate()
    frames = [base64.b64encode(bytes([i]) * 160) for i in range(6)]
    for i, frame in enumerate(frames[:5]):
        core.caller_audio(frame, i * 20, i * 0.02)
    core.attach(new, replay=True)
    core.caller_audio(frames[5], 100, 0.1)  # held while the new session is not ready
    core.open_gate()
    assert old.appends == frames[:5]
    assert new.appends == frames[2:6]  # the last 3 the old one was sent, then the held one
    assert core.audio_ms_to_time(0) == pytest.approx(0.04)  # its audio 0: the first frame replayed
