"""The codec part of the hot path: G.711 μ-law ↔ PCM16 and the streaming Resampler.

Three oracles: the stdlib ``audioop`` (the G.711 reference), the plain-Python twin
(``relay._codec_py``, re-exported by ``relay._fastpath_py``) that the compiled module must equal
bit for bit, and numpy versions of the formulas documented in ``_fastpath.pyi``. Signal tests
(constant, sine round trip, aliasing) measure values, never time.
"""

from __future__ import annotations

import importlib
import math
import struct
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _codec_py
from relay import _fastpath_py as ref

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# No skip: a missing build must fail loudly.
fast = importlib.import_module("relay._fastpath")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAIRS = [(8000, 16000), (8000, 24000), (16000, 8000), (24000, 8000), (8000, 8000), (16000, 16000), (24000, 24000)]
RESAMPLING = [p for p in PAIRS if p[0] != p[1]]
NON_BYTES: list[Any] = [bytearray(b"\x01\x02"), memoryview(b"\x01\x02"), "ab", None, 7, [1, 2], (1, 2)]

ALL_CODES = bytes(range(256))
ALL_SAMPLES = struct.pack("<65536h", *range(-32768, 32768))


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the class is what we compare
        return "raise", type(exc)
    return "return", (type(value), value)


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int64)


def _bytes(samples: np.ndarray) -> bytes:
    return np.asarray(samples).astype("<i2").tobytes()


# --- μ-law --------------------------------------------------------------------------------


def test_twin_is_exported() -> None:
    assert set(_codec_py.__all__) == {"ulaw_to_pcm16", "pcm16_to_ulaw", "Resampler"}
    for name in _codec_py.__all__:
        assert getattr(ref, name) is getattr(_codec_py, name)
        assert hasattr(fast, name)


def test_decode_all_codes_equals_audioop(fp: ModuleType) -> None:
    assert fp.ulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_encode_all_samples_equals_audioop(fp: ModuleType) -> None:
    assert fp.pcm16_to_ulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)


def test_decode_encode_round_trip(fp: ModuleType) -> None:
    pcm = fp.ulaw_to_pcm16(ALL_CODES)
    # decode ∘ encode ∘ decode == decode: every decoded value is on the μ-law grid
    assert fp.ulaw_to_pcm16(fp.pcm16_to_ulaw(pcm)) == pcm
    # and encode ∘ decode is the identity, except that "negative zero" (0x7F) becomes 0xFF
    assert fp.pcm16_to_ulaw(pcm) == ALL_CODES.replace(b"\x7f", b"\xff")


def test_empty_input(fp: ModuleType) -> None:
    assert fp.ulaw_to_pcm16(b"") == b""
    assert fp.pcm16_to_ulaw(b"") == b""


@SETTINGS
@given(st.binary(max_size=2000))
def test_decode_random_equals_twin_and_audioop(data: bytes) -> None:
    got = fast.ulaw_to_pcm16(data)
    assert type(got) is bytes
    assert got == ref.ulaw_to_pcm16(data) == audioop.ulaw2lin(data, 2)


@SETTINGS
@given(st.binary(max_size=2001))
def test_encode_random_equals_twin_and_audioop(data: bytes) -> None:
    got = _outcome(fast.pcm16_to_ulaw, data)
    assert got == _outcome(ref.pcm16_to_ulaw, data)
    if len(data) % 2:
        assert got == ("raise", ValueError)
    else:
        assert got == ("return", (bytes, audioop.lin2ulaw(data, 2)))


@pytest.mark.parametrize("value", NON_BYTES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("name", ["ulaw_to_pcm16", "pcm16_to_ulaw"])
def test_codec_rejects_non_bytes(fp: ModuleType, name: str, value: Any) -> None:
    with pytest.raises(TypeError):
        getattr(fp, name)(value)


def test_encode_odd_length_raises(fp: ModuleType) -> None:
    with pytest.raises(ValueError):
        fp.pcm16_to_ulaw(b"\x00\x01\x02")


# --- Resampler: the documented formulas, in numpy -----------------------------------------


def _numpy_resample(src: int, dst: int, data: bytes) -> bytes:
    """The formulas of the Resampler docstring, on the whole stream at once."""
    x = _pcm(data)
    if src == dst or not len(x):
        return data
    if dst > src:
        L = dst // src
        prev = np.concatenate([[0], x[:-1]])
        y = np.empty((len(x), L), dtype=np.int64)
        for j in range(L):
            y[:, j] = (prev * (L - 1 - j) + x * (j + 1) + L // 2) // L
        return _bytes(y.reshape(-1))
    M = src // dst
    h = np.array(_codec_py._DOWN_TAPS[M], dtype=np.int64)
    acc = np.convolve(x, h)[: len(x) : M]  # acc[m] = sum_k h[k] x[M*m - k], x[<0] = 0
    return _bytes(np.clip((acc + 16384) >> 15, -32768, 32767))


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """Split ``data`` into chunks of the given sizes in samples (the rest is the last chunk)."""
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos : pos + 2 * size])
        pos += 2 * size
    chunks.append(data[pos:])
    return chunks


streams = st.integers(0, 1500).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
chunkings = st.lists(st.integers(0, 200), max_size=30)


@FEW
@given(st.sampled_from(PAIRS), streams, chunkings)
def test_resampler_chunked_equals_twin_and_one_shot(pair: tuple[int, int], data: bytes, sizes: list[int]) -> None:
    one_shot = _numpy_resample(*pair, data)
    rc, rp = fast.Resampler(*pair), ref.Resampler(*pair)
    outs = []
    for chunk in _cut(data, sizes):
        got = rc.process(chunk)
        assert type(got) is bytes
        assert got == rp.process(chunk)  # chunk by chunk
        outs.append(got)
    assert rc.flush() == rp.flush() == b""
    assert b"".join(outs) == one_shot
    # each implementation's one-shot result is the same stream
    assert fast.Resampler(*pair).process(data) == ref.Resampler(*pair).process(data) == one_shot


@FEW
@given(st.sampled_from(RESAMPLING), st.integers(-32768, 32767), st.integers(0, 1000), st.integers(-32768, 32767))
def test_resampler_extremes_equal_twin(pair: tuple[int, int], a: int, n: int, b: int) -> None:
    """Full-scale steps (where the low-pass overshoots and clamps) and long constant runs."""
    data = struct.pack("<h", a) * n + struct.pack("<h", b) * n + struct.pack("<h", a) * (n // 3)
    got = fast.Resampler(*pair).process(data)
    assert got == ref.Resampler(*pair).process(data) == _numpy_resample(*pair, data)


@pytest.mark.parametrize("pair", RESAMPLING)
@pytest.mark.parametrize("value", [16384, -16384, 1, -1, 3, 32767, -32768])
def test_impulse_response_rounding(fp: ModuleType, pair: tuple[int, int], value: int) -> None:
    """Impulses hit the rounding ties random audio almost never does: 16384 times an odd tap
    is exactly half a Q15 step (ties go up: floor(v + 1/2)); ±1 and 3 probe the small values."""
    for phase in range(3):
        data = bytes(2 * (50 + phase)) + struct.pack("<h", value) + bytes(200)
        assert fp.Resampler(*pair).process(data) == _numpy_resample(*pair, data)


@FEW
@given(st.sampled_from(PAIRS), st.lists(st.integers(0, 700), max_size=12))
def test_output_length_rule(pair: tuple[int, int], sizes: list[int]) -> None:
    """Up: L samples per input sample; down: output m once input M*m arrived: ceil(n/M) in all."""
    src, dst = pair
    for impl in (fast, ref):
        r, n_in, n_out = impl.Resampler(src, dst), 0, 0
        for size in sizes:
            out = r.process(b"\x01\x80" * size)
            n_in, n_out = n_in + size, n_out + len(out) // 2
            if dst >= src:
                assert len(out) == 2 * size * dst // src
            assert n_out == -(-n_in * dst // src)  # ceil(n_in * dst / src), at every call
        assert r.flush() == b""


def test_passthrough_returns_its_input(fp: ModuleType) -> None:
    for rate in (8000, 16000, 24000):
        r = fp.Resampler(rate, rate)
        chunk = bytes(range(100))
        assert r.process(chunk) == chunk
        assert r.flush() == b""


@pytest.mark.parametrize("pair", RESAMPLING)
@pytest.mark.parametrize("value", [0, 1000, -1, 32767, -32768])
def test_constant_stays_constant(fp: ModuleType, pair: tuple[int, int], value: int) -> None:
    """The Q15 taps sum to exactly 2**15, so a constant comes out exact once the history is full."""
    src, dst = pair
    y = _pcm(fp.Resampler(src, dst).process(struct.pack("<h", value) * (src // 50)))  # 20 ms
    settle = dst // src - 1 if dst > src else 16  # up: L-1 outputs of ramp; down: (K-1)/M = 2 ms
    assert (y[settle:] == value).all()
    assert len(y) == dst // 50


def _sine(rate: int, freq: float, amp: float, n: int, delay: float = 0.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * (np.arange(n) - delay) / rate)


@pytest.mark.parametrize("L", [2, 3])
def test_sine_round_trip(fp: ModuleType, L: int) -> None:
    """440 Hz at 8 kHz, up by L and back down: within 1.5% of full amplitude of the original,
    delayed by the documented (L-1)/L + 8 samples. (Measured: ~0.9%, mostly the linear
    interpolation's droop at 440 Hz.)"""
    amp = 10000.0
    x = np.round(_sine(8000, 440, amp, 8000)).astype(np.int16)
    up = fp.Resampler(8000, 8000 * L).process(x.tobytes())
    z = _pcm(fp.Resampler(8000 * L, 8000).process(up))
    assert len(z) == len(x)
    expected = _sine(8000, 440, amp, len(x), delay=8 + (L - 1) / L)
    err = np.abs(z - expected)[40:]  # after the 5 ms the two filters need to fill
    assert err.max() < 0.015 * amp, err.max()


@pytest.mark.parametrize("L", [2, 3])
def test_sine_up(fp: ModuleType, L: int) -> None:
    """Linear interpolation of 440 Hz: error at most A·(ωT)²/8 (+1 for rounding), delay L-1."""
    amp = 10000.0
    x = np.round(_sine(8000, 440, amp, 800)).astype(np.int16)
    y = _pcm(fp.Resampler(8000, 8000 * L).process(x.tobytes()))
    bound = amp * (2 * math.pi * 440 / 8000) ** 2 / 8 + 1
    assert np.abs(y - _sine(8000 * L, 440, amp, len(y), delay=L - 1))[L:].max() < bound


@pytest.mark.parametrize("M", [2, 3])
def test_sine_down_passband_and_aliasing(fp: ModuleType, M: int) -> None:
    """1 kHz passes (delay 8 output samples, error < 0.1%); 5 and 6 kHz, which would alias
    into the telephone band, come out at least 50 dB down."""
    amp, rate = 10000.0, 8000 * M
    x = np.round(_sine(rate, 1000, amp, rate)).astype(np.int16)
    y = _pcm(fp.Resampler(rate, 8000).process(x.tobytes()))
    assert np.abs(y - _sine(8000, 1000, amp, len(y), delay=8))[20:].max() < 0.001 * amp
    for freq in (5000, 6000):
        x = np.round(_sine(rate, freq, amp, rate)).astype(np.int16)
        y = _pcm(fp.Resampler(rate, 8000).process(x.tobytes()))[20:].astype(float)
        level_db = 20 * np.log10(np.sqrt(np.mean(y * y)) / (amp / math.sqrt(2)))
        assert level_db < -50, (freq, level_db)


@pytest.mark.parametrize("M", [2, 3])
def test_full_scale_square_is_clamped(fp: ModuleType, M: int) -> None:
    """A full-scale square wave makes the low-pass overshoot; the output clamps to int16."""
    rate = 8000 * M
    x = np.tile(np.repeat(np.array([32767, -32768], dtype=np.int16), 40), 20)
    y = _pcm(fp.Resampler(rate, 8000).process(x.tobytes()))
    h = np.array(_codec_py._DOWN_TAPS[M], dtype=np.int64)
    unclamped = (np.convolve(x.astype(np.int64), h)[: len(x) : M] + 16384) >> 15
    assert unclamped.max() > 32767 and unclamped.min() < -32768  # the case is exercised
    assert (y == np.clip(unclamped, -32768, 32767)).all()


def test_filter_design() -> None:
    """The taps are what the docstring says: Q15, symmetric, sum 2**15, sum |h| < 2**16 (int32
    accumulators), and the rounded Kaiser(β=5) sinc with cutoff 3800 Hz, K = 16*M + 1."""
    for M, taps in _codec_py._DOWN_TAPS.items():
        K = 16 * M + 1
        h = np.array(taps)
        assert len(h) == K and (h == h[::-1]).all() and h.sum() == 32768
        assert np.abs(h).sum() < 65536
        fc = 3800 / (8000 * M)
        design = 2 * fc * np.sinc(2 * fc * (np.arange(K) - K // 2)) * np.kaiser(K, 5)
        q = np.round(design / design.sum() * 32768).astype(int)
        q[K // 2] += 32768 - q.sum()
        assert (q == h).all()


@FEW
@given(st.sampled_from(RESAMPLING), streams, st.binary(min_size=1, max_size=9).filter(lambda b: len(b) % 2))
def test_odd_chunk_raises_and_keeps_state(pair: tuple[int, int], data: bytes, odd: bytes) -> None:
    half = len(data) // 4 * 2
    for impl in (fast, ref):
        r = impl.Resampler(*pair)
        first = r.process(data[:half])
        with pytest.raises(ValueError):
            r.process(odd)
        assert first + r.process(data[half:]) == impl.Resampler(*pair).process(data)


@pytest.mark.parametrize(
    "rates",
    [
        (16000, 24000),
        (24000, 16000),
        (8000, 44100),
        (44100, 8000),
        (48000, 48000),
        (0, 0),
        (-8000, 8000),
        (8000, 32000),
        (32000, 8000),
        (True, True),
    ],
)
def test_invalid_rates(fp: ModuleType, rates: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        fp.Resampler(*rates)


@pytest.mark.parametrize("rates", [("8000", 16000), (8000.0, 16000), (8000, None), (8000, 16000.0)])
def test_non_int_rates(fp: ModuleType, rates: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError):
        fp.Resampler(*rates)


@pytest.mark.parametrize("value", NON_BYTES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("pair", PAIRS)
def test_process_rejects_non_bytes(fp: ModuleType, pair: tuple[int, int], value: Any) -> None:
    with pytest.raises(TypeError):
        fp.Resampler(*pair).process(value)


@pytest.mark.parametrize("pair", PAIRS)
def test_flush_starts_a_new_stream(fp: ModuleType, pair: tuple[int, int]) -> None:
    data = bytes(range(256)) * 7
    r = fp.Resampler(*pair)
    first = r.process(data)
    assert r.flush() == b""
    assert r.process(data) == first


def test_rates_are_read_only(fp: ModuleType) -> None:
    r = fp.Resampler(24000, 8000)
    assert (r.src_rate, r.dst_rate) == (24000, 8000)
    assert repr(r) == "Resampler(24000, 8000)"
    with pytest.raises(AttributeError):
        r.src_rate = 8000  # type: ignore[misc]
