"""``relay serve --workers N``: N relay processes on one port, supervised, seen as one.

Each worker is a whole relay (its own event loop, clock, spool file and dead-letter file)
bound to the same port with ``SO_REUSEPORT``, so the kernel spreads connections across them;
a call lives in the worker that took its stream. The supervisor starts them, restarts one
that dies (logged), passes signals on (SIGTERM drains every worker; a second ends every call),
and exits when the last worker has.

What must look like one relay does: ``/metrics`` on any worker is every worker's scrape,
summed (each also serves its own on a Unix socket in the workers' directory); ``relay drain``
reaches whichever worker the kernel picks, which asks the supervisor to drain them all.
Stream and hook tokens are signed with one key every worker shares.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("relay.workers")

RESTART_BACKOFF = (0.5, 30.0)  # first and longest wait before a dead worker is started again
STABLE_S = 60.0  # a worker that ran this long before dying is restarted at once
SCRAPE_TIMEOUT_S = 2.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Worker:
    """Which worker this process is, and where its siblings are (from the supervisor)."""

    index: int
    count: int
    directory: Path
    supervisor_pid: int

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> Worker | None:
        if "RELAY_WORKER_INDEX" not in env:
            return None
        return cls(
            int(env["RELAY_WORKER_INDEX"]),
            int(env["RELAY_WORKER_COUNT"]),
            Path(env["RELAY_WORKER_DIR"]),
            int(env["RELAY_SUPERVISOR_PID"]),
        )

    def socket_path(self, index: int | None = None) -> Path:
        """Where worker ``index`` (this one by default) serves its own metrics."""
        return self.directory / f"worker-{self.index if index is None else index}.sock"

    def suffix(self, path: str) -> str:
        """A file of this worker's own (its spool, its dead letters)."""
        return f"{path}.w{self.index}"

    def follow_supervisor(self) -> None:
        """Drain (SIGTERM) when the supervisor dies, however it died, rather than serve on
        unsupervised; the live calls still finish."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            log.warning("worker %d cannot follow its supervisor (errno %d)", self.index, ctypes.get_errno())
        if os.getppid() != self.supervisor_pid:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    def ask_supervisor(self, handoff: bool) -> None:
        """``relay drain`` reached this worker: the supervisor drains them all."""
        os.kill(self.supervisor_pid, signal.SIGUSR2 if handoff else signal.SIGUSR1)


# --- Metrics: every worker's scrape, summed -------------------------------------------------------


async def scrape_siblings(worker: Worker) -> list[bytes]:
    """The other workers' own scrapes (a worker that does not answer in time is left out)."""

    async def one(index: int) -> bytes:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(worker.socket_path(index)))
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
                answer = await reader.read()
                writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("worker %d's metrics unavailable (%s)", index, type(exc).__name__)
            return b""
        head, _, body = answer.partition(b"\r\n\r\n")
        return body if head.startswith(b"HTTP/1.1 200") else b""

    others = [i for i in range(worker.count) if i != worker.index]
    return list(await asyncio.gather(*(one(i) for i in others)))


def merge(scrapes: Iterable[bytes]) -> bytes:
    """Prometheus scrapes of several workers as one: every sample with the same name and
    labels summed (relay's series are all counts, sums and bucket counts; gauges are sizes)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for scrape in scrapes:
        if not scrape:
            continue
        for family in text_string_to_metric_families(scrape.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            found = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                found[key] = found.get(key, 0.0) + sample.value
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


# --- The supervisor ----------------------------------------------------------------------------


async def supervise(count: int, argv: list[str]) -> int:
    """Run ``count`` workers (``python -m relay serve`` with ``argv``) until they have all
    drained and exited; returns the exit status."""
    directory = Path(tempfile.mkdtemp(prefix="relay-workers-"))
    env = {
        **os.environ,
        "RELAY_WORKER_COUNT": str(count),
        "RELAY_WORKER_DIR": str(directory),
        "RELAY_SUPERVISOR_PID": str(os.getpid()),
    }
    if not env.get("RELAY_STREAM_SECRET") and not env.get("TWILIO_AUTH_TOKEN"):
        # Tokens one worker signs, another verifies: without a secret to derive the key from
        # (development), one made for this run, as a single relay makes its own.
        env["RELAY_STREAM_SECRET"] = secrets.token_hex(32)
    log.info("%d workers on one port; each serves its own metrics on a socket in %s", count, directory)
    loop = asyncio.get_running_loop()
    procs: dict[int, asyncio.subprocess.Process] = {}
    draining = False

    async def start(index: int) -> None:
        procs[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", *argv, env={**env, "RELAY_WORKER_INDEX": str(index)}
        )
        log.info("worker %d started (pid %d)", index, procs[index].pid)

    def forward(sig: int) -> None:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    def on_signal(sig: int) -> None:
        nonlocal draining
        draining = True  # from now on a worker that exits is not replaced
        forward(signal.SIGUSR2 if sig == signal.SIGUSR2 else signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, on_signal, sig)

    async def keep(index: int) -> None:
        delay = RESTART_BACKOFF[0]
        while True:
            began = loop.time()
            await start(index)
            code = await procs[index].wait()
            if draining:
                log.info("worker %d exited (%d)", index, code)
                return
            log.error("worker %d died (exit status %d); starting it again", index, code)
            if loop.time() - began < STABLE_S:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF[1])
            else:
                delay = RESTART_BACKOFF[0]

    try:
        await asyncio.gather(*(keep(i) for i in range(count)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0
