"""What one call used, as the backend accounts for it: sans-I/O, counted per response, never per frame.

A backend reports usage in its own terms (OpenAI Realtime: the ``usage`` of each
``response.done``, and of each input transcription); the backend adapter turns it into
``Tokens`` and ``Transcription`` values, and the call's ``UsageMeter`` adds them up.
``relay.pricing`` prices the total when the call ends.

A response the backend never accounted for (the call ended while it was under way, or a
backend that reports nothing) is not left out as zero: the meter estimates it from the audio
relay carried and the call's usage is marked ``estimated``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# OpenAI's audio token rates, used only to estimate what a backend did not account for: a token
# is 100 ms of the caller's audio and 50 ms of the model's (the simulated agent bills alike).
INPUT_AUDIO_MS_PER_TOKEN = 100
OUTPUT_AUDIO_MS_PER_TOKEN = 50


@dataclass(frozen=True, slots=True)
class Tokens:
    """A response's tokens by modality. Cached input is part of the input counts, as OpenAI
    reports it (``input_token_details.text_tokens`` includes ``cached_tokens_details.text_tokens``)."""

    text_in: int = 0
    cached_text_in: int = 0
    audio_in: int = 0
    cached_audio_in: int = 0
    text_out: int = 0
    audio_out: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Tokens)))

    @property
    def total(self) -> int:
        return self.text_in + self.audio_in + self.text_out + self.audio_out


# Token kinds, as ``Tokens`` names them (``UsageRecord`` has a ``<kind>_tokens`` column each).
TOKEN_KINDS = tuple(f.name for f in fields(Tokens))


@dataclass(frozen=True, slots=True)
class Transcription:
    """One input transcription's usage: by duration (``seconds``) or by tokens, as the model bills."""

    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0

    def __add__(self, other: Transcription) -> Transcription:
        return Transcription(
            self.seconds + other.seconds, self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out
        )


@dataclass(frozen=True, slots=True)
class CallUsage:
    """What a call used, before pricing: the backend's accounting and relay's own measures."""

    backend: str
    model: str
    transcription_model: str
    tokens: Tokens
    transcription: Transcription
    seconds: float  # the media stream, start to end (per-second backends)
    twilio_minutes: int  # Twilio's billed minutes this stream adds to the call (each started minute)
    audio_in_seconds: float  # the caller's audio relayed upstream
    audio_out_seconds: float  # the answers' audio relayed to the caller
    estimated: bool  # some of ``tokens`` is relay's estimate, not the backend's accounting


class UsageMeter:
    """Adds up one call's usage as responses end (sans-I/O; the conversation feeds it)."""

    __slots__ = ("_accounted", "_reported", "_started", "tokens", "transcription")

    def __init__(self) -> None:
        self.tokens = Tokens()
        self.transcription = Transcription()
        self._started = 0  # responses begun
        self._reported = 0  # responses whose usage the backend gave
        self._accounted: set[str] = set()  # answer items of those responses

    def response_started(self) -> None:
        self._started += 1

    def response_done(self, usage: Tokens | None, item_ids: tuple[str, ...]) -> None:
        if usage is None:
            return
        self._reported += 1
        self.tokens += usage
        self._accounted.update(item_ids)

    def transcribed(self, usage: Transcription) -> None:
        self.transcription += usage

    def total(self, answers_ms: dict[str, int], caller_ms: int) -> tuple[Tokens, bool]:
        """The call's tokens, and whether any of them are estimated.

        ``answers_ms``: each answer item's audio as relay received it; ``caller_ms``: the
        caller's audio relayed. Answers no reported response covers are estimated from their
        audio; when the backend accounted for nothing at all, the caller's audio is too.
        """
        unaccounted_ms = sum(ms for item, ms in answers_ms.items() if item not in self._accounted)
        nothing_reported = self._reported == 0 and (self._started > 0 or bool(answers_ms))
        if not unaccounted_ms and self._reported >= self._started and not nothing_reported:
            return self.tokens, False
        estimate = Tokens(
            audio_in=caller_ms // INPUT_AUDIO_MS_PER_TOKEN if nothing_reported else 0,
            audio_out=unaccounted_ms // OUTPUT_AUDIO_MS_PER_TOKEN,
        )
        return self.tokens + estimate, True


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What a call used and what that cost (``relay.pricing.bill``), written as its stream ends.

    Tokens are the backend's own accounting (cached input is part of the input counts);
    ``estimated``: some are relay's estimate from the audio, for responses the backend never
    accounted for. Costs are whole nano-dollars under ``prices_version``; ``unpriced`` names
    what was used with no price (comma-separated), so ``cost_nanousd`` is then a lower bound.
    """

    call_sid: str
    started_at: float
    ended_at: float
    tenant_id: str = "default"
    stream_sid: str = ""  # a call handed between relays has a row per stream
    agent_id: str = "default"
    direction: str = "inbound"
    backend: str = ""
    model: str = ""
    audio_in_seconds: float = 0.0
    audio_out_seconds: float = 0.0
    text_in_tokens: int = 0
    cached_text_in_tokens: int = 0
    audio_in_tokens: int = 0
    cached_audio_in_tokens: int = 0
    text_out_tokens: int = 0
    audio_out_tokens: int = 0
    backend_seconds: float = 0.0
    transcription_model: str = ""
    transcription_seconds: float = 0.0
    transcription_tokens_in: int = 0
    transcription_tokens_out: int = 0
    twilio_minutes: int = 0
    estimated: bool = False
    prices_version: str = ""
    backend_cost_nanousd: int = 0
    transcription_cost_nanousd: int = 0
    twilio_cost_nanousd: int = 0
    cost_nanousd: int = 0
    unpriced: str = ""
