"""Tenant routing at the webhook: the called number picks the tenant, unknown numbers hang up."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from relay.sim.caller import TwilioCaller, parse_connect_stream
from relay.store import DEFAULT_TENANT
from relay.tenants import CachedDirectory, Route, SingleTenant
from tests.test_call import SHORT, post_webhook, stack, voice_form

NUMBERS = {"+15550100001": ("acme", "concierge"), "+15550100002": ("globex", "default")}


class FakeLookup:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, e164: str) -> tuple[str, str] | None:
        self.calls.append(e164)
        return NUMBERS.get(e164)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_single_tenant_routes_every_number_to_the_default() -> None:
    assert await SingleTenant().route("+15550000000") == Route(DEFAULT_TENANT, "default")


async def test_the_cache_asks_once_per_number_until_the_ttl_passes() -> None:
    lookup, clock = FakeLookup(), Clock()
    directory = CachedDirectory(lookup, ttl=60, miss_ttl=5, clock=clock)
    for _ in range(3):
        assert await directory.route("+15550100001") == Route("acme", "concierge")
        assert await directory.route("+15559999999") is None
    assert lookup.calls == ["+15550100001", "+15559999999"]
    clock.now += 6  # past the miss TTL only: an unknown number is asked again, a known one not
    await directory.route("+15550100001")
    await directory.route("+15559999999")
    assert lookup.calls[2:] == ["+15559999999"]
    clock.now += 60
    await directory.route("+15550100001")
    assert lookup.calls[3:] == ["+15550100001"]


async def test_the_cache_is_bounded() -> None:
    lookup = FakeLookup()
    directory = CachedDirectory(lookup, max_entries=2, clock=Clock())
    for number in ("+1", "+2", "+3", "+1"):
        await directory.route(number)
    assert lookup.calls == ["+1", "+2", "+3", "+1"]  # +1 was evicted by +3


async def test_an_unknown_number_hears_it_is_not_configured_and_no_stream_opens(tmp_path: Path) -> None:
    directory = CachedDirectory(FakeLookup())
    async with stack(tmp_path, directory=directory) as s:
        status, body = await post_webhook(s.webhook, voice_form(1, to="+15559999999"))
        sessions = s.agent.sessions
    assert status == 200
    root = ET.fromstring(body.decode())
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "not configured" in (root.find("Say").text or "")
    assert sessions == []


async def test_a_routed_call_carries_its_tenant_into_every_stored_record(tmp_path: Path) -> None:
    directory = CachedDirectory(FakeLookup())
    async with stack(tmp_path, directory=directory) as s:
        _status, body = await post_webhook(s.webhook, voice_form(2, to="+15550100001"))
        _, params = parse_connect_stream(body.decode())
        caller = TwilioCaller(s.webhook, SHORT, to_number="+15550100001")
        result = await caller.run()
        for task in list(s.relay.sessions):
            await task
        await s.store.flush()
        turns = await s.store.turns(result.call_sid)
        calls = await s.store.calls()
    assert params["tenant"] == "acme" and params["agent"] == "concierge"
    assert result.error is None and turns
    assert {t.tenant_id for t in turns} == {"acme"}
    assert [c["tenant_id"] for c in calls if c["call_sid"] == result.call_sid] == ["acme"]


async def test_while_the_directory_is_down_known_numbers_keep_their_last_route() -> None:
    lookup, clock = FakeLookup(), Clock()
    directory = CachedDirectory(lookup, ttl=60, clock=clock)
    assert await directory.route("+15550100001") == Route("acme", "concierge")

    async def down(e164: str) -> tuple[str, str] | None:
        raise OSError("connection refused")

    directory._lookup = down  # the database goes away
    clock.now += 3600
    assert await directory.route("+15550100001") == Route("acme", "concierge")
    try:
        await directory.route("+15550100002")
    except OSError:
        pass
    else:
        raise AssertionError("a number never seen cannot be routed while the directory is down")
