"""A reasoning model's preamble (BACKENDS §5.4): one response, two spoken items.

gpt-realtime-2.1 may say "Let me check…" as one message item and then answer in a second item
of the same response. Relay plays both in order, keeps each as its own assistant turn, and on
a barge-in truncates the item the caller was hearing, never plays what came after it in that
response, and stores for each item exactly what was heard: all of the preamble and a cut
answer, or a cut preamble and none of the answer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.sim import audio
from tests.test_call import BARGING, LONG_ANSWER, TALKATIVE, stack

PREAMBLE = "Let me check that for you."
THINKING = dataclasses.replace(TALKATIVE, preamble=PREAMBLE)
PREAMBLE_MS = len(audio.speak(PREAMBLE)) // 8
ANSWER_MS = len(audio.speak(LONG_ANSWER)) // 8


async def test_both_items_play_in_order_and_are_stored_as_turns(tmp_path: Path) -> None:
    calm = dataclasses.replace(BARGING, utterances=BARGING.utterances[:1], barge_in_ms=None)
    async with stack(tmp_path, THINKING) as s:
        result, turns = await s.call(calm)
    assert result.violations == [] and s.agent.violations == []
    answers = [t for t in turns if t.role == "assistant"]
    assert [a.text_heard for a in answers] == [PREAMBLE, LONG_ANSWER]
    assert not any(a.interrupted for a in answers)
    heard = audio.transcribe(result.heard).split()
    assert heard[: len(PREAMBLE.split()) + 3] == [*PREAMBLE.split(), *LONG_ANSWER.split()[:3]]


@pytest.mark.parametrize(
    "into_ms, where",
    [(PREAMBLE_MS // 2, "preamble"), (PREAMBLE_MS + ANSWER_MS * 2 // 5, "answer")],
)
async def test_a_barge_in_cuts_the_item_being_heard_and_nothing_after_it_plays(
    tmp_path: Path, into_ms: int, where: str
) -> None:
    caller = dataclasses.replace(BARGING, barge_in_ms=into_ms)
    async with stack(tmp_path, THINKING) as s:
        result, turns = await s.call(caller)
        [session] = s.agent.sessions

    assert result.violations == [] and s.agent.violations == [] and session.errors_sent == []
    assert result.clears == 1 and len(session.truncates) == 1  # every truncate accepted
    second_line = [t for t in turns if t.role == "user"][1]
    first = [t for t in turns if t.role == "assistant" and t.seq < second_line.seq]  # the first response's
    preamble = first[0]
    answer = first[1] if len(first) > 1 else None
    heard = audio.transcribe(result.heard).split()
    after = [*PREAMBLE.split(), "Booked", "for", "seven."]  # the next response, heard whole
    assert heard[-len(after) :] == after
    cut = len(heard) - len(after)
    if where == "preamble":
        assert preamble.interrupted and 0 < len(preamble.text_heard.split()) < len(PREAMBLE.split())
        assert session.truncates[0]["item_id"] == preamble.item_id
        assert answer is None or (answer.text_heard == "" and answer.interrupted)  # never heard
        assert heard[:cut] == PREAMBLE.split()[:cut]  # nothing of the answer reached the caller
        assert abs(len(preamble.text_heard.split()) - cut) <= 1
    else:
        assert not preamble.interrupted and preamble.text_heard == PREAMBLE
        assert answer is not None and answer.interrupted
        assert session.truncates[0]["item_id"] == answer.item_id
        said = answer.text_heard.split()
        assert 0 < len(said) < len(LONG_ANSWER.split())
        assert heard[:cut] == [*PREAMBLE.split(), *LONG_ANSWER.split()][:cut]
        assert abs(len(PREAMBLE.split()) + len(said) - cut) <= 1
