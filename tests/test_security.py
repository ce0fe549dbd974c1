"""Nobody in who does not belong: signed webhooks and handshakes, signed streams.

A request Twilio did not sign (or signed for another URL) gets 403 and opens nothing; a
media stream whose ``start`` lacks a token our webhook issued for that very call is closed
before any AI session opens.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
import websockets
from twilio.request_validator import RequestValidator

from relay import streamtoken
from relay.config import Settings
from relay.errors import ConfigError
from relay.sim.caller import TwilioCaller, http_post, parse_connect_stream
from tests.conftest import CONNECTED, START
from tests.test_call import SHORT, SIM_AUTH_TOKEN, post_webhook, stack
from tests.test_server import signed_connect

FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "0" * 32, "From": "+15550001", "To": "+15550002"}


def _sign(url: str, params: dict[str, str] | str, token: str = SIM_AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


async def test_unsigned_wrongly_signed_and_replayed_webhooks_get_403(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        body = urlencode(FORM).encode()
        other_url = s.webhook.replace("/twilio/voice", "/other/voice")
        unsigned = await http_post(s.webhook, body, {})
        wrong_key = await http_post(s.webhook, body, {"X-Twilio-Signature": _sign(s.webhook, FORM, "not-the-token")})
        replayed = await http_post(s.webhook, body, {"X-Twilio-Signature": _sign(other_url, FORM)})
        tampered = await http_post(
            s.webhook,
            urlencode({**FORM, "To": "+15559999999"}).encode(),
            {"X-Twilio-Signature": _sign(s.webhook, FORM)},
        )
        good = await post_webhook(s.webhook, FORM)
        rejected = s.relay.rejected_signatures
    assert [r[0] for r in (unsigned, wrong_key, replayed, tampered)] == [403] * 4
    assert all(b"<Stream" not in r[1] for r in (unsigned, wrong_key, replayed, tampered))
    assert good[0] == 200 and b"<Stream" in good[1]
    assert rejected == 4


async def test_a_json_webhook_is_checked_by_its_body_hash(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        body = orjson.dumps(FORM)
        url = f"{s.webhook}?bodySHA256={hashlib.sha256(body).hexdigest()}"
        good = await http_post(url, body, {"X-Twilio-Signature": _sign(url, {}), "Content-Type": "application/json"})
        forged = await http_post(
            url, orjson.dumps({**FORM, "To": "+15559999999"}), {"X-Twilio-Signature": _sign(url, {})}
        )
    assert good[0] == 200 and b"<Stream" in good[1]
    assert forged[0] == 403


@pytest.mark.parametrize("how", ["unsigned", "wrong key", "other url"])
async def test_unsigned_or_misdirected_handshakes_get_403_and_open_no_upstream(tmp_path: Path, how: str) -> None:
    async with stack(tmp_path) as s:
        stream_url = s.webhook.replace("http://", "ws://")
        headers = {
            "unsigned": {},
            "wrong key": {"X-Twilio-Signature": _sign(stream_url, {}, "not-the-token")},
            "other url": {"X-Twilio-Signature": _sign(stream_url.replace("127.0.0.1", "localhost"), {})},
        }[how]
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stream_url, additional_headers=headers):
                pass
        sessions = list(s.agent.sessions)
    assert refused.value.response.status_code == 403
    assert sessions == []


async def _start_with(webhook: str, call_sid: str, **override: str) -> str:
    _, body = await post_webhook(webhook, {**FORM, "CallSid": call_sid})
    _, params = parse_connect_stream(body.decode())
    params.update(override)
    start = orjson.loads(START)
    start["start"]["callSid"] = call_sid
    start["start"]["customParameters"] = {k: v for k, v in params.items() if v is not None}
    return orjson.dumps(start).decode()


@pytest.mark.parametrize("case", ["no token", "another call's token", "another tenant", "garbage token"])
async def test_a_stream_without_a_valid_token_is_closed_and_opens_no_upstream(tmp_path: Path, case: str) -> None:
    async with stack(tmp_path) as s:
        stream_url = s.webhook.replace("http://", "ws://")
        if case == "no token":
            start = START.decode()  # the documentation's example: no token at all
        elif case == "another call's token":
            other = await _start_with(s.webhook, "CA" + "2" * 32)
            start = other.replace("CA" + "2" * 32, "CA" + "3" * 32)  # the token is for CA222…
        elif case == "another tenant":
            start = await _start_with(s.webhook, "CA" + "4" * 32, tenant="globex")
        else:
            start = await _start_with(s.webhook, "CA" + "5" * 32, token="v1.9999999999.AAAA")
        async with signed_connect(stream_url) as ws:
            await ws.send(CONNECTED.decode())
            await ws.send(start)
            await asyncio.wait_for(ws.wait_closed(), 5)
        sessions = list(s.agent.sessions)
        calls = await s.store.calls()
    assert ws.close_code == 1008
    assert sessions == [], "an upstream opened for an unauthenticated stream"
    assert calls == [], "an unauthenticated stream was stored"


def test_tokens_bind_call_tenant_agent_and_expire() -> None:
    key = streamtoken.derive_secret("auth-token")
    token = streamtoken.issue(
        key, tenant="acme", agent="default", call_sid="CA1", account_sid="AC1", now=1000.0, ttl=60
    )
    ok = dict(tenant="acme", agent="default", call_sid="CA1", account_sid="AC1")
    assert streamtoken.verify(key, token, **ok, now=1059.0) is None
    assert streamtoken.verify(key, token, **ok, now=1061.0) == "stream token expired"
    for field, value in (("tenant", "globex"), ("agent", "other"), ("call_sid", "CA2"), ("account_sid", "AC2")):
        mismatched = {**ok, field: value}
        assert streamtoken.verify(key, token, **mismatched, now=1001.0) == "stream token does not match this call"
    assert streamtoken.verify(streamtoken.derive_secret("other"), token, **ok, now=1001.0) is not None
    assert streamtoken.verify(key, "v1.x.y", **ok, now=1001.0) == "malformed call token"
    # A token for the after-stream hook is no stream token (and the other way round).
    assert streamtoken.verify(key, token, **ok, now=1001.0, purpose=streamtoken.AFTER_STREAM) is not None
    # Tampering with the expiry breaks the MAC.
    later = token.replace(".1060.", ".9999.")
    assert streamtoken.verify(key, later, **ok, now=1001.0) == "stream token does not match this call"


def test_serve_requires_the_auth_token_unless_explicitly_insecure() -> None:
    env = {"RELAY_PUBLIC_URL": "https://relay.example.com", "OPENAI_API_KEY": "sk-x"}
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN is required"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "RELAY_INSECURE_SKIP_TWILIO_SIGNATURE": "1"}).skip_twilio_signature
    settings = Settings.from_env({**env, "TWILIO_AUTH_TOKEN": "tok-secret-123", "RELAY_STREAM_SECRET": "s3cr3t-xyz"})
    assert "tok-secret-123" not in repr(settings) and "s3cr3t-xyz" not in repr(settings)


async def test_one_hostile_peer_beside_fifty_good_calls_hurts_none_of_them(tmp_path: Path) -> None:
    """Flooding, oversized, binary and endless-head connections are each closed alone."""
    async with stack(tmp_path, max_messages_per_second=200) as s:
        stream_url = s.webhook.replace("http://", "ws://")
        port = int(s.webhook.rsplit(":", 1)[1].split("/")[0])
        good = [asyncio.create_task(TwilioCaller(s.webhook, SHORT).run()) for _ in range(50)]

        async def flood() -> int | None:
            async with signed_connect(stream_url) as ws:
                try:
                    for _ in range(5000):
                        await ws.send('{"event":"mark","mark":{"name":"x"}}')
                except websockets.ConnectionClosed:
                    pass
                await asyncio.wait_for(ws.wait_closed(), 5)
                return ws.close_code

        async def oversized() -> int | None:
            async with signed_connect(stream_url) as ws:
                await ws.send("x" * (2 * 1024 * 1024))
                await asyncio.wait_for(ws.wait_closed(), 5)
                return ws.close_code

        async def endless_head() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (64 * 1024))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 5)
            writer.close()
            return answer

        codes = await asyncio.gather(flood(), oversized(), endless_head())
        results = await asyncio.gather(*good)
        violations = dict(s.relay.violations)
    assert codes[0] == 1008 and codes[1] == 1009 and codes[2].startswith(b"HTTP/1.1 431")
    assert violations == {"rate": 1, "size": 1, "head": 1}
    assert all(r.error is None and r.violations == [] for r in results)
    assert all(all(t.answered for t in r.turns) for r in results)
    assert s.agent.violations == []
