"""Whole calls on GPT-Live (BACKENDS §2) through a real relay, against the protocol-exact GPT-Live
simulator: the conversation, a barge-in the model yields to by itself, the heard text by word
timing, the session expiring mid-call, and the per-second usage."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import orjson

from relay.metrics import render
from relay.sim import audio
from relay.sim.caller import CallerScript, CallResult
from relay.sim.live import LiveConfig
from relay.store import TurnRecord
from tests.test_call import stack

FAST = LiveConfig(think_ms=150, transcription_delay_ms=50)
GREETING = "Thanks for calling. How can I help?"
CONVERSATION = CallerScript(
    utterances=(
        "Hi, I would like to book a table for two.",
        "Tomorrow at seven in the evening, please.",
        "That is all, thank you. Goodbye.",
    ),
    expect_greeting=True,
    wait_for_hangup=True,
)
LONG = "Let me tell you everything about our long menu of dishes and drinks for tonight and tomorrow"


def talkative(text: str, history: list[tuple[str, str]]) -> str:
    return "Fine." if "stop" in text.lower() else LONG


def assistant_texts(turns: list[TurnRecord]) -> list[str]:
    return [t.text_heard or "" for t in sorted(turns, key=lambda t: t.seq) if t.role == "assistant"]


def check_fragments(turns: list[TurnRecord]) -> None:
    """Every turn keeps the timed fragments it was rebuilt from, and its text is theirs."""
    for turn in turns:
        fragments = orjson.loads(turn.fragments or "[]")
        assert fragments, turn
        assert "".join(text for text, _, _ in fragments).strip() == turn.text_generated
        assert all(start <= end for _, start, end in fragments)


def usage_rows(tmp_path: Path) -> list[tuple[str, float, int]]:
    with sqlite3.connect(tmp_path / "relay.sqlite3") as db:
        return db.execute("SELECT backend, backend_seconds, estimated FROM usage").fetchall()


async def test_a_whole_conversation_on_gpt_live_is_heard_stored_and_hung_up(tmp_path: Path) -> None:
    async with stack(tmp_path, FAST, greeting=GREETING) as s:
        result, turns = await s.call(CONVERSATION)
        [session] = s.agent.sessions
        scrape = render(s.relay).decode()

    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert all(t.answered for t in result.turns) and result.closed_by_relay
    # The session was started GPT-Live's way: pcmu both ways, the tool delegated, no query.
    config = session.session_config
    assert config["audio"]["format"] == {"type": "audio/pcmu", "rate": 8000}
    assert config["delegation"]["responses"]["tools"][0]["name"] == "end_call"
    assert "?" not in session.path
    ordered = sorted(turns, key=lambda t: t.seq)
    assert [t.role for t in ordered] == ["assistant", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert ordered[0].text_generated == GREETING
    assert ordered[1].text_generated == "Hi, I would like to book a table for two."
    assert ordered[2].text_generated == "You said: Hi, I would like to book a table"
    assert ordered[-1].text_generated == FAST.farewell
    check_fragments(ordered)
    # Nothing was cut: everything the agent said was heard, and the caller heard exactly that.
    assert all(t.text_heard == t.text_generated and not t.interrupted for t in ordered if t.role == "assistant")
    assert audio.transcribe(result.heard) == " ".join(assistant_texts(turns))
    # The goodbye went through a delegated tool call, and the relay hung up after it.
    assert session.delegations and session.delegations[0]["name"] == "end_call"
    assert session.delegations[0]["output"] is not None  # answered: a delegation is never left waiting
    [(backend, seconds, estimated)] = usage_rows(tmp_path)
    assert backend == "openai-live" and seconds > 0 and not estimated
    # The answers' voice-to-voice times reach the metrics too, as the turns store them.
    assert 'relay_voice_to_voice_ms_count{tenant="default"} 3' in scrape


def old_audio_heard_after_the_yield_ms(result: CallResult, yielded_at: float, yielded_ms: int) -> float:
    """How much of what the model said before it yielded the caller heard after that moment."""
    played_then = max(played for at, played in result.played_at if at <= yielded_at)
    return (yielded_ms * 8 - played_then) / 8


async def test_a_barge_in_the_model_yields_to_leaves_at_most_the_lead_and_the_heard_text_exact(
    tmp_path: Path,
) -> None:
    agent = dataclasses.replace(FAST, reply=talkative)
    script = CallerScript(utterances=("Tell me about the menu.", "Stop, please."), barge_in_ms=1500)
    async with stack(tmp_path, agent, live_lead_ms=80) as s:
        result, turns = await s.call(script)
        [session] = s.agent.sessions

    assert result.error is None and result.violations == [] and s.agent.violations == []
    [(yielded_at, yielded_ms)] = session.yields
    # No clear was needed (relay held nothing beyond the lead): the model's own yield did it,
    # and the caller heard at most the lead (and one chunk the model sends ahead) of old audio.
    assert result.clears == 0
    assert old_audio_heard_after_the_yield_ms(result, yielded_at, yielded_ms) <= 80 + FAST.chunk_ms + 20
    answers = [t for t in sorted(turns, key=lambda t: t.seq) if t.role == "assistant"]
    cut = answers[0]
    assert 0 < len(cut.text_generated or "") < len(LONG)  # the model stopped part-way
    # The stored heard text is the words whose end the caller's playout reached: all of them,
    # to the last word the caller's ear got, and exactly what it transcribed.
    assert audio.transcribe(result.heard) == " ".join(assistant_texts(turns))
    check_fragments(turns)


def remembers(text: str, history: list[tuple[str, str]]) -> str:
    first = next((said for role, said in history if role == "user"), text)
    return "You first said " + " ".join(first.split()[:3])


async def test_a_session_expiring_mid_call_hands_over_between_turns_with_the_context(tmp_path: Path) -> None:
    agent = dataclasses.replace(FAST, reply=remembers, max_session_s=7.0)
    script = CallerScript(utterances=("Apples and pears.", "What did I say?", "And now?", "Once more?"))
    async with stack(tmp_path, agent) as s:
        result, turns = await s.call(script)
        sessions = list(s.agent.sessions)

    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert all(t.answered for t in result.turns)
    started = [session for session in sessions if session.session_config]  # (the last one may never be)
    assert len(started) >= 2  # fresh sessions took over before each expired
    assert all(session.closed_reason in (None, "close_requested") for session in started)  # relay moved first
    # The fresh sessions were seeded with the conversation, and their answers know it.
    assert any(item["role"] == "user" for item in started[-1].session_config.get("input", []))
    answers = assistant_texts(turns)
    assert answers and all(a == "You first said Apples and pears." for a in answers)
    assert [t.seq for t in sorted(turns, key=lambda t: t.seq)] == list(range(1, len(turns) + 1))
    [(_, seconds, estimated)] = usage_rows(tmp_path)
    assert seconds > 0 and not estimated  # each session's own count, summed


async def test_a_session_the_backend_closed_as_expired_is_replaced_with_the_context(tmp_path: Path) -> None:
    """relay did not move first (the service's expiry came early): the close is not the call's end;
    a new session, seeded with the conversation, answers the next line knowing the first."""
    agent = dataclasses.replace(FAST, reply=remembers)
    script = CallerScript(utterances=("Apples and pears.", "What did I say?"))
    async with stack(tmp_path, agent) as s:
        task = asyncio.ensure_future(s.call(script))
        await s.agent.wait_until(
            lambda: any(role == "assistant" for session in s.agent.sessions[:1] for role, _ in session.turns), 15
        )
        await s.agent.close_with(s.agent.sessions[0], "expired")
        result, turns = await task
        started = [session for session in s.agent.sessions if session.session_config]
    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert all(t.answered for t in result.turns) and not result.closed_by_relay
    assert len(started) == 2 and started[0].closed_reason == "expired"
    assert [item["content"][0]["text"] for item in started[1].session_config["input"]][:1] == ["Apples and pears."]
    assert assistant_texts(turns) == ["You first said Apples and pears.", "You first said Apples and pears."]


async def test_the_backend_ending_the_session_over_content_ends_the_call_with_that_reason(tmp_path: Path) -> None:
    script = CallerScript(utterances=("Hello there.", "Anyone?"), answer_timeout_ms=3000)
    async with stack(tmp_path, FAST) as s:
        task = asyncio.ensure_future(s.call(script))
        # Mid-call: the session started and the caller's audio is flowing to it.
        await s.agent.wait_until(lambda: any(session.appends > 20 for session in s.agent.sessions), 5)
        await s.agent.close_with(s.agent.sessions[0], "content")
        result, _ = await task
        sessions = list(s.agent.sessions)
    with sqlite3.connect(tmp_path / "relay.sqlite3") as db:
        [(reason,)] = db.execute("SELECT end_reason FROM calls").fetchall()
    assert reason == "backend_content" and len(sessions) == 1  # not retried
    assert result.closed_by_relay
