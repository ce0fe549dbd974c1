"""The cost ledger: what each call used, as the backend accounted for it, priced and stored.

The simulated agent reports ``usage`` the way the Realtime service does (every ``response.done``
and every input transcription), and keeps what it reported. Whole simulated calls must then
price to exactly what those counts cost at the published rates, per tenant, on both stores, and
``relay usage`` must show a tenant its own calls only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import backends as ev
from relay import pricing, usage_report
from relay.agents import AgentProfile
from relay.backends.realtime import RealtimeBackend, response_usage, transcription_usage
from relay.config import Settings
from relay.errors import ConfigError
from relay.metrics import render
from relay.pricing import PriceTable, bill
from relay.sim.caller import TwilioCaller
from relay.store import SQLiteStore
from relay.usage import CallUsage, Tokens, Transcription, UsageMeter, UsageRecord
from tests.test_call import SHORT, stack

ROOT = Path(__file__).resolve().parent.parent

# The published rates (BACKENDS §5.5), USD per 1M tokens, written out here rather than read from
# relay's table: the test checks the table too.
RATES = {
    "gpt-realtime-2.1": {"text_in": 4, "cached_text_in": 0.4, "audio_in": 32, "cached_audio_in": 0.4,
                         "text_out": 24, "audio_out": 64},
    "gpt-realtime-2.1-mini": {"text_in": 0.6, "cached_text_in": 0.06, "audio_in": 10, "cached_audio_in": 0.3,
                              "text_out": 2.4, "audio_out": 20},
}  # fmt: skip
# A deployment's own prices for what relay does not ship (RELAY_PRICES).
OWN_PRICES = """
version = "acme-2026-12"
[transcription."gpt-realtime-whisper"]
per_minute = 0.006
[twilio]
voice_inbound_per_minute = 0.0085
media_stream_per_minute = 0.004
"""


def full_usage(
    text_in: int, audio_in: int, cached_text: int, cached_audio: int, text_out: int, audio_out: int
) -> dict[str, Any]:
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }  # fmt: skip


def tokens_of(usage: dict[str, Any]) -> Tokens:
    inp, out = usage["input_token_details"], usage["output_token_details"]
    cached = inp["cached_tokens_details"]
    return Tokens(
        inp["text_tokens"], cached["text_tokens"], inp["audio_tokens"], cached["audio_tokens"],
        out["text_tokens"], out["audio_tokens"],
    )  # fmt: skip


def expected_nanos(model: str, t: Tokens) -> int:
    """What ``t`` costs at the published rates, in nano-dollars (exact: each rate is whole nanos a token)."""
    r = {k: Decimal(str(v)) * 1000 for k, v in RATES[model].items()}  # nano-dollars per token
    total = (
        r["text_in"] * (t.text_in - t.cached_text_in) + r["cached_text_in"] * t.cached_text_in
        + r["audio_in"] * (t.audio_in - t.cached_audio_in) + r["cached_audio_in"] * t.cached_audio_in
        + r["text_out"] * t.text_out + r["audio_out"] * t.audio_out
    )  # fmt: skip
    assert total == int(total)
    return int(total)


NO_TOKENS = Tokens()


def used(tokens: Tokens = NO_TOKENS, model: str = "gpt-realtime-2.1", **kw: Any) -> CallUsage:
    base: dict[str, Any] = {
        "backend": "openai-realtime", "model": model, "transcription_model": "gpt-realtime-whisper",
        "tokens": tokens, "transcription": Transcription(), "seconds": 30.0, "twilio_minutes": 1,
        "audio_in_seconds": 30.0, "audio_out_seconds": 10.0, "estimated": False,
    }  # fmt: skip
    return CallUsage(**{**base, **kw})


def billed(usage: CallUsage, prices: PriceTable | None = None) -> UsageRecord:
    return bill(
        usage, prices or pricing.shipped(), call_sid="CA1", stream_sid="MZ1", tenant_id="t", agent_id="default",
        direction="inbound", started_at=1.0, ended_at=31.0,
    )  # fmt: skip


# --- The backend's accounting, read ------------------------------------------------------------


def test_response_done_usage_is_read_by_modality_with_cached_input() -> None:
    message = orjson.dumps(
        {"type": "response.done", "response": {"id": "r1", "status": "completed", "output": [
            {"type": "message", "id": "item_1", "role": "assistant"}],
            "usage": full_usage(1200, 800, 1024, 64, 12, 150)}}
    )  # fmt: skip
    [done] = RealtimeBackend(AgentProfile("x")).parse(message)
    assert isinstance(done, ev.ResponseDone) and done.item_ids == ("item_1",)
    assert done.usage == Tokens(1200, 1024, 800, 64, 12, 150)


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        (None, None),
        ("lots", None),
        ({}, Tokens()),
        # Counts with no modality: billed as audio, the dearer rate, never dropped.
        ({"input_tokens": 40, "output_tokens": 90}, Tokens(audio_in=40, audio_out=90)),
        ({"input_token_details": {"text_tokens": -5, "audio_tokens": True}, "output_token_details": []},
         Tokens()),
    ],
)  # fmt: skip
def test_odd_usage_never_breaks_the_call_and_never_reads_as_less(usage: object, tokens: Tokens | None) -> None:
    assert response_usage(usage) == tokens


def test_transcription_usage_by_duration_or_tokens() -> None:
    assert transcription_usage({"type": "duration", "seconds": 2.5}) == Transcription(seconds=2.5)
    assert transcription_usage({"type": "duration", "seconds": "2"}) == Transcription()
    assert transcription_usage({"type": "tokens", "input_tokens": 30, "output_tokens": 7}) == Transcription(
        tokens_in=30, tokens_out=7
    )
    assert transcription_usage(None) is None
    event = orjson.dumps(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "content_index": 0,
         "transcript": "hi", "usage": {"type": "duration", "seconds": 1.2}}
    )  # fmt: skip
    assert RealtimeBackend(AgentProfile("x")).parse(event) == [
        ev.CallerTranscript("i", "hi", Transcription(seconds=1.2))
    ]


# --- The meter: nothing a backend left out reads as free --------------------------------------


def test_the_meter_adds_reported_responses_and_marks_nothing_estimated() -> None:
    meter = UsageMeter()
    for n in (1, 2):
        meter.response_started()
        meter.response_done(Tokens(text_in=100 * n, audio_out=10 * n), (f"item_{n}",))
    assert meter.total({"item_1": 500, "item_2": 1000}, caller_ms=3000) == (Tokens(text_in=300, audio_out=30), False)


def test_a_response_the_backend_never_accounted_for_is_estimated_from_its_audio() -> None:
    meter = UsageMeter()
    meter.response_started()
    meter.response_done(Tokens(text_in=100, audio_out=10), ("item_1",))
    meter.response_started()  # the call ended while this one was under way: no response.done
    tokens, estimated = meter.total({"item_1": 500, "item_2": 1000}, caller_ms=3000)
    assert estimated and tokens == Tokens(text_in=100, audio_out=10 + 1000 // 50)


def test_a_backend_that_reports_nothing_is_estimated_both_ways() -> None:
    meter = UsageMeter()
    meter.response_started()
    meter.response_done(None, ("item_1",))
    assert meter.total({"item_1": 2000}, caller_ms=4000) == (Tokens(audio_in=40, audio_out=40), True)
    assert UsageMeter().total({}, caller_ms=4000) == (Tokens(), False)  # no answer: nothing used


# --- Pricing -----------------------------------------------------------------------------------


def test_the_shipped_table_has_the_published_rates() -> None:
    table = pricing.shipped()
    for model, rates in RATES.items():
        assert table.models[model] == {k: Decimal(str(v)) for k, v in rates.items()}
    assert table.models["gpt-live-1"] == {"per_minute": Decimal("0.05")}
    assert table.twilio == {} and table.transcription == {}  # not published here: never guessed


@pytest.mark.parametrize("model", sorted(RATES))
def test_tokens_price_at_the_models_rates_with_cached_input_at_the_cached_rate(model: str) -> None:
    tokens = Tokens(text_in=2000, cached_text_in=1536, audio_in=900, cached_audio_in=128, text_out=40, audio_out=600)
    record = billed(used(tokens, model))
    assert (
        record.backend_cost_nanousd == expected_nanos(model, tokens) == record.cost_nanousd - record.twilio_cost_nanousd
    )
    assert record.prices_version == "relay-2026-12" and not record.estimated


def test_what_has_no_price_is_named_never_billed_as_zero() -> None:
    record = billed(used(Tokens(text_in=10, audio_out=10), model="gpt-realtime-9",
                         transcription=Transcription(seconds=3.0)))  # fmt: skip
    assert record.cost_nanousd == 0
    assert record.unpriced.split(",") == [
        "gpt-realtime-9", "transcription:gpt-realtime-whisper", "twilio:voice_inbound", "twilio:media_stream",
    ]  # fmt: skip


def test_a_per_minute_model_bills_the_seconds(tmp_path: Path) -> None:
    record = billed(used(model="gpt-live-1", seconds=90.0, twilio_minutes=2))
    assert record.backend_cost_nanousd == 75_000_000  # $0.05/min for 1.5 min, billed per second
    assert record.twilio_minutes == 2


def test_a_deployments_prices_fill_and_override_the_shipped_ones(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(OWN_PRICES + '[models."gpt-realtime-2.1"]\naudio_out = 60.0\n')
    table = PriceTable.load(str(path))
    assert table.version == "acme-2026-12"
    assert table.models["gpt-realtime-2.1"] == {"audio_out": Decimal("60.0")}  # the entry is replaced whole
    assert table.models["gpt-realtime-2.1-mini"] == pricing.shipped().models["gpt-realtime-2.1-mini"]
    record = billed(used(Tokens(audio_out=1000), model="gpt-realtime-2.1-mini",
                         transcription=Transcription(seconds=12.5)), table)  # fmt: skip
    assert record.unpriced == ""
    assert record.twilio_cost_nanousd == 12_500_000  # one minute at $0.0085 + $0.004
    assert record.transcription_cost_nanousd == 1_250_000  # 12.5 s at $0.006/min
    assert record.cost_nanousd == 20_000_000 + 12_500_000 + 1_250_000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("version = 3", "`version` must be a non-empty string"),
        ('version = "x"\n[models."m"]\naudio_out = -1', "audio_out = -1 must be a price"),
        ('version = "x"\n[models."m"]\naudio_outt = 1', "'audio_outt' is not one of"),
        ('version = "x"\n[twilio]\nvoice_inbound_per_minute = "cheap"', "must be a price"),
        ('version = "x"\n[carriers]\na = 1', "unknown section(s) carriers"),
        ("version = ", "is not TOML"),
    ],
)
def test_a_bad_price_file_is_refused_at_start_with_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="RELAY_PRICES") as caught:
        Settings.from_env({"RELAY_PRICES": str(path)}, serve=False)
    assert says in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        Settings.from_env({"RELAY_PRICES": str(tmp_path / "nosuch.toml")}, serve=False)


# --- Stored -------------------------------------------------------------------------------------


async def test_an_embedded_store_from_before_the_ledger_gets_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE usage (call_sid TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, audio_in_seconds REAL NOT NULL "
        "DEFAULT 0, audio_out_seconds REAL NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out "
        "INTEGER NOT NULL DEFAULT 0); INSERT INTO usage (call_sid, tenant_id) VALUES ('CA0', 'default');"
    )
    db.close()
    store = SQLiteStore(path)
    await store.open()
    record = billed(used(Tokens(audio_out=100)))
    store.submit(record)
    store.submit(record)  # a replay writes the same row again
    await store.flush()
    rows, _ = await store.usage("t", "call", 0.5)  # the old row: no start recorded
    await store.close()
    assert [(r["key"], r["calls"], r["cost_nanousd"]) for r in rows] == [("CA1", 1, 6_400_000)]


# --- Whole calls -------------------------------------------------------------------------------


async def _calls(s: Any, n: int, to_number: str = "+15550002") -> tuple[list[str], list[Any]]:
    """``n`` simulated calls at once; their sids and the agent sessions that served them."""
    before = len(s.agent.sessions)
    results = await asyncio.gather(*(TwilioCaller(s.webhook, SHORT, to_number=to_number).run() for _ in range(n)))
    for task in list(s.relay.sessions):
        await task
    assert all(r.error is None and r.violations == [] for r in results)
    return [r.call_sid for r in results], s.agent.sessions[before:]


def _reported(sessions: list[Any]) -> tuple[Tokens, float]:
    """What the simulated agent reported over ``sessions``: tokens, and transcription seconds."""
    tokens = sum((tokens_of(u) for log in sessions for u in log.response_usage), Tokens())
    seconds = sum(u["seconds"] for log in sessions for u in log.transcription_usage)
    return tokens, seconds


def relay_usage(env: dict[str, str], *argv: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "relay", "usage", "--json", *argv],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    report: dict[str, Any] = orjson.loads(out.stdout)
    return report


def _scraped_cost(relay: Any) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(render(relay).decode()):
        if family.name == "relay_cost_usd":
            for sample in family.samples:
                if sample.name == "relay_cost_usd_total":
                    found[sample.labels["tenant"], sample.labels["part"]] = sample.value
    return found


async def test_ten_calls_price_to_what_the_agent_reported_on_the_embedded_store(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        sids, sessions = await _calls(s, 10)
        await s.store.flush()
        scraped = _scraped_cost(s.relay)
    tokens, seconds = _reported(sessions)
    assert tokens.audio_out > 0 and tokens.audio_in > 0 and tokens.text_out > 0

    report = relay_usage({"RELAY_SQLITE_PATH": str(tmp_path / "relay.sqlite3")})
    total = report["total"]
    assert total["calls"] == 10 and total["estimated_calls"] == 0
    assert total["tokens"] == dataclasses.asdict(tokens)
    assert Decimal(total["cost_usd"]) * 10**9 == expected_nanos("gpt-realtime-2.1", tokens)
    assert total["transcription_seconds"] == pytest.approx(seconds, abs=0.01)
    # The shipped table prices neither Twilio nor the transcription model: named, not zero.
    assert total["unpriced_calls"] == 10
    assert total["unpriced"] == ["transcription:gpt-realtime-whisper", "twilio:media_stream", "twilio:voice_inbound"]
    by_call = relay_usage({"RELAY_SQLITE_PATH": str(tmp_path / "relay.sqlite3")}, "--by", "call")
    assert sorted(row["call"] for row in by_call["rows"]) == sorted(sids)
    assert scraped[("default", "backend")] == pytest.approx(float(total["cost_usd"]))


@pytest.mark.postgres
async def test_ten_calls_price_per_tenant_on_postgres_and_each_reads_only_its_own(tmp_path: Path) -> None:
    from relay.pg import PostgresStore
    from relay.tenants import CachedDirectory
    from tests.pgutil import AGENT, create_database, drop_database, dsn
    from tests.test_pgstore import as_reader

    name = await create_database()
    prices = tmp_path / "prices.toml"
    prices.write_text(OWN_PRICES)
    try:
        store = PostgresStore(dsn(name), spool_path=tmp_path / "relay.spool")
        await store.open()
        directory = store.directory
        for tenant, number, model in (("acme", "+15550100001", "gpt-realtime-2.1"),
                                      ("globex", "+15550100002", "gpt-realtime-2.1-mini")):  # fmt: skip
            await directory.add_tenant(tenant, tenant.title(), dataclasses.replace(AGENT, model=model))
            await directory.add_number(number, tenant)
        async with stack(
            tmp_path, directory=CachedDirectory(directory.lookup_number), store=store,
            resolve_agent=directory.get_agent, prices_path=str(prices),
        ) as s:  # fmt: skip
            acme_sids, acme_sessions = await _calls(s, 6, "+15550100001")
            globex_sids, globex_sessions = await _calls(s, 4, "+15550100002")
            await store.drained(timeout=10)
            scraped = _scraped_cost(s.relay)
        await store.close()

        env = {"DATABASE_URL": dsn(name)}
        served = [
            ("acme", acme_sids, acme_sessions, "gpt-realtime-2.1"),
            ("globex", globex_sids, globex_sessions, "gpt-realtime-2.1-mini"),
        ]
        for tenant, sids, sessions, model in served:
            tokens, seconds = _reported(sessions)
            report = relay_usage(env, "--tenant", tenant, "--by", "call")
            assert sorted(row["call"] for row in report["rows"]) == sorted(sids)  # its own calls, all of them
            total = report["total"]
            assert total["tokens"] == dataclasses.asdict(tokens) and total["unpriced"] == []
            assert Decimal(total["backend_cost_usd"]) * 10**9 == expected_nanos(model, tokens)
            assert Decimal(total["transcription_cost_usd"]) == Decimal(str(round(seconds, 3))) * Decimal("0.0001")
            assert Decimal(total["twilio_cost_usd"]) == len(sids) * Decimal("0.0125")  # each under a minute
            assert Decimal(total["cost_usd"]) == sum(
                Decimal(total[f"{part}_cost_usd"]) for part in ("backend", "transcription", "twilio")
            )
            assert scraped[(tenant, "backend")] == pytest.approx(float(total["backend_cost_usd"]))
            assert report["rows"][0]["calls"] == 1 and usage_report.BY == ("day", "call", "agent")

        # Row-level security alone keeps the other tenant's usage out of a tenant's reads.
        import asyncpg

        db = await asyncpg.connect(dsn(name))
        try:
            async with as_reader(db, "globex") as conn:
                rows = await conn.fetch("SELECT call_sid, tenant_id, prices_version FROM usage")
        finally:
            await db.close()
        assert sorted(r["call_sid"] for r in rows) == sorted(globex_sids)
        assert {(r["tenant_id"], r["prices_version"]) for r in rows} == {("globex", "acme-2026-12")}
    finally:
        await drop_database(name)
