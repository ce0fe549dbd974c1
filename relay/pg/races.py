"""After-hours races in Postgres (``relay.outbound.races.RaceStore``): each step runs on the row
locked ``FOR UPDATE``, so of two acknowledgements arriving at two relays one finds the race
settled. The tenant's own reads run as ``relay_reader`` under row-level security."""

from __future__ import annotations

import asyncpg

from relay.outbound.race import Action, Race
from relay.outbound.races import RaceStore, Step, race_from_json, race_to_json
from relay.pg.db import as_tenant, as_writer


class PostgresRaceStore(RaceStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, race: Race) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "INSERT INTO races (race_id, tenant_id, call_sid, outcome, deadline_at, started_at, data) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                race.race_id, race.tenant_id, race.call_sid, race.outcome, race.deadline_at, race.started_at,
                race_to_json(race),
            )  # fmt: skip

    async def step(self, race_id: str, step: Step) -> tuple[Race, list[Action]] | None:
        async with as_writer(self._pool) as conn:
            data = await conn.fetchval("SELECT data FROM races WHERE race_id = $1 FOR UPDATE", race_id)
            if data is None:
                return None
            race, actions = step(race_from_json(data))
            await conn.execute(
                "UPDATE races SET outcome = $2, deadline_at = $3, data = $4::jsonb WHERE race_id = $1",
                race_id, race.outcome, race.deadline_at, race_to_json(race),
            )  # fmt: skip
        return race, actions

    async def due(self, now: float) -> list[str]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch("SELECT race_id FROM races WHERE outcome = '' AND deadline_at <= $1", now)
        return [r["race_id"] for r in rows]

    async def next_deadline(self) -> float | None:
        async with as_writer(self._pool) as conn:
            found = await conn.fetchval("SELECT min(deadline_at) FROM races WHERE outcome = ''")
        return float(found) if found is not None else None

    async def open_races(self, tenant_id: str | None = None) -> list[Race]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT data FROM races WHERE outcome = '' AND ($1::text IS NULL OR tenant_id = $1) "
                "ORDER BY started_at DESC",
                tenant_id,
            )
        return [race_from_json(r["data"]) for r in rows]

    async def recent(self, tenant_id: str, limit: int = 20) -> list[Race]:
        async with as_tenant(self._pool, tenant_id) as conn:
            rows = await conn.fetch("SELECT data FROM races ORDER BY started_at DESC LIMIT $1", limit)
        return [race_from_json(r["data"]) for r in rows]

    async def get(self, tenant_id: str, race_id: str) -> Race | None:
        async with as_tenant(self._pool, tenant_id) as conn:
            data = await conn.fetchval("SELECT data FROM races WHERE race_id = $1", race_id)
        return race_from_json(data) if data is not None else None
