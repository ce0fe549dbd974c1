"""Plain-Python twin of ``_wscore.pxi``: a WebSocket connection's per-frame half.

``WsCore`` is what ``relay.ws.Connection`` does with every read and every write: bytes from
the transport into frames (``FrameReader``), each text message offered to the call's media core
(``route``), or queued for ``recv`` when the core leaves it; the peer's message
rate counted; pings answered; frames built, masked on the client side, written straight to the
transport. ``Connection`` subclasses it and owns the asyncio half (``recv``, the closing
handshake). The compiled twin is ``_wscore.pxi``; both make the same calls and the same writes.

Hooks the subclass provides: ``_violation(kind, reason, code)``, ``_on_close_frame(payload)``
and ``_wake()``.
"""

from __future__ import annotations

import binascii
import collections
import os
from collections.abc import Callable
from typing import Any

from relay._codec_py import Resampler, ulaw_to_pcm16
from relay._framing_py import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, build_frame
from relay._messages_py import _APPENDS, WIRE_BINARY, WIRE_PCM16, _append, b64_decoded_len
from relay.errors import FrameError

__all__ = ["LEG_BACKEND", "LEG_TWILIO", "OPEN", "WsCore"]

OPEN = "open"
LEG_TWILIO, LEG_BACKEND = 0, 1


class WsCore:
    __slots__ = (
        "_clock",
        "_wire",
        "_up",
        "_leg",
        "_mask_at",
        "_masks",
        "_max_rate",
        "_media",
        "messages",
        "_reader",
        "transport",
        "_window_count",
        "_window_start",
        "client",
        "state",
    )

    def __init__(self, transport: Any, client: bool, max_size: int, max_rate: int, clock: Callable[[], float]) -> None:
        self.transport = transport
        self.client = bool(client)  # every frame we send is masked; every frame we read must not be
        self._reader = FrameReader(not self.client, max_size)
        # Messages per second allowed from the peer (0: no limit), counted in one-second
        # windows; the clock is read only when a window's count passes the limit.
        self._max_rate = max_rate
        self._window_start = 0.0
        self._window_count = 0
        self._clock = clock
        self.messages: collections.deque[bytes | bytearray] = collections.deque()
        self._masks = b""  # random masking keys, 4 bytes each, used from _mask_at on
        self._mask_at = 0
        self.state = OPEN
        # Per-frame messages are handled right here, by the call's media core when routed;
        # what it leaves goes to ``recv``.
        self._media: Any = None
        self._leg = LEG_TWILIO
        self._wire = 0
        self._up: Resampler | None = None  # WIRE_PCM16: the caller's audio, 8 -> 16 kHz

    @property
    def wire(self) -> int:
        """The backend protocol's caller-audio append (``relay.backends.WIRE_*``) ``send_append`` writes."""
        return self._wire

    @wire.setter
    def wire(self, value: int) -> None:
        if type(value) is not int or not 0 <= value < len(_APPENDS):
            raise ValueError(f"wire must be one of 0..{len(_APPENDS) - 1}")
        self._wire = value
        # The caller's 8 kHz, upsampled for a PCM16 backend: one stream per connection.
        self._up = Resampler(8000, 16000) if value == WIRE_PCM16 else None

    def route(self, media: Any, leg: int = LEG_TWILIO) -> None:
        """Offer every text message to ``media`` (a ``MediaCore``) first; ``None`` unroutes the
        connection: from then on its messages reach no call."""
        self._media = media
        self._leg = leg

    # ---- bytes from the transport

    def data_received(self, data: bytes) -> None:
        media = self._media
        if media is None or self._leg == LEG_TWILIO:
            self._read(data)
            return
        # The backend leg: every audio delta of this read goes into the ring first, and what is
        # due then leaves in one write to Twilio (a burst of deltas is one write, not one each).
        media._batch = True
        now: list[float] = []
        try:
            self._read(data, now)
        finally:
            media._release(now[0] if now else -1.0)

    def _read(self, data: bytes, now_out: list[float] | None = None) -> None:
        reader = self._reader
        reader.feed(data)
        now = None
        while True:
            try:
                frame = reader.read()
            except FrameError as exc:
                self._violation("size" if exc.code == 1009 else "frame", exc.reason, exc.code)  # type: ignore[attr-defined]  # the subclass's hook
                return
            if frame is None:
                break
            opcode, payload = frame
            if self._max_rate:
                self._window_count += 1
                if self._window_count > self._max_rate:
                    t = self._clock()
                    if t - self._window_start < 1.0:
                        self._violation("rate", f"over {self._max_rate} messages per second", 1008)  # type: ignore[attr-defined]  # the subclass's hook
                        return
                    self._window_start, self._window_count = t, 1
            if opcode == OP_TEXT or (opcode == OP_BINARY and self._wire == WIRE_PCM16):
                # (Gemini Live's server may send its JSON in binary frames: read alike.)
                # Order holds: while anything waits for ``recv``, later messages queue behind it.
                if not self.messages:
                    media = self._media
                    if media is not None:
                        if now is None:
                            now = self._clock()
                            if now_out is not None:
                                now_out.append(now)
                        handled = (media.twilio_frame if self._leg == LEG_TWILIO else media.backend_frame)(payload, now)
                        if handled:
                            continue
                self.messages.append(payload)
            elif opcode == OP_CLOSE:
                self._on_close_frame(payload)  # type: ignore[attr-defined]  # the subclass's hook
                break
            elif opcode == OP_PING:
                self._write(build_frame(OP_PONG, payload, self._mask()))
            elif opcode == OP_BINARY:
                if self._wire != WIRE_BINARY:
                    # Twilio and JSON backends speak text; a binary message is not ours to guess at.
                    self._violation("binary", "binary messages are not accepted", 1003)  # type: ignore[attr-defined]  # the subclass's hook
                    break
                # A binary backend's audio: to the media core as a delta is, else queued in order
                # (as a bytearray: what tells ``recv``'s reader it is audio, not an event).
                if not self.messages:
                    media = self._media
                    if media is not None and self._leg == LEG_BACKEND:
                        if now is None:
                            now = self._clock()
                            if now_out is not None:
                                now_out.append(now)
                        if media.backend_binary(payload, now):
                            continue
                self.messages.append(bytearray(payload))
        if self.messages or self.state != OPEN:
            self._wake()  # type: ignore[attr-defined]  # the subclass's hook

    # ---- writing

    def _mask(self) -> bytes | None:
        if not self.client:
            return None
        at = self._mask_at
        if at + 4 > len(self._masks):
            self._masks, at = os.urandom(1024), 0  # one syscall per 256 frames
        self._mask_at = at + 4
        return self._masks[at : at + 4]

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def send(self, message: bytes) -> None:
        """Send one text message (already-encoded JSON); a no-op once closing."""
        if self.state == OPEN:
            self._write(build_frame(OP_TEXT, message, self._mask()))

    def send_frames(self, frames: bytes) -> None:
        """Write frames already built (a media core's paced frames and marks); a no-op once closing."""
        if self.state == OPEN:
            self._write(frames)

    def send_many(self, messages: tuple[bytes, ...] | list[bytes]) -> None:
        """Send text messages in one transport write; a no-op once closing."""
        if self.state == OPEN:
            self._write(b"".join([build_frame(OP_TEXT, m, self._mask()) for m in messages]))

    def send_append(self, payload: bytes) -> None:
        """Send caller audio (base64 μ-law) as the wire's append, framed in one go: as is, or
        (Deepgram) decoded into a binary frame, or (Gemini) transcoded to base64 PCM16 at 16 kHz."""
        if self._wire >= WIRE_BINARY and type(payload) is not bytes:
            raise TypeError(f"send_append() takes bytes, not {type(payload).__name__}")
        if self.state != OPEN:
            return
        if self._wire >= WIRE_BINARY:
            b64_decoded_len(payload)  # PayloadError unless padded standard base64
            raw = binascii.a2b_base64(payload)
            if self._up is None:
                self._write(build_frame(OP_BINARY, raw, self._mask()))
                return
            payload = binascii.b2a_base64(self._up.process(ulaw_to_pcm16(raw)), newline=False)
        self._write(build_frame(OP_TEXT, _append(payload, self._wire), self._mask()))
