"""WebSocket framing (RFC 6455): ``build_frame`` and ``FrameReader`` in both fast-path implementations.

The compiled module must behave exactly like the Python twin on any byte stream, both must
interoperate byte for byte with websockets' sans-I/O protocol (as writer and as reader), and
every breach of RFC 6455 must raise ``FrameError`` with the close code to answer with.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from relay import _fastpath as compiled
from relay import _fastpath_py as twin
from relay.errors import FrameError, ProtocolError

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPS = (OP_TEXT, OP_BINARY)
CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
RESERVED_OPS = (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)

ORACLE = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# ``fp`` is a module, not state: sharing it across examples is safe.
WITH_FP = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- a frame writer of our own, free to break the rules ------------------------------------


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = None,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One frame, written independently of the code under test; ``length`` overrides the header."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def key(masked: bool) -> bytes | None:
    """A masking key when writing to a reader of client frames, else None."""
    return os.urandom(4) if masked else None


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


# --- driving a reader ----------------------------------------------------------------------


def drain(reader: Any, sink: list) -> tuple | None:
    """Read until None (returns None) or FrameError (returns its class and code)."""
    try:
        while (item := reader.read()) is not None:
            sink.append(item)
    except FrameError as exc:
        return type(exc), exc.code
    return None


def run(mod: Any, chunks: list[bytes], masked: bool, max_size: int = 1 << 20) -> tuple[list, tuple]:
    """Feed ``chunks`` one by one, reading after each; the items read and the final outcome."""
    reader = mod.FrameReader(masked, max_size)
    items: list = []
    for chunk in chunks:
        reader.feed(chunk)
        error = drain(reader, items)
        if error is not None:
            return items, ("error", *error)
    return items, ("none", reader.pending())


def read_all(mod: Any, data: bytes, masked: bool, max_size: int = 1 << 20) -> list:
    items, outcome = run(mod, [data], masked, max_size)
    assert outcome == ("none", 0)
    return items


def error_code(mod: Any, data: bytes, masked: bool, max_size: int = 1 << 20) -> int:
    with pytest.raises(FrameError) as info:
        reader = mod.FrameReader(masked, max_size)
        reader.feed(data)
        while reader.read() is not None:
            pass
    return info.value.code


def typed(items: list) -> list:
    return [(type(op), op, type(payload), payload) for op, payload in items]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --- valid frame streams, with the messages they carry --------------------------------------


@st.composite
def scripts(draw: st.DrawFn, valid_text: bool = True) -> tuple[list[tuple[bool, int, bytes]], list]:
    """Frames ``(fin, opcode, payload)`` of a few messages, some fragmented with control frames
    between the fragments, and the ``(opcode, payload)`` items a reader must return for them."""
    frames: list[tuple[bool, int, bytes]] = []
    expected: list = []

    def control() -> None:
        op = draw(st.sampled_from(CONTROL_OPS))
        if op == OP_CLOSE:
            reasons = st.text(max_size=20)  # at most 80 bytes: the payload stays under 126
            payload = draw(
                st.one_of(
                    st.just(b""), st.builds(close_payload, st.sampled_from([1000, 1001, 1011, 3000, 4000]), reasons)
                )
            )
        else:
            payload = draw(st.binary(max_size=125))
        frames.append((True, op, payload))
        expected.append((op, payload))

    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 3)) == 0:
            control()
            continue
        op = draw(st.sampled_from(DATA_OPS))
        if op == OP_TEXT and (valid_text or draw(st.booleans())):
            data = draw(st.text(max_size=60)).encode()
        else:
            data = draw(st.binary(max_size=300))
        pieces = split(data, draw(st.lists(st.integers(0, 1000), max_size=3)))
        if draw(st.booleans()):
            pieces.append(b"")  # an empty final fragment is legal
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            frames.append((last, op if i == 0 else OP_CONT, piece))
            if not last and draw(st.integers(0, 3)) == 0:
                control()
        expected.append((op, data))
    return frames, expected


def encode(mod: Any, frames: list[tuple[bool, int, bytes]], masks: list[bytes | None]) -> bytes:
    """Whole FIN frames by ``mod.build_frame``, fragments and continuations by hand."""
    out = []
    for (fin, op, payload), mask in zip(frames, masks, strict=True):
        if fin and op != OP_CONT:
            out.append(mod.build_frame(op, payload, mask))
        else:
            out.append(raw_frame(op, payload, fin=fin, mask=mask))
    return b"".join(out)


masks = st.one_of(st.none(), st.binary(min_size=4, max_size=4))


# --- 1. the compiled module equals the Python twin ------------------------------------------


@ORACLE
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    masked=st.booleans(),
    max_size=st.integers(0, 200),
)
def test_compiled_reader_equals_twin_on_random_bytes(data: bytes, cuts: list[int], masked: bool, max_size: int) -> None:
    chunks = split(data, cuts)
    expected = run(twin, chunks, masked, max_size)
    got = run(compiled, chunks, masked, max_size)
    assert (typed(got[0]), got[1]) == (typed(expected[0]), expected[1])


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 10_000)),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("splice"), st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 40)),
    ),
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        at = op[1] % len(buf)
        if op[0] == "flip":
            buf[at] ^= 1 << op[2]
        elif op[0] == "truncate":
            del buf[at:]
        elif op[0] == "delete":
            del buf[at : at + op[2]]
        elif op[0] == "insert":
            buf[at:at] = op[2]
        else:  # copy a slice of the stream itself elsewhere
            src = op[2] % len(buf)
            buf[at:at] = buf[src : src + op[3]]
    return bytes(buf)


@ORACLE
@given(
    script=scripts(valid_text=False),
    mask_choice=st.data(),
    ops=mutations,
    cuts=st.lists(st.integers(0, 5000), max_size=8),
    masked=st.booleans(),
    max_size=st.integers(0, 400),
)
def test_compiled_reader_equals_twin_on_mutated_streams(
    script: tuple, mask_choice: st.DataObject, ops: list[tuple], cuts: list[int], masked: bool, max_size: int
) -> None:
    frames, _ = script
    # mostly masked as the reader expects, so that mutations get past the first frame
    frame_masks = [
        mask_choice.draw(st.binary(min_size=4, max_size=4) if masked else st.none())
        if mask_choice.draw(st.integers(0, 7))
        else mask_choice.draw(masks)
        for _ in frames
    ]
    chunks = split(mutate(encode(twin, frames, frame_masks), ops), cuts)
    expected = run(twin, chunks, masked, max_size)
    got = run(compiled, chunks, masked, max_size)
    assert (typed(got[0]), got[1]) == (typed(expected[0]), expected[1])


def outcome(fn: Callable[..., Any], *args: Any) -> tuple:
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the class is what we compare
        return "raise", type(exc)
    return "return", type(value), value


@ORACLE
@given(
    opcode=st.sampled_from(DATA_OPS + CONTROL_OPS),
    payload=st.one_of(st.binary(max_size=300), st.binary(min_size=126, max_size=130)),
    mask=masks,
)
def test_compiled_build_frame_equals_twin(opcode: int, payload: bytes, mask: bytes | None) -> None:
    assert outcome(compiled.build_frame, opcode, payload, mask) == outcome(twin.build_frame, opcode, payload, mask)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [None, b"\x00\x00\x00\x00", b"\x12\x34\xab\xff"])
def test_compiled_build_frame_equals_twin_at_length_boundaries(size: int, mask: bytes | None) -> None:
    payload = os.urandom(size)
    for opcode in DATA_OPS + CONTROL_OPS:
        assert outcome(compiled.build_frame, opcode, payload, mask) == outcome(twin.build_frame, opcode, payload, mask)


@ORACLE
@given(
    opcode=st.one_of(st.integers(0, 15), st.integers(16, 2**31 - 1), st.sampled_from(DATA_OPS + CONTROL_OPS)),
    payload=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=20).map(bytearray),
        st.binary(max_size=20).map(memoryview),
        st.text(max_size=20),
        st.none(),
        st.integers(0, 10),
    ),
    mask=st.one_of(
        masks,
        st.binary(max_size=8).filter(lambda m: len(m) != 4),
        st.binary(min_size=4, max_size=4).map(bytearray),
        st.text(min_size=4, max_size=4),
        st.integers(),
    ),
)
def test_compiled_build_frame_raises_like_twin_on_bad_arguments(opcode: int, payload: Any, mask: Any) -> None:
    assert outcome(compiled.build_frame, opcode, payload, mask) == outcome(twin.build_frame, opcode, payload, mask)


@pytest.mark.parametrize("opcode", [0, *RESERVED_OPS, 16, 17, 0x81, 0x108, -1, -8, -127])
def test_build_frame_rejects_every_opcode_but_the_five(fp: Any, opcode: int) -> None:
    with pytest.raises(ValueError):
        fp.build_frame(opcode, b"x")


@pytest.mark.parametrize("opcode", CONTROL_OPS)
def test_build_frame_rejects_control_payload_over_125(fp: Any, opcode: int) -> None:
    assert len(fp.build_frame(opcode, b"x" * 125)) == 127
    with pytest.raises(ValueError):
        fp.build_frame(opcode, b"x" * 126)


@pytest.mark.parametrize("mask", [b"", b"abc", b"abcde", bytearray(b"abcd"), "abcd", 1234])
def test_build_frame_rejects_mask_that_is_not_4_bytes(fp: Any, mask: Any) -> None:
    with pytest.raises(ValueError):
        fp.build_frame(OP_BINARY, b"x", mask)


@pytest.mark.parametrize("payload", [bytearray(b"x"), "x", memoryview(b"x"), None])
def test_build_frame_rejects_payload_that_is_not_bytes(fp: Any, payload: Any) -> None:
    with pytest.raises(TypeError):
        fp.build_frame(OP_BINARY, payload)


# --- 2. websockets' sans-I/O layer as the reference, both ways ------------------------------


def client() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://x/"), state=State.OPEN, max_size=None)


def server() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=None)


@st.composite
def ws_scripts(draw: st.DrawFn) -> list[tuple]:
    """Steps for a websockets protocol to send: messages (maybe fragmented, maybe with control
    frames between the fragments), pings and pongs, maybe a close last."""
    steps: list[tuple] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
        if kind in ("ping", "pong"):
            steps.append((kind, draw(st.binary(max_size=125))))
            continue
        data = draw(st.text(max_size=50)).encode() if kind == "text" else draw(st.binary(max_size=300))
        pieces = split(data, draw(st.lists(st.integers(0, 1000), max_size=3)))
        between = [
            draw(st.lists(st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=20)), max_size=1))
            for _ in pieces
        ]
        steps.append((kind, pieces, between))
    if draw(st.booleans()):
        steps.append(("close", draw(st.sampled_from([1000, 1001, 1011, 4000])), draw(st.text(max_size=30))))
    return steps


def play(proto: Any, steps: list[tuple]) -> tuple[bytes, list]:
    """Have ``proto`` send ``steps``; the bytes it writes and the items a reader must return."""
    expected: list = []
    for step in steps:
        kind = step[0]
        if kind in ("ping", "pong"):
            getattr(proto, f"send_{kind}")(step[1])
            expected.append((OP_PING if kind == "ping" else OP_PONG, step[1]))
        elif kind == "close":
            proto.send_close(step[1], step[2])
            expected.append((OP_CLOSE, close_payload(step[1], step[2])))
        else:
            _, pieces, between = step
            send_first = proto.send_text if kind == "text" else proto.send_binary
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if i == 0:
                    send_first(piece, fin=last)
                else:
                    proto.send_continuation(piece, fin=last)
                if not last:
                    for ctl, payload in between[i]:
                        getattr(proto, f"send_{ctl}")(payload)
                        expected.append((OP_PING if ctl == "ping" else OP_PONG, payload))
            expected.append((OP_TEXT if kind == "text" else OP_BINARY, b"".join(pieces)))
    return b"".join(proto.data_to_send()), expected


@WITH_FP
@given(steps=ws_scripts())
def test_reader_of_client_frames_reads_what_websockets_client_writes(fp: Any, steps: list[tuple]) -> None:
    data, expected = play(client(), steps)
    assert read_all(fp, data, masked=True) == expected


@WITH_FP
@given(steps=ws_scripts())
def test_reader_of_server_frames_reads_what_websockets_server_writes(fp: Any, steps: list[tuple]) -> None:
    data, expected = play(server(), steps)
    assert read_all(fp, data, masked=False) == expected


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000])
@pytest.mark.parametrize("side", ["client", "server"])
def test_reader_reads_websockets_close_with_code_and_utf8_reason(fp: Any, side: str, code: int) -> None:
    proto = client() if side == "client" else server()
    proto.send_text(b"caf\xc3", fin=False)  # a character split across fragments
    proto.send_ping(b"mid")
    proto.send_continuation(b"\xa9 \xe2\x82\xac", fin=True)
    proto.send_close(code, "au revoir, ça va €")
    data = b"".join(proto.data_to_send())
    assert read_all(fp, data, masked=side == "client") == [
        (OP_PING, b"mid"),
        (OP_TEXT, "café €".encode()),
        (OP_CLOSE, close_payload(code, "au revoir, ça va €")),
    ]


@st.composite
def fin_frames(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """What ``build_frame`` can write: final frames; a close, if any, last."""
    frames = []
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from((OP_TEXT, OP_BINARY, OP_PING, OP_PONG)))
        if op == OP_TEXT:
            payload = draw(st.text(max_size=60)).encode()
        else:
            payload = draw(st.binary(max_size=125 if op in CONTROL_OPS else 300))
        frames.append((op, payload))
    if draw(st.booleans()):
        frames.append(
            (OP_CLOSE, close_payload(draw(st.sampled_from([1000, 1001, 1011, 4000])), draw(st.text(max_size=30))))
        )
    return frames


def parse_with(proto: Any, data: bytes) -> list[tuple[Opcode, bytes, bool]]:
    proto.receive_data(data)
    assert proto.parser_exc is None
    return [(ev.opcode, bytes(ev.data), ev.fin) for ev in proto.events_received() if isinstance(ev, Frame)]


@WITH_FP
@given(frames=fin_frames())
def test_websockets_server_parses_masked_build_frame_output(fp: Any, frames: list[tuple[int, bytes]]) -> None:
    proto = server()
    data = b"".join(fp.build_frame(op, payload, os.urandom(4)) for op, payload in frames)
    assert parse_with(proto, data) == [(Opcode(op), payload, True) for op, payload in frames]
    if frames and frames[-1][0] == OP_CLOSE:
        payload = frames[-1][1]
        assert proto.close_rcvd == Close(int.from_bytes(payload[:2], "big"), payload[2:].decode())


@WITH_FP
@given(frames=fin_frames())
def test_websockets_client_parses_unmasked_build_frame_output(fp: Any, frames: list[tuple[int, bytes]]) -> None:
    proto = client()
    data = b"".join(fp.build_frame(op, payload) for op, payload in frames)
    assert parse_with(proto, data) == [(Opcode(op), payload, True) for op, payload in frames]
    if frames and frames[-1][0] == OP_CLOSE:
        payload = frames[-1][1]
        assert proto.close_rcvd == Close(int.from_bytes(payload[:2], "big"), payload[2:].decode())


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000])
@pytest.mark.parametrize("side", ["client", "server"])
def test_websockets_parses_close_from_build_frame_into_code_and_reason(fp: Any, side: str, code: int) -> None:
    proto = server() if side == "client" else client()
    proto.receive_data(fp.build_frame(OP_CLOSE, close_payload(code, "fin ☎"), key(side == "client")))
    assert proto.parser_exc is None
    assert proto.close_rcvd == Close(code, "fin ☎")
    assert proto.state is State.CLOSING


SEND = {
    OP_TEXT: lambda proto, payload: proto.send_text(payload),
    OP_BINARY: lambda proto, payload: proto.send_binary(payload),
    OP_PING: lambda proto, payload: proto.send_ping(payload),
    OP_PONG: lambda proto, payload: proto.send_pong(payload),
}
SIZES = {
    OP_TEXT: [0, 125, 126, 65535, 65536],
    OP_BINARY: [0, 125, 126, 65535, 65536],
    OP_PING: [0, 1, 125],
    OP_PONG: [0, 1, 125],
}
CASES = [(op, size) for op, sizes in SIZES.items() for size in sizes]


def sample(op: int, size: int) -> bytes:
    return (b"a\xc3\xa9z" * size)[:size] if op == OP_TEXT and size % 4 == 0 else os.urandom(size)


@pytest.mark.parametrize(("op", "size"), CASES)
def test_unmasked_build_frame_is_byte_identical_to_websockets_server(fp: Any, op: int, size: int) -> None:
    payload = sample(op, size)
    proto = server()
    SEND[op](proto, payload)
    assert fp.build_frame(op, payload) == b"".join(proto.data_to_send())


@pytest.mark.parametrize(("op", "size"), CASES)
def test_masked_build_frame_is_byte_identical_to_websockets_client_with_its_key(fp: Any, op: int, size: int) -> None:
    payload = sample(op, size)
    proto = client()
    SEND[op](proto, payload)
    written = b"".join(proto.data_to_send())
    at = 2 if size < 126 else 4 if size < 65536 else 10
    assert fp.build_frame(op, payload, written[at : at + 4]) == written


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "going away"), (1011, "é" * 61), (4000, "x" * 123)])
def test_unmasked_close_is_byte_identical_to_websockets_server(fp: Any, code: int, reason: str) -> None:
    proto = server()
    proto.send_close(code, reason)
    assert fp.build_frame(OP_CLOSE, close_payload(code, reason)) == b"".join(proto.data_to_send())


# --- 3. errors, with the close code to answer with ------------------------------------------


@pytest.mark.parametrize("masked", [True, False])
def test_frame_masked_the_wrong_way_is_1002(fp: Any, masked: bool) -> None:
    wrong = None if masked else b"abcd"
    assert error_code(fp, raw_frame(OP_TEXT, b"hi", mask=wrong), masked) == 1002
    assert error_code(fp, raw_frame(OP_PING, b"", mask=wrong), masked) == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("masked", [True, False])
def test_reserved_bit_is_1002(fp: Any, rsv: int, masked: bool) -> None:
    assert error_code(fp, raw_frame(OP_BINARY, b"x", mask=key(masked), rsv=rsv), masked) == 1002


@pytest.mark.parametrize("opcode", RESERVED_OPS)
@pytest.mark.parametrize("masked", [True, False])
def test_reserved_opcode_is_1002(fp: Any, opcode: int, masked: bool) -> None:
    assert error_code(fp, raw_frame(opcode, b"x", mask=key(masked)), masked) == 1002


@pytest.mark.parametrize("opcode", CONTROL_OPS)
@pytest.mark.parametrize("masked", [True, False])
def test_fragmented_control_frame_is_1002(fp: Any, opcode: int, masked: bool) -> None:
    assert error_code(fp, raw_frame(opcode, b"", fin=False, mask=key(masked)), masked) == 1002


@pytest.mark.parametrize("length", [126, 127, 65536])
@pytest.mark.parametrize("opcode", CONTROL_OPS)
def test_control_frame_over_125_bytes_is_1002(fp: Any, opcode: int, length: int) -> None:
    payload = close_payload(1000, "x" * (length - 2))
    assert error_code(fp, raw_frame(opcode, payload, mask=b"kkkk"), True) == 1002
    assert error_code(fp, raw_frame(opcode, payload), False, max_size=10) == 1002


@pytest.mark.parametrize("masked", [True, False])
def test_continuation_without_a_message_is_1002(fp: Any, masked: bool) -> None:
    assert error_code(fp, raw_frame(OP_CONT, b"x", mask=key(masked)), masked) == 1002
    assert error_code(fp, raw_frame(OP_CONT, b"x", fin=False, mask=key(masked)), masked) == 1002
    # a finished fragmented message leaves nothing to continue either
    done = raw_frame(OP_TEXT, b"a", fin=False, mask=key(masked)) + raw_frame(OP_CONT, b"b", mask=key(masked))
    assert error_code(fp, done + raw_frame(OP_CONT, b"c", mask=key(masked)), masked) == 1002


@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("fin", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_new_message_while_fragmented_one_is_open_is_1002(fp: Any, second: int, fin: bool, masked: bool) -> None:
    data = raw_frame(OP_TEXT, b"ab", fin=False, mask=key(masked)) + raw_frame(second, b"cd", fin=fin, mask=key(masked))
    assert error_code(fp, data, masked) == 1002


@pytest.mark.parametrize("masked", [True, False])
def test_close_with_1_byte_payload_is_1002(fp: Any, masked: bool) -> None:
    assert error_code(fp, raw_frame(OP_CLOSE, b"\x03", mask=key(masked)), masked) == 1002


@pytest.mark.parametrize("masked", [True, False])
def test_close_with_empty_or_code_only_payload_is_accepted(fp: Any, masked: bool) -> None:
    data = raw_frame(OP_CLOSE, b"", mask=key(masked)) + raw_frame(OP_CLOSE, b"\x03\xe8", mask=key(masked))
    assert read_all(fp, data, masked) == [(OP_CLOSE, b""), (OP_CLOSE, b"\x03\xe8")]


BAD_UTF8 = [b"\xff", b"abc\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]


@pytest.mark.parametrize("text", BAD_UTF8)
@pytest.mark.parametrize("masked", [True, False])
def test_text_that_is_not_utf8_is_1007(fp: Any, text: bytes, masked: bool) -> None:
    assert error_code(fp, raw_frame(OP_TEXT, text, mask=key(masked)), masked) == 1007


@pytest.mark.parametrize("text", BAD_UTF8)
def test_binary_that_is_not_utf8_is_accepted(fp: Any, text: bytes) -> None:
    assert read_all(fp, raw_frame(OP_BINARY, text), False) == [(OP_BINARY, text)]


@pytest.mark.parametrize("masked", [True, False])
def test_utf8_character_split_across_fragments_is_accepted(fp: Any, masked: bool) -> None:
    euro = "€".encode()  # 3 bytes
    for cut in (1, 2):
        data = raw_frame(OP_TEXT, b"x" + euro[:cut], fin=False, mask=key(masked)) + raw_frame(
            OP_CONT, euro[cut:] + b"y", mask=key(masked)
        )
        assert read_all(fp, data, masked) == [(OP_TEXT, b"x" + euro + b"y")]
    emoji = "🎉".encode()  # 4 bytes, one per fragment
    data = raw_frame(OP_TEXT, emoji[:1], fin=False, mask=key(masked))
    data += b"".join(raw_frame(OP_CONT, emoji[i : i + 1], fin=i == 3, mask=key(masked)) for i in (1, 2, 3))
    assert read_all(fp, data, masked) == [(OP_TEXT, emoji)]


@pytest.mark.parametrize(("first", "rest"), [(b"a\xe2\x82", b"("), (b"\xff", b"ok"), (b"ok", b"\xc3")])
def test_invalid_utf8_across_fragments_is_1007_once_the_message_completes(fp: Any, first: bytes, rest: bytes) -> None:
    reader = fp.FrameReader(False, 1 << 20)
    reader.feed(raw_frame(OP_TEXT, first, fin=False))
    assert reader.read() is None
    reader.feed(raw_frame(OP_CONT, rest))
    with pytest.raises(FrameError) as info:
        reader.read()
    assert info.value.code == 1007


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xb0\x80"])
@pytest.mark.parametrize("masked", [True, False])
def test_close_reason_that_is_not_utf8_is_1007(fp: Any, reason: bytes, masked: bool) -> None:
    assert error_code(fp, raw_frame(OP_CLOSE, b"\x03\xe8" + reason, mask=key(masked)), masked) == 1007


@pytest.mark.parametrize("opcode", DATA_OPS)
@pytest.mark.parametrize("masked", [True, False])
def test_message_over_max_size_is_1009(fp: Any, opcode: int, masked: bool) -> None:
    assert read_all(fp, raw_frame(opcode, b"a" * 10, mask=key(masked)), masked, max_size=10) == [(opcode, b"a" * 10)]
    assert error_code(fp, raw_frame(opcode, b"a" * 11, mask=key(masked)), masked, max_size=10) == 1009
    assert error_code(fp, raw_frame(opcode, b"a" * 70000, mask=key(masked)), masked, max_size=65536) == 1009


@pytest.mark.parametrize("opcode", DATA_OPS)
@pytest.mark.parametrize("masked", [True, False])
def test_fragments_summing_over_max_size_is_1009(fp: Any, opcode: int, masked: bool) -> None:
    def message(*sizes: int) -> bytes:
        return b"".join(
            raw_frame(opcode if i == 0 else OP_CONT, b"a" * n, fin=i == len(sizes) - 1, mask=key(masked))
            for i, n in enumerate(sizes)
        )

    assert read_all(fp, message(4, 3, 3), masked, max_size=10) == [(opcode, b"a" * 10)]
    assert error_code(fp, message(4, 3, 4), masked, max_size=10) == 1009
    assert error_code(fp, message(6, 5), masked, max_size=10) == 1009
    # the count starts afresh with each message
    assert read_all(fp, message(6, 4) + message(4, 6), masked, max_size=10) == [(opcode, b"a" * 10)] * 2


def test_control_frames_do_not_count_towards_max_size(fp: Any) -> None:
    data = raw_frame(OP_TEXT, b"abc", fin=False) + raw_frame(OP_PING, b"p" * 125) + raw_frame(OP_CONT, b"d")
    assert read_all(fp, data, False, max_size=4) == [(OP_PING, b"p" * 125), (OP_TEXT, b"abcd")]


def test_oversized_message_is_1009_from_its_header_alone(fp: Any) -> None:
    head = raw_frame(OP_BINARY, b"", length=1 << 40)
    reader = fp.FrameReader(False, 1 << 20)
    reader.feed(head)
    with pytest.raises(FrameError) as info:
        reader.read()
    assert info.value.code == 1009


@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, (1 << 63) + 5])
@pytest.mark.parametrize("masked", [True, False])
def test_64_bit_length_with_top_bit_set_is_1002(fp: Any, length: int, masked: bool) -> None:
    head = bytes([0x82, (0x80 if masked else 0) | 127]) + length.to_bytes(8, "big") + (b"kkkk" if masked else b"")
    assert error_code(fp, head + b"payload", masked) == 1002
    assert error_code(fp, head, masked, max_size=(1 << 63) - 1) == 1002


def test_frame_error_is_a_protocol_error_with_code_and_reason(fp: Any) -> None:
    from relay.errors import ProtocolError

    with pytest.raises(ProtocolError) as info:
        reader = fp.FrameReader(True, 100)
        reader.feed(raw_frame(OP_TEXT, b"x"))
        reader.read()
    assert isinstance(info.value, FrameError)
    assert info.value.code == 1002 and isinstance(info.value.reason, str) and info.value.reason


# --- 4. incremental feeding -----------------------------------------------------------------


@WITH_FP
@given(script=scripts(), cuts=st.lists(st.integers(0, 5000), max_size=12), masked=st.booleans(), keys=st.data())
def test_any_split_of_a_valid_stream_reads_like_the_whole(
    fp: Any, script: tuple, cuts: list[int], masked: bool, keys: st.DataObject
) -> None:
    frames, expected = script
    frame_masks = [keys.draw(st.binary(min_size=4, max_size=4)) if masked else None for _ in frames]
    data = encode(fp, frames, frame_masks)
    assert read_all(fp, data, masked) == expected
    assert run(fp, split(data, cuts), masked) == (expected, ("none", 0))


@pytest.mark.parametrize("masked", [True, False])
def test_one_byte_feeds_read_like_the_whole(fp: Any, masked: bool) -> None:
    data = (
        raw_frame(OP_TEXT, "héllo".encode(), mask=key(masked))
        + raw_frame(OP_BINARY, bytes(range(200)), fin=False, mask=key(masked))
        + raw_frame(OP_PONG, b"pong", mask=key(masked))
        + raw_frame(OP_CONT, b"\x00" * 70000, mask=key(masked))
        + raw_frame(OP_CLOSE, close_payload(1000, "bye"), mask=key(masked))
    )
    whole = read_all(fp, data, masked)
    assert whole == [
        (OP_TEXT, "héllo".encode()),
        (OP_PONG, b"pong"),
        (OP_BINARY, bytes(range(200)) + b"\x00" * 70000),
        (OP_CLOSE, close_payload(1000, "bye")),
    ]
    head = data[:400]  # byte by byte through the first frames and into the long one's header
    assert run(fp, [head[i : i + 1] for i in range(len(head))] + [data[400:]], masked) == (whole, ("none", 0))


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536])
@pytest.mark.parametrize("masked", [True, False])
def test_partial_frame_reads_none_and_keeps_every_byte_pending(fp: Any, size: int, masked: bool) -> None:
    frame = raw_frame(OP_BINARY, os.urandom(size), mask=key(masked))
    for cut in sorted({0, 1, 2, 3, 4, 9, 10, 13, len(frame) // 2, len(frame) - 1}):
        if cut >= len(frame):
            continue
        reader = fp.FrameReader(masked, 1 << 20)
        reader.feed(frame[:cut])
        assert reader.read() is None
        assert reader.read() is None
        assert reader.pending() == cut
        reader.feed(frame[cut:])
        assert reader.pending() == len(frame)
        assert reader.read() == (OP_BINARY, reader_payload(frame, size, masked))
        assert reader.pending() == 0
        assert reader.read() is None


def reader_payload(frame: bytes, size: int, masked: bool) -> bytes:
    """The payload of a frame written by ``raw_frame``."""
    if size == 0:
        return b""
    data = frame[-size:]
    if not masked:
        return data
    mask = frame[-size - 4 : -size]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_pending_counts_the_frames_not_yet_read(fp: Any) -> None:
    one, two = raw_frame(OP_PING, b"1"), raw_frame(OP_BINARY, b"22")
    reader = fp.FrameReader(False, 100)
    reader.feed(one + two + two[:3])
    assert reader.pending() == len(one) + len(two) + 3
    assert reader.read() == (OP_PING, b"1")
    assert reader.pending() == len(two) + 3
    assert reader.read() == (OP_BINARY, b"22")
    assert reader.pending() == 3
    assert reader.read() is None
    assert reader.pending() == 3


# --- 5. control frames between fragments ----------------------------------------------------


@pytest.mark.parametrize("masked", [True, False])
def test_ping_between_fragments_comes_out_first_and_the_message_whole(fp: Any, masked: bool) -> None:
    reader = fp.FrameReader(masked, 1 << 20)
    reader.feed(raw_frame(OP_TEXT, b"Hel", fin=False, mask=key(masked)))
    assert reader.read() is None
    reader.feed(raw_frame(OP_PING, b"are you there", mask=key(masked)))
    assert reader.read() == (OP_PING, b"are you there")
    assert reader.read() is None
    reader.feed(
        raw_frame(OP_CONT, b"lo, ", fin=False, mask=key(masked))
        + raw_frame(OP_PONG, b"", mask=key(masked))
        + raw_frame(OP_CONT, "wörld".encode(), mask=key(masked))
    )
    assert reader.read() == (OP_PONG, b"")
    assert reader.read() == (OP_TEXT, "Hello, wörld".encode())
    assert reader.read() is None
    assert reader.pending() == 0


# ---- the frames the cores build per media message ---------------------------------------

b64_payloads = st.binary(max_size=3000).map(lambda b: __import__("base64").b64encode(b))


class _Writes:
    """A transport that records what a ``WsCore`` writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _sent_append(module: Any, payload: bytes, mask: bytes) -> list[bytes]:
    """What a client ``WsCore`` of ``module`` writes for ``send_append(payload)``, its masking
    keys all ``mask``."""
    transport = _Writes()
    core = module.WsCore(transport, True, 1 << 20, 0, lambda: 0.0)
    with mock.patch("os.urandom", lambda n: mask * (n // 4)):
        core.send_append(payload)
    return transport.writes


@settings(max_examples=200, deadline=None)
@given(payload=b64_payloads, mask=st.binary(min_size=4, max_size=4))
def test_send_append_frame_equals_the_twin_and_its_definition(payload: bytes, mask: bytes) -> None:
    """The backend leg's caller audio: one masked text frame, built in one go by the compiled
    core, byte for byte the twin's and the frame of the append message."""
    expected = twin.build_frame(OP_TEXT, b'{"type":"input_audio_buffer.append","audio":"' + payload + b'"}', mask)
    assert _sent_append(twin, payload, mask) == [expected]
    assert _sent_append(compiled, payload, mask) == [expected]


@settings(max_examples=200, deadline=None)
@given(payload=b64_payloads, name=st.text(min_size=1, max_size=40), sid=st.text(min_size=1, max_size=40))
def test_writer_frames_equal_the_twin_and_parse_back(payload: bytes, name: str, sid: str) -> None:
    """A media message and its mark as two server frames, the way the media core writes them."""

    def frames(module: Any) -> bytes:
        writer = module.TwilioWriter(sid)
        return module.build_frame(OP_TEXT, writer.media(payload)) + module.build_frame(OP_TEXT, writer.mark(name))

    try:
        expected = frames(twin)
    except ProtocolError as exc:
        with pytest.raises(type(exc)):
            frames(compiled)
        return
    assert frames(compiled) == expected
    reader = twin.FrameReader(False)
    reader.feed(expected)
    assert reader.read() == (twin.OP_TEXT, twin.TwilioWriter(sid).media(payload))
    assert reader.read() == (twin.OP_TEXT, twin.TwilioWriter(sid).mark(name))
    assert reader.read() is None
