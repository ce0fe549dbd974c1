"""Whole calls over real loopback sockets, for what a call lives through: a greeting, keys, the
agent hanging up, a backend session dropped mid-call, a session recycled before its cap, and
what the caller's recording proves after a barge-in."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from relay.sim import audio
from relay.sim.caller import TwilioCaller
from tests.test_call import FAST, SHORT, _calls, stack, stutters


def counting(text: str, history: list[tuple[str, str]]) -> str:
    """The answer counts the caller's lines the model knows of: proof the context was carried."""
    said = sum(1 for role, _ in history if role == "user") + 1
    return f"Line {said}: {' '.join(text.split()[:2])}"


async def finish(s) -> None:  # type: ignore[no-untyped-def]
    for task in list(s.relay.sessions):
        await task
    await s.store.flush()


async def test_the_agent_greets_the_caller_first(tmp_path: Path) -> None:
    greeting = "Hello, you are through to the demo line."
    script = dataclasses.replace(SHORT, utterances=("Book a table.",), expect_greeting=True, lead_in_ms=0)
    async with stack(tmp_path, greeting=greeting) as s:
        result = await TwilioCaller(s.webhook, script).run()
        await finish(s)
        turns = await s.store.turns(result.call_sid)
    assert result.violations == [] and s.agent.violations == []
    assert [t.heard for t in result.turns] == [greeting, "You said: Book a table."]
    assert [(t.role, t.text_heard) for t in turns] == [
        ("assistant", greeting),
        ("user", "Book a table."),
        ("assistant", "You said: Book a table."),
    ]


async def test_keys_pressed_reach_the_model_and_are_stored(tmp_path: Path) -> None:
    script = dataclasses.replace(SHORT, utterances=("Hello.",), dtmf="12#")
    async with stack(tmp_path) as s:
        result = await TwilioCaller(s.webhook, script).run()
        await finish(s)
        turns = await s.store.turns(result.call_sid)
    assert result.violations == [] and s.agent.violations == []
    assert [(t.role, t.text_generated) for t in turns][2] == ("user", "[DTMF 12#]")
    assert result.turns[-1].answered
    assert result.turns[-1].heard.startswith("You said: The caller pressed these keys")


async def test_the_farewell_plays_in_full_before_the_stream_closes(tmp_path: Path) -> None:
    script = dataclasses.replace(SHORT, utterances=("Thanks, that is all. Goodbye.",), wait_for_hangup=True)
    async with stack(tmp_path) as s:
        result = await TwilioCaller(s.webhook, script).run()
        await finish(s)
        [session] = s.agent.sessions
    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert result.closed_by_relay and result.close_code == 1000
    # Every word of the farewell was heard, and every mark (the final one last) came back played.
    assert result.turns[0].heard == FAST.farewell
    assert result.marks_echoed == result.marks_received and result.playback.queue == bytearray()
    assert result.playback.echoed_cleared == []
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == "agent_hangup"
    assert session.closed_at is not None  # the backend session closed with the call


async def test_the_call_survives_its_backend_session_dropping(tmp_path: Path) -> None:
    agent = dataclasses.replace(FAST, reply=counting)
    script = dataclasses.replace(SHORT, utterances=("First question.", "Second question.", "Third question."))
    async with stack(tmp_path, agent, reconnect_message="Sorry, I lost you for a moment.") as s:
        caller = asyncio.create_task(TwilioCaller(s.webhook, script).run())
        # Drop the backend session as soon as its first answer is done.
        await s.agent.wait_until(
            lambda: bool(s.agent.sessions) and any(k == "response.done" for _, k in s.agent.sessions[0].sent), 20
        )
        s.agent.kill(s.agent.sessions[0])
        result = await caller
        await finish(s)
        turns = await s.store.turns(result.call_sid)
    assert result.error is None and result.violations == [] and s.agent.violations == []
    assert len(s.agent.sessions) == 2  # one reconnect, and the phone call never dropped
    assert all(t.answered for t in result.turns)
    heard = audio.transcribe(result.heard)
    assert "Sorry, I lost you for a moment." in heard
    # The new session knew the conversation: its answers count on from the first line.
    assert "Line 2: Second question." in heard and "Line 3: Third question." in heard
    assert [t.text_generated for t in turns if t.role == "user"] == [
        "First question.",
        "Second question.",
        "Third question.",
    ]
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == "stop"


async def test_a_session_is_recycled_before_its_cap_with_nothing_the_caller_hears(tmp_path: Path) -> None:
    cap = 30
    agent = dataclasses.replace(FAST, reply=counting, max_session_s=cap)
    lines = tuple(f"Question number {n}." for n in range(1, 12))
    script = dataclasses.replace(SHORT, utterances=lines, answer_quiet_ms=300)
    async with stack(tmp_path, agent, upstream_max_session_s=cap) as s:
        started = asyncio.get_running_loop().time()
        result = await TwilioCaller(s.webhook, script).run()
        took = asyncio.get_running_loop().time() - started
        await finish(s)
    assert took > cap + 2, "the call must outlast one session"
    assert result.error is None and result.violations == [] and s.agent.violations == []
    first, _second, *_ = s.agent.sessions
    # Relay closed the first session itself, before the cap; the backend never had to.
    assert first.close_code == 1000 and first.closed_at is not None and first.closed_at - first.opened_at < cap
    assert all(t.answered for t in result.turns)
    assert [t.heard for t in result.turns] == [f"Line {n}: Question number" for n in range(1, 12)]
    assert stutters(result) == []  # no gap over 40 ms inside any answer


async def test_after_a_barge_in_the_recording_holds_nothing_of_the_rest_of_the_answer(tmp_path: Path) -> None:
    long_answer = "Let me tell you everything about our long menu of dishes and drinks for tonight"
    agent = dataclasses.replace(FAST, reply=lambda text, history: "Booked." if "book" in text else long_answer)
    script = dataclasses.replace(SHORT, utterances=("What is on the menu?", "Stop, just book it."), barge_in_ms=700)
    async with stack(tmp_path, agent) as s:
        result = await TwilioCaller(s.webhook, script).run()
        await finish(s)
        [session] = s.agent.sessions
    wav = tmp_path / "heard.wav"
    audio.write_wav(wav, result.heard)
    words = audio.transcribe(audio.read_wav(wav)).split()
    cut = words.index("Booked.")
    assert 0 < cut < len(long_answer.split())
    assert words == [*long_answer.split()[:cut], "Booked."]
    [truncate] = session.truncates
    assert s.agent.violations == [] and result.clears == 1
    # What the model was told the caller heard is what the recording holds, to a frame or two.
    heard_ms = result.playback.heard_of(truncate["item_id"])
    assert heard_ms is not None and abs(truncate["audio_end_ms"] - heard_ms / 8) <= 60


async def test_a_backend_session_that_will_not_close_is_cut_logged_and_counted(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from relay import session as session_module
    from relay.session import CallSession

    class Stuck:
        aborted = False

        def route(self, media: object, leg: int = 0) -> None:
            pass

        async def close(self, code: int = 1000, reason: str = "") -> None:
            await asyncio.Event().wait()  # the peer never finishes the closing handshake

    outlived: list[int] = []
    monkeypatch.setattr(session_module, "UPSTREAM_CLOSE_TIMEOUT", 0.05)
    call = CallSession(
        None,
        connect_upstream=None,
        agent=None,
        store=None,  # type: ignore[arg-type]
        on_upstream_outlived=lambda: outlived.append(1),
    )
    await call._close_upstream(Stuck())  # type: ignore[arg-type]
    assert outlived == [1]


async def test_the_health_check_counts_them_and_shows_the_clock(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        await TwilioCaller(s.webhook, dataclasses.replace(SHORT, utterances=("Hello.",))).run()
        await finish(s)
        health = s.relay.health()
    assert health["upstreams_outlived"] == 0
    assert health["pacer"]["ticks"] > 0 and health["pacer"]["late_p99_ms"] >= health["pacer"]["late_p50_ms"]
