"""Per-frame hot path: compiled vs Python reference vs a plain library baseline.

Run: ``pytest bench/bench_fastpath.py`` (timings) or add ``--benchmark-disable`` (each case once,
as a correctness check). Every case records in ``extra_info["correct"]`` whether its result
equals the reference's; the test also asserts it.

Inputs are the real sizes: 20 ms of 8 kHz mu-law from Twilio is 160 bytes, a 216-char base64
payload; a Realtime audio delta is a few KB (here 3000 bytes, 4000 chars).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest

from relay import _fastpath_py as ref

IMPLS = ["cython", "python", "library"]

_rng = random.Random(20)
PAYLOAD = base64.b64encode(_rng.randbytes(160))  # 216 chars
DELTA = base64.b64encode(_rng.randbytes(3000))  # 4000 chars
SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
ITEM = "item_CSx0Bv6Rz3QTz2mIkOaW8"

MEDIA_MSG = (
    b'{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2",'
    b'"timestamp":"5","payload":"' + PAYLOAD + b'"},"streamSid":"' + SID.encode() + b'"}'
)
DELTA_MSG = (
    b'{"type":"response.output_audio.delta","event_id":"evt_CSx0BwqZqJ7Tf6ZbJDuc1",'
    b'"response_id":"resp_CSx0Bv3T5X3yS4TuPZjQp","item_id":"' + ITEM.encode() + b'",'
    b'"output_index":0,"content_index":0,"delta":"' + DELTA + b'"}'
)
APPEND_MSG = b'{"type":"input_audio_buffer.append","audio":"' + PAYLOAD + b'"}'  # what the backend is sent
assert len(PAYLOAD) == 216 and len(DELTA) == 4000


def _compiled() -> ModuleType:
    # No skip: a missing build must fail loudly, never pass as "nothing to measure".
    return importlib.import_module("relay._fastpath")


def _run(benchmark: Any, fn: Callable[..., Any], *args: Any, expected: Any) -> None:
    result = benchmark(fn, *args)
    benchmark.extra_info["correct"] = correct = result == expected
    assert correct, (result, expected)


# --- library baselines: what the hot path would be without it ------------------------------


def lib_parse_media(message: bytes) -> tuple[bytes, int] | None:
    obj = orjson.loads(message)
    if obj["event"] != "media":
        return None
    media = obj["media"]
    return media["payload"].encode(), int(media["timestamp"])


def lib_parse_audio_delta(message: bytes) -> tuple[str, bytes, str] | None:
    obj = orjson.loads(message)
    if obj["type"] != "response.output_audio.delta":
        return None
    return obj["item_id"], obj["delta"].encode(), obj.get("response_id", "")


def lib_build_append(payload: bytes) -> bytes:
    return orjson.dumps({"type": "input_audio_buffer.append", "audio": payload.decode()})


def lib_b64_decoded_len(data: bytes) -> int:
    return len(binascii.a2b_base64(data, strict_mode=True))


def _lib_twilio(sid: str) -> tuple[Callable[[bytes], bytes], Callable[[str], bytes]]:
    def media(payload: bytes) -> bytes:
        message = {"event": "media", "streamSid": sid, "media": {"payload": payload.decode()}}
        return orjson.dumps(message)

    def mark(name: str) -> bytes:
        return orjson.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}})

    return media, mark


def _pick(impl: str, name: str, library: Callable[..., Any]) -> Callable[..., Any]:
    if impl == "cython":
        return getattr(_compiled(), name)
    if impl == "python":
        return getattr(ref, name)
    return library


# --- the cases -------------------------------------------------------------------------------


@pytest.mark.benchmark(group="parse_media (216-char payload)")
@pytest.mark.parametrize("impl", IMPLS)
def test_parse_media(benchmark: Any, impl: str) -> None:
    fn = _pick(impl, "parse_media", lib_parse_media)
    _run(benchmark, fn, MEDIA_MSG, expected=ref.parse_media(MEDIA_MSG))


@pytest.mark.benchmark(group="parse_audio_delta (4000-char delta)")
@pytest.mark.parametrize("impl", IMPLS)
def test_parse_audio_delta(benchmark: Any, impl: str) -> None:
    fn = _pick(impl, "parse_audio_delta", lib_parse_audio_delta)
    _run(benchmark, fn, DELTA_MSG, expected=ref.parse_audio_delta(DELTA_MSG))


@pytest.mark.benchmark(group="b64_decoded_len (216 chars)")
@pytest.mark.parametrize("impl", IMPLS)
def test_b64_decoded_len(benchmark: Any, impl: str) -> None:
    fn = _pick(impl, "b64_decoded_len", lib_b64_decoded_len)
    _run(benchmark, fn, PAYLOAD, expected=ref.b64_decoded_len(PAYLOAD))


def _writer(impl: str) -> Any:
    return (_compiled() if impl == "cython" else ref).TwilioWriter(SID)


@pytest.mark.benchmark(group="TwilioWriter.media (4000-char delta)")
@pytest.mark.parametrize("impl", IMPLS)
def test_twilio_media(benchmark: Any, impl: str) -> None:
    fn = _lib_twilio(SID)[0] if impl == "library" else _writer(impl).media
    _run(benchmark, fn, DELTA, expected=ref.TwilioWriter(SID).media(DELTA))


@pytest.mark.benchmark(group="TwilioWriter.mark")
@pytest.mark.parametrize("impl", IMPLS)
def test_twilio_mark(benchmark: Any, impl: str) -> None:
    fn = _lib_twilio(SID)[1] if impl == "library" else _writer(impl).mark
    _run(benchmark, fn, ITEM, expected=ref.TwilioWriter(SID).mark(ITEM))


# --- WebSocket framing: the library baseline is websockets' own sans-I/O layer --------------

MEDIA_FRAME = ref.build_frame(ref.OP_TEXT, MEDIA_MSG, b"\x12\x34\x56\x78")  # as Twilio sends it


def _read_all(impl: str) -> Callable[[bytes], list[tuple[int, bytes]]]:
    """A long-lived parser per connection, as in a server: one frame fed and read per call."""
    if impl == "library":
        from websockets.protocol import State
        from websockets.server import ServerProtocol

        protocol = ServerProtocol(state=State.OPEN, max_size=None)

        def read_lib(data: bytes) -> list[tuple[int, bytes]]:
            protocol.receive_data(data)
            return [(int(f.opcode), bytes(f.data)) for f in protocol.events_received()]

        return read_lib
    module = _compiled() if impl == "cython" else ref
    reader = module.FrameReader(True, 1 << 20)

    def read(data: bytes) -> list[tuple[int, bytes]]:
        reader.feed(data)
        out = []
        while (item := reader.read()) is not None:
            out.append(item)
        return out

    return read


def lib_build_server_frame(payload: bytes) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def lib_build_client_frame(payload: bytes) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload).serialize(mask=True)


@pytest.mark.benchmark(group="FrameReader: one masked media frame")
@pytest.mark.parametrize("impl", IMPLS)
def test_read_frame(benchmark: Any, impl: str) -> None:
    _run(benchmark, _read_all(impl), MEDIA_FRAME, expected=[(ref.OP_TEXT, MEDIA_MSG)])


@pytest.mark.benchmark(group="build_frame: server frame (4000-char delta)")
@pytest.mark.parametrize("impl", IMPLS)
def test_build_server_frame(benchmark: Any, impl: str) -> None:
    message = ref.TwilioWriter(SID).media(DELTA)
    m = _compiled() if impl == "cython" else ref
    fn = lib_build_server_frame if impl == "library" else (lambda p: m.build_frame(1, p))
    _run(benchmark, fn, message, expected=ref.build_frame(ref.OP_TEXT, message))


@pytest.mark.benchmark(group="build_frame: masked client frame (append)")
@pytest.mark.parametrize("impl", IMPLS)
def test_build_client_frame(benchmark: Any, impl: str) -> None:
    message = APPEND_MSG
    mask = b"\x9a\xbc\xde\xf0"
    if impl == "library":  # a random mask each time: check by parsing it back
        frame = lib_build_client_frame(message)
        reader = ref.FrameReader(True)
        reader.feed(frame)
        benchmark.extra_info["correct"] = correct = reader.read() == (ref.OP_TEXT, message)
        assert correct
        benchmark(lib_build_client_frame, message)
        return
    module = _compiled() if impl == "cython" else ref
    _run(benchmark, module.build_frame, 1, message, mask, expected=ref.build_frame(1, message, mask))


class _Sink:
    """A transport that keeps its last write."""

    last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def is_closing(self) -> bool:
        return False


@pytest.mark.benchmark(group="WsCore.send_append: masked append frame (216-char payload)")
@pytest.mark.parametrize("impl", IMPLS)
def test_send_append(benchmark: Any, impl: str) -> None:
    """Caller audio to the backend: the append message built, framed, masked and written."""
    sink = _Sink()
    if impl == "library":

        def fn(payload: bytes) -> None:
            sink.write(lib_build_client_frame(lib_build_append(payload)))
    else:
        module = _compiled() if impl == "cython" else ref
        fn = module.WsCore(sink, True, 1 << 20, 0, lambda: 0.0).send_append
    benchmark(fn, PAYLOAD)
    reader = ref.FrameReader(True)  # a random mask each time: check by parsing it back
    reader.feed(sink.last)
    benchmark.extra_info["correct"] = correct = reader.read() == (ref.OP_TEXT, APPEND_MSG)
    assert correct
