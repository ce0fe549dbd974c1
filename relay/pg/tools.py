"""Agents' tools, transfer targets and the tenants' tool secrets in Postgres (``relay.tools.store``),
written and read as ``relay_writer``; every row is scoped by tenant under row-level security."""

from __future__ import annotations

import asyncpg
import orjson

from relay.errors import InputError
from relay.pg.db import as_writer
from relay.tools.signing import new_secret
from relay.tools.spec import TenantTool, TransferTarget
from relay.tools.store import ToolStore, tool_from_row


class PostgresToolStore(ToolStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._pool = pool

    async def _write(self, sql: str, *args: object) -> str:
        try:
            async with as_writer(self._pool) as conn:
                return str(await conn.execute(sql, *args))
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise InputError(f"no agent {args[1]!s:.100} for tenant {args[0]!s:.100} (relay agents list)") from None

    async def _put_tool(self, tenant_id: str, agent_id: str, tool: TenantTool) -> None:
        await self._write(
            "INSERT INTO agent_tools (tenant_id, agent_id, name, description, parameters, url, timeout_ms, filler) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) ON CONFLICT (tenant_id, agent_id, name) DO UPDATE SET "
            "description = excluded.description, parameters = excluded.parameters, url = excluded.url, "
            "timeout_ms = excluded.timeout_ms, filler = excluded.filler",
            tenant_id, agent_id, tool.name, tool.description, orjson.dumps(tool.parameters).decode(), tool.url,
            tool.timeout_ms, tool.filler,
        )  # fmt: skip

    async def _put_target(self, tenant_id: str, agent_id: str, target: TransferTarget) -> None:
        await self._write(
            "INSERT INTO transfer_targets (tenant_id, agent_id, label, target, mode) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (tenant_id, agent_id, label) DO UPDATE SET target = excluded.target, mode = excluded.mode",
            tenant_id, agent_id, target.label, target.target, target.mode,
        )  # fmt: skip

    async def _remove_tool(self, tenant_id: str, agent_id: str, name: str) -> bool:
        done = await self._write(
            "DELETE FROM agent_tools WHERE tenant_id = $1 AND agent_id = $2 AND name = $3", tenant_id, agent_id, name
        )
        return done != "DELETE 0"

    async def _remove_target(self, tenant_id: str, agent_id: str, label: str) -> bool:
        done = await self._write(
            "DELETE FROM transfer_targets WHERE tenant_id = $1 AND agent_id = $2 AND label = $3",
            tenant_id,
            agent_id,
            label,
        )
        return done != "DELETE 0"

    async def tools(self, tenant_id: str, agent_id: str) -> list[TenantTool]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT name, description, parameters::text AS parameters, url, timeout_ms, filler FROM agent_tools "
                "WHERE tenant_id = $1 AND agent_id = $2 ORDER BY name",
                tenant_id,
                agent_id,
            )
        return [tool_from_row(r) for r in rows]

    async def targets(self, tenant_id: str, agent_id: str) -> list[TransferTarget]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT label, target, mode FROM transfer_targets WHERE tenant_id = $1 AND agent_id = $2 "
                "ORDER BY label",
                tenant_id,
                agent_id,
            )
        return [TransferTarget(r["label"], r["target"], r["mode"]) for r in rows]

    async def secret(self, tenant_id: str, *, rotate: bool = False) -> str:
        try:
            async with as_writer(self._pool) as conn:
                value = None
                if not rotate:  # (a call reads it as it starts: a read, no write)
                    value = await conn.fetchval("SELECT secret FROM tool_secrets WHERE tenant_id = $1", tenant_id)
                value = value or await conn.fetchval(
                    "INSERT INTO tool_secrets (tenant_id, secret) VALUES ($1, $2) ON CONFLICT (tenant_id) DO UPDATE "
                    "SET secret = CASE WHEN $3 THEN excluded.secret ELSE tool_secrets.secret END RETURNING secret",
                    tenant_id,
                    new_secret(),
                    rotate,
                )
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise InputError(f"no tenant {tenant_id[:100]!r} (relay tenants list shows them)") from None
        return str(value)
