"""After-hours escalations: the asyncio shell around ``relay.outbound.race``.

An agent that judges a caller's matter urgent outside business hours calls ``escalate``;
``Escalations.escalate`` stores a race and fires its first legs at the same moment: a call (a
job ahead of any campaign's, whose agent reads the summary and asks for a 1) and a text
(reply YES). Either acknowledgement — a 1 on the race's call (``key``), a YES to the text
(``sms``) — settles it through the store, which lets only the first win; the actions that
follow (the other leg hung up, a "handled" text, a word to the caller who escalated) run on the
relay that settled it. Any relay's loop moves a race whose contact's time is up to the next
contact, so the race goes on if the relay that began it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.agents import AgentProfile
from relay.outbound import jobs, race
from relay.outbound.jobs import CallSpec, Job
from relay.outbound.race import Action, Contact, Race
from relay.outbound.races import RaceStore
from relay.routing import NOTE, TRANSFER, CallRequest, OwnerSilent

if TYPE_CHECKING:
    from relay.outbound.service import Outbound
    from relay.session import CallSession

log = logging.getLogger("relay.outbound.escalation")

# Races whose contact's time is up are looked for at the earliest deadline of those running, and at
# least this often (a race another relay started); a race started here wakes the loop at once.
POLL_S = 2.0
RACE_PRIORITY = 100  # a race's call is placed before any campaign's
ACCEPTED_LINE = "Thank you, it is yours. Goodbye."


class Escalations:
    def __init__(self, outbound: Outbound, races: RaceStore, *, clock: Callable[[], float] = time.time) -> None:
        self.outbound = outbound
        self.races = races
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="race-deadlines")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)

    def in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _run(self) -> None:
        while True:
            wait = POLL_S
            try:
                deadline = await self.races.next_deadline()
                if deadline is not None and deadline <= self._clock():
                    for race_id in await self.races.due(self._clock()):
                        await self._step(race_id, lambda r: race.expire(r, self._clock()))
                    deadline = await self.races.next_deadline()
                if deadline is not None:
                    wait = min(POLL_S, max(0.01, deadline - self._clock()))
            except Exception as exc:  # noqa: BLE001 - the store is away: deadlines are looked at again
                log.warning("race deadlines unavailable (%s)", type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    # ------------------------------------------------------------------ the call that escalates

    async def available(self, tenant_id: str) -> bool:
        """Whether the agent may escalate now: someone is on call and the tenant is closed."""
        settings = await self.outbound.jobs.tenant_settings(tenant_id)
        if settings is None or not settings.on_call:
            return False
        return settings.business is None or not settings.business.open(self._clock())

    async def escalate(self, tenant_id: str, agent_id: str, call_sid: str, summary: str) -> None:
        """Start a race for the caller's matter."""
        settings = await self.outbound.jobs.tenant_settings(tenant_id)
        if settings is None or not settings.on_call:
            log.warning("call %s: escalated, but tenant %s has no one on call", call_sid, tenant_id)
            return
        now = self._clock()
        started, actions = race.new_race(
            jobs.new_id("race_"), tenant_id, call_sid, summary, settings.on_call, settings.race_timeout_s, now
        )
        started = dataclasses.replace(started, agent_id=agent_id)
        await self.races.create(started)
        self._wake.set()  # its deadline is the loop's to watch
        log.info("call %s: race %s reaches %s by call and text", call_sid, started.race_id, started.contacts[0].name)
        await self._act(started, actions)

    # ------------------------------------------------------------------ acknowledgements

    async def key(self, job: Job, digit: str, session: CallSession) -> None:
        """A key pressed on a race's call: a 1 takes it."""
        if digit != "1" or not job.race_id:
            return
        won = await self._acknowledge(job.race_id, lambda r: _stage_of(r, race.CALL, job.job_id), race.CALL)
        if won:
            session.say_and_hang_up(ACCEPTED_LINE, "race_accepted")

    async def sms(self, tenant_id: str, from_: str, body: str) -> bool:
        """A text from a contact: YES takes the race they were texted about. True: it did."""
        if not race.is_yes(body):
            return False
        for open_race in await self.races.open_races(tenant_id):
            stages = [i for i, c in enumerate(open_race.contacts) if c.phone == from_ and open_race.leg(i, race.SMS)]
            if stages:
                return await self._acknowledge(open_race.race_id, functools.partial(_last, stages[-1]), race.SMS)
        return False

    async def _acknowledge(self, race_id: str, stage_of: Callable[[Race], int | None], kind: str) -> bool:
        now = self._clock()
        won = False

        def step(r: Race) -> tuple[Race, list[Action]]:
            nonlocal won
            stage = stage_of(r)
            if stage is None:
                return r, []
            after, actions = race.acknowledge(r, stage, kind, now)
            won = after.winner is not None and not r.settled
            return after, actions

        await self._step(race_id, step)
        return won

    # ------------------------------------------------------------------ doing what a step asks

    async def _step(self, race_id: str, step: Callable[[Race], tuple[Race, list[Action]]]) -> None:
        result = await self.races.step(race_id, step)
        if result is not None:
            await self._act(*result)

    async def _act(self, current: Race, actions: list[Action]) -> None:
        for action in actions:
            try:
                await self._do(current, action)
            except Exception as exc:  # noqa: BLE001 - one leg failing never stops the other
                log.warning("race %s: %s failed (%s)", current.race_id, type(action).__name__, type(exc).__name__)

    async def _do(self, current: Race, action: Action) -> None:
        outbound = self.outbound
        if isinstance(action, race.PlaceCall):
            (job,) = await outbound.jobs.enqueue(
                current.tenant_id,
                current.agent_id,
                [CallSpec(action.contact.phone, key=f"{current.race_id}:{action.stage}")],
                priority=RACE_PRIORITY,
                race_id=current.race_id,
            )
            await self.races.step(
                current.race_id, lambda r: (race.with_ref(r, action.stage, race.CALL, job.job_id), [])
            )
        elif isinstance(action, race.SendSms):
            sid = await outbound.text(current.tenant_id, action.contact.phone, action.body)
            leg = current.leg(action.stage, race.SMS)
            if leg is not None and not leg.ref:  # the leg's own text (not a "handled" one after it)
                await self.races.step(current.race_id, lambda r: (race.with_ref(r, action.stage, race.SMS, sid), []))
        elif isinstance(action, race.HangUp):
            await outbound.cancel_job(action.leg.ref)
        else:
            await self._tell_caller(action.race, action.contact)

    async def _tell_caller(self, settled: Race, contact: Contact | None) -> None:
        """The caller who escalated, if still on the line, hears what happened: connected to the
        contact who took it, or told no one could be reached."""
        log.info("race %s: %s", settled.race_id, settled.outcome)
        if contact is not None:
            line = f"{contact.name}, who is on call, has taken it. I am connecting you now."
            request = CallRequest(TRANSFER, settled.call_sid, {"to": contact.phone, "name": contact.name, "line": line})
        else:
            text = "No one on call could be reached yet; the matter will be handled first thing when the office opens."
            request = CallRequest(NOTE, settled.call_sid, {"text": text})
        with contextlib.suppress(OwnerSilent):  # its relay is away: the caller is not told, the race stands
            await self.outbound.relay.about_call(request)

    # ------------------------------------------------------------------ the race's own call

    async def brief(self, job: Job, agent: AgentProfile) -> AgentProfile:
        """The agent of a race's call: it reads the summary as it greets, asks for a 1."""
        current = await self.races.get(job.tenant_id, job.race_id)
        stage = _stage_of(current, race.CALL, job.job_id) if current is not None else None
        if current is None or stage is None:
            return agent
        contact = current.contacts[stage]
        return dataclasses.replace(
            agent,
            greeting=race.call_greeting(contact, current.summary),
            instructions=f"You called {contact.name}, who is on call, about an urgent matter a caller raised after "
            f"hours: {current.summary} Ask them to press 1 on their keypad to take it. Do not discuss anything else.",
            escalate_tool=False,
        )


def _last(stage: int, current: Race) -> int:
    return stage


def _stage_of(current: Race, kind: str, ref: str) -> int | None:
    return next((leg.stage for leg in current.legs if leg.kind == kind and leg.ref == ref), None)
