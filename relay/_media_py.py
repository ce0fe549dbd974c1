"""Plain-Python reference of a call's per-frame media core (re-exported by ``_fastpath_py``).

``MediaCore`` is the part of ``relay.conversation.Conversation`` that runs for every frame:
a caller's ``media`` into the gap filler and on to the backend (or held while no backend
session is ready); an agent's audio delta into the playout ring; the ring paced out to Twilio
in 20 ms frames with their marks, in one write. ``Conversation`` subclasses it and owns
everything else (events, turns, barge-in, storage). The compiled twin is ``_media.pxi``; the
two must send the same bytes, in the same writes, and leave the same state, for every input.

Hooks the subclass provides (called rarely, never on a plain passthrough frame): ``mark``,
``_new_assistant``, ``_mark_name``, ``_maybe_store_assistant``; ``on_wants_clock`` is set by the
shell. Per-frame counters are plain ints here and C ints in the compiled core, flushed into
``stats`` when it is read.
"""

from __future__ import annotations

import collections
from typing import Any

from relay._framing_py import build_frame
from relay._messages_py import TwilioWriter, parse_audio_delta, parse_media
from relay._playout_py import GapFiller, PlayoutRing, silence_b64
from relay.errors import ProtocolError

__all__ = ["MediaCore"]

BYTES_PER_MS = 8
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
OP_TEXT = 0x1


def _frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (the server side of the Twilio leg)."""
    return build_frame(OP_TEXT, payload)


class MediaCore:
    __slots__ = ("_assistants", "_backend", "_current", "_dropped_items", "_epoch", "_gaps", "_gate_open", "_held",
                 "_keys_due", "_lead_ms", "_mark_frames", "_ring", "_segments", "_since_mark", "_stats", "_t0", "_ts0", "_twilio",
                 "_unstored", "_writer", "frames_dropped", "frames_filled", "frames_held", "frames_in",
                 "frames_late", "frames_out", "on_wants_clock")

    def __init__(self, twilio_out: Any, stream_sid: str, stats: Any, *, lead_ms: int, mark_frames: int,
                 held_frames: int, max_gap_fill_ms: int) -> None:
        self._twilio = twilio_out
        self._writer = TwilioWriter(stream_sid)
        self._stats = stats
        self._lead_ms = lead_ms
        self._mark_frames = mark_frames
        self.on_wants_clock: Any = lambda: None
        self.frames_in = self.frames_out = self.frames_held = self.frames_dropped = 0
        self.frames_filled = self.frames_late = 0
        # inbound
        self._backend: Any = None
        self._gate_open = False  # the current backend confirmed μ-law both ways
        self._held: collections.deque[tuple[bytes, int]] = collections.deque(maxlen=max(1, held_frames))
        self._gaps = GapFiller(FRAME_MS, max_gap_fill_ms)
        self._epoch: float | None = None  # loop time of Twilio timestamp 0
        self._ts0: int | None = None  # Twilio timestamp of the current backend session's audio 0
        # outbound
        self._ring = PlayoutRing(FRAME_BYTES)
        self._segments: collections.deque[list[Any]] = collections.deque()  # [turn, bytes in ring]
        self._t0: float | None = None  # loop time of the first frame sent (the ring's clock 0)
        self._since_mark = 0
        self._current: Any = None
        self._assistants: dict[str, Any] = {}
        self._unstored: dict[str, Any] = {}  # answers not stored yet (a few at most)
        self._dropped_items: set[str] = set()
        self._keys_due: float | None = None  # when the keys collected so far are sent (the subclass's)

    @property
    def stats(self) -> Any:
        """The call's counters, the per-frame ones flushed in."""
        stats = self._stats
        stats.frames_in, stats.frames_out = self.frames_in, self.frames_out
        stats.frames_held, stats.frames_dropped = self.frames_held, self.frames_dropped
        stats.frames_filled, stats.frames_late = self.frames_filled, self.frames_late
        return stats

    # ---------------------------------------------------------------- Twilio → backend

    def twilio_frame(self, message: bytes, now: float) -> bool:
        """The per-frame path: a ``media`` or ``mark`` handled as it arrives (False: not one)."""
        from relay import twilio

        try:
            media = parse_media(message)
            if media is not None:
                self.caller_audio(media[0], media[1], now)
                return True
            if b'"mark"' in message:
                event = twilio.parse_event(message)
                if isinstance(event, twilio.Mark):
                    self.mark(event.name, now)  # type: ignore[attr-defined]
                    return True
        except ProtocolError:
            pass  # the pump parses it again and closes the call with the reason
        return False

    def caller_audio(self, payload: bytes, timestamp: int, now: float) -> None:
        self.frames_in += 1
        if self._epoch is None:
            self._epoch = now - timestamp / 1000
        lost = self._gaps.accept(timestamp)
        if lost < 0:
            self.frames_late += 1  # a duplicate, or too late for its slot
            return
        if lost:
            self.frames_filled += lost
            self._upstream_audio(silence_b64(lost * FRAME_BYTES), timestamp - lost * FRAME_MS)
        self._upstream_audio(payload, timestamp)

    def _upstream_audio(self, payload: bytes, timestamp: int) -> None:
        if self._gate_open:
            if self._ts0 is None:
                self._ts0 = timestamp
            self._backend.send_append(payload)
            return
        if len(self._held) == self._held.maxlen:
            self.frames_dropped += 1
        self._held.append((payload, timestamp))
        self.frames_held += 1

    # ---------------------------------------------------------------- backend → Twilio

    def backend_frame(self, message: bytes, now: float) -> bool:
        """The per-frame path: an audio delta handled as it arrives (False: any other event)."""
        try:
            delta = parse_audio_delta(message)
        except ProtocolError:
            return False
        if delta is None:
            return False
        self.agent_audio(delta[0], delta[1], now)
        return True

    def agent_audio(self, item_id: str, payload: bytes, now: float) -> None:
        if item_id in self._dropped_items:
            return  # a late delta of an item the caller interrupted
        turn = self._assistants.get(item_id) or self._new_assistant(item_id)  # type: ignore[attr-defined]
        if turn.audio_done:
            return
        try:
            n = self._ring.push(payload)
        except ProtocolError as exc:  # not base64, or an answer longer than the ring holds
            self._audio_dropped(exc)  # type: ignore[attr-defined]
            return
        turn.produced += n
        if self._segments and self._segments[-1][0] is turn:
            self._segments[-1][1] += n
        else:
            self._segments.append([turn, n])
        self._current = turn
        self._pump(now)
        if self._ring.buffered:
            self.on_wants_clock()

    def tick(self, now: float) -> bool:
        """The shared clock's 20 ms tick: release due frames, send due keys. False: no more ticks wanted."""
        if self._keys_due is not None and now >= self._keys_due:
            self._send_keys(now)  # type: ignore[attr-defined]
        self._pump(now)
        return bool(self._ring.buffered) or self._keys_due is not None

    def _pump(self, now: float) -> None:
        """Send every frame due now, with its marks, in one write."""
        ring = self._ring
        if not ring.buffered:
            return
        elapsed = 0 if self._t0 is None else int((now - self._t0) * 1000)
        lead = self._lead_ms
        n = ring.frames_due(elapsed, lead)
        whole = ring.buffered // FRAME_BYTES
        final = self._segments[-1][0].audio_done if self._segments else False
        if final and n == whole and ring.buffered > whole * FRAME_BYTES:
            # The answer's last, partial frame goes out padded with silence, if the lead has room.
            queued = ring.sent + ring.padded - ring.heard
            if lead * BYTES_PER_MS - queued >= (n + 1) * FRAME_BYTES:
                n += 1
        if n == 0:
            return
        if self._t0 is None:
            self._t0 = now
        frames = ring.pop(n, final=final)
        parts: list[bytes] = []
        writer = self._writer
        for frame in frames:
            # Which answers this frame carries; an answer whose audio ends in it gets a mark
            # right after it, and so does the newest one every ``mark_frames`` frames.
            take, last, ended = FRAME_BYTES, None, []
            while take and self._segments:
                segment = self._segments[0]
                turn = segment[0]
                used = min(take, segment[1])
                if turn.first_out_at is None:
                    turn.first_out_at = now
                    if turn.speech_end_at is not None:
                        self._stats.v2v_ms.append((now - turn.speech_end_at) * 1000)
                turn.out += used
                take -= used
                last = turn
                segment[1] -= used
                if not segment[1]:
                    self._segments.popleft()
                    if turn.audio_done or self._segments:  # the answer ends here (not a dry ring)
                        ended.append(turn)
            self._since_mark += 1
            if last is not None and last not in ended and self._since_mark >= self._mark_frames:
                ended.append(last)
            parts.append(_frame(writer.media(frame)))
            for turn in ended:
                parts.append(_frame(writer.mark(self._mark_name(turn))))  # type: ignore[attr-defined]
        self.frames_out += len(frames)
        self._twilio.send_frames(b"".join(parts))
        if not ring.buffered:
            self._check_stored()

    def _check_stored(self) -> None:
        """Store every answer whose text and heard part are both known (only a done one can be)."""
        for turn in list(self._unstored.values()):
            if turn.done:
                self._maybe_store_assistant(turn)  # type: ignore[attr-defined]
