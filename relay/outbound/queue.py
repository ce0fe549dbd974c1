"""Where outbound jobs live: the store's ``outbound_jobs`` table, shared by every relay on it.

``JobQueue`` is the interface; ``SQLiteJobQueue`` (here) serves the embedded store and
``relay.pg.jobs.PostgresJobQueue`` Postgres. Both claim the same way: under a lock on the
account's row in ``outbound_accounts`` (Postgres ``FOR UPDATE SKIP LOCKED``; SQLite a write
transaction, ``BEGIN IMMEDIATE``), a job is taken only while fewer than ``max_live`` of the
account's jobs hold a slot (``placing`` or ``live``) and at least ``1 / cps`` seconds after
the account's last placement. The slot is held until Twilio reports the call's final status,
so the cap holds however many relays share the queue, and a relay that dies leaves its calls
to be finished by the callbacks any relay receives.

Reads on a tenant's behalf (``job``, ``jobs``) filter by tenant here and, in Postgres, run
under row-level security as well.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from relay.outbound import jobs
from relay.outbound.jobs import CallSpec, Job
from relay.twilio import FINAL_STATUSES

# Given a job about to be claimed: None to place it now, or the time it must wait until
# (quiet hours).
Hold = Callable[[Job], Awaitable[float | None]]

JOB_COLUMNS = (
    "job_id", "tenant_id", "agent_id", "account_sid", "to_number", "from_number", "variables",
    "idempotency_key", "state", "attempts", "due_at", "created_at", "updated_at", "campaign_id",
    "call_sid", "answered_by", "statuses", "outcome", "duration_s", "error_code", "error", "voicemail",
    "priority", "race_id", "attempt_log",
)  # fmt: skip


def attempt(now: float, result: str, code: int | None = None, error: str = "", call_sid: str = "") -> str:
    """One placement attempt, as a job's ``attempt_log`` keeps it (JSON)."""
    entry: dict[str, Any] = {"at": round(now, 3), "result": result}
    if code is not None:
        entry["code"] = code
    if error:
        entry["error"] = error[:300]
    if call_sid:
        entry["call_sid"] = call_sid
    return json.dumps(entry)


def job_from_row(row: dict[str, Any]) -> Job:
    """A ``Job`` from a table row (JSON columns decoded)."""
    values = {c: row[c] for c in JOB_COLUMNS}
    values["variables"] = json.loads(values["variables"] or "{}")
    values["statuses"] = tuple(tuple(s) for s in json.loads(values["statuses"] or "[]"))
    values["attempt_log"] = tuple(json.loads(values["attempt_log"] or "[]"))
    for name in ("campaign_id", "call_sid", "answered_by", "outcome", "error", "voicemail", "race_id"):
        values[name] = values[name] or ""
    return Job(**values)


class JobQueue(ABC):
    """The outbound queue: enqueue, claim under the account's limits, and record what happened."""

    @abstractmethod
    async def enqueue(
        self,
        tenant_id: str,
        agent_id: str,
        account_sid: str,
        from_number: str,
        specs: Sequence[CallSpec],
        *,
        now: float,
        campaign_id: str = "",
        priority: int = 0,
        race_id: str = "",
    ) -> list[Job]:
        """Queue one job per spec; a spec whose idempotency key the tenant has used already gets
        the job queued then, unchanged. Returns the jobs in ``specs`` order. Jobs of a higher
        ``priority`` are placed first (a race's call before a campaign's)."""

    @abstractmethod
    async def claim(self, *, now: float, instance: str, max_live: int, cps: float, hold: Hold) -> Job | None:
        """Take the next job due whose account has a free slot and may place a call now (state
        ``placing``, one more attempt); None when there is none."""

    @abstractmethod
    async def placed(self, job_id: str, call_sid: str, now: float) -> None:
        """Twilio created the job's call (``live``, unless its final status came first)."""

    @abstractmethod
    async def retry(self, job_id: str, due_at: float, code: int | None, error: str, now: float) -> None:
        """The placement was not processed (20429, no connection): queued again for ``due_at``."""

    @abstractmethod
    async def fail(self, job_id: str, code: int | None, error: str, now: float, *, state: str = jobs.FAILED) -> None:
        """The job will not be placed (refused for good, out of attempts, or ``uncertain``)."""

    @abstractmethod
    async def call_status(
        self, job_id: str, call_sid: str, seq: int, status: str, now: float, duration_s: int | None
    ) -> Job | None:
        """A status callback: kept in ``SequenceNumber`` order; the first final status ends the
        job and frees its slot. A callback for a job still ``placing`` proves its call exists
        (``calls.create``'s answer is late, or was lost with its relay). None: no such job."""

    @abstractmethod
    async def answered(self, job_id: str, call_sid: str, verdict: str, now: float) -> Job | None:
        """The answering-machine verdict (``AnsweredBy``)."""

    @abstractmethod
    async def note_voicemail(self, job_id: str, what: str, now: float) -> None:
        """What was done on a machine: ``left`` (the message after the beep) or ``hung_up``."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """Any tenant's job (relay's own use: callbacks, the answer webhook)."""

    @abstractmethod
    async def job(self, tenant_id: str, job_id: str) -> Job | None:
        """The tenant's job; None for another tenant's."""

    @abstractmethod
    async def jobs(self, tenant_id: str, *, campaign_id: str = "", limit: int = 100) -> list[Job]:
        """The tenant's jobs (of one campaign), oldest first."""

    @abstractmethod
    async def quiet_live(self, *, now: float, older_than_s: float, limit: int = 100) -> list[Job]:
        """Live jobs with no news for ``older_than_s``: their final status may have been lost
        (every relay was down when it came), so their call is looked up at Twilio."""

    @abstractmethod
    async def abandoned(self, *, now: float, older_than_s: float) -> int:
        """Jobs left ``placing`` longer than a placement can take (the relay placing them is
        gone) become ``uncertain``: their call may have been created, so never placed again.
        Returns how many."""

    async def close(self) -> None:  # noqa: B027 - a queue on a shared pool has nothing of its own to release
        """Release the queue's connections."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbound_jobs (
    job_id           TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    account_sid      TEXT NOT NULL,
    to_number        TEXT NOT NULL,
    from_number      TEXT NOT NULL,
    variables        TEXT NOT NULL DEFAULT '{}',
    idempotency_key  TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    due_at           REAL NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    campaign_id      TEXT NOT NULL DEFAULT '',
    claimed_by       TEXT NOT NULL DEFAULT '',
    claimed_at       REAL,
    call_sid         TEXT NOT NULL DEFAULT '',
    answered_by      TEXT NOT NULL DEFAULT '',
    statuses         TEXT NOT NULL DEFAULT '[]',
    outcome          TEXT NOT NULL DEFAULT '',
    duration_s       INTEGER,
    error_code       INTEGER,
    error            TEXT NOT NULL DEFAULT '',
    voicemail        TEXT NOT NULL DEFAULT '',
    attempt_log      TEXT NOT NULL DEFAULT '[]',
    priority         INTEGER NOT NULL DEFAULT 0,
    race_id          TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS outbound_jobs_due ON outbound_jobs (state, due_at);
CREATE INDEX IF NOT EXISTS outbound_jobs_account ON outbound_jobs (account_sid, state);
CREATE INDEX IF NOT EXISTS outbound_jobs_campaign ON outbound_jobs (tenant_id, campaign_id, created_at);
CREATE TABLE IF NOT EXISTS outbound_accounts (
    account_sid     TEXT PRIMARY KEY,
    last_placed_at  REAL NOT NULL DEFAULT 0
);
"""


def _defer(db: sqlite3.Connection, *, job_id: str, until: float, now: float) -> None:
    db.execute(
        "UPDATE outbound_jobs SET due_at = ?, updated_at = ? WHERE job_id = ? AND state = 'queued'",
        (until, now, job_id),
    )


# An attempt onto a job's attempt log (its JSON as the next parameter).
_APPEND = "json_insert(attempt_log, '$[#]', json(?))"
ABANDONED = "the relay placing this call stopped before Twilio answered: it may have been placed"


class SQLiteJobQueue(JobQueue):
    """The queue in the embedded store's SQLite file (its own connection; WAL lets it share the
    file with the call writer). Several workers on one file claim in write transactions, one at
    a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one statement group at a time on the connection
        # The statements running in a thread now: a cancelled caller does not stop them, so
        # closing waits for them before the connection goes.
        self._running: asyncio.Future[Any] | None = None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SQLITE_SCHEMA)
            return db

        self._db = await asyncio.to_thread(connect)

    async def close(self) -> None:
        async with self._lock:
            if self._running is not None:
                await asyncio.gather(self._running, return_exceptions=True)
            if self._db is not None:
                db, self._db = self._db, None
                await asyncio.to_thread(db.close)

    async def _in_thread(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self._lock:
            if self._running is not None:  # left by a cancelled caller
                await asyncio.gather(self._running, return_exceptions=True)
            db = self._db
            assert db is not None, "open() the queue first"
            self._running = asyncio.ensure_future(asyncio.to_thread(work, db))
            return await asyncio.shield(self._running)

    async def run(self, work: Callable[[sqlite3.Connection], Any], *, transaction: bool = True) -> Any:
        """Run ``work`` on the queue's connection, in a write transaction unless told otherwise
        (the races of ``relay.outbound.races`` share the file and the connection)."""
        return await (self._run(work) if transaction else self._in_thread(work))

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        def in_transaction(db: sqlite3.Connection) -> Any:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._in_thread(in_transaction)

    async def enqueue(
        self,
        tenant_id: str,
        agent_id: str,
        account_sid: str,
        from_number: str,
        specs: Sequence[CallSpec],
        *,
        now: float,
        campaign_id: str = "",
        priority: int = 0,
        race_id: str = "",
    ) -> list[Job]:
        def work(db: sqlite3.Connection) -> list[Job]:
            out = []
            for spec in specs:
                key = spec.key or jobs.new_id("key_")
                db.execute(
                    "INSERT INTO outbound_jobs (job_id, tenant_id, agent_id, account_sid, to_number, from_number, "
                    "variables, idempotency_key, state, due_at, created_at, updated_at, campaign_id, priority, "
                    "race_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
                    (jobs.new_id("job_"), tenant_id, agent_id, account_sid, spec.to, from_number,
                     json.dumps(dict(spec.variables)), key, now, now, now, campaign_id, priority, race_id),
                )  # fmt: skip
                row = db.execute(
                    "SELECT * FROM outbound_jobs WHERE tenant_id = ? AND idempotency_key = ?", (tenant_id, key)
                ).fetchone()
                out.append(job_from_row(dict(row)))
            db.execute("INSERT INTO outbound_accounts (account_sid) VALUES (?) ON CONFLICT DO NOTHING", (account_sid,))
            return out

        result: list[Job] = await self._run(work)
        return result

    async def claim(self, *, now: float, instance: str, max_live: int, cps: float, hold: Hold) -> Job | None:
        # The hold check may need the store (a tenant's quiet hours), so it runs between
        # transactions: a job it defers is moved, then the claim looks again.
        for _ in range(100):
            found: Job | None = await self._run(lambda db: self._candidate(db, now, max_live, cps))
            if found is None:
                return None
            until = await hold(found)
            if until is not None:
                await self._run(functools.partial(_defer, job_id=found.job_id, until=until, now=now))
                continue
            taken: Job | None = await self._run(
                functools.partial(self._take, job=found, now=now, instance=instance, max_live=max_live, cps=cps)
            )
            if taken is not None:
                return taken
        return None

    @staticmethod
    def _candidate(db: sqlite3.Connection, now: float, max_live: int, cps: float) -> Job | None:
        accounts = db.execute(
            "SELECT a.account_sid FROM outbound_accounts a WHERE a.last_placed_at <= ? AND EXISTS "
            "(SELECT 1 FROM outbound_jobs j WHERE j.account_sid = a.account_sid AND j.state = 'queued' "
            "AND j.due_at <= ?) ORDER BY a.last_placed_at",
            (now - 1.0 / cps, now),
        ).fetchall()
        for (account_sid,) in accounts:
            live = db.execute(
                "SELECT count(*) FROM outbound_jobs WHERE account_sid = ? AND state IN ('placing', 'live')",
                (account_sid,),
            ).fetchone()[0]
            if live >= max_live:
                continue
            row = db.execute(
                "SELECT * FROM outbound_jobs WHERE account_sid = ? AND state = 'queued' AND due_at <= ? "
                "ORDER BY priority DESC, due_at, created_at, rowid LIMIT 1",
                (account_sid, now),
            ).fetchone()
            if row is not None:
                return job_from_row(dict(row))
        return None

    @staticmethod
    def _take(db: sqlite3.Connection, job: Job, now: float, instance: str, max_live: int, cps: float) -> Job | None:
        # Checked again inside the write transaction: another worker may have placed since.
        last = db.execute(
            "SELECT last_placed_at FROM outbound_accounts WHERE account_sid = ?", (job.account_sid,)
        ).fetchone()[0]
        live = db.execute(
            "SELECT count(*) FROM outbound_jobs WHERE account_sid = ? AND state IN ('placing', 'live')",
            (job.account_sid,),
        ).fetchone()[0]
        if now - last < 1.0 / cps or live >= max_live:
            return None
        changed = db.execute(
            "UPDATE outbound_jobs SET state = 'placing', attempts = attempts + 1, claimed_by = ?, claimed_at = ?, "
            "updated_at = ? WHERE job_id = ? AND state = 'queued'",
            (instance, now, now, job.job_id),
        ).rowcount
        if not changed:
            return None
        db.execute("UPDATE outbound_accounts SET last_placed_at = ? WHERE account_sid = ?", (now, job.account_sid))
        row = db.execute("SELECT * FROM outbound_jobs WHERE job_id = ?", (job.job_id,)).fetchone()
        return job_from_row(dict(row))

    async def placed(self, job_id: str, call_sid: str, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE outbound_jobs SET call_sid = ?, updated_at = ?, "
                "state = CASE WHEN outcome <> '' THEN 'done' ELSE 'live' END, "
                f"attempt_log = {_APPEND} WHERE job_id = ? AND state = 'placing'",
                (call_sid, now, attempt(now, "placed", call_sid=call_sid), job_id),
            )
        )

    async def retry(self, job_id: str, due_at: float, code: int | None, error: str, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE outbound_jobs SET state = 'queued', due_at = ?, error_code = ?, error = ?, updated_at = ?, "
                f"claimed_by = '', attempt_log = {_APPEND} WHERE job_id = ? AND state = 'placing'",
                (due_at, code, error[:500], now, attempt(now, "retried", code, error), job_id),
            )
        )

    async def fail(self, job_id: str, code: int | None, error: str, now: float, *, state: str = jobs.FAILED) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE outbound_jobs SET state = ?, outcome = ?, error_code = ?, error = ?, updated_at = ?, "
                f"attempt_log = CASE WHEN state = 'placing' THEN {_APPEND} ELSE attempt_log END "
                "WHERE job_id = ? AND state IN ('queued', 'placing')",
                (state, "not_placed", code, error[:500], now, attempt(now, state, code, error), job_id),
            )
        )

    async def call_status(
        self, job_id: str, call_sid: str, seq: int, status: str, now: float, duration_s: int | None
    ) -> Job | None:
        def work(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT * FROM outbound_jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = job_from_row(dict(row))
            statuses = jobs.merge_status(job.statuses, seq, status, now)
            final = status in FINAL_STATUSES and not job.outcome
            db.execute(
                "UPDATE outbound_jobs SET statuses = ?, updated_at = ?, call_sid = CASE WHEN call_sid = '' THEN ? "
                "ELSE call_sid END, outcome = CASE WHEN ? THEN ? ELSE outcome END, "
                "duration_s = CASE WHEN ? THEN ? ELSE duration_s END, "
                "state = CASE WHEN state NOT IN ('placing', 'live') THEN state WHEN ? THEN 'done' ELSE 'live' END "
                "WHERE job_id = ?",
                (json.dumps(statuses), now, call_sid, final, status, final, duration_s, final, job_id),
            )
            return job_from_row(dict(db.execute("SELECT * FROM outbound_jobs WHERE job_id = ?", (job_id,)).fetchone()))

        result: Job | None = await self._run(work)
        return result

    async def answered(self, job_id: str, call_sid: str, verdict: str, now: float) -> Job | None:
        def work(db: sqlite3.Connection) -> Job | None:
            db.execute(
                "UPDATE outbound_jobs SET answered_by = ?, updated_at = ? WHERE job_id = ?",
                (jobs.answered_by(verdict), now, job_id),
            )
            row = db.execute("SELECT * FROM outbound_jobs WHERE job_id = ?", (job_id,)).fetchone()
            return job_from_row(dict(row)) if row is not None else None

        result: Job | None = await self._run(work)
        return result

    async def note_voicemail(self, job_id: str, what: str, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE outbound_jobs SET voicemail = ?, updated_at = ? WHERE job_id = ?", (what, now, job_id)
            )
        )

    async def get(self, job_id: str) -> Job | None:
        rows = await self._select("SELECT * FROM outbound_jobs WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    async def job(self, tenant_id: str, job_id: str) -> Job | None:
        rows = await self._select("SELECT * FROM outbound_jobs WHERE tenant_id = ? AND job_id = ?", (tenant_id, job_id))
        return rows[0] if rows else None

    async def jobs(self, tenant_id: str, *, campaign_id: str = "", limit: int = 100) -> list[Job]:
        if campaign_id:
            return await self._select(
                "SELECT * FROM outbound_jobs WHERE tenant_id = ? AND campaign_id = ? ORDER BY created_at, rowid "
                "LIMIT ?",
                (tenant_id, campaign_id, limit),
            )
        return await self._select(
            "SELECT * FROM outbound_jobs WHERE tenant_id = ? ORDER BY created_at, rowid LIMIT ?", (tenant_id, limit)
        )

    async def quiet_live(self, *, now: float, older_than_s: float, limit: int = 100) -> list[Job]:
        return await self._select(
            "SELECT * FROM outbound_jobs WHERE state = 'live' AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (now - older_than_s, limit),
        )

    async def abandoned(self, *, now: float, older_than_s: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE outbound_jobs SET state = 'uncertain', outcome = 'not_known', updated_at = ?, "
                f"error = ?, attempt_log = {_APPEND} WHERE state = 'placing' AND claimed_at < ?",
                (now, ABANDONED, attempt(now, "uncertain", error=ABANDONED), now - older_than_s),
            ).rowcount

        result: int = await self._run(work)
        return result

    async def _select(self, sql: str, params: tuple[Any, ...]) -> list[Job]:
        def query(db: sqlite3.Connection) -> list[Job]:
            return [job_from_row(dict(row)) for row in db.execute(sql, params).fetchall()]

        result: list[Job] = await self._in_thread(query)
        return result
