"""The tenant directory in Postgres: tenants, their phone numbers and agents, and reads on a
tenant's behalf through row-level security.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from relay.agents import BACKENDS, DEFAULT_AGENT, RANGES, Agent, AgentProfile
from relay.agents import COLUMNS as AGENT_COLUMNS
from relay.errors import InputError
from relay.outbound.jobs import QuietHours
from relay.outbound.race import BusinessHours, parse_contacts
from relay.pg.db import SELECT_CALLS, SELECT_TURNS, as_tenant, as_writer, placeholders
from relay.redaction import Redaction
from relay.store import TurnRecord
from relay.trust import Credential
from relay.twilio import ACCOUNT_SID, E164
from relay.usage_report import queries

# What ``set_outbound`` may change: the tenants table's outbound columns.
OUTBOUND_SETTINGS = ("outbound_from", "timezone", "quiet_hours", "business_hours", "on_call", "race_timeout_s")
_UPSERT_AGENT = (
    f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES ({placeholders(len(AGENT_COLUMNS))}) "
    f"ON CONFLICT (tenant_id, agent_id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in AGENT_COLUMNS[2:])
)
_INSERT_AGENT = (
    f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES ({placeholders(len(AGENT_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
_SELECT_AGENTS = f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents"


class Directory:
    """Tenants, phone numbers and agents (the CLI and webhook routing), and tenant reads.

    Directory writes and ``lookup_number`` run as ``relay_writer``: routing happens before any
    tenant is known. ``tenant_calls`` and ``tenant_turns`` run as ``relay_reader`` with the
    tenant set, and filter by nothing else: row-level security is what scopes them.

    Inputs are checked here (and again by the database's constraints); a bad one raises
    ``InputError`` with one line that says what is wrong.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @classmethod
    @asynccontextmanager
    async def connect(cls, dsn: str) -> AsyncIterator[Directory]:
        """A directory on its own small pool, for one-off commands (``relay tenant ...``)."""
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2, timeout=10.0)
        try:
            yield cls(pool)
        finally:
            await pool.close()

    async def add_tenant(self, tenant_id: str, name: str, first_agent: AgentProfile) -> None:
        """Create the tenant (or rename it); one without agents gets a ``default`` agent that
        behaves as ``first_agent`` (the caller's default agent: ``Settings.agent`` for the CLI)."""
        if not tenant_id or len(tenant_id) > 100 or not tenant_id.isprintable():
            raise InputError(f"tenant id {tenant_id[:100]!r} must be 1..100 printable characters")
        agent = Agent.from_profile(tenant_id, DEFAULT_AGENT, first_agent)
        _check(agent)
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) "
                "ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name",
                tenant_id, name,
            )  # fmt: skip
            if not await conn.fetchval("SELECT 1 FROM agents WHERE tenant_id = $1 LIMIT 1", tenant_id):
                await conn.execute(_INSERT_AGENT, *_agent_row(agent))

    async def has_tenant(self, tenant_id: str) -> bool:
        async with as_writer(self._pool) as conn:
            return bool(await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id))

    async def require_tenant(self, tenant_id: str) -> None:
        """Raises ``InputError`` unless the tenant exists."""
        if not await self.has_tenant(tenant_id):
            raise InputError(f"no tenant {tenant_id[:100]!r} (relay tenants list shows them)")

    async def set_limits(self, tenant_id: str, max_concurrent_calls: int | None, calls_per_minute: int | None) -> None:
        """A tenant's admission limits (None: no limit), enforced at the webhook by every relay."""
        for name, value in (("max_concurrent_calls", max_concurrent_calls), ("calls_per_minute", calls_per_minute)):
            lo, hi = RANGES[name]
            if value is not None and not lo <= value <= hi:
                raise InputError(f"{name.replace('_', ' ')} {value} is outside {lo:g}..{hi:g}")
        async with as_writer(self._pool) as conn:
            found = await conn.execute(
                "UPDATE tenants SET max_concurrent_calls = $2, calls_per_minute = $3 WHERE tenant_id = $1",
                tenant_id, max_concurrent_calls, calls_per_minute,
            )  # fmt: skip
        if found == "UPDATE 0":
            await self.require_tenant(tenant_id)

    async def set_auth_token(self, tenant_id: str, token: str | None, account_sid: str | None = None) -> None:
        """The tenant's Twilio (sub)account: its auth token, for X-Twilio-Signature, and its
        ``AccountSid``, which every request signed with that token must carry (None: remove both)."""
        if token and not (account_sid and ACCOUNT_SID.fullmatch(account_sid)):
            raise InputError("a tenant's auth token needs its account: --account-sid AC followed by 32 hex digits")
        async with as_writer(self._pool) as conn:
            found = await conn.execute(
                "UPDATE tenants SET twilio_auth_token = $2, twilio_account_sid = $3 WHERE tenant_id = $1",
                tenant_id, token or None, account_sid if token else None,
            )  # fmt: skip
        if found == "UPDATE 0":
            await self.require_tenant(tenant_id)

    async def set_outbound(self, tenant_id: str, **changes: str | int | None) -> None:
        """Some of the tenant's outbound settings (the rest stay; "" clears one): ``outbound_from``
        (its caller ID), ``timezone``, ``quiet_hours``, ``business_hours``, ``on_call``,
        ``race_timeout_s``.

        Raises:
            InputError: a value that is not one (checked as calls will read it), or no such tenant.
        """
        unknown = set(changes) - set(OUTBOUND_SETTINGS)
        if unknown:
            raise InputError(f"no outbound setting {sorted(unknown)}")
        values = {k: (v if v != "" else None) for k, v in changes.items() if v is not None}
        current = await self.outbound_settings(tenant_id)
        if current is None:
            await self.require_tenant(tenant_id)
            return
        merged = {**current, **values}
        zone = str(merged["timezone"] or "UTC")
        if merged["outbound_from"] and not E164.fullmatch(str(merged["outbound_from"])):
            raise InputError(f"{str(merged['outbound_from'])[:40]!r} is not an E.164 number (+ and up to 15 digits)")
        QuietHours.parse(zone, str(merged["quiet_hours"] or "00:00-00:01"))  # each raises InputError
        if merged["business_hours"]:
            BusinessHours.parse(zone, str(merged["business_hours"]))
        parse_contacts(str(merged["on_call"] or ""))
        timeout = merged["race_timeout_s"]
        if timeout is not None and not 10 <= int(timeout) <= 3600:
            raise InputError(f"race timeout {timeout} s is outside 10..3600")
        if not values:
            return
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=2))
        async with as_writer(self._pool) as conn:
            await conn.execute(f"UPDATE tenants SET {sets} WHERE tenant_id = $1", tenant_id, *values.values())

    async def set_redaction(self, tenant_id: str, redaction: Redaction | None) -> None:
        """What the tenant's stored turns may not hold (None: stored as said).

        Raises:
            InputError: no such tenant.
        """
        async with as_writer(self._pool) as conn:
            found = await conn.execute(
                "UPDATE tenants SET redaction = $2::jsonb WHERE tenant_id = $1",
                tenant_id,
                redaction.to_json() if redaction is not None else None,
            )
        if found == "UPDATE 0":
            await self.require_tenant(tenant_id)

    async def redaction(self, tenant_id: str) -> Redaction | None:
        """The tenant's redaction, if it has one (read as each call starts)."""
        async with as_writer(self._pool) as conn:
            value = await conn.fetchval("SELECT redaction::text FROM tenants WHERE tenant_id = $1", tenant_id)
        return Redaction.from_json(value) if value else None

    async def outbound_settings(self, tenant_id: str) -> dict[str, Any] | None:
        """What placing the tenant's calls needs: its own Twilio account (if any), its caller ID
        (set, else its first number), its time zone and quiet hours; and its business hours, who
        is on call and for how long each (after-hours escalations). None: no such tenant."""
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(
                "SELECT twilio_account_sid, outbound_from, timezone, quiet_hours, business_hours, on_call, "
                "race_timeout_s, (SELECT e164 FROM phone_numbers p WHERE p.tenant_id = t.tenant_id "
                "ORDER BY created_at, e164 LIMIT 1) AS first_number FROM tenants t WHERE tenant_id = $1",
                tenant_id,
            )
        return dict(row) if row is not None else None

    async def set_backend_key(self, tenant_id: str, backend: str, api_key: str | None) -> None:
        """The tenant's own key for ``backend``, used for its calls there (None: remove it; the
        deployment's is used again).

        Raises:
            InputError: no such backend, or no such tenant.
        """
        if backend not in BACKENDS:
            raise InputError(f"backend {backend[:40]!r} is not one of {', '.join(BACKENDS)}")
        await self.require_tenant(tenant_id)
        async with as_writer(self._pool) as conn:
            if api_key:
                await conn.execute(
                    "INSERT INTO backend_keys (tenant_id, backend, api_key) VALUES ($1, $2, $3) "
                    "ON CONFLICT (tenant_id, backend) DO UPDATE SET api_key = EXCLUDED.api_key, created_at = now()",
                    tenant_id, backend, api_key,
                )  # fmt: skip
            else:
                await conn.execute("DELETE FROM backend_keys WHERE tenant_id = $1 AND backend = $2", tenant_id, backend)

    async def backend_key(self, tenant_id: str, backend: str) -> str | None:
        """The tenant's own key for ``backend`` (a secret: for the backend's handshake only)."""
        async with as_writer(self._pool) as conn:
            key: str | None = await conn.fetchval(
                "SELECT api_key FROM backend_keys WHERE tenant_id = $1 AND backend = $2", tenant_id, backend
            )
        return key

    async def credentials(self) -> list[Credential]:
        """Every tenant's Twilio account and token (secrets: for signature checks only, never shown)."""
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, twilio_account_sid, twilio_auth_token FROM tenants "
                "WHERE twilio_auth_token IS NOT NULL"
            )
        return [Credential(r["tenant_id"], r["twilio_account_sid"], r["twilio_auth_token"]) for r in rows]

    async def list_tenants(self) -> list[dict[str, Any]]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, name, max_concurrent_calls, calls_per_minute, "
                "twilio_account_sid, created_at FROM tenants ORDER BY tenant_id"
            )
        return [dict(row) for row in rows]

    async def add_agent(self, agent: Agent) -> Agent:
        """Create an agent (or replace one with the same id).

        Raises:
            InputError: a value out of bounds, or no such tenant.
        """
        _check(agent)
        await self.require_tenant(agent.tenant_id)
        async with as_writer(self._pool) as conn:
            await conn.execute(_UPSERT_AGENT, *_agent_row(agent))
        return agent

    async def set_agent(self, tenant_id: str, agent_id: str, **changes: Any) -> Agent:
        """Change some of an agent's settings; the rest stay.

        Raises:
            InputError: a value out of bounds, or no such tenant or agent.
        """
        agent = await self.get_agent(tenant_id, agent_id)
        if agent is None:
            await self.require_tenant(tenant_id)
            raise InputError(f"tenant {tenant_id!r} has no agent {agent_id[:100]!r} (relay agents list shows them)")
        return await self.add_agent(dataclasses.replace(agent, **changes))

    async def get_agent(self, tenant_id: str, agent_id: str = DEFAULT_AGENT) -> Agent | None:
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(f"{_SELECT_AGENTS} WHERE tenant_id = $1 AND agent_id = $2", tenant_id, agent_id)
        return Agent(**dict(row)) if row is not None else None

    async def list_agents(self, tenant_id: str) -> list[Agent]:
        await self.require_tenant(tenant_id)
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(f"{_SELECT_AGENTS} WHERE tenant_id = $1 ORDER BY agent_id", tenant_id)
        return [Agent(**dict(row)) for row in rows]

    async def models_in_use(self) -> list[tuple[str, str]]:
        """(model, where) for every agent's speech and transcription model, for start-up checks."""
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, agent_id, model, transcription_model FROM agents ORDER BY tenant_id, agent_id"
            )
        return [
            use
            for r in rows
            for use in (
                (r["model"], f"agent {r['tenant_id']}/{r['agent_id']}"),
                (r["transcription_model"], f"agent {r['tenant_id']}/{r['agent_id']} transcription"),
            )
        ]

    async def add_number(self, e164: str, tenant_id: str, agent_id: str = DEFAULT_AGENT) -> None:
        """Route calls to ``e164`` to the tenant's agent (re-adding a number moves it).

        Raises:
            InputError: not an E.164 number, or the tenant has no such agent.
        """
        if not E164.fullmatch(e164):
            raise InputError(f"{e164[:40]!r} is not an E.164 number (+ and up to 15 digits)")
        try:
            async with as_writer(self._pool) as conn:
                await conn.execute(
                    "INSERT INTO phone_numbers (e164, tenant_id, agent_id) VALUES ($1, $2, $3) "
                    "ON CONFLICT (e164) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, agent_id = EXCLUDED.agent_id",
                    e164, tenant_id, agent_id,
                )  # fmt: skip
        except asyncpg.exceptions.ForeignKeyViolationError:
            await self.require_tenant(tenant_id)
            raise InputError(f"tenant {tenant_id!r} has no agent {agent_id[:100]!r}: add it first") from None

    async def lookup_number(self, e164: str) -> tuple[str, str] | None:
        """``(tenant_id, agent_id)`` for a called number, or None when it is not configured."""
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow("SELECT tenant_id, agent_id FROM phone_numbers WHERE e164 = $1", e164)
        return (row["tenant_id"], row["agent_id"]) if row is not None else None

    async def tenant_calls(self, tenant_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's most recent calls, newest first, as ``PostgresStore.calls`` gives them."""
        async with as_tenant(self._pool, tenant_id) as conn:
            rows = await conn.fetch(f"{SELECT_CALLS} ORDER BY started_at DESC LIMIT $1", limit)
        return [dict(row) for row in rows]

    async def tenant_turns(self, tenant_id: str, call_sid: str | None = None) -> list[TurnRecord]:
        """The tenant's turns (of one call, or of all its calls), in call and turn order."""
        async with as_tenant(self._pool, tenant_id) as conn:
            if call_sid is None:
                rows = await conn.fetch(f"{SELECT_TURNS} ORDER BY call_sid, seq")
            else:
                rows = await conn.fetch(f"{SELECT_TURNS} WHERE call_sid = $1 ORDER BY seq", call_sid)
        return [TurnRecord(**dict(row)) for row in rows]

    async def tenant_usage(
        self, tenant_id: str, by: str, since: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The tenant's usage grouped ``by`` day, call or agent, read as the tenant (row-level
        security), and the unpriced items of each group (``relay.usage_report.queries``)."""
        grouped, unpriced = queries(by, "postgres")
        async with as_tenant(self._pool, tenant_id) as conn:
            rows = await conn.fetch(grouped, tenant_id, since)
            items = await conn.fetch(unpriced, tenant_id, since)
        return [dict(r) for r in rows], [dict(r) for r in items]


def _check(agent: Agent) -> None:
    problems = agent.problems()
    if problems:
        raise InputError("; ".join(problems))


def _agent_row(agent: Agent) -> tuple[Any, ...]:
    return tuple(getattr(agent, c) for c in AGENT_COLUMNS)
