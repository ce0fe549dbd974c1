"""Admission at the webhook: a tenant's calls stay within its concurrent and per-minute limits,
and each agent's calls within the agent's own.

The decision is made before any stream opens, so a call over the limit costs one webhook
answer (a spoken busy message and a hang-up), never an AI session. With Postgres the count
lives in the database and the check-and-insert runs under a per-tenant advisory lock, so
several relays on one database admit exactly as many calls as one would. The embedded
store's relay is a single instance and counts in memory.

A slot is held from admission until the call ends. A call admitted but never started (Twilio
could not open the stream) stops holding its slot after ``START_GRACE`` seconds, and a slot
whose relay died without saying so is freed after ``MAX_CALL`` seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import asyncpg

from relay.pg.store import as_writer

START_GRACE = 60.0
MAX_CALL = 4 * 3600.0


class Admission(Protocol):
    async def admit(self, tenant_id: str, agent_id: str, call_sid: str) -> bool: ...
    async def started(self, call_sid: str) -> None: ...
    async def ended(self, call_sid: str) -> None: ...


class LocalAdmission:
    """One relay's own count, for the embedded store (``None`` limits: no limit)."""

    def __init__(self, max_concurrent: int | None = None, per_minute: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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


_ADMIT = """
WITH limits AS (
    SELECT max_concurrent_calls, calls_per_minute FROM tenants WHERE tenant_id = $1
), agent_limits AS (
    SELECT max_concurrent_calls, calls_per_minute FROM agents WHERE tenant_id = $1 AND agent_id = $5
), held AS (
    SELECT agent_id, admitted_at,
           ended_at IS NULL AND (started_at IS NOT NULL OR admitted_at > now() - make_interval(secs => $3)) AS live
    FROM admissions WHERE tenant_id = $1 AND admitted_at > now() - make_interval(secs => $4)
), counts AS (
    SELECT count(*) FILTER (WHERE live) AS live,
           count(*) FILTER (WHERE admitted_at > now() - interval '1 minute') AS recent,
           count(*) FILTER (WHERE live AND agent_id = $5) AS agent_live,
           count(*) FILTER (WHERE admitted_at > now() - interval '1 minute' AND agent_id = $5) AS agent_recent
    FROM held
)
INSERT INTO admissions (call_sid, tenant_id, agent_id)
SELECT $2, $1, $5 FROM counts LEFT JOIN limits ON true LEFT JOIN agent_limits ON true
WHERE (limits.max_concurrent_calls IS NULL OR counts.live < limits.max_concurrent_calls)
  AND (limits.calls_per_minute IS NULL OR counts.recent < limits.calls_per_minute)
  AND (agent_limits.max_concurrent_calls IS NULL OR counts.agent_live < agent_limits.max_concurrent_calls)
  AND (agent_limits.calls_per_minute IS NULL OR counts.agent_recent < agent_limits.calls_per_minute)
ON CONFLICT (call_sid) DO NOTHING
RETURNING call_sid
"""


class PostgresAdmission:
    """The count shared by every relay on one database (the tenants table holds the limits)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.refused = 0

    async def admit(self, tenant_id: str, agent_id: str, call_sid: str) -> bool:
        if not call_sid:
            return False
        async with as_writer(self._pool) as conn:
            # Serialises admissions of one tenant across relays; released at commit.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('relay.admission'), hashtext($1))", tenant_id)
            if await conn.fetchval("SELECT 1 FROM admissions WHERE call_sid = $1", call_sid):
                return True  # a retried webhook of a call already admitted
            admitted = await conn.fetchval(_ADMIT, tenant_id, call_sid, START_GRACE, MAX_CALL, agent_id)
        if admitted is None:
            self.refused += 1
            return False
        return True

    async def started(self, call_sid: str) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute("UPDATE admissions SET started_at = now() WHERE call_sid = $1", call_sid)

    async def ended(self, call_sid: str) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute("UPDATE admissions SET ended_at = now() WHERE call_sid = $1 AND ended_at IS NULL",
                               call_sid)
