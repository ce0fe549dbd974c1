"""Outbound calls as the relay serves them: the API that queues them, the answer Twilio fetches
when one is picked up, and what Twilio reports about each (status, answering machine).

``Outbound`` holds the queue, the tenants' API keys, the REST client and the worker pool,
and knows each tenant's outbound settings (its account, caller ID and quiet hours). The relay
(``relay.server``) routes requests here and lends what calls share: who signed a request, the
stream TwiML, and requests to the relay holding a call.

A placed call's ``Url`` is ``/twilio/outbound?job=…``: Twilio requests it, signed, when the
callee answers, and the answer connects the call's media stream with a token for that call
(the CallSid is known by then, so there is no race with ``calls.create``'s answer: BACKENDS
§6.10). The status and AMD callbacks carry the job too, so they find it even when they arrive
before the create's answer was recorded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlencode

from relay import twilio
from relay.agents import DEFAULT_AGENT
from relay.apikeys import KeyStore, bearer
from relay.errors import InputError
from relay.outbound import jobs
from relay.outbound.jobs import CallSpec, Job, QuietHours
from relay.outbound.pool import Limits, OutboundPool
from relay.outbound.queue import JobQueue
from relay.outbound.rest import Account, TwilioRest
from relay.routing import VOICEMAIL, CallRequest, OwnerSilent
from relay.trust import Credential

log = logging.getLogger("relay.outbound")

OUTBOUND_PATH = "/twilio/outbound"  # the placed call's Url: fetched when the callee answers
AMD_PATH = "/twilio/amd"  # the async answering-machine verdict
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
MAX_JOBS_SHOWN = 10_000
DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class TenantOutbound:
    """What placing a tenant's calls needs: its account, its caller ID, its quiet hours."""

    account_sid: str
    from_number: str
    quiet: QuietHours | None = None


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


class OutboundJobs:
    """The jobs side, which needs no call: queueing for a tenant (API and CLI) and the tenant's
    reads, with its API keys."""

    def __init__(
        self,
        queue: JobQueue,
        keys: KeyStore,
        *,
        tenant_settings: Callable[[str], Awaitable[TenantOutbound | None]],
        agent_exists: Callable[[str, str], Awaitable[bool]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.keys = keys
        self.tenant_settings = tenant_settings
        self._agent_exists = agent_exists
        self._clock = clock
        self.on_queued: Callable[[], None] = lambda: None  # the pool looks at once

    async def enqueue(
        self, tenant_id: str, agent_id: str, specs: list[CallSpec], *, campaign_id: str = ""
    ) -> list[Job]:
        """Queue calls for the tenant's agent.

        Raises:
            InputError: no such agent, or the tenant cannot place calls (no account or caller ID).
        """
        if not await self._agent_exists(tenant_id, agent_id):
            raise InputError(f"tenant {tenant_id!r} has no agent {agent_id[:100]!r}")
        settings = await self.tenant_settings(tenant_id)
        if settings is None or not settings.account_sid or not settings.from_number:
            raise InputError(
                "this tenant cannot place calls: it needs a Twilio account with a token and a caller ID "
                "(relay tenants set-outbound, or TWILIO_ACCOUNT_SID and RELAY_OUTBOUND_FROM)"
            )
        queued = await self.queue.enqueue(
            tenant_id,
            agent_id,
            settings.account_sid,
            settings.from_number,
            specs,
            now=self._clock(),
            campaign_id=campaign_id,
        )
        self.on_queued()
        return queued

    async def campaign(self, tenant_id: str, agent_id: str, specs: list[CallSpec], key: str = "") -> dict[str, Any]:
        """Queue a campaign; the same ``key`` (a client's idempotency key, a file's content) is
        the same campaign, its calls queued once."""
        campaign_id = campaign_id_for(tenant_id, key) if key else jobs.new_id("cmp_")
        queued = await self.enqueue(tenant_id, agent_id, keyed(campaign_id, specs), campaign_id=campaign_id)
        return campaign_summary(campaign_id, queued)

    async def tenant_of(self, authorization: str | None) -> str | None:
        key = bearer(authorization)
        return await self.keys.tenant_of(key) if key else None

    async def api(self, tenant_id: str, method: str, path: str, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
        """``POST /v1/calls``, ``POST /v1/campaigns``, ``GET /v1/jobs/{id}``, ``GET /v1/campaigns/{id}``."""
        try:
            if method == "POST" and path == "/v1/calls":
                return await self._api_call(tenant_id, body)
            if method == "POST" and path == "/v1/campaigns":
                return await self._api_campaign(tenant_id, body)
            if method == "GET" and path.startswith("/v1/jobs/"):
                job = await self.queue.job(tenant_id, path.removeprefix("/v1/jobs/"))
                if job is None:
                    return HTTPStatus.NOT_FOUND, {"error": "no such job"}
                return HTTPStatus.OK, job.public()
            if method == "GET" and path.startswith("/v1/campaigns/"):
                campaign_id = path.removeprefix("/v1/campaigns/")
                found = await self.queue.jobs(tenant_id, campaign_id=campaign_id, limit=MAX_JOBS_SHOWN)
                if not campaign_id or not found:
                    return HTTPStatus.NOT_FOUND, {"error": "no such campaign"}
                return HTTPStatus.OK, campaign_summary(campaign_id, found)
        except InputError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        return HTTPStatus.NOT_FOUND, {"error": "not found"}

    async def _api_call(self, tenant_id: str, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
        problems: list[str] = []
        call = {k: v for k, v in body.items() if k != "agent"} if isinstance(body, dict) else body
        spec = jobs.spec_from_json(call, key=jobs.new_id("key_"), problems=problems)
        agent = body.get("agent", DEFAULT_AGENT) if isinstance(body, dict) else DEFAULT_AGENT
        if spec is None or problems or not isinstance(agent, str):
            raise InputError("; ".join(problems) or "'agent' must be a string")
        (job,) = await self.enqueue(tenant_id, agent, [spec])
        return HTTPStatus.ACCEPTED, job.public()

    async def _api_campaign(self, tenant_id: str, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
        specs = jobs.specs_from_json(body)
        agent = body.get("agent", DEFAULT_AGENT)
        key = body.get("idempotency_key", "")
        if not isinstance(agent, str) or not isinstance(key, str) or len(key) > jobs.MAX_KEY:
            raise InputError("'agent' and 'idempotency_key' must be strings")
        return HTTPStatus.ACCEPTED, await self.campaign(tenant_id, agent, specs, key)


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
            limits=limits,
            clock=clock,
            sweep_s=min(30.0, recheck_s / 2),
            quiet_live_s=recheck_s,
        )
        jobs.on_queued = self.pool.kick

    # ------------------------------------------------------------------ placing

    def account_for(self, job: Job) -> Account | None:
        """The token of the job's account: the tenant's own, or the deployment's."""
        for credential in self.relay.credentials:
            if credential.account_sid == job.account_sid and credential.tenant_id in (None, job.tenant_id):
                return Account(job.account_sid, credential.token)
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

    async def brief(self, start: twilio.Start) -> str:
        """What the agent is told about a call it placed: to whom, and the job's variables."""
        job_id = start.custom_parameters.get("job", "")
        if not job_id:
            return ""
        job = await self.queue.get(job_id)
        if job is None or job.tenant_id != (start.custom_parameters.get("tenant") or ""):
            return ""
        lines = [f"You placed this phone call to {job.to_number}; the person who answers speaks first."]
        if job.variables:
            lines.append("What you know for this call:")
            lines += [f"- {name}: {value}" for name, value in job.variables.items()]
        return "\n".join(lines)


def campaign_id_for(tenant_id: str, key: str) -> str:
    """A campaign's id from what identifies it (an idempotency key, a file's content): the same
    campaign queued twice is the same jobs."""
    return "cmp_" + hashlib.sha256(f"{tenant_id}\x1f{key}".encode()).hexdigest()[:24]


def keyed(campaign_id: str, specs: list[CallSpec]) -> list[CallSpec]:
    """The campaign's calls with idempotency keys unique to it."""
    return [CallSpec(s.to, s.variables, f"{campaign_id}:{s.key}") for s in specs]


def campaign_summary(campaign_id: str, found: list[Job]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for job in found:
        counts[job.state] = counts.get(job.state, 0) + 1
    return {"campaign": campaign_id, "calls": len(found), "states": counts, "jobs": [j.public() for j in found]}
