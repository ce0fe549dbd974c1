"""Whole calls through a real relay on Gemini Live and on Deepgram's Voice Agent (their simulators):
barge-in, what the caller heard against what was stored, and Gemini's goAway with resumption."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from relay.config import Settings
from relay.demo import Simulator, SimulatorConfig, simulator, wired_to
from relay.server import Relay, RelayServer
from relay.sim import audio
from relay.sim.caller import CallerScript, CallResult, TwilioCaller
from relay.sim.deepgram import DeepgramConfig
from relay.sim.gemini import GeminiConfig, GeminiLive
from relay.store import SQLiteStore, TurnRecord

LONG_ANSWER = "Let me tell you everything about our long menu of dishes and drinks for tonight"
SHORT_ANSWER = "Booked for seven."


def _talkative(text: str, history: list[tuple[str, str]]) -> str:
    return SHORT_ANSWER if any(role == "user" for role, _ in history[:-1]) else LONG_ANSWER


# The caller talks over the long first answer 900 ms into it.
BARGING = CallerScript(
    utterances=("What is on the menu?", "Stop, just book it."), lead_in_ms=200, answer_quiet_ms=400, barge_in_ms=900
)
GEMINI = GeminiConfig(think_ms=100, reply=_talkative)
DEEPGRAM = DeepgramConfig(think_ms=100, tts_ms=50, reply=_talkative)


@dataclasses.dataclass
class Stack:
    agent: Simulator
    relay: Relay
    store: SQLiteStore
    webhook: str

    async def call(self, script: CallerScript) -> tuple[CallResult, list[TurnRecord]]:
        result = await TwilioCaller(self.webhook, script).run()
        for task in list(self.relay.sessions):
            await task
        await self.store.flush()
        return result, sorted(await self.store.turns(result.call_sid), key=lambda t: t.seq)


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, backend: str, config: SimulatorConfig) -> AsyncIterator[Stack]:
    agent = simulator(backend, config)
    await agent.start()
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    base = wired_to(Settings(host="127.0.0.1", port=0, twilio_auth_token="sim-auth-token"), backend, agent.url)
    server = RelayServer(Relay(base, store))
    await server.start()
    server.relay.settings = dataclasses.replace(base, public_url=f"http://127.0.0.1:{server.port}")
    try:
        yield Stack(agent, server.relay, store, f"http://127.0.0.1:{server.port}/twilio/voice")
    finally:
        await server.close(drain_timeout=5)
        await store.close()
        await agent.stop()


def word_bursts(ulaw: bytes) -> int:
    """How many words a recording holds, counted as bursts of sound between silences of 30 ms or
    more: what a caller can tell of speech it cannot transcribe (audio transcoded on the way)."""
    pcm = audio.ulaw_decode(ulaw).astype(np.float64)
    windows = pcm[: len(pcm) // 40 * 40].reshape(-1, 40)  # 5 ms
    loud = np.sqrt((windows**2).mean(axis=1)) > 300
    bursts, quiet = 0, 6
    for sound in loud:
        if sound:
            bursts += quiet >= 6
            quiet = 0
        else:
            quiet += 1
    return bursts


def _answers(turns: list[TurnRecord]) -> list[TurnRecord]:
    return [t for t in turns if t.role == "assistant"]


async def test_deepgram_call_with_a_barge_in(tmp_path: Path) -> None:
    async with stack(tmp_path, "deepgram", DEEPGRAM) as s:
        result, turns = await s.call(BARGING)
        [session] = s.agent.sessions
    assert result.violations == [] and s.agent.violations == [] and result.error is None
    assert result.clears == 1 and session.interruptions
    first, second = _answers(turns)
    assert first.interrupted and first.text_generated == LONG_ANSWER
    assert second.text_heard == SHORT_ANSWER and not second.interrupted
    assert [t.text_generated for t in turns if t.role == "user"] == list(BARGING.utterances)
    # μ-law passed through: the caller's recording reads back word for word. It holds the start
    # of the cut answer, then the next answer whole: no word of the cut answer after the cut
    # (the chunk in flight after UserStartedSpeaking was dropped), and the stored heard text
    # agrees with it to within one word.
    heard = audio.transcribe(result.heard).split()
    cut = heard.index("Booked")
    assert heard[cut:] == SHORT_ANSWER.split()
    assert 0 < cut < len(LONG_ANSWER.split()) and heard[:cut] == LONG_ANSWER.split()[:cut]
    assert abs(len(first.text_heard.split()) - cut) <= 1
    # Binary both ways: every caller frame reached the agent as one binary message.
    assert session.audio_messages > 0 and session.largest_audio_message == 160


async def test_gemini_call_with_a_barge_in(tmp_path: Path) -> None:
    async with stack(tmp_path, "gemini-live", GEMINI) as s:
        result, turns = await s.call(BARGING)
        [session] = s.agent.sessions
    assert result.violations == [] and s.agent.violations == [] and result.error is None
    assert result.clears == 1 and len(session.interruptions) == 1
    first, second = _answers(turns)
    assert first.interrupted and first.text_generated == LONG_ANSWER
    assert second.text_heard == SHORT_ANSWER and not second.interrupted
    assert [t.text_generated for t in turns if t.role == "user"] == list(BARGING.utterances)
    # The agent's audio was transcoded (24 kHz PCM to μ-law), so the recording's words are
    # counted, not read: the start of the cut answer, then the next answer whole.
    cut = word_bursts(result.heard) - len(SHORT_ANSWER.split())
    assert 0 < cut < len(LONG_ANSWER.split())
    assert abs(len(first.text_heard.split()) - cut) <= 1
    assert first.text_heard.split() == LONG_ANSWER.split()[: len(first.text_heard.split())]
    # The caller's words reached the model intact through the 8 -> 16 kHz path (it read them).
    assert [text for role, text in session.turns if role == "user"] == list(BARGING.utterances)


async def test_gemini_go_away_hands_the_call_to_a_resumed_session(tmp_path: Path) -> None:
    script = CallerScript(
        utterances=("Book a table for two.", "At seven tonight.", "Thank you."), lead_in_ms=200, answer_quiet_ms=500
    )
    async with stack(tmp_path, "gemini-live", GeminiConfig(think_ms=100)) as s:
        assert isinstance(s.agent, GeminiLive)
        agent = s.agent
        call = asyncio.create_task(s.call(script))
        # The service says it will close the connection: after the first exchange, while the
        # caller is speaking the second line.
        await agent.wait_until(
            lambda: bool(agent.sessions) and sum(1 for role, _ in agent.sessions[0].turns if role == "model") >= 1, 20
        )
        await asyncio.sleep(0.6)
        agent.go_away(agent.sessions[0], 3.0)
        result, turns = await asyncio.wait_for(call, 60)
    assert result.violations == [] and agent.violations == [] and result.error is None
    first, second = agent.sessions
    assert first.go_aways and second.resumed_from is not None
    # The context went with it: the resumed session knows the turns before it.
    assert second.turns[: len(first.turns)] == first.turns[: len(second.turns[: len(first.turns)])]
    assert ("user", "Book a table for two.") in second.turns
    print(
        "TURNS",
        result.turns,
        "S1",
        first.turns,
        first.close_reason,
        "S2",
        second.turns,
        [(r.role, r.text_generated) for r in turns],
    )
    # Every line was answered, and no answer was heard with a gap in it.
    assert all(t.answered for t in result.turns)
    assert [ms for ms in result.playback.stalls_ms if 200 < ms < 1000] == []
    assert [t.text_generated for t in turns if t.role == "user"] == list(script.utterances)
    assert len(_answers(turns)) == 3


async def test_a_tenants_own_key_opens_its_sessions(tmp_path: Path) -> None:
    """A tenant with its own Gemini key has its calls' sessions opened with it; another tenant's
    use the deployment's, which this service refuses."""
    agent = GeminiLive(GeminiConfig(api_key="acme-own-key"))
    await agent.start()
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    keys = {("acme", "gemini-live"): "acme-own-key"}

    async def backend_key(tenant_id: str, backend: str) -> str | None:
        return keys.get((tenant_id, backend))

    settings = wired_to(Settings(host="127.0.0.1", port=0, twilio_auth_token="t"), "gemini-live", agent.url)
    relay = Relay(settings, store, backend_keys=backend_key)
    profile = dataclasses.replace(settings.agent, tenant_id="acme")
    try:
        upstream = await relay.open_upstream(profile)
        await upstream.close()
        with pytest.raises(Exception):  # noqa: B017 - the handshake's refusal, whatever the client calls it
            await relay.open_upstream(dataclasses.replace(profile, tenant_id="globex"))
        assert [status for status, _ in agent.rejected] == [400]
    finally:
        await store.close()
        await agent.stop()
