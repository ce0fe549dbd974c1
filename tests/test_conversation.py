"""The conversation core on a fake clock (tests/vcall.py): pacing, barge-in, turns, keys, hang-up.

Every case is a whole call between relay's ``Conversation`` and the sans-I/O simulators,
trading real wire bytes; PROTOCOLS section numbers name the rule each one holds.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.backends import realtime
from relay.call_options import CallOptions
from relay.sim import audio
from relay.sim.agent import AgentConfig
from relay.store import TurnRecord
from relay.tools.spec import TenantTool
from tests.vcall import VirtualCall

LONG = "Let me tell you everything about our long menu of dishes and drinks for tonight and tomorrow"
AGENT = AgentConfig(think_ms=300, transcription_delay_ms=100)


def talkative(text: str, history: list[tuple[str, str]]) -> str:
    return "Booked for seven." if "book" in text.lower() else LONG


def sent(call: VirtualCall, event: str) -> list[dict[str, object]]:
    return [m for m in call.twilio_out if m["event"] == event]


def first_media_at(call: VirtualCall) -> float:
    return next(at for at, m in zip(call.twilio_sent_at, call.twilio_out, strict=True) if m["event"] == "media")


def heard_words(call: VirtualCall) -> list[str]:
    return audio.transcribe(call.playback.heard).split()


# ---------------------------------------------------------------- paced playout (§0.2, §6 #4)


def test_answers_go_out_in_20_ms_frames_never_more_than_the_lead_ahead() -> None:
    call = VirtualCall(
        agent_config=dataclasses.replace(AGENT, chunk_ms=(40, 400), realtime_factor=8.0),
        options=CallOptions(lead_ms=100),
    )
    call.say("Tell me about the menu.")
    assert call.run_until(call.answered(1), 20)
    media = sent(call, "media")
    assert len(media) > 50
    # Every frame is 160 bytes (the last one padded with silence): 216 base64 characters.
    assert all(len(m["media"]["payload"]) == 216 for m in media)  # type: ignore[index]
    # The agent sent its audio 8x faster than real time; Twilio never held more than the lead.
    assert call.playback.peak_queued <= 100 * 8
    # The caller heard the answer whole and bit-exact, with no stutter.
    assert " ".join(heard_words(call)) == "You said: Tell me about the menu."
    assert call.playback.stalls_ms == []
    assert call.violations() == []


def test_a_40_ms_clock_sends_paced_audio_two_frames_a_write_and_the_caller_hears_it_as_before() -> None:
    """RELAY_PACER_INTERVAL_MS=40: the same answer, the same words heard, no stutter, and the
    paced part of it in half the writes; the first frames still go as they arrive."""

    def run(interval_ms: int) -> VirtualCall:
        call = VirtualCall(
            agent_config=dataclasses.replace(AGENT, chunk_ms=(40, 400), realtime_factor=8.0),
            options=CallOptions(lead_ms=100, pacer_interval_ms=interval_ms),
        )
        call.say("Tell me about the menu and the opening hours, please.")
        assert call.run_until(call.answered(1), 30)
        return call

    every_20, every_40 = run(20), run(40)
    for call in (every_20, every_40):
        assert " ".join(heard_words(call)).startswith("You said: Tell me about the menu")
        assert call.playback.stalls_ms == []
        assert call.playback.peak_queued <= 100 * 8
        assert call.violations() == []
    assert heard_words(every_20) == heard_words(every_40)
    assert len(sent(every_20, "media")) == len(sent(every_40, "media"))
    # Writes: the moments relay sent anything to Twilio.
    writes_20, writes_40 = len(set(every_20.twilio_sent_at)), len(set(every_40.twilio_sent_at))
    assert writes_40 < 0.65 * writes_20, (writes_20, writes_40)
    # The first frame of the answer left as soon as the agent's first audio came, both times.
    assert first_media_at(every_40) == first_media_at(every_20)


def test_audio_within_the_lead_goes_out_at_once_not_on_the_next_tick() -> None:
    call = VirtualCall(agent_config=AGENT, pacer_phase_ms=7)
    call.say("Hello.")
    assert call.run_until(lambda: bool(sent(call, "media")), 10)
    first_delta = next(t for t, kind in call.backend_events if kind == "response.output_audio.delta")
    first_frame = call.twilio_sent_at[call.twilio_out.index(sent(call, "media")[0])]
    assert first_frame == first_delta  # no wait for the shared clock: no added latency


def test_marks_name_the_item_and_its_bytes_and_every_answer_ends_with_one() -> None:
    call = VirtualCall(agent_config=AGENT, options=CallOptions(mark_frames=5))
    call.say("Book a table.")
    assert call.run_until(call.answered(1), 20)
    marks = [m["mark"]["name"] for m in sent(call, "mark")]  # type: ignore[index]
    [answer] = [t for t in call.turns() if t.role == "assistant"]
    assert marks and all(name.startswith(answer.item_id + ":") for name in marks)
    cums = [int(name.rpartition(":")[2]) for name in marks]
    assert cums == sorted(cums) and cums[-1] == answer.audio_ms * 8  # the last one: the whole answer
    assert all(b - a <= 5 * 160 for a, b in itertools.pairwise([0, *cums]))
    assert call.playback.echoed_played == marks  # all played, in order, none cleared
    assert answer.text_heard == answer.text_generated and not answer.interrupted


# ---------------------------------------------------------------- inbound gap fill


def test_lost_caller_frames_are_filled_with_silence_and_duplicates_dropped() -> None:
    call = VirtualCall(agent_config=AGENT)  # not run: no frames from the virtual caller
    conversation, session = call.conversation, call.agent
    frame = base64.b64encode(audio.silence(20))
    for timestamp in (0, 100, 100, 60, 120):  # 80 ms lost, a duplicate, a late one
        conversation.media.caller_audio(frame, timestamp, call.now)
    assert conversation.stats.frames_filled == 4 and conversation.stats.frames_late == 2
    # The backend got 20 ms, 80 ms of silence, 20 ms, 20 ms: its audio clock is Twilio's.
    assert call.sessions[0].appends == 4
    assert session._clock == 7 * 160


# ---------------------------------------------------------------- barge-in (§2.5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    barge_ms=st.integers(60, 3500),
    latency_ms=st.sampled_from([0.0, 1.0, 3.0]),
    lead_ms=st.sampled_from([60, 100, 200]),
    mark_frames=st.sampled_from([1, 5, 10]),
    phase=st.integers(0, 19),
)
def test_the_truncate_lands_where_the_caller_stopped_hearing(
    barge_ms: int, latency_ms: float, lead_ms: int, mark_frames: int, phase: int
) -> None:
    agent = dataclasses.replace(AGENT, reply=talkative, chunk_ms=(40, 200), realtime_factor=4.0)
    call = VirtualCall(
        agent_config=agent,
        options=CallOptions(lead_ms=lead_ms, mark_frames=mark_frames),
        latency_ms=latency_ms,
        pacer_phase_ms=phase,
    )
    call.say("What is on the menu?")
    assert call.run_until(lambda: call.playback.played >= barge_ms * 8, 30)
    call.say("Stop, just book it.")
    assert call.run_until(lambda: bool(call.sessions[0].truncates and call.playback.clears_at), 3)
    [truncate] = call.sessions[0].truncates
    # Accepted (never past the produced audio) and within 20 ms of what the caller heard.
    assert call.violations() == []
    heard = call.playback.clears_at[0]  # the answer is the first audio the caller got
    assert abs(truncate["audio_end_ms"] - heard / 8) <= 20
    # After the clear, not one more byte of the interrupted answer reached the caller.
    assert call.run_until(call.answered(2), 20)
    words = heard_words(call)
    cut = words.index("Booked")
    assert words[cut:] == ["Booked", "for", "seven."] and words[:cut] == LONG.split()[:cut]
    first = call.turns()[1]
    assert first.role == "assistant" and first.interrupted
    assert abs(len(first.text_heard.split()) - cut) <= 1


def test_no_barge_in_once_the_answer_has_played_in_full() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.say("Hi.")
    assert call.run_until(call.answered(1), 20)
    call.say("And another thing.")
    assert call.run_until(call.answered(2), 20)
    assert sent(call, "clear") == [] and call.sessions[0].truncates == []


def test_cleared_mark_echoes_never_count_as_played() -> None:
    agent = dataclasses.replace(AGENT, reply=talkative)
    call = VirtualCall(agent_config=agent, options=CallOptions(mark_frames=1, lead_ms=400))
    call.say("What is on the menu?")
    assert call.run_until(lambda: call.playback.played >= 800 * 8, 30)
    call.say("Stop.")
    assert call.run_until(lambda: bool(call.playback.echoed_cleared), 3)
    [answer_turn] = [t for t in call.conversation._assistants.values()]
    assert answer_turn.interrupted
    # Played is what a mark echoed before the clear said; the echoes the clear caused (of
    # audio that never played) did not move it.
    cleared = [int(n.rpartition(":")[2]) for n in call.playback.echoed_cleared]
    played = [int(n.rpartition(":")[2]) for n in call.playback.echoed_played if n.startswith(answer_turn.item_id)]
    assert answer_turn.played in played and answer_turn.played < min(cleared)


def test_with_interrupt_response_off_relay_cancels_the_response_itself() -> None:
    agent = dataclasses.replace(AGENT, reply=talkative, realtime_factor=1.0)
    profile = realtime.AgentProfile(instructions="x", interrupt_response=False)
    call = VirtualCall(agent_config=agent, profile=profile)
    call.say("What is on the menu?")
    assert call.run_until(lambda: call.playback.played >= 600 * 8, 30)
    call.say("Stop.")
    assert call.run_until(lambda: bool(call.sessions[0].truncates), 3)
    kinds = [k for _, k in call.sessions[0].received]
    assert "response.cancel" in kinds and kinds.index("response.cancel") < kinds.index("conversation.item.truncate")
    assert call.violations() == []


# ---------------------------------------------------------------- greeting, keys, hang-up


def test_the_agent_greets_first_and_the_greeting_is_a_stored_turn() -> None:
    profile = realtime.AgentProfile(instructions="x", greeting="Hello, you are through to the demo line.")
    call = VirtualCall(agent_config=AGENT, profile=profile)
    assert call.run_until(call.answered(1), 10)
    [greeting] = call.turns()
    assert greeting.role == "assistant" and greeting.text_heard == "Hello, you are through to the demo line."
    assert greeting.voice_to_voice_ms is None  # it answers nobody
    assert " ".join(heard_words(call)) == greeting.text_heard


def test_keys_reach_the_model_as_user_input_and_are_stored() -> None:
    call = VirtualCall(agent_config=AGENT, options=CallOptions(dtmf_timeout_ms=1000))
    call.run(0.5)
    for digit in "42":
        call.conversation.dtmf(digit, call.now)
        call.run(0.2)
    assert not call.turns()  # still collecting: more keys may come
    assert call.run_until(call.answered(1), 10)
    user, answer = call.turns()
    assert user.role == "user" and user.text_generated == "[DTMF 42]"
    assert answer.text_generated.startswith("You said: The caller pressed these keys")
    assert call.violations() == []


def test_hash_sends_the_keys_at_once() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.run(0.5)
    for digit in "7#":
        call.conversation.dtmf(digit, call.now)
    assert [t.text_generated for t in call.turns()] == ["[DTMF 7#]"]


def test_the_farewell_plays_to_its_final_mark_before_hang_up() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.say("Thanks, that is all, goodbye.")
    assert call.run_until(lambda: call.conversation.hangup_requested, 20)
    # Asked to hang up while the farewell is still playing: not yet.
    assert not call.conversation.farewell_played and call.conversation.farewell_ms_left() > 0
    assert call.run_until(lambda: call.conversation.farewell_played, 10)
    assert " ".join(heard_words(call)) == AGENT.farewell
    assert call.playback.queue == bytearray()  # nothing left unheard
    final = sent(call, "mark")[-1]["mark"]["name"]  # type: ignore[index]
    assert call.playback.echoed_played[-1] == final


# ---------------------------------------------------------------- new backend sessions


def counting(text: str, history: list[tuple[str, str]]) -> str:
    """Proves the context: the answer counts the caller's lines the model knows of."""
    said = sum(1 for role, _ in history if role == "user") + 1
    return f"Line {said}: {' '.join(text.split()[:3])}"


def test_a_fresh_session_is_seeded_with_the_conversation_so_far() -> None:
    agent = dataclasses.replace(AGENT, reply=counting)
    call = VirtualCall(agent_config=agent)
    for n, line in enumerate(("First thing.", "Second thing."), 1):
        call.say(line)
        assert call.run_until(call.answered(n), 20)
    call.run(0.5)
    assert call.conversation.idle
    call.open_backend("recycle")
    call.say("Third thing.")
    assert call.run_until(call.answered(3), 20)
    answers = [t.text_heard for t in call.turns() if t.role == "assistant"]
    assert answers == ["Line 1: First thing.", "Line 2: Second thing.", "Line 3: Third thing."]
    seeded = [kind for _, kind in call.sessions[1].received if kind == "conversation.item.create"]
    assert len(seeded) == 4  # two lines and two answers
    assert call.violations() == [] and call.conversation.stats.recycles == 1


def test_after_a_drop_the_answer_already_sent_still_plays_and_the_call_goes_on() -> None:
    agent = dataclasses.replace(AGENT, reply=counting)
    options = CallOptions(reconnect_message="Sorry, I lost you for a moment.")
    call = VirtualCall(agent_config=agent, options=options)
    call.say("First thing.")
    assert call.run_until(call.answered(1), 20)
    call.open_backend("reconnect")  # the old session is gone
    assert call.run_until(call.answered(2), 20)  # the configured line
    call.say("Second thing.")
    assert call.run_until(call.answered(3), 20)
    answers = [t.text_heard for t in call.turns() if t.role == "assistant"]
    assert answers == ["Line 1: First thing.", "Sorry, I lost you for a moment.", "Line 2: Second thing."]
    assert call.conversation.stats.reconnects == 1 and call.violations() == []


def test_caller_audio_is_held_while_no_session_is_ready_and_none_is_lost() -> None:
    call = VirtualCall(agent_config=dataclasses.replace(AGENT, session_updated_delay_ms=600))
    call.say("Is anyone there?")
    assert call.run_until(call.answered(1), 20)
    assert call.sessions[0].appends_before_session_updated == 0
    assert call.turns()[0].text_generated == "Is anyone there?"


def test_keys_pressed_as_the_call_ends_are_still_stored() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.run(0.5)
    call.conversation.dtmf("9", call.now)
    call.conversation.finish("stop")
    assert [t.text_generated for t in call.turns()] == ["[DTMF 9]"]


def test_a_rejected_truncate_is_counted_and_the_call_goes_on() -> None:
    call = VirtualCall(agent_config=AGENT)
    error = {
        "type": "error",
        "event_id": "event_9",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "audio_end_ms is too large",
            "param": "audio_end_ms",
            "event_id": realtime.TRUNCATE_ID,
        },
    }
    call.conversation.backend_message(orjson.dumps(error), call.now)
    assert call.conversation.stats.truncates_rejected == 1 and call.conversation.stats.backend_errors == 1
    call.say("Are you still there?")
    assert call.run_until(call.answered(1), 20)  # the call goes on


# ---------------------------------------------------------------- preambles (BACKENDS §5.4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(barge_ms=st.integers(0, 4000), lead_ms=st.sampled_from([60, 100]), mark_frames=st.sampled_from([1, 5]))
def test_a_barge_in_anywhere_in_a_preamble_or_its_answer_is_truncated_right_and_stored_per_item(
    barge_ms: int, lead_ms: int, mark_frames: int
) -> None:
    """gpt-realtime-2.1 says a preamble item, then its answer item, in one response: wherever the
    caller cuts in, the item being heard is truncated (never rejected), nothing later of that
    response plays, and each item's stored heard text is what the caller heard of it."""
    preamble = "Let me check that for you."
    agent = dataclasses.replace(AGENT, reply=talkative, preamble=preamble, chunk_ms=(40, 200), realtime_factor=4.0)
    call = VirtualCall(agent_config=agent, options=CallOptions(lead_ms=lead_ms, mark_frames=mark_frames))
    call.say("What is on the menu?")
    assert call.run_until(lambda: bool(call.playback.received), 10)
    call.run(barge_ms / 1000)
    call.say("Stop, just book it.")
    assert call.run_until(lambda: any(t.text_generated == "Booked for seven." for t in call.turns()), 20)
    call.run(1.0)
    assert call.violations() == [] and call.conversation.stats.truncates_rejected == 0
    assert all(not s.errors_sent for s in call.sessions)
    turns = call.turns()
    second_line = next(t for t in turns if t.role == "user" and t.text_generated == "Stop, just book it.")
    first_response = [t for t in turns if t.role == "assistant" and t.seq < second_line.seq]
    heard_first = " ".join(t.text_heard or "" for t in first_response).split()
    words = heard_words(call)
    after = [*preamble.split(), "Booked", "for", "seven."]  # the next response, heard whole
    assert words[-len(after) :] == after
    cut = len(words) - len(after)
    # What the caller heard of the first response, item by item, is what is stored (to the word
    # either way at the cut: Realtime's heard text is cut by audio proportion).
    assert abs(len(heard_first) - cut) <= 1 and heard_first[: max(0, cut - 1)] == words[: max(0, cut - 1)]
    if first_response[0].interrupted:  # cut in the preamble: its answer never played
        assert all(t.text_heard == "" for t in first_response[1:])


def test_tools_relay_does_not_offer_get_an_error_and_one_response_so_the_model_speaks_on() -> None:
    call = VirtualCall()
    call.run(0.5)
    sent: list[dict[str, object]] = []
    call.conversation._upstream = type("Sink", (), {"send": lambda self, m: sent.append(orjson.loads(m))})()
    done = {
        "type": "response.done",
        "response": {
            "id": "resp_9",
            "status": "completed",
            "output": [
                {"type": "function_call", "id": "item_9", "call_id": "call_9", "name": "lookup", "arguments": "{}"},
                {"type": "function_call", "id": "item_10", "call_id": "call_10", "name": "book", "arguments": "{}"},
            ],
        },
    }
    call.conversation.backend_message(orjson.dumps(done), call.now)
    # Both answered, and one response asked for: a second would be refused while the first runs.
    assert [m["type"] for m in sent] == ["conversation.item.create", "conversation.item.create", "response.create"]
    item = sent[0]["item"]
    assert isinstance(item, dict) and item["call_id"] == "call_9" and "no tool named 'lookup'" in item["output"]


BOOK = TenantTool(
    "book",
    "Book a table.",
    {"type": "object", "properties": {"party": {"type": "integer"}}, "required": ["party"]},
    "https://tenant.example/book",
)


def test_a_tenant_tool_runs_beside_the_call_and_the_model_goes_on_once_every_answer_is_in() -> None:
    call = VirtualCall(profile=realtime.AgentProfile(instructions="x", tools=(BOOK,)))
    call.run(0.5)
    sent: list[dict[str, object]] = []
    asked: list[tuple[str, str, dict[str, object]]] = []
    conversation = call.conversation
    conversation._upstream = type("Sink", (), {"send": lambda self, m: sent.append(orjson.loads(m))})()
    conversation.on_tool = lambda call_id, tool, arguments: asked.append((call_id, tool.name, arguments))
    calls = [("call_1", "book", '{"party": 2}'), ("call_2", "book", '{"party": "two"}'), ("call_3", "nope", "{}")]
    done = {
        "type": "response.done",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "output": [
                {"type": "function_call", "id": f"item_{i}", "call_id": c, "name": n, "arguments": a}
                for i, (c, n, a) in enumerate(calls)
            ],
        },
    }
    conversation.backend_message(orjson.dumps(done), call.now)
    # the good call goes to the tenant's endpoint; the bad arguments and the unknown tool are
    # answered at once; the model waits for the endpoint's answer
    assert asked == [("call_1", "book", {"party": 2})]
    assert [m["type"] for m in sent] == ["conversation.item.create", "conversation.item.create"]
    outputs = [orjson.loads(m["item"]["output"]) for m in sent]  # type: ignore[index]
    assert outputs == [{"error": "party: 'two' is not of type 'integer'"}, {"error": "no tool named 'nope'"}]
    conversation.tool_answered("call_1", {"result": {"ok": True}}, call.now)
    assert [m["type"] for m in sent[2:]] == ["conversation.item.create", "response.create"]
    conversation.tool_answered("call_1", {"result": {"ok": True}}, call.now)  # twice: once counts
    assert len(sent) == 4
    tools = [t for t in call.records if isinstance(t, TurnRecord) and t.role == "tool"]
    assert [(t.item_id, t.text_generated) for t in tools] == [
        ("call_2", 'book {"party": "two"}'),
        ("call_1", 'book {"party":2}'),
    ]
    assert tools[1].text_heard == '{"result":{"ok":true}}'


def test_a_tool_call_unanswered_when_the_call_ends_is_stored_all_the_same() -> None:
    call = VirtualCall(profile=realtime.AgentProfile(instructions="x", tools=(BOOK,)))
    call.run(0.5)
    item = {"type": "function_call", "id": "item_1", "call_id": "call_1", "name": "book", "arguments": '{"party": 3}'}
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": [item]}}
    call.conversation.backend_message(orjson.dumps(done), call.now)
    call.conversation.finish("stop")
    [tool] = [t for t in call.records if isinstance(t, TurnRecord) and t.role == "tool"]
    assert tool.text_heard == '{"error":"the call ended before the answer came"}'
