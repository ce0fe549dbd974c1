"""How long a tenant's records are kept, and the deletion of what is past it.

A tenant's ``Retention`` says how many days its turns and calls are kept, and its usage (which
billing may want longer; unset, usage goes with the calls). ``purge`` deletes what is past it,
table by table, in batches of at most ``BATCH`` rows, each its own short transaction: only the
rows deleted are locked, for one batch, so calls being stored meanwhile never wait behind it.
``Purger`` is the store's side (``relay.pg.retention``, ``SQLitePurger`` here).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

BATCH = 5000
DAY_S = 86_400.0
MAX_DAYS = 36_500
# What each kind of record is aged by: a turn and a call by when they began, usage too.
TABLES = ("call_turns", "calls", "usage")


@dataclass(frozen=True, slots=True)
class Retention:
    days: int | None = None  # turns and calls; None: kept for ever
    usage_days: int | None = None  # usage; None: as long as the calls

    def problems(self) -> list[str]:
        return [
            f"{name.replace('_', ' ')} {value} is outside 1..{MAX_DAYS}"
            for name, value in (("days", self.days), ("usage_days", self.usage_days))
            if value is not None and not 1 <= value <= MAX_DAYS
        ]

    def cutoffs(self, now: float) -> dict[str, float]:
        """Per table, the time before which its rows go (tables kept for ever are left out)."""
        out: dict[str, float] = {}
        if self.days is not None:
            out["call_turns"] = out["calls"] = now - self.days * DAY_S
        usage = self.usage_days if self.usage_days is not None else self.days
        if usage is not None:
            out["usage"] = now - usage * DAY_S
        return out


@dataclass
class Report:
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    longest_batch_s: float = 0.0


class Purger(ABC):
    @abstractmethod
    async def delete_batch(self, table: str, tenant_id: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the tenant's rows of ``table`` older than ``before``, in one
        short transaction; how many went."""


async def purge(
    purger: Purger, policies: dict[str, Retention], now: float, *, batch: int = BATCH, pause_s: float = 0.0
) -> Report:
    """Delete every tenant's records past its retention, batch by batch (``pause_s`` between)."""
    report = Report()
    for tenant_id, retention in policies.items():
        for table, before in retention.cutoffs(now).items():
            while True:
                began = time.perf_counter()
                gone = await purger.delete_batch(table, tenant_id, before, batch)
                report.longest_batch_s = max(report.longest_batch_s, time.perf_counter() - began)
                report.batches += 1
                report.deleted[table] += gone
                if gone < batch:
                    break
                await asyncio.sleep(pause_s)
    return report


class SQLitePurger(Purger):
    """The embedded store's file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def delete_batch(self, table: str, tenant_id: str, before: float, limit: int) -> int:
        if table not in TABLES:
            raise ValueError(f"no table {table!r} is aged")

        def run() -> int:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            try:
                done = db.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                    "WHERE tenant_id = ? AND started_at < ? LIMIT ?)",
                    (tenant_id, before, limit),
                )
                return done.rowcount
            finally:
                db.close()

        return await asyncio.to_thread(run)
