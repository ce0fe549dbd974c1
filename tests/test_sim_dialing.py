"""``<Dial>`` in both simulators: to people at numbers and SIP addresses, and into conference rooms.

The caller (``TwilioCaller``) dials after relay closes its stream; the REST simulator
(``TwilioSim``) dials on a call it placed; both through a ``Switchboard``. The customer's side is
a loopback HTTP endpoint that checks each request's ``X-Twilio-Signature`` and answers TwiML, and,
for the whole call, a WebSocket server that takes the stream and closes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest
from twilio.rest import Client
from websockets.asyncio.server import ServerConnection, serve

from relay.sim import audio
from relay.sim.caller import CallerScript, TwilioCaller
from relay.sim.phones import PERSON_SCRIPT, Person
from relay.sim.switchboard import (
    UNKNOWN_RING_S,
    Dial,
    DialRecord,
    DialTarget,
    Reachable,
    Switchboard,
    parse_dial,
)
from relay.sim.twilio_rest import TwilioSim
from tests.test_sim_twilio_rest import Hooks

ACCOUNT, TOKEN = "AC" + "3" * 32, "dial-sim-token"
CALLER_TOKEN = "sim-auth-token"  # TwilioCaller's default
TWILIO_NUMBER, BEA = "+15550100000", "+15550100002"
ALEX, ALEX_SIP = "+15550100001", "sip:alex@pbx.example.com"
FRONT_DESK = "Front desk, this is Alex."
SID = re.compile(r"CA[0-9a-f]{32}")


def dial(twiml: str) -> Dial:
    return parse_dial(ET.fromstring(twiml))


def verbs(twiml: str) -> list[ET.Element]:
    return list(ET.fromstring(twiml))


def words(ulaw: bytes | bytearray) -> str:
    return " ".join(word for _, word in audio.words_heard(ulaw))


def seconds(text: str) -> float:
    """How long ``text`` takes to say."""
    return len(audio.speak(text)) / audio.SAMPLE_RATE


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    endpoint = Hooks({ACCOUNT: TOKEN}, default_token=CALLER_TOKEN)
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def sims(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[TwilioSim]]:
    """REST simulators a test starts; stopped after it."""
    monkeypatch.delenv("TWILIO_EDGE", raising=False)  # an edge or region rewrites the base URL's host
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    started: list[TwilioSim] = []
    yield started
    for sim in started:
        await sim.stop()


async def start_sim(sims: list[TwilioSim], **options: Any) -> TwilioSim:
    sim = TwilioSim({ACCOUNT: TOKEN}, numbers={ACCOUNT: [TWILIO_NUMBER]}, **options)
    await sim.start()
    sims.append(sim)
    return sim


async def place(sim: TwilioSim, **create: Any) -> str:
    """Create a call through the official library; its sid."""
    client = Client(ACCOUNT, TOKEN)
    client.api.base_url = sim.url
    call = await asyncio.to_thread(client.calls.create, from_=TWILIO_NUMBER, **create)
    return str(call.sid)


# ---------------------------------------------------------------------- reading <Dial>


def test_a_bare_number_with_twilios_defaults() -> None:
    assert dial("<Dial> +15550100001 </Dial>") == Dial((DialTarget("number", ALEX),))
    parsed = dial("<Dial>+15550100001</Dial>")
    assert (parsed.timeout_s, parsed.time_limit_s, parsed.action, parsed.method) == (30, 14400, None, "POST")
    assert parsed.conference is None and parsed.skipped == ()


def test_numbers_and_sip_uris_are_rung_together_with_the_attributes() -> None:
    parsed = dial(
        '<Dial timeout="12" timeLimit="60" action="/after" method="get" hangupOnStar="true">'
        f"<Number>{ALEX}</Number><Number sendDigits='1'>415-555-1212</Number>"
        f"<Sip>{ALEX_SIP};transport=tls?X-Ticket=42</Sip><Client>agent</Client></Dial>"
    )
    assert parsed.targets == (
        DialTarget("number", ALEX),
        DialTarget("number", "415-555-1212"),
        DialTarget("sip", f"{ALEX_SIP};transport=tls?X-Ticket=42"),
    )
    assert (parsed.timeout_s, parsed.time_limit_s, parsed.action, parsed.method) == (12, 60, "/after", "GET")
    assert parsed.skipped == ("<Client>",)
    assert dial('<Dial timeout="9000">1</Dial>').timeout_s == 600  # Twilio's longest ring
    assert dial('<Dial timeout="soon">1</Dial>').timeout_s == 30


def test_a_conference_and_its_attributes() -> None:
    parsed = dial(
        '<Dial><Conference startConferenceOnEnter="false" endConferenceOnExit="true" muted="true">'
        " standup </Conference></Dial>"
    )
    assert parsed.conference == DialTarget("conference", "standup", start_on_enter=False, end_on_exit=True, muted=True)
    assert dial("<Dial><Conference>room</Conference></Dial>").conference == DialTarget(
        "conference", "room", start_on_enter=True, end_on_exit=False, muted=False
    )


@pytest.mark.parametrize(
    ("twiml", "problem"),
    [
        ("<Dial/>", "names no one"),
        (f"<Dial><Conference>room</Conference><Number>{ALEX}</Number></Dial>", "only noun"),
        ("<Dial><Conference> </Conference></Dial>", "no name"),
        ("<Dial>" + f"<Number>{ALEX}</Number>" * 11 + "</Dial>", "at most 10"),
        (f'<Dial method="PUT">{ALEX}</Dial>', "GET or POST"),
    ],
)
def test_what_twilio_would_refuse(twiml: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        dial(twiml)


# ---------------------------------------------------------------------- the caller dials


async def test_the_caller_is_put_through_after_the_stream_and_hears_who_answers(hooks: Hooks) -> None:
    """The whole call: webhook, a stream relay closes, then ``<Dial>`` to a person the caller
    hears, ``completed`` posted to the action, whose TwiML runs."""
    board = Switchboard({ALEX: Reachable(FRONT_DESK, answer_after_s=0.3, talk_s=0.4)})

    async def close_after_start(ws: ServerConnection) -> None:
        async for message in ws:
            if '"start"' in str(message):
                await ws.close()

    async with serve(close_after_start, "127.0.0.1", 0, compression=None) as streams:
        port = streams.sockets[0].getsockname()[1]
        hooks.twiml["/voice"] = (
            f'<Response><Connect><Stream url="ws://127.0.0.1:{port}/s"/></Connect>'
            '<Say>Putting you through.</Say><Dial action="/dialed">555-010-0001</Dial><Say>Never said.</Say>'
            "</Response>"
        )
        hooks.twiml["/dialed"] = "<Response><Say>Goodbye.</Say><Hangup/></Response>"
        script = CallerScript(utterances=(), lead_in_ms=100, wait_for_hangup=True, answer_timeout_ms=3000)
        caller = TwilioCaller(hooks.url("/voice"), script, switchboard=board)
        result = await caller.run()

    assert result.error is None and result.closed_by_relay
    assert result.dialed == ["555-010-0001"]  # as written; found as +15550100001
    assert result.talked_to == [("555-010-0001", FRONT_DESK)]
    assert result.said_by_twilio == ["Putting you through.", "Goodbye."] and result.twilio_hung_up
    assert audio.transcribe(result.heard) == f"Putting you through. {FRONT_DESK} Goodbye."
    assert board.dials == [DialRecord(result.call_sid, "555-010-0001", "number", "answered", FRONT_DESK)]
    (action,) = hooks.at("/dialed")
    assert action.valid and action.method == "POST"
    assert (action.params["DialCallStatus"], action.params["CallSid"]) == ("completed", result.call_sid)
    assert SID.fullmatch(action.params["DialCallSid"]) and action.params["DialCallSid"] != result.call_sid
    assert action.params["CallStatus"] == "in-progress"
    # on the line from the answer until they hung up: the greeting, then talk_s
    assert int(action.params["DialCallDuration"]) == 2
    assert result.redirects == [(hooks.url("/dialed"), 200)]


async def test_the_first_to_answer_is_connected_and_the_others_hung_up() -> None:
    board = Switchboard(
        {
            "+15550100003": Reachable("Busy here.", answer_after_s=0.1, busy=True),
            "+15550100004": Reachable("Too late.", answer_after_s=0.8),
            ALEX_SIP: Reachable(FRONT_DESK, answer_after_s=0.3, talk_s=0.2),
            "+15550100005": Reachable("Never.", answers=False),
        }
    )
    caller = TwilioCaller("http://127.0.0.1:9/voice", switchboard=board)
    loop = asyncio.get_running_loop()
    began = loop.time()
    twiml = (
        "<Response><Dial><Number>+15550100003</Number><Number>+15550100004</Number>"
        f"<Sip>{ALEX_SIP};transport=tls</Sip><Number>+15550100005</Number></Dial><Say>Bye.</Say></Response>"
    )
    assert await caller._run_twiml(verbs(twiml)) is None
    took = loop.time() - began

    assert 0.3 + seconds(FRONT_DESK) + 0.2 <= took < 0.3 + seconds(FRONT_DESK) + 0.6
    assert caller.result.talked_to == [(f"{ALEX_SIP};transport=tls", FRONT_DESK)]
    assert [(record.target, record.outcome) for record in board.dials] == [
        ("+15550100003", "busy"),
        ("+15550100004", "canceled"),
        (f"{ALEX_SIP};transport=tls", "answered"),
        ("+15550100005", "canceled"),
    ]
    assert words(caller.result.heard) == f"{FRONT_DESK} Bye."  # no action: the verbs after <Dial> run


async def test_an_unknown_number_is_no_answer_and_the_action_says_so(hooks: Hooks) -> None:
    caller = TwilioCaller(hooks.url("/voice"), switchboard=Switchboard())
    hooks.twiml["/after"] = "<Response><Say>Nobody picked up.</Say></Response>"
    loop = asyncio.get_running_loop()
    began = loop.time()
    twiml = '<Response><Dial action="/after" timeout="20">+15550109999</Dial><Say>Never said.</Say></Response>'
    assert await caller._run_twiml(verbs(twiml)) is None
    took = loop.time() - began

    assert UNKNOWN_RING_S <= took < UNKNOWN_RING_S + 0.5
    (action,) = hooks.at("/after")
    assert action.valid
    assert action.params["DialCallStatus"] == "no-answer" and SID.fullmatch(action.params["DialCallSid"])
    assert (action.params["CallSid"], action.params["To"]) == (caller.call_sid, caller.to_number)
    result = caller.result
    assert result.dialed == ["+15550109999"] and result.talked_to == []
    assert result.said_by_twilio == ["Nobody picked up."]
    assert board_outcomes(caller.switchboard) == [("+15550109999", "no-answer")]
    assert "DialSipResponseCode" not in action.params  # a number, not a SIP URI


def board_outcomes(board: Switchboard) -> list[tuple[str, str]]:
    return [(record.target, record.outcome) for record in board.dials]


async def test_a_room_starts_with_its_moderator_and_ends_when_they_leave() -> None:
    """``startConferenceOnEnter=false`` waits in silence; a muted leg is heard by no one; a
    participant with ``endConferenceOnExit`` ends the room for everyone still in it."""
    board = Switchboard()
    lines = {"ann": "Ann is here.", "ben": "Ben listening in.", "host": "Host speaking, let us start."}

    def leg(name: str, stay_s: float) -> TwilioCaller:
        script = CallerScript(conference_stay_s=stay_s)
        return TwilioCaller("http://127.0.0.1:9/voice", script, switchboard=board, join_line=lines[name])

    ann, ben, host = leg("ann", 5.0), leg("ben", 5.0), leg("host", 1.0)
    waiting = '<Response><Dial><Conference startConferenceOnEnter="false"{}>weekly</Conference></Dial></Response>'
    loop = asyncio.get_running_loop()
    began = loop.time()
    ann_task = asyncio.create_task(ann._run_twiml(verbs(waiting.format(""))))
    await asyncio.sleep(0.1)
    ben_task = asyncio.create_task(ben._run_twiml(verbs(waiting.format(' muted="true"'))))
    await asyncio.sleep(0.2)
    room = board.conferences["weekly"]
    assert room.started_at is None and words(ann.result.heard) == "" and words(ben.result.heard) == ""
    moderator = '<Response><Dial><Conference endConferenceOnExit="true">weekly</Conference></Dial></Response>'
    await host._run_twiml(verbs(moderator))
    await asyncio.wait_for(asyncio.gather(ann_task, ben_task), 1)
    took = loop.time() - began

    assert 1.3 <= took < 2.0  # not the 5 s the others would have stayed
    assert ann.result.talked_to == [("conference:weekly", lines["host"])]  # Ben is muted
    assert ben.result.talked_to == [("conference:weekly", f"{lines['ann']} {lines['host']}")]
    assert host.result.talked_to == [("conference:weekly", lines["ann"])]
    host_in = room.participants[2]
    assert [p.call_sid for p in room.participants] == [ann.call_sid, ben.call_sid, host.call_sid]
    assert room.started_at == host_in.joined_at and room.ended_at is not None
    assert all(p.left_at == room.ended_at for p in room.participants)
    assert room.ended_at - host_in.joined_at == pytest.approx(1.0, abs=0.1)
    assert board_outcomes(board) == [("weekly", "joined")] * 3


# ---------------------------------------------------------------------- the REST simulator dials


async def test_a_placed_call_and_an_inbound_caller_meet_in_a_conference(hooks: Hooks, sims: list[TwilioSim]) -> None:
    """Both simulators on one switchboard: each leg hears the other's join line; the room ends
    when the last leaves; the placed call completes after its TwiML, the conference included."""
    board = Switchboard()
    bea = Person(
        dataclasses.replace(PERSON_SCRIPT, conference_stay_s=1.0),
        answer_after_s=0.2,
        join_line="Bea here, from the night shift.",
    )
    sim = await start_sim(sims, phones={BEA: bea}, switchboard=board)
    room_twiml = "<Response><Dial><Conference>standup</Conference></Dial>{}</Response>"
    ann = TwilioCaller(
        "http://127.0.0.1:9/voice",
        CallerScript(conference_stay_s=2.0),
        switchboard=board,
        join_line="Ann joining from the front desk.",
    )
    ann_task = asyncio.create_task(ann._run_twiml(verbs(room_twiml.format(""))))
    sid = await place(
        sim,
        to=BEA,
        twiml=room_twiml.format("<Say>Meeting over.</Say>"),
        status_callback=hooks.url("/status"),
        status_callback_event=["answered", "completed"],
    )
    await asyncio.wait_for(ann_task, 5)
    call = sim.calls[sid]
    await sim.wait_until(lambda: call.terminal and len(hooks.at("/status")) == 2, 5)

    assert ann.result.talked_to == [("conference:standup", "Bea here, from the night shift.")]
    assert call.result is not None
    assert call.result.talked_to == [("conference:standup", "Ann joining from the front desk.")]
    assert words(call.result.heard) == "Ann joining from the front desk. Meeting over."
    room = board.conferences["standup"]
    first, second = room.participants
    assert (first.call_sid, second.call_sid) == (ann.call_sid, sid)
    assert second.left_at is not None and second.left_at - second.joined_at == pytest.approx(1.0, abs=0.1)
    assert room.ended_at == first.left_at and first.left_at is not None
    assert first.left_at - first.joined_at == pytest.approx(2.0, abs=0.1)  # the last to leave ends it
    # The call completes once its TwiML is done: the conference, then the <Say> after it.
    assert call.status == "completed" and call.said == ["Meeting over."]
    assert call.ended_at is not None and call.ended_at >= second.left_at + seconds("Meeting over.") - 0.05
    completed = hooks.at("/status")[-1]
    assert completed.params["CallStatus"] == "completed" and completed.at >= call.ended_at
    assert call.unsupported == [] and call.errors == []


async def test_a_placed_call_dials_a_sip_address_and_the_action_runs(hooks: Hooks, sims: list[TwilioSim]) -> None:
    board = Switchboard({ALEX_SIP: Reachable(FRONT_DESK, answer_after_s=0.2, talk_s=0.3)})
    sim = await start_sim(sims, phones={BEA: Person(answer_after_s=0.2)}, switchboard=board)
    hooks.twiml["/voice"] = (
        f'<Response><Dial action="/dialed" timeout="5"><Sip>{ALEX_SIP}?X-Ticket=7</Sip></Dial>'
        "<Say>Never said.</Say></Response>"
    )
    hooks.twiml["/dialed"] = "<Response><Say>Thanks for waiting.</Say></Response>"
    sid = await place(sim, to=BEA, url=hooks.url("/voice"), status_callback=hooks.url("/status"))
    call = sim.calls[sid]
    await sim.wait_until(lambda: call.terminal and len(hooks.at("/status")) == 1, 8)

    assert [request.kind for request in call.requests] == ["voice", "dial-action"]
    (action,) = hooks.at("/dialed")
    assert action.valid and action.params["DialCallStatus"] == "completed"
    assert action.params["CallSid"] == sid and SID.fullmatch(action.params["DialCallSid"])
    assert action.params["DialSipResponseCode"] == "200" and action.params["DialSipCallId"]
    assert call.result is not None
    assert call.result.dialed == [f"{ALEX_SIP}?X-Ticket=7"]
    assert call.result.talked_to == [(f"{ALEX_SIP}?X-Ticket=7", FRONT_DESK)]
    assert words(call.result.heard) == f"{FRONT_DESK} Thanks for waiting."
    assert call.said == ["Thanks for waiting."] and call.status == "completed"
    assert call.answered_at is not None and call.ended_at is not None
    talk = 0.2 + seconds(FRONT_DESK) + 0.3 + seconds("Thanks for waiting.")
    assert call.ended_at - call.answered_at >= talk - 0.05
    assert hooks.at("/status")[0].params["CallStatus"] == "completed"
    assert call.unsupported == [] and call.errors == []
