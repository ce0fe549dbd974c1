"""The playout hot path: compiled vs Python reference vs a plain library baseline.

Run: ``pytest bench/bench_playout.py`` (timings) or add ``--benchmark-disable`` (each case once,
as a correctness check). Every case records in ``extra_info["correct"]`` whether its result
equals the reference's; the test also asserts it.

- ``PlayoutRing``: one call = what the relay does per Realtime delta: ``push`` a typical delta
  (4800 μ-law bytes = 600 ms, 6400 base64 chars) and ``pop`` the 30 frames of 20 ms it yields.
  The ring holds a backlog of 2.5 frames, so frames start mid-delta and the ring wraps, as in a
  call; every call returns the same 30 frames. Divide by ``extra_info["frames"]`` (30) for the
  cost per 20 ms frame. Baseline: ``binascii`` (strict decode, per-frame encode) on a
  ``bytearray`` cut from the front, in plain Python.
- ``GapFiller.accept``: one call = 50 on-time frames (1 s of caller audio), fed from a C
  iterator so the loop costs little; divide by ``extra_info["frames"]`` (50).
"""

from __future__ import annotations

import binascii
import importlib
import itertools
import random
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from relay import _fastpath_py as ref
from relay.audio_format import FRAME_BYTES as FRAME

IMPLS = ["cython", "python", "library"]

_rng = random.Random(20)
DELTA_RAW = _rng.randbytes(4800)  # 600 ms of agent audio
DELTA = binascii.b2a_base64(DELTA_RAW, newline=False)
BACKLOG = 400  # bytes already buffered: frames straddle deltas
FRAMES = len(DELTA_RAW) // FRAME
assert len(DELTA) == 6400 and FRAMES == 30


def _compiled() -> ModuleType:
    # No skip: a missing build must fail loudly, never pass as "nothing to measure".
    return importlib.import_module("relay._fastpath")


class LibRing:
    """The obvious plain-Python ring: what the hot path would be without PlayoutRing."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def push(self, b64: bytes) -> int:
        data = binascii.a2b_base64(b64, strict_mode=True)
        self.buf += data
        return len(data)

    def pop(self, n: int = 1) -> list[bytes]:
        buf = self.buf
        k = min(n, len(buf) // FRAME)
        out = [binascii.b2a_base64(buf[i * FRAME : (i + 1) * FRAME], newline=False) for i in range(k)]
        del buf[: k * FRAME]
        return out


def _ring(impl: str) -> Any:
    ring = LibRing() if impl == "library" else (_compiled() if impl == "cython" else ref).PlayoutRing()
    # The backlog is the delta's tail, so every push + pop below returns the same frames.
    ring.push(binascii.b2a_base64(DELTA_RAW[-BACKLOG:], newline=False))
    return ring


def _delta_cycle(ring: Any) -> Callable[[], list[bytes]]:
    push, pop = ring.push, ring.pop

    def cycle() -> list[bytes]:
        push(DELTA)
        return pop(FRAMES)

    return cycle


@pytest.mark.benchmark(group="PlayoutRing: push a 600 ms delta + pop its 30 frames")
@pytest.mark.parametrize("impl", IMPLS)
def test_playout_delta(benchmark: Any, impl: str) -> None:
    expected = _delta_cycle(_ring("python"))()
    stream = DELTA_RAW[-BACKLOG:] + DELTA_RAW
    assert [binascii.a2b_base64(f) for f in expected] == [stream[i * FRAME : (i + 1) * FRAME] for i in range(FRAMES)]
    ring = _ring(impl)
    result = benchmark(_delta_cycle(ring))
    benchmark.extra_info["frames"] = FRAMES
    backlog = len(ring.buf) if isinstance(ring, LibRing) else ring.buffered
    benchmark.extra_info["correct"] = correct = result == expected and backlog == BACKLOG
    assert correct


def _accept_50(filler: Any) -> Callable[[], None]:
    stamps = itertools.count(1000, 20)
    accept = filler.accept

    def run() -> None:
        deque(map(accept, itertools.islice(stamps, 50)), maxlen=0)

    return run


@pytest.mark.benchmark(group="GapFiller.accept: 50 on-time frames")
@pytest.mark.parametrize("impl", ["cython", "python"])
def test_gap_filler_accept(benchmark: Any, impl: str) -> None:
    mod = _compiled() if impl == "cython" else ref
    # correctness on a stream with jitter, a gap, a duplicate and a late frame
    stamps = [0, 21, 39, 60, 140, 140, 100, 160, 181, 5000, 5020]
    a, b = mod.GapFiller(), ref.GapFiller()
    got = [a.accept(t) for t in stamps]
    want = [b.accept(t) for t in stamps]
    assert want == [0, 0, 0, 0, 3, -1, -1, 0, 0, 50, 0]
    filler = mod.GapFiller()
    benchmark(_accept_50(filler))
    benchmark.extra_info["frames"] = 50
    clean = filler.frames > 0 and filler.frames % 50 == 0 and (filler.filled, filler.dropped) == (0, 0)
    benchmark.extra_info["correct"] = correct = got == want and clean
    assert correct
