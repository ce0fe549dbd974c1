"""/metrics after real calls: the series hold what the calls did, parsed as Prometheus parses them."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import CallLedger
from relay.sim.caller import TwilioCaller, http_get
from tests.test_call import BARGING, SHORT, TALKATIVE, stack


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all((k, w) in ls for k, w in labels.items()))


async def test_a_scrape_after_two_calls_counts_their_calls_turns_voice_to_voice_and_barge_ins(tmp_path: Path) -> None:
    async with stack(tmp_path, TALKATIVE) as s:
        plain = await TwilioCaller(s.webhook, dataclasses.replace(SHORT, utterances=("Hello there.",))).run()
        interrupted = await TwilioCaller(s.webhook, BARGING).run()
        for task in list(s.relay.sessions):
            await task
        await s.store.flush()
        status, body = await http_get(s.webhook.replace("/twilio/voice", "/metrics"))
        turns = await s.store.turns(plain.call_sid) + await s.store.turns(interrupted.call_sid)

    assert status == 200
    found = samples(body.decode())
    assert total(found, "relay_calls_total", tenant="default", end_reason="stop") == 2
    assert total(found, "relay_calls_active") == 0
    assert total(found, "relay_turns_total", role="user") == sum(t.role == "user" for t in turns) == 3
    assert total(found, "relay_turns_total", role="assistant") == sum(t.role == "assistant" for t in turns) == 3
    # Barge-ins: the one the caller made, and one truncate for it.
    assert interrupted.clears == 1
    assert total(found, "relay_barge_ins_total", tenant="default") == 1
    assert total(found, "relay_truncates_total", tenant="default") == 1
    # Voice to voice: one observation per answer that followed speech, summing to what was stored.
    stored = [t.voice_to_voice_ms for t in turns if t.role == "assistant" and t.voice_to_voice_ms is not None]
    assert total(found, "relay_voice_to_voice_ms_count", tenant="default") == len(stored) > 0
    assert total(found, "relay_voice_to_voice_ms_sum", tenant="default") == pytest.approx(sum(stored), abs=0.5)
    # Its parts add up to it.
    parts = total(found, "relay_voice_to_voice_backend_ms_sum") + total(found, "relay_voice_to_voice_relay_ms_sum")
    assert parts == pytest.approx(total(found, "relay_voice_to_voice_ms_sum"), abs=0.5)
    # Frames: every caller frame counted in, every frame sent to the caller counted out.
    assert total(found, "relay_frames_total", kind="in") == plain.frames_sent + interrupted.frames_sent
    assert total(found, "relay_frames_total", kind="out") == plain.frames_received + interrupted.frames_received
    assert total(found, "relay_upstream_events_total", event="sessions") == 2
    assert total(found, "relay_pacer_lateness_ms_count") > 0
    assert total(found, "relay_store_queue_depth") == 0


async def test_a_live_call_is_active_and_its_frames_are_counted_before_it_ends(tmp_path: Path) -> None:
    script = dataclasses.replace(SHORT, utterances=("Hello there.", "And again."))
    async with stack(tmp_path) as s:
        caller = TwilioCaller(s.webhook, script)
        running = asyncio.create_task(caller.run())
        while not s.relay.live or all(session.conversation is None for session in s.relay.live.values()):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        _, body = await http_get(s.webhook.replace("/twilio/voice", "/metrics"))
        live = samples(body.decode())
        await running
        for task in list(s.relay.sessions):
            await task
        _, body = await http_get(s.webhook.replace("/twilio/voice", "/metrics"))
        ended = samples(body.decode())
    assert total(live, "relay_calls_active", tenant="default") == 1
    assert 0 < total(live, "relay_frames_total", kind="in") <= total(ended, "relay_frames_total", kind="in")
    assert total(ended, "relay_calls_active") == 0


async def test_the_metrics_token_is_required_when_set(tmp_path: Path) -> None:
    async with stack(tmp_path, metrics_token="scrape-secret") as s:  # type: ignore[arg-type]
        url = s.webhook.replace("/twilio/voice", "/metrics")
        refused, _ = await http_get(url)
        wrong, _ = await http_get(url, {"Authorization": "Bearer nope"})
        ok, body = await http_get(url, {"Authorization": "Bearer scrape-secret"})
    assert (refused, wrong, ok) == (401, 401, 200)
    assert b"relay_calls_active" in body


def test_tenant_labels_are_bounded() -> None:
    ledger = CallLedger(max_tenants=2)
    assert [ledger.tenant(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


async def test_the_metrics_port_serves_metrics_and_health_and_nothing_else(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with stack(tmp_path, metrics_port=port) as s:  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{port}"
        metrics, body = await http_get(f"{base}/metrics")
        health, _ = await http_get(f"{base}/healthz")
        webhook, _ = await http_get(f"{base}/twilio/voice")
        main, _ = await http_get(s.webhook.replace("/twilio/voice", "/metrics"))
    assert (metrics, health, webhook, main) == (200, 200, 404, 200)
    assert b"relay_calls_active" in body
