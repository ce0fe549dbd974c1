"""Twilio Media Streams, sans-I/O: the TwiML answer and every event Twilio sends (PROTOCOLS §1).

``media`` events take the compiled one-pass path (``fastpath.parse_media``); everything else,
a handful of messages per call, is parsed here with orjson into small event objects. The
messages relay sends back are built by ``fastpath.TwilioWriter``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from twilio.twiml.voice_response import Connect, VoiceResponse

from relay.errors import ProtocolError

STREAM_PATH = "/twilio/voice"


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


TwilioEvent = Connected | Start | Dtmf | Mark | Stop


def _get(obj: Mapping[str, object], key: str, kind: type, where: str) -> object:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"Twilio {where} needs {key!r} as {kind.__name__}")
    return value


def parse_event(message: bytes) -> TwilioEvent:
    """Parse any Twilio event but ``media`` (which ``fastpath.parse_media`` reads).

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
    if event == "start":
        start = _get(obj, "start", dict, "start")
        assert isinstance(start, dict)
        fmt = _get(start, "mediaFormat", dict, "start")
        assert isinstance(fmt, dict)
        tracks = _get(start, "tracks", list, "start")
        if not all(isinstance(t, str) for t in tracks):  # type: ignore[union-attr]
            raise ProtocolError("Twilio start.tracks must be a list of strings")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ProtocolError("Twilio start.customParameters must map names to strings")
        return Start(
            stream_sid=str(_get(start, "streamSid", str, "start")),
            call_sid=str(_get(start, "callSid", str, "start")),
            account_sid=str(_get(start, "accountSid", str, "start")),
            tracks=tuple(tracks),  # type: ignore[arg-type]
            encoding=str(_get(fmt, "encoding", str, "start.mediaFormat")),
            sample_rate=int(_get(fmt, "sampleRate", int, "start.mediaFormat")),  # type: ignore[call-overload]
            channels=int(_get(fmt, "channels", int, "start.mediaFormat")),  # type: ignore[call-overload]
            custom_parameters=params,
        )
    if event == "connected":
        return Connected(str(_get(obj, "protocol", str, "connected")), str(_get(obj, "version", str, "connected")))
    if event == "mark":
        mark = _get(obj, "mark", dict, "mark")
        return Mark(str(_get(mark, "name", str, "mark")))  # type: ignore[arg-type]
    if event == "dtmf":
        dtmf = _get(obj, "dtmf", dict, "dtmf")
        return Dtmf(str(_get(dtmf, "digit", str, "dtmf")))  # type: ignore[arg-type]
    if event == "stop":
        stop = obj.get("stop")
        call_sid = stop.get("callSid", "") if isinstance(stop, dict) else ""
        return Stop(call_sid if isinstance(call_sid, str) else "")
    # Never repr() what a peer sent: a deeply nested value would recurse; a long one floods the log.
    if isinstance(event, str):
        raise ProtocolError(f"unknown Twilio event {event[:40]!r}")
    raise ProtocolError(f"Twilio message has no string 'event' (got {type(event).__name__})")


def refusal_twiml(message: str) -> str:
    """TwiML for a call relay will not connect: say why, then hang up."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """TwiML that connects the call to relay's media WebSocket (PROTOCOLS §1.1).

    Twilio drops a query string from the stream URL, so per-call values travel as
    ``<Parameter>``s and come back in ``start.customParameters``.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)
