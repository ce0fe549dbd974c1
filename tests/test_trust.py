"""Nobody acts for a tenant it does not belong to, and nothing malformed gets counted.

A tenant's own Twilio token signs for that tenant's calls only, from its own account; the
deployment's token for the calls on the deployment's account. The webhook's fields and the
stream's ``start`` are checked the way Twilio defines them before anything is looked up,
counted or opened (PROTOCOLS §1.3, §1.6).
"""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest
import websockets
from twilio.request_validator import RequestValidator

from relay import twilio
from relay.admission import LocalAdmission
from relay.errors import ProtocolError
from relay.pg import PostgresAdmission, PostgresStore
from relay.sim.caller import TwilioCaller, parse_connect_stream
from relay.tenants import CachedDirectory
from relay.trust import Credential, binding_problem, may_act_for
from tests.conftest import CONNECTED, DTMF, START
from tests.pgutil import AGENT, create_database, drop_database, dsn
from tests.test_call import ACCOUNT_SID, SHORT, SIM_AUTH_TOKEN, post_webhook, stack, voice_form

ACME, GLOBEX = "AC" + "a" * 32, "AC" + "b" * 32
ACME_TOKEN, GLOBEX_TOKEN = "acme-subaccount-token", "globex-subaccount-token"
ACME_NUMBER, GLOBEX_NUMBER, INITECH_NUMBER = "+15550100001", "+15550100002", "+15550100003"


# ---------------------------------------------------------------- the rules, sans-I/O


def test_a_tenant_token_acts_for_its_own_tenant_and_account_only() -> None:
    acme = Credential("acme", ACME, ACME_TOKEN)
    own = {ACME: "acme", GLOBEX: "globex"}
    assert may_act_for(acme, "acme", ACME, own)
    assert not may_act_for(acme, "globex", ACME, own)  # another tenant's call
    assert not may_act_for(acme, "globex", GLOBEX, own)
    assert not may_act_for(acme, "acme", GLOBEX, own)  # its own tenant, but another account


def test_the_deployment_token_acts_for_calls_on_the_deployments_account() -> None:
    known = Credential(None, ACCOUNT_SID, SIM_AUTH_TOKEN)
    assert may_act_for(known, "initech", ACCOUNT_SID, {})
    assert not may_act_for(known, "initech", ACME, {ACME: "acme"})
    unknown = Credential(None, None, SIM_AUTH_TOKEN)  # TWILIO_ACCOUNT_SID not set
    assert may_act_for(unknown, "initech", ACCOUNT_SID, {ACME: "acme"})
    # A subaccount with a token of its own signs with it, never with the deployment's.
    assert not may_act_for(unknown, "acme", ACME, {ACME: "acme"})
    problem = binding_problem([Credential("acme", ACME, "t")], "globex", ACME, {})
    assert problem is not None and "tenant acme" in problem and "t" not in problem.split()


# ---------------------------------------------------------------- the webhook's fields


@pytest.mark.parametrize(
    "field, value",
    [
        ("CallSid", ""),
        ("CallSid", "CA123"),
        ("CallSid", "CA" + "g" * 32),
        ("AccountSid", "AC1"),
        ("AccountSid", ""),
        ("To", ""),
        ("To", "555-1234"),
        ("To", "+0123"),
        ("To", "client:"),
        ("From", "+1 555 0100"),
        ("From", "<script>"),
    ],
)
async def test_a_malformed_webhook_gets_400_and_touches_nothing(tmp_path: Path, field: str, value: str) -> None:
    admission = LocalAdmission(max_concurrent=1)
    async with stack(tmp_path, admission=admission) as s:
        status, body = await post_webhook(s.webhook, {**voice_form(1), field: value})
        malformed = s.relay.malformed_webhooks
    assert status == 400 and field.encode() in body
    assert malformed == 1
    assert admission._live == {} and admission.refused == 0  # nothing admitted, nothing counted


async def test_twenty_webhooks_without_a_callsid_never_get_past_a_limit_of_one(tmp_path: Path) -> None:
    async with stack(tmp_path, max_concurrent_calls=1) as s:
        answers = await asyncio.gather(*(post_webhook(s.webhook, {**voice_form(n), "CallSid": ""}) for n in range(20)))
        first = await post_webhook(s.webhook, voice_form(100))
        second = await post_webhook(s.webhook, voice_form(101))
    assert [status for status, _ in answers] == [400] * 20
    assert not any(b"<Stream" in body for _, body in answers)
    # The limit was not spent by any of them: one real call gets through, the next is busy.
    assert b"<Stream" in first[1] and b"<Stream" not in second[1] and b"busy" in second[1]
    assert await LocalAdmission(1).admit("t", "a", "") is False


@pytest.mark.parametrize(
    "to, from_",
    [
        ("client:alice", "client:bob"),
        ("sip:alice@example.sip.twilio.com", "sip:+15550001@pbx.example.com"),
        ("+15550002", "anonymous"),
        ("+15550002", "Restricted"),
        ("+15550002", ""),
    ],
)
async def test_every_form_twilio_sends_is_accepted(tmp_path: Path, to: str, from_: str) -> None:
    async with stack(tmp_path) as s:
        status, body = await post_webhook(s.webhook, voice_form(1, to=to, from_=from_))
    assert status == 200 and b"<Stream" in body


def test_webhook_fields_parse_into_a_voice_request() -> None:
    call = twilio.voice_request(voice_form(0xABC, to="client:alice"))
    assert (call.call_sid, call.account_sid, call.to, call.from_) == (
        f"CA{0xABC:032x}",
        ACCOUNT_SID,
        "client:alice",
        "+15550001",
    )
    with pytest.raises(ProtocolError, match="CallSid"):
        twilio.voice_request({})


# ---------------------------------------------------------------- the stream's start


def _start(**fmt: object) -> bytes:
    start = orjson.loads(START)
    for key, value in fmt.items():
        if key == "tracks":
            start["start"]["tracks"] = value
        else:
            start["start"]["mediaFormat"][key] = value
    return orjson.dumps(start)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"encoding": "audio/x-alaw"}, "audio/x-alaw"),
        ({"sampleRate": 16000}, "16000"),
        ({"channels": 2}, "channel"),
        ({"tracks": ["outbound"]}, "inbound"),
        ({"tracks": []}, "inbound"),
    ],
)
def test_a_start_relay_cannot_serve_is_refused_with_its_reason(change: dict[str, object], reason: str) -> None:
    event = twilio.parse_event(_start(**change))
    assert isinstance(event, twilio.Start)
    with pytest.raises(ProtocolError, match=reason):
        twilio.check_start(event)
    twilio.check_start(twilio.parse_event(START))  # the documentation's own start is fine


@pytest.mark.parametrize("digit", ["0", "9", "*", "#", "A", "D"])
def test_dtmf_digits_are_twilios_sixteen(digit: str) -> None:
    assert twilio.parse_event(DTMF.replace(b'"digit":"1"', f'"digit":"{digit}"'.encode())) == twilio.Dtmf(digit)


@pytest.mark.parametrize("digit", ["", "E", "12", "x", "\u0661"])
def test_any_other_dtmf_digit_is_a_protocol_error(digit: str) -> None:
    with pytest.raises(ProtocolError, match=r"dtmf\.digit"):
        twilio.parse_event(DTMF.replace(b'"digit":"1"', orjson.dumps({"digit": digit})[1:-1]))


async def _stream(s, n: int, start_message: bytes, *more: bytes) -> websockets.ClientConnection:  # type: ignore[no-untyped-def]
    """A webhook for call ``n``, then its stream as Twilio opens it: ``start_message`` carrying
    the webhook's parameters, then ``more``; returns the socket once the relay has closed it."""
    _, body = await post_webhook(s.webhook, voice_form(n))
    _, params = parse_connect_stream(body.decode())
    start = orjson.loads(start_message)
    start["start"].update(callSid=voice_form(n)["CallSid"], accountSid=ACCOUNT_SID, customParameters=params)
    stream_url = s.webhook.replace("http://", "ws://")
    signature = RequestValidator(SIM_AUTH_TOKEN).compute_signature(stream_url, {})
    async with websockets.connect(stream_url, additional_headers={"X-Twilio-Signature": signature}) as ws:
        for message in (CONNECTED, orjson.dumps(start), *more):
            await ws.send(message.decode())
        await asyncio.wait_for(ws.wait_closed(), 10)
    return ws


async def test_a_stream_with_the_wrong_media_format_closes_before_any_ai_session(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        ws = await _stream(s, 1, _start(sampleRate=16000))
        sessions = list(s.agent.sessions)
    assert ws.close_code == 1007 and "16000" in (ws.close_reason or "")
    assert sessions == []


async def test_a_keypress_twilio_cannot_send_closes_the_call_with_its_reason(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        ws = await _stream(s, 2, START, DTMF.replace(b'"digit":"1"', b'"digit":"Z"'))
    assert ws.close_code == 1007 and "dtmf.digit" in (ws.close_reason or "")


# ---------------------------------------------------------------- tenants on one Postgres


@pytest.fixture
async def tenants(tmp_path: Path) -> AsyncIterator[PostgresStore]:
    """acme and globex on Twilio subaccounts of their own; initech on the deployment's account."""
    name = await create_database()
    store = PostgresStore(dsn(name), spool_path=tmp_path / "relay.spool")
    try:
        await store.open()
        directory = store.directory
        for tenant, number in (("acme", ACME_NUMBER), ("globex", GLOBEX_NUMBER), ("initech", INITECH_NUMBER)):
            await directory.add_tenant(tenant, tenant.title(), AGENT)
            await directory.add_number(number, tenant)
        await directory.set_auth_token("acme", ACME_TOKEN, ACME)
        await directory.set_auth_token("globex", GLOBEX_TOKEN, GLOBEX)
        yield store
    finally:
        await store.close()
        await drop_database(name)


@pytest.fixture
async def multi(tmp_path: Path, tenants: PostgresStore) -> AsyncIterator:  # type: ignore[type-arg]
    store = tenants
    async with stack(
        tmp_path,
        directory=CachedDirectory(store.directory.lookup_number),
        store=store,
        admission=PostgresAdmission(store.pool),
        credential_source=store.directory.credentials,
        twilio_account_sid=ACCOUNT_SID,
    ) as s:
        yield s


async def _admissions(store: PostgresStore, tenant: str) -> int:
    conn = await asyncpg.connect(store._dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM admissions WHERE tenant_id = $1", tenant))
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_tenant_a_token_on_tenant_b_number_gets_403_and_counts_nothing(multi, tenants) -> None:  # type: ignore[no-untyped-def]
    s = multi
    as_acme = [
        voice_form(1, to=GLOBEX_NUMBER, account_sid=ACME),
        voice_form(2, to=GLOBEX_NUMBER, account_sid=GLOBEX),
        voice_form(3, to=INITECH_NUMBER, account_sid=ACME),
    ]
    refused = [await post_webhook(s.webhook, form, ACME_TOKEN) for form in as_acme]
    # acme's token, acme's number, but not acme's account: refused too.
    wrong_account = await post_webhook(s.webhook, voice_form(4, to=ACME_NUMBER, account_sid=GLOBEX), ACME_TOKEN)
    # The deployment's token does not sign a call on globex's own account.
    deployment_for_globex = await post_webhook(s.webhook, voice_form(5, to=GLOBEX_NUMBER, account_sid=GLOBEX))
    assert [status for status, _ in refused] == [403, 403, 403]
    assert wrong_account[0] == 403 and deployment_for_globex[0] == 403
    assert all(b"<Stream" not in body for _, body in [*refused, wrong_account, deployment_for_globex])
    assert await _admissions(tenants, "globex") == 0 and await _admissions(tenants, "initech") == 0
    assert s.agent.sessions == [] and s.relay.rejected_bindings == 5
    # Each signer in its own place is let in.
    ok = [
        await post_webhook(s.webhook, voice_form(6, to=ACME_NUMBER, account_sid=ACME), ACME_TOKEN),
        await post_webhook(s.webhook, voice_form(7, to=GLOBEX_NUMBER, account_sid=GLOBEX), GLOBEX_TOKEN),
        await post_webhook(s.webhook, voice_form(8, to=INITECH_NUMBER, account_sid=ACCOUNT_SID)),
    ]
    assert all(status == 200 and b"<Stream" in body for status, body in ok)


@pytest.mark.postgres
async def test_a_stream_signed_by_a_carrying_b_stream_token_is_closed_at_start(multi, tenants) -> None:  # type: ignore[no-untyped-def]
    s = multi
    form = voice_form(9, to=GLOBEX_NUMBER, account_sid=GLOBEX)
    _, body = await post_webhook(s.webhook, form, GLOBEX_TOKEN)  # globex's own, legitimate call
    stream_url, params = parse_connect_stream(body.decode())
    start = orjson.loads(START)
    start["start"].update(callSid=form["CallSid"], accountSid=GLOBEX, customParameters=params)

    async def open_stream(token: str) -> websockets.ClientConnection:
        signature = RequestValidator(token).compute_signature(stream_url, {})
        ws = await websockets.connect(stream_url, additional_headers={"X-Twilio-Signature": signature})
        await ws.send(CONNECTED.decode())
        await ws.send(orjson.dumps(start).decode())
        return ws

    ws = await open_stream(ACME_TOKEN)
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008 and "acme" in (ws.close_reason or "")
    assert s.agent.sessions == []
    assert await _admissions(tenants, "globex") == 1  # the webhook's own admission, never started
    # The same start on a handshake globex signed opens the call.
    ws = await open_stream(GLOBEX_TOKEN)
    await s.agent.wait_until(lambda: bool(s.agent.sessions), 5)
    await ws.close()


@pytest.mark.postgres
async def test_each_tenant_calls_through_its_own_account(multi) -> None:  # type: ignore[no-untyped-def]
    s = multi
    results = await asyncio.gather(
        TwilioCaller(s.webhook, SHORT, to_number=ACME_NUMBER, auth_token=ACME_TOKEN, account_sid=ACME).run(),
        TwilioCaller(s.webhook, SHORT, to_number=INITECH_NUMBER, account_sid=ACCOUNT_SID).run(),
    )
    assert all(r.error is None and all(t.answered for t in r.turns) for r in results)
    crossed = await TwilioCaller(
        s.webhook, SHORT, to_number=GLOBEX_NUMBER, auth_token=ACME_TOKEN, account_sid=ACME
    ).run()
    assert crossed.error is not None and "403" in crossed.error


def test_refusal_twiml_says_then_hangs_up() -> None:
    root = ET.fromstring(twilio.refusal_twiml("No."))
    assert [c.tag for c in root] == ["Say", "Hangup"]
    assert dataclasses.is_dataclass(twilio.VoiceRequest)
