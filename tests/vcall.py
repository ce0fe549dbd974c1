"""A whole call on a fake clock: relay's ``Conversation`` between the sans-I/O simulators.

No sockets and no sleeping: the simulated Realtime agent (``RealtimeSession``, or with a
``LiveConfig`` the simulated GPT-Live server, ``LiveSession``), relay's
conversation core and Twilio's playback model (``TwilioPlayback``) trade the very bytes they
would put on the wire (relay's outbound WebSocket frames are parsed back with the compiled
``FrameReader``), each way after ``latency_ms``. Time jumps from one event to the next, so a
minute of conversation runs in well under a second, the same way every time.

The caller sends one 20 ms ``media`` frame per tick (speech queued by ``say``, else
silence) and Twilio plays 20 ms of what it was sent on the same tick; relay's shared clock
ticks every 20 ms too, ``pacer_phase_ms`` later.
"""

from __future__ import annotations

import base64
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from relay import twilio
from relay.audio_format import FRAME_MS
from relay.backends import realtime
from relay.call_options import CallOptions
from relay.conversation import Conversation
from relay.fastpath import OP_TEXT, FrameReader
from relay.sim import audio
from relay.sim.agent import AgentConfig, RealtimeSession, SessionLog
from relay.sim.live import LiveConfig, LiveSession, LiveSessionLog
from relay.sim.playback import TwilioPlayback
from relay.store import Record, TurnRecord

FRAME_S = FRAME_MS / 1000
START = twilio.Start(
    stream_sid="MZ" + "5" * 32,
    call_sid="CA" + "7" * 32,
    account_sid="AC" + "1" * 32,
    tracks=("inbound",),
    encoding="audio/x-mulaw",
    sample_rate=8000,
    channels=1,
    custom_parameters={"tenant": "default"},
)


@dataclass
class _Backend:
    """Relay's backend sink for one simulated session: what relay sends arrives at once."""

    call: VirtualCall
    session: RealtimeSession | LiveSession
    closed: bool = False

    def send(self, message: bytes) -> None:
        if not self.closed:
            self.session.receive(message.decode(), self.call.now)
            self.call.drain_agent()

    def send_append(self, payload: bytes) -> None:
        live = isinstance(self.session, LiveSession)
        kind = "session.input_audio.append" if live else "input_audio_buffer.append"
        self.send(orjson.dumps({"type": kind, "audio": payload.decode()}))


class _TwilioSide:
    """Relay's Twilio sink: WebSocket frames are read back and delivered after the latency."""

    def __init__(self, call: VirtualCall) -> None:
        self.call = call
        self.reader = FrameReader(False, 1 << 20)

    def send(self, message: bytes) -> None:
        self.call.to_twilio(message)

    def send_frames(self, frames: bytes) -> None:
        self.reader.feed(frames)
        while (frame := self.reader.read()) is not None:
            assert frame[0] == OP_TEXT
            self.call.to_twilio(frame[1])


class VirtualCall:
    def __init__(
        self,
        *,
        agent_config: AgentConfig | LiveConfig = AgentConfig(),
        options: CallOptions = CallOptions(),
        profile: realtime.AgentProfile | None = None,
        latency_ms: float = 0.0,
        pacer_phase_ms: float = 7.0,
    ) -> None:
        self.now = 0.0
        self.agent_config = agent_config
        self.latency = latency_ms / 1000
        self.records: list[Record] = []
        self.playback = TwilioPlayback()
        self.twilio_out: list[dict[str, object]] = []  # every message relay sent Twilio, in order
        self.twilio_sent_at: list[float] = []  # when relay sent each of them
        self.backend_events: list[tuple[float, str]] = []  # (when, type) of what relay got from the agent
        self.sessions: list[Any] = []  # SessionLog, or LiveSessionLog on GPT-Live
        self.backend_messages: list[dict[str, Any]] = []  # every event the agent sent, as sent
        self.played_at: list[tuple[float, int]] = []  # (time, bytes the caller had heard) each frame
        self.held_from_backend: list[bytes] | None = None  # while set, the agent's events wait here (a stall)
        self._backends: list[_Backend] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []  # deliveries, by time
        self._order = itertools.count()
        self._speech = bytearray()
        self._ts = 0
        self._next_frame = FRAME_S
        self._tick_s = options.pacer_interval_ms / 1000  # the shared clock's period
        self._next_tick = self._tick_s + pacer_phase_ms / 1000
        self._ticking: dict[str, Callable[[float], bool]] = {}  # the clocks wanted, by whom
        self._draining = False
        self.hangups = 0
        live = isinstance(agent_config, LiveConfig)
        if profile is None:
            backend = {"backend": "openai-live", "model": "gpt-live-1"} if live else {}
            profile = realtime.AgentProfile(instructions="Be brief.", **backend)
        self.conversation = Conversation(START, profile, _TwilioSide(self), self.records.append, options)
        media = self.conversation.media
        media.on_wants_clock = lambda: self._ticking.setdefault("media", media.tick)
        self.conversation.on_wants_clock = lambda: self._ticking.setdefault("keys", self.conversation.tick)
        self.conversation.on_hangup = self._hangup
        self.open_backend("start")

    # ---- the two legs

    def open_backend(self, reason: str) -> Any:
        """A new simulated session becomes the call's backend (start, recycle or reconnect)."""
        session: RealtimeSession | LiveSession
        if isinstance(self.agent_config, LiveConfig):
            slog: Any = LiveSessionLog(index=len(self.sessions))
            session = LiveSession(self.agent_config, slog, wall_clock=lambda: 1_800_000_000 + self.now)
        else:
            slog = SessionLog(index=len(self.sessions))
            session = RealtimeSession(self.agent_config, slog)
        backend = _Backend(self, session)
        self.sessions.append(slog)
        self._backends.append(backend)
        session.connect(self.now)
        if reason == "reconnect":
            self.conversation.backend_lost(self.now)
        for old in self._backends[:-1]:
            old.closed = True
        self.conversation.attach_backend(backend, reason)
        self.drain_agent()
        return slog

    @property
    def agent(self) -> RealtimeSession | LiveSession:
        return self._backends[-1].session

    def drain_agent(self) -> None:
        """Hand relay every event the agent has queued, in order (never re-entered)."""
        if self._draining:
            return
        self._draining = True
        try:
            backend = self._backends[-1]
            while events := backend.session.take_events():
                for event in events:
                    self.backend_events.append((self.now, event["type"]))
                    self.backend_messages.append(event)
                    if self.held_from_backend is not None:
                        self.held_from_backend.append(orjson.dumps(event))
                    else:
                        self._from_backend(orjson.dumps(event))
        finally:
            self._draining = False

    def to_twilio(self, message: bytes) -> None:
        obj = orjson.loads(message)
        self.twilio_out.append(obj)
        self.twilio_sent_at.append(self.now)
        self._at(self.now + self.latency, lambda: self._twilio_receives(obj))

    def _twilio_receives(self, obj: dict[str, object]) -> None:
        event = obj["event"]
        if event == "media":
            self.playback.media(obj["media"]["payload"])  # type: ignore[index]
            return
        names = self.playback.mark(obj["mark"]["name"]) if event == "mark" else self.playback.clear()  # type: ignore[index]
        self._echo(names)

    def _echo(self, names: list[str]) -> None:
        for name in names:
            message = orjson.dumps(
                {"event": "mark", "sequenceNumber": "1", "streamSid": START.stream_sid, "mark": {"name": name}}
            )
            self._at(self.now + self.latency, lambda m=message: self._from_twilio(m))

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), fn))

    def release_backend(self) -> None:
        """The stall is over: what the agent sent meanwhile arrives at once, in order."""
        held, self.held_from_backend = self.held_from_backend or [], None
        for message in held:
            self._from_backend(message)

    # As a leg's WsCore routes a message: to the media core first, then what it leaves to the
    # conversation (the session's pumps).
    def _from_backend(self, message: bytes) -> None:
        if not self.conversation.media.backend_frame(message, self.now):
            self.conversation.backend_message(message, self.now)

    def _from_twilio(self, message: bytes) -> None:
        if not self.conversation.media.twilio_frame(message, self.now):
            self.conversation.twilio_message(message, self.now)

    def _hangup(self) -> None:
        self.hangups += 1

    # ---- driving it

    def say(self, text: str) -> None:
        """The caller speaks ``text`` from the next frame on."""
        self._speech += audio.speak(text)

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Advance the clock, event by event, until ``done()`` or ``timeout`` seconds passed."""
        until = self.now + timeout
        while not done():
            deadline = self.agent.next_deadline()
            t = min(
                self._next_frame,
                self._next_tick,
                deadline if deadline is not None else until + 1,
                self._queue[0][0] if self._queue else until + 1,
            )
            if t > until:
                self.now = until
                return False
            self.now = max(self.now, t)
            while self._queue and self._queue[0][0] <= self.now:
                heapq.heappop(self._queue)[2]()
            self.agent.advance(self.now)
            self.drain_agent()
            if self.now >= self._next_frame:
                self._frame()
                self._next_frame += FRAME_S
            if self.now >= self._next_tick:
                for who, tick in list(self._ticking.items()):
                    if not tick(self.now):
                        del self._ticking[who]
                self._next_tick += self._tick_s
        return True

    def _frame(self) -> None:
        self._echo(self.playback.play(audio.FRAME_BYTES))  # Twilio plays 20 ms
        self.played_at.append((self.now, self.playback.played))
        frame = bytes(self._speech[: audio.FRAME_BYTES]).ljust(audio.FRAME_BYTES, bytes([audio.ULAW_SILENCE]))
        del self._speech[: audio.FRAME_BYTES]
        self.conversation.media.caller_audio(base64.b64encode(frame), self._ts, self.now)  # the caller sends 20 ms
        self._ts += 20

    # ---- what happened

    def turns(self) -> list[TurnRecord]:
        return sorted((r for r in self.records if isinstance(r, TurnRecord)), key=lambda r: r.seq)

    def answered(self, n: int) -> Callable[[], bool]:
        """``done`` for ``run_until``: ``n`` answers stored."""
        return lambda: sum(1 for t in self.turns() if t.role == "assistant") >= n

    def violations(self) -> list[str]:
        return [v for s in self.sessions for v in s.violations]
