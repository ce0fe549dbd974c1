"""Twilio Media Streams: every message relay receives (PROTOCOLS §1.3) and sends (§1.4), and the TwiML (§1.1)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
import pytest

from relay import twilio
from relay.errors import PayloadError, ProtocolError
from relay.sim.caller import outbound_violations, parse_connect_stream
from tests.conftest import CONNECTED, DTMF, MARK, MEDIA, START, STOP

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


# ---- §1.3 messages Twilio sends ------------------------------------------------------------


def test_connected() -> None:
    assert twilio.parse_event(CONNECTED) == twilio.Connected("Call", "1.0.0")


def test_start() -> None:
    start = twilio.parse_event(START)
    assert isinstance(start, twilio.Start)
    assert start.stream_sid == SID
    assert start.call_sid.startswith("CA") and start.account_sid.startswith("AC")
    assert (start.encoding, start.sample_rate, start.channels) == ("audio/x-mulaw", 8000, 1)
    assert start.tracks == ("inbound",)
    assert start.custom_parameters == {"FirstName": "Jane"}


def test_media_is_read_by_the_fast_path(fp) -> None:
    payload, timestamp = fp.parse_media(MEDIA)
    assert payload == orjson.loads(MEDIA)["media"]["payload"].encode()
    assert timestamp == 5


def test_non_media_events_are_left_to_the_full_parser(fp) -> None:
    for message in (CONNECTED, START, DTMF, MARK, STOP):
        assert fp.parse_media(message) is None


def test_dtmf() -> None:
    assert twilio.parse_event(DTMF) == twilio.Dtmf("1")


def test_mark() -> None:
    assert twilio.parse_event(MARK) == twilio.Mark("my label")


def test_stop() -> None:
    assert twilio.parse_event(STOP) == twilio.Stop("CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")


@pytest.mark.parametrize(
    "message",
    [
        b"not json",
        b"[1, 2]",
        b'{"event":"hello"}',
        b'{"event":"start","start":{}}',
        b'{"event":"mark","mark":{}}',
        b'{"event":"dtmf"}',
    ],
)
def test_malformed_events_raise_protocol_error(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        twilio.parse_event(message)


@pytest.mark.parametrize(
    "message, error",
    [
        (b'{"event":"media"}', ProtocolError),
        (b'{"event":"media","media":{"timestamp":"5"}}', ProtocolError),
        (b'{"event":"media","media":{"payload":"AAAA"}}', ProtocolError),
        (b'{"event":"media","media":{"payload":"AAAA","timestamp":"-5"}}', ProtocolError),
        (b'{"event":"media","media":{"payload":"AA!A","timestamp":"5"}}', PayloadError),
        (b'{"event":"media","media":{"payload":"AAA","timestamp":"5"}}', PayloadError),
        (b'{"media":{"payload":"AAAA","timestamp":"5"}}', ProtocolError),
        (b"\xff\xfe", ProtocolError),
    ],
)
def test_malformed_media_raises(fp, message: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        fp.parse_media(message)


# ---- §1.4 messages relay sends -------------------------------------------------------------


def test_outbound_media_has_exactly_the_documented_fields(fp) -> None:
    message = fp.TwilioWriter(SID).media(b"AAAA")
    assert orjson.loads(message) == {"event": "media", "streamSid": SID, "media": {"payload": "AAAA"}}
    assert outbound_violations(message.decode(), SID) == []


def test_outbound_mark_carries_its_name(fp) -> None:
    message = fp.TwilioWriter(SID).mark("item_1:160")
    assert orjson.loads(message) == {"event": "mark", "streamSid": SID, "mark": {"name": "item_1:160"}}
    assert outbound_violations(message.decode(), SID) == []


def test_outbound_mark_name_is_escaped(fp) -> None:
    name = 'quote " backslash \\ newline \n ünïcode'
    assert orjson.loads(fp.TwilioWriter(SID).mark(name))["mark"]["name"] == name


def test_outbound_clear(fp) -> None:
    message = fp.TwilioWriter(SID).clear()
    assert orjson.loads(message) == {"event": "clear", "streamSid": SID}
    assert outbound_violations(message.decode(), SID) == []


def test_a_mark_needs_a_name(fp) -> None:
    with pytest.raises(ProtocolError):
        fp.TwilioWriter(SID).mark("")


# ---- the simulated caller rejects what Twilio rejects (31951) ------------------------------


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"event": "media", "streamSid": SID, "media": {"payload": "AAAA", "track": "outbound"}}, "fields"),
        ({"event": "media", "streamSid": SID, "media": {"payload": "AAAA"}, "sequenceNumber": "1"}, "unexpected"),
        ({"event": "media", "streamSid": "MZother", "media": {"payload": "AAAA"}}, "does not match"),
        ({"event": "media", "streamSid": None, "media": {"payload": "AAAA"}}, "does not match"),
        ({"event": "mark", "streamSid": SID}, "missing"),
        ({"event": "mark", "streamSid": SID, "mark": {}}, "name"),
        ({"event": "mark", "streamSid": SID, "mark": {"name": ""}}, "name"),
        ({"event": "clear", "streamSid": SID, "extra": 1}, "unexpected"),
        ({"event": "clear"}, "missing"),
        ({"event": "play", "streamSid": SID}, "unknown event"),
        ({"event": "media", "streamSid": SID, "media": {"payload": "UklGRiQAAABXQVZF"}}, "header"),
        ({"event": "media", "streamSid": SID, "media": {"payload": "not base64!"}}, "base64"),
    ],
)
def test_simulated_caller_flags_what_twilio_rejects(message: dict, problem: str) -> None:
    problems = outbound_violations(orjson.dumps(message).decode(), SID)
    assert problems and any(problem in p for p in problems), problems


def test_simulated_caller_flags_binary_and_non_json() -> None:
    assert outbound_violations(b"\x00\x01", SID)
    assert outbound_violations("{nope", SID)
    assert outbound_violations('{"event":"clear","streamSid":"MZ1"}', None)  # before start


# ---- §1.1 TwiML ----------------------------------------------------------------------------


def test_twiml_connects_a_bidirectional_stream_with_parameters() -> None:
    twiml = twilio.connect_stream_twiml("wss://relay.example.com/twilio/voice", {"callSid": "CA1", "to": "+1555"})
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://relay.example.com/twilio/voice"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {"callSid": "CA1", "to": "+1555"}
    assert parse_connect_stream(twiml) == ("wss://relay.example.com/twilio/voice", {"callSid": "CA1", "to": "+1555"})


@pytest.mark.parametrize(
    "url",
    ["https://relay.example.com/twilio/voice", "wss://relay.example.com/twilio/voice?token=1", "ws://example.com/x"],
)
def test_simulated_twilio_refuses_stream_urls_twilio_cannot_dial(url: str) -> None:
    with pytest.raises(ValueError):
        parse_connect_stream(twilio.connect_stream_twiml(url, {}))
