"""Plain-Python twin of ``_framing.pxi``: WebSocket frames (RFC 6455), built and read.

Written to be obviously right, not fast. The compiled part must return exactly what this
module returns, and raise the same error class, for every input and every split of a byte
stream (tests hold it to that, and both to ``websockets``' own framing). The contract and its
docstrings live in ``_fastpath.pyi``.
"""

from __future__ import annotations

from relay.errors import FrameError

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT", "FrameReader", "build_frame"]

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
            raise FrameError(
                1002, "client frames must be masked" if self.masked else "server frames must not be masked"
            )
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
