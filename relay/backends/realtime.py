"""OpenAI Realtime (GA), sans-I/O: the client events relay sends, the server events it reads,
and ``RealtimeBackend``, the backend seam's adapter over them (``relay.backends``).

The beta shape is gone from the live service (PROTOCOLS §0.1); everything here is GA.
``response.output_audio.delta`` and ``input_audio_buffer.append`` take the compiled path
(``WIRE_REALTIME_JSON``); every other server event is parsed here once, with orjson.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay import backends as ev
from relay import models
from relay.agents import AgentProfile
from relay.errors import ProtocolError
from relay.tools.spec import transfer_tool
from relay.usage import Tokens, Transcription

PCMU = {"type": "audio/pcmu"}


END_CALL_TOOL = {
    "type": "function",
    "name": "end_call",
    "description": "Hang up the phone call. Say goodbye first, in the same response; call this only "
    "once the conversation is over.",
    "parameters": {"type": "object", "properties": {}, "required": []},
}


ESCALATE_TOOL = {
    "type": "function",
    "name": "escalate",
    "description": "Only for a matter that truly cannot wait until business hours: reach the person on "
    "call now, by phone and text at once. Give a short summary they can act on (who, what, how to "
    "reach the caller). Tell the caller what the result says happens next.",
    "parameters": {
        "type": "object",
        "properties": {"summary": {"type": "string", "description": "What the matter is, in two sentences."}},
        "required": ["summary"],
    },
}


def offered_tools(agent: AgentProfile) -> list[dict[str, Any]]:
    """The tools this agent's calls offer the model: the built-in ones it has, then the tenant's."""
    built_in = [tool for tool, on in ((END_CALL_TOOL, agent.end_call_tool), (ESCALATE_TOOL, agent.escalate_tool)) if on]
    if agent.transfer_targets:
        built_in.append(transfer_tool(agent.transfer_targets))
    return built_in + [tool.function() for tool in agent.tools]


# Our session.update's event_id: an ``error`` naming it (``error.event_id``) is the backend
# refusing the session itself, not one of the events sent after it.
SESSION_UPDATE_ID = "relay_session_update"


def session_update(agent: AgentProfile) -> bytes:
    """``session.update`` for a phone call (PROTOCOLS §2.2).

    G.711 μ-law both ways, so Twilio's payload passes through untouched; server VAD that
    creates and interrupts responses; input transcription on, so every turn can be stored;
    the ``end_call`` tool, so the agent can hang up once it has said goodbye.
    """
    return orjson.dumps(
        {
            "type": "session.update",
            "event_id": SESSION_UPDATE_ID,
            "session": {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": agent.instructions,
                "tools": offered_tools(agent),
                "tool_choice": "auto",
                "audio": {
                    "input": {
                        "format": PCMU,
                        "transcription": {"model": agent.transcription_model},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": agent.vad_threshold,
                            "prefix_padding_ms": agent.vad_prefix_ms,
                            "silence_duration_ms": agent.vad_silence_ms,
                            "create_response": True,
                            "interrupt_response": agent.interrupt_response,
                        },
                    },
                    "output": {"format": PCMU, "voice": agent.voice},
                },
                # Only the models that reason take it; an older model's session refuses the field.
                **({"reasoning": {"effort": agent.reasoning_effort}} if models.reasons(agent.model) else {}),
            },
        }
    )


def session_problems(session: object) -> list[str]:
    """What in an effective session (from ``session.updated``) would break a phone call.

    A session left on the default PCM format reads μ-law as noise and never ends a turn
    (PROTOCOLS §2.2, pitfall), so relay sends no audio until both formats are pcmu.
    """
    problems = []
    audio = session.get("audio") if isinstance(session, dict) else None
    for direction in ("input", "output"):
        side = audio.get(direction) if isinstance(audio, dict) else None
        fmt = side.get("format") if isinstance(side, dict) else None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind != "audio/pcmu":
            shown = repr(kind[:40]) if isinstance(kind, str) else type(kind).__name__
            problems.append(f"session audio.{direction}.format is {shown}, not 'audio/pcmu'")
    return problems


# Our truncates' event_id: an ``error`` naming it is the backend rejecting a truncate (counted).
TRUNCATE_ID = "relay_truncate"


def truncate(item_id: str, audio_end_ms: int) -> bytes:
    """``conversation.item.truncate`` at what the caller actually heard (PROTOCOLS §2.5)."""
    return orjson.dumps(
        {
            "type": "conversation.item.truncate",
            "event_id": TRUNCATE_ID,
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": int(audio_end_ms),
        }
    )


def response_cancel() -> bytes:
    """``response.cancel`` for the response in progress."""
    return b'{"type":"response.cancel"}'


def response_create(instructions: str | None = None) -> bytes:
    """``response.create``, e.g. so the agent speaks first."""
    event: dict[str, Any] = {"type": "response.create"}
    if instructions:
        event["response"] = {"instructions": instructions}
    return orjson.dumps(event)


def say(text: str) -> bytes:
    """``response.create`` that has the agent say ``text`` (a greeting, a line after a reconnect)."""
    return response_create(f"{SAY_PREFIX}{text}")


SAY_PREFIX = "Say exactly the following to the caller, and nothing else: "


def function_output(call_id: str, output: dict[str, Any]) -> bytes:
    """``conversation.item.create`` with a ``function_call_output`` for the model's tool call."""
    return orjson.dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()},
        }
    )


def seed_items(history: list[tuple[str, str]], max_chars: int) -> list[bytes]:
    """The conversation so far, as items for a fresh session (a recycle or a reconnect).

    The newest turns that fit in ``max_chars`` of text, oldest first: what the caller said
    (``input_text``) and what the caller heard of each answer (``output_text``).
    """
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(history):
        total += len(text)
        if total > max_chars:
            break
        kept.append((role, text))
    out = []
    for role, text in reversed(kept):
        part = {"type": "input_text" if role == "user" else "output_text", "text": text}
        out.append(
            orjson.dumps(
                {"type": "conversation.item.create", "item": {"type": "message", "role": role, "content": [part]}}
            )
        )
    return out


def user_text(text: str) -> bytes:
    """``conversation.item.create`` with a user text message (DTMF, context seeds)."""
    return orjson.dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )


def parse_event(message: bytes | bytearray) -> dict[str, Any]:
    """Parse a server event (every type but audio deltas).

    Raises:
        ProtocolError: not a JSON object with a string ``type``.
    """
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("Realtime event is not valid JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("Realtime event is not an object with a string 'type'")
    return event


def _str(event: dict[str, Any], key: str) -> str:
    return str(event.get(key, ""))


def _count(obj: object, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def response_usage(usage: object) -> Tokens | None:
    """A ``response.done`` usage as ``Tokens`` (BACKENDS §5.5); None when there is none.

    Counts without their modality breakdown are billed as audio, the dearer rate of a voice
    call, so that a terse backend is never under-billed.
    """
    if not isinstance(usage, dict):
        return None
    inp, out = usage.get("input_token_details"), usage.get("output_token_details")
    cached = inp.get("cached_tokens_details") if isinstance(inp, dict) else None
    return Tokens(
        text_in=_count(inp, "text_tokens"),
        cached_text_in=_count(cached, "text_tokens"),
        audio_in=_count(inp, "audio_tokens") if isinstance(inp, dict) else _count(usage, "input_tokens"),
        cached_audio_in=_count(cached, "audio_tokens"),
        text_out=_count(out, "text_tokens"),
        audio_out=_count(out, "audio_tokens") if isinstance(out, dict) else _count(usage, "output_tokens"),
    )


def transcription_usage(usage: object) -> Transcription | None:
    """An input transcription's usage: ``{"type": "duration", "seconds"}`` or ``{"type": "tokens", …}``."""
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e6:
            seconds = 0.0
        return Transcription(seconds=float(seconds))
    return Transcription(tokens_in=_count(usage, "input_tokens"), tokens_out=_count(usage, "output_tokens"))


class RealtimeBackend:
    """One Realtime GA session behind the backend seam (``relay.backends.Backend``)."""

    name = "openai-realtime"
    wire = ev.WIRE_REALTIME_JSON
    timed = False
    itemless = False
    replays = False

    __slots__ = ("_ready", "server_cancels")

    def __init__(self, agent: AgentProfile, session: int = 0) -> None:
        # Server VAD cancels the response itself when the caller speaks, if the agent says so.
        self.server_cancels = agent.interrupt_response
        self._ready = False  # session.updated confirmed μ-law

    def open(
        self, agent: AgentProfile, history: list[tuple[str, str]], max_chars: int, resume: str = ""
    ) -> list[bytes]:
        return [session_update(agent), *seed_items(history, max_chars)]

    def after_ready(self) -> list[bytes]:
        return []

    def say(self, text: str) -> bytes:
        return say(text)

    def user_text(self, text: str) -> list[bytes]:
        return [user_text(text), response_create()]

    def cancel(self) -> bytes:
        return response_cancel()

    def truncate(self, item_id: str, heard_ms: int) -> bytes:
        return truncate(item_id, heard_ms)

    def tool_result(self, call_id: str, output: dict[str, Any]) -> list[bytes]:
        return [function_output(call_id, output)]

    def respond(self) -> bytes:
        return response_create()

    def close(self) -> None:
        return None  # a Realtime session ends with its socket

    def parse(self, message: bytes | bytearray) -> list[ev.Event]:
        try:
            event = parse_event(message)
        except ProtocolError as exc:
            return [ev.Failed(str(exc), malformed=True)]
        kind = event["type"]
        if kind == "response.output_audio.delta":  # one the compiled path handed up: read it here
            delta = event.get("delta")
            if not isinstance(delta, str) or not isinstance(event.get("item_id"), str):
                return [ev.Failed("response.output_audio.delta needs string item_id and delta", malformed=True)]
            return [ev.AnswerAudio(event["item_id"], delta.encode())]
        if kind == "session.updated":
            problems = session_problems(event.get("session", {}))
            if problems:
                return [ev.Refused("backend session unusable for a phone call: " + "; ".join(problems))]
            self._ready = True
            return [ev.Ready()]
        if kind == "input_audio_buffer.speech_started":
            return [ev.CallerSpeechStarted()]
        if kind == "input_audio_buffer.speech_stopped":
            end = event.get("audio_end_ms")
            return [ev.CallerSpeechStopped(end if isinstance(end, int) and not isinstance(end, bool) else None)]
        if kind == "input_audio_buffer.committed":
            return [ev.CallerTurn(_str(event, "item_id"))]
        if kind == "conversation.item.input_audio_transcription.completed":
            return [
                ev.CallerTranscript(
                    _str(event, "item_id"), _str(event, "transcript"), transcription_usage(event.get("usage"))
                )
            ]
        if kind == "response.created":
            return [ev.ResponseStarted()]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if (
                isinstance(item, dict)
                and item.get("type") == "message"
                and item.get("role") == "assistant"
                and item.get("id")
            ):
                return [ev.AnswerStarted(str(item["id"]))]
            return []
        if kind == "response.output_audio_transcript.delta":
            return [ev.AnswerTranscript(_str(event, "item_id"), _str(event, "delta"), final=False)]
        if kind == "response.output_audio_transcript.done":
            return [ev.AnswerTranscript(_str(event, "item_id"), _str(event, "transcript"), final=True)]
        if kind == "response.output_audio.done":
            return [ev.AnswerAudioDone(_str(event, "item_id"))]
        if kind == "response.done":
            response = event.get("response") or {}
            items, calls = [], []
            for item in (response.get("output") or []) if isinstance(response, dict) else []:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "function_call":
                    calls.append(ev.ToolCall(_str(item, "call_id"), str(item.get("name")), _str(item, "arguments")))
                else:
                    items.append(_str(item, "id"))
            usage = response_usage(response.get("usage")) if isinstance(response, dict) else None
            return [ev.ResponseDone(tuple(items), tuple(calls), usage)]
        if kind == "error":
            error = event.get("error") or {}
            if not isinstance(error, dict):
                error = {}
            if not self._ready and error.get("event_id") in (None, SESSION_UPDATE_ID):
                # The session was never confirmed, and the error is about it (or no event of
                # ours): the backend refuses the session. One about a seeded item is not that.
                return [
                    ev.Refused(
                        f"the backend refused the session: {str(error.get('code'))[:60]}: "
                        f"{str(error.get('message'))[:200]}"
                    )
                ]
            about = "truncate" if error.get("event_id") == TRUNCATE_ID else ""
            return [
                ev.Failed(
                    f"backend error {error.get('type')}/{error.get('code')}: {error.get('message')}",
                    about=about,
                    fatal=error.get("code") in ev.FATAL_CODES,
                )
            ]
        return []
