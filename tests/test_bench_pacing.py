"""bench.pacing runs end to end on a few calls: a relay child process, the simulators, the figures.
It asserts what the tool reports, never how fast anything is."""

from __future__ import annotations

from bench.pacing import run


async def test_a_small_pacing_run_reports_the_clock_and_every_call() -> None:
    report = await run(calls=3, seconds=3.0, relay_core=None, load_core=None)
    assert report["calls"] == 3 and report["calls_completed"] == 3 and report["errors"] == []
    assert report["violations"] == 0
    assert report["turns"] >= 3 and report["turns_answered"] == report["turns"]
    pacer = report["pacer"]
    assert pacer["ticks"] > 0 and pacer["call_ticks"] >= pacer["ticks"]  # frames were released by the clock
    assert 0 <= pacer["late_p50_ms"] <= pacer["late_p99_ms"] <= pacer["late_max_ms"]
