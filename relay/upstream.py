"""The backend leg: a client WebSocket to the speech backend on the compiled framer.

websockets' sans-I/O ``ClientProtocol`` builds the upgrade request and checks the response
(status, ``Sec-WebSocket-Accept``); from then on ``relay.ws.Connection`` does the framing,
masking every frame we send, as RFC 6455 requires of a client. No extension is offered.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from relay.errors import BackendError
from relay.ws import Connection

MAX_RESPONSE_HEAD = 16 * 1024


class UpstreamConnection(Connection):
    """An open client WebSocket to the backend (what ``CallSession`` calls its upstream)."""

    mask_frames = True
    __slots__ = ()


class _ClientHandshake(asyncio.Protocol):
    """Runs the opening handshake, then hands every byte to the ``UpstreamConnection``."""

    def __init__(self, url: str, headers: dict[str, str], max_size: int, slow_peer_s: float = 0.0) -> None:
        self._url = url
        self._headers = headers
        self._max_size = max_size
        self._slow_peer_s = slow_peer_s
        self._protocol = ClientProtocol(parse_uri(url))
        self._head = b""
        self.transport: asyncio.Transport | None = None
        self.connection: UpstreamConnection | None = None
        self.opened: asyncio.Future[UpstreamConnection] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport
        request = self._protocol.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        self._protocol.send_request(request)
        transport.write(b"".join(self._protocol.data_to_send()))  # type: ignore[attr-defined]  # a TCP transport writes

    def data_received(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.data_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._refuse("the backend's handshake response is too large")
            return
        head, rest = self._head[: end + 4], self._head[end + 4 :]
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status_line.split(" ")[1:2] != ["101"]:
            self._refuse(f"the backend refused the WebSocket: {status_line}")
            return
        self._protocol.receive_data(head)
        events = self._protocol.events_received()
        if self._protocol.handshake_exc is not None or not any(isinstance(e, Response) for e in events):
            self._refuse(f"the backend's handshake is invalid: {self._protocol.handshake_exc}")
            return
        assert self.transport is not None
        self.connection = UpstreamConnection(self.transport, max_size=self._max_size, slow_peer_s=self._slow_peer_s)
        # From here on the transport feeds the connection's compiled read loop directly.
        self.transport.set_protocol(self.connection)  # type: ignore[arg-type]  # WsCore is a protocol, not a subclass
        if not self.opened.done():
            self.opened.set_result(self.connection)
        if rest:
            self.connection.data_received(rest)

    def eof_received(self) -> bool | None:
        if self.connection is not None:
            self.connection.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.connection.connection_lost()
        elif not self.opened.done():
            self.opened.set_exception(BackendError(f"the backend closed the connection during the handshake: {exc}"))

    def _refuse(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(BackendError(reason))
        assert self.transport is not None
        self.transport.close()


async def connect(
    url: str,
    headers: dict[str, str],
    *,
    max_size: int = 16 * 1024 * 1024,
    timeout: float = 10.0,
    ssl_context: Any = None,
    slow_peer_s: float = 0.0,
) -> UpstreamConnection:
    """Open ``url`` (ws:// or wss://) with ``headers`` and return the open connection.

    Raises:
        BackendError: refused or invalid handshake, or the connection dropped during it.
        OSError, TimeoutError: the backend could not be reached in ``timeout`` seconds.
    """
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    if uri.secure and ssl_context is None:
        ssl_context = ssl.create_default_context()

    async def open_() -> UpstreamConnection:
        transport, handshake = await loop.create_connection(
            lambda: _ClientHandshake(url, headers, max_size, slow_peer_s),
            uri.host,
            uri.port,
            ssl=ssl_context if uri.secure else None,
            server_hostname=uri.host if uri.secure else None,
        )
        try:
            return await handshake.opened
        except BaseException:
            transport.abort()
            raise

    return await asyncio.wait_for(open_(), timeout)
