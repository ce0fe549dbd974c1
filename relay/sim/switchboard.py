"""Who a simulated call can ``<Dial>``: people at numbers and SIP addresses, and conference rooms.

Twilio's ``<Dial>`` connects the call that runs it to another party
(https://www.twilio.com/docs/voice/twiml/dial). Both simulators run it the same way, through a
``Switchboard`` they may share, in process and on the event loop's clock: the caller
(``relay.sim.caller``) once relay has closed its stream, the REST simulator
(``relay.sim.twilio_rest``) on the calls it places.

* ``parse_dial`` reads the verb as Twilio does: a bare number, up to ten ``<Number>`` and ``<Sip>``
  nouns rung at once (the first to answer is connected, the others are hung up), or one
  ``<Conference>``; and the attributes ``timeout`` (30 s), ``timeLimit`` (4 h), ``action`` and
  ``method``. Other nouns (``<Client>``, ``<Queue>``, …) are not simulated: ``Dial.skipped``.
* A number or SIP address in ``people`` is a ``Reachable``. It rings ``answer_after_s``, picks up
  and says its greeting (the dialling leg hears it, for as long as it lasts), stays ``talk_s`` more
  and hangs up: ``completed``. If it does not answer within the ``timeout`` it rang out
  (``no-answer``); a busy one is ``busy``. A number nobody is at rings a moment
  (``UNKNOWN_RING_S``, so that tests stay fast) and is ``no-answer``; what is neither a phone
  number nor a ``sip:`` (``sips:``) URI is ``failed``. Numbers are matched in E.164 (US numbers written
  ``415-555-1212`` included), SIP URIs without their parameters and headers; the ``action`` of a
  dial a SIP URI decided also gets ``DialSipResponseCode`` and ``DialSipCallId``.
* A ``<Conference>`` leg joins the room of that name, made on the first join (a new one once the
  last has ended). The room starts with the first participant whose ``startConferenceOnEnter`` is
  true (the default); until then the participants wait and hear no one. Once it has started,
  each participant hears the ``join_line`` of every other one in the room with it (one that joined
  ``muted`` is heard by no one). The room ends when its last participant leaves, or when one with
  ``endConferenceOnExit`` does, and every ``<Dial>`` still in it returns. A leg leaves on its own
  after its ``stay_s``.

Not simulated: whispers (``<Number url>``), ``sendDigits``, ``hangupOnStar``, recording, beeps
and hold music. ``Switchboard.dial`` returns the ``DialOutcome``: what Twilio posts to the
``action`` URL (``action_params``) and what the leg heard; the simulator posts it and runs the
TwiML it gets back, or, with no ``action``, goes on with the verbs after ``<Dial>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.audio_format import SAMPLE_RATE
from relay.sim import audio

__all__ = [
    "UNKNOWN_RING_S",
    "Conference",
    "Dial",
    "DialOutcome",
    "DialRecord",
    "DialTarget",
    "Ear",
    "Leg",
    "Participant",
    "Reachable",
    "Switchboard",
    "parse_dial",
]

DEFAULT_TIMEOUT_S = 30  # <Dial timeout>: seconds of ringing before no-answer
DEFAULT_TIME_LIMIT_S = 14400  # <Dial timeLimit>: the longest the dialled call may last (4 h)
MAX_NOUNS = 10  # <Number>s and <Sip>s one <Dial> may ring at once
UNKNOWN_RING_S = 1.0  # a number nobody is at rings this long (at most), then no-answer
E164 = re.compile(r"\+[1-9]\d{1,14}")
_SEPARATORS = str.maketrans("", "", " -().")

# Outcomes of one dialled party (DialRecord.outcome); the first four are also DialCallStatus values.
ANSWERED, NO_ANSWER, BUSY, FAILED, CANCELED, JOINED = "answered", "no-answer", "busy", "failed", "canceled", "joined"
# The final SIP response to a <Sip> leg's INVITE: 200 OK, 486 Busy Here, 487 Request Terminated
# (Twilio cancels it at the timeout).
SIP_RESPONSES = {ANSWERED: 200, BUSY: 486, NO_ANSWER: 487}

Ear = Callable[[bytes], None]
"""Where a leg hears audio (8 kHz μ-law), at the moment it is said: a playback's ``say``."""


@dataclass(frozen=True)
class Reachable:
    """A person at a number or SIP address, as a ``<Dial>`` finds them."""

    greeting: str  # what they say on picking up, e.g. "Front desk, this is Alex."
    answer_after_s: float = 0.5  # rings this long before they pick up
    answers: bool = True  # False: it rings out (no-answer at the <Dial>'s timeout)
    busy: bool = False  # a busy signal after the ringing: busy
    talk_s: float = 2.0  # they stay this long after the greeting, then hang up, ending the dial


@dataclass(frozen=True)
class DialTarget:
    """One noun of a ``<Dial>``: a number, a SIP URI, or a conference room by name."""

    kind: str  # "number", "sip" or "conference"
    address: str  # as written in the TwiML
    start_on_enter: bool = True  # <Conference startConferenceOnEnter>
    end_on_exit: bool = False  # <Conference endConferenceOnExit>
    muted: bool = False  # <Conference muted>: the others do not hear this leg


@dataclass(frozen=True)
class Dial:
    """A ``<Dial>`` verb, read."""

    targets: tuple[DialTarget, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    action: str | None = None  # the URL told how the dial went; the call goes on with what it answers
    method: str = "POST"  # of the action request
    skipped: tuple[str, ...] = ()  # nouns not simulated, e.g. "<Client>"

    @property
    def conference(self) -> DialTarget | None:
        """The room this dial joins, if it joins one."""
        return next((target for target in self.targets if target.kind == "conference"), None)


@dataclass(frozen=True)
class Leg:
    """The call that runs a ``<Dial>``: its sid, its ear, and what it does in a conference."""

    call_sid: str
    hear: Ear
    join_line: str = ""  # said as it joins a conference ("" says nothing)
    stay_s: float = 3.0  # it leaves a conference after this long, if the room has not ended by then


@dataclass(frozen=True)
class DialOutcome:
    """How one ``<Dial>`` went, for the leg that ran it."""

    status: str  # DialCallStatus: completed, busy, no-answer or failed; answered for a conference
    dial_call_sid: str | None  # the dialled call's sid (Twilio sends none after a conference)
    duration_s: int | None  # the dialled call's length once connected (none after a conference)
    dialed: tuple[str, ...]  # the numbers and SIP URIs rung, as written
    reached: str | None  # who the leg talked with: the number or URI, or "conference:<name>"
    heard: str  # the words the leg heard from them
    sip_response_code: int | None = None  # the final answer to the INVITE, when a SIP URI decided the dial

    def action_params(self) -> dict[str, str]:
        """The ``<Dial>`` parameters Twilio adds to the call's own in the ``action`` request."""
        params = {"DialCallStatus": self.status}
        if self.dial_call_sid is not None:
            params["DialCallSid"] = self.dial_call_sid
        if self.duration_s is not None:
            params["DialCallDuration"] = str(self.duration_s)
        if self.sip_response_code is not None:  # a SIP session also reports its INVITE's outcome
            params["DialSipResponseCode"] = str(self.sip_response_code)
            params["DialSipCallId"] = f"{self.dial_call_sid}@sip.twilio.invalid"
        return params


@dataclass
class DialRecord:
    """One party a ``<Dial>`` rang or joined, and how it went."""

    from_call_sid: str
    target: str  # the number or SIP URI as written, or the conference's name
    kind: str  # "number", "sip" or "conference"
    outcome: str  # answered, no-answer, busy, failed, canceled (another answered first) or joined
    heard: str = ""  # the words the dialling leg heard from this party


def _deaf(ulaw: bytes) -> None:
    """An ear that hears nothing."""


@dataclass(eq=False)
class Participant:
    """One leg in a conference room. Times are the event loop's."""

    call_sid: str
    joined_at: float
    left_at: float | None = None
    join_line: str = ""
    muted: bool = False
    end_on_exit: bool = False
    hear: Ear = field(default=_deaf, repr=False)


@dataclass(eq=False)
class Conference:
    """A conference room: who was in it when, and when it started and ended (loop times)."""

    name: str
    created_at: float
    sid: str = field(default_factory=lambda: "CF" + secrets.token_hex(16))
    participants: list[Participant] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # (speaker, listener) indexes in ``participants``: join lines already heard
    _introduced: set[tuple[int, int]] = field(default_factory=set, repr=False)

    @property
    def present(self) -> list[Participant]:
        """The participants in the room now."""
        return [p for p in self.participants if p.left_at is None]

    def admit(self, joiner: Participant, *, starts: bool) -> None:
        """``joiner`` enters; it starts the room if ``starts`` (its ``startConferenceOnEnter``)."""
        self.participants.append(joiner)
        if self.started_at is None and starts:
            self.started_at = joiner.joined_at
        if self.started_at is not None:
            self._introduce()

    def leave(self, who: Participant, now: float) -> None:
        """``who`` leaves; the room ends if it was the last, or if it ends the room on exit."""
        if who.left_at is not None:
            return
        who.left_at = now
        if who.end_on_exit or not self.present:
            self._end(now)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    def _end(self, now: float) -> None:
        self.ended_at = now
        for participant in self.present:
            participant.left_at = now
        self._ended.set()

    def _introduce(self) -> None:
        """Everyone in the started room hears every other one's join line, once."""
        present = [(i, p) for i, p in enumerate(self.participants) if p.left_at is None]
        for s, speaker in present:
            if not speaker.join_line or speaker.muted:
                continue
            for n, listener in present:
                if n != s and (s, n) not in self._introduced:
                    self._introduced.add((s, n))
                    listener.hear(_speech(speaker.join_line))


@dataclass(frozen=True)
class _Ring:
    """What one ``<Number>`` or ``<Sip>`` does, and how long after the dial began."""

    target: DialTarget
    outcome: str
    after_s: float


@dataclass(eq=False)
class Switchboard:
    """The people and conference rooms simulated calls can ``<Dial>``, and a record of every dial."""

    people: dict[str, Reachable] = field(default_factory=dict)  # E.164 number or sip: address -> who
    conferences: dict[str, Conference] = field(default_factory=dict)  # by name: each name's latest room
    dials: list[DialRecord] = field(default_factory=list)

    def reachable(self, target: DialTarget) -> Reachable | None:
        """Who answers at ``target``, if anyone is there."""
        found = self.people.get(target.address)
        if found is None and target.kind in ("number", "sip"):
            found = self.people.get(_e164(target.address) if target.kind == "number" else _sip_address(target.address))
        return found

    async def dial(self, dial: Dial, leg: Leg) -> DialOutcome:
        """Run ``dial`` for ``leg`` to its end: ringing, the talk or the conference, the hang-up."""
        heard = bytearray()

        def ear(ulaw: bytes) -> None:
            heard.extend(ulaw)  # what this dial gave the leg to hear, for its transcript
            leg.hear(ulaw)

        conference = dial.conference
        if conference is not None:
            return await self._join(conference, dial, leg, ear, heard)
        return await self._ring(dial, leg, ear, heard)

    async def _ring(self, dial: Dial, leg: Leg, ear: Ear, heard: bytearray) -> DialOutcome:
        """Ring every number and SIP URI at once; the first to answer is connected."""
        loop = asyncio.get_running_loop()
        rings = [self._fate(target, dial.timeout_s) for target in dial.targets]
        answering = [ring for ring in rings if ring.outcome == ANSWERED]
        winner = min(answering, key=lambda ring: ring.after_s, default=None)
        dialed = tuple(target.address for target in dial.targets)
        sid = "CA" + secrets.token_hex(16)
        if winner is None:  # the dial ends when the last of them has
            last = max(rings, key=lambda ring: ring.after_s)
            await asyncio.sleep(last.after_s)
            outcomes = {ring.outcome for ring in rings}
            status = next(s for s in (NO_ANSWER, BUSY, FAILED) if s in outcomes)
            self.dials += [DialRecord(leg.call_sid, r.target.address, r.target.kind, r.outcome) for r in rings]
            return DialOutcome(status, sid, 0, dialed, None, "", _sip_response(last))
        await asyncio.sleep(winner.after_s)
        person = self.reachable(winner.target)
        assert person is not None
        connected_at = loop.time()
        greeting = _speech(person.greeting)[: int(dial.time_limit_s * SAMPLE_RATE)]
        ear(greeting)
        await asyncio.sleep(min(len(greeting) / SAMPLE_RATE + person.talk_s, dial.time_limit_s))
        words = _words(heard)
        for ring in rings:
            record = DialRecord(leg.call_sid, ring.target.address, ring.target.kind, ring.outcome)
            if ring is winner:
                record.heard = words
            elif ring.outcome == ANSWERED or ring.after_s >= winner.after_s:
                record.outcome = CANCELED  # still ringing when one answered: Twilio hangs the others up
            self.dials.append(record)
        duration = math.ceil(loop.time() - connected_at)
        return DialOutcome("completed", sid, duration, dialed, winner.target.address, words, _sip_response(winner))

    def _fate(self, target: DialTarget, timeout_s: float) -> _Ring:
        if (target.kind == "number" and not E164.fullmatch(_e164(target.address))) or (
            target.kind == "sip" and not _sip_address(target.address)
        ):
            return _Ring(target, FAILED, 0.0)  # Twilio cannot route it
        person = self.reachable(target)
        if person is None:
            return _Ring(target, NO_ANSWER, min(timeout_s, UNKNOWN_RING_S))
        if person.busy:
            return _Ring(target, BUSY, min(person.answer_after_s, timeout_s))
        if not person.answers or person.answer_after_s > timeout_s:
            return _Ring(target, NO_ANSWER, timeout_s)
        return _Ring(target, ANSWERED, person.answer_after_s)

    async def _join(self, target: DialTarget, dial: Dial, leg: Leg, ear: Ear, heard: bytearray) -> DialOutcome:
        """Be in the room until it ends or the leg's stay (or the dial's ``timeLimit``) is over."""
        loop = asyncio.get_running_loop()
        room = self.conferences.get(target.address)
        if room is None or room.ended_at is not None:
            room = self.conferences[target.address] = Conference(target.address, loop.time())
        me = Participant(
            leg.call_sid,
            loop.time(),
            join_line=leg.join_line,
            muted=target.muted,
            end_on_exit=target.end_on_exit,
            hear=ear,
        )
        room.admit(me, starts=target.start_on_enter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(leg.stay_s, dial.time_limit_s)):
                    await room.wait_ended()
        finally:  # also when the call is hung up mid-conference: the room sees the leg go
            room.leave(me, loop.time())
        words = _words(heard)
        self.dials.append(DialRecord(leg.call_sid, target.address, "conference", JOINED, words))
        return DialOutcome(ANSWERED, None, None, (), f"conference:{target.address}", words)


def parse_dial(verb: ET.Element) -> Dial:
    """Read a ``<Dial>`` element as Twilio does.

    Raises:
        ValueError: Twilio would refuse it: nothing to dial, a ``<Conference>`` beside other nouns
            or without a name, more than ten numbers and SIP URIs, or a ``method`` not GET or POST.
    """
    targets: list[DialTarget] = []
    skipped: list[str] = []
    for noun in verb:
        text = (noun.text or "").strip()
        if noun.tag == "Number":
            targets.append(DialTarget("number", text))
        elif noun.tag == "Sip":
            targets.append(DialTarget("sip", text))
        elif noun.tag == "Conference":
            if not text:
                raise ValueError("<Conference> has no name")
            start = _flag(noun, "startConferenceOnEnter", default=True)
            end, muted = _flag(noun, "endConferenceOnExit", default=False), _flag(noun, "muted", default=False)
            targets.append(DialTarget("conference", text, start_on_enter=start, end_on_exit=end, muted=muted))
        else:
            skipped.append(f"<{noun.tag}>")
    bare = (verb.text or "").strip()
    if bare and not targets and not skipped:  # <Dial>+14155551212</Dial>: text is read only without nouns
        targets.append(DialTarget("number", bare))
    if not targets and not skipped:
        raise ValueError("<Dial> names no one to dial")
    if any(target.kind == "conference" for target in targets) and len(targets) > 1:
        raise ValueError("<Conference> must be the only noun of its <Dial>")
    if len(targets) > MAX_NOUNS:
        raise ValueError(f"<Dial> rings at most {MAX_NOUNS} numbers and SIP URIs at once")
    method = verb.get("method", "POST").upper()
    if method not in ("GET", "POST"):
        raise ValueError(f"<Dial method={method!r}>: GET or POST")
    return Dial(
        tuple(targets),
        timeout_s=_seconds(verb.get("timeout"), DEFAULT_TIMEOUT_S, 600),
        time_limit_s=_seconds(verb.get("timeLimit"), DEFAULT_TIME_LIMIT_S, DEFAULT_TIME_LIMIT_S),
        action=verb.get("action") or None,
        method=method,
        skipped=tuple(skipped),
    )


def _flag(noun: ET.Element, name: str, *, default: bool) -> bool:
    value = noun.get(name)
    return default if value is None else value.strip().lower() == "true"


def _seconds(value: str | None, default: int, most: int) -> float:
    """A whole number of seconds from 1 to ``most``; Twilio uses the default for anything else."""
    if value is None or not value.strip().isdigit():
        return default
    return min(most, max(1, int(value)))


def _e164(number: str) -> str:
    """A number as E.164: separators dropped, a 10-digit (or 1 and 10-digit) US number given +1."""
    digits = number.translate(_SEPARATORS)
    if digits.isdigit() and len(digits) == 10:
        return "+1" + digits
    if digits.isdigit() and len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return digits


def _sip_address(uri: str) -> str:
    """``sip:user@host`` (or ``sips:``) without URI parameters (``;transport=tls``) or headers
    (``?X-Name=v``); "" if it is not a SIP URI."""
    address = uri.split("?", 1)[0].split(";", 1)[0]
    scheme, _, rest = address.partition(":")
    return f"{scheme.lower()}:{rest}" if scheme.lower() in ("sip", "sips") and rest else ""


def _sip_response(ring: _Ring) -> int | None:
    return SIP_RESPONSES.get(ring.outcome) if ring.target.kind == "sip" else None


def _words(ulaw: bytes | bytearray) -> str:
    """The words ``audio.speak`` put in ``ulaw`` ("" if none)."""
    return " ".join(word for _, word in audio.words_heard(ulaw))


@functools.lru_cache(maxsize=64)
def _speech(text: str) -> bytes:
    return audio.speak(text)
