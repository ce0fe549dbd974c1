"""The Postgres store (DESIGN §3): migrations, roles and row-level security, idempotent writes,
the same records as the SQLite store, and nothing lost across an outage or a ``kill -9``.

Every test needs the Postgres server on 127.0.0.1:5432; without it they fail, they do not skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from secrets import token_hex

import asyncpg
import pytest

from relay.agents import Agent
from relay.errors import ConfigError, InputError
from relay.pg import PostgresAdmission, PostgresStore, migrate, migrations, redact
from relay.pg.db import as_writer
from relay.pg.tools import PostgresToolStore
from relay.spool import Spool, SpoolError, encode
from relay.store import CallEnd, CallRecord, Record, SQLiteStore, TurnRecord, record_from_dict
from relay.tools.spec import TenantTool, TransferTarget
from relay.tools.store import AgentActions
from relay.usage import UsageRecord
from tests.pgutil import (
    AGENT,
    TcpProxy,
    call_records,
    drop_database,
    dsn,
    eventually,
    lasting_database,
    throwaway_database,
)

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
# The tables a tenant's calls fill (``_two_tenants`` below); outbound jobs, races, API keys and the
# agents' tools, and the record of erasures are held to the same policies (tests/test_outbound_*,
# test_tool_store_pg below, test_erasure).
CALL_TABLES = {"tenants", "agents", "phone_numbers", "calls", "call_turns", "usage", "admissions", "call_owners"}
TOOL_TABLES = {"agent_tools", "transfer_targets", "tool_secrets"}
TENANT_TABLES = CALL_TABLES | {"outbound_jobs", "api_keys", "races", "erasures", "backend_keys"} | TOOL_TABLES
# The reader has no grant on keys or secrets at all.
READER_TABLES = TENANT_TABLES - {"api_keys", "tool_secrets", "backend_keys"}


@pytest.fixture(scope="session")
def pg_db() -> Iterator[str]:
    """One migrated throwaway database for the whole file (tests keep apart by unique ids)."""
    yield from lasting_database()


@pytest.fixture
def pg_dsn(pg_db: str) -> str:
    return dsn(pg_db)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection: sees every row, to check what the store wrote."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def store(pg_dsn: str, tmp_path: Path) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_dsn, spool_path=tmp_path / "relay.spool")
    await store.open()
    yield store
    await store.close()


@asynccontextmanager
async def as_reader(conn: asyncpg.Connection, tenant_id: str | None) -> AsyncIterator[asyncpg.Connection]:
    """What a tenant read does, spelled out here rather than borrowed from the code under test."""
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE relay_reader")
        if tenant_id is not None:
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        yield conn


def submit_all(store: PostgresStore | SQLiteStore, records: list[Record]) -> None:
    for record in records:
        store.submit(record)


async def turn_keys(db: asyncpg.Connection, prefix: str) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT call_sid, seq FROM call_turns WHERE call_sid LIKE $1 || '%'", prefix)
    return [(r["call_sid"], r["seq"]) for r in rows]


# --- Migrations -------------------------------------------------------------------------------


async def test_migrate_twice_applies_nothing_the_second_time(pg_dsn: str, db: asyncpg.Connection) -> None:
    assert await migrate(pg_dsn) == []
    applied = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    assert applied == [version for version, _ in migrations()]


async def test_concurrent_migrations_apply_the_schema_once() -> None:
    async with throwaway_database(migrated=False) as fresh:
        results = await asyncio.gather(migrate(fresh), migrate(fresh), migrate(fresh))
        # Each migration is applied by exactly one of the three, whichever got there first.
        versions = [version for version, _ in migrations()]
        assert sorted(v for applied in results for v in applied) == versions
        conn = await asyncpg.connect(fresh)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = {r["tablename"] for r in rows}
            assert TENANT_TABLES | {"schema_migrations", "relay_instances", "outbound_accounts"} == tables
        finally:
            await conn.close()


async def test_open_refuses_a_database_that_was_never_migrated(tmp_path: Path) -> None:
    async with throwaway_database(migrated=False) as bare:
        store = PostgresStore(bare, spool_path=tmp_path / "relay.spool")
        with pytest.raises(ConfigError, match="relay migrate"):
            await store.open()
        Spool(tmp_path / "relay.spool").open()  # the failed open let go of its spool


async def test_every_tenant_table_has_forced_row_level_security(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
               (SELECT count(*) FROM pg_policies p
                WHERE p.tablename = c.relname AND p.qual LIKE '%app.tenant_id%') AS tenant_policies
        FROM pg_class c JOIN information_schema.columns col
          ON col.table_name = c.relname AND col.column_name = 'tenant_id' AND col.table_schema = 'public'
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
        """
    )
    assert {r["relname"] for r in rows} == TENANT_TABLES
    for row in rows:
        assert row["relrowsecurity"] and row["relforcerowsecurity"] and row["tenant_policies"] == 1, dict(row)


# --- Roles and row-level security -------------------------------------------------------------


async def _two_tenants(store: PostgresStore) -> tuple[str, str]:
    """Tenants A and B with a number, a call, its turns and usage each; returns their ids."""
    a, b = f"tenant-a-{token_hex(3)}", f"tenant-b-{token_hex(3)}"
    for tenant in (a, b):
        await store.directory.add_tenant(tenant, tenant.upper(), AGENT)
        await store.directory.add_number(f"+1555{random.randrange(10**6, 10**7)}", tenant)
        submit_all(store, call_records(f"CA-{tenant}", tenant_id=tenant, turns=4))
        assert await PostgresAdmission(store.pool).admit(tenant, "default", f"CA-{tenant}")
    async with as_writer(store.pool) as conn:  # a relay holding both calls (relay.pg.cluster)
        instance = token_hex(8)
        await conn.execute("INSERT INTO relay_instances (instance_id) VALUES ($1)", instance)
        for tenant in (a, b):
            await conn.execute(
                "INSERT INTO call_owners (call_sid, tenant_id, instance_id) VALUES ($1, $2, $3)",
                f"CA-{tenant}", tenant, instance,
            )  # fmt: skip
    await store.flush()
    return a, b


async def test_a_tenant_reader_sees_none_of_another_tenants_rows(store: PostgresStore, db: asyncpg.Connection) -> None:
    a, b = await _two_tenants(store)

    # Through the store's tenant reads.
    [call] = await store.directory.tenant_calls(a)
    assert call["call_sid"] == f"CA-{a}" and call["tenant_id"] == a
    turns = await store.directory.tenant_turns(a)
    assert [t.seq for t in turns] == [1, 2, 3, 4] and {t.tenant_id for t in turns} == {a}
    assert await store.directory.tenant_turns(a, call_sid=f"CA-{b}") == []

    # Raw, with no WHERE clause: row-level security alone keeps B out.
    async with as_reader(db, a) as conn:
        assert {r["tenant_id"] for r in await conn.fetch("SELECT * FROM call_turns")} == {a}
        assert len(await conn.fetch("SELECT * FROM call_turns")) == 4
        assert [r["call_sid"] for r in await conn.fetch("SELECT * FROM calls")] == [f"CA-{a}"]
        for table in sorted(CALL_TABLES):
            tenants = [r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")]
            assert tenants and set(tenants) == {a}, table


async def test_agents_tools_and_targets_are_kept_per_tenant(store: PostgresStore, db: asyncpg.Connection) -> None:
    a, b = await _two_tenants(store)
    tools = PostgresToolStore(store.pool)
    tool = TenantTool("book_table", "Book a table.", {"type": "object"}, "https://a.example/book", 2000, "One moment.")
    desk = TransferTarget("front desk", "+15550001111", "warm")
    secret = await tools.add_tool(a, "default", tool)
    await tools.add_target(a, "default", desk)
    assert await tools.actions(a, "default") == AgentActions((tool,), (desk,), secret)
    assert await tools.actions(b, "default") == AgentActions()
    assert await tools.secret(a) == secret and await tools.secret(a, rotate=True) != secret
    with pytest.raises(InputError, match="no agent"):
        await tools.add_tool(a, "nobody", tool)
    with pytest.raises(InputError):
        await tools.add_target(a, "default", TransferTarget("x", "not a number"))
    async with as_reader(db, b) as conn:  # row-level security: B's reader sees none of A's
        for table in ("agent_tools", "transfer_targets"):
            assert await conn.fetch(f"SELECT * FROM {table}") == [], table
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM tool_secrets")
    assert not await tools.remove_tool(b, "default", "book_table")
    assert await tools.remove_tool(a, "default", "book_table") and await tools.remove_target(a, "default", "front desk")
    # a tool call is a turn of its own; a call put through says where it went
    call = f"CA-{a}"
    store.submit(TurnRecord(call, 5, "tool", 1.0, tenant_id=a, item_id="call_1", text_generated="book_table {}"))
    store.submit(CallEnd(call, 4e9, "transferred", tenant_id=a, transferred_to="+15550001111"))
    await store.flush()
    assert [t.role for t in await store.turns(call)][-1] == "tool"
    ended = await store.call(call)
    assert ended is not None and ended["transferred_to"] == "+15550001111"


async def test_a_reader_without_a_tenant_sees_nothing(
    store: PostgresStore, pg_dsn: str, db: asyncpg.Connection
) -> None:
    await _two_tenants(store)
    fresh = await asyncpg.connect(pg_dsn)  # app.tenant_id never set in this session: NULL
    try:
        async with as_reader(fresh, None) as conn:
            for table in sorted(READER_TABLES):
                assert await conn.fetch(f"SELECT * FROM {table}") == [], table
    finally:
        await fresh.close()
    async with as_reader(db, None) as conn:  # set earlier in this session, now '' rather than NULL
        await conn.execute("SELECT set_config('app.tenant_id', '', true)")
        for table in sorted(READER_TABLES):
            assert await conn.fetch(f"SELECT * FROM {table}") == [], table


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO calls (call_sid, tenant_id, stream_sid, started_at) VALUES ('CAx', '{a}', 'MZx', 1)",
        "INSERT INTO call_turns (call_sid, seq, tenant_id, role, started_at) VALUES ('CAx', 1, '{a}', 'user', 1)",
        "UPDATE calls SET end_reason = 'forged' WHERE tenant_id = '{a}'",
        "UPDATE call_turns SET text_heard = 'forged'",
        "DELETE FROM call_turns",
        "DELETE FROM calls",
        "INSERT INTO tenants (tenant_id) VALUES ('{a}-2')",
    ],
)
async def test_the_reader_cannot_write(statement: str, store: PostgresStore, db: asyncpg.Connection) -> None:
    a, _ = await _two_tenants(store)
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
        async with as_reader(db, a) as conn:
            await conn.execute(statement.format(a=a))


async def test_the_reader_cannot_switch_row_security_off(store: PostgresStore, db: asyncpg.Connection) -> None:
    a, _ = await _two_tenants(store)
    # row_security = off never bypasses a policy: for a role subject to one, the query errors.
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="row-level security"):
        async with as_reader(db, a) as conn:
            await conn.execute("SET LOCAL row_security = off")
            await conn.fetch("SELECT * FROM call_turns")


async def test_a_non_superuser_owner_runs_everything_and_is_held_to_rls(tmp_path: Path) -> None:
    # Production DSNs are rarely superusers: migrate needs only CREATEROLE and the database,
    # and FORCE makes the tables' owner subject to the tenant policy like anyone else.
    owner, name = f"relay_owner_{token_hex(4)}", f"relay_test_{token_hex(6)}"
    admin = await asyncpg.connect(dsn("test"))
    await admin.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        url = f"postgresql://{owner}@127.0.0.1:5432/{name}"
        assert await migrate(url) == [version for version, _ in migrations()]
        store = PostgresStore(url, spool_path=tmp_path / "relay.spool")
        await store.open()
        await store.directory.add_tenant("acme", "", AGENT)
        submit_all(store, call_records("CA1", tenant_id="acme"))
        await store.flush()
        assert len(await store.turns("CA1")) == 6
        assert len(await store.directory.tenant_turns("acme")) == 6
        assert await store.directory.tenant_turns("other") == []
        await store.close()
        conn = await asyncpg.connect(url)
        try:  # the owner itself, no role switch, no tenant: nothing
            assert await conn.fetchval("SELECT count(*) FROM call_turns") == 0
        finally:
            await conn.close()
    finally:
        await drop_database(name)
        await admin.execute(f'DROP ROLE "{owner}"')
        await admin.close()


# --- Writes: the same records as SQLite, and idempotent ----------------------------------------


async def test_a_call_round_trips_exactly_as_in_the_sqlite_store(tmp_path: Path) -> None:
    user = TurnRecord(call_sid="CA1", seq=1, role="user", started_at=1_700_000_002.123456789, tenant_id="acme",
                      text_generated="hi", text_heard="hi", item_id="item_u")  # fmt: skip
    answer = TurnRecord(
        call_sid="CA1", seq=2, role="assistant", started_at=1_700_000_003.1, tenant_id="acme", item_id="item_a",
        text_generated="hello there", text_heard="hello", interrupted=True, ended_at=1_700_000_004.7,
        audio_ms=900, voice_to_voice_ms=812.5,
    )  # fmt: skip
    records: list[Record] = [
        CallRecord(call_sid="CA1", stream_sid="MZ1", started_at=1_700_000_001.0 / 3, tenant_id="acme",
                   account_sid="AC1", from_number="+15550100", to_number="+15550199"),
        answer, user, user, answer,  # out of order and replayed
        CallEnd(call_sid="CA1", ended_at=1_700_000_009.0, end_reason="stop", frames_in=10, frames_out=5, turns=2,
                v2v_p50_ms=812.5, v2v_max_ms=812.5, tenant_id="acme"),
        *call_records("CA2"),  # a later call, still open at the end: newest first in calls()
    ]  # fmt: skip
    records.pop()  # CA2's end
    async with throwaway_database() as fresh:
        pg = PostgresStore(fresh, spool_path=tmp_path / "relay.spool")
        lite = SQLiteStore(tmp_path / "relay.sqlite3")
        for store in (pg, lite):
            await store.open()
            submit_all(store, records)
            await store.flush()
        assert await pg.turns("CA1") == await lite.turns("CA1") == [user, answer]
        assert await pg.turns("CA2") == await lite.turns("CA2") == records[7:13]
        assert await pg.turns("CA-none") == []
        assert await pg.calls() == await lite.calls()
        assert [c["call_sid"] for c in await pg.calls()] == ["CA2", "CA1"]
        assert [c["call_sid"] for c in await pg.calls(limit=1)] == ["CA2"]
        for store in (pg, lite):
            await store.close()


async def test_a_handed_over_calls_latest_end_wins_whatever_order_the_ends_land_in(tmp_path: Path) -> None:
    # One stream ends as "handoff" on the relay that drained, the next as "stop" on another;
    # the drained relay's write may land last.
    later = CallEnd("CA1", 1_700_000_090.0, "stop", frames_in=900, turns=6, tenant_id="acme")
    earlier = CallEnd("CA1", 1_700_000_030.0, "handoff", frames_in=300, turns=2, tenant_id="acme")
    async with throwaway_database() as fresh:
        pg = PostgresStore(fresh, spool_path=tmp_path / "relay.spool")
        lite = SQLiteStore(tmp_path / "relay.sqlite3")
        for store in (pg, lite):
            await store.open()
            submit_all(store, [CallRecord("CA1", "MZ1", 1_700_000_001.0, tenant_id="acme"), later, earlier])
            await store.flush()
            [call] = await store.calls()
            assert (call["end_reason"], call["frames_in"], call["turns"]) == ("stop", 900, 6)
            await store.close()


async def test_duplicates_and_replayed_batches_leave_one_row_each(
    pg_dsn: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    prefix = f"CA-dup-{token_hex(3)}"
    records = [r for i in range(3) for r in call_records(f"{prefix}-{i}")]
    spool = tmp_path / "relay.spool"
    store = PostgresStore(pg_dsn, spool_path=spool, batch_size=5)
    await store.open()
    submit_all(store, records)
    await store.flush()
    submit_all(store, records[::-1])  # again, other batches, other order
    await store.close()

    # A crash after the commit but before the spool was cleared: the next open replays it all.
    leftover = Spool(spool)
    leftover.open()
    leftover.append(records)
    leftover.close()
    store = PostgresStore(pg_dsn, spool_path=spool)
    await store.open()
    assert store.spooled_bytes == 0
    keys = await turn_keys(db, prefix)
    assert sorted(keys) == sorted({(f"{prefix}-{i}", seq) for i in range(3) for seq in range(1, 7)})
    assert await db.fetchval("SELECT count(*) FROM calls WHERE call_sid LIKE $1 || '%'", prefix) == 3
    assert await db.fetchval("SELECT count(*) FROM usage WHERE call_sid LIKE $1 || '%'", prefix) == 3
    assert await store.turns(f"{prefix}-0") == [r for r in records[:8] if isinstance(r, TurnRecord)]
    await store.close()


async def test_usage_is_recorded_when_the_call_ends(store: PostgresStore, db: asyncpg.Connection) -> None:
    sid = f"CA-usage-{token_hex(3)}"
    records = call_records(sid, turns=4)  # assistant turns of 702 + 704 ms
    submit_all(store, records)
    await store.flush()
    row = await db.fetchrow("SELECT * FROM usage WHERE call_sid = $1", sid)
    assert UsageRecord(**{**dict(row), "estimated": bool(row["estimated"])}) == records[-1]
    assert (row["audio_in_seconds"], row["audio_out_seconds"], row["audio_out_tokens"]) == (6.0, 1.406, 28)


async def test_a_record_postgres_rejects_is_dead_lettered_alone(
    store: PostgresStore, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    sid = f"CA-bad-{token_hex(3)}"
    good = call_records(sid, turns=2)
    bad = TurnRecord(call_sid=sid, seq=9, role="system", started_at=1.0)  # fails the role CHECK
    submit_all(store, [*good[:2], bad, *good[2:]])  # one batch
    await store.flush()
    assert [t.seq for t in await store.turns(sid)] == [1, 2]
    assert await db.fetchval("SELECT ended_at FROM calls WHERE call_sid = $1", sid) is not None
    assert f"refused TurnRecord {sid} seq 9 for good" in caplog.text
    assert store.spooled_bytes == 0
    [line] = store.dead_letter_path.read_text().splitlines()
    entry = json.loads(line)
    assert record_from_dict(entry["record"]) == bad and "call_turns_role_check" in entry["reason"]
    assert store.dead_letters == 1


# --- The directory ----------------------------------------------------------------------------


async def test_the_directory_routes_numbers_to_tenant_agents(store: PostgresStore) -> None:
    directory = store.directory
    tenant, other = f"dir-{token_hex(3)}", f"dir-{token_hex(3)}"
    number = f"+1444{random.randrange(10**6, 10**7)}"
    await directory.add_tenant(tenant, "Acme", AGENT)
    await directory.add_tenant(other, "Other", AGENT)
    assert {"tenant_id": tenant, "name": "Acme"}.items() <= next(
        t for t in await directory.list_tenants() if t["tenant_id"] == tenant
    ).items()
    assert await directory.lookup_number(number) is None
    await directory.add_number(number, tenant)
    assert await directory.lookup_number(number) == (tenant, "default")

    sales = await directory.add_agent(
        dataclasses.replace(
            Agent.from_profile(tenant, "sales", AGENT),
            voice="cedar",
            vad_threshold=0.7,
            calls_per_minute=5,
            greeting="Acme sales, how can I help?",
        )
    )
    assert await directory.get_agent(tenant, "sales") == sales
    profile = sales.profile(AGENT)
    assert profile.greeting == "Acme sales, how can I help?" and profile.voice == "cedar"
    default = await directory.get_agent(tenant)
    assert default is not None and default.greeting == ""
    assert default == Agent.from_profile(tenant, "default", AGENT)  # the environment's agent, all of it
    await directory.add_number(number, other)  # re-adding moves the number
    assert await directory.lookup_number(number) == (other, "default")

    with pytest.raises(InputError, match="no agent 'sales'"):
        await directory.add_number(number, other, "sales")
    with pytest.raises(InputError, match=r"E\.164"):
        await directory.add_number("555-0100", tenant)
    with pytest.raises(InputError, match="no tenant"):
        await directory.add_agent(Agent.from_profile(f"nobody-{token_hex(3)}", "default", AGENT))
    with pytest.raises(InputError, match="voice 'fable'"):
        await directory.add_agent(dataclasses.replace(sales, agent_id="x", voice="fable"))
    with pytest.raises(InputError, match=r"vad threshold 2\.0 is outside 0\.\.1"):
        await directory.add_agent(dataclasses.replace(sales, agent_id="x", vad_threshold=2.0))
    with pytest.raises(InputError, match="max concurrent calls -1"):
        await directory.add_agent(dataclasses.replace(sales, agent_id="x", max_concurrent_calls=-1))
    assert [a.agent_id for a in await directory.list_agents(tenant)] == ["default", "sales"]


# --- Outages and crashes ----------------------------------------------------------------------


async def test_nothing_is_lost_or_doubled_across_a_database_outage(
    pg_db: str, tmp_path: Path, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    secret = f"s3cret-{token_hex(4)}"  # trust auth ignores it; it must still never be shown
    prefix = f"CA-out-{token_hex(3)}"
    n_calls, n_turns = 50, 6
    total = n_calls * (n_turns + 2)
    submitted = 0

    async with TcpProxy() as proxy:
        store = PostgresStore(dsn(pg_db, port=proxy.port, password=secret), spool_path=tmp_path / "relay.spool",
                              batch_size=16, connect_timeout=2.0, max_backoff=1.0)  # fmt: skip
        await store.open()

        async def call(i: int) -> None:
            nonlocal submitted
            pace = random.Random(i)
            for record in call_records(f"{prefix}-{i:02}", turns=n_turns):
                store.submit(record)
                submitted += 1
                await asyncio.sleep(pace.uniform(0.1, 0.3))  # the call's own pace, not a wait

        async def outage() -> int:
            await eventually(lambda: submitted >= total // 4, what="a quarter of the records")
            proxy.down()
            went_down_at = submitted
            # Down while many records are submitted, and long enough for the store to find the
            # database still gone on at least two retries.
            await eventually(
                lambda: (submitted - went_down_at >= total // 3 or submitted == total) and store.failed_retries >= 2,
                timeout=20, what="records submitted into the outage",
            )  # fmt: skip
            proxy.up()
            return submitted - went_down_at

        during, *_ = await asyncio.gather(outage(), *(call(i) for i in range(n_calls)))
        await store.drained(timeout=20)

        expected = {(f"{prefix}-{i:02}", seq) for i in range(n_calls) for seq in range(1, n_turns + 1)}
        keys = await turn_keys(db, prefix)
        assert len(keys) == len(expected) and set(keys) == expected
        ended = await db.fetch("SELECT turns, end_reason FROM calls WHERE call_sid LIKE $1 || '%'", prefix)
        assert len(ended) == n_calls and all((r["turns"], r["end_reason"]) == (n_turns, "stop") for r in ended)
        assert await db.fetchval("SELECT count(*) FROM usage WHERE call_sid LIKE $1 || '%'", prefix) == n_calls

        assert during >= total // 3 and store.spooled_records >= during and store.failed_retries >= 2
        assert store.spooled_bytes == 0 and (tmp_path / "relay.spool").stat().st_size == 0
        assert "spooling" in caplog.text and "spool replayed" in caplog.text
        shown = caplog.text + repr(store) + store.location
        assert secret not in shown and "postgres@127.0.0.1" in store.location
        await store.close()


async def test_a_relay_stopped_during_an_outage_replays_at_its_next_start(
    pg_db: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    prefix = f"CA-stop-{token_hex(3)}"
    spool = tmp_path / "relay.spool"
    async with TcpProxy() as proxy:
        url = dsn(pg_db, port=proxy.port)
        proxy.down()
        store = PostgresStore(url, spool_path=spool, connect_timeout=1.0)
        await store.open()  # the database is unreachable: the store opens anyway
        submit_all(store, call_records(f"{prefix}-0"))
        await store.close()  # does not wait for the database; the records stay spooled
        assert spool.stat().st_size > 0 and await turn_keys(db, prefix) == []

        proxy.up()
        store = PostgresStore(url, spool_path=spool)
        await store.open()
        assert store.spooled_bytes == 0
        submit_all(store, call_records(f"{prefix}-1"))
        await store.drained(timeout=10)
        assert sorted(await turn_keys(db, prefix)) == [(f"{prefix}-{i}", seq) for i in range(2) for seq in range(1, 7)]
        await store.close()


# Run in a child process: open a store whose database is down, submit, flush (spooled and
# fsync'd), report, then wait to be killed.
CHILD = """
import asyncio, sys
from relay.pg.store import PostgresStore
from tests.pgutil import call_records

async def main(url, spool, prefix):
    store = PostgresStore(url, spool_path=spool, connect_timeout=1.0)
    await store.open()
    for i in range(5):
        for record in call_records(f"{prefix}-{i}"):
            store.submit(record)
    await store.flush()
    print(store.spooled_records, store.spooled_bytes > 0, flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_killed_relay_loses_nothing_and_doubles_nothing(
    pg_db: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    prefix = f"CA-kill-{token_hex(3)}"
    spool = tmp_path / "relay.spool"
    async with TcpProxy() as proxy:
        url = dsn(pg_db, port=proxy.port)
        proxy.down()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, url, str(spool), prefix,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 30)  # type: ignore[union-attr]
        finally:
            child.send_signal(signal.SIGKILL)
            _, err = await child.communicate()
        assert line.split() == [b"45", b"True"], err.decode()
        assert child.returncode == -signal.SIGKILL

        # The kill landed mid-append of a record never acknowledged: a torn tail.
        unacknowledged = encode(TurnRecord(call_sid=f"{prefix}-9", seq=1, role="user", started_at=1.0))
        with spool.open("ab") as f:
            f.write(unacknowledged[:-3])
        # And one call had been committed before the crash but was still in the spool.
        side = PostgresStore(dsn(pg_db), spool_path=tmp_path / "other.spool")
        await side.open()
        submit_all(side, call_records(f"{prefix}-0"))
        await side.close()

        proxy.up()
        store = PostgresStore(url, spool_path=spool)
        await store.open()  # replays before it returns, Postgres being reachable
        assert store.spooled_bytes == 0

        expected = {(f"{prefix}-{i}", seq) for i in range(5) for seq in range(1, 7)}
        keys = await turn_keys(db, prefix)
        assert len(keys) == len(expected) and set(keys) == expected
        ends = await db.fetch("SELECT end_reason FROM calls WHERE call_sid LIKE $1 || '%'", prefix)
        assert [r["end_reason"] for r in ends] == ["stop"] * 5
        await store.close()


# --- The spool file ---------------------------------------------------------------------------


def _spool_with(path: Path, *batches: list[Record]) -> None:
    spool = Spool(path)
    spool.open()
    for batch in batches:
        spool.append(batch)
    spool.close()


def _read_all(path: Path) -> list[Record]:
    spool = Spool(path)
    spool.open()
    try:
        return spool.read()[0]
    finally:
        spool.close()


def test_the_spool_keeps_records_and_their_order_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    first, second = call_records("CA1"), call_records("CA2")
    odd = TurnRecord(call_sid="CA3", seq=1, role="user", started_at=0.1 + 0.2, voice_to_voice_ms=float("inf"))
    _spool_with(path, first, [odd])
    _spool_with(path, second)
    assert _read_all(path) == [*first, odd, *second]

    spool = Spool(path)
    spool.open()
    head, offset = spool.read(limit=3)
    rest, end = spool.read(offset)
    assert head + rest == [*first, odd, *second] and end == spool.size == path.stat().st_size
    spool.clear()
    assert spool.size == 0 and spool.read() == ([], 0)
    spool.close()


def test_a_torn_tail_is_cut_off_and_the_good_prefix_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    kept, torn = call_records("CA1"), call_records("CA2", turns=1)[1]
    _spool_with(path, kept)
    good = path.read_bytes()
    frame = encode(torn)
    for cut in range(1, len(frame)):  # a crash at every byte of the last write
        path.write_bytes(good + frame[:cut])
        spool = Spool(path)
        assert spool.open() == cut
        assert spool.read()[0] == kept and path.read_bytes() == good
        spool.append([torn])  # appends after the cut are readable, not stranded behind garbage
        assert spool.read()[0] == [*kept, torn]
        spool.close()


def test_the_checksum_catches_a_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    kept, last = call_records("CA1"), call_records("CA2", turns=1)[1]
    _spool_with(path, kept, [last])
    data = path.read_bytes()
    start = len(data) - len(encode(last))
    for at in range(start, len(data)):  # every byte of the last frame: header and payload
        flipped = bytearray(data)
        flipped[at] ^= 0x20
        path.write_bytes(bytes(flipped))
        assert _read_all(path) == kept, at


def test_one_process_at_a_time_holds_a_spool(tmp_path: Path) -> None:
    first, second = Spool(tmp_path / "s.spool"), Spool(tmp_path / "s.spool")
    first.open()
    with pytest.raises(SpoolError, match="in use"):
        second.open()
    first.close()
    second.open()
    second.close()


def test_locations_never_show_a_password() -> None:
    assert redact("postgresql://relay:hunter2@db/x?sslmode=require") == "postgresql://relay@db/x?sslmode=require"
    assert redact("postgres://relay:p%40ss@db/relay?password=hunter2") == "postgres://relay@db/relay"
    assert redact("host=db password='hunter 2' user=relay") == "host=db user=relay"
    assert "hunter2" not in repr(PostgresStore("postgresql://u:hunter2@db/x", spool_path="/nonexistent/s"))
