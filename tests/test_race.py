"""The after-hours race, sans-I/O on a fake clock: both legs at once, exactly one winner, the
other leg cancelled, the next contact at the timeout; and when a tenant is open."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import InputError
from relay.outbound import race
from relay.outbound.race import CALL, SMS, BusinessHours, Contact, HangUp, PlaceCall, SendSms, Settled
from relay.outbound.races import race_from_json, race_to_json

DANA, LEE = Contact("Dana", "+15550001111"), Contact("Lee", "+15550002222")
SUMMARY = "The basement at 12 Elm St is flooding; call Ann at +15550009999."


def started(now: float = 1000.0) -> race.Race:
    r, actions = race.new_race("race_1", "acme", "CA" + "1" * 32, SUMMARY, [DANA, LEE], 120.0, now)
    assert actions == [PlaceCall(0, DANA), SendSms(0, DANA, race.sms_body(SUMMARY))]
    r = race.with_ref(r, 0, CALL, "job_a")
    return race.with_ref(r, 0, SMS, "SM_a")


def test_the_contact_answers_the_call_first() -> None:
    r, actions = race.acknowledge(started(), 0, CALL, 1030.0)
    assert r.outcome == race.ACKNOWLEDGED and r.winner is not None and (r.winner.stage, r.winner.kind) == (0, CALL)
    # The other leg is cancelled: a text saying it is handled.
    assert actions == [SendSms(0, DANA, race.handled_body("Dana")), Settled(r, DANA)]
    assert r.leg(0, SMS) is not None and r.leg(0, SMS).cancelled_at == 1030.0  # type: ignore[union-attr]
    # A YES that comes after changes nothing.
    again, more = race.acknowledge(r, 0, SMS, 1031.0)
    assert (again, more) == (r, [])


def test_the_contact_replies_yes_first() -> None:
    r, actions = race.acknowledge(started(), 0, SMS, 1010.0)
    assert r.winner is not None and r.winner.kind == SMS
    call_leg = r.leg(0, CALL)
    assert call_leg is not None and call_leg.cancelled_at == 1010.0
    assert actions == [HangUp(race.Leg(0, CALL, "job_a", 1000.0)), Settled(r, DANA)]
    assert race.acknowledge(r, 0, CALL, 1011.0) == (r, [])


def test_no_answer_moves_to_the_next_contact_at_the_timeout_then_gives_up() -> None:
    r = started()
    assert race.expire(r, 1119.9) == (r, [])
    r, actions = race.expire(r, 1120.0)
    assert actions == [
        HangUp(race.Leg(0, CALL, "job_a", 1000.0)),
        PlaceCall(1, LEE),
        SendSms(1, LEE, race.sms_body(SUMMARY)),
    ]
    assert (r.stage, r.deadline_at, r.outcome) == (1, 1240.0, "")
    r, actions = race.expire(r, 1240.0)
    assert r.outcome == race.UNACKNOWLEDGED and r.winner is None and r.ended_at == 1240.0
    assert actions == [HangUp(race.Leg(1, CALL, "", 1120.0)), Settled(r)]
    assert [(leg.stage, leg.kind) for leg in r.legs] == [(0, CALL), (0, SMS), (1, CALL), (1, SMS)]


def test_a_late_yes_from_the_first_contact_still_takes_it() -> None:
    r, _ = race.expire(started(), 1120.0)
    r, actions = race.acknowledge(r, 0, SMS, 1130.0)
    assert r.winner is not None and (r.winner.stage, r.winner.kind) == (0, SMS)
    # Lee's call is hung up and Lee told it is handled.
    assert actions == [
        HangUp(race.Leg(1, CALL, "", 1120.0)),
        SendSms(1, LEE, race.handled_body("Dana")),
        Settled(r, DANA),
    ]


@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from([CALL, SMS]), st.floats(0, 300)), max_size=8))
def test_exactly_one_winner_whatever_arrives(events: list[tuple[int, str, float]]) -> None:
    r = started(0.0)
    winners = 0
    for stage, kind, at in sorted(events, key=lambda e: e[2]):
        r, _ = race.expire(r, at)
        before = r.settled
        r, actions = race.acknowledge(r, stage, kind, at)
        winners += int(not before and r.settled)
        assert not before or actions == []
    assert winners <= 1
    assert race_from_json(race_to_json(r)) == r


def test_no_one_on_call_settles_at_once() -> None:
    r, actions = race.new_race("race_2", "acme", "CA" + "2" * 32, SUMMARY, [], 120.0, 5.0)
    assert r.outcome == race.UNACKNOWLEDGED and actions == [
        Settled(race.Race("race_2", "acme", "CA" + "2" * 32, SUMMARY, (), 120.0, 5.0))
    ]


def test_business_hours() -> None:
    hours = BusinessHours.parse("America/New_York", "mon-fri 09:00-17:00, sat 10:00-14:00")
    zone = ZoneInfo("America/New_York")

    def at(day: int, hour: int, minute: int = 0) -> float:  # December 2026: the 7th is a Monday
        return datetime.datetime(2026, 12, day, hour, minute, tzinfo=zone).timestamp()

    assert hours.open(at(7, 9)) and hours.open(at(11, 16, 59)) and hours.open(at(12, 10))
    assert not hours.open(at(7, 8, 59)) and not hours.open(at(7, 17)) and not hours.open(at(12, 14))
    assert not hours.open(at(13, 12))  # Sunday
    assert BusinessHours.parse("UTC", "fri-mon 00:00-24:00").open(
        datetime.datetime(2026, 12, 6, 23, 59, tzinfo=datetime.UTC).timestamp()
    )
    for text in ("weekdays 9-5", "mon 17:00-09:00", "mon-fri 09:00-25:00", ""):
        with pytest.raises(InputError):
            BusinessHours.parse("UTC", text)


def test_on_call_lists() -> None:
    assert race.parse_contacts("Dana=+15550001111, Lee Park=+15550002222") == (
        DANA,
        Contact("Lee Park", "+15550002222"),
    )
    assert race.parse_contacts("") == ()
    for text in ("Dana", "=+15550001111", "Dana=5550001111"):
        with pytest.raises(InputError):
            race.parse_contacts(text)
    assert race.is_yes(" Yes ") and race.is_yes("y") and not race.is_yes("yes please call later")
