"""The shared clock (every 20 ms, or ``RELAY_PACER_INTERVAL_MS``): one timer on the loop paces
the outbound audio of every call.

A call joins when it has audio to pace (or keys to send) and leaves as soon as its tick says
it has nothing left, so an idle call costs nothing per tick. Ticks are due at ``start + n ×
period`` (no drift); a loop that fell behind runs one tick late rather than a burst of them.
How late each call's tick ran (``stats``, 0.1 ms buckets, read on the monotonic clock the
loop's own is based on) is the send-time jitter the caller's ear sees on top of the network's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger("relay.pacer")

PERIOD_S = 0.020
LATE_BUCKETS = 1001  # lateness histogram: 0.1 ms buckets up to 100 ms (and 100 ms or more)


class Pacer:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, period: float = PERIOD_S) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._period = period
        self._ticks: dict[object, Callable[[float], bool]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._start = 0.0
        self._n = 0
        self.ticks = 0
        self.late = [0] * LATE_BUCKETS  # call-ticks by lateness, 0.1 ms buckets

    def add(self, key: object, tick: Callable[[float], bool]) -> None:
        """Tick ``tick(now)`` every period until it returns False (or ``remove``)."""
        if key in self._ticks:
            return
        self._ticks[key] = tick
        if self._handle is None:
            self._start = self._loop.time()
            self._n = 1
            self._handle = self._loop.call_at(self._start + self._period, self._fire)

    def remove(self, key: object) -> None:
        self._ticks.pop(key, None)

    def __len__(self) -> int:
        return len(self._ticks)

    def _fire(self) -> None:
        now = self._loop.time()
        due = self._start + self._n * self._period
        late, clock = self.late, time.monotonic
        self.ticks += 1
        for key, tick in list(self._ticks.items()):
            late[min(max(0, int((clock() - due) * 10_000)), LATE_BUCKETS - 1)] += 1
            try:
                more = tick(now)
            except Exception:  # one call's bug must not stop every call's clock
                log.exception("tick failed; the call leaves the clock")
                more = False
            if not more:
                self._ticks.pop(key, None)
        if not self._ticks:
            self._handle = None
            return
        self._n = max(self._n + 1, math.floor((now - self._start) / self._period) + 1)
        self._handle = self._loop.call_at(self._start + self._n * self._period, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._ticks.clear()

    def stats(self) -> dict[str, float | int]:
        """Ticks so far, and their lateness (send-time jitter) at p50, p99 and worst, in ms."""
        return {
            "ticks": self.ticks,
            "calls": len(self._ticks),
            "call_ticks": sum(self.late),
            **late_quantiles(self.late),
        }


def late_quantiles(histogram: list[int]) -> dict[str, float]:
    """p50, p99 and the worst of a 0.1 ms-bucket lateness histogram, in ms (bucket upper edges)."""
    total = sum(histogram)
    out = {"late_p50_ms": 0.0, "late_p99_ms": 0.0, "late_max_ms": 0.0}
    if not total:
        return out
    for name, q in (("late_p50_ms", 0.5), ("late_p99_ms", 0.99)):
        need, seen = q * total, 0
        for bucket, count in enumerate(histogram):
            seen += count
            if seen >= need:
                out[name] = (bucket + 1) / 10
                break
    out["late_max_ms"] = (max(b for b, count in enumerate(histogram) if count) + 1) / 10
    return out
