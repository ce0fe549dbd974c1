"""CallSession: one phone call, from Twilio's ``start`` to the last stored turn.

Two pumps run per call: Twilio → backend (caller audio, marks, stop) and backend → Twilio
(audio deltas, VAD events, transcripts). They share nothing with other calls. Per-frame work
goes through ``fastpath``; everything else here happens a few times per turn.

Played-position accounting (PROTOCOLS §2.5): every audio delta is followed by a mark named
``<item_id>:<cumulative bytes>``; a mark echoed before any ``clear`` means that many bytes
played. On barge-in relay clears Twilio first (the audible part), then truncates the item at
``min(sent, played + time since that echo)``, so a truncate is never past the produced audio.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay import realtime, twilio
from relay.errors import BackendError, ProtocolError
from relay.fastpath import TwilioWriter, b64_decoded_len, media_frames, parse_audio_delta, parse_media
from relay.store import DEFAULT_TENANT, CallEnd, CallRecord, Store, TurnRecord
from relay.ws import ConnectionClosed

log = logging.getLogger("relay.session")

BYTES_PER_MS = 8  # G.711 μ-law at 8 kHz
FRAME_MS = 20
UPSTREAM_CLOSE_TIMEOUT = 1.0


class TwilioSocket(Protocol):
    """What a session needs from the Twilio leg (``relay.ws.WebSocket``)."""

    on_message: Callable[[bytes], bool] | None
    async def recv(self) -> bytes: ...
    def send(self, message: bytes) -> None: ...
    def send_many(self, messages: tuple[bytes, ...]) -> None: ...
    def send_frames(self, frames: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Upstream(Protocol):
    """What a session needs from the backend leg (``relay.upstream.UpstreamConnection``)."""

    on_message: Callable[[bytes], bool] | None
    async def recv(self) -> bytes: ...
    def send(self, message: bytes) -> None: ...
    def send_append(self, payload: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


ConnectUpstream = Callable[[], Awaitable[Upstream]]
# The tenant's agent for a call: (tenant_id, agent_id) -> its profile, or None for the default.
ResolveAgent = Callable[[str, str], Awaitable["realtime.AgentProfile | None"]]


@dataclass(slots=True)
class _AssistantTurn:
    seq: int
    item_id: str
    started_at: float
    speech_end_at: float | None  # loop time the caller stopped speaking, if this answers speech
    sent_bytes: int = 0
    played_bytes: int = 0
    first_out_at: float | None = None
    played_at: float | None = None
    transcript: str | None = None
    done: bool = False
    interrupted: bool = False
    heard_ms: int | None = None
    stored: bool = False


@dataclass(slots=True)
class _UserTurn:
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
    frames_held: int = 0  # caller frames held until session.updated
    frames_dropped: int = 0  # held frames beyond the pre-session buffer
    backend_errors: int = 0
    v2v_ms: list[float] = field(default_factory=list)


def _cut_words(text: str, fraction: float) -> str:
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


class CallSession:
    """Runs one call; ``run()`` returns when the call has ended and its records are submitted."""

    def __init__(
        self,
        twilio_ws: TwilioSocket,
        *,
        connect_upstream: ConnectUpstream,
        agent: realtime.AgentProfile,
        store: Store,
        presession_buffer_ms: int = 2000,
        resolve_agent: ResolveAgent | None = None,
        verify_start: Callable[[twilio.Start], str | None] | None = None,
        on_started: Callable[[str], None] | None = None,
    ) -> None:
        self.twilio = twilio_ws
        self._connect_upstream = connect_upstream
        self._agent = agent
        self._resolve_agent = resolve_agent
        self._verify_start = verify_start
        self._on_started = on_started
        self._store = store
        self.stats = CallStats()
        self.start: twilio.Start | None = None
        self.end_reason = ""
        self._loop = asyncio.get_running_loop()
        self._upstream: Upstream | None = None
        self._writer: TwilioWriter | None = None
        # Caller audio waits here until the backend confirms μ-law (PROTOCOLS §2.2 pitfall).
        self._held: collections.deque[bytes] = collections.deque(maxlen=max(1, presession_buffer_ms // FRAME_MS))
        self._gate_open = False
        self._epoch: float | None = None  # loop time of Twilio timestamp 0
        self._ts0: int | None = None  # Twilio timestamp of the first frame sent upstream
        self._seq = 0
        self._users: dict[str, _UserTurn] = {}
        self._assistants: dict[str, _AssistantTurn] = {}
        self._current: _AssistantTurn | None = None
        self._speech_end_at: float | None = None
        self._marks_out: set[str] = set()
        self._marks_cleared: set[str] = set()
        self._dropped_items: set[str] = set()

    @property
    def call_sid(self) -> str:
        return self.start.call_sid if self.start else ""

    @property
    def tenant_id(self) -> str:
        """The tenant the webhook routed this call to (its ``<Parameter name="tenant">``)."""
        return (self.start.custom_parameters.get("tenant") if self.start else None) or DEFAULT_TENANT

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            self.start = await self._await_start()
        except ConnectionClosed:
            self.end_reason = "twilio_closed_before_start"
            return
        except ProtocolError as exc:
            log.warning("closing stream before start: %s", exc)
            await self.twilio.close(1007, str(exc)[:100])
            return
        start = self.start
        refused = self._verify_start(start) if self._verify_start is not None else None
        if refused:
            # Not a call our webhook answered (or not this call): no upstream, nothing stored.
            log.warning("closing stream %s: %s", start.stream_sid, refused)
            self.end_reason = "stream_token_invalid"
            await self.twilio.close(1008, refused)
            return
        if self._on_started is not None:
            self._on_started(start.call_sid)
        self._writer = TwilioWriter(start.stream_sid)
        params = start.custom_parameters
        self._store.submit(
            CallRecord(
                tenant_id=self.tenant_id,
                call_sid=start.call_sid,
                stream_sid=start.stream_sid,
                started_at=time.time(),
                account_sid=start.account_sid,
                from_number=params.get("from", ""),
                to_number=params.get("to", ""),
            )
        )
        log.info("call %s stream %s started", start.call_sid, start.stream_sid)
        try:
            await self._bridge()
        finally:
            self._finish()
            log.info(
                "call %s ended (%s): %d frames in, %d out",
                start.call_sid,
                self.end_reason,
                self.stats.frames_in,
                self.stats.frames_out,
            )

    async def _await_start(self) -> twilio.Start:
        while True:
            message = await self.twilio.recv()
            if parse_media(message) is not None:
                raise ProtocolError("media before start")
            event = twilio.parse_event(message)
            if isinstance(event, twilio.Start):
                if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
                    raise ProtocolError(f"unsupported media format {event.encoding}/{event.sample_rate}")
                return event
            if not isinstance(event, twilio.Connected):
                raise ProtocolError(f"{type(event).__name__.lower()} before start")

    async def _bridge(self) -> None:
        if self._resolve_agent is not None:
            params = self.start.custom_parameters if self.start else {}
            try:
                found = await self._resolve_agent(self.tenant_id, params.get("agent") or "default")
            except Exception as exc:  # the directory is down: the call goes on with the default agent
                log.warning("call %s: agent lookup failed (%s); using the default agent", self.call_sid,
                            type(exc).__name__)
                found = None
            if found is not None:
                self._agent = found
        try:
            self._upstream = await self._connect_upstream()
        except Exception as exc:  # any failure to reach the backend ends this call only
            log.error("call %s: speech backend unavailable: %s", self.call_sid, exc)
            self.end_reason = "backend_unavailable"
            await self.twilio.close(1011, "speech backend unavailable")
            return
        self._upstream.send(realtime.session_update(self._agent))
        # Per-frame messages are handled as they arrive; the pumps see everything else.
        self.twilio.on_message = self._twilio_frame
        self._upstream.on_message = self._backend_frame
        from_twilio = asyncio.create_task(self._twilio_pump(), name=f"twilio-{self.call_sid}")
        from_backend = asyncio.create_task(self._backend_pump(), name=f"backend-{self.call_sid}")
        try:
            done, _ = await asyncio.wait((from_twilio, from_backend), return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            error = None if first.cancelled() else first.exception()
            if error is not None:
                log.error("call %s failed", self.call_sid, exc_info=error)
            self.end_reason = "error" if first.cancelled() or error is not None else first.result()
        finally:
            # The backend session ends with the call, whichever side ended it (PROTOCOLS §5.1).
            for task in (from_twilio, from_backend):
                task.cancel()
            await asyncio.gather(from_twilio, from_backend, return_exceptions=True)
            await self._close_upstream()
            if self.end_reason.startswith("backend"):
                await self.twilio.close(1011, "speech backend ended the session")
            elif self.end_reason == "stop":
                await self.twilio.close(1000, "")

    async def _close_upstream(self) -> None:
        if self._upstream is None:
            return
        try:
            await asyncio.wait_for(self._upstream.close(), UPSTREAM_CLOSE_TIMEOUT)
        except (TimeoutError, OSError, ConnectionClosed):
            pass

    # ------------------------------------------------------------------ Twilio → backend

    async def _twilio_pump(self) -> str:
        while True:
            try:
                message = await self.twilio.recv()
            except ConnectionClosed:
                return "twilio_closed"
            try:
                media = parse_media(message)
                if media is not None:
                    self._on_caller_audio(*media)
                    continue
                event = twilio.parse_event(message)
            except ProtocolError as exc:
                log.warning("call %s: bad message from Twilio: %s", self.call_sid, exc)
                await self.twilio.close(1007, str(exc)[:100])
                return "twilio_protocol_error"
            if isinstance(event, twilio.Mark):
                self._on_mark(event.name)
            elif isinstance(event, twilio.Stop):
                return "stop"
            elif isinstance(event, twilio.Dtmf):
                log.info("call %s: DTMF %s", self.call_sid, event.digit)

    def _on_caller_audio(self, payload: bytes, timestamp: int) -> None:
        self.stats.frames_in += 1
        if self._epoch is None:
            self._epoch = self._loop.time() - timestamp / 1000
        if not self._gate_open:
            if len(self._held) == self._held.maxlen:
                self.stats.frames_dropped += 1
            self._held.append(payload)
            self.stats.frames_held += 1
            if self._ts0 is None:
                self._ts0 = timestamp
            return
        if self._ts0 is None:
            self._ts0 = timestamp
        assert self._upstream is not None
        self._upstream.send_append(payload)

    def _twilio_frame(self, message: bytes) -> bool:
        """Handle a ``media`` or ``mark`` as it arrives; leave anything else (or odd) to the pump."""
        try:
            media = parse_media(message)
            if media is not None:
                self._on_caller_audio(*media)
                return True
            if b'"mark"' in message:
                event = twilio.parse_event(message)
                if isinstance(event, twilio.Mark):
                    self._on_mark(event.name)
                    return True
        except ProtocolError:
            pass  # the pump parses it again and closes the call with the reason
        return False

    def _backend_frame(self, message: bytes) -> bool:
        """Forward an audio delta as it arrives; every other event goes to the pump."""
        try:
            delta = parse_audio_delta(message)
        except ProtocolError:
            return False
        if delta is None:
            return False
        self._on_agent_audio(*delta)
        return True

    def _on_mark(self, name: str) -> None:
        if name in self._marks_cleared:
            # Echoed because of our clear: it means "cleared", not "played" (PROTOCOLS §1.4).
            self._marks_cleared.discard(name)
            return
        if name not in self._marks_out:
            return
        self._marks_out.discard(name)
        item_id, _, played = name.rpartition(":")
        turn = self._assistants.get(item_id)
        if turn is not None and not turn.interrupted:
            turn.played_bytes = max(turn.played_bytes, int(played))
            turn.played_at = self._loop.time()
            self._maybe_store_assistant(turn)

    # ------------------------------------------------------------------ backend → Twilio

    async def _backend_pump(self) -> str:
        assert self._upstream is not None
        while True:
            try:
                message = await self._upstream.recv()
            except ConnectionClosed as exc:
                log.warning("call %s: backend closed the session (%s)", self.call_sid, exc)
                return "backend_closed"
            if isinstance(message, str):
                message = message.encode()
            try:
                delta = parse_audio_delta(message)
                if delta is not None:
                    self._on_agent_audio(*delta)
                    continue
                event = realtime.parse_event(message)
            except ProtocolError as exc:
                # One malformed event is logged and skipped; the call goes on.
                self.stats.backend_errors += 1
                log.warning("call %s: bad event from backend: %s", self.call_sid, exc)
                continue
            try:
                await self._on_backend_event(event)
            except BackendError as exc:
                log.error("call %s: %s", self.call_sid, exc)
                return "backend_refused"

    def _on_agent_audio(self, item_id: str, payload: bytes) -> None:
        if item_id in self._dropped_items:
            return  # a late delta of an item the caller interrupted
        turn = self._assistants.get(item_id) or self._new_assistant(item_id)
        turn.sent_bytes += b64_decoded_len(payload)
        now = self._loop.time()
        if turn.first_out_at is None:
            turn.first_out_at = now
            if turn.speech_end_at is not None:
                self.stats.v2v_ms.append((now - turn.speech_end_at) * 1000)
        name = f"{item_id}:{turn.sent_bytes}"
        self._marks_out.add(name)
        assert self._writer is not None
        self.twilio.send_frames(media_frames(self._writer, payload, name))
        self.stats.frames_out += 1
        self._current = turn

    async def _on_backend_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "session.updated":
            problems = realtime.session_problems(event.get("session", {}))
            if problems:
                raise BackendError("backend session unusable for a phone call: " + "; ".join(problems))
            if not self._gate_open:
                await self._open_gate()
        elif kind == "input_audio_buffer.speech_started":
            await self._barge_in()
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech_end_at = self._audio_ms_to_loop_time(event.get("audio_end_ms"))
        elif kind == "input_audio_buffer.committed":
            self._user_turn(str(event.get("item_id", "")))
        elif kind == "conversation.item.input_audio_transcription.completed":
            turn = self._user_turn(str(event.get("item_id", "")))
            turn.transcript = str(event.get("transcript", ""))
            self._store_user(turn)
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "message" and item.get("role") == "assistant" and item.get("id"):
                self._new_assistant(str(item["id"]))
        elif kind == "response.output_audio_transcript.done":
            turn = self._assistants.get(str(event.get("item_id", "")))
            if turn is not None:
                turn.transcript = str(event.get("transcript", ""))
        elif kind == "response.done":
            for item in (event.get("response") or {}).get("output") or []:
                turn = self._assistants.get(str(item.get("id", "")))
                if turn is not None:
                    turn.done = True
                    self._maybe_store_assistant(turn)
        elif kind == "error":
            self.stats.backend_errors += 1
            error = event.get("error") or {}
            log.warning(
                "call %s: backend error %s/%s: %s",
                self.call_sid,
                error.get("type"),
                error.get("code"),
                error.get("message"),
            )

    async def _open_gate(self) -> None:
        self._gate_open = True
        assert self._upstream is not None
        held, self._held = list(self._held), collections.deque()
        if held and self._ts0 is not None and self.stats.frames_dropped:
            self._ts0 += self.stats.frames_dropped * FRAME_MS
        for payload in held:
            self._upstream.send_append(payload)

    async def _barge_in(self) -> None:
        turn = self._current
        if turn is None or turn.interrupted or turn.first_out_at is None or turn.played_bytes >= turn.sent_bytes:
            return  # nothing is playing: no clear, no truncate (PROTOCOLS §2.5 step 4)
        assert self._writer is not None and self._upstream is not None
        self.twilio.send(self._writer.clear())
        self._marks_cleared |= self._marks_out
        self._marks_out.clear()
        now = self._loop.time()
        since = turn.played_at if turn.played_at is not None else turn.first_out_at
        heard_bytes = min(turn.sent_bytes, turn.played_bytes + int((now - since) * 1000 * BYTES_PER_MS))
        turn.heard_ms = heard_bytes // BYTES_PER_MS
        turn.interrupted = True
        self._dropped_items.add(turn.item_id)
        # server_vad with interrupt_response cancels the response itself; the truncate keeps
        # the model's memory to what the caller actually heard.
        self._upstream.send(realtime.truncate(turn.item_id, turn.heard_ms))
        self._maybe_store_assistant(turn)

    # ------------------------------------------------------------------ turns

    def _audio_ms_to_loop_time(self, audio_ms: object) -> float | None:
        if not isinstance(audio_ms, int) or self._epoch is None or self._ts0 is None:
            return None
        return self._epoch + (self._ts0 + audio_ms) / 1000

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _user_turn(self, item_id: str) -> _UserTurn:
        turn = self._users.get(item_id)
        if turn is None:
            turn = self._users[item_id] = _UserTurn(self._next_seq(), item_id, time.time())
        return turn

    def _new_assistant(self, item_id: str) -> _AssistantTurn:
        turn = self._assistants.get(item_id)
        if turn is None:
            turn = _AssistantTurn(self._next_seq(), item_id, time.time(), self._speech_end_at)
            self._assistants[item_id] = turn
            self._speech_end_at = None
        return turn

    def _store_user(self, turn: _UserTurn) -> None:
        if turn.stored or self.start is None:
            return
        turn.stored = True
        self._store.submit(
            TurnRecord(
                tenant_id=self.tenant_id,
                call_sid=self.start.call_sid,
                seq=turn.seq,
                role="user",
                started_at=turn.started_at,
                ended_at=time.time(),
                item_id=turn.item_id,
                text_generated=turn.transcript,
                text_heard=turn.transcript,
            )
        )

    def _maybe_store_assistant(self, turn: _AssistantTurn, *, final: bool = False) -> None:
        """Store an answer once its text and what the caller heard of it are both known."""
        if turn.stored or self.start is None:
            return
        played_out = turn.sent_bytes > 0 and turn.played_bytes >= turn.sent_bytes
        if not final and not (turn.done and (played_out or turn.interrupted)):
            return
        turn.stored = True
        if turn.heard_ms is None:
            turn.heard_ms = turn.played_bytes // BYTES_PER_MS
        text = turn.transcript or ""
        audio_ms = turn.sent_bytes // BYTES_PER_MS
        heard = text if turn.heard_ms >= audio_ms else _cut_words(text, turn.heard_ms / max(1, audio_ms))
        v2v = None
        if turn.first_out_at is not None and turn.speech_end_at is not None:
            v2v = round((turn.first_out_at - turn.speech_end_at) * 1000, 1)
        self._store.submit(
            TurnRecord(
                tenant_id=self.tenant_id,
                call_sid=self.start.call_sid,
                seq=turn.seq,
                role="assistant",
                started_at=turn.started_at,
                ended_at=time.time(),
                item_id=turn.item_id,
                text_generated=turn.transcript,
                text_heard=heard,
                interrupted=turn.interrupted or heard != text,
                audio_ms=audio_ms,
                voice_to_voice_ms=v2v,
            )
        )

    def _finish(self) -> None:
        """Submit every turn still open and the call's end: nothing said is left unstored."""
        if self.start is None:
            return
        for user in self._users.values():
            self._store_user(user)
        for assistant in self._assistants.values():
            self._maybe_store_assistant(assistant, final=True)
        v2v = self.stats.v2v_ms
        self._store.submit(
            CallEnd(
                tenant_id=self.tenant_id,
                call_sid=self.start.call_sid,
                ended_at=time.time(),
                end_reason=self.end_reason or "error",
                frames_in=self.stats.frames_in,
                frames_out=self.stats.frames_out,
                turns=len(self._users) + len(self._assistants),
                v2v_p50_ms=round(statistics.median(v2v), 1) if v2v else None,
                v2v_max_ms=round(max(v2v), 1) if v2v else None,
            )
        )
