"""The outbound worker pool: claims jobs from the queue and places their calls.

One loop per relay. It claims while the queue gives jobs (the queue enforces each account's
live-call cap and calls per second, across every relay on the store), places each claimed
call in a task of its own (a slow REST answer never holds the next account back), and
records what Twilio said: created (``live``), refused for now (queued again after a backoff),
refused for good, or unknown (``uncertain``, never placed again). Between claims it sleeps
briefly, or until ``kick`` says a job was queued here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relay.outbound import jobs
from relay.outbound.jobs import Job
from relay.outbound.queue import Hold, JobQueue
from relay.outbound.rest import TIMEOUT_S, Account, PlaceError, TwilioRest
from relay.twilio import FINAL_STATUSES

log = logging.getLogger("relay.outbound")

# How often the pool looks for due jobs: while jobs flow, often (the account's pace is what holds
# them back); once a few looks have found none, rarely, since every look is a query and a thread
# hop beside the calls' frames. A job queued here, or a call's end, wakes it at once; one queued
# elsewhere (the CLI, another relay) waits at most IDLE_POLL_S.
POLL_S = 0.25
IDLE_POLL_S = 2.0
IDLE_AFTER = 8  # looks in a row that found nothing
SWEEP_S = 30.0  # how often placements abandoned by a stopped relay, and lost ends, are looked for
ABANDONED_AFTER_S = 4 * TIMEOUT_S  # a placement pending this long has no relay waiting for it
QUIET_LIVE_S = 60.0  # a live call with no news this long is looked up at Twilio (its end may be lost)
FETCHED_SEQ = 1_000_000  # where a status read from the call's resource goes among its callbacks


@dataclass(frozen=True, slots=True)
class Limits:
    """Per account: calls live at once, and calls placed per second (Twilio's CPS)."""

    max_live: int = 5
    cps: float = 1.0


class OutboundPool:
    def __init__(
        self,
        queue: JobQueue,
        rest: TwilioRest,
        *,
        instance: str,
        account_for: Callable[[Job], Account | None],
        call_params: Callable[[Job], dict[str, Any]],
        hold: Hold,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
        on_placed: Callable[[Job, str], Awaitable[None]] | None = None,
        on_failed: Callable[[Job], None] | None = None,
        sweep_s: float = SWEEP_S,
        quiet_live_s: float = QUIET_LIVE_S,
    ) -> None:
        self.sweep_s = sweep_s
        self.quiet_live_s = quiet_live_s
        self.queue = queue
        self.rest = rest
        self.instance = instance
        self.limits = limits
        self._account_for = account_for
        self._call_params = call_params
        self._hold = hold
        self._clock = clock
        self._on_placed = on_placed
        self._on_failed = on_failed  # a job given up for good: it was never placed
        self._wake = asyncio.Event()
        self._placing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        # Counts for /metrics and tests.
        self.placed = 0
        self.retried = 0
        self.failed = 0
        self.uncertain = 0
        self.reconciled = 0  # live jobs whose end was read from Twilio, its callback lost

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbound-pool")

    async def close(self) -> None:
        """Stop claiming; placements in flight finish (each bounded by the REST timeout)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._placing:
            await asyncio.gather(*self._placing, return_exceptions=True)

    def kick(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        next_sweep = 0.0
        empty_looks = 0
        while True:
            try:
                now = self._clock()
                if now >= next_sweep:
                    next_sweep = now + self.sweep_s
                    await self._sweep(now)
                while True:
                    job = await self.queue.claim(
                        now=self._clock(),
                        instance=self.instance,
                        max_live=self.limits.max_live,
                        cps=self.limits.cps,
                        hold=self._hold,
                    )
                    if job is None:
                        empty_looks += 1
                        break
                    empty_looks = 0
                    task = asyncio.create_task(self._place(job), name=f"place-{job.job_id}")
                    self._placing.add(task)
                    task.add_done_callback(self._placing.discard)
            except Exception as exc:  # noqa: BLE001 - the store is away: jobs wait there, the loop goes on
                log.warning("outbound queue unavailable (%s); trying again", type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S if empty_looks >= IDLE_AFTER else POLL_S)
            if self._wake.is_set():
                empty_looks = 0

    async def _sweep(self, now: float) -> None:
        gone = await self.queue.abandoned(now=now, older_than_s=ABANDONED_AFTER_S)
        if gone:
            self.uncertain += gone
            log.warning("%d outbound placement(s) abandoned by a stopped relay: marked uncertain", gone)
        for job in await self.queue.quiet_live(now=now, older_than_s=self.quiet_live_s):
            account = self._account_for(job)
            if account is None or not job.call_sid:
                continue
            try:
                call = await self.rest.fetch_call(account, job.call_sid)
            except Exception as exc:  # noqa: BLE001 - looked up again at the next sweep
                log.warning("job %s: call %s could not be looked up (%s)", job.job_id, job.call_sid, type(exc).__name__)
                continue
            if call["status"] in FINAL_STATUSES:
                self.reconciled += 1
                log.warning("job %s: call %s ended %s, its callback lost", job.job_id, job.call_sid, call["status"])
                duration = call["duration"]
                await self.queue.call_status(
                    job.job_id,
                    job.call_sid,
                    FETCHED_SEQ,
                    call["status"],
                    self._clock(),
                    int(duration) if str(duration or "").isdigit() else None,
                )

    async def _place(self, job: Job) -> None:
        account = self._account_for(job)
        if account is None:
            self.failed += 1
            log.error("job %s: no auth token for account %s; not placed", job.job_id, job.account_sid)
            await self.queue.fail(job.job_id, None, "relay holds no auth token for the account", self._clock())
            if self._on_failed is not None:
                self._on_failed(job)
            return
        try:
            call_sid = await self.rest.create_call(account, **self._call_params(job))
        except PlaceError as exc:
            await self._refused(job, exc)
            return
        self.placed += 1
        log.info("job %s: call %s placed to %s (attempt %d)", job.job_id, call_sid, job.to_number, job.attempts)
        await self.queue.placed(job.job_id, call_sid, self._clock())
        if self._on_placed is not None:
            await self._on_placed(job, call_sid)

    async def _refused(self, job: Job, exc: PlaceError) -> None:
        now = self._clock()
        if exc.retryable and job.attempts < jobs.MAX_ATTEMPTS:
            self.retried += 1
            wait = jobs.backoff_s(job.attempts)
            log.warning("job %s: %s; retrying in %.1f s (attempt %d)", job.job_id, exc, wait, job.attempts)
            await self.queue.retry(job.job_id, now + wait, exc.code, str(exc), now)
        elif exc.uncertain:
            self.uncertain += 1
            log.error("job %s: %s; the call may have been placed, so it is not tried again", job.job_id, exc)
            await self.queue.fail(job.job_id, exc.code, str(exc), now, state=jobs.UNCERTAIN)
        else:
            self.failed += 1
            log.warning("job %s: %s; not placed", job.job_id, exc)
            await self.queue.fail(job.job_id, exc.code, str(exc), now)
            if self._on_failed is not None:
                self._on_failed(job)
