"""Admission counted in Postgres: one count shared by every relay on the database.

The check-and-insert runs under a per-tenant advisory lock, so several relays admit exactly as
many calls as one would. What a slot is, and when it stops being held, is ``relay.admission``'s.
"""

from __future__ import annotations

import asyncpg

from relay.admission import MAX_CALL, START_GRACE
from relay.pg.db import as_writer

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
            await conn.execute(
                "UPDATE admissions SET ended_at = now() WHERE call_sid = $1 AND ended_at IS NULL", call_sid
            )
