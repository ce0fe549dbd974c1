"""A protocol-exact simulated OpenAI GPT-Live server on loopback.

It speaks the GA GPT-Live WebSocket protocol (``/shared/BACKENDS.md`` §2; event and field shapes
as in openai 3.63.0 ``types/live``) and makes observable what relay has to get right:

* the client speaks first: ``session.start``, validated as strictly as the service does (unknown
  fields are errors, Realtime fields are unknown fields), then nothing until ``session.started``;
* the output is one continuous real-time stream, silence included: a delta per ``chunk_ms``, sent
  when its audio begins. Nothing marks where an answer starts or ends but the audio itself and the
  timed transcript fragments;
* nobody controls turns: the model yields by itself when the caller talks over it, and the stream
  simply turns to silence;
* tools run through Responses delegation (``response.event``), answered with
  ``response.item.create`` and continued with ``response.create``.

Every client mistake is answered with an ``error`` event and recorded in
``LiveSessionLog.violations``. As in ``relay.sim.agent``, ``LiveSession`` is sans-I/O protocol
state (it takes messages and the time, queues events, says when it next needs the clock) and
``LiveAgent`` is the asyncio shell serving one per WebSocket.

Timelines (session milliseconds, 0 = when ``session.started`` was sent): output byte k (8 kHz) is
at k/8, since the stream never pauses. Input byte k is at (the first append's arrival) + k/8, as a
media clock would count it: appends that come late do not move the caller's audio.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import functools
import heapq
import logging
import math
import random
import re
import string
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from relay.audio_format import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from relay.sim import audio
from relay.sim.agent import default_reply
from relay.sim.serving import SessionServer, SimulatorShell, json_error_response

__all__ = ["LIVE_PATH", "LiveAgent", "LiveConfig", "LiveSession", "LiveSessionLog"]

log = logging.getLogger(__name__)

LIVE_PATH = "/v1/live/sessions"
MODELS = ("gpt-live-1", "gpt-live-1.1")
VOICES = (  # openai 3.63.0 types/live/built_in_voice.py
    "alloy",
    "ash",
    "ballad",
    "beacon",
    "bossa",
    "cedar",
    "cinder",
    "coral",
    "delta",
    "echo",
    "gleam",
    "marin",
    "meridian",
    "quartz",
    "ripple",
    "sage",
    "shida",
    "shimmer",
    "stone",
    "tempo",
    "verse",
    "vesper",
    "willow",
)
DEFAULT_VOICE = "marin"
# The format a WebSocket session gets when session.start names none. The docs leave it open; the
# guide's example and pipecat treat the stream as PCM16 at 24 kHz, so a client that sends μ-law
# without checking session.started's answer is caught sending the wrong format.
DEFAULT_FORMAT = {"type": "audio/pcm", "rate": 24000}
# The Responses model a delegation runs on when ``LiveConfig.delegation_model_required`` is off.
DEFAULT_DELEGATION_MODEL = "gpt-5-mini"
CLOSE_REASONS = ("close_requested", "expired", "content", "remote_hangup", "connection_lost")
ALPHA_MESSAGE = (
    "The GPT-Live alpha protocol is no longer supported: connect to /v1/live/sessions without "
    "OpenAI-Alpha or OpenAI-Beta headers and send session.start first."
)
QUERY_MESSAGE = (
    "Unknown query parameter '{name}'. Do not pass model as a URL query parameter: set session.model in session.start."
)
# Allowed top-level fields per client event, besides type and event_id (openai 3.63.0 client_event.py).
CLIENT_FIELDS: dict[str, set[str]] = {
    "session.start": {"session"},
    "session.update": {"session"},
    "session.input_audio.append": {"audio"},
    "session.input_audio.mute": set(),
    "session.input_audio.unmute": set(),
    "session.output_audio.fixture.play": {"audio"},
    "session.instructions.append": {"content", "delegation_id"},
    "session.thinking.append": {"content", "delegation_id"},
    "session.commentary.append": {"content", "delegation_id"},
    "decision.create": set(),
    "decision.item.create": {"item"},
    "decision.item.delete": {"item_id"},
    "response.item.create": {"item"},
    "response.create": set(),
    "session.close": set(),
}
MAX_APPEND_TOKENS = 500
MAX_INPUT_ITEMS = 128
MAX_INPUT_TOKENS = 8_192
MAX_INSTRUCTIONS_TOKENS = 16_384
MAX_FIXTURE_BYTES = 30 * 24_000 * 2  # 30 s of PCM16 at 24 kHz
VAD_DBFS = -35.0  # speech: the caller simulator's words are near -18 dBFS, its silence is digital zero
QUIET_DBFS = -50.0  # below this a frame is a gap between words
GAP_SAMPLES = 40  # digital silence this long (5 ms) separates two words; speak() leaves 50 ms
SILENCE_BYTE = audio.ULAW_SILENCE
_ALPHABET = string.ascii_letters + string.digits
# What the model does with appended context: "say ...: <line>" is spoken verbatim (how a client
# makes the model greet first or say a given line); keys relayed as "...pressed...: 12#" are read back.
SAY = re.compile(r"(?is)^\s*say[^:]*:\s*(.+)$")
PRESSED = re.compile(r"(?i)pressed[^:]*:\s*([0-9*#]+)")
PARAPHRASE_PREFIX = "Here is an update: "
WEATHER_ACK = "Let me check the weather."
WEATHER_ARGUMENTS = '{"city": "Paris"}'


@dataclass(frozen=True)
class LiveConfig:
    think_ms: int = 300  # the end of a caller turn (silence_ms after its speech) -> the answer's first audio
    chunk_ms: int = 40  # audio per output delta; one is sent every chunk_ms, when its audio begins
    silence_ms: int = 500  # caller silence that ends a caller turn
    yield_ms: int = 60  # caller speech sustained this long while the model talks makes the model stop
    transcription_delay_ms: int = 100  # a caller word's audio fully arrived -> its transcript fragment
    pitch_hz: float = 210.0
    seed: int = 0
    reply: Callable[[str, list[tuple[str, str]]], str] | None = None  # (transcript, history) -> answer
    max_session_s: float = 3600.0  # expires_at = start + this; the session then closes "expired"
    usage_interval_s: float = 5.0
    # A caller line with one of these words gets the farewell and, when the Responses delegation
    # offers an ``end_call`` function, a delegated call of it as the farewell begins.
    hangup_words: tuple[str, ...] = ("goodbye", "bye")
    farewell: str = "Thank you for calling. Goodbye!"
    # Answer session.start with this error (code, message) and close, as the service does for a
    # session it will not run (a key without quota, say).
    session_error: tuple[str, str] | None = None
    delegation_model_required: bool = True  # delegation.responses.model is required (the SDK's type)
    # session.start -> session.started. The real service takes a round trip or more; a client that
    # sends audio without waiting for session.started is caught only when this is above zero.
    started_delay_ms: int = 0


@dataclass(eq=False)
class LiveSessionLog:
    """What happened on one connection; times are ``loop.time()``, spans session milliseconds."""

    index: int = 0
    path: str = ""
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    session_id: str = ""
    started_at: float | None = None  # session.started sent (session time 0)
    first_append_at: float | None = None
    appends: int = 0
    appends_before_started: int = 0
    received: list[tuple[float, str]] = field(default_factory=list)
    sent: list[tuple[float, str]] = field(default_factory=list)
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)  # the conversation as the model knows it
    session_config: dict[str, Any] = field(default_factory=dict)  # session.start's session, as sent
    yields: list[tuple[float, int]] = field(default_factory=list)  # (time, output ms) the model stopped at
    spoken: list[tuple[str, int, int]] = field(default_factory=list)  # (words spoken, start ms, end ms)
    usage_sent: list[dict[str, Any]] = field(default_factory=list)
    closed_reason: str | None = None  # session.closed's reason, when it was sent
    delegations: list[dict[str, Any]] = field(default_factory=list)
    tool_outputs: list[tuple[str, str]] = field(default_factory=list)  # (call_id, output)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class _ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None, *, violation: bool = True):
        super().__init__(message)
        self.code, self.message, self.param, self.violation = code, message, param, violation


# ---- session config validation (openai 3.63.0 types/live: session_config.py and what it names) ----
_Check = Callable[[Any, str], None]


def _type_error(path: str, expected: str) -> _ProtocolError:
    return _ProtocolError("invalid_type", f"Invalid type for '{path}': expected {expected}.", path)


def _string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _type_error(path, "a string")


def _boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _type_error(path, "a boolean")


def _integer(value: Any, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(path, "an integer")


def _count(value: Any, path: str) -> None:
    _integer(value, path)
    if value < 0:
        raise _ProtocolError("invalid_value", f"Invalid value for '{path}': expected an integer >= 0.", path)


def _json_object(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _type_error(path, "an object")


def _one_of(*values: Any) -> _Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, (bool, dict, list)) or value not in values:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for '{path}': {value!r}. Supported values are: "
                + ", ".join(repr(v) for v in values)
                + ".",
                path,
            )

    return check


def _array(item: _Check, *, max_items: int | None = None) -> _Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _type_error(path, "an array")
        if max_items is not None and len(value) > max_items:
            raise _ProtocolError(
                "array_above_max_length",
                f"Invalid '{path}': array too long. Expected an array with maximum length {max_items}, "
                f"but got an array with length {len(value)} instead.",
                path,
            )
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]")

    return check


def _object(fields: dict[str, _Check], required: tuple[str, ...] = ()) -> _Check:
    """A strict object: unknown keys are errors; null stands for an omitted optional field."""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _type_error(path, "an object")
        for key in value:
            if key not in fields:
                raise _ProtocolError("unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}")
        for key in required:
            if value.get(key) is None:
                raise _ProtocolError(
                    "missing_required_parameter", f"Missing required parameter: '{path}.{key}'.", f"{path}.{key}"
                )
        for key, element in value.items():
            if element is not None:
                fields[key](element, f"{path}.{key}")

    return check


def _tagged(variants: dict[str, _Check], tag: str = "type") -> _Check:
    """A union told apart by ``tag``, as the SDK's discriminated unions are."""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _type_error(path, "an object")
        kind = value.get(tag)
        if kind is None:
            raise _ProtocolError(
                "missing_required_parameter", f"Missing required parameter: '{path}.{tag}'.", f"{path}.{tag}"
            )
        if not isinstance(kind, str) or kind not in variants:
            _one_of(*variants)(kind, f"{path}.{tag}")
        variants[kind](value, path)

    return check


def _model(value: Any, path: str) -> None:
    _string(value, path)
    _one_of(*MODELS)(value, path)


def _voice(value: Any, path: str) -> None:
    if isinstance(value, dict):
        _object({"id": _string}, ("id",))(value, path)
    else:
        _one_of(*VOICES)(value, path)


def _g711(kind: str) -> _Check:
    return _object({"type": _one_of(kind), "rate": _one_of(8000)}, ("type", "rate"))


_FORMAT = _tagged(
    {
        "audio/pcm": _object({"type": _one_of("audio/pcm"), "rate": _one_of(16000, 24000)}, ("type", "rate")),
        "audio/pcmu": _g711("audio/pcmu"),
        "audio/pcma": _g711("audio/pcma"),
    }
)
_AUDIO = _object({"format": _FORMAT, "output": _object({"voice": _voice})})


def _message(role: str, part: _Check) -> _Check:
    shape = _object(
        {
            "role": _one_of(role),
            "content": _array(part),
            "id": _string,
            "status": _one_of("incomplete", "completed"),
            "type": _one_of("message"),
        },
        ("role", "content"),
    )

    def check(value: Any, path: str) -> None:
        shape(value, path)
        if len(value["content"]) != 1:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for '{path}.content': supply exactly one text part per history message.",
                f"{path}.content",
            )

    return check


_INPUT_TEXT = _object({"text": _string, "type": _one_of("input_text")}, ("text",))
_INPUT = _array(
    _tagged(
        {
            "developer": _message("developer", _INPUT_TEXT),
            "user": _message("user", _INPUT_TEXT),
            "assistant": _message(
                "assistant", _object({"text": _string, "type": _one_of("text", "output_text")}, ("text",))
            ),
        },
        tag="role",
    ),
    max_items=MAX_INPUT_ITEMS,
)
_FUNCTION_TOOL = _object(
    {
        "type": _one_of("function"),
        "name": _string,
        "description": _string,
        "parameters": _json_object,
        "strict": _boolean,
    },
    ("type", "name"),
)
# The Responses backend's other tools (responses_delegation_config.py ``Tool``): relay offers only
# functions, so these are checked for their type alone.
_OTHER_TOOLS = (
    "web_search",
    "file_search",
    "code_interpreter",
    "shell",
    "image_generation",
    "mcp",
    "custom",
    "namespace",
    "tool_search",
    "programmatic_tool_calling",
    "computer",
    "apply_patch",
)
_TOOLS = _array(_tagged({"function": _FUNCTION_TOOL, **dict.fromkeys(_OTHER_TOOLS, _json_object)}))
_TOOL_CHOICE_TYPES = (
    "file_search",
    "web_search",
    "web_search_preview",
    "image_generation",
    "computer",
    "code_interpreter",
    "programmatic_tool_calling",
    "shell",
    "custom",
    "apply_patch",
    "mcp",
    "allowed_tools",
)


def _tool_choice(value: Any, path: str) -> None:
    if isinstance(value, str):
        _one_of("auto", "none", "required")(value, path)
        return
    function = _object({"type": _one_of("function"), "name": _string}, ("type", "name"))
    _tagged({"function": function, **dict.fromkeys(_TOOL_CHOICE_TYPES, _json_object)})(value, path)


def _responses_fields() -> dict[str, _Check]:
    return {
        "model": _string,
        "instructions": _string,
        "tools": _TOOLS,
        "tool_choice": _tool_choice,
        "parallel_tool_calls": _boolean,
        "reasoning": _object(
            {
                "effort": _one_of("none", "minimal", "low", "medium", "high", "xhigh"),
                "summary": _one_of("concise", "detailed", "auto"),
            }
        ),
        "max_output_tokens": _count,
        "service_tier": _one_of("auto", "default", "fast_tier_temp_pilot", "flex", "priority", "ultrafast"),
        "text": _object({"verbosity": _one_of("low", "medium", "high")}),
    }


def _delegation(responses: _Check, decisions: _Check, required: tuple[str, ...]) -> _Check:
    delay = {"acknowledgement_delay_ms": _count}
    return _tagged(
        {
            "client": _object({"type": _one_of("client"), **delay}, ("type",)),
            "responses": _object({"type": _one_of("responses"), "responses": responses, **delay}, ("type", *required)),
            "decisions": _object(
                {"type": _one_of("decisions"), "decisions": decisions, **delay},
                ("type", *(("decisions",) if required else ())),
            ),
        }
    )


@functools.cache
def _session_check(model_required: bool) -> _Check:
    responses = _object(_responses_fields(), ("model",) if model_required else ())
    decisions = _object({"model": _string, "questions": _array(_json_object)}, ("model", "questions"))
    return _object(
        {
            "model": _model,
            "audio": _AUDIO,
            "client": _object({"data_channel": _json_object}, ("data_channel",)),
            "delegation": _delegation(responses, decisions, ("responses",)),
            "input": _INPUT,
            "instructions": _string,
            "safety_identifier": _string,
            "store": _boolean,
            "triggers": _array(_json_object),
        },
        ("model",),
    )


_UPDATE_CHECK = _object(
    {"delegation": _delegation(_object(_responses_fields()), _json_object, ()), "triggers": _array(_json_object)}
)


def _function_output(value: Any, path: str) -> None:
    if not isinstance(value, (str, list)):
        raise _type_error(path, "a string or an array of content parts")


_FUNCTION_CALL_OUTPUT = _object(
    {
        "type": _one_of("function_call_output"),
        "call_id": _string,
        "output": _function_output,
        "id": _string,
        "status": _one_of("in_progress", "completed", "incomplete"),
    },
    ("type", "call_id", "output"),
)


def _tokens(text: str) -> float:
    return len(text) / 4  # about four characters a token


# ---- audio -------------------------------------------------------------------------------------
def _alaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 A-law (Sun g711.c ``linear2alaw``)."""
    v = pcm.astype(np.int32) >> 3
    negative = v < 0
    mask = np.where(negative, 0x55, 0xD5)
    v = np.where(negative, -v - 1, v)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), v, side="left")
    quant = np.where(seg < 2, v >> 1, v >> np.minimum(seg, 7)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | quant)
    return (code ^ mask).astype(np.uint8).tobytes()


def _alaw_table() -> np.ndarray:
    """G.711 A-law to linear (Sun g711.c ``alaw2linear``)."""
    table = np.zeros(256, dtype=np.int16)
    for code in range(256):
        a = code ^ 0x55
        seg, value = (a & 0x70) >> 4, (a & 0x0F) << 4
        value = value + 8 if seg == 0 else (value + 0x108) << max(seg - 1, 0)
        table[code] = value if a & 0x80 else -value
    return table


ALAW_TO_PCM = _alaw_table()


def _mark_bits(word: str) -> int:
    """Samples a word's mark occupies (``audio.speak``'s frame: 16-bit magic, length, body, CRC)."""
    return 8 * (4 + len(word.encode()[:255]))


def _segments(ulaw: bytes | bytearray) -> list[tuple[int, int]]:
    """Runs of sound separated by at least GAP_SAMPLES of digital silence, as [start, end) offsets."""
    loud = np.flatnonzero(audio.ulaw_decode(ulaw) != 0)
    if not len(loud):
        return []
    breaks = np.flatnonzero(np.diff(loud) > GAP_SAMPLES)
    starts = [int(loud[0]), *(int(loud[b + 1]) for b in breaks)]
    ends = [*(int(loud[b]) + 1 for b in breaks), int(loud[-1]) + 1]
    return list(zip(starts, ends, strict=True))


def _word_spans(ulaw: bytes | bytearray, marks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each word's audio, found around its mark: the run of sound that holds the mark, split halfway
    between marks when words share one run."""
    segments = _segments(ulaw)
    spans: list[tuple[int, int]] = []
    for i, (m0, m1) in enumerate(marks):
        lo, hi = next(((s, e) for s, e in segments if s <= m0 < e), (m0, max(m1, m0 + 1)))
        if i > 0 and marks[i - 1][0] >= lo:
            lo = (marks[i - 1][1] + m0) // 2
        if i + 1 < len(marks) and marks[i + 1][0] < hi:
            hi = (m1 + marks[i + 1][0]) // 2
        spans.append((lo, hi))
    return spans


@dataclass(frozen=True)
class _Speech:
    audio: bytes  # μ-law, 8 kHz
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # each word's audio, byte offsets
    mark_ends: tuple[int, ...]  # where each word's mark ends: a word cut after this point was heard


@functools.lru_cache(maxsize=256)
def _speech(text: str, pitch_hz: float) -> _Speech:
    """The model's audio for ``text`` (one synthesis per distinct line)."""
    ulaw = audio.speak(text, pitch_hz=pitch_hz)
    words = tuple(text.split())
    heard = audio.words_heard(ulaw)
    if [w for _, w in heard] == list(words):
        marks = [(pos, pos + _mark_bits(w)) for pos, w in heard]
    else:  # a word too long to carry its mark: say it is heard at its share of the line
        n = len(words)
        marks = [(p, p) for p in (len(ulaw) * (2 * k + 1) // (2 * n) for k in range(n))]
    spans = _word_spans(ulaw, marks)
    return _Speech(ulaw, words, tuple(spans), tuple(end for _, end in marks))


def _fixture_speech(pcm24: bytes) -> _Speech:
    return _Speech(audio.ulaw_encode(np.frombuffer(pcm24, dtype="<i2")[::3]), (), (), ())


@dataclass(eq=False)
class _Utterance:
    """Something the model says: an answer, a line it was given, a fixture."""

    kind: str  # "reply" (answers a caller line), "line" (commentary, keys, tool result), "fixture"
    speech: _Speech
    ready: float  # loop time from which it may begin
    tool: str | None = None  # a function the model delegates to Responses as it begins to speak
    client_event_id: str | None = None
    start: int = -1  # output byte at which it began
    words_sent: int = 0


@dataclass(eq=False)
class _Delegated:
    """A delegated Responses response that called a function, and its round trip."""

    delegation_id: str
    response_id: str
    calls: dict[str, str | None]  # call_id -> the client's output
    names: dict[str, str]  # call_id -> function name
    record: dict[str, Any]
    completed: bool = False  # its response.completed was sent
    continued: bool = False  # response.create went on from it
    sequence: int = 0


class LiveSession:
    """Sans-I/O protocol state for one GPT-Live connection (times are seconds, any monotonic clock)."""

    def __init__(
        self, config: LiveConfig, slog: LiveSessionLog, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.config, self.log, self.wall_clock = config, slog, wall_clock
        self.rng = random.Random(config.seed * 1_000_003 + slog.index)
        self.reply = config.reply or default_reply
        self.close_request: tuple[int, str] | None = None
        self.resource: dict[str, Any] = {}  # the resolved session, once started
        self._events: list[dict[str, Any]] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self._accepted = False  # a valid session.start arrived
        self._t0: float | None = None  # session.started sent: session time 0
        self._format: dict[str, Any] = dict(DEFAULT_FORMAT)
        self._chunk_bytes = config.chunk_ms * SAMPLE_RATE // 1000
        # output
        self._out_pos = 0  # output bytes (8 kHz) sent
        self._current: _Utterance | None = None
        self._queue: list[_Utterance] = []
        self._fixture_active = False
        self._delegated: list[_Delegated] = []
        self._closing = False  # session.close arrived: the session ends once its delegations drain
        self._closing_id: str | None = None
        # input: absolute positions are session bytes at 8 kHz
        self._in_origin: int | None = None
        self._in_buf = bytearray()
        self._in_buf_start = 0
        self._in_carry = b""  # PCM bytes short of a whole 8 kHz sample
        self._frames_to = 0  # frames scheduled up to here
        self._processed_to = 0  # frames analysed up to here
        self._arrivals: dict[int, float] = {}  # frame start -> when its last byte arrived
        self._muted = False
        self._region: int | None = None  # start of the run of sound being heard (a word)
        self._in_turn = False
        self._turn_start = 0
        self._speech_end = 0
        self._speech_ms = 0  # consecutive speech, for yielding
        self._turn_speech_ms = 0  # all the speech of the caller's turn
        self._silent_ms = 0
        self._turn_words: list[str] = []

    # ---- sans-I/O interface ----------------------------------------------------------------
    def connect(self, now: float) -> None:
        """The WebSocket is open; the client speaks first."""

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one client message (a WebSocket frame)."""
        self.advance(now)
        if self.close_request:
            return
        event_id = None
        try:
            msg = self._parse(data, now)
            kind, event_id = msg["type"], msg.get("event_id")
            if event_id is not None and not isinstance(event_id, str):
                event_id = None
                raise _type_error("event_id", "a string")
            if kind not in CLIENT_FIELDS:
                _one_of(*CLIENT_FIELDS)(kind, "type")
            extra = sorted(set(msg) - CLIENT_FIELDS[kind] - {"type", "event_id"})
            if extra:
                raise _ProtocolError("unknown_parameter", f"Unknown parameter: '{extra[0]}'.", extra[0])
            if kind == "session.input_audio.append":
                self.log.appends += 1
                if self.log.first_append_at is None:
                    self.log.first_append_at = now
            if kind != "session.start" and self._t0 is None:
                if kind == "session.input_audio.append":
                    self.log.appends_before_started += 1
                what = "Wait for session.started" if self._accepted else "Send session.start first"
                dropped = ": the audio was dropped." if kind == "session.input_audio.append" else "."
                raise _ProtocolError("session_not_started", f"{what} before sending '{kind}'{dropped}", "type")
            getattr(self, "_on_" + kind.replace(".", "_"))(msg, now)
        except _ProtocolError as e:
            self._error(e.code, e.message, e.param, event_id, violation=e.violation)
        self.advance(now)

    def advance(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        while self._timers and self._timers[0][0] <= now and not self.close_request:
            due, _, fn = heapq.heappop(self._timers)
            fn(due)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers and not self.close_request else None

    def take_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def connection_lost(self) -> None:
        if self._current is not None:  # logged as far as it went out; nobody is left to tell
            self._cut(self._current, 0.0, yielded=False)
            self._events.clear()
        self._timers.clear()
        self._queue.clear()

    def close(self, reason: str, now: float, client_event_id: str | None = None) -> None:
        """End the session as the service does: ``session.closed`` with ``reason``, then close 1000."""
        if reason not in CLOSE_REASONS:
            raise ValueError(f"session.closed reason must be one of {CLOSE_REASONS}")
        if self.close_request:
            return
        if self._current is not None:  # the answer ends where the stream does
            self._cut(self._current, now, yielded=False)
        if self._t0 is not None:
            fields: dict[str, Any] = {"reason": reason, "session": copy.deepcopy(self.resource)}
            fields["usage"] = self._usage(now)
            if client_event_id is not None:
                fields["client_event_id"] = client_event_id
            self._emit("session.closed", **fields)
            self.log.closed_reason = reason
        self.close_request = (1000, "")
        self._timers.clear()

    def session_ms(self, now: float) -> int:
        """``now`` on the session timeline."""
        return round((now - self._t0) * 1000) if self._t0 is not None else 0

    # ---- helpers -----------------------------------------------------------------------------
    def _parse(self, data: str | bytes, now: float) -> dict[str, Any]:
        if isinstance(data, bytes):
            self.log.received.append((now, "<binary>"))
            raise _ProtocolError("invalid_event", "Binary frames are not supported; send JSON text frames.")
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.log.received.append((now, "<invalid json>"))
            raise _ProtocolError("invalid_json", "The event is not valid JSON.") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.log.received.append((now, "<no type>"))
            raise _ProtocolError("invalid_event", "The event must be a JSON object with a string 'type'.", "type")
        self.log.received.append((now, msg["type"]))
        return msg

    def _id(self, prefix: str) -> str:
        return prefix + "_" + "".join(self.rng.choice(_ALPHABET) for _ in range(21))

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "event_id": self._id("event"), **fields}
        self._events.append(event)
        return event

    def _at(self, when: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def _error(
        self,
        code: str,
        message: str,
        param: str | None,
        client_event_id: str | None,
        *,
        etype: str = "invalid_request_error",
        violation: bool = True,
    ) -> None:
        error: dict[str, Any] = {"type": etype, "code": code, "message": message}
        if param is not None:
            error["param"] = param
        fields: dict[str, Any] = {"error": error}
        if client_event_id is not None:
            error["client_event_id"] = fields["client_event_id"] = client_event_id
        self.log.errors_sent.append(self._emit("error", **fields))
        if violation:
            self.log.violations.append(f"error {code}: {message}")

    def _ack(self, kind: str, msg: dict[str, Any], now: float, **fields: Any) -> None:
        if msg.get("event_id") is not None:
            fields["client_event_id"] = msg["event_id"]
        self._emit(kind, **fields)

    def _usage(self, now: float) -> dict[str, Any]:
        """Cumulative billable seconds (whole seconds, never rounded up)."""
        whole = 0 if self._t0 is None else math.floor(max(0.0, now - self._t0) + 1e-6)
        return {"seconds": float(whole), "active_seconds": whole}

    @property
    def _tools(self) -> dict[str, dict[str, Any]]:
        """The Responses delegation's function tools, by name (none without Responses delegation)."""
        delegation = self.resource.get("delegation")
        if not isinstance(delegation, dict) or delegation.get("type") != "responses":
            return {}
        tools = delegation["responses"].get("tools") or []
        return {t["name"]: t for t in tools if t.get("type") == "function"}

    @property
    def _delegation_type(self) -> str | None:
        delegation = self.resource.get("delegation")
        return delegation["type"] if isinstance(delegation, dict) else None

    # ---- session.start -----------------------------------------------------------------------
    def _on_session_start(self, msg: dict[str, Any], now: float) -> None:
        if self._accepted:
            raise _ProtocolError("session_already_started", "session.start may be sent only once per session.", "type")
        cfg = msg.get("session")
        if cfg is None:
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        if isinstance(cfg, dict):
            self.log.session_config = copy.deepcopy(cfg)
        _session_check(self.config.delegation_model_required)(cfg, "session")
        instructions = cfg.get("instructions") or ""
        if _tokens(instructions) > MAX_INSTRUCTIONS_TOKENS:
            raise _ProtocolError(
                "string_above_max_length",
                f"Invalid 'session.instructions': longer than {MAX_INSTRUCTIONS_TOKENS} tokens.",
                "session.instructions",
            )
        items = cfg.get("input") or []
        if sum(_tokens(item["content"][0]["text"]) for item in items) > MAX_INPUT_TOKENS:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid 'session.input': the history renders to more than {MAX_INPUT_TOKENS} tokens.",
                "session.input",
            )
        event_id = msg.get("event_id")
        if self.config.session_error is not None:
            code, message = self.config.session_error
            etype = "insufficient_quota" if code == "insufficient_quota" else "invalid_request_error"
            self._error(code, message, None, event_id, etype=etype, violation=False)
            self.close_request = (1000, "")
            return
        self._accepted = True
        if self.config.started_delay_ms <= 0:
            self._start(cfg, event_id, now)
        else:
            self._at(now + self.config.started_delay_ms / 1000, lambda t: self._start(cfg, event_id, t))

    def _resolve(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """session.started's session: the config with the server's defaults filled in."""
        a = cfg.get("audio") or {}
        fmt = copy.deepcopy(a.get("format") or DEFAULT_FORMAT)
        voice = copy.deepcopy((a.get("output") or {}).get("voice") or DEFAULT_VOICE)
        delegation = copy.deepcopy(cfg.get("delegation"))
        if isinstance(delegation, dict):
            delegation.setdefault("acknowledgement_delay_ms", 400 if delegation["type"] == "decisions" else 0)
            if delegation["type"] == "responses":
                responses = {k: v for k, v in delegation["responses"].items() if v is not None}
                responses.setdefault("model", DEFAULT_DELEGATION_MODEL)
                delegation["responses"] = responses
        resource: dict[str, Any] = {
            "id": self._id("sess"),
            "expires_at": int(self.wall_clock() + self.config.max_session_s),
            "model": cfg["model"],
            "status": "active",
            "audio": {"format": fmt, "output": {"voice": voice}},
            "instructions": cfg.get("instructions"),
            "delegation": delegation,
            "store": bool(cfg.get("store") or False),
        }
        for key in ("input", "safety_identifier", "triggers", "client"):
            if cfg.get(key) is not None:
                resource[key] = copy.deepcopy(cfg[key])
        return resource

    def _start(self, cfg: dict[str, Any], event_id: str | None, now: float) -> None:
        self.resource = self._resolve(cfg)
        self._format = self.resource["audio"]["format"]
        self._t0 = self.log.started_at = now
        self.log.session_id = self.resource["id"]
        fields: dict[str, Any] = {"session": copy.deepcopy(self.resource)}
        if event_id is not None:
            fields["client_event_id"] = event_id
        self._emit("session.started", **fields)
        for item in cfg.get("input") or []:
            self.log.turns.append((item["role"], item["content"][0]["text"]))
        self._at(now + self.config.usage_interval_s, lambda t: self._report_usage(t, 1))
        self._at(now + self.config.max_session_s, lambda t: self.close("expired", t))
        self._tick(now, 0)

    def _report_usage(self, now: float, k: int) -> None:
        usage = self._usage(now)
        self.log.usage_sent.append(usage)
        self._emit("session.usage.updated", usage=usage)
        self._at(self._session_t0 + (k + 1) * self.config.usage_interval_s, lambda t: self._report_usage(t, k + 1))

    @property
    def _session_t0(self) -> float:
        assert self._t0 is not None
        return self._t0

    # ---- session.update ----------------------------------------------------------------------
    def _on_session_update(self, msg: dict[str, Any], now: float) -> None:
        upd = msg.get("session")
        if upd is None:
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        _UPDATE_CHECK(upd, "session")
        current = self.resource.get("delegation")
        if "delegation" in upd:
            new = upd["delegation"]
            new_type = new["type"] if isinstance(new, dict) else None
            if new_type != self._delegation_type:
                raise _ProtocolError(
                    "invalid_value",
                    f"Invalid value for 'session.delegation.type': the delegation type cannot change "
                    f"(it is {self._delegation_type!r}).",
                    "session.delegation.type",
                )
            if isinstance(new, dict) and isinstance(current, dict):
                for key, value in new.items():
                    if key == "responses" and isinstance(value, dict):
                        current["responses"].update({k: v for k, v in value.items() if v is not None})
                    elif key in ("decisions", "acknowledgement_delay_ms") and value is not None:
                        current[key] = copy.deepcopy(value)
        if upd.get("triggers") is not None:
            self.resource["triggers"] = copy.deepcopy(upd["triggers"])
        self._ack("session.updated", msg, now, session=copy.deepcopy(self.resource))

    # ---- the output stream -------------------------------------------------------------------
    def _tick(self, now: float, n: int) -> None:
        """Send output delta ``n``: its audio begins now."""
        if self._current is None:
            self._begin_next(now)
        cur = self._current
        chunk = bytearray([SILENCE_BYTE]) * self._chunk_bytes
        began = cur is not None and cur.start == self._out_pos
        if cur is not None:
            offset = self._out_pos - cur.start
            part = cur.speech.audio[offset : offset + self._chunk_bytes]
            chunk[: len(part)] = part
        # the SDK's OutputAudioDeltaEvent has no event_id, and the primary WebSocket omits start/end_ms
        payload = binascii.b2a_base64(self._encode(bytes(chunk)), newline=False).decode()
        self._events.append({"type": "session.output_audio.delta", "delta": payload})
        self._out_pos += self._chunk_bytes
        if cur is not None:
            self._word_deltas(cur)
            if began and cur.tool is not None:
                self._delegate(cur, now)
            if self._out_pos - cur.start >= len(cur.speech.audio):
                self._finish(cur)
        self._at(self._session_t0 + (n + 1) * self.config.chunk_ms / 1000, lambda t: self._tick(t, n + 1))

    def _encode(self, ulaw: bytes) -> bytes:
        kind = self._format["type"]
        if kind == "audio/pcmu":
            return ulaw
        pcm = audio.ulaw_decode(ulaw)
        if kind == "audio/pcma":
            return _alaw_encode(pcm)
        return np.repeat(pcm, int(self._format["rate"]) // SAMPLE_RATE).astype("<i2").tobytes()

    def _begin_next(self, now: float) -> None:
        if not self._queue:
            return
        head = self._queue[0]
        # the model does not start talking while the caller is (a fixture plays regardless)
        if head.ready > now or (head.kind != "fixture" and self._in_turn):
            return
        self._queue.pop(0)
        head.start = self._out_pos
        self._current = head

    def _word_deltas(self, cur: _Utterance) -> None:
        sent = self._out_pos - cur.start
        speech = cur.speech
        while cur.words_sent < len(speech.words) and speech.spans[cur.words_sent][1] <= sent:
            s0, s1 = speech.spans[cur.words_sent]
            self._out_word(cur, cur.start + s0, cur.start + s1)

    def _out_word(self, cur: _Utterance, start: int, end: int) -> None:
        word = cur.speech.words[cur.words_sent]
        self._emit(
            "session.output_transcript.delta",
            delta=word if cur.words_sent == 0 else " " + word,
            start_ms=start // 8,
            end_ms=-(-end // 8),
        )
        cur.words_sent += 1

    def _cut(self, cur: _Utterance, now: float, *, yielded: bool) -> None:
        """Stop ``cur`` where the stream is: the next delta is silence. A word cut part-way counts
        as said when its mark (its middle) went out."""
        sent = self._out_pos - cur.start
        i, speech = cur.words_sent, cur.speech
        if i < len(speech.words) and speech.spans[i][0] < sent and speech.mark_ends[i] <= sent:
            self._out_word(cur, cur.start + speech.spans[i][0], self._out_pos)
        if yielded:
            self.log.yields.append((now, self._out_pos // 8))
        self._finish(cur, cut=True)

    def _finish(self, cur: _Utterance, *, cut: bool = False) -> None:
        self._current = None
        end = min(self._out_pos, cur.start + len(cur.speech.audio))
        if cur.kind == "fixture":
            self._fixture_active = False
            if not cut:
                fields = {} if cur.client_event_id is None else {"client_event_id": cur.client_event_id}
                self._emit("session.output_audio.fixture.played", **fields)
            return
        text = " ".join(cur.speech.words[: cur.words_sent])
        self.log.spoken.append((text, cur.start // 8, -(-end // 8)))
        if text:
            self.log.turns.append(("assistant", text))

    def _say(self, kind: str, text: str, ready: float, *, tool: str | None = None) -> None:
        if text.split():
            self._queue.append(_Utterance(kind, _speech(text, self.config.pitch_hz), ready, tool=tool))

    # ---- caller audio ------------------------------------------------------------------------
    def _on_session_input_audio_append(self, msg: dict[str, Any], now: float) -> None:
        b64 = msg.get("audio")
        if not isinstance(b64, str):
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            raw = binascii.a2b_base64(b64, strict_mode=True)
        except binascii.Error:
            raise _ProtocolError("invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio") from None
        data = self._to_ulaw(raw)
        if self._in_origin is None:
            self._in_origin = self._in_buf_start = self._frames_to = self._processed_to = self.session_ms(now) * 8
        if self._muted or self._fixture_active:  # the model hears silence; the timeline still moves
            data = bytes([SILENCE_BYTE]) * len(data)
        self._in_buf += data
        end = self._in_buf_start + len(self._in_buf)
        t0 = self._session_t0
        while self._frames_to + FRAME_BYTES <= end:
            pos = self._frames_to
            self._frames_to += FRAME_BYTES
            due = max(now, t0 + (pos + FRAME_BYTES) / SAMPLE_RATE)
            if due <= now:
                self._frame(pos, now, now)
            else:  # audio ahead of real time is heard when its time comes
                self._at(due, functools.partial(self._frame, pos, now))

    def _to_ulaw(self, raw: bytes) -> bytes:
        kind = self._format["type"]
        if kind == "audio/pcmu":
            return raw
        if kind == "audio/pcma":
            return audio.ulaw_encode(ALAW_TO_PCM[np.frombuffer(raw, dtype=np.uint8)])
        step = int(self._format["rate"]) // SAMPLE_RATE
        data = self._in_carry + raw
        usable = len(data) - len(data) % (2 * step)
        self._in_carry = data[usable:]
        return audio.ulaw_encode(np.frombuffer(data[:usable], dtype="<i2")[::step])

    def _in_bytes(self, start: int, end: int) -> bytes:
        return bytes(self._in_buf[start - self._in_buf_start : end - self._in_buf_start])

    def _frame(self, pos: int, arrived: float, now: float) -> None:
        """Hear one 20 ms frame of the caller: words (runs of sound) and turns (speech, silence)."""
        self._processed_to = pos + FRAME_BYTES
        self._arrivals[pos] = arrived
        level = audio.frame_energy_dbfs(self._in_bytes(pos, pos + FRAME_BYTES))
        if level >= QUIET_DBFS:
            if self._region is None:
                self._region = pos
        elif self._region is not None:
            self._hear_region(self._region, pos + FRAME_BYTES, now)
            self._region = None
        if level > VAD_DBFS:
            if not self._in_turn:
                self._in_turn, self._turn_start, self._turn_speech_ms = True, pos, 0
            self._speech_end = pos + FRAME_BYTES
            self._silent_ms = 0
            self._speech_ms += FRAME_MS
            self._turn_speech_ms += FRAME_MS
            cur = self._current
            if self._speech_ms >= self.config.yield_ms and cur is not None and cur.kind != "fixture":
                self._cut(cur, now, yielded=True)
        elif self._in_turn:
            self._speech_ms = 0
            self._silent_ms += FRAME_MS
            if self._silent_ms >= self.config.silence_ms:
                if self._region is not None:
                    self._hear_region(self._region, pos + FRAME_BYTES, now)
                    self._region = None
                self._end_turn(now)
        else:
            self._speech_ms = 0
        self._trim()

    def _hear_region(self, start: int, end: int, now: float) -> None:
        """A run of sound ended: transcribe the words in it, each when its audio has arrived."""
        first = max(start - FRAME_BYTES, self._in_buf_start)  # a frame before: a word's first samples are faint
        data = self._in_bytes(first, end)
        heard = audio.words_heard(data)
        if not heard:
            return
        spans = _word_spans(data, [(p, p + _mark_bits(w)) for p, w in heard])
        t0, origin = self._session_t0, self._in_origin or 0
        for (_, word), (s0, s1) in zip(heard, spans, strict=True):
            a, b = first + s0, first + s1
            frame = origin + (b - 1 - origin) // FRAME_BYTES * FRAME_BYTES
            arrived = max(self._arrivals.get(frame, now), t0 + b / SAMPLE_RATE)
            delta = word if not self._turn_words else " " + word
            self._turn_words.append(word)
            self._at(
                max(now, arrived + self.config.transcription_delay_ms / 1000),
                functools.partial(self._input_word, delta, a, b),
            )

    def _input_word(self, delta: str, start: int, end: int, now: float) -> None:
        self._emit("session.input_transcript.delta", delta=delta, start_ms=start // 8, end_ms=-(-end // 8))

    def _end_turn(self, now: float) -> None:
        self._in_turn = False
        self._speech_ms = self._silent_ms = 0
        words, self._turn_words = self._turn_words, []
        if words:
            transcript = " ".join(words)
        elif self._turn_speech_ms < self.config.yield_ms:
            return  # a cough, a click: too short to be a line, as it was too short to make the model yield
        else:  # speech without marks (a recording): the length of it, as audio.transcribe() says
            transcript = f"[speech {(self._speech_end - self._turn_start) / SAMPLE_RATE:.1f} s]"
            self._at(
                now + self.config.transcription_delay_ms / 1000,
                functools.partial(self._input_word, transcript, self._turn_start, self._speech_end),
            )
        history = list(self.log.turns)
        self.log.turns.append(("user", transcript))
        # a newer line supersedes an answer the model had not begun
        self._queue = [u for u in self._queue if u.kind != "reply"]
        ready = now + self.config.think_ms / 1000
        said = {w.strip(".,!?;:\"'()").lower() for w in transcript.split()}
        tools = self._tools
        if "end_call" in tools and said & {w.lower() for w in self.config.hangup_words}:
            self._say("reply", self.config.farewell, ready, tool="end_call")
        elif "get_weather" in tools and "weather" in said:
            self._say("reply", WEATHER_ACK, ready, tool="get_weather")
        else:
            self._say("reply", self.reply(transcript, history), ready)

    def _trim(self) -> None:
        keep = self._processed_to - FRAME_BYTES if self._region is None else self._region - FRAME_BYTES
        drop = keep - self._in_buf_start
        if drop > 65536:
            del self._in_buf[:drop]
            self._in_buf_start = keep
            self._arrivals = {p: a for p, a in self._arrivals.items() if p >= keep}

    def _on_session_input_audio_mute(self, msg: dict[str, Any], now: float) -> None:
        self._muted = True
        self._ack("session.input_audio.muted", msg, now)

    def _on_session_input_audio_unmute(self, msg: dict[str, Any], now: float) -> None:
        self._muted = False
        self._ack("session.input_audio.unmuted", msg, now)

    # ---- fixtures ----------------------------------------------------------------------------
    def _on_session_output_audio_fixture_play(self, msg: dict[str, Any], now: float) -> None:
        b64 = msg.get("audio")
        if not isinstance(b64, str):
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            pcm = binascii.a2b_base64(b64, strict_mode=True)
        except binascii.Error:
            raise _ProtocolError("invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio") from None
        if not pcm or len(pcm) % 2:
            raise _ProtocolError("invalid_value", "Invalid 'audio': expected PCM16 samples.", "audio")
        if len(pcm) > MAX_FIXTURE_BYTES:
            raise _ProtocolError("invalid_value", "Invalid 'audio': a fixture lasts at most 30 seconds.", "audio")
        if self._fixture_active:
            raise _ProtocolError("fixture_active", "Only one audio fixture can be active.")
        self._fixture_active = True
        self._ack("session.output_audio.fixture.playing", msg, now)
        if self._current is not None:
            self._cut(self._current, now, yielded=False)
        fixture = _Utterance("fixture", _fixture_speech(pcm), now, client_event_id=msg.get("event_id"))
        self._queue.insert(0, fixture)

    # ---- appended context --------------------------------------------------------------------
    def _append(self, msg: dict[str, Any]) -> str:
        """Check an instructions/thinking/commentary append; return its content."""
        if "delegation_id" not in msg:
            raise _ProtocolError(
                "missing_required_parameter",
                "Missing required parameter: 'delegation_id' (required, nullable: send null for general context).",
                "delegation_id",
            )
        content = msg.get("content")
        if content is None:
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'content'.", "content")
        if not isinstance(content, str):
            raise _type_error("content", "a string")
        if _tokens(content) > MAX_APPEND_TOKENS:
            raise _ProtocolError(
                "string_above_max_length", f"Invalid 'content': longer than {MAX_APPEND_TOKENS} tokens.", "content"
            )
        delegation_id = msg["delegation_id"]
        if delegation_id is not None:
            if not isinstance(delegation_id, str):
                raise _type_error("delegation_id", "a string or null")
            if self._delegation_type == "responses":
                raise _ProtocolError(
                    "invalid_value",
                    "Non-null delegation IDs are not accepted with Responses delegation.",
                    "delegation_id",
                )
            raise _ProtocolError(
                "invalid_value", f"No client delegation with id '{delegation_id}' is open.", "delegation_id"
            )
        if self._fixture_active:
            raise _ProtocolError("fixture_active", "Appends are rejected while an audio fixture plays.")
        return content

    def _appended(self, kind: str, msg: dict[str, Any], now: float) -> None:
        ms = self.session_ms(now)
        self._ack(kind, msg, now, start_ms=ms, end_ms=ms)

    def _on_session_instructions_append(self, msg: dict[str, Any], now: float) -> None:
        content = self._append(msg)
        self._appended("session.instructions.appended", msg, now)
        self.log.turns.append(("developer", content))

    def _on_session_thinking_append(self, msg: dict[str, Any], now: float) -> None:
        content = self._append(msg)
        self._appended("session.thinking.appended", msg, now)
        self.log.turns.append(("developer", content))
        keys = PRESSED.search(content)
        if keys:
            self._say("line", "You pressed " + " ".join(keys.group(1)), now + self.config.think_ms / 1000)

    def _on_session_commentary_append(self, msg: dict[str, Any], now: float) -> None:
        content = self._append(msg)
        self._appended("session.commentary.appended", msg, now)
        line = SAY.match(content)
        text = line.group(1).strip() if line else PARAPHRASE_PREFIX + content
        self._say("line", text, now + self.config.think_ms / 1000)

    # ---- Decisions (not simulated) -----------------------------------------------------------
    def _decision(self, msg: dict[str, Any]) -> None:
        if self._delegation_type != "decisions":
            raise _ProtocolError(
                "decisions_delegation_required", f"{msg['type']} requires Decisions delegation.", "type"
            )
        raise _ProtocolError("not_supported", "Decisions are not simulated.", "type", violation=False)

    def _on_decision_create(self, msg: dict[str, Any], now: float) -> None:
        self._decision(msg)

    def _on_decision_item_create(self, msg: dict[str, Any], now: float) -> None:
        self._decision(msg)

    def _on_decision_item_delete(self, msg: dict[str, Any], now: float) -> None:
        self._decision(msg)

    # ---- Responses delegation ----------------------------------------------------------------
    def _response_event(self, d: _Delegated, event: dict[str, Any]) -> None:
        event["sequence_number"] = d.sequence
        d.sequence += 1
        self._emit("response.event", delegation_id=d.delegation_id, event=event)

    def _snapshot(self, response_id: str, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        # lifecycle snapshots clear instructions, tools and output (response_event.py): the
        # content comes in the granular events
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(self.wall_clock()),
            "status": status,
            "model": self.resource["delegation"]["responses"]["model"],
            "instructions": None,
            "tools": [],
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": usage,
        }

    def _responses_usage(self, output_chars: int) -> dict[str, Any]:
        context = sum(len(text) for _, text in self.log.turns) + len(str(self.resource.get("instructions") or ""))
        input_tokens = 120 + context // 4
        output_tokens = 8 + output_chars // 4
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }

    def _delegate(self, cur: _Utterance, now: float) -> None:
        """The model hands the caller's request to the Responses backend, which calls ``cur.tool``."""
        name = cur.tool
        assert name is not None
        arguments = WEATHER_ARGUMENTS if name == "get_weather" else "{}"
        call_id, response_id = self._id("call"), self._id("resp")
        item = {
            "type": "function_call",
            "id": self._id("fc"),
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
        record: dict[str, Any] = {
            "delegation_id": self._id("dlg"),
            "response_id": response_id,
            "name": name,
            "call_id": call_id,
            "arguments": arguments,
            "offset_ms": cur.start // 8,
            "created_at": now,
            "completed_at": None,
            "output": None,
            "answered_at": None,
            "continued_at": None,
            "continuation_id": None,
        }
        self.log.delegations.append(record)
        d = _Delegated(record["delegation_id"], response_id, {call_id: None}, {call_id: name}, record)
        self._delegated.append(d)
        self._emit(
            "session.delegation.created",
            delegation={"type": "delegation", "id": d.delegation_id, "target": "responses", "response_id": response_id},
            offset_ms=record["offset_ms"],
        )
        self._response_event(d, {"type": "response.created", "response": self._snapshot(response_id, "in_progress")})
        self._response_event(
            d, {"type": "response.in_progress", "response": self._snapshot(response_id, "in_progress")}
        )
        added = {**item, "status": "in_progress", "arguments": ""}
        self._response_event(d, {"type": "response.output_item.added", "output_index": 0, "item": added})
        ids = {"item_id": item["id"], "output_index": 0}
        self._response_event(d, {"type": "response.function_call_arguments.delta", **ids, "delta": arguments})
        self._response_event(
            d, {"type": "response.function_call_arguments.done", **ids, "name": name, "arguments": arguments}
        )
        self._response_event(d, {"type": "response.output_item.done", "output_index": 0, "item": item})
        # the backend's stream ends a moment later: a client must not go on before response.completed
        self._at(now + self.config.chunk_ms / 1000, lambda t: self._complete(d, len(arguments), t))

    def _complete(self, d: _Delegated, output_chars: int, now: float) -> None:
        usage = self._responses_usage(output_chars)
        self._response_event(
            d, {"type": "response.completed", "response": self._snapshot(d.response_id, "completed", usage)}
        )
        d.completed = True
        d.record["completed_at"] = now
        if self._closing and all(d.completed for d in self._delegated):
            self.close("close_requested", now, self._closing_id)

    def _require_responses(self, kind: str) -> None:
        if self._delegation_type != "responses":
            raise _ProtocolError(
                "responses_delegation_required",
                f"{kind} requires Responses delegation (session.delegation.type 'responses').",
                "type",
            )

    def _on_response_item_create(self, msg: dict[str, Any], now: float) -> None:
        self._require_responses("response.item.create")
        item = msg.get("item")
        if item is None:
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        if not isinstance(item, dict):
            raise _type_error("item", "an object")
        if item.get("type") != "function_call_output":
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for 'item.type': {item.get('type')!r}. A delegated response waits only for "
                "function_call_output items.",
                "item.type",
            )
        _FUNCTION_CALL_OUTPUT(item, "item")
        call_id = item["call_id"]
        d = next((d for d in self._delegated if call_id in d.calls), None)
        if d is None:
            raise _ProtocolError(
                "invalid_value", f"No function call with call_id '{call_id}' is waiting for output.", "item.call_id"
            )
        if d.calls[call_id] is not None:
            raise _ProtocolError("invalid_value", f"Function call '{call_id}' already has an output.", "item.call_id")
        output = item["output"] if isinstance(item["output"], str) else orjson.dumps(item["output"]).decode()
        d.calls[call_id] = output
        self.log.tool_outputs.append((call_id, output))
        d.record["output"], d.record["answered_at"] = output, now

    def _on_response_create(self, msg: dict[str, Any], now: float) -> None:
        self._require_responses("response.create")
        waiting = [d for d in self._delegated if not d.continued]
        unanswered = [c for d in waiting for c, out in d.calls.items() if out is None]
        if unanswered:
            raise _ProtocolError(
                "function_call_output_missing",
                f"Function call '{unanswered[0]}' has no output yet: send every function_call_output "
                "before response.create.",
            )
        ready = [d for d in waiting if d.completed]
        if not ready:
            if waiting:
                raise _ProtocolError(
                    "response_in_progress",
                    f"Response '{waiting[0].response_id}' is still in progress: wait for its response.completed.",
                )
            raise _ProtocolError("no_delegated_response", "No delegated response is waiting for tool results.")
        for d in ready:
            self._continue(d, now)

    def _continue(self, d: _Delegated, now: float) -> None:
        """The backend reads the tool outputs and finishes its task."""
        d.continued = True
        response_id = self._id("resp")
        d.record["continued_at"], d.record["continuation_id"] = now, response_id
        text = "Done."
        message = {
            "type": "message",
            "id": self._id("msg"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        self._response_event(d, {"type": "response.created", "response": self._snapshot(response_id, "in_progress")})
        self._response_event(
            d, {"type": "response.output_item.added", "output_index": 0, "item": {**message, "content": []}}
        )
        ids = {"item_id": message["id"], "output_index": 0, "content_index": 0}
        self._response_event(d, {"type": "response.output_text.delta", **ids, "delta": text})
        self._response_event(d, {"type": "response.output_text.done", **ids, "text": text})
        self._response_event(d, {"type": "response.output_item.done", "output_index": 0, "item": message})
        usage = self._responses_usage(len(text))
        self._response_event(
            d, {"type": "response.completed", "response": self._snapshot(response_id, "completed", usage)}
        )
        for call_id, name in d.names.items():
            if name == "get_weather":
                output = d.calls[call_id] or ""
                self._say("line", "The weather is " + output[:40], now + self.config.think_ms / 1000)

    # ---- closing -----------------------------------------------------------------------------
    def _on_session_close(self, msg: dict[str, Any], now: float) -> None:
        # the service drains delegations first: a delegated response still streaming finishes
        self._closing, self._closing_id = True, msg.get("event_id")
        if all(d.completed for d in self._delegated):
            self.close("close_requested", now, msg.get("event_id"))


class LiveAgent(SimulatorShell):
    """The asyncio/WebSocket shell: serves ``LiveSession`` on loopback at ``LIVE_PATH``."""

    def __init__(self, config: LiveConfig | None = None) -> None:
        self.config = config or LiveConfig()
        self.rejected: list[tuple[int, str]] = []  # (HTTP status, request path) of refused handshakes
        self.handshake_violations: list[str] = []
        self._server = SessionServer("live agent", LIVE_PATH, self._open, self._process_request)
        self.sessions: list[LiveSessionLog] = self._server.sessions

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        c = self.config
        if c.chunk_ms <= 0 or c.usage_interval_s <= 0 or c.max_session_s <= 0 or c.yield_ms <= 0:
            raise ValueError("chunk_ms, yield_ms, usage_interval_s and max_session_s must be positive")
        await self._server.start(host, port)

    async def close_with(self, session: LiveSessionLog, reason: str, timeout: float = 5.0) -> None:
        """End one session from the service's side: ``session.closed`` with ``reason``, then close
        1000. Returns once the connection is closed.

        Raises:
            TimeoutError: it did not close within ``timeout`` seconds.
        """
        if reason not in CLOSE_REASONS:
            raise ValueError(f"reason must be one of {CLOSE_REASONS}")
        self._server.act(session, lambda core, now: core.close(reason, now))
        await self.wait_closed(session, timeout)

    def _open(self, ws: ServerConnection, now: float) -> tuple[LiveSessionLog, LiveSession]:
        assert ws.request is not None
        slog = LiveSessionLog(index=len(self.sessions), path=ws.request.path, opened_at=now)
        return slog, LiveSession(self.config, slog)

    def _reject(self, connection: ServerConnection, request: Request, status: int, message: str) -> Response:
        self.rejected.append((status, request.path))
        return json_error_response(connection, status, "invalid_request_error", message)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path != LIVE_PATH:
            return self._reject(connection, request, 404, f"Invalid URL (GET {url.path})")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._reject(connection, request, 401, "Missing bearer authentication in header")
        refusal = None
        for header in ("OpenAI-Alpha", "OpenAI-Beta"):
            if header in request.headers:
                self.handshake_violations.append(f"handshake: {header}: {request.headers[header]} sent")
                refusal = ALPHA_MESSAGE
        if url.query:
            name = next(iter(urllib.parse.parse_qs(url.query, keep_blank_values=True)), url.query)
            self.handshake_violations.append(f"handshake: query parameter {name!r} sent")
            refusal = refusal or QUERY_MESSAGE.format(name=name)
        if refusal is not None:
            return self._reject(connection, request, 400, refusal)
        return None
