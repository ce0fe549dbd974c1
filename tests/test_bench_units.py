"""Unit tests for the load harness's own parts: the wire, the echo upstream, the load generator,
the harness's arithmetic and step search, and the report.

``bench/wire.py`` is checked against the ``websockets`` library as the reference RFC 6455
implementation, both as a live peer and as a sans-I/O frame parser. Tests that open sockets take
the ``run`` fixture and run once on asyncio's own event loop and once on uvloop, the loop
``python -m bench`` runs on.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import struct
import time
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from bench import report, wire
from bench.echo_upstream import (
    LIVE_INPUT_TEXT_FRAMES,
    LIVE_OUTPUT_TEXT_FRAMES,
    LIVE_USAGE_FRAMES,
    EchoUpstream,
    spoken_at_24k,
)
from bench.harness import LATE_MS, UNTAGGED, Floor, Harness, Options, figures, passes, transcoding_cost
from bench.loadgen import FILLER, FRAME_BYTES, TAG_BYTES, LoadCall, LoadRun, Target, Window, read_tag, tag
from relay.fastpath import Resampler, parse_gemini_audio, ulaw_to_pcm16
from relay.sim.caller import outbound_violations

RUN_TIMEOUT_S = 30.0  # no scenario may hang the suite
RECV_TIMEOUT_S = 5.0
SIZES = [0, 125, 126, 65535, 65536, 200_000]  # both edges of each of the three length encodings


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(params=[asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a scenario to completion on a fresh event loop of each kind."""

    def run(scenario: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=request.param) as runner:
            return runner.run(asyncio.wait_for(scenario, RUN_TIMEOUT_S))

    return run


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds; False if it still does not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def text_of(n: int) -> bytes:
    """``n`` bytes of printable ASCII that vary byte to byte, so a masking slip cannot hide."""
    return (bytes(range(0x21, 0x7F)) * (n // 94 + 1))[:n]


def parse_frames(data: bytes, *, masked: bool) -> list[Frame]:
    """Every frame in ``data``, parsed by websockets; fails on a malformed or truncated frame."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=masked)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the reader is at EOF, so the parser never waits for more
            raise AssertionError("websockets wanted more bytes than were written")
    return frames


class FakeTransport:
    """Collects what an endpoint writes, so its bytes can be checked without a socket."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


def open_over_fake_transport(endpoint: wire.ClientEndpoint) -> FakeTransport:
    """Connect a client endpoint to a fake transport and answer its upgrade as a server would."""
    transport = FakeTransport()
    endpoint.connection_made(transport)  # type: ignore[arg-type]
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.take())
    assert key is not None
    endpoint.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + wire.accept_key(key.group(1)) + b"\r\n\r\n"
    )
    assert endpoint.open
    return transport


class RecordingClient(wire.ClientEndpoint):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(self, data: bytes) -> None:
        self.inbox.put_nowait(data)

    async def recv(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), RECV_TIMEOUT_S)


class EchoEndpoint(wire.ServerEndpoint):
    """Records every message and sends it straight back."""

    def __init__(self, *, echo: bool = True) -> None:
        super().__init__()
        self.echo = echo
        self.received: list[bytes] = []
        self.opened = self.close_seen = False

    def on_open(self) -> None:
        self.opened = True

    def on_message(self, data: bytes) -> None:
        self.received.append(data)
        if self.echo:
            self.send(data)

    def on_close(self) -> None:
        self.close_seen = True


@asynccontextmanager
async def websockets_echo_server():
    """The reference peer: a websockets server echoing each message; yields (url, received, codes)."""
    received: list[str | bytes] = []
    close_codes: list[int | None] = []

    async def echo(ws) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(message)
        close_codes.append(ws.close_code)

    async with ws_serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/", received, close_codes


@asynccontextmanager
async def wire_echo_server():
    """A ServerEndpoint echo server; yields (url, the endpoints it accepted)."""
    endpoints: list[EchoEndpoint] = []

    def accept() -> EchoEndpoint:
        endpoints.append(EchoEndpoint())
        return endpoints[-1]

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/bench?x=1", endpoints
    finally:
        server.close()
        await server.wait_closed()


# -- bench/wire.py: the client side against a websockets server ---------------------------------------


def test_client_endpoint_round_trips_messages_of_every_length_encoding(run) -> None:
    async def scenario() -> None:
        async with websockets_echo_server() as (url, received, close_codes):
            client = await wire.connect(lambda: RecordingClient(url), url)
            assert isinstance(client, RecordingClient)
            for n in SIZES:
                client.send(text_of(n))
                assert await client.recv() == text_of(n)
            # websockets refuses unmasked client frames, so equality here means masked and decoded right.
            assert received == [text_of(n).decode() for n in SIZES]
            client.close(1000)
            await asyncio.wait_for(client.closed, RECV_TIMEOUT_S)
            assert await eventually(lambda: close_codes == [1000])

    run(scenario())


def test_client_endpoint_keeps_order_when_many_frames_share_one_read(run) -> None:
    messages = [text_of(n) for n in range(0, 3000, 7)]

    async def scenario() -> None:
        async with websockets_echo_server() as (url, _received, _):
            client = await wire.connect(lambda: RecordingClient(url), url)
            for message in messages:
                client.send(message)
            assert [await client.recv() for _ in messages] == messages
            client.close()
            await asyncio.wait_for(client.closed, RECV_TIMEOUT_S)

    run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
    ],
    ids=["refused", "wrong-accept-key"],
)
def test_connect_fails_with_wire_error_when_the_upgrade_is_not_accepted(run, answer: bytes) -> None:
    async def scenario() -> None:
        async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            await reader.read()  # until the client hangs up
            writer.close()

        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            with pytest.raises(wire.WireError):
                await wire.connect(lambda: RecordingClient(url), url)
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


# -- bench/wire.py: the server side against a websockets client ---------------------------------------


def test_server_endpoint_echoes_to_a_websockets_client(run) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, endpoints):
            async with ws_connect(url, compression=None, max_size=None) as ws:
                for n in SIZES:
                    await ws.send(text_of(n).decode())
                    assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S) == text_of(n).decode()
            (endpoint,) = endpoints
            assert endpoint.opened and endpoint.path == "/bench?x=1"
            assert endpoint.request_headers["sec-websocket-version"] == "13"
            assert endpoint.received == [text_of(n) for n in SIZES]

    run(scenario())


class SortingEndpoint(wire.ServerEndpoint):
    """Records text and binary messages apart, and answers each in its own kind."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[bytes] = []
        self.binaries: list[bytes] = []

    def on_message(self, data: bytes) -> None:
        self.texts.append(data)
        self.send(data)

    def on_binary(self, data: bytes) -> None:
        self.binaries.append(data)
        self.send_raw(wire.frame(data, wire.OP_BINARY, masked=False))


def test_server_endpoint_reads_and_writes_binary_messages_apart_from_text(run) -> None:
    async def scenario() -> None:
        endpoints: list[SortingEndpoint] = []

        def accept() -> SortingEndpoint:
            endpoints.append(SortingEndpoint())
            return endpoints[-1]

        server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            async with ws_connect(url, compression=None, max_size=None) as ws:
                audio = bytes(range(256)) * 3  # not UTF-8: only a binary frame can carry it
                await ws.send(audio)
                assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S) == audio  # bytes: a binary frame
                await ws.send("text")
                assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S) == "text"  # str: a text frame
            (endpoint,) = endpoints
            assert (endpoint.binaries, endpoint.texts) == ([audio], [b"text"])
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_an_endpoint_that_does_not_tell_binary_apart_reads_it_as_a_message(run) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, endpoints), ws_connect(url, compression=None) as ws:
            await ws.send(b"raw")
            assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S) == "raw"  # EchoEndpoint answers in text
            assert endpoints[0].received == [b"raw"]

    run(scenario())


def test_server_endpoint_joins_a_fragmented_message(run) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, endpoints):
            async with ws_connect(url, compression=None) as ws:
                await ws.send(iter(["ab", "cd", "ef"]))
                assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S) == "abcdef"
            assert endpoints[0].received == [b"abcdef"]

    run(scenario())


def test_server_endpoint_answers_a_ping_with_its_pong(run) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, _), ws_connect(url, compression=None) as ws:
            # websockets resolves the waiter only on a pong carrying the ping's own data.
            await asyncio.wait_for(await ws.ping(b"are you there"), RECV_TIMEOUT_S)
            await asyncio.wait_for(await ws.ping(), RECV_TIMEOUT_S)

    run(scenario())


def test_server_endpoint_completes_a_client_close_cleanly(run) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, endpoints):
            ws = await ws_connect(url, compression=None)
            await ws.close(1000)
            assert ws.close_code == 1000
            (endpoint,) = endpoints
            await asyncio.wait_for(endpoint.closed, RECV_TIMEOUT_S)
            assert endpoint.close_seen and not endpoint.open

    run(scenario())


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["plain-get", "post", "no-key"],
)
def test_server_endpoint_answers_a_non_websocket_request_with_400_and_closes(run, request_head: bytes) -> None:
    async def scenario() -> None:
        async with wire_echo_server() as (url, endpoints):
            port = int(url.split(":")[2].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_head)
            answer = await asyncio.wait_for(reader.read(), RECV_TIMEOUT_S)  # read() returns at EOF
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 ")
            (endpoint,) = endpoints
            await asyncio.wait_for(endpoint.closed, RECV_TIMEOUT_S)
            assert not endpoint.opened
            assert isinstance(endpoint.ready.exception(), wire.WireError)

    run(scenario())


# -- bench/wire.py: frames, checked by websockets' sans-I/O parser -------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize(("size", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (200_000, 10)])
def test_frame_is_parsed_by_websockets_in_each_length_encoding(size: int, header: int, masked: bool) -> None:
    payload = text_of(size)
    data = wire.frame(payload, masked=masked)
    assert len(data) == header + (4 if masked else 0) + size
    (parsed,) = parse_frames(data, masked=masked)
    assert (parsed.opcode, parsed.fin, bytes(parsed.data)) == (Opcode.TEXT, True, payload)
    if not masked:
        assert data == Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.mark.parametrize(
    ("opcode", "payload", "expected"),
    [
        (wire.OP_BINARY, b"\x00\x01\xff", Opcode.BINARY),
        (wire.OP_PING, b"ping", Opcode.PING),
        (wire.OP_PONG, b"pong", Opcode.PONG),
        (wire.OP_CLOSE, struct.pack("!H", 1000), Opcode.CLOSE),
    ],
)
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_frame_carries_each_opcode(opcode: int, payload: bytes, expected: Opcode, masked: bool) -> None:
    (parsed,) = parse_frames(wire.frame(payload, opcode, masked=masked), masked=masked)
    assert (parsed.opcode, bytes(parsed.data)) == (expected, payload)


def test_frame_masks_each_client_frame_with_a_fresh_key() -> None:
    keys = {wire.frame(b"same payload", masked=True)[2:6] for _ in range(16)}
    assert len(keys) > 1


# What a websockets client would send: its own upgrade request, then its own frames, with a ping
# between the fragments of one message (RFC 6455 §5.4 allows it).
_BIG = text_of(70_000)
_FRAMES = [
    Frame(Opcode.TEXT, b"hello"),
    Frame(Opcode.TEXT, b"ab", fin=False),
    Frame(Opcode.PING, b"p"),
    Frame(Opcode.CONT, b"cd", fin=False),
    Frame(Opcode.CONT, b"ef"),
    Frame(Opcode.BINARY, b"\x00\x01"),
    Frame(Opcode.TEXT, _BIG),
    Frame(Opcode.CLOSE, Close(1000, "bye").serialize()),
]


def websockets_client() -> tuple[ClientProtocol, bytes, bytes]:
    """A sans-I/O websockets client with its upgrade request sent: (client, handshake, frames)."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1/bench"))
    client.send_request(client.connect())
    return client, b"".join(client.data_to_send()), b"".join(f.serialize(mask=True) for f in _FRAMES)


_STREAM_LENGTH = sum(map(len, websockets_client()[1:]))  # the same for every client: keys are 16 bytes


@given(cuts=st.lists(st.integers(1, _STREAM_LENGTH - 1), max_size=30))
async def test_server_endpoint_decodes_a_websockets_stream_however_it_is_split(cuts: list[int]) -> None:
    client, handshake, frames = websockets_client()
    stream = handshake + frames
    endpoint = EchoEndpoint(echo=False)
    transport = FakeTransport()
    endpoint.connection_made(transport)  # type: ignore[arg-type]
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for a, b in itertools.pairwise(bounds):
        endpoint.data_received(stream[a:b])

    assert endpoint.received == [b"hello", b"abcdef", b"\x00\x01", _BIG]
    assert transport.closing  # the server closes TCP after answering the close
    # What it wrote, read by the same client: the upgrade accepted, a pong, the close echoed.
    client.receive_data(bytes(transport.written))
    response, *answers = client.events_received()
    assert isinstance(response, Response) and response.status_code == 101
    assert client.handshake_exc is None
    assert [(f.opcode, bytes(f.data)) for f in answers] == [
        (Opcode.PONG, b"p"),
        (Opcode.CLOSE, struct.pack("!H", 1000)),
    ]


async def test_endpoint_refuses_a_frame_over_the_size_limit_with_1009() -> None:
    endpoint = EchoEndpoint()
    transport = FakeTransport()
    endpoint.connection_made(transport)  # type: ignore[arg-type]
    endpoint.data_received(websockets_client()[1])
    transport.take()  # the 101 response
    endpoint.data_received(struct.pack("!BBQ", 0x81, 0x80 | 127, wire.MAX_MESSAGE + 1) + b"mask")
    (close,) = parse_frames(transport.take(), masked=False)
    assert close.opcode == Opcode.CLOSE and Close.parse(close.data).code == 1009
    assert transport.closing and endpoint.received == []


# -- bench/echo_upstream.py: the Realtime side ----------------------------------------------------------


async def recv_event(ws) -> dict[str, Any]:
    """The next event; every event the upstream sends has ``type`` first and an ``event_id``."""
    event = orjson.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
    assert next(iter(event)) == "type" and event["event_id"], event
    return event


async def recv_until(ws, kind: str) -> list[dict[str, Any]]:
    """Events up to and including the next one of type ``kind``."""
    events = [await recv_event(ws)]
    while events[-1]["type"] != kind:
        events.append(await recv_event(ws))
    return events


def append(audio: str) -> str:
    return orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()


def audio_chunk(k: int) -> str:
    return base64.b64encode(tag(7, k) + FILLER).decode()


def test_echo_upstream_opens_a_session_and_applies_the_format_update(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up:
            async with ws_connect(up.url, compression=None) as ws:
                created = await recv_event(ws)
                assert created["type"] == "session.created"
                pcmu = {"type": "audio/pcmu"}
                await ws.send(
                    orjson.dumps(
                        {
                            "type": "session.update",
                            "session": {
                                "type": "realtime",
                                "audio": {"input": {"format": pcmu}, "output": {"format": pcmu}},
                            },
                        }
                    ).decode()
                )
                updated = await recv_event(ws)
                assert updated["type"] == "session.updated"
                audio = updated["session"]["audio"]
                assert audio["input"]["format"]["type"] == audio["output"]["format"]["type"] == "audio/pcmu"
                assert updated["session"]["id"] == created["session"]["id"]
                assert up.stats.sessions_open == 1
            assert await eventually(lambda: up.stats.sessions_open == 0)
            assert up.stats.sessions_opened == 1

    run(scenario())


def test_echo_upstream_echoes_each_append_inside_a_response_lifecycle(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up, ws_connect(up.url, compression=None) as ws:
            await recv_event(ws)  # session.created
            seen: list[dict[str, Any]] = []

            await ws.send(append(audio_chunk(0)))
            events = await recv_until(ws, "response.output_audio.delta")
            seen += events
            assert [e["type"] for e in events] == [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_audio.delta",
            ]
            created, item_added, _, delta = events
            first_id = created["response"]["id"]
            assert created["response"]["status"] == "in_progress"
            assert item_added["item"]["role"] == "assistant"
            assert delta["delta"] == audio_chunk(0)
            assert delta["response_id"] == first_id and delta["item_id"] == item_added["item"]["id"]

            for k in (1, 2):
                await ws.send(append(audio_chunk(k)))
                (delta,) = await recv_until(ws, "response.output_audio.delta")
                seen.append(delta)
                assert (delta["delta"], delta["response_id"]) == (audio_chunk(k), first_id)

            # The third chunk closed the response.
            finished = await recv_until(ws, "response.done")
            seen += finished
            assert finished[-1]["response"]["status"] == "completed"
            assert finished[-1]["response"]["id"] == first_id

            await ws.send(append(audio_chunk(3)))
            events = await recv_until(ws, "response.output_audio.delta")
            seen += events
            assert events[0]["type"] == "response.created"
            assert events[0]["response"]["id"] != first_id
            assert events[-1]["delta"] == audio_chunk(3)
            assert events[-1]["response_id"] == events[0]["response"]["id"]

            assert len({e["event_id"] for e in seen}) == len(seen)
            assert (up.stats.appends, up.stats.deltas) == (4, 4)

    run(scenario())


def test_echo_upstream_answers_in_bursts_when_asked_and_never_holds_past_a_response(run) -> None:
    """``burst=4``: nothing comes back until four frames came, then all four at once, in order;
    a response's end sends what its burst held."""

    async def scenario() -> None:
        async with (
            EchoUpstream(frames_per_response=6, stagger=False, burst=4) as up,
            ws_connect(up.url, compression=None) as ws,
        ):
            await recv_event(ws)  # session.created
            for k in range(3):
                await ws.send(append(audio_chunk(k)))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # held: the burst is not full
            await ws.send(append(audio_chunk(3)))
            events = await recv_until(ws, "response.output_audio.delta")
            deltas = [events[-1]] + [(await recv_until(ws, "response.output_audio.delta"))[-1] for _ in range(3)]
            assert [d["delta"] for d in deltas] == [audio_chunk(k) for k in range(4)]
            for k in (4, 5):  # the response's sixth frame ends it: its burst goes with the done
                await ws.send(append(audio_chunk(k)))
            rest = await recv_until(ws, "response.done")
            assert [e["delta"] for e in rest if e["type"] == "response.output_audio.delta"] == [
                audio_chunk(4),
                audio_chunk(5),
            ]
            assert (up.stats.appends, up.stats.deltas) == (6, 6)

    run(scenario())


def test_echo_upstream_confirms_a_truncate_and_shrugs_off_a_malformed_message(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up, ws_connect(up.url, compression=None) as ws:
            await recv_event(ws)  # session.created
            await ws.send("this is not JSON")
            await ws.send(
                orjson.dumps(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": "item_abc",
                        "content_index": 0,
                        "audio_end_ms": 1234,
                    }
                ).decode()
            )
            truncated = await recv_event(ws)
            assert truncated["type"] == "conversation.item.truncated"
            assert (truncated["item_id"], truncated["audio_end_ms"]) == ("item_abc", 1234)
            assert up.stats.bad_messages == 1

    run(scenario())


def test_echo_upstream_ends_a_cancelled_response_as_cancelled(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up, ws_connect(up.url, compression=None) as ws:
            await recv_event(ws)  # session.created
            await ws.send(append(audio_chunk(0)))
            first = (await recv_until(ws, "response.output_audio.delta"))[0]["response"]["id"]
            await ws.send('{"type":"response.cancel"}')
            done = (await recv_until(ws, "response.done"))[-1]
            assert (done["response"]["id"], done["response"]["status"]) == (first, "cancelled")
            await ws.send(append(audio_chunk(1)))
            created = (await recv_until(ws, "response.output_audio.delta"))[0]
            assert created["type"] == "response.created" and created["response"]["id"] != first

    run(scenario())


# -- bench/echo_upstream.py: the GPT-Live side ------------------------------------------------------


def live_append(audio: str) -> str:
    return orjson.dumps({"type": "session.input_audio.append", "audio": audio}).decode()


LIVE_START = orjson.dumps(
    {
        "type": "session.start",
        "event_id": "evt_start_1",
        "session": {
            "model": "gpt-live-1",
            "instructions": "Echo.",
            "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "cedar"}},
            "store": False,
        },
    }
).decode()


def test_echo_upstream_live_starts_a_pcmu_session_and_echoes_every_append_with_timed_text(run) -> None:
    """Every append comes back at once as one audio delta of the same bytes; an agent fragment
    every 10 frames, a caller one every 50, usage every 250, each timed on the session's
    timeline (byte k at k / 8 ms: a 160-byte frame is 20 ms)."""
    frames = LIVE_USAGE_FRAMES

    async def scenario() -> None:
        async with EchoUpstream() as up:
            assert up.live_url == f"ws://127.0.0.1:{up.port}/v1/live/sessions"
            async with ws_connect(up.live_url, compression=None) as ws:
                await ws.send(LIVE_START)
                started = await recv_event(ws)
                assert started["type"] == "session.started"
                assert started["client_event_id"] == "evt_start_1"
                session = started["session"]
                pcmu = {"type": "audio/pcmu", "rate": 8000}
                assert session["audio"] == {"format": pcmu, "output": {"voice": "cedar"}}
                assert (session["model"], session["status"]) == ("gpt-live-1", "active")
                assert session["id"].startswith("sess_")
                assert abs(session["expires_at"] - (time.time() + 3600)) < 60

                seen: list[dict[str, Any]] = []
                for k in range(frames):
                    await ws.send(live_append(audio_chunk(k)))
                    seen.append(await recv_event(ws))
                    assert seen[-1]["type"] == "session.output_audio.delta"
                    assert seen[-1]["delta"] == audio_chunk(k)  # verbatim, in order
                    n = k + 1
                    if n % LIVE_OUTPUT_TEXT_FRAMES == 0:
                        text = await recv_event(ws)
                        assert text["type"] == "session.output_transcript.delta" and text["delta"] == " echo"
                        assert (text["start_ms"], text["end_ms"]) == ((n - LIVE_OUTPUT_TEXT_FRAMES) * 20, n * 20)
                        seen.append(text)
                    if n % LIVE_INPUT_TEXT_FRAMES == 0:
                        text = await recv_event(ws)
                        assert text["type"] == "session.input_transcript.delta" and text["delta"] == " hello"
                        assert (text["start_ms"], text["end_ms"]) == ((n - LIVE_INPUT_TEXT_FRAMES) * 20, n * 20)
                        seen.append(text)
                    if n % LIVE_USAGE_FRAMES == 0:
                        usage = await recv_event(ws)
                        assert usage["type"] == "session.usage.updated"
                        assert usage["usage"] == {"seconds": n * 0.02}
                        seen.append(usage)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.2)  # nothing else: no response or item events

                kinds = [e["type"] for e in seen]
                assert kinds.count("session.output_transcript.delta") == frames // LIVE_OUTPUT_TEXT_FRAMES
                assert kinds.count("session.input_transcript.delta") == frames // LIVE_INPUT_TEXT_FRAMES
                assert kinds.count("session.usage.updated") == 1
                assert "item_id" not in seen[0] and "response_id" not in seen[0]
                assert len({e["event_id"] for e in [started, *seen]}) == len(seen) + 1
                stats = up.stats
                assert (stats.appends, stats.deltas, stats.live_started, stats.bad_messages) == (frames, frames, 1, 0)
                assert stats.sessions_open == 1
            assert await eventually(lambda: up.stats.sessions_open == 0)

    run(scenario())


def test_echo_upstream_live_refuses_audio_before_the_start_and_a_second_start(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream() as up, ws_connect(up.live_url, compression=None) as ws:
            await ws.send(live_append(audio_chunk(0)))  # before session.start: not echoed
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
            assert up.stats.bad_messages == 1
            await ws.send(LIVE_START)
            assert (await recv_event(ws))["type"] == "session.started"
            await ws.send(LIVE_START)  # exactly once per session
            await ws.send(live_append(audio_chunk(1)))
            delta = await recv_event(ws)
            assert (delta["type"], delta["delta"]) == ("session.output_audio.delta", audio_chunk(1))
            assert (up.stats.bad_messages, up.stats.live_started, up.stats.appends) == (2, 1, 1)

            await ws.send('{"type":"session.close"}')
            closed = await recv_event(ws)
            assert (closed["type"], closed["reason"]) == ("session.closed", "close_requested")
            assert closed["usage"] == {"seconds": 0.02}
            await asyncio.wait_for(ws.wait_closed(), RECV_TIMEOUT_S)

    run(scenario())


def test_echo_upstream_live_answers_in_bursts_when_asked(run) -> None:
    """``burst=4``: nothing comes back until four frames came, then all four, in order; a
    transcript fragment goes out with the frame it came with."""

    async def scenario() -> None:
        async with EchoUpstream(burst=4) as up, ws_connect(up.live_url, compression=None) as ws:
            await ws.send(LIVE_START)
            assert (await recv_event(ws))["type"] == "session.started"
            for k in range(LIVE_OUTPUT_TEXT_FRAMES + 1):
                await ws.send(live_append(audio_chunk(k)))
            events = [await recv_event(ws) for _ in range(8)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # chunks 8 to 10 held: the burst is not full
            await ws.send(live_append(audio_chunk(LIVE_OUTPUT_TEXT_FRAMES + 1)))
            events += [await recv_event(ws) for _ in range(5)]
            assert [e["type"] for e in events] == ["session.output_audio.delta"] * 10 + [
                "session.output_transcript.delta",
                "session.output_audio.delta",
                "session.output_audio.delta",
            ]
            deltas = [e["delta"] for e in events if e["type"] == "session.output_audio.delta"]
            assert deltas == [audio_chunk(k) for k in range(LIVE_OUTPUT_TEXT_FRAMES + 2)]

    run(scenario())


# -- bench/echo_upstream.py: the Deepgram side ---------------------------------------------------------


DEEPGRAM_SETTINGS = orjson.dumps(
    {
        "type": "Settings",
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
        },
        "agent": {},
    }
).decode()


async def recv_json(ws) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
    assert isinstance(message, str), f"a binary frame where a text one was due: {message[:20]!r}"
    decoded: dict[str, Any] = orjson.loads(message)
    return decoded


async def recv_audio(ws) -> bytes:
    message = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
    assert isinstance(message, bytes), f"a text frame where audio was due: {message[:80]!r}"
    return message


def test_echo_upstream_deepgram_welcomes_applies_settings_and_echoes_binary_inside_utterances(run) -> None:
    """Each binary frame comes back as a binary frame of the same bytes (tags intact), an
    utterance around every ``frames_per_response`` of them; KeepAlive and the greeting need no answer."""

    def chunk(k: int) -> bytes:
        return tag(7, k) + FILLER

    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up:
            assert up.deepgram_url == f"ws://127.0.0.1:{up.port}/v1/agent/converse"
            async with ws_connect(up.deepgram_url, compression=None) as ws:
                welcome = await recv_json(ws)
                assert welcome["type"] == "Welcome" and welcome["request_id"]
                await ws.send(chunk(0))  # before Settings: the service drops it
                await ws.send(DEEPGRAM_SETTINGS)
                assert await recv_json(ws) == {"type": "SettingsApplied"}
                await ws.send('{"type":"KeepAlive"}')
                await ws.send('{"type":"InjectAgentMessage","message":"Hello."}')
                for utterance in range(2):
                    for k in range(3 * utterance, 3 * utterance + 3):
                        await ws.send(chunk(k))
                        if k % 3 == 0:
                            started = await recv_json(ws)
                            assert started["type"] == "AgentStartedSpeaking"
                        assert await recv_audio(ws) == chunk(k)
                    assert await recv_json(ws) == {"type": "AgentAudioDone"}
                stats = up.stats
                assert (stats.deepgram_started, stats.appends, stats.deltas, stats.bad_messages) == (1, 6, 6, 1)
                assert stats.sessions_open == 1
            assert await eventually(lambda: up.stats.sessions_open == 0)

    run(scenario())


def test_echo_upstream_deepgram_refuses_settings_for_other_than_mulaw_and_a_second_settings(run) -> None:
    linear = DEEPGRAM_SETTINGS.replace(
        '"encoding":"mulaw","sample_rate":8000}', '"encoding":"linear16","sample_rate":8000}', 1
    )

    async def scenario() -> None:
        async with EchoUpstream() as up, ws_connect(up.deepgram_url, compression=None) as ws:
            await recv_json(ws)  # Welcome
            await ws.send(linear)
            await ws.send(DEEPGRAM_SETTINGS)
            assert await recv_json(ws) == {"type": "SettingsApplied"}
            await ws.send(DEEPGRAM_SETTINGS)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
            assert (up.stats.bad_messages, up.stats.deepgram_started) == (2, 1)

    run(scenario())


# -- bench/echo_upstream.py: the Gemini Live side ---------------------------------------------------


GEMINI_SETUP = orjson.dumps({"setup": {"model": "models/gemini-live", "generationConfig": {}}}).decode()


def caller_audio_16k(k: int) -> bytes:
    """20 ms of a caller's μ-law as relay sends it to Gemini Live: decoded, upsampled to 16 kHz."""
    return Resampler(8000, 16000).process(ulaw_to_pcm16(tag(7, k) + FILLER))


def gemini_audio(pcm: bytes) -> str:
    message = {"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": base64.b64encode(pcm).decode()}}}
    return orjson.dumps(message).decode()


def test_the_gemini_echo_speaks_the_callers_own_8k_samples_held_for_three() -> None:
    """relay's upsampler keeps the caller's samples at the odd positions: the echo's 24 kHz is
    exactly those, each held three times (20 ms: 480 samples)."""
    heard = np.frombuffer(ulaw_to_pcm16(tag(7, 3) + FILLER), "<i2")
    spoken = np.frombuffer(spoken_at_24k(caller_audio_16k(3)), "<i2")
    assert spoken.size == 480
    assert (spoken == np.repeat(heard, 3)).all()


def test_echo_upstream_gemini_completes_setup_and_answers_each_chunk_at_24k_with_turns(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream(frames_per_response=3, stagger=False) as up:
            assert up.gemini_url.endswith(
                "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
            )
            async with ws_connect(up.gemini_url, compression=None) as ws:
                await ws.send(gemini_audio(caller_audio_16k(0)))  # before setup: dropped
                await ws.send(GEMINI_SETUP)
                assert await recv_json(ws) == {"setupComplete": {}}
                await ws.send(orjson.dumps({"realtimeInput": {"text": "Say hello."}}).decode())  # the greeting
                for k in range(4):
                    await ws.send(gemini_audio(caller_audio_16k(k)))
                    raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
                    (part,) = orjson.loads(raw)["serverContent"]["modelTurn"]["parts"]
                    assert part["inlineData"]["mimeType"] == "audio/pcm;rate=24000"
                    assert base64.b64decode(part["inlineData"]["data"]) == spoken_at_24k(caller_audio_16k(k))
                    # The shape relay's compiled path reads straight into its ring.
                    assert parse_gemini_audio(raw.encode()) == part["inlineData"]["data"].encode()
                    if k == 2:
                        assert await recv_json(ws) == {"serverContent": {"turnComplete": True}}
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.2)  # the second turn is still open
                stats = up.stats
                assert (stats.gemini_started, stats.appends, stats.deltas, stats.bad_messages) == (1, 4, 4, 1)
            assert await eventually(lambda: up.stats.sessions_open == 0)

    run(scenario())


# -- bench/echo_upstream.py: the direct path ---------------------------------------------------------


def test_echo_upstream_direct_path_answers_media_as_twilio_expects_and_stop_closes(run) -> None:
    sid = "MZ" + "ab" * 16
    payload = base64.b64encode(tag(1, 0) + FILLER).decode()

    async def scenario() -> None:
        async with EchoUpstream() as up:
            async with ws_connect(up.direct_url, compression=None) as ws:
                await ws.send(orjson.dumps({"event": "start", "start": {"streamSid": sid}, "streamSid": sid}).decode())
                await ws.send(
                    orjson.dumps({"event": "media", "media": {"payload": payload}, "streamSid": sid}).decode()
                )
                media = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
                mark = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
                assert orjson.loads(media) == {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                assert orjson.loads(mark)["event"] == "mark" and orjson.loads(mark)["streamSid"] == sid
                assert outbound_violations(media, sid) == outbound_violations(mark, sid) == []
                assert up.stats.direct_open == 1 and up.stats.sessions_opened == 0

                await ws.send(orjson.dumps({"event": "stop", "stop": {}, "streamSid": sid}).decode())
                await asyncio.wait_for(ws.wait_closed(), RECV_TIMEOUT_S)
                assert ws.close_code == 1000
            assert await eventually(lambda: up.stats.direct_open == 0)

    run(scenario())


# -- bench/loadgen.py -------------------------------------------------------------------------------------


@given(call=st.integers(0, 2**24 - 1), seq=st.integers(0, 2**24 - 1))
def test_tag_round_trips_through_read_tag(call: int, seq: int) -> None:
    data = tag(call, seq)
    assert len(data) == TAG_BYTES
    assert read_tag(data + FILLER) == (call, seq)


@pytest.mark.parametrize(
    "payload",
    [b"", tag(1, 2)[:-1], FILLER + tag(1, 2)[:2], b"\x00" * FRAME_BYTES],
    ids=["empty", "short", "untagged-silence", "untagged-zeros"],
)
def test_read_tag_is_none_for_short_or_untagged_payloads(payload: bytes) -> None:
    assert read_tag(payload) is None


def twilio_out(event: dict[str, Any]) -> bytes:
    """One message as a relay sends it to Twilio, as an unmasked server frame."""
    return wire.frame(orjson.dumps(event), masked=False)


def sent_messages(transport: FakeTransport) -> list[dict[str, Any]]:
    return [orjson.loads(f.data) for f in parse_frames(transport.take(), masked=True)]


async def test_a_returning_frame_is_credited_to_its_call_once_and_strays_are_counted() -> None:
    load = LoadRun(Target("fake", "ws://127.0.0.1:9/"), check=True)
    call = LoadCall(load, 5, "ws://127.0.0.1:9/")
    open_over_fake_transport(call)
    call.sent.extend([1, 1])  # frames 0 and 1 have left
    call.back.extend([0, 0])

    def media(payload: bytes, sid: str = call.stream_sid) -> bytes:
        encoded = base64.b64encode(payload).decode()
        return twilio_out({"event": "media", "streamSid": sid, "media": {"payload": encoded}})

    call.data_received(media(tag(5, 0) + FILLER))
    call.data_received(media(tag(5, 0) + FILLER))  # again
    call.data_received(media(tag(6, 1) + FILLER))  # another call's
    call.data_received(media(FILLER + FILLER[:TAG_BYTES]))  # no tag
    call.data_received(media(tag(5, 9) + FILLER))  # never sent
    counters = load.counters
    assert (counters.frames_in, counters.duplicates, counters.misrouted, counters.foreign) == (1, 1, 1, 2)
    assert call.back[0] > 0 and call.back[1] == 0
    assert load.violations == []

    call.data_received(media(tag(5, 1) + FILLER, sid="MZ" + "0" * 32))
    assert counters.frames_in == 2
    assert len(load.violations) == 1 and "streamSid" in load.violations[0]


async def test_on_an_untagged_target_returning_frames_are_counted_not_matched() -> None:
    """A transcoding relay's audio carries no tag: each media frame counts for its call, however
    it reads, the first one lets the call start streaming, and no stray is counted."""
    load = LoadRun(Target("fake", "ws://127.0.0.1:9/", tagged=False))
    call = LoadCall(load, 5, "ws://127.0.0.1:9/")
    open_over_fake_transport(call)
    call.sent.extend([1, 1, 1])
    call.back.extend([0, 0, 0])

    def media(payload: bytes) -> bytes:
        return twilio_out(
            {"event": "media", "streamSid": call.stream_sid, "media": {"payload": base64.b64encode(payload).decode()}}
        )

    call.data_received(media(b"\x7f" * FRAME_BYTES))  # no tag at all
    assert call.first_back.done()
    call.data_received(media(tag(6, 0) + FILLER))  # what would be another call's tag means nothing here
    counters = load.counters
    assert call.received == 2 and list(call.back) == [0, 0, 0]
    assert (counters.frames_in, counters.misrouted, counters.duplicates, counters.foreign) == (0, 0, 0, 0)


async def test_a_mark_is_echoed_once_the_audio_before_it_has_played_or_at_once_on_clear() -> None:
    load = LoadRun(Target("fake", "ws://127.0.0.1:9/"))
    call = LoadCall(load, 3, "ws://127.0.0.1:9/")
    transport = open_over_fake_transport(call)
    sid = call.stream_sid
    audio = base64.b64encode(bytes(FRAME_BYTES)).decode()  # 160 bytes: 20 ms of playback
    play_ns = FRAME_BYTES * 125_000

    before = time.perf_counter_ns()
    call.data_received(
        twilio_out({"event": "media", "streamSid": sid, "media": {"payload": audio}})
        + twilio_out({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}})
    )
    after = time.perf_counter_ns()

    call.tick(before + play_ns - 1)  # the audio is still playing
    (first,) = sent_messages(transport)
    assert first["event"] == "media" and first["streamSid"] == sid
    assert read_tag(base64.b64decode(first["media"]["payload"])) == (3, 0)
    assert len(base64.b64decode(first["media"]["payload"])) == FRAME_BYTES

    call.tick(after + play_ns)  # it has played
    media, mark = sent_messages(transport)
    assert read_tag(base64.b64decode(media["media"]["payload"])) == (3, 1)
    assert (mark["event"], mark["streamSid"], mark["mark"]) == ("mark", sid, {"name": "m1"})

    call.data_received(
        twilio_out({"event": "media", "streamSid": sid, "media": {"payload": audio}})
        + twilio_out({"event": "mark", "streamSid": sid, "mark": {"name": "m2"}})
        + twilio_out({"event": "clear", "streamSid": sid})
    )
    (mark,) = sent_messages(transport)  # no tick needed
    assert mark["mark"] == {"name": "m2"}
    assert (load.counters.clears, load.counters.marks_echoed) == (1, 2)


def test_load_run_against_the_direct_path_brings_every_frame_back(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream() as up:
            load = LoadRun(Target("direct", up.direct_url))
            try:
                await load.add_calls(3)
                assert await eventually(lambda: up.stats.direct_open == 3)
                w = await load.window(0.3)
                assert w.calls == 3 and w.sent > 0
                assert (w.lost, w.misrouted, w.duplicates, w.foreign) == (0, 0, 0, 0)
                assert w.rtt_ns.size == w.sent
                assert (w.rtt_ns > 0).all()

                await load.set_calls(1)
                assert [c.index for c in load.live] == [0]  # the newest calls hang up first
                assert await eventually(lambda: up.stats.direct_open == 1)
                hung_up = [c for c in load.calls if c.stopped]
                frames_before = [len(c.sent) for c in hung_up]
                w = await load.window(0.1)
                assert w.calls == 1 and w.sent > 0 and w.lost == 0
                assert [len(c.sent) for c in hung_up] == frames_before
            finally:
                await load.close()
            assert await eventually(lambda: up.stats.direct_open == 0)

    run(scenario())


def test_a_window_on_an_untagged_target_counts_what_came_back_and_leaves_loss_unmeasured(run) -> None:
    """The direct path's tags survive, but a target said to be untagged is measured by count
    alone: frames received in the window, no round trips, loss not measurable."""

    async def scenario() -> None:
        async with EchoUpstream() as up:
            load = LoadRun(Target("direct", up.direct_url, tagged=False))
            try:
                await load.add_calls(2)
                assert await load.drain()
                w = await load.window(0.3)
            finally:
                await load.close()
            assert w.tagged is False and w.calls == 2 and w.sent > 0
            assert w.rtt_ns.size == 0 and w.lost is None
            assert w.sent - 2 * w.calls <= w.received <= w.sent + 2 * w.calls  # in flight at either edge

    run(scenario())


def test_load_run_with_checks_finds_nothing_wrong_with_the_direct_path(run) -> None:
    async def scenario() -> None:
        async with EchoUpstream() as up:
            load = LoadRun(Target("direct", up.direct_url), check=True)
            try:
                await load.add_calls(2)
                w = await load.window(0.2)
            finally:
                await load.close()
            assert w.sent > 0 and w.lost == 0
            assert w.violations == []

    run(scenario())


# -- bench/harness.py: the floor, the figures, the search ---------------------------------------------


def constant_rtts(ms: float, n: int = 100) -> np.ndarray:
    return np.full(n, int(ms * 1_000_000), dtype=np.int64)


def test_floor_interpolates_between_neighbouring_ladder_points_and_clamps_outside() -> None:
    floor = Floor()
    floor.add(10, constant_rtts(1.0))
    floor.add(30, constant_rtts(3.0))
    floor.add(70, constant_rtts(11.0))
    assert floor.at(20) == pytest.approx({"p50": 2.0, "p99": 2.0, "p999": 2.0})
    assert floor.at(15)["p99"] == pytest.approx(1.5)
    assert floor.at(50)["p50"] == pytest.approx(7.0)  # between 30 and 70, not between 10 and 70
    assert floor.at(30)["p50"] == pytest.approx(3.0)
    assert floor.at(1) == floor.at(10) == pytest.approx({"p50": 1.0, "p99": 1.0, "p999": 1.0})
    assert floor.at(5000) == pytest.approx({"p50": 11.0, "p99": 11.0, "p999": 11.0})
    assert np.allclose(floor.cdf_at(20), 2.0)


def window_of(rtts_ms: list[float], *, calls: int = 4, seconds: float = 2.0, load_cpu: float = 0.5) -> Window:
    rtt = np.array([int(ms * 1_000_000) for ms in rtts_ms], dtype=np.int64)
    return Window(
        calls=calls,
        seconds=seconds,
        rtt_ns=rtt,
        sent=rtt.size,
        lost=0,
        misrouted=0,
        duplicates=0,
        foreign=0,
        load_cpu=load_cpu,
        tick_lag_p99_ms=0.1,
    )


def test_figures_take_added_latency_quantile_by_quantile_and_never_below_zero() -> None:
    w = window_of([1.5] * 95 + [21.0, 21.5, 30.0, 40.0, 50.0])
    floor = {"p50": 1.0, "p99": 2.0, "p999": 100.0}
    fig = figures(w, floor, cpu_s=None, rss_kib=None, rss_idle_kib=None)
    assert fig["added_ms"] == pytest.approx({k: max(0.0, fig["rtt_ms"][k] - floor[k]) for k in floor})
    assert fig["added_ms"]["p50"] == pytest.approx(0.5)
    assert fig["added_ms"]["p999"] == 0.0  # the relay beat the floor there: not negative
    # Late: more than one frame period over the floor's median; 21.0 ms is exactly 20 over, not more.
    assert LATE_MS == 20.0 and fig["late"] == 4
    assert fig["frames_back"] == fig["frames_sent"] == 100
    assert "cpu_ms_per_call_s" not in fig and "rss_mib" not in fig


def test_figures_without_a_floor_carry_no_added_latency() -> None:
    fig = figures(window_of([1.0, 2.0]), None, cpu_s=None, rss_kib=None, rss_idle_kib=None)
    assert "added_ms" not in fig and "late" not in fig
    assert fig["rtt_ms"]["p50"] == pytest.approx(1.5)


def test_figures_count_cpu_per_call_second_and_memory_per_call() -> None:
    fig = figures(
        window_of([1.0], calls=4, seconds=2.0),
        {"p50": 1.0, "p99": 1.0, "p999": 1.0},
        cpu_s=0.4,
        rss_kib=10 * 1024,
        rss_idle_kib=8 * 1024,
    )
    assert fig["cpu_ms_per_call_s"] == pytest.approx(0.4 * 1000 / (4 * 2.0))
    assert fig["calls_per_core"] == pytest.approx(1000 / fig["cpu_ms_per_call_s"])
    assert fig["cpu_util"] == pytest.approx(0.2)
    assert fig["rss_mib"] == 10.0 and fig["rss_kib_per_call"] == 512.0


def test_figures_of_an_untagged_window_count_frames_back_and_mark_latency_and_loss_not_measurable() -> None:
    w = window_of([], calls=4, seconds=2.0)
    w.sent, w.received, w.tagged, w.lost = 400, 396, False, None
    fig = figures(w, {"p50": 1.0, "p99": 1.0, "p999": 1.0}, cpu_s=0.4, rss_kib=10 * 1024, rss_idle_kib=8 * 1024)
    assert (fig["frames_sent"], fig["frames_back"]) == (400, 396)
    assert fig["untagged"] == UNTAGGED == "n/a: transcoded audio carries no tag"
    assert fig["rtt_ms"] is fig["added_ms"] is fig["late"] is None
    assert fig["lost"] is fig["misrouted"] is fig["duplicates"] is fig["foreign"] is None
    assert fig["cpu_ms_per_call_s"] == pytest.approx(50.0) and fig["rss_kib_per_call"] == 512.0
    assert passes(fig, 5.0) is False  # nothing to pass on


def test_figures_flag_a_window_whose_load_side_was_full() -> None:
    busy = figures(window_of([1.0], load_cpu=0.95), None, cpu_s=None, rss_kib=None, rss_idle_kib=None)
    calm = figures(window_of([1.0], load_cpu=0.5), None, cpu_s=None, rss_kib=None, rss_idle_kib=None)
    assert busy["load_bound"] and not calm["load_bound"]


@pytest.mark.parametrize(
    ("p99", "lost", "misrouted", "ok"),
    [(4.9, 0, 0, True), (5.0, 0, 0, False), (1.0, 1, 0, False), (1.0, 0, 1, False)],
)
def test_passes_needs_p99_under_the_bound_and_nothing_lost_or_misrouted(
    p99: float, lost: int, misrouted: int, ok: bool
) -> None:
    assert passes({"added_ms": {"p99": p99}, "lost": lost, "misrouted": misrouted}, 5.0) is ok


CALLS, MAX_CALLS = 100, 800
LADDER = {CALLS * 2**k for k in range(4)} | {CALLS // 2**k for k in range(1, 4)}  # doubling / halving


async def search(workdir: Path, limit: int, *, refine: int = 3, load_bound_from: int | None = None):
    """``Harness._search`` over a fake relay that passes up to ``limit`` calls; returns (result, counts)."""
    harness = Harness(Options(calls=CALLS, max_calls=MAX_CALLS, refine=refine), workdir=workdir)
    measured: list[int] = []

    async def measure(n: int, seconds: float) -> dict[str, Any]:
        measured.append(n)
        return {"passes": n <= limit, "load_bound": load_bound_from is not None and n >= load_bound_from}

    main = await measure(CALLS, 1.0)
    return await harness._search(measure, main), measured


def assert_brackets(result: dict[str, Any], measured: list[int], limit: int) -> None:
    lo, hi = result["max_calls"], result["first_failing"]
    assert lo == 0 or (lo in measured and lo <= limit)  # a count seen to pass
    if hi is None:
        assert lo == MAX_CALLS  # nothing failed up to the top of the ladder
    else:
        assert hi in measured and hi > limit  # a count seen to fail
        assert lo < hi


@pytest.mark.parametrize("limit", [130, 40, 5000])
async def test_search_brackets_the_limit_and_refines_it(tmp_path: Path, limit: int) -> None:
    result, measured = await search(tmp_path, limit, refine=3)
    assert_brackets(result, measured, limit)
    assert result["load_bound"] is False
    lo, hi = result["max_calls"], result["first_failing"]
    refinements = [n for n in measured if n not in LADDER]
    assert len(refinements) <= 3
    if hi is not None:
        assert hi - lo <= max(10, lo // 10) or len(refinements) == 3


@given(limit=st.integers(0, 3 * MAX_CALLS), refine=st.sampled_from([0, 1, 3, 8]))
async def test_search_brackets_any_limit(tmp_path_factory: pytest.TempPathFactory, limit: int, refine: int) -> None:
    result, measured = await search(tmp_path_factory.getbasetemp(), limit, refine=refine)
    assert_brackets(result, measured, limit)
    assert all(Options().min_calls <= n <= MAX_CALLS for n in measured)


async def test_search_stops_climbing_when_the_load_side_is_full(tmp_path: Path) -> None:
    result, measured = await search(tmp_path, 5000, load_bound_from=400)
    assert result["load_bound"] is True
    assert result["max_calls"] == 200 and result["first_failing"] is None
    assert max(measured) == 400


# -- bench/report.py ----------------------------------------------------------------------------------


def main_figures(added_p99: float, cpu: float) -> dict[str, Any]:
    return {
        "added_ms": {"p50": added_p99 / 2, "p99": added_p99, "p999": added_p99 * 2},
        "cpu_ms_per_call_s": cpu,
        "calls_per_core": 1000 / cpu,
        "rss_kib_per_call": 60.0,
        "lost": 0,
        "misrouted": 0,
        "late": 0,
        "load_bound": False,
        "violations": [],
    }


REPORT: dict[str, Any] = {
    "started_at": "2026-01-02 03:04:05",
    "options": {"calls": 100, "main_s": 10.0, "bound_ms": 5.0},
    "machine": {"cores": 4, "cpu": "Test CPU", "memory_gib": 16.0},
    "direct": {"main": {"rtt_ms": {"p50": 0.4, "p99": 0.9}}},
    "relays": {
        "relay": {
            "title": "relay",
            "main": main_figures(1.0, 10.0),
            "search": {"max_calls": 1600, "first_failing": None, "load_bound": False},
        },
        "sample": {
            "title": "sample-style (FastAPI/uvicorn)",
            "main": main_figures(4.0, 20.0),
            "search": {"max_calls": 300, "first_failing": 400, "load_bound": False},
        },
        "node": {"title": "Node.js ws", "skipped": "node not found"},
    },
}


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The table's body rows, each as {header: cell}; every row must have every column."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header, _, *body = ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines)
    assert all(len(row) == len(header) for row in body)
    return [dict(zip(header, row, strict=True)) for row in body]


def test_markdown_has_a_row_per_relay_with_ratios_to_relay() -> None:
    table = report.markdown(REPORT)
    rows = table_rows(table)
    assert [r["relay"] for r in rows] == ["relay", "sample-style (FastAPI/uvicorn)", "Node.js ws"]
    ours, sample, node = rows
    assert ours["CPU × relay"] == ours["p99 × relay"] == "1.0×"
    assert sample["CPU × relay"] == "2.0×" and sample["p99 × relay"] == "4.0×"
    assert sample["max calls, p99 added < 5 ms"] == "300"
    assert ours["max calls, p99 added < 5 ms"].startswith("≥ 1,600")
    assert node["added p50 ms"] == "node not found"
    assert "100 concurrent calls" in table and "Test CPU" in table


def untagged_figures(cpu: float) -> dict[str, Any]:
    return {
        **main_figures(1.0, cpu),
        "added_ms": None,
        "lost": None,
        "misrouted": None,
        "late": None,
        "untagged": UNTAGGED,
        "frames_sent": 20_000,
        "frames_back": 19_900,
        "calls": 100,
    }


def with_transcoded(relays: dict[str, Any]) -> dict[str, Any]:
    relays = {
        **relays,
        "relay-gemini": {"title": "relay, Gemini Live backend (transcoded)", "main": untagged_figures(10.3)},
    }
    return {**REPORT, "relays": relays, "transcoding": transcoding_cost(relays)}


def test_a_transcoded_row_shows_cpu_and_memory_and_its_latency_and_loss_as_not_measurable() -> None:
    table = report.markdown(
        with_transcoded({"relay": {**REPORT["relays"]["relay"], "main": {**main_figures(1.0, 10.0), "calls": 100}}})
    )
    gemini = table_rows(table)[-1]
    assert gemini["relay"] == "relay, Gemini Live backend (transcoded)"
    assert gemini["added p50 ms"] == "n/a: transcoded audio carries no tag"
    for column in ("added p99 ms", "p99 × relay", "max calls, p99 added < 5 ms", "lost", "misrouted", "late"):
        assert gemini[column] == "n/a", column
    assert (gemini["CPU ms / call-s"], gemini["CPU × relay"], gemini["RSS KiB / call"]) == ("10.30", "1.0×", "60.0")
    assert "19,900 of the 20,000 frames sent in the window came back, counted per call" in table


def test_the_report_says_what_transcoding_costs_over_passthrough_from_the_same_run() -> None:
    relay = {"title": "relay", "main": {**main_figures(1.0, 10.0), "calls": 100}}
    deepgram = {"title": "relay, Deepgram backend", "main": {**main_figures(1.0, 9.0), "calls": 100}}
    table = report.markdown(with_transcoded({"relay": relay, "relay-deepgram": deepgram}))
    assert (
        "transcoding (Gemini) costs 0.30 ms CPU per call-second more than passthrough (target < 0.5): met "
        "(relay, Gemini Live backend (transcoded) 10.30 against relay 10.00, at 100 calls in this run)." in table
    )
    # Without relay, relay on Deepgram is the passthrough reference.
    over = with_transcoded({"relay-deepgram": deepgram})
    assert over["transcoding"]["passthrough"] == "relay-deepgram"
    assert "costs 1.30 ms CPU per call-second more than passthrough (target < 0.5): 2.6× over" in report.markdown(over)
    # Without a passthrough row, or without the transcoded one, there is nothing to set side by side.
    assert transcoding_cost({"relay-gemini": {"main": untagged_figures(10.3)}}) is None
    assert transcoding_cost({"relay": relay}) is None
    assert "transcoding (Gemini)" not in report.markdown(REPORT)


def test_update_readme_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    head = "# Title\n\nIntro.\n\n" + report.README_START
    tail = report.README_END + "\n\nMore text.\n"
    readme.write_text(head + "\nold table\n" + tail)
    report.update_readme(readme, "| new |\n")
    assert readme.read_text() == head + "\n| new |\n" + tail
    report.update_readme(readme, "| newer |\n")  # and again: still only the section changes
    assert readme.read_text() == head + "\n| newer |\n" + tail


def test_the_report_sets_relay_against_its_targets_and_says_by_how_much() -> None:
    main = {**main_figures(0.3, 1.9), "kernel_share": 0.45, "rss_kib_per_call": 30.0}
    at_500 = {**main_figures(60.0, 1.74), "calls": 500}
    lines = report.targets({"title": "relay", "main": main, "steps": [{**main, "calls": 100}, at_500]})
    text = "\n".join(lines)
    assert "CPU 1.90 ms per call-second (target ≤ 1): 1.9× over. 45% of it is kernel time (0.85 ms" in text
    assert "leaves 0.15 ms for all of user space" in text
    assert "p99 added latency at 500 calls 60.00 ms (target < 2 ms at 500): not met, 30.0× over" in text
    assert "core is 87% busy" in text
    assert "memory 30.0 KiB per call (target ≤ 64): met." in text
    met = report.targets({"title": "relay", "main": {**main_figures(0.3, 0.8), "kernel_share": None}, "steps": []})
    assert "(target ≤ 1): met." in "\n".join(met) and "not measured in this run" in "\n".join(met)
    assert "relay against its targets:" in report.markdown(REPORT)
