"""Calls relay places, end to end against the Twilio simulator: the paced pool per account,
answers of every kind (a person, an answering machine, no answer, busy), retries of 20429, and
the API's tenant boundary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from relay import apikeys, demo_outbound
from relay.config import Settings
from relay.demo_outbound import format_outbound, run_outbound_demo
from relay.metrics import render
from relay.outbound import jobs, wiring
from relay.outbound.jobs import CallSpec
from relay.outbound.service import Outbound
from relay.server import Relay, RelayServer
from relay.sim import audio
from relay.sim.agent import AgentConfig, RealtimeAgent
from relay.sim.caller import CallerScript, TwilioCaller, http_get, http_post
from relay.sim.phones import Busy, Phone, Voicemail
from relay.sim.switchboard import Switchboard
from relay.sim.twilio_rest import TwilioSim
from relay.store import SQLiteStore
from relay.tools.store import SQLiteToolStore

ACCOUNT = "AC" + "1" * 32
TOKEN = "acct-token-1"
CALLER_ID = "+15005550006"
VOICEMAIL = "Hi Sam, this is Acme about your order. Please call us back."
FAST = AgentConfig(think_ms=100, realtime_factor=8.0, transcription_delay_ms=50)


@dataclass
class Stack:
    sim: TwilioSim
    relay: Relay
    outbound: Outbound
    store: SQLiteStore
    url: str
    tools: SQLiteToolStore


@contextlib.asynccontextmanager
async def outbound_stack(
    tmp_path: Path,
    phones: dict[str, Phone],
    *,
    default: Phone | None = None,
    switchboard: Switchboard | None = None,
    **settings: Any,
) -> AsyncIterator[Stack]:
    agent = RealtimeAgent(FAST)
    await agent.start()
    sim = TwilioSim(
        {ACCOUNT: TOKEN}, phones, numbers={ACCOUNT: [CALLER_ID]}, default_phone=default, switchboard=switchboard
    )
    await sim.start()
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    base = Settings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "realtime_url": agent.url,
            "openai_api_key": "sk-sim",
            "twilio_auth_token": TOKEN,
            "twilio_account_sid": ACCOUNT,
            "twilio_api_url": sim.url,
            "outbound_from": CALLER_ID,
            "sqlite_path": str(tmp_path / "relay.sqlite3"),
            "voicemail_message": VOICEMAIL,
            **settings,
        }
    )
    tools = SQLiteToolStore(tmp_path / "relay.sqlite3", "default", "default")
    server = RelayServer(Relay(base, store, tool_store=tools))
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    relay = server.relay
    relay.settings = dataclasses.replace(base, public_url=url)
    outbound = relay.outbound = wiring.placing(relay.settings, relay, await wiring.embedded_jobs(relay.settings))
    outbound.start()
    try:
        yield Stack(sim, relay, outbound, store, url, tools)
    finally:
        await outbound.close()
        await server.close(drain_timeout=5)
        await store.close()
        await sim.stop()
        await agent.stop()


async def settled(s: Stack, count: int, timeout: float = 60.0) -> list[jobs.Job]:
    """Wait until ``count`` jobs are over (done or failed) and Twilio's calls too."""

    async def over() -> list[jobs.Job]:
        return [j for j in await s.outbound.queue.jobs("default", limit=1000) if j.state in ("done", "failed")]

    deadline = asyncio.get_running_loop().time() + timeout
    while len(await over()) < count or any(not c.terminal for c in s.sim.calls.values()):
        assert asyncio.get_running_loop().time() < deadline, "the jobs did not settle"
        await asyncio.sleep(0.1)
    return await s.outbound.queue.jobs("default", limit=1000)


async def test_a_person_a_machine_no_answer_and_busy(tmp_path: Path) -> None:
    # ``relay demo --outbound``: a campaign through the API, one call to each kind of phone.
    summary = await run_outbound_demo(str(tmp_path / "demo.sqlite3"))
    rows = {row["phone"]: row for row in summary["jobs"]}
    person, machine = rows["a person"], rows["a voicemail machine"]

    assert summary["ok"], format_outbound(summary)
    # The person converses with the agent: what they said, the agent's answer as heard.
    assert (person["outcome"], person["answered_by"]) == ("completed", "human")
    assert person["statuses"] == ["initiated", "ringing", "in-progress", "completed"]
    assert person["said"] == [("callee", "Hello?"), ("agent", "You said: Hello?")]
    # The machine gets the voicemail message after the beep, whole, then a plain hang-up.
    assert (machine["outcome"], machine["answered_by"], machine["voicemail"]) == ("completed", "machine", "left")
    assert machine["recorded"] == demo_outbound.VOICEMAIL and machine["said_by_twilio"] == []
    assert (rows["no one answers"]["outcome"], rows["a busy line"]["outcome"]) == ("no-answer", "busy")
    assert rows["no one answers"]["statuses"] == ["initiated", "ringing", "no-answer"]
    assert all(row["attempts"] == 1 and row["duration_s"] is not None for row in summary["jobs"])
    assert "voicemail left" in format_outbound(summary)
    # Each answered call's usage is billed as outbound.
    store = SQLiteStore(summary["store"])
    await store.open()
    try:
        by_call, unpriced = await store.usage("default", "call", 0.0)
    finally:
        await store.close()
    assert len(by_call) == 2 and all("twilio:voice_outbound" in row["unpriced"].split(",") for row in unpriced)


async def test_a_machine_without_a_message_is_hung_up_on(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {"+15550100002": Voicemail()}, voicemail_message="") as s:
        await s.outbound.jobs.enqueue("default", "default", [CallSpec("+15550100002", key="k")])
        [job] = await settled(s, 1)
        [call] = s.sim.calls.values()
    assert (job.answered_by, job.voicemail, job.outcome) == ("machine", "hung_up", "completed")
    # Nothing said to it: at most the last frames of what the agent was saying as the beep ended,
    # before the verdict reached relay, and no word of it.
    assert len(call.recording) < 4000 and audio.words_heard(call.recording) == []  # under 0.5 s


async def test_20429_is_retried_never_duplicated(tmp_path: Path) -> None:
    phones: dict[str, Phone] = {f"+1555020000{i}": Busy() for i in range(3)}
    async with outbound_stack(tmp_path, phones, outbound_cps=20.0) as s:
        s.sim.fail_next_creates(4)
        specs = [CallSpec(n, key=n) for n in phones]
        await s.outbound.jobs.enqueue("default", "default", specs)
        found = await settled(s, 3)
        refused = s.sim.refused_creates
        scrape = render(s.relay).decode()
    assert refused == 4
    assert sorted(c.to for c in s.sim.calls.values()) == sorted(phones)  # each exactly once
    assert all(j.outcome == "busy" for j in found) and sum(j.attempts for j in found) == 3 + 4
    assert any(j.error_code == 20429 for j in found)
    assert 'relay_outbound_placements_total{result="retried"} 4.0' in scrape
    assert 'relay_outbound_placements_total{result="placed"} 3.0' in scrape


async def api(url: str, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if method == "GET":
        status, raw = await http_get(url + path, headers)
    else:
        status, raw = await http_post(url + path, orjson.dumps(body), headers)
    return status, orjson.loads(raw) if raw.startswith((b"{", b"[")) else raw


async def test_the_api_queues_calls_with_a_key_and_reads_them_back(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}, default=Busy(), outbound_cps=20.0) as s:
        _, key = await s.outbound.jobs.keys.create("default", "crm")
        s.outbound.jobs.keys.cache_s = 0.2  # (a key's lookup is reused this long: 5 s by default)
        status, job = await api(s.url, "POST", "/v1/calls", key, {"to": "+15550300001", "variables": {"n": "1"}})
        assert status == 202 and job["state"] == "queued" and job["variables"] == {"n": "1"}
        status, body = await api(s.url, "POST", "/v1/calls", key, {"to": "5550300001"})
        assert status == 400 and "E.164" in body["error"]
        status, body = await api(s.url, "POST", "/v1/calls", "rk_" + "0" * 16 + "_" + "x" * 43, {"to": "+15550300001"})
        assert status == 401
        campaign = {"idempotency_key": "spring", "calls": [{"to": f"+1555030010{i}"} for i in range(3)]}
        status, first = await api(s.url, "POST", "/v1/campaigns", key, campaign)
        status2, again = await api(s.url, "POST", "/v1/campaigns", key, campaign)
        assert status == status2 == 202 and first["campaign"] == again["campaign"] and first["calls"] == 3
        assert [j["job"] for j in first["jobs"]] == [j["job"] for j in again["jobs"]]
        await settled(s, 4)
        status, done = await api(s.url, "GET", f"/v1/jobs/{job['job']}", key)
        assert status == 200 and done["outcome"] == "busy" and done["statuses"][-1] == "busy"
        status, summary = await api(s.url, "GET", f"/v1/campaigns/{first['campaign']}", key)
        assert status == 200 and summary["states"] == {"done": 3}
        await s.outbound.jobs.keys.revoke("default", key.split("_")[1])
        await asyncio.sleep(0.3)
        status, _ = await api(s.url, "GET", f"/v1/jobs/{job['job']}", key)
        assert status == 401
    assert len(s.sim.calls) == 4


async def test_a_tenants_key_controls_its_own_call_and_not_another_tenants(tmp_path: Path) -> None:
    stays = CallerScript(utterances=("Hello there.",), lead_in_ms=100, answer_quiet_ms=300, wait_for_hangup=True)
    async with outbound_stack(tmp_path, {}) as s:
        keys = s.outbound.jobs.keys
        _, mine = await keys.create("default", "ops")
        # Another tenant's key, as a multi-tenant store would hold it (the embedded one has one tenant).
        other_id, other, hashed = apikeys.issue()
        await keys._sql(  # type: ignore[attr-defined]
            "INSERT INTO api_keys (key_id, tenant_id, secret_hash, name, created_at) VALUES (?, 'beta', ?, '', 0)",
            (other_id, hashed),
        )
        caller = TwilioCaller(f"{s.url}/twilio/voice", stays, auth_token=TOKEN, account_sid=ACCOUNT)
        running = asyncio.ensure_future(caller.run())
        while not s.relay.sessions or all(session.start is None for session in s.relay.live.values()):
            await asyncio.sleep(0.02)
        path = f"/v1/calls/{caller.call_sid}/hangup"
        for action, args in (("say", {"text": "Hi."}), ("transfer", {"to": "+15550001111"}), ("hangup", {})):
            status, body = await api(s.url, "POST", f"/v1/calls/{caller.call_sid}/{action}", other, args)
            assert status == 404 and "no live call" in body["error"], action  # as if it did not exist
        status, _ = await api(s.url, "POST", path, "rk_" + "0" * 16 + "_" + "x" * 43, {})
        assert status == 401
        status, body = await api(s.url, "POST", path, mine, {})
        assert status == 202 and body["hung_up"] is True
        result = await asyncio.wait_for(running, 20)
        await s.store.flush()
        ended = await s.store.call(caller.call_sid)
    assert result.closed_by_relay and ended is not None and ended["end_reason"] == "api_hangup"


async def test_a_line_asked_for_through_the_api_is_said_at_the_next_pause_not_over_the_answer(tmp_path: Path) -> None:
    line = "Your table is confirmed."
    listens = CallerScript(
        utterances=("Book a table for two.",), lead_in_ms=100, answer_quiet_ms=300, answer_timeout_ms=4000,
        wait_for_hangup=True,
    )  # fmt: skip
    async with outbound_stack(tmp_path, {}) as s:
        _, key = await s.outbound.jobs.keys.create("default", "ops")
        caller = TwilioCaller(f"{s.url}/twilio/voice", listens, auth_token=TOKEN, account_sid=ACCOUNT)
        running = asyncio.ensure_future(caller.run())
        # Asked while the agent is answering: the line waits for the answer to end.
        while not any(
            session.conversation is not None and session.conversation.media.buffered
            for session in s.relay.live.values()
        ):
            await asyncio.sleep(0.01)
        path = f"/v1/calls/{caller.call_sid}/say"
        status, body = await api(s.url, "POST", path, key, {"text": line})
        assert status == 202 and body["saying"] is True
        status, body = await api(s.url, "POST", path, key, {"text": ""})
        assert status == 400 and "say takes" in body["error"]
        result = await asyncio.wait_for(running, 30)
        await s.store.flush()
        turns = await s.store.turns(caller.call_sid)
    answers = [t for t in turns if t.role == "assistant"]
    assert [t.text_generated for t in answers] == ["You said: Book a table for two.", line]
    assert all(t.text_heard == t.text_generated and not t.interrupted for t in answers)
    heard = audio.transcribe(result.heard)
    assert heard.index("You said: Book a table for two.") < heard.index(line)
