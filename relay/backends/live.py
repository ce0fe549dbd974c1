"""OpenAI GPT-Live, sans-I/O: the client events relay sends, the server events it reads, and
``LiveBackend``, the backend seam's adapter over them (``relay.backends``).

GPT-Live is not a Realtime model but a protocol of its own (BACKENDS §2): ``session.start``
first, audio only after ``session.started``; the model is full duplex and stops talking by
itself when the caller speaks (no truncate, no cancel); its audio is one stream per session,
at real time, silence included; turns are not signalled, only timed transcript fragments; tools
run through Responses delegation. Every event here is GA-shaped (openai 3.63.0 ``types/live``).

``session.output_audio.delta`` and ``session.input_audio.append`` take the compiled path
(``WIRE_LIVE_JSON``: the media core sends the caller's payload verbatim and feeds the deltas to
the session's live item); every other server event is parsed here once, with orjson.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay import backends as ev
from relay import models
from relay.agents import AgentProfile
from relay.backends.realtime import offered_tools, parse_event
from relay.errors import ProtocolError

PCMU_8000 = {"type": "audio/pcmu", "rate": 8000}
SESSION_START_ID = "relay_session_start"
# Startup history limits (openai 3.63.0 ``session_config.py``): 128 messages, 8,192 tokens, which
# relay keeps under at about 4 characters a token.
MAX_INPUT_MESSAGES = 128
MAX_INPUT_CHARS = 8_192 * 4
MAX_APPEND_CHARS = 500 * 4  # a commentary, thinking or instructions append: 500 tokens
# What the model is told to say a line with (a greeting, a line after a reconnect).
SAY_PREFIX = "Say to the caller now, in these words: "


def session_start(agent: AgentProfile, history: list[tuple[str, str]], max_chars: int) -> bytes:
    """``session.start`` for a phone call (BACKENDS §2.2).

    μ-law 8 kHz both ways, so Twilio's payload passes through untouched; the tools relay offers
    (``end_call``) delegated to a Responses model; the conversation so far, if any, as ``input``.
    Only fields GPT-Live knows: the session config rejects unknown ones, so nothing of
    Realtime's (``turn_detection``, ``output_modalities``) is carried across.
    """
    session: dict[str, Any] = {
        "model": agent.model,
        "instructions": agent.instructions,
        "audio": {"format": PCMU_8000, "output": {"voice": agent.voice}},
        "store": False,
    }
    tools = [{key: tool[key] for key in ("type", "name", "description", "parameters")} for tool in offered_tools(agent)]
    if tools:
        session["delegation"] = {
            "type": "responses",
            "responses": {"model": models.DEFAULT_DELEGATION_MODEL, "tools": tools, "tool_choice": "auto"},
        }
    items = history_input(history, min(max_chars, MAX_INPUT_CHARS))
    if items:
        session["input"] = items
    return orjson.dumps({"type": "session.start", "event_id": SESSION_START_ID, "session": session})


def history_input(history: list[tuple[str, str]], max_chars: int) -> list[dict[str, Any]]:
    """The newest turns that fit (128 messages, ``max_chars`` of text), oldest first, as
    ``input`` messages: text only, one part each."""
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(history):
        total += len(text)
        if total > max_chars or len(kept) == MAX_INPUT_MESSAGES:
            break
        kept.append((role, text))
    return [
        {
            "type": "message",
            "role": role,
            "content": [{"type": "input_text" if role == "user" else "output_text", "text": text}],
        }
        for role, text in reversed(kept)
    ]


def commentary(content: str) -> bytes:
    """``session.commentary.append``: context the model says aloud (how it speaks first)."""
    return orjson.dumps(
        {"type": "session.commentary.append", "content": content[:MAX_APPEND_CHARS], "delegation_id": None}
    )


def thinking(content: str) -> bytes:
    """``session.thinking.append``: silent context for the model (keys the caller pressed)."""
    return orjson.dumps(
        {"type": "session.thinking.append", "content": content[:MAX_APPEND_CHARS], "delegation_id": None}
    )


def function_output(call_id: str, output: dict[str, Any]) -> bytes:
    """``response.item.create`` with the ``function_call_output`` for a delegated tool call."""
    return orjson.dumps(
        {
            "type": "response.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()},
        }
    )


RESPONSE_CREATE = b'{"type":"response.create"}'
SESSION_CLOSE = b'{"type":"session.close"}'


def session_problems(session: object) -> list[str]:
    """What in ``session.started``'s resolved config would break a phone call: anything but
    μ-law at 8 kHz (a session left on its PCM default reads μ-law as noise)."""
    audio = session.get("audio") if isinstance(session, dict) else None
    fmt = audio.get("format") if isinstance(audio, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    rate = fmt.get("rate") if isinstance(fmt, dict) else None
    if kind == "audio/pcmu" and rate == 8000:
        return []
    shown = repr(kind[:40]) if isinstance(kind, str) else type(kind).__name__
    return [f"session audio.format is {shown} at {rate!r} Hz, not 'audio/pcmu' at 8000"]


def _ms(event: dict[str, Any], key: str) -> int | None:
    value = event.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else None


class _Delegation:
    """One delegation's tool calls: ``waiting`` for relay's output, and whether its Responses
    response completed. It goes on (``response.create``) once both hold (BACKENDS §2.5)."""

    __slots__ = ("calls", "completed", "waiting")

    def __init__(self) -> None:
        self.calls: list[ev.ToolCall] = []  # done, not yet handed to the call
        self.waiting: set[str] = set()
        self.completed = False


class LiveBackend:
    """One GPT-Live session behind the backend seam (``relay.backends.Backend``)."""

    name = "openai-live"
    wire = ev.WIRE_LIVE_JSON
    server_cancels = True  # the model yields by itself
    timed = True
    itemless = False
    replays = True

    __slots__ = ("_delegations", "_ready")

    def __init__(self, agent: AgentProfile, session: int = 0) -> None:
        self._ready = False  # session.started confirmed μ-law
        self._delegations: dict[str, _Delegation] = {}  # by delegation id

    def open(
        self, agent: AgentProfile, history: list[tuple[str, str]], max_chars: int, resume: str = ""
    ) -> list[bytes]:
        return [session_start(agent, history, max_chars)]

    def after_ready(self) -> list[bytes]:
        return []

    def say(self, text: str) -> bytes:
        return commentary(f"{SAY_PREFIX}{text}")

    def user_text(self, text: str) -> list[bytes]:
        return [thinking(text)]

    def cancel(self) -> None:
        return None  # the model stops talking by itself when the caller speaks

    def respond(self) -> None:
        return None  # a delegation goes on by itself once every call of it is answered

    def truncate(self, item_id: str, heard_ms: int) -> None:
        return None  # no client truncate: the model's memory is its own

    def close(self) -> bytes:
        return SESSION_CLOSE  # answered by session.closed, with the session's final usage

    def tool_result(self, call_id: str, output: dict[str, Any]) -> list[bytes]:
        out = [function_output(call_id, output)]
        for delegation in self._delegations.values():
            if call_id in delegation.waiting:
                delegation.waiting.discard(call_id)
                if not delegation.waiting and delegation.completed:
                    delegation.completed = False  # its continuation is a response of its own
                    out.append(RESPONSE_CREATE)
                break
        return out

    def parse(self, message: bytes | bytearray) -> list[ev.Event]:
        try:
            event = parse_event(message)
        except ProtocolError as exc:
            return [ev.Failed(str(exc).replace("Realtime", "GPT-Live"), malformed=True)]
        kind = event["type"]
        if kind == "session.output_audio.delta":  # one the compiled path handed up: no live item yet
            delta = event.get("delta")
            if not isinstance(delta, str):
                return [ev.Failed("session.output_audio.delta needs a string delta", malformed=True)]
            return [ev.AnswerAudio("", delta.encode())]
        if kind in ("session.input_transcript.delta", "session.output_transcript.delta"):
            start, end, text = _ms(event, "start_ms"), _ms(event, "end_ms"), event.get("delta")
            if start is None or end is None or not isinstance(text, str):
                return [ev.Failed(f"{kind} needs a string delta and start_ms/end_ms", malformed=True)]
            role = "user" if kind == "session.input_transcript.delta" else "assistant"
            return [ev.TimedText(role, text, start, max(start, end))]
        if kind == "session.started":
            session = event.get("session")
            problems = session_problems(session)
            if problems:
                return [ev.Refused("backend session unusable for a phone call: " + "; ".join(problems))]
            self._ready = True
            expires = session.get("expires_at") if isinstance(session, dict) else None
            if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
                expires = None
            return [ev.Ready(float(expires) if expires is not None else None)]
        if kind == "session.usage.updated":
            return self._seconds(event.get("usage"))
        if kind == "session.closed":
            return [*self._seconds(event.get("usage")), ev.SessionClosed(str(event.get("reason"))[:40])]
        if kind == "response.event":
            inner = event.get("event")
            if not isinstance(inner, dict):
                return []
            return self._delegated(str(event.get("delegation_id") or ""), inner)
        if kind == "error":
            return [self._error(event.get("error"))]
        return []  # acks, session.delegation.created, info: nothing for the call to do

    @staticmethod
    def _seconds(usage: object) -> list[ev.Event]:
        seconds = usage.get("seconds") if isinstance(usage, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e7:
            return []
        return [ev.SessionSeconds(float(seconds))]

    def _delegated(self, delegation_id: str, inner: dict[str, Any]) -> list[ev.Event]:
        """A delegated Responses event: its function calls are collected, and handed to the call
        when its response completes (every call of it is then answered before it goes on)."""
        delegation = self._delegations.setdefault(delegation_id, _Delegation())
        kind = inner.get("type")
        if kind == "response.output_item.done":
            item = inner.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                call = ev.ToolCall(str(item.get("call_id", "")), str(item.get("name")), str(item.get("arguments", "")))
                delegation.calls.append(call)
                delegation.waiting.add(call.call_id)
            return []
        if kind in ("response.completed", "response.failed", "response.incomplete"):
            calls, delegation.calls = tuple(delegation.calls), []
            delegation.completed = True
            if not delegation.waiting:
                del self._delegations[delegation_id]  # nothing to answer: the delegation is over
            return [ev.ResponseDone((), calls)] if calls else []
        return []

    def _error(self, error: object) -> ev.Event:
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("code"))[:60]
        text = f"{str(error.get('type'))[:40]}/{code}: {str(error.get('message'))[:200]}"
        if not self._ready and error.get("client_event_id") in (None, SESSION_START_ID):
            return ev.Refused(f"the backend refused the session: {text}")
        return ev.Failed(f"backend error {text}", fatal=code in ev.FATAL_CODES)
