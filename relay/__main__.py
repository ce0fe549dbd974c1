"""The ``relay`` command: ``serve`` runs the relay, ``demo`` runs simulated calls end to end.

Configuration comes from the environment (``relay.config.Settings``); the command line only
picks what to run and, for the demo, how many calls.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn

import orjson
import uvloop

from relay import __version__, admin, fastpath, logs, models, retention_cli, tracing
from relay.config import Settings
from relay.errors import ConfigError
from relay.routing import Peers
from relay.workers import Worker, supervise

if TYPE_CHECKING:
    from relay.erasure import Eraser
    from relay.retention import Purger, Retention

log = logging.getLogger("relay")


# How long another thread may run Python before the event loop gets the GIL back. CPython's
# default, 5 ms, is a quarter of a frame: whenever a helper thread (the embedded store's
# writer, a to_thread lookup) runs Python while the loop waits in epoll, the loop's next read
# could wait that long before it may run, and every call's next frame with it.
SWITCH_INTERVAL_S = 0.0005


async def serve(settings: Settings, worker: Worker | None = None) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if worker is not None:  # one of several: files of its own
        worker.follow_supervisor()
        settings = dataclasses.replace(
            settings,
            spool_path=worker.suffix(settings.spool_path),
            dead_letter_path=worker.suffix(settings.dead_letter_path),
        )
    from relay.admission import Admission
    from relay.agents import DEFAULT_AGENT
    from relay.erasure import SQLiteEraser
    from relay.outbound import wiring
    from relay.redaction import Redaction
    from relay.retention import SQLitePurger
    from relay.server import Relay, RelayServer
    from relay.store import DEFAULT_TENANT, SQLiteStore, Store
    from relay.tenants import CachedDirectory, Directory, SingleTenant
    from relay.tools.store import SQLiteToolStore, ToolStore

    tracing.configure()  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set (relay[otel])
    store: Store
    directory: Directory
    models_in_use = [
        (settings.realtime_model, "RELAY_REALTIME_MODEL"),
        (settings.transcription_model, "RELAY_TRANSCRIPTION_MODEL"),
    ]
    if settings.database_url:
        from relay.pg import CONNECT_ERRORS, PostgresAdmission, PostgresStore, migrate
        from relay.pg.jobs import postgres_jobs

        try:
            await migrate(settings.database_url)  # idempotent; a fresh database needs no extra step
        except CONNECT_ERRORS as exc:
            # Calls are still served: records wait in the spool until Postgres is back.
            log.error("Postgres unreachable at start (%s); records spool until it is back", type(exc).__name__)
        pg = PostgresStore(
            settings.database_url, spool_path=settings.spool_path, dead_letter_path=settings.dead_letter_path
        )
        await pg.open()  # replays a spool left by an earlier run first
        store, directory = pg, CachedDirectory(pg.directory.lookup_number)
        resolve_agent = pg.directory.get_agent
        admission: Admission | None = PostgresAdmission(pg.pool)
        from relay.pg.cluster import PostgresPeers

        peers: Peers | None = PostgresPeers(
            settings.database_url,
            pg.pool,
            dead_after_s=settings.peer_timeout_s,
            heartbeat_s=settings.peer_timeout_s / 5,
        )
        credential_source = pg.directory.credentials
        from relay.pg.tools import PostgresToolStore

        tool_store: ToolStore = PostgresToolStore(pg.pool)
        from relay.pg.retention import PostgresPurger

        pg_purger = PostgresPurger(pg.pool)
        from relay.pg.erasure import PostgresEraser

        eraser: Eraser = PostgresEraser(pg.pool)
        purger: Purger = pg_purger
        policies: Callable[[], Awaitable[dict[str, Retention]]] = pg_purger.policies
        redactions: Callable[[str], Awaitable[Redaction | None]] | None = pg.directory.redaction
        backend_keys: Callable[[str, str], Awaitable[str | None]] | None = pg.directory.backend_key
        jobs = postgres_jobs(
            pg.pool, pg.directory, account_sid=settings.twilio_account_sid, from_number=settings.outbound_from
        )
        try:
            models_in_use += await pg.directory.models_in_use()
        except Exception as exc:  # noqa: BLE001 - the database is down: its agents are checked at the next start
            log.warning("could not read the agents' models (%s)", type(exc).__name__)
    else:
        store = SQLiteStore(settings.sqlite_path, dead_letter_path=settings.dead_letter_path)
        directory, resolve_agent = SingleTenant(), None
        admission = None  # the relay counts its own calls (RELAY_MAX_CONCURRENT_CALLS)
        peers = None  # alone: every call it is asked about is its own or nobody's
        credential_source = None
        tool_store = SQLiteToolStore(settings.sqlite_path, DEFAULT_TENANT, DEFAULT_AGENT)
        redactions = None  # the environment's (Settings.redaction)
        backend_keys = None  # the deployment's keys only
        purger = SQLitePurger(settings.sqlite_path)
        eraser = SQLiteEraser(settings.sqlite_path)

        async def embedded() -> dict[str, Retention]:
            return retention_cli.embedded_policies(settings)

        policies = embedded

        await store.open()
        jobs = await wiring.embedded_jobs(settings)
    for warning in models.shutdown_warnings(models_in_use):
        log.warning(warning)
    server = RelayServer(
        Relay(
            settings,
            store,
            directory=directory,
            resolve_agent=resolve_agent,
            admission=admission,
            credential_source=credential_source,
            worker=worker,
            peers=peers,
            tool_store=tool_store,
            redactions=redactions,
            backend_keys=backend_keys,
        )
    )
    server.relay.outbound = wiring.placing(settings, server.relay, jobs, server.relay.instance_id)
    server.relay.eraser = eraser
    if peers is not None:
        # The other relays on this database: requests about a call reach the relay holding it.
        await peers.start(server.relay.answer_peer)
    await server.start()
    server.relay.outbound.start()
    retention = (
        asyncio.create_task(_keep_retention(settings, purger, policies)) if settings.retention_interval_s else None
    )
    log.info(
        "relay %s listening on %s:%d; Twilio streams to %s; fastpath=%s; store=%s %s",
        __version__,
        settings.host,
        server.port,
        settings.stream_url,
        fastpath.IMPLEMENTATION,
        store.kind,
        store.location,
    )
    if settings.skip_twilio_signature:
        log.warning(
            "X-Twilio-Signature validation is OFF (RELAY_INSECURE_SKIP_TWILIO_SIGNATURE=1): anyone who finds "
            "this server can place it in a call. Development only."
        )
    # The first SIGTERM (or `relay drain`) drains: not ready, calls go on, then leave or are
    # handed over; a second signal ends every call at once.
    relay, loop = server.relay, asyncio.get_running_loop()
    now = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            relay.drain_requests.put_nowait(False)
        else:
            now.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # `relay drain --handoff`, passed on by the supervisor of several workers.
    loop.add_signal_handler(signal.SIGUSR2, relay.drain_requests.put_nowait, True)
    if await relay.drain_requests.get():
        relay.drain_requests.put_nowait(True)  # `relay drain --handoff`: the drain hands over at once
    drain = asyncio.create_task(server.drain(settings.drain_timeout_s))
    at_once = asyncio.create_task(now.wait())
    await asyncio.wait({drain, at_once}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.warning("second signal: ending %d live call(s) now", len(relay.sessions))
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await server.close(drain_timeout=0.0)
    at_once.cancel()
    if retention is not None:
        retention.cancel()
    await server.relay.outbound.close()
    if peers is not None:
        await peers.close()
    log.info("every call has left; closing the store")
    await store.close(timeout=30.0)


async def _keep_retention(
    settings: Settings, purger: Purger, policies: Callable[[], Awaitable[dict[str, Retention]]]
) -> None:
    """Every RELAY_RETENTION_INTERVAL_S, delete what is past each tenant's retention (in bounded
    batches, beside the calls being stored)."""
    from relay.retention import purge

    while True:
        await asyncio.sleep(settings.retention_interval_s)
        try:
            report = await purge(purger, await policies(), time.time(), pause_s=0.01)
        except Exception as exc:  # noqa: BLE001 - the store is away: the next round catches up
            log.warning("retention: deleting old records failed (%s)", type(exc).__name__)
            continue
        if any(report.deleted.values()):
            log.info("retention: deleted %s in %d batch(es)", report.deleted, report.batches)


def drain(settings: Settings, handoff: bool) -> int:
    """``relay drain``: ask the relay serving on this machine's RELAY_PORT to drain."""
    url = f"http://127.0.0.1:{settings.port}/drain" + ("?handoff=1" if handoff else "")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10):
            pass
    except urllib.error.HTTPError as exc:
        print(f"relay drain: the relay answered {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relay drain: no relay answering on 127.0.0.1:{settings.port} ({exc})", file=sys.stderr)
        return 1
    print("draining" + (": handing every call to another relay" if handoff else ""))
    return 0


def _check_fastpath(settings: Settings) -> None:
    if fastpath.IMPLEMENTATION != "cython" and not settings.allow_python_fastpath:
        raise ConfigError(
            [
                "the compiled fast path (relay._fastpath) is not built: run `pip install -e .` "
                "(needs a C compiler), or set RELAY_ALLOW_PYTHON_FASTPATH=1 to run the slow reference"
            ]
        )


def _workers(text: str) -> int:
    if text == "auto":
        return len(os.sched_getaffinity(0))
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number of workers (or auto)") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"{count} workers is outside 1..256")
    return count


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like every other input error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="relay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the relay (configured by the environment)")
    serve_cmd.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="relay processes on the port, supervised (default 1; auto: one per core)",
    )
    drain_cmd = commands.add_parser("drain", help="drain the relay serving on this machine (RELAY_PORT)")
    drain_cmd.add_argument(
        "--handoff", action="store_true", help="hand every live call to another relay now, through Twilio"
    )
    demo = commands.add_parser("demo", help="run simulated calls end to end on loopback")
    demo.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    demo.add_argument("--record", metavar="FILE.wav", help="write what the first caller heard")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument("--metrics", action="store_true", help="print the relay's /metrics scrape at the end")
    demo.add_argument("--db", metavar="PATH", help="SQLite file for the turns (default: a new temp file)")
    demo.add_argument("--think-ms", type=int, default=300, help="the simulated agent's think time")
    demo.add_argument(
        "--backend",
        choices=("openai-realtime", "openai-live", "gemini-live", "deepgram"),
        default="openai-realtime",
        help="the speech backend the calls run on (simulated): OpenAI Realtime (default), GPT-Live, "
        "Gemini Live or Deepgram's Voice Agent",
    )
    demo.add_argument(
        "--outbound",
        action="store_true",
        help="calls relay places instead: a campaign to a simulated person, voicemail, no answer and busy line",
    )
    admin.add_commands(commands)
    args = parser.parse_args(argv)

    if args.command in admin.COMMANDS:
        try:
            settings = Settings.from_env(serve=False)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
        logs.configure("WARNING")
        return uvloop.run(admin.run(args, settings))

    if args.command == "drain":
        try:
            settings = Settings.from_env(serve=False)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
        return drain(settings, args.handoff)

    if args.command == "serve":
        try:
            settings = Settings.from_env()
            _check_fastpath(settings)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
        logs.configure(settings.log_level, settings.log_format or None)
        worker = Worker.from_env()
        if worker is None and args.workers > 1:
            return uvloop.run(supervise(args.workers, []))
        uvloop.run(serve(settings, worker))
        return 0

    if args.outbound:
        from relay.demo_outbound import format_outbound, run_outbound_demo

        logs.configure("WARNING")
        outcome = uvloop.run(run_outbound_demo(args.db))
        if args.json:
            sys.stdout.write(orjson.dumps(outcome, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(format_outbound(outcome))
        return 0 if outcome["ok"] else 1

    from relay.demo import format_table, run_demo, simulator

    logs.configure("WARNING")
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    summary = uvloop.run(
        run_demo(
            args.calls,
            record=args.record,
            db_path=args.db,
            agent_config=simulator(args.backend, think_ms=args.think_ms).config,
            backend=args.backend,
        )
    )
    if args.json:
        brief = {k: v for k, v in summary.items() if k not in ("call_details", "metrics")}
        sys.stdout.write(orjson.dumps(brief, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(summary))
    if args.metrics:
        print(summary["metrics"], end="")
    ok = summary["violations"] == 0 and not summary["errors"] and summary["calls_completed"] == summary["calls"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
