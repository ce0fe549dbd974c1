"""The load harness end to end: every relay it compares really relays, and it cannot flatter.

These runs are tiny (a few calls, a fraction of a second) and unpinned: they check what the
harness reports, not how fast anything is. The one latency assertion is a lower bound a slow
machine can only make truer: a relay that holds every frame 20 ms must show at least most of
that as added latency. relay on Gemini Live transcodes the audio, so its frames are counted
rather than matched, and its report says its latency cannot be measured.
"""

from __future__ import annotations

import pytest

from bench import report
from bench.harness import UNTAGGED, Harness, Options

HOLD_MS = 20.0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import asyncio

    import uvloop

    options = Options(
        calls=3,
        relays=(
            "relay",
            "relay-live",
            "relay-deepgram",
            "relay-gemini",
            "relay-slowed",
            "sample",
            "websockets",
            "node",
        ),
        main_s=0.6,
        settle_s=0.2,
        search=False,
        slow_ms=HOLD_MS,
        burn_us=0.0,
        check=True,
        relay_core=None,
        load_core=None,
        target_calls=0,
    )
    harness = Harness(options, workdir=tmp_path_factory.mktemp("bench"))
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        return runner.run(harness.run())
    finally:
        runner.close()


@pytest.mark.parametrize(
    "name", ["relay", "relay-live", "relay-deepgram", "relay-slowed", "sample", "websockets", "node"]
)
def test_every_relay_brings_every_frame_back_to_its_own_call(small_run: dict, name: str) -> None:
    entry = small_run["relays"][name]
    assert "error" not in entry and "skipped" not in entry, entry
    main = entry["main"]
    assert main["calls"] == 3
    assert main["frames_sent"] > 0
    assert main["frames_back"] == main["frames_sent"]
    assert (main["lost"], main["misrouted"], main["duplicates"], main["foreign"]) == (0, 0, 0, 0)
    assert main["violation_count"] == 0, f"Twilio would reject what it sent: {main['violations']}"
    assert main["cpu_ms_per_call_s"] > 0 and main["rss_mib"] > 0


def test_relay_live_speaks_gpt_live_and_relay_speaks_realtime(small_run: dict) -> None:
    """The echo answers both protocols alike: only the sessions it saw tell which backend ran."""
    live, realtime = small_run["relays"]["relay-live"], small_run["relays"]["relay"]
    assert live["upstream_sessions"] >= 3 and live["upstream_live_sessions"] == live["upstream_sessions"]
    assert realtime["upstream_sessions"] >= 3 and realtime["upstream_live_sessions"] == 0
    assert live["title"] == "relay, GPT-Live backend"


def test_relay_deepgram_and_relay_gemini_speak_their_backends_protocols(small_run: dict) -> None:
    relays = small_run["relays"]
    for name, key in (("relay-deepgram", "upstream_deepgram_sessions"), ("relay-gemini", "upstream_gemini_sessions")):
        entry = relays[name]
        assert entry["upstream_sessions"] >= 3 and entry[key] == entry["upstream_sessions"], (name, entry)
    assert relays["relay"]["upstream_deepgram_sessions"] == relays["relay"]["upstream_gemini_sessions"] == 0


def test_relay_gemini_is_measured_by_count_with_its_latency_and_loss_not_measurable(small_run: dict) -> None:
    entry = small_run["relays"]["relay-gemini"]
    assert "error" not in entry and "skipped" not in entry, entry
    main = entry["main"]
    assert main["calls"] == 3 and main["frames_sent"] > 0
    # Counted as they arrive: what is in flight at either edge of the window may fall outside it.
    assert main["frames_back"] >= 0.8 * main["frames_sent"], main
    assert main["untagged"] == UNTAGGED
    assert main["added_ms"] is main["rtt_ms"] is main["lost"] is main["misrouted"] is None
    assert main["violation_count"] == 0, f"Twilio would reject what it sent: {main['violations']}"
    assert main["cpu_ms_per_call_s"] > 0 and main["rss_mib"] > 0
    cost = small_run["transcoding"]
    assert (cost["transcoded"], cost["passthrough"]) == ("relay-gemini", "relay")


def test_the_direct_path_is_measured_as_the_floor(small_run: dict) -> None:
    direct = small_run["direct"]["main"]
    assert direct["calls"] == 3 and direct["lost"] == 0 and direct["frames_back"] == direct["frames_sent"]
    assert 0 < direct["rtt_ms"]["p50"] <= direct["rtt_ms"]["p99"]


def test_a_deliberately_slowed_relay_shows_its_hold(small_run: dict) -> None:
    slowed = small_run["relays"]["relay-slowed"]["main"]["added_ms"]
    assert slowed["p50"] >= HOLD_MS * 0.9


def test_no_upstream_session_outlives_its_call(small_run: dict) -> None:
    assert small_run["upstream_sessions_left_open"] == 0


def test_the_report_has_a_row_per_relay_and_plots(small_run: dict, tmp_path) -> None:
    paths = report.write(small_run, tmp_path)
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "latency_cdf.png", "cpu_per_call.png"} <= names
    table = (tmp_path / "report.md").read_text()
    for entry in small_run["relays"].values():
        assert f"| {entry['title']} |" in table
    assert "transcoding (Gemini) costs" in table
    for png in ("latency_cdf.png", "cpu_per_call.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
