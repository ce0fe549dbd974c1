"""The backend seam: what a call needs from any speech-to-speech backend, sans-I/O.

A ``Backend`` is one backend session's protocol, with no socket: ``parse`` turns each message
the backend sent into a few ``Event`` values, and the command methods return the messages to
send. ``relay.conversation`` speaks only this seam, so a backend plugs in by implementing it
(``relay.backends.realtime`` is OpenAI Realtime GA, ``relay.backends.live`` OpenAI GPT-Live,
``relay.backends.gemini`` Google Gemini Live, ``relay.backends.deepgram`` Deepgram's Voice Agent). The
per-frame parts stay compiled and
are chosen per backend by ``wire``: the audio appends relay sends and the audio deltas it
reads never reach ``parse`` on the common path (``relay.fastpath.MediaCore`` handles them).

Events are plain frozen values. A backend reports what it knows and leaves out what it does
not (a backend without turn signals never sends ``CallerTurn``); ``None`` from a command
means the backend has no such thing (no truncate, say), and the call goes on without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from relay.agents import AgentProfile
from relay.usage import Tokens, Transcription

# How a word from outside the call (an escalation's outcome, a transfer declined) reaches the
# model: a user message it is told is not the caller's.
NOTE_PREFIX = "[A note for you, not said by the caller] "

# The compiled framing a backend's audio takes (``WsCore.wire``, ``MediaCore.wire``): JSON text
# appends and deltas with base64 μ-law, as OpenAI Realtime sends them (per item), or as GPT-Live
# does (``session.input_audio.append``, and one stream of ``session.output_audio.delta`` per
# session); raw μ-law in binary frames both ways (Deepgram); or PCM16 in base64 JSON, 16 kHz in
# and 24 kHz out (Gemini Live), transcoded from and to Twilio's μ-law in the compiled path.
WIRE_REALTIME_JSON = 0
WIRE_LIVE_JSON = 1
WIRE_BINARY = 2
WIRE_PCM16 = 3


# Error codes that say the account cannot serve any call (no quota, a bad key): retrying only
# repeats them (the set LiveKit treats as fatal, BACKENDS §2.4).
FATAL_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "invalid_api_key",
        "account_deactivated",
        "billing_hard_limit_reached",
        "forbidden",
    }
)


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is confirmed in a format a phone call can use: caller audio may flow.

    ``expires_at``: when the backend will end the session (Unix seconds), if it says.
    """

    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The backend refused the session before it was ready (wrong format, an error about it)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """An error: logged and counted, and the call goes on (``malformed``: a message relay could not
    read; ``about``: which of relay's commands it rejects, when the backend says, e.g. ``"truncate"``),
    unless it is ``fatal``."""

    reason: str
    malformed: bool = False
    about: str = ""
    fatal: bool = False  # the account cannot serve calls (no quota, a bad key): never retried


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    pass


@dataclass(frozen=True, slots=True)
class CallerSpeechStopped:
    audio_end_ms: int | None  # into the session's input audio, when the backend says


@dataclass(frozen=True, slots=True)
class CallerTurn:
    """The caller's utterance is committed as a turn; an answer is coming."""

    item_id: str


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    item_id: str
    text: str
    usage: Transcription | None = None  # what transcribing it used, when the backend says


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    pass


@dataclass(frozen=True, slots=True)
class AnswerStarted:
    """An answer (an item of the agent's speech) begins; its audio follows."""

    item_id: str


@dataclass(frozen=True, slots=True)
class AnswerAudio:
    """Audio of an answer that did not take the compiled path (base64 μ-law)."""

    item_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AnswerTranscript:
    """Text of an answer: a delta to append, or (``final``) the whole of it."""

    item_id: str
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class AnswerAudioDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON, as the model wrote it


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The response ended: its answers are done; its tool calls are to be run.

    ``usage``: the response's tokens as the backend accounts for them (None: it did not say).
    """

    item_ids: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...]
    usage: Tokens | None = None


@dataclass(frozen=True, slots=True)
class TimedText:
    """A transcript fragment placed on the session's timeline (GPT-Live): what the caller
    (``role="user"``) or the agent (``"assistant"``) said from ``start_ms`` to ``end_ms``. The
    agent's are on the timeline of the session's output audio, whose byte ``k`` is at ``k / 8`` ms."""

    role: str
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class SessionSeconds:
    """The session's billed length so far (cumulative: the latest replaces the ones before)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ResumeHandle:
    """What a new connection resumes this session with, context and all (Gemini Live's latest
    resumable ``sessionResumptionUpdate``)."""

    handle: str


@dataclass(frozen=True, slots=True)
class SessionEnding:
    """The backend will end this connection in ``seconds`` (Gemini Live's ``goAway``): a fresh one
    takes over now, between turns."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The backend closed the session, and said why (GPT-Live's ``session.closed`` reason)."""

    reason: str


Event = (
    Ready
    | Refused
    | Failed
    | CallerSpeechStarted
    | CallerSpeechStopped
    | CallerTurn
    | CallerTranscript
    | ResponseStarted
    | AnswerStarted
    | AnswerAudio
    | AnswerTranscript
    | AnswerAudioDone
    | ResponseDone
    | TimedText
    | SessionSeconds
    | SessionClosed
    | ResumeHandle
    | SessionEnding
)


class Backend(Protocol):
    """One backend session's protocol. A new session gets a new instance."""

    name: str
    wire: int  # the compiled framing of its audio (``WIRE_*``)
    server_cancels: bool  # the backend cancels a response itself when the caller speaks
    # Turns come as ``TimedText`` on one stream of audio per session, not as answer items; the
    # model yields to the caller by itself (GPT-Live).
    timed: bool
    # Its audio names no answer (Gemini, Deepgram): it goes to the answer last started
    # (``AnswerStarted``), and the first audio of each is what starts one.
    itemless: bool
    # A session that takes over mid-call is sent the last of the caller's audio the old one was
    # sent first (``CallOptions.live_preroll_ms``): what the caller said since the context the new
    # one starts from was taken (GPT-Live's turns, Gemini's resumption point) is not lost.
    replays: bool

    def parse(self, message: bytes | bytearray) -> list[Event]:
        """The events in one message (never raises: a bad message is a ``Failed``). A
        ``bytearray`` is a binary message (audio of a binary wire the media core left)."""
        ...

    def open(
        self, agent: AgentProfile, history: list[tuple[str, str]], max_chars: int, resume: str = ""
    ) -> list[bytes]:
        """The session set-up, sent first: ``agent``'s settings, and for a fresh session the
        conversation so far, (role, text) oldest first, at most ``max_chars`` of its newest text;
        ``resume``: a ``ResumeHandle`` the backend resumes the session from instead, if it can."""
        ...

    def after_ready(self) -> list[bytes]:
        """What follows the set-up once the session is ready (the conversation so far, where the
        set-up cannot carry it)."""
        ...

    def say(self, text: str) -> bytes:
        """Have the agent say ``text`` (a greeting, a line after a reconnect)."""
        ...

    def user_text(self, text: str) -> list[bytes]:
        """Something the caller did that is not speech (keys), answered by the agent."""
        ...

    def cancel(self) -> bytes | None:
        """Stop the response in progress."""
        ...

    def truncate(self, item_id: str, heard_ms: int) -> bytes | None:
        """Cut the answer in the model's memory at what the caller heard."""
        ...

    def tool_result(self, call_id: str, output: dict[str, Any]) -> list[bytes]:
        """The result of a tool call, and whatever makes the model go on."""
        ...

    def respond(self) -> bytes | None:
        """Have the model speak about the results of its tool calls (None: it goes on by itself)."""
        ...

    def close(self) -> bytes | None:
        """What asks the backend to end the session and say what it used (None: nothing; the
        socket's close is the end)."""
        ...


# Each backend an agent may name (``relay.agents.BACKENDS``), and the class that speaks it;
# imported when first used, so a deployment loads only the protocols its agents use.
IMPLEMENTATIONS = {
    "openai-realtime": ("relay.backends.realtime", "RealtimeBackend"),
    "openai-live": ("relay.backends.live", "LiveBackend"),
    "gemini-live": ("relay.backends.gemini", "GeminiBackend"),
    "deepgram": ("relay.backends.deepgram", "DeepgramBackend"),
}
# The compiled framing each one's audio takes (the connection is opened for it: ``WsCore.wire``).
WIRES = {
    "openai-realtime": WIRE_REALTIME_JSON,
    "openai-live": WIRE_LIVE_JSON,
    "gemini-live": WIRE_PCM16,
    "deepgram": WIRE_BINARY,
}


def for_agent(agent: AgentProfile, session: int = 0) -> Backend:
    """A new session's protocol for ``agent`` (its ``backend``); ``session``: its number in the
    call (0 first), which the ids it makes up for answers and turns carry, unique in the call.

    Raises:
        ValueError: no backend of that name (the stores and settings refuse such an agent first).
    """
    try:
        module, name = IMPLEMENTATIONS[agent.backend]
    except KeyError:
        raise ValueError(f"no speech backend named {agent.backend[:40]!r}") from None
    backend: Backend = getattr(importlib.import_module(module), name)(agent, session)
    return backend


__all__ = [
    "FATAL_CODES",
    "IMPLEMENTATIONS",
    "WIRES",
    "WIRE_BINARY",
    "WIRE_LIVE_JSON",
    "WIRE_PCM16",
    "WIRE_REALTIME_JSON",
    "AnswerAudio",
    "AnswerAudioDone",
    "AnswerStarted",
    "AnswerTranscript",
    "Backend",
    "CallerSpeechStarted",
    "CallerSpeechStopped",
    "CallerTranscript",
    "CallerTurn",
    "Event",
    "Failed",
    "Ready",
    "Refused",
    "ResponseDone",
    "ResponseStarted",
    "ResumeHandle",
    "SessionClosed",
    "SessionEnding",
    "SessionSeconds",
    "TimedText",
    "ToolCall",
    "for_agent",
]
