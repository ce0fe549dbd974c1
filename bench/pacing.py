"""Paced playout under load: N concurrent calls whose answers leave on relay's shared 20 ms clock.

    python -m bench.pacing --calls 100 --seconds 20

The relay runs alone as a child process pinned to core 0; the simulated Realtime agent and N
simulated Twilio callers run here, on core 1. The agent answers every line with a long
answer, 4x faster than real time, so after the first ``RELAY_PLAYOUT_LEAD_MS`` of each answer
every frame is released by the shared clock, not by an arriving delta: that is the path
measured. Figures:

* **send-time jitter**: how late the shared clock ran each call's tick (p50/p99/max), from
  the relay's own ``/healthz`` (its pacer counts every call-tick in 0.1 ms buckets);
* **caller stutters**: dry spells of 40 ms to 1 s inside what the callers heard (a stutter a
  person hears); measured on the load side, so its own lateness is in it too;
* calls completed, turns answered, protocol violations seen by either simulator.

Results go to ``bench/results/pacing-<time>.json`` and one line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.harness import ROOT, RelayProcess, pin, relay_specs
from bench.loadgen import AUTH_TOKEN
from relay.sim.agent import AgentConfig, RealtimeAgent
from relay.sim.caller import CallerScript, TwilioCaller, http_get

ANSWER = (
    "Here is everything you need to know about tonight: the kitchen opens at six, the chef has "
    "three specials, and the terrace is open if the weather holds"
)


async def run(calls: int, seconds: float, relay_core: int | None, load_core: int | None) -> dict[str, object]:
    pin(load_core)
    agent = RealtimeAgent(AgentConfig(think_ms=200, realtime_factor=4.0, reply=lambda text, history: ANSWER))
    await agent.start()
    workdir = Path(tempfile.mkdtemp(prefix="relay-pacing-"))
    relay = RelayProcess(relay_specs()["relay"], agent.url, relay_core, workdir)
    await relay.start()
    webhook = f"http://127.0.0.1:{relay.port}/twilio/voice"
    lines = tuple(f"Tell me about tonight, part {n}." for n in range(1, 100))
    rng = random.Random(0)
    tasks = []
    try:
        started, load_cpu = time.monotonic(), time.process_time()
        for _ in range(calls):
            script = CallerScript(
                utterances=lines,
                lead_in_ms=rng.randint(100, 2000),
                answer_quiet_ms=300,
                answer_timeout_ms=10_000,
                run_for_ms=int(seconds * 1000),
            )
            tasks.append(asyncio.create_task(TwilioCaller(webhook, script, auth_token=AUTH_TOKEN).run()))
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks)
        took = time.monotonic() - started
        load_busy = (time.process_time() - load_cpu) / took
        status, body = await http_get(f"http://127.0.0.1:{relay.port}/healthz")
        health = orjson.loads(body) if status == 200 else {}
    finally:
        await relay.stop()
        await agent.stop()
    stutters = [ms for r in results for ms in r.playback.stalls_ms if 40 < ms < 1000]
    turns = [t for r in results for t in r.turns]
    return {
        "calls": calls,
        "seconds": round(took, 1),
        "calls_completed": sum(1 for r in results if r.error is None),
        "turns": len(turns),
        "turns_answered": sum(1 for t in turns if t.answered),
        "frames_received": sum(r.frames_received for r in results),
        "pacer": health.get("pacer", {}),
        "caller_stutters": len(stutters),
        "caller_stutter_max_ms": max(stutters, default=0.0),
        "load_core_busy": round(load_busy, 2),  # near 1.0: the callers' own clocks ran late
        "violations": sum(len(r.violations) for r in results) + len(agent.violations),
        "errors": sorted({r.error for r in results if r.error})[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacing", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each call lasts")
    parser.add_argument("--relay-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    relay_core, load_core = (args.relay_core, args.load_core) if cores >= 2 else (None, None)
    report = asyncio.run(run(args.calls, args.seconds, relay_core, load_core))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pacing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    pacer = report["pacer"]
    print(
        f"{report['calls']} calls, {report['turns_answered']}/{report['turns']} turns answered: "
        f"send-time jitter p50 {pacer.get('late_p50_ms')} ms, p99 {pacer.get('late_p99_ms')} ms, "
        f"max {pacer.get('late_max_ms')} ms over {pacer.get('call_ticks')} call-ticks; "
        f"caller stutters {report['caller_stutters']} (load core {report['load_core_busy']:.0%} busy); "
        f"violations {report['violations']}  ({path})"
    )
    return 0 if report["violations"] == 0 and report["calls_completed"] == report["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
