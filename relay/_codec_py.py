"""Plain-Python reference of the codec part of the hot path (re-exported by ``_fastpath_py``).

G.711 μ-law ↔ PCM16 (little-endian, bit-exact with CPython's ``audioop``) and a streaming
PCM16 resampler for 8000 ↔ 16000 and 8000 ↔ 24000 Hz. The contract, with the resampler's
design (filters, delay, rounding), is the "Codec" section of ``_fastpath.pyi``; the compiled
twin is ``_codec.pxi``. Both use integer arithmetic only, so they agree bit for bit.

Inputs must be ``bytes`` (``bytearray``/``memoryview``/subclasses raise ``TypeError``), as
in the rest of the hot path: the relay only ever holds ``bytes`` here.
"""

from __future__ import annotations

import struct

__all__ = ["Resampler", "pcm16_to_ulaw", "ulaw_to_pcm16"]

# ---------------------------------------------------------------- G.711 μ-law (ITU-T G.711)

_BIAS = 0x84
_CLIP = 8159
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _ulaw_decode_one(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u >> 4) & 0x07)
    return _BIAS - t if u & 0x80 else t - _BIAS


def _ulaw_encode_14(v: int) -> int:
    """μ-law code of a 14-bit sample ``v`` (the PCM16 sample shifted right by 2)."""
    if v < 0:
        v, mask = -v, 0x7F
    else:
        mask = 0xFF
    v = min(v, _CLIP) + (_BIAS >> 2)
    seg = 0
    while seg < 8 and v > _SEG_END[seg]:
        seg += 1
    if seg >= 8:  # unreachable after the clip; kept to mirror the reference algorithm
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


# 256 decoded samples; 16384 codes indexed by the top 14 bits of the sample as unsigned 16 bits.
_DEC = tuple(_ulaw_decode_one(c) for c in range(256))
_ENC = bytes(_ulaw_encode_14(i - 0x4000 if i & 0x2000 else i) for i in range(0x4000))


def _need_bytes(data: object, what: str) -> None:
    if type(data) is not bytes:
        raise TypeError(f"{what} takes bytes, not {type(data).__name__}")


def ulaw_to_pcm16(data: bytes) -> bytes:
    _need_bytes(data, "ulaw_to_pcm16()")
    return struct.pack(f"<{len(data)}h", *map(_DEC.__getitem__, data))


def pcm16_to_ulaw(data: bytes) -> bytes:
    _need_bytes(data, "pcm16_to_ulaw()")
    if len(data) & 1:
        raise ValueError("PCM16 data must have an even number of bytes")
    return bytes(_ENC[u >> 2] for u in struct.unpack(f"<{len(data) >> 1}H", data))


# ---------------------------------------------------------------- streaming resampler

# Anti-alias low-pass filters for decimation by 2 (16 kHz) and 3 (24 kHz): linear-phase
# Kaiser-windowed sinc (beta 5), K = 16*M + 1 taps, cutoff 3800 Hz, scaled to sum exactly
# 32768 (Q15; the rounding residue goes to the centre tap). Response: -0.02 dB at 3 kHz,
# -1.2 dB at 3.4 kHz, -10.7 dB at 4 kHz, below -51 dB from 4.6 kHz (what aliases into the
# telephone band). Symmetric; sum(|h|) < 65536, so every accumulator fits in int32.
_DOWN_TAPS = {
    2: (
        -23,
        -19,
        75,
        70,
        -162,
        -186,
        282,
        411,
        -424,
        -813,
        571,
        1543,
        -700,
        -3124,
        788,
        10311,
        15568,
        10311,
        788,
        -3124,
        -700,
        1543,
        571,
        -813,
        -424,
        411,
        282,
        -186,
        -162,
        70,
        75,
        -19,
        -23,
    ),
    3: (
        -15,
        -20,
        4,
        50,
        67,
        5,
        -108,
        -159,
        -44,
        188,
        319,
        142,
        -282,
        -579,
        -348,
        380,
        1005,
        773,
        -466,
        -1827,
        -1821,
        525,
        4692,
        8715,
        10376,
        8715,
        4692,
        525,
        -1821,
        -1827,
        -466,
        773,
        1005,
        380,
        -348,
        -579,
        -282,
        142,
        319,
        188,
        -44,
        -159,
        -108,
        5,
        67,
        50,
        4,
        -20,
        -15,
    ),
}

_RATES = (8000, 16000, 24000)
_PASS, _UP, _DOWN = 0, 1, 2


def _mode(src_rate: object, dst_rate: object) -> tuple[int, int]:
    """(mode, factor) for a supported pair; TypeError / ValueError otherwise."""
    if not isinstance(src_rate, int) or not isinstance(dst_rate, int):
        raise TypeError("Resampler() rates must be int")
    if src_rate == dst_rate and src_rate in _RATES:
        return _PASS, 1
    if src_rate == 8000 and dst_rate in (16000, 24000):
        return _UP, dst_rate // 8000
    if dst_rate == 8000 and src_rate in (16000, 24000):
        return _DOWN, src_rate // 8000
    raise ValueError(
        f"unsupported resampling {src_rate} -> {dst_rate} Hz "
        "(supported: 8000 <-> 16000, 8000 <-> 24000, or the same rate)"
    )


def _clamp16(v: int) -> int:
    return -32768 if v < -32768 else 32767 if v > 32767 else v


class Resampler:
    __slots__ = ("_src", "_dst", "_mode", "_f", "_taps", "_prev", "_buf")

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        mode, f = _mode(src_rate, dst_rate)
        self._src, self._dst, self._mode, self._f = int(src_rate), int(dst_rate), mode, f
        self._taps = _DOWN_TAPS[f] if mode == _DOWN else ()
        self._reset()

    def _reset(self) -> None:
        self._prev = 0  # up: the previous input sample (0 before the stream)
        # down: the input from the oldest sample of the next output's window on, i.e.
        # x[M*m - (K-1)] ... (zeros before the stream)
        self._buf = [0] * (len(self._taps) - 1) if self._mode == _DOWN else []

    @property
    def src_rate(self) -> int:
        return self._src

    @property
    def dst_rate(self) -> int:
        return self._dst

    def process(self, chunk: bytes) -> bytes:
        _need_bytes(chunk, "process()")
        n = len(chunk)
        if n & 1:
            raise ValueError("PCM16 chunk must have an even number of bytes")
        if self._mode == _PASS:
            return chunk
        x = struct.unpack(f"<{n >> 1}h", chunk)
        if self._mode == _UP:
            return struct.pack(f"<{len(x) * self._f}h", *self._up(x))
        return self._down(x)

    def _up(self, x: tuple[int, ...]) -> list[int]:
        # y[L*n + j] = round(x[n-1] + (x[n] - x[n-1]) * (j + 1) / L), ties up; y[L*n + L-1] = x[n]
        out: list[int] = []
        a = self._prev
        if self._f == 2:
            for b in x:
                out += ((a + b + 1) >> 1, b)
                a = b
        else:
            for b in x:
                out += ((2 * a + b + 1) // 3, (a + 2 * b + 1) // 3, b)
                a = b
        self._prev = a
        return out

    def _down(self, x: tuple[int, ...]) -> bytes:
        # y[m] = clamp(floor((sum_k h[k] * x[M*m - k] + 2**14) / 2**15)), x[<0] = 0: output m
        # is due as soon as input sample M*m has arrived
        buf = self._buf
        buf.extend(x)
        taps, m, k = self._taps, self._f, len(self._taps)
        nout = (len(buf) - k + m) // m
        out = [_clamp16((sum(map(int.__mul__, taps, buf[s : s + k])) + 16384) >> 15) for s in range(0, nout * m, m)]
        del buf[: nout * m]
        return struct.pack(f"<{nout}h", *out)

    def flush(self) -> bytes:
        # Nothing is ever held back: every output is returned by the call that completes it.
        # flush() ends the stream and starts the next one from silence.
        self._reset()
        return b""

    def __repr__(self) -> str:
        return f"Resampler({self._src}, {self._dst})"
