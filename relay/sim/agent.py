"""A protocol-exact simulated OpenAI Realtime (GA) server on loopback.

It powers ``relay demo``, the benchmarks and the integration tests. It speaks the GA wire
protocol (``/shared/PROTOCOLS.md`` §2) and enforces the rules the real service enforces: the
audio format is what ``session.updated`` last confirmed, truncates cannot pass the audio
produced, the beta shape is refused with close code 4000, and so on. Every client mistake is
recorded in ``SessionLog.violations``.

Two layers, in the style of websockets' sans-I/O design:

* ``RealtimeSession`` is pure protocol state. It takes client messages and the current time
  (``receive``/``advance``), queues server events (``take_events``) and says when it next needs
  the clock (``next_deadline``). It never sleeps or touches a socket.
* ``RealtimeAgent`` is the asyncio shell: one ``RealtimeSession`` per WebSocket connection.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import functools
import heapq
import logging
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

from relay.audio_format import FRAME_BYTES, SAMPLE_RATE
from relay.backends import NOTE_PREFIX
from relay.models import REASONING_EFFORTS
from relay.sim import audio
from relay.sim.serving import SessionServer, SimulatorShell, json_error_response

__all__ = ["AgentConfig", "RealtimeAgent", "RealtimeSession", "SessionLog", "default_reply"]

log = logging.getLogger(__name__)

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
BETA_SESSION_FIELDS = (
    "input_audio_format",
    "output_audio_format",
    "modalities",
    "voice",
    "input_audio_transcription",
    "turn_detection",
    "max_response_output_tokens",
)
SESSION_FIELDS = {
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "reasoning",
}
READ_ONLY_FIELDS = {"id", "object", "expires_at"}  # echoed from session.created; ignored
AUDIO_FIELDS = {
    "input": {"format", "transcription", "noise_reduction", "turn_detection"},
    "output": {"format", "voice", "speed"},
}
CLIENT_FIELDS = {  # allowed top-level fields per client event, besides type and event_id
    "session.update": {"session"},
    "input_audio_buffer.append": {"audio"},
    "input_audio_buffer.commit": set(),
    "input_audio_buffer.clear": set(),
    "conversation.item.create": {"item", "previous_item_id"},
    "conversation.item.truncate": {"item_id", "content_index", "audio_end_ms"},
    "conversation.item.delete": {"item_id"},
    "conversation.item.retrieve": {"item_id"},
    "response.create": {"response"},
    "response.cancel": {"response_id"},
    "output_audio_buffer.clear": set(),
}
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}
MAX_APPEND_BYTES = 15 * 1024 * 1024
_ALPHABET = string.ascii_letters + string.digits
_SAY_EXACTLY = re.compile(r"(?is)^\s*say exactly[^:]*:\s*(.+)$")


def default_reply(transcript: str, history: list[tuple[str, str]]) -> str:
    """``"You said: "`` plus the first 8 words heard, or an apology when nothing was heard."""
    words = transcript.split()
    return "You said: " + " ".join(words[:8]) if words else "Sorry, I did not catch that."


TOOL_FAILED = "Sorry, I could not do that just now."
BUILT_IN_TOOLS = frozenset({"end_call", "escalate", "transfer_call"})


def _output_line(item: _Item) -> str | None:
    """What the model says about a tool's output: its ``say`` (or its result's), an apology for
    an ``error``; None when the output says nothing to pass on."""
    try:
        output = orjson.loads(item.extra.get("output", ""))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(output, dict):
        return None
    result = output.get("result")
    said = output.get("say") or (result.get("say") if isinstance(result, dict) else result)
    if isinstance(said, str) and said:
        return said
    if "error" in output:
        return TOOL_FAILED
    return "Done." if "result" in output else None


def tool_arguments(schema: object, transcript: str) -> dict[str, Any]:
    """Arguments a model would give a tool from what the caller said: each property of the schema
    filled from the words (a number for a number, the words for a string, the first of an enum)."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    numbers = [int(w) for w in re.findall(r"\d+", transcript)]
    out: dict[str, Any] = {}
    for name, declared in (properties or {}).items():
        spec = declared if isinstance(declared, dict) else {}
        kind, choices = spec.get("type"), spec.get("enum")
        if isinstance(choices, list) and choices:
            out[name] = next((c for c in choices if str(c).lower() in transcript.lower()), choices[0])
        elif kind in ("integer", "number"):
            out[name] = numbers[0] if numbers else 2
        elif kind == "boolean":
            out[name] = True
        else:
            out[name] = transcript
    return out


@dataclass(frozen=True)
class AgentConfig:
    think_ms: int = 300  # end of user speech (speech_stopped) -> first audio delta
    chunk_ms: tuple[int, int] = (40, 200)  # audio delta sizes, drawn per delta
    realtime_factor: float = 4.0  # deltas come this many times faster than real time
    transcription_delay_ms: int = 150  # input transcription completes this long after the commit
    session_updated_delay_ms: int = 0  # extra delay before session.updated
    pitch_hz: float = 210.0
    seed: int = 0
    reply: Callable[[str, list[tuple[str, str]]], str] | None = None
    max_session_s: float = 3600.0  # the GA cap: close 1001 when reached
    # A caller line with one of these words gets the farewell, then a call of the session's
    # ``end_call`` tool (when it offers one), as a model told to hang up after goodbye does.
    hangup_words: tuple[str, ...] = ("goodbye", "bye")
    farewell: str = "Thank you for calling. Goodbye!"
    # A caller line with one of these words, on a session offering ``escalate``, gets this line
    # and a call of it with the line's words as the summary, as a model judging a matter urgent.
    escalate_words: tuple[str, ...] = ("urgent", "emergency")
    escalating: str = "Let me reach who is on call."
    # A caller line with one of these words, on a session offering ``transfer_call``, gets this
    # line and a call of it (to the target named in the line, else the first).
    transfer_words: tuple[str, ...] = ("transfer", "human", "person")
    transferring: str = "Let me put you through."
    # A caller line with a word of one of the session's other tools' names gets this line and a
    # call of that tool, its arguments filled from the line (``tool_arguments``).
    using_tool: str = "One moment."
    # Answer every session.update with this error (code, message) instead of session.updated, as
    # the service does for a session it will not run (a model the key may not use, no quota).
    session_error: tuple[str, str] | None = None
    # A reasoning model's preamble (BACKENDS §5.4): each spoken answer is two message items in
    # one response, this line ("Let me check that.") first, then the answer. Empty: one item.
    preamble: str = ""


@dataclass(eq=False)
class SessionLog:
    """What happened on one connection; times are ``loop.time()``."""

    index: int = 0
    path: str = ""
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    session_updated_at: float | None = None  # first session.updated sent
    first_append_at: float | None = None
    appends: int = 0
    appends_before_session_updated: int = 0
    received: list[tuple[float, str]] = field(default_factory=list)
    sent: list[tuple[float, str]] = field(default_factory=list)
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    truncates: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)
    session_config: dict[str, Any] = field(default_factory=dict)
    # The usage this session reported, as sent: each response.done's, each transcription's.
    response_usage: list[dict[str, Any]] = field(default_factory=list)
    transcription_usage: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class _ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None, *, violation: bool = True):
        super().__init__(message)
        self.code, self.message, self.param, self.violation = code, message, param, violation


@dataclass(eq=False)
class _Item:
    id: str
    type: str = "message"
    role: str | None = "user"
    status: str = "completed"
    content: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # call_id, output, ...
    text: str = ""  # user transcript / input text
    transcribed: bool = False
    audio_ms: int = 0  # the caller's audio of a committed input item
    # assistant audio
    has_audio: bool = False
    words: list[str] = field(default_factory=list)
    words_sent: int = 0
    keep_words: int | None = None
    bpm: int = 8  # bytes per ms of the output format
    total_bytes: int = 0
    sent_bytes: int = 0  # audio produced so far (after truncation: the truncated length)

    def generated(self) -> str:
        return " ".join(self.words[: self.words_sent])

    def kept_text(self) -> str:
        if not self.has_audio:
            return self.text
        n = self.words_sent if self.keep_words is None else min(self.keep_words, self.words_sent)
        return " ".join(self.words[:n])

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "message":
            out["role"] = self.role
            if self.has_audio:
                out["content"] = [{"type": "output_audio", "transcript": self.generated()}] if self.words_sent else []
            elif self.content and self.content[0].get("type") == "input_audio" and "audio" not in self.content[0]:
                out["content"] = [{"type": "input_audio", "transcript": self.text if self.transcribed else None}]
            else:
                out["content"] = copy.deepcopy(self.content)
        out.update(self.extra)
        return out


@dataclass(eq=False)
class _Response:
    id: str
    item: _Item
    audio: bytes
    marks: list[int]  # byte offset at which each word counts as spoken
    started: bool = False
    tool_call: _Item | None = None  # a function call that follows the audio, in the same response
    input_text: int = 0  # the context it reads, in tokens (``RealtimeSession._context_tokens``)
    input_audio: int = 0
    # A response of several message items (a preamble, then the answer): ``item`` is the one
    # being spoken at ``index``; those spoken before it, and those still to come with their audio.
    index: int = 0
    spoken: list[_Item] = field(default_factory=list)
    later: list[tuple[_Item, bytes, list[int]]] = field(default_factory=list)

    @property
    def items(self) -> list[_Item]:
        """Its message items begun so far, in order."""
        return [*self.spoken, self.item]


@functools.lru_cache(maxsize=256)
def _spoken(text: str, pitch_hz: float) -> tuple[bytes, list[int]]:
    """An answer's μ-law audio and where each word's mark sits (one synthesis per distinct text)."""
    ulaw = audio.speak(text, pitch_hz=pitch_hz)
    return ulaw, [pos for pos, _ in audio.words_heard(ulaw)]


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


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key in READ_ONLY_FIELDS:
            continue
        old = base.get(key)
        if key == "turn_detection" and isinstance(value, dict):
            if not isinstance(old, dict) or value.get("type", old.get("type")) != old.get("type"):
                old = base[key] = _turn_detection_defaults(value.get("type", "server_vad"))
            _merge(old, value)
        elif isinstance(value, dict) and isinstance(old, dict) and key != "format":
            _merge(old, value)
        else:
            base[key] = copy.deepcopy(value)


def _turn_detection_defaults(kind: str) -> dict[str, Any]:
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    return {
        "type": kind,
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def _check_format(fmt: Any, where: str) -> None:
    if not isinstance(fmt, dict) or fmt.get("type") not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
        raise _ProtocolError(
            "invalid_value",
            f"Invalid value for '{where}': expected one of "
            "{'type':'audio/pcm','rate':24000}, {'type':'audio/pcmu'}, {'type':'audio/pcma'}.",
            where,
        )
    if fmt["type"] == "audio/pcm":
        fmt.setdefault("rate", 24000)
        if fmt["rate"] != 24000:
            raise _ProtocolError(
                "invalid_value", f"Invalid value for '{where}.rate': only 24000 is supported.", f"{where}.rate"
            )
    elif set(fmt) != {"type"}:
        raise _ProtocolError("unknown_parameter", f"Unknown parameter: '{where}.{sorted(set(fmt) - {'type'})[0]}'.")


def _validate_session(s: dict[str, Any]) -> None:
    """Raise _ProtocolError if the merged session ``s`` is not a valid GA session."""
    reasoning = s.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict) or set(reasoning) - {"effort"}:
            raise _ProtocolError("invalid_type", "Invalid type for 'session.reasoning'.", "session.reasoning")
        if reasoning.get("effort") not in REASONING_EFFORTS:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for 'session.reasoning.effort': expected one of {', '.join(REASONING_EFFORTS)}.",
                "session.reasoning.effort",
            )
    mods = s.get("output_modalities")
    if mods not in (["audio"], ["text"]):
        raise _ProtocolError(
            "invalid_value",
            "Invalid value for 'session.output_modalities': expected ['audio'] or ['text'].",
            "session.output_modalities",
        )
    a = s.get("audio")
    if not isinstance(a, dict) or not isinstance(a.get("input"), dict) or not isinstance(a.get("output"), dict):
        raise _ProtocolError("invalid_type", "Invalid type for 'session.audio'.", "session.audio")
    for side, allowed in AUDIO_FIELDS.items():
        extra = set(a[side]) - allowed
        if extra:
            raise _ProtocolError(
                "unknown_parameter",
                f"Unknown parameter: 'session.audio.{side}.{sorted(extra)[0]}'.",
                f"session.audio.{side}.{sorted(extra)[0]}",
            )
        _check_format(a[side].get("format"), f"session.audio.{side}.format")
    voice = a["output"].get("voice")
    if not (voice in VOICES or (isinstance(voice, dict) and str(voice.get("id", "")).startswith("voice_"))):
        raise _ProtocolError(
            "invalid_value",
            f"Invalid value: '{voice}'. Supported values are: " + ", ".join(f"'{v}'" for v in VOICES) + ".",
            "session.audio.output.voice",
        )
    speed = a["output"].get("speed", 1.0)
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.25 <= speed <= 1.5:
        raise _ProtocolError(
            "invalid_value",
            "Invalid value for 'session.audio.output.speed': expected a number between 0.25 and 1.5.",
            "session.audio.output.speed",
        )
    tr = a["input"].get("transcription")
    if tr is not None and (not isinstance(tr, dict) or not isinstance(tr.get("model"), str)):
        raise _ProtocolError(
            "invalid_value",
            "Invalid value for 'session.audio.input.transcription': expected null or an object with a model.",
            "session.audio.input.transcription",
        )
    tools = s.get("tools")
    if not isinstance(tools, list):
        raise _ProtocolError("invalid_type", "Invalid type for 'session.tools': expected an array.", "session.tools")
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("name"), str)
            or not isinstance(tool.get("parameters", {}), dict)
            or set(tool) - {"type", "name", "description", "parameters"}
        ):
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for 'session.tools[{i}]': expected a function "
                "tool with a name and JSON-schema parameters.",
                f"session.tools[{i}]",
            )
    td = a["input"].get("turn_detection")
    p = "session.audio.input.turn_detection"
    if td is None:
        return
    if not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad"):
        raise _ProtocolError(
            "invalid_value", f"Invalid value for '{p}.type': expected 'server_vad' or 'semantic_vad'.", f"{p}.type"
        )
    if td["type"] == "server_vad":
        thr = td.get("threshold")
        if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not 0.0 <= thr <= 1.0:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value for '{p}.threshold': expected a number between 0 and 1.",
                f"{p}.threshold",
            )
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if not isinstance(td.get(key), int) or isinstance(td.get(key), bool) or td[key] < 0:
                raise _ProtocolError(
                    "invalid_value", f"Invalid value for '{p}.{key}': expected an integer >= 0.", f"{p}.{key}"
                )
    elif td.get("eagerness") not in SEMANTIC_SILENCE_MS:
        raise _ProtocolError("invalid_value", f"Invalid value for '{p}.eagerness'.", f"{p}.eagerness")
    for key in ("create_response", "interrupt_response"):
        if not isinstance(td.get(key, True), bool):
            raise _ProtocolError("invalid_type", f"Invalid type for '{p}.{key}': expected a boolean.", f"{p}.{key}")


class RealtimeSession:
    """Sans-I/O protocol state for one Realtime connection (times are seconds, any monotonic clock)."""

    def __init__(
        self, config: AgentConfig, slog: SessionLog, *, model: str = "gpt-realtime", beta_header: bool = False
    ) -> None:
        self.config, self.log, self.beta_header = config, slog, beta_header
        self.rng = random.Random(config.seed * 1_000_003 + slog.index)
        self.reply = config.reply or default_reply
        self.close_request: tuple[int, str] | None = None
        self._events: list[dict[str, Any]] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self.conversation_id = self._id("conv")
        self.session = self._default_session(model)
        self.items: list[_Item] = []
        self.response: _Response | None = None
        self._prefix_seen = 0  # context tokens of the last response: the cache's prefix
        self.audio_output_started = False
        # input audio: the clock counts μ-law-equivalent bytes (8 per ms) since the session started
        self._buf = bytearray()  # pcmu bytes from _origin to the clock
        self._origin = 0
        self._vad_pos = 0  # bytes analysed in complete 160-byte windows
        self._uncommitted = 0  # start of audio not yet committed
        self._speaking = False
        self._speech_item = ""
        self._speech_start = 0  # audio_start (prefix padding included), in bytes
        self._speech_end = 0  # end of the last speech window, in bytes
        self._silence = 0

    # ---- sans-I/O interface ----------------------------------------------------------------
    def connect(self, now: float) -> None:
        if self.beta_header:
            self._error("invalid_request_error", "beta_api_shape_disabled", BETA_MESSAGE, None, None, now)
            self.close_request = (4000, "beta_api_shape_disabled")
            return
        self._emit("session.created", session=copy.deepcopy(self.session))
        self._at(
            now + self.config.max_session_s,
            lambda t: self._close(1001, "Your session hit the maximum duration of 60 minutes."),
        )

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one client message (a WebSocket text frame)."""
        if self.close_request:
            return
        event_id = None
        try:
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
                raise _ProtocolError("invalid_event", "The event must be a JSON object with a 'type'.", "type")
            kind, event_id = msg["type"], msg.get("event_id")
            self.log.received.append((now, kind))
            if kind not in CLIENT_FIELDS:
                raise _ProtocolError(
                    "invalid_event",
                    f"Invalid value: '{kind}'. Supported values are: "
                    + ", ".join(f"'{k}'" for k in CLIENT_FIELDS)
                    + ".",
                    "type",
                )
            extra = set(msg) - CLIENT_FIELDS[kind] - {"type", "event_id"}
            if extra:
                raise _ProtocolError("unknown_parameter", f"Unknown parameter: '{sorted(extra)[0]}'.", sorted(extra)[0])
            getattr(self, "_on_" + kind.replace(".", "_"))(msg, now)
        except _ProtocolError as e:
            self._error("invalid_request_error", e.code, e.message, e.param, event_id, now, violation=e.violation)

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
        self._timers.clear()
        self.response = None

    # ---- helpers -----------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return prefix + "_" + "".join(self.rng.choice(_ALPHABET) for _ in range(21))

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event_id": self._id("event"), "type": kind, **fields}
        self._events.append(event)
        return event

    def _at(self, when: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def _close(self, code: int, reason: str) -> None:
        self.close_request = (code, reason)

    def _error(
        self,
        etype: str,
        code: str,
        message: str,
        param: str | None,
        event_id: Any,
        now: float,
        *,
        violation: bool = True,
    ) -> None:
        ev = self._emit(
            "error", error={"type": etype, "code": code, "message": message, "param": param, "event_id": event_id}
        )
        self.log.errors_sent.append(ev)
        if violation:
            self.log.violations.append(f"error {code}: {message}")

    def _default_session(self, model: str) -> dict[str, Any]:
        pcm = {"type": "audio/pcm", "rate": 24000}
        session = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self._id("sess"),
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "You are a helpful, witty, and friendly AI.",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": int(time.time()) + 3600,
            "include": None,
            "audio": {
                "input": {
                    "format": dict(pcm),
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": _turn_detection_defaults("server_vad"),
                },
                "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
            },
        }
        self.log.session_config = session
        return session

    @property
    def _input_format(self) -> str:
        kind: str = self.session["audio"]["input"]["format"]["type"]
        return kind

    def _find(self, item_id: Any) -> _Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def _last_item_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def _add_item(self, item: _Item, previous: str | None = None) -> None:
        prev = previous if previous is not None else self._last_item_id()
        self.items.append(item)
        self._emit("conversation.item.added", previous_item_id=prev, item=item.json())
        self._sync_turns()

    def _sync_turns(self) -> None:
        self.log.turns[:] = [
            (i.role, i.kept_text()) for i in self.items if i.type == "message" and i.role and i.kept_text()
        ]

    # ---- session.update ----------------------------------------------------------------------
    def _on_session_update(self, msg: dict[str, Any], now: float) -> None:
        upd = msg.get("session")
        if not isinstance(upd, dict):
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        if any(k in upd for k in BETA_SESSION_FIELDS):
            self._error(
                "invalid_request_error", "beta_api_shape_disabled", BETA_MESSAGE, None, msg.get("event_id"), now
            )
            self._close(4000, "beta_api_shape_disabled")
            return
        if upd.get("type") != "realtime":
            raise _ProtocolError(
                "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
            )
        extra = set(upd) - SESSION_FIELDS - READ_ONLY_FIELDS
        if extra:
            raise _ProtocolError(
                "unknown_parameter", f"Unknown parameter: 'session.{sorted(extra)[0]}'.", f"session.{sorted(extra)[0]}"
            )
        upd, event_id = copy.deepcopy(upd), msg.get("event_id")
        if self.config.session_error is not None:
            code, message = self.config.session_error
            self._error("invalid_request_error", code, message, None, event_id, now, violation=False)
            return
        if self.config.session_updated_delay_ms <= 0:
            self._apply_update(upd, event_id, now)
        else:
            self._at(now + self.config.session_updated_delay_ms / 1000, lambda t: self._apply_update(upd, event_id, t))

    def _apply_update(self, upd: dict[str, Any], event_id: Any, now: float) -> None:
        candidate = copy.deepcopy(self.session)
        try:
            _merge(candidate, upd)
            _validate_session(candidate)
            if (
                self.audio_output_started
                and candidate["audio"]["output"]["voice"] != self.session["audio"]["output"]["voice"]
            ):
                raise _ProtocolError(
                    "cannot_update_voice",
                    "Cannot update a conversation's voice if assistant audio is present.",
                    "session.audio.output.voice",
                )
        except _ProtocolError as e:
            self._error("invalid_request_error", e.code, e.message, e.param, event_id, now)
            return
        self.session.clear()
        self.session.update(candidate)
        self._emit("session.updated", session=copy.deepcopy(self.session))
        if self.log.session_updated_at is None:
            self.log.session_updated_at = now

    # ---- input audio and VAD -----------------------------------------------------------------
    def _on_input_audio_buffer_append(self, msg: dict[str, Any], now: float) -> None:
        b64 = msg.get("audio")
        if not isinstance(b64, str):
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            data = binascii.a2b_base64(b64, strict_mode=True)
        except binascii.Error:
            raise _ProtocolError(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio"
            ) from None
        if len(data) > MAX_APPEND_BYTES:
            raise _ProtocolError("invalid_value", "Audio chunk exceeds the 15 MiB limit.", "audio")
        self.log.appends += 1
        if self.log.first_append_at is None:
            self.log.first_append_at = now
        fmt = self._input_format
        if fmt != "audio/pcmu":
            self.log.appends_before_session_updated += 1
            self.log.violations.append("audio appended before session.updated confirmed audio/pcmu")
            # counted on the clock (as the real server reads it), but not analysed
            self._origin += len(data) // 6 if fmt == "audio/pcm" else len(data)
            self._buf.clear()
            self._vad_pos = self._origin
            return
        self._buf += data
        self._run_vad(now)

    @property
    def _clock(self) -> int:
        return self._origin + len(self._buf)

    def _vad_params(self) -> tuple[float, int, int] | None:
        td = self.session["audio"]["input"]["turn_detection"]
        if td is None:
            return None
        if td["type"] == "semantic_vad":
            return -35.0, 300 * 8, SEMANTIC_SILENCE_MS[td.get("eagerness", "auto")] * 8
        return -60.0 + 50.0 * td["threshold"], td["prefix_padding_ms"] * 8, td["silence_duration_ms"] * 8

    def _run_vad(self, now: float) -> None:
        params = self._vad_params()
        if params is None:
            self._vad_pos = self._clock
        else:
            level, prefix, silence = params
            while self._clock - self._vad_pos >= FRAME_BYTES and not self.close_request:
                start = self._vad_pos - self._origin
                speech = audio.frame_energy_dbfs(self._buf[start : start + FRAME_BYTES]) > level
                self._vad_window(self._vad_pos, speech, prefix, silence, now)
                self._vad_pos += FRAME_BYTES
        self._trim(params[1] if params else 0)

    def _vad_window(self, pos: int, speech: bool, prefix: int, silence: int, now: float) -> None:
        if speech:
            self._silence = 0
            self._speech_end = pos + FRAME_BYTES
            if not self._speaking:
                self._speaking = True
                self._speech_item = self._id("item")
                self._speech_start = max(self._uncommitted, pos - prefix, 0)
                self._emit(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=self._speech_start // 8,
                    item_id=self._speech_item,
                )
                td = self.session["audio"]["input"]["turn_detection"]
                if self.response is not None and td.get("interrupt_response", True):
                    self._cancel(self.response, "turn_detected")
            return
        if not self._speaking:
            return
        self._silence += FRAME_BYTES
        if self._silence >= silence:
            self._speaking = False
            self._emit(
                "input_audio_buffer.speech_stopped", audio_end_ms=self._speech_end // 8, item_id=self._speech_item
            )
            self._commit(self._speech_item, self._speech_start, self._speech_end, pos + FRAME_BYTES, now, auto=True)

    def _trim(self, prefix: int) -> None:
        keep = (
            self._speech_start
            if self._speaking
            else (
                self._uncommitted
                if self._vad_params() is None
                else max(self._uncommitted, self._vad_pos - prefix - FRAME_BYTES)
            )
        )
        drop = keep - self._origin
        if drop > 65536:
            del self._buf[:drop]
            self._origin = keep

    def _commit(self, item_id: str, start: int, end: int, commit_to: int, now: float, *, auto: bool) -> None:
        data = bytes(self._buf[max(0, start - self._origin) : max(0, end - self._origin)])
        transcript = audio.transcribe(data) if self._heard_anything(data) else ""
        self._uncommitted = commit_to
        previous = self._last_item_id()
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        history = list(self.log.turns)
        item = _Item(id=item_id, content=[{"type": "input_audio"}], text=transcript, audio_ms=(end - start) // 8)
        self._add_item(item, previous)
        self._emit("conversation.item.done", previous_item_id=previous, item=item.json())
        if self.session["audio"]["input"]["transcription"] is not None:
            seconds = round((end - start) / SAMPLE_RATE, 3)

            def complete(t: float) -> None:
                item.transcribed = True
                usage = {"type": "duration", "seconds": seconds}
                self.log.transcription_usage.append(usage)
                self._emit(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                    usage=usage,
                )

            self._at(now + self.config.transcription_delay_ms / 1000, complete)
        td = self.session["audio"]["input"]["turn_detection"]
        if auto and td is not None and td.get("create_response", True) and self.response is None:
            at = now + self.config.think_ms / 1000
            if self._wants_hangup(transcript):
                self._start_response(self.config.farewell, at, call="end_call")
            elif self._wants_tool("escalate", transcript, self.config.escalate_words):
                arguments = orjson.dumps({"summary": f"Caller says: {transcript}"}).decode()
                self._start_response(self.config.escalating, at, call="escalate", arguments=arguments)
            elif (transfer := self._offered("transfer_call")) and self._cued(transcript, self.config.transfer_words):
                chosen = {
                    **tool_arguments(transfer.get("parameters"), transcript),
                    "summary": f"Caller says: {transcript}",
                }
                self._start_response(
                    self.config.transferring, at, call="transfer_call", arguments=orjson.dumps(chosen).decode()
                )
            elif (tool := self._tenant_tool_for(transcript)) is not None:
                arguments = orjson.dumps(tool_arguments(tool.get("parameters"), transcript)).decode()
                self._start_response(self.config.using_tool, at, call=str(tool["name"]), arguments=arguments)
            else:
                self._start_response(self.reply(transcript, history), at)

    def _wants_hangup(self, transcript: str) -> bool:
        return self._wants_tool("end_call", transcript, self.config.hangup_words)

    def _wants_tool(self, name: str, transcript: str, cues: tuple[str, ...]) -> bool:
        return self._offered(name) is not None and self._cued(transcript, cues)

    def _offered(self, name: str) -> dict[str, Any] | None:
        tools: list[Any] = self.session.get("tools") or []
        return next((t for t in tools if isinstance(t, dict) and t.get("name") == name), None)

    @staticmethod
    def _cued(transcript: str, cues: tuple[str, ...]) -> bool:
        words = {w.strip(".,!?;:").lower() for w in transcript.split()}
        return any(w in words for w in cues)

    def _tenant_tool_for(self, transcript: str) -> dict[str, Any] | None:
        """The first of the session's other tools a word of whose name the caller said ("book"
        for ``book_table``), as a model picks the tool the caller asks for."""
        tools: list[Any] = self.session.get("tools") or []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(tool, dict) and isinstance(name, str) and name not in BUILT_IN_TOOLS:
                cues = tuple(part.lower() for part in name.split("_") if len(part) >= 3)
                if self._cued(transcript, cues):
                    return tool
        return None

    @staticmethod
    def _heard_anything(data: bytes) -> bool:
        """Marked words, or any frame louder than the default VAD level (silence transcribes to "")."""
        return bool(audio.words_heard(data)) or any(
            audio.frame_energy_dbfs(data[i : i + FRAME_BYTES]) > -35.0 for i in range(0, len(data), FRAME_BYTES)
        )

    def _on_input_audio_buffer_commit(self, msg: dict[str, Any], now: float) -> None:
        ms = (self._clock - self._uncommitted) / 8
        if ms < 100:
            raise _ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too "
                f"small. Expected at least 100ms of audio, but buffer only has {ms:.2f}ms of audio.",
            )
        self._speaking, self._silence = False, 0
        self._commit(self._id("item"), self._uncommitted, self._clock, self._clock, now, auto=False)

    def _on_input_audio_buffer_clear(self, msg: dict[str, Any], now: float) -> None:
        self._uncommitted, self._speaking, self._silence = self._clock, False, 0
        self._emit("input_audio_buffer.cleared")

    def _on_output_audio_buffer_clear(self, msg: dict[str, Any], now: float) -> None:
        raise _ProtocolError(
            "invalid_event", "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.", "type"
        )

    # ---- responses ---------------------------------------------------------------------------
    def _on_response_create(self, msg: dict[str, Any], now: float) -> None:
        if self.response is not None:
            raise _ProtocolError(
                "conversation_already_has_active_response",
                "Conversation already has an active "
                f"response in progress: {self.response.id}. Wait until the response is finished "
                "before creating a new one.",
            )
        params = msg.get("response") or {}
        if not isinstance(params, dict):
            raise _ProtocolError("invalid_type", "Invalid type for 'response': expected an object.", "response")
        text = params.get("instructions")
        say = _SAY_EXACTLY.match(text) if isinstance(text, str) else None
        if say:  # a model told to say a line says it
            text = say.group(1).strip()
        elif not isinstance(text, str) or not text.strip():
            last = self.items[-1] if self.items else None
            said = _output_line(last) if last is not None and last.type == "function_call_output" else None
            if said is not None:  # a tool's result the model is to pass on
                text = said
            elif (
                last is not None
                and last.type == "message"
                and last.role == "user"
                and last.text.startswith(NOTE_PREFIX)
            ):
                text = last.text[len(NOTE_PREFIX) :].split(". ")[0].rstrip(".") + "."  # a note's news, passed on
            elif last is not None and last.type == "message" and last.role == "user":
                text = self.reply(last.text, list(self.log.turns[:-1]))
            else:
                text = "Hello, how can I help you?"
        self._start_response(text, now)

    def _start_response(self, text: str, at: float, *, call: str | None = None, arguments: str = "{}") -> None:
        parts = [self._message(line) for line in (self.config.preamble, text) if line]
        (item, data, marks), later = parts[0], parts[1:]
        resp = self.response = _Response(id=self._id("resp"), item=item, audio=data, marks=marks, later=later)
        resp.input_text, resp.input_audio = self._context_tokens()
        if call is not None:
            resp.tool_call = _Item(
                id=self._id("item"),
                type="function_call",
                role=None,
                status="completed",
                extra={"name": call, "call_id": self._id("call"), "arguments": arguments},
            )
        self._at(at, lambda t: self._begin(resp, t))

    def _message(self, text: str) -> tuple[_Item, bytes, list[int]]:
        """An assistant message item speaking ``text``: the item, its audio, its words' marks."""
        out = self.session["audio"]["output"]["format"]["type"]
        ulaw, marks = _spoken(text, self.config.pitch_hz)
        words = text.split()
        if len(marks) != len(words):
            marks = [len(ulaw) * (k + 1) // (len(words) + 1) for k in range(len(words))]
        bpm = 8
        if out == "audio/pcma":
            data = _alaw_encode(audio.ulaw_decode(ulaw))
        elif out == "audio/pcm":
            pcm = audio.ulaw_decode(ulaw).astype(np.float64)
            up = np.interp(np.arange(len(pcm) * 3) / 3.0, np.arange(len(pcm)), pcm)
            data, bpm, marks = up.astype("<i2").tobytes(), 48, [m * 6 for m in marks]
        else:
            data = ulaw
        item = _Item(
            id=self._id("item"),
            role="assistant",
            status="in_progress",
            has_audio=True,
            words=words,
            bpm=bpm,
            total_bytes=len(data),
        )
        return item, data, marks

    def _response_json(self, resp: _Response, status: str, details: Any = None) -> dict[str, Any]:
        out_fmt = self.session["audio"]["output"]
        obj: dict[str, Any] = {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": details,
            "output": [],
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": out_fmt["format"], "voice": out_fmt["voice"]}},
            "usage": None,
            "metadata": None,
        }
        if status != "in_progress":
            if resp.started:
                obj["output"] = [item.json() for item in resp.items]
                if resp.tool_call is not None and status == "completed":
                    obj["output"].append(resp.tool_call.json())
            obj["usage"] = self._usage(resp)
            self.log.response_usage.append(obj["usage"])
        return obj

    def _context_tokens(self) -> tuple[int, int]:
        """The (text, audio) tokens a response reads: the instructions and every item so far.

        Audio bills as the service counts it, a token per 100 ms of the caller's audio and per
        50 ms of the model's own; text at about four characters a token.
        """
        text = 1 + len(str(self.session.get("instructions") or "")) // 4
        audio = 0
        for item in self.items:
            if item.has_audio:
                audio += item.sent_bytes // (item.bpm * 50)
            elif item.audio_ms:
                audio += item.audio_ms // 100
            else:
                text += 1 + len(item.text or orjson.dumps(item.extra).decode()) // 4
        return text, audio

    def _usage(self, resp: _Response) -> dict[str, Any]:
        """``response.done``'s usage: the context read (its start cached, as the service caches a
        prefix it has seen, from 1,024 tokens in steps of 64) and what was produced."""
        text_in, audio_in = resp.input_text, resp.input_audio
        seen = self._prefix_seen
        cached = seen - seen % 64 if seen >= 1024 else 0
        cached = min(cached, text_in + audio_in)
        cached_text = min(text_in, cached)
        cached_audio = cached - cached_text
        self._prefix_seen = text_in + audio_in
        audio_out = sum(item.sent_bytes // (item.bpm * 50) for item in resp.items)
        text_out = sum(item.words_sent for item in resp.items)
        return {
            "total_tokens": text_in + audio_in + audio_out + text_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def _begin(self, resp: _Response, t: float) -> None:
        if resp is not self.response or resp.started:
            return
        resp.started = True
        self._emit("response.created", response=self._response_json(resp, "in_progress"))
        self._emit(
            "rate_limits.updated",
            rate_limits=[
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
            ],
        )
        self._open_item(resp)
        self._deliver(resp, t)

    def _open_item(self, resp: _Response) -> None:
        ids = {"response_id": resp.id, "output_index": resp.index}
        self._emit("response.output_item.added", **ids, item=resp.item.json())
        self._add_item(resp.item)
        self._emit(
            "response.content_part.added",
            **ids,
            item_id=resp.item.id,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )

    def _close_item(self, resp: _Response, status: str) -> None:
        item = resp.item
        item.status = "completed" if status == "completed" else "incomplete"
        ids = self._part_ids(resp)
        self._emit("response.output_audio.done", **ids)
        self._emit("response.output_audio_transcript.done", **ids, transcript=item.generated())
        self._emit("response.content_part.done", **ids, part={"type": "audio", "transcript": item.generated()})
        self._emit("response.output_item.done", response_id=resp.id, output_index=resp.index, item=item.json())
        self._emit("conversation.item.done", item=item.json())

    def _part_ids(self, resp: _Response) -> dict[str, Any]:
        return {"response_id": resp.id, "item_id": resp.item.id, "output_index": resp.index, "content_index": 0}

    def _deliver(self, resp: _Response, t: float) -> None:
        if resp is not self.response:
            return
        item = resp.item
        ms = self.rng.randint(*self.config.chunk_ms)
        chunk = resp.audio[item.sent_bytes : item.sent_bytes + ms * item.bpm]
        item.sent_bytes += len(chunk)
        self.audio_output_started = True
        self._emit(
            "response.output_audio.delta",
            **self._part_ids(resp),
            delta=binascii.b2a_base64(chunk, newline=False).decode(),
        )
        finished = item.sent_bytes >= len(resp.audio)
        while item.words_sent < len(item.words) and (finished or resp.marks[item.words_sent] < item.sent_bytes):
            word = item.words[item.words_sent]
            self._emit(
                "response.output_audio_transcript.delta",
                **self._part_ids(resp),
                delta=word if item.words_sent == 0 else " " + word,
            )
            item.words_sent += 1
        self._sync_turns()
        if finished and resp.later:  # the preamble is said: the answer follows, in the same response
            self._close_item(resp, "completed")
            resp.spoken.append(item)
            (resp.item, resp.audio, resp.marks), resp.later = resp.later[0], resp.later[1:]
            resp.index += 1
            self._open_item(resp)
            self._at(t + len(chunk) / item.bpm / self.config.realtime_factor / 1000, lambda t2: self._deliver(resp, t2))
        elif finished:
            self._finish(resp, "completed", None)
        else:
            self._at(t + len(chunk) / item.bpm / self.config.realtime_factor / 1000, lambda t2: self._deliver(resp, t2))

    def _cancel(self, resp: _Response, reason: str) -> None:
        self._finish(resp, "cancelled", {"type": "cancelled", "reason": reason})

    def _finish(self, resp: _Response, status: str, details: Any) -> None:
        self.response = None
        if resp.started:
            self._close_item(resp, status)
            if resp.tool_call is not None and status == "completed":
                self._emit_tool_call(resp)
        else:  # cancelled while still thinking: the client still sees the response's lifecycle
            self._emit("response.created", response=self._response_json(resp, "in_progress"))
        self._emit("response.done", response=self._response_json(resp, status, details))
        self._sync_turns()

    def _emit_tool_call(self, resp: _Response) -> None:
        call = resp.tool_call
        assert call is not None
        ids = {"response_id": resp.id, "output_index": resp.index + 1}
        self._emit("response.output_item.added", **ids, item={**call.json(), "status": "in_progress", "arguments": ""})
        self._add_item(call)
        args = {**ids, "item_id": call.id, "call_id": call.extra["call_id"]}
        self._emit("response.function_call_arguments.delta", **args, delta=call.extra["arguments"])
        self._emit(
            "response.function_call_arguments.done", **args, name=call.extra["name"], arguments=call.extra["arguments"]
        )
        self._emit("response.output_item.done", **ids, item=call.json())
        self._emit("conversation.item.done", item=call.json())

    def _on_response_cancel(self, msg: dict[str, Any], now: float) -> None:
        rid = msg.get("response_id")
        if self.response is None or (rid is not None and rid != self.response.id):
            raise _ProtocolError(
                "response_cancel_not_active", "Cancellation failed: no active response found.", violation=False
            )
        self._cancel(self.response, "client_cancelled")

    # ---- conversation items ------------------------------------------------------------------
    def _on_conversation_item_truncate(self, msg: dict[str, Any], now: float) -> None:
        item = self._find(msg.get("item_id"))
        if item is None:
            raise _ProtocolError(
                "invalid_value", f"Conversation item with id '{msg.get('item_id')}' not found.", "item_id"
            )
        if not item.has_audio:
            raise _ProtocolError(
                "invalid_value", "Only assistant messages with audio content can be truncated.", "item_id"
            )
        if msg.get("content_index") != 0:
            raise _ProtocolError(
                "invalid_value", "Invalid value for 'content_index': only 0 is supported.", "content_index"
            )
        end = msg.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool):
            raise _ProtocolError(
                "invalid_type", "Invalid type for 'audio_end_ms': expected an integer.", "audio_end_ms"
            )
        if end < 0:
            raise _ProtocolError(
                "invalid_value", "Invalid value for 'audio_end_ms': expected an integer >= 0.", "audio_end_ms"
            )
        produced = item.sent_bytes / item.bpm
        if end > produced:
            raise _ProtocolError(
                "invalid_value", f"Audio content of {int(produced)}ms is already shorter than {end}ms", "audio_end_ms"
            )
        total_ms = item.total_bytes / item.bpm
        keep = int(len(item.words) * end / total_ms) if total_ms else 0
        item.keep_words = keep if item.keep_words is None else min(keep, item.keep_words)
        item.sent_bytes = end * item.bpm
        self.log.truncates.append({"item_id": item.id, "content_index": 0, "audio_end_ms": end})
        self._emit("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end)
        if self.response is not None and self.response.item is item:
            self._cancel(self.response, "client_cancelled")
        self._sync_turns()

    def _on_conversation_item_create(self, msg: dict[str, Any], now: float) -> None:
        raw = msg.get("item")
        if not isinstance(raw, dict):
            raise _ProtocolError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        prev = msg.get("previous_item_id")
        if prev is not None and prev != "root" and self._find(prev) is None:
            raise _ProtocolError("invalid_value", f"Previous item with id '{prev}' not found.", "previous_item_id")
        item_id = raw.get("id") or self._id("item")
        if self._find(item_id) is not None:
            raise _ProtocolError("invalid_value", f"Item with id '{item_id}' already exists.", "item.id")
        kind = raw.get("type", "message")
        if kind == "message":
            role, content = raw.get("role"), raw.get("content")
            if role not in ("user", "system", "assistant") or not isinstance(content, list) or not content:
                raise _ProtocolError(
                    "invalid_value",
                    "A message item needs a role of 'user', 'system' or 'assistant' and a non-empty content list.",
                    "item",
                )
            allowed = ("output_text",) if role == "assistant" else ("input_text", "input_audio", "input_image")
            if any(not isinstance(p, dict) or p.get("type") not in allowed for p in content):
                raise _ProtocolError(
                    "invalid_value",
                    f"Invalid content part type for a {role} message; expected " + " or ".join(allowed) + ".",
                    "item.content",
                )
            text = " ".join(str(p.get("text") or p.get("transcript") or "") for p in content).strip()
            item = _Item(id=item_id, role=role, content=copy.deepcopy(content), text=text)
        elif kind in ("function_call_output", "function_call"):
            need = ("call_id", "output") if kind == "function_call_output" else ("call_id", "name", "arguments")
            if any(not isinstance(raw.get(k), str) for k in need):
                raise _ProtocolError(
                    "missing_required_parameter", f"A {kind} item needs " + ", ".join(need) + ".", "item"
                )
            item = _Item(id=item_id, type=kind, role=None, extra={k: raw[k] for k in need})
        else:
            raise _ProtocolError(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', 'function_call_output'.",
                "item.type",
            )
        previous = self._last_item_id() if prev is None else (None if prev == "root" else prev)
        self._add_item(item, previous)
        self._emit("conversation.item.done", previous_item_id=previous, item=item.json())

    def _on_conversation_item_delete(self, msg: dict[str, Any], now: float) -> None:
        item = self._find(msg.get("item_id"))
        if item is None or (self.response is not None and self.response.item is item):
            raise _ProtocolError(
                "invalid_value", f"Conversation item with id '{msg.get('item_id')}' not found.", "item_id"
            )
        self.items.remove(item)
        self._emit("conversation.item.deleted", item_id=item.id)
        self._sync_turns()

    def _on_conversation_item_retrieve(self, msg: dict[str, Any], now: float) -> None:
        item = self._find(msg.get("item_id"))
        if item is None:
            raise _ProtocolError(
                "invalid_value", f"Conversation item with id '{msg.get('item_id')}' not found.", "item_id"
            )
        self._emit("conversation.item.retrieved", item=item.json())


class RealtimeAgent(SimulatorShell):
    """The asyncio/WebSocket shell: serves ``RealtimeSession`` on loopback."""

    def __init__(self, config: AgentConfig = AgentConfig()) -> None:
        self.config = config
        self.rejected: list[tuple[int, str]] = []  # (HTTP status, request path) of refused handshakes
        self._server = SessionServer("realtime agent", "/v1/realtime", self._open, self._process_request)
        self.sessions: list[SessionLog] = self._server.sessions

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not self.config.realtime_factor > 0 or self.config.chunk_ms[0] <= 0:
            raise ValueError("realtime_factor and chunk_ms must be positive")
        await self._server.start(host, port)

    def _open(self, ws: ServerConnection, now: float) -> tuple[SessionLog, RealtimeSession]:
        request = ws.request
        assert request is not None
        slog = SessionLog(index=len(self.sessions), path=request.path, opened_at=now)
        model = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)["model"][0]
        return slog, RealtimeSession(self.config, slog, model=model, beta_header="OpenAI-Beta" in request.headers)

    def _reject(
        self, connection: ServerConnection, request: Request, status: int, etype: str, message: str
    ) -> Response:
        self.rejected.append((status, request.path))
        return json_error_response(connection, status, etype, message)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path != "/v1/realtime":
            return self._reject(connection, request, 404, "invalid_request_error", f"Invalid URL (GET {url.path})")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._reject(
                connection, request, 401, "invalid_request_error", "Missing bearer authentication in header"
            )
        if not urllib.parse.parse_qs(url.query).get("model", [""])[0]:
            return self._reject(
                connection, request, 400, "invalid_request_error", "Missing required parameter: 'model'."
            )
        return None
