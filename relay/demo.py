"""``relay demo``: real calls end to end on loopback, with no keys and no network.

It starts a simulated speech backend (OpenAI Realtime, or with ``--backend`` OpenAI GPT-Live,
Gemini Live or Deepgram's Voice Agent) and a relay wired to it, runs simulated Twilio calls
against the relay's webhook, then reads the turns back from the store and prints them with
the voice-to-voice latency each caller measured at the Twilio edge. Each call is a whole
conversation: the agent greets the caller, answers two requests (the caller talks over each
answer, which is cut where the caller stopped hearing it), and when the caller says goodbye it
says its farewell and hangs up (``end_call``, a tool call: on GPT-Live, delegated to a
Responses model) once the farewell has played.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from relay import fastpath, usage_report
from relay.config import Settings
from relay.metrics import render
from relay.server import Relay, RelayServer
from relay.sim import audio
from relay.sim.agent import AgentConfig, RealtimeAgent
from relay.sim.caller import CallerScript, CallResult, TwilioCaller
from relay.sim.deepgram import DeepgramAgent, DeepgramConfig
from relay.sim.gemini import GeminiConfig, GeminiLive
from relay.sim.live import LiveAgent, LiveConfig
from relay.store import DEFAULT_TENANT, SQLiteStore, TurnRecord

# A simulated backend, as the demo and the bench drive it (``start``, ``url``, ``violations``, ``stop``).
Simulator = RealtimeAgent | LiveAgent | GeminiLive | DeepgramAgent
SimulatorConfig = AgentConfig | LiveConfig | GeminiConfig | DeepgramConfig
BACKEND_SIMULATORS: dict[str, tuple[type[Any], type[Any]]] = {
    "openai-realtime": (RealtimeAgent, AgentConfig),
    "openai-live": (LiveAgent, LiveConfig),
    "gemini-live": (GeminiLive, GeminiConfig),
    "deepgram": (DeepgramAgent, DeepgramConfig),
}


def simulator(backend: str, config: SimulatorConfig | None = None, think_ms: int | None = None) -> Simulator:
    """The simulator of ``backend``, with ``config`` if it is that simulator's (else its default,
    with ``think_ms`` if given)."""
    kind, config_kind = BACKEND_SIMULATORS[backend]
    if not isinstance(config, config_kind):
        config = config_kind() if think_ms is None else config_kind(think_ms=think_ms)
    sim: Simulator = kind(config)
    return sim


def wired_to(settings: Settings, backend: str, url: str) -> Settings:
    """``settings`` with ``backend`` the default one and reached at ``url`` (a simulator's), keys
    the simulators take set for every backend."""
    keyed = dataclasses.replace(
        settings,
        backend=backend,
        openai_api_key="sim-key-not-secret",
        gemini_api_key="sim-key-not-secret",
        deepgram_api_key="sim-key-not-secret",
    )
    if backend == "openai-live":
        return dataclasses.replace(keyed, live_url=url)
    if backend == "gemini-live":
        return dataclasses.replace(keyed, gemini_live_url=url)
    if backend == "deepgram":
        return dataclasses.replace(keyed, deepgram_agent_url=url)
    return dataclasses.replace(keyed, realtime_url=url)


DEMO_SCRIPT = CallerScript(
    utterances=(
        "Hi, I would like to book a table for two.",
        "Tomorrow at seven in the evening, please.",
        "That is all, thank you. Goodbye.",
    ),
    expect_greeting=True,
    wait_for_hangup=True,
    # The caller talks over the agent's first two answers 1.5 s into each (barge-in: Twilio is
    # cleared, the answer cut where the caller stopped hearing it, the heard part stored).
    barge_in_ms=1500,
)
DEMO_GREETING = "Thanks for calling. How can I help?"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


async def run_demo(
    calls: int = 1,
    *,
    record: str | None = None,
    db_path: str | None = None,
    script: CallerScript | None = None,
    agent_config: SimulatorConfig | None = None,
    settings: Settings | None = None,
    backend: str = "openai-realtime",
) -> dict[str, Any]:
    """Run ``calls`` concurrent simulated calls through a real relay on ``backend`` (its simulator
    configured by ``agent_config``); return the summary."""
    agent = simulator(backend, agent_config)
    await agent.start()
    path = db_path or str(Path(tempfile.gettempdir()) / f"relay-demo-{int(time.time())}.sqlite3")
    store = SQLiteStore(path)
    await store.open()
    base = settings or Settings()
    settings = dataclasses.replace(
        wired_to(base, backend, agent.url),
        host="127.0.0.1",
        port=0,
        twilio_auth_token="sim-auth-token",  # the simulated caller signs its requests with it
        sqlite_path=path,
        greeting=base.greeting or DEMO_GREETING,
    )
    server = RelayServer(Relay(settings, store))
    await server.start()
    # The public URL is known only once the port is bound.
    server.relay.settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{server.port}")
    webhook = f"http://127.0.0.1:{server.port}/twilio/voice"
    started = time.perf_counter()
    try:
        callers = [TwilioCaller(webhook, script or DEMO_SCRIPT) for _ in range(calls)]
        results: list[CallResult] = await asyncio.gather(*(c.run() for c in callers))
        await server.close()
        scrape = render(server.relay).decode()  # what Prometheus would read from this relay now
        await store.flush()
        stored = {r.call_sid: await store.turns(r.call_sid) for r in results}
        ends = {str(c["call_sid"]): str(c["end_reason"]) for c in await store.calls()}
        cost = usage_report.report(DEFAULT_TENANT, "day", 0.0, *await store.usage(DEFAULT_TENANT, "day", 0.0))
    finally:
        await server.close()
        await store.close()
        await agent.stop()
    if record and results:
        audio.write_wav(record, results[0].heard)
    hangup_expected = (script or DEMO_SCRIPT).wait_for_hangup
    summary = _summary(results, stored, ends, agent, path, time.perf_counter() - started, record, hangup_expected)
    summary["backend"] = backend
    summary["metrics"] = scrape
    summary["cost"] = cost["total"]
    return summary


def _summary(
    results: list[CallResult],
    stored: dict[str, list[TurnRecord]],
    ends: dict[str, str],
    agent: Simulator,
    path: str,
    elapsed: float,
    record: str | None,
    hangup_expected: bool,
) -> dict[str, Any]:
    v2v = [t.voice_to_voice_ms for r in results for t in r.turns if t.voice_to_voice_ms is not None]
    violations = [f"{r.call_sid}: {v}" for r in results for v in r.violations]
    violations += [f"agent: {v}" for v in agent.violations]
    errors = [f"{r.call_sid}: {r.error}" for r in results if r.error]
    calls = []
    for r in results:
        turns = sorted(stored.get(r.call_sid, []), key=lambda t: t.seq)
        rows = [
            {
                "who": "agent" if t.role == "assistant" else "caller",
                "text": t.text_heard if t.role == "assistant" else t.text_generated,
                "interrupted": t.interrupted,
                "voice_to_voice_ms": t.voice_to_voice_ms,
            }
            for t in turns
        ]
        calls.append(
            {
                "call_sid": r.call_sid,
                "turns": rows,
                "stored_turns": len(turns),
                "end_reason": ends.get(r.call_sid),
                "caller_heard": [t.heard for t in r.turns],
            }
        )
    return {
        "calls": len(results),
        "calls_completed": sum(1 for r in results if _completed(r, hangup_expected)),
        "turns": sum(len(r.turns) for r in results),
        "stored_turns": sum(len(t) for t in stored.values()),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_received": sum(r.frames_received for r in results),
        "marks_echoed": sum(r.marks_echoed for r in results),
        "violations": len(violations),
        "violation_details": violations[:20],
        "errors": errors,
        "voice_to_voice_ms": {
            "p50": round(statistics.median(v2v), 1) if v2v else None,
            "p95": _percentile(v2v, 0.95),
            "max": round(max(v2v), 1) if v2v else None,
        },
        "fastpath": fastpath.IMPLEMENTATION,
        "elapsed_s": round(elapsed, 2),
        "store": {"kind": "sqlite", "path": path},
        "recording": record,
        "call_details": calls,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-turn table and totals, as the demo prints them."""
    lines = []
    for call in summary["call_details"]:
        lines.append(f"call {call['call_sid']} (ended: {call['end_reason']})")
        lines.append(f"  {'#':>2}  {'who':<6}  {'what was said (the agent: what the caller heard)':<64}  {'v2v ms':>7}")
        for i, row in enumerate(call["turns"], 1):
            v2v = f"{row['voice_to_voice_ms']:.0f}" if row["voice_to_voice_ms"] is not None else "-"
            text = _clip(row["text"], 64) + (" [interrupted]" if row["interrupted"] else "")
            lines.append(f"  {i:>2}  {row['who']:<6}  {text:<64}  {v2v:>7}")
    v = summary["voice_to_voice_ms"]
    lines += [
        "",
        f"calls {summary['calls']} ({summary['calls_completed']} completed), turns stored {summary['stored_turns']}, "
        f"frames sent {summary['frames_sent']}, received {summary['frames_received']}, "
        f"violations {summary['violations']}",
        f"voice-to-voice at the Twilio edge: p50 {v['p50']} ms, p95 {v['p95']} ms, max {v['max']} ms "
        "(includes the agent's think time and the VAD's end-of-speech silence)",
        f"backend: {summary['backend']} (simulated); fast path: {summary['fastpath']}; "
        f"turns stored in {summary['store']['kind']}: {summary['store']['path']}",
    ]
    if summary.get("cost"):
        cost = summary["cost"]
        lines.append(
            f"cost: ${Decimal(cost['cost_usd']):.4f} for what the simulated backend used "
            "(tokens, or session seconds) at the shipped prices"
            + (f" (not priced: {', '.join(cost['unpriced'])})" if cost["unpriced"] else "")
            + f"; by call: RELAY_SQLITE_PATH={summary['store']['path']} relay usage --by call"
        )
    if summary["recording"]:
        lines.append(f"what the first caller heard: {summary['recording']}")
    for problem in summary["violation_details"] + summary["errors"]:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


def _completed(result: CallResult, hangup_expected: bool) -> bool:
    """No error, every line answered, and the agent hung up when the script waited for it."""
    answered = all(t.answered for t in result.turns)
    return not result.error and answered and (result.closed_by_relay or not hangup_expected)


def _clip(text: str | None, width: int = 44) -> str:
    text = text if text is not None else "-"
    return text if len(text) <= width else text[: width - 1] + "…"
