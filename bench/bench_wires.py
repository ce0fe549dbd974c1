"""What each backend wire costs per 20 ms frame, side by side in one run (compiled path).

Run: ``pytest bench/bench_wires.py`` (timings) or with ``--benchmark-disable`` (each case once).
Two groups, each a row per wire: the agent's 20 ms of audio through ``MediaCore`` into the ring
and out to Twilio (a Realtime delta of base64 μ-law, a Deepgram binary frame of μ-law, a Gemini
chunk of base64 PCM16 at 24 kHz, decimated and encoded), and the caller's 20 ms framed for the
backend by ``WsCore.send_append`` (the append as is, a binary frame, or PCM16 upsampled to
16 kHz). The difference between the Gemini row and the others is what transcoding costs.
"""

from __future__ import annotations

import base64
import importlib
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from relay.backends import WIRE_BINARY, WIRE_PCM16, WIRE_REALTIME_JSON

fast = importlib.import_module("relay._fastpath")  # no skip: a missing build must fail loudly

_rng = random.Random(7)
ULAW_20MS = _rng.randbytes(160)
PCM24_20MS = _rng.randbytes(960)  # 480 samples at 24 kHz
WIRES = {"realtime": WIRE_REALTIME_JSON, "deepgram": WIRE_BINARY, "gemini": WIRE_PCM16}
SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


class _Sink:
    def send(self, message: bytes) -> None:
        pass

    def send_frames(self, frames: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _agent_frame(wire: str) -> Callable[[], Any]:
    core = fast.MediaCore(_Sink(), SID, lead_ms=1_000_000, mark_frames=10, held_frames=10, max_gap_fill_ms=100)
    core.wire = WIRES[wire]
    if wire == "realtime":
        message = orjson.dumps(
            {"type": "response.output_audio.delta", "item_id": "item_1", "delta": base64.b64encode(ULAW_20MS).decode()}
        )
        return lambda: core.backend_frame(message, 0.0)
    core.live_item("answer_1")
    if wire == "deepgram":
        return lambda: core.backend_binary(ULAW_20MS, 0.0)
    inline = {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(PCM24_20MS).decode()}
    message = orjson.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": inline}]}}})
    return lambda: core.backend_frame(message, 0.0)


@pytest.mark.benchmark(group="agent audio: 20 ms into the ring and out to Twilio")
@pytest.mark.parametrize("wire", list(WIRES))
def test_agent_audio(benchmark: Any, wire: str) -> None:
    step = _agent_frame(wire)
    assert benchmark(step) is True


@pytest.mark.benchmark(group="caller audio: 20 ms framed for the backend (masked)")
@pytest.mark.parametrize("wire", list(WIRES))
def test_caller_audio(benchmark: Any, wire: str) -> None:
    core = fast.WsCore(_Sink(), True, 1 << 20, 0, lambda: 0.0)
    core.wire = WIRES[wire]
    payload = base64.b64encode(ULAW_20MS)
    benchmark(core.send_append, payload)
