"""Where calls and turns are kept: one small ``Store`` interface, writes never on the frame path.

Sessions hand records to ``Store.submit`` (no await, no I/O); one writer task per store drains
the queue in batches. Rows are idempotent on ``(call_sid, seq)`` for turns and on ``call_sid``
for calls, so a replayed batch never duplicates anything. The embedded default is a SQLite
file (stdlib, nothing to install); the Postgres store implements the same interface.

Nothing submitted is dropped. A batch the database cannot take *now* (a locked, read-only or
full SQLite file; Postgres unreachable) waits and is retried (Postgres: in its spool); a
record the database refuses *for good* (a constraint) goes to the dead-letter file, one JSON
line with the reason, and is counted (``dead_letters``). The one way to lose a record is a
process killed while it still waits in memory (the queue, or an embedded store's retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Protocol

from relay import tracing
from relay.metrics import BATCH_BUCKETS_S, Buckets
from relay.usage import UsageRecord
from relay.usage_report import queries

log = logging.getLogger("relay.store")

RETRY_BACKOFF = (0.1, 5.0)  # first and longest wait between attempts at a batch, seconds

DEFAULT_TENANT = "default"


class RecordMatch(Protocol):
    """Which records an erasure removes (``relay.erasure.Match``)."""

    def __call__(self, record: Record) -> bool: ...
    def widened(self, records: list[Record]) -> RecordMatch: ...


# What erases matching records from a store's spool (``Store.erasing``): how many went.
SpoolEraser = Callable[[RecordMatch], Awaitable[int]]


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
    transferred_to: str = ""  # the number or address the caller was put through to (a ``transferred`` end)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One utterance: the caller's (``role="user"``) or the agent's (``role="assistant"``).

    ``text_generated`` is what the model produced (or the caller's transcript);
    ``text_heard`` what reached the caller's ear, cut short when it was interrupted.
    ``voice_to_voice_ms`` (assistant turns): end of caller speech to first audio sent out.
    ``fragments``: for a backend that sends timed transcripts (GPT-Live), the turn's raw
    fragments as JSON, ``[[text, start_ms, end_ms], …]`` on its session's timeline.
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
    fragments: str | None = None


Record = CallRecord | CallEnd | TurnRecord | UsageRecord

_TYPES: dict[str, type[CallRecord] | type[CallEnd] | type[TurnRecord] | type[UsageRecord]] = {
    "call": CallRecord,
    "end": CallEnd,
    "turn": TurnRecord,
    "usage": UsageRecord,
}
_TAGS = {cls: tag for tag, cls in _TYPES.items()}


def record_to_dict(record: Record) -> dict[str, object]:
    """A record as plain JSON-able values, tagged with its kind (the spool's and dead letters' form)."""
    return {"type": _TAGS[type(record)], **asdict(record)}


def record_from_dict(data: dict[str, object]) -> Record:
    """The record ``record_to_dict`` made.

    Raises:
        KeyError, TypeError: not such a dict.
    """
    data = dict(data)
    return _TYPES[str(data.pop("type"))](**data)  # type: ignore[arg-type]  # a record's own fields


def describe(record: Record) -> str:
    """A record's identity for logs (never its text)."""
    seq = f" seq {record.seq}" if isinstance(record, TurnRecord) else ""
    return f"{type(record).__name__} {record.call_sid}{seq}"


class Store(ABC):
    """The store interface: ``submit`` from sessions, queries for tools and tests.

    Args:
        queue_size: records waiting for the writer before ``submit`` parks the rest in tasks.
        batch_size: records written in one transaction, at most.
        dead_letter_path: the file records the database refuses for good are appended to.
    """

    kind: str = "abstract"

    def __init__(
        self,
        queue_size: int = 10000,
        batch_size: int = 256,
        *,
        dead_letter_path: str | Path = "relay.dead-letter.jsonl",
    ) -> None:
        self._queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._writer: asyncio.Task[None] | None = None
        self._overflow: set[asyncio.Task[None]] = set()
        self.dead_letter_path = Path(dead_letter_path)
        self.dead_letters = 0  # records written to the dead-letter file by this process
        self.batch_seconds = Buckets(BATCH_BUCKETS_S)  # how long each batch took to settle
        # Records put in the queue, and records the writer is done with (written, spooled or
        # dead-lettered), in queue order: flush() waits for the second to pass the first.
        self._enqueued = 0
        self._done = 0
        self._progress = asyncio.Condition()
        self._inflight: list[Record] = []  # the batch the writer holds

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data is, safe to print (no password)."""

    @property
    def writable(self) -> bool:
        """Whether what is submitted now is kept: written, or spooled to be written (``/readyz``)."""
        return True

    async def open(self) -> None:
        await self._open()
        self._writer = asyncio.create_task(self._write_loop(), name=f"{self.kind}-writer")

    async def close(self, timeout: float | None = None) -> None:
        """Write everything submitted so far, then release the store.

        With a ``timeout``, records the database still cannot take when it passes go to the
        dead-letter file (a shutdown must end), with that reason.
        """
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            left = list(self._inflight)
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            log.error(
                "store: %d record(s) not written within %.0f s of shutdown; dead-lettered to %s",
                len(left),
                timeout,
                self.dead_letter_path,
            )
            await asyncio.to_thread(self._append_dead_letters, left, "not written before shutdown")
            self._inflight = []
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self._close()

    def submit(self, record: Record) -> None:
        """Queue ``record`` for writing; never blocks and never drops it."""
        try:
            self._queue.put_nowait(record)
            self._enqueued += 1
        except asyncio.QueueFull:
            # Past the bound the caller still must not wait (it is a session pump), so the
            # record waits in a task instead; the warning says the writer is falling behind.
            log.warning("store queue full (%d); writer is behind", self._queue.maxsize)
            task = asyncio.ensure_future(self._put_late(record))
            self._overflow.add(task)
            task.add_done_callback(self._overflow.discard)

    async def _put_late(self, record: Record) -> None:
        await self._queue.put(record)
        self._enqueued += 1

    @property
    def queue_depth(self) -> int:
        """Records waiting for the writer, the batch it holds included."""
        return self._queue.qsize() + len(self._inflight) + len(self._overflow)

    def spool_stats(self) -> tuple[int, int] | None:
        """(bytes in the outage spool, records this process spooled); None: this store has none."""
        return None

    async def flush(self) -> None:
        """Return once every record submitted before the call is written (or spooled, or
        dead-lettered); records submitted meanwhile are not waited for."""
        if self._overflow:
            await asyncio.gather(*self._overflow)
        target = self._enqueued
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def _write_loop(self) -> None:
        while True:
            batch = self._inflight = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.monotonic()
            with tracing.store_write(len(batch)):
                await self._settle(batch)
            self.batch_seconds.observe(time.monotonic() - started)
            self._inflight = []
            for _ in batch:
                self._queue.task_done()
            async with self._progress:
                self._done += len(batch)
                self._progress.notify_all()

    async def _settle(self, batch: list[Record]) -> None:
        """Write ``batch``; what cannot be written is dead-lettered, and what cannot even be
        dead-lettered (a full disk) is kept and tried again: nothing leaves memory unwritten."""
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                await self._write_batch(batch)
                return
            except Exception as exc:  # noqa: BLE001 - a failure _write_batch does not handle itself: a bug, say
                reason = f"{type(exc).__name__}: {exc}"[:300]
                log.error("store write of %d record(s) failed (%s); dead-lettering them", len(batch), reason)
            try:
                await asyncio.to_thread(self._append_dead_letters, batch, reason)
                return
            except OSError as exc:
                log.error(
                    "the dead-letter file %s cannot be written either (%s); retrying in %.1f s",
                    self.dead_letter_path,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF[1])

    async def dead_letter(self, records: Iterable[Record], reason: str) -> None:
        """Append ``records`` to the dead-letter file with ``reason`` (records refused for good)."""
        records = list(records)
        for record in records:
            log.error("store refused %s for good (%s); written to %s", describe(record), reason, self.dead_letter_path)
        await asyncio.to_thread(self._append_dead_letters, records, reason)

    def _append_dead_letters(self, records: list[Record], reason: str) -> None:
        if not records:
            return
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        lines = "".join(json.dumps({"at": at, "reason": reason, "record": record_to_dict(r)}) + "\n" for r in records)
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.dead_letter_path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.dead_letters += len(records)

    @contextlib.asynccontextmanager
    async def erasing(self) -> AsyncIterator[SpoolEraser | None]:
        """Hold the store still for an erasure (nothing replayed from its spool meanwhile), and
        give what erases from its spool (None: it has none)."""
        yield None

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
    async def end_reason(self, call_sid: str) -> str | None:
        """How a call ended, once its end is stored (None: unknown, or not ended)."""

    @abstractmethod
    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        """The most recent calls, newest first."""

    @abstractmethod
    async def call(self, call_sid: str) -> dict[str, Any] | None:
        """One call's row (as ``calls`` gives them), if it is stored."""


# The same tables as the Postgres schema (relay/pg/migrations), without row-level security: the
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
    backend               TEXT NOT NULL DEFAULT 'openai-realtime',
    model                 TEXT NOT NULL DEFAULT '',
    transcription_model   TEXT NOT NULL DEFAULT '',
    vad_threshold         REAL NOT NULL DEFAULT 0.5,
    vad_silence_ms        INTEGER NOT NULL DEFAULT 500,
    vad_prefix_ms         INTEGER NOT NULL DEFAULT 300,
    max_concurrent_calls  INTEGER,
    calls_per_minute      INTEGER,
    greeting              TEXT NOT NULL DEFAULT '',
    reasoning_effort      TEXT NOT NULL DEFAULT 'low',
    voicemail_message     TEXT NOT NULL DEFAULT '',
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
    call_sid                    TEXT NOT NULL,
    stream_sid                  TEXT NOT NULL DEFAULT '',
    tenant_id                   TEXT NOT NULL,
    agent_id                    TEXT NOT NULL DEFAULT 'default',
    direction                   TEXT NOT NULL DEFAULT 'inbound',
    started_at                  REAL NOT NULL DEFAULT 0,
    ended_at                    REAL NOT NULL DEFAULT 0,
    backend                     TEXT NOT NULL DEFAULT '',
    model                       TEXT NOT NULL DEFAULT '',
    audio_in_seconds            REAL NOT NULL DEFAULT 0,
    audio_out_seconds           REAL NOT NULL DEFAULT 0,
    text_in_tokens              INTEGER NOT NULL DEFAULT 0,
    cached_text_in_tokens       INTEGER NOT NULL DEFAULT 0,
    audio_in_tokens             INTEGER NOT NULL DEFAULT 0,
    cached_audio_in_tokens      INTEGER NOT NULL DEFAULT 0,
    text_out_tokens             INTEGER NOT NULL DEFAULT 0,
    audio_out_tokens            INTEGER NOT NULL DEFAULT 0,
    backend_seconds             REAL NOT NULL DEFAULT 0,
    transcription_model         TEXT NOT NULL DEFAULT '',
    transcription_seconds       REAL NOT NULL DEFAULT 0,
    transcription_tokens_in     INTEGER NOT NULL DEFAULT 0,
    transcription_tokens_out    INTEGER NOT NULL DEFAULT 0,
    twilio_minutes              INTEGER NOT NULL DEFAULT 0,
    estimated                   INTEGER NOT NULL DEFAULT 0,
    prices_version              TEXT NOT NULL DEFAULT '',
    backend_cost_nanousd        INTEGER NOT NULL DEFAULT 0,
    transcription_cost_nanousd  INTEGER NOT NULL DEFAULT 0,
    twilio_cost_nanousd         INTEGER NOT NULL DEFAULT 0,
    cost_nanousd                INTEGER NOT NULL DEFAULT 0,
    unpriced                    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (call_sid, stream_sid)
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
    v2v_max_ms   REAL,
    transferred_to TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS erasures (
    tenant_id     TEXT NOT NULL,
    erased_at     REAL NOT NULL,
    requested_by  TEXT NOT NULL DEFAULT '',
    calls         INTEGER NOT NULL DEFAULT 0,
    turns         INTEGER NOT NULL DEFAULT 0,
    usage         INTEGER NOT NULL DEFAULT 0,
    jobs          INTEGER NOT NULL DEFAULT 0,
    spooled       INTEGER NOT NULL DEFAULT 0,
    dead_letters  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS call_turns (
    call_sid          TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    tenant_id         TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    item_id           TEXT NOT NULL DEFAULT '',
    text_generated    TEXT,
    text_heard        TEXT,
    interrupted       INTEGER NOT NULL DEFAULT 0,
    started_at        REAL NOT NULL,
    ended_at          REAL,
    audio_ms          INTEGER NOT NULL DEFAULT 0,
    voice_to_voice_ms REAL,
    fragments         TEXT,
    PRIMARY KEY (call_sid, seq)
);
"""

_TURN_COLUMNS = [f.name for f in fields(TurnRecord)]


def _rebuild_usage(db: sqlite3.Connection) -> None:
    """A file from before the cost ledger: its usage rows (audio seconds only, keyed by call)
    move to the ledger's table, saying their cost was never recorded (as migration 0006 does)."""
    db.executescript(
        "BEGIN; ALTER TABLE usage RENAME TO usage_before_ledger;"
        + _SCHEMA
        + "INSERT INTO usage (call_sid, tenant_id, audio_in_seconds, audio_out_seconds, started_at, ended_at, unpriced)"
        " SELECT u.call_sid, u.tenant_id, u.audio_in_seconds, u.audio_out_seconds, coalesce(c.started_at, 0),"
        " coalesce(c.ended_at, c.started_at, 0), 'unrecorded'"
        " FROM usage_before_ledger u LEFT JOIN calls c ON c.call_sid = u.call_sid;"
        "DROP TABLE usage_before_ledger; COMMIT;"
    )


def _add_new_columns(db: sqlite3.Connection) -> None:
    """Give a file made by an earlier relay the columns ``_SCHEMA`` has gained since (as the
    Postgres migrations do): each as declared there, with its default."""
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", _SCHEMA, re.S):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for line in body.splitlines():
            column = line.strip().rstrip(",")
            name = column.split(" ", 1)[0]
            if name and name not in have and name.isidentifier() and name.islower() and "PRIMARY KEY" not in column:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _admit_tool_turns(db: sqlite3.Connection) -> None:
    """A file from before tool turns: its call_turns table is rebuilt with the wider role CHECK
    (SQLite cannot alter a CHECK in place; migration 0011 does it on Postgres)."""
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'call_turns'").fetchone()
    if "'tool'" in sql:
        return
    columns = ", ".join(_TURN_COLUMNS)
    db.executescript(
        "BEGIN; ALTER TABLE call_turns RENAME TO call_turns_before_tools;"
        + _SCHEMA
        + f"INSERT INTO call_turns ({columns}) SELECT {columns} FROM call_turns_before_tools;"
        "DROP TABLE call_turns_before_tools; COMMIT;"
    )


_INSERT_TURN = (
    f"INSERT INTO call_turns ({', '.join(_TURN_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _TURN_COLUMNS)}) ON CONFLICT (call_sid, seq) DO NOTHING"
)
_INSERT_CALL = (
    "INSERT INTO calls (call_sid, tenant_id, stream_sid, account_sid, from_number, to_number, started_at) "
    "VALUES (:call_sid, :tenant_id, :stream_sid, :account_sid, :from_number, :to_number, :started_at) "
    "ON CONFLICT (call_sid) DO NOTHING"
)
# A call handed between relays ends once per stream, and those ends may land in any order:
# the latest end is the call's.
_END_CALL = (
    "UPDATE calls SET ended_at = :ended_at, end_reason = :end_reason, frames_in = :frames_in, "
    "frames_out = :frames_out, turns = :turns, v2v_p50_ms = :v2v_p50_ms, v2v_max_ms = :v2v_max_ms, "
    "transferred_to = :transferred_to "
    "WHERE call_sid = :call_sid AND (ended_at IS NULL OR ended_at <= :ended_at)"
)
_USAGE_COLUMNS = [f.name for f in fields(UsageRecord)]
# A replayed record writes the same row again.
_UPSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(_USAGE_COLUMNS)}) VALUES ({', '.join(':' + c for c in _USAGE_COLUMNS)}) "
    f"ON CONFLICT (call_sid, stream_sid) DO UPDATE SET "
    f"{', '.join(f'{c} = excluded.{c}' for c in _USAGE_COLUMNS if c not in ('call_sid', 'stream_sid'))}"
)

# What SQLite refuses for good: the data itself (a constraint, a value it cannot bind).
_REFUSED = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


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
        elif isinstance(record, UsageRecord):
            out.append((_UPSERT_USAGE, _fields(record)))
        else:
            out.append((_END_CALL, _fields(record)))
    return out


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[Any]]:
    """``path`` open and exclusively locked (``flock``), the same file as its name now names:
    a writer that opened it just before an erasure renamed a new one over it opens that one."""
    while True:
        f = open(path, mode, encoding="utf-8")  # noqa: SIM115 - closed below, or handed out and closed
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        except BaseException:
            f.close()
            raise
        f.close()
    with f:
        yield f


def erase_dead_letters(path: Path, match: RecordMatch) -> int:
    """Remove the dead letters ``match`` picks from the file at ``path`` (rewritten whole, then
    renamed over it, under the lock every writer of it takes); how many went. Blocking."""
    if not path.exists():
        return 0
    with _locked(path, "r+") as f:
        lines = f.read().splitlines(keepends=True)
        entries = [(line, _dead_record(line)) for line in lines]
        match = match.widened([record for _, record in entries if record is not None])
        kept = [line for line, record in entries if record is None or not match(record)]
        if len(kept) == len(lines):
            return 0
        fresh = path.with_name(f".{path.name}.erasing")
        with open(fresh, "w", encoding="utf-8") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return len(lines) - len(kept)


def _dead_record(line: str) -> Record | None:
    """The record of one dead-letter line (None: not one relay can read; kept as it is)."""
    try:
        return record_from_dict(json.loads(line)["record"])
    except (ValueError, KeyError, TypeError):
        return None


class SQLiteStore(Store):
    """The embedded default: one SQLite file, written from a worker thread.

    A batch the file cannot take now (locked by another process, read-only, full, an I/O
    error) is retried with a growing wait until it can, in order, while newer records queue
    behind it; a record SQLite refuses for good (a constraint) is dead-lettered alone.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, *, dead_letter_path: str | Path | None = None, **kwargs: int) -> None:
        super().__init__(dead_letter_path=dead_letter_path or f"{path}.dead-letter.jsonl", **kwargs)
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self.write_retries = 0  # attempts at a batch that found the file unwritable
        self._unwritable = False  # a batch is waiting for the file to take it

    @property
    def location(self) -> str:
        return str(self.path.resolve())

    @property
    def writable(self) -> bool:
        return not self._unwritable

    async def _open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            if "stream_sid" not in {row[1] for row in db.execute("PRAGMA table_info(usage)")}:
                _rebuild_usage(db)
            _add_new_columns(db)
            _admit_tool_turns(db)
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
        statements = _statements(batch)
        delay, failing_since = RETRY_BACKOFF[0], None
        while True:
            try:
                await asyncio.to_thread(self._execute, statements)
            except _REFUSED as exc:
                if len(batch) == 1:
                    await self.dead_letter(batch, f"{type(exc).__name__}: {exc}"[:300])
                    return
                for record in batch:  # every good record of the batch is written
                    await self._write_batch([record])
                return
            except sqlite3.Error as exc:  # locked, read-only, full, I/O: waiting fixes these
                self.write_retries += 1
                self._unwritable = True
                loop_time = asyncio.get_running_loop().time()
                if failing_since is None:
                    failing_since = loop_time
                    log.warning(
                        "sqlite store %s cannot be written (%s: %s); %d record(s) wait and are retried",
                        self.path,
                        type(exc).__name__,
                        exc,
                        len(batch),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF[1])
                continue
            self._unwritable = False
            if failing_since is not None:
                log.warning(
                    "sqlite store %s writable again after %.1f s",
                    self.path,
                    asyncio.get_running_loop().time() - failing_since,
                )
            return

    def _execute(self, statements: list[tuple[str, dict[str, object]]]) -> None:
        assert self._db is not None
        if self._db.in_transaction:  # a failed attempt's rollback failed too: finish it first
            self._db.rollback()
        with self._db:  # one transaction per batch
            self._db.execute("BEGIN")
            for sql, params in statements:
                self._db.execute(sql, params)

    async def end_reason(self, call_sid: str) -> str | None:
        def query() -> str | None:
            assert self._db is not None
            row = self._db.execute("SELECT end_reason FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
            return row[0] if row is not None else None

        return await asyncio.to_thread(query)

    async def turns(self, call_sid: str) -> list[TurnRecord]:
        def query() -> list[TurnRecord]:
            assert self._db is not None
            cursor = self._db.execute(
                f"SELECT {', '.join(_TURN_COLUMNS)} FROM call_turns WHERE call_sid = ? ORDER BY seq", (call_sid,)
            )
            return [TurnRecord(**dict(zip(_TURN_COLUMNS, row, strict=True))) for row in cursor.fetchall()]

        rows = await asyncio.to_thread(query)
        return [TurnRecord(**{**asdict(r), "interrupted": bool(r.interrupted)}) for r in rows]

    async def calls(self, limit: int = 100) -> list[dict[str, object]]:
        return await asyncio.to_thread(self._rows, "SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,))

    async def call(self, call_sid: str) -> dict[str, Any] | None:
        rows = await asyncio.to_thread(self._rows, "SELECT * FROM calls WHERE call_sid = ?", (call_sid,))
        return rows[0] if rows else None

    async def usage(self, tenant_id: str, by: str, since: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The tenant's usage grouped ``by`` day, call or agent, and the unpriced items of each
        group (``relay.usage_report.queries``)."""
        grouped, unpriced = queries(by, "sqlite")

        def query() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return self._rows(grouped, (tenant_id, since)), self._rows(unpriced, (tenant_id, since))

        return await asyncio.to_thread(query)

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[dict[str, Any]]:
        assert self._db is not None
        cursor = self._db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
