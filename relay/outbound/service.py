"""Outbound calls as the relay serves them: placing what is queued, the answer Twilio fetches when
a placed call is picked up, what Twilio reports about each (status, answering machine), a text
to a tenant's number, and what a call's agent needs of all this (its brief, ``escalate``, keys).

``Outbound`` holds the tenants' side (``relay.outbound.tenant.OutboundJobs``: settings, queue,
keys), the REST client, the worker pool and the after-hours races. The relay (``relay.server``)
routes requests here and lends what calls share: who signed a request, the stream TwiML, and
requests to the relay holding a call.

A placed call's ``Url`` is ``/twilio/outbound?job=…``: Twilio requests it, signed, when the
callee answers, and the answer connects the call's media stream with a token for that call
(the CallSid is known by then, so there is no race with ``calls.create``'s answer: BACKENDS
§6.10). The status and AMD callbacks carry the job too, so they find it even when they arrive
before the create's answer was recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from relay import twilio
from relay.agents import AgentProfile
from relay.errors import InputError
from relay.outbound import jobs
from relay.outbound.jobs import Job
from relay.outbound.pool import Limits, OutboundPool
from relay.outbound.rest import Account, TwilioRest
from relay.outbound.tenant import OutboundJobs
from relay.outbound.warm import WarmTransfers, is_briefing
from relay.routing import VOICEMAIL, CallRequest, Owner, OwnerSilent
from relay.tools.spec import TransferTarget
from relay.trust import Credential

if TYPE_CHECKING:
    from relay.outbound.escalation import Escalations
    from relay.session import CallSession

log = logging.getLogger("relay.outbound")

OUTBOUND_PATH = "/twilio/outbound"  # the placed call's Url: fetched when the callee answers
AMD_PATH = "/twilio/amd"  # the async answering-machine verdict
SMS_PATH = "/twilio/sms"  # a text to one of the tenants' numbers
ESCALATED = {
    "ok": True,
    "say": "I am reaching the person on call now, by phone and text. They will call you back.",
}
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
DEFAULT_LIMITS = Limits()


class RelayLike(Protocol):
    """What ``Outbound`` borrows from the relay."""

    @property
    def credentials(self) -> tuple[Credential, ...]: ...

    def binding_problem(self, found: tuple[Credential, ...], tenant_id: str, account_sid: str) -> str | None: ...

    def stream_twiml(
        self,
        call_sid: str,
        account_sid: str,
        tenant: str,
        agent: str,
        from_: str,
        to: str,
        *,
        resume: bool = False,
        job: str = "",
    ) -> str: ...

    async def about_call(self, request: CallRequest) -> dict[str, Any] | None: ...

    async def locate(self, call_sid: str) -> Owner | None: ...


class Outbound:
    """Placing the queued calls and following them: the pool, Twilio's answer and callbacks."""

    def __init__(
        self,
        relay: RelayLike,
        jobs: OutboundJobs,
        rest: TwilioRest,
        *,
        public_url: str,
        instance: str,
        limits: Limits = DEFAULT_LIMITS,
        ring_s: int = 30,
        recheck_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.relay = relay
        self.jobs = jobs
        self.queue = jobs.queue
        self.rest = rest
        self.public_url = public_url.rstrip("/")
        self._ring_s = ring_s
        self._clock = clock
        self.pool = OutboundPool(
            jobs.queue,
            rest,
            instance=instance,
            account_for=self.account_for,
            call_params=self.call_params,
            hold=self.hold,
            on_failed=self._not_placed,
            limits=limits,
            clock=clock,
            sweep_s=min(30.0, recheck_s / 2),
            quiet_live_s=recheck_s,
        )
        jobs.on_queued = self.pool.kick
        # After-hours races (``relay.outbound.escalation``), when the store keeps them.
        self.escalations: Escalations | None = None
        if jobs.races is not None:
            from relay.outbound.escalation import Escalations

            self.escalations = Escalations(self, jobs.races, clock=clock)
        self.warm = WarmTransfers(self)
        self._work: set[asyncio.Future[None]] = set()  # keys and stream ends looked up in the queue

    def start(self) -> None:
        self.pool.start()
        if self.escalations is not None:
            self.escalations.start()

    async def close(self) -> None:
        if self.escalations is not None:
            await self.escalations.close()
        await self.warm.close()
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)
        await self.pool.close()
        await self.queue.close()

    async def _tenant_account(self, tenant_id: str) -> tuple[Account, str]:
        settings = await self.jobs.tenant_settings(tenant_id)
        account = self._account(settings.account_sid, tenant_id) if settings is not None else None
        if settings is None or account is None:
            raise InputError(f"relay holds no auth token for tenant {tenant_id!r}'s account")
        return account, settings.from_number

    async def text(self, tenant_id: str, to: str, body: str) -> str:
        """Send an SMS from the tenant's caller ID; its MessageSid."""
        account, from_number = await self._tenant_account(tenant_id)
        return await self.rest.send_sms(account, to=to, from_=from_number, body=body)

    async def cancel_job(self, job_id: str) -> None:
        """Call it off: a job not placed yet never is; a placed call is hung up, ringing or talking."""
        job = await self.queue.get(job_id)
        if job is None:
            return
        if job.state == jobs.QUEUED or (job.state == jobs.PLACING and not job.call_sid):
            await self.queue.fail(job.job_id, None, "called off", self._clock())
        if job.call_sid and job.state in (jobs.PLACING, jobs.LIVE):
            account = self.account_for(job)
            if account is not None:
                await self.rest.update_call(account, job.call_sid, status="completed")

    # ------------------------------------------------------------------ what a call's session asks

    async def prepare(self, start: twilio.Start, agent: AgentProfile) -> AgentProfile:
        """The agent a call runs with: briefed on a call it placed (its job's variables, or a race's
        summary), and given ``escalate`` when its tenant is closed and someone is on call."""
        params = start.custom_parameters
        tenant = params.get("tenant") or ""
        job = await self.queue.get(params["job"]) if params.get("job") else None
        if job is not None and job.tenant_id == tenant:
            if job.race_id and self.escalations is not None:
                return await self.escalations.brief(job, agent)
            if is_briefing(job):
                return self.warm.brief(job, agent)
            agent = dataclasses.replace(agent, instructions=f"{agent.instructions}\n\n{brief(job)}")
        if self.escalations is not None and await self.escalations.available(tenant):
            agent = dataclasses.replace(agent, escalate_tool=True)
        return agent

    def escalate(self, session: CallSession, summary: str) -> dict[str, Any]:
        """The agent escalated: the race starts now, the agent tells the caller what happens next."""
        if self.escalations is None:
            return {"error": "escalation is not available"}
        self.escalations.in_background(
            self.escalations.escalate(session.tenant_id, session.agent_id, session.call_sid, summary)
        )
        return ESCALATED

    def warm_transfer(self, session: CallSession, target: TransferTarget, summary: str) -> dict[str, Any]:
        """The agent asked for a warm transfer (``relay.outbound.warm``): what it says meanwhile."""
        return self.warm.begin(session, target, summary)

    def key(self, session: CallSession, digit: str) -> None:
        """A key pressed on a call relay placed (a race's call takes a 1; a briefing call, 1 or 2)."""
        job_id = session.start.custom_parameters.get("job", "") if session.start else ""
        if job_id:
            self._in_background(self._key(job_id, digit, session))

    async def _key(self, job_id: str, digit: str, session: CallSession) -> None:
        job = await self.queue.get(job_id)
        if job is not None and job.race_id and self.escalations is not None:
            await self.escalations.key(job, digit, session)
        elif job is not None and is_briefing(job):
            await self.warm.key(job, digit, session)

    def ended(self, session: CallSession, reason: str) -> None:
        """A call's stream ended here: a briefing call's end may leave its caller with the agent."""
        job_id = session.start.custom_parameters.get("job", "") if session.start else ""
        if job_id:
            self._in_background(self._ended(job_id, reason))

    async def _ended(self, job_id: str, reason: str) -> None:
        job = await self.queue.get(job_id)
        if job is not None and is_briefing(job):
            self.warm.ended(job, reason)

    def _not_placed(self, job: Job) -> None:
        """A job Twilio refused for good: a briefing call's caller hears that the person is not reached."""
        if is_briefing(job):
            self.warm.unplaced(job)

    def _in_background(self, work: Any) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception as exc:  # noqa: BLE001 - the store away: this key or end is lost, the call goes on
                log.warning("a placed call's key or end could not be handled (%s)", type(exc).__name__)

        task = asyncio.ensure_future(logged())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def sms(
        self, params: dict[str, str], found: tuple[Credential, ...], tenant_id: str
    ) -> tuple[HTTPStatus, str]:
        """A text to one of the tenant's numbers: a YES from someone on call takes their race."""
        account_sid, from_ = params.get("AccountSid", ""), params.get("From", "")
        problem = self.relay.binding_problem(found, tenant_id, account_sid)
        if problem is not None:
            log.warning("inbound SMS refused: %s", problem)
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        taken = False
        if self.escalations is not None:
            taken = await self.escalations.sms(tenant_id, from_, params.get("Body", "")[:1600])
        log.info("SMS to tenant %s%s", tenant_id, ": an on-call contact took a race" if taken else "")
        return HTTPStatus.OK, twilio.empty_twiml()

    # ------------------------------------------------------------------ placing

    def account_for(self, job: Job) -> Account | None:
        """The token of the job's account: the tenant's own, or the deployment's."""
        return self._account(job.account_sid, job.tenant_id)

    def _account(self, account_sid: str, tenant_id: str) -> Account | None:
        for credential in self.relay.credentials:
            if credential.account_sid == account_sid and credential.tenant_id in (None, tenant_id):
                return Account(account_sid, credential.token)
        return None

    def call_params(self, job: Job) -> dict[str, Any]:
        """``calls.create``'s parameters: answer at the outbound hook, every progress event, and
        async AMD that waits for the greeting's end (the beep) before it says "machine"."""
        query = urlencode({"job": job.job_id})
        return {
            "to": job.to_number,
            "from_": job.from_number,
            "url": f"{self.public_url}{OUTBOUND_PATH}?{query}",
            "method": "POST",
            "status_callback": f"{self.public_url}{twilio.STATUS_PATH}?{query}",
            "status_callback_event": STATUS_EVENTS,
            "status_callback_method": "POST",
            "timeout": self._ring_s,
            "machine_detection": "DetectMessageEnd",
            "async_amd": "true",
            "async_amd_status_callback": f"{self.public_url}{AMD_PATH}?{query}",
            "async_amd_status_callback_method": "POST",
        }

    async def hold(self, job: Job) -> float | None:
        """A campaign's call waits out its tenant's quiet hours; a single call asked for now does not."""
        if not job.campaign_id:
            return None
        settings = await self.jobs.tenant_settings(job.tenant_id)
        if settings is None or settings.quiet is None:
            return None
        until = settings.quiet.until(self._clock())
        if until is not None:
            log.info("job %s: quiet hours (%s) for tenant %s; waits", job.job_id, settings.quiet, job.tenant_id)
        return until

    # ------------------------------------------------------------------ Twilio's requests

    async def _job_for(
        self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...], what: str
    ) -> Job | None:
        """The job a callback is about, once its signer may act for it (None: refuse it)."""
        job = await self.queue.get(query.get("job", ""))
        account_sid = params.get("AccountSid", "")
        if job is None or account_sid != job.account_sid:
            log.warning("%s refused: no job %s on account %s", what, query.get("job", "")[:40], account_sid[:34])
            return None
        problem = self.relay.binding_problem(found, job.tenant_id, account_sid)
        if problem is not None:
            log.warning("%s refused for job %s: %s", what, job.job_id, problem)
            return None
        return job

    async def answer(
        self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]
    ) -> tuple[HTTPStatus, str]:
        """The TwiML for a placed call the callee picked up: its media stream, like an inbound call's."""
        call_sid = params.get("CallSid", "")
        if not twilio.CALL_SID.fullmatch(call_sid):
            return HTTPStatus.BAD_REQUEST, "CallSid must be a Twilio call sid\n"
        job = await self._job_for(query, params, found, "outbound answer")
        if job is None:
            return HTTPStatus.FORBIDDEN, "forbidden\n"
        if job.state not in (jobs.PLACING, jobs.LIVE) or (job.call_sid and job.call_sid != call_sid):
            log.warning("outbound answer for job %s (%s, call %s): not its live call", job.job_id, job.state, call_sid)
            return HTTPStatus.OK, twilio.hangup_twiml()
        log.info("job %s: call %s answered; connecting its stream", job.job_id, call_sid)
        return HTTPStatus.OK, self.relay.stream_twiml(
            call_sid,
            job.account_sid,
            job.tenant_id,
            job.agent_id,
            params.get("From", job.from_number),
            params.get("To", job.to_number),
            job=job.job_id,
        )

    async def status(self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]) -> bool:
        """A placed call's status callback: recorded on its job. False: refused."""
        job = await self._job_for(query, params, found, "status callback")
        if job is None:
            return False
        seq_text, duration = params.get("SequenceNumber", ""), params.get("CallDuration", "")
        status = params.get("CallStatus", "")[:20]
        updated = await self.queue.call_status(
            job.job_id,
            params.get("CallSid", "")[:34],
            int(seq_text) if seq_text.isdigit() and len(seq_text) < 9 else len(job.statuses),
            status,
            self._clock(),
            int(duration) if duration.isdigit() and len(duration) < 9 else None,
        )
        if updated is not None and updated.state == jobs.DONE and job.state != jobs.DONE:
            log.info("job %s: call %s ended %s", job.job_id, updated.call_sid, updated.outcome)
            self.pool.kick()  # a slot is free
            if is_briefing(updated):
                self.warm.finished(updated)
        return True

    async def amd(self, query: dict[str, str], params: dict[str, str], found: tuple[Credential, ...]) -> bool:
        """The answering-machine verdict: a machine whose greeting is over gets the agent's
        voicemail message (or a hang-up). False: refused."""
        job = await self._job_for(query, params, found, "AMD callback")
        if job is None:
            return False
        verdict = params.get("AnsweredBy", "")[:40]
        call_sid = params.get("CallSid", "")
        log.info("job %s: call %s answered by %s", job.job_id, call_sid, verdict)
        await self.queue.answered(job.job_id, call_sid, verdict, self._clock())
        if verdict in jobs.MESSAGE_END_VERDICTS or verdict == "fax":
            await self._machine(job, call_sid)
        return True

    async def _machine(self, job: Job, call_sid: str) -> None:
        try:
            answer = await self.relay.about_call(CallRequest(VOICEMAIL, call_sid))
        except OwnerSilent as exc:
            log.warning("job %s: %s", job.job_id, exc)
            answer = None
        what = str(answer.get("voicemail", "")) if answer else ""
        if not what:
            # No stream holds the call (it has not started, or its relay is gone): hang up.
            account = self.account_for(job)
            if account is not None:
                try:
                    await self.rest.update_call(account, call_sid, status="completed")
                except Exception as exc:  # noqa: BLE001 - it ends on its own at the machine's limit
                    log.warning("job %s: could not hang up on the machine (%s)", job.job_id, type(exc).__name__)
            what = "hung_up"
        await self.queue.note_voicemail(job.job_id, what, self._clock())


def brief(job: Job) -> str:
    """What the agent is told about a call it placed: to whom, and the job's variables."""
    lines = [f"You placed this phone call to {job.to_number}; the person who answers speaks first."]
    if job.variables:
        lines.append("What you know for this call:")
        lines += [f"- {name}: {value}" for name, value in job.variables.items()]
    return "\n".join(lines)
