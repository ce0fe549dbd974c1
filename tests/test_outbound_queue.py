"""The outbound queue on both stores: idempotent enqueue, claims under each account's live-call
cap and calls per second, status callbacks in any order, and tenants kept apart."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from relay.outbound import jobs
from relay.outbound.jobs import CallSpec, Job
from relay.outbound.queue import JobQueue, SQLiteJobQueue
from tests.pgutil import dsn, lasting_database

ACCOUNT_A = "AC" + "a" * 32
ACCOUNT_B = "AC" + "b" * 32


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    yield from lasting_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def queue(request: pytest.FixtureRequest, tmp_path: Path, pg_db: str) -> AsyncIterator[JobQueue]:
    if request.param == "sqlite":
        q = SQLiteJobQueue(tmp_path / "relay.sqlite3")
        await q.open()
        yield q
        await q.close()
        return
    from relay.pg.jobs import PostgresJobQueue

    pool = await asyncpg.create_pool(dsn(pg_db), min_size=1, max_size=4)
    async with pool.acquire() as conn:  # every test starts from an empty queue
        await conn.execute("TRUNCATE outbound_jobs, outbound_accounts")
    yield PostgresJobQueue(pool)
    await pool.close()


async def no_hold(job: Job) -> float | None:
    return None


def specs(n: int, prefix: str = "+1555000") -> list[CallSpec]:
    return [CallSpec(f"{prefix}{i:04d}", {"n": str(i)}, key=f"row-{i}") for i in range(n)]


async def test_enqueue_is_idempotent_per_tenant(queue: JobQueue) -> None:
    first = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(3), now=100.0)
    again = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(3), now=200.0)
    assert [j.job_id for j in first] == [j.job_id for j in again]
    assert all(j.state == jobs.QUEUED and j.created_at == 100.0 for j in again)
    other = await queue.enqueue("beta", "default", ACCOUNT_B, "+15550002222", specs(3), now=200.0)
    assert not {j.job_id for j in other} & {j.job_id for j in first}  # the same keys, another tenant
    assert first[1].variables == {"n": "1"}


async def test_claims_keep_the_cap_and_the_pace(queue: JobQueue) -> None:
    await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(8), now=0.0)
    now, taken = 1000.0, []
    for _ in range(40):  # a claim every 0.25 s for 10 s: one per second, at most 5 live
        job = await queue.claim(now=now, instance="r1", max_live=5, cps=1.0, hold=no_hold)
        if job is not None:
            taken.append((now, job))
            await queue.placed(job.job_id, f"CA{len(taken):032x}", now)
        now += 0.25
    times = [t for t, _ in taken]
    assert len(taken) == 5  # the cap: none of them has ended
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert [j.to_number for _, j in taken] == [s.to for s in specs(5)]  # oldest first
    # One ends: its slot frees, the next is placed.
    await queue.call_status(taken[0][1].job_id, "CA" + "1".zfill(32), 3, "completed", now, 12)
    job = await queue.claim(now=now + 1, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert job is not None and job.to_number == specs(6)[5].to


async def test_accounts_are_paced_apart(queue: JobQueue) -> None:
    await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(2), now=0.0)
    await queue.enqueue("beta", "default", ACCOUNT_B, "+15550002222", specs(2, "+1666000"), now=0.0)
    a = await queue.claim(now=10.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    b = await queue.claim(now=10.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    none = await queue.claim(now=10.5, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert a is not None and b is not None and {a.account_sid, b.account_sid} == {ACCOUNT_A, ACCOUNT_B}
    assert none is None


async def test_statuses_in_any_order_first_final_wins(queue: JobQueue) -> None:
    (job,) = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(1), now=0.0)
    claimed = await queue.claim(now=5.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert claimed is not None and claimed.attempts == 1 and claimed.state == jobs.PLACING
    sid = "CA" + "c" * 32
    # Callbacks may beat calls.create's answer, and arrive out of order.
    await queue.call_status(job.job_id, sid, 1, "ringing", 6.0, None)
    await queue.call_status(job.job_id, sid, 0, "initiated", 6.1, None)
    await queue.placed(job.job_id, sid, 6.2)
    await queue.call_status(job.job_id, sid, 3, "completed", 9.0, 30)
    await queue.call_status(job.job_id, sid, 2, "in-progress", 9.1, None)
    await queue.call_status(job.job_id, sid, 3, "completed", 9.2, 30)  # a repeat
    await queue.answered(job.job_id, sid, "machine_end_beep", 9.3)
    done = await queue.get(job.job_id)
    assert done is not None
    assert [s for _, s, _ in done.statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert (done.state, done.outcome, done.duration_s, done.answered_by) == ("done", "completed", 30, "machine")


async def test_final_status_before_the_create_answer(queue: JobQueue) -> None:
    (job,) = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(1), now=0.0)
    await queue.claim(now=5.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    sid = "CA" + "d" * 32
    await queue.call_status(job.job_id, sid, 0, "busy", 6.0, 0)
    await queue.placed(job.job_id, sid, 6.1)
    done = await queue.get(job.job_id)
    assert done is not None and (done.state, done.outcome, done.call_sid) == ("done", "busy", sid)


async def test_retry_fail_and_abandoned(queue: JobQueue) -> None:
    a, b, c = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(3), now=0.0)
    first = await queue.claim(now=10.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert first is not None and first.job_id == a.job_id
    await queue.retry(a.job_id, 100.0, 20429, "Too Many Requests", 10.0)
    second = await queue.claim(now=11.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert second is not None and second.job_id == b.job_id  # a waits for its backoff
    await queue.fail(b.job_id, 21211, "not a valid phone number", 11.0)
    third = await queue.claim(now=12.0, instance="r1", max_live=5, cps=1.0, hold=no_hold)
    assert third is not None and third.job_id == c.job_id
    assert await queue.abandoned(now=20.0, older_than_s=60.0) == 0
    assert await queue.abandoned(now=100.0, older_than_s=60.0) == 1  # c: its relay never came back
    again = await queue.claim(now=101.0, instance="r2", max_live=5, cps=1.0, hold=no_hold)
    assert again is not None and again.job_id == a.job_id and again.attempts == 2
    states = {j.job_id: (j.state, j.error_code) for j in await queue.jobs("acme")}
    assert states == {
        a.job_id: ("placing", 20429),
        b.job_id: ("failed", 21211),
        c.job_id: ("uncertain", None),
    }
    await queue.placed(a.job_id, "CA" + "a" * 32, 102.0)
    log = {j.job_id: [(e["result"], e.get("code")) for e in j.attempt_log] for j in await queue.jobs("acme")}
    assert log == {
        a.job_id: [("retried", 20429), ("placed", None)],
        b.job_id: [("failed", 21211)],
        c.job_id: [("uncertain", None)],
    }


async def test_quiet_hours_hold_a_job(queue: JobQueue) -> None:
    late, early = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(2), now=0.0)

    async def hold(job: Job) -> float | None:
        return 500.0 if job.job_id == late.job_id else None

    got = await queue.claim(now=10.0, instance="r1", max_live=5, cps=1.0, hold=hold)
    assert got is not None and got.job_id == early.job_id
    held = await queue.get(late.job_id)
    assert held is not None and held.state == jobs.QUEUED and held.due_at == 500.0


async def test_tenants_read_only_their_own(queue: JobQueue) -> None:
    (mine,) = await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(1), now=0.0)
    (theirs,) = await queue.enqueue("beta", "default", ACCOUNT_B, "+15550002222", specs(1), now=0.0)
    assert await queue.job("acme", theirs.job_id) is None
    assert (await queue.job("acme", mine.job_id)) is not None
    assert [j.job_id for j in await queue.jobs("acme")] == [mine.job_id]


async def test_claims_from_two_relays_never_share_a_job(queue: JobQueue) -> None:
    await queue.enqueue("acme", "default", ACCOUNT_A, "+15550001111", specs(30), now=0.0)
    claimed: list[str] = []

    async def relay(name: str) -> None:
        for step in range(80):
            job = await queue.claim(now=100.0 + step * 0.5, instance=name, max_live=50, cps=100.0, hold=no_hold)
            if job is not None:
                claimed.append(job.job_id)

    await asyncio.gather(relay("r1"), relay("r2"))
    assert len(claimed) == len(set(claimed)) == 30
