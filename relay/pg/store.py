"""The Postgres store: asyncpg, row-level security by tenant, and a local spool for outages.

``PostgresStore`` implements ``relay.store.Store`` (sessions ``submit``, one writer task
batches). Each batch is one transaction of ``executemany`` calls, idempotent on ``call_sid`` and
``(call_sid, seq)``, so any batch may be written twice without duplicating a row. When a batch
cannot be written, it goes to the spool (``relay.spool``: fsync'd, checksummed); a background
task retries with capped backoff and replays the spool in order before anything newer is
written. Nothing submitted is lost across an outage or a crash of the relay.

Every transaction here runs as ``relay_writer`` (``relay.pg.db``: the roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from typing import Any

import asyncpg

from relay.errors import ConfigError
from relay.pg.db import (
    SELECT_CALLS,
    SELECT_TURNS,
    TURN_COLUMNS,
    USAGE_COLUMNS,
    as_writer,
    dsn_secrets,
    placeholders,
    redact,
)
from relay.pg.directory import Directory
from relay.pg.schema import migrations
from relay.spool import Spool
from relay.store import CallEnd, CallRecord, Record, RecordMatch, SpoolEraser, Store, TurnRecord
from relay.usage import UsageRecord

log = logging.getLogger("relay.pg.store")

# --- Calls and turns --------------------------------------------------------------------------

_START_COLUMNS = tuple(f.name for f in fields(CallRecord))
_END_COLUMNS = (
    "call_sid", "ended_at", "end_reason", "frames_in", "frames_out", "turns", "v2v_p50_ms", "v2v_max_ms",
    "transferred_to",
)  # fmt: skip

_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(_START_COLUMNS)}) VALUES ({placeholders(len(_START_COLUMNS))}) "
    "ON CONFLICT (call_sid) DO NOTHING"
)
_INSERT_TURN = (
    f"INSERT INTO call_turns ({', '.join(TURN_COLUMNS)}) VALUES ({placeholders(len(TURN_COLUMNS))}) "
    "ON CONFLICT (call_sid, seq) DO NOTHING"
)
# A call handed between relays ends once per stream, and those ends may land in any order:
# the latest end is the call's.
_END_CALL = (
    f"UPDATE calls SET {', '.join(f'{c} = ${i}' for i, c in enumerate(_END_COLUMNS[1:], start=2))} "
    "WHERE call_sid = $1 AND (ended_at IS NULL OR ended_at <= $2)"
)
# A replayed record writes the same row again.
_UPSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({placeholders(len(USAGE_COLUMNS))}) "
    f"ON CONFLICT (call_sid, stream_sid) DO UPDATE SET "
    f"{', '.join(f'{c} = EXCLUDED.{c}' for c in USAGE_COLUMNS if c not in ('call_sid', 'stream_sid'))}"
)

_start_row = attrgetter(*_START_COLUMNS)
_end_row = attrgetter(*_END_COLUMNS)
_turn_row = attrgetter(*TURN_COLUMNS)
_usage_row = attrgetter(*USAGE_COLUMNS)

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
        super().__init__(
            queue_size=queue_size,
            batch_size=batch_size,
            dead_letter_path=dead_letter_path or f"{spool_path}.dead-letter.jsonl",
        )
        self._dsn = dsn
        self._secrets = dsn_secrets(dsn)
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
        # Held across one replay step (read a batch, write it, advance): an erasure waits for
        # the step in flight, so no record it removes is written after it.
        self._replay_step = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self.spooled_records = 0  # records this process has spooled (they were not lost)
        self.failed_retries = 0  # replay attempts that found Postgres still unavailable

    @property
    def location(self) -> str:
        return redact(self._dsn)

    def spool_stats(self) -> tuple[int, int] | None:
        return self._spool.size, self.spooled_records

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
        except Exception as exc:  # noqa: BLE001 - any failure (network, server, driver): the spool keeps it
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
        except Exception as exc:  # noqa: BLE001 - any failure: the batch goes to the spool, never lost
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
            except Exception as exc:  # noqa: BLE001 - any failure: retried with backoff
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
            async with self._replay_step:
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

    @contextlib.asynccontextmanager
    async def erasing(self) -> AsyncIterator[SpoolEraser | None]:
        async with self._replay_step, self._spool_lock:

            async def erase_spooled(match: RecordMatch) -> int:
                if not self._spool.size:
                    return 0
                removed, self._replayed = await asyncio.to_thread(self._spool.remove, match, self._replayed)
                if not self._spool.size:
                    self._spool_empty.set()
                return removed

            yield erase_spooled

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
        # One transaction. Starts, then turns, then ends: an end updates its call's row, and
        # within a batch the start was submitted before it.
        starts = [_start_row(r) for r in batch if isinstance(r, CallRecord)]
        turns = [_turn_row(r) for r in batch if isinstance(r, TurnRecord)]
        ends = [_end_row(r) for r in batch if isinstance(r, CallEnd)]
        usage = [_usage_row(r) for r in batch if isinstance(r, UsageRecord)]
        async with as_writer(self._require_pool()) as conn:
            if starts:
                await conn.executemany(_INSERT_CALL, starts)
            if turns:
                await conn.executemany(_INSERT_TURN, turns)
            if ends:
                await conn.executemany(_END_CALL, ends)
            if usage:
                await conn.executemany(_UPSERT_USAGE, usage)

    async def turns(self, call_sid: str) -> list[TurnRecord]:
        async with as_writer(self._require_pool()) as conn:
            rows = await conn.fetch(f"{SELECT_TURNS} WHERE call_sid = $1 ORDER BY seq", call_sid)
        return [TurnRecord(**dict(row)) for row in rows]

    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        async with as_writer(self._require_pool()) as conn:
            rows = await conn.fetch(f"{SELECT_CALLS} ORDER BY started_at DESC LIMIT $1", limit)
        return [dict(row) for row in rows]

    async def call(self, call_sid: str) -> dict[str, Any] | None:
        async with as_writer(self._require_pool()) as conn:
            row = await conn.fetchrow(f"{SELECT_CALLS} WHERE call_sid = $1", call_sid)
        return dict(row) if row is not None else None

    async def end_reason(self, call_sid: str) -> str | None:
        async with as_writer(self._require_pool()) as conn:
            reason: str | None = await conn.fetchval("SELECT end_reason FROM calls WHERE call_sid = $1", call_sid)
        return reason

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
