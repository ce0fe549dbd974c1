"""Outbound jobs, sans-I/O: one call to place, its life, its retries, and when it may be placed.

A job is created ``queued`` and placed once. Its states::

    queued ──claim──▶ placing ──created──▶ live ──final status──▶ done
       ▲                 │ │
       └──retry (20429, ─┘ └──refused (21211…) or out of attempts──▶ failed
          connect error)   └──answer lost (reset after sending)──▶ uncertain

``uncertain`` is never placed again: Twilio has no idempotency key for calls, and a request
whose answer was lost may have placed it; an operator decides (``relay jobs``). A job is
unique per tenant by its idempotency key, so a client retrying ``POST /v1/calls`` (or a CSV
loaded twice) never queues the same call twice.
"""

from __future__ import annotations

import csv
import datetime
import io
import random
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.errors import InputError
from relay.twilio import E164

QUEUED, PLACING, LIVE, DONE, FAILED, UNCERTAIN = "queued", "placing", "live", "done", "failed", "uncertain"
STATES = (QUEUED, PLACING, LIVE, DONE, FAILED, UNCERTAIN)
ACTIVE = (PLACING, LIVE)  # jobs that hold one of their account's live-call slots

# What a placed call's answer may be (AnsweredBy, folded: BACKENDS §6.4).
HUMAN, MACHINE, UNKNOWN = "human", "machine", "unknown"
MACHINE_VERDICTS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"})
# The verdicts after which a message can be left: the greeting is over (DetectMessageEnd).
MESSAGE_END_VERDICTS = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})

MAX_ATTEMPTS = 8  # placements tried for one job (20429 and connect errors), then it fails
BACKOFF_S = (1.0, 60.0)  # first and longest wait before a retry
MAX_VARIABLES = 32
MAX_VARIABLE_NAME = 64
MAX_VARIABLE_VALUE = 500
MAX_CAMPAIGN = 10_000
MAX_KEY = 200
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
RESERVED_PREFIX = "relay_"  # variables relay sets on calls it places for itself (a warm transfer's)


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One call asked for: the number, the variables the agent is given, and its idempotency key."""

    to: str
    variables: Mapping[str, str] = field(default_factory=dict)
    key: str = ""

    def problems(self) -> list[str]:
        out = []
        if not E164.fullmatch(self.to):
            out.append(f"to {self.to[:40]!r} is not an E.164 number (+ and up to 15 digits)")
        out += variable_problems(self.variables)
        if len(self.key) > MAX_KEY or not self.key.isprintable():
            out.append(f"idempotency key must be at most {MAX_KEY} printable characters")
        return out


def variable_problems(variables: Mapping[str, Any]) -> list[str]:
    """Why a call's variables cannot be given to its agent (empty: they can)."""
    if len(variables) > MAX_VARIABLES:
        return [f"{len(variables)} variables: at most {MAX_VARIABLES}"]
    out = []
    for name, value in variables.items():
        if not _VARIABLE_NAME.fullmatch(str(name)):
            out.append(f"variable name {str(name)[:40]!r} must be a letter or _ then letters, digits, _ (≤ 64)")
        elif str(name).startswith(RESERVED_PREFIX):
            out.append(f"variable name {str(name)[:40]!r}: names beginning {RESERVED_PREFIX} are relay's own")
        elif not isinstance(value, str) or len(value) > MAX_VARIABLE_VALUE or not value.isprintable():
            out.append(f"variable {name}: a value must be text of at most {MAX_VARIABLE_VALUE} printable characters")
    return out


@dataclass(frozen=True, slots=True)
class Job:
    """A stored job, as the queue gives it back."""

    job_id: str
    tenant_id: str
    agent_id: str
    account_sid: str
    to_number: str
    from_number: str
    variables: Mapping[str, str]
    idempotency_key: str
    state: str
    attempts: int = 0
    due_at: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    campaign_id: str = ""
    call_sid: str = ""
    answered_by: str = ""  # human / machine / unknown, once known
    statuses: tuple[tuple[int, str, float], ...] = ()  # (SequenceNumber, CallStatus, when), in order
    outcome: str = ""  # the call's final CallStatus, or why it was never placed
    duration_s: int | None = None
    error_code: int | None = None
    error: str = ""
    voicemail: str = ""  # what happened on a machine: left (the message after the beep) or hung_up
    priority: int = 0
    race_id: str = ""  # the after-hours race whose call this is
    attempt_log: tuple[dict[str, Any], ...] = ()  # each placement tried: when, its result, Twilio's error

    def public(self) -> dict[str, Any]:
        """The job as the API and the CLI show it."""
        return {
            "job": self.job_id,
            "campaign": self.campaign_id or None,
            "to": self.to_number,
            "from": self.from_number,
            "agent": self.agent_id,
            "variables": dict(self.variables),
            "idempotency_key": self.idempotency_key,
            "state": self.state,
            "attempts": self.attempts,
            "attempt_log": list(self.attempt_log),
            "call_sid": self.call_sid or None,
            "answered_by": self.answered_by or None,
            "statuses": [status for _, status, _ in self.statuses],
            "outcome": self.outcome or None,
            "duration_s": self.duration_s,
            "voicemail": self.voicemail or None,
            "race": self.race_id or None,
            "error": ({"code": self.error_code, "message": self.error} if self.error_code or self.error else None),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def new_id(prefix: str) -> str:
    """A job or campaign id: a prefix and 24 random hex digits."""
    return prefix + secrets.token_hex(12)


def answered_by(verdict: str) -> str:
    """Twilio's ``AnsweredBy`` folded to what a job records: human, machine or unknown."""
    if verdict == "human":
        return HUMAN
    return MACHINE if verdict in MACHINE_VERDICTS else UNKNOWN


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """The wait before placement attempt ``attempt + 1``: doubling, capped, with ±20 % jitter so
    relays that met the same 20429 do not come back together (BACKENDS §6.8)."""
    base = min(BACKOFF_S[1], BACKOFF_S[0] * 2.0 ** max(0, attempt - 1))
    jitter = (rng or random.Random()).random()
    return float(base * (0.8 + 0.4 * jitter))


def merge_status(
    statuses: tuple[tuple[int, str, float], ...], seq: int, status: str, at: float
) -> tuple[tuple[int, str, float], ...]:
    """Add one status callback to a call's sequence, ordered by ``SequenceNumber``: callbacks may
    arrive out of order, and a repeated one (Twilio retries) is kept once."""
    if any(s == seq for s, _, _ in statuses):
        return statuses
    return tuple(sorted((*statuses, (seq, status, at))))


# ---------------------------------------------------------------------------- quiet hours


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A tenant's night: no campaign call is placed between ``start`` and ``end`` local time."""

    timezone: str
    start: datetime.time
    end: datetime.time

    @classmethod
    def parse(cls, timezone: str, span: str) -> QuietHours:
        """``span`` as ``HH:MM-HH:MM`` (``21:00-08:00`` wraps midnight) in an IANA time zone.

        Raises:
            InputError: an unknown zone or a malformed span.
        """
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InputError(f"{timezone[:60]!r} is not an IANA time zone (e.g. America/New_York)") from None
        match = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", span.strip())
        if match is None:
            raise InputError(f"quiet hours {span[:40]!r} must be HH:MM-HH:MM (e.g. 21:00-08:00)")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
            raise InputError(f"quiet hours {span[:40]!r}: two different times of day, 00:00..23:59")
        return cls(timezone, datetime.time(h1, m1), datetime.time(h2, m2))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    def until(self, now: float) -> float | None:
        """When the quiet hours around ``now`` (epoch seconds) end; None when ``now`` is not in them."""
        zone = ZoneInfo(self.timezone)
        local = datetime.datetime.fromtimestamp(now, zone)
        t = local.time()
        wraps = self.start > self.end
        inside = (t >= self.start or t < self.end) if wraps else (self.start <= t < self.end)
        if not inside:
            return None
        day = local.date() + datetime.timedelta(days=1 if wraps and t >= self.start else 0)
        end = datetime.datetime.combine(day, self.end, zone)
        return end.timestamp()


# ---------------------------------------------------------------------------- campaigns


def parse_campaign_csv(text: str) -> list[CallSpec]:
    """A campaign file: a header row with ``to`` (E.164), every other column a variable of the
    call. Each row's idempotency key is its row number, so loading the file into the same
    campaign twice changes nothing.

    Raises:
        InputError: listing up to ten bad rows (line numbers as an editor shows them).
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if "to" not in header:
        raise InputError("the campaign file needs a header row with a 'to' column (E.164 numbers)")
    reader.fieldnames = header
    specs: list[CallSpec] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(reader):
        line = index + 2
        if None in row:
            problems.append(f"line {line}: more fields than the header has")
            continue
        to = (row.pop("to") or "").strip()
        variables = {k: (v or "").strip() for k, v in row.items() if k}
        spec = CallSpec(to, variables, key=f"row-{line}")
        bad = spec.problems()
        if to in seen:
            bad.append(f"{to} is on line {seen[to]} already")
        seen.setdefault(to, line)
        problems += [f"line {line}: {p}" for p in bad]
        specs.append(spec)
        if len(specs) > MAX_CAMPAIGN:
            raise InputError(f"a campaign holds at most {MAX_CAMPAIGN} calls")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputError("; ".join(problems[:10]) + more)
    if not specs:
        raise InputError("the campaign file has no calls under its header")
    return specs


def specs_from_json(body: Any) -> list[CallSpec]:
    """The calls of a ``POST /v1/campaigns`` body: ``{"calls": [{"to": …, "variables": {…}}, …]}``.

    Raises:
        InputError: what is wrong, for the 400 answer.
    """
    calls = body.get("calls") if isinstance(body, dict) else None
    if not isinstance(calls, list) or not calls:
        raise InputError('\'calls\' must be a non-empty list of {"to": "+1…", "variables": {…}}')
    if len(calls) > MAX_CAMPAIGN:
        raise InputError(f"a campaign holds at most {MAX_CAMPAIGN} calls")
    specs: list[CallSpec] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, call in enumerate(calls):
        spec = spec_from_json(call, key=f"row-{index + 1}", problems=problems, where=f"calls[{index}]")
        if spec is None:
            continue
        if spec.to in seen:
            problems.append(f"calls[{index}]: {spec.to} is in the campaign already")
        seen.add(spec.to)
        specs.append(spec)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputError("; ".join(problems[:10]) + more)
    return specs


def spec_from_json(call: Any, *, key: str, problems: list[str], where: str = "") -> CallSpec | None:
    """One call of an API body (``{"to", "variables"?, "idempotency_key"?}``); None, with the
    reasons appended to ``problems``, when it is not one."""
    prefix = f"{where}: " if where else ""
    if not isinstance(call, dict):
        problems.append(f"{prefix}a call must be an object")
        return None
    unknown = set(call) - {"to", "variables", "idempotency_key"}
    if unknown:
        problems.append(f"{prefix}unknown field(s) {sorted(str(u)[:40] for u in unknown)}")
    to, variables = call.get("to"), call.get("variables", {})
    given_key = call.get("idempotency_key", key)
    if not isinstance(to, str) or not isinstance(variables, dict) or not isinstance(given_key, str):
        problems.append(f"{prefix}'to' must be a string, 'variables' an object of strings")
        return None
    spec = CallSpec(to, variables, given_key)
    found = spec.problems()
    problems += [f"{prefix}{p}" for p in found]
    return None if found else spec


def _iso(epoch: float) -> str | None:
    if not epoch:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")
