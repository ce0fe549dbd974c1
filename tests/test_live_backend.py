"""GPT-Live behind the backend seam (BACKENDS §2): what relay sends, how it reads what comes back,
and how turns and what the caller heard are rebuilt from timed transcript fragments."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import _media_py
from relay import backends as ev
from relay.agents import AgentProfile
from relay.backends.live import LiveBackend, history_input
from relay.live_turns import LiveTurns

AGENT = AgentProfile(instructions="Be brief.", voice="cedar", model="gpt-live-1", backend="openai-live")


def started(fmt: dict[str, object] | None = None, expires_at: int = 1_900_000_000) -> bytes:
    audio = {"format": fmt or {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "cedar"}}
    session = {"id": "sess_1", "expires_at": expires_at, "model": "gpt-live-1", "status": "active", "audio": audio}
    return orjson.dumps({"type": "session.started", "event_id": "e0", "session": session})


def delegated(delegation_id: str, event: dict[str, object]) -> bytes:
    return orjson.dumps({"type": "response.event", "event_id": "e", "delegation_id": delegation_id, "event": event})


def call_done(call_id: str, name: str = "end_call") -> dict[str, object]:
    item = {"type": "function_call", "id": "fc", "status": "completed", "call_id": call_id, "name": name}
    return {"type": "response.output_item.done", "item": {**item, "arguments": "{}"}}


COMPLETED = {"type": "response.completed", "response": {"id": "resp_1", "status": "completed"}}


# ---------------------------------------------------------------- what relay sends


def test_session_start_is_gpt_lives_own_shape_with_pcmu_and_the_tools_delegated() -> None:
    [message] = LiveBackend(AGENT).open(AGENT, [], 20_000)
    start = orjson.loads(message)
    assert start["type"] == "session.start" and set(start) == {"type", "event_id", "session"}
    session = start["session"]
    assert session["model"] == "gpt-live-1" and session["instructions"] == "Be brief."
    assert session["audio"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "cedar"}}
    delegation = session["delegation"]
    assert delegation["type"] == "responses" and delegation["responses"]["model"]
    [tool] = delegation["responses"]["tools"]
    assert (
        tool["type"] == "function"
        and tool["name"] == "end_call"
        and set(tool)
        <= {
            "type",
            "name",
            "description",
            "parameters",
            "strict",
        }
    )
    # Nothing of Realtime's: GPT-Live's session config rejects unknown fields.
    assert not {"turn_detection", "output_modalities", "tools", "type", "input"} & set(session)


def test_the_conversation_so_far_goes_in_as_input_text_only_newest_first_to_fit() -> None:
    history = [("user", "a" * 10), ("assistant", "b" * 10), ("user", "c" * 10)]
    [message] = LiveBackend(AGENT).open(AGENT, history, 25)
    items = orjson.loads(message)["session"]["input"]
    assert [(i["role"], i["content"]) for i in items] == [
        ("assistant", [{"type": "output_text", "text": "b" * 10}]),
        ("user", [{"type": "input_text", "text": "c" * 10}]),
    ]
    assert len(history_input([("user", "x")] * 500, 10**6)) == 128  # the startup limit


def test_no_truncate_no_cancel_lines_said_through_commentary_keys_as_silent_context() -> None:
    backend = LiveBackend(AGENT)
    assert backend.truncate("x", 100) is None and backend.cancel() is None
    say = orjson.loads(backend.say("Hello there."))
    assert say == {
        "type": "session.commentary.append",
        "content": "Say to the caller now, in these words: Hello there.",
        "delegation_id": None,
    }
    [keys] = backend.user_text("The caller pressed these keys on the phone keypad: 42")
    assert orjson.loads(keys)["type"] == "session.thinking.append" and "delegation_id" in orjson.loads(keys)


# ---------------------------------------------------------------- what relay reads


def test_started_in_pcmu_is_ready_with_its_expiry_anything_else_is_refused() -> None:
    assert LiveBackend(AGENT).parse(started()) == [ev.Ready(1_900_000_000.0)]
    [refused] = LiveBackend(AGENT).parse(started({"type": "audio/pcm", "rate": 24000}))
    assert isinstance(refused, ev.Refused) and "audio/pcm" in refused.reason


def test_timed_transcripts_usage_and_close() -> None:
    backend = LiveBackend(AGENT)
    out = orjson.dumps({"type": "session.output_transcript.delta", "delta": " two", "start_ms": 400, "end_ms": 700})
    inp = orjson.dumps({"type": "session.input_transcript.delta", "delta": "Wait", "start_ms": 5, "end_ms": 300})
    assert backend.parse(out) == [ev.TimedText("assistant", " two", 400, 700)]
    assert backend.parse(inp) == [ev.TimedText("user", "Wait", 5, 300)]
    usage = orjson.dumps({"type": "session.usage.updated", "usage": {"seconds": 12.5, "active_seconds": 12}})
    assert backend.parse(usage) == [ev.SessionSeconds(12.5)]
    closed = orjson.dumps({"type": "session.closed", "reason": "expired", "usage": {"seconds": 60.0}, "session": {}})
    assert backend.parse(closed) == [ev.SessionSeconds(60.0), ev.SessionClosed("expired")]
    [bad] = backend.parse(orjson.dumps({"type": "session.output_transcript.delta", "delta": "x"}))
    assert isinstance(bad, ev.Failed) and bad.malformed


def test_errors_before_the_session_refuse_it_and_a_dead_account_is_fatal_later() -> None:
    backend = LiveBackend(AGENT)
    error = {"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter", "message": "x"}}
    [refused] = backend.parse(orjson.dumps(error))
    assert isinstance(refused, ev.Refused)
    backend.parse(started())
    [failed] = backend.parse(orjson.dumps(error))
    assert isinstance(failed, ev.Failed) and not failed.fatal
    quota = {"type": "error", "error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "x"}}
    [fatal] = backend.parse(orjson.dumps(quota))
    assert isinstance(fatal, ev.Failed) and fatal.fatal


def test_a_delegated_tool_call_is_answered_then_the_response_goes_on_once_all_are() -> None:
    backend = LiveBackend(AGENT)
    assert backend.parse(delegated("dlg_1", call_done("call_a", "lookup"))) == []
    assert backend.parse(delegated("dlg_1", call_done("call_b", "end_call"))) == []
    [done] = backend.parse(delegated("dlg_1", COMPLETED))
    assert isinstance(done, ev.ResponseDone) and [c.call_id for c in done.tool_calls] == ["call_a", "call_b"]
    first = backend.tool_result("call_a", {"error": "no"})
    assert [orjson.loads(m)["type"] for m in first] == ["response.item.create"]  # call_b still unanswered
    second = backend.tool_result("call_b", {"ok": True})
    assert [orjson.loads(m)["type"] for m in second] == ["response.item.create", "response.create"]
    item = orjson.loads(second[0])["item"]
    assert item == {"type": "function_call_output", "call_id": "call_b", "output": '{"ok":true}'}


# ---------------------------------------------------------------- turns and what was heard


def _segment(turns: LiveTurns, produced: int, played: int = 0) -> _media_py.ItemAudio:
    audio = _media_py.ItemAudio(turns.next_segment())
    audio.produced, audio.out, audio.played = produced, produced, played
    turns.add_segment(audio)
    return audio


def test_fragments_make_turns_split_by_a_gap_or_by_quiet_time() -> None:
    turns = LiveTurns(gap_ms=800)
    turns.new_session()
    seq = iter(range(1, 100)).__next__
    turns.fragment("user", "Hi", 0, 300, 0.3, 0.0, seq)
    turns.fragment("user", " there", 400, 700, 0.7, 0.0, seq)
    turns.fragment("assistant", "Hello", 1500, 1900, 1.9, 0.0, seq)
    turns.fragment("assistant", " again", 3000, 3400, 3.4, 0.0, seq)  # 1.1 s after: a new turn
    turns.close_quiet(3.5)
    ready = turns.ready()
    assert [(t.seq, t.role, t.text) for t in ready] == [(1, "user", "Hi there")]  # the agent's: heard unknown
    assert turns.turns[0].after_ms == 700 and turns.turns[0].v2v_ms == 800.0
    turns.close_quiet(4.3)
    assert all(t.closed for t in turns.turns)


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.integers(100, 600), min_size=1, max_size=12),
    played_ms=st.integers(0, 8000),
    cut=st.booleans(),
)
def test_the_heard_text_is_exactly_the_fragments_whose_end_the_playout_reached(
    words: list[int], played_ms: int, cut: bool
) -> None:
    """Property: for any fragment timing and any point the caller's playout reached by its marks
    (also when relay then cut its backlog), the heard text is the fragments ending there or before."""
    turns = LiveTurns(gap_ms=800)
    turns.new_session()
    seq = iter(range(1, 100)).__next__
    fragments, at = [], 0
    for i, length in enumerate(words):
        fragments.append((f" w{i}", at, at + length))
        at += length + 50
    total = at * 8
    audio = _segment(turns, total, played=min(total, played_ms * 8))  # the last mark echoed
    if cut:  # relay cleared the rest: its estimate of the ear (heard_ms) may run ahead of the marks
        audio.heard_ms, audio.interrupted, audio.ended = min(played_ms + 90, at), True, True
    for text, start, end in fragments:
        turns.fragment("assistant", text, start, end, 0.0, 0.0, seq)
    turns.close_quiet(10.0)
    expected = "".join(t for t, _, end in fragments if end <= played_ms).strip()
    [turn] = turns.ready() if (cut or played_ms >= fragments[-1][2]) else turns.finish()
    assert turn.heard == expected


def test_after_a_cut_the_stream_goes_on_in_a_new_segment_at_the_right_place() -> None:
    turns = LiveTurns(gap_ms=800)
    turns.new_session()
    seq = iter(range(1, 100)).__next__
    first = _segment(turns, 8000, played=2400)  # 1 s received, 300 ms heard by the marks when relay cut it
    first.heard_ms, first.interrupted, first.ended = 380, True, True
    _segment(turns, 8000, played=8000)  # the next second, heard whole
    turns.fragment("assistant", "cut", 100, 600, 0.0, 0.0, seq)  # in the cleared backlog: never heard
    turns.fragment("assistant", " heard", 1100, 1500, 0.0, 0.0, seq)  # in the second segment
    turns.close_quiet(5.0)
    [turn] = turns.ready()
    assert (turn.text, turn.heard) == ("cut heard", "heard")


def test_what_a_session_sent_before_it_ended_still_plays_and_counts_once_heard() -> None:
    turns = LiveTurns(gap_ms=800)
    turns.new_session()
    seq = iter(range(1, 100)).__next__
    audio = _segment(turns, 8000, played=4000)
    turns.fragment("assistant", "one", 0, 400, 0.0, 0.0, seq)
    turns.fragment("assistant", " two", 600, 900, 0.0, 0.0, seq)
    audio.ended = True  # the session is gone (end_all): no more of its audio will come
    turns.new_session()
    assert turns.ready() == [] and turns.agent_talking  # the rest of what it sent is still playing
    assert turns.next_segment() == "live2.1"
    audio.played = 8000  # its last mark came back
    [turn] = turns.ready()
    assert turn.closed and turn.heard == "one two"
