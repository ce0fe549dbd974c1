"""Erasing one caller on request (``relay erase``, ``POST /v1/erasures``): every trace of their
calls gone from both stores, a non-empty spool and the dead-letter file; the rest kept; the
erasure recorded as counts only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import asyncpg
import orjson
import pytest

from relay.config import Settings
from relay.erasure import Match, SQLiteEraser, caller_number, erase
from relay.errors import InputError
from relay.outbound import wiring
from relay.pg import PostgresStore
from relay.pg.erasure import PostgresEraser
from relay.server import Relay, RelayServer
from relay.sim.caller import http_post
from relay.store import DEFAULT_TENANT, CallRecord, Record, SQLiteStore, record_to_dict
from tests.pgutil import call_records, throwaway_database
from tests.test_pgstore import submit_all

CALLER = "+15557654321"
OTHER = "+15550001111"
SECRET = "my card is in the drawer"  # what the caller said: must be gone


def caller_call(
    sid: str, number: str = CALLER, *, tenant_id: str = DEFAULT_TENANT, inbound: bool = True
) -> list[Record]:
    """A whole call with ``number`` (from it, or to it when relay placed the call), its turns
    saying ``SECRET``."""
    records = call_records(sid, tenant_id=tenant_id, turns=2)
    start = records[0]
    assert isinstance(start, CallRecord)
    records[0] = dataclasses.replace(
        start, from_number=number if inbound else "+15550199", to_number="+15550199" if inbound else number
    )
    return [
        dataclasses.replace(r, text_generated=f"{SECRET} ({sid})") if hasattr(r, "text_generated") else r
        for r in records
    ]


def dead_letter(path: Path, record: Record) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"at": "now", "reason": "test", "record": record_to_dict(record)}) + "\n")


def test_a_caller_is_an_e164_number() -> None:
    assert caller_number(" +15557654321 ") == "+15557654321"
    for bad in ("15557654321", "+0555", "", "+1 555 765"):
        with pytest.raises(InputError):
            caller_number(bad)


def test_a_match_is_the_tenants_calls_with_the_number() -> None:
    match = Match(DEFAULT_TENANT, CALLER, frozenset({"CA1"}))
    [start, turn, *_] = caller_call("CA2")
    assert match(start) and not match(turn)  # the call's other records: once its start is seen
    assert match.widened([start])(turn)
    assert not Match("other", CALLER, frozenset())(start)


async def test_the_embedded_store_keeps_nothing_of_an_erased_caller(tmp_path: Path) -> None:
    db, dead = tmp_path / "relay.sqlite3", tmp_path / "dead.jsonl"
    store = SQLiteStore(db, dead_letter_path=dead)
    await store.open()
    submit_all(store, [*caller_call("CA-in"), *caller_call("CA-out", inbound=False), *caller_call("CA-kept", OTHER)])
    await store.flush()
    dead_letter(dead, caller_call("CA-dead")[0])  # refused for good, still the caller's
    dead_letter(dead, caller_call("CA-dead")[1])
    dead_letter(dead, caller_call("CA-kept-dead", OTHER)[0])
    eraser = SQLiteEraser(db)
    erased = await erase(eraser, DEFAULT_TENANT, CALLER, by="test", dead_letter_path=dead, store=store)
    assert erased.as_dict() == {"calls": 2, "turns": 4, "usage": 2, "jobs": 0, "spooled": 0, "dead_letters": 2}
    assert await store.turns("CA-in") == [] and await store.call("CA-out") is None
    assert len(await store.turns("CA-kept")) == 2  # another caller's call stays
    assert [json.loads(line)["record"]["call_sid"] for line in dead.read_text().splitlines()] == ["CA-kept-dead"]
    await store.close()
    # The file itself holds no trace (deleted rows are overwritten, the log emptied).
    raw = db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b""
    )
    assert CALLER.encode() not in raw and b"CA-in" not in raw
    assert SECRET.encode() in raw  # (the kept call's turns say it too: the check can see text)
    [row] = await eraser.erasures(DEFAULT_TENANT)
    assert row["calls"] == 2 and row["requested_by"] == "test" and CALLER not in str(row)


@pytest.mark.postgres
async def test_postgres_and_a_non_empty_spool_keep_nothing_of_an_erased_caller(tmp_path: Path) -> None:
    async with throwaway_database() as url:
        conn = await asyncpg.connect(url)
        try:
            for tenant in ("acme", "globex"):
                await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1)", tenant)
        finally:
            await conn.close()
        dead = tmp_path / "dead.jsonl"
        store = PostgresStore(url, spool_path=tmp_path / "spool", dead_letter_path=dead)
        await store.open()
        try:
            submit_all(store, [*caller_call("CA-a1", tenant_id="acme"), *caller_call("CA-g1", tenant_id="globex")])
            submit_all(store, caller_call("CA-a2", OTHER, tenant_id="acme"))
            await store.flush()
            # An outage left records in the spool, the caller's among them, not yet replayed.
            await store._spool_append(
                [*caller_call("CA-a3", tenant_id="acme"), *caller_call("CA-a4", OTHER, tenant_id="acme")]
            )
            assert store.spooled_bytes > 0
            dead_letter(dead, caller_call("CA-a5", tenant_id="acme")[0])
            dead_letter(dead, caller_call("CA-a5", tenant_id="acme")[1])
            eraser = PostgresEraser(store.pool)
            erased = await erase(eraser, "acme", CALLER, by="test", dead_letter_path=dead, store=store)
            assert erased.calls == 1 and erased.turns == 2 and erased.usage == 1
            assert erased.spooled == 5 and erased.dead_letters == 2  # CA-a3's start, turns, end, usage
            async with store._spool_lock:
                store._start_recovery()  # Postgres is back: the rest of the spool goes in
            await store.drained(timeout=10)
            assert await store.call("CA-a1") is None and await store.turns("CA-a3") == []
            assert len(await store.turns("CA-a2")) == 2 and len(await store.turns("CA-a4")) == 2
            # The same number on another tenant's calls is that tenant's: untouched.
            assert len(await store.turns("CA-g1")) == 2
            conn = await asyncpg.connect(url)
            try:
                dump = orjson.dumps(
                    [dict(r) for r in await conn.fetch("SELECT * FROM calls WHERE tenant_id = 'acme'")]
                    + [dict(r) for r in await conn.fetch("SELECT * FROM call_turns WHERE tenant_id = 'acme'")]
                )
            finally:
                await conn.close()
            assert CALLER.encode() not in dump and b"CA-a1" not in dump and b"CA-a3" not in dump
            [row] = await eraser.erasures("acme")
            assert row["spooled"] == 5 and await eraser.erasures("globex") == []  # each tenant sees its own
        finally:
            await store.close()


async def test_the_api_erases_with_the_tenants_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    store = SQLiteStore(path, dead_letter_path=tmp_path / "dead.jsonl")
    await store.open()
    settings = Settings(host="127.0.0.1", port=0, openai_api_key="k", twilio_auth_token="t", sqlite_path=str(path))
    server = RelayServer(Relay(settings, store))
    await server.start()
    relay = server.relay
    relay.outbound = wiring.placing(settings, relay, await wiring.embedded_jobs(settings))
    relay.eraser = SQLiteEraser(path)
    url = f"http://127.0.0.1:{server.port}/v1/erasures"
    try:
        submit_all(store, caller_call("CA-api"))
        _, key = await relay.outbound.jobs.keys.create(DEFAULT_TENANT, "privacy")
        status, _ = await http_post(url, b'{"caller": "+15557654321"}', {})
        assert status == 401
        status, body = await http_post(url, b'{"caller": "5557654321"}', {"Authorization": f"Bearer {key}"})
        assert status == 400 and b"E.164" in body
        status, body = await http_post(url, b'{"caller": "+15557654321"}', {"Authorization": f"Bearer {key}"})
        assert status == 200 and orjson.loads(body)["erased"]["calls"] == 1
        assert await store.turns("CA-api") == []
    finally:
        await server.close()
        await store.close()
