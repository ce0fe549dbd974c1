"""OpenAI Realtime (GA), sans-I/O: the client events relay sends and the server events it reads.

The beta shape is gone from the live service (PROTOCOLS §0.1); everything here is GA.
``response.output_audio.delta`` takes the compiled one-pass path
(``fastpath.parse_audio_delta``); every other server event is parsed here with orjson.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.agents import AgentProfile
from relay.errors import ProtocolError

PCMU = {"type": "audio/pcmu"}


END_CALL_TOOL = {
    "type": "function",
    "name": "end_call",
    "description": "Hang up the phone call. Say goodbye first, in the same response; call this only "
                   "once the conversation is over.",
    "parameters": {"type": "object", "properties": {}, "required": []},
}


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
                "tools": [END_CALL_TOOL] if agent.end_call_tool else [],
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
            },
        }
    )


def session_problems(session: dict[str, Any]) -> list[str]:
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


def truncate(item_id: str, audio_end_ms: int) -> bytes:
    """``conversation.item.truncate`` at what the caller actually heard (PROTOCOLS §2.5)."""
    return orjson.dumps(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": int(audio_end_ms)}
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
    return orjson.dumps({"type": "conversation.item.create",
                         "item": {"type": "function_call_output", "call_id": call_id,
                                  "output": orjson.dumps(output).decode()}})


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
        out.append(orjson.dumps({"type": "conversation.item.create",
                                 "item": {"type": "message", "role": role, "content": [part]}}))
    return out


def user_text(text: str) -> bytes:
    """``conversation.item.create`` with a user text message (DTMF, context seeds)."""
    return orjson.dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )


def parse_event(message: bytes) -> dict[str, Any]:
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
