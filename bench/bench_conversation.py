"""A call's per-frame path, socket bytes to socket write: compiled, its twin, a library baseline.

Run: ``pytest bench/bench_conversation.py`` (timings) or with ``--benchmark-disable`` (once
each, as a check). One round = 50 frames (1 s of one call) in one direction, from the bytes a
transport hands in to the bytes handed to the other transport:

- ``inbound``: 50 masked Twilio frames, each a ``media`` message, into the Twilio leg's
  ``data_received``: unmasked, parsed, placed by the gap filler, framed (masked) as
  ``input_audio_buffer.append`` and written to the backend's transport;
- ``outbound``: 50 Realtime audio deltas of 20 ms into the backend leg's ``data_received``:
  parsed, decoded into the playout ring, released within the lead and framed as Twilio
  ``media`` (a ``mark`` every 5 frames), written to Twilio's transport.

``cython``: ``Conversation`` on the compiled ``MediaCore`` and ``WsCore``; ``python``: the same
logic on their twins; ``library``: what the same work costs written the usual way (websockets'
sans-I/O protocols for the frames, ``json`` and ``base64``), with no pacing, marks or gaps.
Divide by ``extra_info["frames"]`` for the cost per frame; × 50 is the cost per call-second of
that direction, beside the end-to-end harness's CPU ms per call-second (most of which is the
event loop and the kernel, not this).
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import orjson
import pytest
from websockets.protocol import Protocol, Side, State

from relay import _fastpath_py as ref
from relay import _media_py, _wscore_py, twilio
from relay.audio_format import B64_FRAME_BYTES, FRAME_BYTES, SAMPLE_RATE
from relay.backends import realtime
from relay.call_options import CallOptions
from relay.conversation import Conversation

fast = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")

IMPLS = ["cython", "python", "library"]
FRAMES = 50
START = twilio.Start(
    stream_sid="MZ" + "5" * 32,
    call_sid="CA" + "7" * 32,
    account_sid="AC" + "1" * 32,
    tracks=("inbound",),
    encoding="audio/x-mulaw",
    sample_rate=SAMPLE_RATE,
    channels=1,
)
_rng = random.Random(5)
PAYLOADS = [base64.b64encode(_rng.randbytes(FRAME_BYTES)) for _ in range(FRAMES)]
UPDATED = {
    "type": "session.updated",
    "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}},
}


def _media(i: int, payload: bytes) -> bytes:
    return (
        b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d",'
        b'"payload":"%s"},"streamSid":"%s"}' % (i + 2, i + 1, i * 20, payload, START.stream_sid.encode())
    )


DELTAS = b"".join(
    ref.build_frame(
        ref.OP_TEXT,
        b'{"type":"response.output_audio.delta","event_id":"event_1",'
        b'"response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,'
        b'"delta":"%s"}' % p,
    )
    for p in PAYLOADS
)


class Transport:
    """Counts what it is handed."""

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    def is_closing(self) -> bool:
        return False


def _leg(core: type) -> type:
    class Leg(core):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def _wake(self) -> None:
            raise AssertionError("a per-frame message was left to recv")

        def _violation(self, kind: str, reason: str, code: int) -> None:
            raise AssertionError(reason)

    return Leg


class Relay:
    """One call's two legs and its conversation, on one implementation."""

    def __init__(self, impl: str) -> None:
        wscore, core = (fast.WsCore, fast.MediaCore) if impl == "cython" else (_wscore_py.WsCore, _media_py.MediaCore)
        self.now = 0.0
        self.twilio_t, self.backend_t = Transport(), Transport()
        self.twilio = _leg(wscore)(self.twilio_t, False, 1 << 20, 0, lambda: self.now)
        self.backend = _leg(wscore)(self.backend_t, True, 1 << 20, 0, lambda: self.now)
        self.call = Conversation(
            START, realtime.AgentProfile(instructions="x"), self.twilio, lambda r: None, CallOptions(), core=core
        )
        self.call.attach_backend(self.backend)
        self.call.backend_message(orjson.dumps(UPDATED), 0.0)
        self.twilio.route(self.call.media, 0)
        self.backend.route(self.call.media, 1)


class LibraryRelay:
    """The same per-frame work the usual way: websockets' protocols, json, base64."""

    def __init__(self) -> None:
        # Both past the handshake, as in a live call.
        self.twilio = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
        self.backend = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
        self.twilio_t, self.backend_t = Transport(), Transport()
        self.sid = START.stream_sid
        self.frames_out = 0

    def inbound(self, data: bytes) -> None:
        self.twilio.receive_data(data)
        for event in self.twilio.events_received():
            message = json.loads(event.data)
            if message["event"] == "media":
                self.backend.send_text(
                    json.dumps({"type": "input_audio_buffer.append", "audio": message["media"]["payload"]}).encode()
                )
                for chunk in self.backend.data_to_send():
                    self.backend_t.write(chunk)

    def outbound(self, data: bytes) -> None:
        self.backend.receive_data(data)
        for event in self.backend.events_received():
            message = json.loads(event.data)
            if message["type"] == "response.output_audio.delta":
                audio = base64.b64decode(message["delta"])
                for at in range(0, len(audio), FRAME_BYTES):
                    self.twilio.send_text(
                        json.dumps(
                            {
                                "event": "media",
                                "streamSid": self.sid,
                                "media": {"payload": base64.b64encode(audio[at : at + FRAME_BYTES]).decode()},
                            }
                        ).encode()
                    )
                    self.frames_out += 1
                    if self.frames_out % 5 == 0:
                        mark = {"name": f"item_1:{self.frames_out * FRAME_BYTES}"}
                        self.twilio.send_text(
                            json.dumps({"event": "mark", "streamSid": self.sid, "mark": mark}).encode()
                        )
                self.twilio_t.write(b"".join(self.twilio.data_to_send()))


def _inbound_bytes(round_: int) -> bytes:
    base = round_ * FRAMES
    return b"".join(ref.build_frame(ref.OP_TEXT, _media(base + i, p), b"k3y!") for i, p in enumerate(PAYLOADS))


@pytest.mark.parametrize("impl", IMPLS)
def test_inbound_frames(benchmark: Any, impl: str) -> None:
    relay: Any = LibraryRelay() if impl == "library" else Relay(impl)
    rounds = [[frame for frame in _split(_inbound_bytes(r))] for r in range(64)]
    state = {"round": 0}
    feed = relay.inbound if impl == "library" else relay.twilio.data_received

    def one_second() -> None:
        # Timestamps move on each round, as a live call's do (64 rounds, then they repeat:
        # the gap filler drops the repeats as late, which costs as much).
        r = state["round"]
        state["round"] = r + 1
        if impl != "library":
            relay.now = r * FRAMES * 0.02
        for data in rounds[r % len(rounds)]:
            feed(data)

    benchmark(one_second)
    written = relay.backend_t.writes
    benchmark.extra_info.update(frames=FRAMES, correct=written >= FRAMES)
    assert written >= FRAMES


@pytest.mark.parametrize("impl", IMPLS)
def test_outbound_frames(benchmark: Any, impl: str) -> None:
    relay: Any = LibraryRelay() if impl == "library" else Relay(impl)
    frames = _split(DELTAS)
    feed = relay.outbound if impl == "library" else relay.backend.data_received

    def one_second() -> None:
        for data in frames:
            if impl != "library":
                relay.now += 0.020
            feed(data)

    benchmark(one_second)
    out = relay.frames_out if impl == "library" else relay.call.stats.frames_out
    benchmark.extra_info.update(frames=FRAMES, correct=out >= FRAMES)
    assert out >= FRAMES and relay.twilio_t.bytes > out * B64_FRAME_BYTES


def _split(stream: bytes) -> list[bytes]:
    """The frames of ``stream``, one read each (as a live call's arrive)."""
    out, at = [], 0
    while at < len(stream):
        length = stream[at + 1] & 0x7F
        head = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if stream[at + 1] & 0x80 else 0)
        if length == 126:
            length = int.from_bytes(stream[at + 2 : at + 4], "big")
        out.append(stream[at : at + head + length])
        at += head + length
    return out
