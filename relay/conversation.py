"""One call's conversation, sans-I/O: what relay does with every message of both legs.

``Conversation`` is the protocol core of a call (the ``CallSession`` shell owns the sockets,
the tasks and the clock). Every method takes the time as an argument and never awaits, so the
whole of barge-in, pacing and turn bookkeeping runs the same under a fake clock in tests as
on the event loop. Output goes straight to the two sinks it is given (a Twilio socket and
the current backend socket) and to ``submit`` (the store's queue).

Paced playout (PROTOCOLS §0.2, §6 #4). The agent's audio is decoded into the compiled
``PlayoutRing`` and leaves in 20 ms frames (160 bytes of μ-law), never more than ``lead_ms``
ahead of what the caller has heard: frames within the lead go at once (no added latency),
the rest are released by the shared clock's ticks (``tick``). Every ``mark_frames`` frames,
and at the end of each answer, a mark ``<item_id>:<bytes of the item sent so far>`` follows.

Played position (PROTOCOLS §2.5). A mark echoed before any ``clear`` means its bytes played;
between echoes the position advances on the 8 kHz clock, clamped to what was sent. Marks
echoed because of our ``clear`` mean "cleared", never "played".

Barge-in, on ``input_audio_buffer.speech_started`` (or a keypress) while the caller has audio
left to hear: Twilio ``clear`` first (the audible part), drop the ring and every later delta
of the item, ``response.cancel`` when the server will not cancel by itself, and
``conversation.item.truncate`` at the played position, which never passes the produced audio.

The inbound side keeps the backend's audio clock true: ``GapFiller`` puts silence where
Twilio's timestamps skip frames and drops duplicates and late frames; audio is held (bounded)
while no backend session has confirmed μ-law (at start, and while one is replaced).
"""

from __future__ import annotations

import collections
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay import realtime, twilio
from relay.errors import BackendError, ProtocolError
from relay.fastpath import OP_TEXT, MediaCore, build_frame, parse_audio_delta, parse_media
from relay.call_options import CallOptions
from relay.store import DEFAULT_TENANT, CallEnd, CallRecord, Record, TurnRecord

log = logging.getLogger("relay.session")

BYTES_PER_MS = 8  # G.711 μ-law at 8 kHz
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
END_CALL = "end_call"


class TwilioSink(Protocol):
    def send(self, message: bytes) -> None: ...
    def send_frames(self, frames: bytes) -> None: ...


class BackendSink(Protocol):
    def send(self, message: bytes) -> None: ...
    def send_append(self, payload: bytes) -> None: ...


@dataclass(slots=True)
class AssistantTurn:
    seq: int
    item_id: str
    started_at: float  # wall clock
    speech_end_at: float | None  # loop time the caller stopped speaking, if this answers speech
    produced: int = 0  # bytes of audio the backend produced for the item
    out: int = 0  # bytes sent to Twilio
    played: int = 0  # bytes known played (the last mark echoed)
    played_at: float | None = None  # loop time of that echo
    marked: int = 0  # ``out`` at the last mark sent
    first_out_at: float | None = None
    transcript: str = ""  # the full transcript once done, the deltas so far before
    transcript_done: bool = False
    audio_done: bool = False  # no more audio will come for it
    done: bool = False  # its response ended
    interrupted: bool = False
    heard_ms: int | None = None
    stored: bool = False


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
    backend_errors: int = 0
    backend_sessions: int = 0
    reconnects: int = 0
    recycles: int = 0
    v2v_ms: list[float] = field(default_factory=list)


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


class ConversationLogic:
    """Everything of a call's protocol that is not per-frame, over a ``MediaCore``.

    The media core (compiled, or its Python twin) handles each ``media``, mark echo and audio
    delta and paces the ring out; this half handles every other event, the turns, barge-in,
    keys, hang-up and storage. ``Conversation`` is the two joined; a test can join this half
    to the twin core instead (``relay._media_py.MediaCore``) and compare the two.
    """

    __slots__ = ()

    def __init__(
        self,
        start: twilio.Start,
        agent: realtime.AgentProfile,
        twilio_out: TwilioSink,
        submit: Callable[[Record], None],
        options: CallOptions = CallOptions(),
    ) -> None:
        # The media core's state: the sinks, the ring and gap filler, the answers' audio.
        super().__init__(twilio_out, start.stream_sid, CallStats(),  # type: ignore[call-arg]
                         lead_ms=options.lead_ms, mark_frames=options.mark_frames,
                         held_frames=options.presession_buffer_ms // FRAME_MS,
                         max_gap_fill_ms=options.max_gap_fill_ms)
        self.start = start
        self.agent = agent
        self.options = options
        self._submit = submit
        params = start.custom_parameters
        self.tenant_id = params.get("tenant") or DEFAULT_TENANT
        # Hooks for the shell: the clock is wanted (audio to pace, keys to send; on the core);
        # the agent asked to hang up; the farewell has played.
        self.on_hangup: Callable[[], None] = lambda: None
        # ---- backend leg
        self._greeted = False
        self._say_on_open: str | None = None
        self._backlog: list[bytes] = []  # client events waiting for a ready backend
        self._response_active = False
        self._speaking = False  # the caller is mid-utterance (speech_started, not stopped)
        self._awaiting_answer = False  # the caller's turn is committed; its response has not begun
        # ---- outbound audio
        self._marks_out: dict[str, tuple[AssistantTurn, int]] = {}  # sent, not echoed, in order
        self._marks_cleared: set[str] = set()
        # ---- turns
        self._seq = 0
        self._users: dict[str, UserTurn] = {}
        self._speech_end_at: float | None = None
        self._keys = ""  # collected, to be sent at the core's ``_keys_due`` (its tick reads it)
        self._dtmf_count = 0
        self.hangup_requested = False
        self.farewell_played = False
        self._submit(CallRecord(tenant_id=self.tenant_id, call_sid=start.call_sid, stream_sid=start.stream_sid,
                                started_at=time.time(), account_sid=start.account_sid,
                                from_number=params.get("from", ""), to_number=params.get("to", "")))

    @property
    def call_sid(self) -> str:
        return self.start.call_sid

    # ================================================================== backend sessions

    def attach_backend(self, backend: BackendSink, reason: str = "start") -> None:
        """Make ``backend`` the call's backend session and configure it.

        ``reason``: ``"start"``; ``"recycle"`` (a fresh session takes over before the old one's
        cap) or ``"reconnect"`` (the old one dropped). Both of the latter are seeded with the
        conversation so far. Caller audio is held until it confirms μ-law, then flushed.
        """
        if reason != "start":
            self._forget_backend()
        self._backend = backend
        self._ts0 = None
        self.stats.backend_sessions += 1
        if reason == "recycle":
            self.stats.recycles += 1
        elif reason == "reconnect":
            self.stats.reconnects += 1
            self._say_on_open = self.options.reconnect_message or None
        seed = realtime.seed_items(self.history(), self.options.seed_max_chars) if reason != "start" else []
        backend.send(realtime.session_update(self.agent))
        for message in seed:
            backend.send(message)

    def backend_lost(self, now: float) -> None:
        """The backend session ended unexpectedly: what it produced still plays; the rest waits."""
        self._forget_backend()
        self._pump(now)
        self._mark_ends()
        self._check_stored()

    def _forget_backend(self) -> None:
        """The session is gone: its state goes with it, and no more of its answers will come."""
        self._backend = None
        self._gate_open = self._response_active = self._speaking = self._awaiting_answer = False
        for turn in self._assistants.values():
            if not turn.done:
                turn.audio_done = turn.done = True

    @property
    def backend_ready(self) -> bool:
        """The current backend session confirmed a μ-law session: caller audio flows to it."""
        return self._backend is not None and self._gate_open

    @property
    def idle(self) -> bool:
        """Nobody is talking and nothing is left to hear: a backend session can be swapped."""
        return (self._gate_open and not self._response_active and not self._speaking
                and not self._awaiting_answer and not self._ring.buffered and not self._marks_out
                and not self.hangup_requested and not self._keys
                and all(user.transcript is not None for user in self._users.values()))

    def history(self) -> list[tuple[str, str]]:
        """The conversation so far as (role, text): what the caller said and what they heard."""
        turns: list[tuple[int, str, str]] = []
        for user in self._users.values():
            if user.transcript:
                turns.append((user.seq, "user", user.transcript))
        for turn in self._assistants.values():
            if turn.stored or turn.done:
                text = self._heard_text(turn)
                if text:
                    turns.append((turn.seq, "assistant", text))
        return [(role, text) for _, role, text in sorted(turns)]

    def _to_backend(self, message: bytes) -> None:
        if self._backend is not None and self._gate_open:
            self._backend.send(message)
        else:
            self._backlog.append(message)

    # ================================================================== Twilio → backend

    def twilio_message(self, message: bytes, now: float) -> str | None:
        """Handle one message from Twilio; returns ``"stop"`` when the call ended.

        Raises:
            ProtocolError: malformed, or not an event a started stream may send.
        """
        media = parse_media(message)
        if media is not None:
            self.caller_audio(media[0], media[1], now)
            return None
        event = twilio.parse_event(message)
        if isinstance(event, twilio.Mark):
            self.mark(event.name, now)
        elif isinstance(event, twilio.Stop):
            return "stop"
        elif isinstance(event, twilio.Dtmf):
            self.dtmf(event.digit, now)
        elif isinstance(event, twilio.Start):
            raise ProtocolError("a second start on one stream")
        return None

    def _open_gate(self, now: float) -> None:
        assert self._backend is not None
        self._gate_open = True
        held, self._held = list(self._held), collections.deque(maxlen=self._held.maxlen)
        if held:
            self._ts0 = held[0][1]
        for payload, _ in held:
            self._backend.send_append(payload)
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            self._backend.send(message)
        if not self._greeted:
            self._greeted = True
            if self.agent.greeting:
                self._backend.send(realtime.say(self.agent.greeting))
        elif self._say_on_open:
            self._backend.send(realtime.say(self._say_on_open))
        self._say_on_open = None

    def mark(self, name: str, now: float) -> None:
        if name in self._marks_cleared:
            # Echoed because of our clear: it means "cleared", not "played" (PROTOCOLS §1.4).
            self._marks_cleared.discard(name)
            return
        if name not in self._marks_out:
            return
        # Twilio plays in order: every mark sent before this one has played too.
        while self._marks_out:
            first = next(iter(self._marks_out))
            turn, cum = self._marks_out.pop(first)
            if not turn.interrupted and cum > turn.played:
                turn.played = cum
                turn.played_at = now
            if first == name:
                break
        self._check_stored()
        self._check_farewell()

    def dtmf(self, digit: str, now: float) -> None:
        """A key: collected until '#' or ``dtmf_timeout_ms`` of no more keys, then sent as user input."""
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
        self._to_backend(realtime.user_text(f"The caller pressed these keys on the phone keypad: {keys}"))
        self._to_backend(realtime.response_create())

    # ================================================================== backend → Twilio

    def backend_message(self, message: bytes, now: float) -> None:
        """Handle one backend event.

        Raises:
            BackendError: the backend session cannot serve a phone call (ends the call).
        """
        try:
            delta = parse_audio_delta(message)
            if delta is not None:
                self.agent_audio(delta[0], delta[1], now)
                return
            event = realtime.parse_event(message)
        except ProtocolError as exc:
            # One malformed event is logged and skipped; the call goes on.
            self.stats.backend_errors += 1
            log.warning("call %s: bad event from backend: %s", self.call_sid, exc)
            return
        self._backend_event(event, now)

    def _audio_dropped(self, exc: ProtocolError) -> None:
        self.stats.backend_errors += 1
        log.warning("call %s: audio delta dropped: %s", self.call_sid, exc)

    def _mark_ends(self) -> None:
        """An answer whose last audio already left before it was known to be the last gets its
        final mark now, alone."""
        for turn in self._unstored.values():
            if turn.audio_done and not turn.interrupted and turn.out == turn.produced and turn.marked < turn.out \
                    and not any(segment[0] is turn for segment in self._segments):
                self._twilio.send_frames(build_frame(OP_TEXT, self._writer.mark(self._mark_name(turn))))

    def _mark_name(self, turn: AssistantTurn) -> str:
        self._since_mark = 0
        turn.marked = turn.out
        name = f"{turn.item_id}:{turn.out}"
        self._marks_out[name] = (turn, turn.out)
        self._stats.marks_out += 1  # (not through ``stats``, which flushes every counter)
        return name

    def _backend_event(self, event: dict[str, Any], now: float) -> None:
        kind = event["type"]
        if kind == "session.updated":
            problems = realtime.session_problems(event.get("session", {}))
            if problems:
                raise BackendError("backend session unusable for a phone call: " + "; ".join(problems))
            if not self._gate_open and self._backend is not None:
                self._open_gate(now)
        elif kind == "input_audio_buffer.speech_started":
            self._speaking = True
            self._barge_in(now)
        elif kind == "input_audio_buffer.speech_stopped":
            self._speaking = False
            self._speech_end_at = self._audio_ms_to_loop_time(event.get("audio_end_ms"))
        elif kind == "input_audio_buffer.committed":
            self._speaking = False
            self._awaiting_answer = True
            self._user_turn(str(event.get("item_id", "")))
        elif kind == "conversation.item.input_audio_transcription.completed":
            turn = self._user_turn(str(event.get("item_id", "")))
            turn.transcript = str(event.get("transcript", ""))
            self._store_user(turn)
        elif kind == "response.created":
            self._response_active = True
            self._awaiting_answer = False
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "message" and item.get("role") == "assistant" and item.get("id"):
                self._new_assistant(str(item["id"]))
        elif kind == "response.output_audio_transcript.delta":
            turn = self._assistants.get(str(event.get("item_id", "")))
            if turn is not None and not turn.transcript_done:
                turn.transcript += str(event.get("delta", ""))
        elif kind == "response.output_audio_transcript.done":
            turn = self._assistants.get(str(event.get("item_id", "")))
            if turn is not None:
                turn.transcript = str(event.get("transcript", ""))
                turn.transcript_done = True
        elif kind == "response.output_audio.done":
            turn = self._assistants.get(str(event.get("item_id", "")))
            if turn is not None:
                turn.audio_done = True
                self._pump(now)
                self._mark_ends()
        elif kind == "response.done":
            self._response_done(event.get("response") or {}, now)
        elif kind == "error":
            self.stats.backend_errors += 1
            error = event.get("error") or {}
            if not isinstance(error, dict):
                error = {}
            if self._backend is not None and not self._gate_open and \
                    error.get("event_id") in (None, realtime.SESSION_UPDATE_ID):
                # The session was never confirmed, and the error is about it (or no event of
                # ours): the backend refuses the session. One about a seeded item is not that.
                raise BackendError(f"the backend refused the session: {str(error.get('code'))[:60]}: "
                                   f"{str(error.get('message'))[:200]}")
            log.warning("call %s: backend error %s/%s: %s", self.call_sid, error.get("type"), error.get("code"),
                        error.get("message"))

    def _response_done(self, response: dict[str, Any], now: float) -> None:
        self._response_active = False
        for item in response.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                self._function_call(item)
                continue
            turn = self._assistants.get(str(item.get("id", "")))
            if turn is not None:
                turn.audio_done = turn.done = True
        self._pump(now)
        self._mark_ends()
        self._check_stored()
        if self.hangup_requested:
            self._check_farewell()

    def _function_call(self, item: dict[str, Any]) -> None:
        name, call_id = item.get("name"), str(item.get("call_id", ""))
        if name == END_CALL and self.agent.end_call_tool:
            log.info("call %s: the agent ends the call", self.call_sid)
            self.hangup_requested = True
            self.on_hangup()
            return
        # Not a tool relay offered: say so, so the model does not wait for an answer.
        self._to_backend(realtime.function_output(call_id, {"error": f"no tool named {str(name)[:40]!r}"}))

    def _check_farewell(self) -> None:
        """The agent asked to hang up: has everything it said been heard?"""
        if not self.hangup_requested or self.farewell_played or self._ring.buffered or self._marks_out:
            return
        if any(not turn.done for turn in self._assistants.values()):
            return
        self.farewell_played = True
        self.on_hangup()

    def farewell_ms_left(self) -> int:
        """The audio not yet heard: what a hang-up waits for (bounded by the shell)."""
        queued = sum(turn.out - turn.played for turn in self._assistants.values() if not turn.interrupted)
        return (self._ring.buffered + max(0, queued)) // BYTES_PER_MS

    def _barge_in(self, now: float, *, keypress: bool = False) -> None:
        if self.hangup_requested:
            return  # the farewell plays in full, whoever speaks over it
        turn = self._current
        if keypress and self._response_active and not (turn and not turn.done and not turn.interrupted):
            self._to_backend(realtime.response_cancel())  # still thinking: no audio to truncate
        if turn is None or turn.interrupted or turn.produced == 0:
            return
        if turn.audio_done and turn.played >= turn.produced:
            return  # everything was heard: no clear, no truncate (PROTOCOLS §2.5 step 4)
        self.stats.barge_ins += 1
        self._twilio.send(self._writer.clear())
        self._ring.clear()
        for segment in self._segments:
            segment[0].audio_done = True
        self._segments.clear()
        self._marks_cleared.update(self._marks_out)
        self._marks_out.clear()
        since = turn.played_at if turn.played_at is not None else turn.first_out_at
        heard = turn.played if since is None else turn.played + int((now - since) * 1000 * BYTES_PER_MS)
        heard = max(turn.played, min(turn.out, heard))
        turn.heard_ms = heard // BYTES_PER_MS
        turn.interrupted = True
        turn.audio_done = True
        self._dropped_items.add(turn.item_id)
        if self._response_active and not turn.done and (keypress or not self.agent.interrupt_response):
            self._to_backend(realtime.response_cancel())  # the server will not cancel by itself
        # The truncate keeps the model's memory to what the caller actually heard.
        self._to_backend(realtime.truncate(turn.item_id, turn.heard_ms))
        self._check_stored()

    # ================================================================== turns

    def _audio_ms_to_loop_time(self, audio_ms: object) -> float | None:
        if not isinstance(audio_ms, int) or self._epoch is None or self._ts0 is None:
            return None
        return self._epoch + (self._ts0 + audio_ms) / 1000

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
            turn = AssistantTurn(self._next_seq(), item_id, time.time(), self._speech_end_at)
            self._assistants[item_id] = self._unstored[item_id] = turn
            self._speech_end_at = None
        return turn

    def _store_user(self, turn: UserTurn) -> None:
        if turn.stored:
            return
        turn.stored = True
        self._submit(TurnRecord(tenant_id=self.tenant_id, call_sid=self.call_sid, seq=turn.seq, role="user",
                                started_at=turn.started_at, ended_at=time.time(), item_id=turn.item_id,
                                text_generated=turn.transcript, text_heard=turn.transcript))

    def _heard_text(self, turn: AssistantTurn) -> str:
        heard_ms = turn.heard_ms if turn.heard_ms is not None else turn.played // BYTES_PER_MS
        audio_ms = turn.produced // BYTES_PER_MS
        text = turn.transcript
        return text if heard_ms >= audio_ms else cut_words(text, heard_ms / max(1, audio_ms))

    def _maybe_store_assistant(self, turn: AssistantTurn, *, final: bool = False) -> None:
        """Store an answer once its text and what the caller heard of it are both known."""
        if turn.stored:
            return
        played_out = turn.audio_done and turn.played >= turn.produced
        if not final and not (turn.done and (played_out or turn.interrupted)):
            return
        turn.stored = True
        self._unstored.pop(turn.item_id, None)
        if turn.heard_ms is None:
            turn.heard_ms = min(turn.played, turn.produced) // BYTES_PER_MS
        heard = self._heard_text(turn)
        v2v = None
        if turn.first_out_at is not None and turn.speech_end_at is not None:
            v2v = round((turn.first_out_at - turn.speech_end_at) * 1000, 1)
        self._submit(TurnRecord(tenant_id=self.tenant_id, call_sid=self.call_sid, seq=turn.seq, role="assistant",
                                started_at=turn.started_at, ended_at=time.time(), item_id=turn.item_id,
                                text_generated=turn.transcript, text_heard=heard,
                                interrupted=turn.interrupted or heard != turn.transcript,
                                audio_ms=turn.produced // BYTES_PER_MS, voice_to_voice_ms=v2v))

    def finish(self, end_reason: str) -> None:
        """Submit every turn still open and the call's end: nothing said is left unstored."""
        if self._keys:  # pressed as the call ended: stored, though the model will not hear them
            self._dtmf_count += 1
            keys, self._keys, self._keys_due = self._keys, "", None
            self._users[f"dtmf_{self._dtmf_count}"] = UserTurn(self._next_seq(), f"dtmf_{self._dtmf_count}",
                                                                time.time(), f"[DTMF {keys}]")
        for user in self._users.values():
            self._store_user(user)
        for assistant in self._assistants.values():
            self._maybe_store_assistant(assistant, final=True)
        v2v = self.stats.v2v_ms
        self._submit(CallEnd(tenant_id=self.tenant_id, call_sid=self.call_sid, ended_at=time.time(),
                             end_reason=end_reason or "error", frames_in=self.stats.frames_in,
                             frames_out=self.stats.frames_out, turns=len(self._users) + len(self._assistants),
                             v2v_p50_ms=round(statistics.median(v2v), 1) if v2v else None,
                             v2v_max_ms=round(max(v2v), 1) if v2v else None))


class Conversation(ConversationLogic, MediaCore):
    """The protocol state of one bridged call (``start`` received and verified)."""

    # Slots: no instance dict to search (the media core's own state is its C fields).
    __slots__ = ("_awaiting_answer", "_backlog", "_dtmf_count", "_greeted", "_keys", "_marks_cleared",
                 "_marks_out", "_response_active", "_say_on_open", "_seq", "_speaking", "_speech_end_at", "_submit",
                 "_users", "agent", "farewell_played", "hangup_requested", "on_hangup", "options", "start",
                 "tenant_id")


def with_core(core: type[Any]) -> type[Conversation]:
    """``Conversation`` joined to another media core: ``relay._media_py.MediaCore``, the twin,
    is the oracle the compiled core is tested against."""
    return type("Conversation", (ConversationLogic, core), {"__slots__": Conversation.__slots__})  # type: ignore[return-value]
