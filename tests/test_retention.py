"""Retention: a tenant's turns, calls and usage past its window are deleted in bounded batches,
each its own short transaction, so calls being stored meanwhile never wait longer than a batch;
what is inside the window, and other tenants' records, stay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from relay.pg import PostgresStore
from relay.pg.db import as_writer
from relay.pg.retention import PostgresPurger
from relay.retention import DAY_S, Retention, SQLitePurger, purge
from relay.store import SQLiteStore
from tests.pgutil import call_records, throwaway_database
from tests.test_pgstore import AGENT, submit_all

NOW = 1_800_000_000.0


def test_each_table_goes_at_its_own_window() -> None:
    assert Retention().cutoffs(NOW) == {}
    assert Retention(30).cutoffs(NOW) == dict.fromkeys(("call_turns", "calls", "usage"), NOW - 30 * DAY_S)
    assert Retention(30, 400).cutoffs(NOW)["usage"] == NOW - 400 * DAY_S
    assert Retention(None, 400).cutoffs(NOW) == {"usage": NOW - 400 * DAY_S}
    assert Retention(0, 40000).problems() == ["days 0 is outside 1..36500", "usage days 40000 is outside 1..36500"]


async def test_the_embedded_store_keeps_what_is_inside_the_window(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    old, new = time.time() - 40 * DAY_S, time.time()
    for sid, at in (("CAold1", old), ("CAold2", old), ("CAnew", new)):
        submit_all(store, call_records(sid, turns=4, t0=at))
    await store.flush()
    await store.close()
    report = await purge(SQLitePurger(tmp_path / "relay.sqlite3"), {"default": Retention(30)}, time.time(), batch=3)
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    try:
        assert report.deleted == {"call_turns": 8, "calls": 2, "usage": 2} and report.batches > 3
        assert [c["call_sid"] for c in await store.calls()] == ["CAnew"]
        assert await store.turns("CAold1") == [] and len(await store.turns("CAnew")) == 4
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_million_old_turns_go_in_batches_while_calls_are_stored(tmp_path: Path) -> None:
    async with throwaway_database() as database:
        store = PostgresStore(database, spool_path=tmp_path / "relay.spool")
        await store.open()
        conn = await asyncpg.connect(database)
        try:
            for tenant in ("acme", "beta"):
                await store.directory.add_tenant(tenant, tenant, AGENT)
            old = time.time() - 90 * DAY_S
            await conn.execute(
                "INSERT INTO call_turns (call_sid, seq, tenant_id, role, started_at) "
                "SELECT 'CAold' || (g / 100), g % 100, 'acme', 'user', $1 FROM generate_series(0, 999999) g",
                old,
            )
            await conn.execute(
                "INSERT INTO calls (call_sid, tenant_id, stream_sid, started_at) "
                "SELECT 'CAold' || g, 'acme', 'MZ', $1 FROM generate_series(0, 9999) g",
                old,
            )
            await conn.execute(  # another tenant's old rows, kept (it has no retention)
                "INSERT INTO call_turns (call_sid, seq, tenant_id, role, started_at) "
                "VALUES ('CAbeta', 1, 'beta', 'user', $1)",
                old,
            )
            purger = PostgresPurger(store.pool)
            assert await purger.set_policy("acme", Retention(30))
            assert await purger.policies() == {"acme": Retention(30)}

            # 20 calls storing their turns all the while, each write timed
            waits: list[float] = []
            running = True

            async def a_call(n: int) -> None:
                seq = 0
                while running:
                    seq += 1
                    began = time.perf_counter()
                    async with as_writer(store.pool) as writer:
                        await writer.execute(
                            "INSERT INTO call_turns (call_sid, seq, tenant_id, role, started_at) "
                            "VALUES ($1, $2, 'acme', 'user', $3)",
                            f"CAlive{n}",
                            seq,
                            time.time(),
                        )
                    waits.append(time.perf_counter() - began)
                    await asyncio.sleep(0.02)

            calls = [asyncio.create_task(a_call(n)) for n in range(20)]
            report = await purge(purger, await purger.policies(), time.time(), batch=10_000)
            running = False
            await asyncio.gather(*calls)

            assert report.deleted["call_turns"] == 1_000_000 and report.deleted["calls"] == 10_000
            assert report.batches >= 100
            left = await conn.fetchval("SELECT count(*) FROM call_turns WHERE call_sid LIKE 'CAold%'")
            assert left == 0
            assert await conn.fetchval("SELECT count(*) FROM call_turns WHERE tenant_id = 'beta'") == 1
            live = await conn.fetchval("SELECT count(*) FROM call_turns WHERE call_sid LIKE 'CAlive%'")
            assert live == len(waits) and len(waits) > 200
            # no write waited for more than one batch takes (a batch locks only its own rows)
            assert max(waits) <= report.longest_batch_s + 0.25, (max(waits), report.longest_batch_s)
            print(
                f"\n1,000,000 turns in {report.batches} batches, the longest {report.longest_batch_s * 1000:.0f} ms; "
                f"{len(waits)} writes beside them, the slowest {max(waits) * 1000:.0f} ms"
            )
        finally:
            await conn.close()
            await store.close()
