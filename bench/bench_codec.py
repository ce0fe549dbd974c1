"""The codec hot path: compiled vs Python reference vs a plain library baseline, per 20 ms frame.

Run: ``pytest bench/bench_codec.py`` (timings) or add ``--benchmark-disable`` (each case once,
as a correctness check). Every case records in ``extra_info["correct"]`` whether its result
equals the reference's; the test also asserts it.

Frames are 20 ms: 160 μ-law bytes or 320 PCM16 bytes at 8 kHz, 640 at 16 kHz, 960 at 24 kHz.
Baselines: ``audioop`` (the stdlib's C G.711) for the codec; numpy for the resampler, with the
same stream state and integer rounding so the bytes are equal: ``np.interp`` for the linear
up-sampling, ``np.convolve`` with the same Q15 taps for the low-pass decimation (``np.interp``
alone cannot low-pass, so it could not give the reference's bytes). The resamplers are timed
in steady state: each has seen the frame once before, and the stream repeats it.
"""

from __future__ import annotations

import importlib
import random
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from relay import _codec_py
from relay import _fastpath_py as ref

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

IMPLS = ["cython", "python", "library"]

_rng = random.Random(20)
ULAW = _rng.randbytes(160)  # 20 ms from Twilio


def _speechy(rate: int) -> bytes:
    """20 ms of a few harmonics near full scale (exercises rounding and the clamp path)."""
    t = np.arange(rate // 50) / rate
    x = sum(9000 / k * np.sin(2 * np.pi * 180 * k * t + k) for k in range(1, 8))
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


PCM8 = _speechy(8000)
PCM16 = _speechy(16000)
PCM24 = _speechy(24000)
assert (len(ULAW), len(PCM8), len(PCM16), len(PCM24)) == (160, 320, 640, 960)


def _compiled() -> ModuleType:
    # No skip: a missing build must fail loudly, never pass as "nothing to measure".
    return importlib.import_module("relay._fastpath")


def _run(benchmark: Any, fn: Callable[..., Any], *args: Any, expected: Any) -> None:
    result = benchmark(fn, *args)
    benchmark.extra_info["correct"] = correct = result == expected
    assert correct, (result, expected)


def _pick(impl: str, name: str, library: Callable[..., Any]) -> Callable[..., Any]:
    if impl == "cython":
        return getattr(_compiled(), name)
    if impl == "python":
        return getattr(ref, name)
    return library


# --- library baselines: what the hot path would be without it ------------------------------


def lib_ulaw_to_pcm16(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, 2)


def lib_pcm16_to_ulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, 2)


def lib_upsampler(L: int) -> Callable[[bytes], bytes]:
    """Streaming linear interpolation with np.interp; rounds half up like the reference."""
    state = {"prev": 0.0}
    grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def process(chunk: bytes) -> bytes:
        x = np.frombuffer(chunk, dtype="<i2")
        n = len(x)
        if n not in grids:  # output times (i - (L-1)) / L on the input grid -1, 0, ..., n-1
            grids[n] = ((np.arange(L * n) - (L - 1)) / L, np.arange(-1, n, dtype=np.float64))
        t, xp = grids[n]
        fp = np.empty(n + 1)
        fp[0], fp[1:] = state["prev"], x
        state["prev"] = fp[-1]
        return np.floor(np.interp(t, xp, fp) + 0.5).astype("<i2").tobytes()

    return process


def lib_downsampler(M: int) -> Callable[[bytes], bytes]:
    """Streaming low-pass + decimation with np.convolve and the reference's Q15 taps."""
    h = np.array(_codec_py._DOWN_TAPS[M], dtype=np.int64)
    K = len(h)
    state = {"buf": np.zeros(K - 1, dtype=np.int64)}

    def process(chunk: bytes) -> bytes:
        buf = np.concatenate([state["buf"], np.frombuffer(chunk, dtype="<i2")])
        nout = (len(buf) - K + M) // M
        acc = np.convolve(buf, h, "valid")[: nout * M : M]  # h is symmetric: no flip needed
        state["buf"] = buf[nout * M :]
        return np.clip((acc + 16384) >> 15, -32768, 32767).astype("<i2").tobytes()

    return process


# --- the cases -------------------------------------------------------------------------------


@pytest.mark.benchmark(group="ulaw_to_pcm16 (160 bytes)")
@pytest.mark.parametrize("impl", IMPLS)
def test_ulaw_to_pcm16(benchmark: Any, impl: str) -> None:
    fn = _pick(impl, "ulaw_to_pcm16", lib_ulaw_to_pcm16)
    _run(benchmark, fn, ULAW, expected=ref.ulaw_to_pcm16(ULAW))


@pytest.mark.benchmark(group="pcm16_to_ulaw (320 bytes)")
@pytest.mark.parametrize("impl", IMPLS)
def test_pcm16_to_ulaw(benchmark: Any, impl: str) -> None:
    fn = _pick(impl, "pcm16_to_ulaw", lib_pcm16_to_ulaw)
    _run(benchmark, fn, PCM8, expected=ref.pcm16_to_ulaw(PCM8))


def _steady(impl: str, src: int, dst: int, frame: bytes) -> Callable[[bytes], bytes]:
    """A resampler's process() that has already seen ``frame`` once."""
    if impl == "library":
        process = lib_upsampler(dst // src) if dst > src else lib_downsampler(src // dst)
    else:
        process = (_compiled() if impl == "cython" else ref).Resampler(src, dst).process
    process(frame)
    return process


RESAMPLE_CASES = [
    pytest.param(8000, 24000, PCM8, id="8k-24k"),
    pytest.param(24000, 8000, PCM24, id="24k-8k"),
    pytest.param(8000, 16000, PCM8, id="8k-16k"),
    pytest.param(16000, 8000, PCM16, id="16k-8k"),
]


@pytest.mark.parametrize("src,dst,frame", RESAMPLE_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_resample(benchmark: Any, impl: str, src: int, dst: int, frame: bytes) -> None:
    benchmark.group = f"Resampler.process {src} -> {dst} Hz ({len(frame)} bytes)"
    fn = _steady(impl, src, dst, frame)
    expected = _steady("python", src, dst, frame)(frame)
    assert len(expected) == len(frame) * dst // src
    _run(benchmark, fn, frame, expected=expected)
