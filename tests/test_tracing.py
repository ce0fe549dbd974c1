"""Traces: one span per call, a child per stored turn, voice to voice on the answers' spans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay import tracing
from relay.sim.caller import TwilioCaller
from tests.test_call import BARGING, TALKATIVE, stack


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


async def test_a_call_is_one_span_with_a_child_per_turn_carrying_voice_to_voice(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with stack(tmp_path, TALKATIVE) as s:
        result = await TwilioCaller(s.webhook, BARGING).run()
        for task in list(s.relay.sessions):
            await task
        await s.store.flush()
        turns = await s.store.turns(result.call_sid)

    finished = spans.get_finished_spans()
    [call] = [span for span in finished if span.name == "call"]
    assert call.attributes["relay.call_sid"] == result.call_sid
    assert call.attributes["relay.end_reason"] == "stop" and call.attributes["relay.barge_ins"] == 1
    children = sorted(
        (span for span in finished if span.parent is not None and span.parent.span_id == call.context.span_id),
        key=lambda span: span.attributes["relay.turn.seq"],
    )
    assert [span.name for span in children] == ["turn"] * len(turns)
    assert [(c.attributes["relay.turn.role"], c.attributes["relay.turn.seq"]) for c in children] == [
        (t.role, t.seq) for t in turns
    ]
    for child, turn in zip(children, turns, strict=True):
        assert child.attributes.get("relay.voice_to_voice_ms") == turn.voice_to_voice_ms
        if turn.voice_to_voice_ms is not None:  # its parts add up to it
            parts = (
                child.attributes["relay.voice_to_voice.backend_ms"] + child.attributes["relay.voice_to_voice.relay_ms"]
            )
            assert parts == pytest.approx(turn.voice_to_voice_ms, abs=0.2)
    # The interrupted answer carries the barge-in and the truncate as events.
    [cut] = [c for c in children if c.attributes.get("relay.turn.interrupted") and c.events]
    assert [event.name for event in cut.events] == ["barge-in", "truncate"]
    assert any(span.name == "store.write" for span in finished)


def test_tracing_stays_off_without_an_endpoint() -> None:
    assert tracing.configure({}) is False
    tracing.CallTrace("CA1", "MZ1", "t").end("stop", None)  # a no-op, not an error
