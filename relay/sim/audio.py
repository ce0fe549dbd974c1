"""Audio for the simulators: G.711 μ-law, speech-like synthesis, and spoken text that can be read back.

Neither simulator can run speech recognition, yet both must know what was said: the Realtime
agent has to transcribe the caller, and the caller has to know what it heard. So every word
``speak()`` produces carries its own text in the least significant bit of its μ-law bytes
(one bit per sample, framed and checksummed), and ``transcribe()`` reads the words back from
whatever bytes arrive. The mark is inaudible (one mantissa step), and it survives only
bit-exact transport: a relay that decodes, resamples or drops a byte of a word loses that word,
which is exactly what the tests want to notice. Audio that carries no marks (a real WAV file)
transcribes to a bracketed duration, e.g. ``[speech 1.2 s]``.
"""

from __future__ import annotations

import struct
import wave
import zlib
from pathlib import Path

import numpy as np

from relay.audio_format import FRAME_BYTES, SAMPLE_RATE  # noqa: F401  (FRAME_BYTES: the simulators' frame)

ULAW_SILENCE = 0xFF  # μ-law code for 0

_BIAS = 0x84
_MAGIC = 0xB38E  # 16 bits that do not occur in silence (all ones) or in a run of zeros


def _build_decode_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int16)
    for code in range(256):
        u = ~code & 0xFF
        sign = u & 0x80
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        sample = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
        table[code] = -sample if sign else sample
    return table


ULAW_TO_PCM = _build_decode_table()


def ulaw_decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode μ-law bytes to int16 PCM (ITU-T G.711)."""
    return ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]


_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """Encode int16 PCM to μ-law bytes (ITU-T G.711; bit-exact with CPython's ``audioop``)."""
    v = pcm.astype(np.int32) >> 2  # G.711 quantises 14-bit magnitudes
    negative = v < 0
    mag = np.minimum(np.where(negative, -v, v), 8159) + 33
    seg = np.searchsorted(_SEG_END, mag, side="left").astype(np.int32)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8).tobytes()


def silence(ms: int) -> bytes:
    """Return ``ms`` milliseconds of μ-law silence."""
    return bytes([ULAW_SILENCE]) * (ms * SAMPLE_RATE // 1000)


def _crc8(data: bytes) -> int:
    return zlib.crc32(data) & 0xFF


def _frame_bits(word: str) -> np.ndarray:
    body = word.encode()[:255]
    header = struct.pack(">HB", _MAGIC, len(body))
    frame = header + body + bytes([_crc8(header + body)])
    return np.unpackbits(np.frombuffer(frame, dtype=np.uint8))


def _word_pcm(n_samples: int, pitch_hz: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllable-shaped burst: a few harmonics under a raised-cosine envelope."""
    t = np.arange(n_samples) / SAMPLE_RATE
    f0 = pitch_hz * (1.0 + 0.08 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6.28)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave_ = sum((0.6 / k) * np.sin(k * phase + rng.uniform(0, 6.28)) for k in range(1, 6))
    syllables = max(1, round(n_samples / (0.18 * SAMPLE_RATE)))
    envelope = 0.55 + 0.45 * np.abs(np.sin(np.pi * syllables * t / t[-1])) if n_samples > 1 else 1.0
    edge = min(n_samples // 2, int(0.02 * SAMPLE_RATE))
    if edge:
        ramp = np.linspace(0.0, 1.0, edge)
        envelope = envelope * np.concatenate([ramp, np.ones(n_samples - 2 * edge), ramp[::-1]])
    noise = rng.normal(0, 0.03, n_samples)
    return np.clip((wave_ * envelope + noise) * 9000, -32768, 32767).astype(np.int16)


def speak(text: str, *, pitch_hz: float = 130.0, ms_per_char: int = 60, gap_ms: int = 50) -> bytes:
    """Synthesize speech-like μ-law audio for ``text``, each word marked with its own text.

    Words last ``ms_per_char`` per character (at least 200 ms) with ``gap_ms`` between them,
    short enough that a voice activity detector hears one utterance.
    """
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    out = bytearray()
    words = text.split()
    for index, word in enumerate(words):
        bits = _frame_bits(word)
        n = max(int(0.2 * SAMPLE_RATE), len(word) * ms_per_char * SAMPLE_RATE // 1000, len(bits) + 400)
        ulaw = np.frombuffer(ulaw_encode(_word_pcm(n, pitch_hz, rng)), dtype=np.uint8).copy()
        start = (n - len(bits)) // 2  # centred: a word is heard once its middle has played
        ulaw[start : start + len(bits)] = (ulaw[start : start + len(bits)] & 0xFE) | bits
        out += ulaw.tobytes()
        if index < len(words) - 1:
            out += silence(gap_ms)
    return bytes(out)


def words_heard(ulaw: bytes | bytearray) -> list[tuple[int, str]]:
    """Return ``(byte offset, word)`` for every intact word mark in ``ulaw``, in order."""
    data = np.frombuffer(bytes(ulaw), dtype=np.uint8)
    if len(data) < 40:
        return []
    bits = (data & 1).astype(np.uint32)
    window = np.zeros(len(bits) - 15, dtype=np.uint32)
    for k in range(16):
        window |= bits[k : len(bits) - 15 + k] << (15 - k)
    found: list[tuple[int, str]] = []
    end_of_last = -1
    for pos in np.flatnonzero(window == _MAGIC):
        if pos < end_of_last:
            continue
        length_bits = bits[pos + 16 : pos + 24]
        if len(length_bits) < 8:
            break
        length = int(np.packbits(length_bits.astype(np.uint8))[0])
        total = 16 + 8 + 8 * length + 8
        if pos + total > len(bits):
            continue
        frame = np.packbits(bits[pos : pos + total].astype(np.uint8)).tobytes()
        header_body, crc = frame[:-1], frame[-1]
        if _crc8(header_body) != crc:
            continue
        try:
            word = header_body[3:].decode()
        except UnicodeDecodeError:
            continue
        found.append((int(pos), word))
        end_of_last = int(pos) + total
    return found


def transcribe(ulaw: bytes | bytearray) -> str:
    """Read back the text ``speak()`` put in ``ulaw``; unmarked speech gives ``[speech N.N s]``."""
    words = [w for _, w in words_heard(ulaw)]
    if words:
        return " ".join(words)
    return f"[speech {len(ulaw) / SAMPLE_RATE:.1f} s]"


def frame_energy_dbfs(frame: bytes | bytearray) -> float:
    """RMS level of a μ-law frame in dBFS (silence is -inf, full scale is 0)."""
    pcm = ulaw_decode(frame).astype(np.float64)
    rms = float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


def write_wav(path: str | Path, ulaw: bytes | bytearray) -> None:
    """Write μ-law audio as a 16-bit PCM mono 8 kHz WAV file any player opens."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(ulaw_decode(ulaw).astype("<i2").tobytes())


def read_wav(path: str | Path) -> bytes:
    """Read a 16-bit PCM mono 8 kHz WAV file as μ-law bytes (what Twilio would send)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: need 16-bit PCM mono 8000 Hz WAV")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return ulaw_encode(pcm)
