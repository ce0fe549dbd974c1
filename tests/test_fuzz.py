"""Every parser that reads peer input fails only in the ways it documents, whatever it is fed.

Shown here, with hypothesis, on arbitrary bytes and on structure-aware mutations of valid
messages (the Twilio messages of ``conftest`` and Realtime ``response.output_audio.delta``,
``session.updated`` and ``error`` events): fields swapped for other JSON types, huge numbers,
NaN-like tokens, deep nesting, duplicate and escaped keys, strings that are not UTF-8 or not
base64, then bit flips, insertions, deletions, truncation and splices.

* The fast path (both implementations): ``parse_media`` and ``parse_audio_delta`` raise only
  ``ProtocolError`` / ``PayloadError``, ``b64_decoded_len`` only ``PayloadError``, and the
  compiled module returns what its Python twin returns, or raises the same class.
* ``FrameReader``, fed mutated frame streams in random chunks, raises only ``FrameError``,
  consumes input for every message it returns (so it cannot spin), and both implementations
  read the same messages and fail with the same close code.
* ``twilio.parse_event`` and ``realtime.parse_event`` raise only ``ProtocolError``;
  ``realtime.session_problems`` returns a list of strings for any JSON value;
  ``streamtoken.verify`` returns a reason for any token that is not the issued one.
* The HTTP side (``server.HttpProtocol`` on a recorded fake transport, no sockets), fed
  mutated webhook POSTs, upgrades, oversized heads and bodies and garbage in random chunks,
  never raises out of ``data_received``, writes only whole HTTP responses, and starts no
  call for an upgrade whose signature is not valid (a validly signed one does start one).
* ``python -m relay.devtools.fuzz`` finishes a seeded run clean, and fails with a reproducer when a
  parser raises something undocumented or the compiled path and the twin disagree.

The bugs these tests found (a RecursionError in twilio.parse_event, AttributeError in
session_problems, ValueError/TypeError in streamtoken.verify, and on the HTTP side a bad
absolute-form target, a blank bodySHA256, writes after close and an unbounded request head)
are fixed; each keeps a regression test with its reproducer at the end of this file.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from relay import _fastpath as compiled
from relay import _fastpath_py as twin
from relay import streamtoken, twilio
from relay.backends import realtime
from relay.config import Settings
from relay.devtools import fuzz
from relay.errors import PayloadError, ProtocolError
from relay.server import HttpProtocol, Relay
from relay.store import SQLiteStore
from tests.conftest import CONNECTED, DTMF, MARK, MEDIA, START, STOP

# ``fp`` is a module, not state: sharing it across examples is safe.
PROPS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
FEW = settings(PROPS, max_examples=120)

DELTA = (
    b'{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1",'
    b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"//7+/g=="}'
)
SESSION_UPDATED = json.dumps(
    {
        "type": "session.updated",
        "event_id": "event_2",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
        },
    }
).encode()
ERROR = json.dumps(
    {
        "type": "error",
        "event_id": "event_3",
        "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Invalid value.", "param": None},
    }
).encode()

TWILIO_MESSAGES = (CONNECTED, START, MEDIA, DTMF, MARK, STOP)
REALTIME_MESSAGES = (DELTA, SESSION_UPDATED, ERROR)
MESSAGES = TWILIO_MESSAGES + REALTIME_MESSAGES
PAYLOADS = (b"", b"//7+/g==", b"AAA=", b"no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhQMCAYIDBEaKdCdkYuIh4mNlK0t")

# --- inputs -----------------------------------------------------------------------------------


@st.composite
def engine_mutants(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed changed by ``relay.devtools.fuzz``'s mutators, with hypothesis choosing (and shrinking) every step."""
    rng = draw(st.randoms(use_true_random=False))
    data = draw(st.sampled_from(seeds))
    if data[:1] == b"{" and draw(st.booleans()):
        tree = fuzz.to_tree(data)
        for _ in range(draw(st.integers(1, 2))):
            tree = fuzz.mutate_tree(tree, rng)
        data = fuzz.emit(tree)
    for _ in range(draw(st.integers(0, 3))):
        data = fuzz.mutate_bytes(data, rng)
    return data


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value, with lone surrogates in strings, unbounded ints, NaN and infinities."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(st.characters(exclude_categories=()), max_size=12),
        st.from_regex(r"[0-9]{0,17}", fullmatch=True),  # timestamps and beyond
        st.text("AZaz09+/=\n -_\u00e9", max_size=16),  # base64, nearly
        st.sampled_from(["media", "response.output_audio.delta", "start", "audio/pcmu"]),
    )
    return st.recursive(
        scalars,
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "event",
                        "media",
                        "payload",
                        "timestamp",
                        "type",
                        "item_id",
                        "delta",
                        "audio",
                        "input",
                        "output",
                        "format",
                        "tracks",
                        "x",
                    ]
                ),
                kids,
                max_size=3,
            )
        ),
        max_leaves=max_leaves,
    )


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> fuzz.Raw:
    """``value`` as JSON the way a careless peer writes it: NaN tokens, all-ASCII escapes or
    raw surrogates (not UTF-8), nested in arrays around the depth limits."""
    if draw(st.booleans()):
        text = json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    else:
        text = fuzz.emit(value)
    depth = draw(st.sampled_from([0, 0, 0, 1, 63, 64, 65, 990, 1023, 1024, 1025]))
    return fuzz.Raw(b"[" * depth + text + b"]" * depth)


WANTED = {
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
    "input",
    "output",
    "format",
}


def _key_of(tree: Any, path: tuple[int, ...]) -> Any:
    parent = fuzz.node_at(tree, path[:-1]) if path else None
    return parent[path[-1]][0] if type(parent) is fuzz.Obj else None


@st.composite
def json_edits(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with one node replaced, or one key repeated, with a hypothesis-made JSON value;
    half the time the node is one of the fields the parsers look at."""
    tree = fuzz.to_tree(draw(st.sampled_from(seeds)))
    paths = fuzz.node_paths(tree)
    wanted = [p for p in paths if _key_of(tree, p) in WANTED]
    path = draw(st.sampled_from(wanted if wanted and draw(st.booleans()) else paths))
    node = fuzz.node_at(tree, path)
    value = draw(encoded(draw(json_values())))
    if type(node) is fuzz.Obj and node and draw(st.booleans()):
        pairs = fuzz.Obj(node)
        key = draw(st.sampled_from([k for k, _ in pairs]))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, value))  # a duplicate key
        return fuzz.emit(fuzz.replace_at(tree, path, pairs))
    return fuzz.emit(fuzz.replace_at(tree, path, value))


@st.composite
def _field(draw: st.DrawFn, likely: st.SearchStrategy[Any]) -> Any:
    """A field's value: usually (and when shrunk) a near miss of what belongs there, else any JSON."""
    return draw(likely if draw(st.integers(0, 9)) < 8 else json_values(4))


@st.composite
def reshaped(draw: st.DrawFn) -> bytes:
    """A media event or audio delta rebuilt field by field: each field a near miss (digits of
    every length, base64 of every length and padding, other events) or another JSON value,
    keys in any order, some repeated, extra keys; then perhaps one field written carelessly."""
    digits = st.one_of(
        st.integers(0, 10**15 - 1).map(str),
        st.integers(10**15 - 2, 10**15 + 2).map(str),
        st.from_regex(r"[0-9]{0,17}", fullmatch=True),
    )
    b64 = st.one_of(
        st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode()), st.text("AZaz09+/=", max_size=12)
    )
    if draw(st.booleans()):
        inner = [("payload", draw(_field(b64))), ("timestamp", draw(_field(digits))), ("track", "inbound")]
        pairs = [
            ("event", draw(_field(st.sampled_from(["media", "mark", "Media", ""])))),
            ("media", draw(_field(st.permutations(inner).map(fuzz.Obj)))),
            ("streamSid", "MZ1"),
        ]
    else:
        pairs = [
            ("type", draw(_field(st.sampled_from(["response.output_audio.delta", "error"])))),
            ("item_id", draw(_field(st.text(max_size=6)))),
            ("delta", draw(_field(b64))),
            ("output_index", 0),
        ]
    pairs = draw(st.permutations(pairs))
    for _ in range(max(0, draw(st.integers(0, 5)) - 3)):  # repeated or extra keys, now and then
        key = draw(st.sampled_from([k for k, _ in pairs] + ["x"]))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(json_values(3))))
    if draw(st.integers(0, 3)) == 3:
        i = draw(st.integers(0, len(pairs) - 1))
        if type(pairs[i][1]) is not fuzz.Obj:  # json.dumps would write its pairs as a list
            pairs[i] = (pairs[i][0], draw(encoded(pairs[i][1])))
    return fuzz.emit(fuzz.Obj(pairs))


def messages(seeds: tuple[bytes, ...] = MESSAGES) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), engine_mutants(seeds), json_edits(seeds))


# What the fast path reads, first; the rest so that its "other event" path runs too.
FAST_SEEDS = (MEDIA, DELTA, MEDIA, DELTA, START, SESSION_UPDATED, ERROR, STOP)


def fast_path_messages() -> st.SearchStrategy[bytes]:
    return st.one_of(messages(FAST_SEEDS), reshaped(), reshaped(), reshaped())


# --- outcomes ---------------------------------------------------------------------------------


def outcome(fn: Callable[[bytes], Any], data: bytes) -> tuple[str, Any]:
    """``("return", typed value)`` or ``("raise", exception class)``: what is compared."""
    try:
        value = fn(data)
    except Exception as exc:  # noqa: BLE001 - the class is the outcome
        return "raise", type(exc)
    if isinstance(value, tuple):
        return "return", tuple((type(v), v) for v in value)
    return "return", (type(value), value)


def assert_documented(fn: Callable[[bytes], Any], data: bytes, documented: tuple[type[Exception], ...]) -> Any:
    """Call ``fn``; any exception must be exactly one of the ``documented`` classes."""
    try:
        return fn(data)
    except Exception as exc:  # noqa: BLE001
        assert type(exc) in documented, f"{fn.__module__}.{fn.__name__} raised {exc!r} on {fuzz.literal(data)}"
        return exc


# --- the fast path ----------------------------------------------------------------------------


@PROPS
@given(data=fast_path_messages())
def test_fast_path_parsers_raise_only_their_documented_errors(fp, data: bytes) -> None:
    media = assert_documented(fp.parse_media, data, (ProtocolError, PayloadError))
    if isinstance(media, tuple):
        payload, timestamp = media
        assert type(payload) is bytes and type(timestamp) is int and 0 <= timestamp < 10**15
        assert fp.b64_decoded_len(payload) == len(base64.b64decode(payload))
    delta = assert_documented(fp.parse_audio_delta, data, (ProtocolError, PayloadError))
    if isinstance(delta, tuple):
        item_id, audio, response_id = delta
        assert type(item_id) is str and type(audio) is bytes and type(response_id) is str
        assert fp.b64_decoded_len(audio) == len(base64.b64decode(audio))
    assert_documented(fp.b64_decoded_len, data, (PayloadError,))


@PROPS
@given(data=st.one_of(fast_path_messages(), st.binary(max_size=64), engine_mutants(PAYLOADS)))
def test_the_compiled_path_equals_its_twin(data: bytes) -> None:
    for name in ("parse_media", "parse_audio_delta", "b64_decoded_len"):
        assert outcome(getattr(compiled, name), data) == outcome(getattr(twin, name), data), name


@PROPS
@given(payload=st.one_of(st.binary(max_size=40), engine_mutants(PAYLOADS)))
def test_b64_decoded_len_agrees_with_the_decoder_or_raises_payload_error(fp, payload: bytes) -> None:
    n = assert_documented(fp.b64_decoded_len, payload, (PayloadError,))
    if isinstance(n, int):
        assert n == len(base64.b64decode(payload, validate=True))


# --- WebSocket frames -------------------------------------------------------------------------


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bool, int, list[bytes]]:
    """A message framed as a peer frames it (masked or not, fragmented, between control
    frames), often broken, cut into chunks; or arbitrary bytes, cut into chunks."""
    if draw(st.integers(0, 4)) == 0:
        stream = draw(st.binary(max_size=80))
        cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
        bounds = [0, *cuts, len(stream)]
        return (
            draw(st.booleans()),
            draw(st.sampled_from([0, 125, 1 << 20])),
            [stream[a:b] for a, b in itertools.pairwise(bounds)],
        )
    message = draw(st.one_of(st.sampled_from(MESSAGES), engine_mutants(MESSAGES)))
    return fuzz.frame_stream(message, draw(st.randoms(use_true_random=False)))


CLOSE_CODES = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}  # a peer may send (RFC 6455 §7.4)


@FEW
@given(stream=frame_streams())
def test_frame_reader_raises_only_frame_error_and_never_spins(fp, stream: tuple[bool, int, list[bytes]]) -> None:
    masked, max_size, chunks = stream
    # read_stream catches FrameError, and raises fuzz.Stalled if a read returns a message
    # without consuming input; anything else propagates and fails the test.
    out = fuzz.read_stream(fp.FrameReader, masked, max_size, chunks)
    if out and out[-1][0] == "FrameError":
        assert out.pop()[1] in (1002, 1007, 1009)
    for opcode, payload in out:  # what comes out is what RFC 6455 allows in
        assert type(payload) is bytes
        if opcode == fp.OP_TEXT:
            payload.decode()
        elif opcode == fp.OP_CLOSE:
            assert len(payload) <= 125 and len(payload) != 1
            assert len(payload) < 2 or int.from_bytes(payload[:2], "big") in CLOSE_CODES
            payload[2:].decode()
        else:
            assert opcode == fp.OP_BINARY or (opcode in (fp.OP_PING, fp.OP_PONG) and len(payload) <= 125)


@FEW
@given(stream=frame_streams())
def test_both_frame_readers_read_the_same_messages_and_fail_alike(stream: tuple[bool, int, list[bytes]]) -> None:
    assert fuzz.read_stream(compiled.FrameReader, *stream) == fuzz.read_stream(twin.FrameReader, *stream)


# --- the full parsers -------------------------------------------------------------------------


@PROPS
@given(data=messages(TWILIO_MESSAGES))
def test_twilio_parse_event_raises_only_protocol_error(data: bytes) -> None:
    try:
        event = twilio.parse_event(data)
    except ProtocolError:
        return
    assert isinstance(event, (twilio.Connected, twilio.Start, twilio.Dtmf, twilio.Mark, twilio.Stop, twilio.Media))
    if isinstance(event, twilio.Media):  # what the compiled path would have read from it
        assert compiled.parse_media(data) == (event.payload, event.timestamp)
    if isinstance(event, twilio.Start):
        assert type(event.sample_rate) is int and type(event.channels) is int
        assert all(type(v) is str for v in event.custom_parameters.values())


def _session_problems(session: Any) -> list[str]:
    """``session_problems``, which must answer a list of strings for any JSON value."""
    problems = realtime.session_problems(session)
    assert isinstance(problems, list) and all(type(p) is str for p in problems)
    return problems


@PROPS
@given(data=messages(REALTIME_MESSAGES))
def test_realtime_parse_event_raises_only_protocol_error(data: bytes) -> None:
    try:
        event = realtime.parse_event(data)
    except ProtocolError:
        return
    assert type(event) is dict and type(event["type"]) is str
    _session_problems(event.get("session", {}))


@PROPS
@given(
    session=st.one_of(
        json_values(max_leaves=12),
        st.builds(lambda a, b: {"audio": {"input": a, "output": b}}, json_values(4), json_values(4)),
    )
)
def test_session_problems_is_a_list_of_strings_for_any_json(session: Any) -> None:
    problems = _session_problems(session)
    ok = {"format": {"type": "audio/pcmu"}}
    if isinstance(session, dict) and session.get("audio") == {"input": ok, "output": ok}:
        assert problems == []


SECRET = streamtoken.derive_secret("fuzz")
CALL = dict(tenant="t1", agent="a1", call_sid="CA1", account_sid="AC1")
TOKEN = streamtoken.issue(SECRET, **CALL, now=1000.0)


def _verify(token: str) -> str | None:
    """``verify``, with the known ValueError / TypeError on non-ASCII or over-long parts."""
    return streamtoken.verify(SECRET, token, **CALL, now=1000.0)


@PROPS
@given(
    token=st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=60),
        st.builds(
            lambda exp, mac: f"v1.{exp}.{mac}",
            st.text(st.characters(exclude_categories=()), max_size=8) | st.integers(0).map(str),
            st.text(max_size=44),
        ),
        st.builds(lambda data: data.decode("utf-8", "surrogateescape"), engine_mutants((TOKEN.encode(),))),
    )
)
def test_verify_returns_a_reason_for_any_token_but_the_issued_one(token: str) -> None:
    reason = _verify(token)
    if token == TOKEN:
        assert reason is None
    elif reason is None:  # the issued token with its expiry spelt otherwise ("v1.01120.mac", other digits)
        version, expires, mac = token.split(".")
        issued = TOKEN.split(".")
        assert version == "v1" and int(expires) == int(issued[1]) and mac == issued[2]
    else:
        assert type(reason) is str and reason


# --- the HTTP side ----------------------------------------------------------------------------


class FakeTransport:
    """Records what the protocol does to its connection."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.writes_after_close = 0
        self.closed = False
        self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.writes_after_close += self.closed

    def writelines(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol  # after an upgrade; the fuzzer still feeds the HTTP protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("203.0.113.7", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class RecordingHttp(HttpProtocol):
    """``HttpProtocol`` that records exceptions from its httptools callbacks, which httptools
    would otherwise turn into a generic ``HttpParserCallbackError`` (and so a 400)."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.callback_errors: list[BaseException] = []

    def _recorded(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:
            self.callback_errors.append(exc)
            raise

    def on_url(self, url: bytes) -> None:
        self._recorded(super().on_url, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._recorded(super().on_header, name, value)

    def on_body(self, body: bytes) -> None:
        self._recorded(super().on_body, body)

    def on_message_complete(self) -> None:
        self._recorded(super().on_message_complete)


SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    public_url="http://127.0.0.1:1",  # type: ignore[arg-type]
    realtime_url="ws://127.0.0.1:1/v1/realtime",
    openai_api_key="k",
    twilio_auth_token="t",
)


@dataclasses.dataclass
class Http:
    relay: Relay
    loop: asyncio.AbstractEventLoop  # the store's, on which every exchange runs


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    """A Relay over an opened SQLite store; fuzzed requests never get far enough to use it."""
    loop = asyncio.new_event_loop()
    store = SQLiteStore(tmp_path_factory.mktemp("fuzz") / "relay.sqlite3")
    loop.run_until_complete(store.open())
    yield Http(Relay(SETTINGS, store), loop)
    loop.run_until_complete(store.close())
    loop.close()


FORM = urlencode({"CallSid": "CA" + "1" * 32, "From": "+15550100", "To": "+15550199", "AccountSid": "AC" + "2" * 32})
WS_HEADERS = (
    b"Host: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def _post(target: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: relay.example\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"X-Twilio-Signature: bm90IGEgc2lnbmF0dXJl\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


REQUESTS: dict[str, tuple[bytes, bytes]] = {  # name: (request, the status line it must get)
    "webhook": (_post(b"/twilio/voice", FORM.encode()), b"HTTP/1.1 403 Forbidden"),
    "webhook json": (_post(b"/twilio/voice?bodySHA256=" + b"a" * 64, b'{"CallSid":"CA1"}'), b"HTTP/1.1 403 Forbidden"),
    "webhook get": (b"GET /twilio/voice?" + FORM.encode() + b" HTTP/1.1\r\nHost: r\r\n\r\n", b"HTTP/1.1 403 Forbidden"),
    "upgrade": (
        b"GET /twilio/voice HTTP/1.1\r\n" + WS_HEADERS + b"X-Twilio-Signature: bm8=\r\n\r\n",
        b"HTTP/1.1 403 Forbidden",
    ),
    "unsigned upgrade": (b"GET /twilio/voice HTTP/1.1\r\n" + WS_HEADERS + b"\r\n", b"HTTP/1.1 403 Forbidden"),
    "health": (b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n", b"HTTP/1.1 200 OK"),
    "head": (b"HEAD /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK"),
    "not found": (b"GET /nope HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 Not Found"),
    "method": (b"DELETE /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.1 405 Method Not Allowed"),
    "chunked": (
        b"POST /twilio/voice HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Twilio-Signature: x\r\n\r\n"
        b"5\r\nCallS\r\n3\r\nid=\r\n0\r\n\r\n",
        b"HTTP/1.1 403 Forbidden",
    ),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(70)) + b"\r\n",
        b"HTTP/1.1 413 Request Entity Too Large",
    ),
    "body too large": (_post(b"/twilio/voice", b"a=" + b"b" * 70_000), b"HTTP/1.1 413 Request Entity Too Large"),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"HTTP/1.1 400 Bad Request"),
}
HTTP_TOKENS = (
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\x00",
    b" ",
    b":",
    b"?",
    b"#",
    b"%",
    b"%zz",
    b"Content-Length: 99999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"X-Twilio-Signature: \xff\r\n",
    b"Host: [::1\r\n",
    b"x" * 9000,
    b"GET / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"?bodySHA256=",
    b"&bodySHA256=x",
    b"http://[",
    b"\xc3\xa9",
    b"/../..",
)


@st.composite
def http_inputs(draw: st.DrawFn) -> list[bytes]:
    """A request (or two, pipelined), mutated, cut into the chunks a socket might deliver."""
    names = sorted(REQUESTS)
    data = REQUESTS[draw(st.sampled_from(names))][0]
    if draw(st.integers(0, 4)) == 0:
        data += REQUESTS[draw(st.sampled_from(names))][0]
    kind = draw(st.integers(0, 5))
    if kind == 0:
        data = draw(st.binary(max_size=300))
    elif kind == 1:  # an absolute-form target: httptools passes it through to the server's urlsplit
        host = draw(st.sampled_from([b"relay.example", b"[::1]", b"[::1", b"[x", b"a]", b"127.0.0.1:1"]))
        data = data.replace(b" /", b" http://" + host + b"/", 1)
    if kind >= 2:
        rng = draw(st.randoms(use_true_random=False))
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                at = draw(st.integers(0, len(data)))
                data = data[:at] + draw(st.sampled_from(HTTP_TOKENS)) + data[at:]
            else:
                data = fuzz.mutate_bytes(data, rng)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]+\r\n(?:[A-Za-z-]+: [^\r\n]*\r\n)*\r\n", re.S)


def exchange(http: Http, chunks: list[bytes]) -> tuple[FakeTransport, RecordingHttp]:
    """Deliver ``chunks`` as the event loop would (none after the protocol closed), then EOF."""

    async def run() -> tuple[FakeTransport, RecordingHttp]:
        transport, protocol = FakeTransport(), RecordingHttp(http.relay)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break
            try:
                protocol.data_received(chunk)
            except Exception as exc:
                raise AssertionError(f"data_received raised {exc!r}") from exc
        if not transport.closed and protocol.eof_received() is not True:
            transport.close()
        protocol.connection_lost(None)
        return transport, protocol

    return http.loop.run_until_complete(run())


@FEW
@given(chunks=http_inputs())
def test_http_side_answers_garbage_with_whole_responses_and_starts_no_call(http: Http, chunks: list[bytes]) -> None:
    transport, protocol = exchange(http, chunks)
    assert protocol.callback_errors == [], f"a request handler raised {protocol.callback_errors[0]!r}"
    for written in transport.writes:
        head = RESPONSE.match(written)
        assert head is not None, written[:200]
        length = re.search(rb"Content-Length: (\d+)\r\n", head.group(0))
        # A HEAD answer announces the GET body's length and carries none.
        assert length is not None and len(written) - head.end() in (int(length.group(1)), 0)
        assert head.group(1) != b"101"
    assert not transport.writes_after_close, transport.writes
    assert http.relay.calls_total == 0 and not http.relay.sessions and not http.relay.background


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_each_unmutated_request_gets_its_answer(http: Http, name: str) -> None:
    request, status = REQUESTS[name]
    transport, protocol = exchange(http, [request])
    assert transport.writes and transport.writes[0].startswith(status + b"\r\n")
    assert protocol.callback_errors == [] and http.relay.calls_total == 0


async def test_a_validly_signed_upgrade_does_start_a_call(tmp_path: Path) -> None:
    """The control for the test above: the same upgrade, signed with the auth token, is accepted."""
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    relay = Relay(SETTINGS, store)
    signature = RequestValidator("t").compute_signature(SETTINGS.stream_url, {}).encode()
    transport, protocol = FakeTransport(), RecordingHttp(relay)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"GET /twilio/voice HTTP/1.1\r\n" + WS_HEADERS + b"X-Twilio-Signature: " + signature + b"\r\n\r\n"
    )
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")
    assert relay.calls_total == 1
    for task in list(relay.sessions):
        task.cancel()
    await asyncio.gather(*relay.sessions, return_exceptions=True)
    protocol.connection_lost(None)
    await store.close()


# --- python -m relay.devtools.fuzz ------------------------------------------------------------


def test_the_fuzzer_finishes_a_seeded_run_clean() -> None:
    out = io.StringIO()
    assert fuzz.main(["--frames", "20000", "--seed", "1"], out=out) == 0, out.getvalue()
    table = out.getvalue()
    assert "20000 inputs in" in table and "inputs/s" in table
    for parser in (
        "parse_media",
        "parse_audio_delta",
        "b64_decoded_len",
        "twilio.parse_event",
        "realtime.parse_event",
        "FrameReader",
    ):
        assert re.search(rf"^{re.escape(parser)} +[1-9]", table, re.M), parser  # some inputs parsed


def test_the_fuzzer_is_deterministic_for_a_seed() -> None:
    def table(seed: int) -> str:
        out = io.StringIO()
        fuzz.main(["--frames", "2000", "--seed", str(seed)], out=out)
        return out.getvalue().split(" inputs in ")[0]

    assert table(7) == table(7) != table(8)


def _reproducer(report: str) -> bytes:
    line = next(x for x in report.splitlines() if x.startswith("reproducer = "))
    return eval(line.removeprefix("reproducer = "))  # bytes literals and repeats (b'[' * 1000) the fuzzer printed


def test_the_fuzzer_fails_with_a_reproducer_on_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    real = realtime.parse_event

    def fragile(message: bytes) -> dict[str, Any]:
        if b"session" in message:
            raise KeyError("session")
        return real(message)

    monkeypatch.setattr(realtime, "parse_event", fragile)
    out = io.StringIO()
    assert fuzz.main(["--frames", "20000", "--seed", "1"], out=out) == 1
    report = out.getvalue()
    assert "FAIL realtime.parse_event: undocumented KeyError" in report
    with pytest.raises(KeyError):
        fragile(_reproducer(report))


def test_the_fuzzer_fails_when_the_compiled_path_and_the_twin_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    real = twin.b64_decoded_len
    monkeypatch.setattr(twin, "b64_decoded_len", lambda data: real(data) + (data == b"AAAA"))
    out = io.StringIO()
    assert fuzz.main(["--frames", "20000", "--seed", "1", "--twin-every", "1"], out=out) == 1
    report = out.getvalue()
    assert "!= twin" in report
    data = _reproducer(report)
    assert outcome(compiled.b64_decoded_len, data) != outcome(twin.b64_decoded_len, data)


# --- regressions: the reproducers of the bugs this file found, each now fixed ----------------


@pytest.mark.parametrize(
    "message",
    [
        b'{"event":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"event":"start","start":{"accountSid":"a","streamSid":"s","callSid":"c","tracks":['
        + b"[" * 1000
        + b"]" * 1000
        + b'],"mediaFormat":{"encoding":"e","sampleRate":8000,"channels":1}}}',
    ],
)
def test_regression_twilio_parse_event_on_deep_nesting(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        twilio.parse_event(message)


@pytest.mark.parametrize("audio", [{"input": "pcmu"}, {"output": None}, {"input": [], "output": 1}])
def test_regression_session_problems_on_a_non_object_direction(audio: dict[str, Any]) -> None:
    assert realtime.session_problems({"audio": audio})  # a list of problems, not an exception


@pytest.mark.parametrize("token", ["v1.\u00b2.x", "v1." + "9" * 4301 + ".x", "v1.1700000000.\u00e9"])
def test_regression_verify_on_odd_tokens(token: str) -> None:
    assert type(streamtoken.verify(SECRET, token, **CALL, now=1000.0)) is str


def test_regression_upgrade_with_a_bad_absolute_target(http: Http) -> None:
    transport, protocol = FakeTransport(), RecordingHttp(http.relay)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET http://[x/twilio/voice HTTP/1.1\r\n" + WS_HEADERS + b"\r\n")
    assert transport.writes[0].startswith(b"HTTP/1.1 4")


@pytest.mark.parametrize("target", [b"/twilio/voice?bodySHA256=", b"/twilio/voice?xbodySHA256=1"])
def test_regression_blank_body_hash_is_a_signature_failure(http: Http, target: bytes) -> None:
    before = http.relay.rejected_signatures
    transport, _ = exchange(http, [_post(target, b'{"CallSid":"CA1"}')])
    assert transport.writes[0].startswith(b"HTTP/1.1 403 ") and http.relay.rejected_signatures == before + 1


def test_regression_nothing_is_written_after_close(http: Http) -> None:
    transport, _ = exchange(http, [b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"])
    assert transport.writes_after_close == 0


@pytest.mark.parametrize("head", [b"GET /healthz HTTP/1.1\r\nX-Big: ", b"GET /twilio/voice?a="])
def test_regression_an_endless_request_head_is_refused(http: Http, head: bytes) -> None:
    # 1 MiB of one header value, or of the target: far past any head Twilio sends (MAX_BODY is 64 KiB).
    transport, _ = exchange(http, [head] + [b"a" * 65536] * 16)
    assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 4")
