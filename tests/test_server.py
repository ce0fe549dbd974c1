"""The one port: webhook, health, errors, and bad WebSocket input closing only that call."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson
import websockets
from twilio.request_validator import RequestValidator

from relay.sim.caller import TwilioCaller, parse_connect_stream
from tests.conftest import CONNECTED, START
from tests.test_call import ACCOUNT_SID, SHORT, SIM_AUTH_TOKEN, post_webhook, stack, voice_form


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


def _port(webhook: str) -> int:
    return int(webhook.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


async def test_webhook_answers_twiml_connecting_the_stream(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        status, body = await post_webhook(s.webhook, voice_form(0x123))
    assert status == 200
    url, params = parse_connect_stream(body.decode())
    assert url == f"ws://127.0.0.1:{_port(s.webhook)}/twilio/voice"
    token = params.pop("token")
    assert params == {
        "callSid": voice_form(0x123)["CallSid"],
        "from": "+15550001",
        "to": "+15550002",
        "tenant": "default",
        "agent": "default",
    }
    assert token.startswith("v2.")


async def test_health_and_unknown_routes(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        port = _port(s.webhook)
        health = await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        missing = await _raw(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wrong = await _raw(port, b"DELETE /twilio/voice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        garbage = await _raw(port, b"\x16\x03\x01 not http\r\n\r\n")
        big = b"x" * (70 * 1024)
        too_big = await _raw(
            port, b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big
        )
    assert health.startswith(b"HTTP/1.1 200")
    assert orjson.loads(health.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    assert missing.startswith(b"HTTP/1.1 404")
    assert wrong.startswith(b"HTTP/1.1 405")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert too_big.startswith(b"HTTP/1.1 413")


async def test_upgrade_elsewhere_is_refused(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        base = s.webhook.replace("http://", "ws://").replace("/twilio/voice", "/other")
        try:
            async with websockets.connect(base):
                raise AssertionError("upgrade on an unknown path was accepted")
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 404


def signed_connect(stream_url: str) -> websockets.connect:
    """Open the media WebSocket as Twilio does: the handshake signed over the stream URL."""
    signature = RequestValidator(SIM_AUTH_TOKEN).compute_signature(stream_url, {})
    return websockets.connect(stream_url, additional_headers={"X-Twilio-Signature": signature})


async def start_message(webhook: str, call_sid: str) -> str:
    """A ``start`` for ``call_sid`` carrying the parameters (and token) our webhook issued for it."""
    _, body = await post_webhook(webhook, voice_form(call_sid))
    _, params = parse_connect_stream(body.decode())
    start = orjson.loads(START)
    start["start"]["callSid"] = call_sid
    start["start"]["accountSid"] = ACCOUNT_SID
    start["start"]["customParameters"] = params
    return orjson.dumps(start).decode()


async def test_a_bad_stream_is_closed_and_a_good_call_beside_it_completes(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        stream_url = s.webhook.replace("http://", "ws://")
        script = dataclasses.replace(SHORT, utterances=("Hello there.",))
        good = asyncio.create_task(TwilioCaller(s.webhook, script).run())

        async with signed_connect(stream_url) as ws:  # media before start
            await ws.send(CONNECTED.decode())
            await ws.send('{"event":"media","media":{"payload":"AAAA","timestamp":"0"},"streamSid":"MZ1"}')
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1007

        async with signed_connect(stream_url) as ws:  # garbage after a valid start
            await ws.send(CONNECTED.decode())
            await ws.send(await start_message(s.webhook, "CA" + "7" * 32))
            await ws.send("{not json")
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1007

        async with signed_connect(stream_url) as ws:  # binary frames: Twilio sends text only
            await ws.send(b"\x00\x01")
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1003

        result = await good
    assert result.error is None and result.violations == [] and result.turns[0].answered
