"""Redaction of what is stored: card numbers (Luhn-checked, written or spoken), digit runs spoken
as words, e-mail addresses and a tenant's patterns become placeholders in the stored turns and
never reach a log, while the model hears the caller as they spoke."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import InputError
from relay.redaction import Redaction, luhn
from relay.sim.caller import CallerScript, TwilioCaller
from relay.store import CallEnd, TurnRecord
from tests.test_outbound_calls import ACCOUNT, CALLER_ID, TOKEN, outbound_stack

CARD = "4111 1111 1111 1111"  # a test card number: passes the Luhn check
EMAIL = "ann.lee@example.com"


@pytest.mark.parametrize(
    ("said", "stored"),
    [
        (f"My card is {CARD}.", "My card is [card]."),
        ("It is 4111-1111-1111-1111 thanks", "It is [card] thanks"),
        ("it is 4111111111111112", "it is 4111111111111112"),  # fails the Luhn check: not a card
        ("four one one one one one one one one one one one one one one one", "[card]"),
        ("my number is five five five, one two three, four", "my number is [number]"),
        (f"write to {EMAIL} please", "write to [email] please"),
        ("ann dot lee at example dot com", "[email]"),
        ("I have two kids and one dog, room 12 at 7", "I have two kids and one dog, room 12 at 7"),
        ("order ORD-12345 is late", "order [order] is late"),
        ("[DTMF 1234#]", "[DTMF *****]"),
    ],
)
def test_what_is_stored_in_place_of_what_was_said(said: str, stored: str) -> None:
    assert Redaction((("order", r"ORD-\d+"),), mask_dtmf=True).text(said) == stored


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_redacting_twice_changes_nothing_more(text: str) -> None:
    once = Redaction().text(text)
    assert Redaction().text(once) == once


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713") and not luhn("4111111111111112")


def test_a_number_said_across_fragments_leaves_no_pieces() -> None:
    fragments = orjson.dumps(
        [["card four one one one one one one one", 0, 900], ["one one one one one one one one", 900, 1800]]
    )
    record = TurnRecord("CA1", 1, "user", 0.0, text_generated="x", fragments=fragments.decode())
    stored = Redaction().record(record)
    assert isinstance(stored, TurnRecord) and stored.fragments is not None
    assert orjson.loads(stored.fragments) == [["", 0, 900], ["", 900, 1800]]
    end = CallEnd("CA1", 1.0, "stop")
    assert Redaction().record(end) is end


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InputError, match="not a regular expression"):
        Redaction.from_json('{"patterns": {"x": "("}}')
    with pytest.raises(InputError, match="pattern name"):
        Redaction.from_json('{"patterns": {"Bad Name": "x"}}')
    with pytest.raises(InputError):
        Redaction.from_json("[]")
    assert Redaction.from_json(Redaction((("order", "ORD"),), True).to_json()) == Redaction((("order", "ORD"),), True)


async def test_a_card_and_an_email_read_out_are_heard_by_the_agent_and_stored_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    line = f"My card is {CARD} and my email is {EMAIL}"
    script = CallerScript(utterances=(line,), lead_in_ms=200, answer_quiet_ms=600)
    async with outbound_stack(tmp_path, {}, redact=True) as s:
        caller = TwilioCaller(
            f"{s.url}/twilio/voice", script, auth_token=TOKEN, account_sid=ACCOUNT, to_number=CALLER_ID
        )
        result = await caller.run()
        await s.store.flush()
        turns = await s.store.turns(result.call_sid)

    # the agent heard the caller as they spoke (it says the first words back)
    assert "4111 1111 1111 1111" in result.turns[0].heard
    user, agent = turns[0], turns[1]
    assert user.text_generated == user.text_heard == "My card is [card] and my email is [email]"
    assert agent.text_generated is not None and "[card]" in agent.text_generated and "4111" not in agent.text_generated
    stored = orjson.dumps([t.__dict__ if hasattr(t, "__dict__") else repr(t) for t in turns]).decode()
    assert "4111" not in stored and EMAIL not in stored
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "4111" not in logged and EMAIL not in logged
