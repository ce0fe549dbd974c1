"""Lean WebSocket endpoints for the load side of the harness (generator and fake upstream).

The load side shares one core while it drives hundreds of calls, so it cannot afford a
general-purpose WebSocket stack per message: whatever it spends is headroom taken from the
measurement. This is the smallest RFC 6455 endpoint for that job, on plain ``asyncio.Protocol``: a hand-written
handshake (both sides), with frames read and built by relay's compiled framer (``FrameReader``,
``build_frame``), which the tests hold to websockets' own.

It is not used by relay itself and accepts only what the harness needs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from relay.errors import FrameError
from relay.fastpath import FrameReader, build_frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 1 << 20


class WireError(Exception):
    """The peer broke the protocol or the handshake failed."""


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(payload: bytes, opcode: int = OP_TEXT, *, masked: bool) -> bytes:
    """One final frame. Client frames are masked with a fresh random key (RFC 6455 §5.3)."""
    return build_frame(opcode, payload, random.getrandbits(32).to_bytes(4, "big") if masked else None)


class Endpoint(asyncio.Protocol):
    """One WebSocket connection after its handshake: frames in, messages out to ``on_message``.

    Subclasses set ``masked`` (True for a client) and override ``on_open``, ``on_message`` (and
    ``on_binary`` to tell binary messages apart) and ``on_close``. ``send`` writes one text
    message; ``send_raw`` writes prebuilt frames (a binary one: ``frame(payload, OP_BINARY)``).
    """

    masked = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()  # set once the handshake is through
        self.closed = loop.create_future()
        self._buf = bytearray()
        self._reader: FrameReader | None = None  # from the end of the handshake on
        self._close_sent = False

    # -- to override --------------------------------------------------------------------------
    def on_open(self) -> None: ...

    def on_message(self, data: bytes) -> None: ...

    def on_binary(self, data: bytes) -> None:
        """A binary message: by default handled as a text one (only Deepgram's echo tells them apart)."""
        self.on_message(data)

    def on_close(self) -> None: ...

    def handshake(self, data: bytearray) -> int:
        """Consume the opening handshake from ``data``; return the bytes used (0: need more)."""
        raise NotImplementedError

    # -- sending ------------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        if self.open and self.transport is not None:
            self.transport.write(frame(message, masked=self.masked))

    def send_raw(self, frames: bytes) -> None:
        if self.open and self.transport is not None:
            self.transport.write(frames)

    def close(self, code: int = 1000) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.open and not self._close_sent:
            self._close_sent = True
            self.transport.write(frame(struct.pack("!H", code), OP_CLOSE, masked=self.masked))
        if not self.masked:  # the server closes TCP first (RFC 6455 §7.1.1)
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        was_open, self.open = self.open, False
        if not self.ready.done():
            self.ready.set_exception(WireError("connection closed during the handshake"))
            self.ready.exception()  # retrieved here: a failed handshake may have no waiter
        if not self.closed.done():
            self.closed.set_result(None)
        if was_open:
            self.on_close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.open:
            try:
                used = self.handshake(buf)
            except WireError:
                assert self.transport is not None
                self.transport.close()
                return
            if not used:
                return
            del buf[:used]
            self.open = True
            self.ready.set_result(None)
            self.on_open()
            self._reader = FrameReader(not self.masked, MAX_MESSAGE)
            data, buf[:] = bytes(buf), b""
        reader = self._reader
        assert reader is not None
        reader.feed(data)
        while True:
            try:
                item = reader.read()
            except FrameError as exc:
                self.close(exc.code)
                return
            if item is None:
                return
            opcode, payload = item
            if opcode == OP_TEXT:
                self.on_message(payload)
            elif opcode == OP_BINARY:
                self.on_binary(payload)
            elif opcode == OP_PING:
                self.send_raw(frame(payload, OP_PONG, masked=self.masked))
            elif opcode == OP_CLOSE:
                assert self.transport is not None
                if not self._close_sent:
                    self._close_sent = True
                    self.transport.write(frame(payload[:2], OP_CLOSE, masked=self.masked))
                self.transport.close()
                return


class ClientEndpoint(Endpoint):
    """The client side: sends the HTTP upgrade on connect, masks what it sends."""

    masked = True

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        parts = urlsplit(url)
        self._host = parts.netloc
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = headers or {}
        self._key = base64.b64encode(os.urandom(16))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        lines = [
            f"GET {self._target} HTTP/1.1",
            f"Host: {self._host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self._headers.items()),
        ]
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def handshake(self, data: bytearray) -> int:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 16384:
                raise WireError("handshake response too large")
            return 0
        head = bytes(data[:end]).decode("latin-1").split("\r\n")
        if len(head[0].split(" ")) < 2 or head[0].split(" ")[1] != "101":
            raise WireError(f"handshake refused: {head[0]!r}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if fields.get("sec-websocket-accept", "").encode() != accept_key(self._key):
            raise WireError("bad Sec-WebSocket-Accept")
        return end + 4


class ServerEndpoint(Endpoint):
    """The server side: answers the upgrade, records the request path and headers."""

    masked = False

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.request_headers: dict[str, str] = {}

    def handshake(self, data: bytearray) -> int:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 16384:
                raise WireError("handshake request too large")
            return 0
        head = bytes(data[:end]).decode("latin-1").split("\r\n")
        request = head[0].split(" ")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        key = fields.get("sec-websocket-key", "")
        if len(request) != 3 or request[0] != "GET" or not key or "websocket" not in fields.get("upgrade", "").lower():
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            raise WireError("not a WebSocket upgrade")
        self.path, self.request_headers = request[1], fields
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.encode()) + b"\r\n\r\n"
        )
        return end + 4


async def connect(factory: Callable[[], ClientEndpoint], url: str, timeout: float = 10.0) -> ClientEndpoint:
    """Open a TCP connection, run the handshake, return the open endpoint."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_connection(factory, parts.hostname, parts.port or 80)

    try:
        await asyncio.wait_for(asyncio.shield(endpoint.ready), timeout)
    except BaseException:
        if endpoint.transport is not None:
            endpoint.transport.abort()
        raise
    return endpoint
