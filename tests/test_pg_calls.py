"""Whole simulated calls into the Postgres store: tenants kept apart, nothing lost in an outage.

The relay runs with a ``PostgresStore`` on a throwaway database. Each caller dials a number
routed to a tenant; what the callers said and heard must come back, exactly once, through
each tenant's row-level-security reader — and through a database outage in the middle of
50 concurrent calls.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from relay.pg import Directory, PostgresStore
from relay.sim.caller import TwilioCaller
from relay.spool import decode
from relay.store import CallEnd
from relay.tenants import CachedDirectory
from tests.pgutil import AGENT, TcpProxy, create_database, drop_database, dsn, eventually
from tests.test_call import SHORT, SIM_AUTH_TOKEN, stack

pytestmark = pytest.mark.postgres

# The outage the issue asks for is 20 s; RELAY_TEST_OUTAGE_S may shorten it for a quick local run.
OUTAGE_S = float(os.environ.get("RELAY_TEST_OUTAGE_S", "20"))


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A migrated throwaway database (its name) with two tenants, a number each."""
    name = await create_database()
    try:
        async with Directory.connect(dsn(name)) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.add_tenant("globex", "Globex", AGENT)
            await directory.add_number("+15550100001", "acme")
            await directory.add_number("+15550100002", "globex")
        yield name
    finally:
        await drop_database(name)


async def test_each_tenant_reads_only_its_own_calls_and_turns(database: str, tmp_path: Path) -> None:
    store = PostgresStore(dsn(database), spool_path=tmp_path / "relay.spool")
    await store.open()
    directory = CachedDirectory(store.directory.lookup_number)
    async with stack(tmp_path, directory=directory, store=store) as s:
        results = await asyncio.gather(
            TwilioCaller(s.webhook, SHORT, to_number="+15550100001").run(),
            TwilioCaller(s.webhook, SHORT, to_number="+15550100002").run(),
        )
        for task in list(s.relay.sessions):
            await task
        await store.drained(timeout=10)
        acme = await store.directory.tenant_turns("acme")
        globex = await store.directory.tenant_turns("globex")
        acme_calls = await store.directory.tenant_calls("acme")
    await store.close()

    assert all(r.error is None and r.violations == [] for r in results)
    assert {t.call_sid for t in acme} == {results[0].call_sid}
    assert {t.call_sid for t in globex} == {results[1].call_sid}
    assert [c["call_sid"] for c in acme_calls] == [results[0].call_sid]
    said = [t.text_generated for t in acme if t.role == "user"]
    assert said == list(SHORT.utterances)


async def test_a_call_runs_with_its_tenants_agent(database: str, tmp_path: Path) -> None:
    store = PostgresStore(dsn(database), spool_path=tmp_path / "relay.spool")
    await store.open()
    await store.directory.set_agent(
        "acme",
        "default",
        instructions="You are Acme's concierge.",
        voice="cedar",
        model="gpt-realtime-2.1-mini",
        transcription_model="gpt-4o-transcribe",
    )
    directory = CachedDirectory(store.directory.lookup_number)
    try:
        async with stack(tmp_path, directory=directory, store=store, resolve_agent=store.directory.get_agent) as s:
            acme = await TwilioCaller(s.webhook, SHORT, to_number="+15550100001").run()
            globex = await TwilioCaller(s.webhook, SHORT, to_number="+15550100002").run()
            for task in list(s.relay.sessions):
                await task
            configs = [log.session_config for log in s.agent.sessions]
            paths = [log.path for log in s.agent.sessions]
    finally:
        await store.close()
    assert acme.error is None and globex.error is None
    assert configs[0]["instructions"] == "You are Acme's concierge."
    assert configs[0]["audio"]["output"]["voice"] == "cedar"
    assert configs[0]["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}
    assert paths[0].endswith("?model=gpt-realtime-2.1-mini")  # the agent's model picks the session's
    assert configs[1]["instructions"] != "You are Acme's concierge."  # globex keeps its own default
    assert paths[1].endswith(f"?model={AGENT.model}")


async def test_fifty_calls_through_a_database_outage_keep_every_turn_exactly_once(
    database: str, tmp_path: Path
) -> None:
    async with TcpProxy() as proxy:
        store = PostgresStore(
            dsn(database, port=proxy.port),
            spool_path=tmp_path / "relay.spool",
            connect_timeout=1.0,
            command_timeout=2.0,
        )
        await store.open()
        db = await asyncpg.connect(dsn(database))  # the real server, past the proxy
        directory = CachedDirectory(store.directory.lookup_number)
        try:
            async with stack(tmp_path, directory=directory, store=store) as s:
                await directory.route("+15550100001")  # routes are cached before the outage
                calls = [TwilioCaller(s.webhook, SHORT, to_number="+15550100001") for _ in range(50)]
                running = [asyncio.create_task(c.run()) for c in calls]

                # The database goes away once the first turns are in, and stays away OUTAGE_S.
                await eventually(lambda: _count(db), timeout=30, what="first turns stored")
                proxy.down()
                down_at = time.monotonic()
                results = await asyncio.gather(*running)
                for task in list(s.relay.sessions):
                    await task
                await s.store.flush()  # everything is in Postgres or fsync'd in the spool
                spooled = store.spooled_records
                await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
                proxy.up()
                await store.drained(timeout=60)
            rows = await db.fetch("SELECT call_sid, seq, role, text_generated FROM call_turns")
            call_rows = await db.fetch("SELECT call_sid, end_reason FROM calls")
        finally:
            await db.close()
            await store.close()

    assert all(r.error is None for r in results)
    assert spooled > 0, "the outage came too late to matter"
    keys = [(r["call_sid"], r["seq"]) for r in rows]
    assert len(keys) == len(set(keys)), "a turn was written twice"
    by_call: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["call_sid"], r["seq"])):
        if r["role"] == "user":
            by_call.setdefault(r["call_sid"], []).append(r["text_generated"])
    for result in results:
        assert by_call.get(result.call_sid) == list(SHORT.utterances), f"turns of {result.call_sid} lost"
        assert len([t for t in result.turns if t.answered]) == len(SHORT.utterances)
    assert len(call_rows) == 50 and all(r["end_reason"] == "stop" for r in call_rows)


async def _count(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM call_turns"))


async def test_kill_9_with_a_full_spool_then_restart_loses_nothing_and_doubles_nothing(
    database: str, tmp_path: Path
) -> None:
    from relay.sim.agent import RealtimeAgent
    from tests.test_call import FAST

    spool = tmp_path / "relay.spool"
    async with TcpProxy() as proxy, RealtimeAgent(FAST) as agent:
        env = dict(
            os.environ,
            DATABASE_URL=dsn(database, port=proxy.port),
            RELAY_SPOOL_PATH=str(spool),
            RELAY_REALTIME_URL=agent.url,
            OPENAI_API_KEY="sk-sim",
            TWILIO_AUTH_TOKEN=SIM_AUTH_TOKEN,
            RELAY_HOST="127.0.0.1",
            RELAY_LOG_LEVEL="WARNING",
        )

        async def start_relay(port: int) -> asyncio.subprocess.Process:
            env.update(RELAY_PORT=str(port), RELAY_PUBLIC_URL=f"http://127.0.0.1:{port}")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "serve", env=env, stderr=asyncio.subprocess.DEVNULL
            )
            await eventually(lambda: _listening(port), timeout=20, what="relay listening")
            return proc

        port = _free_port()
        relay = await start_relay(port)
        caller = TwilioCaller(f"http://127.0.0.1:{port}/twilio/voice", SHORT, to_number="+15550100001")
        call = asyncio.create_task(caller.run())
        await eventually(lambda: bool(agent.sessions), timeout=20, what="the call's stream is open")
        proxy.down()  # Postgres goes away mid-call: everything of this call must spool
        result = await call
        await eventually(
            lambda: _spooled_call_end(spool, result.call_sid), timeout=20, what="the call's turns and its end spooled"
        )
        relay.kill()  # SIGKILL: no shutdown, no flush
        await relay.wait()

        proxy.up()
        relay = await start_relay(_free_port())  # replays the spool at open
        db = await asyncpg.connect(dsn(database))
        try:
            await eventually(
                lambda: _user_turns(db, result.call_sid, len(SHORT.utterances)),
                timeout=30,
                what="spooled turns replayed",
            )
            rows = await db.fetch(
                "SELECT seq, role, text_generated FROM call_turns WHERE call_sid = $1 ORDER BY seq", result.call_sid
            )
            ended = await db.fetchval("SELECT end_reason FROM calls WHERE call_sid = $1", result.call_sid)
        finally:
            await db.close()
            relay.terminate()
            await relay.wait()

    assert result.error is None
    assert [r["text_generated"] for r in rows if r["role"] == "user"] == list(SHORT.utterances)
    assert len({r["seq"] for r in rows}) == len(rows)
    assert ended == "stop"


def _spooled_call_end(path: Path, call_sid: str) -> bool:
    """Whether the spool file (read without its lock) holds the ``CallEnd`` of ``call_sid``."""
    if not path.exists():
        return False
    data, pos = path.read_bytes(), 0
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        payload = data[pos + 8 : pos + 8 + length]
        if len(payload) < length:
            break
        record = decode(payload)
        if isinstance(record, CallEnd) and record.call_sid == call_sid:
            return True
        pos += 8 + length
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def _user_turns(db: asyncpg.Connection, call_sid: str, n: int) -> bool:
    count = await db.fetchval("SELECT count(*) FROM call_turns WHERE call_sid = $1 AND role = 'user'", call_sid)
    return count >= n


async def test_a_tenant_on_its_own_twilio_subaccount_is_signed_with_its_own_token(
    database: str, tmp_path: Path
) -> None:
    store = PostgresStore(dsn(database), spool_path=tmp_path / "relay.spool")
    await store.open()
    acme_account = "AC" + "a" * 32
    await store.directory.set_auth_token("acme", "acme-subaccount-token", acme_account)
    try:
        async with stack(
            tmp_path,
            directory=CachedDirectory(store.directory.lookup_number),
            store=store,
            credential_source=store.directory.credentials,
        ) as s:
            ok = await TwilioCaller(
                s.webhook, SHORT, to_number="+15550100001", auth_token="acme-subaccount-token", account_sid=acme_account
            ).run()
            forged = await TwilioCaller(
                s.webhook, SHORT, to_number="+15550100001", auth_token="some-other-account"
            ).run()
            for task in list(s.relay.sessions):
                await task
            credentials = await store.directory.credentials()
            listed = await store.directory.list_tenants()
    finally:
        await store.close()
    assert ok.error is None and all(t.answered for t in ok.turns)
    assert forged.error is not None and "403" in forged.error
    assert [(c.tenant_id, c.account_sid, c.token) for c in credentials] == [
        ("acme", acme_account, "acme-subaccount-token")
    ]
    assert "acme-subaccount-token" not in repr(listed), "the CLI's tenant list must not show tokens"
