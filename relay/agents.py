"""What a tenant's agent is, and every value it may take: one place for both stores, the
environment (``relay.config``), the CLI and the database's CHECK constraints to agree on.

An ``Agent`` is the stored row (``relay agents add|set|list|show``); ``profile()`` turns it
into the ``AgentProfile`` a call runs with. A tenant's first agent is the environment's
(``Settings.agent``), so ``RELAY_AGENT_*`` is the template, never hard-coded defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from relay import models

if TYPE_CHECKING:
    from relay.tools.spec import TenantTool, TransferTarget


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """How the model behaves on a call: the session settings relay sends upstream."""

    instructions: str
    voice: str = "marin"
    model: str = models.DEFAULT_REALTIME_MODEL  # the session's model (the connection URL's ``model``)
    transcription_model: str = models.DEFAULT_TRANSCRIPTION_MODEL
    vad_threshold: float = 0.5
    vad_silence_ms: int = 500
    vad_prefix_ms: int = 300
    greeting: str = ""  # said as soon as the stream starts; empty: the caller speaks first
    end_call_tool: bool = True  # offer the model the built-in end_call tool
    escalate_tool: bool = False  # offer ``escalate``: after hours, with someone on call to reach
    interrupt_response: bool = True  # server VAD cancels a response when the caller speaks
    backend: str = "openai-realtime"  # which speech backend serves the call (``BACKENDS``)
    reasoning_effort: str = models.DEFAULT_REASONING_EFFORT  # sent to the models that reason (``models.reasons``)
    # On a call it placed that an answering machine takes: the message it leaves after the
    # beep; empty: it hangs up instead.
    voicemail_message: str = ""
    # The tenant's own tools (``relay tools``) and the people ``transfer_call`` reaches
    # (``relay transfers``): read from the store as each call starts.
    tools: tuple[TenantTool, ...] = ()
    transfer_targets: tuple[TransferTarget, ...] = ()
    # The tenant whose call it is (set as the call starts): its own key for the backend, if it
    # has one (``relay tenants set-backend-key``), opens the backend's sessions.
    tenant_id: str = ""


DEFAULT_AGENT = "default"

# GA voices (PROTOCOLS §2.2). fable, onyx and nova are absent on purpose: they are reported
# to come out as noise over G.711.
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
# The speech backends an agent may use, behind one seam: OpenAI Realtime, OpenAI GPT-Live (whose
# models are its own, ``models.LIVE_MODELS``), Google Gemini Live (``models.GEMINI_MODELS``) and
# Deepgram's Voice Agent (the model it thinks with; an Aura voice).
BACKENDS = ("openai-realtime", "openai-live", "gemini-live", "deepgram")


def voices_of(backend: str) -> tuple[str, ...]:
    """The voices an agent on ``backend`` may name (OpenAI's always: the others map them to theirs)."""
    if backend == "gemini-live":
        return VOICES + models.GEMINI_VOICES
    if backend == "deepgram":
        return (*VOICES, models.DEFAULT_DEEPGRAM_VOICE, "aura-2-<name>-<language>")
    return VOICES


def voice_fits(voice: str, backend: str) -> bool:
    if backend == "deepgram" and voice.startswith("aura-") and len(voice) <= 60 and voice.isprintable():
        return " " not in voice
    return voice in voices_of(backend)


# Inclusive bounds of every numeric setting, here and in the environment. A limit of 0 admits
# no call (a suspended agent); no limit at all is None.
RANGES: dict[str, tuple[float, float]] = {
    "vad_threshold": (0.0, 1.0),
    "vad_silence_ms": (100, 10000),
    "vad_prefix_ms": (0, 5000),
    "max_concurrent_calls": (0, 100_000),
    "calls_per_minute": (0, 100_000),
}
MAX_TEXT = 20_000  # instructions and greeting, in characters
MAX_NAME = 100  # agent ids and model names


@dataclass(frozen=True, slots=True)
class Agent:
    """A tenant's agent as stored: how the model behaves on the calls routed to it."""

    tenant_id: str
    agent_id: str
    instructions: str
    voice: str
    model: str
    transcription_model: str
    vad_threshold: float
    vad_silence_ms: int
    vad_prefix_ms: int
    greeting: str = ""  # said when the stream starts; empty: RELAY_GREETING, or the caller speaks first
    backend: str = BACKENDS[0]
    max_concurrent_calls: int | None = None  # None: no limit of its own (the tenant's still apply)
    calls_per_minute: int | None = None
    reasoning_effort: str = models.DEFAULT_REASONING_EFFORT  # for a model that reasons; ignored by others
    voicemail_message: str = ""  # left on an answering machine after the beep; empty: hang up

    @classmethod
    def from_profile(cls, tenant_id: str, agent_id: str, profile: AgentProfile) -> Agent:
        """An agent that behaves as ``profile`` (the environment's, for a tenant's first agent)."""
        return cls(
            tenant_id,
            agent_id,
            instructions=profile.instructions,
            voice=profile.voice,
            model=profile.model,
            transcription_model=profile.transcription_model,
            vad_threshold=profile.vad_threshold,
            vad_silence_ms=profile.vad_silence_ms,
            vad_prefix_ms=profile.vad_prefix_ms,
            greeting=profile.greeting,
            backend=profile.backend,
            reasoning_effort=profile.reasoning_effort,
            voicemail_message=profile.voicemail_message,
        )

    def profile(self, base: AgentProfile) -> AgentProfile:
        """The session settings a call with this agent runs with; what an agent row does not
        carry (the relay-wide greeting when it has none, the end_call tool) comes from ``base``."""
        return dataclasses.replace(
            base,
            instructions=self.instructions,
            voice=self.voice,
            model=self.model,
            transcription_model=self.transcription_model,
            vad_threshold=self.vad_threshold,
            vad_silence_ms=self.vad_silence_ms,
            vad_prefix_ms=self.vad_prefix_ms,
            greeting=self.greeting or base.greeting,
            backend=self.backend,
            reasoning_effort=self.reasoning_effort,
            voicemail_message=self.voicemail_message,
        )

    def problems(self) -> list[str]:
        """Every value out of bounds, one line each (empty: the agent can be stored)."""
        out = []
        if not self.agent_id or len(self.agent_id) > MAX_NAME or not self.agent_id.isprintable():
            out.append(f"agent id {self.agent_id[:MAX_NAME]!r} must be 1..{MAX_NAME} printable characters")
        if not voice_fits(self.voice, self.backend):
            out.append(f"voice {self.voice[:40]!r} is not one of {', '.join(voices_of(self.backend))}")
        if self.reasoning_effort not in models.REASONING_EFFORTS:
            out.append(
                f"reasoning effort {self.reasoning_effort[:40]!r} is not one of {', '.join(models.REASONING_EFFORTS)}"
            )
        if self.backend not in BACKENDS:
            out.append(f"backend {self.backend[:40]!r} is not one of {', '.join(BACKENDS)}")
        elif self.backend == "openai-live" and self.model not in models.LIVE_MODELS:
            out.append(f"model {self.model[:MAX_NAME]!r} is not a GPT-Live model ({', '.join(models.LIVE_MODELS)})")
        elif self.backend != "openai-live" and self.model in models.LIVE_MODELS:
            out.append(f"model {self.model!r} is a GPT-Live model: its backend is openai-live")
        elif self.backend == "gemini-live" and self.model not in models.GEMINI_MODELS:
            names = ", ".join(models.GEMINI_MODELS)
            out.append(f"model {self.model[:MAX_NAME]!r} is not a Gemini Live model ({names})")
        elif self.backend != "gemini-live" and self.model in models.GEMINI_MODELS:
            out.append(f"model {self.model!r} is a Gemini Live model: its backend is gemini-live")
        for name in ("model", "transcription_model"):
            value = getattr(self, name)
            if not value or len(value) > MAX_NAME or not value.isprintable() or " " in value:
                out.append(f"{name.replace('_', ' ')} {value[:MAX_NAME]!r} is not a model name")
        for name in ("instructions", "greeting", "voicemail_message"):
            if len(getattr(self, name)) > MAX_TEXT:
                out.append(f"{name} is longer than {MAX_TEXT} characters")
        if not self.instructions.strip():
            out.append("instructions must not be empty")
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not lo <= value <= hi:
                out.append(f"{name.replace('_', ' ')} {value} is outside {lo:g}..{hi:g}")
        return out


COLUMNS = tuple(f.name for f in fields(Agent))
