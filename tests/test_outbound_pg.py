"""Outbound calls on Postgres with ``relay serve`` processes, as an operator runs them: a campaign
queued from a CSV keeps the account's pace and cap, calls every number exactly once, and
finishes after the relay placing it is killed and another takes over; API keys keep tenants
apart."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from relay.errors import InputError
from relay.pg import Directory
from relay.pg.apikeys import PostgresKeyStore
from relay.sim.agent import RealtimeAgent
from relay.sim.caller import CallerScript, http_get, http_post
from relay.sim.phones import Busy, NoAnswer, Person, Phone, Voicemail
from relay.sim.twilio_rest import TwilioSim
from tests.pgutil import ACME_NUMBER, AGENT, TcpProxy, database_with_acme
from tests.test_call import FAST
from tests.test_drain import ROOT, RelayProcess, relay_env

pytestmark = pytest.mark.postgres

ACCOUNT = "AC" + "7" * 32
TOKEN = "acct-token-7"
VOICEMAIL = "Hi, this is Acme about your delivery. Please call us back."
HELLO = CallerScript(utterances=("Hello?",), lead_in_ms=200, answer_quiet_ms=400, answer_timeout_ms=6000)


def campaign_phones(n: int) -> dict[str, Phone]:
    kinds: list[Phone] = [Person(HELLO, answer_after_s=0.5), Voicemail(record_ms=5000, answer_after_s=0.5),
                          NoAnswer(ring_s=1.5), Busy(after_s=0.3)]  # fmt: skip
    return {f"+1555044{i:04d}": kinds[i % len(kinds)] for i in range(n)}


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def job_rows(database: str) -> list[dict[str, Any]]:
    db = await asyncpg.connect(database)
    try:
        return [dict(r) for r in await db.fetch("SELECT * FROM outbound_jobs ORDER BY position")]
    finally:
        await db.close()


async def test_a_campaign_is_paced_capped_and_called_once_through_a_relay_killed_mid_way(tmp_path: Path) -> None:
    phones = campaign_phones(30)
    async with database_with_acme() as database, RealtimeAgent(FAST) as agent, TcpProxy() as balancer:
        async with Directory.connect(database) as directory:
            await directory.set_agent("acme", "default", voicemail_message=VOICEMAIL)
        sim = TwilioSim({ACCOUNT: TOKEN}, phones, numbers={ACCOUNT: [ACME_NUMBER]})
        await sim.start()
        shared = {
            "DATABASE_URL": database,
            "RELAY_PUBLIC_URL": f"http://127.0.0.1:{balancer.port}",
            "TWILIO_AUTH_TOKEN": TOKEN,
            "TWILIO_ACCOUNT_SID": ACCOUNT,
            "RELAY_TWILIO_API_URL": sim.url,
            "RELAY_OUTBOUND_RECHECK_S": "3",
        }
        csv = tmp_path / "spring.csv"
        csv.write_text("to,name\n" + "".join(f"{n},Customer {i}\n" for i, n in enumerate(phones)))
        env = {**relay_env(agent, tmp_path, "cli"), **shared}
        code, out = await cli(env, "campaign", str(csv), "--tenant", "acme")
        assert code == 0 and "30 call(s)" in out, out
        code, again = await cli(env, "campaign", str(csv), "--tenant", "acme")  # the same file: nothing new
        assert code == 0 and again.split(":")[0] == out.split(":")[0]
        first = await RelayProcess(relay_env(agent, tmp_path, "a", **shared)).start()
        balancer.retarget(first.port)
        try:
            # Mid-campaign, between two placements (none pending at Twilio), the relay is killed.
            while True:
                rows = await job_rows(database)
                if len(sim.calls) >= 10 and not any(r["state"] == "placing" for r in rows):
                    break
                await asyncio.sleep(0.02)
            first.signal(signal.SIGKILL)
            await first.wait(10)
            killed_at = len(sim.calls)
            await asyncio.sleep(1.0)
            second = await RelayProcess(relay_env(agent, tmp_path, "b", **shared)).start()
            balancer.retarget(second.port)
            try:
                for _ in range(1200):
                    rows = await job_rows(database)
                    if all(r["state"] in ("done", "failed") for r in rows) and all(
                        c.terminal for c in sim.calls.values()
                    ):
                        break
                    await asyncio.sleep(0.1)
            finally:
                await second.stop()
        finally:
            await first.stop()
            await sim.stop()

    assert 10 <= killed_at < 30
    # Every number called exactly once, each job done with its outcome.
    assert sorted(c.to for c in sim.calls.values()) == sorted(phones)
    assert [r["state"] for r in rows] == ["done"] * 30
    assert {r["to_number"] for r in rows} == set(phones)
    # Never more than 5 live for the account, sampled at every status callback it sent.
    calls = list(sim.calls.values())

    def live_at(t: float) -> int:
        return sum(1 for c in calls if c.placed_at is not None and c.placed_at <= t and (c.ended_at or 1e18) > t)

    assert max(live_at(hook.sent_at) for c in calls for hook in c.callbacks) <= 5
    assert sim.max_live[ACCOUNT] <= 5
    # At most one call per second left the account.
    placed = sorted(c.placed_at for c in sim.calls.values() if c.placed_at is not None)
    assert min(b - a for a, b in itertools.pairwise(placed)) >= 0.99
    outcomes = {r["to_number"]: r for r in rows}
    for number, phone in phones.items():
        row = outcomes[number]
        assert row["call_sid"] and row["attempts"] == 1
        if isinstance(phone, Busy):
            assert row["outcome"] == "busy"
        elif isinstance(phone, NoAnswer):
            assert row["outcome"] == "no-answer"
        else:
            assert row["outcome"] == "completed"


async def api(port: int, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    url, headers = f"http://127.0.0.1:{port}{path}", {"Authorization": f"Bearer {key}"}
    if method == "GET":
        status, raw = await http_get(url, headers)
    else:
        status, raw = await http_post(url, orjson.dumps(body), {**headers, "Content-Type": "application/json"})
    return status, orjson.loads(raw) if raw.startswith(b"{") else raw.decode()


async def test_a_tenants_key_neither_queues_for_nor_reads_another_tenant(tmp_path: Path) -> None:
    async with database_with_acme() as database, RealtimeAgent(FAST) as agent:
        sim = TwilioSim({ACCOUNT: TOKEN}, {}, numbers={ACCOUNT: [ACME_NUMBER, "+15550100002"]}, default_phone=Busy())
        await sim.start()
        async with Directory.connect(database) as directory:
            await directory.add_tenant("beta", "Beta", AGENT)
            await directory.add_number("+15550100002", "beta")
            beta_default = await directory.get_agent("beta")
            assert beta_default is not None
            await directory.add_agent(dataclasses.replace(beta_default, agent_id="sales"))
            keys = PostgresKeyStore(directory.pool)
            _, acme_key = await keys.create("acme", "acme crm")
            _, beta_key = await keys.create("beta", "beta crm")
        env = relay_env(agent, tmp_path, "a", DATABASE_URL=database, RELAY_PUBLIC_URL="http://127.0.0.1:9",
                        TWILIO_AUTH_TOKEN=TOKEN, TWILIO_ACCOUNT_SID=ACCOUNT, RELAY_TWILIO_API_URL=sim.url)  # fmt: skip
        relay = await RelayProcess(env).start()
        try:
            status, beta_job = await api(
                relay.port, "POST", "/v1/calls", beta_key, {"to": "+15550500001", "agent": "sales"}
            )
            assert status == 202 and beta_job["from"] == "+15550100002"
            # Acme's key: Beta's agent is not Acme's, a tenant field is refused, Beta's job is not found.
            status, body = await api(
                relay.port, "POST", "/v1/calls", acme_key, {"to": "+15550500002", "agent": "sales"}
            )
            assert status == 400 and "no agent 'sales'" in body["error"]
            status, body = await api(
                relay.port, "POST", "/v1/calls", acme_key, {"to": "+15550500002", "tenant": "beta"}
            )
            assert status == 400 and "unknown field" in body["error"]
            status, _ = await api(relay.port, "GET", f"/v1/jobs/{beta_job['job']}", acme_key)
            assert status == 404
            status, mine = await api(relay.port, "GET", f"/v1/jobs/{beta_job['job']}", beta_key)
            assert status == 200 and mine["job"] == beta_job["job"]
            status, _ = await api(relay.port, "POST", "/v1/calls", "not-a-key", {"to": "+15550500002"})
            assert status == 401
        finally:
            await relay.stop()
            await sim.stop()
        rows = await job_rows(database)
    assert [(r["tenant_id"], r["to_number"]) for r in rows] == [("beta", "+15550500001")]


async def test_two_acknowledgements_at_once_one_winner_and_the_tenants_after_hours_settings() -> None:
    from relay.outbound import race
    from relay.pg.jobs import postgres_jobs
    from relay.pg.races import PostgresRaceStore

    async with database_with_acme() as database, Directory.connect(database) as directory:
        await directory.set_outbound(
            "acme",
            timezone="America/New_York",
            business_hours="mon-fri 09:00-17:00",
            on_call="Dana=+15550601111,Lee=+15550602222",
            race_timeout_s=90,
        )
        with pytest.raises(InputError, match=r"E\.164"):
            await directory.set_outbound("acme", on_call="Dana=555")
        with pytest.raises(InputError, match=r"10\.\.3600"):
            await directory.set_outbound("acme", race_timeout_s=5)
        jobs = postgres_jobs(directory.pool, directory, account_sid=ACCOUNT, from_number="")
        settings = await jobs.tenant_settings("acme")
        assert settings is not None and settings.from_number == ACME_NUMBER and settings.race_timeout_s == 90.0
        assert [c.name for c in settings.on_call] == ["Dana", "Lee"] and settings.business is not None
        await directory.set_outbound("acme", business_hours="")  # cleared: never open
        cleared = await jobs.tenant_settings("acme")
        assert cleared is not None and cleared.business is None and cleared.on_call == settings.on_call

        races = PostgresRaceStore(directory.pool)
        started, _ = race.new_race("race_x", "acme", "CA" + "1" * 32, "Flood.", settings.on_call, 90.0, 0.0)
        await races.create(started)
        results = await asyncio.gather(
            races.step("race_x", lambda r: race.acknowledge(r, 0, race.CALL, 1.0)),
            races.step("race_x", lambda r: race.acknowledge(r, 0, race.SMS, 1.0)),
        )
        winners = [actions for _, actions in (r for r in results if r is not None) if actions]
        assert len(winners) == 1
        stored = await races.get("acme", "race_x")
        assert stored is not None and stored.outcome == race.ACKNOWLEDGED
        assert await races.get("beta", "race_x") is None  # another tenant's read finds nothing
