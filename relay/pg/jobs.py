"""The outbound queue in Postgres (``relay.outbound.queue.JobQueue``), shared by every relay on
the database.

A claim runs in one transaction as ``relay_writer``: for each account with a job due, its
``outbound_accounts`` row is locked ``FOR UPDATE SKIP LOCKED`` (a relay placing for that
account right now is left to it), the account's slots and last placement are checked, and
the oldest due job is taken ``FOR UPDATE SKIP LOCKED``. Tenant reads (``job``, ``jobs``)
run as ``relay_reader`` under row-level security.

``postgres_jobs`` puts the jobs half of outbound calls together on it: every tenant's settings
from the ``tenants`` table, over the deployment's account.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.outbound import jobs
from relay.outbound.jobs import CallSpec, Job, QuietHours
from relay.outbound.queue import ABANDONED, JOB_COLUMNS, Hold, JobQueue, attempt, job_from_row
from relay.outbound.race import DEFAULT_TIMEOUT_S, BusinessHours, parse_contacts
from relay.outbound.tenant import OutboundJobs, TenantOutbound
from relay.pg.apikeys import PostgresKeyStore
from relay.pg.db import as_tenant, as_writer
from relay.pg.directory import Directory
from relay.pg.races import PostgresRaceStore
from relay.twilio import FINAL_STATUSES

_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM outbound_jobs"


def _job(row: asyncpg.Record) -> Job:
    values: dict[str, Any] = dict(row)
    # JSONB comes back as text (no codec registered): the same form as SQLite's.
    return job_from_row(values)


class PostgresJobQueue(JobQueue):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def enqueue(
        self,
        tenant_id: str,
        agent_id: str,
        account_sid: str,
        from_number: str,
        specs: Sequence[CallSpec],
        *,
        now: float,
        campaign_id: str = "",
        priority: int = 0,
        race_id: str = "",
    ) -> list[Job]:
        rows = [
            (jobs.new_id("job_"), tenant_id, agent_id, account_sid, spec.to, from_number,
             json.dumps(dict(spec.variables)), spec.key or jobs.new_id("key_"), now, campaign_id, priority, race_id)
            for spec in specs
        ]  # fmt: skip
        async with as_writer(self._pool) as conn:
            await conn.executemany(
                "INSERT INTO outbound_jobs (job_id, tenant_id, agent_id, account_sid, to_number, from_number, "
                "variables, idempotency_key, state, due_at, created_at, updated_at, campaign_id, priority, race_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, 'queued', $9, $9, $9, $10, $11, $12) "
                "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
                rows,
            )
            await conn.execute(
                "INSERT INTO outbound_accounts (account_sid) VALUES ($1) ON CONFLICT DO NOTHING", account_sid
            )
            found = await conn.fetch(
                f"{_SELECT} WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[])",
                tenant_id,
                [r[7] for r in rows],
            )
        by_key = {row["idempotency_key"]: _job(row) for row in found}
        return [by_key[r[7]] for r in rows]

    async def claim(self, *, now: float, instance: str, max_live: int, cps: float, hold: Hold) -> Job | None:
        async with as_writer(self._pool) as conn:
            accounts = await conn.fetch(
                "SELECT a.account_sid FROM outbound_accounts a WHERE a.last_placed_at <= $1 AND EXISTS "
                "(SELECT 1 FROM outbound_jobs j WHERE j.account_sid = a.account_sid AND j.state = 'queued' "
                "AND j.due_at <= $2) ORDER BY a.last_placed_at",
                now - 1.0 / cps,
                now,
            )
        for account in accounts:
            job = await self._claim_for(account["account_sid"], now, instance, max_live, cps, hold)
            if job is not None:
                return job
        return None

    async def _claim_for(
        self, account_sid: str, now: float, instance: str, max_live: int, cps: float, hold: Hold
    ) -> Job | None:
        async with as_writer(self._pool) as conn:
            last = await conn.fetchval(
                "SELECT last_placed_at FROM outbound_accounts WHERE account_sid = $1 FOR UPDATE SKIP LOCKED",
                account_sid,
            )
            if last is None or now - last < 1.0 / cps:
                return None  # another relay is placing for the account, or it placed a moment ago
            live = await conn.fetchval(
                "SELECT count(*) FROM outbound_jobs WHERE account_sid = $1 AND state IN ('placing', 'live')",
                account_sid,
            )
            if live >= max_live:
                return None
            for _ in range(100):
                row = await conn.fetchrow(
                    f"{_SELECT} WHERE account_sid = $1 AND state = 'queued' AND due_at <= $2 "
                    "ORDER BY priority DESC, due_at, position LIMIT 1 FOR UPDATE SKIP LOCKED",
                    account_sid,
                    now,
                )
                if row is None:
                    return None
                job = _job(row)
                until = await hold(job)
                if until is not None:
                    await conn.execute(
                        "UPDATE outbound_jobs SET due_at = $2, updated_at = $3 WHERE job_id = $1",
                        job.job_id,
                        until,
                        now,
                    )
                    continue
                taken = await conn.fetchrow(
                    "UPDATE outbound_jobs SET state = 'placing', attempts = attempts + 1, claimed_by = $2, "
                    f"claimed_at = $3, updated_at = $3 WHERE job_id = $1 RETURNING {', '.join(JOB_COLUMNS)}",
                    job.job_id,
                    instance,
                    now,
                )
                await conn.execute(
                    "UPDATE outbound_accounts SET last_placed_at = $2 WHERE account_sid = $1", account_sid, now
                )
                return _job(taken)
        return None

    async def placed(self, job_id: str, call_sid: str, now: float) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "UPDATE outbound_jobs SET call_sid = $2, updated_at = $3, "
                "state = CASE WHEN outcome <> '' THEN 'done' ELSE 'live' END, "
                "attempt_log = attempt_log || jsonb_build_array($4::jsonb) WHERE job_id = $1 AND state = 'placing'",
                job_id,
                call_sid,
                now,
                attempt(now, "placed", call_sid=call_sid),
            )

    async def retry(self, job_id: str, due_at: float, code: int | None, error: str, now: float) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "UPDATE outbound_jobs SET state = 'queued', due_at = $2, error_code = $3, error = $4, "
                "updated_at = $5, claimed_by = '', attempt_log = attempt_log || jsonb_build_array($6::jsonb) "
                "WHERE job_id = $1 AND state = 'placing'",
                job_id, due_at, code, error[:500], now, attempt(now, "retried", code, error),
            )  # fmt: skip

    async def fail(self, job_id: str, code: int | None, error: str, now: float, *, state: str = jobs.FAILED) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "UPDATE outbound_jobs SET state = $2, outcome = 'not_placed', error_code = $3, error = $4, "
                "updated_at = $5, attempt_log = CASE WHEN state = 'placing' "
                "THEN attempt_log || jsonb_build_array($6::jsonb) ELSE attempt_log END "
                "WHERE job_id = $1 AND state IN ('queued', 'placing')",
                job_id, state, code, error[:500], now, attempt(now, state, code, error),
            )  # fmt: skip

    async def call_status(
        self, job_id: str, call_sid: str, seq: int, status: str, now: float, duration_s: int | None
    ) -> Job | None:
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE job_id = $1 FOR UPDATE", job_id)
            if row is None:
                return None
            job = _job(row)
            statuses = jobs.merge_status(job.statuses, seq, status, now)
            final = status in FINAL_STATUSES and not job.outcome
            updated = await conn.fetchrow(
                "UPDATE outbound_jobs SET statuses = $2::jsonb, updated_at = $3, "
                "call_sid = CASE WHEN call_sid = '' THEN $4 ELSE call_sid END, "
                "outcome = CASE WHEN $5 THEN $6 ELSE outcome END, "
                "duration_s = CASE WHEN $5 THEN $7 ELSE duration_s END, "
                "state = CASE WHEN state NOT IN ('placing', 'live') THEN state WHEN $5 THEN 'done' ELSE 'live' END "
                f"WHERE job_id = $1 RETURNING {', '.join(JOB_COLUMNS)}",
                job_id, json.dumps(statuses), now, call_sid, final, status, duration_s,
            )  # fmt: skip
        return _job(updated)

    async def answered(self, job_id: str, call_sid: str, verdict: str, now: float) -> Job | None:
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(
                f"UPDATE outbound_jobs SET answered_by = $2, updated_at = $3 WHERE job_id = $1 "
                f"RETURNING {', '.join(JOB_COLUMNS)}",
                job_id,
                jobs.answered_by(verdict),
                now,
            )
        return _job(row) if row is not None else None

    async def note_voicemail(self, job_id: str, what: str, now: float) -> None:
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "UPDATE outbound_jobs SET voicemail = $2, updated_at = $3 WHERE job_id = $1", job_id, what, now
            )

    async def get(self, job_id: str) -> Job | None:
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE job_id = $1", job_id)
        return _job(row) if row is not None else None

    async def job(self, tenant_id: str, job_id: str) -> Job | None:
        # No tenant filter in the query: row-level security is what scopes it.
        async with as_tenant(self._pool, tenant_id) as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE job_id = $1", job_id)
        return _job(row) if row is not None else None

    async def jobs(self, tenant_id: str, *, campaign_id: str = "", limit: int = 100) -> list[Job]:
        async with as_tenant(self._pool, tenant_id) as conn:
            if campaign_id:
                rows = await conn.fetch(
                    f"{_SELECT} WHERE campaign_id = $1 ORDER BY position LIMIT $2", campaign_id, limit
                )
            else:
                rows = await conn.fetch(f"{_SELECT} ORDER BY position LIMIT $1", limit)
        return [_job(row) for row in rows]

    async def quiet_live(self, *, now: float, older_than_s: float, limit: int = 100) -> list[Job]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                f"{_SELECT} WHERE state = 'live' AND updated_at < $1 ORDER BY updated_at LIMIT $2",
                now - older_than_s,
                limit,
            )
        return [_job(row) for row in rows]

    async def abandoned(self, *, now: float, older_than_s: float) -> int:
        async with as_writer(self._pool) as conn:
            done = await conn.execute(
                "UPDATE outbound_jobs SET state = 'uncertain', outcome = 'not_known', updated_at = $1, error = $3, "
                "attempt_log = attempt_log || jsonb_build_array($4::jsonb) WHERE state = 'placing' AND claimed_at < $2",
                now,
                now - older_than_s,
                ABANDONED,
                attempt(now, "uncertain", error=ABANDONED),
            )
        return int(done.split()[-1])


def postgres_jobs(pool: asyncpg.Pool, directory: Directory, *, account_sid: str, from_number: str) -> OutboundJobs:
    """Jobs in Postgres: every tenant, one queue for every relay on the database. A tenant with
    no Twilio account of its own places calls on the deployment's (``account_sid``), with the
    deployment's caller ID (``from_number``) when it has none of its own."""

    async def tenant_settings(tenant_id: str) -> TenantOutbound | None:
        row = await directory.outbound_settings(tenant_id)
        if row is None:
            return None
        own = row["twilio_account_sid"]
        # A tenant on the deployment's account may use the deployment's caller ID.
        fallback = "" if own else from_number
        zone = row["timezone"] or "UTC"
        return TenantOutbound(
            own or account_sid,
            row["outbound_from"] or row["first_number"] or fallback,
            QuietHours.parse(zone, row["quiet_hours"]) if row["quiet_hours"] else None,
            BusinessHours.parse(zone, row["business_hours"]) if row["business_hours"] else None,
            parse_contacts(row["on_call"] or ""),
            float(row["race_timeout_s"] or DEFAULT_TIMEOUT_S),
        )

    async def agent_exists(tenant_id: str, agent_id: str) -> bool:
        return await directory.get_agent(tenant_id, agent_id) is not None

    return OutboundJobs(
        PostgresJobQueue(pool),
        PostgresKeyStore(pool),
        tenant_settings=tenant_settings,
        agent_exists=agent_exists,
        races=PostgresRaceStore(pool),
    )
