"""Deepgram Voice Agent (v1), sans-I/O: the client messages relay sends, the server messages it
reads, and ``DeepgramBackend``, the backend seam's adapter over them (``relay.backends``).

The Voice Agent takes μ-law at 8 kHz both ways (BACKENDS §4.2), so Twilio's audio passes through
untouched, but as **binary** frames, not JSON (``WIRE_BINARY``: ``WsCore`` sends each Twilio
frame's μ-law as one binary frame and hands the agent's binary frames to ``MediaCore``, which
pushes them into the ring as they are). Everything else is a JSON text message with a ``type``.

Barge-in is ``UserStartedSpeaking``: relay clears Twilio, and audio still in flight from the cut
answer is dropped until the next ``AgentStartedSpeaking`` (§4.4). Answers and user turns have no
ids, so this adapter numbers them; the conversation's text comes as ``ConversationText``, with
no timing, and a session lasts at most two hours.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson

from relay import backends as ev
from relay import models
from relay.agents import AgentProfile
from relay.backends.realtime import offered_tools

# The server closes every session at the 2-hour mark (§4.5): the call's recycler opens a fresh
# one before then, as it does before the other backends' caps.
SESSION_CAP_S = 7200.0
KEEPALIVE = b'{"type":"KeepAlive"}'
MAX_CONTEXT_MESSAGES = 100


def voice_of(agent: AgentProfile) -> str:
    """The agent's voice if it is a Deepgram Aura model, else Deepgram's default."""
    return agent.voice if agent.voice.startswith("aura-") else models.DEFAULT_DEEPGRAM_VOICE


def listen_model(agent: AgentProfile) -> str:
    """The agent's transcription model if it is Deepgram's, else Deepgram's default."""
    name = agent.transcription_model
    return name if name.startswith(("nova-", "flux-")) else models.DEFAULT_DEEPGRAM_LISTEN_MODEL


def settings(agent: AgentProfile, history: list[tuple[str, str]], max_chars: int) -> bytes:
    """``Settings`` for Twilio passthrough (§4.2): μ-law 8 kHz both ways with no container, the
    agent's prompt and the tools relay offers (run by relay: no ``endpoint``), opted out of the
    model improvement programme, and for a fresh session the conversation so far."""
    think: dict[str, Any] = {
        "provider": {"type": "open_ai", "model": agent.model},
        "prompt": agent.instructions,
    }
    functions = [
        {"name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]}
        for tool in offered_tools(agent)
    ]
    if functions:
        think["functions"] = functions
    settings_: dict[str, Any] = {
        "type": "Settings",
        "mip_opt_out": True,
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
        },
        "agent": {
            "listen": {"provider": {"type": "deepgram", "model": listen_model(agent)}},
            "think": think,
            "speak": {"provider": {"type": "deepgram", "model": voice_of(agent)}},
        },
    }
    context = _context(history, max_chars)
    if context:
        settings_["agent"]["context"] = {"messages": context}
    return orjson.dumps(settings_)


def _context(history: list[tuple[str, str]], max_chars: int) -> list[dict[str, str]]:
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(history):
        total += len(text)
        if total > max_chars or len(kept) == MAX_CONTEXT_MESSAGES:
            break
        kept.append((role, text))
    return [
        {"type": "History", "role": "user" if role == "user" else "assistant", "content": text}
        for role, text in reversed(kept)
    ]


def _message(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, **fields})


class DeepgramBackend:
    """One Deepgram Voice Agent session behind the backend seam (``relay.backends.Backend``)."""

    name = "deepgram"
    wire = ev.WIRE_BINARY
    server_cancels = True  # the agent stops its own speech when the caller talks
    timed = False
    itemless = True  # its audio names no answer: it goes to the answer last started
    replays = False

    __slots__ = (
        "_answer",
        "_answer_said",
        "_dropping",
        "_ids",
        "_prefix",
        "_last_answer",
        "_pending_text",
        "_ready",
        "_tools",
    )

    def __init__(self, agent: AgentProfile, session: int = 0) -> None:
        self._ready = False
        self._ids = itertools.count(1)
        self._prefix = f"s{session}." if session else ""  # (ids unique in the call, across its sessions)
        self._answer = ""  # the utterance being spoken ("" between them)
        self._answer_said = False  # some of its text came already (of the last one, once it ended)
        self._last_answer = ""  # the utterance spoken last
        self._pending_text = ""  # the agent's text that came before its utterance began
        self._dropping = False  # from UserStartedSpeaking to AgentStartedSpeaking (§4.4)
        self._tools: dict[str, str] = {}  # call id -> function name, until answered

    def open(
        self, agent: AgentProfile, history: list[tuple[str, str]], max_chars: int, resume: str = ""
    ) -> list[bytes]:
        return [settings(agent, history, max_chars)]

    def after_ready(self) -> list[bytes]:
        return []

    def say(self, text: str) -> bytes:
        return _message("InjectAgentMessage", message=text)

    def user_text(self, text: str) -> list[bytes]:
        return [_message("InjectUserMessage", content=text)]

    def cancel(self) -> None:
        return None  # the agent stops itself

    def truncate(self, item_id: str, heard_ms: int) -> None:
        return None  # nothing tells the agent what was heard

    def respond(self) -> None:
        return None  # a function's response lets the agent go on by itself

    def close(self) -> None:
        return None

    def keepalive(self) -> bytes:
        """What keeps a session with no audio flowing open (every 8 s at most, §4.5)."""
        return KEEPALIVE

    def tool_result(self, call_id: str, output: dict[str, Any]) -> list[bytes]:
        name = self._tools.pop(call_id, "")
        return [_message("FunctionCallResponse", id=call_id, name=name, content=orjson.dumps(output).decode())]

    def parse(self, message: bytes | bytearray) -> list[ev.Event]:
        if isinstance(message, bytearray):  # binary: audio the media core had no answer for
            if self._answer and not self._dropping:
                return [ev.AnswerAudio(self._answer, bytes(message))]
            return []  # the cut answer's last frames, still in flight (§4.4)
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [ev.Failed("Deepgram message is not valid JSON", malformed=True)]
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str):
            return [ev.Failed("Deepgram message is not an object with a string 'type'", malformed=True)]
        handler = _HANDLERS.get(kind)
        return handler(self, event) if handler is not None else []

    def _settings_applied(self, event: dict[str, Any]) -> list[ev.Event]:
        self._ready = True
        return [ev.Ready(time.time() + SESSION_CAP_S)]

    def _user_started(self, event: dict[str, Any]) -> list[ev.Event]:
        # The utterance is cut (relay clears Twilio) but stays open for its text, which may come
        # after the cut: it ends with that text, the caller's, or the next utterance's start.
        self._dropping = True
        return [ev.CallerSpeechStarted()]

    def _conversation_text(self, event: dict[str, Any]) -> list[ev.Event]:
        content = event.get("content")
        if not isinstance(content, str):
            return [ev.Failed("ConversationText needs a string content", malformed=True)]
        out: list[ev.Event] = []
        if event.get("role") == "user":
            if self._dropping:
                self._close_answer(out)
            user = f"{self._prefix}user{next(self._ids)}"
            return [*out, ev.CallerTurn(user), ev.CallerTranscript(user, content)]
        if self._answer:
            text = f" {content}" if self._answer_said else content
            self._answer_said = True
            out.append(ev.AnswerTranscript(self._answer, text, False))
            if self._dropping:
                self._close_answer(out)  # the cut utterance's text: it is over
            return out
        if self._last_answer and not self._answer_said:
            # The text of an utterance cut before its text came (no timing says which: an
            # utterance always has text, so one that got none is the one this is for).
            self._answer_said = True
            return [ev.AnswerTranscript(self._last_answer, content, False)]
        self._pending_text = f"{self._pending_text} {content}".strip()  # the next utterance's
        return []

    def _agent_started(self, event: dict[str, Any]) -> list[ev.Event]:
        self._dropping = False
        out: list[ev.Event] = []
        self._close_answer(out)
        self._answer = f"{self._prefix}answer{next(self._ids)}"
        out += [ev.ResponseStarted(), ev.AnswerStarted(self._answer)]
        self._answer_said = bool(self._pending_text)
        if self._pending_text:
            out.append(ev.AnswerTranscript(self._answer, self._pending_text, False))
            self._pending_text = ""
        return out

    def _agent_audio_done(self, event: dict[str, Any]) -> list[ev.Event]:
        out: list[ev.Event] = []
        self._close_answer(out)
        return out

    def _close_answer(self, out: list[ev.Event]) -> None:
        if self._answer:
            out += [ev.AnswerAudioDone(self._answer), ev.ResponseDone((self._answer,), ())]
            self._last_answer = self._answer
        self._answer = ""

    def _function_call(self, event: dict[str, Any]) -> list[ev.Event]:
        calls = []
        functions = event.get("functions")
        for function in functions if isinstance(functions, list) else ():
            if not isinstance(function, dict) or not function.get("client_side"):
                continue  # a server-side function: Deepgram runs it
            name, call_id = function.get("name"), function.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                continue
            self._tools[call_id] = name
            arguments = function.get("arguments")
            calls.append(ev.ToolCall(call_id, name, arguments if isinstance(arguments, str) else "{}"))
        return [ev.ResponseDone((), tuple(calls))] if calls else []

    def _error(self, event: dict[str, Any]) -> list[ev.Event]:
        text = f"{str(event.get('code'))[:60]}: {str(event.get('description'))[:200]}"
        if not self._ready:
            return [ev.Refused(f"the backend refused the session: {text}")]
        # Every Error ends the session (the server closes it): the call reconnects.
        return [ev.Failed(f"backend error {text}")]

    def _warning(self, event: dict[str, Any]) -> list[ev.Event]:
        return [ev.Failed(f"backend warning {str(event.get('code'))[:60]}: {str(event.get('description'))[:200]}")]


_HANDLERS = {
    "SettingsApplied": DeepgramBackend._settings_applied,
    "UserStartedSpeaking": DeepgramBackend._user_started,
    "ConversationText": DeepgramBackend._conversation_text,
    "AgentStartedSpeaking": DeepgramBackend._agent_started,
    "AgentAudioDone": DeepgramBackend._agent_audio_done,
    "FunctionCallRequest": DeepgramBackend._function_call,
    "Error": DeepgramBackend._error,
    "Warning": DeepgramBackend._warning,
    "InjectionRefused": DeepgramBackend._warning,
}
