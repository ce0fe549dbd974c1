"""A seeded mutation fuzzer for every per-frame parser of the compiled hot path.

::

    python -m relay.devtools.fuzz [--frames N] [--seconds S] [--seed K] [--twin-every M] [--strict]

Each input starts from a valid message (Twilio Media Streams, OpenAI Realtime, or bare base64
audio) and is mutated through its JSON tree (a value of another type, a deeply nested value,
a duplicated or renamed key, a huge number, a NaN-like token, a string that is not UTF-8 or
not base64...) and/or byte by byte (bit flips, inserted tokens, deletions, truncation,
splices of two messages); a few inputs are plain random bytes and a few are left valid. Every
input goes through ``parse_media``, ``parse_audio_delta``, ``b64_decoded_len``,
``twilio.parse_event`` and ``realtime.parse_event``; the same input, framed the way a peer
frames it (masked or not, fragmented, between control frames) and often mutated again, goes
through a ``FrameReader`` fed in random chunks.

Each outcome is counted per parser: a value, ``None``, or a documented error class
(``FrameError`` by close code). The run stops with exit status 1, printing the input as a
Python bytes literal, on:

* an exception a parser does not document (KeyError, TypeError, RecursionError, ...);
* a ``FrameReader.read()`` that returns a message without consuming input;
* the compiled module and its plain-Python twin (``relay._fastpath_py``) disagreeing on the
  same input, checked on every M-th input (default 10: the twin is slower, and a check every
  time would double the run).

Exceptions listed in ``KNOWN_BUGS`` (found by this fuzzer and reported, not yet fixed) are
counted in their own column and do not fail the run unless ``--strict`` is given.

The sequence of inputs depends only on ``--seed``; ``--seconds`` can only cut it short.
From Python: ``main(["--frames", "20000"])`` returns the exit status; ``run(...)`` returns the
counts. The mutators (``mutate_tree``, ``mutate_bytes``, ``frame_stream``) take any
``random.Random``, so tests drive them with hypothesis.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from relay import _fastpath_py as twin
from relay import twilio
from relay.audio_format import FRAME_BYTES
from relay.backends import realtime
from relay.errors import FrameError, PayloadError, ProtocolError

# ---------------------------------------------------------------------------------- the corpus


class Rng(random.Random):
    """``random.Random`` with the few draws the fuzzer makes per byte done cheaply.

    Same stream for the same seed (everything derives from ``random()``); the stock
    ``randrange`` / ``randint`` / ``choice`` cost a microsecond each, which at a million inputs
    is most of the run.
    """

    def randrange(self, stop: int) -> int:  # type: ignore[override]  # the one-argument form only
        return int(self.random() * stop)

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq: Sequence[Any]) -> Any:  # type: ignore[override]  # sequences only, indexed directly
        return seq[int(self.random() * len(seq))]


_PAYLOAD = base64.b64encode(bytes(range(256))[:FRAME_BYTES]).decode()  # 20 ms of 8 kHz μ-law: 216 chars
_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"

TWILIO_SEEDS: tuple[bytes, ...] = (
    b'{"event":"connected","protocol":"Call","version":"1.0.0"}',
    b'{"event":"start","sequenceNumber":"1","start":{"accountSid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"streamSid":"' + _SID.encode() + b'","callSid":"CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    b'"customParameters":{"FirstName":"Jane","token":"v1.1700000000.abc"}},"streamSid":"' + _SID.encode() + b'"}',
    b'{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
    b'"payload":"no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhQMCAYIDBEaKdCdkYuIh4mNlK0t"},'
    b'"streamSid":"' + _SID.encode() + b'"}',
    b'{"event":"media","sequenceNumber":"9999","media":{"track":"inbound","chunk":"9998",'
    b'"timestamp":"199960","payload":"' + _PAYLOAD.encode() + b'"},"streamSid":"' + _SID.encode() + b'"}',
    b'{"event":"dtmf","streamSid":"'
    + _SID.encode()
    + b'","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}',
    b'{"event":"mark","sequenceNumber":"4","streamSid":"' + _SID.encode() + b'","mark":{"name":"my label"}}',
    b'{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    b'"callSid":"CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"},"streamSid":"' + _SID.encode() + b'"}',
)

REALTIME_SEEDS: tuple[bytes, ...] = (
    b'{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1",'
    b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"//7+/g=="}',
    b'{"type":"response.output_audio.delta","event_id":"event_2","response_id":"resp_1",'
    b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"' + _PAYLOAD.encode() + b'"}',
    orjson.dumps(
        {
            "type": "session.updated",
            "event_id": "event_3",
            "session": {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "transcription": {"model": "gpt-4o-mini-transcribe"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                            "create_response": True,
                        },
                    },
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
                },
            },
        }
    ),
    orjson.dumps(
        {
            "type": "error",
            "event_id": "event_4",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "Invalid value.",
                "param": None,
                "event_id": None,
            },
        }
    ),
    orjson.dumps(
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "event_5",
            "audio_start_ms": 1000,
            "item_id": "item_2",
        }
    ),
    orjson.dumps(
        {
            "type": "response.done",
            "event_id": "event_6",
            "response": {"id": "resp_1", "status": "completed", "output": [], "usage": {"total_tokens": 12}},
        }
    ),
)

B64_SEEDS: tuple[bytes, ...] = (b"", b"AAAA", b"//7+/g==", b"AAA=", _PAYLOAD.encode())

SEEDS: tuple[bytes, ...] = TWILIO_SEEDS + REALTIME_SEEDS + B64_SEEDS

# ------------------------------------------------------------------ JSON trees with the peer's freedoms


class Obj(list):  # type: ignore[type-arg]  # pairs of any JSON
    """A JSON object as ordered ``(key, value)`` pairs, so keys may repeat."""


class Raw(bytes):
    """A JSON token written exactly as given (possibly not JSON at all)."""


def to_tree(message: bytes) -> Any:
    """A valid JSON message as a tree of ``Obj`` / list / scalars."""
    return json.loads(message, object_pairs_hook=Obj)


def emit(node: Any) -> bytes:
    """Write a tree back as bytes; ``Raw`` tokens and keys go out verbatim."""
    kind = type(node)
    if kind is Obj:
        return b"{" + b",".join(_key(k) + b":" + emit(v) for k, v in node) + b"}"
    if kind is list:
        return b"[" + b",".join(emit(v) for v in node) + b"]"
    if kind is dict:
        return emit(Obj(node.items()))
    if kind is Raw:
        raw: bytes = node
        return raw
    if kind is str:
        try:
            return orjson.dumps(node)
        except orjson.JSONEncodeError:  # a lone surrogate: written as its \\u escape
            return json.dumps(node).encode()
    if kind is int:
        return str(node).encode()  # any size, where orjson stops at 64 bits
    if kind is float:
        return json.dumps(node).encode()  # NaN and Infinity as the tokens, not null
    return orjson.dumps(node)


def _key(key: Any) -> bytes:
    return key if type(key) is Raw else orjson.dumps(key)


def node_paths(node: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every node's path (indexes into pairs / items), the root first."""
    out = [path]
    if type(node) is Obj:
        for i, (_, value) in enumerate(node):
            out += node_paths(value, (*path, i))
    elif type(node) is list:
        for i, value in enumerate(node):
            out += node_paths(value, (*path, i))
    return out


def node_at(node: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        node = node[i][1] if type(node) is Obj else node[i]
    return node


def replace_at(node: Any, path: tuple[int, ...], new: Any, at: int = 0) -> Any:
    """A copy of ``node`` with the node at ``path`` replaced (only the path is copied)."""
    if at == len(path):
        return new
    i = path[at]
    if type(node) is Obj:
        copy = Obj(node)
        copy[i] = (copy[i][0], replace_at(copy[i][1], path, new, at + 1))
        return copy
    items = list(node)
    items[i] = replace_at(items[i], path, new, at + 1)
    return items


# Values a field may be swapped for: every JSON type, numbers at and beyond the edges orjson
# and the compiled scanner draw, then tokens that are not JSON at all (NaN-like and worse).
VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    "",
    "x",
    "media",
    [],
    Obj(),
    [1, "a", None],
    Obj([("a", 1)]),
    Obj([("payload", "AAAA"), ("timestamp", "1")]),
    Obj([("type", "audio/pcmu")]),
    Raw(b"-0"),
    Raw(b"0.0"),
    Raw(b"1e3"),
    Raw(b"1E-3"),
    Raw(b"1e999"),
    Raw(b"-1e999"),
    Raw(b"1e-999"),
    Raw(b"123456789012345678"),
    Raw(b"1234567890123456789"),
    Raw(b"18446744073709551615"),
    Raw(b"18446744073709551616"),
    Raw(b"-9223372036854775809"),
    Raw(b"9" * 400),
    Raw(b"0." + b"1" * 400),
)
BROKEN_VALUES: tuple[Raw, ...] = (
    Raw(b"NaN"),
    Raw(b"-NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"nan"),
    Raw(b"inf"),
    Raw(b"01"),
    Raw(b"1."),
    Raw(b".5"),
    Raw(b"+1"),
    Raw(b"0x10"),
    Raw(b"-"),
    Raw(b"1e"),
    Raw(b"--1"),
    Raw(b"tru"),
    Raw(b"True"),
    Raw(b"nul"),
    Raw(b"undefined"),
    Raw(b"'x'"),
    Raw(b""),
)

# Strings a string field may become: base64 and digit edges, escapes, unicode; then strings
# that are not JSON (lone surrogates, bad escapes, bytes that are not UTF-8, control bytes).
STRINGS: tuple[Any, ...] = (
    "",
    "A",
    "AA",
    "AAA",
    "AAAA",
    "AA==",
    "AAA=",
    "A===",
    "====",
    "AA=A",
    "AAAA====",
    "AA==AA==",
    "A-_A",
    "AAA\n",
    " AAAA",
    "AAAA ",
    "0",
    "5",
    "000000000000000",
    "999999999999999",
    "1000000000000000",
    "-1",
    "1.0",
    "1e3",
    "\u0663",
    "\u00b2",
    "\uff11",
    "media",
    "Media",
    "media ",
    "response.output_audio.delta",
    "start",
    "stop",
    "mark",
    "dtmf",
    "connected",
    "session.updated",
    "error",
    "audio/pcmu",
    "\u00e9",
    "\U0001f600",
    "x" * 300,
    "A" * 4096,
    Raw(b'"\\u0041AAA"'),
    Raw(b'"AA\\u003d="'),
    Raw(b'"\\/\\/7+/g=="'),
    Raw(b'"\\ud83d\\ude00"'),
    Raw(b'"\\u0000"'),
    Raw(b'"\x7f"'),
    Raw(b'"\xc3\xa9"'),
)
BROKEN_STRINGS: tuple[Raw, ...] = (
    Raw(b'"\\ud800"'),
    Raw(b'"\\udc00x"'),
    Raw(b'"\\x41"'),
    Raw(b'"\\'),
    Raw(b'"\xff\xfe"'),
    Raw(b'"\xc3\x28"'),
    Raw(b'"\xed\xa0\x80"'),
    Raw(b'"\xf4\x90\x80\x80"'),
    Raw(b'"\xc0\xaf"'),
    Raw(b'"\x01"'),
    Raw(b'"\x00"'),
    Raw(b'"\t"'),
    Raw(b'"unterminated'),
)

KEYS: tuple[Any, ...] = (
    "event",
    "media",
    "payload",
    "timestamp",
    "type",
    "item_id",
    "delta",
    "start",
    "tracks",
    "mediaFormat",
    "customParameters",
    "session",
    "audio",
    "format",
    "",
    "Event",
    "event ",
    "x",
    Raw(b'"\\u0065vent"'),
    Raw(b'"ev\\u0065nt"'),
    Raw(b'"t\\u0079pe"'),
    Raw(b'"\xc3\xa9"'),
    Raw(b'"\xff"'),
    Raw(b"event"),
    Raw(b'"event'),
    Raw(b"1"),
)

# Nesting depths around the compiled scanner's limit (64) and orjson's (1024).
DEPTHS = (2, 63, 64, 65, 66, 200, 1000, 1020, 1023, 1024, 1025, 2000)


def _any_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.1:
        return rng.choice(BROKEN_VALUES if r < 0.05 else BROKEN_STRINGS)
    return rng.choice(VALUES) if r < 0.65 else rng.choice(STRINGS)


_B64_ALPHABET = "ABCXYZabcxyz0189+/"


def _any_string(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.1:
        return rng.choice(BROKEN_STRINGS)
    if r < 0.25:  # digits around the 15 a timestamp may have
        return "".join(rng.choice("0123456789") for _ in range(rng.choice((0, 1, 2, 13, 14, 15, 15, 16, 17))))
    if r < 0.4:  # base64-like: any length, '=' anywhere, sometimes a stray byte
        text = "".join(rng.choice(_B64_ALPHABET) for _ in range(rng.randrange(13)))
        text += "=" * rng.choice((0, 0, 1, 2, 3))
        if rng.random() < 0.2:
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice("= -_.\n\u00e9") + text[i:]
        return text
    return rng.choice(STRINGS)


def _nest(node: Any, rng: random.Random) -> Raw:
    depth = rng.choice(DEPTHS)
    inner = emit(node)
    if rng.random() < 0.5:
        return Raw(b"[" * depth + inner + b"]" * depth)
    return Raw(b'{"a":' * depth + inner + b"}" * depth)


def mutate_tree(tree: Any, rng: random.Random, paths: Sequence[tuple[int, ...]] | None = None) -> Any:
    """One structure-aware change to a copy of ``tree`` (``paths``: its ``node_paths``, if known)."""
    path = rng.choice(paths or node_paths(tree))
    node = node_at(tree, path)
    r = rng.random()
    if type(node) is Obj and r < 0.45:
        new = Obj(node)
        op = rng.randrange(6)
        if op == 0 and new:  # a key twice: orjson keeps the last
            key, value = rng.choice(new)
            twin_value = _any_value(rng) if rng.random() < 0.7 else value
            new.insert(rng.randrange(len(new) + 1), (key, twin_value))
        elif op == 1 and new:
            del new[rng.randrange(len(new))]
        elif op == 2 and new:
            i = rng.randrange(len(new))
            new[i] = (rng.choice(KEYS), new[i][1])
        elif op == 3:
            new.insert(rng.randrange(len(new) + 1), (rng.choice(KEYS), _any_value(rng)))
        elif op == 4:
            rng.shuffle(new)
        else:
            return replace_at(tree, path, _nest(node, rng))
        return replace_at(tree, path, new)
    if type(node) is str and r < 0.6:
        return replace_at(tree, path, _any_string(rng))
    if r < 0.85:
        return replace_at(tree, path, _any_value(rng))
    return replace_at(tree, path, _nest(node, rng))


# ---------------------------------------------------------------------------- byte mutations

INTERESTING_BYTES = b'\x00\x01\x1f "\\{}[],:=+/-.0159AZaez\x7f\x80\xbf\xc0\xc3\xed\xf4\xff'
TOKENS: tuple[bytes, ...] = (
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"==",
    b"null",
    b"true",
    b"NaN",
    b"Infinity",
    b"-",
    b"1e999",
    b"99999999999999999999",
    b"\\u0000",
    b"\\ud800",
    b"\\u",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xff",
    b"\x00",
    b" \t\r\n",
    b"\x0b",
    b"\xc2\xa0",
    b'"event":"media",',
    b'"type":"response.output_audio.delta",',
    b'{"a":' * 70,
    b"[" * 70,
    b"]" * 70,
)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level change."""
    buf = bytearray(data)
    n = len(buf)
    op = rng.randrange(9)
    if op == 0 and n:
        i = rng.randrange(n)
        buf[i] ^= 1 << rng.randrange(8)
    elif op == 1 and n:
        buf[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
    elif op == 2:
        i = rng.randrange(n + 1)
        buf[i:i] = rng.choice(TOKENS)
    elif op == 3 and n:
        i = rng.randrange(n)
        del buf[i : i + rng.randint(1, 8)]
    elif op == 4:
        del buf[rng.randrange(n + 1) :]
    elif op == 5 and n:
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 32))
        k = rng.randrange(n + 1)
        buf[k:k] = buf[i:j]
    elif op == 6:  # splice: the head of this message, the tail of another
        other = rng.choice(SEEDS)
        buf = buf[: rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1) :]
    elif op == 7:
        i = rng.randrange(n + 1)
        buf[i:i] = rng.choice((b" ", b"\t", b"\n", b"\r\n", b"  \n "))
    else:
        i = rng.randrange(n + 1)
        buf[i:i] = rng.randbytes(rng.randint(1, 4))
    return bytes(buf)


class Corpus:
    """Draws the fuzzer's inputs: valid seeds, mutated seeds, random bytes."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes] = SEEDS) -> None:
        self.rng = rng
        self.seeds = tuple(seeds)
        self.trees = [to_tree(s) if s[:1] == b"{" else None for s in self.seeds]
        self.paths = [node_paths(t) if t is not None else [] for t in self.trees]

    def draw(self) -> bytes:
        rng = self.rng
        r = rng.random()
        i = rng.randrange(len(self.seeds))
        seed, tree = self.seeds[i], self.trees[i]
        if r < 0.03:
            return seed
        if r < 0.08:
            return rng.randbytes(rng.randrange(48))
        if tree is not None and r < 0.75:
            tree = mutate_tree(tree, rng, self.paths[i])
            if rng.random() < 0.3:
                tree = mutate_tree(tree, rng)
            data = emit(tree)
            if rng.random() < 0.15:
                data = mutate_bytes(data, rng)
            return data
        data = seed
        for _ in range(rng.randint(1, 3)):
            data = mutate_bytes(data, rng)
        return data


# ------------------------------------------------------------------------------ frame streams

_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999)  # a peer may send these
_BAD_CLOSE_CODES = (1004, 1005, 1006, 1015, 1016, 2999, 5000, 0, 65535)  # RFC 6455 §7.4: never on the wire


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool,
    rng: random.Random,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One frame written by hand, so it can also break the rules (reserved bits, long forms)."""
    n = len(payload) if length is None else length
    form = rng.random()
    if n < 126 and form < 0.9:
        ext, n7 = b"", n
    elif n < 1 << 16 and form < 0.97:
        ext, n7 = n.to_bytes(2, "big"), 126
    else:
        ext, n7 = n.to_bytes(8, "big"), 127
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, (0x80 if masked else 0) | n7]) + ext
    if not masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + _mask(payload, key)


def frame_stream(message: bytes, rng: random.Random) -> tuple[bool, int, list[bytes]]:
    """``message`` as a peer would send it, sometimes broken: (masked, max_size, chunks)."""
    masked = rng.random() < 0.5
    n = len(message)
    max_size = 1 << 20 if rng.random() < 0.75 else rng.choice((max(n - 1, 0), n, n + 1, 125, 16, 0))
    frames: list[bytes] = []

    def control() -> bytes:
        op = rng.choice((0x8, 0x9, 0xA))
        if op == 0x8:
            r = rng.random()
            if r < 0.1:
                body = b""
            elif r < 0.15:
                body = b"\x03"
            else:
                codes = _BAD_CLOSE_CODES if r < 0.3 else _CLOSE_CODES
                reason = rng.choice((b"", b"", b"bye", "é".encode(), b"x" * 123, b"x" * 124, b"\xff", b"\xc3\x28"))
                body = rng.choice(codes).to_bytes(2, "big") + reason
        else:
            body = rng.randbytes(rng.choice((0, 4, 4, 125, 126)))
        return raw_frame(op, body, masked=masked, rng=rng, fin=rng.random() < 0.98)

    if rng.random() < 0.3:
        frames.append(control())
    opcode = 0x1 if rng.random() < 0.8 else 0x2
    pieces = rng.randint(1, 3)
    cuts = sorted(rng.randrange(len(message) + 1) for _ in range(pieces - 1))
    bounds = [0, *cuts, len(message)]
    for k in range(pieces):
        part = message[bounds[k] : bounds[k + 1]]
        frames.append(raw_frame(opcode if k == 0 else 0x0, part, fin=k == pieces - 1, masked=masked, rng=rng))
        if rng.random() < 0.15:
            frames.append(control())
    r = rng.random()
    if r < 0.04:  # a frame that breaks the rules on purpose
        frames.insert(
            rng.randrange(len(frames) + 1),
            raw_frame(
                rng.randrange(16),
                rng.randbytes(rng.randrange(8)),
                fin=rng.random() < 0.5,
                masked=rng.random() < 0.5,
                rng=rng,
                rsv=rng.randrange(8),
            ),
        )
    elif r < 0.06:  # a length field claiming 2**63 or more, or just more than is sent
        frames.append(
            raw_frame(
                rng.choice((0x1, 0x2, 0x0)),
                b"abc",
                masked=masked,
                rng=rng,
                length=rng.choice(((1 << 63) + 5, (1 << 64) - 1, (1 << 63) - 1, 70000)),
            )
        )
    stream = b"".join(frames)
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.6 and stream:  # aim at the headers
                buf = bytearray(stream)
                i = rng.randrange(min(len(buf), 14))
                buf[i] ^= 1 << rng.randrange(8)
                stream = bytes(buf)
            else:
                stream = mutate_bytes(stream, rng)
    if rng.random() < 0.02 and len(stream) < 400:
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(4)))
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]
    return masked, max_size, chunks


class Stalled(Exception):
    """``FrameReader.read()`` returned a message without consuming any input."""


def read_stream(reader_class: Any, masked: bool, max_size: int, chunks: Sequence[bytes]) -> list[Any]:
    """Feed ``chunks`` to a new reader, reading after each until ``None``.

    Returns every message read, then the ``FrameError`` (class and code) if one ended it.
    Raises ``Stalled`` if a read returns a message but the reader consumed nothing, and lets
    any other exception through.
    """
    reader = reader_class(masked, max_size)
    out: list[Any] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while True:
                before = reader.pending()
                message = reader.read()
                if message is None:
                    break
                if reader.pending() >= before:
                    raise Stalled(f"read() returned {message!r:.60} without consuming input")
                out.append(message)
    except FrameError as exc:
        out.append(("FrameError", exc.code))
    return out


# ------------------------------------------------------------------------------- the parsers

# Each per-frame parser, the exception classes it documents (exact classes), and for the
# fast-path ones the name of its twin in relay._fastpath_py.
MESSAGE_PARSERS: tuple[tuple[str, tuple[type[BaseException], ...], str | None], ...] = (
    ("parse_media", (ProtocolError, PayloadError), "parse_media"),
    ("parse_audio_delta", (ProtocolError, PayloadError), "parse_audio_delta"),
    ("b64_decoded_len", (PayloadError,), "b64_decoded_len"),
    ("twilio.parse_event", (ProtocolError, PayloadError), None),  # PayloadError: a media payload
    ("realtime.parse_event", (ProtocolError,), None),
)
FRAME_READER = "FrameReader"


@dataclass(frozen=True)
class KnownBug:
    """An undocumented exception already reported, and how to recognise it."""

    id: str
    summary: str
    matches: Callable[[str, BaseException], bool]


# Empty: the bugs this fuzzer found so far are fixed. A newly found one may be listed here while
# its fix is pending, so runs report it without failing (``--strict`` fails on it anyway).
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(parser: str, exc: BaseException) -> KnownBug | None:
    for bug in KNOWN_BUGS:
        if bug.matches(parser, exc):
            return bug
    return None


def _parser(name: str, impl: str | None, compiled: Any) -> Callable[[bytes], Any]:
    """The callable behind a ``MESSAGE_PARSERS`` row, looked up when a run starts."""
    if impl is not None:
        return getattr(compiled, impl)  # type: ignore[no-any-return]  # a parser by name
    return twilio.parse_event if name.startswith("twilio.") else realtime.parse_event


def _compiled() -> Any:
    import relay._fastpath as compiled  # the fuzzer is for the compiled path only

    return compiled


def _outcome(fn: Callable[[bytes], Any], data: bytes) -> tuple[str, Any]:
    try:
        value = fn(data)
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return "raise", type(exc)
    if isinstance(value, tuple):
        return "return", tuple((type(v), v) for v in value)
    return "return", (type(value), value)


_REPEAT = re.compile(rb"(.{1,8}?)\1{15,}", re.S)


def literal(data: bytes) -> str:
    """``data`` as a Python expression of bytes literals, long repeats written as ``b'[' * 1000``."""
    parts, at = [], 0
    for m in _REPEAT.finditer(data):
        if m.start() > at:
            parts.append(repr(data[at : m.start()]))
        unit = m.group(1)
        parts.append(f"{unit!r} * {(m.end() - m.start()) // len(unit)}")
        at = m.end()
    if at < len(data) or not parts:
        parts.append(repr(data[at:]))
    return " + ".join(parts)


@dataclass
class Failure:
    """Why the run failed, and the input that shows it."""

    parser: str
    what: str
    data: bytes = b""
    stream: tuple[bool, int, list[bytes]] | None = None
    trace: str = ""

    def report(self) -> str:
        lines = [f"FAIL {self.parser}: {self.what}"]
        if self.stream is None:
            lines.append(f"reproducer = {literal(self.data)}")
        else:
            masked, max_size, chunks = self.stream
            lines.append(
                f"reproducer = dict(masked={masked!r}, max_size={max_size!r}, "
                f"chunks=[{', '.join(literal(c) for c in chunks)}])"
            )
        if self.trace:
            lines.append(self.trace.rstrip())
        return "\n".join(lines)


@dataclass
class Result:
    """What a run did: inputs tried, outcome counts per parser, and the first failure."""

    inputs: int = 0
    seconds: float = 0.0
    twin_checks: int = 0
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    known: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # id -> (count, first input)
    failure: Failure | None = None

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


def _label(value: Any) -> str:
    return "None" if value is None else "ok"


def run(
    frames: int = 1_000_000, *, seed: int = 0, seconds: float | None = None, twin_every: int = 10, strict: bool = False
) -> Result:
    """Fuzz ``frames`` inputs (or until ``seconds`` pass); stop at the first failure.

    Args:
        frames: how many inputs to draw.
        seed: the seed of the input sequence.
        seconds: a wall-clock budget that may end the run early.
        twin_every: compare with the Python twin on every this-many-th input (0: never).
        strict: treat ``KNOWN_BUGS`` as failures too.
    """
    compiled = _compiled()
    rng = Rng(seed)
    corpus = Corpus(rng)
    result = Result(counts={name: Counter[str]() for name, _, _ in MESSAGE_PARSERS} | {FRAME_READER: Counter[str]()})
    fns = [
        (name, _parser(name, impl, compiled), documented, getattr(twin, impl) if impl else None, result.counts[name])
        for name, documented, impl in MESSAGE_PARSERS
    ]
    frame_counts = result.counts[FRAME_READER]
    reader_class, twin_reader = compiled.FrameReader, twin.FrameReader
    deadline = None if seconds is None else time.perf_counter() + seconds
    start = time.perf_counter()

    def undocumented(parser: str, exc: BaseException, data: bytes, stream: Any = None) -> bool:
        """Count a known bug and carry on (False), or record the failure (True)."""
        bug = None if strict else known_bug(parser, exc)
        if bug is not None:
            count, first = result.known.get(bug.id, (0, data))
            result.known[bug.id] = (count + 1, first)
            result.counts[parser]["KNOWN " + bug.id] += 1
            return False
        result.failure = Failure(
            parser,
            f"undocumented {type(exc).__name__}: {exc}"[:300],
            data,
            stream,
            "".join(traceback.format_exception(exc, limit=-4)),
        )
        return True

    for i in range(frames):
        if deadline is not None and (i & 255) == 0 and time.perf_counter() > deadline:
            break
        result.inputs = i + 1
        data = corpus.draw()
        check_twin = twin_every > 0 and i % twin_every == 0
        for name, fn, documented, twin_fn, counts in fns:
            try:
                counts[_label(fn(data))] += 1
            except (ProtocolError, PayloadError) as exc:
                if type(exc) in documented:
                    counts[type(exc).__name__] += 1
                elif undocumented(name, exc, data):
                    break
            except Exception as exc:  # noqa: BLE001 - this is what a fuzzer is for
                if undocumented(name, exc, data):
                    break
            if check_twin and twin_fn is not None:
                got, want = _outcome(fn, data), _outcome(twin_fn, data)
                if got != want:
                    result.failure = Failure(name, f"compiled {got!r:.200} != twin {want!r:.200}", data)
                    break
        if result.failure is not None:
            break

        stream = frame_stream(data, rng)
        try:
            messages = read_stream(reader_class, *stream)
        except Exception as exc:  # noqa: BLE001
            if undocumented(FRAME_READER, exc, data, stream):
                break
            continue
        frame_counts[f"FrameError {messages[-1][1]}" if messages and messages[-1][0] == "FrameError" else "ok"] += 1
        if check_twin:
            result.twin_checks += 1
            try:
                twin_messages = read_stream(twin_reader, *stream)
            except Exception as exc:  # noqa: BLE001
                result.failure = Failure(FRAME_READER, f"twin raised {type(exc).__name__}: {exc}", data, stream)
                break
            if messages != twin_messages:
                result.failure = Failure(
                    FRAME_READER, f"compiled {messages!r:.200} != twin {twin_messages!r:.200}", data, stream
                )
                break
    result.seconds = time.perf_counter() - start
    return result


def summary(result: Result, out: TextIO) -> None:
    """The table of outcomes per parser, then the rate and any known bugs hit."""
    columns = ["ok", "None", "ProtocolError", "PayloadError"]
    for counts in result.counts.values():
        columns += sorted(k for k in counts if k not in columns)
    widths = [max(len(c), 8) + 2 for c in columns]
    print(f"{'parser':<22}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)), file=out)
    for name, counts in result.counts.items():
        print(
            f"{name:<22}" + "".join(f"{counts.get(c, 0):>{w}}" for c, w in zip(columns, widths, strict=True)), file=out
        )
    print(
        f"{result.inputs} inputs in {result.seconds:.1f} s: {result.rate:,.0f} inputs/s "
        f"(each through {len(result.counts)} parsers; {result.twin_checks} checked against the twin)",
        file=out,
    )
    for bug in KNOWN_BUGS:
        if bug.id in result.known:
            count, first = result.known[bug.id]
            print(f"KNOWN BUG {bug.id} (x{count}, not a failure without --strict): {bug.summary}", file=out)
            print(f"  first input = {literal(first)}", file=out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m relay.devtools.fuzz``: 0 when every outcome was documented and matched the twin."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m relay.devtools.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="inputs to draw (default 1000000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop early after this long")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input sequence (default 0)")
    parser.add_argument(
        "--twin-every",
        type=int,
        default=10,
        help="compare with the Python twin on every N-th input (default 10, 0: never)",
    )
    parser.add_argument("--strict", action="store_true", help="known, reported bugs fail the run too")
    args = parser.parse_args(argv)
    try:
        result = run(args.frames, seed=args.seed, seconds=args.seconds, twin_every=args.twin_every, strict=args.strict)
    except ImportError as exc:
        print(f"the compiled fast path is not built: {exc}", file=out)
        return 2
    summary(result, out)
    if result.failure is not None:
        print(result.failure.report(), file=out)
        return 1
    print("OK: every outcome documented, compiled == twin on every checked input", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
