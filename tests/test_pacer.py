"""The shared 20 ms clock (relay/pacer.py), on the real event loop: ticks only, no timing asserted."""

from __future__ import annotations

import asyncio

from relay.pacer import Pacer, late_quantiles


async def test_a_call_ticks_until_it_says_it_is_done_and_the_clock_then_stops() -> None:
    pacer = Pacer()
    seen: list[float] = []
    done = asyncio.Event()

    def tick(now: float) -> bool:
        seen.append(now)
        if len(seen) == 3:
            done.set()
            return False
        return True

    pacer.add("call", tick)
    pacer.add("call", tick)  # joining twice is joining once
    await asyncio.wait_for(done.wait(), 5)
    assert len(seen) == 3 and seen == sorted(seen)
    assert len(pacer) == 0 and pacer._handle is None  # nothing to pace: no timer at all
    assert pacer.stats()["call_ticks"] == 3


async def test_one_calls_failure_does_not_stop_the_others() -> None:
    pacer = Pacer()
    good: list[float] = []
    done = asyncio.Event()

    def bad(now: float) -> bool:
        raise RuntimeError("boom")

    def ok(now: float) -> bool:
        good.append(now)
        if len(good) == 2:
            done.set()
        return len(good) < 2

    pacer.add("bad", bad)
    pacer.add("ok", ok)
    await asyncio.wait_for(done.wait(), 5)
    assert len(good) == 2


def test_lateness_quantiles_read_the_histogram() -> None:
    histogram = [0] * 1001
    histogram[3] = 98  # 0.3-0.4 ms
    histogram[40] = 2  # 4.0-4.1 ms
    assert late_quantiles(histogram) == {"late_p50_ms": 0.4, "late_p99_ms": 4.1, "late_max_ms": 4.1}
    assert late_quantiles([0] * 1001)["late_p99_ms"] == 0.0
