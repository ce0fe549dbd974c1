"""Plain-Python reference of the per-frame hot path: the test oracle for ``_fastpath``.

Every function here is written to be obviously right, not fast: it parses with orjson and
builds with plain concatenation. ``relay/_fastpath.pyx`` must return exactly what this module
returns, and raise the same error class, for every input (tests hold it to that with
hypothesis). The contract and its docstrings live in ``_fastpath.pyi``.

Message shapes: Twilio Media Streams (PROTOCOLS §1.3-1.4) and OpenAI Realtime GA (§2.3-2.4).
"""

from __future__ import annotations

import re

import orjson

from relay.errors import FrameError, PayloadError, ProtocolError

IMPLEMENTATION = "python"

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


def parse_audio_delta(message: bytes) -> tuple[str, bytes] | None:
    """See ``_fastpath.pyi``."""
    obj = _load_object(message, "Realtime event")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("Realtime event has no string 'type'")
    if kind != "response.output_audio.delta":
        return None
    item_id = _str_field(obj, "item_id", "response.output_audio.delta")
    delta = _str_field(obj, "delta", "response.output_audio.delta").encode()
    b64_decoded_len(delta)
    return item_id, delta


def _json_str(value: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # lone surrogates
        raise ProtocolError("string cannot be encoded as JSON") from exc


class TwilioWriter:
    """See ``_fastpath.pyi``."""

    __slots__ = ("stream_sid", "_media_prefix", "_mark_prefix", "_clear")

    def __init__(self, stream_sid: str) -> None:
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ProtocolError("streamSid must be a non-empty string")
        self.stream_sid = stream_sid
        sid = _json_str(stream_sid)
        self._media_prefix = b'{"event":"media","streamSid":' + sid + b',"media":{"payload":"'
        self._mark_prefix = b'{"event":"mark","streamSid":' + sid + b',"mark":{"name":'
        self._clear = b'{"event":"clear","streamSid":' + sid + b"}"

    def media(self, payload: bytes) -> bytes:
        return self._media_prefix + payload + b'"}}'

    def mark(self, name: str) -> bytes:
        if not isinstance(name, str) or not name:
            raise ProtocolError("mark.name must be a non-empty string")
        return self._mark_prefix + _json_str(name) + b"}}"

    def clear(self) -> bytes:
        return self._clear


# ---------------------------------------------------------------- WebSocket framing (RFC 6455)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)


def _apply_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def build_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """See ``_fastpath.pyi``."""
    if type(payload) is not bytes:
        raise TypeError("payload must be bytes")
    if type(opcode) is not int or (opcode not in _DATA_OPS and opcode not in _CONTROL_OPS):
        raise ValueError(f"cannot build a frame with opcode {opcode!r}")
    n = len(payload)
    if opcode in _CONTROL_OPS and n > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    if mask is not None and (type(mask) is not bytes or len(mask) != 4):
        raise ValueError("mask must be 4 bytes")
    bit = 0x80 if mask is not None else 0
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + _apply_mask(payload, mask)


def _check_utf8(data: bytes, what: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, f"{what} is not valid UTF-8") from None


class FrameReader:
    """See ``_fastpath.pyi``."""

    __slots__ = ("masked", "max_size", "_buf", "_parts", "_part_op", "_part_size")

    def __init__(self, masked: bool, max_size: int = 1 << 20) -> None:
        if type(max_size) is not int or not 0 <= max_size < 1 << 63:
            raise ValueError("max_size must be an int from 0 to 2**63 - 1")
        self.masked = bool(masked)
        self.max_size = max_size
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._part_op = -1
        self._part_size = 0

    def feed(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("feed() takes bytes")
        self._buf += data

    def pending(self) -> int:
        return len(self._buf)

    def read(self) -> tuple[int, bytes] | None:
        while True:
            frame = self._frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode in _CONTROL_OPS:
                if opcode == OP_CLOSE:
                    if len(payload) == 1:
                        raise FrameError(1002, "close frame with a 1-byte payload")
                    code = int.from_bytes(payload[:2], "big")
                    if len(payload) >= 2 and not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
                        raise FrameError(1002, "invalid close code")
                    _check_utf8(payload[2:], "close reason")
                return opcode, payload
            if opcode == OP_CONT:
                if self._part_op < 0:
                    raise FrameError(1002, "continuation frame without a message to continue")
                self._parts.append(payload)
                if not fin:
                    continue
                opcode, payload = self._part_op, b"".join(self._parts)
                self._parts, self._part_op, self._part_size = [], -1, 0
            elif self._part_op >= 0:
                raise FrameError(1002, "new message before the fragmented one ended")
            elif not fin:
                self._parts, self._part_op = [payload], opcode
                continue
            if opcode == OP_TEXT:
                _check_utf8(payload, "text message")
            return opcode, payload

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        if b0 & 0x70:
            raise FrameError(1002, "reserved bits set without an extension")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS and opcode != OP_CONT:
            raise FrameError(1002, f"unknown opcode {opcode}")
        if bool(b1 & 0x80) != self.masked:
            raise FrameError(1002, "client frames must be masked" if self.masked else "server frames must not be masked")
        n, head = b1 & 0x7F, 2
        if opcode in _CONTROL_OPS:
            if not fin:
                raise FrameError(1002, "fragmented control frame")
            if n > 125:
                raise FrameError(1002, "control frame over 125 bytes")
        if n == 126:
            if len(buf) < 4:
                return None
            n, head = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, head = int.from_bytes(buf[2:10], "big"), 10
            if n >> 63:
                raise FrameError(1002, "frame length over 2**63")
        if opcode not in _CONTROL_OPS and self._part_size + n > self.max_size:
            raise FrameError(1009, f"message over {self.max_size} bytes")
        mask_at = head
        if self.masked:
            head += 4
        if len(buf) < head + n:
            return None
        payload = bytes(buf[head : head + n])
        if self.masked:
            payload = _apply_mask(payload, bytes(buf[mask_at : mask_at + 4]))
        del buf[: head + n]
        if opcode not in _CONTROL_OPS:
            self._part_size += n if (opcode == OP_CONT or not fin) else 0
        return fin, opcode, payload



# ---------------------------------------------------------------- codec

from relay._codec_py import *  # noqa: E402,F403  (the codec twin lives in its own module)
from relay._playout_py import *  # noqa: E402,F403
from relay._wscore_py import *  # noqa: E402,F403
from relay._media_py import *  # noqa: E402,F403
