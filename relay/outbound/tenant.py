"""A tenant's side of outbound calls, which needs no call: its outbound settings, queueing its
calls (``POST /v1/calls`` and ``/v1/campaigns``, ``relay call`` and ``relay campaign``) and its reads
of them, with its API keys. ``relay.outbound.service.Outbound`` places what is queued here."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from relay.agents import DEFAULT_AGENT
from relay.apikeys import KeyStore, bearer
from relay.errors import InputError
from relay.outbound import jobs, race
from relay.outbound.jobs import CallSpec, Job, QuietHours
from relay.outbound.queue import JobQueue
from relay.outbound.race import BusinessHours, Contact
from relay.outbound.races import RaceStore

MAX_JOBS_SHOWN = 10_000


@dataclass(frozen=True, slots=True)
class TenantOutbound:
    """What placing a tenant's calls needs: its account, its caller ID, its quiet hours; and for
    after-hours escalations, when it is open and who is on call."""

    account_sid: str
    from_number: str
    quiet: QuietHours | None = None
    business: BusinessHours | None = None  # None: never open (escalations whenever someone is on call)
    on_call: tuple[Contact, ...] = ()
    race_timeout_s: float = race.DEFAULT_TIMEOUT_S


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
        races: RaceStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.keys = keys
        self.races = races
        self.tenant_settings = tenant_settings
        self._agent_exists = agent_exists
        self._clock = clock
        self.on_queued: Callable[[], None] = lambda: None  # the pool looks at once

    async def enqueue(
        self,
        tenant_id: str,
        agent_id: str,
        specs: list[CallSpec],
        *,
        campaign_id: str = "",
        priority: int = 0,
        race_id: str = "",
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
            priority=priority,
            race_id=race_id,
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
