"""The after-hours race end to end: a caller's urgent matter, escalated by the agent, reaches the
person on call by a call and a text at the same moment; the first acknowledgement wins, the other
leg is cancelled, every leg is stored. Three scripts: the call answered first, YES texted first,
neither (the next contact at the timeout, then no one)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from relay.outbound import race
from relay.outbound.race import CALL, SMS
from relay.sim.caller import CallerScript, CallResult, TwilioCaller
from relay.sim.phones import NoAnswer, Person, Phone
from tests.test_outbound_calls import ACCOUNT, CALLER_ID, TOKEN, Stack, outbound_stack

DANA, LEE = "+15550601111", "+15550602222"
ON_CALL = f"Dana={DANA},Lee={LEE}"
URGENT = CallerScript(utterances=("Urgent, the basement floods.",), lead_in_ms=200, answer_quiet_ms=600)
# Someone on call who picks up, hears the summary and presses 1.
TAKES_IT = CallerScript(
    utterances=(), expect_greeting=True, dtmf="1", wait_for_hangup=True, lead_in_ms=200, answer_quiet_ms=600
)


async def escalate(s: Stack, script: CallerScript = URGENT) -> tuple[race.Race, CallResult]:
    """An inbound caller with an urgent matter; returns the race once settled, and the caller's call."""
    s.sim.sms_webhooks[CALLER_ID] = f"{s.url}/twilio/sms"
    caller = TwilioCaller(
        f"{s.url}/twilio/voice",
        script,
        auth_token=TOKEN,
        account_sid=ACCOUNT,
        from_number="+15550609999",
        to_number=CALLER_ID,
    )
    result = await caller.run()
    escalations = s.outbound.escalations
    assert escalations is not None
    for _ in range(600):
        races = await escalations.races.recent("default")
        if races and races[0].settled and all(c.terminal for c in s.sim.calls.values()):
            return races[0], result
        await asyncio.sleep(0.05)
    raise AssertionError("the race did not settle")


def texts_to(s: Stack, number: str) -> list[str]:
    return [m.body for m in sorted(s.sim.messages.values(), key=lambda m: m.created_at) if m.to == number]


async def test_the_contact_answers_the_call_first(tmp_path: Path) -> None:
    phones: dict[str, Phone] = {DANA: Person(TAKES_IT, answer_after_s=0.5), LEE: NoAnswer()}
    async with outbound_stack(tmp_path, phones, on_call=ON_CALL, race_timeout_s=30) as s:
        settled, result = await escalate(s)
        [call] = [c for c in s.sim.calls.values() if c.to == DANA]
        turns = await s.store.turns(call.sid)
        await s.store.flush()
        ended = await s.store.call(call.sid)

    # The caller was told what happens next (and, still on the line when Dana took it, put through).
    assert "on call now, by phone and text" in " ".join(t.heard for t in result.turns)
    assert result.dialed in ([], [DANA])
    assert settled.outcome == race.ACKNOWLEDGED and settled.winner is not None
    assert (settled.winner.stage, settled.winner.kind) == (0, CALL)
    assert settled.summary == "Caller says: Urgent, the basement floods."
    # Both legs fired at the same moment; the text leg is over, with a "handled" text after it.
    call_leg, sms_leg = settled.leg(0, CALL), settled.leg(0, SMS)
    assert call_leg is not None and sms_leg is not None and call_leg.started_at == sms_leg.started_at
    assert sms_leg.cancelled_at is not None and sms_leg.ref.startswith("SM")
    assert texts_to(s, DANA) == [race.sms_body(settled.summary), race.handled_body("Dana")]
    assert texts_to(s, LEE) == [] and [c.to for c in s.sim.calls.values()] == [DANA]
    # On the race's call the agent read the summary, took the 1, thanked them and hung up.
    assert call.result is not None
    # (what played while the phone was still being put to the ear aside)
    assert race.call_greeting(race.Contact("Dana", DANA), settled.summary).endswith(call.result.turns[0].heard)
    assert settled.summary in call.result.turns[0].heard
    assert [t.text_generated for t in turns if t.role == "user"] == ["[DTMF 1]"]
    assert ended is not None and ended["end_reason"] == "race_accepted"
    assert call.said == [] and call.errors == []  # no apology after the stream: a plain hang-up


async def test_the_contact_replies_yes_first_and_the_caller_still_on_the_line_is_put_through(tmp_path: Path) -> None:
    phones: dict[str, Phone] = {DANA: Person(TAKES_IT, answer_after_s=8.0, sms_reply="YES", sms_reply_after_s=0.3)}
    async with outbound_stack(tmp_path, phones, on_call=ON_CALL, race_timeout_s=30) as s:
        settled, result = await escalate(s, dataclasses.replace(URGENT, wait_for_hangup=True))
        [call] = s.sim.calls.values()
        await s.store.flush()
        ended = await s.store.call(result.call_sid)

    assert settled.winner is not None and (settled.winner.stage, settled.winner.kind) == (0, SMS)
    call_leg = settled.leg(0, CALL)
    assert call_leg is not None and call_leg.cancelled_at is not None
    # The call was still ringing: hung up, never answered.
    assert call.status == "canceled" and call.answered_at is None
    assert texts_to(s, DANA) == [race.sms_body(settled.summary)]
    assert [r.body for r in s.sim.sms_replies] == ["YES"] and s.sim.sms_replies[0].http_status == 200
    # The caller, still on the line, heard who took it and was connected to them.
    assert "Dana, who is on call, has taken it. I am connecting you now." in [t.heard for t in result.turns][-1]
    assert result.dialed == [DANA] and result.said_by_twilio == []
    assert ended is not None and ended["end_reason"] == "transferred"


async def test_no_one_answers_the_next_contact_at_the_timeout_then_no_one(tmp_path: Path) -> None:
    phones: dict[str, Phone] = {DANA: NoAnswer(ring_s=30), LEE: NoAnswer(ring_s=30)}
    async with outbound_stack(tmp_path, phones, on_call=ON_CALL, race_timeout_s=3) as s:
        settled, _ = await escalate(s)
        calls = {c.to: c for c in s.sim.calls.values()}

    assert settled.outcome == race.UNACKNOWLEDGED and settled.winner is None
    legs = {(leg.stage, leg.kind): leg for leg in settled.legs}
    assert set(legs) == {(0, CALL), (0, SMS), (1, CALL), (1, SMS)}
    # Lee was reached when Dana's time was up, and the race ended when Lee's was.
    assert 2.9 <= legs[1, CALL].started_at - legs[0, CALL].started_at <= 4.0
    assert settled.ended_at is not None and 2.9 <= settled.ended_at - legs[1, CALL].started_at <= 4.0
    assert all(legs[stage, CALL].cancelled_at is not None for stage in (0, 1))
    assert calls[DANA].status == calls[LEE].status == "canceled"
    assert texts_to(s, DANA) == texts_to(s, LEE) == [race.sms_body(settled.summary)]
