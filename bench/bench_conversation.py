"""A call's per-frame path through the conversation core, on the compiled hot path and on its twin.

Run: ``pytest bench/bench_conversation.py`` (timings) or with ``--benchmark-disable`` (once
each, as a check). One round = 50 frames (1 s of one call) in one direction:

- ``inbound``: 50 Twilio ``media`` messages, parsed, placed by the gap filler and framed as
  ``input_audio_buffer.append`` client frames for the backend;
- ``outbound``: 50 Realtime audio deltas of 20 ms, parsed, decoded into the playout ring,
  released within the lead and framed as Twilio ``media`` server frames (with a ``mark``
  every 5 frames), each write handed to the socket.

Divide by ``extra_info["frames"]`` for the cost per frame; × 50 is the cost per call-second of
that direction, to set beside the end-to-end harness's CPU ms per call-second (most of which
is the event loop and the kernel, not this).
"""

from __future__ import annotations

import base64
import importlib
import random
from typing import Any

import pytest

from relay import conversation, realtime, twilio
from relay.conversation import CallOptions, Conversation

IMPLS = ["cython", "python"]
NAMES = ("GapFiller", "PlayoutRing", "TwilioWriter", "build_frame", "media_frames", "parse_audio_delta",
         "parse_media", "silence_b64")
FRAMES = 50
START = twilio.Start(stream_sid="MZ" + "5" * 32, call_sid="CA" + "7" * 32, account_sid="AC" + "1" * 32,
                     tracks=("inbound",), encoding="audio/x-mulaw", sample_rate=8000, channels=1)
_rng = random.Random(5)
PAYLOADS = [base64.b64encode(_rng.randbytes(160)) for _ in range(FRAMES)]
MEDIA = [b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d",'
         b'"payload":"%s"},"streamSid":"%s"}' % (i + 2, i + 1, i * 20, p, START.stream_sid.encode())
         for i, p in enumerate(PAYLOADS)]
DELTAS = [b'{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1",'
          b'"output_index":0,"content_index":0,"delta":"%s"}' % p for p in PAYLOADS]
UPDATED = {"type": "session.updated", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}},
                                                            "output": {"format": {"type": "audio/pcmu"}}}}}


class Wire:
    """A socket that keeps the bytes it is handed (the framing is real: upstream's and Twilio's)."""

    def __init__(self, fp: Any, masked: bool) -> None:
        self.fp, self.masked, self.bytes = fp, masked, 0

    def send(self, message: bytes) -> None:
        self.bytes += len(self.fp.build_frame(self.fp.OP_TEXT, message, b"mask" if self.masked else None))

    def send_append(self, payload: bytes) -> None:
        self.bytes += len(self.fp.build_append_frame(payload, b"mask"))

    def send_frames(self, frames: bytes) -> None:
        self.bytes += len(frames)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    fp = importlib.import_module("relay._fastpath" if request.param == "cython" else "relay._fastpath_py")
    for name in NAMES:
        monkeypatch.setattr(conversation, name, getattr(fp, name))
    return fp


def _call(fp: Any) -> tuple[Conversation, Wire, Wire]:
    twilio_wire, backend_wire = Wire(fp, False), Wire(fp, True)
    call = Conversation(START, realtime.AgentProfile(instructions="x"), twilio_wire, lambda r: None, CallOptions())
    call.attach_backend(backend_wire)
    call._backend_event(UPDATED, 0.0)
    return call, twilio_wire, backend_wire


def test_inbound_frames(benchmark: Any, impl: Any) -> None:
    call, _, backend = _call(impl)
    state = {"t": 0}

    def one_second() -> None:
        base = state["t"]
        for i, message in enumerate(MEDIA):
            # Timestamps move on each round, as a live call's do (the message's own are ignored
            # here: caller_audio takes the parsed timestamp; the parse is part of the cost).
            payload, _ = impl.parse_media(message)
            call.caller_audio(payload, base + i * 20, (base + i * 20) / 1000)
        state["t"] = base + FRAMES * 20

    benchmark(one_second)
    benchmark.extra_info.update(frames=FRAMES, correct=call.stats.frames_late == 0 and backend.bytes > 0)
    assert call.stats.frames_late == 0 and call.stats.frames_filled == 0


def test_outbound_frames(benchmark: Any, impl: Any) -> None:
    call, twilio_wire, _ = _call(impl)
    state = {"t": 0.0}

    def one_second() -> None:
        t = state["t"]
        for message in DELTAS:
            t += 0.020
            call.backend_frame(message, t)
        state["t"] = t

    benchmark(one_second)
    frames_out = call.stats.frames_out
    benchmark.extra_info.update(frames=FRAMES, correct=frames_out > 0 and call.stats.marks_out * 5 <= frames_out + 5)
    assert frames_out >= FRAMES and twilio_wire.bytes > frames_out * 216
