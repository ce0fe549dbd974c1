"""Twilio Media Streams, sans-I/O: the TwiML answer and every event Twilio sends (PROTOCOLS §1).

``media`` events take the compiled one-pass path (``fastpath.parse_media``); everything else,
a handful of messages per call, is parsed here with orjson into small event objects. The
messages relay sends back are built by ``fastpath.TwilioWriter``.

Also here: the voice webhook's fields (``voice_request``), checked before anything is looked
up or counted, and the TwiML relay answers with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from relay.audio_format import SAMPLE_RATE
from relay.errors import ProtocolError

STREAM_PATH = "/twilio/voice"
# Where Twilio goes once relay closes a call's stream: the TwiML after ``</Connect>`` redirects
# here, and the answer depends on how the call ended (PROTOCOLS §1.1).
AFTER_STREAM_PATH = "/twilio/after-stream"
# Twilio's call status callback (the number's or the call's StatusCallback): the call's
# progress, posted as it changes; a final status means the call is over.
STATUS_PATH = "/twilio/status"
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

# Twilio's identifiers: a two-letter prefix and 32 hex digits (PROTOCOLS §1.6).
CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Browser and SIP legs: ``client:alice``, ``sip:alice@example.sip.twilio.com`` (bounded, no spaces).
SIP_URI = re.compile(r"sips?:[^\s@]{1,256}@[^\s]{1,256}")
_CLIENT_OR_SIP = re.compile(rf"(?:client:[^\s]{{1,256}}|{SIP_URI.pattern})")
# A withheld caller ID comes as a word (``anonymous``, ``Restricted``, ...) or nothing at all.
_CALLER_ID_WORD = re.compile(r"[A-Za-z]{1,32}")
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class Connected:
    """``connected``: the first message of every stream."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """``start``: stream and call identity, media format and the TwiML ``<Parameter>``s."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Dtmf:
    """``dtmf``: a key the caller pressed."""

    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """``mark``: the echo of a mark relay sent, once the audio before it has played (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """``stop``: the call ended."""

    call_sid: str


@dataclass(frozen=True, slots=True)
class Media:
    """``media``: 20 ms of the caller's audio, base64 μ-law (``timestamp``: ms since the stream began).

    The compiled path reads nearly every one; this is the shape it hands up when it cannot."""

    payload: bytes
    timestamp: int


TwilioEvent = Connected | Start | Dtmf | Mark | Stop | Media


@dataclass(frozen=True, slots=True)
class VoiceRequest:
    """The fields of a voice webhook relay acts on, each of the shape Twilio sends."""

    call_sid: str
    account_sid: str
    to: str
    from_: str


def voice_request(params: Mapping[str, str]) -> VoiceRequest:
    """Check a voice webhook's ``CallSid``, ``AccountSid``, ``To`` and ``From``.

    Runs before anything is looked up or counted, so a malformed request (an empty
    ``CallSid`` above all, which could pass for a retry of another call) costs nothing.

    Raises:
        ProtocolError: the first field that is missing or malformed, named (the value never is).
    """
    call_sid, account_sid = params.get("CallSid", ""), params.get("AccountSid", "")
    to, from_ = params.get("To", ""), params.get("From", "")
    if not CALL_SID.fullmatch(call_sid):
        raise ProtocolError("CallSid must be CA followed by 32 hex digits")
    if not ACCOUNT_SID.fullmatch(account_sid):
        raise ProtocolError("AccountSid must be AC followed by 32 hex digits")
    if not (E164.fullmatch(to) or _CLIENT_OR_SIP.fullmatch(to)):
        raise ProtocolError("To must be an E.164 number or a client:/sip: address")
    if from_ and not (E164.fullmatch(from_) or _CLIENT_OR_SIP.fullmatch(from_) or _CALLER_ID_WORD.fullmatch(from_)):
        raise ProtocolError("From must be an E.164 number, a client:/sip: address, or a withheld caller ID")
    return VoiceRequest(call_sid, account_sid, to, from_)


def check_start(start: Start) -> None:
    """A bidirectional stream relay can serve: μ-law, 8000 Hz, mono, the caller's track.

    Raises:
        ProtocolError: the first thing that is not, with what was sent (bounded).
    """
    if start.encoding != "audio/x-mulaw":
        raise ProtocolError(f"unsupported media encoding {start.encoding[:40]!r}: relay takes audio/x-mulaw")
    if start.sample_rate != SAMPLE_RATE:
        raise ProtocolError(f"unsupported sample rate {start.sample_rate}: relay takes {SAMPLE_RATE} Hz")
    if start.channels != 1:
        raise ProtocolError(f"unsupported channel count {start.channels}: relay takes mono")
    if "inbound" not in start.tracks:
        raise ProtocolError("the stream's tracks do not include inbound: there is no caller audio")


_T = TypeVar("_T")


def _get(obj: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"Twilio {where} needs {key!r} as {kind.__name__}")
    return value


def _media(obj: Mapping[str, object]) -> Media:
    # The same checks, and errors, as the compiled parser's (``fastpath.parse_media``).
    from relay.fastpath import b64_decoded_len

    media = obj.get("media")
    if not isinstance(media, dict):
        raise ProtocolError("media event has no 'media' object")
    payload, timestamp = media.get("payload"), media.get("timestamp")
    if not isinstance(payload, str):
        raise ProtocolError("media.payload must be a string")
    if not isinstance(timestamp, str):
        raise ProtocolError("media.timestamp must be a string")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 15:
        raise ProtocolError("media.timestamp must be a string of at most 15 digits")
    data = payload.encode()
    b64_decoded_len(data)  # validates; never decodes
    return Media(data, int(timestamp))


def parse_event(message: bytes) -> TwilioEvent:
    """Parse any Twilio event, once (the compiled path reads ``media`` and marks first).

    Args:
        message: one WebSocket text message from Twilio.

    Returns:
        The event object.

    Raises:
        ProtocolError: invalid JSON, an unknown event, or a required field missing or mistyped.
    """
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("Twilio message is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("Twilio message is not a JSON object")
    event = obj.get("event")
    if event == "media":
        return _media(obj)
    if event == "start":
        start: dict[str, Any] = _get(obj, "start", dict, "start")
        fmt: dict[str, Any] = _get(start, "mediaFormat", dict, "start")
        tracks: list[Any] = _get(start, "tracks", list, "start")
        if not all(isinstance(t, str) for t in tracks):
            raise ProtocolError("Twilio start.tracks must be a list of strings")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ProtocolError("Twilio start.customParameters must map names to strings")
        return Start(
            stream_sid=_get(start, "streamSid", str, "start"),
            call_sid=_get(start, "callSid", str, "start"),
            account_sid=_get(start, "accountSid", str, "start"),
            tracks=tuple(tracks),
            encoding=_get(fmt, "encoding", str, "start.mediaFormat"),
            sample_rate=_get(fmt, "sampleRate", int, "start.mediaFormat"),
            channels=_get(fmt, "channels", int, "start.mediaFormat"),
            custom_parameters=params,
        )
    if event == "connected":
        return Connected(_get(obj, "protocol", str, "connected"), _get(obj, "version", str, "connected"))
    if event == "mark":
        mark: dict[str, Any] = _get(obj, "mark", dict, "mark")
        return Mark(_get(mark, "name", str, "mark"))
    if event == "dtmf":
        dtmf: dict[str, Any] = _get(obj, "dtmf", dict, "dtmf")
        digit = _get(dtmf, "digit", str, "dtmf")
        if digit not in DTMF_DIGITS:
            raise ProtocolError("Twilio dtmf.digit must be one of 0-9 * # A-D")
        return Dtmf(digit)
    if event == "stop":
        stop = obj.get("stop")
        call_sid = stop.get("callSid", "") if isinstance(stop, dict) else ""
        return Stop(call_sid if isinstance(call_sid, str) else "")
    # Never repr() what a peer sent: a deeply nested value would recurse; a long one floods the log.
    if isinstance(event, str):
        raise ProtocolError(f"unknown Twilio event {event[:40]!r}")
    raise ProtocolError(f"Twilio message has no string 'event' (got {type(event).__name__})")


def refusal_twiml(message: str) -> str:
    """TwiML that says ``message``, then hangs up (a refused call, or one relay could not serve)."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def hangup_twiml() -> str:
    """TwiML that ends the call at once."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


CONFERENCE = "conference:"  # a transfer target that is a conference room, by name


def dialable(target: str) -> bool:
    """A number, a SIP address or a conference room (``conference:<name>``) ``dial_twiml`` connects to."""
    if target.startswith(CONFERENCE):
        return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", target[len(CONFERENCE) :]))
    return bool(E164.fullmatch(target) or SIP_URI.fullmatch(target))


def dial_twiml(target: str) -> str:
    """TwiML that connects the caller to ``target`` (``dialable``); the call ends when that leg
    does. A conference ends when its last participant leaves."""
    response = VoiceResponse()
    dial = Dial()
    if target.startswith(CONFERENCE):
        dial.conference(target[len(CONFERENCE) :], start_conference_on_enter=True, end_conference_on_exit=True)
    elif SIP_URI.fullmatch(target):
        dial.sip(target)
    else:
        dial.number(target)
    response.append(dial)
    return str(response)


def empty_twiml() -> str:
    """TwiML that does nothing: the answer to a text that needs no reply (BACKENDS §6.7)."""
    return str(MessagingResponse())


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str], after_url: str | None = None) -> str:
    """TwiML that connects the call to relay's media WebSocket (PROTOCOLS §1.1).

    Twilio drops a query string from the stream URL, so per-call values travel as
    ``<Parameter>``s and come back in ``start.customParameters``. ``<Connect>`` holds the
    call until relay closes the stream; Twilio then runs what follows it: a ``<Redirect>``
    to ``after_url``, which decides what the caller hears next.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    if after_url is not None:
        response.redirect(after_url, method="POST")
    return str(response)
