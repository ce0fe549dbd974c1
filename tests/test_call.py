"""Whole calls over real loopback sockets: simulated caller ↔ relay ↔ simulated Realtime agent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from relay.admission import Admission
from relay.config import Settings
from relay.server import Relay, RelayServer
from relay.session import ResolveAgent
from relay.sim import audio
from relay.sim.agent import AgentConfig, RealtimeAgent
from relay.sim.caller import CallerScript, CallResult, TwilioCaller, http_post
from relay.sim.live import LiveAgent, LiveConfig
from relay.store import SQLiteStore, Store, TurnRecord
from relay.tenants import Directory
from relay.trust import Credential

FAST = AgentConfig(think_ms=100, realtime_factor=8.0, transcription_delay_ms=50)
SIM_AUTH_TOKEN = "sim-auth-token"  # the simulated caller's default: it signs like Twilio
LONG_ANSWER = "Let me tell you everything about our long menu of dishes and drinks for tonight"
# An agent with a long first answer, and a caller who talks over it.
TALKATIVE = dataclasses.replace(FAST, reply=lambda text, history: "Booked for seven." if history else LONG_ANSWER)
SHORT = CallerScript(utterances=("Book a table for two.", "At seven tonight."), lead_in_ms=200, answer_quiet_ms=400)
BARGING = dataclasses.replace(SHORT, utterances=("What is on the menu?", "Stop, just book it."), barge_in_ms=900)


def stutters(result: CallResult) -> list[float]:
    """Dry spells in what the caller heard that were not the pause between two turns."""
    return [ms for ms in result.playback.stalls_ms if 40 < ms < 1000]


ACCOUNT_SID = "AC" + "0" * 32


def voice_form(
    call_sid: str | int = 1, *, to: str = "+15550002", from_: str = "+15550001", account_sid: str = ACCOUNT_SID
) -> dict[str, str]:
    """A voice webhook's form as Twilio sends it; an int ``call_sid`` becomes ``CA`` + 32 hex digits."""
    sid = call_sid if isinstance(call_sid, str) else f"CA{call_sid:032x}"
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "ringing",
        "Called": to,
        "Caller": from_,
        "Direction": "inbound",
        "From": from_,
        "To": to,
    }


async def post_webhook(url: str, form: dict[str, str], token: str = SIM_AUTH_TOKEN) -> tuple[int, bytes]:
    """POST a voice webhook signed as Twilio signs it (X-Twilio-Signature over URL + params)."""
    signature = RequestValidator(token).compute_signature(url, form)
    return await http_post(url, urlencode(form).encode(), {"X-Twilio-Signature": signature})


@dataclasses.dataclass
class Stack:
    agent: RealtimeAgent | LiveAgent
    relay: Relay
    store: Store
    webhook: str

    async def call(self, script: CallerScript) -> tuple[CallResult, list[TurnRecord]]:
        """One simulated call through the relay, to its end: what the caller saw, and its turns
        as stored."""
        result = await TwilioCaller(self.webhook, script).run()
        for task in list(self.relay.sessions):
            await task
        await self.store.flush()
        return result, await self.store.turns(result.call_sid)


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path,
    agent_config: AgentConfig | LiveConfig = FAST,
    directory: Directory | None = None,
    store: Store | None = None,
    *,
    admission: Admission | None = None,
    credential_source: Callable[[], Awaitable[list[Credential]]] | None = None,
    resolve_agent: ResolveAgent | None = None,
    **settings: object,
) -> AsyncIterator[Stack]:
    # A LiveConfig runs the call on GPT-Live (its simulator), a Realtime AgentConfig on Realtime.
    agent: RealtimeAgent | LiveAgent
    if isinstance(agent_config, LiveConfig):
        agent = LiveAgent(agent_config)
        settings = {"backend": "openai-live", "live_url": None, **settings}
    else:
        agent = RealtimeAgent(agent_config)
    await agent.start()
    if settings.get("live_url", "") is None:
        settings["live_url"] = agent.url
    if store is None:
        store = SQLiteStore(tmp_path / "relay.sqlite3")
        await store.open()
    base = Settings(
        host="127.0.0.1",
        port=0,
        realtime_url=agent.url,
        openai_api_key="sk-sim",  # type: ignore[arg-type]
        twilio_auth_token=SIM_AUTH_TOKEN,
        **settings,
    )
    server = RelayServer(
        Relay(
            base,
            store,
            directory=directory,
            admission=admission,
            credential_source=credential_source,
            resolve_agent=resolve_agent,
        )
    )
    await server.start()
    server.relay.settings = dataclasses.replace(base, public_url=f"http://127.0.0.1:{server.port}")
    try:
        yield Stack(agent, server.relay, store, f"http://127.0.0.1:{server.port}/twilio/voice")
    finally:
        await server.close(drain_timeout=5)
        await store.close()
        await agent.stop()


async def test_a_full_call_is_relayed_heard_and_stored(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        result = await TwilioCaller(s.webhook, SHORT).run()
        for task in list(s.relay.sessions):
            await task
        await s.store.flush()
        turns = await s.store.turns(result.call_sid)

    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert [t.answered for t in result.turns] == [True, True]
    # The caller heard the agent's words: the audio came through bit-exact.
    assert [t.heard for t in result.turns] == ["You said: Book a table for two.", "You said: At seven tonight."]
    assert [(t.role, t.text_generated) for t in turns] == [
        ("user", "Book a table for two."),
        ("assistant", "You said: Book a table for two."),
        ("user", "At seven tonight."),
        ("assistant", "You said: At seven tonight."),
    ]
    answers = [t for t in turns if t.role == "assistant"]
    assert all(t.text_heard == t.text_generated and not t.interrupted for t in answers)
    assert all(t.voice_to_voice_ms is not None and t.voice_to_voice_ms > 0 for t in answers)
    assert all(t.audio_ms > 0 for t in answers)
    # Every mark relay sent came back after playback, none cleared.
    assert result.marks_echoed == result.marks_received > 0 and result.clears == 0
    assert result.playback.echoed_cleared == [] and stutters(result) == []
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == "stop" and call["frames_in"] == result.frames_sent
    assert call["from_number"] == "+15005550006" and call["to_number"] == "+15005550001"


async def _calls(tmp_path: Path) -> list[dict[str, object]]:
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    try:
        return await store.calls()
    finally:
        await store.close()


@pytest.mark.parametrize("hangup", ["stop", "drop"])
async def test_upstream_closes_within_a_second_of_the_hang_up(tmp_path: Path, hangup: str) -> None:
    script = dataclasses.replace(SHORT, utterances=("Hello there.",), hangup=hangup)
    async with stack(tmp_path) as s:
        caller = TwilioCaller(s.webhook, script)
        result = await caller.run()
        hung_up_at = asyncio.get_running_loop().time()
        [session] = s.agent.sessions
        await s.agent.wait_closed(session, timeout=1.0)
        assert session.closed_at is not None and session.closed_at - hung_up_at < 1.0
    assert result.turns[0].answered


async def test_no_caller_audio_goes_upstream_before_session_updated(tmp_path: Path) -> None:
    slow = dataclasses.replace(FAST, session_updated_delay_ms=700)
    script = dataclasses.replace(SHORT, utterances=("Is anyone there?",), lead_in_ms=0)
    async with stack(tmp_path, slow) as s:
        result = await TwilioCaller(s.webhook, script).run()
        [session] = s.agent.sessions
    assert session.appends_before_session_updated == 0
    assert session.first_append_at is not None and session.session_updated_at is not None
    assert session.first_append_at >= session.session_updated_at
    # Held, not lost: the first words, spoken while the session was not ready, were heard.
    assert result.turns[0].answered and result.turns[0].heard == "You said: Is anyone there?"
    assert session.appends == result.frames_sent


async def test_barge_in_clears_twilio_and_truncates_where_the_caller_stopped_hearing(tmp_path: Path) -> None:
    async with stack(tmp_path, TALKATIVE) as s:
        result, turns = await s.call(BARGING)
        [session] = s.agent.sessions

    assert result.violations == [] and s.agent.violations == []
    assert result.clears == 1
    [truncate] = session.truncates  # accepted by the agent: never past the produced audio
    first_answer = next(t for t in turns if t.role == "assistant")
    assert first_answer.interrupted and first_answer.text_generated == LONG_ANSWER
    assert 0 < truncate["audio_end_ms"] < first_answer.audio_ms
    stored_heard = first_answer.text_heard.split()
    assert 0 < len(stored_heard) < len(LONG_ANSWER.split())
    # What the caller's recording holds: the start of the interrupted answer, then the next
    # answer whole. No word of the interrupted answer after the cut ever reached the caller.
    heard = audio.transcribe(result.heard).split()
    cut = heard.index("Booked")
    assert heard[cut:] == ["Booked", "for", "seven."]
    assert 0 < cut < len(LONG_ANSWER.split()) and heard[:cut] == LONG_ANSWER.split()[:cut]
    # The stored heard text and the recording agree to within one word.
    assert abs(len(stored_heard) - cut) <= 1


async def test_backend_unreachable_ends_only_that_call_with_a_clear_close(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.relay.settings = dataclasses.replace(s.relay.settings, realtime_url="ws://127.0.0.1:9/v1/realtime")
        result = await TwilioCaller(s.webhook, dataclasses.replace(SHORT, utterances=("Hello?",))).run()
    assert result.close_code == 1011
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == "backend_unavailable"


def test_heard_text_is_cut_by_audio_proportion() -> None:
    from relay.conversation import cut_words as _cut_words

    text = "Let me tell you everything"
    assert _cut_words(text, 1.0) == text
    assert _cut_words(text, 0.0) == ""
    assert _cut_words(text, 0.5) == "Let me tell"  # 13 of 26 chars: 'you' (12-15) not past its middle
    assert _cut_words(text, 0.6) == "Let me tell you"  # 15.6 chars: 'everything' (16-26) not begun
    assert _cut_words(text, 0.2) == "Let me"
