"""Outbound calls put together: the placing half on any store, and the jobs half of the
embedded store (its one tenant, whose outbound settings come from the environment). The
Postgres jobs half is ``relay.pg.jobs.postgres_jobs``. The jobs halves serve the CLI as well,
which queues calls without placing them."""

from __future__ import annotations

import secrets

from relay.agents import DEFAULT_AGENT
from relay.apikeys import SQLiteKeyStore
from relay.config import Settings
from relay.outbound.pool import Limits
from relay.outbound.queue import SQLiteJobQueue
from relay.outbound.race import parse_contacts
from relay.outbound.races import SQLiteRaceStore
from relay.outbound.rest import TwilioRest
from relay.outbound.service import Outbound, RelayLike
from relay.outbound.tenant import OutboundJobs, TenantOutbound
from relay.store import DEFAULT_TENANT


def placing(settings: Settings, relay: RelayLike, jobs: OutboundJobs, instance: str = "") -> Outbound:
    """The placing half, on ``jobs``: the pool, and Twilio's answer and callbacks."""
    return Outbound(
        relay,
        jobs,
        TwilioRest(settings.twilio_api_url),
        public_url=settings.public_url,
        instance=instance or secrets.token_hex(8),
        limits=Limits(settings.max_outbound, settings.outbound_cps),
        ring_s=settings.outbound_ring_s,
        recheck_s=settings.outbound_recheck_s,
    )


async def embedded_jobs(settings: Settings) -> OutboundJobs:
    """Jobs in the embedded store's file: its one tenant and agent, the deployment's account."""
    queue = SQLiteJobQueue(settings.sqlite_path)
    await queue.open()
    races = SQLiteRaceStore(queue)
    await races.open()
    own = TenantOutbound(
        settings.twilio_account_sid,
        settings.outbound_from,
        settings.quiet,
        settings.business,
        parse_contacts(settings.on_call),
        float(settings.race_timeout_s),
    )

    async def tenant_settings(tenant_id: str) -> TenantOutbound | None:
        return own if tenant_id == DEFAULT_TENANT else None

    async def agent_exists(tenant_id: str, agent_id: str) -> bool:
        return tenant_id == DEFAULT_TENANT and agent_id == DEFAULT_AGENT

    return OutboundJobs(
        queue,
        SQLiteKeyStore(settings.sqlite_path, DEFAULT_TENANT),
        tenant_settings=tenant_settings,
        agent_exists=agent_exists,
        races=races,
    )
