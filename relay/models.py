"""The speech and transcription models relay names, and the ones announced to shut down.

``relay serve`` checks every model it is configured with (the default and each tenant agent's)
against ``SHUTDOWNS`` at start and warns, with the date, about those on the list, so an
operator learns of a shutdown from relay's log rather than from calls failing on the day.

Sources (``../shared/BACKENDS.md`` §5.1): OpenAI's own model docstrings mark the realtime
models below for 2027-01-20 (openai 3.63.0 ``realtime_session_create_request.py``); the
``gpt-4o-realtime*``/``gpt-audio`` entries and the transcription models' 2027-02-26 come from
third-party deprecation lists and are marked "reported".
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_REALTIME_MODEL = "gpt-realtime-2.1"
# GPT-Live's models (openai 3.63.0 ``types/live/session_config.py``), and the Responses model its
# sessions delegate tool calls to (any Responses model that calls functions will do).
LIVE_MODELS = ("gpt-live-1", "gpt-live-1.1")
DEFAULT_LIVE_MODEL = LIVE_MODELS[0]
DEFAULT_DELEGATION_MODEL = "gpt-5-mini"
# Gemini Live's models (BACKENDS §3.1) and its prebuilt voices; an agent on it with an OpenAI
# voice name gets the default one.
GEMINI_MODELS = ("gemini-3.8-live", "gemini-3.8-live-extended-thinking", "gemini-3.1-flash-live-preview")
DEFAULT_GEMINI_MODEL = GEMINI_MODELS[0]
GEMINI_VOICES = ("Kore", "Puck", "Charon", "Aoede", "Fenrir", "Leda", "Orus", "Zephyr")
DEFAULT_GEMINI_VOICE = "Kore"
# Deepgram's Voice Agent: the agent's model is the one it thinks with (an OpenAI one through
# Deepgram), its voice an Aura model, and it listens with Nova (BACKENDS §4.2).
DEFAULT_DEEPGRAM_THINK_MODEL = "gpt-4.1-nano"
DEFAULT_DEEPGRAM_VOICE = "aura-2-thalia-en"
DEFAULT_DEEPGRAM_LISTEN_MODEL = "nova-3"
# How hard a reasoning Realtime model thinks before it speaks (openai 3.63.0
# ``realtime_reasoning_effort.py``): more effort costs latency the caller hears (BACKENDS §5.2).
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
DEFAULT_REASONING_EFFORT = "low"  # OpenAI's suggested start; medium and up add audible latency


def reasons(model: str) -> bool:
    """Whether a Realtime model takes ``reasoning.effort``: the gpt-realtime-2 line (2, 2.1,
    2.1-mini and their dated snapshots); the earlier models have no such setting."""
    return model.startswith("gpt-realtime-2") and not model.startswith("gpt-realtime-2025")


# One of the GA session's transcription models (openai 3.63.0 ``audio_transcription.py``), chosen
# because gpt-4o-mini-transcribe is on the shutdown list (BACKENDS §5.2).
DEFAULT_TRANSCRIPTION_MODEL = "gpt-realtime-whisper"


@dataclass(frozen=True, slots=True)
class Shutdown:
    date: datetime.date
    replacement: str
    announced: bool  # False: reported by third parties, not (yet) in OpenAI's own material


_REALTIME_2027 = datetime.date(2027, 1, 20)
_TRANSCRIBE_2027 = datetime.date(2027, 2, 26)

SHUTDOWNS: dict[str, Shutdown] = {
    "gpt-realtime": Shutdown(_REALTIME_2027, "gpt-realtime-2.1", True),
    "gpt-realtime-2025-08-28": Shutdown(_REALTIME_2027, "gpt-realtime-2.1", True),
    "gpt-realtime-mini": Shutdown(_REALTIME_2027, "gpt-realtime-2.1-mini", True),
    "gpt-realtime-mini-2025-12-15": Shutdown(_REALTIME_2027, "gpt-realtime-2.1-mini", True),
    "gpt-audio-mini": Shutdown(_REALTIME_2027, "gpt-realtime-2.1-mini", True),
    "gpt-audio-mini-2025-12-15": Shutdown(_REALTIME_2027, "gpt-realtime-2.1-mini", True),
    "gpt-audio": Shutdown(_REALTIME_2027, "gpt-realtime-2.1", False),
    "gpt-4o-mini-transcribe": Shutdown(_TRANSCRIBE_2027, DEFAULT_TRANSCRIPTION_MODEL, False),
    "gpt-4o-transcribe": Shutdown(_TRANSCRIBE_2027, DEFAULT_TRANSCRIPTION_MODEL, False),
    "whisper-1": Shutdown(_TRANSCRIBE_2027, DEFAULT_TRANSCRIPTION_MODEL, False),
}
# Every snapshot of these families is on the list too (reported).
_PREFIXES = {
    "gpt-4o-realtime": Shutdown(_REALTIME_2027, "gpt-realtime-2.1", False),
    "gpt-4o-mini-realtime": Shutdown(_REALTIME_2027, "gpt-realtime-2.1-mini", False),
}


def shutdown_of(model: str) -> Shutdown | None:
    """When ``model`` is announced (or reported) to stop working, if it is."""
    found = SHUTDOWNS.get(model)
    if found is None:
        found = next((s for prefix, s in _PREFIXES.items() if model.startswith(prefix)), None)
    return found


def shutdown_warnings(uses: Iterable[tuple[str, str]]) -> list[str]:
    """One line per model on the list: ``uses`` is (model, where it is configured) pairs."""
    lines = []
    for model, where in uses:
        found = shutdown_of(model)
        if found is not None:
            how = "announced" if found.announced else "reported"
            lines.append(
                f"model {model!r} ({where}) shuts down on {found.date.isoformat()} ({how}); "
                f"move to {found.replacement!r}"
            )
    return lines
