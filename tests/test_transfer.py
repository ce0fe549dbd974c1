"""Putting the caller through to a person, end to end against the simulated Twilio (both legs
on one switchboard): cold (the agent's line, then ``<Dial>``), warm accepted (the person is
briefed on a call of their own and presses 1: both meet in a conference), warm declined (the
agent tells the caller and the call goes on), and the call control API's ``/transfer``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from relay.sim import audio
from relay.sim.caller import CallerScript, CallResult, TwilioCaller, http_post
from relay.sim.phones import Person
from relay.sim.switchboard import Reachable, Switchboard
from relay.store import TurnRecord
from relay.tools.spec import TransferTarget
from tests.pgutil import eventually
from tests.test_outbound_calls import ACCOUNT, CALLER_ID, TOKEN, Stack, outbound_stack

FRONT, MANAGER = "+15550701111", "+15550702222"
FRONT_GREETING = "Front desk, this is Alex."
MANAGER_LINE = "Hi, this is the manager. How can I help?"


def asks_for(who: str, *, stay_ms: int = 12_000) -> CallerScript:
    """A caller who asks to be put through, then stays on the line until the relay lets go."""
    return CallerScript(
        utterances=(f"Please transfer me to the {who}.",),
        lead_in_ms=200,
        answer_quiet_ms=800,
        answer_timeout_ms=stay_ms,
        wait_for_hangup=True,
        conference_stay_s=2.0,
    )


def manager(dtmf: str) -> Person:
    """The manager: hears the briefing, presses ``dtmf``, stays on; says ``MANAGER_LINE`` in a conference."""
    script = CallerScript(
        utterances=(), expect_greeting=True, dtmf=dtmf, wait_for_hangup=True, lead_in_ms=200, answer_quiet_ms=600
    )
    return Person(script, answer_after_s=0.3, join_line=MANAGER_LINE)


async def call(
    s: Stack, script: CallerScript, board: Switchboard
) -> tuple[CallResult, dict[str, object], list[TurnRecord]]:
    caller = TwilioCaller(
        f"{s.url}/twilio/voice", script, auth_token=TOKEN, account_sid=ACCOUNT, to_number=CALLER_ID, switchboard=board
    )
    result = await caller.run()
    await settle(s)
    row = await s.store.call(result.call_sid)
    assert row is not None
    return result, row, await s.store.turns(result.call_sid)


async def settle(s: Stack) -> None:
    """Every call over, every backend connection closed, every record stored."""
    for _ in range(200):
        if s.relay.upstreams_open == 0 and not s.relay.live and all(c.terminal for c in s.sim.calls.values()):
            break
        await asyncio.sleep(0.05)
    await s.store.flush()


async def test_a_cold_transfer_leaves_the_stream_and_dials_the_person(tmp_path: Path) -> None:
    board = Switchboard(people={FRONT: Reachable(FRONT_GREETING, talk_s=1.0)})
    async with outbound_stack(tmp_path, {}, switchboard=board) as s:
        await s.tools.add_target("default", "default", TransferTarget("front desk", FRONT))
        result, row, turns = await call(s, asks_for("front desk"), board)
        assert s.relay.upstreams_open == 0  # no upstream left open

    assert result.error is None and result.violations == []
    assert "Let me put you through" in result.turns[0].heard
    assert result.dialed == [FRONT]
    [(reached, heard)] = result.talked_to
    assert reached == FRONT and "Front desk" in heard
    assert row["end_reason"] == "transferred" and row["transferred_to"] == FRONT
    [tool] = [t for t in turns if t.role == "tool"]
    assert tool.text_generated is not None and tool.text_generated.startswith("transfer_call")
    assert '"front desk"' in tool.text_generated


async def test_a_warm_transfer_accepted_brings_both_into_one_room(tmp_path: Path) -> None:
    board = Switchboard()
    async with outbound_stack(tmp_path, {MANAGER: manager("1")}, switchboard=board) as s:
        await s.tools.add_target("default", "default", TransferTarget("manager", MANAGER, "warm"))
        result, row, _ = await call(s, asks_for("manager"), board)
        [briefing] = [c for c in s.sim.calls.values() if c.to == MANAGER]
        briefing_row = await s.store.call(briefing.sid)
        briefing_turns = await s.store.turns(briefing.sid)

    assert result.error is None and result.violations == []
    heard = " ".join(t.heard for t in result.turns)
    assert "check whether manager can take your call" in heard
    assert row["end_reason"] == "transferred" and row["transferred_to"] == MANAGER
    # the manager heard the matter first, then pressed 1
    assert briefing_turns[0].role == "assistant" and "caller on the line for manager" in (
        briefing_turns[0].text_heard or ""
    )
    assert any(t.role == "user" and t.text_generated == "[DTMF 1]" for t in briefing_turns)
    assert briefing_row is not None and briefing_row["end_reason"] == "transferred"
    # both legs met in the conference, and the caller heard the manager there
    [(room, in_room)] = result.talked_to
    assert room.startswith("conference:warm-") and "this is the manager" in in_room
    conference = board.conferences[room.removeprefix("conference:")]
    assert {p.call_sid for p in conference.participants} == {result.call_sid, briefing.sid}
    assert briefing.result is not None and briefing.result.talked_to and briefing.result.talked_to[0][0] == room


async def test_a_warm_transfer_declined_is_told_and_the_call_goes_on(tmp_path: Path) -> None:
    board = Switchboard()
    async with outbound_stack(tmp_path, {MANAGER: manager("2")}, switchboard=board) as s:
        await s.tools.add_target("default", "default", TransferTarget("manager", MANAGER, "warm"))
        result, row, turns = await call(s, asks_for("manager", stay_ms=9000), board)
        [briefing] = [c for c in s.sim.calls.values() if c.to == MANAGER]
        briefing_row = await s.store.call(briefing.sid)

    assert result.error is None and result.violations == []
    assert briefing_row is not None and briefing_row["end_reason"] == "transfer_declined"
    assert "manager cannot take the call right now" in " ".join(t.text_heard or "" for t in turns)
    assert result.talked_to == [] and result.dialed == []
    assert row["end_reason"] == "stop" and row["transferred_to"] == ""  # the caller hung up, later


async def test_the_api_transfers_a_live_call_of_the_keys_tenant_only(tmp_path: Path) -> None:
    board = Switchboard(people={FRONT: Reachable(FRONT_GREETING, talk_s=1.0)})
    async with outbound_stack(tmp_path, {}, switchboard=board, api_token="op-token-1") as s:
        script = CallerScript(
            utterances=("Hello there.",), lead_in_ms=200, answer_timeout_ms=6000, wait_for_hangup=True
        )
        caller = TwilioCaller(
            f"{s.url}/twilio/voice",
            script,
            auth_token=TOKEN,
            account_sid=ACCOUNT,
            to_number=CALLER_ID,
            switchboard=board,
        )
        running = asyncio.create_task(caller.run())
        await eventually(lambda: bool(caller.result.turns and caller.result.turns[0].heard), what="the first answer")
        url = f"{s.url}/v1/calls/{caller.call_sid}/transfer"
        status, body = await http_post(url, b'{"to": "conference:spy"}', {"Authorization": "Bearer op-token-1"})
        assert status == 400  # a conference is no target the API takes
        status, body = await http_post(url, orjson.dumps({"to": FRONT}), {"Authorization": "Bearer op-token-1"})
        assert status == 202 and orjson.loads(body)["transferring"], body
        result = await running
        await settle(s)
        row = await s.store.call(result.call_sid)

    assert "Please hold while I put you through" in audio.transcribe(result.heard)
    assert result.dialed == [FRONT]
    assert row is not None and row["end_reason"] == "transferred" and row["transferred_to"] == FRONT


async def test_a_warm_transfer_twilio_will_not_place_is_told_too(tmp_path: Path) -> None:
    board = Switchboard()
    async with outbound_stack(tmp_path, {MANAGER: manager("1")}, switchboard=board) as s:
        await s.tools.add_target("default", "default", TransferTarget("manager", MANAGER, "warm"))
        s.sim.fail_next_creates(1, status=400, code=21215)  # geo permissions: refused for good
        result, row, turns = await call(s, asks_for("manager", stay_ms=6000), board)

    assert result.error is None and result.violations == [] and s.sim.calls == {}
    assert "manager cannot take the call right now" in " ".join(t.text_heard or "" for t in turns)
    assert row["end_reason"] == "stop" and result.talked_to == []
