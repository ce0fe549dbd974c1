"""Plain-Python twin of ``_messages.pxi``: Twilio and Realtime messages, read and written.

Written to be obviously right, not fast: it parses with orjson and builds with plain
concatenation. The compiled part must return exactly what this module returns, and raise the
same error class, for every input (tests hold it to that with hypothesis); it hands every
message outside its one-pass subset to the functions here. The contract and its docstrings
live in ``_fastpath.pyi``.

Message shapes: Twilio Media Streams (PROTOCOLS §1.3-1.4) and OpenAI Realtime GA (§2.3-2.4).
"""

from __future__ import annotations

import re

import orjson

from relay.errors import PayloadError, ProtocolError

__all__ = ["TwilioWriter", "b64_decoded_len", "parse_audio_delta", "parse_gemini_audio", "parse_media"]

# Standard base64 alphabet, padded, as Twilio and OpenAI send it.
_B64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def b64_decoded_len(data: bytes) -> int:
    """Return how many bytes ``data`` (padded base64) decodes to, without decoding it."""
    n = len(data)
    if n % 4 or _B64.fullmatch(data) is None:
        raise PayloadError("payload is not padded standard base64")
    if n == 0:
        return 0
    pad = 2 if data.endswith(b"==") else 1 if data.endswith(b"=") else 0
    return n // 4 * 3 - pad


def _load_object(message: bytes, what: str) -> dict[str, object]:
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj


def _str_field(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{where}.{key} must be a string")
    return value


def parse_media(message: bytes) -> tuple[bytes, int] | None:
    """See ``_fastpath.pyi``."""
    obj = _load_object(message, "Twilio message")
    event = obj.get("event")
    if not isinstance(event, str):
        raise ProtocolError("Twilio message has no string 'event'")
    if event != "media":
        return None
    media = obj.get("media")
    if not isinstance(media, dict):
        raise ProtocolError("media event has no 'media' object")
    payload = _str_field(media, "payload", "media").encode()
    timestamp = _str_field(media, "timestamp", "media")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 15:
        raise ProtocolError("media.timestamp must be a string of at most 15 digits")
    b64_decoded_len(payload)  # validates; never decodes
    return payload, int(timestamp)


def parse_audio_delta(message: bytes) -> tuple[str, bytes, str] | None:
    """See ``_fastpath.pyi``."""
    obj = _load_object(message, "Realtime event")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("Realtime event has no string 'type'")
    if kind == "session.output_audio.delta":  # GPT-Live: one stream of audio, no items
        live = _str_field(obj, "delta", kind).encode()
        b64_decoded_len(live)
        return "", live, ""
    if kind != "response.output_audio.delta":
        return None
    item_id = _str_field(obj, "item_id", "response.output_audio.delta")
    delta = _str_field(obj, "delta", "response.output_audio.delta").encode()
    b64_decoded_len(delta)
    response_id = _str_field(obj, "response_id", "response.output_audio.delta") if "response_id" in obj else ""
    return item_id, delta, response_id


# The caller-audio append up to its audio, per backend wire (``relay.backends.WIRE_*``):
# Realtime's input_audio_buffer.append (PROTOCOLS §2.3), GPT-Live's session.input_audio.append.
# The caller-audio append around its base64 audio, per backend wire (``relay.backends.WIRE_*``):
# Realtime's input_audio_buffer.append, GPT-Live's session.input_audio.append, none for Deepgram
# (a binary frame of the μ-law itself), Gemini Live's realtimeInput.audio (PCM16 at 16 kHz).
_APPENDS = (
    b'{"type":"input_audio_buffer.append","audio":"',
    b'{"type":"session.input_audio.append","audio":"',
    b"",
    b'{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"',
)
_SUFFIXES = (b'"}', b'"}', b"", b'"}}}')
WIRE_BINARY, WIRE_PCM16 = 2, 3  # the wires whose audio is not the caller's base64 as is


def _append(payload: bytes, wire: int = 0) -> bytes:
    """The append message carrying ``payload`` (base64 audio) as is, in ``wire``'s shape: what
    ``WsCore.send_append`` frames for the backend."""
    return _APPENDS[wire] + payload + _SUFFIXES[wire]


# The mime types of Gemini Live's output audio relay reads as PCM16 at 24 kHz (BACKENDS §3.3).
GEMINI_AUDIO_TYPES = ("audio/pcm;rate=24000", "audio/pcm")


def _only(obj: object, key: str, allowed: tuple[str, ...] = ()) -> object:
    """``obj[key]`` when ``obj`` is an object with ``key`` and no keys but it and ``allowed``."""
    if not isinstance(obj, dict) or key not in obj or any(k != key and k not in allowed for k in obj):
        return None
    return obj[key]


def parse_gemini_audio(message: bytes) -> bytes | None:
    """See ``_fastpath.pyi``."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    parts = _only(_only(_only(obj, "serverContent"), "modelTurn"), "parts", ("role",))
    if not isinstance(parts, list) or len(parts) != 1:
        return None
    inline = _only(parts[0], "inlineData")
    if not isinstance(inline, dict) or set(inline) != {"mimeType", "data"}:
        return None
    mime, data = inline["mimeType"], inline["data"]
    if mime not in GEMINI_AUDIO_TYPES or not isinstance(data, str):
        return None
    raw = data.encode()
    try:
        b64_decoded_len(raw)
    except PayloadError:
        return None
    return raw


def _json_str(value: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # lone surrogates
        raise ProtocolError("string cannot be encoded as JSON") from exc


class TwilioWriter:
    """See ``_fastpath.pyi``."""

    __slots__ = ("stream_sid", "_media_prefix", "_mark_prefix", "_clear")

    def __init__(self, stream_sid: object) -> None:  # anything: refused as the compiled one refuses it
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ProtocolError("streamSid must be a non-empty string")
        self.stream_sid = stream_sid
        sid = _json_str(stream_sid)
        self._media_prefix = b'{"event":"media","streamSid":' + sid + b',"media":{"payload":"'
        self._mark_prefix = b'{"event":"mark","streamSid":' + sid + b',"mark":{"name":'
        self._clear = b'{"event":"clear","streamSid":' + sid + b"}"

    def media(self, payload: bytes) -> bytes:
        return self._media_prefix + payload + b'"}}'

    def mark(self, name: object) -> bytes:
        if not isinstance(name, str) or not name:
            raise ProtocolError("mark.name must be a non-empty string")
        return self._mark_prefix + _json_str(name) + b"}}"

    def clear(self) -> bytes:
        return self._clear
