"""Erasing one caller from Postgres (``relay.erasure``), as ``relay_writer``, in one transaction;
and the record of erasures, which a tenant reads as its own (row-level security)."""

from __future__ import annotations

import asyncpg

from relay.erasure import KINDS, Erased, Eraser
from relay.pg.db import as_tenant, as_writer

# The caller's calls: from the number, to it, or placed to it by relay's queue.
_CALLS = """
SELECT call_sid FROM calls WHERE tenant_id = $1 AND (from_number = $2 OR to_number = $2)
UNION
SELECT call_sid FROM outbound_jobs WHERE tenant_id = $1 AND to_number = $2 AND call_sid <> ''
"""


class PostgresEraser(Eraser):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def erase_rows(self, tenant_id: str, number: str) -> tuple[dict[str, int], frozenset[str]]:
        async with as_writer(self._pool) as conn:
            sids = [row["call_sid"] for row in await conn.fetch(_CALLS, tenant_id, number)]
            counts = {}
            for kind, table in (("turns", "call_turns"), ("usage", "usage"), ("calls", "calls")):
                done = await conn.execute(
                    f"DELETE FROM {table} WHERE tenant_id = $1 AND call_sid = ANY($2::text[])", tenant_id, sids
                )
                counts[kind] = int(done.split()[-1])
            # Jobs still placing or on the line are the pool's: they go once done, in a later erasure.
            done = await conn.execute(
                "DELETE FROM outbound_jobs "
                "WHERE tenant_id = $1 AND to_number = $2 AND state NOT IN ('placing', 'live')",
                tenant_id,
                number,
            )
            counts["jobs"] = int(done.split()[-1])
        return counts, frozenset(sids)

    async def record(self, tenant_id: str, erased: Erased, at: float, by: str) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                f"INSERT INTO erasures (tenant_id, erased_at, requested_by, {', '.join(KINDS)}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                tenant_id,
                at,
                by[:100],
                *(getattr(erased, kind) for kind in KINDS),
            )

    async def erasures(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's erasures, oldest first, read as the tenant (its rows only)."""
        async with as_tenant(self._pool, tenant_id) as conn:
            rows = await conn.fetch(
                f"SELECT erased_at, requested_by, {', '.join(KINDS)} FROM erasures ORDER BY erased_at"
            )
        return [dict(row) for row in rows]
