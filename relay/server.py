"""The relay server: one port for the TwiML webhook, health, and the media WebSocket.

Twilio POSTs a form body to the webhook, and the ``websockets`` server refuses any request
with a body, so HTTP is parsed here with httptools. A GET that asks to upgrade on the
webhook's path becomes a ``ws.Connection`` (websockets' sans-I/O handshake, compiled framing) and
runs a ``CallSession``.

Routes:
    POST /twilio/voice          TwiML: <Connect><Stream url="wss://<public host>/twilio/voice">, then a
                                <Redirect> to the after-stream hook
    GET  /twilio/voice          with ``Upgrade: websocket``: the call's media stream
    POST /twilio/after-stream   what the caller hears once relay has closed the stream (Twilio runs the
                                TwiML after </Connect>): an apology after a failure, else the hang-up
    GET  /healthz               liveness: 200 while the event loop turns
    GET  /readyz                readiness: 200 when this relay should get new calls (not draining, the
                                compiled fast path, the store keeping what it is given, the backend
                                reached recently), else 503; both say why, as JSON
    POST /drain                 from loopback only: start draining (``?handoff=1``: hand every live call
                                to another relay now); what ``relay drain`` sends
    GET  /metrics               the Prometheus text format (``relay.metrics``); with RELAY_METRICS_TOKEN set,
                                only with ``Authorization: Bearer <token>``. RELAY_METRICS_PORT serves it
                                (and /healthz) on a port of its own as well.

Every Twilio request is signed (``relay.trust``): the signer must be the deployment or the tenant
whose call it is, from that tenant's own account.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httptools
import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request

from relay import fastpath, logs, streamtoken, twilio, upstream
from relay.admission import Admission, LocalAdmission
from relay.agents import AgentProfile
from relay.backends import WIRES
from relay.config import Settings, is_loopback
from relay.conversation import TRANSFERRED
from relay.erasure import Eraser, erase
from relay.errors import InputError, ProtocolError
from relay.metrics import CONTENT_TYPE_LATEST, LAG_BUCKETS_MS, Buckets, CallLedger, LiveCall, render
from relay.outbound import warm
from relay.outbound.service import AMD_PATH, OUTBOUND_PATH, SMS_PATH, Outbound
from relay.pacer import Pacer
from relay.redaction import Redaction
from relay.routing import (
    HANGUP,
    NOTE,
    OUTCOME,
    SAY,
    STATUS,
    TRANSFER,
    VOICEMAIL,
    CallRequest,
    Owner,
    OwnerSilent,
    Peers,
)
from relay.session import CallSession, ResolveAgent, Upstream
from relay.store import Store
from relay.tenants import Directory, SingleTenant
from relay.tools.invoke import ToolInvoker
from relay.tools.spec import TransferTarget
from relay.tools.store import ToolStore
from relay.trust import Credential, binding_problem, signers
from relay.workers import Worker, merge, scrape_siblings
from relay.ws import Connection, handshake

log = logging.getLogger("relay.server")

MAX_BODY = 64 * 1024  # Twilio's webhook forms are a few hundred bytes
MAX_API_BODY = 4 * 1024 * 1024  # a campaign of 10,000 calls with their variables
API_PREFIX = "/v1/"
MAX_HEADERS = 64
MAX_HEAD = 16 * 1024  # request line + headers; a head that never ends is cut here (431)
MAX_OUTCOMES = 10_000  # how many ended calls' reasons the after-stream hook finds in memory
# How long the after-stream hook waits for a call's end to reach the store (it may be in flight
# from another relay) before it answers as for a failure.
OUTCOME_WAIT_S = 1.0
LAG_SAMPLE_S = 0.25  # how often the event loop's timer lateness is sampled for /metrics
# Calls whose stream relay ended normally: the caller hears nothing more. Every other way a
# stream ends while the call is up (a failure, or no record at all: a relay that died) gets
# the apology, so no caller is left in silence.
NORMAL_ENDS = frozenset(
    {"agent_hangup", "api_hangup", "call_completed", "voicemail_left", "machine_hangup", "race_accepted"}
    | {warm.DECLINED, warm.CALLER_GONE}
)
# Streams Twilio ended (the call hung up, the socket closed): no after-stream hook follows.
TWILIO_ENDS = frozenset({"stop", "twilio_closed", "twilio_closed_before_start"})
# How long after relay ends a stream its after-stream hook may still come (Twilio fetches it at once).
HOOK_EXPECTED_S = 5.0
# A tenant's erasure of one caller (relay/erasure.py), with its API key.
ERASURES_PATH = "/v1/erasures"
# The call control API: POST /v1/calls/{CallSid}/<action>.
CONTROL_PREFIX = "/v1/calls/"
CONTROL_ACTIONS = {"hangup": HANGUP, "say": SAY, "transfer": TRANSFER}
REDACTION_CACHE_S = 5.0  # a tenant's changed redaction reaches new calls within this
TRANSFER_LINE = "Please hold while I put you through."  # said before a transfer the API asked for with no line
MAX_SAY = 1000  # characters of a line the API asks the agent to say
# A call relay ended to move it to another relay: the after-stream hook connects a new stream.
HANDOFF = "handoff"
# The backend counts as reachable for readiness this long after it last was (a session opened,
# or the periodic TCP probe connected).
BACKEND_WINDOW_S = 60.0
BACKEND_PROBE_S = 15.0
# How long after its webhook answer a call's stream may still arrive (Twilio opens it at once).
STREAM_EXPECTED_S = 10.0


def _response(status: HTTPStatus, body: bytes, content_type: str, *, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


class Relay:
    """What the HTTP side serves: the webhook, the after-stream hook, health, and call sessions."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        connect_upstream: Callable[[AgentProfile], Awaitable[Upstream]] | None = None,
        directory: Directory | None = None,
        resolve_agent: ResolveAgent | None = None,
        admission: Admission | None = None,
        credential_source: Callable[[], Awaitable[list[Credential]]] | None = None,
        worker: Worker | None = None,
        peers: Peers | None = None,
        tool_store: ToolStore | None = None,
        redactions: Callable[[str], Awaitable[Redaction | None]] | None = None,
        backend_keys: Callable[[str, str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.settings = settings
        # Each tenant's redaction of what is stored (the embedded store's: the environment's),
        # read once per REDACTION_CACHE_S.
        self._redactions = redactions
        # Each tenant's own key for a backend, if it has one (tenant, backend) -> key; a secret,
        # cached as briefly as a redaction is.
        self._backend_keys = backend_keys
        self._backend_key_cache: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._redaction_cache: dict[str, tuple[float, Redaction | None]] = {}
        # Agents' own tools and transfer targets (None: agents only talk), and what calls the tools.
        self.tool_store = tool_store
        self.tools = ToolInvoker(ca_file=settings.tools_ca_file, allow_private=settings.tools_allow_private)
        # The other relays on the same database, for requests about calls held there (None:
        # this relay is alone, every call it is asked about is its own or nobody's).
        self.peers = peers
        self.call_requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._claims: dict[str, asyncio.Future[None]] = {}  # call sid -> its claim, still being written
        # Calls whose stream relay ended here, whose after-stream hook may still ask this relay how
        # (call sid -> loop time it is given up): a draining relay stays to answer.
        self.expected_hooks: dict[str, float] = {}
        self.worker = worker  # one of several workers on this port (``relay.workers``), or None
        self.store = store
        self.directory = directory or SingleTenant()
        self.resolve_agent = resolve_agent
        self.admission = admission or LocalAdmission(
            settings.max_concurrent_calls or None, settings.calls_per_minute or None
        )
        self.rejected_signatures = 0  # webhooks and handshakes refused for a bad X-Twilio-Signature
        self.rejected_bindings = 0  # signed, but by an account that may not act for that call
        self.malformed_webhooks = 0  # refused with 400 before anything was looked up or counted
        # Tenants' own Twilio (sub)accounts, kept fresh from the store (TOKEN_REFRESH).
        self.credential_source = credential_source
        self.tenant_credentials: tuple[Credential, ...] = ()
        self._credentials_at = -1e9
        self.connections = 0
        # Connections closed for breaking a limit, by kind: rate, size, frame, binary, head,
        # connections (over RELAY_MAX_CONNECTIONS).
        self.violations: collections.Counter[str] = collections.Counter()
        # Made once: a deployment without RELAY_STREAM_SECRET or an auth token (development)
        # gets a key only this process knows.
        self.stream_token_key = settings.stream_token_key or os.urandom(32)
        self.agent = settings.agent
        self.prices = settings.prices  # checked by Settings.from_env; read once here
        # One 20 ms clock paces every call's outbound audio (created on first use, in the loop).
        self._pacer: Pacer | None = None
        self.upstreams_outlived = 0  # backend sessions that would not close with their call
        self.upstreams_open = 0  # backend connections open now, every call's and recycle's
        self._connect_upstream = connect_upstream or self._connect_backend
        self.sessions: set[asyncio.Task[None]] = set()
        self.background: set[asyncio.Future[None]] = set()  # webhook answers in flight
        self.calls_total = 0
        # What calls did, for /metrics: by tenant (bounded), per turn and per call.
        self.ledger = CallLedger()
        self.live: dict[asyncio.Task[None], CallSession] = {}
        self.admission_refusals = 0  # webhooks answered "busy": the tenant or agent was at its limit
        self.loop_lag = Buckets(LAG_BUCKETS_MS)  # the event loop's timer lateness, sampled
        # How recent calls ended, for the after-stream hook when it lands on this relay.
        self.outcomes: collections.OrderedDict[str, str] = collections.OrderedDict()
        # Draining: not ready for new calls; live ones go on (or, handing off, move to another relay).
        self.draining = False
        self.handing_off = False
        self.drain_requests: asyncio.Queue[bool] = asyncio.Queue()  # /drain: True = hand off now
        self.backend_seen_at: float | None = None  # loop time the backend was last reached
        # Streams our webhook announced that have not started yet (call sid -> loop time it is
        # given up): a draining relay stays until they have come.
        self.expected_streams: dict[str, float] = {}
        # Calls relay places (``relay.outbound``): the API, the queue and its pool (None: off).
        self.outbound: Outbound | None = None
        # Calls whose stream ends to connect the caller to a number: call sid -> (number, name),
        # until the after-stream hook dials it (here, or from the answer of the relay that ran it).
        self.transfers: dict[str, tuple[str, str]] = {}
        # Erasing a caller on a tenant's request (``POST /v1/erasures``): the store's side (None: off).
        self.eraser: Eraser | None = None

    async def _connect_backend(self, agent: AgentProfile) -> Upstream:
        key = await self._tenant_backend_key(agent)
        url, headers = self.settings.backend_endpoint(agent.backend, agent.model, key)
        conn = await upstream.connect(
            url,
            headers,
            max_size=16 * 1024 * 1024,
            timeout=10,
            slow_peer_s=self.settings.slow_peer_timeout_ms / 1000,
        )
        conn.wire = WIRES[agent.backend]  # the caller's audio goes out in the backend's own append
        return conn

    async def open_upstream(self, agent: AgentProfile) -> Upstream:
        """A backend session for a call, counted in ``upstreams_open`` until its transport is gone."""
        conn = await self._connect_upstream(agent)
        self.backend_seen_at = asyncio.get_running_loop().time()
        if hasattr(conn, "on_lost"):
            self.upstreams_open += 1
            conn.on_lost = self._upstream_lost
        return conn

    def _upstream_lost(self) -> None:
        self.upstreams_open -= 1

    # ------------------------------------------------------------------ who signed

    @property
    def credentials(self) -> tuple[Credential, ...]:
        """Every Twilio account whose signature relay accepts: the deployment's, then tenants'."""
        own = self.settings.twilio_auth_token
        mine = (Credential(None, self.settings.twilio_account_sid or None, own),) if own else ()
        return mine + self.tenant_credentials

    def signers(self, url: str, params: dict[str, str] | str, signature: str | None) -> tuple[Credential, ...]:
        """Who signed a request (``X-Twilio-Signature`` over ``url`` + form params, or a JSON body's
        hash); ``url`` is built from ``RELAY_PUBLIC_URL``, never from the ``Host`` header."""
        return signers(self.credentials, url, params, signature)

    def binding_problem(self, found: tuple[Credential, ...], tenant_id: str, account_sid: str) -> str | None:
        """Why the request's signers may not act for ``tenant_id``'s call (None: they may)."""
        if self.settings.skip_twilio_signature:
            return None
        own = {c.account_sid: c.tenant_id for c in self.tenant_credentials if c.account_sid and c.tenant_id}
        problem = binding_problem(found, tenant_id, account_sid, own)
        if problem is not None:
            self.rejected_bindings += 1
        return problem

    async def refresh_credentials(self, *, min_age: float = 0.0) -> None:
        """Reload the tenants' accounts and tokens (at most once per ``min_age`` seconds)."""
        now = time.monotonic()
        if self.credential_source is None or now - self._credentials_at < min_age:
            return
        self._credentials_at = now
        try:
            self.tenant_credentials = tuple(await self.credential_source())
        except Exception as exc:  # noqa: BLE001 - the store is unreachable: the credentials known so far stay valid
            log.warning("could not reload tenant auth tokens (%s)", type(exc).__name__)

    # ------------------------------------------------------------------ Twilio's requests

    async def webhook(self, params: dict[str, str], found: tuple[Credential, ...]) -> tuple[HTTPStatus, str]:
        """The answer to a voice webhook: TwiML connecting the call to our media WebSocket.

        The fields are checked first (400, nothing looked up or counted); the called number
        picks the tenant and agent, and the request's signer must be allowed to act for that
        tenant (403) before the tenant's admission counts the call. A number no tenant owns
        hears that it is not configured.
        """
        try:
            call = twilio.voice_request(params)
        except ProtocolError as exc:
            self.malformed_webhooks += 1
            log.warning("webhook refused: %s", exc)
            return HTTPStatus.BAD_REQUEST, f"{exc}\n"
        logs.call_scope(call_sid=call.call_sid)
        route = await self.directory.route(call.to)
        if route is None:
            log.warning("webhook: call %s to %s: number not configured", call.call_sid, call.to)
            return HTTPStatus.OK, twilio.refusal_twiml(self.settings.not_configured_message)
        logs.call_scope(tenant=route.tenant_id)
        problem = self.binding_problem(found, route.tenant_id, call.account_sid)
        if problem is not None:
            log.warning("webhook refused: call %s to %s: %s", call.call_sid, call.to, problem)
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        try:
            admitted = await self.admission.admit(route.tenant_id, route.agent_id, call.call_sid)
        except Exception as exc:  # noqa: BLE001 - the shared count is unreachable: calls matter more than the cap
            log.warning("webhook: admission check failed (%s); admitting call %s", type(exc).__name__, call.call_sid)
            admitted = True
        if not admitted:
            self.admission_refusals += 1
            log.warning("webhook: call %s refused: tenant %s is at its call limit", call.call_sid, route.tenant_id)
            return HTTPStatus.OK, twilio.refusal_twiml(self.settings.busy_message)
        log.info(
            "webhook: call %s from %s to %s: tenant %s", call.call_sid, call.from_ or "?", call.to, route.tenant_id
        )
        return HTTPStatus.OK, self.stream_twiml(
            call.call_sid, call.account_sid, route.tenant_id, route.agent_id, call.from_, call.to
        )

    def stream_twiml(
        self,
        call_sid: str,
        account_sid: str,
        tenant: str,
        agent: str,
        from_: str,
        to: str,
        *,
        resume: bool = False,
        job: str = "",
    ) -> str:
        """TwiML that connects the call to a relay's media stream (through the load balancer:
        ``RELAY_PUBLIC_URL``), then redirects to the after-stream hook when the stream ends.

        Both carry a token signed for this call only. ``resume``: the call was handed over from
        another relay; the stream that picks it up continues its conversation from the store.
        ``job``: a call relay placed (``relay.outbound``), whose agent is briefed from its job.
        """
        now = time.time()
        token = streamtoken.issue(
            self.stream_token_key, tenant=tenant, agent=agent, call_sid=call_sid, account_sid=account_sid, now=now
        )
        hook = streamtoken.issue(
            self.stream_token_key,
            tenant=tenant,
            agent=agent,
            call_sid=call_sid,
            account_sid=account_sid,
            now=now,
            purpose=streamtoken.AFTER_STREAM,
            ttl=streamtoken.AFTER_STREAM_TTL,
        )
        after_url = (
            f"{self.settings.public_url.rstrip('/')}{twilio.AFTER_STREAM_PATH}?"
            f"{urlencode({'tenant': tenant, 'agent': agent, 'token': hook, **({'job': job} if job else {})})}"
        )
        parameters = {"callSid": call_sid, "from": from_, "to": to, "tenant": tenant, "agent": agent, "token": token}
        if resume:
            parameters["resume"] = "1"
        if job:
            parameters["job"] = job
        self.expected_streams[call_sid] = asyncio.get_running_loop().time() + STREAM_EXPECTED_S
        return twilio.connect_stream_twiml(self.settings.stream_url, parameters, after_url)

    def awaiting_streams(self) -> bool:
        """Whether a stream this relay's webhook announced may still arrive, or an after-stream
        hook may still ask this relay how a stream it ended ended."""
        now = asyncio.get_running_loop().time()
        for waiting in (self.expected_streams, self.expected_hooks):
            for call_sid, until in list(waiting.items()):
                if until < now:
                    del waiting[call_sid]
        return bool(self.expected_streams or self.expected_hooks)

    async def after_stream(
        self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]
    ) -> tuple[HTTPStatus, str]:
        """What Twilio runs once relay has closed a call's stream (the ``<Redirect>`` after
        ``</Connect>``): nothing more after a normal end (the agent hung up); a new stream, through
        the load balancer, after a hand-off (a draining relay moved the call); the failure message
        after anything else. Works on any relay sharing the store: the reason is looked up there
        when this relay did not run the call."""
        call_sid, account_sid = params.get("CallSid", ""), params.get("AccountSid", "")
        tenant, agent = query.get("tenant", ""), query.get("agent", "")
        if not (twilio.CALL_SID.fullmatch(call_sid) and twilio.ACCOUNT_SID.fullmatch(account_sid)):
            self.malformed_webhooks += 1
            return HTTPStatus.BAD_REQUEST, "CallSid and AccountSid must be Twilio sids\n"
        refused = streamtoken.verify(
            self.stream_token_key,
            query.get("token", ""),
            tenant=tenant,
            agent=agent,
            call_sid=call_sid,
            account_sid=account_sid,
            now=time.time(),
            purpose=streamtoken.AFTER_STREAM,
        )
        problem = refused or self.binding_problem(found, tenant, account_sid)
        if problem is not None:
            log.warning("after-stream hook refused for call %s: %s", call_sid, problem)
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        reason = await self.end_reason(call_sid)
        target = self.transfers.pop(call_sid, None)
        if reason in NORMAL_ENDS:
            return HTTPStatus.OK, twilio.hangup_twiml()
        if reason == TRANSFERRED and target is not None:
            log.info("call %s: dialling %s", call_sid, target[1] or "the transfer target")
            return HTTPStatus.OK, twilio.dial_twiml(target[0])
        if reason == HANDOFF and agent:
            log.info("call %s: handed over; connecting a new stream", call_sid)
            from_, to = params.get("From", ""), params.get("To", "")
            return HTTPStatus.OK, self.stream_twiml(
                call_sid, account_sid, tenant, agent, from_, to, resume=True, job=query.get("job", "")[:40]
            )
        log.info("call %s: the stream ended (%s); the caller hears the failure message", call_sid, reason or "unknown")
        return HTTPStatus.OK, twilio.refusal_twiml(self.settings.failure_message)

    async def outbound_request(
        self, path: str, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]
    ) -> tuple[HTTPStatus, str]:
        """Twilio's requests about a call relay placed: its answer, its answering-machine verdict."""
        if self.outbound is None:
            return HTTPStatus.NOT_FOUND, "outbound calls are off\n"
        if path == OUTBOUND_PATH:
            return await self.outbound.answer(query, params, found)
        if not await self.outbound.amd(query, params, found):
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        return HTTPStatus.OK, ""

    async def sms_webhook(self, params: dict[str, str], found: tuple[Credential, ...]) -> tuple[HTTPStatus, str]:
        """A text to one of the tenants' numbers (``To`` picks the tenant, as for a call)."""
        to, from_ = params.get("To", ""), params.get("From", "")
        if not (twilio.E164.fullmatch(to) and twilio.E164.fullmatch(from_)):
            self.malformed_webhooks += 1
            return HTTPStatus.BAD_REQUEST, "From and To must be E.164 numbers\n"
        route = await self.directory.route(to)
        if route is None or self.outbound is None:
            return HTTPStatus.OK, twilio.empty_twiml()
        return await self.outbound.sms(params, found, route.tenant_id)

    async def end_reason(self, call_sid: str) -> str | None:
        """How a call's stream ended: from memory if it ran here, else from the relay that ran
        it (through the peers), else from the store (waiting briefly for an end still on its
        way there)."""
        try:
            answer = await self.about_call(CallRequest(OUTCOME, call_sid))
        except Exception as exc:  # noqa: BLE001 - its relay silent or Postgres away: the store may know
            log.warning("call %s: its relay could not say how its stream ended (%s)", call_sid, type(exc).__name__)
            answer = None
        if answer is not None and answer.get("reason"):
            target = answer.get("transfer_to")
            if isinstance(target, list) and len(target) == 2:
                self.transfers[call_sid] = (str(target[0]), str(target[1]))
            return str(answer["reason"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTCOME_WAIT_S
        while True:
            try:
                reason = await self.store.end_reason(call_sid)
            except Exception as exc:  # noqa: BLE001 - the store is unreachable: answer as for a failure
                log.warning("call %s: end reason unavailable (%s)", call_sid, type(exc).__name__)
                return None
            if reason is not None or loop.time() >= deadline:
                return reason
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ requests about a call

    @property
    def instance_id(self) -> str:
        """This relay among the relays on its database ("" when it is alone)."""
        return self.peers.instance_id if self.peers is not None else ""

    def _session_of(self, call_sid: str) -> CallSession | None:
        for session in self.live.values():
            if session.start is not None and session.call_sid == call_sid:
                return session
        return None

    async def _tenant_backend_key(self, agent: AgentProfile) -> str | None:
        """The call's tenant's own key for the agent's backend (None: the deployment's is used).
        Unreadable, the deployment's is tried: the backend refuses it if it must."""
        if self._backend_keys is None or not agent.tenant_id:
            return None
        now = asyncio.get_running_loop().time()
        hit = self._backend_key_cache.get((agent.tenant_id, agent.backend))
        if hit is None or hit[0] < now:
            if len(self._backend_key_cache) > 10_000:
                self._backend_key_cache.clear()
            try:
                key = await self._backend_keys(agent.tenant_id, agent.backend)
            except Exception as exc:  # noqa: BLE001 - the directory is away
                log.warning("tenant %s: its backend key is unreadable (%s)", agent.tenant_id, type(exc).__name__)
                return None
            hit = self._backend_key_cache[(agent.tenant_id, agent.backend)] = (now + REDACTION_CACHE_S, key)
        return hit[1]

    async def redaction(self, tenant_id: str) -> Redaction | None:
        """What the tenant's stored turns may not hold (None: stored as said)."""
        if self._redactions is None:
            return self.settings.redaction
        now = time.monotonic()
        hit = self._redaction_cache.get(tenant_id)
        if hit is None or hit[0] <= now:
            if len(self._redaction_cache) > 10_000:
                self._redaction_cache.clear()
            hit = self._redaction_cache[tenant_id] = (now + REDACTION_CACHE_S, await self._redactions(tenant_id))
        return hit[1]

    def transfer(self, session: CallSession, target: TransferTarget, summary: str) -> dict[str, Any] | None:
        """The agent asked to put the caller through (``transfer_call``): a cold transfer is readied
        here (the after-stream hook dials it once the agent's line is heard: None); a warm one runs
        beside the call (what the model is told meanwhile)."""
        if target.mode == "warm":
            if self.outbound is None:
                return {"error": "warm transfers need outbound calls"}
            return self.outbound.warm_transfer(session, target, summary)
        self.transfers[session.call_sid] = (target.target, target.label)
        return None

    def answer_request(self, request: CallRequest) -> dict[str, Any] | None:
        """Answer a request about a call whose stream is (or, for its outcome, was) here; None
        when this relay does not hold it."""
        call_sid, me = request.call_sid, self.instance_id
        if request.kind == OUTCOME:
            reason = self.outcomes.get(call_sid)
            if reason is None:
                return None
            self.expected_hooks.pop(call_sid, None)
            self._forget(call_sid)  # the after-stream hook is the last thing asked about a stream
            target = self.transfers.get(call_sid)
            return {"instance": me, "reason": reason, **({"transfer_to": list(target)} if target else {})}
        session = self._session_of(call_sid)
        if session is None:
            return None
        if request.kind == HANGUP:
            log.info("call %s: hang-up requested; ending after the line in progress", call_sid)
            session.leave("api_hangup")
            return {"instance": me, "hung_up": True}
        if request.kind == VOICEMAIL:
            return {"instance": me, "voicemail": session.answering_machine()}
        if request.kind == NOTE:
            session.tell(request.args.get("text", "")[:500])
            return {"instance": me, "told": True}
        if request.kind == SAY:
            session.say_between_turns(request.args.get("text", "")[:MAX_SAY])
            return {"instance": me, "saying": True}
        if request.kind == TRANSFER:
            number, name = request.args.get("to", ""), request.args.get("name", "")[:100]
            if not twilio.dialable(number):
                return {"instance": me, "refused": "not an E.164 number, a sip: address or a conference"}
            log.info("call %s: connecting the caller to %s after the line in progress", call_sid, name)
            self.transfers[call_sid] = (number, name)
            session.put_through(number, request.args.get("line", "")[:500], request.args.get("record", "")[:100])
            return {"instance": me, "transferring": True}
        assert request.kind == STATUS and session.start is not None
        if request.args.get("AccountSid") != session.start.account_sid:
            return {"instance": me, "refused": "the call is on another account"}
        status = request.args.get("CallStatus", "")
        log.info("call %s: Twilio reports %s", call_sid, status[:20])
        if status in twilio.FINAL_STATUSES:
            session.leave("call_completed", at_pause=False)  # the call is over: its stream is too
        return {"instance": me, "status": status}

    async def answer_peer(self, request: CallRequest) -> dict[str, Any]:
        """A request another relay passed on (``relay.pg.cluster``)."""
        answer = self.answer_request(request)
        self.call_requests[request.kind, "for_peer"] += 1
        return answer if answer is not None else {"instance": self.instance_id, "unknown": True}

    async def locate(self, call_sid: str) -> Owner | None:
        """Which relay holds the call (this one, or one of its peers), and the call's tenant."""
        session = self._session_of(call_sid)
        if session is not None:
            return Owner(self.instance_id, session.tenant_id)
        return await self.peers.owner(call_sid) if self.peers is not None else None

    async def about_call(self, request: CallRequest, owner: Owner | None = None) -> dict[str, Any] | None:
        """Answer ``request`` here if this relay holds the call, else at the relay that does
        (raising ``OwnerSilent`` when it does not answer in time); None: no relay holds it."""
        answer = self.answer_request(request)
        if answer is not None:
            self.call_requests[request.kind, "here"] += 1
            return answer
        owner = owner or (await self.peers.owner(request.call_sid) if self.peers is not None else None)
        if self.peers is None or owner is None or owner.instance_id == self.peers.instance_id:
            self.call_requests[request.kind, "unknown"] += 1
            return None
        try:
            answer = await self.peers.ask(owner.instance_id, request)
        except OwnerSilent:
            self.call_requests[request.kind, "silent"] += 1
            raise
        self.call_requests[request.kind, "routed"] += 1
        return None if answer.get("unknown") else answer

    async def status_callback(
        self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]
    ) -> tuple[HTTPStatus, str]:
        """Twilio's status callback, answered by the relay holding the call: a final status ends
        the call's stream there (Twilio's ``stop`` may never come over a broken socket). A call
        relay placed (``?job=``) has its progress recorded on its job, by whichever relay gets it."""
        call_sid, account_sid = params.get("CallSid", ""), params.get("AccountSid", "")
        if not (twilio.CALL_SID.fullmatch(call_sid) and twilio.ACCOUNT_SID.fullmatch(account_sid)):
            self.malformed_webhooks += 1
            return HTTPStatus.BAD_REQUEST, "CallSid and AccountSid must be Twilio sids\n"
        if "job" in query and (self.outbound is None or not await self.outbound.status(query, params, found)):
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        owner = await self.locate(call_sid)
        if owner is None:  # not (or no longer) live anywhere: nothing to do
            self.call_requests[STATUS, "unknown"] += 1
            return HTTPStatus.OK, ""
        problem = self.binding_problem(found, owner.tenant_id, account_sid)
        if problem is not None:
            log.warning("status callback refused for call %s: %s", call_sid, problem)
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        fields = ("AccountSid", "CallStatus", "SequenceNumber", "CallDuration")
        request = CallRequest(STATUS, call_sid, {k: params[k][:64] for k in fields if k in params})
        try:
            answer = await self.about_call(request, owner)
        except OwnerSilent as exc:
            log.warning("status callback for call %s: %s", call_sid, exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, "try again\n"
        if answer is not None and answer.get("refused"):
            log.warning("status callback refused for call %s: %s", call_sid, answer["refused"])
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        return HTTPStatus.OK, ""

    async def control(
        self, kind: str, call_sid: str, tenant_id: str | None = None, args: dict[str, str] | None = None
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        """The call control API (``POST /v1/calls/{sid}/hangup``), answered by the relay holding the
        call. ``tenant_id``: asked with that tenant's key, which reaches its own calls alone (another
        tenant's call is not found, as if it did not exist)."""
        owner = None
        if tenant_id is not None:
            owner = await self.locate(call_sid)
            if owner is None or owner.tenant_id != tenant_id:
                return HTTPStatus.NOT_FOUND, {"error": f"no live call {call_sid}"}
        try:
            answer = await self.about_call(CallRequest(kind, call_sid, args or {}), owner)
        except OwnerSilent as exc:
            return HTTPStatus.GATEWAY_TIMEOUT, {"error": str(exc)}
        if answer is None:
            return HTTPStatus.NOT_FOUND, {"error": f"no live call {call_sid}"}
        return HTTPStatus.ACCEPTED, {"call_sid": call_sid, **answer}

    def _forget(self, call_sid: str) -> None:
        if self.peers is not None:
            self._in_background(self.peers.forget(call_sid), f"forget {call_sid}")

    def _in_background(self, work: Awaitable[None], what: str) -> asyncio.Future[None]:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # noqa: BLE001 - routing is best effort; the call is unaffected
                log.warning("%s failed (%s)", what, type(exc).__name__)

        task = asyncio.ensure_future(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def note_outcome(self, call_sid: str, end_reason: str) -> None:
        """A call ended here: remember how, for the after-stream hook."""
        self.outcomes[call_sid] = end_reason
        if self.peers is not None and end_reason not in TWILIO_ENDS:
            # relay closed the stream, so Twilio fetches the hook, which may ask this relay.
            self.expected_hooks[call_sid] = asyncio.get_running_loop().time() + HOOK_EXPECTED_S
        self.outcomes.move_to_end(call_sid)
        while len(self.outcomes) > MAX_OUTCOMES:
            self.outcomes.popitem(last=False)

    def verify_stream(self, start: twilio.Start, found: tuple[Credential, ...]) -> str | None:
        """Why a stream's ``start`` may not open an upstream (None: it may): its token must be the
        one our webhook issued for this call and account, and the handshake's signer must be
        allowed to act for the token's tenant."""
        params = start.custom_parameters
        tenant = params.get("tenant", "")
        return streamtoken.verify(
            self.stream_token_key,
            params.get("token", ""),
            tenant=tenant,
            agent=params.get("agent", ""),
            call_sid=start.call_sid,
            account_sid=start.account_sid,
            now=time.time(),
        ) or self.binding_problem(found, tenant, start.account_sid)

    # ------------------------------------------------------------------ calls

    def note_violation(self, kind: str) -> None:
        self.violations[kind] += 1

    @property
    def pacer(self) -> Pacer:
        if self._pacer is None:
            self._pacer = Pacer(period=self.settings.pacer_interval_ms / 1000)
        return self._pacer

    def live_calls(self) -> list[LiveCall]:
        """The calls in progress, for a scrape."""
        return [
            LiveCall(session.tenant_id, session.conversation.stats if session.conversation is not None else None)
            for session in self.live.values()
            if session.start is not None
        ]

    def note_upstream_outlived(self) -> None:
        self.upstreams_outlived += 1

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this relay should be given new calls, and each check's answer (``/readyz``)."""
        seen = self.backend_seen_at
        age = None if seen is None else asyncio.get_running_loop().time() - seen
        checks = {
            "draining": self.draining,
            "fastpath": fastpath.IMPLEMENTATION,
            "store_writable": self.store.writable,
            "backend_seen_s_ago": None if age is None else round(age, 1),
        }
        ready = (
            not self.draining
            and (fastpath.IMPLEMENTATION == "cython" or self.settings.allow_python_fastpath)
            and self.store.writable
            and age is not None
            and age <= BACKEND_WINDOW_S
        )
        return ready, {"ready": ready, **checks}

    def hand_off_calls(self) -> None:
        """Move every live call (and any that starts from now on) to another relay, through Twilio."""
        self.handing_off = True
        for session in self.live.values():
            session.hand_off()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "draining": self.draining,
            "fastpath": fastpath.IMPLEMENTATION,
            "instance": self.instance_id,
            "calls_active": len(self.sessions),
            "connections": self.connections,
            "refused_signatures": self.rejected_signatures,
            "refused_bindings": self.rejected_bindings,
            "malformed_webhooks": self.malformed_webhooks,
            "violations": dict(self.violations),
            "upstreams_open": self.upstreams_open,
            "upstreams_outlived": self.upstreams_outlived,
            "store": {"kind": self.store.kind, "dead_letters": self.store.dead_letters},
            "pacer": self.pacer.stats(),
        }

    def start_call(self, ws: Connection, found: tuple[Credential, ...] = ()) -> None:
        settings = self.settings
        session = CallSession(
            ws,
            connect_upstream=self.open_upstream,
            agent=self.agent,
            store=self.store,
            options=settings.call_options,
            pacer=self.pacer,
            upstream_max_session_s=settings.upstream_max_session_s,
            backend_ready_timeout_s=settings.backend_ready_timeout_ms / 1000,
            reconnect_give_up_s=settings.reconnect_give_up_s,
            start_timeout_s=settings.start_timeout_ms / 1000,
            resolve_agent=self.resolve_agent,
            prepare=self.outbound.prepare if self.outbound is not None else None,
            hooks=self.outbound,
            verify_start=lambda start: self.verify_stream(start, found),
            on_started=self.call_started,
            on_ended=self.note_outcome,
            on_upstream_outlived=self.note_upstream_outlived,
            on_turn_stored=self.ledger.turn_stored,
            prices=self.prices,
            tool_store=self.tool_store,
            tool_invoker=self.tools,
            on_transfer=self.transfer,
            redaction_for=self.redaction,
        )
        if self.handing_off:
            session.hand_off()  # a stream still reaching a relay that is handing its calls on
        task = asyncio.create_task(self._run_call(session))
        self.live[task] = session
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
            # The call's final counts join the ledger as it leaves the live set, in one step.
            task = asyncio.current_task()
            if task is not None:
                self.live.pop(task, None)
            if session.start is not None:
                conversation = session.conversation
                self.ledger.call_ended(
                    session.tenant_id,
                    session.end_reason,
                    conversation.stats if conversation else None,
                    conversation.usage if conversation else None,
                )
            if session.call_sid and session.end_reason != "stream_token_invalid":
                if self.peers is not None:
                    claim = self._claims.pop(session.call_sid, None)  # (a short call's end waits for it)
                    ended = _after(claim, self.peers.ended(session.call_sid))
                    self._in_background(ended, f"ending call {session.call_sid}")
                await self._admission_note(self.admission.ended, session.call_sid)

    async def _admission_note(self, note: Callable[[str], Awaitable[None]], call_sid: str) -> None:
        try:
            await note(call_sid)
        except Exception as exc:  # noqa: BLE001 - a slot not freed here expires on its own (relay.admission)
            log.warning("call %s: admission update failed (%s)", call_sid, type(exc).__name__)

    def call_started(self, call_sid: str) -> None:
        """A verified stream began: its admission slot is now held by a live call, and the
        other relays learn that requests about it come here."""
        self.expected_streams.pop(call_sid, None)
        task = asyncio.ensure_future(self._admission_note(self.admission.started, call_sid))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        session = self._session_of(call_sid)
        if self.peers is not None and session is not None:
            claim = self.peers.claim(call_sid, session.tenant_id)
            self._claims[call_sid] = self._in_background(claim, f"claiming call {call_sid}")


async def _after(first: asyncio.Future[None] | None, then: Awaitable[None]) -> None:
    if first is not None:
        await asyncio.gather(first, return_exceptions=True)
    await then


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests until it upgrades to a WebSocket."""

    def __init__(self, relay: Relay, *, metrics_only: bool = False, own_only: bool = False) -> None:
        self._relay = relay
        self._metrics_only = metrics_only  # the metrics port: /metrics and /healthz, nothing else
        self._own_only = own_only  # a worker's own socket: its metrics alone, for a sibling to sum
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._ws: Connection | None = None
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
            transport.abort()  # type: ignore[attr-defined]  # a TCP transport aborts

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
        self._head_bytes = max(self._head_bytes, 0)  # a new request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        length = self._header("content-length")
        if length is not None and (not length.strip().isdigit() or int(length.strip()[:12]) > self._body_limit()):
            # Refuse an oversized body now rather than after reading it all.
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request too large\n", keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) < MAX_HEADERS:
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        else:
            self._too_large = True

    def _body_limit(self) -> int:
        return MAX_API_BODY if self._url.startswith(API_PREFIX.encode()) else MAX_BODY

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._body_limit():
            self._too_large = True
        else:
            self._body += body

    def on_message_complete(self) -> None:
        if self._parser.should_upgrade():
            return  # handled when feed_data raises HttpParserUpgrade
        self._handle_request()

    # requests
    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = "text/plain",
        *,
        keep_alive: bool,
        head_only: bool = False,
    ) -> None:
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
            self._send(
                HTTPStatus.OK,
                orjson.dumps(self._relay.health()),
                "application/json",
                keep_alive=keep_alive,
                head_only=method == b"HEAD",
            )
        elif url.path == "/readyz" and method in (b"GET", b"HEAD"):
            ready, checks = self._relay.readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            body = orjson.dumps(checks)
            self._send(status, body, "application/json", keep_alive=keep_alive, head_only=method == b"HEAD")
        elif url.path == "/metrics" and method in (b"GET", b"HEAD"):
            self._metrics(keep_alive, head_only=method == b"HEAD")
        elif url.path == "/drain" and method == b"POST":
            self._drain(url.query, keep_alive)
        elif self._metrics_only:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", keep_alive=keep_alive)
        elif (url.path == twilio.STREAM_PATH and method in (b"POST", b"GET")) or (
            url.path in (twilio.AFTER_STREAM_PATH, twilio.STATUS_PATH, OUTBOUND_PATH, AMD_PATH, SMS_PATH)
            and method == b"POST"
        ):
            self._twilio_request(method, url.path, url.query, keep_alive)
        elif url.path in ("/v1/calls", "/v1/campaigns") or url.path.startswith(("/v1/jobs/", "/v1/campaigns/")):
            self._api(method, url.path, keep_alive)
        elif url.path == ERASURES_PATH:
            self._erase(method, keep_alive)
        elif url.path.startswith(CONTROL_PREFIX) and method == b"POST":
            self._control(url.path, keep_alive)
        elif url.path in ("/healthz", "/readyz", "/drain", twilio.STREAM_PATH, twilio.AFTER_STREAM_PATH) or (
            url.path == twilio.STATUS_PATH or url.path.startswith(CONTROL_PREFIX)
        ):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", keep_alive=keep_alive)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", keep_alive=keep_alive)

    def _control(self, path: str, keep_alive: bool) -> None:
        """The call control API: ``POST /v1/calls/{CallSid}/hangup``, with RELAY_API_TOKEN (the
        operator: any call) or a tenant's API key (that tenant's calls only)."""
        relay = self._relay
        token, outbound = relay.settings.api_token, relay.outbound
        if not token and outbound is None:
            self._send(HTTPStatus.FORBIDDEN, b"the call control API is off (RELAY_API_TOKEN)\n", keep_alive=keep_alive)
            return
        given = self._header("authorization") or ""
        operator = bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
        parts = path[len(CONTROL_PREFIX) :].split("/")
        if len(parts) != 2 or parts[1] not in CONTROL_ACTIONS:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", keep_alive=keep_alive)
            return
        call_sid, action = parts
        if not twilio.CALL_SID.fullmatch(call_sid):
            self._send(HTTPStatus.BAD_REQUEST, b"not a call sid\n", keep_alive=keep_alive)
            return
        args = self._control_args(action)
        if isinstance(args, str):
            self._send(HTTPStatus.BAD_REQUEST, orjson.dumps({"error": args}), "application/json", keep_alive=keep_alive)
            return

        async def answer() -> None:
            try:
                tenant = None if operator or outbound is None else await outbound.jobs.tenant_of(given)
                if not operator and tenant is None:
                    status, body = HTTPStatus.UNAUTHORIZED, {"error": "unauthorized"}
                else:
                    status, body = await relay.control(CONTROL_ACTIONS[action], call_sid, tenant, args)
            except Exception as exc:  # noqa: BLE001 - Postgres away: the caller may try again
                log.warning("control request for call %s failed (%s)", call_sid, type(exc).__name__)
                status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "try again"}
            self._send(status, orjson.dumps(body), "application/json", keep_alive=keep_alive)

        task = asyncio.ensure_future(answer())
        self._relay.background.add(task)
        task.add_done_callback(self._relay.background.discard)

    def _control_args(self, action: str) -> dict[str, str] | str:
        """A control request's body as the request's args; a string says what is wrong with it.
        ``say``: ``{"text"}``; ``transfer``: ``{"to", "text"?}`` (what the agent says first)."""
        if action == "hangup":
            return {}
        try:
            body = orjson.loads(bytes(self._body) or b"{}")
        except orjson.JSONDecodeError:
            body = None
        body = body if isinstance(body, dict) else {}
        text = body.get("text", "" if action == "transfer" else None)
        if (
            not isinstance(text, str)
            or len(text) > MAX_SAY
            or not text.isprintable()
            or not (text.strip() or action != "say")
        ):
            return f'{action} takes "text": a line of at most {MAX_SAY} printable characters'
        if action == "say":
            return {"text": text.strip()}
        to = body.get("to")
        if not isinstance(to, str) or not twilio.dialable(to) or to.startswith(twilio.CONFERENCE):
            return 'transfer takes "to": an E.164 number or a sip: address'
        return {"to": to, "name": to, "line": text.strip() or TRANSFER_LINE}

    def _api(self, method: bytes, path: str, keep_alive: bool) -> None:
        """The outbound API (``relay.outbound.service``), with a tenant's API key."""
        outbound = self._relay.outbound
        if method not in (b"GET", b"POST") or (method == b"POST") != (path in ("/v1/calls", "/v1/campaigns")):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", keep_alive=keep_alive)
            return
        if outbound is None:
            self._send(HTTPStatus.NOT_FOUND, b"outbound calls are off\n", keep_alive=keep_alive)
            return
        authorization, raw = self._header("authorization"), bytes(self._body)

        async def answer() -> None:
            try:
                tenant = await outbound.jobs.tenant_of(authorization)
                if tenant is None:
                    status, body = HTTPStatus.UNAUTHORIZED, {"error": "a tenant's API key is required (Bearer)"}
                else:
                    try:
                        request = orjson.loads(raw) if method == b"POST" else None
                    except orjson.JSONDecodeError:
                        status, body = HTTPStatus.BAD_REQUEST, {"error": "the body must be JSON"}
                    else:
                        status, body = await outbound.jobs.api(tenant, method.decode(), path, request)
            except Exception as exc:  # noqa: BLE001 - the store is away: the client may try again
                log.warning("API request %s failed (%s)", path[:60], type(exc).__name__)
                status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "try again"}
            self._send(status, orjson.dumps(body), "application/json", keep_alive=keep_alive)

        task = asyncio.ensure_future(answer())
        self._relay.background.add(task)
        task.add_done_callback(self._relay.background.discard)

    def _erase(self, method: bytes, keep_alive: bool) -> None:
        """``POST /v1/erasures`` with a tenant's API key, ``{"caller": "+1555..."}``: the caller
        erased from the tenant's records here (the store, this relay's spool and dead letters);
        the answer says how many of each went."""
        relay, outbound = self._relay, self._relay.outbound
        if method != b"POST":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", keep_alive=keep_alive)
            return
        eraser = relay.eraser
        if eraser is None or outbound is None:
            self._send(HTTPStatus.NOT_FOUND, b"erasure is off\n", keep_alive=keep_alive)
            return
        authorization, raw = self._header("authorization"), bytes(self._body)

        async def answer() -> None:
            body: dict[str, object]
            try:
                tenant = await outbound.jobs.tenant_of(authorization)
                try:
                    request = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    request = None
                caller = request.get("caller") if isinstance(request, dict) else None
                if tenant is None:
                    status, body = HTTPStatus.UNAUTHORIZED, {"error": "a tenant's API key is required (Bearer)"}
                elif not isinstance(caller, str):
                    status, body = HTTPStatus.BAD_REQUEST, {"error": 'the body is {"caller": "+15551234567"}'}
                else:
                    erased = await erase(
                        eraser,
                        tenant,
                        caller,
                        by="api",
                        dead_letter_path=relay.store.dead_letter_path,
                        store=relay.store,
                    )
                    status, body = HTTPStatus.OK, {"erased": erased.as_dict()}
                    log.info("tenant %s: a caller was erased (%s)", tenant, erased.as_dict())
            except InputError as exc:
                status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the store is away: the client may try again
                log.warning("erasure failed (%s)", type(exc).__name__)
                status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "try again"}
            self._send(status, orjson.dumps(body), "application/json", keep_alive=keep_alive)

        task = asyncio.ensure_future(answer())
        relay.background.add(task)
        task.add_done_callback(relay.background.discard)

    def _drain(self, query: str, keep_alive: bool) -> None:
        """``relay drain``: only from this machine (a pod's preStop runs it beside the server)."""
        assert self._transport is not None
        peer = self._transport.get_extra_info("peername")
        if not (isinstance(peer, tuple) and is_loopback(str(peer[0]))):
            self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=keep_alive)
            return
        handoff = parse_qs(query).get("handoff", ["0"])[0] in ("1", "true", "yes")
        if self._relay.worker is not None:
            self._relay.worker.ask_supervisor(handoff)  # every worker drains, not just this one
        else:
            self._relay.drain_requests.put_nowait(handoff)
        self._send(HTTPStatus.ACCEPTED, b"draining\n", keep_alive=keep_alive)

    def _metrics(self, keep_alive: bool, *, head_only: bool) -> None:
        token = self._relay.settings.metrics_token
        if token:
            given = next((v for k, v in self._headers if k.lower() == "authorization"), "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self._send(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", keep_alive=keep_alive)
                return
        worker = self._relay.worker
        if worker is None or self._own_only:
            self._send(
                HTTPStatus.OK, render(self._relay), CONTENT_TYPE_LATEST, keep_alive=keep_alive, head_only=head_only
            )
            return
        # One of several workers: the scrape is all of theirs, summed.
        task = asyncio.ensure_future(self._merged_metrics(worker, keep_alive, head_only))
        self._relay.background.add(task)
        task.add_done_callback(self._relay.background.discard)

    async def _merged_metrics(self, worker: Worker, keep_alive: bool, head_only: bool) -> None:
        own = render(self._relay)
        body = merge([own, *await scrape_siblings(worker)])
        if self._transport is not None and not self._transport.is_closing():
            self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST, keep_alive=keep_alive, head_only=head_only)

    def _twilio_request(self, method: bytes, path: str, query: str, keep_alive: bool) -> None:
        """A request from Twilio (the voice webhook or the after-stream hook): a form body (POST)
        or the query string (GET), or a JSON body whose hash is in the query (bodySHA256).
        Unsigned, it is refused here; signed, it is answered in a task (it may need the store)."""
        relay = self._relay
        raw = bytes(self._body).decode("utf-8", "replace") if method == b"POST" else query
        signed_url = relay.settings.public_url.rstrip("/") + path + (f"?{query}" if query else "")
        # As twilio's validator decides: a bodySHA256 query parameter, even an empty one.
        is_json = method == b"POST" and "bodySHA256" in parse_qs(query)
        signed: dict[str, str] | str = (
            raw if is_json else (dict(parse_qsl(raw, keep_blank_values=True)) if method == b"POST" else {})
        )
        signature = self._header("x-twilio-signature")
        fields = dict(parse_qsl(query if is_json or method != b"POST" else raw, keep_blank_values=True))
        params: dict[str, str] | None = fields
        if is_json:
            try:
                body = orjson.loads(raw)
                fields.update({str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {})
            except orjson.JSONDecodeError:
                params = None  # answered 400 once the signature is known good
        found = relay.signers(signed_url, signed, signature)
        if not found and not relay.settings.skip_twilio_signature and relay.credential_source is None:
            relay.rejected_signatures += 1
            log.warning("Twilio request to %s refused: X-Twilio-Signature missing or wrong", path)
            self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=False)
            return
        task = asyncio.ensure_future(
            self._answer_twilio(
                path, dict(parse_qsl(query)), params, keep_alive, found, (signed_url, signed, signature)
            )
        )
        relay.background.add(task)
        task.add_done_callback(relay.background.discard)

    async def _answer_twilio(
        self,
        path: str,
        query: dict[str, str],
        params: dict[str, str] | None,
        keep_alive: bool,
        found: tuple[Credential, ...],
        signed: tuple[str, dict[str, str] | str, str | None],
    ) -> None:
        relay = self._relay
        if not found and not relay.settings.skip_twilio_signature:
            # Perhaps a tenant's token added since the last reload: reload once, then decide.
            await relay.refresh_credentials(min_age=1.0)
            found = relay.signers(*signed)
            if not found:
                relay.rejected_signatures += 1
                log.warning("Twilio request to %s refused: X-Twilio-Signature missing or wrong", path)
                self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", keep_alive=False)
                return
        if params is None:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", keep_alive=False)
            return
        try:
            if path == twilio.STREAM_PATH:
                status, text = await relay.webhook(params, found)
            elif path == twilio.STATUS_PATH:
                status, text = await relay.status_callback(query, params, found)
            elif path == SMS_PATH:
                status, text = await relay.sms_webhook(params, found)
            elif path in (OUTBOUND_PATH, AMD_PATH):
                status, text = await relay.outbound_request(path, query, params, found)
            else:
                status, text = await relay.after_stream(query, params, found)
        except Exception:  # e.g. the tenant directory is unreachable: Twilio retries or fails over
            log.exception("Twilio request to %s failed", path)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"try again\n", keep_alive=False)
            return
        if self._transport is not None and not self._transport.is_closing():
            if status == HTTPStatus.OK:
                self._send(status, text.encode(), "text/xml", keep_alive=keep_alive)
            else:
                self._send(status, text.encode(), keep_alive=False)

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
        # Who signed is kept: at ``start`` the stream's tenant must be one that signer may act for.
        relay = self._relay
        found = relay.signers(relay.settings.stream_url, {}, self._header("x-twilio-signature"))
        if not found and not relay.settings.skip_twilio_signature:
            relay.rejected_signatures += 1
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
        self._ws = Connection(
            self._transport,
            max_size=settings.max_message_bytes,
            max_rate=settings.max_messages_per_second,
            on_violation=self._relay.note_violation,
            slow_peer_s=settings.slow_peer_timeout_ms / 1000,
        )
        self._ws.on_lost = self._lost
        # From here on the transport feeds the WebSocket's compiled read loop directly.
        self._transport.set_protocol(self._ws)  # type: ignore[arg-type]  # WsCore is a protocol, not a subclass
        self._relay.start_call(self._ws, found)
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
        self._metrics_server: asyncio.base_events.Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._lag_sampler: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._own_server: asyncio.base_events.Server | None = None  # a worker's own metrics socket

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.relay.settings
        worker = self.relay.worker
        shared = worker is not None  # several workers take this port's connections (SO_REUSEPORT)
        self._server = await loop.create_server(
            lambda: HttpProtocol(self.relay), s.host, s.port, reuse_address=True, reuse_port=shared
        )
        if s.metrics_port:
            self._metrics_server = await loop.create_server(
                lambda: HttpProtocol(self.relay, metrics_only=True),
                s.host,
                s.metrics_port,
                reuse_address=True,
                reuse_port=shared,
            )
        if worker is not None:
            self._own_server = await loop.create_unix_server(
                lambda: HttpProtocol(self.relay, metrics_only=True, own_only=True), str(worker.socket_path())
            )
        self._lag_sampler = asyncio.create_task(self._sample_loop_lag(), name="loop-lag")
        self._prober = asyncio.create_task(self._probe_backend(), name="backend-probe")
        if self.relay.credential_source is not None:
            await self.relay.refresh_credentials()
            self._refresher = asyncio.create_task(self._refresh_credentials(), name="tenant-token-refresh")

    async def _sample_loop_lag(self) -> None:
        # How late the loop runs a timer: what every call's tick and read waits on, measured
        # off the frame path every LAG_SAMPLE_S.
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_SAMPLE_S
            await asyncio.sleep(LAG_SAMPLE_S)
            self.relay.loop_lag.observe(max(0.0, loop.time() - due) * 1000)

    async def _probe_backend(self) -> None:
        # Readiness wants the backend reached recently. Calls reaching it count; between them a
        # TCP connect to its host (no session, nothing billed) every BACKEND_PROBE_S.
        loop = asyncio.get_running_loop()
        settings = self.relay.settings
        parts = urlsplit(settings.backend_endpoint(settings.backend, settings.model_for(settings.backend))[0])
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
        while True:
            seen = self.relay.backend_seen_at
            if seen is None or loop.time() - seen > BACKEND_PROBE_S:
                try:
                    async with asyncio.timeout(2.0):
                        _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    self.relay.backend_seen_at = loop.time()
                except (OSError, TimeoutError) as exc:
                    log.warning("speech backend %s:%d unreachable (%s)", host, port, type(exc).__name__)
            await asyncio.sleep(BACKEND_PROBE_S)

    async def drain(self, timeout_s: float, handoff_wait_s: float = 60.0) -> None:
        """Serve on, not ready, until every call here has ended, then close.

        Webhooks and streams still arriving are served (a load balancer takes a while to see
        ``/readyz`` fail). When ``timeout_s`` passes, or ``relay drain --handoff`` asks, the calls
        still up are handed to other relays through Twilio, between turns; those that have not
        left ``handoff_wait_s`` later are ended.
        """
        relay = self.relay
        relay.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        log.info("draining: %d live call(s); hand-over in %.0f s", len(relay.sessions), timeout_s)
        handoff = asyncio.ensure_future(self._handoff_asked())
        try:
            while (relay.sessions or relay.awaiting_streams()) and not handoff.done() and loop.time() < deadline:
                await asyncio.wait(
                    [*relay.sessions, handoff],
                    timeout=min(1.0, deadline - loop.time()),  # and look again for streams on their way
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            handoff.cancel()
        if relay.sessions:
            log.info("draining: handing %d call(s) to other relays", len(relay.sessions))
            relay.hand_off_calls()
            last = loop.time() + handoff_wait_s
            while (relay.sessions or relay.awaiting_streams()) and loop.time() < last:
                if relay.sessions:
                    await asyncio.wait(set(relay.sessions), timeout=min(1.0, last - loop.time()))
                else:
                    await asyncio.sleep(0.1)
        await self.close(drain_timeout=0.0)

    async def _handoff_asked(self) -> None:
        while not await self.relay.drain_requests.get():
            pass

    async def _refresh_credentials(self) -> None:
        # A handshake cannot wait for the database, so it checks the tokens known here; a new
        # tenant token reaches every relay within TOKEN_REFRESH (its webhooks at once).
        while True:
            await asyncio.sleep(TOKEN_REFRESH)
            await self.relay.refresh_credentials()

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let live calls finish (bounded), then end the rest."""
        for task in (self._refresher, self._lag_sampler, self._prober):
            if task is not None:
                task.cancel()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._own_server is not None:
            self._own_server.close()
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
        await self.relay.tools.close()
