"""Erasing one caller from a tenant's records, on request: everywhere relay keeps them.

A caller is a phone number. Their calls are the tenant's calls from that number or to it (a
call relay placed to them), and with each call its turns and usage; the calls relay placed or
queued to the number go too (``outbound_jobs``, which hold the number and its variables). They
are removed from the store (SQLite or Postgres), from the Postgres store's outage spool
(records not yet written), and from the dead-letter file (records the store refused), and the
erasure is recorded: when, by whom, and how many of each kind, never whose.

``Eraser`` is the store's side (``SQLiteEraser`` here, ``relay.pg.erasure.PostgresEraser``);
``erase`` runs one erasure, with the running store if there is one (``Store.erasing``: it holds
the spool, and replays nothing from it meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from relay.errors import InputError
from relay.store import CallRecord, Record, SpoolEraser, Store, erase_dead_letters

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
KINDS = ("calls", "turns", "usage", "jobs", "spooled", "dead_letters")


def caller_number(number: str) -> str:
    """``number`` checked as the E.164 number a caller's calls are stored under.

    Raises:
        InputError: not an E.164 number.
    """
    number = number.strip()
    if not E164.match(number):
        raise InputError("the caller is an E.164 number, e.g. +15551234567")
    return number


@dataclass(frozen=True, slots=True)
class Erased:
    """How many of each kind of record one erasure removed (never which)."""

    calls: int = 0
    turns: int = 0
    usage: int = 0
    jobs: int = 0
    spooled: int = 0
    dead_letters: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Match:
    """Which records are the caller's: the tenant's, of a call from or to ``number`` (its
    ``CallRecord`` names the number; the others name the call, whose sids ``calls`` gathers)."""

    tenant_id: str
    number: str
    calls: frozenset[str]

    def __call__(self, record: Record) -> bool:
        if getattr(record, "tenant_id", None) != self.tenant_id:
            return False
        if isinstance(record, CallRecord) and self.number in (record.from_number, record.to_number):
            return True
        return getattr(record, "call_sid", None) in self.calls

    def widened(self, records: list[Record]) -> Match:
        """With the calls among ``records`` whose start names the number (calls the store does
        not have yet, still spooled)."""
        found = {r.call_sid for r in records if isinstance(r, CallRecord) and self(r)}
        return Match(self.tenant_id, self.number, self.calls | found)


class Eraser(ABC):
    """A store's side of an erasure."""

    @abstractmethod
    async def erase_rows(self, tenant_id: str, number: str) -> tuple[dict[str, int], frozenset[str]]:
        """Delete the caller's calls, turns, usage and jobs in one transaction: how many of each
        went, and the sids of the calls."""

    @abstractmethod
    async def record(self, tenant_id: str, erased: Erased, at: float, by: str) -> None:
        """Record that an erasure happened (the counts only)."""


async def erase(
    eraser: Eraser,
    tenant_id: str,
    number: str,
    *,
    by: str,
    dead_letter_path: Path,
    store: Store | None = None,
) -> Erased:
    """Erase the caller ``number`` from ``tenant_id``'s records, everywhere relay keeps them,
    and record it. ``store``: the running store, which writes what it has queued first and holds
    its spool still meanwhile (None: no store runs here, so no spool is erased). Records of the
    caller that arrive later (a call still going on) are not erased.

    Raises:
        InputError: ``number`` is not an E.164 number.
    """
    number = caller_number(number)
    if store is not None:
        await store.flush()
    async with store.erasing() if store is not None else _no_spool() as spool:
        rows, calls = await eraser.erase_rows(tenant_id, number)
        match = Match(tenant_id, number, calls)
        spooled = await spool(match) if spool is not None else 0
        dead = await asyncio.to_thread(erase_dead_letters, dead_letter_path, match)
    erased = Erased(**rows, spooled=spooled, dead_letters=dead)
    await eraser.record(tenant_id, erased, time.time(), by)
    return erased


@contextlib.asynccontextmanager
async def _no_spool() -> AsyncIterator[SpoolEraser | None]:
    yield None


class SQLiteEraser(Eraser):
    """The embedded store's file (its calls, turns and usage, and the outbound queue in it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def erase_rows(self, tenant_id: str, number: str) -> tuple[dict[str, int], frozenset[str]]:
        def run() -> tuple[dict[str, int], frozenset[str]]:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            # Deleted rows are overwritten, not left in free pages, and the write-ahead log that
            # held them is emptied once they are gone: no trace stays in the file.
            db.execute("PRAGMA secure_delete = ON")
            try:
                db.execute("BEGIN IMMEDIATE")
                sids = frozenset(
                    row[0]
                    for row in db.execute(
                        "SELECT call_sid FROM calls WHERE tenant_id = ? AND (from_number = ? OR to_number = ?)",
                        (tenant_id, number, number),
                    )
                )
                jobs = _has_table(db, "outbound_jobs")
                if jobs:
                    sids |= {
                        row[0]
                        for row in db.execute(
                            "SELECT call_sid FROM outbound_jobs "
                            "WHERE tenant_id = ? AND to_number = ? AND call_sid <> ''",
                            (tenant_id, number),
                        )
                    }
                counts = dict.fromkeys(("calls", "turns", "usage", "jobs"), 0)
                for sid in sids:
                    for kind, table in (("turns", "call_turns"), ("usage", "usage"), ("calls", "calls")):
                        done = db.execute(f"DELETE FROM {table} WHERE tenant_id = ? AND call_sid = ?", (tenant_id, sid))
                        counts[kind] += done.rowcount
                if jobs:
                    counts["jobs"] = db.execute(
                        "DELETE FROM outbound_jobs WHERE tenant_id = ? AND to_number = ? "
                        "AND state NOT IN ('placing', 'live')",
                        (tenant_id, number),
                    ).rowcount
                db.execute("COMMIT")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return counts, sids
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()

        return await asyncio.to_thread(run)

    async def record(self, tenant_id: str, erased: Erased, at: float, by: str) -> None:
        def run() -> None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            try:
                db.execute(
                    "INSERT INTO erasures (tenant_id, erased_at, requested_by, calls, turns, usage, jobs, spooled, "
                    "dead_letters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (tenant_id, at, by[:100], *(getattr(erased, kind) for kind in KINDS)),
                )
            finally:
                db.close()

        await asyncio.to_thread(run)

    async def erasures(self, tenant_id: str) -> list[dict[str, object]]:
        def run() -> list[dict[str, object]]:
            db = sqlite3.connect(self.path, timeout=10.0)
            db.row_factory = sqlite3.Row
            try:
                rows = db.execute(
                    "SELECT erased_at, requested_by, calls, turns, usage, jobs, spooled, dead_letters FROM erasures "
                    "WHERE tenant_id = ? ORDER BY erased_at",
                    (tenant_id,),
                )
                return [dict(row) for row in rows]
            finally:
                db.close()

        return await asyncio.to_thread(run)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
