"""``relay demo --outbound``: calls relay places, end to end on loopback, with no keys and no network.

It starts a simulated OpenAI Realtime backend, Twilio's REST API simulated with a phone at each
number (a person, a voicemail machine, a line nobody answers, a busy line), and a relay wired to
both, queues a campaign of one call to each through the relay's API with a tenant's key, and
prints what became of every job once all are over: the call's status callbacks in order, who
answered (answering-machine detection), what the person and the agent said, and what the
machine recorded after its beep (the agent's voicemail message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from relay.config import Settings
from relay.outbound import wiring
from relay.server import Relay, RelayServer
from relay.sim.agent import AgentConfig, RealtimeAgent
from relay.sim.caller import http_post
from relay.sim.phones import Busy, NoAnswer, Person, Phone, Voicemail
from relay.sim.twilio_rest import TwilioSim
from relay.store import DEFAULT_TENANT, SQLiteStore

ACCOUNT = "AC" + "d" * 32
TOKEN = "sim-auth-token"  # the simulated Twilio account's token: it signs every callback with it
CALLER_ID = "+15005550006"
VOICEMAIL = "Hi Sam, this is Acme about your order. Please call us back."
PHONES: dict[str, tuple[str, Phone]] = {
    "+15550190001": ("a person", Person()),
    "+15550190002": ("a voicemail machine", Voicemail()),
    "+15550190003": ("no one answers", NoAnswer(ring_s=2.0)),
    "+15550190004": ("a busy line", Busy()),
}
# What each phone's job must end as, for the demo to pass.
EXPECTED = {
    "+15550190001": ("completed", "human"),
    "+15550190002": ("completed", "machine"),
    "+15550190003": ("no-answer", ""),
    "+15550190004": ("busy", ""),
}


async def run_outbound_demo(db_path: str | None = None, timeout_s: float = 90.0) -> dict[str, Any]:
    """Place one call to each simulated phone through a real relay; return what happened."""
    agent = RealtimeAgent(AgentConfig())
    await agent.start()
    sim = TwilioSim({ACCOUNT: TOKEN}, {n: p for n, (_, p) in PHONES.items()}, numbers={ACCOUNT: [CALLER_ID]})
    await sim.start()
    path = db_path or str(Path(tempfile.gettempdir()) / f"relay-demo-outbound-{int(time.time())}.sqlite3")
    store = SQLiteStore(path)
    await store.open()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        realtime_url=agent.url,
        openai_api_key="sim-key-not-secret",
        twilio_auth_token=TOKEN,
        twilio_account_sid=ACCOUNT,
        twilio_api_url=sim.url,
        outbound_from=CALLER_ID,
        sqlite_path=path,
        voicemail_message=VOICEMAIL,
    )
    server = RelayServer(Relay(settings, store))
    await server.start()
    relay = server.relay
    url = f"http://127.0.0.1:{server.port}"
    relay.settings = dataclasses.replace(settings, public_url=url)  # known once the port is bound
    outbound = relay.outbound = wiring.placing(relay.settings, relay, await wiring.embedded_jobs(relay.settings))
    outbound.start()
    started = time.perf_counter()
    try:
        _, key = await outbound.jobs.keys.create(DEFAULT_TENANT, "demo")
        body = {"idempotency_key": "demo", "calls": [{"to": n, "variables": {"name": "Sam"}} for n in PHONES]}
        status, answer = await http_post(f"{url}/v1/campaigns", orjson.dumps(body), {"Authorization": f"Bearer {key}"})
        if status != 202:
            raise RuntimeError(f"POST /v1/campaigns answered {status}: {answer[:200]!r}")
        campaign = orjson.loads(answer)["campaign"]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = await outbound.queue.jobs(DEFAULT_TENANT, campaign_id=campaign)
            over = all(j.state in ("done", "failed", "uncertain") for j in found)
            if (over and all(c.terminal for c in sim.calls.values())) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        await store.flush()
        turns = {j.call_sid: await store.turns(j.call_sid) for j in found if j.call_sid}
    finally:
        await outbound.close()
        await server.close()
        await store.close()
        await sim.stop()
        await agent.stop()
    calls = {c.to: c for c in sim.calls.values()}
    rows = []
    for job in found:
        call = calls.get(job.to_number)
        rows.append(
            {
                "to": job.to_number,
                "phone": PHONES[job.to_number][0],
                "state": job.state,
                "statuses": [s for _, s, _ in job.statuses],
                "answered_by": job.answered_by,
                "outcome": job.outcome,
                "voicemail": job.voicemail,
                "said": [
                    (
                        "agent" if t.role == "assistant" else "callee",
                        t.text_heard if t.role == "assistant" else t.text_generated,
                    )
                    for t in turns.get(job.call_sid, [])
                ],
                "recorded": call.recording_text if call is not None else "",
                "said_by_twilio": list(call.said) if call is not None else [],  # <Say> after the stream
                "attempts": job.attempts,
                "duration_s": job.duration_s,
                "ok": (job.outcome, job.answered_by) == EXPECTED[job.to_number],
            }
        )
    return {
        "campaign": campaign,
        "jobs": rows,
        "ok": len(rows) == len(PHONES) and all(r["ok"] for r in rows) and sim.max_live[ACCOUNT] <= 5,
        "max_live": sim.max_live[ACCOUNT],
        "elapsed_s": round(time.perf_counter() - started, 2),
        "store": path,
    }


def format_outbound(summary: dict[str, Any]) -> str:
    lines = [f"campaign {summary['campaign']}: one call to each simulated phone, placed by relay"]
    for row in summary["jobs"]:
        mark = "" if row["ok"] else "  ! not what this phone should give"
        lines.append(
            f"{row['to']} ({row['phone']}): {row['outcome'] or row['state']}, answered by {row['answered_by'] or '-'}"
            f"{', voicemail ' + row['voicemail'] if row['voicemail'] else ''}{mark}"
        )
        lines.append(f"    status callbacks: {' → '.join(row['statuses'])}")
        for who, text in row["said"]:
            lines.append(f"    {who}: {text}")
        if row["recorded"]:
            lines.append(f"    the machine recorded: {row['recorded']}")
    lines.append(
        f"at most {summary['max_live']} call(s) live at once; {summary['elapsed_s']} s; "
        f"jobs and turns in {summary['store']} (RELAY_SQLITE_PATH=… relay jobs)"
    )
    return "\n".join(lines)
