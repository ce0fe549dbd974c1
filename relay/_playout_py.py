"""Plain-Python twin of ``_playout.pxi``: the playout ring, the gap filler, μ-law silence.

``PlayoutRing`` holds the agent's audio until it is paced out to Twilio in 20 ms frames;
``GapFiller`` keeps the caller's audio clock true across lost, duplicated and reordered
frames; ``silence_b64`` is one frame of μ-law silence. The contract is the "Playout" section
of ``_fastpath.pyi``; the compiled twin is ``_playout.pxi``, which must return exactly what
this module returns, and raise the same error class, for every input.

Written to be obviously right, not fast: the ring is a ``bytearray`` cut from the front (the
compiled ring is circular; only its ``capacity`` policy is modelled here, by arithmetic).
Sans-I/O: time is passed in, never read.
"""

from __future__ import annotations

import binascii

from relay._messages_py import b64_decoded_len
from relay.audio_format import BYTES_PER_MS, FRAME_BYTES, FRAME_MS
from relay.errors import ProtocolError

__all__ = ["GapFiller", "PlayoutRing", "silence_b64"]

SILENCE = 0xFF  # μ-law code of (positive) zero
MIN_CAPACITY = 4096  # the ring's first allocation; it doubles from there
MAX_FRAME = 1 << 20  # frame_bytes / frame_ms ceiling (a 2 min frame: anything above is a bug)
MAX_BYTES = 1 << 40  # max_bytes / max_fill_ms ceiling
MAX_MS = 1 << 53  # timestamps and elapsed / lead times (Twilio's are at most 15 digits)


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < lo or value > hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, not {value}")
    return int(value)


def _b64(data: bytes | bytearray) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def silence_b64(frame_bytes: int = FRAME_BYTES) -> bytes:
    """See ``_fastpath.pyi``."""
    n = _int(frame_bytes, "frame_bytes", 0, MAX_FRAME)
    return _b64(bytes([SILENCE]) * n)


class PlayoutRing:
    """See ``_fastpath.pyi``."""

    __slots__ = ("_fb", "_max", "_buf", "_cap", "_pushed", "_sent", "_padded", "_dropped", "_heard", "_clock")

    def __init__(self, frame_bytes: int = FRAME_BYTES, max_bytes: int = 8_000_000) -> None:
        self._fb = _int(frame_bytes, "frame_bytes", 1, MAX_FRAME)
        self._max = _int(max_bytes, "max_bytes", 0, MAX_BYTES)
        self._buf = bytearray()
        self._cap = 0  # what the compiled ring has allocated
        self._pushed = self._sent = self._padded = self._dropped = 0
        self._heard = 0  # bytes handed out (padding included) that the ear has heard
        self._clock = 0  # the elapsed_ms of the last frames_due

    # ---- read-only state

    @property
    def frame_bytes(self) -> int:
        return self._fb

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def pushed(self) -> int:
        return self._pushed

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def padded(self) -> int:
        return self._padded

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def heard(self) -> int:
        return self._heard

    @property
    def capacity(self) -> int:
        return self._cap

    # ---- operations

    def push(self, b64: bytes) -> int:
        if type(b64) is not bytes:
            raise TypeError(f"push() takes bytes, not {type(b64).__name__}")
        n = b64_decoded_len(b64)  # PayloadError unless padded standard base64
        self._room(n)
        self._buf += binascii.a2b_base64(b64)
        self._pushed += n
        return n

    def push_ulaw(self, ulaw: bytes) -> int:
        if type(ulaw) is not bytes:
            raise TypeError(f"push_ulaw() takes bytes, not {type(ulaw).__name__}")
        self._room(len(ulaw))
        self._buf += ulaw
        self._pushed += len(ulaw)
        return len(ulaw)

    def _room(self, n: int) -> None:
        need = len(self._buf) + n
        if need > self._max:
            raise ProtocolError("playout buffer full")
        if need > self._cap:  # first allocation 4 KiB, then doubling; never above max_bytes
            cap = self._cap or MIN_CAPACITY
            while cap < need:
                cap *= 2
            self._cap = min(cap, self._max)

    def pop(self, n: int = 1, *, final: bool = False) -> list[bytes]:
        final = bool(final)
        if not isinstance(n, int):
            raise TypeError(f"pop() n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError("pop() n must be >= 0")
        fb, buf = self._fb, self._buf
        k = min(n, len(buf) // fb)
        out = [_b64(buf[i * fb : (i + 1) * fb]) for i in range(k)]
        taken = k * fb
        if final and k < n and len(buf) > taken:  # the last partial frame, padded
            rest = bytes(buf[taken:])
            pad = fb - len(rest)
            out.append(_b64(rest + bytes([SILENCE]) * pad))
            self._padded += pad
            taken = len(buf)
        del buf[:taken]
        self._sent += taken
        return out

    def clear(self) -> int:
        n = len(self._buf)
        self._buf.clear()
        self._dropped += n
        # Barge-in also sends Twilio a clear, which drops its queue: nothing handed out is
        # still waiting to be heard.
        self._heard = self._sent + self._padded
        return n

    def frames_due(self, elapsed_ms: int, lead_ms: int) -> int:
        elapsed = _int(elapsed_ms, "elapsed_ms", 0, MAX_MS)
        lead = _int(lead_ms, "lead_ms", 0, MAX_MS)
        out = self._sent + self._padded
        if elapsed > self._clock:  # the ear hears in real time, but never ahead of the audio
            self._heard = min(out, self._heard + (elapsed - self._clock) * BYTES_PER_MS)
        self._clock = elapsed  # a clock that went back is re-based, not replayed
        room = lead * BYTES_PER_MS - (out - self._heard)
        if room < self._fb:
            return 0
        return min(room // self._fb, len(self._buf) // self._fb)

    def __repr__(self) -> str:
        return f"PlayoutRing(frame_bytes={self._fb}, max_bytes={self._max})"


class GapFiller:
    """See ``_fastpath.pyi``."""

    __slots__ = ("_f", "_max_fill", "_cap", "_tol", "_next", "_frames", "_filled", "_dropped", "_capped")

    def __init__(self, frame_ms: int = FRAME_MS, max_fill_ms: int = 1000) -> None:
        self._f = _int(frame_ms, "frame_ms", 1, MAX_FRAME)
        self._max_fill = _int(max_fill_ms, "max_fill_ms", 0, MAX_BYTES)
        self._cap = self._max_fill // self._f  # most silence frames for one gap
        self._tol = self._f // 2  # jitter accepted either side of a slot
        self._next = -1  # timestamp of the next slot on the grid; -1 before the first frame
        self._frames = self._filled = self._dropped = self._capped = 0

    @property
    def frame_ms(self) -> int:
        return self._f

    @property
    def max_fill_ms(self) -> int:
        return self._max_fill

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def filled(self) -> int:
        return self._filled

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def capped(self) -> int:
        return self._capped

    def accept(self, timestamp_ms: int) -> int:
        ts = _int(timestamp_ms, "timestamp_ms", 0, MAX_MS)
        f, tol = self._f, self._tol
        if self._next < 0:  # the first frame sets the grid
            self._next = ts + f
            self._frames += 1
            return 0
        d = ts - self._next
        if d < -tol:  # a duplicate, or a slot already filled or passed
            self._dropped += 1
            return -1
        k = 0 if d <= tol else (d - tol + f - 1) // f  # the nearest slot ahead (ties: earlier)
        self._next += (k + 1) * f
        if k > self._cap:
            k = self._cap
            self._capped += 1
        self._frames += 1
        self._filled += k
        return k

    def __repr__(self) -> str:
        return f"GapFiller(frame_ms={self._f}, max_fill_ms={self._max_fill})"
