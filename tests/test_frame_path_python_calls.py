"""A steady passthrough frame runs no Python: media, audio delta, mark echo and clock tick.

Counted with ``sys.setprofile``: 1,000 frames of a live call through the compiled legs and
media core (caller audio to the backend, the agent's audio to Twilio, Twilio's mark echoes,
the shared clock's ticks) may not enter a single Python function. The sinks are C callables
(``list.append``), as a uvloop transport's ``write`` is; the conversation above the core is the
real one, reached only when something changes for a turn.
"""

from __future__ import annotations

import base64
import functools
import operator
import sys
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from relay import _fastpath_py as ref
from relay.agents import AgentProfile
from relay.call_options import CallOptions
from relay.conversation import Conversation
from tests.test_media_core import START, UPDATED

fast = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")

FRAMES = 1000


class Leg(fast.WsCore):
    """``relay.ws.Connection``'s hooks; none is reached by a steady frame."""

    def _violation(self, kind: str, reason: str, code: int) -> None:
        raise AssertionError(reason)

    def _on_close_frame(self, payload: bytes) -> None:
        raise AssertionError("close")

    def _wake(self) -> None:
        raise AssertionError("a per-frame message was left to recv")


def _sink(writes: list[bytes]) -> Any:
    return SimpleNamespace(write=writes.append, is_closing=bool)  # bool() is False: never closing


def test_a_thousand_steady_frames_enter_no_python_function() -> None:
    now = [0.0]
    clock = functools.partial(operator.getitem, now, 0)  # a C callable reading now[0]
    twilio_writes: list[bytes] = []
    backend_writes: list[bytes] = []
    twilio_leg = Leg(_sink(twilio_writes), False, 1 << 20, 0, clock)
    backend_leg = Leg(_sink(backend_writes), True, 1 << 20, 0, clock)
    records: list[Any] = []
    call = Conversation(
        START, AgentProfile(instructions="x"), twilio_leg, records.append, CallOptions(lead_ms=100, mark_frames=5)
    )
    call.attach_backend(backend_leg)
    call.backend_message(orjson.dumps(UPDATED), 0.0)
    call.backend_message(
        orjson.dumps(
            {"type": "response.output_item.added", "item": {"type": "message", "role": "assistant", "id": "item_a"}}
        ),
        0.0,
    )
    twilio_leg.route(call.media, fast.LEG_TWILIO)
    backend_leg.route(call.media, fast.LEG_BACKEND)

    audio = base64.b64encode(bytes(range(160))).decode()
    media = [
        ref.build_frame(
            ref.OP_TEXT,
            orjson.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(i + 2),
                    "streamSid": START.stream_sid,
                    "media": {"track": "inbound", "chunk": str(i + 1), "timestamp": str(20 * i), "payload": audio},
                }
            ),
            b"k3y!",
        )
        for i in range(FRAMES + 50)
    ]
    delta = ref.build_frame(
        ref.OP_TEXT,
        orjson.dumps(
            {
                "type": "response.output_audio.delta",
                "response_id": "resp_1",
                "item_id": "item_a",
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
        ),
    )
    # Twilio echoes the mark sent after frame 5k once it has played, 100 ms (5 frames) later.
    echoes = {
        i: ref.build_frame(
            ref.OP_TEXT,
            orjson.dumps(
                {
                    "event": "mark",
                    "sequenceNumber": "9",
                    "streamSid": START.stream_sid,
                    "mark": {"name": f"item_a:{(i - 5) * 160}"},
                }
            ),
            b"m4sk",
        )
        for i in range(10, FRAMES + 50, 5)
    }

    def frames(first: int, last: int) -> None:
        for i in range(first, last):
            now[0] = i * 0.02
            twilio_leg.data_received(media[i])
            backend_leg.data_received(delta)
            if i in echoes:
                twilio_leg.data_received(echoes[i])
            call.media.tick(now[0])

    frames(0, 50)  # the call settles: the clock is asked for once, the first marks go out
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        frames(50, 50 + FRAMES)
    finally:
        sys.setprofile(None)
    # (The last entry is sys.setprofile's own return into this frame.)
    assert [c for c in calls if not c.endswith(":frames") or "test_frame_path" not in c] == []
    assert call.media.frames_in == 50 + FRAMES and call.media.frames_out == 50 + FRAMES
    assert len(backend_writes) >= 50 + FRAMES  # one append per caller frame
    item = call.media.item("item_a")
    assert item is not None and item.played == (50 + FRAMES - 10) * 160  # the echoes were read
