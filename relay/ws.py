"""WebSocket connections on the media path: the Twilio leg (server side) and its shared shell.

The opening handshake is websockets' sans-I/O layer (request validation, the accept key);
from then on every frame is read and written by the compiled fast path (``FrameReader`` and
``build_frame``), because per-message framing in Python was the relay's largest cost per call.
This module is the thin asyncio shell around it: bytes in from the transport, messages out to
the one reader, writes straight to the transport, the closing handshake of RFC 6455 §7.

``send_many`` puts several messages (a ``media`` and its ``mark``) into one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from relay.errors import ProtocolError
from relay.fastpath import OP_CLOSE, WsCore, build_frame

log = logging.getLogger("relay.ws")

CLOSE_TIMEOUT = 2.0
# Per-connection buffering toward a peer, bounded: the kernel's send buffer (a media stream
# needs a few kB in flight; autotuning would let each socket grow to megabytes) and relay's own
# buffer above which the transport pauses writing. A peer that stays paused past its
# ``slow_peer_s`` is dropped, so one stuck socket costs one call, bounded memory, nothing more.
SEND_BUFFER = 32 * 1024
WRITE_HIGH_WATER = 16 * 1024
OPEN, CLOSING, CLOSED = "open", "closing", "closed"  # WsCore compares state with "open"


def handshake(request: Request) -> Response:
    """Validate an upgrade request and build the 101 response (or the rejection).

    websockets checks the headers and computes ``Sec-WebSocket-Accept``; no extension is
    offered, so media frames are never deflated (it costs CPU and saves nothing on base64).
    """
    return ServerProtocol().accept(request)


def close_payload(code: int, reason: str) -> bytes:
    # A close reason must fit in a control frame: 125 bytes less the 2-byte code.
    return code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()


def parse_close(payload: bytes) -> Close:
    if len(payload) < 2:
        return Close(1005, "")
    return Close(int.from_bytes(payload[:2], "big"), payload[2:].decode(errors="replace"))


class Connection(WsCore):
    """One open WebSocket on an asyncio transport: as it is, the server side (the Twilio leg);
    ``relay.upstream.UpstreamConnection`` is the client side.

    ``mask_frames`` is True on the client side (every frame we send is masked, every frame we
    read must not be); the server side is the reverse. Reading, the rate limit and every write
    are the compiled ``WsCore``; this is the asyncio half: ``recv``, and the closing handshake.
    """

    mask_frames = False
    __slots__ = (
        "_close_rcvd",
        "_close_sent",
        "_closed",
        "_loop",
        "_on_violation",
        "_rcvd_then_sent",
        "_slow_peer_s",
        "_slow_timer",
        "_waiter",
        "aborted",
        "on_lost",
        "too_slow",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_size: int,
        max_rate: int = 0,
        on_violation: Callable[[str], None] | None = None,
        slow_peer_s: float = 0.0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        super().__init__(transport, self.mask_frames, max_size, max_rate, self._loop.time)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._slow_peer_s = slow_peer_s  # 0: never dropped for it
        self._slow_timer: asyncio.TimerHandle | None = None
        self.too_slow = False  # dropped: it stopped reading what relay wrote
        self._on_violation = on_violation
        self._waiter: asyncio.Future[None] | None = None
        self._closed = self._loop.create_future()
        self.aborted = False  # the closing handshake did not finish in time: TCP was cut
        self._close_sent: Close | None = None
        self._close_rcvd: Close | None = None
        self._rcvd_then_sent: bool | None = None  # which close frame came first, once both did
        self.on_lost: Callable[[], None] | None = None  # the transport is gone (after _finish)

    @property
    def open(self) -> bool:
        return self.state == OPEN

    @property
    def close_code(self) -> int | None:
        if self._close_rcvd is not None:
            return self._close_rcvd.code
        return None if self.state != CLOSED else 1006

    # ---- bytes from the transport (data_received: WsCore) ----

    def _violation(self, kind: str, reason: str, code: int) -> None:
        """A peer broke a rule: this connection alone is closed, with the code and reason."""
        log.warning("closing WebSocket (%d): %s", code, reason)
        if self._on_violation is not None:
            self._on_violation(kind)
        self.fail(reason, code)

    # asyncio.Protocol: once open, the transport hands its bytes here itself (``set_protocol``),
    # so no Python frame stands between the socket and the compiled read loop.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # made before the handshake; the transport is already ours

    def eof_received(self) -> bool | None:
        self._finish()
        # The server closes TCP after the closing handshake; a client lets the transport close.
        return None if self.mask_frames else True

    def connection_lost(self, exc: Exception | None = None) -> None:
        self._finish()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        # A media stream is written in real time, so nothing is held back; a peer that does not
        # catch up within slow_peer_s has stopped reading, and is dropped.
        if self._slow_peer_s and self._slow_timer is None:
            self._slow_timer = self._loop.call_later(self._slow_peer_s, self._drop_slow_peer)

    def resume_writing(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def _drop_slow_peer(self) -> None:
        self._slow_timer = None
        self.too_slow = True
        log.warning(
            "dropping a WebSocket whose peer stopped reading: %d byte(s) unsent after %.1f s",
            self.transport.get_write_buffer_size(),
            self._slow_peer_s,
        )
        if self._on_violation is not None:
            self._on_violation("slow_peer")
        self.transport.abort()  # what waits for it is freed now; the session sees the close

    def _on_close_frame(self, payload: bytes) -> None:
        self._close_rcvd = parse_close(payload)
        self._rcvd_then_sent = self.state == OPEN  # the peer closed first (we echo below)
        if self.state == OPEN:
            code = self._close_rcvd.code
            # Echo the peer's code (RFC 6455 §5.5.1); 1005 means "none" and is never sent.
            self._write(build_frame(OP_CLOSE, b"" if code == 1005 else payload[:2], self._mask()))
            self._close_sent = Close(code, "")
        self.state = CLOSING
        if not self.mask_frames:
            self.transport.close()  # the server closes TCP first (RFC 6455 §7.1.1)

    def _finish(self) -> None:
        self.state = CLOSED
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ---- writing ----

    def _start_close(self, code: int, reason: str) -> None:
        if self.state != OPEN:
            return
        self.state = CLOSING
        self._close_sent = Close(code, reason)
        self._write(build_frame(OP_CLOSE, close_payload(code, reason), self._mask()))
        self._wake()

    # ---- the session's side ----

    async def recv(self) -> bytes:
        """Return the next text message as UTF-8 bytes.

        Raises:
            ConnectionClosed: the connection closed (after every message received was read).
        """
        while not self.messages:
            if self.state != OPEN:
                both = self._close_rcvd is not None and self._close_sent is not None
                raise ConnectionClosed(self._close_rcvd, self._close_sent, self._rcvd_then_sent if both else None)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.messages.popleft()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait (bounded) for the connection to end."""
        self._start_close(code, reason)
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
        except TimeoutError:
            self.aborted = True
            self.transport.abort()

    def fail(self, error: ProtocolError | str, code: int = 1008) -> None:
        """Close this connection for a peer error: a close frame with the reason, then TCP."""
        self._start_close(code, str(error))
        self.transport.close()  # after the close frame is flushed; no more reading


__all__ = ["Connection", "ConnectionClosed", "handshake"]
