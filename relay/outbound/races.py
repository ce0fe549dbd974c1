"""Where after-hours races are kept: one row per race (``races``), its legs in it as JSON.

Every change to a race runs its sans-I/O step (``relay.outbound.race``) on the row inside one
transaction — Postgres ``SELECT … FOR UPDATE``, SQLite a write transaction — so when a YES
text and a 1 on the call land on two relays at the same moment, one of them finds the race
settled: exactly one winner. ``RaceStore`` is the interface; ``SQLiteRaceStore`` (here) shares
the embedded queue's file and connection, ``relay.pg.races.PostgresRaceStore`` serves Postgres.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from relay.outbound.queue import SQLiteJobQueue
from relay.outbound.race import Action, Contact, Leg, Race

# A step: the race as it is, to the race as it becomes and what is to be done.
Step = Callable[[Race], tuple[Race, list[Action]]]


def race_to_json(race: Race) -> str:
    return json.dumps(asdict(race))


def race_from_json(text: str) -> Race:
    data: dict[str, Any] = json.loads(text)
    data["contacts"] = tuple(Contact(**c) for c in data["contacts"])
    data["legs"] = tuple(Leg(**leg) for leg in data["legs"])
    data["winner"] = Leg(**data["winner"]) if data["winner"] else None
    return Race(**data)


class RaceStore(ABC):
    @abstractmethod
    async def create(self, race: Race) -> None: ...

    @abstractmethod
    async def step(self, race_id: str, step: Step) -> tuple[Race, list[Action]] | None:
        """Run ``step`` on the stored race and keep what it returns, in one transaction; None:
        no such race."""

    @abstractmethod
    async def due(self, now: float) -> list[str]:
        """Races whose current contact's time is up."""

    @abstractmethod
    async def next_deadline(self) -> float | None:
        """The earliest deadline of the races running (None: none runs)."""

    @abstractmethod
    async def open_races(self, tenant_id: str | None = None) -> list[Race]:
        """Races still running (of one tenant), newest first."""

    @abstractmethod
    async def get(self, tenant_id: str, race_id: str) -> Race | None:
        """The tenant's race; None for another tenant's."""

    @abstractmethod
    async def recent(self, tenant_id: str, limit: int = 20) -> list[Race]:
        """The tenant's races, newest first."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS races (
    race_id      TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    call_sid     TEXT NOT NULL,
    outcome      TEXT NOT NULL DEFAULT '',
    deadline_at  REAL NOT NULL,
    started_at   REAL NOT NULL,
    data         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS races_open ON races (outcome, deadline_at);
"""


class SQLiteRaceStore(RaceStore):
    """Races in the embedded store's file, on the outbound queue's connection."""

    def __init__(self, queue: SQLiteJobQueue) -> None:
        self._queue = queue

    async def open(self) -> None:
        await self._queue.run(lambda db: db.executescript(_SCHEMA), transaction=False)

    async def create(self, race: Race) -> None:
        await self._queue.run(
            lambda db: db.execute(
                "INSERT INTO races (race_id, tenant_id, call_sid, outcome, deadline_at, started_at, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    race.race_id,
                    race.tenant_id,
                    race.call_sid,
                    race.outcome,
                    race.deadline_at,
                    race.started_at,
                    race_to_json(race),
                ),
            )
        )

    async def step(self, race_id: str, step: Step) -> tuple[Race, list[Action]] | None:
        def work(db: sqlite3.Connection) -> tuple[Race, list[Action]] | None:
            row = db.execute("SELECT data FROM races WHERE race_id = ?", (race_id,)).fetchone()
            if row is None:
                return None
            race, actions = step(race_from_json(row[0]))
            db.execute(
                "UPDATE races SET outcome = ?, deadline_at = ?, data = ? WHERE race_id = ?",
                (race.outcome, race.deadline_at, race_to_json(race), race_id),
            )
            return race, actions

        result: tuple[Race, list[Action]] | None = await self._queue.run(work)
        return result

    async def due(self, now: float) -> list[str]:
        rows = await self._queue.run(
            lambda db: db.execute(
                "SELECT race_id FROM races WHERE outcome = '' AND deadline_at <= ?", (now,)
            ).fetchall(),
            transaction=False,
        )
        return [r[0] for r in rows]

    async def next_deadline(self) -> float | None:
        rows = await self._queue.run(
            lambda db: db.execute("SELECT min(deadline_at) FROM races WHERE outcome = ''").fetchall(),
            transaction=False,
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def open_races(self, tenant_id: str | None = None) -> list[Race]:
        rows = await self._queue.run(
            lambda db: db.execute(
                "SELECT data FROM races WHERE outcome = '' AND (? IS NULL OR tenant_id = ?) ORDER BY started_at DESC",
                (tenant_id, tenant_id),
            ).fetchall(),
            transaction=False,
        )
        return [race_from_json(r[0]) for r in rows]

    async def recent(self, tenant_id: str, limit: int = 20) -> list[Race]:
        rows = await self._queue.run(
            lambda db: db.execute(
                "SELECT data FROM races WHERE tenant_id = ? ORDER BY started_at DESC LIMIT ?", (tenant_id, limit)
            ).fetchall(),
            transaction=False,
        )
        return [race_from_json(r[0]) for r in rows]

    async def get(self, tenant_id: str, race_id: str) -> Race | None:
        rows = await self._queue.run(
            lambda db: db.execute(
                "SELECT data FROM races WHERE tenant_id = ? AND race_id = ?", (tenant_id, race_id)
            ).fetchall(),
            transaction=False,
        )
        return race_from_json(rows[0][0]) if rows else None
