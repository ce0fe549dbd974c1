"""The relay server: one port for the TwiML webhook, health, and the media WebSocket.

Twilio POSTs a form body to the webhook, and the ``websockets`` server refuses any request
with a body, so HTTP is parsed here with httptools. A GET that asks to upgrade on the
webhook's path becomes a ``ws.WebSocket`` (websockets' sans-I/O handshake, compiled framing) and
runs a ``CallSession``.

Routes:
    POST /twilio/voice   TwiML: <Connect><Stream url="wss://<public host>/twilio/voice">
    GET  /twilio/voice   with ``Upgrade: websocket``: the call's media stream
    GET  /healthz        200 while the process serves
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httptools
import orjson
from twilio.request_validator import RequestValidator
from websockets.datastructures import Headers
from websockets.http11 import Request

from relay import fastpath, realtime, streamtoken, twilio, upstream
from relay.admission import Admission, LocalAdmission
from relay.config import Settings
from relay.pacer import Pacer
from relay.session import CallSession, ResolveAgent, Upstream
from relay.store import Store
from relay.tenants import Directory, SingleTenant
from relay.ws import WebSocket, handshake

log = logging.getLogger("relay.server")

MAX_BODY = 64 * 1024  # Twilio's webhook forms are a few hundred bytes
MAX_HEADERS = 64
MAX_HEAD = 16 * 1024  # request line + headers; a head that never ends is cut here (431)


def _response(status: HTTPStatus, body: bytes, content_type: str, *, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


class Relay:
    """What the HTTP side serves: the webhook, health, and call sessions."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        connect_upstream: Callable[[], Awaitable[Upstream]] | None = None,
        directory: Directory | None = None,
        resolve_agent: ResolveAgent | None = None,
        admission: Admission | None = None,
        token_source: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.directory = directory or SingleTenant()
        self.resolve_agent = resolve_agent
        self.admission = admission or LocalAdmission(settings.max_concurrent_calls or None,
                                                     settings.calls_per_minute or None)
        self.rejected_signatures = 0  # webhooks and handshakes refused for a bad X-Twilio-Signature
        # Tenants' own Twilio (sub)account tokens, kept fresh from the store (TOKEN_REFRESH).
        self.token_source = token_source
        self.tenant_tokens: tuple[str, ...] = ()
        self._tokens_at = -1e9
        self.connections = 0
        # Connections closed for breaking a limit, by kind: rate, size, frame, binary, head,
        # connections (over RELAY_MAX_CONNECTIONS).
        self.violations: collections.Counter[str] = collections.Counter()
        # Made once: a deployment without RELAY_STREAM_SECRET or an auth token (development)
        # gets a key only this process knows.
        self.stream_token_key = settings.stream_token_key or os.urandom(32)
        self.agent = realtime.AgentProfile(
            instructions=settings.agent_instructions,
            voice=settings.agent_voice,
            transcription_model=settings.transcription_model,
            vad_threshold=settings.vad_threshold,
            vad_silence_ms=settings.vad_silence_ms,
            vad_prefix_ms=settings.vad_prefix_ms,
            greeting=settings.greeting,
            end_call_tool=settings.end_call_tool,
        )
        # One 20 ms clock paces every call's outbound audio (created on first use, in the loop).
        self._pacer: Pacer | None = None
        self.upstreams_outlived = 0  # backend sessions that would not close with their call
        self._connect_upstream = connect_upstream or self._connect_realtime
        self.sessions: set[asyncio.Task[None]] = set()
        self.background: set[asyncio.Future[None]] = set()  # webhook answers in flight
        self.calls_total = 0

    async def _connect_realtime(self) -> Upstream:
        # No OpenAI-Beta header: its presence selects the retired beta shape (PROTOCOLS §2.1).
        return await upstream.connect(
            self.settings.realtime_url,
            {"Authorization": f"Bearer {self.settings.openai_api_key}"},
            max_size=16 * 1024 * 1024,
            timeout=10,
        )

    def signature_ok(self, url: str, params: dict[str, str] | str, signature: str | None, *,
                     count: bool = True) -> bool:
        """Whether ``X-Twilio-Signature`` signs ``url`` (+ form params, or a JSON body's hash)
        with the relay's auth token or one of its tenants' (Twilio subaccounts).

        ``url`` is built from ``RELAY_PUBLIC_URL``, never from the request's ``Host`` header.
        """
        settings = self.settings
        if settings.skip_twilio_signature:
            return True
        tokens = ((settings.twilio_auth_token,) if settings.twilio_auth_token else ()) + self.tenant_tokens
        if signature and any(RequestValidator(token).validate(url, params, signature) for token in tokens):
            return True
        if count:
            self.rejected_signatures += 1
        return False

    async def refresh_tokens(self, *, min_age: float = 0.0) -> None:
        """Reload the tenants' auth tokens (at most once per ``min_age`` seconds)."""
        now = time.monotonic()
        if self.token_source is None or now - self._tokens_at < min_age:
            return
        self._tokens_at = now
        try:
            self.tenant_tokens = tuple(await self.token_source())
        except Exception as exc:  # the store is unreachable: the tokens known so far stay valid
            log.warning("could not reload tenant auth tokens (%s)", type(exc).__name__)

    async def webhook(self, params: dict[str, str]) -> str:
        """TwiML for an incoming call: connect its audio to our media WebSocket.

        The called number picks the tenant and agent; both travel to the stream in its
        ``<Parameter>``s. A number no tenant owns hears that it is not configured.
        """
        call_sid, to = params.get("CallSid", ""), params.get("To", "")
        route = await self.directory.route(to)
        if route is None:
            log.warning("webhook: call %s to %s: number not configured", call_sid, to)
            return twilio.refusal_twiml(self.settings.not_configured_message)
        try:
            admitted = await self.admission.admit(route.tenant_id, call_sid)
        except Exception as exc:  # the shared count is unreachable: calls matter more than the cap
            log.warning("webhook: admission check failed (%s); admitting call %s", type(exc).__name__, call_sid)
            admitted = True
        if not admitted:
            log.warning("webhook: call %s refused: tenant %s is at its call limit", call_sid, route.tenant_id)
            return twilio.refusal_twiml(self.settings.busy_message)
        log.info("webhook: call %s from %s to %s: tenant %s", call_sid, params.get("From", "?"), to, route.tenant_id)
        token = streamtoken.issue(self.stream_token_key, tenant=route.tenant_id, agent=route.agent_id,
                                  call_sid=call_sid, now=time.time())
        return twilio.connect_stream_twiml(
            self.settings.stream_url,
            {"callSid": call_sid, "from": params.get("From", ""), "to": to, "tenant": route.tenant_id,
             "agent": route.agent_id, "token": token},
        )

    def verify_stream(self, start: twilio.Start) -> str | None:
        """Why a stream's ``start`` may not open an upstream (None: it may)."""
        params = start.custom_parameters
        return streamtoken.verify(self.stream_token_key, params.get("token", ""), tenant=params.get("tenant", ""),
                                  agent=params.get("agent", ""), call_sid=start.call_sid, now=time.time())

    def note_violation(self, kind: str) -> None:
        self.violations[kind] += 1

    @property
    def pacer(self) -> Pacer:
        if self._pacer is None:
            self._pacer = Pacer()
        return self._pacer

    def note_upstream_outlived(self) -> None:
        self.upstreams_outlived += 1

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "fastpath": fastpath.IMPLEMENTATION, "calls_active": len(self.sessions),
                "connections": self.connections, "refused_signatures": self.rejected_signatures,
                "violations": dict(self.violations), "upstreams_outlived": self.upstreams_outlived,
                "pacer": self.pacer.stats()}

    def start_call(self, ws: WebSocket) -> None:
        session = CallSession(
            ws,
            connect_upstream=self._connect_upstream,
            agent=self.agent,
            store=self.store,
            options=self.settings.call_options,
            pacer=self.pacer,
            upstream_max_session_s=self.settings.upstream_max_session_s,
            resolve_agent=self.resolve_agent,
            verify_start=self.verify_stream,
            on_started=self.call_started,
            on_upstream_outlived=self.note_upstream_outlived,
        )
        task = asyncio.create_task(self._run_call(session))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        self.calls_total += 1

    async def _run_call(self, session: CallSession) -> None:
        try:
            await session.run()
        except Exception:  # one call's failure never reaches another call
            log.exception("call %s crashed", session.call_sid)
            await session.twilio.close(1011, "internal error")
        finally:
            if session.call_sid and session.end_reason != "stream_token_invalid":
                await self._admission_note(self.admission.ended, session.call_sid)

    async def _admission_note(self, note: Callable[[str], Awaitable[None]], call_sid: str) -> None:
        try:
            await note(call_sid)
        except Exception as exc:  # a slot not freed here expires on its own (relay.admission)
            log.warning("call %s: admission update failed (%s)", call_sid, type(exc).__name__)

    def call_started(self, call_sid: str) -> None:
        """A verified stream began: its admission slot is now held by a live call."""
        task = asyncio.ensure_future(self._admission_note(self.admission.started, call_sid))
        self.background.add(task)
        task.add_done_callback(self.background.discard)


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests until it upgrades to a WebSocket."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._ws: WebSocket | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._too_large = False
        self._head_bytes = 0  # bytes of the current request's head so far (-1: head complete)

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        relay = self._relay
        relay.connections += 1
        if relay.connections > relay.settings.max_connections:
            relay.violations["connections"] += 1
            log.warning("refusing a connection: %d open (RELAY_MAX_CONNECTIONS)", relay.connections - 1)
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.data_received(data)
            return
        if self._transport is None or self._transport.is_closing():
            return  # answered and closing: nothing more is read
        in_head = self._head_bytes >= 0
        if in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
        except httptools.HttpParserError:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", keep_alive=False)
        if in_head and self._head_bytes > MAX_HEAD:
            # Still no end of the head: httptools would buffer a header that never ends, without
            # limit. (At most one read's worth past the bound is ever held.)
            self._relay.violations["head"] += 1
            self._send(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n", keep_alive=False)

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.eof_received()
            return True  # the WebSocket closes the transport after its closing handshake
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()  # (after an upgrade the WebSocket is the transport's protocol and gets this)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._too_large = b"", [], bytearray(), False
        if self._head_bytes < 0:
            self._head_bytes = 0  # a new request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        length = self._header("content-length")
        if length is not None and (not length.strip().isdigit() or int(length.strip()[:12]) > MAX_BODY):
            # Refuse an oversized body now rather than after reading it all.
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request too large\n", keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) < MAX_HEADERS:
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        else:
            self._too_large = True

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > MAX_BODY:
            self._too_large = True
        else:
            self._body += body

    def on_message_complete(self) -> None:
        if self._parser.should_upgrade():
            return  # handled when feed_data raises HttpParserUpgrade
        self._handle_request()

    # requests
    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain", *, keep_alive: bool,
              head_only: bool = False) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        response = _response(status, body, content_type, keep_alive=keep_alive)
        # A HEAD answer carries the GET answer's headers (Content-Length included), no body.
        self._transport.write(response[: len(response) - len(body)] if head_only else response)
        if not keep_alive:
            self._transport.close()

    def _handle_request(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        method = self._parser.get_method()
        try:
            url = urlsplit(self._url.decode("latin-1"))
        except ValueError:  # e.g. an absolute-form target with a broken IPv6 host
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", keep_alive=False)
            return
        if self._too_large:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request too large\n", keep_alive=False)
        elif url.path == "/healthz" and method in (b"GET", b"HEAD"):
            self._send(HTTPStatus.OK, orjson.dumps(self._relay.health()), "application/json", keep_alive=keep_alive,
                       head_only=method == b"HEAD")
        elif url.path == twilio.STREAM_PATH and method in (b"POST", b"GET"):
            # Twilio's voice webhook: a form body (POST) or the query string (GET), or a JSON
            # body whose hash is in the query (bodySHA256).
            raw = bytes(self._body).decode("utf-8", "replace") if method == b"POST" else url.query
            signed_url = self._relay.settings.public_url.rstrip("/") + url.path + (f"?{url.query}" if url.query else "")
            # As twilio's validator decides: a bodySHA256 query parameter, even an empty one.
            is_json = method == b"POST" and "bodySHA256" in parse_qs(url.query)
            signed: dict[str, str] | str = raw if is_json else (
                dict(parse_qsl(raw, keep_blank_values=True)) if method == b"POST" else {})
            signature = self._header("x-twilio-signature")
            params: dict[str, str] | None = dict(
                parse_qsl(url.query if is_json or method != b"POST" else raw, keep_blank_values=True))
            if is_json:
                try:
                    body = orjson.loads(raw)
                    params.update({str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {})
                except orjson.JSONDecodeError:
                    params = None  # answered 400 once the signature is known good
            if not self._relay.signature_ok(signed_url, signed, signature, count=False) and (
                self._relay.token_source is None
            ):
                self._relay.rejected_signatures += 1
                log.warning("webhook refused: X-Twilio-Signature missing or wrong")
                self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=False)
                return
            # With tenant tokens, a failed check is retried once after reloading them.
            task = asyncio.ensure_future(self._answer_webhook(params, keep_alive, (signed_url, signed, signature)))
            self._relay.background.add(task)
            task.add_done_callback(self._relay.background.discard)
        elif url.path in ("/healthz", twilio.STREAM_PATH):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", keep_alive=keep_alive)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", keep_alive=keep_alive)

    async def _answer_webhook(self, params: dict[str, str] | None, keep_alive: bool,
                              signed: tuple[str, dict[str, str] | str, str | None]) -> None:
        relay = self._relay
        if not relay.signature_ok(*signed, count=False):
            # Perhaps a tenant's token added since the last reload: reload once, then decide.
            await relay.refresh_tokens(min_age=1.0)
            if not relay.signature_ok(*signed):
                log.warning("webhook refused: X-Twilio-Signature missing or wrong")
                self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=False)
                return
        if params is None:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", keep_alive=False)
            return
        try:
            twiml = (await self._relay.webhook(params)).encode()
        except Exception:  # e.g. the tenant directory is unreachable: Twilio retries or fails over
            log.exception("webhook failed")
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"try again\n", keep_alive=False)
            return
        if self._transport is not None and not self._transport.is_closing():
            self._send(HTTPStatus.OK, twiml, "text/xml", keep_alive=keep_alive)

    def _header(self, name: str) -> str | None:
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return None

    def _upgrade(self, rest: bytes) -> None:
        assert self._transport is not None
        path = self._url.decode("latin-1")
        try:
            target = urlsplit(path).path
        except ValueError:  # a broken absolute-form target: nothing to upgrade
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", keep_alive=False)
            return
        if target != twilio.STREAM_PATH or self._parser.get_method() != b"GET":
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", keep_alive=False)
            return
        # Twilio signs the stream URL of the TwiML, wss scheme and no params (PROTOCOLS §1.2).
        if not self._relay.signature_ok(self._relay.settings.stream_url, {}, self._header("x-twilio-signature")):
            log.warning("media WebSocket refused: X-Twilio-Signature missing or wrong")
            self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=False)
            return
        headers = Headers()
        for name, value in self._headers:
            headers[name] = value
        response = handshake(Request(path, headers))
        self._transport.write(response.serialize())
        if response.status_code != 101:
            self._transport.close()
            return
        settings = self._relay.settings
        self._ws = WebSocket(self._transport, max_size=settings.max_message_bytes,
                             max_rate=settings.max_messages_per_second, on_violation=self._relay.note_violation)
        self._ws.on_lost = self._lost
        # From here on the transport feeds the WebSocket's compiled read loop directly.
        self._transport.set_protocol(self._ws)  # type: ignore[arg-type]
        self._relay.start_call(self._ws)
        if rest:
            self._ws.data_received(rest)

    def _lost(self) -> None:
        self._relay.connections -= 1


TOKEN_REFRESH = 15.0  # seconds between reloads of the tenants' auth tokens


class RelayServer:
    """The listening socket and everything it serves."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._server: asyncio.base_events.Server | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.relay.settings
        self._server = await loop.create_server(lambda: HttpProtocol(self.relay), s.host, s.port, reuse_address=True)
        if self.relay.token_source is not None:
            await self.relay.refresh_tokens()
            self._refresher = asyncio.create_task(self._refresh_tokens(), name="tenant-token-refresh")

    async def _refresh_tokens(self) -> None:
        # A handshake cannot wait for the database, so it checks the tokens known here; a new
        # tenant token reaches every relay within TOKEN_REFRESH (its webhooks at once).
        while True:
            await asyncio.sleep(TOKEN_REFRESH)
            await self.relay.refresh_tokens()

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let live calls finish (bounded), then end the rest."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self._server is not None:
            self._server.close()
        sessions = set(self.relay.sessions)
        if sessions:
            _, pending = await asyncio.wait(sessions, timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
