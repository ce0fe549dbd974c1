"""A protocol-exact simulated Twilio REST API for outbound calls and texts (BACKENDS §6).

``TwilioSim`` serves, on loopback, what the official ``twilio`` library (9.x) talks to once
``client.api.base_url`` points at it (§6.1): ``2010-04-01`` ``Calls.json`` (create), ``Calls/{sid}.json``
(fetch, update) and ``Messages.json`` (create; ``Messages/{sid}.json`` fetch), form-encoded, HTTP
Basic ``AccountSid:AuthToken``, answered with Twilio's JSON resources and Twilio's error JSON
(``code``, ``message``, ``more_info``, ``status``), which the library raises as
``TwilioRestException``. The connection is kept alive, as the library's ``requests`` session expects.

Behind the API the calls happen as at Twilio, on the event loop's clock:

* each account's calls wait in a FIFO and are placed at most ``cps`` a second (§6.8), the first at
  once; ``queue_time`` says how long one waited;
* a placed call is ``initiated``, ``ringing``, then what the phone at ``To`` does
  (``relay.sim.phones``): a ``Person`` or ``Voicemail`` answers, ``NoAnswer`` rings out
  (``no-answer`` after the phone's ring time or the call's ``Timeout``), ``Busy`` is ``busy``;
* status callbacks (§6.3) go to ``StatusCallback`` for the events of ``StatusCallbackEvent`` (only
  ``completed`` when none are given), each with its ``SequenceNumber``, signed as every Twilio webhook
  is (§6.5); a non-2xx answer is kept (Twilio logs 15003) and the call goes on. With
  ``reorder_callbacks`` they leave with small random delays, so they may arrive out of order;
* an answered call asks for its TwiML (``Url``, signed) or runs the inline ``Twiml``: ``<Say>``,
  ``<Pause>``, ``<Hangup>``, ``<Redirect>`` and ``<Connect><Stream>``, on which the phone talks
  (a ``Person`` is a ``TwilioCaller``; a ``Voicemail`` plays its greeting and beep and records);
  when the relay ends the stream the TwiML after ``</Connect>`` runs. ``<Dial>`` rings the people
  and joins the conference rooms of ``switchboard`` (``relay.sim.switchboard``) in real time: the
  phone hears who picks up (a ``Person`` into its ``CallResult``, which keeps ``talked_to``; a
  ``Voicemail`` records it), a ``Person`` says its ``join_line`` in a conference; then the
  ``action`` URL is told how it went (``DialCallStatus``, signed) and its TwiML runs, or the verbs
  after ``<Dial>`` do. The call completes when its TwiML is done, the dial included. ``<Play>``,
  ``<Gather>`` and the rest are noted in ``SimCall.unsupported`` and skipped;
* answering-machine detection (§6.4): asynchronous (``AsyncAmd=true``) posts ``AnsweredBy`` to
  ``AsyncAmdStatusCallback``; synchronous holds the answered call in silence until the verdict and
  adds ``AnsweredBy`` to the ``Url`` request. A ``Person`` is ``human`` ``Person.amd_ms`` after the
  answer (a fixed delay, whatever they say); a ``Voicemail`` is ``machine_start`` ``amd_ms`` after
  the answer (``Enable``) or ``machine_end_beep`` as the beep ends (``DetectMessageEnd``); a verdict
  later than ``MachineDetectionTimeout`` is ``unknown`` at the timeout;
* updating a call (§6.6): ``Status=canceled`` ends a queued or ringing call and leaves an answered
  one alone; ``Status=completed`` hangs up (an unanswered call ends ``canceled``); ``Twiml``/``Url``
  abandon the running TwiML (its stream gets ``stop`` and a close) and run the new one;
* texts (§6.7): ``queued``, ``sent``, ``delivered`` status callbacks, and a ``Person`` with an
  ``sms_reply`` answers: the simulator posts the inbound-message webhook of the Twilio number the
  text came from (``sms_webhooks``), signed with the account's token.

What happened is kept for tests: ``calls`` (``SimCall``: status history with loop times, every
webhook with its HTTP status, the AMD verdict, the person's ``CallResult`` or the machine's
recording), ``live_calls()``, ``max_live``, ``messages``, ``sms_replies``; ``wait_until()`` waits on
any of it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.utils
import functools
import hashlib
import hmac
import itertools
import logging
import math
import random
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httptools
import orjson
from twilio.request_validator import RequestValidator

from relay.audio_format import SAMPLE_RATE
from relay.sim import audio
from relay.sim.caller import CallResult, TwilioCaller, http_get, http_post, parse_connect_stream
from relay.sim.phones import Busy, MachineLine, MediaSide, NoAnswer, Person, Phone, Voicemail
from relay.sim.switchboard import Ear, Leg, Switchboard, parse_dial

__all__ = ["SimCall", "SimMessage", "SmsReply", "TwilioSim", "Webhook"]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
CALL_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
E164 = re.compile(r"\+[1-9]\d{1,14}")
PATH = re.compile(r"/2010-04-01/Accounts/(?P<account>[^/]+)/(?P<kind>Calls|Messages)(?:/(?P<sid>[^/.]+))?\.json")
DIAL_S = 0.1  # from initiated to ringing
WEBHOOK_TIMEOUT_S = 15.0  # Twilio gives up on a webhook after 15 s
TWIML_MAX = 4000  # characters of inline Twiml (error 32018)
BODY_MAX = 1600  # characters of a message body (error 21617)
SMS_STEPS = (("queued", 0.05), ("sent", 0.2), ("delivered", 0.3))  # each after the one before
# GSM 03.38 basic character set: a body of these alone is 7-bit (160 a segment, 153 when split)
GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


@dataclass
class Webhook:
    """One request Twilio made to the customer: a status or AMD callback, a TwiML fetch, an SMS."""

    # "status", "amd", "voice" (the call's Url), "redirect", "dial-action", "sms-status", "sms-inbound"
    kind: str
    url: str
    method: str
    params: dict[str, str]
    sent_at: float  # loop time
    http_status: int | None = None  # None: no answer yet, or none at all (connection failed, timed out)

    @property
    def sequence(self) -> int | None:
        """The callback's ``SequenceNumber``, if it has one."""
        value = self.params.get("SequenceNumber")
        return None if value is None else int(value)


@dataclass(eq=False)
class SimCall:
    """One outbound call as Twilio lived it. Times are the event loop's."""

    sid: str
    account_sid: str
    to: str
    from_: str
    created_at: float
    direction: str = "outbound-api"
    status: str = "queued"  # the Call resource's status
    history: list[tuple[str, float]] = field(default_factory=list)  # every status, "initiated" included
    callbacks: list[Webhook] = field(default_factory=list)  # status callbacks, as sent
    amd_callbacks: list[Webhook] = field(default_factory=list)
    requests: list[Webhook] = field(default_factory=list)  # TwiML fetched: the Url, <Redirect>s, <Dial action>s
    answered_by: str | None = None
    amd_at: float | None = None
    placed_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    queue_time_ms: int = 0
    duration_s: int | None = None
    sip_response_code: int | None = None
    result: CallResult | None = field(default=None, repr=False)  # a Person's side of the call
    recording: bytearray = field(default_factory=bytearray, repr=False)  # what a Voicemail recorded after its beep
    beep_end_at: float | None = None  # when a Voicemail's beep ended
    said: list[str] = field(default_factory=list)  # <Say> text Twilio spoke on the call
    streams: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (url, parameters) connected
    unsupported: list[str] = field(default_factory=list)  # TwiML verbs skipped
    errors: list[str] = field(default_factory=list)  # what Twilio's debugger would show

    @property
    def statuses(self) -> list[str]:
        return [status for status, _ in self.history]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def recording_text(self) -> str:
        """The words in the machine's recording (``audio.transcribe``); empty if it recorded nothing."""
        return audio.transcribe(self.recording) if self.recording else ""


@dataclass(eq=False)
class SimMessage:
    """One text, sent through the API (``outbound-api``) or a reply to one (``inbound``)."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    created_at: float
    direction: str = "outbound-api"
    status: str = "queued"
    messaging_service_sid: str | None = None
    num_segments: int = 1
    num_media: int = 0
    status_callback: str | None = None
    sent_at: float | None = None
    history: list[tuple[str, float]] = field(default_factory=list)
    callbacks: list[Webhook] = field(default_factory=list)


@dataclass
class SmsReply:
    """A person's reply, posted to the inbound-message webhook of the number they were texted from."""

    message_sid: str
    in_reply_to: str  # the text it answers
    from_: str  # the person
    to: str  # the Twilio number
    body: str
    url: str | None  # None: that number has no webhook
    http_status: int | None = None
    sent_at: float = 0.0


@dataclass(frozen=True)
class _Doc:
    """TwiML to run: fetched from ``url`` with ``method``, or inline."""

    url: str | None = None
    method: str = "POST"
    twiml: str | None = None


@dataclass(eq=False)
class _Run:
    """A call's moving parts, beside its public record."""

    call: SimCall
    token: str
    phone: Phone
    timeout_s: float
    status_callback: str | None
    status_callback_method: str
    events: frozenset[str]
    machine_detection: str | None
    async_amd: bool
    amd_callback: str | None
    amd_callback_method: str
    amd_timeout_s: float
    next_doc: _Doc | None  # TwiML to run next: the call's own, or what an update gave it
    placed: asyncio.Event = field(default_factory=asyncio.Event)
    seq: Iterator[int] = field(default_factory=itertools.count)
    life: asyncio.Task[None] | None = None
    twiml_task: asyncio.Task[None] | None = None
    end_as: str | None = None  # the REST API ended it: the terminal status to give it
    media: MediaSide | None = None
    machine: MachineLine | None = None
    hangup_at: float | None = None  # the phone hangs up by itself then (a machine done recording)
    phone_hung_up: bool = False
    outbox: collections.deque[dict[str, str]] = field(default_factory=collections.deque)
    sender: asyncio.Task[None] | None = None


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]


class _RequestReader:
    """httptools callbacks: the complete requests of one connection, in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[_Request] = collections.deque()
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        path = urlsplit(self._url.decode("latin-1")).path
        self.ready.append(_Request(method, path, self._headers, bytes(self._body), self.parser.should_keep_alive()))


def _error(status: int, code: int, message: str) -> _Reply:
    """Twilio's error JSON, which the library raises as ``TwilioRestException(status, …, code)``."""
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return _Reply(status, {"code": code, "message": message, "more_info": more_info, "status": status})


def _one(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _http_url(url: str | None) -> bool:
    parts = urlsplit(url or "")
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _formatted(number: str) -> str:
    """``+14155551212`` as Twilio formats it for people: ``(415) 555-1212``."""
    if len(number) == 12 and number.startswith("+1"):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _segments(body: str) -> int:
    """SMS segments: 160 GSM-7 characters in one, 153 each when split; 70 / 67 in UCS-2."""
    single, split = (160, 153) if set(body) <= GSM7 else (70, 67)
    return 1 if len(body) <= single else math.ceil(len(body) / split)


@functools.lru_cache(maxsize=64)
def _speech(text: str) -> bytes:
    return audio.speak(text)


class TwilioSim:
    """Twilio's REST API and its calls and texts, on loopback.

    Args:
        accounts: AccountSid -> auth token. Requests authenticate as ``AccountSid:token``.
        phones: E.164 number -> the phone there; other numbers get ``default_phone``.
        numbers: AccountSid -> the Twilio numbers it owns (a call's or text's ``From``).
        default_phone: the phone at every other number (``NoAnswer()`` if not given).
        cps: calls placed per second, per account.
        sms_webhooks: Twilio number -> the URL its inbound texts are POSTed to.
        reorder_callbacks: send each status callback after a random 0–200 ms, so that they may
            arrive out of ``SequenceNumber`` order.
        seed: for those delays.
        switchboard: who a ``<Dial>`` on a call can reach (an empty one if not given).
    """

    def __init__(
        self,
        accounts: Mapping[str, str],
        phones: Mapping[str, Phone] | None = None,
        *,
        numbers: Mapping[str, Iterable[str]] | None = None,
        default_phone: Phone | None = None,
        cps: float = 1.0,
        sms_webhooks: Mapping[str, str] | None = None,
        reorder_callbacks: bool = False,
        seed: int | None = None,
        switchboard: Switchboard | None = None,
    ) -> None:
        if cps <= 0:
            raise ValueError("cps must be positive")
        self.accounts = dict(accounts)
        self.phones = dict(phones or {})
        self.numbers = {account: list(owned) for account, owned in (numbers or {}).items()}
        self.default_phone: Phone = default_phone if default_phone is not None else NoAnswer()
        self.cps = cps
        self.sms_webhooks = dict(sms_webhooks or {})
        self.reorder_callbacks = reorder_callbacks
        self.switchboard = switchboard if switchboard is not None else Switchboard()
        self.calls: dict[str, SimCall] = {}
        self.messages: dict[str, SimMessage] = {}
        self.sms_replies: list[SmsReply] = []
        self.max_live: dict[str, int] = collections.defaultdict(int)
        self.refused_creates = 0  # call creates answered with an injected error
        self.port = 0
        self._random = random.Random(seed)
        self._runs: dict[str, _Run] = {}
        self._queues: dict[str, collections.deque[_Run]] = collections.defaultdict(collections.deque)
        self._pacers: dict[str, asyncio.Task[None]] = {}
        self._last_placed: dict[str, float] = {}
        self._live: dict[str, set[str]] = collections.defaultdict(set)
        self._refusals: list[tuple[int, int]] = []  # (HTTP status, code) for the next call creates
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoch = (0.0, 0.0)  # (loop time, wall time) at start: dates follow the loop's clock

    # ------------------------------------------------------------------ lifecycle and observation

    @property
    def url(self) -> str:
        """The base URL to give the library: ``client.api.base_url = sim.url``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1, on a free port."""
        self._loop = asyncio.get_running_loop()
        self._epoch = (self._loop.time(), time.time())
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, close every connection and end every call, mid-way if need be."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        while self._tasks:  # (a call ending as it is cancelled may still queue its last callback)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def fail_next_creates(self, n: int, status: int = 429, code: int = 20429) -> None:
        """Answer the next ``n`` call creates with this error, creating nothing (a 20429 is "safe to
        retry after backing off", BACKENDS §6.8). They are counted in ``refused_creates``."""
        self._refusals += [(status, code)] * n

    def live_calls(self, account_sid: str) -> list[SimCall]:
        """The account's calls that were initiated and have not ended."""
        return sorted((self.calls[sid] for sid in self._live[account_sid]), key=lambda call: call.created_at)

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Wait (on the loop's clock) until ``predicate()`` is true.

        Raises:
            TimeoutError: it was still false after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _date(self, at: float | None) -> str | None:
        """Loop time ``at`` as Twilio writes dates (RFC 2822): ``Thu, 12 Feb 2026 11:48:25 +0000``."""
        if at is None:
            return None
        loop0, wall0 = self._epoch
        moment = datetime.fromtimestamp(int(wall0 + at - loop0), UTC)
        return email.utils.format_datetime(moment)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulated Twilio: a call or callback failed", exc_info=task.exception())

    # ------------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests in order, kept alive as long as the client wants."""
        self._writers.add(writer)
        requests = _RequestReader()
        try:
            while data := await reader.read(65536):
                try:
                    requests.parser.feed_data(data)
                except httptools.HttpParserError:
                    writer.write(self._encode(_error(400, 20001, "Bad request"), keep_alive=False))
                    return
                while requests.ready:
                    request = requests.ready.popleft()
                    writer.write(self._encode(await self._respond(request), keep_alive=request.keep_alive))
                    await writer.drain()
                    if not request.keep_alive:
                        return
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _encode(reply: _Reply, *, keep_alive: bool) -> bytes:
        body = orjson.dumps(reply.body)
        head = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            f"Twilio-Request-Id: RQ{secrets.token_hex(16)}",
        ]
        if reply.status == 401:
            head.append('WWW-Authenticate: Basic realm="Twilio API"')
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def _respond(self, request: _Request) -> _Reply:
        match = PATH.fullmatch(request.path)
        if match is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        account, kind, sid = match["account"], match["kind"], match["sid"]
        if not self._authenticated(request, account):
            return _error(401, 20003, "Authenticate")
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        route = (kind, sid is None, request.method)
        try:
            if route == ("Calls", True, "POST"):
                return self._create_call(account, form)
            if route == ("Calls", False, "GET"):
                return self._fetch_call(account, sid, request.path)
            if route == ("Calls", False, "POST"):
                return await self._update_call(account, sid, form, request.path)
            if route == ("Messages", True, "POST"):
                return self._create_message(account, form)
            if route == ("Messages", False, "GET"):
                message = self.messages.get(sid or "")
                if message is None or message.account_sid != account:
                    return _error(404, 20404, f"The requested resource {request.path} was not found")
                return _Reply(200, self._message_json(message))
        except Exception:  # Twilio answers a failure of its own with a 500, and so does this
            log.exception("simulated Twilio failed on %s %s", request.method, request.path)
            return _error(500, 20500, "Internal Server Error")
        return _error(405, 20004, "Method not allowed")

    def _authenticated(self, request: _Request, account: str) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        token = self.accounts.get(account)
        return user == account and token is not None and hmac.compare_digest(password.encode(), token.encode())

    # ------------------------------------------------------------------ Calls resource

    def _create_call(self, account: str, form: dict[str, list[str]]) -> _Reply:
        if self._refusals:  # refused before anything is looked at: nothing is created
            status, code = self._refusals.pop(0)
            self.refused_creates += 1
            return _error(status, code, "Too Many Requests" if code == 20429 else HTTPStatus(status).phrase)
        to, from_ = _one(form, "To"), _one(form, "From")
        url, twiml = _one(form, "Url"), _one(form, "Twiml")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not E164.fullmatch(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if from_ not in self.numbers.get(account, ()):
            return _error(
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your account. You may only"
                " make calls from phone numbers that you've verified or purchased from Twilio.",
            )
        if not url and not twiml:
            return _error(400, 21205, "Url parameter is required.")
        if url and not _http_url(url):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        # "If both twiml and url are provided then twiml … will be ignored" (§6.2)
        if not url and twiml and len(twiml) > TWIML_MAX:
            return _error(400, 32018, "Twiml size exceeded maximum allowed value of 4000 characters")
        problem = self._call_options_problem(form)
        if problem is not None:
            return _error(400, 21200, problem)
        events = frozenset(e for value in form.get("StatusCallbackEvent", []) for e in value.split())
        now = self._now()
        call = SimCall("CA" + secrets.token_hex(16), account, to, from_, now, history=[("queued", now)])
        machine_detection = _one(form, "MachineDetection")
        run = _Run(
            call=call,
            token=self.accounts[account],
            phone=self.phones.get(to, self.default_phone),
            timeout_s=min(600, max(1, int(_one(form, "Timeout") or 60))),
            status_callback=_one(form, "StatusCallback"),
            status_callback_method=(_one(form, "StatusCallbackMethod") or "POST").upper(),
            events=events or frozenset({"completed"}),
            machine_detection=machine_detection,
            async_amd=(_one(form, "AsyncAmd") or "false").lower() == "true",
            amd_callback=_one(form, "AsyncAmdStatusCallback"),
            amd_callback_method=(_one(form, "AsyncAmdStatusCallbackMethod") or "POST").upper(),
            amd_timeout_s=min(59, max(3, int(_one(form, "MachineDetectionTimeout") or 30))),
            next_doc=_Doc(url=url, method=(_one(form, "Method") or "POST").upper()) if url else _Doc(twiml=twiml),
        )
        self.calls[call.sid] = call
        self._runs[call.sid] = run
        run.life = self._spawn(self._life(run))
        self._queues[account].append(run)
        pacer = self._pacers.get(account)
        if pacer is None or pacer.done():
            self._pacers[account] = self._spawn(self._pace(account))
        return _Reply(201, self._call_json(run))

    @staticmethod
    def _call_options_problem(form: dict[str, list[str]]) -> str | None:
        """What Twilio would refuse (21200) in the optional parameters of a create."""
        for name in ("Method", "StatusCallbackMethod", "AsyncAmdStatusCallbackMethod"):
            if (_one(form, name) or "POST").upper() not in ("GET", "POST"):
                return f"{name} must be GET or POST"
        for name in ("StatusCallback", "AsyncAmdStatusCallback"):
            if _one(form, name) is not None and not _http_url(_one(form, name)):
                return f"{name} is not a valid URL: {_one(form, name)}"
        events = {e for value in form.get("StatusCallbackEvent", []) for e in value.split()}
        if not events <= CALL_EVENTS:
            return f"StatusCallbackEvent {sorted(events - CALL_EVENTS)} is not one of {sorted(CALL_EVENTS)}"
        if _one(form, "MachineDetection") not in (None, *MACHINE_DETECTION):
            return f"MachineDetection must be one of {', '.join(MACHINE_DETECTION)}"
        if (_one(form, "AsyncAmd") or "false").lower() not in ("true", "false"):
            return "AsyncAmd must be true or false"
        for name in ("Timeout", "MachineDetectionTimeout"):
            if not (_one(form, name) or "1").isdigit():
                return f"{name} must be a whole number of seconds"
        return None

    def _fetch_call(self, account: str, sid: str | None, path: str) -> _Reply:
        run = self._runs.get(sid or "")
        if run is None or run.call.account_sid != account:
            return _error(404, 20404, f"The requested resource {path} was not found")
        return _Reply(200, self._call_json(run))

    async def _update_call(self, account: str, sid: str | None, form: dict[str, list[str]], path: str) -> _Reply:
        run = self._runs.get(sid or "")
        if run is None or run.call.account_sid != account:
            return _error(404, 20404, f"The requested resource {path} was not found")
        call = run.call
        status, url, twiml = _one(form, "Status"), _one(form, "Url"), _one(form, "Twiml")
        if status not in (None, "canceled", "completed"):
            return _error(400, 21200, f"Status must be canceled or completed, not {status}")
        if url and twiml:
            return _error(400, 21200, "Url and Twiml are mutually exclusive")
        if url and not _http_url(url):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        if twiml and len(twiml) > TWIML_MAX:
            return _error(400, 32018, "Twiml size exceeded maximum allowed value of 4000 characters")
        if (url or twiml) and call.terminal:
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if _one(form, "StatusCallback"):
            run.status_callback = _one(form, "StatusCallback")
            run.status_callback_method = (_one(form, "StatusCallbackMethod") or "POST").upper()
        answered = call.answered_at is not None
        if status == "completed" or (status == "canceled" and not answered):
            # Hanging up an unanswered call cancels it (§6.6); "canceled" leaves an answered one be.
            await self._end(run, "completed" if answered else "canceled")
        elif url or twiml:
            # The running TwiML is abandoned (its stream gets stop, then a close) and the new one
            # runs; a call not answered yet will run it when it is.
            run.next_doc = _Doc(url=url, method=(_one(form, "Method") or "POST").upper()) if url else _Doc(twiml=twiml)
            if run.twiml_task is not None and not run.twiml_task.done():
                run.twiml_task.cancel()
        return _Reply(200, self._call_json(run))

    async def _end(self, run: _Run, status: str) -> None:
        """End a call through the API, and wait (briefly) until it has ended."""
        if run.call.terminal or run.life is None:
            return
        if run.end_as is None:
            run.end_as = status
            run.life.cancel()
        await asyncio.wait({run.life}, timeout=5)

    def _call_json(self, run: _Run) -> dict[str, Any]:
        """The CallInstance resource, every field the library reads (twilio 9.x ``CallInstance``)."""
        call = run.call
        uri = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}"
        updated = max(at for _, at in call.history)
        sub = ("notifications", "recordings", "payments", "events", "siprec", "streams", "transcriptions")
        return {
            "account_sid": call.account_sid,
            "annotation": None,
            "answered_by": call.answered_by,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": self._date(call.created_at),
            "date_updated": self._date(updated),
            "direction": call.direction,
            "duration": None if call.duration_s is None else str(call.duration_s),
            "end_time": self._date(call.ended_at),
            "forwarded_from": None,
            "from": call.from_,
            "from_formatted": _formatted(call.from_),
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": "PN" + hashlib.sha256(call.from_.encode()).hexdigest()[:32],
            "price": None,
            "price_unit": "USD",
            "queue_time": str(call.queue_time_ms),
            "sid": call.sid,
            "start_time": self._date(call.placed_at),
            "status": call.status,
            "stir_verstat": None,
            "subresource_uris": {name: f"{uri}/{name.capitalize()}.json" for name in sub},
            "to": call.to,
            "to_formatted": _formatted(call.to),
            "trunk_sid": None,
            "uri": f"{uri}.json",
        }

    # ------------------------------------------------------------------ a call's life

    async def _pace(self, account: str) -> None:
        """Place the account's queued calls in order, at most ``cps`` a second (§6.8)."""
        queue = self._queues[account]
        while queue:
            run = queue.popleft()
            if run.call.terminal:  # canceled while queued: it takes no slot
                continue
            last = self._last_placed.get(account)
            if last is not None and (wait := last + 1 / self.cps - self._now()) > 0:
                await asyncio.sleep(wait)
            if run.call.status in TERMINAL:  # canceled while it waited
                continue
            self._last_placed[account] = self._now()
            run.placed.set()

    async def _life(self, run: _Run) -> None:
        try:
            await self._place_and_talk(run)
        except asyncio.CancelledError:
            if run.twiml_task is not None and not run.twiml_task.done():
                run.twiml_task.cancel()  # the phone's stream gets stop, then a close
                await asyncio.wait({run.twiml_task})
            if run.end_as is None:  # the simulator is stopping
                raise
            self._finish(run, run.end_as, sip=None if run.end_as == "completed" else 487)

    async def _place_and_talk(self, run: _Run) -> None:
        call, phone = run.call, run.phone
        await run.placed.wait()
        call.placed_at = self._now()
        call.queue_time_ms = round((call.placed_at - call.created_at) * 1000)
        self._set(run, "initiated", resource_status="queued")
        self._live[call.account_sid].add(call.sid)
        self.max_live[call.account_sid] = max(self.max_live[call.account_sid], len(self._live[call.account_sid]))
        self._event(run, "initiated", "initiated")
        await asyncio.sleep(DIAL_S)
        self._set(run, "ringing")
        self._event(run, "ringing", "ringing")
        if isinstance(phone, Busy):
            await asyncio.sleep(phone.after_s)
            self._finish(run, "busy", sip=486)
            return
        ring_s = phone.ring_s if isinstance(phone, NoAnswer) else phone.answer_after_s
        if isinstance(phone, NoAnswer) or ring_s > run.timeout_s:
            await asyncio.sleep(min(ring_s, run.timeout_s))
            self._finish(run, "no-answer", sip=487)
            return
        await asyncio.sleep(ring_s)
        self._answer(run, phone)
        if run.machine_detection is not None:
            verdict, after_ms = self._verdict(run)
            if run.async_amd:
                self._spawn(self._amd(run, verdict, after_ms))
            else:  # held in silence until the verdict, which then rides on the Url request (§6.4)
                assert call.answered_at is not None
                await asyncio.sleep(max(0.0, call.answered_at + after_ms / 1000 - self._now()))
                call.answered_by, call.amd_at = verdict, self._now()
        while run.next_doc is not None and not run.phone_hung_up:
            doc, run.next_doc = run.next_doc, None
            run.twiml_task = self._spawn(self._execute(run, doc))
            timeout = None if run.hangup_at is None else max(0.0, run.hangup_at - self._now())
            done, _ = await asyncio.wait({run.twiml_task}, timeout=timeout)
            if not done:  # the phone hangs up (a machine done recording): Twilio ends the stream
                run.twiml_task.cancel()
                await asyncio.wait({run.twiml_task})
                break
        run.twiml_task = None
        self._finish(run, "completed")

    def _answer(self, run: _Run, phone: Person | Voicemail) -> None:
        call = run.call
        call.answered_at = self._now()
        self._set(run, "in-progress")
        self._event(run, "answered", "in-progress")
        if isinstance(phone, Person):
            caller = TwilioCaller(
                "",
                phone.script,
                auth_token=run.token,
                from_number=call.from_,
                to_number=call.to,
                account_sid=call.account_sid,
                call_sid=call.sid,
                direction=call.direction,
            )
            call.result, run.media = caller.result, caller
        else:
            machine = MachineLine(
                phone,
                call_sid=call.sid,
                account_sid=call.account_sid,
                auth_token=run.token,
                answered_at=call.answered_at,
            )
            call.recording, call.beep_end_at = machine.recording, machine.beep_end_at
            run.media, run.machine, run.hangup_at = machine, machine, machine.hangup_at

    def _verdict(self, run: _Run) -> tuple[str, int]:
        """What AMD decides about the phone, and how long after the answer (ms)."""
        if run.machine is None:
            assert isinstance(run.phone, Person)
            verdict, after_ms = "human", run.phone.amd_ms
        elif run.machine_detection == "DetectMessageEnd":  # the verdict waits for the greeting's end
            verdict, after_ms = "machine_end_beep", run.machine.intro_ms
        else:
            verdict, after_ms = "machine_start", run.machine.machine.amd_ms
        if after_ms > run.amd_timeout_s * 1000:
            return "unknown", round(run.amd_timeout_s * 1000)
        return verdict, after_ms

    async def _amd(self, run: _Run, verdict: str, after_ms: int) -> None:
        """Asynchronous AMD: the verdict goes to ``AsyncAmdStatusCallback`` (§6.4)."""
        call = run.call
        assert call.answered_at is not None
        await asyncio.sleep(max(0.0, call.answered_at + after_ms / 1000 - self._now()))
        if call.terminal:
            return
        call.answered_by, call.amd_at = verdict, self._now()
        if not run.amd_callback:
            call.errors.append("21262 AMD enabled without AsyncAmdStatusCallback: the verdict is on the call only")
            return
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": verdict,
            "MachineDetectionDuration": str(after_ms),
        }
        hook = await self._send("amd", run.amd_callback, run.amd_callback_method, params, run.token, call.amd_callbacks)
        if hook.http_status is None or not 200 <= hook.http_status < 300:
            call.errors.append(f"15003 AMD callback {run.amd_callback} answered {hook.http_status}")

    def _set(self, run: _Run, status: str, *, resource_status: str | None = None) -> None:
        run.call.history.append((status, self._now()))
        run.call.status = resource_status or status

    def _finish(self, run: _Run, status: str, *, sip: int | None = None) -> None:
        call = run.call
        if call.terminal:
            return
        call.ended_at = self._now()
        self._set(run, status)
        self._live[call.account_sid].discard(call.sid)
        call.duration_s = math.ceil(call.ended_at - call.answered_at) if call.answered_at is not None else 0
        call.sip_response_code = sip
        extra = {"CallDuration": str(call.duration_s), "Duration": str(math.ceil(call.duration_s / 60))}
        if sip is not None:
            extra["SipResponseCode"] = str(sip)
        self._event(run, "completed", status, extra)

    def _call_params(self, run: _Run, status: str) -> dict[str, str]:
        """The parameters of every voice request Twilio makes for the call."""
        call = run.call
        params = {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": call.direction,
            "From": call.from_,
            "To": call.to,
        }
        if call.answered_by is not None and not run.async_amd:  # synchronous AMD (§6.3, §6.4)
            params["AnsweredBy"] = call.answered_by
        return params

    # ------------------------------------------------------------------ status callbacks

    def _event(self, run: _Run, event: str, status: str, extra: dict[str, str] | None = None) -> None:
        """Send a status callback for ``event``, if the call asked for it (§6.3)."""
        if event not in run.events or not run.status_callback:
            return
        params = self._call_params(run, status)
        params.update(
            CallbackSource="call-progress-events",
            SequenceNumber=str(next(run.seq)),
            Timestamp=self._date(self._now()) or "",
            **(extra or {}),
        )
        if self.reorder_callbacks:
            self._spawn(self._deliver(run, params, delay=self._random.uniform(0.0, 0.2)))
            return
        run.outbox.append(params)  # one at a time, in order
        if run.sender is None or run.sender.done():
            run.sender = self._spawn(self._send_outbox(run))

    async def _send_outbox(self, run: _Run) -> None:
        while run.outbox:
            await self._deliver(run, run.outbox.popleft())

    async def _deliver(self, run: _Run, params: dict[str, str], delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        url = run.status_callback
        assert url is not None
        hook = await self._send("status", url, run.status_callback_method, params, run.token, run.call.callbacks)
        if hook.http_status is None or not 200 <= hook.http_status < 300:
            run.call.errors.append(f"15003 status callback {url} answered {hook.http_status}")

    async def _send(
        self, kind: str, url: str, method: str, params: dict[str, str], token: str, into: list[Webhook]
    ) -> Webhook:
        """A signed webhook, as Twilio sends every one (§6.5); kept in ``into`` as it leaves."""
        hook = Webhook(kind, url, method, params, self._now())
        into.append(hook)
        await self._request(hook, token)
        return hook

    async def _request(self, hook: Webhook, token: str) -> bytes:
        """Make the request; fill in its status; return the body (empty if it failed)."""
        validator = RequestValidator(token)
        try:
            if hook.method == "GET":  # the params ride in the URL, and the signature covers them there
                full = hook.url + ("&" if "?" in hook.url else "?") + urlencode(hook.params)
                signature = validator.compute_signature(full, {})
                request = http_get(full, {"X-Twilio-Signature": signature})
            else:
                signature = validator.compute_signature(hook.url, hook.params)
                body = urlencode(hook.params).encode()
                request = http_post(hook.url, body, {"X-Twilio-Signature": signature})
            hook.http_status, answer = await asyncio.wait_for(request, WEBHOOK_TIMEOUT_S)
        except (OSError, ValueError, IndexError, EOFError, TimeoutError) as exc:
            log.debug("webhook %s %s failed: %s", hook.method, hook.url, exc)
            return b""
        return answer

    # ------------------------------------------------------------------ TwiML

    async def _execute(self, run: _Run, doc: _Doc) -> None:
        """Run one TwiML document on the answered call: fetched from its Url, or inline."""
        call = run.call
        if doc.url is not None:
            twiml = await self._fetch_twiml(run, "voice", doc.url, doc.method)
            if twiml is not None:
                await self._run_verbs(run, twiml, doc.url, 0)
        elif doc.twiml is not None:
            await self._run_verbs(run, doc.twiml, None, 0)
        else:
            call.errors.append("21205 no TwiML to run")

    async def _fetch_twiml(
        self, run: _Run, kind: str, url: str, method: str, extra: Mapping[str, str] | None = None
    ) -> str | None:
        call = run.call
        hook = Webhook(kind, url, method, {**self._call_params(run, "in-progress"), **(extra or {})}, self._now())
        call.requests.append(hook)
        body = await self._request(hook, run.token)
        if hook.http_status is None or not 200 <= hook.http_status < 300:
            # Twilio says "an application error has occurred" and hangs up
            call.errors.append(f"11200 HTTP retrieval failure: {url} answered {hook.http_status}")
            return None
        return body.decode("utf-8", "replace")

    async def _run_verbs(self, run: _Run, twiml: str, base_url: str | None, depth: int) -> None:
        """The verbs of a ``<Response>``, in order, until ``<Hangup>``, the end, or the phone hangs up."""
        call = run.call
        try:
            root = ET.fromstring(twiml)
        except ET.ParseError as exc:
            call.errors.append(f"12100 Document parse failure: {exc}")
            return
        if root.tag != "Response":
            call.errors.append(f"12100 Document parse failure: root <{root.tag}>, not <Response>")
            return
        for verb in root:
            if verb.tag == "Say":
                await self._say(run, (verb.text or "").strip())
            elif verb.tag == "Pause":
                length = verb.get("length", "1")
                await asyncio.sleep(int(length) if length.isdigit() else 1)
            elif verb.tag == "Hangup":
                return
            elif verb.tag == "Redirect":
                url = urljoin(base_url or "", (verb.text or "").strip())
                if depth >= 10 or not _http_url(url):
                    call.errors.append(f"<Redirect> to {url!r} not followed")
                    return
                twiml_next = await self._fetch_twiml(run, "redirect", url, verb.get("method", "POST").upper())
                if twiml_next is not None:
                    await self._run_verbs(run, twiml_next, url, depth + 1)
                return
            elif verb.tag == "Connect" and verb.find("Stream") is not None:
                document = ET.Element("Response")
                document.append(verb)
                try:
                    url, parameters = parse_connect_stream(ET.tostring(document, encoding="unicode"))
                except ValueError as exc:
                    call.errors.append(f"<Connect><Stream>: {exc}")
                    continue
                call.streams.append((url, parameters))
                assert run.media is not None
                if await run.media.stream(url, parameters):
                    run.phone_hung_up = True
                    return
            elif verb.tag == "Dial":
                if await self._dial(run, verb, base_url, depth):
                    return
            else:
                call.unsupported.append(f"<{verb.tag}>")

    async def _dial(self, run: _Run, verb: ET.Element, base_url: str | None, depth: int) -> bool:
        """Run a ``<Dial>`` for the call's phone, then its ``action``; True if the action's TwiML
        ran (the verbs after ``<Dial>`` are then unreachable, as at Twilio)."""
        call = run.call
        try:
            dial = parse_dial(verb)
        except ValueError as exc:
            call.errors.append(f"<Dial>: {exc}")
            return False
        call.unsupported += [f"<Dial>{noun}" for noun in dial.skipped]
        if not dial.targets:
            return False
        phone = run.phone
        if isinstance(phone, Person):
            leg = Leg(call.sid, self._ear(run), phone.join_line, phone.script.conference_stay_s)
        else:  # a machine says nothing, and is in a room until it hangs up
            stay_s = max(0.0, run.hangup_at - self._now()) if run.hangup_at is not None else 0.0
            leg = Leg(call.sid, self._ear(run), stay_s=stay_s)
        outcome = await self.switchboard.dial(dial, leg)
        if call.result is not None:
            call.result.note_dial(outcome)
        if dial.action is None:
            return False
        url = urljoin(base_url or "", dial.action)
        if not _http_url(url):
            call.errors.append(f"<Dial action={dial.action!r}> not requested: no absolute URL")
            return True
        twiml = await self._fetch_twiml(run, "dial-action", url, dial.method, outcome.action_params())
        if twiml is not None:
            await self._run_verbs(run, twiml, url, depth + 1)
        return True

    def _ear(self, run: _Run) -> Ear:
        """Where the call's phone hears what Twilio plays on the line: a person's playback, a
        machine's recording (as ``_say`` plays it)."""

        def hear(ulaw: bytes) -> None:
            if run.call.result is not None:
                run.call.result.playback.say(ulaw)
            if run.machine is not None:
                run.machine.hear(ulaw, self._now())

        return hear

    async def _say(self, run: _Run, text: str) -> None:
        """Twilio speaks ``text`` on the line: the phone hears it, for as long as it lasts."""
        run.call.said.append(text)
        speech = _speech(text)
        if run.call.result is not None:
            run.call.result.said_by_twilio.append(text)
            run.call.result.playback.say(speech)
        if run.machine is not None:
            run.machine.hear(speech, self._now())
        await asyncio.sleep(len(speech) / SAMPLE_RATE)

    # ------------------------------------------------------------------ Messages resource

    def _create_message(self, account: str, form: dict[str, list[str]]) -> _Reply:
        to, from_ = _one(form, "To"), _one(form, "From")
        service, body = _one(form, "MessagingServiceSid"), _one(form, "Body") or ""
        media = form.get("MediaUrl", [])
        owned = self.numbers.get(account, [])
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not E164.fullmatch(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not from_ and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if from_ and from_ not in owned:
            return _error(
                400,
                21606,
                f"The From phone number {from_} is not a valid, SMS-capable inbound phone number or short code"
                " for your account.",
            )
        if service and not re.fullmatch(r"MG[0-9a-fA-F]{32}", service):
            return _error(400, 21701, f"The Messaging Service Sid {service} is invalid.")
        if not body and not media:
            return _error(400, 21602, "Message body is required.")
        if len(body) > BODY_MAX:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sender = from_ or (owned[0] if owned else None)  # a Messaging Service sends from its pool
        if sender is None:
            return _error(400, 21603, "A 'From' phone number is required.")
        now = self._now()
        message = SimMessage(
            sid="SM" + secrets.token_hex(16),
            account_sid=account,
            to=to,
            from_=sender,
            body=body,
            created_at=now,
            messaging_service_sid=service,
            num_segments=_segments(body) if body else 1,
            num_media=len(media),
            status_callback=_one(form, "StatusCallback"),
            history=[("accepted" if service and not from_ else "queued", now)],
        )
        message.status = message.history[0][0]
        self.messages[message.sid] = message
        self._spawn(self._deliver_message(message))
        return _Reply(201, self._message_json(message))

    async def _deliver_message(self, message: SimMessage) -> None:
        """The text's way to the handset, its status callbacks, and the person's reply."""
        token = self.accounts[message.account_sid]
        for status, after_s in SMS_STEPS:
            await asyncio.sleep(after_s)
            message.status = status
            message.history.append((status, self._now()))
            if status == "sent":
                message.sent_at = self._now()
            if message.status_callback:
                params = {
                    "AccountSid": message.account_sid,
                    "ApiVersion": API_VERSION,
                    "From": message.from_,
                    "MessageSid": message.sid,
                    "MessageStatus": status,
                    "SmsSid": message.sid,
                    "SmsStatus": status,
                    "To": message.to,
                }
                if message.messaging_service_sid:
                    params["MessagingServiceSid"] = message.messaging_service_sid
                await self._send("sms-status", message.status_callback, "POST", params, token, message.callbacks)
        phone = self.phones.get(message.to, self.default_phone)
        if isinstance(phone, Person) and phone.sms_reply is not None:
            await asyncio.sleep(phone.sms_reply_after_s)
            await self._reply(message, phone.sms_reply, token)

    async def _reply(self, message: SimMessage, text: str, token: str) -> None:
        """The person texts back: Twilio posts it to the inbound webhook of the number they got the
        text from (§6.7)."""
        now = self._now()
        reply = SimMessage(
            sid="SM" + secrets.token_hex(16),
            account_sid=message.account_sid,
            to=message.from_,
            from_=message.to,
            body=text,
            created_at=now,
            direction="inbound",
            status="received",
            num_segments=_segments(text),
            history=[("received", now)],
        )
        self.messages[reply.sid] = reply
        url = self.sms_webhooks.get(reply.to)
        record = SmsReply(reply.sid, message.sid, reply.from_, reply.to, text, url, sent_at=now)
        self.sms_replies.append(record)
        if url is None:
            return
        params = {
            "AccountSid": reply.account_sid,
            "ApiVersion": API_VERSION,
            "Body": text,
            "From": reply.from_,
            "MessageSid": reply.sid,
            "NumMedia": "0",
            "NumSegments": str(reply.num_segments),
            "SmsMessageSid": reply.sid,
            "SmsSid": reply.sid,
            "SmsStatus": "received",
            "To": reply.to,
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        hook = await self._send("sms-inbound", url, "POST", params, token, reply.callbacks)
        record.http_status = hook.http_status

    def _message_json(self, message: SimMessage) -> dict[str, Any]:
        """The MessageInstance resource, every field the library reads (twilio 9.x ``MessageInstance``)."""
        uri = f"/{API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
        updated = max(at for _, at in message.history)
        return {
            "account_sid": message.account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": self._date(message.created_at),
            "date_sent": self._date(message.sent_at),
            "date_updated": self._date(updated),
            "direction": message.direction,
            "error_code": None,
            "error_message": None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": str(message.num_media),
            "num_segments": str(message.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": message.status,
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": message.to,
            "uri": f"{uri}.json",
        }
