"""GPT-Live's conversation core on a fake clock (tests/vcall.py, with the GPT-Live simulator):
barge-in at any point, with and without a stall, and what the caller heard stored by word timing.

GPT-Live yields to the caller by itself; relay only clears a backlog beyond its lead. Each case
holds the stored heard text to what the caller's ear actually got (the simulator's words carry
their text in the audio, so the caller's recording says which words it heard).
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.agents import AgentProfile
from relay.call_options import CallOptions
from relay.errors import BackendFatal
from relay.sim import audio
from relay.sim.live import LiveConfig
from relay.tools.spec import TenantTool
from tests.vcall import VirtualCall

LONG = "Let me tell you everything about our long menu of dishes and drinks for tonight and tomorrow"
AGENT = LiveConfig(think_ms=300, transcription_delay_ms=100)


def talkative(text: str, history: list[tuple[str, str]]) -> str:
    return "Fine." if "stop" in text.lower() else LONG


def heard_texts(call: VirtualCall) -> list[str]:
    return [t.text_heard or "" for t in call.turns() if t.role == "assistant"]


def first_agent_word(call: VirtualCall) -> bool:
    return any(m["type"] == "session.output_transcript.delta" for m in call.backend_messages)


def one_word_more(caller: list[str], stored: list[str]) -> bool:
    """``caller`` is ``stored`` with one word more: a word cut after its middle (the caller's
    transcript has it, relay does not count it, its end never played)."""
    return len(caller) == len(stored) + 1 and any(caller[:k] + caller[k + 1 :] == stored for k in range(len(caller)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    barge_ms=st.integers(0, 3500),
    lead_ms=st.sampled_from([60, 80, 120]),
    phase=st.integers(0, 19),
)
def test_a_barge_in_anywhere_the_model_yields_and_the_heard_text_is_what_was_played(
    barge_ms: int, lead_ms: int, phase: int
) -> None:
    agent = dataclasses.replace(AGENT, reply=talkative)
    call = VirtualCall(agent_config=agent, options=CallOptions(live_lead_ms=lead_ms), pacer_phase_ms=phase)
    call.say("What is on the menu?")
    assert call.run_until(lambda: first_agent_word(call), 10)
    call.run(barge_ms / 1000)
    call.say("Stop, please.")
    assert call.run_until(lambda: "Fine." in heard_texts(call), 20)
    call.run(1.0)
    assert call.violations() == []
    [session] = call.sessions
    # The model stopped by itself; relay held nothing beyond its lead, so it cleared nothing, and
    # the caller heard at most the lead (and the one chunk the model sends ahead) of old audio.
    assert call.playback.clears_at == []
    for yielded_at, yielded_ms in session.yields:
        played_then = max(played for at, played in call.played_at if at <= yielded_at)
        assert (yielded_ms * 8 - played_then) / 8 <= lead_ms + agent.chunk_ms + 20
    # Every word the model said played; the stored heard text is exactly the caller's words.
    assert " ".join(heard_texts(call)).split() == audio.transcribe(call.playback.heard).split()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    into_ms=st.integers(0, 2000),
    stall_ms=st.integers(300, 1500),
    lead_ms=st.sampled_from([60, 80]),
)
def test_after_a_stall_relay_clears_its_backlog_and_the_heard_text_ends_where_the_ear_was(
    into_ms: int, stall_ms: int, lead_ms: int
) -> None:
    """The network stalls between relay and GPT-Live, then delivers all at once: relay holds more
    than its lead when the caller speaks, so it clears; the words cut stay unheard in the store."""
    agent = dataclasses.replace(AGENT, reply=talkative)
    call = VirtualCall(agent_config=agent, options=CallOptions(live_lead_ms=lead_ms))
    call.say("What is on the menu?")
    assert call.run_until(lambda: first_agent_word(call), 10)
    call.run(into_ms / 1000)
    call.held_from_backend = []
    call.run(stall_ms / 1000)
    call.release_backend()
    call.say("Stop, please.")
    assert call.run_until(lambda: "Fine." in heard_texts(call), 20)
    call.run(1.0)
    assert call.violations() == []
    # The words that played (a word the stall split in two, with the ear's dry spell in between,
    # was still heard whole: read from the audio that played, gaps left out).
    caller = audio.transcribe(call.playback.played_audio).split()
    stored = " ".join(heard_texts(call)).split()
    assert caller == stored or one_word_more(caller, stored)
    answers = [t for t in call.turns() if t.role == "assistant"][:-1]  # before "Fine."
    for answer in answers:
        said, heard = (answer.text_generated or "").split(), (answer.text_heard or "").split()
        assert said[: len(heard)] == heard and answer.interrupted == (heard != said)  # heard: how it began
    if stall_ms - lead_ms > 600:  # a backlog of whole words when the caller spoke: cut, and stored as cut
        assert call.playback.clears_at and any(answer.interrupted for answer in answers)


def test_keys_reach_gpt_live_as_context_and_the_model_answers_them() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.run(1.0)
    for digit in "42#":
        call.conversation.dtmf(digit, call.now)
    assert call.run_until(lambda: any("pressed" in (t.text_generated or "") for t in call.turns()), 10)
    call.run(1.0)
    [session] = call.sessions
    assert call.violations() == []
    assert any(role == "developer" and "42#" in text for role, text in session.turns)  # silent context
    turns = call.turns()
    assert [t.text_generated for t in turns] == ["[DTMF 42#]", "You pressed 4 2 #"]
    assert turns[1].text_heard == turns[1].text_generated


def delegated_call(call_id: str, name: str) -> list[dict[str, object]]:
    """A delegation in which the Responses model calls one tool, then completes."""
    item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": "{}"}
    return [
        {
            "type": "response.event",
            "delegation_id": "dlg_9",
            "event": {"type": "response.output_item.done", "item": item},
        },
        {"type": "response.event", "delegation_id": "dlg_9", "event": {"type": "response.completed", "response": {}}},
    ]


def test_a_tool_relay_does_not_offer_gets_an_error_and_the_delegation_goes_on() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.run(0.5)
    sent: list[dict[str, object]] = []
    call.conversation._upstream = type("Sink", (), {"send": lambda self, m: sent.append(orjson.loads(m))})()
    for event in delegated_call("call_9", "lookup"):
        call.conversation.backend_message(orjson.dumps(event), call.now)
    assert [m["type"] for m in sent] == ["response.item.create", "response.create"]
    item = sent[0]["item"]
    assert isinstance(item, dict) and item["call_id"] == "call_9" and "no tool named 'lookup'" in item["output"]


def test_a_quota_error_mid_call_ends_it_unretried() -> None:
    call = VirtualCall(agent_config=AGENT)
    call.run(0.5)
    quota = {"type": "error", "error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "x"}}
    with pytest.raises(BackendFatal) as raised:
        call.conversation.backend_message(orjson.dumps(quota), call.now)
    assert raised.value.end_reason == "backend_refused"


def test_a_delegated_tenant_tool_is_answered_when_its_endpoint_answers() -> None:
    tool = TenantTool("book", "Book a table.", {"type": "object"}, "https://tenant.example/book")
    profile = AgentProfile(instructions="Be brief.", backend="openai-live", model="gpt-live-1", tools=(tool,))
    call = VirtualCall(agent_config=AGENT, profile=profile)
    call.run(0.5)
    sent: list[dict[str, object]] = []
    asked: list[str] = []
    call.conversation._upstream = type("Sink", (), {"send": lambda self, m: sent.append(orjson.loads(m))})()
    call.conversation.on_tool = lambda call_id, tool, arguments: asked.append(call_id)
    for event in delegated_call("call_9", "book"):
        call.conversation.backend_message(orjson.dumps(event), call.now)
    assert asked == ["call_9"] and sent == []  # the delegation waits for the endpoint
    call.conversation.tool_answered("call_9", {"result": {"booked": True}}, call.now)
    assert [m["type"] for m in sent] == ["response.item.create", "response.create"]
    item = sent[0]["item"]
    assert isinstance(item, dict) and item["call_id"] == "call_9" and '"booked":true' in str(item["output"])
