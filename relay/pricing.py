"""What a call cost: the versioned price table (``relay/prices.toml``, overridable with
``RELAY_PRICES``) and ``bill``, which prices a call's usage into its stored ``UsageRecord``.

Money is counted in whole nano-dollars (10⁻⁹ USD): every published rate is a whole number of
them per token or per second, sums stay exact in both stores, and a 64-bit column holds
billions of dollars. Each line is rounded once, to the nearest nano-dollar.

A quantity used with no price (a model not in the table, Twilio's minutes unless the
deployment sets them) is named in the record's ``unpriced`` and adds nothing to the cost: the
cost is then what is known, a lower bound, and says so.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from relay.errors import ConfigError
from relay.usage import CallUsage, UsageRecord

NANO = Decimal(1_000_000_000)
PER_MILLION = Decimal(1_000_000)

# The rates each section may give, per 1M tokens or per minute.
MODEL_RATES = ("text_in", "cached_text_in", "text_out", "audio_in", "cached_audio_in", "audio_out", "per_minute")
TRANSCRIPTION_RATES = ("per_minute", "tokens_in", "tokens_out")
TWILIO_RATES = ("voice_inbound_per_minute", "voice_outbound_per_minute", "media_stream_per_minute")


@dataclass(frozen=True)
class PriceTable:
    """Rates in USD: ``models`` and ``transcription`` by model name, ``twilio`` by item."""

    version: str
    models: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    transcription: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    twilio: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> PriceTable:
        """A table from TOML's values, every rate checked.

        Raises:
            ConfigError: listing every bad entry.
        """
        problems: list[str] = []
        version = data.get("version")
        if not isinstance(version, str) or not version.strip():
            problems.append(f"{where}: `version` must be a non-empty string")
            version = ""

        def rates(section: object, allowed: tuple[str, ...], name: str) -> dict[str, Decimal]:
            out: dict[str, Decimal] = {}
            if not isinstance(section, dict):
                problems.append(f"{where}: [{name}] must be a table")
                return out
            for key, value in section.items():
                if key not in allowed:
                    problems.append(f"{where}: [{name}] {key!r} is not one of {', '.join(allowed)}")
                elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
                    problems.append(f"{where}: [{name}] {key} = {value!r} must be a price in USD (0 or more)")
                else:
                    out[key] = Decimal(str(value))
            return out

        def by_model(key: str, allowed: tuple[str, ...]) -> dict[str, dict[str, Decimal]]:
            section = data.get(key, {})
            if not isinstance(section, dict):
                problems.append(f"{where}: [{key}] must be a table of models")
                return {}
            return {model: rates(v, allowed, f'{key}."{model}"') for model, v in section.items()}

        unknown = set(data) - {"version", "models", "transcription", "twilio"}
        if unknown:
            problems.append(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
        table = cls(
            version,
            by_model("models", MODEL_RATES),
            by_model("transcription", TRANSCRIPTION_RATES),
            rates(data.get("twilio", {}), TWILIO_RATES, "twilio"),
        )
        if problems:
            raise ConfigError(problems)
        return table

    @classmethod
    def load(cls, path: str = "") -> PriceTable:
        """The shipped table, with a deployment's file (``RELAY_PRICES``) over it, entry by entry.

        Raises:
            ConfigError: the file is missing, not TOML, or has a bad entry.
        """
        base = shipped()
        if not path:
            return base
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"RELAY_PRICES={path!r}: cannot read it ({exc.strerror or exc})"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"RELAY_PRICES={path!r} is not TOML: {exc}"]) from None
        own = cls.parse(data, f"RELAY_PRICES={path!r}")
        return cls(
            own.version,
            {**base.models, **own.models},
            {**base.transcription, **own.transcription},
            {**base.twilio, **own.twilio},
        )


@functools.cache
def shipped() -> PriceTable:
    """The table in the package (``relay/prices.toml``), read once."""
    text = resources.files("relay").joinpath("prices.toml").read_text(encoding="utf-8")
    return PriceTable.parse(tomllib.loads(text), "relay/prices.toml")


def _nanos(amount: Decimal) -> int:
    return int((amount * NANO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def bill(
    usage: CallUsage,
    prices: PriceTable,
    *,
    call_sid: str,
    stream_sid: str,
    tenant_id: str,
    agent_id: str,
    direction: str,
    started_at: float,
    ended_at: float,
) -> UsageRecord:
    """The call's stored usage: what it used and what that cost under ``prices``."""
    unpriced: list[str] = []
    t = usage.tokens
    minutes = usage.twilio_minutes

    backend_cost = Decimal(0)
    rates = prices.models.get(usage.model, {})
    if "per_minute" in rates:
        backend_cost = rates["per_minute"] * Decimal(str(usage.seconds)) / 60
    elif t.total:
        quantities = {
            "text_in": t.text_in - t.cached_text_in,
            "cached_text_in": t.cached_text_in,
            "audio_in": t.audio_in - t.cached_audio_in,
            "cached_audio_in": t.cached_audio_in,
            "text_out": t.text_out,
            "audio_out": t.audio_out,
        }
        missing = [kind for kind, n in quantities.items() if n and kind not in rates]
        if missing:
            unpriced.append(f"{usage.model}:{'+'.join(missing)}" if rates else usage.model)
        backend_cost = sum(
            (rates[kind] * n / PER_MILLION for kind, n in quantities.items() if n and kind in rates), Decimal(0)
        )

    transcription_cost = Decimal(0)
    tr = usage.transcription
    if tr.seconds or tr.tokens_in or tr.tokens_out:
        rates = prices.transcription.get(usage.transcription_model, {})
        by_tokens = {"tokens_in": tr.tokens_in, "tokens_out": tr.tokens_out}
        if tr.seconds and "per_minute" in rates:
            transcription_cost = rates["per_minute"] * Decimal(str(tr.seconds)) / 60
        elif (tr.tokens_in or tr.tokens_out) and all(kind in rates for kind, n in by_tokens.items() if n):
            transcription_cost = sum((rates[k] * n / PER_MILLION for k, n in by_tokens.items() if n), Decimal(0))
        else:
            unpriced.append(f"transcription:{usage.transcription_model}")

    twilio_cost = Decimal(0)
    if minutes:
        for item in (f"voice_{direction}_per_minute", "media_stream_per_minute"):
            if item in prices.twilio:
                twilio_cost += prices.twilio[item] * minutes
            else:
                unpriced.append(f"twilio:{item.removesuffix('_per_minute')}")

    backend_nanos, transcription_nanos, twilio_nanos = (
        _nanos(backend_cost),
        _nanos(transcription_cost),
        _nanos(twilio_cost),
    )
    return UsageRecord(
        call_sid=call_sid,
        stream_sid=stream_sid,
        tenant_id=tenant_id,
        agent_id=agent_id,
        direction=direction,
        started_at=started_at,
        ended_at=ended_at,
        backend=usage.backend,
        model=usage.model,
        audio_in_seconds=round(usage.audio_in_seconds, 3),
        audio_out_seconds=round(usage.audio_out_seconds, 3),
        text_in_tokens=t.text_in,
        cached_text_in_tokens=t.cached_text_in,
        audio_in_tokens=t.audio_in,
        cached_audio_in_tokens=t.cached_audio_in,
        text_out_tokens=t.text_out,
        audio_out_tokens=t.audio_out,
        backend_seconds=round(usage.seconds, 3),
        transcription_model=usage.transcription_model,
        transcription_seconds=round(tr.seconds, 3),
        transcription_tokens_in=tr.tokens_in,
        transcription_tokens_out=tr.tokens_out,
        twilio_minutes=minutes,
        estimated=usage.estimated,
        prices_version=prices.version,
        backend_cost_nanousd=backend_nanos,
        transcription_cost_nanousd=transcription_nanos,
        twilio_cost_nanousd=twilio_nanos,
        cost_nanousd=backend_nanos + transcription_nanos + twilio_nanos,
        unpriced=",".join(unpriced),
    )


def usd(nanos: int) -> Decimal:
    """Nano-dollars as dollars, exactly."""
    return Decimal(nanos) / NANO
