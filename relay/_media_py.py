"""Plain-Python reference of a call's per-frame media core.

``MediaCore`` is a leaf: it knows the playout ring, the gap filler, the Twilio writer and the
framing, and nothing of turns, transcripts or backends' event names. A caller's ``media`` goes
into the gap filler and on to the backend (held, bounded, while no backend session is ready);
an agent's audio delta goes into the ring, which is paced out to Twilio in 20 ms frames with
their marks, one write per pump. It counts the bytes of every answer (``ItemAudio``), names the
marks, reads their echoes, and on barge-in cuts at what the caller heard.

What happened reaches the conversation that owns the core (``relay.conversation``) as plain
values: the ``ItemAudio`` records it reads, and the ``on_event(kind, item_id, now)`` hook, called
only when something changes for a turn (a new item's audio, an answer heard to its end, the
last mark echoed), never for a steady frame. The compiled twin is ``_media.pxi``; the two send
the same bytes, in the same writes, and leave the same state, for every input.
"""

from __future__ import annotations

import binascii
import collections
from collections.abc import Callable
from typing import Any

from relay import twilio
from relay._codec_py import Resampler, pcm16_to_ulaw
from relay._framing_py import build_frame
from relay._messages_py import (
    WIRE_BINARY,
    WIRE_PCM16,
    TwilioWriter,
    b64_decoded_len,
    parse_audio_delta,
    parse_gemini_audio,
    parse_media,
)
from relay._playout_py import MAX_MS, GapFiller, PlayoutRing, _int, silence_b64
from relay.audio_format import BYTES_PER_MS, FRAME_BYTES, FRAME_MS
from relay.errors import PayloadError, ProtocolError

__all__ = ["EV_AUDIO_ERROR", "EV_NEW_ITEM", "EV_PLAYED", "ItemAudio", "MediaCore"]

OP_TEXT = 0x1

# ``on_event`` kinds.
EV_NEW_ITEM = 1  # audio came for an item nobody announced (``add_item``): it is now known
EV_PLAYED = 2  # a mark echo: an ended answer is heard to its end, or all audio sent is heard
EV_AUDIO_ERROR = 3  # a delta was dropped (not base64, or more than the ring holds)


def _frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (the server side of the Twilio leg)."""
    return build_frame(OP_TEXT, payload)


class ItemAudio:
    """One answer's audio, in bytes of 8 kHz μ-law (read-only outside the core)."""

    __slots__ = (
        "ended",
        "first_in_at",
        "first_out_at",
        "heard_ms",
        "interrupted",
        "item_id",
        "marked",
        "out",
        "played",
        "played_at",
        "produced",
        "response_id",
    )

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.produced = 0  # bytes the backend produced for it
        self.out = 0  # bytes sent to Twilio
        self.marked = 0  # ``out`` at the last mark sent
        self.played = 0  # bytes known played (the last mark echoed)
        self.played_at: float | None = None  # loop time of that echo
        self.first_in_at: float | None = None  # loop time its first audio came from the backend
        self.first_out_at: float | None = None  # loop time its first frame was sent
        self.ended = False  # no more audio will come for it
        self.interrupted = False
        self.heard_ms: int | None = None  # set when the caller interrupted it
        self.response_id = ""  # the response it belongs to ("" until a delta names it)

    def __repr__(self) -> str:
        return (
            f"ItemAudio({self.item_id!r}, produced={self.produced}, out={self.out}, played={self.played}, "
            f"ended={self.ended}, interrupted={self.interrupted})"
        )


def _no_event(kind: int, item_id: str, now: float) -> None:
    pass


def _no_clock() -> None:
    pass


class MediaCore:
    __slots__ = (
        "_backend",
        "_batch",
        "_batch_due",
        "_cleared",
        "_clocked",
        "_current",
        "_cut_response",
        "_dropped",
        "_epoch",
        "_gaps",
        "_gate_open",
        "_held",
        "_items",
        "_lead_ms",
        "_live",
        "_wire",
        "_down",
        "_mark_frames",
        "_pace_ms",
        "_preroll",
        "_marks",
        "_ring",
        "_segments",
        "_since_mark",
        "_t0",
        "_ts0",
        "_twilio",
        "_writer",
        "frames_dropped",
        "frames_filled",
        "frames_held",
        "frames_in",
        "frames_late",
        "frames_out",
        "marks_out",
        "on_event",
        "on_wants_clock",
    )

    def __init__(
        self,
        twilio_out: Any,
        stream_sid: str,
        *,
        lead_ms: int,
        mark_frames: int,
        held_frames: int,
        max_gap_fill_ms: int,
        pace_ms: int = FRAME_MS,
        preroll_frames: int = 0,
    ) -> None:
        self._twilio = twilio_out
        self._pace_ms = _int(pace_ms, "pace_ms", FRAME_MS, MAX_MS)
        self._writer = TwilioWriter(stream_sid)
        self._lead_ms = lead_ms
        self._mark_frames = mark_frames
        self.on_wants_clock: Callable[[], None] = _no_clock
        self.on_event: Callable[[int, str, float], None] = _no_event
        self.frames_in = self.frames_out = self.frames_held = self.frames_dropped = 0
        self.frames_filled = self.frames_late = self.marks_out = 0
        # inbound
        self._backend: Any = None
        self._gate_open = False  # the current backend confirmed its audio format
        self._held: collections.deque[tuple[bytes, int]] = collections.deque(maxlen=max(1, held_frames))
        # The last frames the current session was sent, replayed to a session that takes over
        # (``attach(replay=True)``): none kept unless asked for.
        self._preroll: collections.deque[tuple[bytes, int]] | None = (
            collections.deque(maxlen=preroll_frames) if preroll_frames > 0 else None
        )
        self._gaps = GapFiller(FRAME_MS, max_gap_fill_ms)
        self._epoch: float | None = None  # loop time of Twilio timestamp 0
        self._ts0: int | None = None  # Twilio timestamp of the current backend session's audio 0
        # outbound
        self._ring = PlayoutRing(FRAME_BYTES)
        self._segments: collections.deque[list[Any]] = collections.deque()  # [ItemAudio, bytes in ring]
        self._t0: float | None = None  # loop time of the first frame sent (the ring's clock 0)
        self._since_mark = 0
        self._clocked = False  # ticks were asked for (``on_wants_clock``) and are still wanted
        # A read of the backend leg is in progress (deltas only fill the ring), and some did:
        # the read's end sends what is due (``_release``).
        self._batch = self._batch_due = False
        self._current: ItemAudio | None = None  # the answer audio last came for
        self._live: ItemAudio | None = None  # where deltas with no item go (GPT-Live)
        # The backend's wire (``relay.backends.WIRE_*``): how its audio is encoded; for PCM16 at
        # 24 kHz (Gemini Live), the one stream it is downsampled in.
        self._wire = 0
        self._down: Resampler | None = None
        self._items: dict[str, ItemAudio] = {}
        self._dropped: set[str] = set()  # interrupted items: their late deltas are dropped
        self._cut_response = ""  # the response of the last item cut: its later items are dropped
        self._marks: dict[str, tuple[ItemAudio, int]] = {}  # sent, not echoed, in order
        self._cleared: set[str] = set()  # sent before a clear: their echoes mean "cleared"

    # ---------------------------------------------------------------- state the owner reads

    @property
    def buffered(self) -> int:
        """Bytes of answer audio in the ring, not yet sent."""
        return self._ring.buffered

    @property
    def wire(self) -> int:
        return self._wire

    @wire.setter
    def wire(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= WIRE_PCM16:
            raise ValueError(f"wire must be one of 0..{WIRE_PCM16}")
        self._wire = value
        self._down = Resampler(24000, 8000) if value == WIRE_PCM16 else None

    @property
    def marks_pending(self) -> int:
        """Marks sent and not echoed yet."""
        return len(self._marks)

    @property
    def gate_open(self) -> bool:
        return self._gate_open

    @property
    def current(self) -> ItemAudio | None:
        return self._current

    def item(self, item_id: str) -> ItemAudio | None:
        return self._items.get(item_id)

    def state(self) -> dict[str, Any]:
        """Every field, as plain values: what tests compare between the core and its twin."""
        ring = self._ring
        return {
            "ring": (ring.buffered, ring.pushed, ring.sent, ring.padded, ring.heard, ring.dropped),
            "segments": [(segment[0].item_id, segment[1]) for segment in self._segments],
            "since mark": self._since_mark,
            "epoch": self._epoch,
            "ts0": self._ts0,
            "t0": self._t0,
            "held": list(self._held),
            "preroll": list(self._preroll) if self._preroll is not None else None,
            "gate": self._gate_open,
            "clocked": self._clocked,
            "pace": self._pace_ms,
            "current": self._current.item_id if self._current is not None else None,
            "items": [
                (
                    i.item_id,
                    i.produced,
                    i.out,
                    i.marked,
                    i.played,
                    i.played_at,
                    i.first_in_at,
                    i.first_out_at,
                    i.ended,
                    i.interrupted,
                    i.heard_ms,
                )
                for i in self._items.values()
            ],
            "marks": [(name, item.item_id, cum) for name, (item, cum) in self._marks.items()],
            "cleared": sorted(self._cleared),
            "dropped": sorted(self._dropped),
            "cut": self._cut_response,
            "live": self._live.item_id if self._live is not None else None,
            "wire": self._wire,
        }

    def audio_ms_to_time(self, audio_ms: int) -> float | None:
        """Loop time of ``audio_ms`` into the current backend session's input audio, if known."""
        if self._epoch is None or self._ts0 is None:
            return None
        return self._epoch + (self._ts0 + audio_ms) / 1000

    # ---------------------------------------------------------------- the backend session

    def attach(self, backend: Any, replay: bool = False) -> None:
        """A new backend session: caller audio is held until ``open_gate``; with ``replay``, the
        pre-roll the previous session was sent goes first."""
        self._backend = backend
        self._gate_open = False
        self._ts0 = None
        if self._down is not None:
            self._down.flush()  # a new session's audio: no filter memory of the last one's
        if replay and self._preroll:
            self._held.extendleft(reversed(self._preroll))
        if self._preroll is not None:
            self._preroll.clear()

    def detach(self) -> None:
        self._backend = None
        self._gate_open = False

    def open_gate(self) -> None:
        """The session confirmed its format: held caller audio goes to it, then every frame."""
        self._gate_open = True
        held, self._held = list(self._held), collections.deque(maxlen=self._held.maxlen)
        if held:
            self._ts0 = held[0][1]
        for payload, timestamp in held:
            self._backend.send_append(payload)
            if self._preroll is not None:
                self._preroll.append((payload, timestamp))

    # ---------------------------------------------------------------- Twilio → backend

    def twilio_frame(self, message: bytes, now: float) -> bool:
        """The per-frame path: a well-formed ``media`` or mark echo handled as it arrives; False
        for anything else, handed up unparsed (the owner parses it once)."""
        try:
            media = parse_media(message)
            if media is not None:
                self.caller_audio(media[0], media[1], now)
                return True
            if b'"mark"' in message:
                event = twilio.parse_event(message)
                if isinstance(event, twilio.Mark):
                    self.mark(event.name, now)
                    return True
        except ProtocolError:
            pass  # handed up: the owner's parse says what is wrong, and the call closes
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
            if self._preroll is not None:
                self._preroll.append((payload, timestamp))
            return
        if len(self._held) == self._held.maxlen:
            self.frames_dropped += 1
        self._held.append((payload, timestamp))
        self.frames_held += 1

    def mark(self, name: str, now: float) -> None:
        """A mark echo: the audio before it played (Twilio plays in order), unless it was cleared."""
        if name in self._cleared:
            # Echoed because of our clear: it means "cleared", not "played" (PROTOCOLS §1.4).
            self._cleared.discard(name)
            return
        if name not in self._marks:
            return
        heard_out = None
        while self._marks:
            first = next(iter(self._marks))
            item, cum = self._marks.pop(first)
            if not item.interrupted and cum > item.played:
                item.played = cum
                item.played_at = now
                if item.ended and cum >= item.produced:
                    heard_out = item
            if first == name:
                break
        if heard_out is not None or not (self._marks or self._ring.buffered):
            self.on_event(EV_PLAYED, heard_out.item_id if heard_out is not None else "", now)

    # ---------------------------------------------------------------- backend → Twilio

    def backend_frame(self, message: bytes, now: float) -> bool:
        """The per-frame path: a well-formed audio delta handled as it arrives; False for any
        other event, handed up unparsed."""
        if self._wire == WIRE_BINARY:
            return False  # its audio comes in binary frames (``backend_binary``): a text one is an event
        if self._wire == WIRE_PCM16:
            data = parse_gemini_audio(message)
            return data is not None and self._live_push(data, now)
        try:
            delta = parse_audio_delta(message)
        except ProtocolError:
            return False
        if delta is None:
            return False
        if not delta[0]:
            return self._live_push(delta[1], now)
        self.agent_audio(delta[0], delta[1], now, delta[2])
        return True

    def backend_binary(self, payload: bytes, now: float) -> bool:
        """A binary frame from the backend (Deepgram's μ-law): into the live item, or handed up
        (False) when there is none, or when the wire has no binary audio."""
        if type(payload) is not bytes:
            raise TypeError(f"backend_binary() takes bytes, not {type(payload).__name__}")
        if self._wire != WIRE_BINARY:
            return False
        return self._live_push(payload, now)

    def _live_push(self, payload: bytes, now: float) -> bool:
        """A delta with no item: into the live item, or handed up (False) when there is none."""
        item = self._live
        if item is None or item.ended:
            return False
        self._push(item, payload, now)
        return True

    def live_item(self, item_id: str) -> ItemAudio:
        """The item deltas with no item id go to from now on (a GPT-Live session's audio segment)."""
        self._live = self.add_item(item_id)
        return self._live

    def add_item(self, item_id: str) -> ItemAudio:
        """An answer the backend announced (its audio may follow)."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = ItemAudio(item_id)
        return item

    def agent_audio(self, item_id: str, payload: bytes, now: float, response_id: str = "") -> None:
        if item_id in self._dropped:
            return  # a late delta of an item the caller interrupted
        item = self._items.get(item_id)
        if item is None:
            item = self.add_item(item_id)
            self.on_event(EV_NEW_ITEM, item_id, now)
        if item.ended:
            return
        if response_id and not item.response_id:
            item.response_id = response_id
            if response_id == self._cut_response:
                # A later item of the response the caller cut (a preamble's answer): never heard.
                item.ended = item.interrupted = True
                item.heard_ms = 0
                self._dropped.add(item.item_id)
                return
        self._push(item, payload, now)

    def _push(self, item: ItemAudio, payload: bytes, now: float) -> None:
        """An answer's audio into the ring, sent at once as far as the lead allows."""
        try:
            n = self._push_audio(payload)
        except ProtocolError:  # not base64, or an answer longer than the ring holds
            self.on_event(EV_AUDIO_ERROR, item.item_id, now)
            return
        if item.produced == 0:
            item.first_in_at = now
        item.produced += n
        if self._segments and self._segments[-1][0] is item:
            self._segments[-1][1] += n
        else:
            self._segments.append([item, n])
        self._current = item
        if self._batch:
            self._batch_due = True  # the read's end sends it (_release)
        elif not self._defer(now):
            self._pump(now)
        if self._ring.buffered and not self._clocked:
            self._clocked = True  # asked once, until a tick says it needs no more
            self.on_wants_clock()

    def _push_audio(self, payload: bytes) -> int:
        """Audio in the wire's encoding into the ring, as μ-law; returns its length."""
        if self._wire == WIRE_BINARY:
            return self._ring.push_ulaw(payload)
        if self._down is None:
            return self._ring.push(payload)
        n = b64_decoded_len(payload)
        if n & 1:
            raise PayloadError("PCM16 audio must have an even number of bytes")
        return self._ring.push_ulaw(pcm16_to_ulaw(self._down.process(binascii.a2b_base64(payload))))

    def end_item(self, item_id: str) -> None:
        """No more audio will come for the item (its last frame may now go out padded)."""
        item = self._items.get(item_id)
        if item is not None:
            item.ended = True

    def end_all(self) -> None:
        """The backend session is gone: no more audio comes for any answer."""
        for item in self._items.values():
            item.ended = True

    def flush(self, now: float) -> None:
        """Send what is due, and the final mark of every ended answer whose audio all left
        before it was known to be the last."""
        self._pump(now)
        for item in self._items.values():
            if (
                item.ended
                and not item.interrupted
                and item.out == item.produced
                and item.marked < item.out
                and not any(segment[0] is item for segment in self._segments)
            ):
                self._twilio.send_frames(_frame(self._writer.mark(self._mark_name(item))))

    def tick(self, now: float) -> bool:
        """The shared clock's 20 ms tick: release the frames due. False: no more ticks wanted."""
        self._pump(now)
        self._clocked = bool(self._ring.buffered)
        return self._clocked

    def interrupt(self, now: float) -> ItemAudio | None:
        """Barge-in: if the caller has audio of the current answer left to hear, Twilio ``clear``,
        the ring and every later delta of the answer dropped, and the answer cut at what was
        heard (``heard_ms``). Returns the cut answer, or None when there was nothing to cut."""
        item = self._being_heard(now)
        if item is None or item.interrupted or item.produced == 0:
            return None
        if item.ended and item.played >= item.produced:
            return None  # everything was heard: no clear, no truncate (PROTOCOLS §2.5 step 4)
        self._twilio.send(self._writer.clear())
        self._ring.clear()
        if self._down is not None:
            self._down.flush()  # the next answer starts afresh, not from the cut one's filter memory
        for segment in self._segments:
            later = segment[0]
            later.ended = True
            if later is not item and later.response_id and later.response_id == item.response_id:
                later.interrupted = True  # queued behind the item cut, in its response: never heard
                later.heard_ms = 0
                self._dropped.add(later.item_id)
        self._segments.clear()
        self._cleared.update(self._marks)
        self._marks.clear()
        item.heard_ms = self._heard(item, now) // BYTES_PER_MS
        item.interrupted = True
        item.ended = True
        self._dropped.add(item.item_id)
        self._cut_response = item.response_id
        return item

    def _heard(self, item: ItemAudio, now: float) -> int:
        """Bytes of ``item`` the caller has heard by ``now``: to its last echoed mark, then as
        time has passed since, never past what was sent."""
        since = item.played_at if item.played_at is not None else item.first_out_at
        if since is None:
            return item.played
        return max(item.played, min(item.out, item.played + int((now - since) * 1000 * BYTES_PER_MS)))

    def _being_heard(self, now: float) -> ItemAudio | None:
        """The answer the caller is hearing: the one audio last came for, or, when its response
        has several items (a preamble, then the answer), the first of them not yet heard through."""
        item = self._current
        if item is None or not item.response_id:
            return item
        for other in self._items.values():
            if other is item:
                break
            if (
                other.response_id == item.response_id
                and not other.interrupted
                and other.produced > 0
                and self._heard(other, now) < other.produced
            ):
                return other
        return item

    def _mark_name(self, item: ItemAudio) -> str:
        self._since_mark = 0
        item.marked = item.out
        name = f"{item.item_id}:{item.out}"
        self._marks[name] = (item, item.out)
        self.marks_out += 1
        return name

    def _release(self, now: float) -> None:
        """The end of a read of the backend leg: what its deltas made due goes in one write."""
        self._batch = False
        if self._batch_due:
            self._batch_due = False
            if not self._defer(now):
                self._pump(now)

    def _defer(self, now: float) -> bool:
        """With a clock slower than the frame period, audio pushed while Twilio still holds more
        than a period and a frame of it waits for the clock, which sends it in one write with
        the frames due then; otherwise (an answer's first frames, a queue running low) it goes
        at once. The caller hears the same either way: Twilio never runs dry before the tick."""
        if self._pace_ms <= FRAME_MS or self._t0 is None:
            return False
        elapsed = int((now - self._t0) * 1000)
        if elapsed < 0 or elapsed > MAX_MS:
            return False
        ring = self._ring
        ring.frames_due(elapsed, self._lead_ms)  # brings what the ear has heard up to now
        return ring.sent + ring.padded - ring.heard >= (self._pace_ms + FRAME_MS) * BYTES_PER_MS

    def _pump(self, now: float) -> None:
        """Send every frame due now, with its marks, in one write."""
        ring = self._ring
        if not ring.buffered:
            return
        elapsed = 0 if self._t0 is None else int((now - self._t0) * 1000)
        lead = self._lead_ms
        n = ring.frames_due(elapsed, lead)
        whole = ring.buffered // FRAME_BYTES
        final = self._segments[-1][0].ended if self._segments else False
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
                item = segment[0]
                used = min(take, segment[1])
                if item.first_out_at is None:
                    item.first_out_at = now
                item.out += used
                take -= used
                last = item
                segment[1] -= used
                if not segment[1]:
                    self._segments.popleft()
                    if item.ended or self._segments:  # the answer ends here (not a dry ring)
                        ended.append(item)
            self._since_mark += 1
            if last is not None and last not in ended and self._since_mark >= self._mark_frames:
                ended.append(last)
            parts.append(_frame(writer.media(frame)))
            for item in ended:
                parts.append(_frame(writer.mark(self._mark_name(item))))
        self.frames_out += len(frames)
        self._twilio.send_frames(b"".join(parts))
