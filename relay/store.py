"""Where calls and turns are kept: one small ``Store`` interface, writes never on the frame path.

Sessions hand records to ``Store.submit`` (no await, no I/O); one writer task per store drains
the queue in batches. Rows are idempotent on ``(call_sid, seq)`` for turns and on ``call_sid``
for calls, so a replayed batch never duplicates anything. The embedded default is a SQLite
file (stdlib, nothing to install); the Postgres store implements the same interface.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger("relay.store")

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as it starts; ``CallEnd`` completes it."""

    call_sid: str
    stream_sid: str
    started_at: float
    tenant_id: str = DEFAULT_TENANT
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended, with its per-call figures."""

    call_sid: str
    ended_at: float
    end_reason: str
    frames_in: int = 0
    frames_out: int = 0
    turns: int = 0
    v2v_p50_ms: float | None = None
    v2v_max_ms: float | None = None
    tenant_id: str = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One utterance: the caller's (``role="user"``) or the agent's (``role="assistant"``).

    ``text_generated`` is what the model produced (or the caller's transcript);
    ``text_heard`` what reached the caller's ear, cut short when it was interrupted.
    ``voice_to_voice_ms`` (assistant turns): end of caller speech to first audio sent out.
    """

    call_sid: str
    seq: int
    role: str
    started_at: float
    tenant_id: str = DEFAULT_TENANT
    item_id: str = ""
    text_generated: str | None = None
    text_heard: str | None = None
    interrupted: bool = False
    ended_at: float | None = None
    audio_ms: int = 0
    voice_to_voice_ms: float | None = None


Record = CallRecord | CallEnd | TurnRecord


class Store(ABC):
    """The store interface: ``submit`` from sessions, queries for tools and tests."""

    kind: str = "abstract"

    def __init__(self, queue_size: int = 10000, batch_size: int = 256) -> None:
        self._queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._writer: asyncio.Task[None] | None = None
        self._overflow: set[asyncio.Task[None]] = set()

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data is, safe to print (no password)."""

    async def open(self) -> None:
        await self._open()
        self._writer = asyncio.create_task(self._write_loop(), name=f"{self.kind}-writer")

    async def close(self) -> None:
        """Write everything submitted so far, then release the store."""
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self._close()

    def submit(self, record: Record) -> None:
        """Queue ``record`` for writing; never blocks and never drops it."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            # Past the bound the caller still must not wait (it is a session pump), so the
            # record waits in a task instead; the warning says the writer is falling behind.
            log.warning("store queue full (%d); writer is behind", self._queue.maxsize)
            task = asyncio.ensure_future(self._queue.put(record))
            self._overflow.add(task)
            task.add_done_callback(self._overflow.discard)

    async def flush(self) -> None:
        """Return once every record submitted before the call has been written."""
        if self._overflow:
            await asyncio.gather(*self._overflow)
        await self._queue.join()

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            except Exception:
                log.exception("store write of %d record(s) failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _write_batch(self, batch: list[Record]) -> None: ...

    @abstractmethod
    async def turns(self, call_sid: str) -> list[TurnRecord]:
        """Every stored turn of a call, in order."""

    @abstractmethod
    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        """The most recent calls, newest first."""


# The same tables as the Postgres schema (relay/migrations), without row-level security: the
# embedded store serves one tenant, but data moves between the two without reshaping.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   TEXT PRIMARY KEY CHECK (tenant_id <> ''),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS agents (
    tenant_id             TEXT NOT NULL REFERENCES tenants,
    agent_id              TEXT NOT NULL CHECK (agent_id <> ''),
    instructions          TEXT NOT NULL,
    voice                 TEXT NOT NULL,
    backend               TEXT NOT NULL DEFAULT 'openai',
    vad_threshold         REAL NOT NULL DEFAULT 0.5,
    vad_silence_ms        INTEGER NOT NULL DEFAULT 500,
    vad_prefix_ms         INTEGER NOT NULL DEFAULT 300,
    max_concurrent_calls  INTEGER NOT NULL DEFAULT 10,
    calls_per_minute      INTEGER NOT NULL DEFAULT 60,
    greeting              TEXT NOT NULL DEFAULT '',
    created_at            TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, agent_id)
);
CREATE TABLE IF NOT EXISTS phone_numbers (
    e164        TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL DEFAULT 'default',
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS usage (
    call_sid           TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    audio_in_seconds   REAL NOT NULL DEFAULT 0,
    audio_out_seconds  REAL NOT NULL DEFAULT 0,
    tokens_in          INTEGER NOT NULL DEFAULT 0,
    tokens_out         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS calls (
    call_sid     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    stream_sid   TEXT NOT NULL,
    account_sid  TEXT NOT NULL DEFAULT '',
    from_number  TEXT NOT NULL DEFAULT '',
    to_number    TEXT NOT NULL DEFAULT '',
    started_at   REAL NOT NULL,
    ended_at     REAL,
    end_reason   TEXT,
    frames_in    INTEGER,
    frames_out   INTEGER,
    turns        INTEGER,
    v2v_p50_ms   REAL,
    v2v_max_ms   REAL
);
CREATE TABLE IF NOT EXISTS call_turns (
    call_sid          TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    tenant_id         TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    item_id           TEXT NOT NULL DEFAULT '',
    text_generated    TEXT,
    text_heard        TEXT,
    interrupted       INTEGER NOT NULL DEFAULT 0,
    started_at        REAL NOT NULL,
    ended_at          REAL,
    audio_ms          INTEGER NOT NULL DEFAULT 0,
    voice_to_voice_ms REAL,
    PRIMARY KEY (call_sid, seq)
);
"""

_TURN_COLUMNS = [f.name for f in fields(TurnRecord)]

_INSERT_TURN = (f"INSERT INTO call_turns ({', '.join(_TURN_COLUMNS)}) "
                f"VALUES ({', '.join(':' + c for c in _TURN_COLUMNS)}) ON CONFLICT (call_sid, seq) DO NOTHING")
_INSERT_CALL = ("INSERT INTO calls (call_sid, tenant_id, stream_sid, account_sid, from_number, to_number, started_at) "
                "VALUES (:call_sid, :tenant_id, :stream_sid, :account_sid, :from_number, :to_number, :started_at) "
                "ON CONFLICT (call_sid) DO NOTHING")
_END_CALL = ("UPDATE calls SET ended_at = :ended_at, end_reason = :end_reason, frames_in = :frames_in, "
             "frames_out = :frames_out, turns = :turns, v2v_p50_ms = :v2v_p50_ms, v2v_max_ms = :v2v_max_ms "
             "WHERE call_sid = :call_sid")
# Usage as Postgres computes it: inbound is Twilio's 20 ms frames, outbound the audio of the
# answers stored before the end.
_USAGE = ("INSERT INTO usage (call_sid, tenant_id, audio_in_seconds, audio_out_seconds) "
          "SELECT call_sid, tenant_id, coalesce(frames_in, 0) * 0.020, "
          "coalesce((SELECT sum(audio_ms) FROM call_turns t WHERE t.call_sid = calls.call_sid "
          "AND t.role = 'assistant'), 0) / 1000.0 FROM calls WHERE call_sid = :call_sid "
          "ON CONFLICT (call_sid) DO UPDATE SET audio_in_seconds = excluded.audio_in_seconds, "
          "audio_out_seconds = excluded.audio_out_seconds")


def _fields(record: Record) -> dict[str, object]:
    return {f.name: getattr(record, f.name) for f in fields(record)}  # flat: no asdict deep copy


def _statements(batch: list[Record]) -> list[tuple[str, dict[str, object]]]:
    """The SQLite statements that write ``batch``, in order."""
    out: list[tuple[str, dict[str, object]]] = []
    for record in batch:
        if isinstance(record, TurnRecord):
            out.append((_INSERT_TURN, _fields(record)))
        elif isinstance(record, CallRecord):
            out.append((_INSERT_CALL, _fields(record)))
        else:
            out.append((_END_CALL, _fields(record)))
            out.append((_USAGE, {"call_sid": record.call_sid}))
    return out


class SQLiteStore(Store):
    """The embedded default: one SQLite file, written from a worker thread."""

    kind = "sqlite"

    def __init__(self, path: str | Path, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    @property
    def location(self) -> str:
        return str(self.path.resolve())

    async def _open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            # A file made before agents had a greeting (Postgres migration 0004) gets the column.
            if "greeting" not in {row[1] for row in db.execute("PRAGMA table_info(agents)")}:
                db.execute("ALTER TABLE agents ADD COLUMN greeting TEXT NOT NULL DEFAULT ''")
            return db

        self._db = await asyncio.to_thread(connect)

    async def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def _write_batch(self, batch: list[Record]) -> None:
        # The statements are built here, on the loop; the thread only runs them. Python code in
        # the thread would hold the GIL while the loop waits to run a frame (the convoy: up to
        # the switch interval per wake-up), so it does nothing the C library cannot.
        await asyncio.to_thread(self._execute, _statements(batch))

    def _execute(self, statements: list[tuple[str, dict[str, object]]]) -> None:
        assert self._db is not None
        with self._db:  # one transaction per batch
            self._db.execute("BEGIN")
            for sql, params in statements:
                self._db.execute(sql, params)

    async def turns(self, call_sid: str) -> list[TurnRecord]:
        def query() -> list[TurnRecord]:
            assert self._db is not None
            cursor = self._db.execute(
                f"SELECT {', '.join(_TURN_COLUMNS)} FROM call_turns WHERE call_sid = ? ORDER BY seq", (call_sid,)
            )
            return [TurnRecord(**dict(zip(_TURN_COLUMNS, row))) for row in cursor.fetchall()]

        rows = await asyncio.to_thread(query)
        return [TurnRecord(**{**asdict(r), "interrupted": bool(r.interrupted)}) for r in rows]

    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        def query() -> list[dict[str, object]]:
            assert self._db is not None
            cursor = self._db.execute("SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

        return await asyncio.to_thread(query)
