"""Traces, with OpenTelemetry: optional (``pip install 'relay[otel]'``), off unless configured.

``configure()`` turns them on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, exporting over OTLP/HTTP; everything else
(service name, headers, sampling, resource attributes) follows OpenTelemetry's own
environment variables, read by its SDK. With tracing off, or the SDK not installed, every
call here is a no-op: nothing on any path, let alone the frame path.

What is traced: a span per call (``call``), a child span per stored turn (``turn``) carrying
voice to voice and its two parts, with the barge-in and the truncate as events, and each
store write (``store.write``) as a span of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.conversation import AssistantTurn, CallStats
    from relay.store import TurnRecord

log = logging.getLogger("relay.tracing")

try:
    from opentelemetry import trace as _trace
except ImportError:  # the optional extra is not installed: tracing stays off
    _trace = None  # type: ignore[assignment]  # the module, when it is there


class _State:
    tracer: Any = None  # the SDK's tracer while tracing is on


_state = _State()


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on if the environment asks for it; True when it is on."""
    if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but relay[otel] is not installed: no traces")
        return False
    # Resource.create and the exporter read OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the
    # OTEL_EXPORTER_OTLP_* settings themselves.
    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "relay")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)
    log.info("traces go to %s", env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    return True


def use(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``; None: tracing off). Tests pass one with
    an in-memory exporter."""
    _state.tracer = provider.get_tracer("relay") if provider is not None else None


def _ns(wall: float) -> int:
    return int(wall * 1e9)


class CallTrace:
    """One call's span and its turns' spans (every method a no-op while tracing is off)."""

    __slots__ = ("_span",)

    def __init__(self, call_sid: str, stream_sid: str, tenant: str) -> None:
        tracer = _state.tracer
        self._span = (
            tracer.start_span(
                "call",
                attributes={"relay.call_sid": call_sid, "relay.stream_sid": stream_sid, "relay.tenant": tenant},
            )
            if tracer is not None
            else None
        )

    def turn(self, record: TurnRecord, turn: AssistantTurn | None) -> None:
        """A stored turn, as a child span over the time it took (wall clock)."""
        tracer, parent = _state.tracer, self._span
        if tracer is None or parent is None or _trace is None:
            return
        attributes: dict[str, Any] = {"relay.turn.role": record.role, "relay.turn.seq": record.seq}
        if record.item_id:
            attributes["relay.turn.item_id"] = record.item_id
        if turn is not None:
            attributes["relay.turn.audio_ms"] = record.audio_ms or 0
            attributes["relay.turn.interrupted"] = bool(record.interrupted)
            if record.voice_to_voice_ms is not None:
                attributes["relay.voice_to_voice_ms"] = record.voice_to_voice_ms
            audio = turn.audio
            if turn.speech_end_at is not None and audio.first_in_at is not None and audio.first_out_at is not None:
                attributes["relay.voice_to_voice.backend_ms"] = round(
                    (audio.first_in_at - turn.speech_end_at) * 1000, 1
                )
                attributes["relay.voice_to_voice.relay_ms"] = round((audio.first_out_at - audio.first_in_at) * 1000, 1)
        span = tracer.start_span(
            "turn",
            context=_trace.set_span_in_context(parent),
            start_time=_ns(record.started_at),
            attributes=attributes,
        )
        if turn is not None and turn.interrupted_at is not None:
            at = _ns(turn.interrupted_at)
            span.add_event("barge-in", {"relay.heard_ms": turn.heard_ms}, timestamp=at)
            span.add_event("truncate", {"relay.audio_end_ms": turn.heard_ms}, timestamp=at)
        span.end(end_time=_ns(record.ended_at or time.time()))

    def end(self, end_reason: str, stats: CallStats | None) -> None:
        span = self._span
        if span is None:
            return
        span.set_attribute("relay.end_reason", end_reason)
        if stats is not None:
            span.set_attribute("relay.frames_in", stats.frames_in)
            span.set_attribute("relay.frames_out", stats.frames_out)
            span.set_attribute("relay.barge_ins", stats.barge_ins)
        span.end()
        self._span = None


@contextlib.contextmanager
def store_write(records: int) -> Iterator[None]:
    """A span around one store batch (none while tracing is off)."""
    tracer = _state.tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span("store.write", attributes={"relay.store.records": records}):
        yield
