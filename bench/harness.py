"""Runs relays side by side under the same load and turns what it saw into figures.

One run: the echo upstream and the load generator live in this process, pinned to one core;
each relay under test runs as a child process pinned to the other, alone. First the direct
path (no relay) is measured at each step of a ladder of call counts: that is the floor. Then
each relay in turn: its main figures at ``--calls`` concurrent calls, then a step search for
the largest number of calls whose p99 added latency stays under the bound.

Added latency is measured quantile by quantile: a relay's p99 round trip minus the direct
path's p99 at the same number of calls (interpolated between ladder steps). Both share the
same load side, so what the load side itself adds cancels out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.echo_upstream import EchoUpstream
from bench.loadgen import AUTH_TOKEN, LoadRun, Target, Window
from bench.wire import WireError

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "bench" / "baselines"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
BENCH_DATABASE_URL = os.environ.get("RELAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/relay_bench")
BENCH_NUMBER = "+15550199999"  # the number the load generator dials (its webhook "To")
LATE_MS = 20.0  # one frame period: a frame this much later than the floor is a gap the caller hears
LOAD_BOUND_CPU = 0.90  # the load side's core this busy: figures say more about it than the relay
UNTAGGED = "n/a: transcoded audio carries no tag"  # what a transcoding relay's latency and loss are
# The transcoded relay, and the passthrough ones it is set beside, in order of preference: relay on
# Realtime wraps its audio in JSON and base64 as Gemini Live does, so the difference is the
# transcoding alone; relay on Deepgram (raw binary frames) is the fallback.
TRANSCODED = "relay-gemini"
PASSTHROUGH = ("relay", "relay-deepgram")
# relay as it was before its call core was composed (media core as a leaf, the backend seam,
# one parse per message): the baseline "relay-landed" runs this commit, built from git beside
# today's relay, so the two are measured in the same run.
LANDED_COMMIT = "250aa40cc6d3c9a8ee633cc127365a024749313d"
LANDED_DIR = ROOT / "build" / f"landed-{LANDED_COMMIT[:12]}"  # beside the build products, not collected


@dataclass(frozen=True)
class RelaySpec:
    """How to launch one relay under test and where its calls go."""

    name: str
    title: str
    argv: Callable[[int, str], list[str]]  # (port, upstream url) -> command line
    stream_path: str
    webhook_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # Python modules or executables it needs
    root: Path = ROOT  # the source tree it runs from (its working directory and PYTHONPATH)
    scrape_s: float = 0.0  # read its /metrics this often while it is measured (0: never)
    # False: it transcodes the audio, so the load generator's tags do not come back; its frames
    # are counted per call, and its latency and loss are not measurable.
    tagged: bool = True


def relay_specs(*, slow_ms: float = 5.0, burn_us: float = 0.0) -> dict[str, RelaySpec]:
    py = sys.executable
    relay_env = {
        "OPENAI_API_KEY": "sk-bench-not-a-secret",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "RELAY_LOG_LEVEL": "WARNING",
    }
    slowed = [f"--delay-ms={slow_ms}", f"--burn-us={burn_us}"]
    return {
        "relay": RelaySpec(
            "relay",
            "relay",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            relay_env,
        ),
        "relay-live": RelaySpec(
            "relay-live",
            "relay, GPT-Live backend",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            {**relay_env, "RELAY_BACKEND": "openai-live"},
        ),
        "relay-deepgram": RelaySpec(
            "relay-deepgram",
            "relay, Deepgram backend",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            {**relay_env, "RELAY_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "dg-bench-not-a-secret"},
        ),
        "relay-gemini": RelaySpec(
            "relay-gemini",
            "relay, Gemini Live backend (transcoded)",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            {**relay_env, "RELAY_BACKEND": "gemini-live", "GEMINI_API_KEY": "gm-bench-not-a-secret"},
            tagged=False,
        ),
        "relay-workers-2": RelaySpec(
            "relay-workers-2",
            "relay, 2 workers",
            lambda port, up: [py, "-m", "relay", "serve", "--workers", "2"],
            "/twilio/voice",
            "/twilio/voice",
            relay_env,
        ),
        "relay-postgres": RelaySpec(
            "relay-postgres",
            "relay, Postgres store",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            {**relay_env, "DATABASE_URL": BENCH_DATABASE_URL},
            ("postgres",),
        ),
        "relay-slowed": RelaySpec(
            "relay-slowed",
            f"relay, slowed ({slow_ms:g} ms, {burn_us:g} µs/frame)",
            lambda port, up: [py, "-m", "bench.slowed", *slowed, "serve"],
            "/twilio/voice",
            "/twilio/voice",
            relay_env,
        ),
        "relay-pacer-40": RelaySpec(
            "relay-pacer-40",
            "relay, 40 ms pacer",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            {**relay_env, "RELAY_PACER_INTERVAL_MS": "40"},
        ),
        "relay-scraped": RelaySpec(
            "relay-scraped",
            "relay, /metrics read every second",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            relay_env,
            scrape_s=1.0,
        ),
        "relay-landed": RelaySpec(
            "relay-landed",
            f"relay as landed ({LANDED_COMMIT[:7]})",
            lambda port, up: [py, "-m", "relay", "serve"],
            "/twilio/voice",
            "/twilio/voice",
            relay_env,
            ("landed",),
            LANDED_DIR,
        ),
        "sample": RelaySpec(
            "sample",
            "sample-style (FastAPI/uvicorn)",
            lambda port, up: [py, str(BASELINES / "sample_fastapi.py"), "--port", str(port), "--upstream", up],
            "/media-stream",
            None,
            {},
            ("fastapi", "uvicorn"),
        ),
        "websockets": RelaySpec(
            "websockets",
            "websockets on uvloop",
            lambda port, up: [py, str(BASELINES / "websockets_uvloop.py"), "--port", str(port), "--upstream", up],
            "/media-stream",
            None,
        ),
        "node": RelaySpec(
            "node",
            "Node.js ws",
            lambda port, up: ["node", str(BASELINES / "node_ws" / "relay.js"), "--port", str(port), "--upstream", up],
            "/media-stream",
            None,
            {},
            ("node", "npm"),
        ),
    }


async def unavailable(spec: RelaySpec) -> str | None:
    """Why ``spec`` cannot run here (a missing module or program), or None."""
    import importlib.util

    for need in spec.requires:
        if need == "landed":
            problem = _build_landed()
            if problem:
                return problem
        elif need == "postgres":
            problem = await _bench_database()
            if problem:
                return problem
        elif need in ("node", "npm"):
            if shutil.which(need) is None:
                return f"{need} not found"
        elif importlib.util.find_spec(need) is None:
            return f"Python package {need} not installed (pip install -e '.[bench]')"
    if spec.name == "node" and not (BASELINES / "node_ws" / "node_modules" / "ws").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=BASELINES / "node_ws",
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            return f"npm ci failed: {done.stderr.strip()[-200:]}"
    return None


def _build_landed() -> str | None:
    """Check out ``LANDED_COMMIT`` under build/ and build its compiled hot path there
    (once; the tree is kept), or say why it cannot be."""
    built = list(LANDED_DIR.glob("relay/_fastpath*.so"))
    if built:
        return None
    if shutil.which("git") is None:
        return "git not found"
    LANDED_DIR.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LANDED_COMMIT], check=False, capture_output=True, timeout=120
    )
    if archive.returncode != 0:
        return f"git archive {LANDED_COMMIT[:7]} failed: {archive.stderr.decode(errors='replace').strip()[-200:]}"
    subprocess.run(["tar", "-x", "-C", str(LANDED_DIR)], input=archive.stdout, check=True, timeout=120)
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        check=False,
        cwd=LANDED_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        return f"building relay {LANDED_COMMIT[:7]} failed: {done.stderr.strip()[-200:]}"
    return None


async def _bench_database() -> str | None:
    """Create the benchmark's database when missing (and route every number to one tenant)."""
    from urllib.parse import urlsplit, urlunsplit

    async def prepare() -> None:
        import asyncpg

        from relay.config import Settings
        from relay.pg import Directory, migrate

        parts = urlsplit(BENCH_DATABASE_URL)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await migrate(BENCH_DATABASE_URL)
        async with Directory.connect(BENCH_DATABASE_URL) as directory:
            # The relay under test reads its agent from the same environment the harness gives it.
            await directory.add_tenant(
                "bench", "load harness", Settings.from_env({"OPENAI_API_KEY": "sk-bench"}, serve=False).agent
            )
            await directory.add_number(BENCH_NUMBER, "bench")

    try:
        await prepare()
    except Exception as exc:  # noqa: BLE001 - unreachable server, no rights: say why the row is missing
        return f"Postgres at {BENCH_DATABASE_URL.split('@')[-1]} unavailable: {type(exc).__name__}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of a process, all threads, in clock ticks (0, 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def backend_urls(upstream: EchoUpstream) -> dict[str, str]:
    """Where relay's sessions on each backend but Realtime go: the echo upstream's endpoint for
    it (whichever backend a relay's agent is on, its sessions reach the echo)."""
    return {
        "RELAY_OPENAI_LIVE_URL": upstream.live_url,
        "RELAY_DEEPGRAM_AGENT_URL": upstream.deepgram_url,
        "RELAY_GEMINI_LIVE_URL": upstream.gemini_url,
    }


class RelayProcess:
    """A relay under test as a child process: started, pinned, measured, stopped."""

    def __init__(
        self,
        spec: RelaySpec,
        upstream_url: str,
        core: int | None,
        workdir: Path,
        *,
        backend_urls: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.port = free_port()
        self.upstream_url = upstream_url
        self.backend_urls = backend_urls or {}  # setting -> URL, for the other backends' endpoints
        self.core = core
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = workdir / f"{spec.name}.stderr"

    @property
    def target(self) -> Target:
        base = f"127.0.0.1:{self.port}"
        webhook = f"http://{base}{self.spec.webhook_path}" if self.spec.webhook_path else None
        return Target(self.spec.name, f"ws://{base}{self.spec.stream_path}", webhook, self.spec.tagged)

    async def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.spec.root), **self.spec.env)
        env.update(
            {
                "RELAY_HOST": "127.0.0.1",
                "RELAY_PORT": str(self.port),
                "RELAY_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
                "RELAY_REALTIME_URL": self.upstream_url,
                "RELAY_SQLITE_PATH": str(self.workdir / f"{self.spec.name}.sqlite3"),
                "RELAY_SPOOL_PATH": str(self.workdir / f"{self.spec.name}.spool"),
            }
        )
        env.update(self.backend_urls)
        core = self.core
        self.proc = subprocess.Popen(
            self.spec.argv(self.port, self.upstream_url),
            cwd=self.spec.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr.open("wb"),
            # PLW1509: pin() only calls sched_setaffinity in the child, no lock another thread could hold
            preexec_fn=(lambda: pin(core)) if core is not None else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}: {self.stderr_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} did not listen on port {self.port} within {timeout:.0f} s")

    def stderr_tail(self, chars: int = 400) -> str:
        try:
            return self._stderr.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The relay's process and its descendants (``relay serve --workers N`` is N+1)."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(child) for child in (task / "children").read_text().split())
        return found

    def cpu_seconds(self) -> float:
        """The relay's CPU time so far, all threads of all its processes: nanoseconds from
        schedstat where the kernel keeps it (a short window of a cheap relay is below
        /proc/stat's 10 ms ticks), else ticks."""
        seconds = 0.0
        for pid in self.pids():
            try:
                ns = sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir())
                seconds += ns / 1e9
            except (OSError, ValueError, IndexError):
                user, kernel = _ticks(pid)
                seconds += (user + kernel) / CLK_TCK
        return seconds

    def cpu_ticks(self) -> tuple[int, int]:
        """(user, kernel) CPU time in clock ticks, all threads and processes: for the kernel's
        share of a window."""
        ticks = [_ticks(pid) for pid in self.pids()]
        return sum(u for u, _ in ticks), sum(k for _, k in ticks)

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        return total

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Options:
    calls: int = 100
    relays: tuple[str, ...] = ("relay", "relay-landed", "sample", "websockets", "node")
    main_s: float = 10.0
    step_s: float = 3.0
    settle_s: float = 1.0
    max_calls: int = 2000
    min_calls: int = 10
    refine: int = 3
    bound_ms: float = 5.0
    search: bool = True
    slow_ms: float = 5.0
    burn_us: float = 0.0
    check: bool = False
    relay_core: int | None = 0
    load_core: int | None = 1
    target_calls: int = 500  # relay is also measured here: its p99 target is set at this count (0: skip)
    burst: int = 1  # the echo upstream answers this many frames at once (a model's faster-than-real-time burst)

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        base: dict[str, Any] = dict(main_s=2.0, step_s=1.0, settle_s=0.5, max_calls=800, refine=1)
        base.update(overrides)
        return cls(**base)


def quantiles_ms(rtt_ns: np.ndarray) -> dict[str, float]:
    if rtt_ns.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan")}
    p = np.percentile(rtt_ns / 1e6, [50, 99, 99.9])
    return {"p50": float(p[0]), "p99": float(p[1]), "p999": float(p[2])}


class Floor:
    """The direct path's round-trip quantiles per call count, interpolated in between."""

    def __init__(self) -> None:
        self.points: dict[int, dict[str, float]] = {}
        self.cdf: dict[int, np.ndarray] = {}

    def add(self, calls: int, rtt_ns: np.ndarray) -> None:
        self.points[calls] = quantiles_ms(rtt_ns)
        self.cdf[calls] = np.percentile(rtt_ns / 1e6, CDF_QS) if rtt_ns.size else np.zeros(len(CDF_QS))

    def _interp(self, calls: int, values: Callable[[int], Any]) -> Any:
        ns = sorted(self.points)
        if calls <= ns[0]:
            return values(ns[0])
        if calls >= ns[-1]:
            return values(ns[-1])
        hi = next(n for n in ns if n >= calls)
        lo = max(n for n in ns if n <= calls)
        if hi == lo:
            return values(lo)
        w = (calls - lo) / (hi - lo)
        a, b = values(lo), values(hi)
        if isinstance(a, dict):
            return {k: a[k] * (1 - w) + b[k] * w for k in a}
        return a * (1 - w) + b * w

    def at(self, calls: int) -> dict[str, float]:
        point: dict[str, float] = self._interp(calls, lambda n: self.points[n])
        return point

    def cdf_at(self, calls: int) -> np.ndarray:
        cdf: np.ndarray = self._interp(calls, lambda n: self.cdf[n])
        return cdf


CDF_QS = np.concatenate([np.linspace(0, 99, 199), np.linspace(99, 99.99, 100)[1:]])


def figures(
    w: Window, floor: dict[str, float] | None, *, cpu_s: float | None, rss_kib: int | None, rss_idle_kib: int | None
) -> dict[str, Any]:
    """The per-window figures the report shows (every latency in ms).

    A window of an untagged target has its frames counted, not matched: its latency, loss,
    misrouting and duplicates are None, with ``untagged`` saying why."""
    rtt = quantiles_ms(w.rtt_ns) if w.tagged else None
    out: dict[str, Any] = {
        "calls": w.calls,
        "window_s": round(w.seconds, 3),
        "frames_sent": w.sent,
        "frames_back": int(w.rtt_ns.size) if w.tagged else w.received,
        "rtt_ms": rtt,
        "lost": w.lost,
        "misrouted": w.misrouted if w.tagged else None,
        "duplicates": w.duplicates if w.tagged else None,
        "foreign": w.foreign if w.tagged else None,
        "load_cpu": round(w.load_cpu, 3),
        "load_tick_lag_p99_ms": round(w.tick_lag_p99_ms, 2),
        "load_bound": w.load_cpu > LOAD_BOUND_CPU,
        "violation_count": w.violation_count,
        "violations": w.violations[:10],
    }
    if not w.tagged:
        out["untagged"] = UNTAGGED
        if floor is not None:
            out["added_ms"] = out["late"] = None
    elif floor is not None:
        assert rtt is not None
        out["added_ms"] = {k: max(0.0, rtt[k] - floor[k]) for k in rtt}
        out["late"] = int(((w.rtt_ns / 1e6 - floor["p50"]) > LATE_MS).sum())
    if cpu_s is not None:
        call_seconds = w.calls * w.seconds
        out["cpu_ms_per_call_s"] = cpu_s * 1000 / call_seconds if call_seconds else float("nan")
        out["cpu_util"] = cpu_s / w.seconds if w.seconds else float("nan")
        out["calls_per_core"] = 1000 / out["cpu_ms_per_call_s"] if out["cpu_ms_per_call_s"] else float("inf")
    if rss_kib is not None:
        out["rss_mib"] = round(rss_kib / 1024, 1)
        if rss_idle_kib is not None and w.calls:
            out["rss_kib_per_call"] = round((rss_kib - rss_idle_kib) / w.calls, 1)
    return out


def passes(fig: dict[str, Any], bound_ms: float) -> bool:
    """p99 added latency under the bound with nothing lost or misrouted (never, when unmeasurable)."""
    if fig["added_ms"] is None:
        return False
    return bool(fig["added_ms"]["p99"] < bound_ms and fig["lost"] == 0 and fig["misrouted"] == 0)


class Harness:
    def __init__(self, options: Options, workdir: Path | None = None) -> None:
        self.o = options
        self.floor = Floor()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.report: dict[str, Any] = {}

    async def run(self) -> dict[str, Any]:
        o = self.o
        pin(o.load_core)
        started = time.time()
        specs = relay_specs(slow_ms=o.slow_ms, burn_us=o.burn_us)
        async with EchoUpstream(burst=o.burst) as upstream:
            direct = await self._direct(upstream)
            relays: dict[str, Any] = {}
            for name in o.relays:
                spec = specs[name]
                reason = await unavailable(spec)
                if reason:
                    log.warning("%s: skipped: %s", name, reason)
                    relays[name] = {"title": spec.title, "skipped": reason}
                    continue
                log.info("%s: measuring", name)
                try:
                    relays[name] = await self._relay(spec, upstream)
                except Exception as exc:  # one broken relay does not end the run
                    log.exception("%s failed", name)
                    relays[name] = {"title": spec.title, "error": f"{type(exc).__name__}: {exc}"}
            leaked = upstream.stats.sessions_open
        self.report = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "options": {k: v for k, v in vars(o).items()},
            "machine": machine(),
            "direct": direct,
            "relays": relays,
            "transcoding": transcoding_cost(relays),
            "upstream_sessions_left_open": leaked,
        }
        return self.report

    async def _direct(self, upstream: EchoUpstream) -> dict[str, Any]:
        """The floor: the load side talking to the echo upstream with no relay in between."""
        o = self.o
        ladder = [max(o.min_calls, o.calls // 2), o.calls]
        if o.search:
            n = o.calls * 2
            while n <= o.max_calls:
                ladder.append(n)
                n *= 2
        if "relay" in o.relays and o.target_calls:
            ladder.append(o.target_calls)  # the floor where relay's latency target is set
        run = LoadRun(Target("direct", upstream.direct_url), check=o.check)
        steps = []
        main = None
        try:
            for n in sorted(set(ladder)):
                await run.set_calls(n)
                await asyncio.sleep(o.settle_s)
                w = await run.window(o.main_s if n == o.calls else o.step_s)
                self.floor.add(n, w.rtt_ns)
                fig = figures(w, None, cpu_s=None, rss_kib=None, rss_idle_kib=None)
                fig["cdf_ms"] = self.floor.cdf[n].round(4).tolist()
                steps.append(fig)
                if n == o.calls:
                    main = fig
                log.info(
                    "direct @%d: p50 %.2f p99 %.2f ms, load core %.0f%%",
                    n,
                    fig["rtt_ms"]["p50"],
                    fig["rtt_ms"]["p99"],
                    100 * w.load_cpu,
                )
                if fig["load_bound"]:
                    break
        finally:
            await run.close()
        capacity = max((s["calls"] for s in steps if not s["load_bound"]), default=0)
        return {"title": "direct (no relay: the floor)", "main": main, "steps": steps, "load_side_capacity": capacity}

    @staticmethod
    async def _scrape(proc: RelayProcess, every_s: float) -> None:
        """Read the relay's /metrics every ``every_s``, as Prometheus would (its CPU is the relay's)."""
        from relay.sim.caller import http_get

        url = f"http://127.0.0.1:{proc.port}/metrics"
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(OSError):
                await http_get(url)

    async def _relay(self, spec: RelaySpec, upstream: EchoUpstream) -> dict[str, Any]:
        o = self.o
        proc = RelayProcess(spec, upstream.url, o.relay_core, self.workdir, backend_urls=backend_urls(upstream))
        before = dataclasses.replace(upstream.stats)  # what the echo had seen: this relay's is the rest
        await proc.start()
        run = LoadRun(proc.target, check=o.check)
        steps: dict[int, dict[str, Any]] = {}
        scraper = asyncio.create_task(self._scrape(proc, spec.scrape_s)) if spec.scrape_s else None
        try:
            rss_idle = proc.rss_kib()  # listening, no call yet

            async def measure(n: int, seconds: float) -> dict[str, Any]:
                # Every step on calls all started afresh: relay paces its audio out in real time, so
                # a backlog an overloaded step left in a call's playout would stay in the next.
                await run.set_calls(0)
                try:
                    await run.set_calls(n)
                except WireError as exc:
                    # The relay could not take this many calls: a failed step, not a failed relay
                    # (unless it is the main one).
                    if n == o.calls:
                        raise
                    log.info("%s @%d: %s", spec.name, n, exc)
                    steps[n] = {"calls": n, "passes": False, "load_bound": False, "setup_failed": str(exc)}
                    return steps[n]
                await run.drain()
                await asyncio.sleep(o.settle_s)
                marks: dict[str, Any] = {}

                def mark(key: str) -> None:
                    marks[key], marks[key + "_ticks"] = proc.cpu_seconds(), proc.cpu_ticks()

                w = await run.window(seconds, on_start=lambda: mark("a"), on_end=lambda: mark("b"))
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise RuntimeError(f"{spec.name} died: {proc.stderr_tail()}")
                fig = figures(
                    w, self.floor.at(n), cpu_s=marks["b"] - marks["a"], rss_kib=proc.rss_kib(), rss_idle_kib=rss_idle
                )
                if w.tagged:
                    fig["cdf_ms"] = (
                        (np.percentile(w.rtt_ns / 1e6, CDF_QS) if w.rtt_ns.size else np.zeros(len(CDF_QS)))
                        .round(4)
                        .tolist()
                    )
                    fig["floor_cdf_ms"] = self.floor.cdf_at(n).round(4).tolist()
                user = marks["b_ticks"][0] - marks["a_ticks"][0]
                kernel = marks["b_ticks"][1] - marks["a_ticks"][1]
                fig["kernel_share"] = round(kernel / (user + kernel), 3) if user + kernel >= 20 else None
                fig["passes"] = passes(fig, o.bound_ms)
                steps[n] = fig
                log.info(
                    "%s @%d: %s, %.2f cpu ms/call-s%s",
                    spec.name,
                    n,
                    _latency_line(fig),
                    fig["cpu_ms_per_call_s"],
                    " (load-bound)" if fig["load_bound"] else "",
                )
                return fig

            main = await measure(o.calls, o.main_s)
            # The search is on latency: a relay whose latency cannot be measured has none.
            search = await self._search(measure, main) if o.search and spec.tagged else None
            if spec.name == "relay" and o.target_calls and o.target_calls not in steps:
                await measure(o.target_calls, o.step_s)  # relay's latency target is set at this count
        finally:
            if scraper is not None:
                scraper.cancel()
            await run.close()  # every call hung up; stop() lets the relay drain what is left
            await proc.stop()
        return {
            "title": spec.title,
            "main": main,
            "steps": [steps[n] for n in sorted(steps)],
            "search": search,
            "setup_errors": run.setup_errors[:5],
            "stderr_tail": proc.stderr_tail(),
            # Which protocol the relay's calls spoke to the echo upstream (GPT-Live, Deepgram and
            # Gemini Live sessions are among all of them): a relay on the wrong backend would echo
            # just the same.
            "upstream_sessions": upstream.stats.sessions_opened - before.sessions_opened,
            "upstream_live_sessions": upstream.stats.live_started - before.live_started,
            "upstream_deepgram_sessions": upstream.stats.deepgram_started - before.deepgram_started,
            "upstream_gemini_sessions": upstream.stats.gemini_started - before.gemini_started,
        }

    async def _search(self, measure: Callable[[int, float], Any], main: dict[str, Any]) -> dict[str, Any]:
        """The largest call count whose p99 added latency stays under the bound: up by doubling
        (or down by halving), then ``refine`` bisection steps."""
        o = self.o
        lo, hi, load_bound = 0, 0, False
        n = o.calls
        if main["passes"]:
            lo = n
            while n * 2 <= o.max_calls:
                n *= 2
                fig = await measure(n, o.step_s)
                if fig["load_bound"]:
                    load_bound = True
                    break
                if not fig["passes"]:
                    hi = n
                    break
                lo = n
        else:
            hi = n
            while n // 2 >= o.min_calls:
                n //= 2
                fig = await measure(n, o.step_s)
                if fig["passes"]:
                    lo = n
                    break
                hi = n
        for _ in range(o.refine):
            if not (lo and hi) or hi - lo <= max(10, lo // 10):
                break
            mid = (lo + hi) // 2
            if mid // 10 * 10 > lo:  # a round number when one lies strictly inside the bracket
                mid = mid // 10 * 10
            fig = await measure(mid, o.step_s)
            if fig["passes"]:
                lo = mid
            else:
                hi = mid
        return {
            "max_calls": lo,
            "first_failing": hi or None,
            "load_bound": load_bound,
            "bound_ms": o.bound_ms,
            "at_most": o.max_calls,
        }


def transcoding_cost(relays: dict[str, Any]) -> dict[str, Any] | None:
    """What transcoding costs per call-second: the transcoded relay's CPU minus a passthrough
    one's, both measured at the same calls in this run (None unless both were)."""
    transcoded = (relays.get(TRANSCODED) or {}).get("main")
    reference = next((name for name in PASSTHROUGH if (relays.get(name) or {}).get("main")), None)
    if transcoded is None or reference is None:
        return None
    passthrough = relays[reference]["main"]
    return {
        "transcoded": TRANSCODED,
        "passthrough": reference,
        "calls": transcoded["calls"],
        "transcoded_cpu_ms_per_call_s": transcoded["cpu_ms_per_call_s"],
        "passthrough_cpu_ms_per_call_s": passthrough["cpu_ms_per_call_s"],
        "extra_cpu_ms_per_call_s": transcoded["cpu_ms_per_call_s"] - passthrough["cpu_ms_per_call_s"],
    }


def _latency_line(fig: dict[str, Any]) -> str:
    """A window's latency and loss for the log, or what came back when they cannot be measured."""
    if fig["added_ms"] is None:
        return f"{fig['frames_back']} of {fig['frames_sent']} frames back by count ({UNTAGGED})"
    added = fig["added_ms"]
    return f"added p50 {added['p50']:.2f} p99 {added['p99']:.2f} ms, lost {fig['lost']}"


def machine() -> dict[str, Any]:
    import platform

    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = shutil.which("node")
    node_version = None
    if node:
        node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "node": node_version,
        "platform": platform.platform(),
    }
