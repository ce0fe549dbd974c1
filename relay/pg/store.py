"""The Postgres store: asyncpg, row-level security by tenant, and a local spool for outages.

``PostgresStore`` implements ``relay.store.Store`` (sessions ``submit``, one writer task
batches). Each batch is one transaction of ``executemany`` calls, idempotent on ``call_sid`` and
``(call_sid, seq)``, so any batch may be written twice without duplicating a row. When a batch
cannot be written, it goes to the spool (``relay.spool``: fsync'd, checksummed); a background
task retries with capped backoff and replays the spool in order before anything newer is
written. Nothing submitted is lost across an outage or a crash of the relay.

Roles (see ``migrations/0001_schema.sql``): writes and operator reads run inside transactions
that ``SET LOCAL ROLE relay_writer``; every read on a tenant's behalf runs in a transaction that
``SET LOCAL ROLE relay_reader`` and sets ``app.tenant_id``, so row-level security applies even
when the DSN's user owns the tables or is a superuser. ``SET ROLE`` is a boundary for the
queries this module issues, not against SQL injection (``RESET ROLE`` undoes it): every query
here is a fixed text with parameters.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
import dataclasses
from dataclasses import fields
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.agents import COLUMNS as AGENT_COLUMNS
from relay.agents import DEFAULT_AGENT, RANGES, Agent, AgentProfile
from relay.errors import ConfigError, InputError
from relay.spool import Spool
from relay.store import CallEnd, CallRecord, Record, Store, TurnRecord
from relay.trust import Credential
from relay.twilio import ACCOUNT_SID, E164

log = logging.getLogger("relay.pg.store")

# --- DSNs: printable without their secrets -------------------------------------------------

_SECRET_PARAMS = ("password", "sslpassword")


def redact(dsn: str) -> str:
    """``dsn`` with every password removed (URL userinfo, ``?password=``, ``password=`` words)."""
    try:
        parts = urlsplit(dsn)
        if not parts.scheme:  # a libpq "key=value" string
            return re.sub(r"\b(?:ssl)?password\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)\s*", "", dsn).strip()
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hosts}"
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _SECRET_PARAMS]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))
    except ValueError:
        return "<unparsable DSN>"


def _secrets(dsn: str) -> list[str]:
    """The passwords in ``dsn``, to scrub from any error text that might echo them."""
    try:
        parts = urlsplit(dsn)
        found = [unquote(parts.password)] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query) if k in _SECRET_PARAMS and v]
    except ValueError:
        return []
    return found


# --- Migrations -------------------------------------------------------------------------------

# Key of the transaction-scoped advisory lock that serialises relays migrating together.
_MIGRATION_LOCK = 0x72656C6179  # b"relay"
_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     TEXT PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migrations() -> list[tuple[str, str]]:
    """Every bundled migration as ``(version, sql)``, in order: ``0001_schema.sql`` is "0001"."""
    found = []
    for entry in resources.files("relay.pg.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((match[1], entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations ``dsn``'s database lacks, each in its own transaction.

    Safe to run from several relays at once: each migration runs under a transaction-scoped
    advisory lock and re-checks ``schema_migrations`` once it holds it.

    Returns:
        The versions applied by this call, in order (empty when the schema is current).
    """
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        for version, sql in migrations():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(_MIGRATIONS_TABLE)
                if await conn.fetchval("SELECT true FROM schema_migrations WHERE version = $1", version):
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s to %s", version, redact(dsn))
            applied.append(version)
    finally:
        await conn.close()
    return applied


# --- Transactions under the two roles ---------------------------------------------------------


@asynccontextmanager
async def as_writer(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction as ``relay_writer``: every tenant's rows, read and write."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE relay_writer")
        yield conn


@asynccontextmanager
async def as_tenant(pool: asyncpg.Pool, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A read-only transaction as ``relay_reader`` that sees only ``tenant_id``'s rows.

    Both settings are transaction-local, so nothing leaks to the pooled connection's next user.
    """
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL ROLE relay_reader")
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        yield conn


# --- Calls and turns --------------------------------------------------------------------------

_CALL_COLUMNS = (  # in SQLiteStore's order, so both stores' calls() give the same dicts
    "call_sid", "tenant_id", "stream_sid", "account_sid", "from_number", "to_number", "started_at",
    "ended_at", "end_reason", "frames_in", "frames_out", "turns", "v2v_p50_ms", "v2v_max_ms",
)  # fmt: skip
_START_COLUMNS = tuple(f.name for f in fields(CallRecord))
_END_COLUMNS = ("call_sid", "ended_at", "end_reason", "frames_in", "frames_out", "turns", "v2v_p50_ms", "v2v_max_ms")
_TURN_COLUMNS = tuple(f.name for f in fields(TurnRecord))


def _placeholders(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(_START_COLUMNS)}) VALUES ({_placeholders(len(_START_COLUMNS))}) "
    "ON CONFLICT (call_sid) DO NOTHING"
)
_INSERT_TURN = (
    f"INSERT INTO call_turns ({', '.join(_TURN_COLUMNS)}) VALUES ({_placeholders(len(_TURN_COLUMNS))}) "
    "ON CONFLICT (call_sid, seq) DO NOTHING"
)
# Completes the call and (re)computes its usage in one statement. Inbound audio is Twilio's
# 20 ms frames; outbound is what the assistant turns, written before the end, carried.
_END_CALL = f"""
WITH ended AS (
    UPDATE calls SET {', '.join(f"{c} = ${i}" for i, c in enumerate(_END_COLUMNS[1:], start=2))}
    WHERE call_sid = $1
    RETURNING call_sid, tenant_id, frames_in
)
INSERT INTO usage (call_sid, tenant_id, audio_in_seconds, audio_out_seconds)
SELECT e.call_sid, e.tenant_id, coalesce(e.frames_in, 0) * 0.020,
       coalesce((SELECT sum(t.audio_ms) FROM call_turns t
                 WHERE t.call_sid = e.call_sid AND t.role = 'assistant'), 0) / 1000.0
FROM ended e
ON CONFLICT (call_sid) DO UPDATE
    SET audio_in_seconds = EXCLUDED.audio_in_seconds, audio_out_seconds = EXCLUDED.audio_out_seconds
"""
_SELECT_TURNS = f"SELECT {', '.join(_TURN_COLUMNS)} FROM call_turns"
_SELECT_CALLS = f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls"

_start_row = attrgetter(*_START_COLUMNS)
_end_row = attrgetter(*_END_COLUMNS)
_turn_row = attrgetter(*_TURN_COLUMNS)

# Postgres rejecting the data itself: retrying cannot help, so such a record is dead-lettered.
# Any other failure (unreachable, timeout, missing schema, privileges) is kept and retried.
_REJECTED = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)
# What "the database is not there right now" looks like while opening the store.
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_FIRST_RETRY_S = 0.2


class PostgresStore(Store):
    """Calls and turns in Postgres; batches Postgres cannot take wait in a local spool.

    ``flush()`` returns once every record submitted before it is either committed to Postgres
    or appended to the spool and fsync'd: safe across a crash, not necessarily in the database
    yet. ``drained()`` waits for the database itself.

    Args:
        dsn: a ``postgresql://`` URL; its password never appears in ``location``, logs or reprs.
        spool_path: the spool file; one process at a time may hold it.
        dead_letter_path: where records Postgres refuses for good go (default: beside the spool).
        pool_size: at most this many connections (the writer, the replay, reads).
        connect_timeout: seconds to establish a connection before the batch is spooled.
        command_timeout: seconds for one statement before the batch is spooled.
        max_backoff: the cap, in seconds, of the retry delay while Postgres is unavailable.
    """

    kind = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        spool_path: str | Path,
        dead_letter_path: str | Path | None = None,
        queue_size: int = 10000,
        batch_size: int = 256,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(queue_size=queue_size, batch_size=batch_size,
                         dead_letter_path=dead_letter_path or f"{spool_path}.dead-letter.jsonl")
        self._dsn = dsn
        self._secrets = _secrets(dsn)
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._max_backoff = max_backoff
        self._pool: asyncpg.Pool | None = None
        self._spool = Spool(spool_path)
        # Held while the spool is appended to, read, or found fully replayed and cleared, so
        # "spool is empty, write directly" and "spool has data, append behind it" never race.
        self._spool_lock = asyncio.Lock()
        self._spool_empty = asyncio.Event()
        self._replayed = 0  # spool offset up to which records are committed to Postgres
        self._recovery: asyncio.Task[None] | None = None
        self.spooled_records = 0  # records this process has spooled (they were not lost)
        self.failed_retries = 0  # replay attempts that found Postgres still unavailable

    @property
    def location(self) -> str:
        return redact(self._dsn)

    @property
    def spool_path(self) -> Path:
        return self._spool.path

    @property
    def spooled_bytes(self) -> int:
        """Bytes waiting in the spool for Postgres (0 in normal operation)."""
        return self._spool.size

    @property
    def pool(self) -> asyncpg.Pool:
        """The store's connection pool (for the admission count, which shares the database)."""
        return self._require_pool()

    @property
    def directory(self) -> Directory:
        """Tenants, numbers and agents, and tenant-scoped reads, on this store's pool."""
        return Directory(self._require_pool())

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, spool={str(self._spool.path)!r})"

    async def drained(self, timeout: float | None = None) -> None:
        """Wait until every record submitted so far is committed to Postgres, spool included.

        Raises:
            TimeoutError: Postgres has not taken everything within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            await self.flush()
            while self._spool.size:
                await self._spool_empty.wait()

    async def _open(self) -> None:
        await asyncio.to_thread(self._spool.open)
        self._replayed = 0
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,  # open even while Postgres is down: connections are made on demand
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
            try:
                await self._check_schema()
            except _UNREACHABLE as exc:
                log.warning(
                    "postgres at %s is unreachable (%s); records are spooled to %s until it is back",
                    self.location, self._brief(exc), self._spool.path,
                )  # fmt: skip
        except BaseException:
            await self._close()
            raise
        if not self._spool.size:
            self._spool_empty.set()
            return
        # Left by an earlier run (an outage, a crash): it goes first, before anything newer.
        log.info("replaying %d byte(s) spooled at %s", self._spool.size, self._spool.path)
        try:
            await self._replay()
        except Exception as exc:
            log.warning("postgres is unavailable (%s); the spool is replayed once it is back", self._brief(exc))
            async with self._spool_lock:
                self._start_recovery()

    async def _check_schema(self) -> None:
        """Fail loud at startup when the database was never migrated (or is behind this code)."""
        needed = migrations()[-1][0]
        async with self._require_pool().acquire() as conn:
            try:
                version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            except asyncpg.exceptions.UndefinedTableError:
                version = None
        if version is None or version < needed:
            raise ConfigError(
                [f"the database at {self.location} is at schema {version or 'none'}, this relay needs "
                 f"{needed}: run `relay migrate`"]
            )  # fmt: skip

    async def _close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
            self._recovery = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._command_timeout)
            except (TimeoutError, OSError, asyncpg.exceptions.InterfaceError):
                pool.terminate()
        if self._spool.size:
            log.warning(
                "%d byte(s) stay spooled at %s; they are replayed on the next open", self._spool.size, self._spool.path
            )
        await asyncio.to_thread(self._spool.close)

    async def _write_batch(self, batch: list[Record]) -> None:
        async with self._spool_lock:
            if self._spool.size:
                # Older records are still spooled: newer ones queue behind them, so order holds
                # (a CallEnd never overtakes its CallRecord).
                await self._spool_append(batch)
                self._start_recovery()
                return
        try:
            await self._store(batch)
        except Exception as exc:
            log.warning(
                "postgres write of %d record(s) failed (%s); spooling to %s",
                len(batch), self._brief(exc), self._spool.path,
            )  # fmt: skip
            async with self._spool_lock:
                await self._spool_append(batch)
                self._start_recovery()

    async def _spool_append(self, batch: Sequence[Record]) -> None:
        # Cleared before the size can grow: drained() must never see data with the event set
        # (Event.wait() on a set event does not yield, so it would spin).
        self._spool_empty.clear()
        try:
            await asyncio.to_thread(self._spool.append, batch)
        finally:
            if not self._spool.size:
                self._spool_empty.set()
        self.spooled_records += len(batch)

    def _start_recovery(self) -> None:
        """Start the retry task unless it runs (call with the spool lock held, see _replay)."""
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recover(), name="postgres-recovery")

    async def _recover(self) -> None:
        delay = _FIRST_RETRY_S
        while True:
            # Jitter, so relays sharing one database do not come back in lockstep.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                await self._replay()
            except Exception as exc:
                self.failed_retries += 1
                delay = min(delay * 2, self._max_backoff)
                log.warning(
                    "postgres still unavailable (%s); %d byte(s) spooled at %s; next try in ~%.1f s",
                    self._brief(exc), self._spool.size, self._spool.path, delay,
                )  # fmt: skip
            else:
                log.info("postgres is back at %s; spool replayed", self.location)
                return

    async def _replay(self) -> None:
        """Write the spool to Postgres in order, then clear it; raises if Postgres fails."""
        while True:
            async with self._spool_lock:
                if self._replayed >= self._spool.size:
                    await asyncio.to_thread(self._spool.clear)
                    self._replayed = 0
                    self._spool_empty.set()
                    self._recovery = None  # in the same critical section as the clear: a batch
                    return  # spooled after it starts a new recovery task
                records, end = await asyncio.to_thread(self._spool.read, self._replayed, self._batch_size)
            if not records:
                # Only possible if the file was changed under us: skip what cannot be read.
                log.error("spool %s unreadable at offset %d; skipping the rest", self._spool.path, self._replayed)
                self._replayed = self._spool.size
                continue
            await self._store(records)
            self._replayed = end

    async def _store(self, batch: Sequence[Record]) -> None:
        """Write ``batch``; a record Postgres rejects as invalid is dead-lettered alone.

        Raises any other failure: the caller keeps the batch and retries, since waiting fixes
        an outage and never fixes bad data.
        """
        try:
            await self._write(batch)
        except _REJECTED as exc:
            if len(batch) == 1:
                await self.dead_letter(batch, self._brief(exc))
                return
            for record in batch:  # keep every good record of the batch
                await self._store([record])

    async def _write(self, batch: Sequence[Record]) -> None:
        # One transaction. Starts, then turns, then ends: an end updates its call's row and
        # sums its turns, and within a batch both were submitted before it.
        starts = [_start_row(r) for r in batch if isinstance(r, CallRecord)]
        turns = [_turn_row(r) for r in batch if isinstance(r, TurnRecord)]
        ends = [_end_row(r) for r in batch if isinstance(r, CallEnd)]
        async with as_writer(self._require_pool()) as conn:
            if starts:
                await conn.executemany(_INSERT_CALL, starts)
            if turns:
                await conn.executemany(_INSERT_TURN, turns)
            if ends:
                await conn.executemany(_END_CALL, ends)

    async def turns(self, call_sid: str) -> list[TurnRecord]:
        async with as_writer(self._require_pool()) as conn:
            rows = await conn.fetch(f"{_SELECT_TURNS} WHERE call_sid = $1 ORDER BY seq", call_sid)
        return [TurnRecord(**dict(row)) for row in rows]

    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        async with as_writer(self._require_pool()) as conn:
            rows = await conn.fetch(f"{_SELECT_CALLS} ORDER BY started_at DESC LIMIT $1", limit)
        return [dict(row) for row in rows]

    async def end_reason(self, call_sid: str) -> str | None:
        async with as_writer(self._require_pool()) as conn:
            return await conn.fetchval("SELECT end_reason FROM calls WHERE call_sid = $1", call_sid)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise asyncpg.exceptions.InterfaceError("the store is not open")
        return self._pool

    def _brief(self, exc: BaseException) -> str:
        """An error for a log line: its class and message, any password scrubbed out."""
        text = f"{type(exc).__name__}: {exc}"[:300]
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# --- The directory: tenants, their numbers and agents -----------------------------------------

_UPSERT_AGENT = (
    f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES ({_placeholders(len(AGENT_COLUMNS))}) "
    f"ON CONFLICT (tenant_id, agent_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in AGENT_COLUMNS[2:])
)
_INSERT_AGENT = (f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES ({_placeholders(len(AGENT_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
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
        behaves as ``first_agent`` (the environment's, ``Settings.agent``)."""
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

    async def credentials(self) -> list[Credential]:
        """Every tenant's Twilio account and token (secrets: for signature checks only, never shown)."""
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch("SELECT tenant_id, twilio_account_sid, twilio_auth_token FROM tenants "
                                    "WHERE twilio_auth_token IS NOT NULL")
        return [Credential(r["tenant_id"], r["twilio_account_sid"], r["twilio_auth_token"]) for r in rows]

    async def list_tenants(self) -> list[dict[str, Any]]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch("SELECT tenant_id, name, max_concurrent_calls, calls_per_minute, "
                                    "twilio_account_sid, created_at FROM tenants ORDER BY tenant_id")
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
            rows = await conn.fetch("SELECT tenant_id, agent_id, model, transcription_model FROM agents "
                                    "ORDER BY tenant_id, agent_id")
        return [use for r in rows for use in ((r["model"], f"agent {r['tenant_id']}/{r['agent_id']}"),
                                              (r["transcription_model"],
                                               f"agent {r['tenant_id']}/{r['agent_id']} transcription"))]

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
            rows = await conn.fetch(f"{_SELECT_CALLS} ORDER BY started_at DESC LIMIT $1", limit)
        return [dict(row) for row in rows]

    async def tenant_turns(self, tenant_id: str, call_sid: str | None = None) -> list[TurnRecord]:
        """The tenant's turns (of one call, or of all its calls), in call and turn order."""
        async with as_tenant(self._pool, tenant_id) as conn:
            if call_sid is None:
                rows = await conn.fetch(f"{_SELECT_TURNS} ORDER BY call_sid, seq")
            else:
                rows = await conn.fetch(f"{_SELECT_TURNS} WHERE call_sid = $1 ORDER BY seq", call_sid)
        return [TurnRecord(**dict(row)) for row in rows]


def _check(agent: Agent) -> None:
    problems = agent.problems()
    if problems:
        raise InputError("; ".join(problems))


def _agent_row(agent: Agent) -> tuple[Any, ...]:
    return tuple(getattr(agent, c) for c in AGENT_COLUMNS)
