"""Admission at the webhook: a tenant's calls stay within its concurrent and per-minute limits,
and each agent's calls within the agent's own.

The decision is made before any stream opens, so a call over the limit costs one webhook
answer (a spoken busy message and a hang-up), never an AI session. With Postgres the count
lives in the database and the check-and-insert runs under a per-tenant advisory lock, so
several relays on one database admit exactly as many calls as one would
(``relay.pg.admission``). The embedded store's relay is a single instance and counts in memory.

A slot is held from admission until the call ends. A call admitted but never started (Twilio
could not open the stream) stops holding its slot after ``START_GRACE`` seconds, and a slot
whose relay died without saying so is freed after ``MAX_CALL`` seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

START_GRACE = 60.0
MAX_CALL = 4 * 3600.0


class Admission(Protocol):
    async def admit(self, tenant_id: str, agent_id: str, call_sid: str) -> bool: ...
    async def started(self, call_sid: str) -> None: ...
    async def ended(self, call_sid: str) -> None: ...


class LocalAdmission:
    """One relay's own count, for the embedded store (``None`` limits: no limit)."""

    def __init__(
        self,
        max_concurrent: int | None = None,
        per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrent, self.per_minute = max_concurrent, per_minute
        self._clock = clock
        self._live: dict[str, tuple[float, bool]] = {}  # call_sid -> (admitted at, started)
        self._recent: deque[float] = deque()
        self.refused = 0

    async def admit(self, tenant_id: str, agent_id: str, call_sid: str) -> bool:
        now = self._clock()
        if not call_sid:
            return False  # never a retry of another call (the webhook refuses it before this)
        if call_sid in self._live:
            return True  # Twilio retried the webhook: the call holds its slot already
        while self._recent and self._recent[0] <= now - 60:
            self._recent.popleft()
        live = sum(1 for at, started in self._live.values() if started or at > now - START_GRACE)
        if (self.max_concurrent is not None and live >= self.max_concurrent) or (
            self.per_minute is not None and len(self._recent) >= self.per_minute
        ):
            self.refused += 1
            return False
        self._live[call_sid] = (now, False)
        self._recent.append(now)
        return True

    async def started(self, call_sid: str) -> None:
        if call_sid in self._live:
            self._live[call_sid] = (self._live[call_sid][0], True)

    async def ended(self, call_sid: str) -> None:
        self._live.pop(call_sid, None)
