"""Admission at the webhook: a tenant's calls stay under its limits, across relays sharing Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from relay.admission import START_GRACE, LocalAdmission
from relay.agents import Agent
from relay.config import Settings
from relay.pg import Directory, PostgresAdmission, PostgresStore
from relay.server import Relay, RelayServer
from relay.tenants import CachedDirectory
from tests.pgutil import AGENT, create_database, drop_database, dsn
from tests.test_call import SIM_AUTH_TOKEN, post_webhook, stack, voice_form


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _streams(body: bytes) -> bool:
    return ET.fromstring(body.decode()).find("./Connect/Stream") is not None


async def test_local_limits_count_live_calls_and_calls_per_minute() -> None:
    clock = Clock()
    adm = LocalAdmission(max_concurrent=2, per_minute=3, clock=clock)
    assert [await adm.admit("t", "a", f"CA{i}") for i in range(3)] == [True, True, False]
    assert await adm.admit("t", "a", "CA0") is True  # a retried webhook keeps its slot
    await adm.started("CA0")
    await adm.ended("CA1")
    assert await adm.admit("t", "a", "CA3") is True  # a slot freed; 3 admitted this minute
    await adm.ended("CA3")
    assert await adm.admit("t", "a", "CA4") is False  # under the live limit, at the per-minute one
    clock.now += 61
    assert await adm.admit("t", "a", "CA4") is True
    clock.now += START_GRACE + 1  # CA4 never started: its slot expires; CA0 started and holds
    assert await adm.admit("t", "a", "CA5") is True
    assert await adm.admit("t", "a", "CA6") is False
    assert adm.refused == 3


async def test_over_the_limit_the_caller_hears_busy_and_no_stream_opens(tmp_path: Path) -> None:
    async with stack(tmp_path, max_concurrent_calls=1) as s:
        first = await post_webhook(s.webhook, voice_form(1))
        second = await post_webhook(s.webhook, voice_form(2))
    assert first[0] == second[0] == 200
    assert _streams(first[1]) and not _streams(second[1])
    root = ET.fromstring(second[1].decode())
    assert [c.tag for c in root] == ["Say", "Hangup"] and "busy" in (root.find("Say").text or "")


@pytest.mark.postgres
async def test_two_relays_on_one_database_admit_exactly_the_tenant_limit(tmp_path: Path) -> None:
    name = await create_database()
    stores, servers = [], []
    try:
        async with Directory.connect(dsn(name)) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.set_limits("acme", 3, None)
            await directory.add_number("+15550100001", "acme")
        for i in range(2):
            store = PostgresStore(dsn(name), spool_path=tmp_path / f"relay{i}.spool")
            await store.open()
            settings = Settings(
                host="127.0.0.1",
                port=0,
                realtime_url="ws://127.0.0.1:9/v1/realtime",
                openai_api_key="k",
                twilio_auth_token=SIM_AUTH_TOKEN,
            )
            relay = Relay(
                settings,
                store,
                directory=CachedDirectory(store.directory.lookup_number),
                admission=PostgresAdmission(store.pool),
            )
            server = RelayServer(relay)
            await server.start()
            relay.settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{server.port}")
            stores.append(store)
            servers.append(server)
        hooks = [f"http://127.0.0.1:{srv.port}/twilio/voice" for srv in servers]
        answers = await asyncio.gather(
            *(post_webhook(hooks[i % 2], voice_form(i, to="+15550100001")) for i in range(10))
        )
    finally:
        for server in servers:
            await server.close(drain_timeout=1)
        for store in stores:
            await store.close()
        await drop_database(name)
    assert all(status == 200 for status, _ in answers)
    assert sum(_streams(body) for _, body in answers) == 3


@pytest.mark.postgres
async def test_an_agents_own_limit_holds_beside_its_tenants(tmp_path: Path) -> None:
    name = await create_database()
    try:
        async with Directory.connect(dsn(name)) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.set_limits("acme", 3, None)
            await directory.add_agent(
                dataclasses.replace(Agent.from_profile("acme", "sales", AGENT), max_concurrent_calls=1)
            )
            await directory.add_number("+15550100001", "acme", "sales")
            await directory.add_number("+15550100002", "acme")
        store = PostgresStore(dsn(name), spool_path=tmp_path / "relay.spool")
        await store.open()
        async with stack(
            tmp_path,
            directory=CachedDirectory(store.directory.lookup_number),
            store=store,
            admission=PostgresAdmission(store.pool),
        ) as s:
            sales = [await post_webhook(s.webhook, voice_form(i, to="+15550100001")) for i in range(2)]
            default = [await post_webhook(s.webhook, voice_form(10 + i, to="+15550100002")) for i in range(3)]
    finally:
        await drop_database(name)
    assert [_streams(body) for _, body in sales] == [True, False]  # the agent's limit: 1
    assert [_streams(body) for _, body in default] == [True, True, False]  # the tenant's: 3 in all
