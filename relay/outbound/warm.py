"""Warm transfers: the person is briefed first, then the caller joins them.

The agent on a call calls ``transfer_call`` for a warm target. ``WarmTransfers.begin`` queues a
call to the person (a job ahead of any campaign's, its variables naming the call it is for)
and the model is told to keep the caller company meanwhile. On that call the agent greets the
person with the caller's matter and asks for a 1 (take it) or a 2 (decline) (``brief``).

* A 1 ends both streams into one Twilio conference room: the caller's first (its relay found
  through the peers, and the call checked to be the same tenant's), then the person's. Each
  stream ends ``transferred`` and its after-stream hook answers ``<Dial><Conference>``; the room
  ends when either leaves.
* Any other end of the person's call — a 2, a hang-up, an answering machine, no answer, a busy
  line, a number Twilio will not call — has the caller's agent tell the caller, and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from typing import TYPE_CHECKING, Any

from relay import twilio
from relay.agents import AgentProfile
from relay.conversation import TRANSFERRED
from relay.outbound.jobs import RESERVED_PREFIX, CallSpec, Job
from relay.routing import NOTE, TRANSFER, CallRequest, OwnerSilent
from relay.tools.spec import TransferTarget

if TYPE_CHECKING:
    from relay.outbound.service import Outbound
    from relay.session import CallSession

log = logging.getLogger("relay.outbound.warm")

PRIORITY = 100  # placed before any campaign's call: a caller is waiting
# The variables of a briefing call: the call it is for, who is being asked, and the matter.
# (Reserved: no call queued through the API or the CLI may set them.)
FOR_CALL, LABEL, SUMMARY = (
    f"{RESERVED_PREFIX}{name}" for name in ("transfer_of", "transfer_label", "transfer_summary")
)
DECLINED = "transfer_declined"  # how a briefing call ends that the person declined
CALLER_GONE = "transfer_caller_gone"  # the caller left before the person took the call
# What Twilio's final status says about a briefing call that never reached the person.
UNREACHED = frozenset({"no-answer", "busy", "failed", "canceled"})


async def _logged(work: Any) -> None:
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - the store or the peers away: this step is lost, the calls go on
        log.warning("a warm transfer step failed (%s)", type(exc).__name__)


def is_briefing(job: Job) -> bool:
    return bool(job.variables.get(FOR_CALL))


def room(job: Job) -> str:
    """The conference the caller and the person meet in: one per briefing call."""
    return f"{twilio.CONFERENCE}warm-{job.job_id.removeprefix('job_')}"


class WarmTransfers:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound
        self._work: set[asyncio.Future[None]] = set()

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(_logged(work))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def close(self) -> None:
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)

    def begin(self, session: CallSession, target: TransferTarget, summary: str) -> dict[str, Any]:
        """The agent asked for a warm transfer: the person's call is queued now; what the model says meanwhile."""
        variables = {FOR_CALL: session.call_sid, LABEL: target.label, SUMMARY: summary or "no summary given"}
        spec = CallSpec(target.target, variables, key=f"warm:{session.call_sid}:{secrets.token_hex(4)}")
        self._in_background(self._queue(session.tenant_id, session.agent_id, spec))
        log.info("call %s: asking %s to take the call", session.call_sid, target.label)
        return {
            "ok": True,
            "say": f"Let me check whether {target.label} can take your call. Please stay on the line.",
        }

    async def _queue(self, tenant_id: str, agent_id: str, spec: CallSpec) -> None:
        try:
            await self.outbound.jobs.enqueue(tenant_id, agent_id, [spec], priority=PRIORITY)
        except Exception as exc:  # noqa: BLE001 - the store is away: the caller is told
            log.warning(
                "call %s: the transfer call could not be queued (%s)", spec.variables[FOR_CALL], type(exc).__name__
            )
            await self._tell_caller(tenant_id, spec.variables[FOR_CALL], spec.variables[LABEL])

    # ------------------------------------------------------------------ the briefing call

    @staticmethod
    def brief(job: Job, agent: AgentProfile) -> AgentProfile:
        """The agent of a briefing call: it tells the person the matter as it greets, asks for 1 or 2."""
        label, summary = job.variables[LABEL], job.variables[SUMMARY]
        return dataclasses.replace(
            agent,
            greeting=f"Hello, I have a caller on the line for {label}. {summary} "
            "Press 1 to take the call now, or 2 if you cannot.",
            instructions=f"You called {label} to ask whether they can take a caller now. The matter: {summary} "
            "Ask them to press 1 to take the call or 2 to decline. Do not discuss anything else.",
            escalate_tool=False,
            end_call_tool=False,
            tools=(),
            transfer_targets=(),
            voicemail_message="",
        )

    async def key(self, job: Job, digit: str, session: CallSession) -> None:
        """A key on the briefing call: 1 bridges the caller in, 2 declines."""
        if digit == "2":
            session.say_and_hang_up("Understood, I will let them know. Goodbye.", DECLINED)
        elif digit == "1":
            await self._bridge(job, session)

    async def _bridge(self, job: Job, session: CallSession) -> None:
        caller_sid, label, meeting = job.variables[FOR_CALL], job.variables[LABEL], room(job)
        relay = self.outbound.relay
        owner = await relay.locate(caller_sid)
        answer = None
        if owner is not None and owner.tenant_id == job.tenant_id:
            line = f"{label} is taking your call now. Connecting you."
            with contextlib.suppress(OwnerSilent):
                answer = await relay.about_call(
                    CallRequest(
                        TRANSFER, caller_sid, {"to": meeting, "name": label, "record": job.to_number, "line": line}
                    )
                )
        if not answer or not answer.get("transferring"):
            log.info("job %s: the caller left before %s took the call", job.job_id, label)
            session.say_and_hang_up("I am sorry, the caller has already left. Goodbye.", CALLER_GONE)
            return
        log.info("call %s: %s takes it; both join %s", caller_sid, label, meeting)
        await relay.about_call(
            CallRequest(
                TRANSFER, session.call_sid, {"to": meeting, "name": "the caller", "line": "Connecting you now."}
            )
        )

    # ------------------------------------------------------------------ when the person is not reached

    def ended(self, job: Job, reason: str) -> None:
        """The briefing call's stream ended: any end but the bridge leaves the caller with the agent."""
        if reason != TRANSFERRED:
            self._in_background(self._tell_caller(job.tenant_id, job.variables[FOR_CALL], job.variables[LABEL]))

    def unplaced(self, job: Job) -> None:
        """The briefing call could not be placed at all (a number Twilio refuses, say)."""
        self._in_background(self._tell_caller(job.tenant_id, job.variables[FOR_CALL], job.variables[LABEL]))

    def finished(self, job: Job) -> None:
        """The briefing call is over at Twilio: one that never reached the person tells the caller."""
        if job.outcome in UNREACHED:
            self._in_background(self._tell_caller(job.tenant_id, job.variables[FOR_CALL], job.variables[LABEL]))

    async def _tell_caller(self, tenant_id: str, caller_sid: str, label: str) -> None:
        relay = self.outbound.relay
        owner = await relay.locate(caller_sid)
        if owner is None or owner.tenant_id != tenant_id:
            return  # the caller has gone: no one to tell
        text = f"{label} cannot take the call right now. Tell the caller, and offer to help or take a message."
        with contextlib.suppress(OwnerSilent):
            await relay.about_call(CallRequest(NOTE, caller_sid, {"text": text}))
