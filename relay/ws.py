"""The Twilio leg's WebSocket: a thin asyncio shell over websockets' sans-I/O ``ServerProtocol``.

The HTTP server (``server.py``) owns the socket until a request asks to upgrade; it then
hands the transport to a ``WebSocket``. Framing, masking, ping/pong and the closing handshake
are websockets'; this class only moves bytes and wakes the one reader. Writes go straight to
the transport, and ``send_many`` puts several messages (a ``media`` and its ``mark``) into
one write.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.errors import ProtocolError

log = logging.getLogger("relay.ws")

CLOSE_TIMEOUT = 2.0


def handshake(request: Request) -> Response:
    """Validate an upgrade request and build the 101 response (or the rejection).

    websockets checks the headers and computes ``Sec-WebSocket-Accept``; no extension is
    offered, so media frames are never deflated (it costs CPU and saves nothing on base64).
    """
    return ServerProtocol().accept(request)


class WebSocket:
    """One accepted server-side WebSocket on an asyncio transport."""

    def __init__(self, transport: asyncio.Transport, *, max_size: int) -> None:
        self._transport = transport
        self._protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._close_scheduled = False

    @property
    def open(self) -> bool:
        return self._protocol.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        return self._protocol.close_code

    # ---- bytes from the transport (called by the HTTP protocol object) ----

    def data_received(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        self._handle_events()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._handle_events()

    def connection_lost(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake()

    def _handle_events(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self._flush()
        if not self._close_scheduled and (self._protocol.close_expected() or self._protocol.state is State.CLOSED):
            # The server closes TCP once both close frames are exchanged (RFC 6455 §7.1.1);
            # the delay only bounds a peer that never finishes the handshake.
            self._close_scheduled = True
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._transport.close)
        if self._protocol.state is not State.OPEN:
            self._wake()

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(frame.opcode, frame.data)
            else:
                self._fragment_opcode, self._fragments = frame.opcode, [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin and self._fragment_opcode is not None:
                self._deliver(self._fragment_opcode, b"".join(self._fragments))
                self._fragments, self._fragment_opcode = [], None

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        if opcode is Opcode.BINARY:
            # Twilio sends JSON text only; a binary message is not ours to guess at.
            self._protocol.fail(1003, "binary messages are not accepted")
            return
        self._messages.append(bytes(data))
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._transport.write(data)
            elif self._transport.can_write_eof():
                self._transport.write_eof()

    # ---- the session's side ----

    async def recv(self) -> bytes:
        """Return the next text message as UTF-8 bytes.

        Raises:
            ConnectionClosed: the connection closed (after every message received was read).
        """
        while not self._messages:
            if self._protocol.state is not State.OPEN or self._closed.done():
                raise self._protocol.close_exc
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def send(self, message: bytes) -> None:
        """Send one text message (already-encoded JSON)."""
        self.send_many((message,))

    def send_many(self, messages: tuple[bytes, ...] | list[bytes]) -> None:
        """Send text messages in one transport write; silently a no-op once closing."""
        if self._protocol.state is not State.OPEN:
            return
        for message in messages:
            self._protocol.send_text(message)
        writes = self._protocol.data_to_send()
        self._transport.write(b"".join(writes) if len(writes) > 1 else writes[0])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait (bounded) for the connection to end."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
        except TimeoutError:
            self._transport.abort()

    def fail(self, error: ProtocolError | str, code: int = 1008) -> None:
        """Close this connection for a peer error, with the reason in the close frame."""
        # A close reason must fit in a control frame: 125 bytes less the 2-byte code.
        reason = str(error).encode()[:120].decode(errors="ignore")
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            self._flush()


__all__ = ["ConnectionClosed", "WebSocket", "handshake"]
