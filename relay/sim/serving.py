"""The asyncio/WebSocket shell every simulated backend shares: one sans-I/O session core per
connection, driven by the loop's clock.

A simulator is two layers (``relay.sim.agent``, ``relay.sim.live``): a sans-I/O session core that
takes client messages and the time and queues server events, and this shell, which serves it on
loopback. ``SessionServer`` accepts the connections its owner's ``process_request`` lets through,
makes a log and a core for each (``open_session``), and runs the core: client messages in, its
events out (a dict as a JSON text message, ``bytes`` as a binary one, for backends that stream
audio in binary frames), woken at the core's next deadline, closed when the core asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

__all__ = ["SessionCore", "SessionLogLike", "SessionServer", "SimulatorShell", "json_error_response"]

log = logging.getLogger(__name__)

_EOF = object()


class SessionCore(Protocol):
    """A sans-I/O simulated session, as the shell drives it."""

    close_request: tuple[int, str] | None

    def connect(self, now: float) -> None: ...
    def receive(self, data: str | bytes, now: float) -> None: ...
    def advance(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def take_events(self) -> Sequence[dict[str, Any] | bytes]: ...
    def connection_lost(self) -> None: ...


class SessionLogLike(Protocol):
    """What the shell records on a session's log."""

    index: int
    sent: list[tuple[float, str]]
    closed_at: float | None
    close_code: int | None
    close_reason: str
    closed: asyncio.Event


# (the connection, loop time) -> the new session's log and core
OpenSession = Callable[[ServerConnection, float], tuple[Any, SessionCore]]
# Something done to a running session's core from outside (a test's fault): (core, now).
Action = Callable[[Any, float], None]
# (the connection, the subprotocols the client offers) -> the one to answer with, or None
SelectSubprotocol = Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol | None]


def json_error_response(connection: ServerConnection, status: int, etype: str, message: str) -> Response:
    """An HTTP refusal with OpenAI's error body."""
    body = orjson.dumps({"error": {"type": etype, "code": None, "message": message, "param": None}}).decode()
    response = connection.respond(status, body)
    response.headers["Content-Type"] = "application/json"
    return response


class SessionServer:
    """Serves a simulator's sessions on loopback (``start``/``stop``); ``sessions`` are their logs."""

    def __init__(
        self,
        name: str,
        path: str,
        open_session: OpenSession,
        process_request: Callable[[ServerConnection, Request], Response | None],
        select_subprotocol: SelectSubprotocol | None = None,
    ) -> None:
        self.name = name  # for the log and errors
        self.path = path  # the URL path clients connect to
        self.sessions: list[Any] = []
        self._open_session = open_session
        self._process_request = process_request
        self._select_subprotocol = select_subprotocol
        self._connections: dict[int, ServerConnection] = {}
        self._inboxes: dict[int, asyncio.Queue[Any]] = {}
        self._changed = asyncio.Event()  # set whenever a session opens or sends an event
        self._server: Server | None = None
        self._host = "127.0.0.1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=32 * 1024 * 1024,
            close_timeout=2,
            compression=None,
        )
        self._host = host

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://{self._host}:{port}{self.path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Return once ``condition()`` holds, checked each time a session opens or sends.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def kill(self, session: SessionLogLike) -> None:
        """Drop one session's connection at once, as a network fault or a crashed server would."""
        connection = self._connections.get(session.index)
        if connection is not None:
            connection.transport.abort()

    def act(self, session: SessionLogLike, action: Action) -> None:
        """Run ``action(core, now)`` on a live session's core, in its turn with its messages."""
        inbox = self._inboxes.get(session.index)
        if inbox is not None:
            inbox.put_nowait(action)

    async def wait_closed(self, session: SessionLogLike, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await session.closed.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        slog, core = self._open_session(ws, loop.time())
        self.sessions.append(slog)
        self._connections[slog.index] = ws
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._inboxes[slog.index] = inbox
        self._changed.set()
        reader = asyncio.create_task(self._read(ws, inbox))
        try:
            core.connect(loop.time())
            while True:
                for event in core.take_events():
                    if isinstance(event, bytes):
                        await ws.send(event)
                        slog.sent.append((loop.time(), f"<binary {len(event)}>"))  # the size, not the audio
                    else:
                        await ws.send(orjson.dumps(event).decode())
                        slog.sent.append((loop.time(), event["type"]))
                    self._changed.set()
                if core.close_request:
                    await ws.close(*core.close_request)
                    break
                if inbox.empty():
                    deadline = core.next_deadline()
                    timeout = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        message = await asyncio.wait_for(inbox.get(), timeout)
                    except TimeoutError:
                        message = None
                else:
                    message = inbox.get_nowait()
                if message is _EOF:
                    break
                now = loop.time()
                if callable(message):
                    core.advance(now)
                    message(core, now)
                elif message is not None:
                    core.receive(message, now)
                core.advance(now)
        except ConnectionClosed:
            pass
        except Exception:  # a bug in the simulator: fail this session only
            log.exception("%s session %d failed", self.name, slog.index)
            await ws.close(1011, "internal error")
        finally:
            core.connection_lost()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close()
            self._connections.pop(slog.index, None)
            self._inboxes.pop(slog.index, None)
            slog.closed_at = loop.time()
            slog.close_code = ws.close_code
            slog.close_reason = ws.close_reason or ""
            slog.closed.set()
            self._changed.set()

    @staticmethod
    async def _read(ws: ServerConnection, inbox: asyncio.Queue[Any]) -> None:
        try:
            async for message in ws:
                inbox.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            inbox.put_nowait(_EOF)


class SimulatorShell:
    """What every simulator's asyncio shell offers over its ``SessionServer`` (``_server``, set by
    the shell, which checks its config in ``start`` first): the URL clients connect to, ``stop``,
    ``async with``, the protocol violations its sessions (and handshakes) saw, and waits and
    faults on one session."""

    _server: SessionServer
    handshake_violations: list[str]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await self._server.start(host, port)

    @property
    def url(self) -> str:
        return self._server.url

    async def stop(self) -> None:
        await self._server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def violations(self) -> list[str]:
        handshakes = getattr(self, "handshake_violations", [])
        return [*handshakes, *(f"session {s.index}: {v}" for s in self._server.sessions for v in s.violations)]

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Return once ``condition()`` holds, checked each time a session opens or sends.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        await self._server.wait_until(condition, timeout)

    def kill(self, session: SessionLogLike) -> None:
        """Drop one session's connection at once, as a network fault or a crashed server would."""
        self._server.kill(session)

    async def wait_closed(self, session: SessionLogLike, timeout: float) -> None:
        await self._server.wait_closed(session, timeout)
