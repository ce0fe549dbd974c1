"""A protocol-exact simulated Deepgram Voice Agent server (API v1) on loopback.

It speaks the Voice Agent WebSocket protocol (``/shared/BACKENDS.md`` §4; message and field shapes
as in deepgram-sdk 7.17.0 ``agent/v1/types``) and makes observable what relay has to get right:

* the server speaks first (``Welcome``), then the client sends ``Settings``, validated as strictly
  as the schema reads: an unknown field or a wrong type is an ``Error`` and the end of the session.
  Only the Twilio passthrough is simulated: μ-law at 8 kHz both ways, output ``container`` none;
* audio is **binary both ways**. A text frame that is not a known control message (base64 audio
  in JSON, say) is ``UNPARSABLE_CLIENT_MESSAGE``, and audio before ``SettingsApplied`` is dropped;
* the agent's audio goes out faster than real time (``chunk_ms`` of audio every
  ``chunk_interval_ms``), so ``AgentAudioDone`` means *sent*, not played;
* barge-in: caller speech sustained ``yield_ms`` while the agent's audio is still playing (on the
  real-time clock from its first chunk) stops the agent and sends ``UserStartedSpeaking``; up to
  ``in_flight_chunks`` chunks of the old answer still follow it, which relay must drop until the
  next ``AgentStartedSpeaking``;
* tools: functions without an ``endpoint`` are the client's: ``FunctionCallRequest`` with
  ``client_side: true``, answered with ``FunctionCallResponse{id,name,content}``;
* limits: nothing received (audio or ``KeepAlive``) for ``idle_timeout_s`` is
  ``CLIENT_MESSAGE_TIMEOUT``; the session ends ``max_session_s`` after ``SettingsApplied``.

The caller's words are read from the bytes received (``audio.words_heard``), and the agent's
audio is ``audio.speak`` output, so both ends can check that every word crossed bit-exact.

Every ``Error`` is fatal, as the service documents ("treat every Error as a session-ending
event"): it is sent, then the connection closes 1000. Every client mistake is also recorded in
``DeepgramSessionLog.violations``. As in ``relay.sim.live``, ``DeepgramSession`` is sans-I/O
protocol state (it takes messages and the time, queues events, says when it next needs the clock)
and ``DeepgramAgent`` is the asyncio shell serving one per WebSocket.

Timelines: session milliseconds, 0 = when ``SettingsApplied`` was sent. An utterance plays from
its first chunk (or from the end of the one before it, if that is still playing) for as long as
its audio lasts, as a caller would hear it through a relay that adds no buffer of its own.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import heapq
import logging
import random
import re
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from relay.audio_format import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from relay.sim import audio
from relay.sim.agent import default_reply, tool_arguments
from relay.sim.serving import SessionServer, SimulatorShell

__all__ = [
    "CLIENT_MESSAGE_TIMEOUT",
    "DEEPGRAM_PATH",
    "INTERNAL_SERVER_ERROR",
    "INVALID_SETTINGS",
    "SESSION_LIMIT",
    "SETTINGS_NOT_APPLIED",
    "UNKNOWN_FUNCTION_CALL",
    "UNPARSABLE",
    "DeepgramAgent",
    "DeepgramConfig",
    "DeepgramSession",
    "DeepgramSessionLog",
]

log = logging.getLogger(__name__)

DEEPGRAM_PATH = "/v1/agent/converse"
# Error codes the service documents (DG-ERR), and INVALID_SETTINGS (deepgram-sdk's
# ThinkSettingsV1FunctionsItem docstring).
UNPARSABLE = "UNPARSABLE_CLIENT_MESSAGE"
CLIENT_MESSAGE_TIMEOUT = "CLIENT_MESSAGE_TIMEOUT"
INVALID_SETTINGS = "INVALID_SETTINGS"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
# The simulator's own codes: the service's are not documented for these cases (BACKENDS §4.3
# and §7 leave the 2 h limit's code unverified). A client treats every Error alike anyway.
SESSION_LIMIT = "SESSION_LIMIT_REACHED"
SETTINGS_NOT_APPLIED = "SETTINGS_NOT_APPLIED"
# Warnings (non-fatal)
UNKNOWN_FUNCTION_CALL = "UNKNOWN_FUNCTION_CALL"
NOT_SIMULATED = "NOT_SIMULATED"

VAD_DBFS = -35.0  # speech: the caller simulator's words are near -18 dBFS, its silence is digital zero
JSON_IN_BINARY = re.compile(rb'^\s*\{\s*"type"\s*:')  # a control message sent as a binary frame
# What the agent does with an injected user message: "say ...: <line>" is spoken verbatim; keys
# relayed as "...pressed...: 12#" are read back (as relay.sim.live does).
SAY = re.compile(r"(?is)^\s*say[^:]*:\s*(.+)$")
PRESSED = re.compile(r"(?i)pressed[^:]*:\s*([0-9*#]+)")
WEATHER_ARGUMENTS = '{"city": "Paris"}'
TOOL_FAILED = "Sorry, I could not do that just now."
HANGUP_FUNCTIONS = frozenset({"end_call"})  # a call whose result the agent does not talk about
BUILT_IN_FUNCTIONS = frozenset({"end_call", "escalate", "transfer_call", "get_weather"})
# Message types the SDK sends that this simulator does not model (Think Live, custom payloads).
NOT_SIMULATED_MESSAGES = ("UpdateThink_Live", "__customToThinkProvider")


@dataclass(frozen=True)
class DeepgramConfig:
    think_ms: int = 200  # a caller turn's end -> the answer's text (reported as ttt_latency)
    tts_ms: int = 100  # the text -> its first audio chunk (reported as tts_latency)
    chunk_ms: int = 40  # audio per binary frame
    chunk_interval_ms: int = 10  # one frame every this often: faster than real time, as the service sends
    silence_ms: int = 500  # caller silence that ends a caller turn
    yield_ms: int = 60  # caller speech sustained this long is UserStartedSpeaking (and a barge-in)
    in_flight_chunks: int = 1  # frames of a cut answer that still go out after UserStartedSpeaking
    pitch_hz: float = 210.0
    seed: int = 0
    reply: Callable[[str, list[tuple[str, str]]], str] | None = None  # (transcript, history) -> answer
    idle_timeout_s: float = 10.0  # nothing received this long -> CLIENT_MESSAGE_TIMEOUT
    max_session_s: float = 7200.0  # after SettingsApplied: the service's 2 h cap
    api_key: str | None = None  # when set, the only credential accepted; else any non-empty one
    settings_applied_delay_ms: int = 0  # Settings -> SettingsApplied; audio in between is dropped
    # Answer Settings with this Error (code, description) and close, as for a key without credit.
    settings_error: tuple[str, str] | None = None
    # A caller line with one of these words gets the farewell and, when Settings declares an
    # ``end_call`` function, a FunctionCallRequest of it as the farewell begins.
    hangup_words: tuple[str, ...] = ("goodbye", "bye")
    farewell: str = "Thank you for calling. Goodbye!"
    weather_ack: str = "Let me check the weather."  # a line with "weather", given get_weather
    escalate_words: tuple[str, ...] = ("urgent", "emergency")  # given escalate
    escalating: str = "Let me reach who is on call."
    transfer_words: tuple[str, ...] = ("transfer", "human", "person")  # given transfer_call
    transferring: str = "Let me put you through."
    using_tool: str = "One moment."  # a line naming another declared function ("book" for book_table)
    server_function_content: str = "Done."  # what a function with an endpoint returns


@dataclass(eq=False)
class DeepgramSessionLog:
    """What happened on one connection; times are ``loop.time()``, spans session milliseconds."""

    index: int = 0
    path: str = ""
    auth: str = ""  # how the client authenticated: "token", "bearer", "subprotocol token", ...
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    request_id: str = ""  # Welcome's
    settings: dict[str, Any] = field(default_factory=dict)  # Settings as sent
    settings_applied_at: float | None = None  # session time 0
    received: list[tuple[float, str]] = field(default_factory=list)  # message type, or "<binary N>"
    sent: list[tuple[float, str]] = field(default_factory=list)  # message type, or "<binary N>"
    audio_messages: int = 0  # binary frames received
    audio_bytes: int = 0
    largest_audio_message: int = 0  # bytes: a client that buffers (BACKENDS §4.6.1) shows here
    audio_before_settings_applied: int = 0  # binary frames dropped for arriving too early
    keepalives: list[float] = field(default_factory=list)  # when each KeepAlive arrived
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    warnings_sent: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)  # the conversation as the agent knows it
    spoken: list[tuple[str, int, int]] = field(default_factory=list)  # (words played, start ms, end ms)
    interruptions: list[dict[str, Any]] = field(default_factory=list)  # barge-ins (see DeepgramSession)
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    injections_refused: list[str] = field(default_factory=list)  # InjectAgentMessage messages refused
    prompt_updates: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class _Refusal(Exception):
    """A client message the service refuses: an ``Error`` (the session ends) or a ``Warning``."""

    def __init__(self, code: str, description: str, *, fatal: bool = True, violation: bool = True) -> None:
        super().__init__(description)
        self.code, self.description, self.fatal, self.violation = code, description, fatal, violation


# ---- message validation (deepgram-sdk 7.17.0 agent/v1/types and deepgram/types) ----------------
_Check = Callable[[Any, str], None]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unparsable(path: str, detail: str) -> _Refusal:
    return _Refusal(UNPARSABLE, f"Error parsing client message. Check the {path} field against the API spec: {detail}.")


def _string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _unparsable(path, "expected a string")


def _boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _unparsable(path, "expected a boolean")


def _integer(value: Any, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _unparsable(path, "expected an integer")


def _number(value: Any, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _unparsable(path, "expected a number")


def _json_object(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _unparsable(path, "expected an object")


def _string_map(value: Any, path: str) -> None:
    _json_object(value, path)
    for key, element in value.items():
        _string(element, _join(path, key))


def _literal(*values: Any) -> _Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, (bool, dict, list)) or value not in values:
            raise _unparsable(path, f"{value!r} is not one of " + ", ".join(repr(v) for v in values))

    return check


def _array(item: _Check) -> _Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _unparsable(path, "expected an array")
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]")

    return check


def _object(fields: dict[str, _Check], required: tuple[str, ...] = ()) -> _Check:
    """A strict object: unknown keys are errors; null stands for an omitted optional field."""

    def check(value: Any, path: str) -> None:
        _json_object(value, path)
        for key in value:
            if key not in fields:
                raise _unparsable(_join(path, key), "unknown field")
        for key in required:
            if value.get(key) is None:
                raise _unparsable(_join(path, key), "missing required field")
        for key, element in value.items():
            if element is not None:
                fields[key](element, _join(path, key))

    return check


def _tagged(variants: dict[str, _Check], tag: str = "type", default: str | None = None) -> _Check:
    """A union told apart by ``tag``, as the SDK's discriminated unions are."""

    def check(value: Any, path: str) -> None:
        _json_object(value, path)
        kind = value.get(tag, default)
        if kind is None:
            raise _unparsable(_join(path, tag), "missing required field")
        _literal(*variants)(kind, _join(path, tag))
        variants[kind](value, path)

    return check


def _one_or_list(check: _Check) -> _Check:
    """``X | list[X]``: a provider, or a list of them (fallbacks, first one first)."""

    def one_or_list(value: Any, path: str) -> None:
        if isinstance(value, list):
            if not value:
                raise _unparsable(path, "expected at least one entry")
            _array(check)(value, path)
        else:
            check(value, path)

    return one_or_list


_REASONING = _literal("none", "minimal", "low", "medium", "high")
_VERSION_V1 = _literal("v1")

# agent.listen.provider: DeepgramListenProviderV1 / V2, told apart by ``version`` (v1 when absent)
_LISTEN_V1 = _object(
    {
        "type": _literal("deepgram"),
        "version": _VERSION_V1,
        "model": _string,
        "language": _string,
        "keyterms": _array(_string),
        "smart_format": _boolean,
    }
)
_LISTEN_V2 = _object(
    {
        "type": _literal("deepgram"),
        "version": _literal("v2"),
        "model": _string,
        "language_hints": _array(_string),
        "eot_threshold": _number,
        "eager_eot_threshold": _number,
        "eot_timeout_ms": _integer,
        "keyterms": _array(_string),
    },
    ("model",),
)
_LISTEN_VERSIONS = {"v1": _LISTEN_V1, "v2": _LISTEN_V2}
_LISTEN = _object({"provider": _tagged(_LISTEN_VERSIONS, tag="version", default="v1")})


def _update_listen_provider(value: Any, path: str) -> None:
    """UpdateListen's provider: without ``version``, v1 if it has a v1-only key, else v2 (the SDK's rule)."""
    _json_object(value, path)
    default = "v1" if {"language", "smart_format"} & value.keys() else "v2"
    _tagged(_LISTEN_VERSIONS, tag="version", default=default)(value, path)


# agent.think: ThinkSettingsV1 (think_settings_v1*.py, *_think_provider*.py)
_THINK_PROVIDER = _tagged(
    {
        "open_ai": _object(
            {
                "type": _string,
                "version": _VERSION_V1,
                "model": _string,
                "temperature": _number,
                "reasoning_mode": _REASONING,
            },
            ("model",),
        ),
        "aws_bedrock": _object(
            {
                "type": _string,
                "model": _string,
                "temperature": _number,
                "credentials": _object(
                    {
                        "type": _literal("sts", "iam"),
                        "region": _string,
                        "access_key_id": _string,
                        "secret_access_key": _string,
                        "session_token": _string,
                    }
                ),
            },
            ("model",),
        ),
        "anthropic": _object(
            {"type": _string, "version": _VERSION_V1, "model": _string, "temperature": _number}, ("model",)
        ),
        "google": _object({"type": _string, "version": _string, "model": _string, "temperature": _number}, ("model",)),
        "groq": _object(
            {
                "type": _string,
                "version": _VERSION_V1,
                "model": _literal("openai/gpt-oss-20b"),
                "temperature": _number,
                "reasoning_mode": _REASONING,
            }
        ),
        "deepgram": _object(
            {
                "type": _string,
                "model": _string,
                "version": _VERSION_V1,
                "temperature": _number,
                "reasoning_mode": _REASONING,
                "voice_prompt_opt_out": _boolean,
            },
            ("model",),
        ),
    }
)
_ENDPOINT = _object({"url": _string, "headers": _string_map})
_FUNCTION = _object(
    {
        "name": _string,
        "description": _string,
        "parameters": _json_object,
        "defer_until_eot": _boolean,
        "initial_agent_filler": _boolean,
        "agent_filler_max_count": _integer,
        "agent_filler_interval_ms": _integer,
        "endpoint": _object({"url": _string, "method": _string, "headers": _string_map}),
    },
    ("name",),
)
FILLER_FIELDS = ("initial_agent_filler", "agent_filler_max_count", "agent_filler_interval_ms")


def _context_length(value: Any, path: str) -> None:
    """``"max"`` or a number of characters."""
    if isinstance(value, str):
        _literal("max")(value, path)
    else:
        _number(value, path)


_THINK = _object(
    {
        "provider": _THINK_PROVIDER,
        "endpoint": _ENDPOINT,
        "functions": _array(_FUNCTION),
        "prompt": _string,
        "context_length": _context_length,
    },
    ("provider",),
)
_THINK_LIVE = _object(
    {
        "provider": _object(
            {
                "type": _literal("deepgram"),
                "version": _VERSION_V1,
                "agent_backchannel_sensitivity": _number,
                "presence_check_max_count": _integer,
                "presence_check_interval_ms": _integer,
                "frustration_max_count": _integer,
                "restricted_terms": _array(_string),
            }
        )
    },
    ("provider",),
)

# agent.speak: SpeakSettingsV1 (speak_settings_v1*.py)
_SPEAK_PROVIDER = _tagged(
    {
        "deepgram": _object(
            {
                "type": _string,
                "version": _string,
                "model": _string,
                "speed": _number,
                "expressivity": _integer,
            },
            ("model",),
        ),
        "eleven_labs": _object(
            {
                "type": _string,
                "version": _VERSION_V1,
                "model_id": _string,
                "language": _string,
                "language_code": _string,
            },
            ("model_id",),
        ),
        "cartesia": _object(
            {
                "type": _string,
                "version": _literal("2025-03-17"),
                "model_id": _string,
                "voice": _object({"mode": _string, "id": _string}, ("mode", "id")),
                "language": _string,
                "volume": _number,
            },
            ("model_id", "voice"),
        ),
        "open_ai": _object(
            {"type": _string, "version": _VERSION_V1, "model": _string, "voice": _string}, ("model", "voice")
        ),
        "aws_polly": _object(
            {
                "type": _string,
                "voice": _string,
                "language": _string,
                "language_code": _string,
                "engine": _string,
                "credentials": _object(
                    {
                        "type": _literal("sts", "iam"),
                        "region": _string,
                        "access_key_id": _string,
                        "secret_access_key": _string,
                        "session_token": _string,
                    },
                    ("type", "region", "access_key_id", "secret_access_key"),
                ),
            },
            ("voice", "language", "engine", "credentials"),
        ),
    }
)
_SPEAK = _object({"provider": _SPEAK_PROVIDER, "endpoint": _ENDPOINT}, ("provider",))


def _history_item(value: Any, path: str) -> None:
    """agent.context.messages[]: a ConversationHistoryMessage or a FunctionCallHistoryMessage."""
    _json_object(value, path)
    if "function_calls" in value:
        call = _object(
            {
                "id": _string,
                "name": _string,
                "client_side": _boolean,
                "arguments": _string,
                "response": _string,
                "thought_signature": _string,
            },
            ("id", "name", "client_side", "arguments", "response"),
        )
        _object({"type": _literal("History"), "function_calls": _array(call)}, ("function_calls",))(value, path)
    else:
        _object(
            {"type": _literal("History"), "role": _literal("user", "assistant"), "content": _string},
            ("role", "content"),
        )(value, path)


def _agent(value: Any, path: str) -> None:
    """``agent``: an AgentV1SettingsAgent object, or a string (a stored agent's id)."""
    if isinstance(value, str):
        return
    _object(
        {
            "language": _string,  # deprecated (listen/speak provider language), still accepted
            "context": _object({"messages": _array(_history_item)}),
            "listen": _LISTEN,
            "think": _one_or_list(_THINK),
            "think_live": _THINK_LIVE,
            "speak": _one_or_list(_SPEAK),
            "greeting": _string,
        }
    )(value, path)


def _message(kind: str, fields: dict[str, _Check] | None = None, required: tuple[str, ...] = ()) -> _Check:
    return _object({"type": _literal(kind), **(fields or {})}, required)


CLIENT_MESSAGES: dict[str, _Check] = {
    "Settings": _message(
        "Settings",
        {
            "tags": _array(_string),
            "experimental": _boolean,
            "flags": _object({"history": _boolean}),
            "mip_opt_out": _boolean,
            "audio": _object(
                {
                    "input": _object({"encoding": _string, "sample_rate": _integer}, ("encoding", "sample_rate")),
                    "output": _object(
                        {"encoding": _string, "sample_rate": _integer, "bitrate": _integer, "container": _string}
                    ),
                }
            ),
            "agent": _agent,
        },
        ("audio", "agent"),
    ),
    "KeepAlive": _message("KeepAlive"),
    "UpdatePrompt": _message("UpdatePrompt", {"prompt": _string}, ("prompt",)),
    "UpdateSpeak": _message("UpdateSpeak", {"speak": _one_or_list(_SPEAK)}, ("speak",)),
    "UpdateThink": _message("UpdateThink", {"think": _one_or_list(_THINK)}, ("think",)),
    "UpdateListen": _message(
        "UpdateListen", {"listen": _object({"provider": _update_listen_provider}, ("provider",))}, ("listen",)
    ),
    "InjectUserMessage": _message("InjectUserMessage", {"content": _string}, ("content",)),
    "InjectAgentMessage": _message(
        "InjectAgentMessage",
        {"message": _string, "behavior": _literal("default", "queue", "interrupt"), "is_dynamic": _boolean},
    ),
    # id is optional in the schema (the server's own responses omit it) but required from a client
    "FunctionCallResponse": _message(
        "FunctionCallResponse", {"id": _string, "name": _string, "content": _string}, ("name", "content")
    ),
    "ForceEndTurn": _message("ForceEndTurn"),
}
AUDIO_HINT_KEYS = ("audio", "media", "data", "payload", "chunk")


# ---- the agent's speech ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Speech:
    audio: bytes  # μ-law, 8 kHz
    words: tuple[str, ...]
    mark_ends: tuple[int, ...]  # where each word's mark ends: a word played past this was heard


@functools.lru_cache(maxsize=256)
def _speech(text: str, pitch_hz: float) -> _Speech:
    """The agent's audio for ``text`` (one synthesis per distinct line)."""
    ulaw = audio.speak(text, pitch_hz=pitch_hz)
    words = tuple(text.split())
    heard = audio.words_heard(ulaw)
    if [w for _, w in heard] == list(words):  # the mark: 16-bit magic, length, body, CRC
        ends = tuple(pos + 8 * (4 + len(w.encode()[:255])) for pos, w in heard)
    else:  # a word too long to carry its mark: say it is heard at its share of the line
        ends = tuple(len(ulaw) * (k + 1) // len(words) for k in range(len(words)))
    return _Speech(ulaw, words, ends)


@dataclass(eq=False)
class _Utterance:
    """Something the agent says: the greeting, an answer, an injected line, a tool's result."""

    kind: str  # "greeting", "reply" (answers a caller line), "line" (injected, a tool's result)
    text: str
    speech: _Speech
    ready: float  # loop time from which it may begin
    since: float  # what it answers arrived: AgentStartedSpeaking's total_latency counts from here
    think_s: float  # its ttt_latency
    call: tuple[str, str] | None = None  # (function, arguments) requested as it begins
    force: bool = False  # InjectAgentMessage "interrupt": begins even while the caller talks
    began: float = 0.0  # its first chunk was sent
    play_start: float = 0.0  # its audio starts playing (after what was sent before it)
    sent: int = 0  # bytes sent
    chunks: int = 0
    cut: bool = False
    spoken_index: int = -1
    interruption: dict[str, Any] | None = None

    @property
    def play_end(self) -> float:
        return self.play_start + len(self.speech.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class _Plan:
    """What the agent does with a caller line: a thought, a line to say, maybe a function to call."""

    thought: str
    line: str
    call: tuple[str, str] | None = None


def _cued(transcript: str, cues: tuple[str, ...]) -> bool:
    words = {w.strip(".,!?;:\"'()").lower() for w in transcript.split()}
    return any(cue.lower() in words for cue in cues)


def _result_line(name: str, content: str) -> str | None:
    """What the agent says about a function's result: its ``say`` (or its result's), an apology
    for an ``error``, the weather for ``get_weather``; nothing after ``end_call``."""
    if name in HANGUP_FUNCTIONS:
        return None
    try:
        output: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        output = content
    if isinstance(output, dict):
        result = output.get("result")
        said = output.get("say") or (result.get("say") if isinstance(result, dict) else result)
        if isinstance(said, str) and said:
            return said
        if "error" in output:
            return TOOL_FAILED
    if name == "get_weather":
        return "The weather is " + content[:40]
    return "Done." if isinstance(output, dict) or not content.strip() else content[:80]


class DeepgramSession:
    """Sans-I/O protocol state for one Voice Agent connection (times are seconds, any monotonic clock).

    ``DeepgramSessionLog.interruptions`` holds one dict per barge-in: ``at_ms`` (session time),
    ``text`` (the whole line cut), ``heard`` (its words played by then), ``late_chunks`` (frames
    of it sent after UserStartedSpeaking) and ``sending`` (whether it was still being sent).
    ``function_calls`` holds one dict per FunctionCallRequest: ``id``, ``name``, ``arguments``,
    ``client_side``, ``requested_at``, ``response`` and ``answered_at`` (None until answered).
    """

    def __init__(self, config: DeepgramConfig, slog: DeepgramSessionLog) -> None:
        self.config, self.log = config, slog
        self.rng = random.Random(config.seed * 1_000_003 + slog.index)
        self.reply = config.reply or default_reply
        self.close_request: tuple[int, str] | None = None
        self.settings: dict[str, Any] = {}  # the Settings in force, updates applied
        self._events: list[dict[str, Any] | bytes] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self._now = 0.0
        self._settings_received = False
        self._t0: float | None = None  # SettingsApplied sent: session time 0
        self._last_message = 0.0  # the client's last message (audio or text) arrived
        self._chunk_bytes = config.chunk_ms * BYTES_PER_MS
        self._handlers: dict[str, Callable[[dict[str, Any], float], None]] = {
            "Settings": self._on_settings,
            "KeepAlive": self._on_keep_alive,
            "UpdatePrompt": self._on_update_prompt,
            "UpdateSpeak": self._on_update_speak,
            "UpdateThink": self._on_update_think,
            "UpdateListen": self._on_update_listen,
            "InjectUserMessage": self._on_inject_user_message,
            "InjectAgentMessage": self._on_inject_agent_message,
            "FunctionCallResponse": self._on_function_call_response,
            "ForceEndTurn": self._on_force_end_turn,
        }
        # output
        self._queue: list[_Utterance] = []
        self._sending: _Utterance | None = None
        self._playing: list[_Utterance] = []  # sent, and maybe still playing
        self._play_end = 0.0  # loop time everything sent so far has played
        self._pending_calls: dict[str, dict[str, Any]] = {}  # client-side calls awaiting a response
        # input
        self._carry = b""  # bytes short of a whole 20 ms frame
        self._previous_frame = b""
        self._in_turn = False
        self._announced = False  # UserStartedSpeaking sent for this caller turn
        self._turn_audio = bytearray()  # the caller turn's audio, from a frame before its speech
        self._speech_len = 0  # ... up to the end of its last speech frame
        self._speech_run_ms = 0  # consecutive speech
        self._turn_speech_ms = 0
        self._silent_ms = 0
        self._dropped_noted = False

    # ---- sans-I/O interface ----------------------------------------------------------------
    def connect(self, now: float) -> None:
        """The WebSocket is open: the server speaks first."""
        self._now = self._last_message = now
        self.log.request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._emit("Welcome", request_id=self.log.request_id)
        self._at(now + self.config.idle_timeout_s, self._check_idle)

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one client message (a WebSocket frame)."""
        self.advance(now)
        if self.close_request:
            return
        self._last_message = now
        try:
            if isinstance(data, bytes):
                self._on_audio(data, now)
            else:
                msg = self._parse(data, now)
                self._handlers[msg["type"]](msg, now)
        except _Refusal as refusal:
            self._refuse(refusal, now)
        self.advance(now)

    def advance(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        self._now = max(self._now, now)
        while self._timers and self._timers[0][0] <= now and not self.close_request:
            due, _, fn = heapq.heappop(self._timers)
            fn(due)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers and not self.close_request else None

    def take_events(self) -> list[dict[str, Any] | bytes]:
        events, self._events = self._events, []
        return events

    def connection_lost(self) -> None:
        if self._sending is not None:  # logged as far as it went out; nobody is left to tell
            self._truncate(self._sending, self._sending.sent)
        self._events.clear()
        self._timers.clear()
        self._queue.clear()

    def fail(self, code: str, description: str, now: float) -> None:
        """End the session from the service's side: an ``Error``, then close 1000."""
        if self.close_request:
            return
        self._refuse(_Refusal(code, description, violation=False), now)

    def session_ms(self, now: float) -> int:
        """``now`` on the session timeline."""
        return round((now - self._t0) * 1000) if self._t0 is not None else 0

    # ---- helpers -----------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields}
        self._events.append(event)
        return event

    def _at(self, when: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def _refuse(self, refusal: _Refusal, now: float) -> None:
        kind = "Error" if refusal.fatal else "Warning"
        event = self._emit(kind, description=refusal.description, code=refusal.code)
        (self.log.errors_sent if refusal.fatal else self.log.warnings_sent).append(event)
        if refusal.violation:
            self.log.violations.append(f"{kind} {refusal.code}: {refusal.description}")
        if refusal.fatal:
            self._close(now)

    def _close(self, now: float) -> None:
        """Close 1000 once what is queued is sent; the audio being sent stops where it is."""
        if self._sending is not None:
            self._truncate(self._sending, self._sending.sent)
            self._sending = None
        self.close_request = (1000, "")
        self._timers.clear()
        self._queue.clear()

    def _parse(self, data: str, now: float) -> dict[str, Any]:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.log.received.append((now, "<invalid json>"))
            raise _Refusal(
                UNPARSABLE,
                "Error parsing client message: a text frame must be a JSON control message "
                "(send audio as binary frames).",
            ) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.log.received.append((now, "<no type>"))
            raise _Refusal(UNPARSABLE, "Error parsing client message: expected a JSON object with a string 'type'.")
        kind = msg["type"]
        self.log.received.append((now, kind))
        if kind == "Settings" and not self._settings_received:
            self.log.settings = copy.deepcopy(msg)  # as sent, valid or not
        if kind in NOT_SIMULATED_MESSAGES:
            raise _Refusal(NOT_SIMULATED, f"{kind} is not simulated; ignored.", fatal=False, violation=False)
        if kind not in CLIENT_MESSAGES:
            audio_like = any(k in msg for k in AUDIO_HINT_KEYS) or "audio" in kind.lower() or "media" in kind.lower()
            hint = " Audio must be sent as binary frames of raw audio, not in JSON." if audio_like else ""
            raise _Refusal(UNPARSABLE, f"Error parsing client message: unknown message type {kind!r}.{hint}")
        if kind not in ("Settings", "KeepAlive") and self._t0 is None:
            waited = "SettingsApplied" if self._settings_received else "Settings"
            raise _Refusal(SETTINGS_NOT_APPLIED, f"{kind} arrived before {waited}: send Settings and wait for it.")
        CLIENT_MESSAGES[kind](msg, "")
        return msg

    @property
    def _agent_settings(self) -> dict[str, Any]:
        agent = self.settings.get("agent")
        return agent if isinstance(agent, dict) else {}

    @property
    def _think(self) -> dict[str, Any]:
        """The think settings in force: the first provider of a fallback list."""
        think = self._agent_settings.get("think")
        if isinstance(think, list):
            think = think[0]
        return think if isinstance(think, dict) else {}

    @property
    def _functions(self) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in self._think.get("functions") or []}

    @property
    def _history_on(self) -> bool:
        return bool((self.settings.get("flags") or {}).get("history"))

    def _conversation_text(self, role: str, content: str) -> None:
        self._emit("ConversationText", role=role, content=content, conversational_behavior="default")
        if self._history_on:
            self._emit("History", role=role, content=content)

    # ---- Settings ----------------------------------------------------------------------------
    def _on_settings(self, msg: dict[str, Any], now: float) -> None:
        if self._settings_received:
            raise _Refusal(
                INVALID_SETTINGS,
                "Settings may be sent once per session; change a running session with UpdatePrompt, "
                "UpdateSpeak, UpdateThink or UpdateListen.",
            )
        self._check_supported(msg)
        if self.config.settings_error is not None:
            code, description = self.config.settings_error
            raise _Refusal(code, description, violation=False)
        self._settings_received = True
        if self.config.settings_applied_delay_ms <= 0:
            self._apply(msg, now)
        else:
            self._at(now + self.config.settings_applied_delay_ms / 1000, lambda t: self._apply(msg, t))

    @staticmethod
    def _check_supported(msg: dict[str, Any]) -> None:
        """What valid Settings this simulator does not run (the Twilio passthrough only), and the
        service's own cross-field rules."""
        a = msg["audio"]
        given_in = a.get("input") or {"encoding": "linear16", "sample_rate": 24000}  # the service's default
        if (given_in["encoding"], given_in["sample_rate"]) != ("mulaw", 8000):
            raise _Refusal(
                INVALID_SETTINGS,
                f"audio.input {given_in['encoding']} at {given_in['sample_rate']} Hz is not simulated: "
                "send mulaw at 8000 Hz (the Twilio passthrough).",
            )
        out = a.get("output") or {}
        encoding, rate, container = out.get("encoding") or "linear16", out.get("sample_rate"), out.get("container")
        if (encoding, rate) != ("mulaw", 8000) or (container or "none") != "none":
            raise _Refusal(
                INVALID_SETTINGS,
                f"audio.output {encoding} at {rate or 'the default rate'} in container {container or 'none'} is not "
                "simulated: send encoding mulaw, sample_rate 8000, container none (the Twilio passthrough).",
            )
        agent = msg["agent"]
        if isinstance(agent, str):
            raise _Refusal(INVALID_SETTINGS, "agent as a stored agent id is not simulated: send the agent object.")
        thinks = agent.get("think") or []
        for think in thinks if isinstance(thinks, list) else [thinks]:
            names = [f["name"] for f in think.get("functions") or []]
            if len(set(names)) != len(names):
                raise _Refusal(INVALID_SETTINGS, "agent.think.functions: function names must be unique.")
            for function in think.get("functions") or []:
                filler = [k for k in FILLER_FIELDS if function.get(k) is not None]
                if filler and agent.get("think_live") is None:
                    raise _Refusal(
                        INVALID_SETTINGS,
                        f"agent.think.functions[{function['name']}].{filler[0]} requires agent.think_live.",
                    )

    def _apply(self, msg: dict[str, Any], now: float) -> None:
        self.settings = copy.deepcopy(msg)
        self._t0 = self.log.settings_applied_at = now
        self._emit("SettingsApplied")
        for item in (self._agent_settings.get("context") or {}).get("messages") or []:
            if "role" in item:
                self.log.turns.append((item["role"], item["content"]))
        greeting = self._agent_settings.get("greeting")
        if isinstance(greeting, str) and greeting.strip():
            self._queue_line("greeting", greeting, now, think_s=0.0)
        self._at(now + self.config.max_session_s, self._end_of_session)

    def _end_of_session(self, now: float) -> None:
        hours = self.config.max_session_s / 3600
        self.fail(SESSION_LIMIT, f"The session reached its maximum duration ({hours:g} h) and was closed.", now)

    def _check_idle(self, now: float) -> None:
        due = self._last_message + self.config.idle_timeout_s
        if now < due:
            self._at(due, self._check_idle)
            return
        self._refuse(
            _Refusal(
                CLIENT_MESSAGE_TIMEOUT,
                f"We did not receive audio or a KeepAlive for {self.config.idle_timeout_s:g} s: "
                "send audio or a KeepAlive message regularly.",
            ),
            now,
        )

    # ---- control messages --------------------------------------------------------------------
    def _on_keep_alive(self, msg: dict[str, Any], now: float) -> None:
        self.log.keepalives.append(now)  # the service does not answer

    def _on_update_prompt(self, msg: dict[str, Any], now: float) -> None:
        self.log.prompt_updates.append(msg["prompt"])
        think = self._agent_settings.get("think")
        for provider in think if isinstance(think, list) else [think] if isinstance(think, dict) else []:
            provider["prompt"] = msg["prompt"]
        self._emit("PromptUpdated")

    def _on_update_speak(self, msg: dict[str, Any], now: float) -> None:
        self._agent_settings["speak"] = copy.deepcopy(msg["speak"])
        self._emit("SpeakUpdated")

    def _on_update_think(self, msg: dict[str, Any], now: float) -> None:
        self._agent_settings["think"] = copy.deepcopy(msg["think"])
        self._emit("ThinkUpdated")

    def _on_update_listen(self, msg: dict[str, Any], now: float) -> None:
        self._agent_settings["listen"] = copy.deepcopy(msg["listen"])
        self._emit("ListenUpdated")

    def _on_force_end_turn(self, msg: dict[str, Any], now: float) -> None:
        if self._in_turn:
            self._end_turn(now)

    def _mid_turn(self, now: float) -> str | None:
        """Who is mid-turn, if anyone: the user speaking, or the agent thinking or speaking."""
        if self._in_turn:
            return "the user is speaking"
        if self._sending is not None or now < self._play_end or any(u.kind == "reply" for u in self._queue):
            return "the agent is speaking"
        return None

    def _on_inject_agent_message(self, msg: dict[str, Any], now: float) -> None:
        if msg.get("is_dynamic"):
            raise _Refusal(
                NOT_SIMULATED,
                "Dynamic agent messages (Think Live) are not simulated; ignored.",
                fatal=False,
                violation=False,
            )
        message = msg.get("message")
        if message is None:
            raise _unparsable("message", "missing required field")
        behavior = msg.get("behavior") or "default"
        busy = self._mid_turn(now)
        if behavior == "default" and busy is not None:
            self.log.injections_refused.append(message)
            self._emit("InjectionRefused", message=f"The message was not injected: {busy}.")
            return
        if behavior == "interrupt":
            self._stop_agent(now)
        self._queue_line("line", message, now, think_s=0.0, first=behavior == "interrupt")

    def _on_inject_user_message(self, msg: dict[str, Any], now: float) -> None:
        content = msg["content"]
        history = list(self.log.turns)
        self.log.turns.append(("user", content))
        self._conversation_text("user", content)
        self._queue = [u for u in self._queue if u.kind != "reply"]  # a newer line supersedes them
        keys, say = PRESSED.search(content), SAY.match(content)
        if keys:
            self._respond(_Plan("The caller pressed keys.", "You pressed " + " ".join(keys.group(1))), now)
        elif say:
            self._respond(_Plan("Saying the given line.", say.group(1).strip()), now)
        else:
            self._respond(self._plan(content, history), now)

    # ---- tools -------------------------------------------------------------------------------
    def _plan(self, transcript: str, history: list[tuple[str, str]]) -> _Plan:
        """The answer to a caller line, and the function it calls, as relay.sim.agent picks them."""
        c, functions = self.config, self._functions
        if "end_call" in functions and _cued(transcript, c.hangup_words):
            return _Plan("The caller is saying goodbye.", c.farewell, ("end_call", "{}"))
        if "get_weather" in functions and _cued(transcript, ("weather",)):
            return _Plan("The caller asks about the weather.", c.weather_ack, ("get_weather", WEATHER_ARGUMENTS))
        summary = {"summary": f"Caller says: {transcript}"}
        if "escalate" in functions and _cued(transcript, c.escalate_words):
            return _Plan("This is urgent.", c.escalating, ("escalate", orjson.dumps(summary).decode()))
        if "transfer_call" in functions and _cued(transcript, c.transfer_words):
            chosen = {**tool_arguments(functions["transfer_call"].get("parameters"), transcript), **summary}
            return _Plan(
                "The caller asks for a person.", c.transferring, ("transfer_call", orjson.dumps(chosen).decode())
            )
        for name, function in functions.items():
            cues = tuple(part for part in name.split("_") if len(part) >= 3)
            if name not in BUILT_IN_FUNCTIONS and _cued(transcript, cues):
                arguments = orjson.dumps(tool_arguments(function.get("parameters"), transcript)).decode()
                return _Plan(f"The caller asks for {name}.", c.using_tool, (name, arguments))
        return _Plan("Answering the caller.", self.reply(transcript, history))

    def _respond(self, plan: _Plan, now: float) -> None:
        self._emit("AgentThinking", content=plan.thought)
        ready = now + (self.config.think_ms + self.config.tts_ms) / 1000
        self._queue_line("reply", plan.line, now, think_s=self.config.think_ms / 1000, ready=ready, call=plan.call)

    def _request_function(self, name: str, arguments: str, now: float) -> None:
        function = self._functions.get(name, {})
        client_side = function.get("endpoint") is None
        call_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        record: dict[str, Any] = {
            "id": call_id,
            "name": name,
            "arguments": arguments,
            "client_side": client_side,
            "requested_at": now,
            "response": None,
            "answered_at": None,
        }
        self.log.function_calls.append(record)
        item = {"id": call_id, "name": name, "arguments": arguments, "client_side": client_side}
        self._emit("FunctionCallRequest", functions=[item])
        if client_side:
            self._pending_calls[call_id] = record
        else:  # the service calls the endpoint itself and tells the client what came back
            self._at(now + self.config.think_ms / 1000, functools.partial(self._server_function_done, record))

    def _server_function_done(self, record: dict[str, Any], now: float) -> None:
        content = self.config.server_function_content
        self._emit("FunctionCallResponse", id=record["id"], name=record["name"], content=content)
        self._function_answered(record, content, now)

    def _on_function_call_response(self, msg: dict[str, Any], now: float) -> None:
        call_id, name, content = msg.get("id"), msg["name"], msg["content"]
        if call_id is None:
            raise _unparsable("id", "required on a client's FunctionCallResponse (the id of its FunctionCallRequest)")
        record = self._pending_calls.get(call_id)
        if record is None:
            raise _Refusal(
                UNKNOWN_FUNCTION_CALL,
                f"No client-side function call {call_id!r} is waiting for a response.",
                fatal=False,
            )
        if name != record["name"]:
            raise _Refusal(
                UNKNOWN_FUNCTION_CALL,
                f"Function call {call_id!r} is a call of {record['name']!r}, not {name!r}.",
                fatal=False,
            )
        del self._pending_calls[call_id]
        self._function_answered(record, content, now)

    def _function_answered(self, record: dict[str, Any], content: str, now: float) -> None:
        record["response"], record["answered_at"] = content, now
        if self._history_on:
            item = {k: record[k] for k in ("id", "name", "client_side", "arguments")}
            self._emit("History", function_calls=[{**item, "response": content}])
        line = _result_line(record["name"], content)
        if line:
            self._emit("AgentThinking", content=f"{record['name']} returned.")
            ready = now + (self.config.think_ms + self.config.tts_ms) / 1000
            self._queue_line("line", line, now, think_s=self.config.think_ms / 1000, ready=ready)

    # ---- the agent's audio -------------------------------------------------------------------
    def _queue_line(
        self,
        kind: str,
        text: str,
        now: float,
        *,
        think_s: float,
        ready: float | None = None,
        call: tuple[str, str] | None = None,
        first: bool = False,
    ) -> None:
        if not text.split():
            return
        at = now + self.config.tts_ms / 1000 if ready is None else ready
        u = _Utterance(kind, text, _speech(text, self.config.pitch_hz), at, now, think_s, call=call, force=first)
        if first:
            self._queue.insert(0, u)
        else:
            self._queue.append(u)
        self._at(at, self._begin_next)

    def _begin_next(self, now: float) -> None:
        if self._sending is not None or not self._queue or self.close_request:
            return
        head = self._queue[0]
        # the agent does not start talking while the caller is (an "interrupt" injection does)
        if head.ready > now or (self._in_turn and not head.force):
            return
        self._queue.pop(0)
        self._sending = head
        head.began, head.play_start = now, max(now, self._play_end)
        self._play_end = head.play_end
        self._playing = [u for u in self._playing if u.play_end > now] + [head]
        head.spoken_index = len(self.log.spoken)
        self.log.spoken.append((head.text, self.session_ms(head.play_start), self.session_ms(head.play_end)))
        self.log.turns.append(("assistant", head.text))
        total = round(now - head.since, 3)
        self._emit(
            "AgentStartedSpeaking",
            total_latency=total,
            tts_latency=round(min(total, self.config.tts_ms / 1000), 3),
            ttt_latency=round(head.think_s, 3),
        )
        if head.call is not None:
            self._request_function(*head.call, now)
        self._send_chunk(head, now)

    def _send_chunk(self, u: _Utterance, now: float) -> None:
        if u is not self._sending:  # stopped since this chunk was scheduled
            return
        part = u.speech.audio[u.sent : u.sent + self._chunk_bytes]
        self._events.append(part)
        u.sent += len(part)
        u.chunks += 1
        if u.cut and u.interruption is not None:
            u.interruption["late_chunks"] += 1
        if u.sent >= len(u.speech.audio):
            self._finish_sending(u, now, complete=not u.cut)
        elif u.cut and u.interruption is not None and u.interruption["late_chunks"] >= self.config.in_flight_chunks:
            self._finish_sending(u, now, complete=False)
        else:
            self._at(u.began + u.chunks * self.config.chunk_interval_ms / 1000, functools.partial(self._send_chunk, u))

    def _finish_sending(self, u: _Utterance, now: float, *, complete: bool) -> None:
        """All of ``u`` went out (AgentAudioDone), or what a cut let out did. Its text follows in
        full either way: the service knows what it generated, not what was heard."""
        self._sending = None
        self._conversation_text("assistant", u.text)
        if complete:
            self._emit("AgentAudioDone")
        self._begin_next(now)

    def _truncate(self, u: _Utterance, played: int) -> str:
        """Log ``u`` as played up to byte ``played``; return the words heard (marks played)."""
        played = max(0, min(played, u.sent, len(u.speech.audio)))
        heard = " ".join(w for w, end in zip(u.speech.words, u.speech.mark_ends, strict=True) if end <= played)
        if u.spoken_index >= 0:
            _, start, _ = self.log.spoken[u.spoken_index]
            self.log.spoken[u.spoken_index] = (heard, start, start + played // BYTES_PER_MS)
        return heard

    def _stop_agent(self, now: float) -> list[dict[str, Any]]:
        """Stop the agent where the caller is hearing it; return one record per line cut."""
        cut: list[dict[str, Any]] = []
        for u in self._playing:
            if u.play_end <= now:
                continue
            heard = self._truncate(u, round((now - u.play_start) * SAMPLE_RATE))
            record = {
                "at_ms": self.session_ms(now),
                "text": u.text,
                "heard": heard,
                "late_chunks": 0,
                "sending": u is self._sending,
            }
            u.cut, u.interruption = True, record
            cut.append(record)
        self._playing, self._play_end = [], now
        current = self._sending
        if current is not None and (current.interruption is None or self.config.in_flight_chunks <= 0):
            self._finish_sending(current, now, complete=False)  # nothing of it left in flight
        return cut

    # ---- caller audio ------------------------------------------------------------------------
    def _on_audio(self, data: bytes, now: float) -> None:
        self.log.received.append((now, f"<binary {len(data)}>"))
        self.log.audio_messages += 1
        self.log.audio_bytes += len(data)
        self.log.largest_audio_message = max(self.log.largest_audio_message, len(data))
        if JSON_IN_BINARY.match(data):
            self.log.violations.append(
                "a JSON control message arrived in a binary frame: it is heard as audio (send it as text)"
            )
        if self._t0 is None:
            self.log.audio_before_settings_applied += 1
            if not self._dropped_noted:
                self._dropped_noted = True
                self.log.violations.append("audio before SettingsApplied: dropped")
            return
        data = self._carry + data
        whole = len(data) - len(data) % FRAME_BYTES
        self._carry = data[whole:]
        for i in range(0, whole, FRAME_BYTES):
            self._frame(data[i : i + FRAME_BYTES], now)

    def _frame(self, frame: bytes, now: float) -> None:
        """Hear one 20 ms frame of the caller: speech starts, sustains, ends turns."""
        speech = audio.frame_energy_dbfs(frame) > VAD_DBFS
        if speech and not self._in_turn:
            self._in_turn, self._announced = True, False
            self._turn_audio = bytearray(self._previous_frame)  # a word's first samples are faint
            self._turn_speech_ms = self._speech_run_ms = self._silent_ms = self._speech_len = 0
        self._previous_frame = frame
        if not self._in_turn:
            return
        self._turn_audio += frame
        if speech:
            self._speech_len = len(self._turn_audio)
            self._silent_ms = 0
            self._speech_run_ms += FRAME_MS
            self._turn_speech_ms += FRAME_MS
            if not self._announced and self._speech_run_ms >= self.config.yield_ms:
                self._user_started_speaking(now)
        else:
            self._speech_run_ms = 0
            self._silent_ms += FRAME_MS
            if self._silent_ms >= self.config.silence_ms:
                self._end_turn(now)

    def _user_started_speaking(self, now: float) -> None:
        self._announced = True
        self._emit("UserStartedSpeaking")
        if self._sending is not None or now < self._play_end:  # a barge-in: the agent stops
            self.log.interruptions += self._stop_agent(now)

    def _end_turn(self, now: float) -> None:
        self._in_turn = False
        self._speech_run_ms = self._silent_ms = 0
        heard = audio.words_heard(self._turn_audio)
        speech = bytes(self._turn_audio[: self._speech_len])
        self._turn_audio = bytearray()
        if not heard and self._turn_speech_ms < self.config.yield_ms:
            self._begin_next(now)
            return  # a cough, a click: too short to be a line, as it was too short to interrupt
        if not self._announced:
            self._user_started_speaking(now)
        # speech without marks (a recording) transcribes to its length, as audio.transcribe() says
        transcript = " ".join(w for _, w in heard) if heard else audio.transcribe(speech)
        history = list(self.log.turns)
        self.log.turns.append(("user", transcript))
        self._conversation_text("user", transcript)
        self._queue = [u for u in self._queue if u.kind != "reply"]  # a newer line supersedes them
        self._respond(self._plan(transcript, history), now)
        self._begin_next(now)


class DeepgramAgent(SimulatorShell):
    """The asyncio/WebSocket shell: serves ``DeepgramSession`` on loopback at ``DEEPGRAM_PATH``."""

    def __init__(self, config: DeepgramConfig | None = None) -> None:
        self.config = config or DeepgramConfig()
        self.rejected: list[tuple[int, str]] = []  # (HTTP status, request path) of refused handshakes
        self._server = SessionServer(
            "deepgram agent", DEEPGRAM_PATH, self._open, self._process_request, self._select_subprotocol
        )
        self.sessions: list[DeepgramSessionLog] = self._server.sessions

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        c = self.config
        if min(c.chunk_ms, c.chunk_interval_ms, c.yield_ms, c.silence_ms) <= 0:
            raise ValueError("chunk_ms, chunk_interval_ms, yield_ms and silence_ms must be positive")
        if c.chunk_interval_ms > c.chunk_ms:
            raise ValueError("chunk_interval_ms must not exceed chunk_ms: the service sends faster than real time")
        if c.idle_timeout_s <= 0 or c.max_session_s <= 0 or c.in_flight_chunks < 0:
            raise ValueError("idle_timeout_s and max_session_s must be positive, in_flight_chunks not negative")
        await self._server.start(host, port)

    async def fail(
        self,
        session: DeepgramSessionLog,
        code: str = INTERNAL_SERVER_ERROR,
        description: str = "An internal server error occurred.",
        timeout: float = 5.0,
    ) -> None:
        """End one session from the service's side: an ``Error`` with ``code``, then close 1000.
        Returns once the connection is closed.

        Raises:
            TimeoutError: it did not close within ``timeout`` seconds.
        """
        self._server.act(session, lambda core, now: core.fail(code, description, now))
        await self.wait_closed(session, timeout)

    def _open(self, ws: ServerConnection, now: float) -> tuple[DeepgramSessionLog, DeepgramSession]:
        request = ws.request
        assert request is not None
        slog = DeepgramSessionLog(index=len(self.sessions), path=request.path, opened_at=now, auth=_scheme(request))
        return slog, DeepgramSession(self.config, slog)

    def _reject(self, connection: ServerConnection, request: Request, status: int, code: str, message: str) -> Response:
        """An HTTP refusal with Deepgram's error body."""
        self.rejected.append((status, request.path))
        body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
        response = connection.respond(status, orjson.dumps(body).decode())
        response.headers["Content-Type"] = "application/json"
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path != DEEPGRAM_PATH:
            return self._reject(connection, request, 404, "NOT_FOUND", f"No such endpoint: {path}")
        credential = _credential(request)
        if not credential or (self.config.api_key is not None and credential != self.config.api_key):
            return self._reject(connection, request, 401, "INVALID_AUTH", "Invalid credentials.")
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """Answer ``token, <key>`` (or ``bearer, <jwt>``) with the scheme, as a browser requires."""
        if offered and offered[0].lower() in ("token", "bearer"):
            return offered[0]
        return None


def _auth_header(request: Request) -> tuple[str, str]:
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower(), credential.strip()


def _auth_subprotocols(request: Request) -> list[str]:
    offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
    return [p.strip() for p in offered.split(",") if p.strip()]


def _credential(request: Request) -> str:
    """The key or token a handshake carries: ``Authorization: Token|Bearer <credential>``, or
    ``Sec-WebSocket-Protocol: token|bearer, <credential>`` from clients that cannot set headers."""
    scheme, credential = _auth_header(request)
    if scheme in ("token", "bearer") and credential:
        return credential
    protocols = _auth_subprotocols(request)
    if len(protocols) >= 2 and protocols[0].lower() in ("token", "bearer"):
        return protocols[1]
    return ""


def _scheme(request: Request) -> str:
    """How the handshake authenticated (never the credential itself)."""
    scheme, credential = _auth_header(request)
    if scheme in ("token", "bearer") and credential:
        return scheme
    protocols = _auth_subprotocols(request)
    return f"subprotocol {protocols[0].lower()}" if protocols else ""
