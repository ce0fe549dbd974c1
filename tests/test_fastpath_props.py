"""The compiled hot path (relay._fastpath) equals the Python reference (relay._fastpath_py).

For every function and every input, both return equal values of the same types, or both raise
the same exception class. Inputs: valid Twilio / Realtime messages written with shuffled keys,
random whitespace, extra keys of every JSON type, escapes, unicode and duplicate keys; other
events; random byte mutations of valid messages; random binary; non-bytes inputs.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _fastpath_py as ref
from relay import _messages_py  # the twin the compiled parsers fall back to

fast = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- comparison ----------------------------------------------------------------------------


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the class is what we compare
        return "raise", type(exc)
    return "return", _typed(value)


def _typed(value: Any) -> Any:
    """Value with its type attached, recursively for tuples (so 5 != 5.0 != True)."""
    if isinstance(value, tuple):
        return tuple(_typed(v) for v in value)
    return type(value), value


def assert_same(name: str, *args: Any) -> None:
    expected = _outcome(getattr(ref, name), *args)
    got = _outcome(getattr(fast, name), *args)
    assert got == expected, (name, args)


# --- a JSON writer with the freedoms a peer has --------------------------------------------


class Obj:
    """A JSON object as ordered pairs, so keys may repeat."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class Raw:
    """JSON text written as is (odd numbers, bad literals, broken containers)."""

    def __init__(self, text: str) -> None:
        self.text = text


# JSON text near the edge of what the C scan takes: valid, invalid, and valid-but-not-its-job.
TRICKY = [
    # numbers the scan takes (no exponent, at most 18 bytes)
    "0",
    "-0",
    "7",
    "-12",
    "0.5",
    "-0.0",
    "12.250",
    "999999999999999999",
    "-99999999999999999",
    # numbers it leaves to orjson: long, exponents, overflow to infinity
    "1234567890123456789",
    "18446744073709551616",
    "1" + "0" * 40,
    "1" + "0" * 320,
    "1" + "0" * 400,
    "0.1234567890123456789",
    "1e5",
    "1E5",
    "1e+5",
    "1e-5",
    "-1.5e3",
    "1E400",
    "-1e400",
    "1e-400",
    # not numbers
    "01",
    "-01",
    "00",
    "-",
    "+1",
    "1.",
    ".5",
    "-.5",
    "1.e3",
    "1e",
    "1e+",
    "0x1",
    "1_0",
    "NaN",
    "Infinity",
    "-Infinity",
    "--1",
    "1.2.3",
    # literals
    "true",
    "false",
    "null",
    "tru",
    "truee",
    "True",
    "trUe",
    "tRue",
    "nul",
    "nulll",
    "nuLl",
    "nulL",
    "falsE",
    "fAlse",
    "fals",
    "t",
    # containers
    "[]",
    "{}",
    "[ ]",
    "{\n}",
    "[1,]",
    "[,1]",
    "[,]",
    "{,}",
    '{"a":1,}',
    '{"a"}',
    '{"a":}',
    '{"a" 1}',
    "[1 2]",
    '{"a":1 "b":2}',
    "[[[]]]",
    "[",
    "]",
    "{",
    "}",
    '{"a":[1,{"b":null}]}',
    "{1:2}",
    "[true,false,null]",
    '{"a":1,"a":2}',
    "[" * 70 + "]" * 70,
    # strings: escapes, surrogates, control bytes, non-ASCII, invalid UTF-8, broken
    '""',
    '"a"',
    '"\\u0041"',
    '"\\ud800"',
    '"\\udc00"',
    '"\\ud83d\\ude00"',
    '"a\\"b"',
    '"\\x"',
    '"\\"',
    '"é"',
    '"\udcff"',
    '"\x00"',
    '"\x1f"',
    '"\x7f"',
    "'a'",
    '"a',
    '"\\/"',
    '"\\n"',
    '"\t"',
    '"\u2028"',
    '"😀"',
]

# Values for the fields the parsers read.
FIELD_TOKENS = [
    '"media"',
    '"media "',
    '"Media"',
    '"med\\u0069a"',
    '"\\u006dedia"',
    '"5"',
    '"0"',
    '"007"',
    '""',
    '"123456789012345"',
    '"1234567890123456"',
    '"1.5"',
    '"-1"',
    '" 1"',
    '"1 "',
    '"+1"',
    '"\u0661"',
    '"AAAA"',
    '"AAA="',
    '"AA=="',
    '"A==="',
    '"===="',
    '"="',
    '"AAAA="',
    '"AA=A"',
    '"AAAAAAA"',
    '"AB+/"',
    '"AB-_"',
    '"AA\\u003d\\u003d"',
    '"AAAA\\n"',
    '"response.output_audio.delta"',
    '"response.output_audio.delta "',
    '"response.output_audio.deltA"',
    '"response.output_audio.delt4"',
    '"medix"',
    '"mediA"',
    '"Xedia"',
    '"AAAA\x00',
    '"AAAA\x00"',
    '"5\x00',
    '"item_1"',
    '"it\\u0065m"',
    '"ité"',
    '{"timestamp":"5","payload":"AAAA"}',
    '{"payload":"AAAA"}',
    '{"timestamp":"5"}',
    '{"timestamp":"5","payload":"AAAA","timestamp":"6"}',
    '{"timestamp":5,"payload":"AAAA"}',
    '{"timestamp":"5","payload":"AAAA","payload":"AA=="}',
    '{"media":{"timestamp":"5"}}',
    *TRICKY,
]


class Gen:
    """Writes one message. Noise 0: clean, the C scan's own subset (printable ASCII without quote
    or backslash, numbers without exponent, no repeated keys, fields well typed). Noise 1: clean
    but for exactly one defect at one site. Noise 2: defects anywhere, often."""

    DEFECTS = ("escape", "unicode", "extra", "field", "drop", "dup", "garbage")

    def __init__(self, draw: Any, noise: int) -> None:
        self.draw = draw
        self.noise = noise
        self.defect = draw(st.sampled_from(self.DEFECTS)) if noise == 1 else None
        self.target = draw(st.integers(0, 6))  # which site of that kind gets the defect
        self.sites: dict[str, int] = {}
        self.spent = False

    def odd(self, kind: str) -> bool:
        """Whether this site (of this kind) takes a liberty."""
        if self.noise == 2:
            return self.draw(st.integers(0, 3)) == 0
        if self.noise == 0 or self.defect != kind or self.spent:
            return False
        seen = self.sites[kind] = self.sites.get(kind, 0) + 1
        self.spent = seen > self.target
        return self.spent

    # writing

    def ws(self) -> str:
        return self.draw(WS)

    def string(self, s: str) -> str:
        if self.odd("escape"):
            return json.dumps(s) if self.draw(st.booleans()) else _escape_all(s)
        try:  # raw UTF-8, minimal escapes (what real peers send)
            return orjson.dumps(s).decode()
        except orjson.JSONEncodeError:  # lone surrogate: can only be written escaped
            return json.dumps(s)

    def value(self, v: Any) -> str:
        w = self.ws
        if isinstance(v, Raw):
            return v.text
        if isinstance(v, dict):
            v = Obj(list(v.items()))
        if isinstance(v, Obj):
            if not v.pairs:
                return "{" + w() + "}"
            return (
                "{" + ",".join(w() + self.string(k) + w() + ":" + w() + self.value(x) + w() for k, x in v.pairs) + "}"
            )
        if isinstance(v, list):
            if not v:
                return "[" + w() + "]"
            return "[" + ",".join(w() + self.value(x) + w() for x in v) + "]"
        if isinstance(v, str):
            return self.string(v)
        if v is True or v is False or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        if isinstance(v, float):
            return f"{v:e}" if self.draw(st.booleans()) else repr(v)
        return str(v)

    def message(self, pairs: list[tuple[str, Any]]) -> bytes:
        text = self.ws() + self.value(Obj(pairs)) + self.ws()
        if self.odd("garbage"):
            junk = self.draw(st.sampled_from(GARBAGE))
            text = junk + text if self.draw(st.booleans()) else text + junk
        return text.encode("utf-8", "surrogatepass")

    # shaping

    def pairs(self, pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Shuffle and add extra keys; defects: odd extras, a dropped or a repeated key."""
        draw = self.draw
        pairs = list(pairs)
        for _ in range(draw(st.integers(0, 3))):
            if self.odd("unicode"):
                pairs.append((draw(st.text(max_size=6)), draw(NOISY_VALUES)))
            else:
                pairs.append((draw(PLAIN_TEXT), draw(CLEAN_VALUES)))
        if self.odd("extra"):
            token = Raw(draw(st.sampled_from(TRICKY)))
            where = st.sampled_from([token, [token], Obj([("k", token)])])
            pairs.append((draw(PLAIN_TEXT), draw(where)))
        pairs = list(draw(st.permutations(pairs)))
        if pairs and self.odd("drop"):
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        if pairs and self.odd("dup"):
            k = draw(st.integers(0, len(pairs) - 1))
            again = draw(
                st.one_of(st.just(pairs[k][1]), B64_TEXT, NOISY_VALUES, st.sampled_from(FIELD_TOKENS).map(Raw))
            )
            pairs.insert(draw(st.integers(0, len(pairs))), (pairs[k][0], again))
        return pairs

    def pick(self, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        """A good field value; as a defect, a bad one, a tricky token or another JSON type."""
        if self.odd("field"):
            return self.draw(bad | bad | st.sampled_from(FIELD_TOKENS).map(Raw) | NOISY_VALUES)
        return self.draw(good)


def _escape_all(s: str) -> str:
    out = []
    for ch in s:
        if ch == "/":
            out.append("\\/")
        elif ord(ch) > 0xFFFF:
            out.append(json.dumps(ch)[1:-1])  # surrogate pair
        else:
            out.append(f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


WS = st.sampled_from(["", "", "", "", " ", "  ", "\n", "\t", "\r\n", " \n\t "])
GARBAGE = [",", "}", "]", "x", "\x00", "{}", "0", " ,", "\ufeff"]

PLAIN = string.ascii_letters + string.digits + " _-./:+=!#$%&'()*,;<>?@[]^`{|}~"
PLAIN_TEXT = st.text(alphabet=PLAIN, max_size=8)
CLEAN_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.tuples(st.integers(-999, 999), st.integers(0, 10**6)).map(lambda t: Raw(f"{t[0]}.{t[1]}"))
    | PLAIN_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(PLAIN_TEXT, inner), max_size=3).map(Obj),
    max_leaves=6,
)
NOISY_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(TRICKY).map(Raw),
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(st.text(max_size=4), inner), max_size=3).map(Obj),
    max_leaves=6,
)

B64_VALID = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
B64_INVALID = st.one_of(
    st.text(alphabet='ABCxyz019+/=-_ .\n\\"é', max_size=14),
    st.tuples(B64_VALID, st.sampled_from(["=", "==", "A", "AB", "ABC", "===", "-", "_", " "]), B64_VALID).map("".join),
)
B64_TEXT = st.one_of(B64_VALID, B64_VALID, B64_VALID, B64_INVALID)

TIMESTAMP_VALID = st.text(alphabet="0123456789", min_size=1, max_size=15)
TIMESTAMP_INVALID = st.one_of(
    st.text(alphabet="0123456789", max_size=20),
    st.sampled_from(
        [
            "",
            "0",
            "007",
            "١٢",
            "²",
            "1.5",
            "-1",
            " 1",
            "1 ",
            "1e3",
            "+1",
            "999999999999999",
            "1000000000000000",
            "0x10",
            "1_000",
        ]
    ),
)

SID = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32).map(lambda s: "MZ" + s)
DELTA = "response.output_audio.delta"
LIVE_DELTA = "session.output_audio.delta"


@st.composite
def twilio_media(draw: Any, noise: int) -> bytes:
    g = Gen(draw, noise)
    media = [
        ("track", draw(st.sampled_from(["inbound", "outbound"]))),
        ("chunk", draw(st.integers(1, 10**6).map(str))),
        ("timestamp", g.pick(TIMESTAMP_VALID, TIMESTAMP_INVALID)),
        ("payload", g.pick(B64_VALID, B64_INVALID)),
    ]
    top = [
        (
            "event",
            g.pick(
                st.sampled_from(["media"] * 5 + ["mark", "stop"]),
                st.sampled_from(["Media", "media ", "", "médi\u0430", "medi", "medix", "mediA"]),
            ),
        ),
        ("sequenceNumber", draw(st.integers(1, 10**6).map(str))),
        ("media", g.pick(st.just(Obj(g.pairs(media))), st.just(Obj([])))),
        ("streamSid", draw(SID)),
    ]
    return g.message(g.pairs(top))


@st.composite
def twilio_other(draw: Any, noise: int) -> bytes:
    g = Gen(draw, noise)
    sid = draw(SID)
    kind = draw(st.sampled_from(["connected", "start", "mark", "stop", "dtmf", "custom"]))
    text = st.text(max_size=8) if g.odd("unicode") else PLAIN_TEXT
    if kind == "connected":
        pairs = [("event", "connected"), ("protocol", "Call"), ("version", "1.0.0")]
    elif kind == "start":
        start = Obj(
            [
                ("accountSid", "AC" + "0" * 32),
                ("streamSid", sid),
                ("callSid", "CA" + "1" * 32),
                ("tracks", ["inbound"]),
                ("customParameters", {"k": draw(text)}),
                ("mediaFormat", {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}),
            ]
        )
        pairs = [("event", "start"), ("sequenceNumber", "1"), ("start", start), ("streamSid", sid)]
    elif kind == "mark":
        pairs = [("event", "mark"), ("sequenceNumber", "4"), ("streamSid", sid), ("mark", {"name": draw(text)})]
    elif kind == "stop":
        pairs = [
            ("event", "stop"),
            ("sequenceNumber", "5"),
            ("streamSid", sid),
            ("stop", {"accountSid": "AC1", "callSid": "CA1"}),
        ]
    elif kind == "dtmf":
        pairs = [
            ("event", "dtmf"),
            ("streamSid", sid),
            ("sequenceNumber", "5"),
            ("dtmf", {"track": "inbound_track", "digit": draw(st.sampled_from("0123456789*#"))}),
        ]
    else:
        pairs = [("event", g.pick(text, NOISY_VALUES)), ("streamSid", sid)]
    return g.message(g.pairs(pairs))


@st.composite
def realtime_delta(draw: Any, noise: int) -> bytes:
    g = Gen(draw, noise)
    pairs = [
        (
            "type",
            g.pick(
                st.sampled_from(
                    [DELTA] * 5
                    + [LIVE_DELTA] * 3
                    + ["response.output_audio.done", "response.output_audio_transcript.delta", "session.created"]
                ),
                st.sampled_from(
                    ["error", DELTA + " ", DELTA.upper(), DELTA[:-1], DELTA[:-1] + "A", "", LIVE_DELTA[:-1] + "s"]
                ),
            ),
        ),
        ("event_id", "evt_" + draw(st.text(alphabet="abc123", max_size=6))),
        ("response_id", "resp_1"),
        ("item_id", g.pick(PLAIN_TEXT.map("item_".__add__), st.text(max_size=6))),
        ("output_index", draw(st.integers(0, 3))),
        ("content_index", draw(st.integers(0, 3))),
        ("delta", g.pick(B64_VALID, B64_INVALID)),
    ]
    return g.message(g.pairs(pairs))


@st.composite
def mutated(draw: Any, base: st.SearchStrategy[bytes]) -> bytes:
    """Flip, insert or delete a few bytes."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b'"\\{}[],:=0123456789eE.-+ tfnAa\x00\x1f\x80\xff') | st.integers(0, 255))
        if op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if op == "flip":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


def all_noise(make: Callable[[int], st.SearchStrategy[bytes]]) -> st.SearchStrategy[bytes]:
    """Clean, one-defect and noisy messages; one-defect ones most, as they probe the edges."""
    return st.one_of(make(0), make(1), make(1), make(2))


MEDIA_MSGS = all_noise(twilio_media)
DELTA_MSGS = all_noise(realtime_delta)
OTHER_MSGS = all_noise(twilio_other)
ANY_MESSAGE = st.one_of(MEDIA_MSGS, OTHER_MSGS, DELTA_MSGS)


# --- parsers --------------------------------------------------------------------------------


@SETTINGS
@given(MEDIA_MSGS)
def test_parse_media_shapes(msg: bytes) -> None:
    assert_same("parse_media", msg)
    assert_same("parse_audio_delta", msg)


@FEW
@given(OTHER_MSGS)
def test_parse_media_other_events(msg: bytes) -> None:
    assert_same("parse_media", msg)


@SETTINGS
@given(mutated(st.one_of(twilio_media(0), twilio_media(1), twilio_other(0))))
def test_parse_media_mutations(msg: bytes) -> None:
    assert_same("parse_media", msg)


@SETTINGS
@given(DELTA_MSGS)
def test_parse_audio_delta_shapes(msg: bytes) -> None:
    assert_same("parse_audio_delta", msg)
    assert_same("parse_media", msg)


@SETTINGS
@given(mutated(st.one_of(realtime_delta(0), realtime_delta(1))))
def test_parse_audio_delta_mutations(msg: bytes) -> None:
    assert_same("parse_audio_delta", msg)


@FEW
@given(st.binary(max_size=200) | st.binary(max_size=8).map(lambda b: b"{" + b + b"}"))
def test_parsers_random_binary(msg: bytes) -> None:
    assert_same("parse_media", msg)
    assert_same("parse_audio_delta", msg)


@FEW
@given(ANY_MESSAGE, st.sampled_from(["str", "bytearray", "memoryview", "subclass"]))
def test_parsers_non_bytes_input(msg: bytes, form: str) -> None:
    class Bytes(bytes):
        pass

    arg: Any
    if form == "str":
        arg = msg.decode("utf-8", "replace")
    elif form == "bytearray":
        arg = bytearray(msg)
    elif form == "memoryview":
        arg = memoryview(msg)
    else:
        arg = Bytes(msg)
    assert_same("parse_media", arg)
    assert_same("parse_audio_delta", arg)


@pytest.mark.parametrize("arg", [None, 1, [], {}, b"", b" ", b"{}", b"[]", b"null", b'"media"'])
def test_parsers_odd_inputs(arg: Any) -> None:
    assert_same("parse_media", arg)
    assert_same("parse_audio_delta", arg)


_M = '"media":{"timestamp":"5","payload":"AAAA"}'
MEDIA_TEMPLATES = [
    '{"event":"media","x":@,' + _M + "}",
    '{"event":"media","media":{"timestamp":"5","y":@,"payload":"AAAA"}}',
    '{"event":"media","media":{"timestamp":"5","payload":"AAAA","y":[@]}}',
    '{"event":"media",' + _M + ',"z":{"k":@}}',
    '{"event":"media",' + _M + ',"z":[0,@,{}]}',
    '{"event":@,' + _M + "}",
    '{"event":"media","media":{"timestamp":@,"payload":"AAAA"}}',
    '{"event":"media","media":{"timestamp":"5","payload":@}}',
    '{"event":"media","media":@}',
    '{"event":"media",' + _M + ',"media":@}',
    '{"event":"media","event":@,' + _M + "}",
    '{"event":"stop","stop":@}',
    '{"event":"stop",@:1}',
    '{@:"media",' + _M + "}",
    '{"event":"media",' + _M + "}@",
    '@{"event":"media",' + _M + "}",
    '{"event":"media",' + _M + "@}",
    '{"event":"media"@' + _M + "}",
    "@",
]
_D = '"item_id":"item_1","delta":"AAAA"'
DELTA_TEMPLATES = [
    '{"type":"' + DELTA + '","x":@,' + _D + "}",
    '{"type":@,' + _D + "}",
    '{"type":"' + DELTA + '","item_id":@,"delta":"AAAA"}',
    '{"type":"' + DELTA + '","item_id":"item_1","delta":@}',
    '{"type":"' + DELTA + '",' + _D + ',"delta":@}',
    '{"type":"' + DELTA + '",' + _D + ',"item_id":@}',
    '{"type":"' + DELTA + '",' + _D + ',"z":[{"delta":@}]}',
    '{"type":"' + DELTA + '",' + _D + "}@",
    '{"type":"session.created","session":@}',
    '{@:"' + DELTA + '",' + _D + "}",
]


@pytest.mark.parametrize("template", MEDIA_TEMPLATES + DELTA_TEMPLATES)
def test_parsers_tricky_tokens_everywhere(template: str) -> None:
    """Every tricky token at every place a parser treats differently, in an otherwise clean
    message: the scan's edges (numbers, literals, nesting, escapes, duplicates, trailing text)."""
    for token in FIELD_TOKENS:
        msg = template.replace("@", token).encode("utf-8", "surrogatepass")
        assert_same("parse_media", msg)
        assert_same("parse_audio_delta", msg)


@pytest.mark.parametrize("depth", [1, 30, 63, 64, 65, 100, 1023, 1024, 1025, 2000])
def test_parsers_deep_nesting(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    media = b'{"event":"media","x":' + deep + b',"media":{"timestamp":"1","payload":"AA=="}}'
    assert_same("parse_media", media)
    nested = b'{"event":"media","media":{"y":' + deep + b',"timestamp":"1","payload":""}}'
    assert_same("parse_media", nested)
    delta = b'{"type":"response.output_audio.delta","x":' + deep + b',"item_id":"i","delta":""}'
    assert_same("parse_audio_delta", delta)


@SETTINGS
@given(st.one_of(twilio_media(0), realtime_delta(0), twilio_other(0)))
def test_clean_messages_never_reach_the_reference(msg: bytes) -> None:
    """The common shape is answered by the C scan alone: patch the reference to prove it."""
    if _repeats_a_key(msg):
        return  # a random extra key hit a wanted one: the reference decides, by design
    for name in ("parse_media", "parse_audio_delta"):
        if not _ok(getattr(ref, name), msg):
            continue  # errors are always the reference's to raise
        with mock.patch.object(_messages_py, name, side_effect=AssertionError("fell back")):
            got = getattr(fast, name)(msg)
        assert _typed(got) == _typed(getattr(ref, name)(msg))


def _ok(fn: Callable[[bytes], Any], msg: bytes) -> bool:
    try:
        fn(msg)
    except Exception:  # noqa: BLE001
        return False
    return True


def _repeats_a_key(msg: bytes) -> bool:
    seen: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        seen.append(keys)
        return dict(pairs)

    json.loads(msg, object_pairs_hook=hook)
    return any(len(keys) != len(set(keys)) for keys in seen)


def test_fast_path_is_taken_for_the_protocol_examples() -> None:
    media = (
        b'{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2",'
        b'"timestamp":"5","payload":"f39/fw=="},'
        b'"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
    )
    delta = (
        b'{"type":"response.output_audio.delta","event_id":"evt_1","response_id":"resp_1",'
        b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"AAAA"}'
    )
    with (
        mock.patch.object(_messages_py, "parse_media", side_effect=AssertionError),
        mock.patch.object(_messages_py, "parse_audio_delta", side_effect=AssertionError),
    ):
        assert fast.parse_media(media) == (b"f39/fw==", 5)
        assert fast.parse_audio_delta(delta) == ("item_1", b"AAAA", "resp_1")
        assert fast.parse_media(b'{"event":"stop","stop":{"x":[1,-2.5,true,false,null]}}') is None
        assert fast.parse_audio_delta(b'{"type":"session.created","session":{}}') is None


# --- base64 ---------------------------------------------------------------------------------

B64_BYTES = st.one_of(
    st.binary(max_size=120).map(base64.b64encode),
    st.binary(max_size=120).map(base64.b64encode),
    st.binary(max_size=24),
    st.text(alphabet="AZaz09+/=-_ \n", max_size=16).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"=",
            b"==",
            b"===",
            b"====",
            b"A===",
            b"AA==",
            b"AAA=",
            b"AAAA",
            b"AA=A",
            b"A=AA",
            b"AAAA====",
            b"AA==AAAA",
            b"AAA\n",
            b"AAAA\x00",
        ]
    ),
)


@SETTINGS
@given(B64_BYTES)
def test_b64_decoded_len(data: bytes) -> None:
    assert_same("b64_decoded_len", data)
    if _ok(ref.b64_decoded_len, data):
        assert fast.b64_decoded_len(data) == len(base64.b64decode(data, validate=True))


@pytest.mark.parametrize("bad", ["-", "=", "\x00", '"', "\\", "\xff", " "])
def test_b64_one_bad_byte_anywhere(bad: str) -> None:
    """Every length around the scan's 8-byte stride, a bad byte at every position."""
    for n in range(0, 41, 4):
        good = (b"AB+/" * 11)[:n]
        for variant in (good, good[:-1] + b"=" if n else good, good[:-2] + b"==" if n else good):
            for pos in range(len(variant)):
                data = variant[:pos] + bad.encode("latin-1") + variant[pos + 1 :]
                assert_same("b64_decoded_len", data)
                msg = b'{"type":"' + DELTA.encode() + b'","item_id":"i","delta":"' + data + b'"}'
                assert_same("parse_audio_delta", msg)
            assert_same("b64_decoded_len", variant)


@FEW
@given(B64_BYTES, st.sampled_from(["str", "bytearray", "memoryview", "subclass"]))
def test_b64_decoded_len_non_bytes(data: bytes, form: str) -> None:
    class Bytes(bytes):
        pass

    conv: dict[str, Callable[[bytes], Any]] = {
        "str": lambda b: b.decode("latin-1"),
        "bytearray": bytearray,
        "memoryview": memoryview,
        "subclass": Bytes,
    }
    assert_same("b64_decoded_len", conv[form](data))


# --- builders -------------------------------------------------------------------------------


LONG_B64 = st.binary(min_size=100, max_size=4000).map(base64.b64encode)


class _Writes:
    """A transport that records what a ``WsCore`` writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _send_append(module: Any, payload: Any, client: bool, wire: Any = 0) -> tuple[tuple[str, Any], list[bytes]]:
    """The outcome of ``WsCore.send_append(payload)`` on ``wire`` and what it wrote, masking keys seeded."""
    transport = _Writes()
    core = module.WsCore(transport, client, 1 << 20, 0, lambda: 0.0)
    wired = _outcome(setattr, core, "wire", wire)
    with mock.patch("os.urandom", random.Random(7).randbytes):
        outcome = _outcome(core.send_append, payload)
    return (wired, outcome, core.wire), transport.writes


@FEW
@given(
    st.one_of(
        B64_BYTES,
        LONG_B64,
        st.binary(max_size=64).map(bytearray),
        st.text(max_size=8),
        st.none(),
        st.binary(max_size=16).map(memoryview),
    ),
    st.booleans(),
    st.one_of(st.sampled_from([0, 1, 2, 3, 3]), st.sampled_from([4, -1, True, 1.0, "1", None])),
)
def test_send_append(payload: Any, client: bool, wire: Any) -> None:
    """The append message in the wire's shape (Realtime's, GPT-Live's, Deepgram's binary μ-law,
    Gemini's PCM16 at 16 kHz), framed (masked on the client side): the same frame, or the same
    error; a wire that is not one is refused alike."""
    assert _send_append(fast, payload, client, wire) == _send_append(ref, payload, client, wire)


def test_a_pcm16_wire_carries_its_resampler_state_from_frame_to_frame() -> None:
    """Gemini's wire: each frame upsampled in one stream, as the whole would be, on both cores."""
    payloads = [base64.b64encode(bytes((i * 37 + k) & 0xFF for i in range(160))) for k in range(5)]
    whole = ref.Resampler(8000, 16000).process(ref.ulaw_to_pcm16(b"".join(base64.b64decode(p) for p in payloads)))
    for module in (fast, ref):
        transport = _Writes()
        core = module.WsCore(transport, False, 1 << 20, 0, lambda: 0.0)
        core.wire = 3
        for payload in payloads:
            core.send_append(payload)
        reader = ref.FrameReader(False, 1 << 20)
        reader.feed(b"".join(transport.writes))
        sent = b""
        while (frame := reader.read()) is not None:
            message = orjson.loads(frame[1])
            assert message["realtimeInput"]["audio"]["mimeType"] == "audio/pcm;rate=16000"
            sent += base64.b64decode(message["realtimeInput"]["audio"]["data"])
        assert sent == whole


@SETTINGS
@given(
    st.one_of(
        st.builds(
            lambda pcm, mime, role: orjson.dumps(
                {
                    "serverContent": {
                        "modelTurn": {
                            **({"role": role} if role else {}),
                            "parts": [{"inlineData": {"mimeType": mime, "data": base64.b64encode(pcm).decode()}}],
                        }
                    }
                }
            ),
            st.binary(max_size=64),
            st.sampled_from(["audio/pcm;rate=24000", "audio/pcm", "audio/pcm;rate=16000", "image/png"]),
            st.sampled_from(["", "model", None]),
        ),
        st.sampled_from(
            [
                b'{"serverContent":{"interrupted":true}}',
                b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm","data":"AAAA"}},{"text":"x"}]}}}',
                b'{"serverContent":{"modelTurn":{"parts":[]}},"usageMetadata":{}}',
                b'{ "serverContent" : { "modelTurn" : { "parts" : [ { "inlineData" : '
                b'{ "data" : "AAAA" , "mimeType" : "audio/pcm" } } ] } } }',
                b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm","data":"AA=A"}}]}}}',
                b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm","data":"AAAA","data":"BBBB"}}]}}}',
                rb'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio\/pcm","data":"AAAA"}}]}}}',
                b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm","data":"AAAA"}},]}}}',
            ]
        ),
    ).flatmap(lambda msg: st.one_of(st.just(msg), mutated(st.just(msg)))),
)
def test_parse_gemini_audio(msg: bytes) -> None:
    """An audio-only Gemini message read in one pass (its base64 PCM16), anything else None: the
    compiled scan and its twin agree on every shape, mutation and fallback."""
    assert_same("parse_gemini_audio", msg)


def test_the_live_wire_appends_gpt_lives_event() -> None:
    transport = _Writes()
    core = fast.WsCore(transport, False, 1 << 20, 0, lambda: 0.0)
    core.wire = 1
    core.send_append(b"f39/fw==")
    assert transport.writes == [
        fast.build_frame(fast.OP_TEXT, b'{"type":"session.input_audio.append","audio":"f39/fw=="}')
    ]


WEIRD_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),  # all of ASCII
    st.text(alphabet=PLAIN + '"\\', max_size=12),
    st.text(alphabet='ab "\\/\x00\x1f\x7f', max_size=6),  # ASCII that orjson must escape
    st.text(alphabet='ab"\\/\x00\x01\x1f\x7f\x80\u2028\ud800\udfff😀 ', max_size=8),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
    SID,
)
NAMES = st.one_of(WEIRD_TEXT, st.none(), st.integers(), st.binary(max_size=4))


@SETTINGS
@given(
    st.one_of(WEIRD_TEXT, NAMES),
    st.lists(NAMES, max_size=3),
    st.one_of(B64_BYTES, LONG_B64, st.text(max_size=4), st.binary(max_size=8).map(bytearray)),
)
def test_twilio_writer(sid: Any, names: list[Any], payload: Any) -> None:
    expected = _outcome(ref.TwilioWriter, sid)
    got = _outcome(fast.TwilioWriter, sid)
    assert (got[0], got[1] if got[0] == "raise" else None) == (
        expected[0],
        expected[1] if expected[0] == "raise" else None,
    )
    if got[0] == "raise":
        return
    w_ref, w_fast = ref.TwilioWriter(sid), fast.TwilioWriter(sid)
    assert _typed(w_fast.stream_sid) == _typed(w_ref.stream_sid)
    assert _outcome(w_fast.media, payload) == _outcome(w_ref.media, payload)
    assert _typed(w_fast.clear()) == _typed(w_ref.clear())
    for name in names:
        assert _outcome(w_fast.mark, name) == _outcome(w_ref.mark, name), name
    for good in (w_fast.clear(), w_fast.media(b"AAAA")):
        assert orjson.loads(good)["streamSid"] == sid


@pytest.mark.parametrize(
    "name",
    [
        "x",
        " ",
        "a b",
        'a"b',
        '"',
        "a\\b",
        "a/b",
        "\x00",
        "\x1f",
        "\x7f",
        "\x80",
        "é",
        "\u2028",
        "😀",
        "\ud800",
        "",
        "~" * 300,
    ],
)
def test_twilio_writer_mark_names(name: str) -> None:
    got = _outcome(fast.TwilioWriter("MZ1").mark, name)
    assert got == _outcome(ref.TwilioWriter("MZ1").mark, name)


def test_twilio_writer_str_subclass() -> None:
    class Sid(str):
        pass

    w_ref, w_fast = ref.TwilioWriter(Sid("MZ1")), fast.TwilioWriter(Sid("MZ1"))
    assert type(w_fast.stream_sid) is Sid
    assert w_fast.clear() == w_ref.clear()
    assert w_fast.mark(Sid('a"b')) == w_ref.mark(Sid('a"b'))
    assert w_fast.mark(Sid("plain")) == w_ref.mark(Sid("plain"))


@pytest.mark.parametrize(
    "call",
    [("media", b"AAAA"), ("media", "x"), ("mark", "x"), ("mark", 'a"'), ("mark", b"x"), ("mark", ""), ("clear",)],
)
def test_twilio_writer_not_initialised(call: tuple[Any, ...]) -> None:
    """__new__ without __init__: same error class as the reference, and no crash."""
    name, *args = call
    w_ref = ref.TwilioWriter.__new__(ref.TwilioWriter)
    w_fast = fast.TwilioWriter.__new__(fast.TwilioWriter)
    assert _outcome(getattr(w_fast, name), *args) == _outcome(getattr(w_ref, name), *args)
