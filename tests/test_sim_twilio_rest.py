"""The simulated Twilio REST API (BACKENDS §6), driven through the official ``twilio`` library.

The customer's side is real loopback servers: an HTTP endpoint that checks every webhook's
``X-Twilio-Signature`` with ``RequestValidator`` and answers TwiML (§6.3–§6.5, §6.7), and a
WebSocket server that takes the Media Streams the calls connect (§6.2, §6.6).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.sim import audio
from relay.sim.phones import Busy, NoAnswer, Person, Voicemail, beep
from relay.sim.twilio_rest import TwilioSim

ACCOUNT, TOKEN = "AC" + "1" * 32, "rest-sim-token-one"
OTHER, OTHER_TOKEN = "AC" + "2" * 32, "rest-sim-token-two"
TOKENS = {ACCOUNT: TOKEN, OTHER: OTHER_TOKEN}
TWILIO_A, TWILIO_B = "+15005550006", "+15005550007"  # the accounts' own numbers
PERSON, MACHINE, BUSY, SILENT, LATE = "+15551230001", "+15551230002", "+15551230003", "+15551230004", "+15551230005"
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
HANGUP = "<Response><Hangup/></Response>"
RFC2822 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000")


@dataclass
class Hit:
    """One webhook the customer's endpoint received."""

    method: str
    path: str
    params: dict[str, str]
    valid: bool  # X-Twilio-Signature checked with the account's token
    at: float


class Hooks:
    """The customer's HTTP endpoint: records signed webhooks, answers TwiML (``<Response/>`` by default)."""

    def __init__(self, tokens: Mapping[str, str] = TOKENS, default_token: str = "") -> None:
        """``tokens``: each account's auth token, which checks the signatures of its webhooks."""
        self.hits: list[Hit] = []
        self.twiml: dict[str, str] = {}
        self.port = 0
        self._tokens, self._default_token = tokens, default_token
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        url = self.url(target)
        params = dict(parse_qsl(body.decode(), keep_blank_values=True)) if method == "POST" else {}
        signed = params if method == "POST" else dict(parse_qsl(urlsplit(target).query))
        token = self._tokens.get(signed.get("AccountSid", ""), self._default_token)
        valid = RequestValidator(token).validate(url, params, headers.get("x-twilio-signature", ""))
        path = urlsplit(target).path
        self.hits.append(Hit(method, path, signed, valid, asyncio.get_running_loop().time()))
        answer = self.twiml.get(path, "<Response/>").encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        await writer.drain()
        writer.close()


@dataclass
class Conn:
    """One Media Stream the relay's side accepted."""

    ws: ServerConnection
    path: str
    signature_valid: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    marks: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def inbound_audio(self) -> bytes:
        return b"".join(base64.b64decode(e["media"]["payload"]) for e in self.events if e["event"] == "media")

    async def say(self, text: str) -> None:
        """Send ``text`` as speech (Twilio buffers it and plays it in real time), then a mark;
        return once the mark is echoed: the phone has heard it all."""
        speech = audio.speak(text)
        stream_sid = self.start["streamSid"]
        for at in range(0, len(speech), 160):
            payload = base64.b64encode(speech[at : at + 160].ljust(160, b"\xff")).decode()
            await self.ws.send(
                orjson.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}).decode()
            )
        await self.ws.send(orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "said"}}).decode())
        while "said" not in self.marks:
            await asyncio.sleep(0.02)


Behaviour = Callable[[Conn], Awaitable[None]]


class Streams:
    """The relay's side of Media Streams: ``behaviours[path]`` runs on each stream after ``start``;
    the stream stays open until the behaviour closes it or Twilio does."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.behaviours: dict[str, Behaviour] = {}
        self._server: Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        signature = ws.request.headers.get("X-Twilio-Signature", "") if ws.request is not None else ""
        valid = any(RequestValidator(token).validate(self.url(path), {}, signature) for token in TOKENS.values())
        conn = Conn(ws, path, valid)
        self.conns.append(conn)
        behaviour: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                event = orjson.loads(message)
                conn.events.append(event)
                if event["event"] == "start":
                    conn.start = event["start"]
                    conn.started.set()
                    if path in self.behaviours:
                        behaviour = asyncio.create_task(self.behaviours[path](conn))
                elif event["event"] == "mark":
                    conn.marks.append(event["mark"]["name"])
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()
            if behaviour is not None:
                behaviour.cancel()


@dataclass
class World:
    hooks: Hooks
    streams: Streams
    sims: list[TwilioSim] = field(default_factory=list)

    async def sim(self, **options: Any) -> TwilioSim:
        options.setdefault("numbers", {ACCOUNT: [TWILIO_A], OTHER: [TWILIO_B]})
        sim = TwilioSim(TOKENS, **options)
        await sim.start()
        self.sims.append(sim)
        return sim

    def connect(self, path: str) -> str:
        """TwiML that connects a stream to ``path`` with a correlation parameter (§6.2)."""
        url = self.streams.url(path)
        return f'<Connect><Stream url="{url}"><Parameter name="corr" value="T-1"/></Stream></Connect>'


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    # An edge or region in the environment rewrites the base URL's host (§6.1).
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    hooks, streams = Hooks(), Streams()
    await hooks.start()
    await streams.start()
    w = World(hooks, streams)
    yield w
    for sim in w.sims:
        await sim.stop()
    await streams.stop()
    await hooks.stop()


def client(sim: TwilioSim, account: str = ACCOUNT, token: str = TOKEN) -> Client:
    c = Client(account, token)
    c.api.base_url = sim.url
    return c


async def refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> TwilioRestException:
    """What the library raises for a request the API refuses."""
    with pytest.raises(TwilioRestException) as info:
        await asyncio.to_thread(call, *args, **kwargs)
    return info.value


def by_sequence(hits: list[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda hit: int(hit.params["SequenceNumber"]))


async def reply_and_close(conn: Conn) -> None:
    """The relay answers the person's "Hello?" and ends the stream."""
    await asyncio.sleep(1.2)
    await conn.say("Hi, this is the clinic calling.")
    await conn.ws.close()


async def stay(conn: Conn) -> None:
    """The relay says nothing and keeps the stream open."""


# ---------------------------------------------------------------------- the Calls resource


async def test_create_fetch_and_cancel_through_the_library(world: World) -> None:
    """§6.1/§6.2: a CallInstance the library maps field by field; §6.6: canceling a ringing and a
    queued call; §6.8: the second call waits in the queue."""
    sim = await world.sim(phones={SILENT: NoAnswer(ring_s=30)}, cps=0.5)
    c = client(sim)
    status = world.hooks.url("/status")
    first = await asyncio.to_thread(
        c.calls.create,
        to=SILENT,
        from_=TWILIO_A,
        twiml=HANGUP,
        status_callback=status,
        status_callback_event=ALL_EVENTS,
    )
    queued = await asyncio.to_thread(c.calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP, status_callback=status)
    assert re.fullmatch(r"CA[0-9a-f]{32}", first.sid)
    assert (first.status, first.direction, first.api_version) == ("queued", "outbound-api", "2010-04-01")
    assert (first.account_sid, first.to, first._from) == (ACCOUNT, SILENT, TWILIO_A)
    assert (first.to_formatted, first.queue_time) == ("(555) 123-0004", "0")
    assert (first.start_time, first.end_time, first.duration, first.price, first.answered_by) == (None,) * 5
    assert first.date_created is not None and first.date_created.tzinfo is not None
    assert first.uri == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{first.sid}.json"

    # The queued call is canceled before it is placed: no initiated, one "completed" event.
    gone = await asyncio.to_thread(c.calls(queued.sid).update, status="canceled")
    assert gone.status == "canceled"
    assert sim.calls[queued.sid].statuses == ["queued", "canceled"]
    assert sim.calls[queued.sid].placed_at is None

    await sim.wait_until(lambda: sim.calls[first.sid].status == "ringing", 3)
    ringing = await asyncio.to_thread(c.calls(first.sid).fetch)
    assert ringing.status == "ringing" and ringing.start_time is not None
    canceled = await asyncio.to_thread(c.calls(first.sid).update, status="canceled")
    assert canceled.status == "canceled"
    fetched = await asyncio.to_thread(c.calls(first.sid).fetch)
    assert (fetched.status, fetched.duration) == ("canceled", "0") and fetched.end_time is not None

    await sim.wait_until(lambda: len(world.hooks.at("/status")) == 4, 3)
    hits = world.hooks.at("/status")
    assert all(hit.valid for hit in hits)
    mine = by_sequence([hit for hit in hits if hit.params["CallSid"] == first.sid])
    assert [hit.params["CallStatus"] for hit in mine] == ["initiated", "ringing", "canceled"]
    assert [hit.params["SequenceNumber"] for hit in mine] == ["0", "1", "2"]
    assert (mine[-1].params["SipResponseCode"], mine[-1].params["CallDuration"]) == ("487", "0")
    (other,) = [hit for hit in hits if hit.params["CallSid"] == queued.sid]
    assert (other.params["CallStatus"], other.params["SequenceNumber"]) == ("canceled", "0")
    assert sim.live_calls(ACCOUNT) == []


async def test_refusals_are_twilio_rest_exceptions(world: World) -> None:
    """§6.9: each refusal reaches the caller as ``TwilioRestException`` with Twilio's code and
    HTTP status, and creates nothing."""
    sim = await world.sim()
    c = client(sim)
    error = await refused(c.calls.create, to="5551234", from_=TWILIO_A, twiml=HANGUP)
    assert (error.code, error.status) == (21211, 400)
    assert "The 'To' number 5551234 is not a valid phone number." in error.msg
    error = await refused(c.calls.create, to=SILENT, from_="+15550009999", twiml=HANGUP)
    assert (error.code, error.status) == (21210, 400)
    error = await refused(c.calls.create, to=SILENT, from_=TWILIO_B, twiml=HANGUP)  # the other account's number
    assert (error.code, error.status) == (21210, 400)
    error = await refused(c.calls.create, to=SILENT, from_=TWILIO_A)
    assert (error.code, error.status) == (21205, 400)
    error = await refused(client(sim, ACCOUNT, "not-the-token").calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP)
    assert (error.code, error.status) == (20003, 401)
    error = await refused(client(sim, OTHER, TOKEN).calls.create, to=SILENT, from_=TWILIO_B, twiml=HANGUP)
    assert (error.code, error.status) == (20003, 401)
    error = await refused(c.calls("CA" + "0" * 32).fetch)
    assert (error.code, error.status) == (20404, 404)
    assert sim.calls == {}

    mine = await asyncio.to_thread(c.calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP)
    theirs = client(sim, OTHER, OTHER_TOKEN)
    error = await refused(theirs.calls(mine.sid).fetch)
    assert (error.code, error.status) == (20404, 404)
    error = await refused(theirs.calls(mine.sid).update, status="completed")
    assert (error.code, error.status) == (20404, 404)
    error = await refused(c.calls(mine.sid).update, url=world.hooks.url("/voice"), twiml=HANGUP)
    assert error.status == 400  # mutually exclusive on update (§6.6)
    assert list(sim.calls) == [mine.sid]


async def test_injected_429_creates_nothing(world: World) -> None:
    """§6.8: a 20429 is a refusal, not a call; the retry goes through."""
    sim = await world.sim()
    c = client(sim)
    sim.fail_next_creates(2)
    for _ in range(2):
        error = await refused(c.calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP)
        assert (error.code, error.status) == (20429, 429)
    assert sim.calls == {} and sim.refused_creates == 2
    call = await asyncio.to_thread(c.calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP)
    assert list(sim.calls) == [call.sid] and sim.refused_creates == 2


async def test_calls_are_placed_at_the_accounts_cps(world: World) -> None:
    """§6.8: one call a second per account, queued not refused; accounts do not share a queue."""
    sim = await world.sim(default_phone=NoAnswer(ring_s=0.3))
    a, b = client(sim), client(sim, OTHER, OTHER_TOKEN)
    ours = [
        await asyncio.to_thread(a.calls.create, to=f"+1555000{i:04d}", from_=TWILIO_A, twiml=HANGUP) for i in range(5)
    ]
    theirs = [
        await asyncio.to_thread(b.calls.create, to=f"+1555100{i:04d}", from_=TWILIO_B, twiml=HANGUP) for i in range(2)
    ]
    calls = [sim.calls[call.sid] for call in ours + theirs]
    await sim.wait_until(lambda: all(call.terminal for call in calls), 10)
    placed = [sim.calls[call.sid].placed_at or 0.0 for call in ours]
    first = sim.calls[ours[0].sid]
    assert placed[0] - first.created_at < 0.1  # the first at once
    assert all(later - earlier >= 0.999 for earlier, later in itertools.pairwise(placed))
    assert placed[-1] - placed[0] < 4.6
    b0, b1 = (sim.calls[call.sid] for call in theirs)
    assert (b0.placed_at or 0.0) - b0.created_at < 0.1  # not behind the other account's queue
    assert (b1.placed_at or 0.0) - (b0.placed_at or 0.0) >= 0.999
    last = await asyncio.to_thread(a.calls(ours[-1].sid).fetch)
    assert int(last.queue_time) >= 3900
    assert last.status == "no-answer"
    assert sim.max_live[ACCOUNT] == 1 and sim.max_live[OTHER] == 1


# ---------------------------------------------------------------------- call progress


async def test_answered_call_callbacks_stream_and_twiml_after_connect(world: World) -> None:
    """§6.3 order and fields of an answered call's callbacks, all signed (§6.5); the Url request;
    the person on the Media Stream; ``<Connect>`` continuing to the next verb when the relay
    closes the stream (§6.2)."""
    sim = await world.sim(phones={PERSON: Person(answer_after_s=0.5)})
    c = client(sim)
    world.streams.behaviours["/reply"] = reply_and_close
    world.hooks.twiml["/voice"] = f"<Response>{world.connect('/reply')}<Say>Goodbye</Say><Hangup/></Response>"
    call = await asyncio.to_thread(
        c.calls.create,
        to=PERSON,
        from_=TWILIO_A,
        url=world.hooks.url("/voice?tenant=acme"),
        status_callback=world.hooks.url("/status?leg=1"),
        status_callback_event=ALL_EVENTS,
    )
    sim_call = sim.calls[call.sid]
    await sim.wait_until(lambda: sim_call.terminal, 15)
    await sim.wait_until(lambda: len(world.hooks.at("/status")) == 4, 3)

    hits = world.hooks.at("/status")
    assert all(hit.valid for hit in hits)
    assert [hit.params["CallStatus"] for hit in hits] == ["initiated", "ringing", "in-progress", "completed"]
    assert [hit.params["SequenceNumber"] for hit in hits] == ["0", "1", "2", "3"]
    for hit in hits:
        assert hit.params["CallSid"] == call.sid and hit.params["AccountSid"] == ACCOUNT
        assert (hit.params["From"], hit.params["Caller"], hit.params["To"], hit.params["Called"]) == (
            TWILIO_A,
            TWILIO_A,
            PERSON,
            PERSON,
        )
        assert (hit.params["Direction"], hit.params["ApiVersion"]) == ("outbound-api", "2010-04-01")
        assert hit.params["CallbackSource"] == "call-progress-events"
        assert RFC2822.fullmatch(hit.params["Timestamp"])
    assert "CallDuration" not in hits[2].params and "SipResponseCode" not in hits[3].params
    assert hits[3].params["CallDuration"] == str(sim_call.duration_s) and hits[3].params["Duration"] == "1"

    (voice,) = world.hooks.at("/voice")
    assert voice.valid and voice.method == "POST"
    assert (voice.params["CallStatus"], voice.params["Direction"], voice.params["CallSid"]) == (
        "in-progress",
        "outbound-api",
        call.sid,
    )
    assert "AnsweredBy" not in voice.params

    (conn,) = world.streams.conns
    assert conn.signature_valid
    assert (conn.start["callSid"], conn.start["accountSid"]) == (call.sid, ACCOUNT)
    assert conn.start["customParameters"] == {"corr": "T-1"}
    assert audio.transcribe(conn.inbound_audio()) == "Hello?"  # the person spoke first
    assert sim_call.result is not None
    assert [(turn.said, turn.heard) for turn in sim_call.result.turns] == [
        ("Hello?", "Hi, this is the clinic calling.")
    ]
    assert sim_call.said == ["Goodbye"] and sim_call.result.said_by_twilio == ["Goodbye"]
    assert sim_call.statuses == ["queued", "initiated", "ringing", "in-progress", "completed"]

    fetched = await asyncio.to_thread(c.calls(call.sid).fetch)
    assert (fetched.status, fetched.duration, fetched.answered_by) == ("completed", str(sim_call.duration_s), None)
    assert fetched.end_time is not None and int(fetched.duration) >= 2


async def test_busy_no_answer_and_timeout(world: World) -> None:
    """§6.3: busy (SIP 486), no-answer after the ring time or the call's Timeout, and only the
    terminal callback when no events are asked for; callbacks sent out of order carry their
    SequenceNumber."""
    phones = {BUSY: Busy(), SILENT: NoAnswer(ring_s=0.5), LATE: Person(answer_after_s=30)}
    sim = await world.sim(phones=phones, cps=10, reorder_callbacks=True, seed=7)
    c = client(sim)
    options = {"from_": TWILIO_A, "twiml": HANGUP}
    busy = await asyncio.to_thread(
        c.calls.create, to=BUSY, status_callback=world.hooks.url("/busy"), status_callback_event=ALL_EVENTS, **options
    )
    silent = await asyncio.to_thread(
        c.calls.create,
        to=SILENT,
        status_callback=world.hooks.url("/silent"),
        status_callback_event=ALL_EVENTS,
        **options,
    )
    late = await asyncio.to_thread(
        c.calls.create, to=LATE, status_callback=world.hooks.url("/late"), timeout=1, **options
    )
    await sim.wait_until(lambda: len(world.hooks.hits) == 7, 5)
    assert all(hit.valid for hit in world.hooks.hits)

    hits = by_sequence(world.hooks.at("/busy"))
    assert [hit.params["CallStatus"] for hit in hits] == ["initiated", "ringing", "busy"]
    assert (hits[-1].params["SipResponseCode"], hits[-1].params["CallDuration"]) == ("486", "0")
    hits = by_sequence(world.hooks.at("/silent"))
    assert [hit.params["CallStatus"] for hit in hits] == ["initiated", "ringing", "no-answer"]
    (hit,) = world.hooks.at("/late")  # no StatusCallbackEvent: only the end
    assert (hit.params["CallStatus"], hit.params["SequenceNumber"]) == ("no-answer", "0")

    def rang(sid: str) -> float:
        history = dict(sim.calls[sid].history)
        return history["no-answer"] - history["ringing"]

    assert 0.45 <= rang(silent.sid) < 1.0  # the phone's ring time
    assert 0.95 <= rang(late.sid) < 1.6  # the call's Timeout, shorter than the person takes
    assert sim.calls[busy.sid].status == "busy" and sim.calls[busy.sid].answered_at is None


# ---------------------------------------------------------------------- answering-machine detection


async def test_async_amd_says_human_and_hang_up_stops_the_stream(world: World) -> None:
    """§6.4 async AMD: the stream starts at once and ``human`` comes to the AMD callback; §6.6
    ``Status=completed`` on a live stream: the relay's WebSocket gets ``stop``, then a close."""
    sim = await world.sim(phones={PERSON: Person(answer_after_s=0.3)})
    c = client(sim)
    world.streams.behaviours["/stay"] = stay
    call = await asyncio.to_thread(
        c.calls.create,
        to=PERSON,
        from_=TWILIO_A,
        twiml=f"<Response>{world.connect('/stay')}<Say>Never said</Say></Response>",
        status_callback=world.hooks.url("/status"),
        machine_detection="Enable",
        async_amd="true",
        async_amd_status_callback=world.hooks.url("/amd"),
    )
    sim_call = sim.calls[call.sid]
    await sim.wait_until(lambda: world.hooks.at("/amd"), 6)
    (amd,) = world.hooks.at("/amd")
    assert amd.valid
    assert amd.params == {
        "AccountSid": ACCOUNT,
        "CallSid": call.sid,
        "AnsweredBy": "human",
        "MachineDetectionDuration": "1500",
    }
    assert sim_call.answered_at is not None and 1.5 <= amd.at - sim_call.answered_at < 2.5
    (conn,) = world.streams.conns
    assert conn.started.is_set() and not conn.closed.is_set()
    assert (await asyncio.to_thread(c.calls(call.sid).fetch)).answered_by == "human"

    hung_up = await asyncio.to_thread(c.calls(call.sid).update, status="completed")
    assert hung_up.status == "completed"
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.events[-1]["event"] == "stop"
    assert conn.events[-1]["stop"] == {"accountSid": ACCOUNT, "callSid": call.sid}
    assert sim_call.said == []  # hung up: the TwiML after </Connect> does not run
    await sim.wait_until(lambda: world.hooks.at("/status"), 3)
    (done,) = world.hooks.at("/status")
    assert done.params["CallStatus"] == "completed" and "SipResponseCode" not in done.params


async def test_async_amd_voicemail_beep_then_records_the_message(world: World) -> None:
    """§6.4 ``DetectMessageEnd``: ``machine_end_beep`` once the beep is over; the machine records
    what the relay plays after it."""
    machine = Voicemail(greeting="Leave a message.", beep_ms=500, record_ms=4000, answer_after_s=0.3)
    sim = await world.sim(phones={MACHINE: machine})
    c = client(sim)

    async def leave_message(conn: Conn) -> None:
        while not world.hooks.at("/amd"):  # the relay waits for the verdict
            await asyncio.sleep(0.02)
        await conn.say("Please call us back tomorrow")
        await conn.ws.close()

    world.streams.behaviours["/vm"] = leave_message
    call = await asyncio.to_thread(
        c.calls.create,
        to=MACHINE,
        from_=TWILIO_A,
        twiml=f"<Response>{world.connect('/vm')}<Hangup/></Response>",
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=world.hooks.url("/amd"),
    )
    sim_call = sim.calls[call.sid]
    await sim.wait_until(lambda: sim_call.terminal, 12)

    (amd,) = world.hooks.at("/amd")
    intro_ms = (len(audio.speak("Leave a message.")) + 4000) * 1000 // 8000
    assert (amd.params["AnsweredBy"], amd.params["MachineDetectionDuration"]) == ("machine_end_beep", str(intro_ms))
    assert sim_call.beep_end_at is not None and amd.at >= sim_call.beep_end_at
    (conn,) = world.streams.conns
    assert audio.transcribe(conn.inbound_audio()) == "Leave a message."  # the greeting; the beep holds no words
    assert audio.words_heard(beep(500)) == []
    assert sim_call.recording_text == "Please call us back tomorrow"
    assert (sim_call.status, sim_call.answered_by) == ("completed", "machine_end_beep")


async def test_sync_amd_holds_the_call_and_adds_answered_by(world: World) -> None:
    """§6.4 sync AMD: the Url is asked for once the verdict is in, with ``AnsweredBy``; a machine
    records a ``<Say>`` after its beep and hangs up when its recording time is over."""
    machine = Voicemail(greeting="Leave a message.", record_ms=2500, answer_after_s=0.3)
    sim = await world.sim(phones={PERSON: Person(answer_after_s=0.3), MACHINE: machine}, cps=10)
    c = client(sim)
    world.hooks.twiml["/human"] = "<Response><Say>Hello there</Say><Hangup/></Response>"
    world.hooks.twiml["/machine"] = '<Response><Say>Your table is booked</Say><Pause length="20"/></Response>'
    options = {"from_": TWILIO_A, "async_amd": "false"}
    human = await asyncio.to_thread(
        c.calls.create, to=PERSON, url=world.hooks.url("/human"), machine_detection="Enable", **options
    )
    voicemail = await asyncio.to_thread(
        c.calls.create, to=MACHINE, url=world.hooks.url("/machine"), machine_detection="DetectMessageEnd", **options
    )
    person_call, machine_call = sim.calls[human.sid], sim.calls[voicemail.sid]
    await sim.wait_until(lambda: person_call.terminal and machine_call.terminal, 12)

    (request,) = world.hooks.at("/human")
    assert request.valid and request.params["AnsweredBy"] == "human"
    assert person_call.answered_at is not None and request.at - person_call.answered_at >= 1.5
    (request,) = world.hooks.at("/machine")
    assert request.valid and request.params["AnsweredBy"] == "machine_end_beep"
    assert machine_call.beep_end_at is not None and request.at >= machine_call.beep_end_at
    assert machine_call.recording_text == "Your table is booked"
    assert machine_call.ended_at is not None
    assert machine_call.ended_at - machine_call.beep_end_at == pytest.approx(2.5, abs=0.3)  # not the 20 s pause
    assert world.hooks.at("/amd") == []


# ---------------------------------------------------------------------- updating a live call


async def test_update_with_twiml_abandons_the_stream(world: World) -> None:
    """§6.6: new TwiML on a live call: the stream gets ``stop`` and a close, the new TwiML runs,
    and what followed ``</Connect>`` does not; a finished call cannot be redirected."""
    sim = await world.sim(phones={PERSON: Person(answer_after_s=0.3)})
    c = client(sim)
    world.streams.behaviours["/stay"] = stay
    call = await asyncio.to_thread(
        c.calls.create,
        to=PERSON,
        from_=TWILIO_A,
        twiml=f"<Response>{world.connect('/stay')}<Say>Not this</Say></Response>",
    )
    await sim.wait_until(lambda: world.streams.conns and world.streams.conns[0].started.is_set(), 5)
    (conn,) = world.streams.conns
    moved = await asyncio.to_thread(
        c.calls(call.sid).update, twiml="<Response><Say>Transferring you now</Say><Hangup/></Response>"
    )
    assert moved.status == "in-progress"
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.events[-1]["event"] == "stop"
    sim_call = sim.calls[call.sid]
    await sim.wait_until(lambda: sim_call.terminal, 5)
    assert sim_call.status == "completed"
    assert sim_call.said == ["Transferring you now"]
    assert sim_call.result is not None and sim_call.result.said_by_twilio == ["Transferring you now"]
    error = await refused(c.calls(call.sid).update, twiml=HANGUP)
    assert (error.code, error.status) == (21220, 400)


# ---------------------------------------------------------------------- Messages


async def test_message_status_callbacks_and_a_signed_reply(world: World) -> None:
    """§6.7: a MessageInstance, queued → sent → delivered callbacks, and the person's YES posted,
    signed, to the inbound webhook of the number the text came from."""
    phones = {PERSON: Person(sms_reply="YES", sms_reply_after_s=0.2)}
    sim = await world.sim(phones=phones, sms_webhooks={TWILIO_A: world.hooks.url("/sms")})
    c = client(sim)
    message = await asyncio.to_thread(
        c.messages.create,
        to=PERSON,
        from_=TWILIO_A,
        body="Reply YES to confirm your table.",
        status_callback=world.hooks.url("/sms-status"),
    )
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.direction, message.num_segments) == ("queued", "outbound-api", "1")
    assert (message.from_, message.to, message.body) == (TWILIO_A, PERSON, "Reply YES to confirm your table.")
    await sim.wait_until(lambda: sim.sms_replies and sim.sms_replies[0].http_status is not None, 5)

    statuses = world.hooks.at("/sms-status")
    assert [hit.params["MessageStatus"] for hit in statuses] == ["queued", "sent", "delivered"]
    for hit in statuses:
        assert hit.valid
        assert (hit.params["MessageSid"], hit.params["SmsSid"], hit.params["SmsStatus"]) == (
            message.sid,
            message.sid,
            hit.params["MessageStatus"],
        )
        assert (hit.params["AccountSid"], hit.params["From"], hit.params["To"]) == (ACCOUNT, TWILIO_A, PERSON)
        assert hit.params["ApiVersion"] == "2010-04-01"
    (reply,) = world.hooks.at("/sms")
    assert reply.valid
    assert (reply.params["From"], reply.params["To"], reply.params["Body"]) == (PERSON, TWILIO_A, "YES")
    assert reply.params["MessageSid"] == reply.params["SmsSid"] == reply.params["SmsMessageSid"] != message.sid
    assert (reply.params["NumMedia"], reply.params["NumSegments"], reply.params["AccountSid"]) == ("0", "1", ACCOUNT)
    assert sim.sms_replies[0].http_status == 200 and sim.sms_replies[0].in_reply_to == message.sid
    assert sim.messages[message.sid].status == "delivered"
    fetched = await asyncio.to_thread(c.messages(message.sid).fetch)
    assert fetched.status == "delivered" and fetched.date_sent is not None

    error = await refused(c.messages.create, to=PERSON, from_=TWILIO_A)
    assert (error.code, error.status) == (21602, 400)
    error = await refused(c.messages.create, to=PERSON, from_=TWILIO_A, body="x" * 1601)
    assert (error.code, error.status) == (21617, 400)
    error = await refused(c.messages.create, to=PERSON, from_=TWILIO_B, body="Hi")
    assert (error.code, error.status) == (21606, 400)


async def test_the_library_keeps_its_connection(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """§6.1: the library's ``requests`` session sends every request on one kept-alive connection."""
    sim = await world.sim(cps=100)
    c = client(sim)
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        for _ in range(3):
            call = await asyncio.to_thread(c.calls.create, to=SILENT, from_=TWILIO_A, twiml=HANGUP)
            await asyncio.to_thread(c.calls(call.sid).fetch)
    assert sum("Starting new HTTP connection" in record.getMessage() for record in caplog.records) == 1
