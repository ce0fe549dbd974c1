"""Outbound jobs, sans-I/O: what a call spec, a campaign file and quiet hours accept, retries'
backoff, status order, and API keys' format."""

from __future__ import annotations

import dataclasses
import datetime
import random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import apikeys
from relay.errors import InputError
from relay.outbound import jobs
from relay.outbound.jobs import CallSpec, QuietHours


def test_campaign_csv_columns_become_variables() -> None:
    specs = jobs.parse_campaign_csv("to,name,order\n+15550001001,Ann,A-1\n +15550001002 , Bo ,\n")
    assert [(s.to, dict(s.variables), s.key) for s in specs] == [
        ("+15550001001", {"name": "Ann", "order": "A-1"}, "row-2"),
        ("+15550001002", {"name": "Bo", "order": ""}, "row-3"),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name\nAnn\n", "'to' column"),
        ("to\n", "no calls"),
        ("to\n5550001\n", "line 2: to '5550001' is not an E.164"),
        ("to,name\n+15550001001,Ann,extra\n", "line 2: more fields"),
        ("to\n+15550001001\n+15550001001\n", "line 3: +15550001001 is on line 2 already"),
        ("to,1bad\n+15550001001,x\n", "variable name '1bad'"),
        ("to,relay_transfer_of\n+15550001001,CA1\n", "names beginning relay_ are relay's own"),
    ],
)
def test_campaign_csv_refuses_with_the_line(text: str, says: str) -> None:
    with pytest.raises(InputError, match=says.replace("+", r"\+")):
        jobs.parse_campaign_csv(text)


def test_campaign_json() -> None:
    specs = jobs.specs_from_json(
        {"calls": [{"to": "+15550001001", "variables": {"name": "Ann"}}, {"to": "+15550001002"}]}
    )
    assert [s.key for s in specs] == ["row-1", "row-2"]
    for body, says in [
        ({}, "non-empty list"),
        ({"calls": [{"to": "+15550001001", "color": "red"}]}, "unknown field"),
        ({"calls": [{"to": 5}]}, "must be a string"),
        ({"calls": [{"to": "+15550001001", "variables": {"x": 1}}]}, "variable x"),
        ({"calls": [{"to": "+15550001001"}, {"to": "+15550001001"}]}, "in the campaign already"),
    ]:
        with pytest.raises(InputError, match=says):
            jobs.specs_from_json(body)


def test_quiet_hours_across_midnight() -> None:
    quiet = QuietHours.parse("America/New_York", "21:00-08:00")
    zone = ZoneInfo("America/New_York")

    def at(day: int, hour: int, minute: int = 0) -> float:
        return datetime.datetime(2026, 12, day, hour, minute, tzinfo=zone).timestamp()

    assert quiet.until(at(7, 12)) is None
    assert quiet.until(at(7, 20, 59)) is None
    assert quiet.until(at(7, 21)) == at(8, 8)
    assert quiet.until(at(8, 3)) == at(8, 8)
    assert quiet.until(at(8, 8)) is None
    day = QuietHours.parse("UTC", "12:00-13:30")
    noon = datetime.datetime(2026, 12, 7, 12, 15, tzinfo=datetime.UTC).timestamp()
    assert day.until(noon) == noon + 75 * 60
    for zone_name, span in [
        ("Mars/Olympus", "21:00-08:00"),
        ("UTC", "9-17"),
        ("UTC", "25:00-08:00"),
        ("UTC", "08:00-08:00"),
    ]:
        with pytest.raises(InputError):
            QuietHours.parse(zone_name, span)


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    rng = random.Random(7)
    waits = [jobs.backoff_s(n, rng) for n in range(1, 10)]
    assert 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4
    assert all(48 <= w <= 72 for w in waits[-3:])


@given(st.permutations(range(6)), st.lists(st.integers(0, 5), max_size=4))
def test_statuses_ordered_and_kept_once_whatever_the_arrival(order: list[int], repeats: list[int]) -> None:
    names = ["initiated", "ringing", "in-progress", "completed", "x", "y"]
    statuses: tuple[tuple[int, str, float], ...] = ()
    for seq in [*order, *repeats]:
        statuses = jobs.merge_status(statuses, seq, names[seq], float(seq))
    assert [s for s, _, _ in statuses] == list(range(6))


def test_answered_by_folds_twilios_verdicts() -> None:
    assert jobs.answered_by("human") == "human"
    assert {jobs.answered_by(v) for v in jobs.MACHINE_VERDICTS} == {"machine"}
    assert jobs.answered_by("unknown") == jobs.answered_by("") == "unknown"


def test_call_spec_problems() -> None:
    assert CallSpec("+15550001001", {"name": "Ann"}).problems() == []
    assert CallSpec("555", {}).problems()
    assert CallSpec("+15550001001", {f"v{i}": "" for i in range(40)}).problems()
    assert CallSpec("+15550001001", {"name": "x" * 600}).problems()


def test_api_keys_are_shown_once_and_stored_hashed() -> None:
    key_id, key, stored = apikeys.issue()
    assert apikeys.key_id_of(key) == key_id and stored == apikeys.digest(key) and key not in stored
    assert apikeys.key_id_of(key + "x") is None and apikeys.key_id_of("Bearer " + key) is None
    assert apikeys.bearer(f"Bearer {key}") == key and apikeys.bearer(key) == ""


async def test_a_campaigns_call_waits_out_quiet_hours_a_single_call_does_not() -> None:
    from relay.outbound.rest import TwilioRest
    from relay.outbound.service import Outbound
    from relay.outbound.tenant import OutboundJobs, TenantOutbound

    night = datetime.datetime(2026, 12, 7, 23, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()
    quiet = QuietHours.parse("America/New_York", "21:00-08:00")

    async def settings(tenant_id: str) -> TenantOutbound:
        return TenantOutbound("AC" + "1" * 32, "+15550001111", quiet)

    async def exists(tenant_id: str, agent_id: str) -> bool:
        return True

    tenant = OutboundJobs(None, None, tenant_settings=settings, agent_exists=exists)  # type: ignore[arg-type]
    outbound = Outbound(None, tenant, TwilioRest(), public_url="http://127.0.0.1", instance="i", clock=lambda: night)  # type: ignore[arg-type]
    job = jobs.Job("job_1", "acme", "default", "AC" + "1" * 32, "+15550002222", "+15550001111", {}, "k", "queued")
    morning = datetime.datetime(2026, 12, 8, 8, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert await outbound.hold(dataclasses.replace(job, campaign_id="cmp_1")) == morning
    assert await outbound.hold(job) is None  # asked for now, by the API or the CLI: placed now
