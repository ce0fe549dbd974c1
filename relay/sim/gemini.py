"""A protocol-exact simulated Google Gemini Live server (BidiGenerateContent) on loopback.

It speaks the Live API's WebSocket protocol (``/shared/BACKENDS.md`` §3; message and field shapes
as in google-genai 3.6.1 ``types.py`` and ``_live_converters.py``) and makes observable what relay
has to get right:

* the client speaks first: ``{"setup": …}``, parsed as Google's proto-JSON parser does (camelCase
  or snake_case names, unknown names are errors, enums by name), then nothing until
  ``setupComplete``. A client mistake is not answered with an error event: the connection closes,
  1007 for a payload the parser refuses, 1008 for a model it does not serve, with Google's reason;
* audio goes in as 16-bit PCM at 16 kHz and comes out as 16-bit PCM at 24 kHz, so relay must
  transcode both ways. The caller's words are read back from the μ-law marks ``audio.speak`` put in
  them, which survive only if relay's 8→16 kHz upsampler keeps the original samples at one phase;
* the answer arrives **faster than real time** (``chunk_ms`` of audio every ``chunk_interval_ms``),
  ``generationComplete`` when the last chunk is out and ``turnComplete`` (with ``usageMetadata``)
  only when the answer would have finished playing, the server assuming real-time playback from
  the first chunk. Relay's playout buffer fills ahead of the caller;
* barge-in is the server's: caller speech while the answer is still playing stops it, and the only
  signal is ``serverContent.interrupted`` followed by ``turnComplete``. The model keeps in its
  context only the words that had played by then, so relay must ``clear`` Twilio at once;
* tools are ``toolCall.functionCalls[]`` answered by ``toolResponse.functionResponses[]`` whose
  ``id`` must match; on 3.8 calls are NON_BLOCKING unless declared ``BLOCKING``;
* connections end (``goAway`` first) and sessions outlive them only through ``sessionResumption``
  handles, which this server keeps across connections (``GeminiLive.handles``).

Every client mistake is recorded in ``GeminiSessionLog.violations``. As in ``relay.sim.live``,
``GeminiSession`` is sans-I/O protocol state (it takes messages and the time, queues server
messages, says when it next needs the clock) and ``GeminiLive`` is the asyncio shell serving one
per WebSocket (``relay.sim.serving.SessionServer``).

Timelines (session milliseconds, 0 = when ``setupComplete`` was sent): the caller's audio is
counted as a media clock would, from the first chunk's arrival at 8 samples per ms after
decimation; audio that arrives ahead of its time is heard when its time comes, audio that comes
late does not move the caller's timeline. An answer is heard from its first chunk's sending, in
real time.
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
from relay.sim.agent import BUILT_IN_TOOLS, TOOL_FAILED, default_reply, tool_arguments

# The model's speech and the caller's VAD levels are the GPT-Live simulator's: one synthesis per
# line, the same word marks, the same idea of what is speech.
from relay.sim.live import PRESSED, QUIET_DBFS, SAY, VAD_DBFS, WEATHER_ACK, _mark_bits, _Speech, _speech, _word_spans
from relay.sim.serving import SessionServer, SimulatorShell

__all__ = [
    "GEMINI_PATH",
    "MODELS",
    "GeminiConfig",
    "GeminiLive",
    "GeminiSession",
    "GeminiSessionLog",
    "ResumptionState",
]

log = logging.getLogger(__name__)

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODELS = ("gemini-3.8-live", "gemini-3.8-live-extended-thinking", "gemini-3.1-flash-live-preview")
# 3.8 dropped thinkingConfig, affective dialog and proactive_audio:false, and made function calls
# NON_BLOCKING by default (BACKENDS §3.2, §3.5).
MODELS_3_8 = ("gemini-3.8-live", "gemini-3.8-live-extended-thinking")
VOICES = (  # the prebuilt voices
    "Achernar",
    "Achird",
    "Algenib",
    "Algieba",
    "Alnilam",
    "Aoede",
    "Autonoe",
    "Callirrhoe",
    "Charon",
    "Despina",
    "Enceladus",
    "Erinome",
    "Fenrir",
    "Gacrux",
    "Iapetus",
    "Kore",
    "Laomedeia",
    "Leda",
    "Orus",
    "Puck",
    "Pulcherrima",
    "Rasalgethi",
    "Sadachbia",
    "Sadaltager",
    "Schedar",
    "Sulafat",
    "Umbriel",
    "Vindemiatrix",
    "Zephyr",
    "Zubenelgenubi",
)
INPUT_RATE = 16000
OUTPUT_RATE = 24000
OUTPUT_MIME = "audio/pcm;rate=24000"
OUT_BYTES_PER_MS = OUTPUT_RATE * 2 // 1000  # PCM16 at 24 kHz
OUT_PER_8K = OUTPUT_RATE // SAMPLE_RATE * 2  # output bytes per 8 kHz sample of the synthesized line
AUDIO_TOKENS_PER_S = 32  # the Gemini API counts a second of audio as 32 tokens
MAX_REASON_BYTES = 123  # a WebSocket close reason's limit
CLIENT_MESSAGES = ("setup", "clientContent", "realtimeInput", "toolResponse")
TYPE_URL = "type.googleapis.com/google.ai.generativelanguage.v1beta."
CONNECTION_LIMIT = "connection time limit"
SESSION_LIMIT = "session time limit"
UNKNOWN_HANDLE = "Session resumption handle is invalid."
EXPIRED_HANDLE = "Session resumption handle has expired."
_ALPHABET = string.ascii_letters + string.digits
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
WEATHER_ARGS = {"city": "Paris"}


@dataclass(frozen=True)
class GeminiConfig:
    api_key: str | None = None  # when set, the only key accepted; any key otherwise
    setup_delay_ms: int = 0  # setup -> setupComplete; above zero, audio sent too early is caught
    think_ms: int = 300  # the end of a caller turn (silence after its speech) -> the answer's first chunk
    chunk_ms: int = 40  # audio per modelTurn chunk
    chunk_interval_ms: int = 10  # one chunk is sent this often: 4x faster than real time by default
    silence_ms: int = 500  # caller silence that ends a caller turn (setup's silenceDurationMs wins)
    yield_ms: int = 60  # caller speech sustained this long interrupts the answer (prefixPaddingMs wins)
    transcription_delay_ms: int = 100  # a caller word's audio heard -> its inputTranscription
    pitch_hz: float = 210.0
    seed: int = 0
    reply: Callable[[str, list[tuple[str, str]]], str] | None = None  # (transcript, history) -> answer
    # A caller line with one of these words gets the farewell and, when setup declares ``end_call``,
    # a call of it with the farewell's audio.
    hangup_words: tuple[str, ...] = ("goodbye", "bye")
    farewell: str = "Thank you for calling. Goodbye!"
    # ``escalate``, ``transfer_call`` and the other declared functions are called as
    # ``relay.sim.agent`` calls them: on these words, or on a word of the function's name.
    escalate_words: tuple[str, ...] = ("urgent", "emergency")
    escalating: str = "Let me reach who is on call."
    transfer_words: tuple[str, ...] = ("transfer", "human", "person")
    transferring: str = "Let me put you through."
    using_tool: str = "One moment."
    connection_s: float = 600.0  # a connection closes this long after setupComplete (about 10 min)
    go_away_lead_s: float = 60.0  # goAway comes this long before a connection or session ends
    session_s: float = 900.0  # audio-only sessions without contextWindowCompression end after 15 min
    handle_ttl_s: float = 7200.0  # a resumption handle works this long after its session ends
    # The reported 3.8 behaviour (BACKENDS §3.7, C-3p): every connection closes with 1011 "Deadline
    # expired" this long after setupComplete, with no goAway. None: not simulated.
    deadline_s: float | None = None
    # Bundle what Google may bundle (BACKENDS §3.8 pitfall 1): a word's outputTranscription in its
    # audio chunk's serverContent, generationComplete in the last chunk's, interrupted with turnComplete.
    bundle: bool = False


@dataclass
class ResumptionState:
    """What a resumption handle resumes: the conversation as the model knew it when it was issued."""

    turns: list[tuple[str, str]]
    issued_at: float
    expires_at: float
    session_started_at: float  # the first connection's setupComplete: the session limit counts from here
    session_index: int  # the connection that issued it


@dataclass(eq=False)
class GeminiSessionLog:
    """What happened on one connection; times are ``loop.time()``, spans session milliseconds."""

    index: int = 0
    path: str = ""  # the request path, without its query (which may hold the key)
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    model: str = ""
    setup: dict[str, Any] = field(default_factory=dict)  # the setup message's body, as sent
    setup_complete_at: float | None = None  # setupComplete sent (session time 0)
    received: list[tuple[float, str]] = field(default_factory=list)
    sent: list[tuple[float, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    audio_chunks: int = 0  # realtimeInput audio blobs received
    audio_before_setup_complete: int = 0  # of those, sent before setupComplete (dropped)
    turns: list[tuple[str, str]] = field(default_factory=list)  # ("user"|"model", text): the model's context
    spoken: list[tuple[str, int, int]] = field(default_factory=list)  # (words heard, start ms, end ms)
    interruptions: list[tuple[float, int]] = field(default_factory=list)  # (time, ms of the answer heard)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # each call and its round trip
    usage_sent: list[dict[str, Any]] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)  # resumption handles issued
    resumed_from: str | None = None
    go_aways: list[tuple[float, str]] = field(default_factory=list)  # (time, timeLeft)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class _Invalid(Exception):
    """A client message the service refuses: the connection closes with ``code`` and the message."""

    def __init__(self, message: str, code: int = 1007, *, violation: bool = True) -> None:
        super().__init__(message)
        self.message, self.code, self.violation = message, code, violation


class _Message(dict[str, Any]):
    """A server message. Gemini's carry no type; ``msg["type"]`` names one for the logs only
    (``serverContent.modelTurn``, ``toolCall``, …) and is not sent."""

    def __missing__(self, key: str) -> Any:
        if key != "type":
            raise KeyError(key)
        names = []
        for top, body in self.items():
            inner = "+".join(body) if top == "serverContent" and isinstance(body, dict) else ""
            names.append(f"{top}.{inner}" if inner else top)
        return "+".join(names)


# ---- proto-JSON parsing (google.ai.generativelanguage.v1beta, as the ESF parser reports errors) ----
# Each check takes the value and its path in proto field names ('setup.generation_config') and
# returns the value normalized: messages with camelCase keys, integers as int, bytes decoded.
_Check = Callable[[Any, str], Any]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _leaf(path: str) -> tuple[str, str]:
    """(the enclosing message's path, the field's name) of a path."""
    parent, _, name = path.rpartition(".")
    return parent, re.sub(r"\[\d+\]$", "", name)


def _unknown(name: str, parent: str, why: str = "Cannot find field.") -> _Invalid:
    at = f" at '{parent}'" if parent else ""
    return _Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: {why}')


def _bad_value(path: str, type_name: str, value: Any) -> _Invalid:
    return _Invalid(f"Invalid value at '{path}' ({type_name}), {_shown(value)}")


def _scalar_shape(value: Any, path: str) -> None:
    """A list or an object where a scalar belongs."""
    parent, name = _leaf(path)
    if isinstance(value, list):
        raise _unknown(name, parent, "Proto field is not repeating, cannot start list.")
    if isinstance(value, dict):
        raise _unknown(name, parent, "Starting an object on a scalar field")


def _string(value: Any, path: str) -> str:
    _scalar_shape(value, path)
    if not isinstance(value, str):
        raise _bad_value(path, "TYPE_STRING", value)
    return value


def _bool(value: Any, path: str) -> bool:
    _scalar_shape(value, path)
    if not isinstance(value, bool):
        raise _bad_value(path, "TYPE_BOOL", value)
    return value


def _integer(kind: str) -> _Check:
    """int32/int64: a JSON number with no fraction, or a decimal string (how int64 travels)."""

    def check(value: Any, path: str) -> int:
        _scalar_shape(value, path)
        if isinstance(value, bool):
            raise _bad_value(path, kind, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise _bad_value(path, kind, value)

    return check


_INT32 = _integer("TYPE_INT32")
_INT64 = _integer("TYPE_INT64")


def _number(value: Any, path: str) -> float:
    _scalar_shape(value, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _bad_value(path, "TYPE_FLOAT", value)


def _bytes(value: Any, path: str) -> bytes:
    """Proto bytes: standard or URL-safe base64, padding optional."""
    _scalar_shape(value, path)
    if not isinstance(value, str):
        raise _bad_value(path, "TYPE_BYTES", value)
    text = value.replace("-", "+").replace("_", "/")
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    except binascii.Error:
        raise _Invalid(f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for {_shown(value)}") from None


def _enum(type_name: str, *names: str, any_case: bool = False) -> _Check:
    def check(value: Any, path: str) -> str:
        _scalar_shape(value, path)
        if isinstance(value, str):
            name = value.upper() if any_case else value
            if name in names:
                return name
        raise _bad_value(path, TYPE_URL + type_name, value)

    return check


def _struct(value: Any, path: str) -> dict[str, Any]:
    """google.protobuf.Struct: any JSON object."""
    if not isinstance(value, dict):
        raise _bad_value(path, "type.googleapis.com/google.protobuf.Struct", value)
    return value


def _any(value: Any, path: str) -> Any:
    """google.protobuf.Value: any JSON."""
    return value


def _repeated(item: _Check) -> _Check:
    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            parent, name = _leaf(path)
            if isinstance(value, dict):
                raise _unknown(name, parent, "Proto field is repeating, cannot start object.")
            raise _bad_value(path, "repeated", value)
        return [item(element, f"{path}[{i}]") for i, element in enumerate(value) if element is not None]

    return check


def _map(item: _Check) -> _Check:
    def check(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad_value(path, "map", value)
        return {key: item(element, f"{path}[{i}].value") for i, (key, element) in enumerate(value.items())}

    return check


def _message(type_name: str, fields: dict[str, _Check]) -> _Check:
    """A proto message: each key is a field's JSON name (camelCase) or its proto name (snake_case);
    anything else is an unknown name. null stands for an omitted field."""

    def check(value: Any, path: str) -> dict[str, Any]:
        if isinstance(value, list):
            parent, name = _leaf(path)
            raise _unknown(name, parent, "Proto field is not repeating, cannot start list.")
        if not isinstance(value, dict):
            raise _bad_value(path, TYPE_URL + type_name, value)
        out: dict[str, Any] = {}
        for key, element in value.items():
            name = key if key in fields else _camel(key)
            if name not in fields or (name != key and _snake(name) != key):
                raise _unknown(key, path)
            if element is not None:
                out[name] = fields[name](element, f"{path}.{_snake(name)}" if path else _snake(name))
        return out

    return check


_BLOB = _message("Blob", {"mimeType": _string, "data": _bytes})
_PART = _message(
    "Part",
    {
        "text": _string,
        "inlineData": _BLOB,
        "thought": _bool,
        "thoughtSignature": _bytes,
        "functionCall": _struct,
        "functionResponse": _struct,
        "fileData": _struct,
        "executableCode": _struct,
        "codeExecutionResult": _struct,
        "videoMetadata": _struct,
    },
)
_CONTENT = _message("Content", {"role": _string, "parts": _repeated(_PART)})
_SCHEMA_FIELDS: dict[str, _Check] = {}
_SCHEMA = _message("Schema", _SCHEMA_FIELDS)
_SCHEMA_FIELDS.update(
    {
        # Type names are matched in any case: clients that copy JSON Schema send "object"
        "type": _enum(
            "Type",
            "TYPE_UNSPECIFIED",
            "STRING",
            "NUMBER",
            "INTEGER",
            "BOOLEAN",
            "ARRAY",
            "OBJECT",
            "NULL",
            any_case=True,
        ),
        "format": _string,
        "title": _string,
        "description": _string,
        "nullable": _bool,
        "enum": _repeated(_string),
        "maxItems": _INT64,
        "minItems": _INT64,
        "properties": _map(_SCHEMA),
        "required": _repeated(_string),
        "minProperties": _INT64,
        "maxProperties": _INT64,
        "minLength": _INT64,
        "maxLength": _INT64,
        "pattern": _string,
        "example": _any,
        "anyOf": _repeated(_SCHEMA),
        "propertyOrdering": _repeated(_string),
        "default": _any,
        "items": _SCHEMA,
        "minimum": _number,
        "maximum": _number,
    }
)
_FUNCTION_DECLARATION = _message(
    "FunctionDeclaration",
    {
        "name": _string,
        "description": _string,
        "parameters": _SCHEMA,
        "parametersJsonSchema": _any,
        "response": _SCHEMA,
        "responseJsonSchema": _any,
        "behavior": _enum("FunctionDeclaration.Behavior", "UNSPECIFIED", "BLOCKING", "NON_BLOCKING"),
    },
)
_TOOL = _message(
    "Tool",
    {
        "functionDeclarations": _repeated(_FUNCTION_DECLARATION),
        "googleSearch": _struct,
        "googleSearchRetrieval": _struct,
        "codeExecution": _struct,
        "urlContext": _struct,
    },
)
_SPEECH_CONFIG = _message(
    "SpeechConfig",
    {
        "voiceConfig": _message(
            "VoiceConfig", {"prebuiltVoiceConfig": _message("PrebuiltVoiceConfig", {"voiceName": _string})}
        ),
        "languageCode": _string,
    },
)
_GENERATION_CONFIG = _message(
    "GenerationConfig",
    {
        "candidateCount": _INT32,
        "maxOutputTokens": _INT32,
        "temperature": _number,
        "topP": _number,
        "topK": _INT32,
        "presencePenalty": _number,
        "frequencyPenalty": _number,
        "seed": _INT32,
        "responseModalities": _repeated(
            _enum("GenerationConfig.Modality", "MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO")
        ),
        "speechConfig": _SPEECH_CONFIG,
        "mediaResolution": _enum(
            "GenerationConfig.MediaResolution",
            "MEDIA_RESOLUTION_UNSPECIFIED",
            "MEDIA_RESOLUTION_LOW",
            "MEDIA_RESOLUTION_MEDIUM",
            "MEDIA_RESOLUTION_HIGH",
        ),
        "thinkingConfig": _message(
            "ThinkingConfig",
            {
                "thinkingBudget": _INT32,
                "includeThoughts": _bool,
                "thinkingLevel": _enum("ThinkingConfig.ThinkingLevel", "THINKING_LEVEL_UNSPECIFIED", "LOW", "HIGH"),
            },
        ),
        "enableAffectiveDialog": _bool,
    },
)
_ACTIVITY_DETECTION = _message(
    "RealtimeInputConfig.AutomaticActivityDetection",
    {
        "disabled": _bool,
        "startOfSpeechSensitivity": _enum(
            "StartSensitivity", "START_SENSITIVITY_UNSPECIFIED", "START_SENSITIVITY_HIGH", "START_SENSITIVITY_LOW"
        ),
        "endOfSpeechSensitivity": _enum(
            "EndSensitivity", "END_SENSITIVITY_UNSPECIFIED", "END_SENSITIVITY_HIGH", "END_SENSITIVITY_LOW"
        ),
        "prefixPaddingMs": _INT32,
        "silenceDurationMs": _INT32,
    },
)
_REALTIME_INPUT_CONFIG = _message(
    "RealtimeInputConfig",
    {
        "automaticActivityDetection": _ACTIVITY_DETECTION,
        "activityHandling": _enum(
            "ActivityHandling", "ACTIVITY_HANDLING_UNSPECIFIED", "START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION"
        ),
        "turnCoverage": _enum(
            "TurnCoverage",
            "TURN_COVERAGE_UNSPECIFIED",
            "TURN_INCLUDES_ONLY_ACTIVITY",
            "TURN_INCLUDES_ALL_INPUT",
            "TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO",
        ),
    },
)
_TRANSCRIPTION = _message("AudioTranscriptionConfig", {"languageCodes": _repeated(_string)})
_SETUP = _message(
    "BidiGenerateContentSetup",
    {
        "model": _string,
        "generationConfig": _GENERATION_CONFIG,
        "systemInstruction": _CONTENT,
        "tools": _repeated(_TOOL),
        "realtimeInputConfig": _REALTIME_INPUT_CONFIG,
        "sessionResumption": _message("SessionResumptionConfig", {"handle": _string}),
        "contextWindowCompression": _message(
            "ContextWindowCompressionConfig",
            {"triggerTokens": _INT64, "slidingWindow": _message("SlidingWindow", {"targetTokens": _INT64})},
        ),
        "inputAudioTranscription": _TRANSCRIPTION,
        "outputAudioTranscription": _TRANSCRIPTION,
        "proactivity": _message("ProactivityConfig", {"proactiveAudio": _bool}),
    },
)
_CLIENT_CONTENT = _message("BidiGenerateContentClientContent", {"turns": _repeated(_CONTENT), "turnComplete": _bool})
_REALTIME_INPUT = _message(
    "BidiGenerateContentRealtimeInput",
    {
        "mediaChunks": _repeated(_BLOB),
        "audio": _BLOB,
        "video": _BLOB,
        "text": _string,
        "activityStart": _message("ActivityStart", {}),
        "activityEnd": _message("ActivityEnd", {}),
        "audioStreamEnd": _bool,
    },
)
_FUNCTION_RESPONSE = _message(
    "FunctionResponse",
    {
        "id": _string,
        "name": _string,
        "response": _struct,
        "willContinue": _bool,
        "scheduling": _enum(
            "FunctionResponse.Scheduling", "SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT"
        ),
        "parts": _repeated(_struct),
    },
)
_TOOL_RESPONSE = _message("BidiGenerateContentToolResponse", {"functionResponses": _repeated(_FUNCTION_RESPONSE)})
_CLIENT_CHECKS: dict[str, _Check] = {
    "setup": _SETUP,
    "clientContent": _CLIENT_CONTENT,
    "realtimeInput": _REALTIME_INPUT,
    "toolResponse": _TOOL_RESPONSE,
}


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # about four characters a token


def _duration(seconds: float) -> str:
    """google.protobuf.Duration as JSON: seconds with "s", and 3, 6 or 9 decimals when fractional."""
    nanos = round(max(0.0, seconds) * 1e9)
    whole, frac = divmod(nanos, 1_000_000_000)
    if not frac:
        return f"{whole}s"
    digits = f"{frac:09d}"
    for keep in (3, 6):
        if digits[keep:] == "0" * (9 - keep):
            return f"{whole}.{digits[:keep]}s"
    return f"{whole}.{digits}s"


def _truncated(reason: str) -> str:
    """A close reason cut to what a WebSocket close frame carries."""
    data = reason.encode()
    return reason if len(data) <= MAX_REASON_BYTES else data[:MAX_REASON_BYTES].decode(errors="ignore")


def _without_zeros(value: Any) -> Any:
    """Proto3 JSON leaves out fields at their default: a zero count is absent, not 0."""
    if isinstance(value, dict):
        return {k: _without_zeros(v) for k, v in value.items() if v != 0 or isinstance(v, bool)}
    if isinstance(value, list):
        return [_without_zeros(v) for v in value]
    return value


# ---- audio -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _pcm24(text: str, pitch_hz: float) -> bytes:
    """The model's line as PCM16 LE at 24 kHz: the 8 kHz synthesis, linearly interpolated. Sample
    3k is the synthesis' sample k exactly, so the words' marks survive a decimation that keeps it."""
    pcm = audio.ulaw_decode(_speech(text, pitch_hz).audio).astype(np.float64)
    n = len(pcm)
    up = np.interp(np.arange(3 * n) / 3, np.arange(n), pcm)
    return np.round(up).astype("<i2").tobytes()


def _mime_rate(mime: str) -> tuple[str, int | None]:
    """``audio/pcm;rate=16000`` -> ("audio/pcm", 16000); the rate is None when not given."""
    kind, *params = (p.strip() for p in mime.split(";"))
    rate = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "rate" and value.strip().isdigit():
            rate = int(value)
    return kind.lower(), rate


# ---- the model's turns -------------------------------------------------------------------------
@dataclass(eq=False)
class _Planned:
    """Something the model will say: an answer, a given line, a tool's result."""

    kind: str  # "reply" (answers the caller; a newer caller line supersedes it), "line", "result"
    text: str
    ready: float  # loop time from which it may begin
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()  # functions it calls as it begins
    blocking: bool = False  # its calls hold its audio until their responses


@dataclass(eq=False)
class _Turn:
    """One model turn, from its first message to its turnComplete."""

    plan: _Planned
    speech: _Speech | None = None  # what it says; None while a blocking call holds it
    pcm: bytes = b""
    calls: list[str] = field(default_factory=list)  # ids of the calls it made
    waiting: bool = False  # a blocking call's responses are awaited
    started: float | None = None  # its first chunk went out: playback runs from here in real time
    sent: int = 0  # PCM bytes sent
    words_sent: int = 0
    generated: bool = False  # generationComplete sent

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (OUT_BYTES_PER_MS * 1000)


class GeminiSession:
    """Sans-I/O protocol state for one Gemini Live connection (times are seconds, any monotonic clock).

    ``handles`` is the server's resumption store, shared by every connection of one server.
    """

    def __init__(
        self, config: GeminiConfig, slog: GeminiSessionLog, handles: dict[str, ResumptionState] | None = None
    ) -> None:
        self.config, self.log = config, slog
        self.handles: dict[str, ResumptionState] = {} if handles is None else handles
        self.rng = random.Random(config.seed * 1_000_003 + slog.index)
        self.reply = config.reply or default_reply
        self.close_request: tuple[int, str] | None = None
        self.setup: dict[str, Any] = {}  # the setup, normalized (camelCase keys)
        self._events: list[dict[str, Any]] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self._now = 0.0
        self._setup_received = False
        self._t0: float | None = None  # setupComplete sent: session time 0
        self._session_started_at = 0.0  # the session's first setupComplete (earlier when resumed)
        self._deadline: float | None = None  # the connection closes then
        # output
        self._turn: _Turn | None = None
        self._queue: list[_Planned] = []
        self._pending: dict[str, dict[str, Any]] = {}  # call id -> its log record, awaiting a response
        self._cancelled: set[str] = set()
        self._waiting_text: str | None = None  # the last user text of clientContent, not yet answered
        # input: positions are bytes of the 8 kHz timeline, in each decimation phase
        self._in: tuple[bytearray, bytearray] = (bytearray(), bytearray())
        self._in_start = 0
        self._in_origin: int | None = None
        self._carry = b""  # PCM bytes short of a whole 16 kHz sample pair
        self._phase = 0  # the phase relay's upsampler kept the original samples at
        self._frames_to = 0
        self._processed_to = 0
        self._heard_s = 0.0  # caller audio heard, for usage
        self._region: int | None = None
        self._in_turn = False
        self._turn_start = 0
        self._speech_end = 0
        self._speech_ms = 0
        self._turn_speech_ms = 0
        self._silent_ms = 0
        self._turn_words: list[str] = []

    # ---- sans-I/O interface ----------------------------------------------------------------
    def connect(self, now: float) -> None:
        """The WebSocket is open; the client speaks first."""
        self._now = now

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one client message (a WebSocket frame)."""
        self.advance(now)
        if self.close_request:
            return
        try:
            kind, body = self._parse(data, now)
            if kind == "setup":
                self._on_setup(body, now)
            elif not self._setup_received:
                raise _Invalid(f"The first message must be setup, not {kind}.")
            elif self._t0 is None:
                self._early(kind, body)
            else:
                getattr(self, "_on_" + _snake(kind))(body, now)
        except _Invalid as e:
            self._fail(e, now)
        self.advance(now)

    def advance(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        self._now = max(self._now, now)
        while self._timers and self._timers[0][0] <= now and not self.close_request:
            due, _, fn = heapq.heappop(self._timers)
            fn(due)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers and not self.close_request else None

    def take_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def connection_lost(self) -> None:
        if self._turn is not None:  # logged as far as it played; nobody is left to tell
            self._drop_turn(self._now)
        for handle in self.log.handles:  # a handle works handle_ttl_s after its session ends
            state = self.handles.get(handle)
            if state is not None:
                state.expires_at = max(state.expires_at, self._now + self.config.handle_ttl_s)
        self._timers.clear()
        self._queue.clear()

    def close(self, code: int, reason: str, now: float) -> None:
        """Close the connection from the server's side (a limit, a fault)."""
        if self.close_request:
            return
        if self._turn is not None:
            self._drop_turn(now)
        self.close_request = (code, _truncated(reason))
        self._timers.clear()

    def go_away(self, now: float, time_left_s: float) -> None:
        """Send goAway now and close the connection ``time_left_s`` later."""
        if self._t0 is None or self.close_request:
            return
        end = now + time_left_s
        self._set_deadline(end, CONNECTION_LIMIT)
        self._send_go_away(now, end)

    def session_ms(self, now: float) -> int:
        """``now`` on the session timeline."""
        return round((now - self._t0) * 1000) if self._t0 is not None else 0

    # ---- helpers -----------------------------------------------------------------------------
    def _parse(self, data: str | bytes, now: float) -> tuple[str, Any]:
        """The message's one field (its camelCase name) and body."""
        if isinstance(data, bytes):
            self.log.received.append((now, "<binary>"))
            raise _Invalid("Binary frames are not supported: send each message as a JSON text frame.")
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.log.received.append((now, "<invalid json>"))
            raise _Invalid("Invalid JSON payload received. Unexpected token.") from None
        if not isinstance(msg, dict):
            self.log.received.append((now, "<not an object>"))
            raise _Invalid(f"Invalid JSON payload received. Expected an object, got {_shown(msg)}.")
        kinds = []
        for key in msg:
            kind = key if key in CLIENT_MESSAGES else _camel(key)
            if kind not in CLIENT_MESSAGES or (kind != key and _snake(kind) != key):
                self.log.received.append((now, f"<{key}>"))
                raise _unknown(key, "")
            if msg[key] is not None:
                kinds.append((kind, msg[key]))
        if len(kinds) != 1:
            self.log.received.append((now, "<" + "+".join(k for k, _ in kinds) + ">"))
            if not kinds:
                raise _Invalid("Invalid argument: the message sets none of " + ", ".join(CLIENT_MESSAGES) + ".")
            raise _Invalid(
                f"Invalid JSON payload received. Oneof field 'message_type' is already set. Cannot set '{kinds[1][0]}'"
            )
        kind, raw = kinds[0]
        body = _CLIENT_CHECKS[kind](raw, _snake(kind))
        self.log.received.append((now, (kind + "".join("." + k for k in body)) if kind == "realtimeInput" else kind))
        if kind == "setup" and isinstance(raw, dict):
            self.log.setup = copy.deepcopy(raw)
        return kind, body

    def _fail(self, e: _Invalid, now: float) -> None:
        if e.violation:
            self.log.violations.append(f"close {e.code}: {e.message}")
        self.close(e.code, e.message, now)

    def _violation(self, what: str) -> None:
        self.log.violations.append(what)

    def _emit(self, message: dict[str, Any]) -> None:
        self._events.append(_Message(message))

    def _content(self, **fields: Any) -> None:
        self._emit({"serverContent": fields})

    def _at(self, when: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def _id(self, n: int) -> str:
        return "".join(self.rng.choice(_ALPHABET) for _ in range(n))

    @property
    def _session_t0(self) -> float:
        assert self._t0 is not None
        return self._t0

    @property
    def _functions(self) -> dict[str, dict[str, Any]]:
        """The declared functions, by name."""
        return {fd["name"]: fd for tool in self.setup.get("tools", []) for fd in tool.get("functionDeclarations", [])}

    @property
    def _interrupts(self) -> bool:
        handling: str | None = self.setup.get("realtimeInputConfig", {}).get("activityHandling")
        return handling != "NO_INTERRUPTION"

    @property
    def _detection(self) -> dict[str, Any]:
        detection: dict[str, Any] = self.setup.get("realtimeInputConfig", {}).get("automaticActivityDetection", {})
        return detection

    @property
    def _manual(self) -> bool:
        """Automatic activity detection is off: the client marks the caller's turns."""
        return bool(self._detection.get("disabled"))

    @property
    def _silence_ms(self) -> int:
        return int(self._detection.get("silenceDurationMs") or self.config.silence_ms)

    @property
    def _onset_ms(self) -> int:
        return int(self._detection.get("prefixPaddingMs") or self.config.yield_ms)

    # ---- setup -------------------------------------------------------------------------------
    def _on_setup(self, setup: dict[str, Any], now: float) -> None:
        if self._setup_received:
            raise _Invalid("setup may be sent only once, as the first message.")
        self._check_setup(setup)
        self._setup_received = True
        self.setup = setup
        self.log.model = setup["model"]
        resumption = setup.get("sessionResumption") or {}
        if resumption.get("handle"):
            self._resume(resumption["handle"], now)
        if self.config.setup_delay_ms <= 0:
            self._complete_setup(now)
        else:
            self._at(now + self.config.setup_delay_ms / 1000, self._complete_setup)

    def _check_setup(self, setup: dict[str, Any]) -> None:
        """What the parser lets through but the service refuses."""
        model = setup.get("model")
        if not model:
            raise _Invalid("Invalid argument: setup.model is required (models/<name>).")
        name = model.removeprefix("models/")
        if not model.startswith("models/") or name not in MODELS:
            raise _Invalid(
                f"{model} is not found for API version v1beta, or is not supported for bidiGenerateContent. "
                "Call ListModels to see the list of available models and their supported methods.",
                1008,
            )
        generation = setup.get("generationConfig", {})
        modalities = generation.get("responseModalities") or ["AUDIO"]  # none: the default
        if modalities != ["AUDIO"]:
            raise _Invalid(
                f"Request contains an invalid argument: response modalities {modalities} are not supported; "
                'this model answers with ["AUDIO"] only.'
            )
        if name in MODELS_3_8:
            for key, what in (("thinkingConfig", "thinking_config"), ("enableAffectiveDialog", "affective dialog")):
                if key in generation:
                    raise _Invalid(f"Request contains an invalid argument: {what} is not supported by {name}.")
            if setup.get("proactivity", {}).get("proactiveAudio") is False:
                raise _Invalid(f"Request contains an invalid argument: proactive audio cannot be turned off on {name}.")
        voice = generation.get("speechConfig", {}).get("voiceConfig", {}).get("prebuiltVoiceConfig", {})
        if "voiceName" in voice and voice["voiceName"] not in VOICES:
            raise _Invalid(f"Request contains an invalid argument: voice {voice['voiceName']} is not available.")
        for part in setup.get("systemInstruction", {}).get("parts", []):
            if "text" not in part:
                raise _Invalid("Request contains an invalid argument: system_instruction parts must be text.")
        self._check_functions(setup)

    @staticmethod
    def _check_functions(setup: dict[str, Any]) -> None:
        seen: set[str] = set()
        for t, tool in enumerate(setup.get("tools", [])):
            for f, fd in enumerate(tool.get("functionDeclarations", [])):
                path = f"setup.tools[{t}].function_declarations[{f}].name"
                name = fd.get("name", "")
                if not _FUNCTION_NAME.match(name):
                    raise _Invalid(
                        f"Invalid argument: {path}: {name!r} is not a valid function name (a letter or _, then "
                        "letters, digits, _ . : -, at most 64)."
                    )
                if name in seen:
                    raise _Invalid(f"Invalid argument: {path}: duplicate function name {name!r}.")
                seen.add(name)

    def _resume(self, handle: str, now: float) -> None:
        state = self.handles.get(handle)
        if state is None:
            raise _Invalid(UNKNOWN_HANDLE)
        compressed = "contextWindowCompression" in self.setup
        over = not compressed and now >= state.session_started_at + self.config.session_s
        if now >= state.expires_at or over:
            raise _Invalid(EXPIRED_HANDLE, violation=False)
        self.log.resumed_from = handle
        self.log.turns = list(state.turns)
        self._session_started_at = state.session_started_at

    def _complete_setup(self, now: float) -> None:
        self._t0 = self.log.setup_complete_at = now
        if self.log.resumed_from is None:
            self._session_started_at = now
        self._emit({"setupComplete": {}})
        end, reason = now + self.config.connection_s, CONNECTION_LIMIT
        if "contextWindowCompression" not in self.setup:
            session_end = self._session_started_at + self.config.session_s
            if session_end < end:
                end, reason = session_end, SESSION_LIMIT
        self._set_deadline(end, reason)
        self._at(max(now, end - self.config.go_away_lead_s), lambda t: self._send_go_away(t, end))
        if self.config.deadline_s is not None:
            self._at(now + self.config.deadline_s, lambda t: self.close(1011, "Deadline expired", t))

    # ---- limits and goAway -------------------------------------------------------------------
    def _set_deadline(self, end: float, reason: str) -> None:
        self._deadline = end

        def expire(t: float) -> None:
            if self._deadline == end:
                self.close(1000, reason, t)

        self._at(end, expire)

    def _send_go_away(self, now: float, end: float) -> None:
        if self._deadline != end:  # superseded by an earlier goAway
            return
        left = _duration(end - now)
        self.log.go_aways.append((now, left))
        self._emit({"goAway": {"timeLeft": left}})

    # ---- before setupComplete ----------------------------------------------------------------
    def _early(self, kind: str, body: dict[str, Any]) -> None:
        """A message between setup and setupComplete: the service is not ready, so it is dropped."""
        if kind == "realtimeInput":
            blobs = len(body.get("mediaChunks", [])) + ("audio" in body)
            self.log.audio_chunks += blobs
            self.log.audio_before_setup_complete += blobs
        self._violation(f"{kind} sent before setupComplete: dropped (wait for setupComplete)")

    # ---- realtimeInput -----------------------------------------------------------------------
    def _on_realtime_input(self, body: dict[str, Any], now: float) -> None:
        for i, blob in enumerate(body.get("mediaChunks", [])):
            self._hear_blob(blob, f"realtime_input.media_chunks[{i}]", now)
        if "audio" in body:
            self._hear_blob(body["audio"], "realtime_input.audio", now)
        if "video" in body:
            self._violation("realtime_input.video sent: this simulator hears audio only (ignored)")
        if "activityStart" in body:
            self._activity_start(now)
        if "activityEnd" in body:
            self._activity_end(now)
        if body.get("audioStreamEnd") and self._in_turn and not self._manual:
            self._at(self._media_now(now), self._flush_turn)
        if "text" in body:
            self._on_text(body["text"], now)

    def _hear_blob(self, blob: dict[str, Any], path: str, now: float) -> None:
        self.log.audio_chunks += 1
        mime = blob.get("mimeType")
        if not mime:
            self._violation(f"{path}.mime_type missing: the audio was dropped (send audio/pcm;rate=16000)")
            return
        kind, rate = _mime_rate(mime)
        if kind != "audio/pcm":
            self._violation(f"{path}.mime_type {mime!r}: not PCM audio, dropped (send audio/pcm;rate=16000)")
            return
        if rate is None:
            self._violation(f"{path}.mime_type {mime!r} names no rate (send audio/pcm;rate=16000)")
        elif rate != INPUT_RATE:
            self._violation(f"{path}.mime_type {mime!r}: the audio was dropped (relay sends 16 kHz)")
            return
        data = blob.get("data", b"")
        if len(data) % 2:
            self._violation(f"{path}.data: {len(data)} bytes is not whole 16-bit samples; dropped")
            return
        self._hear_pcm(data, now)

    def _hear_pcm(self, raw: bytes, now: float) -> None:
        """Decimate 16 kHz to 8 kHz in both phases and schedule the 20 ms frames on the media clock."""
        if self._in_origin is None:
            self._in_origin = self._in_start = self._frames_to = self._processed_to = self.session_ms(now) * 8
        data = self._carry + raw
        usable = len(data) - len(data) % 4
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        for phase in (0, 1):
            self._in[phase].extend(audio.ulaw_encode(samples[phase::2]))
        end = self._in_start + len(self._in[0])
        t0 = self._session_t0
        while self._frames_to + FRAME_BYTES <= end:
            pos = self._frames_to
            self._frames_to += FRAME_BYTES
            due = t0 + (pos + FRAME_BYTES) / SAMPLE_RATE
            if due <= now:
                self._frame(pos, now)
            else:  # audio ahead of real time is heard when its time comes
                self._at(due, functools.partial(self._frame, pos))

    def _media_now(self, now: float) -> float:
        """When the audio received so far has all been heard."""
        return max(now, self._session_t0 + self._frames_to / SAMPLE_RATE)

    def _in_bytes(self, phase: int, start: int, end: int) -> bytes:
        return bytes(self._in[phase][start - self._in_start : end - self._in_start])

    def _frame(self, pos: int, now: float) -> None:
        """Hear one 20 ms frame of the caller: words (runs of sound) and turns (speech, silence)."""
        self._processed_to = pos + FRAME_BYTES
        self._heard_s += FRAME_MS / 1000
        level = audio.frame_energy_dbfs(self._in_bytes(self._phase, pos, pos + FRAME_BYTES))
        if level >= QUIET_DBFS:
            if self._region is None:
                self._region = pos
        elif self._region is not None:
            self._hear_region(self._region, pos + FRAME_BYTES, now)
            self._region = None
        if level > VAD_DBFS:
            self._speech_ms += FRAME_MS
            self._silent_ms = 0
            self._speech_end = pos + FRAME_BYTES
            if not self._manual:
                if not self._in_turn:
                    self._in_turn, self._turn_start, self._turn_speech_ms = True, pos, 0
                if self._speech_ms >= self._onset_ms:
                    self._barge_in(now)
            self._turn_speech_ms += FRAME_MS
        else:
            self._speech_ms = 0
            if self._in_turn and not self._manual:
                self._silent_ms += FRAME_MS
                if self._silent_ms >= self._silence_ms:
                    self._flush_turn(now)
        self._trim()

    def _hear_region(self, start: int, end: int, now: float) -> None:
        """A run of sound ended: read its words in the phase that carries them, and transcribe each."""
        first = max(start - FRAME_BYTES, self._in_start)  # a frame before: a word's first samples are faint
        heard: list[tuple[int, str]] = []
        for phase in (self._phase, 1 - self._phase):
            heard = audio.words_heard(self._in_bytes(phase, first, end))
            if heard:
                self._phase = phase
                break
        if not heard:
            return
        data = self._in_bytes(self._phase, first, end)
        spans = _word_spans(data, [(p, p + _mark_bits(w)) for p, w in heard])
        for (_, word), (_, s1) in zip(heard, spans, strict=True):
            text = word if not self._turn_words else " " + word
            self._turn_words.append(word)
            heard_at = max(now, self._session_t0 + (first + s1) / SAMPLE_RATE)
            self._at(heard_at + self.config.transcription_delay_ms / 1000, functools.partial(self._input_text, text))

    def _input_text(self, text: str, now: float) -> None:
        if "inputAudioTranscription" in self.setup:
            self._content(inputTranscription={"text": text})

    def _flush_turn(self, now: float) -> None:
        """The caller's turn ends: the words still being heard are read, then the turn is answered."""
        if self._region is not None:
            self._hear_region(self._region, self._processed_to, now)
            self._region = None
        self._end_caller_turn(now)

    def _end_caller_turn(self, now: float) -> None:
        if not self._in_turn:
            return
        self._in_turn = False
        self._speech_ms = self._silent_ms = 0
        words, self._turn_words = self._turn_words, []
        if words:
            transcript = " ".join(words)
        elif self._turn_speech_ms < self._onset_ms:
            self._begin_next(now)
            return  # a cough, a click: too short to be a line, as it was too short to interrupt
        else:  # speech without marks (a recording): the length of it, as audio.transcribe() says
            transcript = f"[speech {(self._speech_end - self._turn_start) / SAMPLE_RATE:.1f} s]"
            self._at(now + self.config.transcription_delay_ms / 1000, functools.partial(self._input_text, transcript))
        self._answer(transcript, now)
        self._begin_next(now)

    def _trim(self) -> None:
        keep = self._processed_to - FRAME_BYTES if self._region is None else self._region - FRAME_BYTES
        drop = keep - self._in_start
        if drop > 65536:
            for buf in self._in:
                del buf[:drop]
            self._in_start = keep

    def _activity_start(self, now: float) -> None:
        if not self._manual:
            raise _Invalid(
                "Invalid argument: activity_start is accepted only when automatic activity detection is disabled."
            )
        self._in_turn, self._turn_start, self._turn_speech_ms = True, self._frames_to, 0
        self._barge_in(now)

    def _activity_end(self, now: float) -> None:
        if not self._manual:
            raise _Invalid(
                "Invalid argument: activity_end is accepted only when automatic activity detection is disabled."
            )
        if not self._in_turn:
            self._violation("realtime_input.activity_end without activity_start (ignored)")
            return
        self._at(self._media_now(now), self._flush_turn)

    # ---- what the model says -----------------------------------------------------------------
    def _answer(self, transcript: str, now: float) -> None:
        """A user line (the caller's, or text): the context grows and the model plans its answer."""
        history = list(self.log.turns)
        self.log.turns.append(("user", transcript))
        self._queue = [p for p in self._queue if p.kind != "reply"]  # a newer line supersedes an answer not begun
        self._plan(self._plan_answer(transcript, history, now + self.config.think_ms / 1000))

    def _plan_answer(self, transcript: str, history: list[tuple[str, str]], ready: float) -> _Planned:
        c = self.config
        said = {w.strip(".,!?;:\"'()").lower() for w in transcript.split()}
        functions = self._functions

        def calling(text: str, name: str, args: dict[str, Any]) -> _Planned:
            return _Planned("reply", text, ready, ((name, args),), self._blocking(functions[name]))

        if "end_call" in functions and said & {w.lower() for w in c.hangup_words}:
            return calling(c.farewell, "end_call", {})
        if "get_weather" in functions and "weather" in said:
            return calling(WEATHER_ACK, "get_weather", dict(WEATHER_ARGS))
        summary = {"summary": f"Caller says: {transcript}"}
        if "escalate" in functions and said & set(c.escalate_words):
            return calling(c.escalating, "escalate", summary)
        if "transfer_call" in functions and said & set(c.transfer_words):
            args = {**tool_arguments(functions["transfer_call"].get("parameters"), transcript), **summary}
            return calling(c.transferring, "transfer_call", args)
        for name, fd in functions.items():
            cues = {part.lower() for part in name.split("_") if len(part) >= 3}
            if name not in BUILT_IN_TOOLS and said & cues:
                return calling(c.using_tool, name, tool_arguments(fd.get("parameters"), transcript))
        return _Planned("reply", self.reply(transcript, history), ready)

    def _blocking(self, fd: dict[str, Any]) -> bool:
        behavior = fd.get("behavior", "UNSPECIFIED")
        if behavior == "UNSPECIFIED":  # 3.8 made NON_BLOCKING the default
            return self.log.model.removeprefix("models/") not in MODELS_3_8
        return bool(behavior == "BLOCKING")

    def _plan(self, plan: _Planned, *, first: bool = False) -> None:
        if not plan.text.split() and not plan.calls:
            return
        if first:
            self._queue.insert(0, plan)
        else:
            self._queue.append(plan)
        self._at(plan.ready, self._begin_next)

    def _begin_next(self, now: float) -> None:
        """Begin the next planned turn, if the model is free and the caller is not talking."""
        if self._turn is not None or not self._queue or self._in_turn or self._t0 is None:
            return
        plan = self._queue[0]
        if plan.ready > now:
            return
        self._queue.pop(0)
        turn = self._turn = _Turn(plan)
        if plan.blocking:
            turn.waiting = True
            self._call(turn, now)
        else:
            self._speak(turn, plan.text, now)

    def _speak(self, turn: _Turn, text: str, now: float) -> None:
        turn.waiting = False
        if not text.split():
            self._complete(turn, now)
            return
        turn.speech = _speech(text, self.config.pitch_hz)
        turn.pcm = _pcm24(text, self.config.pitch_hz)
        turn.started = now
        self._send_chunk(turn, now)

    def _send_chunk(self, turn: _Turn, now: float) -> None:
        """Send the turn's next chunk of audio (faster than real time), its words' transcripts,
        and generationComplete after the last one."""
        if self._turn is not turn or turn.generated:
            return
        assert turn.speech is not None and turn.started is not None
        size = self.config.chunk_ms * OUT_BYTES_PER_MS
        chunk = turn.pcm[turn.sent : turn.sent + size]
        first = turn.sent == 0
        turn.sent += len(chunk)
        data = binascii.b2a_base64(chunk, newline=False).decode()
        content: dict[str, Any] = {"modelTurn": {"parts": [{"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}]}}
        words = self._words_out(turn)
        last = turn.sent >= len(turn.pcm)
        if self.config.bundle:
            if words and "outputAudioTranscription" in self.setup:
                content["outputTranscription"] = {"text": "".join(words)}
            if last:
                content["generationComplete"] = True
            self._emit({"serverContent": content})
        else:
            self._emit({"serverContent": content})
            for text in words:
                if "outputAudioTranscription" in self.setup:
                    self._content(outputTranscription={"text": text})
            if last:
                self._content(generationComplete=True)
        if first and turn.plan.calls and not turn.calls:  # a NON_BLOCKING call goes with its line's audio
            self._call(turn, now)
        if last:
            turn.generated = True
            self._at(turn.started + turn.duration_s, functools.partial(self._complete_if_current, turn))
        else:
            self._at(now + self.config.chunk_interval_ms / 1000, functools.partial(self._send_chunk, turn))

    def _words_out(self, turn: _Turn) -> list[str]:
        """The words whose audio is all sent, with their separating spaces."""
        assert turn.speech is not None
        out = []
        speech = turn.speech
        while turn.words_sent < len(speech.words) and speech.spans[turn.words_sent][1] * OUT_PER_8K <= turn.sent:
            word = speech.words[turn.words_sent]
            out.append(word if turn.words_sent == 0 else " " + word)
            turn.words_sent += 1
        return out

    def _played(self, turn: _Turn, now: float) -> int:
        """PCM bytes of the turn heard by ``now``, playback running in real time from its first chunk."""
        if turn.started is None:
            return 0
        played = int((now - turn.started) * OUT_BYTES_PER_MS * 1000)
        return min(turn.sent, max(0, played - played % 2))

    def _complete_if_current(self, turn: _Turn, now: float) -> None:
        if self._turn is turn:
            self._complete(turn, now)

    def _complete(self, turn: _Turn, now: float) -> None:
        """The answer has played out: turnComplete."""
        self._turn = None
        usage = self._usage(turn)
        self._log_spoken(turn, self._played(turn, now))
        self._turn_complete(usage, {})
        self._offer_handle(now)
        self._begin_next(now)

    def _barge_in(self, now: float) -> None:
        """Caller speech while the model's turn is still playing (or waiting on a blocking call)."""
        turn = self._turn
        if turn is None or not self._interrupts:
            return
        playing = turn.started is not None and now < turn.started + turn.duration_s
        if playing or turn.waiting:
            self._interrupt(turn, now)

    def _interrupt(self, turn: _Turn, now: float) -> None:
        """Stop the turn where playback is: interrupted, cancellations, turnComplete."""
        self._turn = None
        played = self._played(turn, now)
        usage = self._usage(turn)
        self._log_spoken(turn, played)
        self.log.interruptions.append((now, played // OUT_BYTES_PER_MS))
        if not self.config.bundle:
            self._content(interrupted=True)
        cancelled = [cid for cid in turn.calls if cid in self._pending]
        if cancelled:
            for cid in cancelled:
                self._pending.pop(cid)["cancelled_at"] = now
                self._cancelled.add(cid)
            self._emit({"toolCallCancellation": {"ids": cancelled}})
        self._turn_complete(usage, {"interrupted": True} if self.config.bundle else {})
        self._begin_next(now)

    def _drop_turn(self, now: float) -> None:
        """The connection ends mid-turn: log what played, send nothing."""
        turn, self._turn = self._turn, None
        if turn is not None:
            self._log_spoken(turn, self._played(turn, now))

    def _log_spoken(self, turn: _Turn, played: int) -> None:
        speech = turn.speech
        if speech is None or turn.started is None:
            return
        heard8 = played // OUT_PER_8K
        words: list[str] = []
        for word, mark_end in zip(speech.words, speech.mark_ends, strict=True):
            if mark_end > heard8:
                break
            words.append(word)
        text = " ".join(words)
        start = self.session_ms(turn.started)
        self.log.spoken.append((text, start, start + math.ceil(played / OUT_BYTES_PER_MS)))
        if text:
            self.log.turns.append(("model", text))

    def _turn_complete(self, usage: dict[str, Any], extra: dict[str, Any]) -> None:
        self.log.usage_sent.append(usage)
        self._emit({"serverContent": {**extra, "turnComplete": True}, "usageMetadata": usage})

    def _usage(self, turn: _Turn) -> dict[str, Any]:
        """Tokens by modality: the whole context in (instructions, text turns, the caller's audio so
        far), the turn's generated audio out."""
        instructions = " ".join(p.get("text", "") for p in self.setup.get("systemInstruction", {}).get("parts", []))
        text_in = _tokens(instructions) + sum(_tokens(text) for _, text in self.log.turns)
        audio_in = round(self._heard_s * AUDIO_TOKENS_PER_S)
        audio_out = round(turn.sent / (OUT_BYTES_PER_MS * 1000) * AUDIO_TOKENS_PER_S)
        usage = {
            "promptTokenCount": text_in + audio_in,
            "responseTokenCount": audio_out,
            "totalTokenCount": text_in + audio_in + audio_out,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": text_in},
                {"modality": "AUDIO", "tokenCount": audio_in},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_out}],
        }
        result: dict[str, Any] = _without_zeros(usage)
        return result

    # ---- session resumption ------------------------------------------------------------------
    def _offer_handle(self, now: float) -> None:
        """After a turn, when nothing is pending, a new handle for the conversation so far."""
        if "sessionResumption" not in self.setup or self._turn or self._pending or self._queue or self.close_request:
            return
        handle = self._id(48)
        self.handles[handle] = ResumptionState(
            turns=list(self.log.turns),
            issued_at=now,
            expires_at=now + self.config.handle_ttl_s,
            session_started_at=self._session_started_at,
            session_index=self.log.index,
        )
        self.log.handles.append(handle)
        self._emit({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    # ---- text --------------------------------------------------------------------------------
    def _on_client_content(self, body: dict[str, Any], now: float) -> None:
        """Turns appended to the context. On 3.x models this alone starts no answer (BACKENDS §3.8
        pitfall 3), but it cuts off the model's current answer."""
        if self._turn is not None and self._turn.started is not None and self._interrupts:
            self._interrupt(self._turn, now)
        for i, content in enumerate(body.get("turns", [])):
            role = content.get("role", "user")
            if role not in ("user", "model"):
                raise _Invalid(
                    f"Invalid argument: client_content.turns[{i}].role must be 'user' or 'model', not {role!r}."
                )
            text = " ".join(p["text"] for p in content.get("parts", []) if "text" in p)
            self.log.turns.append((role, text))
            self._waiting_text = text if role == "user" else None

    def _on_text(self, text: str, now: float) -> None:
        """``realtimeInput.text``: a user line, answered. A blank one (the nudge relay sends after
        clientContent) starts the answer to the last user text of clientContent."""
        if text.strip():
            self.log.turns.append(("user", text))
            line = text
        elif self._waiting_text is not None:
            line = self._waiting_text
        else:
            return
        self._waiting_text = None
        ready = now + self.config.think_ms / 1000
        say, keys = SAY.match(line), PRESSED.search(line)
        if say:
            self._plan(_Planned("line", say.group(1).strip(), ready))
        elif keys:
            self._plan(_Planned("line", "You pressed " + " ".join(keys.group(1)), ready))
        else:
            history = self.log.turns[:-1]
            self._queue = [p for p in self._queue if p.kind != "reply"]
            self._plan(self._plan_answer(line, history, ready))
        self._begin_next(now)

    # ---- tools -------------------------------------------------------------------------------
    def _call(self, turn: _Turn, now: float) -> None:
        """Send the turn's function calls."""
        calls = []
        for name, args in turn.plan.calls:
            call_id = f"function-call-{self.rng.getrandbits(63)}"
            record: dict[str, Any] = {
                "id": call_id,
                "name": name,
                "args": args,
                "blocking": turn.plan.blocking,
                "sent_at": now,
                "response": None,
                "answered_at": None,
                "cancelled_at": None,
            }
            self.log.tool_calls.append(record)
            self._pending[call_id] = record
            turn.calls.append(call_id)
            calls.append({"id": call_id, "name": name, "args": args})
        self._emit({"toolCall": {"functionCalls": calls}})

    def _on_tool_response(self, body: dict[str, Any], now: float) -> None:
        for i, response in enumerate(body.get("functionResponses", [])):
            self._function_response(response, f"tool_response.function_responses[{i}]", now)

    def _function_response(self, response: dict[str, Any], path: str, now: float) -> None:
        call_id = response.get("id")
        if not call_id:
            self._violation(f"{path}.id missing: the response matches no call (ignored)")
            return
        if call_id in self._cancelled:
            return  # a response racing its cancellation: dropped, as the service does
        record = self._pending.get(call_id)
        if record is None:
            self._violation(f"{path}.id {call_id!r} matches no pending function call (ignored)")
            return
        if response.get("name") != record["name"]:
            self._violation(f"{path}.name {response.get('name')!r} is not the call's name {record['name']!r}")
        result = response.get("response", {})
        record["response"], record["answered_at"] = result, now
        record["scheduling"] = response.get("scheduling", "WHEN_IDLE")
        if response.get("willContinue"):
            return  # more results to come for this call
        del self._pending[call_id]
        line = self._result_line(record["name"], result)
        turn = self._turn
        ready = now + self.config.think_ms / 1000
        if turn is not None and turn.waiting and call_id in turn.calls:
            if not any(cid in self._pending for cid in turn.calls):  # every blocking call answered
                self._at(ready, functools.partial(self._speak_result, turn, line or turn.plan.text))
            return
        scheduling = record["scheduling"]
        if scheduling == "SILENT":
            return
        if scheduling == "INTERRUPT":
            if turn is not None and turn.started is not None:
                self._interrupt(turn, now)
            self._plan(_Planned("result", line, ready), first=True)
        else:
            self._plan(_Planned("result", line, ready))
        self._offer_handle(now)

    def _speak_result(self, turn: _Turn, text: str, now: float) -> None:
        if self._turn is turn:
            self._speak(turn, text, now)

    @staticmethod
    def _result_line(name: str, response: dict[str, Any]) -> str:
        """What the model says about a function's result ("" for end_call: the farewell was said)."""
        if name == "end_call":
            return ""
        if "error" in response:
            return TOOL_FAILED
        value = response.get("output", response.get("result"))
        if name == "get_weather":
            text = value if isinstance(value, str) else orjson.dumps(value if value is not None else response).decode()
            return "The weather is " + text[:40]
        said = response.get("say") or (value.get("say") if isinstance(value, dict) else value)
        return said if isinstance(said, str) and said.strip() else "Done."


class GeminiLive(SimulatorShell):
    """The asyncio/WebSocket shell: serves ``GeminiSession`` on loopback at ``GEMINI_PATH``."""

    def __init__(self, config: GeminiConfig | None = None) -> None:
        self.config = config or GeminiConfig()
        self.rejected: list[tuple[int, str]] = []  # (HTTP status, request path) of refused handshakes
        self.handles: dict[str, ResumptionState] = {}  # every resumption handle issued, by handle
        self._server = SessionServer("gemini live", GEMINI_PATH, self._open, self._process_request)
        self.sessions: list[GeminiSessionLog] = self._server.sessions

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        c = self.config
        if min(c.chunk_ms, c.chunk_interval_ms, c.yield_ms, c.silence_ms) <= 0:
            raise ValueError("chunk_ms, chunk_interval_ms, yield_ms and silence_ms must be positive")
        if min(c.connection_s, c.session_s, c.handle_ttl_s) <= 0 or c.go_away_lead_s < 0:
            raise ValueError("connection_s, session_s and handle_ttl_s must be positive, go_away_lead_s not negative")
        await self._server.start(host, port)

    def go_away(self, session: GeminiSessionLog, time_left_s: float) -> None:
        """Make a running session send goAway now and close its connection ``time_left_s`` later."""
        self._server.act(session, lambda core, now: core.go_away(now, time_left_s))

    async def close_with(
        self,
        session: GeminiSessionLog,
        code: int = 1011,
        reason: str = "Internal error occurred.",
        timeout: float = 5.0,
    ) -> None:
        """End one connection from the service's side with ``code`` and ``reason``, as Google's
        faults do (1011 "Internal error occurred.", "Deadline expired"). Returns once it is closed.

        Raises:
            TimeoutError: it did not close within ``timeout`` seconds.
        """
        self._server.act(session, lambda core, now: core.close(code, reason, now))
        await self.wait_closed(session, timeout)

    def _open(self, ws: ServerConnection, now: float) -> tuple[GeminiSessionLog, GeminiSession]:
        assert ws.request is not None
        path = urllib.parse.urlsplit(ws.request.path).path
        slog = GeminiSessionLog(index=len(self.sessions), path=path, opened_at=now)
        return slog, GeminiSession(self.config, slog, self.handles)

    def _reject(self, connection: ServerConnection, request: Request, code: int, status: str, message: str) -> Response:
        self.rejected.append((code, urllib.parse.urlsplit(request.path).path))
        body = orjson.dumps({"error": {"code": code, "message": message, "status": status}}).decode()
        response = connection.respond(code, body)
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path != GEMINI_PATH:
            return self._reject(connection, request, 404, "NOT_FOUND", f"Method not found: {url.path}")
        query = urllib.parse.parse_qs(url.query)
        key = request.headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        if not key:
            return self._reject(
                connection,
                request,
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential: send the API key in the "
                "x-goog-api-key header or the key query parameter.",
            )
        if self.config.api_key is not None and key != self.config.api_key:
            return self._reject(
                connection, request, 400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
        return None
