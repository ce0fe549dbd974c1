"""Prometheus metrics, read when Prometheus scrapes: nothing is added to the frame path.

Everything counted per frame stays a C counter in each call's media core and is summed at
scrape time (live calls) or once when a call ends (``CallLedger.call_ended``). What happens per
turn or per call (a turn stored, a barge-in, a call's end) is counted then, in plain Python
off the frame path. ``RelayCollector`` turns all of it into metric families for
``prometheus_client``'s text format.

Tenant labels are bounded: the first ``max_tenants`` tenants seen get their own label, every
later one is counted as ``other``, so a deployment with many tenants cannot blow up the series.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from relay.usage import TOKEN_KINDS, UsageRecord

if TYPE_CHECKING:
    from relay.conversation import AssistantTurn, CallStats

__all__ = ["CONTENT_TYPE_LATEST", "Buckets", "CallLedger", "RelayCollector", "render"]

OTHER = "other"
# Voice to voice and its parts, ms: a phone agent answers in about 0.5-1.5 s.
V2V_BUCKETS_MS = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 1000.0, 1200.0, 1500.0, 2000.0, 3000.0)
# Lateness of the shared clock's ticks and of the event loop, ms.
LAG_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0)
# One store batch, seconds.
BATCH_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# The parts of a call's cost (``UsageRecord``'s ``*_cost_nanousd``).
COST_PARTS = ("backend", "transcription", "twilio")
# The per-frame counters of a call (``CallStats`` fields), as one labelled counter.
FRAME_COUNTERS = ("frames_in", "frames_out", "frames_filled", "frames_late", "frames_held", "frames_dropped")


@dataclass
class Buckets:
    """A histogram's counts: cumulative on export, plain observations in."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_bound(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _bound(value: float) -> str:
    return f"{value:g}"


class CallLedger:
    """What calls did, by tenant (bounded): updated per turn and per call, never per frame."""

    def __init__(self, max_tenants: int = 100) -> None:
        self.max_tenants = max_tenants
        self._tenants: set[str] = set()
        self.calls = collections.Counter[tuple[str, str]]()  # (tenant, end reason)
        self.turns = collections.Counter[tuple[str, str]]()  # (tenant, role)
        self.barge_ins = collections.Counter[str]()
        self.truncates_rejected = collections.Counter[str]()
        self.frames = collections.Counter[tuple[str, str]]()  # (tenant, kind) of ended calls
        self.backend = collections.Counter[str]()  # sessions, reconnects, recycles of ended calls
        self.v2v: dict[str, Buckets] = {}
        self.v2v_to_audio: dict[str, Buckets] = {}  # caller's speech end -> the backend's first audio
        self.v2v_to_send: dict[str, Buckets] = {}  # the backend's first audio -> the first frame sent
        self.cost_nanousd = collections.Counter[tuple[str, str]]()  # (tenant, part)
        self.tokens = collections.Counter[tuple[str, str]]()  # (tenant, kind)
        self.usage_incomplete = collections.Counter[tuple[str, str]]()  # (tenant, estimated|unpriced)

    def tenant(self, tenant_id: str) -> str:
        """The label for ``tenant_id``: itself among the first ``max_tenants``, else ``other``."""
        if tenant_id in self._tenants:
            return tenant_id
        if len(self._tenants) < self.max_tenants:
            self._tenants.add(tenant_id)
            return tenant_id
        return OTHER

    def turn_stored(self, tenant_id: str, role: str, turn: AssistantTurn | None, v2v_ms: float | None = None) -> None:
        """A stored turn; an answer's voice-to-voice time from its media timing (``turn``), or as
        the record gives it (``v2v_ms``: a GPT-Live turn, timed on its session's timeline)."""
        tenant = self.tenant(tenant_id)
        self.turns[tenant, role] += 1
        if turn is None:
            if v2v_ms is not None:
                self._observe(self.v2v, tenant, v2v_ms)
            return
        audio = turn.audio
        if turn.speech_end_at is not None and audio.first_out_at is not None:
            self._observe(self.v2v, tenant, (audio.first_out_at - turn.speech_end_at) * 1000)
            if audio.first_in_at is not None:
                self._observe(self.v2v_to_audio, tenant, (audio.first_in_at - turn.speech_end_at) * 1000)
                self._observe(self.v2v_to_send, tenant, (audio.first_out_at - audio.first_in_at) * 1000)

    @staticmethod
    def _observe(by_tenant: dict[str, Buckets], tenant: str, value: float) -> None:
        found = by_tenant.get(tenant)
        if found is None:
            found = by_tenant[tenant] = Buckets(V2V_BUCKETS_MS)
        found.observe(value)

    def call_ended(
        self, tenant_id: str, end_reason: str, stats: CallStats | None, usage: UsageRecord | None = None
    ) -> None:
        tenant = self.tenant(tenant_id)
        self.calls[tenant, end_reason or "error"] += 1
        if usage is not None:
            for part in COST_PARTS:
                self.cost_nanousd[tenant, part] += getattr(usage, f"{part}_cost_nanousd")
            for kind in TOKEN_KINDS:
                self.tokens[tenant, kind] += getattr(usage, f"{kind}_tokens")
            if usage.estimated:
                self.usage_incomplete[tenant, "estimated"] += 1
            if usage.unpriced:
                self.usage_incomplete[tenant, "unpriced"] += 1
        if stats is None:
            return
        self.barge_ins[tenant] += stats.barge_ins
        self.truncates_rejected[tenant] += stats.truncates_rejected
        for kind in FRAME_COUNTERS:
            self.frames[tenant, kind.removeprefix("frames_")] += getattr(stats, kind)
        self.backend["sessions"] += stats.backend_sessions
        self.backend["reconnects"] += stats.reconnects
        self.backend["recycles"] += stats.recycles


@dataclass(frozen=True)
class LiveCall:
    """A call in progress, as the collector sees it (``stats``: None before its media began)."""

    tenant_id: str
    stats: CallStats | None


class RelayCollector(Collector):
    """Every relay metric, computed from the relay's state at scrape time."""

    def __init__(self, source: Any) -> None:
        # ``source``: the ``relay.server.Relay`` (typed loosely: it imports this module).
        self._relay = source

    def collect(self) -> Iterator[Metric]:
        relay = self._relay
        ledger: CallLedger = relay.ledger
        live: list[LiveCall] = list(relay.live_calls())

        active = GaugeMetricFamily("relay_calls_active", "Calls with a live media stream.", labels=["tenant"])
        by_tenant = collections.Counter(ledger.tenant(call.tenant_id) for call in live)
        for tenant, n in sorted(by_tenant.items()):
            active.add_metric([tenant], n)
        yield active

        yield _counter("relay_calls", "Calls ended, by tenant and end reason.", ["tenant", "end_reason"], ledger.calls)
        yield _counter("relay_turns", "Turns stored, by tenant and role.", ["tenant", "role"], ledger.turns)
        # Live calls' counts join the ended calls' (a call's final counts move to the ledger
        # as it leaves the live set, so each series only grows).
        frames = collections.Counter(ledger.frames)
        barge_ins = collections.Counter(ledger.barge_ins)
        rejected = collections.Counter(ledger.truncates_rejected)
        backend_live = collections.Counter[str]()
        for call in live:
            stats = call.stats
            if stats is None:
                continue
            tenant = ledger.tenant(call.tenant_id)
            for kind in FRAME_COUNTERS:
                frames[tenant, kind.removeprefix("frames_")] += getattr(stats, kind)
            barge_ins[tenant] += stats.barge_ins
            rejected[tenant] += stats.truncates_rejected
            backend_live["sessions"] += stats.backend_sessions
            backend_live["reconnects"] += stats.reconnects
            backend_live["recycles"] += stats.recycles
        yield _counter(
            "relay_frames",
            "Audio frames by tenant and kind: in (from the caller), out (to the caller), filled (silence for "
            "frames Twilio skipped), late (duplicates and late ones dropped), held and dropped (while no backend "
            "session was ready).",
            ["tenant", "kind"],
            frames,
        )
        yield _counter("relay_barge_ins", "Answers the caller talked over, by tenant.", ["tenant"], barge_ins)
        yield _counter(
            "relay_truncates", "Truncates sent to the backend (one per barge-in), by tenant.", ["tenant"], barge_ins
        )
        yield _counter(
            "relay_truncates_rejected",
            "Truncates the backend refused (its memory keeps more than the caller heard), by tenant.",
            ["tenant"],
            rejected,
        )
        yield _counter(
            "relay_cost_usd",
            "What ended calls cost under the price table, by tenant and part (backend, transcription, twilio); "
            "see relay_usage_incomplete_calls for calls where it is a lower bound.",
            ["tenant", "part"],
            {key: nanos / 1e9 for key, nanos in ledger.cost_nanousd.items()},
        )
        yield _counter(
            "relay_backend_tokens",
            "Tokens of ended calls as the backend accounted for them, by tenant and kind (cached_* are part of *_in).",
            ["tenant", "kind"],
            ledger.tokens,
        )
        yield _counter(
            "relay_usage_incomplete_calls",
            "Ended calls whose usage is partly estimated (the backend did not account for a response) or has "
            "unpriced items (nothing in the price table), by tenant.",
            ["tenant", "why"],
            ledger.usage_incomplete,
        )
        upstream = collections.Counter(ledger.backend) + backend_live
        upstream["outlived"] = relay.upstreams_outlived
        yield _counter(
            "relay_upstream_events",
            "Backend sessions: opened (sessions), reconnects after a loss, recycles before the session cap, "
            "and sessions that outlived their call and were aborted.",
            ["event"],
            {(k,): v for k, v in upstream.items()},
        )
        yield _gauge("relay_upstreams_open", "Backend connections open now.", relay.upstreams_open)

        for name, doc, source in (
            ("relay_voice_to_voice_ms", "Caller's speech end to the answer's first frame sent.", ledger.v2v),
            (
                "relay_voice_to_voice_backend_ms",
                "Caller's speech end to the backend's first audio of the answer.",
                ledger.v2v_to_audio,
            ),
            ("relay_voice_to_voice_relay_ms", "Backend's first audio to the first frame sent.", ledger.v2v_to_send),
        ):
            family = HistogramMetricFamily(name, doc, labels=["tenant"])
            for tenant, buckets in sorted(source.items()):
                family.add_metric([tenant], buckets.cumulative(), buckets.total)
            yield family

        refusals = collections.Counter[tuple[str]]()
        refusals["signature",] = relay.rejected_signatures
        refusals["binding",] = relay.rejected_bindings
        refusals["malformed_webhook",] = relay.malformed_webhooks
        refusals["admission",] = relay.admission_refusals
        for kind, n in relay.violations.items():
            refusals[f"violation_{kind}",] = n
        yield _counter(
            "relay_refusals",
            "Requests and connections refused, by kind (violation_*: a peer broke a protocol limit).",
            ["kind"],
            refusals,
        )

        yield _counter(
            "relay_call_requests",
            "Requests about a call (status callback, after-stream hook, API), by kind and where they were "
            "answered: here (this relay holds the call), routed (passed to the relay that does), for_peer (asked "
            "by another relay), unknown (no relay holds it), silent (its relay did not answer in time).",
            ["kind", "where"],
            relay.call_requests,
        )

        outbound = getattr(relay, "outbound", None)
        if outbound is not None:
            pool = outbound.pool
            yield _counter(
                "relay_outbound_placements",
                "Outbound calls this relay tried to place, by result: placed, retried (20429 or no connection: "
                "queued again after a backoff), failed (refused for good), uncertain (the answer was lost; never "
                "placed again), reconciled (a placed call's end read back from Twilio, its callback lost).",
                ["result"],
                {
                    ("placed",): pool.placed,
                    ("retried",): pool.retried,
                    ("failed",): pool.failed,
                    ("uncertain",): pool.uncertain,
                    ("reconciled",): pool.reconciled,
                },
            )

        pacer = relay.pacer
        yield _histogram(
            "relay_pacer_lateness_ms",
            "How late each call's tick of the shared clock ran.",
            _pacer_buckets(pacer.late),
            None,
        )
        yield _histogram(
            "relay_event_loop_lag_ms",
            "How late the event loop ran a timer (sampled off the frame path).",
            relay.loop_lag.cumulative(),
            relay.loop_lag.total,
        )

        store = relay.store
        yield _gauge("relay_store_queue_depth", "Records waiting for the store's writer.", store.queue_depth)
        yield _histogram(
            "relay_store_batch_seconds",
            "Time to settle one batch.",
            store.batch_seconds.cumulative(),
            store.batch_seconds.total,
        )
        yield _gauge(
            "relay_store_dead_letters", "Records this process wrote to the dead-letter file.", store.dead_letters
        )
        spool = store.spool_stats() or (0, 0)  # (the embedded store has no spool: always 0)
        yield _gauge("relay_store_spool_bytes", "Bytes in the outage spool.", spool[0])
        yield _gauge("relay_store_spooled_records", "Records this process spooled.", spool[1])


def _counter(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, buckets: list[tuple[str, float]], total: float | None) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, total if total is not None else 0.0)
    return family


def _pacer_buckets(late: Iterable[int]) -> list[tuple[str, float]]:
    """The pacer's 0.1 ms lateness buckets, as cumulative Prometheus buckets in ms."""
    counts = list(late)
    out: list[tuple[str, float]] = []
    running, i = 0, 0
    for bound in LAG_BUCKETS_MS:
        limit = int(bound * 10)  # bucket k holds lateness in [k, k+1) tenths of a ms
        while i < len(counts) and i < limit:
            running += counts[i]
            i += 1
        out.append((_bound(bound), running))
    out.append(("+Inf", running + sum(counts[i:])))
    return out


def render(relay: Any) -> bytes:
    """The Prometheus text exposition of ``relay``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))
    return generate_latest(registry)
