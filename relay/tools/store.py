"""Where agents' tools, transfer targets and the tenants' signing secrets are kept: the
``ToolStore`` interface, and its embedded (SQLite) form. The Postgres form is
``relay.pg.tools``. A call reads its agent's ``AgentActions`` once, as it starts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from relay.errors import InputError
from relay.tools.signing import new_secret
from relay.tools.spec import TenantTool, TransferTarget


@dataclass(frozen=True, slots=True)
class AgentActions:
    """What one agent's calls may do beyond talking, and the secret that signs its tool requests."""

    tools: tuple[TenantTool, ...] = ()
    targets: tuple[TransferTarget, ...] = ()
    secret: str = ""


def _checked(problems: list[str]) -> None:
    if problems:
        raise InputError("; ".join(problems))


CACHE_S = 5.0  # how long a call start reuses an agent's actions: a change reaches new calls within it


class ToolStore(ABC):
    """An agent's tools and transfer targets, and each tenant's tool secret.

    Every call start asks for its agent's ``actions``; one read serves the agent's calls for
    ``CACHE_S`` (the calls starting together share it), so a burst of calls costs the store one
    query, not one each.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[float, asyncio.Future[AgentActions]]] = {}

    async def add_tool(self, tenant_id: str, agent_id: str, tool: TenantTool) -> str:
        """Store (or replace) the agent's tool; the tenant's secret, made now if it had none.

        Raises:
            InputError: a bad tool, or no such tenant or agent.
        """
        _checked(tool.problems())
        await self._put_tool(tenant_id, agent_id, tool)
        self._cache.clear()
        return await self.secret(tenant_id)

    async def add_target(self, tenant_id: str, agent_id: str, target: TransferTarget) -> None:
        """Store (or replace) a transfer target.

        Raises:
            InputError: a bad target, or no such tenant or agent.
        """
        _checked(target.problems())
        await self._put_target(tenant_id, agent_id, target)
        self._cache.clear()

    async def remove_tool(self, tenant_id: str, agent_id: str, name: str) -> bool:
        """Remove the agent's tool; False when it has none of that name."""
        self._cache.clear()
        return await self._remove_tool(tenant_id, agent_id, name)

    async def remove_target(self, tenant_id: str, agent_id: str, label: str) -> bool:
        """Remove a transfer target; False when the agent has none of that label."""
        self._cache.clear()
        return await self._remove_target(tenant_id, agent_id, label)

    async def actions(self, tenant_id: str, agent_id: str) -> AgentActions:
        """What the agent's calls may do (at most ``CACHE_S`` old)."""
        key, now = (tenant_id, agent_id), time.monotonic()
        hit = self._cache.get(key)
        if hit is None or hit[0] <= now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = self._cache[key] = (now + CACHE_S, asyncio.ensure_future(self._read_actions(tenant_id, agent_id)))
        try:
            return await asyncio.shield(hit[1])
        except Exception:
            if self._cache.get(key) is hit:
                del self._cache[key]  # a failed read is not reused
            raise

    async def _read_actions(self, tenant_id: str, agent_id: str) -> AgentActions:
        tools, targets = await self.tools(tenant_id, agent_id), await self.targets(tenant_id, agent_id)
        return AgentActions(tuple(tools), tuple(targets), await self.secret(tenant_id) if tools else "")

    @abstractmethod
    async def _put_tool(self, tenant_id: str, agent_id: str, tool: TenantTool) -> None: ...

    @abstractmethod
    async def _put_target(self, tenant_id: str, agent_id: str, target: TransferTarget) -> None: ...

    @abstractmethod
    async def _remove_tool(self, tenant_id: str, agent_id: str, name: str) -> bool: ...

    @abstractmethod
    async def _remove_target(self, tenant_id: str, agent_id: str, label: str) -> bool: ...

    @abstractmethod
    async def tools(self, tenant_id: str, agent_id: str) -> list[TenantTool]: ...

    @abstractmethod
    async def targets(self, tenant_id: str, agent_id: str) -> list[TransferTarget]: ...

    @abstractmethod
    async def secret(self, tenant_id: str, *, rotate: bool = False) -> str:
        """The tenant's tool secret (made on first use; ``rotate``: replaced by a new one)."""


def tool_from_row(row: Any) -> TenantTool:
    parameters = row["parameters"]
    return TenantTool(
        row["name"],
        row["description"],
        orjson.loads(parameters) if isinstance(parameters, str | bytes) else parameters,
        row["url"],
        row["timeout_ms"],
        row["filler"],
    )


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_tools (
    tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    parameters TEXT NOT NULL, url TEXT NOT NULL, timeout_ms INTEGER NOT NULL, filler TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, PRIMARY KEY (tenant_id, agent_id, name));
CREATE TABLE IF NOT EXISTS transfer_targets (
    tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL, label TEXT NOT NULL, target TEXT NOT NULL,
    mode TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (tenant_id, agent_id, label));
CREATE TABLE IF NOT EXISTS tool_secrets (tenant_id TEXT PRIMARY KEY, secret TEXT NOT NULL, created_at REAL NOT NULL);
"""


class SQLiteToolStore(ToolStore):
    """Tools in the embedded store's file: its one tenant and agent."""

    def __init__(self, path: str | Path, tenant_id: str, agent_id: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.tenant_id, self.agent_id = tenant_id, agent_id

    def _own(self, tenant_id: str, agent_id: str) -> None:
        if (tenant_id, agent_id) != (self.tenant_id, self.agent_id):
            raise InputError(
                f"no agent {tenant_id[:100]!r}/{agent_id[:100]!r} (the embedded store has one: "
                f"{self.tenant_id!r}/{self.agent_id!r})"
            )

    async def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        def run() -> list[sqlite3.Row]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            db.row_factory = sqlite3.Row
            try:
                db.executescript(_SQLITE_SCHEMA)
                return db.execute(sql, params).fetchall()
            finally:
                db.close()

        return await asyncio.to_thread(run)

    async def _put_tool(self, tenant_id: str, agent_id: str, tool: TenantTool) -> None:
        self._own(tenant_id, agent_id)
        await self._sql(
            "INSERT OR REPLACE INTO agent_tools VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tenant_id, agent_id, tool.name, tool.description, orjson.dumps(tool.parameters).decode(), tool.url,
             tool.timeout_ms, tool.filler, time.time()),
        )  # fmt: skip

    async def _put_target(self, tenant_id: str, agent_id: str, target: TransferTarget) -> None:
        self._own(tenant_id, agent_id)
        await self._sql(
            "INSERT OR REPLACE INTO transfer_targets VALUES (?, ?, ?, ?, ?, ?)",
            (tenant_id, agent_id, target.label, target.target, target.mode, time.time()),
        )

    async def _remove_tool(self, tenant_id: str, agent_id: str, name: str) -> bool:
        self._own(tenant_id, agent_id)
        return bool(
            await self._sql(
                "DELETE FROM agent_tools WHERE tenant_id = ? AND agent_id = ? AND name = ? RETURNING name",
                (tenant_id, agent_id, name),
            )
        )

    async def _remove_target(self, tenant_id: str, agent_id: str, label: str) -> bool:
        self._own(tenant_id, agent_id)
        return bool(
            await self._sql(
                "DELETE FROM transfer_targets WHERE tenant_id = ? AND agent_id = ? AND label = ? RETURNING label",
                (tenant_id, agent_id, label),
            )
        )

    async def tools(self, tenant_id: str, agent_id: str) -> list[TenantTool]:
        rows = await self._sql(
            "SELECT * FROM agent_tools WHERE tenant_id = ? AND agent_id = ? ORDER BY name", (tenant_id, agent_id)
        )
        return [tool_from_row(r) for r in rows]

    async def targets(self, tenant_id: str, agent_id: str) -> list[TransferTarget]:
        rows = await self._sql(
            "SELECT label, target, mode FROM transfer_targets WHERE tenant_id = ? AND agent_id = ? ORDER BY label",
            (tenant_id, agent_id),
        )
        return [TransferTarget(r["label"], r["target"], r["mode"]) for r in rows]

    async def secret(self, tenant_id: str, *, rotate: bool = False) -> str:
        if tenant_id != self.tenant_id:
            raise InputError(f"no tenant {tenant_id[:100]!r} (the embedded store has one: {self.tenant_id!r})")
        if rotate:
            await self._sql("DELETE FROM tool_secrets WHERE tenant_id = ?", (tenant_id,))
        rows = await self._sql("SELECT secret FROM tool_secrets WHERE tenant_id = ?", (tenant_id,))
        if rows:
            return str(rows[0]["secret"])
        await self._sql(
            "INSERT INTO tool_secrets VALUES (?, ?, ?) ON CONFLICT (tenant_id) DO NOTHING",
            (tenant_id, new_secret(), time.time()),
        )
        rows = await self._sql("SELECT secret FROM tool_secrets WHERE tenant_id = ?", (tenant_id,))
        return str(rows[0]["secret"])
