"""One call's conversation, sans-I/O: what relay does with every message of both legs.

``Conversation`` is the protocol core of a call (the ``CallSession`` shell owns the sockets,
the tasks and the clock). Every method takes the time as an argument and never awaits, so the
whole of barge-in, pacing and turn bookkeeping runs the same under a fake clock in tests as
on the event loop. It is composed of two parts it holds, never inherits:

* ``media``, the compiled per-frame core (``relay.fastpath.MediaCore``): caller audio to the
  backend, the agent's audio through the playout ring to Twilio, marks and their echoes. The
  legs' read loops hand it every ``media``, mark echo and audio delta in C; what it leaves is
  handed here once (``twilio_message``, ``backend_message``) and parsed once.
* ``backend``, the current backend session's protocol behind the seam of ``relay.backends``
  (OpenAI Realtime GA, OpenAI GPT-Live): this module speaks only its events and commands.
* for a backend with timed transcripts and no turns (GPT-Live), ``LiveTurns``
  (``relay.live_turns``), which rebuilds the turns and what the caller heard of them.

Paced playout (PROTOCOLS §0.2, §6 #4). The agent's audio leaves in 20 ms frames (160 bytes of
μ-law), never more than ``lead_ms`` ahead of what the caller has heard: frames within the lead
go at once (no added latency), the rest are released by the shared clock's ticks. Every
``mark_frames`` frames, and at the end of each answer, a mark ``<item_id>:<bytes of the item
sent so far>`` follows.

Played position (PROTOCOLS §2.5). A mark echoed before any ``clear`` means its bytes played;
between echoes the position advances on the 8 kHz clock, clamped to what was sent. Marks
echoed because of our ``clear`` mean "cleared", never "played".

Barge-in, when the caller speaks (or presses a key) while audio of an answer is left to hear:
Twilio ``clear`` first (the audible part), drop the ring and every later delta of the item, a
cancel when the backend will not cancel by itself, and a truncate at the played position,
which never passes the produced audio.

GPT-Live is full duplex: the model stops talking by itself when the caller speaks, its audio
streams on (silence), and there is nothing to truncate. Relay clears only what it holds itself
beyond the lead (after a stall), so the caller hears at most the lead of the model's old audio.

The inbound side keeps the backend's audio clock true: the gap filler puts silence where
Twilio's timestamps skip frames and drops duplicates and late frames; audio is held (bounded)
while no backend session has confirmed its format (at start, and while one is replaced).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay import backends as ev
from relay import pricing, twilio
from relay.agents import AgentProfile
from relay.audio_format import BYTES_PER_MS, FRAME_MS
from relay.call_options import CallOptions
from relay.errors import BackendError, BackendFatal, ProtocolError
from relay.fastpath import EV_AUDIO_ERROR, EV_NEW_ITEM, EV_PLAYED, ItemAudio, MediaCore
from relay.live_turns import LiveTurns, TimedTurn
from relay.redaction import Redaction
from relay.store import DEFAULT_TENANT, CallEnd, CallRecord, Record, TurnRecord
from relay.tools.spec import TRANSFER_CALL, TenantTool, TransferTarget
from relay.usage import CallUsage, UsageMeter, UsageRecord

log = logging.getLogger("relay.session")

END_CALL = "end_call"
ESCALATE = "escalate"
TRANSFERRED = "transferred"  # how a call ends whose caller was put through to a person
MAX_SUMMARY = 1000  # characters of an escalation's summary kept
MAX_TOOL_TEXT = 2000  # characters of a tool call's arguments, and of its output, kept in its turn
# GPT-Live's goodbye is the model's own: after the agent calls end_call, the farewell has played
# once the agent has been quiet for a turn's gap and all it said was heard, but not before this
# long (the goodbye may begin just after the call), nor later than the most a goodbye takes.
LIVE_FAREWELL_START_S = 1.0
LIVE_FAREWELL_MAX_MS = 15_000
LIVE_CHECK_S = 0.1


class TwilioSink(Protocol):
    def send(self, message: bytes) -> None: ...
    def send_frames(self, frames: bytes) -> None: ...


class BackendSink(Protocol):
    def send(self, message: bytes) -> None: ...
    def send_append(self, payload: bytes) -> None: ...


@dataclass(slots=True)
class AssistantTurn:
    """One answer: its text and storage here; its audio's byte counts in the media core's
    ``ItemAudio`` (``audio``), read, never written, from this side."""

    seq: int
    item_id: str
    started_at: float  # wall clock
    speech_end_at: float | None  # loop time the caller stopped speaking, if this answers speech
    audio: ItemAudio
    transcript: str = ""  # the full transcript once done, the deltas so far before
    transcript_done: bool = False
    done: bool = False  # its response ended
    stored: bool = False
    interrupted_at: float | None = None  # wall clock of the barge-in that cut it

    @property
    def produced(self) -> int:
        return self.audio.produced

    @property
    def out(self) -> int:
        return self.audio.out

    @property
    def played(self) -> int:
        return self.audio.played

    @property
    def audio_done(self) -> bool:
        return self.audio.ended

    @property
    def interrupted(self) -> bool:
        return self.audio.interrupted

    @property
    def first_out_at(self) -> float | None:
        return self.audio.first_out_at

    @property
    def heard_ms(self) -> int:
        """What the caller heard of it: where it was cut, else what its echoed marks say."""
        heard = self.audio.heard_ms
        return heard if heard is not None else min(self.audio.played, self.audio.produced) // BYTES_PER_MS

    @property
    def v2v_ms(self) -> float | None:
        """Voice to voice: the caller's speech end to the answer's first frame sent to Twilio."""
        first = self.audio.first_out_at
        if first is None or self.speech_end_at is None:
            return None
        return (first - self.speech_end_at) * 1000


@dataclass(slots=True)
class UserTurn:
    seq: int
    item_id: str
    started_at: float
    transcript: str | None = None
    stored: bool = False


@dataclass(slots=True)
class CallStats:
    """Plain counters; read by the server's metrics and stored with the call."""

    frames_in: int = 0
    frames_out: int = 0
    frames_held: int = 0  # caller frames held while no backend session was ready
    frames_dropped: int = 0  # held frames beyond the buffer
    frames_filled: int = 0  # silence frames sent upstream for caller frames Twilio never sent
    frames_late: int = 0  # duplicate or late caller frames dropped
    marks_out: int = 0
    barge_ins: int = 0
    truncates_rejected: int = 0  # truncates the backend refused (it keeps more than was heard)
    backend_errors: int = 0
    backend_sessions: int = 0
    reconnects: int = 0
    recycles: int = 0
    v2v_ms: list[float] = field(default_factory=list)  # per answer, in the order they were sent


@dataclass(frozen=True, slots=True)
class Resumed:
    """A call handed over from another relay: what the store holds of it so far."""

    turns: Sequence[TurnRecord]  # in order
    started_at: float  # the call's first stream began (Twilio bills the call, not each stream)
    last_seq: int  # this stream's turns are numbered after it
    frames_in: int = 0
    frames_out: int = 0

    @property
    def history(self) -> list[tuple[str, str]]:
        """(role, text) of every turn: what the caller said, what they heard of the agent."""
        out = []
        for turn in self.turns:
            text = turn.text_generated if turn.role == "user" else turn.text_heard
            if text:
                out.append((turn.role, text))
        return out


def cut_words(text: str, fraction: float) -> str:
    """The words of ``text`` heard when ``fraction`` of its audio played (no word timings).

    Speech time follows characters far better than word count, so a word counts as heard
    once the audio has passed its middle character.
    """
    limit = len(text) * max(0.0, min(1.0, fraction))
    kept, position = [], 0
    for word in text.split(" "):
        if position + len(word) / 2 > limit:
            break
        kept.append(word)
        position += len(word) + 1
    return " ".join(w for w in kept if w)


class Conversation:
    """The protocol state of one bridged call (``start`` received and verified).

    Composed of a media core (``media``: compiled, or its Python twin when a test passes
    ``core=relay._media_py.MediaCore``), which handles every ``media``, mark echo and audio
    delta and paces the ring out, and a backend adapter per backend session (``backend``,
    the seam of ``relay.backends``). This object handles everything else: the backend's
    events, the turns, barge-in, keys, hang-up and storage.
    """

    __slots__ = (
        "_assistants",
        "_awaiting_answer",
        "_backlog",
        "_dtmf_count",
        "_farewell_from",
        "_greeted",
        "_keys",
        "_keys_due",
        "_live",
        "_live_due",
        "_live_history",
        "_live_v2v",
        "_live_ticking",
        "_meter",
        "_prices",
        "_resumed",
        "_response_active",
        "_say_on_open",
        "_say_after",
        "_seq",
        "_session_seconds",
        "_speaking",
        "_tools_pending",
        "_tool_turns",
        "_respond_when_free",
        "_speech_end_at",
        "_started_at",
        "_stats",
        "_submit",
        "_unstored",
        "_upstream",
        "_users",
        "agent",
        "backend",
        "backend_expires_at",
        "farewell_played",
        "hangup_reason",
        "hangup_requested",
        "transferred_to",
        "media",
        "on_escalate",
        "on_hangup",
        "on_key",
        "on_session_ending",
        "on_tool",
        "on_transfer",
        "on_turn_stored",
        "on_wants_clock",
        "options",
        "resume_handle",
        "start",
        "tenant_id",
        "usage",
    )

    def __init__(
        self,
        start: twilio.Start,
        agent: AgentProfile,
        twilio_out: TwilioSink,
        submit: Callable[[Record], None],
        options: CallOptions = CallOptions(),
        *,
        prices: pricing.PriceTable | None = None,
        resumed: Resumed | None = None,
        core: Callable[..., Any] = MediaCore,
        redaction: Redaction | None = None,
    ) -> None:
        backend = ev.for_agent(agent)
        self.media: MediaCore = core(
            twilio_out,
            start.stream_sid,
            lead_ms=options.live_lead_ms if backend.timed else options.lead_ms,
            mark_frames=options.mark_frames,
            held_frames=options.presession_buffer_ms // FRAME_MS,
            max_gap_fill_ms=options.max_gap_fill_ms,
            pace_ms=options.pacer_interval_ms,
            preroll_frames=options.live_preroll_ms // FRAME_MS if backend.replays else 0,
        )
        self.media.on_event = self._media_event
        self.media.wire = backend.wire  # how the backend's audio is framed and encoded
        self.start = start
        self.agent = agent
        self.options = options
        # What is stored passes through the tenant's redaction (the live conversation does not).
        self._submit = submit if redaction is None else (lambda record: submit(redaction.record(record)))
        self._stats = CallStats()
        params = start.custom_parameters
        self.tenant_id = params.get("tenant") or DEFAULT_TENANT
        # Hooks for the shell: the agent asked to hang up, or the farewell has played; keys
        # wait to be sent (``tick`` wanted; the media core has its own clock hook).
        self.on_hangup: Callable[[], None] = lambda: None
        self.on_wants_clock: Callable[[], None] = lambda: None
        # The agent escalated a matter (``escalate``): the shell reaches the person on call and
        # says what the agent tells the caller; a key the caller pressed (a call that asks for one).
        self.on_escalate: Callable[[str], dict[str, Any]] = lambda summary: {"error": "no one to escalate to"}
        self.on_key: Callable[[str], None] = lambda digit: None
        # The model called one of the tenant's tools (its arguments checked): the shell calls the
        # endpoint off the frame path and hands the output back (``tool_answered``).
        self.on_tool: Callable[[str, TenantTool, dict[str, Any]], None] = lambda call_id, tool, arguments: None
        # The model asked to put the caller through (``transfer_call``): the shell readies a cold
        # transfer (None: the call ends for it once the agent's line is heard) or begins a warm one
        # (the output the model gets while it runs).
        self.on_transfer: Callable[[TransferTarget, str], dict[str, Any] | None] = lambda target, summary: {
            "error": "transfers are unavailable"
        }
        # The backend will end its session in so many seconds (Gemini's goAway): the shell has a
        # fresh one take over now, between turns.
        self.on_session_ending: Callable[[float], None] = lambda seconds: None
        # A turn was stored: (its record, the answer or None for the caller's); metrics, traces.
        self.on_turn_stored: Callable[[TurnRecord, AssistantTurn | None], None] = lambda record, turn: None
        # ---- backend leg
        self.backend: ev.Backend = backend  # the (last) session's protocol
        self.backend_expires_at: float | None = None  # when the session says it ends (Unix s)
        self.resume_handle = ""  # what a new session resumes this one from (Gemini), if any
        # A backend with timed transcripts and no turns (GPT-Live): its turns, rebuilt here.
        self._live = LiveTurns(options.live_turn_gap_ms) if backend.timed else None
        self._live_ticking = False
        self._live_due = 0.0  # loop time of the next look at GPT-Live's turns
        self._live_history: list[tuple[int, str, str]] = []  # stored: (seq, role, what was said / heard)
        self._live_v2v: list[float] = []
        self._session_seconds: list[float] = []  # each session's billed length (latest report)
        self._upstream: BackendSink | None = None  # the current session's socket, if any
        self._greeted = False
        self._say_on_open: str | None = None
        self._backlog: list[bytes] = []  # client events waiting for a ready backend
        self._response_active = False
        # Tool calls whose answers are on their way: call id -> (the tool, its arguments, its
        # turn's seq, when it was called); the model is asked to go on once all are in.
        self._tools_pending: dict[str, tuple[TenantTool, dict[str, Any], int, float]] = {}
        self._respond_when_free = False  # answers are in; a response (a filler line) is still running
        self._tool_turns = 0  # stored, for the call's count of turns
        self._speaking = False  # the caller is mid-utterance (speech_started, not stopped)
        self._awaiting_answer = False  # the caller's turn is committed; its response has not begun
        # ---- turns
        self._seq = 0
        self._users: dict[str, UserTurn] = {}
        self._assistants: dict[str, AssistantTurn] = {}
        self._unstored: dict[str, AssistantTurn] = {}  # answers not stored yet (a few at most)
        self._speech_end_at: float | None = None
        self._keys = ""  # collected, sent at ``_keys_due``
        self._keys_due: float | None = None
        self._dtmf_count = 0
        self.hangup_requested = False
        self.hangup_reason = "agent_hangup"  # how the call ends once the farewell has played
        self.transferred_to = ""  # where the caller is put through to, when the call ends ``transferred``
        self._say_after: int | None = None  # the line said before hanging up is the first answer past this seq
        self.farewell_played = False
        self._farewell_from = 0.0  # (GPT-Live) loop time from which the farewell may count as played
        # ---- usage: the backend's accounting, priced and stored as the call ends
        self._meter = UsageMeter()
        self._prices = prices if prices is not None else pricing.shipped()
        self.usage: UsageRecord | None = None  # set by ``finish``
        self._started_at = time.time()
        # ---- a call handed over from another relay: its turns go on from the store's
        self._resumed = resumed
        if resumed is not None:
            self._seq = resumed.last_seq
            self._greeted = True  # the caller was greeted on the first relay
        self._submit(
            CallRecord(
                tenant_id=self.tenant_id,
                call_sid=start.call_sid,
                stream_sid=start.stream_sid,
                started_at=self._started_at,
                account_sid=start.account_sid,
                from_number=params.get("from", ""),
                to_number=params.get("to", ""),
            )
        )

    @property
    def call_sid(self) -> str:
        return self.start.call_sid

    @property
    def stats(self) -> CallStats:
        """The call's counters, the media core's per-frame ones read in."""
        stats, media = self._stats, self.media
        stats.frames_in, stats.frames_out = media.frames_in, media.frames_out
        stats.frames_held, stats.frames_dropped = media.frames_held, media.frames_dropped
        stats.frames_filled, stats.frames_late = media.frames_filled, media.frames_late
        stats.marks_out = media.marks_out
        stats.v2v_ms = [v for turn in self._assistants.values() if (v := turn.v2v_ms) is not None] + self._live_v2v
        return stats

    # ================================================================== backend sessions

    def attach_backend(self, upstream: BackendSink, reason: str = "start") -> None:
        """Make ``upstream`` the call's backend session and configure it.

        ``reason``: ``"start"``; ``"recycle"`` (a fresh session takes over before the old one's
        cap) or ``"reconnect"`` (the old one dropped). Both of the latter are seeded with the
        conversation so far. Caller audio is held until it confirms μ-law, then flushed.
        """
        if reason != "start":
            self._forget_backend()
        backend = self.backend = ev.for_agent(self.agent, len(self._session_seconds))
        self._upstream = upstream
        self.media.attach(upstream, replay=reason != "start")
        self.backend_expires_at = None
        if self._live is not None:
            self._live.new_session()
        self._session_seconds.append(0.0)
        self._stats.backend_sessions += 1
        if reason == "recycle":
            self._stats.recycles += 1
        elif reason == "reconnect":
            self._stats.reconnects += 1
            self._say_on_open = self.options.reconnect_message or None
        seeded = reason != "start" or self._resumed is not None
        history = self.history() if seeded else []
        for message in backend.open(self.agent, history, self.options.seed_max_chars, self.resume_handle):
            upstream.send(message)

    @property
    def session_index(self) -> int:
        """The number of the current backend session in this call (0 for the first)."""
        return len(self._session_seconds) - 1

    def retired_message(self, index: int, message: bytes | bytearray) -> None:
        """A message from backend session ``index`` after it was retired (its last words while it
        closes): only what it says it used counts."""
        for event in ev.for_agent(self.agent).parse(message):
            if isinstance(event, ev.SessionSeconds) and 0 <= index < len(self._session_seconds):
                self._session_seconds[index] = event.seconds

    def backend_lost(self, now: float) -> None:
        """The backend session ended unexpectedly: what it produced still plays; the rest waits."""
        if not self.media.gate_open:
            self.resume_handle = ""  # (a session that never came up may have refused the handle)
        self._forget_backend()
        self.media.flush(now)
        self._check_stored()

    def _forget_backend(self) -> None:
        """The session is gone: its state goes with it, and no more of its answers will come."""
        self._upstream = None
        self.media.detach()
        self._response_active = self._speaking = self._awaiting_answer = False
        for turn in self._assistants.values():
            turn.done = True
        self.media.end_all()
        if self._live is not None:
            self._live.end_session()
            self._store_live()

    @property
    def backend_ready(self) -> bool:
        """The current backend session confirmed a μ-law session: caller audio flows to it."""
        return self._upstream is not None and self.media.gate_open

    @property
    def idle(self) -> bool:
        """Nobody is talking and nothing is left to hear: a backend session can be swapped."""
        if self._live is not None:
            return (
                self.media.gate_open
                and self._live.idle
                and self.media.buffered <= self.options.live_lead_ms * BYTES_PER_MS
                and not self.hangup_requested
                and not self._keys
            )
        return (
            self.media.gate_open
            and not self._response_active
            and not self._speaking
            and not self._awaiting_answer
            and not self.media.buffered
            and not self.media.marks_pending
            and not self.hangup_requested
            and not self._keys
            and all(user.transcript is not None for user in self._users.values())
        )

    def history(self) -> list[tuple[str, str]]:
        """The conversation so far as (role, text): what the caller said and what they heard
        (on the relays the call was on before this one too)."""
        turns: list[tuple[int, str, str]] = []
        for user in self._users.values():
            if user.transcript:
                turns.append((user.seq, "user", user.transcript))
        for turn in self._assistants.values():
            if turn.stored or turn.done:
                text = self._heard_text(turn)
                if text:
                    turns.append((turn.seq, "assistant", text))
        if self._live is not None:
            turns += [entry for entry in self._live_history if entry[2]]
            turns += [(t.seq, t.role, t.text) for t in self._live.turns if t.role == "user" and t.text]
        before = self._resumed.history if self._resumed is not None else []
        return before + [(role, text) for _, role, text in sorted(turns)]

    def _to_backend(self, message: bytes | None) -> None:
        if message is None:
            return  # the backend has no such command
        if self._upstream is not None and self.media.gate_open:
            self._upstream.send(message)
        else:
            self._backlog.append(message)

    # ================================================================== Twilio → backend

    def twilio_message(self, message: bytes, now: float) -> str | None:
        """Handle one message from Twilio the media core handed up; returns ``"stop"`` when
        the call ended. Parsed here once (a ``media`` or mark in an unusual shape lands here too).

        Raises:
            ProtocolError: malformed, or not an event a started stream may send.
        """
        event = twilio.parse_event(message)
        if isinstance(event, twilio.Media):
            self.media.caller_audio(event.payload, event.timestamp, now)
        elif isinstance(event, twilio.Mark):
            self.media.mark(event.name, now)
        elif isinstance(event, twilio.Stop):
            return "stop"
        elif isinstance(event, twilio.Dtmf):
            self.dtmf(event.digit, now)
        elif isinstance(event, twilio.Start):
            raise ProtocolError("a second start on one stream")
        return None

    def _open_gate(self, now: float) -> None:
        assert self._upstream is not None
        self.media.open_gate()
        backlog, self._backlog = [*self.backend.after_ready(), *self._backlog], []
        for message in backlog:
            self._upstream.send(message)
        if not self._greeted:
            self._greeted = True
            if self.agent.greeting:
                self._upstream.send(self.backend.say(self.agent.greeting))
        elif self._say_on_open:
            self._upstream.send(self.backend.say(self._say_on_open))
        self._say_on_open = None

    def _media_event(self, kind: int, item_id: str, now: float) -> None:
        """What the media core reports: never a steady frame, only a change for a turn."""
        if kind == EV_PLAYED:
            self._check_stored()
            self._check_farewell()
        elif kind == EV_NEW_ITEM:
            self._new_assistant(item_id)
        elif kind == EV_AUDIO_ERROR:
            self._stats.backend_errors += 1
            log.warning("call %s: audio delta dropped: not base64, or more than the playout ring holds", self.call_sid)

    def tick(self, now: float) -> bool:
        """The keys' clock: send them once due; and GPT-Live's turns: close the quiet ones,
        store those whose heard text is known. False: no more ticks wanted."""
        if self._keys_due is not None and now >= self._keys_due:
            self._send_keys(now)
        if self._live_ticking and now >= self._live_due:
            # Turns close after hundreds of ms of quiet: a look every LIVE_CHECK_S is plenty, and
            # spares the shared clock's every tick a pass over them.
            self._live_due = now + LIVE_CHECK_S
            self._live_ticking = self._live_tick(now)
        return self._keys_due is not None or self._live_ticking

    def _want_tick(self) -> None:
        if not self._live_ticking:
            self._live_ticking = True
            self.on_wants_clock()  # (asking again while keys wait adds nothing)

    def _live_tick(self, now: float) -> bool:
        live = self._live
        assert live is not None
        live.close_quiet(now)
        self._store_live()
        if self.hangup_requested and not self.farewell_played and now >= self._farewell_from and not live.agent_talking:
            self.farewell_played = True
            self.on_hangup()
        return not live.idle or (self.hangup_requested and not self.farewell_played)

    def dtmf(self, digit: str, now: float) -> None:
        """A key: collected until '#' or ``dtmf_timeout_ms`` of no more keys, then sent as user input."""
        self.on_key(digit[:1])
        self._keys += digit[:1]
        self._keys_due = now + self.options.dtmf_timeout_ms / 1000
        if digit == "#" or len(self._keys) >= 32:
            self._send_keys(now)
        else:
            self.on_wants_clock()

    def _send_keys(self, now: float) -> None:
        keys, self._keys, self._keys_due = self._keys, "", None
        if not keys:
            return
        self._barge_in(now, keypress=True)
        self._dtmf_count += 1
        turn = UserTurn(self._next_seq(), f"dtmf_{self._dtmf_count}", time.time(), f"[DTMF {keys}]")
        self._users[turn.item_id] = turn
        self._store_user(turn)
        if self.hangup_requested:
            return  # kept, not answered: the agent's last line is on its way
        for message in self.backend.user_text(f"The caller pressed these keys on the phone keypad: {keys}"):
            self._to_backend(message)

    # ================================================================== backend → Twilio

    def backend_message(self, message: bytes | bytearray, now: float) -> None:
        """Handle one backend message the media core handed up (parsed here once).

        Raises:
            BackendError: the backend session cannot serve a phone call (ends the call).
        """
        for event in self.backend.parse(message):
            self._backend_event(event, now)

    def _backend_event(self, event: ev.Event, now: float) -> None:
        media = self.media
        if isinstance(event, ev.AnswerAudio):
            if not event.item_id and self._live is not None:
                # GPT-Live's stream, handed up: read here in its turn after other events, or with
                # no segment open (the first audio, or the first after a clear: a new segment,
                # where the stream goes on).
                segment = self._live.open_segment()
                if segment is None:
                    segment = self._live.next_segment()
                    self._live.add_segment(media.live_item(segment))
                event = ev.AnswerAudio(segment, event.payload)
            media.agent_audio(event.item_id, event.payload, now)
        elif isinstance(event, ev.TimedText):
            self._timed_text(event, now)
        elif isinstance(event, ev.Ready):
            self.backend_expires_at = event.expires_at
            if not media.gate_open and self._upstream is not None:
                self._open_gate(now)
        elif isinstance(event, ev.CallerSpeechStarted):
            self._speaking = True
            self._barge_in(now)
        elif isinstance(event, ev.CallerSpeechStopped):
            self._speaking = False
            end = event.audio_end_ms
            self._speech_end_at = media.audio_ms_to_time(end) if end is not None else None
        elif isinstance(event, ev.CallerTurn):
            self._speaking = False
            self._awaiting_answer = True
            self._user_turn(event.item_id)
        elif isinstance(event, ev.CallerTranscript):
            user = self._user_turn(event.item_id)
            user.transcript = event.text
            self._store_user(user)
            if event.usage is not None:
                self._meter.transcribed(event.usage)
        elif isinstance(event, ev.ResponseStarted):
            self._meter.response_started()
            self._response_active = True
            self._awaiting_answer = False
        elif isinstance(event, ev.AnswerStarted):
            self._new_assistant(event.item_id)
            if self.backend.itemless:
                media.live_item(event.item_id)  # its audio names no answer: this one's comes next
        elif isinstance(event, ev.AnswerTranscript):
            turn = self._assistants.get(event.item_id)
            if turn is None:
                return
            if event.final:
                turn.transcript, turn.transcript_done = event.text, True
            elif not turn.transcript_done:
                turn.transcript += event.text
        elif isinstance(event, ev.AnswerAudioDone):
            if event.item_id in self._assistants:
                media.end_item(event.item_id)
                media.flush(now)
        elif isinstance(event, ev.ResponseDone):
            self._response_done(event, now)
        elif isinstance(event, ev.ResumeHandle):
            self.resume_handle = event.handle
        elif isinstance(event, ev.SessionEnding):
            log.info("call %s: the backend ends its session in %.0f s", self.call_sid, event.seconds)
            self.backend_expires_at = time.time() + event.seconds
            self.on_session_ending(event.seconds)
        elif isinstance(event, ev.SessionSeconds):
            self._session_seconds[-1] = event.seconds  # cumulative: the latest is the session's
        elif isinstance(event, ev.SessionClosed):
            log.info("call %s: the backend closed its session (%s)", self.call_sid, event.reason)
            if event.reason == "content":
                raise BackendFatal("the backend ended the session over its content", "backend_content")
        elif isinstance(event, ev.Refused):
            self._stats.backend_errors += 1
            raise BackendError(event.reason)
        elif isinstance(event, ev.Failed):
            self._stats.backend_errors += 1
            if event.fatal:
                raise BackendFatal(event.reason, "backend_refused")
            if event.about == "truncate":
                self._stats.truncates_rejected += 1
            if event.malformed:
                # One malformed event is logged and skipped; the call goes on.
                log.warning("call %s: bad event from backend: %s", self.call_sid, event.reason)
            else:
                log.warning("call %s: %s", self.call_sid, event.reason)

    def _timed_text(self, event: ev.TimedText, now: float) -> None:
        """A GPT-Live transcript fragment: onto its speaker's turn; the caller's may cut what
        relay holds beyond the lead."""
        live = self._live
        if live is None:
            return
        live.fragment(event.role, event.text, event.start_ms, event.end_ms, now, time.time(), self._next_seq)
        if event.role == "user":
            self._barge_in(now)
        self._want_tick()

    def say(self, line: str) -> None:
        """The agent says ``line`` now (the shell waits for a pause between turns first)."""
        self._to_backend(self.backend.say(line))

    def tell(self, note: str) -> None:
        """A word for the agent from outside the call, which it passes on to the caller."""
        for message in self.backend.user_text(f"{ev.NOTE_PREFIX}{note}"):
            self._to_backend(message)

    def stop_talking(self, now: float) -> None:
        """What the agent is saying stops: Twilio drops what it holds, the backend's answer is cut."""
        self._barge_in(now, keypress=True)

    def say_and_hang_up(self, message: str, now: float, reason: str) -> None:
        """What the agent is saying stops, it says ``message``, and the call ends (``reason``) once
        that has been heard: the message after an answering machine's beep, say."""
        if self.hangup_requested:
            return  # the agent is hanging up already
        self.stop_talking(now)  # cut what plays, cancel what is being made
        self.hangup_requested = True
        self.hangup_reason = reason
        self._to_backend(self.backend.say(message))
        if self._live is not None:
            # GPT-Live's line is known played as its farewell is: quiet for a turn's gap.
            self._farewell_from = now + LIVE_FAREWELL_START_S
            self._want_tick()
            self.on_hangup()
        else:
            # The hang-up waits for the line's response to be done, so that the wait for its
            # last mark knows how long the line is.
            self._say_after = self._seq

    def _response_done(self, event: ev.ResponseDone, now: float) -> None:
        if self._live is not None:  # a delegated response: its tool calls, nothing else
            for call in event.tool_calls:
                self._tool_call(call, now)  # (the delegation goes on by itself once all are answered)
            return
        after = self._say_after
        if after is not None and any(
            turn.seq > after for turn in map(self._assistants.get, event.item_ids) if turn is not None
        ):
            self._say_after = None
            self.on_hangup()
        self._response_active = False
        self._meter.response_done(event.usage, event.item_ids)
        answered = [call for call in event.tool_calls if self._tool_call(call, now)]
        if (answered or self._respond_when_free) and not self._tools_pending and not self.hangup_requested:
            # (a tool still running: the model goes on once its answer is in, ``tool_answered``)
            self._respond_when_free = False
            self._to_backend(self.backend.respond())
        elif answered:
            self._respond_when_free = True
        for item_id in event.item_ids:
            turn = self._assistants.get(item_id)
            if turn is not None:
                turn.done = True
                self.media.end_item(item_id)
        self.media.flush(now)
        self._check_stored()
        if self.hangup_requested:
            self._check_farewell()

    def _tool_call(self, call: ev.ToolCall, now: float) -> bool:
        """Answer one of the model's tool calls; True when the model should speak about the answer
        (one response asked for per response the calls came in, however many they are)."""
        if call.name == END_CALL and self.agent.end_call_tool:
            log.info("call %s: the agent ends the call", self.call_sid)
            self.hangup_requested = True
            if self._live is not None:
                # The live model says its goodbye as the delegated call comes: the farewell has
                # played once the agent has been quiet for a turn's gap, and all it said was heard.
                # The delegation is answered all the same: the live model holds the conversation
                # until its delegation says something (BACKENDS §2.5).
                self._farewell_from = now + LIVE_FAREWELL_START_S
                self._want_tick()
                for message in self.backend.tool_result(call.call_id, {"ok": True, "note": "the call ends now"}):
                    self._to_backend(message)
            self.on_hangup()
            return False
        if call.name == ESCALATE and self.agent.escalate_tool:
            try:
                arguments = orjson.loads(call.arguments or "{}")
            except orjson.JSONDecodeError:
                arguments = {}
            summary = arguments.get("summary") if isinstance(arguments, dict) else None
            if not isinstance(summary, str) or not summary.strip():
                output: dict[str, Any] = {"error": "give a summary of the matter"}
            else:
                log.info("call %s: the agent escalates the matter", self.call_sid)
                output = self.on_escalate(summary.strip()[:MAX_SUMMARY])
            for message in self.backend.tool_result(call.call_id, output):
                self._to_backend(message)
            return True
        if call.name == TRANSFER_CALL and self.agent.transfer_targets:
            return self._transfer_call(call, now)
        tool = next((t for t in self.agent.tools if t.name == call.name), None)
        if tool is not None:
            arguments, problem = tool.check_arguments(call.arguments)
            seq = self._next_seq()
            if arguments is None:
                self._store_tool(seq, call.call_id, tool.name, call.arguments, {"error": problem}, time.time())
                for message in self.backend.tool_result(call.call_id, {"error": problem}):
                    self._to_backend(message)
                return True
            self._tools_pending[call.call_id] = (tool, arguments, seq, time.time())
            log.info("call %s: the agent calls %s", self.call_sid, tool.name)
            self.on_tool(call.call_id, tool, arguments)
            return False
        # Not a tool relay offered: say so, and have the model speak on rather than wait for an
        # answer that never comes.
        for message in self.backend.tool_result(call.call_id, {"error": f"no tool named {call.name[:40]!r}"}):
            self._to_backend(message)
        return True

    def _transfer_call(self, call: ev.ToolCall, now: float) -> bool:
        """``transfer_call``: a cold transfer ends the stream once the agent's line is heard (the
        after-stream hook dials); a warm one runs beside the call, the model told meanwhile."""
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        label = arguments.get("target") if isinstance(arguments, dict) else None
        summary = arguments.get("summary") if isinstance(arguments, dict) else None
        target = next((t for t in self.agent.transfer_targets if t.label == label), None)
        if target is None:
            labels = ", ".join(t.label for t in self.agent.transfer_targets)
            output: dict[str, Any] | None = {"error": f"no one called {str(label)[:60]!r}; the targets are {labels}"}
        else:
            output = self.on_transfer(target, str(summary or "")[:MAX_SUMMARY])
        self._store_tool(self._next_seq(), call.call_id, TRANSFER_CALL, call.arguments, output or {}, time.time())
        if output is not None:
            for message in self.backend.tool_result(call.call_id, output):
                self._to_backend(message)
            return True
        log.info("call %s: the agent puts the caller through to %s", self.call_sid, target and target.label)
        self.hangup_requested = True
        self.hangup_reason = TRANSFERRED
        if self._live is not None:  # as for end_call: the live model's line, then the delegation's answer
            self._farewell_from = now + LIVE_FAREWELL_START_S
            self._want_tick()
            for message in self.backend.tool_result(call.call_id, {"ok": True, "note": "putting the caller through"}):
                self._to_backend(message)
        self.on_hangup()
        return False

    def tool_answered(self, call_id: str, output: dict[str, Any], now: float) -> None:
        """A tenant tool's output is in: to the model (which goes on once every answer is in) and
        into the call's turns."""
        pending = self._tools_pending.pop(call_id, None)
        if pending is None:
            return
        tool, arguments, seq, started_at = pending
        self._store_tool(seq, call_id, tool.name, orjson.dumps(arguments).decode(), output, started_at)
        for message in self.backend.tool_result(call_id, output):
            self._to_backend(message)
        if self._tools_pending or self.hangup_requested or self._live is not None:
            return  # (a delegated call goes on by itself once answered)
        if self._response_active:
            self._respond_when_free = True  # a filler line is playing: the answer follows it
        else:
            self._respond_when_free = False
            self._to_backend(self.backend.respond())

    def tool_slow(self, call_id: str) -> None:
        """A tool's answer is slow in coming: the agent says its filler line, if it has one and is
        not talking already."""
        pending = self._tools_pending.get(call_id)
        if pending is None or not pending[0].filler or self._response_active or self.hangup_requested:
            return
        if self._live is None:  # (the live model fills the wait itself)
            self.say(pending[0].filler)
            # Busy from now, not from the backend's response.created: an answer arriving in between
            # must wait for the filler's response, which a second response.create would collide with.
            self._response_active = True

    def _store_tool(
        self, seq: int, call_id: str, name: str, arguments: str, output: dict[str, Any], started_at: float
    ) -> None:
        """A tool call and its output, as a turn of role ``tool`` (each cut to ``MAX_TOOL_TEXT``)."""
        record = TurnRecord(
            tenant_id=self.tenant_id,
            call_sid=self.call_sid,
            seq=seq,
            role="tool",
            started_at=started_at,
            ended_at=time.time(),
            item_id=call_id[:100],
            text_generated=f"{name} {arguments}"[:MAX_TOOL_TEXT],
            text_heard=orjson.dumps(output).decode()[:MAX_TOOL_TEXT],
        )
        self._tool_turns += 1
        self._submit(record)
        self.on_turn_stored(record, None)

    def _check_farewell(self) -> None:
        """The agent asked to hang up: has everything it said been heard?"""
        if self._live is not None:
            return  # GPT-Live's farewell is known from its turns (``_live_tick``)
        if not self.hangup_requested or self.farewell_played or self.media.buffered or self.media.marks_pending:
            return
        if self._say_after is not None:
            return  # the line has not been made yet
        if any(not turn.done for turn in self._assistants.values()):
            return
        self.farewell_played = True
        self.on_hangup()

    def farewell_ms_left(self) -> int:
        """The audio not yet heard: what a hang-up waits for (bounded by the shell)."""
        if self._live is not None:
            return LIVE_FAREWELL_MAX_MS  # the model's own goodbye, of a length only it knows
        queued = sum(turn.out - turn.played for turn in self._assistants.values() if not turn.interrupted)
        return (self.media.buffered + max(0, queued)) // BYTES_PER_MS

    def _barge_in(self, now: float, *, keypress: bool = False) -> None:
        if self.hangup_requested:
            return  # the farewell plays in full, whoever speaks over it
        media, backend = self.media, self.backend
        if self._live is not None:
            # GPT-Live yields by itself: relay clears only what it holds beyond the lead (after a
            # stall), old audio the caller would otherwise hear for longer than the lead.
            if media.buffered > self.options.live_lead_ms * BYTES_PER_MS and media.interrupt(now) is not None:
                self._stats.barge_ins += 1
            return
        current = media.current
        turn = self._assistants.get(current.item_id) if current is not None else None
        if keypress and self._response_active and not (turn and not turn.done and not turn.interrupted):
            self._to_backend(backend.cancel())  # still thinking: no audio to truncate
        cut = media.interrupt(now)
        if cut is None:
            return
        self._stats.barge_ins += 1
        turn = self._assistants.get(cut.item_id)
        if turn is not None:
            turn.interrupted_at = time.time()
        if cut.heard_ms is not None:
            if (
                self._response_active
                and not (turn is not None and turn.done)
                and (keypress or not backend.server_cancels)
            ):
                self._to_backend(backend.cancel())  # the server will not cancel by itself
            # The truncate keeps the model's memory to what the caller actually heard.
            self._to_backend(backend.truncate(cut.item_id, cut.heard_ms))
        self._check_stored()

    # ================================================================== turns

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _user_turn(self, item_id: str) -> UserTurn:
        turn = self._users.get(item_id)
        if turn is None:
            turn = self._users[item_id] = UserTurn(self._next_seq(), item_id, time.time())
        return turn

    def _new_assistant(self, item_id: str) -> AssistantTurn:
        turn = self._assistants.get(item_id)
        if turn is None:
            turn = AssistantTurn(
                self._next_seq(), item_id, time.time(), self._speech_end_at, self.media.add_item(item_id)
            )
            self._assistants[item_id] = self._unstored[item_id] = turn
            self._speech_end_at = None
        return turn

    def _store_user(self, turn: UserTurn) -> None:
        if turn.stored:
            return
        turn.stored = True
        record = TurnRecord(
            tenant_id=self.tenant_id,
            call_sid=self.call_sid,
            seq=turn.seq,
            role="user",
            started_at=turn.started_at,
            ended_at=time.time(),
            item_id=turn.item_id,
            text_generated=turn.transcript,
            text_heard=turn.transcript,
        )
        self._submit(record)
        self.on_turn_stored(record, None)

    def _store_live(self, turns: list[TimedTurn] | None = None) -> None:
        """Store GPT-Live's turns that are complete (``turns``: these, at the call's end)."""
        assert self._live is not None
        for turn in self._live.ready() if turns is None else turns:
            heard = turn.heard if turn.role == "assistant" else turn.text
            v2v = turn.v2v_ms if turn.role == "assistant" else None
            record = TurnRecord(
                tenant_id=self.tenant_id,
                call_sid=self.call_sid,
                seq=turn.seq,
                role=turn.role,
                started_at=turn.started_at,
                ended_at=time.time(),
                item_id=f"live{turn.session}",
                text_generated=turn.text,
                text_heard=heard or "",
                interrupted=turn.role == "assistant" and (heard or "") != turn.text,
                audio_ms=turn.end_ms - turn.start_ms if turn.role == "assistant" else 0,
                voice_to_voice_ms=v2v,
                fragments=orjson.dumps(turn.fragments).decode(),
            )
            self._live_history.append((turn.seq, turn.role, record.text_heard or ""))
            if v2v is not None:
                self._live_v2v.append(v2v)
            self._submit(record)
            self.on_turn_stored(record, None)

    def _heard_text(self, turn: AssistantTurn) -> str:
        heard_ms = turn.heard_ms
        audio_ms = turn.produced // BYTES_PER_MS
        text = turn.transcript
        return text if heard_ms >= audio_ms else cut_words(text, heard_ms / max(1, audio_ms))

    def _check_stored(self) -> None:
        """Store every answer whose text and heard part are both known (only a done one can be)."""
        for turn in list(self._unstored.values()):
            if turn.done:
                self._maybe_store_assistant(turn)

    def _maybe_store_assistant(self, turn: AssistantTurn, *, final: bool = False) -> None:
        """Store an answer once its text and what the caller heard of it are both known."""
        if turn.stored:
            return
        played_out = turn.audio_done and turn.played >= turn.produced
        if not final and not (turn.done and (played_out or turn.interrupted)):
            return
        turn.stored = True
        self._unstored.pop(turn.item_id, None)
        heard = self._heard_text(turn)
        v2v = turn.v2v_ms
        record = TurnRecord(
            tenant_id=self.tenant_id,
            call_sid=self.call_sid,
            seq=turn.seq,
            role="assistant",
            started_at=turn.started_at,
            ended_at=time.time(),
            item_id=turn.item_id,
            text_generated=turn.transcript,
            text_heard=heard,
            interrupted=turn.interrupted or heard != turn.transcript,
            audio_ms=turn.produced // BYTES_PER_MS,
            voice_to_voice_ms=round(v2v, 1) if v2v is not None else None,
        )
        self._submit(record)
        self.on_turn_stored(record, turn)

    def finish(self, end_reason: str) -> None:
        """Submit every turn still open and the call's end: nothing said is left unstored."""
        if self._keys:  # pressed as the call ended: stored, though the model will not hear them
            self._dtmf_count += 1
            keys, self._keys, self._keys_due = self._keys, "", None
            self._users[f"dtmf_{self._dtmf_count}"] = UserTurn(
                self._next_seq(), f"dtmf_{self._dtmf_count}", time.time(), f"[DTMF {keys}]"
            )
        for user in self._users.values():
            self._store_user(user)
        for call_id, (tool, arguments, seq, started_at) in list(self._tools_pending.items()):
            output = {"error": "the call ended before the answer came"}
            self._store_tool(seq, call_id, tool.name, orjson.dumps(arguments).decode(), output, started_at)
        self._tools_pending.clear()
        for assistant in self._assistants.values():
            self._maybe_store_assistant(assistant, final=True)
        if self._live is not None:
            self._store_live(self._live.finish())
        stats = self.stats
        v2v = stats.v2v_ms
        ended_at = time.time()
        resumed = self._resumed
        self._submit(
            CallEnd(
                tenant_id=self.tenant_id,
                call_sid=self.call_sid,
                ended_at=ended_at,
                end_reason=end_reason or "error",
                frames_in=stats.frames_in + (resumed.frames_in if resumed else 0),
                frames_out=stats.frames_out + (resumed.frames_out if resumed else 0),
                turns=len(self._users)
                + len(self._assistants)
                + len(self._live_history)
                + self._tool_turns
                + (len(resumed.turns) if resumed else 0),
                v2v_p50_ms=round(statistics.median(v2v), 1) if v2v else None,
                v2v_max_ms=round(max(v2v), 1) if v2v else None,
                transferred_to=self.transferred_to if end_reason == TRANSFERRED else "",
            )
        )
        self.usage = self._bill(ended_at)
        self._submit(self.usage)

    def _bill(self, ended_at: float) -> UsageRecord:
        """What the call used (the backend's accounting, estimated where it gave none) and cost."""
        answers_ms = {item: turn.produced // BYTES_PER_MS for item, turn in self._assistants.items()}
        caller_ms = self.media.frames_in * FRAME_MS
        tokens, estimated = self._meter.total(answers_ms, caller_ms)
        seconds = max(0.0, ended_at - self._started_at)
        if self._live is not None:
            # Billed per second of session, as the backend counts it; a session that never said
            # is counted as the stream's length, and marked estimated.
            reported = sum(self._session_seconds)
            estimated = not reported and bool(self._session_seconds)
            seconds = reported or seconds
            answers_ms = {"live": self.media.frames_out * FRAME_MS}
        agent = self.agent
        # Twilio bills the call's started minutes once: a stream after a hand-over adds those
        # the call has run into since the previous one ended.
        call_start = self._resumed.started_at if self._resumed is not None else self._started_at
        minutes = math.ceil((ended_at - call_start) / 60) - math.ceil(max(0.0, self._started_at - call_start) / 60)
        used = CallUsage(
            backend=agent.backend,
            model=agent.model,
            transcription_model=agent.transcription_model,
            tokens=tokens,
            transcription=self._meter.transcription,
            seconds=seconds,
            twilio_minutes=max(0, minutes),
            audio_in_seconds=caller_ms / 1000,
            audio_out_seconds=sum(answers_ms.values()) / 1000,
            estimated=estimated,
        )
        return pricing.bill(
            used,
            self._prices,
            call_sid=self.call_sid,
            stream_sid=self.start.stream_sid,
            tenant_id=self.tenant_id,
            agent_id=self.start.custom_parameters.get("agent") or "default",
            # A call relay placed (its stream names the job) is billed at Twilio's outbound rate.
            direction="outbound" if self.start.custom_parameters.get("job") else "inbound",
            started_at=self._started_at,
            ended_at=ended_at,
        )
