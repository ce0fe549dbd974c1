"""The playout part of the hot path: PlayoutRing, GapFiller and silence_b64.

Two oracles: the plain-Python twin (``relay._playout_py``, re-exported by ``relay._fastpath_py``)
that the compiled module must equal after every step of any sequence of calls, and the
properties of the contract in ``_fastpath.pyi`` (bytes out == bytes in, the lead bound, the
audio clock), checked on both implementations. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import ast
import base64
import binascii
import importlib
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _fastpath_py as ref
from relay import _playout_py
from relay.errors import PayloadError, ProtocolError

# No skip: a missing build must fail loudly.
fast = importlib.import_module("relay._fastpath")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IMPL = pytest.mark.parametrize("impl", [ref, fast], ids=["python", "cython"])

RING_STATE = ("buffered", "pushed", "sent", "padded", "dropped", "heard", "capacity", "frame_bytes", "max_bytes")
GAP_STATE = ("frames", "filled", "dropped", "capped", "frame_ms", "max_fill_ms")
NON_BYTES: list[Any] = ["AAAA", bytearray(b"AAAA"), memoryview(b"AAAA"), None, 4]


def _outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the class is what we compare
        return "raise", type(exc)
    return "return", (type(value), value)


def _tick(ring: Any, elapsed_ms: int, lead_ms: int) -> list[bytes]:
    """A caller's tick: ask how many frames are due, then pop them."""
    return ring.pop(ring.frames_due(elapsed_ms, lead_ms))


def _state(obj: object, fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(obj, f) for f in fields)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def unb64(frame: bytes) -> bytes:
    # strict: padded, standard alphabet, no newline, no excess data
    return binascii.a2b_base64(frame, strict_mode=True)


def _is_b64(data: bytes) -> bool:
    try:
        ref.b64_decoded_len(data)
    except PayloadError:
        return False
    return True


def test_twin_is_exported() -> None:
    assert set(_playout_py.__all__) == {"PlayoutRing", "GapFiller", "silence_b64"}
    for name in _playout_py.__all__:
        assert getattr(ref, name) is getattr(_playout_py, name)
        assert hasattr(fast, name)


# --- compiled == twin, step by step -----------------------------------------------------------

# Audio of realistic sizes (a frame, a few, a Realtime delta) without spending hypothesis'
# buffer on the bytes themselves: drawn from a seed.
sizes = st.one_of(st.integers(0, 400), st.integers(400, 6000), st.sampled_from([160, 320, 2400, 4800]))
audio = st.builds(lambda n, seed: random.Random(seed).randbytes(n), sizes, st.integers(0, 2**32))
valid_b64 = audio.map(b64)


@st.composite
def invalid_b64(draw: st.DrawFn) -> bytes:
    good = draw(valid_b64.filter(len))
    i = draw(st.integers(0, len(good) - 1))
    bad = draw(st.sampled_from([b"=", b"-", b"_", b" ", b"\n", b"\x00", b"\xff", b"A"]))
    how = draw(st.sampled_from(["replace", "insert", "strip"]))
    if how == "replace":
        out = good[:i] + bad + good[i + 1 :]
    elif how == "insert":
        out = good[:i] + bad + good[i:]
    else:
        out = good.rstrip(b"=") or good[:-1]
    return out if not _is_b64(out) else b"A"


pushes = st.one_of(valid_b64, valid_b64, valid_b64, invalid_b64(), st.binary(max_size=12), st.sampled_from(NON_BYTES))
counts = st.one_of(st.integers(-2, 40), st.just(2**70), st.sampled_from([1.0, "1", None]))
finals = st.one_of(st.booleans(), st.sampled_from([0, 1, "", "x"]))
ring_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), pushes),
        st.tuples(st.just("pop"), counts, finals),
        st.tuples(st.just("pop1")),
        st.tuples(st.just("clear")),
        st.tuples(
            st.just("due"),
            st.one_of(st.integers(-5, 5000), st.just(2**60)),
            st.one_of(st.integers(-5, 400), st.just(1.5)),
        ),
        st.tuples(st.just("tick"), st.integers(0, 100), st.integers(0, 400)),
    ),
    max_size=60,
)


@SETTINGS
@given(
    frame_bytes=st.one_of(st.integers(-2, 2**21), st.sampled_from([2**20, 2**20 + 1, "160", 1.0, None])),
    max_bytes=st.one_of(st.integers(-2, 2**41), st.sampled_from([2**40, 2**40 + 1, "1", None])),
)
def test_ring_constructor_equals_twin(frame_bytes: Any, max_bytes: Any) -> None:
    got = [_outcome(m.PlayoutRing, frame_bytes, max_bytes) for m in (fast, ref)]
    assert got[0][0] == got[1][0]
    if got[0][0] == "raise":
        assert got[0] == got[1]
    else:
        assert _state(got[0][1][1], RING_STATE) == _state(got[1][1][1], RING_STATE)


@SETTINGS
@given(
    frame_bytes=st.one_of(st.just(160), st.just(160), st.integers(1, 400)),
    max_bytes=st.one_of(st.just(8_000_000), st.integers(0, 20_000)),
    ops=ring_ops,
)
def test_ring_equals_twin(frame_bytes: int, max_bytes: int, ops: list[tuple[Any, ...]]) -> None:
    a, b = fast.PlayoutRing(frame_bytes, max_bytes), ref.PlayoutRing(frame_bytes, max_bytes)
    assert repr(a) == repr(b)
    clock = 0
    for op in ops:
        if op[0] == "push":
            got = [_outcome(r.push, op[1]) for r in (a, b)]
        elif op[0] == "pop":
            got = [_outcome(r.pop, op[1], final=op[2]) for r in (a, b)]
        elif op[0] == "pop1":
            got = [_outcome(r.pop) for r in (a, b)]
        elif op[0] == "clear":
            got = [_outcome(r.clear) for r in (a, b)]
        elif op[0] == "due":
            got = [_outcome(r.frames_due, op[1], op[2]) for r in (a, b)]
        else:  # a caller's tick: ask, then pop what is due
            clock += op[1]
            got = [_outcome(_tick, r, clock, op[2]) for r in (a, b)]
        assert got[0] == got[1], op
        assert _state(a, RING_STATE) == _state(b, RING_STATE), op


# --- ring properties, on both implementations ---------------------------------------------------


@IMPL
@SETTINGS
@given(chunks=st.lists(st.binary(max_size=700), max_size=12), frame_bytes=st.one_of(st.just(160), st.integers(1, 400)))
def test_pop_everything_returns_the_pushed_bytes(impl: ModuleType, chunks: list[bytes], frame_bytes: int) -> None:
    ring = impl.PlayoutRing(frame_bytes)
    for c in chunks:
        assert ring.push(b64(c)) == len(c)
    data = b"".join(chunks)
    frames = ring.pop(10**9, final=True)
    decoded = [unb64(f) for f in frames]
    assert all(len(d) == frame_bytes for d in decoded)
    assert frames == [b64(d) for d in decoded]  # canonical: padded, no newline
    pad = -len(data) % frame_bytes
    assert b"".join(decoded) == data + b"\xff" * pad  # the padding is the last frame's tail only
    assert len(frames) == -(-len(data) // frame_bytes)
    assert (ring.buffered, ring.pushed, ring.sent, ring.padded) == (0, len(data), len(data), pad)
    assert ring.pop(5, final=True) == []


@IMPL
@SETTINGS
@given(
    frame_bytes=st.one_of(st.just(160), st.integers(1, 300)),
    max_bytes=st.one_of(st.just(8_000_000), st.integers(0, 30_000)),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), audio),
            st.tuples(st.just("pop"), st.integers(0, 60), st.booleans()),
            st.tuples(st.just("clear")),
        ),
        max_size=40,
    ),
)
def test_interleaved_ops_keep_order_and_count(
    impl: ModuleType, frame_bytes: int, max_bytes: int, ops: list[tuple[Any, ...]]
) -> None:
    ring = impl.PlayoutRing(frame_bytes, max_bytes)
    model = bytearray()  # what the ring should hold, oldest first
    dropped = padded = 0
    for op in ops:
        if op[0] == "push":
            if len(model) + len(op[1]) > max_bytes:
                with pytest.raises(ProtocolError, match="playout buffer full"):
                    ring.push(b64(op[1]))
            else:
                assert ring.push(b64(op[1])) == len(op[1])
                model += op[1]
        elif op[0] == "pop":
            n, final = op[1], op[2]
            k = min(n, len(model) // frame_bytes)
            want = [bytes(model[i * frame_bytes : (i + 1) * frame_bytes]) for i in range(k)]
            del model[: k * frame_bytes]
            if final and k < n and model:
                padded += frame_bytes - len(model)
                want.append(bytes(model) + b"\xff" * (frame_bytes - len(model)))
                model.clear()
            assert [unb64(f) for f in ring.pop(n, final=final)] == want
        else:
            assert ring.clear() == len(model)
            dropped += len(model)
            model.clear()
        assert ring.buffered == len(model)
        assert ring.pushed == ring.sent + ring.buffered + ring.dropped
        assert (ring.dropped, ring.padded) == (dropped, padded)
        cap = ring.capacity  # 0, or 4 KiB doubled as needed, and never above max_bytes
        assert ring.buffered <= cap <= max_bytes
        assert cap in (0, max_bytes) or (cap % 4096 == 0 and (cap // 4096).bit_count() == 1)


@IMPL
def test_growth_across_the_wrap_point_keeps_order(impl: ModuleType) -> None:
    ring = impl.PlayoutRing(160)
    data = bytes(i * 7 % 251 for i in range(3000 + 2000 + 2000))
    a, b, c = data[:3000], data[3000:5000], data[5000:]
    ring.push(b64(a))
    assert ring.capacity == 4096
    out = ring.pop(10)  # the ring now starts at byte 1600
    ring.push(b64(b))  # ends at 1600 + 1400 + 2000 = 5000 > 4096: wraps
    assert (ring.capacity, ring.buffered) == (4096, 3400)
    ring.push(b64(c))  # 5400 > 4096: grows while wrapped
    assert (ring.capacity, ring.buffered) == (8192, 5400)
    out += ring.pop(10**6, final=True)
    got = b"".join(unb64(f) for f in out)
    assert got == data + b"\xff" * (-len(data) % 160)
    # and wraps again inside the grown ring, one delta at a time
    stream, sent = bytes(range(256)) * 40, bytearray()
    for i in range(0, len(stream), 1000):
        ring.push(b64(stream[i : i + 1000]))
        sent += b"".join(unb64(f) for f in ring.pop(7))
    sent += b"".join(unb64(f) for f in ring.pop(10**6, final=True))
    assert sent[: len(stream)] == stream and ring.capacity == 8192


@IMPL
def test_max_bytes_is_enforced(impl: ModuleType) -> None:
    ring = impl.PlayoutRing(160, max_bytes=1000)
    assert ring.push(b64(b"\x01" * 900)) == 900
    before = _state(ring, RING_STATE)
    with pytest.raises(ProtocolError, match="playout buffer full"):
        ring.push(b64(b"\x02" * 101))
    assert _state(ring, RING_STATE) == before  # nothing added
    assert ring.push(b64(b"\x02" * 100)) == 100  # exactly full
    assert ring.push(b"") == 0
    assert (ring.buffered, ring.capacity) == (1000, 1000)
    assert len(ring.pop(5)) == 5
    assert ring.push(b64(b"\x03" * 800)) == 800  # wraps inside the 1000 bytes
    got = b"".join(unb64(f) for f in ring.pop(100, final=True))
    assert got == b"\x01" * 100 + b"\x02" * 100 + b"\x03" * 800 + b"\xff" * 120
    with pytest.raises(ProtocolError):
        impl.PlayoutRing(160, max_bytes=10).push(b64(b"x" * 11))
    # bad base64 that would also overflow: the payload error comes first
    with pytest.raises(PayloadError):
        impl.PlayoutRing(160, max_bytes=0).push(b"AAA")


@IMPL
@pytest.mark.parametrize(
    "bad", [b"A", b"AAA", b"AA=A", b"A===", b"====", b"AAAA\n", b" AAA", b"AA-_", b"AAAAA===", b"AAA=AAAA", b"\x00AAA"]
)
def test_invalid_base64_adds_nothing(impl: ModuleType, bad: bytes) -> None:
    ring = impl.PlayoutRing()
    ring.push(b64(b"abc"))
    before = _state(ring, RING_STATE)
    with pytest.raises(PayloadError):
        ring.push(bad)
    assert _state(ring, RING_STATE) == before


@IMPL
@pytest.mark.parametrize("value", NON_BYTES, ids=lambda v: type(v).__name__)
def test_push_takes_bytes_only(impl: ModuleType, value: Any) -> None:
    with pytest.raises(TypeError):
        impl.PlayoutRing().push(value)


@IMPL
@SETTINGS
@given(st.one_of(st.binary(max_size=40), valid_b64, invalid_b64()))
def test_push_validates_like_b64_decoded_len(impl: ModuleType, data: bytes) -> None:
    ring = impl.PlayoutRing()
    assert _outcome(ring.push, data) == _outcome(impl.b64_decoded_len, data)
    if _is_b64(data):
        got = b"".join(unb64(f) for f in ring.pop(10**6, final=True))
        assert got.startswith(binascii.a2b_base64(data)) and ring.sent == len(binascii.a2b_base64(data))


@IMPL
def test_pop_edges(impl: ModuleType) -> None:
    ring = impl.PlayoutRing(160)
    assert ring.pop() == [] and ring.pop(3, final=True) == []
    ring.push(b64(b"\x00" * 100))
    assert ring.pop(5) == []  # only whole frames
    assert ring.pop(0, final=True) == []
    (last,) = ring.pop(final=True)
    assert unb64(last) == b"\x00" * 100 + b"\xff" * 60
    assert (ring.sent, ring.padded, ring.buffered) == (100, 60, 0)
    ring.push(b64(b"\x01" * 400))
    assert len(ring.pop(2, final=True)) == 2 and ring.buffered == 80  # n reached: no padded frame
    with pytest.raises(ValueError):
        ring.pop(-1)
    for bad in (1.0, "1", None):
        with pytest.raises(TypeError):
            ring.pop(bad)
    assert ring.buffered == 80


@IMPL
def test_clear_drops_everything(impl: ModuleType) -> None:
    ring = impl.PlayoutRing()
    ring.push(b64(b"\x05" * 1000))
    ring.pop(2)
    assert ring.clear() == 680
    assert (ring.buffered, ring.dropped, ring.pop(9, final=True)) == (0, 680, [])
    assert ring.clear() == 0
    ring.push(b64(b"\x06" * 160))
    assert [unb64(f) for f in ring.pop()] == [b"\x06" * 160]
    assert ring.pushed == ring.sent + ring.buffered + ring.dropped


@IMPL
@pytest.mark.parametrize("name", RING_STATE)
def test_ring_state_is_read_only(impl: ModuleType, name: str) -> None:
    with pytest.raises(AttributeError):
        setattr(impl.PlayoutRing(), name, 5)


@IMPL
@pytest.mark.parametrize(
    "args,error",
    [
        ((0,), ValueError),
        ((-1,), ValueError),
        (("160",), TypeError),
        ((1.5,), TypeError),
        ((160, -1), ValueError),
        ((2**21,), ValueError),
        ((160, 2**41), ValueError),
        ((160, None), TypeError),
    ],
)
def test_ring_arguments(impl: ModuleType, args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        impl.PlayoutRing(*args)


# --- pacing -----------------------------------------------------------------------------------


@IMPL
@SETTINGS
@given(
    lead=st.integers(0, 300),
    steps=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 3000)), max_size=80),
)
def test_frames_due_keeps_the_lead(impl: ModuleType, lead: int, steps: list[tuple[int, int]]) -> None:
    ring = impl.PlayoutRing()
    clock, first = 0, None  # first: the clock at the first pop
    for dt, delta in steps:
        clock += dt
        if delta:
            ring.push(b64(bytes(delta)))
        elapsed = 0 if first is None else clock - first
        due = ring.frames_due(elapsed, lead)
        assert 0 <= due <= ring.buffered // 160
        out = ring.sent + ring.padded
        assert ring.heard <= out
        if due < ring.buffered // 160:  # as many as may go: one more would break the bound
            assert out - ring.heard + (due + 1) * 160 > lead * 8
        frames = ring.pop(due)
        assert len(frames) == due
        if frames and first is None:
            first, elapsed = clock, 0
        # the contract's ear: it has heard min(sent, elapsed * 8)
        assert ring.sent - min(ring.sent, elapsed * 8) <= lead * 8
        assert ring.sent + ring.padded - ring.heard <= lead * 8


@IMPL
@pytest.mark.parametrize("lead", [100, 110, 119])
def test_frames_due_paces_one_frame_per_20ms(impl: ModuleType, lead: int) -> None:
    ring = impl.PlayoutRing()
    ring.push(b64(bytes(160 * 500)))  # 10 s
    assert ring.frames_due(0, lead) == 5
    ring.pop(5)
    for step in range(1, 300):
        due = ring.frames_due(20 * step, lead)
        assert due == 1, step
        ring.pop(due)
    assert ring.sent == 160 * (5 + 299)


@IMPL
def test_frames_due_catches_up_on_late_ticks(impl: ModuleType) -> None:
    ring = impl.PlayoutRing()
    ring.push(b64(bytes(160 * 100)))
    ring.pop(ring.frames_due(0, 100))
    got = []
    for t in (19, 40, 41, 100, 101, 119, 120):
        due = ring.frames_due(t, 100)
        got.append(due)
        ring.pop(due)
    # one frame per 20 ms of elapsed time, however the ticks fall
    assert got == [0, 2, 0, 3, 0, 0, 1]
    assert ring.sent == 160 * (5 + 120 // 20)


@IMPL
def test_frames_due_limits(impl: ModuleType) -> None:
    ring = impl.PlayoutRing()
    assert ring.frames_due(0, 100) == 0  # nothing buffered
    ring.push(b64(bytes(500)))
    assert ring.frames_due(0, 100) == 3  # at most the whole frames buffered
    assert ring.frames_due(0, 19) == 0  # a lead shorter than a frame never lets one go
    assert ring.frames_due(0, 20) == 1
    for bad in ((-1, 100), (0, -1), (2**54, 100), (0, 2**54)):
        with pytest.raises(ValueError):
            ring.frames_due(*bad)
    for bad in ((1.0, 100), (0, "100"), (None, 100)):
        with pytest.raises(TypeError):
            ring.frames_due(*bad)


@IMPL
def test_no_burst_after_an_underrun(impl: ModuleType) -> None:
    # A response plays out and the ring runs dry; the next one starts 5 s later. Its audio is
    # paced like the first (lead, then one frame per 20 ms), not sent at once.
    ring = impl.PlayoutRing()
    ring.push(b64(bytes(160 * 10)))
    t = 0
    while ring.buffered:
        ring.pop(ring.frames_due(t, 100))
        t += 20
    assert ring.frames_due(5000, 100) == 0  # idle: nothing to send
    ring.push(b64(bytes(160 * 50)))
    got = []
    for t in range(5020, 5020 + 20 * 10, 20):
        due = ring.frames_due(t, 100)
        got.append(due)
        ring.pop(due)
    assert got == [5] + [1] * 9
    assert ring.sent + ring.padded - ring.heard == 800


@IMPL
def test_clear_forgets_the_lead(impl: ModuleType) -> None:
    # Barge-in: the relay clears the ring and Twilio's queue; the next response starts at once.
    ring = impl.PlayoutRing()
    ring.push(b64(bytes(160 * 50)))
    ring.pop(ring.frames_due(0, 100))
    ring.pop(ring.frames_due(20, 100))
    assert ring.frames_due(30, 100) == 0  # 90 ms of lead outstanding
    ring.clear()
    ring.push(b64(bytes(160 * 50)))
    assert ring.frames_due(30, 100) == 5


@IMPL
def test_a_clock_going_back_is_rebased(impl: ModuleType) -> None:
    ring = impl.PlayoutRing()
    ring.push(b64(bytes(160 * 50)))
    ring.pop(ring.frames_due(1000, 100))
    assert ring.frames_due(0, 100) == 0  # no time heard: still 100 ms ahead
    assert ring.frames_due(20, 100) == 1  # 20 ms after the new origin


# --- silence ----------------------------------------------------------------------------------


@IMPL
def test_silence_b64(impl: ModuleType) -> None:
    assert impl.silence_b64() == b64(b"\xff" * 160) and len(impl.silence_b64()) == 216
    for n in range(0, 400):
        s = impl.silence_b64(n)
        assert type(s) is bytes and unb64(s) == b"\xff" * n
    with pytest.raises(ValueError):
        impl.silence_b64(-1)
    with pytest.raises(TypeError):
        impl.silence_b64("160")


# --- GapFiller --------------------------------------------------------------------------------


@st.composite
def timestamp_walk(draw: st.DrawFn) -> list[Any]:
    """Twilio-like timestamps: a 20 ms grid with jitter, gaps, duplicates, reorderings, jumps,
    and now and then a value no stream has (negative, huge, not an int)."""
    t = draw(st.integers(0, 10**6))
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.sampled_from(["next"] * 6 + ["gap", "dup", "swap", "back", "jump", "odd"]))
        if kind == "next":
            t += 20
        elif kind == "gap":
            t += 20 * draw(st.integers(2, 80))
        elif kind == "back":
            t = max(0, t - 20 * draw(st.integers(1, 5)))
        elif kind == "jump":
            t += draw(st.integers(-(10**5), 10**7))
            t = max(t, 0)
        elif kind == "dup" and out:
            out.append(out[-1])
            continue
        elif kind == "swap" and len(out) >= 2:
            out[-1], out[-2] = out[-2], out[-1]
            continue
        elif kind == "odd":
            out.append(draw(st.sampled_from([-1, -20, 2**53 + 1, 2**64, 20.0, "20", None])))
            continue
        out.append(t + draw(st.integers(-15, 15)) if draw(st.booleans()) else t)
    return out


@SETTINGS
@given(
    frame_ms=st.one_of(st.just(20), st.integers(1, 60), st.just(0), st.just("20")),
    max_fill_ms=st.one_of(st.just(1000), st.integers(0, 3000), st.just(-1)),
    stamps=timestamp_walk(),
)
def test_gap_filler_equals_twin(frame_ms: Any, max_fill_ms: Any, stamps: list[Any]) -> None:
    made = [_outcome(m.GapFiller, frame_ms, max_fill_ms) for m in (fast, ref)]
    if made[0][0] == "raise" or made[1][0] == "raise":
        assert made[0] == made[1]
        return
    a, b = fast.GapFiller(frame_ms, max_fill_ms), ref.GapFiller(frame_ms, max_fill_ms)
    assert repr(a) == repr(b)
    for ts in stamps:
        assert _outcome(a.accept, ts) == _outcome(b.accept, ts), ts
        assert _state(a, GAP_STATE) == _state(b, GAP_STATE), ts


@IMPL
@FEW
@given(start=st.integers(0, 10**9), jitter=st.lists(st.integers(-9, 9), max_size=200))
def test_clean_stream_returns_zeros(impl: ModuleType, start: int, jitter: list[int]) -> None:
    g = impl.GapFiller()  # the first frame sets the grid; the others jitter around it
    stamps = [start + 20 * i + (j if i else 0) for i, j in enumerate(jitter)]
    assert [g.accept(t) for t in stamps] == [0] * len(jitter)
    assert _state(g, GAP_STATE)[:4] == (len(jitter), 0, 0, 0)


@IMPL
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_gap_of_k_frames(impl: ModuleType, k: int) -> None:
    g = impl.GapFiller()
    assert [g.accept(t) for t in (1000, 1020, 1040)] == [0, 0, 0]
    t = 1040 + 20 * (k + 1)  # k frames lost
    assert [g.accept(t), g.accept(t + 20), g.accept(t + 40)] == [k, 0, 0]
    assert (g.frames, g.filled, g.dropped, g.capped) == (6, k, 0, 0)


@IMPL
@pytest.mark.parametrize("j", [-9, -5, -1, 1, 5, 9])
def test_jitter_is_on_time(impl: ModuleType, j: int) -> None:
    g = impl.GapFiller()
    assert [g.accept(t) for t in (100, 120 + j, 140, 160 - j, 180 + j, 200 + j, 220)] == [0] * 7
    # a gap whose next frame is jittered still counts the frames lost: 2 here
    assert g.accept(280 + j) == 2 and g.accept(300) == 0
    assert (g.filled, g.dropped) == (2, 0)


@IMPL
def test_duplicates_and_late_frames_are_dropped(impl: ModuleType) -> None:
    g = impl.GapFiller()
    assert [g.accept(t) for t in (0, 20, 20, 40)] == [0, 0, -1, 0]  # a duplicate
    assert [g.accept(t) for t in (60, 100, 80, 120)] == [0, 1, -1, 0]  # 80 came after 100: filled
    assert [g.accept(t) for t in (140, 0, 139, 129, 160)] == [0, -1, -1, -1, 0]  # earlier ones
    assert (g.frames, g.filled, g.dropped) == (8, 1, 5)


@IMPL
def test_cap(impl: ModuleType) -> None:
    g = impl.GapFiller(20, max_fill_ms=100)  # at most 5 frames per gap
    assert [g.accept(t) for t in (0, 20, 440, 460)] == [0, 0, 5, 0]  # 20 lost, 5 filled
    assert (g.filled, g.capped) == (5, 1)
    assert g.accept(440) == -1  # the clock jumped to the frame
    nofill = impl.GapFiller(20, max_fill_ms=0)
    assert [nofill.accept(t) for t in (0, 100, 120)] == [0, 0, 0] and nofill.capped == 1


@IMPL
@FEW
@given(
    start=st.integers(0, 10**9),  # the first frame is on its grid: jitter only on the others
    gaps=st.lists(st.integers(0, 50), max_size=100),
    jitter=st.lists(st.integers(-9, 9), min_size=101, max_size=101),
)
def test_upstream_audio_spans_the_stream(impl: ModuleType, start: int, gaps: list[int], jitter: list[int]) -> None:
    """frames + filled == the time covered / frame_ms, whatever was lost (up to the cap)."""
    g = impl.GapFiller()
    grid = [start]
    for k in gaps:
        grid.append(grid[-1] + 20 * (k + 1))
    stamps = [t + j if i else t for i, (t, j) in enumerate(zip(grid, jitter, strict=False))]  # jitter: the longest
    fills = [g.accept(t) for t in stamps]
    assert fills == [0, *gaps]
    assert g.frames + g.filled == (grid[-1] - grid[0]) // 20 + 1


@IMPL
def test_gap_filler_arguments(impl: ModuleType) -> None:
    g = impl.GapFiller()
    g.accept(40)
    for bad in (-1, -20, 2**53 + 1):
        with pytest.raises(ValueError):
            g.accept(bad)
    for bad in (60.0, "60", None):
        with pytest.raises(TypeError):
            g.accept(bad)
    assert g.accept(60) == 0 and (g.frames, g.dropped) == (2, 0)  # the errors changed nothing
    with pytest.raises(ValueError):
        impl.GapFiller(-1)
    with pytest.raises(ValueError):
        impl.GapFiller(0)
    with pytest.raises(ValueError):
        impl.GapFiller(20, -1)
    with pytest.raises(TypeError):
        impl.GapFiller("20")
    with pytest.raises(ValueError):
        impl.GapFiller().accept(-5)  # also as the first frame


@IMPL
@pytest.mark.parametrize("name", GAP_STATE)
def test_gap_filler_state_is_read_only(impl: ModuleType, name: str) -> None:
    with pytest.raises(AttributeError):
        setattr(impl.GapFiller(), name, 5)


def test_contract_lists_every_public_name() -> None:
    """The "Playout" section of _fastpath.pyi declares exactly what both classes expose."""
    tree = ast.parse((Path(ref.__file__).parent / "_fastpath.pyi").read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "silence_b64" in declared
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for name in ("PlayoutRing", "GapFiller"):
        members = {m.target.id for m in classes[name].body if isinstance(m, ast.AnnAssign)}
        members |= {m.name for m in classes[name].body if isinstance(m, ast.FunctionDef)}
        members = {m for m in members if not m.startswith("_")}
        for impl in (ref, fast):
            public = {a for a in dir(getattr(impl, name)) if not a.startswith("_")}
            assert public == members, (impl.IMPLEMENTATION, name)
