"""Deleting a tenant's records past its retention from Postgres (``relay.retention``), as
``relay_writer``, one batch per short transaction; and the tenants' retention settings."""

from __future__ import annotations

import asyncpg

from relay.pg.db import as_writer
from relay.retention import TABLES, Purger, Retention


class PostgresPurger(Purger):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def delete_batch(self, table: str, tenant_id: str, before: float, limit: int) -> int:
        if table not in TABLES:
            raise ValueError(f"no table {table!r} is aged")
        async with as_writer(self._pool) as conn:
            done = await conn.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
                "WHERE tenant_id = $1 AND started_at < $2 LIMIT $3))",
                tenant_id,
                before,
                limit,
            )
        return int(done.split()[-1])

    async def policies(self, tenant_id: str | None = None) -> dict[str, Retention]:
        """Every tenant's retention (or one's), where it has one."""
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, retention_days, usage_retention_days FROM tenants "
                "WHERE (retention_days IS NOT NULL OR usage_retention_days IS NOT NULL) "
                "AND ($1::text IS NULL OR tenant_id = $1)",
                tenant_id,
            )
        return {r["tenant_id"]: Retention(r["retention_days"], r["usage_retention_days"]) for r in rows}

    async def set_policy(self, tenant_id: str, retention: Retention) -> bool:
        """Set the tenant's retention; False: no such tenant."""
        async with as_writer(self._pool) as conn:
            done = await conn.execute(
                "UPDATE tenants SET retention_days = $2, usage_retention_days = $3 WHERE tenant_id = $1",
                tenant_id,
                retention.days,
                retention.usage_days,
            )
        return bool(done != "UPDATE 0")
