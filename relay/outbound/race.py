"""The after-hours race, sans-I/O: a call and an SMS to the person on call at the same moment;
the first acknowledgement on either leg wins (BACKENDS §6).

A ``Race`` goes through its on-call list one contact at a time. For each, ``start``/``expire``
ask for both legs at once (``PlaceCall``, ``SendSms``); ``acknowledge`` settles it (the other
leg cancelled: the call hung up, or a short "handled" text if the call won); ``expire``, once
the contact's ``timeout_s`` has passed unanswered, cancels their call and moves to the next
contact, and after the last settles the race ``unacknowledged``. Time is passed in; the store
keeps the race between steps, and decides which of two acknowledgements came first.

Also here: when a tenant is open (``BusinessHours``), outside which the agent may escalate.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.errors import InputError
from relay.twilio import E164

CALL, SMS = "call", "sms"
ACKNOWLEDGED, UNACKNOWLEDGED = "acknowledged", "unacknowledged"
DEFAULT_TIMEOUT_S = 120.0
YES = frozenset({"yes", "y", "yes.", "yes!", "ok", "1"})
MAX_CONTACTS = 10
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str


def parse_contacts(text: str) -> tuple[Contact, ...]:
    """An on-call list, ``Name=+1555…,Name=+1555…``, first to be reached first.

    Raises:
        InputError: a name or number that is not one.
    """
    contacts = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, phone = part.rpartition("=")
        name, phone = name.strip(), phone.strip()
        if not name or len(name) > 100 or not name.isprintable() or not E164.fullmatch(phone):
            raise InputError(f"on-call contact {part[:60]!r} must be Name=+1555… (E.164)")
        contacts.append(Contact(name, phone))
    if len(contacts) > MAX_CONTACTS:
        raise InputError(f"at most {MAX_CONTACTS} on-call contacts")
    return tuple(contacts)


@dataclass(frozen=True, slots=True)
class Leg:
    """One attempt to reach a contact: a call (``ref``: its job) or a text (its MessageSid)."""

    stage: int
    kind: str
    ref: str = ""
    started_at: float = 0.0
    acknowledged_at: float | None = None
    cancelled_at: float | None = None


@dataclass(frozen=True, slots=True)
class Race:
    race_id: str
    tenant_id: str
    call_sid: str  # the call whose agent escalated
    summary: str
    contacts: tuple[Contact, ...]
    timeout_s: float
    started_at: float
    stage: int = 0
    deadline_at: float = 0.0
    legs: tuple[Leg, ...] = ()
    outcome: str = ""  # "" while it runs
    winner: Leg | None = None
    ended_at: float | None = None
    agent_id: str = "default"  # the agent whose call escalated: its voice makes the race's call

    @property
    def settled(self) -> bool:
        return bool(self.outcome)

    def leg(self, stage: int, kind: str) -> Leg | None:
        return next((leg for leg in self.legs if leg.stage == stage and leg.kind == kind), None)


@dataclass(frozen=True, slots=True)
class PlaceCall:
    stage: int
    contact: Contact


@dataclass(frozen=True, slots=True)
class SendSms:
    stage: int
    contact: Contact
    body: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """End a leg's call (ringing or talking)."""

    leg: Leg


@dataclass(frozen=True, slots=True)
class Settled:
    """Tell the caller who escalated what happened."""

    race: Race
    contact: Contact | None = None


Action = PlaceCall | SendSms | HangUp | Settled


def sms_body(summary: str) -> str:
    return f"URGENT: {summary} Reply YES to take it."


def handled_body(name: str) -> str:
    return f"Handled: {name} took it. No need to reply."


def call_greeting(contact: Contact, summary: str) -> str:
    """What the agent says when the contact picks up the race's call."""
    return f"{contact.name}, an urgent matter: {summary} Press 1 to take it."


def new_race(
    race_id: str, tenant_id: str, call_sid: str, summary: str, contacts: Sequence[Contact], timeout_s: float, now: float
) -> tuple[Race, list[Action]]:
    """A race, its first contact's legs asked for."""
    race = Race(race_id, tenant_id, call_sid, summary, tuple(contacts), timeout_s, now)
    if not race.contacts:
        return dataclasses.replace(race, outcome=UNACKNOWLEDGED, ended_at=now), [Settled(race)]
    return _reach(race, 0, now)


def _reach(race: Race, stage: int, now: float) -> tuple[Race, list[Action]]:
    contact = race.contacts[stage]
    race = dataclasses.replace(
        race,
        stage=stage,
        deadline_at=now + race.timeout_s,
        legs=(*race.legs, Leg(stage, CALL, started_at=now), Leg(stage, SMS, started_at=now)),
    )
    return race, [PlaceCall(stage, contact), SendSms(stage, contact, sms_body(race.summary))]


def with_ref(race: Race, stage: int, kind: str, ref: str) -> Race:
    """The leg's job id or MessageSid, once it exists."""
    legs = tuple(
        dataclasses.replace(leg, ref=ref) if (leg.stage, leg.kind) == (stage, kind) else leg for leg in race.legs
    )
    return dataclasses.replace(race, legs=legs)


def acknowledge(race: Race, stage: int, kind: str, now: float) -> tuple[Race, list[Action]]:
    """A contact took it on one leg (1 pressed on the call, YES texted back). The first wins; one
    that comes after the race is settled changes nothing. A contact the race has moved past may
    still take it: they answered, if late."""
    leg = race.leg(stage, kind)
    if race.settled or leg is None:
        return race, []
    won = dataclasses.replace(leg, acknowledged_at=now)
    actions: list[Action] = []
    legs = []
    for other in race.legs:
        if (other.stage, other.kind) == (stage, kind):
            legs.append(won)
        elif other.cancelled_at is None and other.stage in (stage, race.stage):
            # The winner's other leg, and the current contact's, are over: a call is hung up, a
            # text is followed by one saying it is handled.
            if other.kind == CALL:
                actions.append(HangUp(other))
            else:
                contact = race.contacts[other.stage]
                actions.append(SendSms(other.stage, contact, handled_body(race.contacts[stage].name)))
            legs.append(dataclasses.replace(other, cancelled_at=now))
        else:
            legs.append(other)
    race = dataclasses.replace(race, legs=tuple(legs), outcome=ACKNOWLEDGED, winner=won, ended_at=now)
    return race, [*actions, Settled(race, race.contacts[stage])]


def expire(race: Race, now: float) -> tuple[Race, list[Action]]:
    """The current contact's time is up: their call is cancelled and the next contact's legs are
    asked for; after the last, the race is settled unacknowledged. Nothing before the deadline."""
    if race.settled or now < race.deadline_at:
        return race, []
    actions: list[Action] = []
    legs = []
    for leg in race.legs:
        if leg.stage == race.stage and leg.kind == CALL and leg.cancelled_at is None:
            actions.append(HangUp(leg))
            legs.append(dataclasses.replace(leg, cancelled_at=now))
        else:
            legs.append(leg)
    race = dataclasses.replace(race, legs=tuple(legs))
    if race.stage + 1 < len(race.contacts):
        race, more = _reach(race, race.stage + 1, now)
        return race, [*actions, *more]
    race = dataclasses.replace(race, outcome=UNACKNOWLEDGED, ended_at=now)
    return race, [*actions, Settled(race)]


def is_yes(body: str) -> bool:
    return body.strip().lower() in YES


# ---------------------------------------------------------------------------- business hours


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """When a tenant is open: spans per weekday in its time zone (``mon-fri 09:00-17:00``)."""

    timezone: str
    spans: tuple[tuple[int, datetime.time, datetime.time], ...] = field(default=())

    @classmethod
    def parse(cls, timezone: str, text: str) -> BusinessHours:
        """``mon-fri 09:00-17:00, sat 10:00-14:00`` in an IANA time zone.

        Raises:
            InputError: an unknown zone, day or time.
        """
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InputError(f"{timezone[:60]!r} is not an IANA time zone (e.g. America/New_York)") from None
        spans = []
        for part in (p.strip().lower() for p in text.split(",") if p.strip()):
            match = re.fullmatch(r"([a-z]{3})(?:-([a-z]{3}))? (\d\d):(\d\d)-(\d\d):(\d\d)", part)
            if match is None or match[1] not in _DAYS or (match[2] and match[2] not in _DAYS):
                raise InputError(f"business hours {part[:40]!r} must be like mon-fri 09:00-17:00")
            first = _DAYS.index(match[1])
            last = _DAYS.index(match[2]) if match[2] else first
            h1, m1, h2, m2 = (int(g) for g in match.groups()[2:])
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2, m2) > (24, 0) or (h1, m1) >= (h2, m2):
                raise InputError(f"business hours {part[:40]!r}: a start before an end, 00:00..24:00")
            end = datetime.time(23, 59, 59, 999999) if h2 == 24 else datetime.time(h2, m2)
            for day in range(first, last + 1 if last >= first else last + 8):
                spans.append((day % 7, datetime.time(h1, m1), end))
        if not spans:
            raise InputError("business hours must name at least one day and time")
        return cls(timezone, tuple(spans))

    def open(self, now: float) -> bool:
        local = datetime.datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        t = local.time()
        return any(day == local.weekday() and start <= t < end for day, start, end in self.spans)
