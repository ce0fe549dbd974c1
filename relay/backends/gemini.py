"""Google Gemini Live (BidiGenerateContent), sans-I/O: the client messages relay sends, the server
messages it reads, and ``GeminiBackend``, the backend seam's adapter over them (``relay.backends``).

Gemini Live is neither OpenAI protocol (BACKENDS §3): ``setup`` first, audio only after
``setupComplete``; the caller's audio goes in as PCM16 at 16 kHz and the model's comes out as
PCM16 at 24 kHz, faster than real time. Both are transcoded in the compiled path
(``WIRE_PCM16``: ``WsCore`` turns each Twilio frame into a ``realtimeInput``, ``MediaCore`` reads
each audio-only ``serverContent`` straight into the ring as μ-law), so no message of audio
reaches this module but an answer's first (which names no answer: here it becomes one).

What the model does the relay cannot see: it hears the caller itself (server VAD) and cuts its
own answer, saying so only with ``serverContent.interrupted``; answers and user turns have no
ids, so this adapter numbers them. Connections last about ten minutes: ``goAway`` warns, and
``sessionResumptionUpdate`` hands out the handle a new connection resumes the session with.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson

from relay import backends as ev
from relay import models
from relay.agents import AgentProfile
from relay.backends.realtime import offered_tools
from relay.usage import Tokens

INPUT_MIME = "audio/pcm;rate=16000"
# What the model is told to say a line with (a greeting, a line after a reconnect).
SAY_PREFIX = "Say to the caller now, in these words: "
MAX_SEED_TURNS = 100
DURATION = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?s$")  # protobuf Duration in JSON: "59s", "1.5s"


def _schema(value: Any) -> Any:
    """A JSON Schema as Gemini's OpenAPI subset writes it: type names in capitals."""
    if isinstance(value, dict):
        return {
            key: (item.upper() if key == "type" and isinstance(item, str) else _schema(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_schema(item) for item in value]
    return value


def voice_of(agent: AgentProfile) -> str:
    """The agent's voice if it is one of Gemini's, else Gemini's default (OpenAI names mean nothing there)."""
    return agent.voice if agent.voice in models.GEMINI_VOICES else models.DEFAULT_GEMINI_VOICE


def setup(agent: AgentProfile, handle: str = "") -> bytes:
    """``setup`` for a phone call (BACKENDS §3.2): audio answers only, both transcriptions on (the
    turns are stored from them), the server's VAD cutting the model when the caller speaks, the
    tools relay offers, and session resumption (``handle``: the session this connection resumes)."""
    config: dict[str, Any] = {
        "model": f"models/{agent.model}",
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": voice_of(agent)}}},
        },
        "systemInstruction": {"parts": [{"text": agent.instructions}]},
        "realtimeInputConfig": {
            "automaticActivityDetection": {
                "prefixPaddingMs": agent.vad_prefix_ms,
                "silenceDurationMs": agent.vad_silence_ms,
            },
            "activityHandling": "START_OF_ACTIVITY_INTERRUPTS",
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": {"handle": handle} if handle else {},
        "contextWindowCompression": {"slidingWindow": {}},
    }
    declarations = [
        {"name": tool["name"], "description": tool["description"], "parameters": _schema(tool["parameters"])}
        for tool in offered_tools(agent)
    ]
    if declarations:
        config["tools"] = [{"functionDeclarations": declarations}]
    return orjson.dumps({"setup": config})


def seed(history: list[tuple[str, str]], max_chars: int) -> bytes | None:
    """The conversation so far as ``clientContent`` turns, newest that fit; no reply is asked for."""
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(history):
        total += len(text)
        if total > max_chars or len(kept) == MAX_SEED_TURNS:
            break
        kept.append((role, text))
    if not kept:
        return None
    turns = [
        {"role": "user" if role == "user" else "model", "parts": [{"text": text}]} for role, text in reversed(kept)
    ]
    return orjson.dumps({"clientContent": {"turns": turns, "turnComplete": False}})


def text_input(text: str) -> bytes:
    """``realtimeInput.text``: text the model answers as it would speech (on 3.x, ``clientContent``
    alone starts no reply: BACKENDS §3.8)."""
    return orjson.dumps({"realtimeInput": {"text": text}})


def tool_response(call_id: str, name: str, output: dict[str, Any]) -> bytes:
    """``toolResponse`` for one call (``id`` is mandatory on the Developer API, §3.5)."""
    return orjson.dumps({"toolResponse": {"functionResponses": [{"id": call_id, "name": name, "response": output}]}})


def seconds_of(duration: object) -> float | None:
    """A protobuf Duration as JSON ("59s") in seconds, or None."""
    match = DURATION.match(duration) if isinstance(duration, str) else None
    if match is None:
        return None
    return int(match.group(1)) + (int(match.group(2)) / 10 ** len(match.group(2)) if match.group(2) else 0.0)


def _count(obj: object, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0


def usage_tokens(usage: object) -> Tokens | None:
    """``usageMetadata``'s tokens by modality (AUDIO, else text); None when it counts none."""
    if not isinstance(usage, dict):
        return None
    counts = {"text_in": 0, "audio_in": 0, "text_out": 0, "audio_out": 0}
    for key, side, total in (
        ("promptTokensDetails", "in", "promptTokenCount"),
        ("responseTokensDetails", "out", "responseTokenCount"),
    ):
        details = usage.get(key)
        if isinstance(details, list) and details:
            for entry in details:
                kind = "audio" if isinstance(entry, dict) and entry.get("modality") == "AUDIO" else "text"
                counts[f"{kind}_{side}"] += _count(entry, "tokenCount")
        else:
            counts[f"text_{side}"] += _count(usage, total)
    tokens = Tokens(**counts)
    return tokens if tokens.total else None


class GeminiBackend:
    """One Gemini Live connection behind the backend seam (``relay.backends.Backend``)."""

    name = "gemini-live"
    wire = ev.WIRE_PCM16
    server_cancels = True  # the server cuts the model when the caller speaks
    timed = False
    itemless = True  # its audio names no answer: it goes to the answer last started
    replays = True  # the resumed session's context ends at its last handle

    __slots__ = (
        "_answer",
        "_answer_done",
        "_ids",
        "_prefix",
        "_last_answer",
        "_ready",
        "_seed",
        "_tools",
        "_usage",
        "_user",
        "_user_answered",
        "_user_text",
    )

    def __init__(self, agent: AgentProfile, session: int = 0) -> None:
        self._ready = False
        self._ids = itertools.count(1)
        self._prefix = f"s{session}." if session else ""  # (ids unique in the call, across its sessions)
        self._answer = ""  # the answer being made ("" between answers)
        self._answer_done = False  # its audio is all sent (generationComplete)
        self._last_answer = ""  # where a transcript that comes after its answer goes
        self._user = ""  # the caller's turn being transcribed
        self._user_text = ""
        self._user_answered = False  # an answer began since it did: its words are all in
        self._tools: dict[str, str] = {}  # call id -> function name, until answered
        self._seed: list[bytes] = []
        self._usage: Tokens | None = None  # reported while an answer is being made

    def open(
        self, agent: AgentProfile, history: list[tuple[str, str]], max_chars: int, resume: str = ""
    ) -> list[bytes]:
        # A resumed session has the conversation already; a fresh one is seeded once it is set up.
        seeded = seed(history, max_chars) if not resume else None
        self._seed = [seeded] if seeded is not None else []
        return [setup(agent, resume)]

    def after_ready(self) -> list[bytes]:
        seeded, self._seed = self._seed, []
        return seeded

    def say(self, text: str) -> bytes:
        return text_input(f"{SAY_PREFIX}{text}")

    def user_text(self, text: str) -> list[bytes]:
        return [text_input(text)]

    def cancel(self) -> None:
        return None  # the server cuts the model itself

    def truncate(self, item_id: str, heard_ms: int) -> None:
        return None  # no client truncate: the server assumes real-time playback

    def respond(self) -> None:
        return None  # a tool response lets the model go on by itself

    def close(self) -> None:
        return None

    def tool_result(self, call_id: str, output: dict[str, Any]) -> list[bytes]:
        name = self._tools.pop(call_id, "")
        return [tool_response(call_id, name, output)]

    def parse(self, message: bytes | bytearray) -> list[ev.Event]:
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [ev.Failed("Gemini Live message is not valid JSON", malformed=True)]
        if not isinstance(event, dict):
            return [ev.Failed("Gemini Live message is not a JSON object", malformed=True)]
        out: list[ev.Event] = []
        if "setupComplete" in event:
            self._ready = True
            out.append(ev.Ready())
        content = event.get("serverContent")
        if isinstance(content, dict):
            self._content(content, out)
        call = event.get("toolCall")
        if isinstance(call, dict):
            self._tool_call(call, out)
        tokens = usage_tokens(event.get("usageMetadata"))
        if tokens is not None:
            # Counted with the answer it comes with (or its end), else on its own.
            self._usage = tokens if self._usage is None else self._usage + tokens
            if not self._answer:
                out.append(ev.ResponseDone((), (), self._usage))
                self._usage = None
        resumption = event.get("sessionResumptionUpdate")
        handle = resumption.get("newHandle") if isinstance(resumption, dict) else None
        if isinstance(resumption, dict) and resumption.get("resumable") and isinstance(handle, str) and handle:
            out.append(ev.ResumeHandle(handle[:2048]))
        away = event.get("goAway")
        if isinstance(away, dict):
            left = seconds_of(away.get("timeLeft"))
            out.append(ev.SessionEnding(left if left is not None else 0.0))
        return out

    def _content(self, content: dict[str, Any], out: list[ev.Event]) -> None:
        """One ``serverContent``, its parts in the order that keeps turns whole (§3.8: bundled
        fields; the caller's words first, a cut before new audio, audio before the turn's end)."""
        heard = content.get("inputTranscription")
        if isinstance(heard, dict) and isinstance(heard.get("text"), str):
            if self._user and self._user_answered:
                # The model answered that turn already: these are new words (the caller talking
                # over the answer, before the server cuts it), a turn of their own.
                self._close_user(out)
            if not self._user:
                self._user = f"{self._prefix}user{next(self._ids)}"
                out.append(ev.CallerTurn(self._user))
            self._user_text += heard["text"]
            if heard.get("finished"):
                self._close_user(out)
        if content.get("interrupted") is True:
            out.append(ev.CallerSpeechStarted())  # barge-in: the server already stopped the model
            out.append(ev.CallerSpeechStopped(None))  # (no end of speech is ever told)
            self._close_answer(out)
        turn = content.get("modelTurn")
        parts = turn.get("parts") if isinstance(turn, dict) else None
        for part in parts if isinstance(parts, list) else ():
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if isinstance(inline, dict):
                self._audio(inline, out)
        said = content.get("outputTranscription")
        if isinstance(said, dict) and isinstance(said.get("text"), str):
            answer = self._answer or self._last_answer
            if answer:
                out.append(ev.AnswerTranscript(answer, said["text"], final=False))
        if content.get("generationComplete") is True and self._answer and not self._answer_done:
            self._answer_done = True
            out.append(ev.AnswerAudioDone(self._answer))
        if content.get("turnComplete") is True:
            self._close_answer(out)
            if self._user_answered:
                self._close_user(out)  # (words begun over a cut answer wait for their own answer)

    def _audio(self, inline: dict[str, Any], out: list[ev.Event]) -> None:
        data, mime = inline.get("data"), inline.get("mimeType")
        if not isinstance(data, str) or not (isinstance(mime, str) and mime.startswith("audio/pcm")):
            out.append(ev.Failed(f"modelTurn inlineData is not PCM audio ({str(mime)[:40]!r})", malformed=True))
            return
        if not self._answer:
            self._answer = self._last_answer = f"{self._prefix}answer{next(self._ids)}"
            self._answer_done = False
            self._user_answered = bool(self._user)
            out.append(ev.ResponseStarted())
            out.append(ev.AnswerStarted(self._answer))
        out.append(ev.AnswerAudio(self._answer, data.encode()))

    def _close_answer(self, out: list[ev.Event]) -> None:
        if not self._answer:
            return
        if not self._answer_done:
            out.append(ev.AnswerAudioDone(self._answer))
        out.append(ev.ResponseDone((self._answer,), (), self._usage))
        self._answer, self._answer_done, self._usage = "", False, None

    def _close_user(self, out: list[ev.Event]) -> None:
        if self._user:
            out.append(ev.CallerTranscript(self._user, self._user_text.strip()))
            self._user, self._user_text, self._user_answered = "", "", False

    def _tool_call(self, call: dict[str, Any], out: list[ev.Event]) -> None:
        calls = []
        functions = call.get("functionCalls")
        for function in functions if isinstance(functions, list) else ():
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                continue
            call_id = str(function.get("id") or f"{self._prefix}call{next(self._ids)}")[:100]
            self._tools[call_id] = function["name"]
            arguments = function.get("args")
            calls.append(ev.ToolCall(call_id, function["name"], orjson.dumps(arguments or {}).decode()))
        if calls:
            out.append(ev.ResponseDone((), tuple(calls)))
