"""The ``relay`` command: ``serve`` runs the relay, ``demo`` runs simulated calls end to end.

Configuration comes from the environment (``relay.config.Settings``); the command line only
picks what to run and, for the demo, how many calls.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson
import uvloop

from relay import __version__, fastpath, logs
from relay.config import Settings
from relay.errors import ConfigError

log = logging.getLogger("relay")


# How long another thread may run Python before the event loop gets the GIL back. CPython's
# default, 5 ms, is a quarter of a frame: whenever a helper thread (the embedded store's
# writer, a to_thread lookup) runs Python while the loop waits in epoll, the loop's next read
# could wait that long before it may run, and every call's next frame with it.
SWITCH_INTERVAL_S = 0.0005


async def serve(settings: Settings) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    from relay.server import Relay, RelayServer
    from relay.store import SQLiteStore, Store
    from relay.admission import Admission
    from relay.tenants import CachedDirectory, Directory, SingleTenant

    store: Store
    directory: Directory
    if settings.database_url:
        import asyncpg

        from relay.admission import PostgresAdmission
        from relay.pgstore import PostgresStore, migrate

        try:
            await migrate(settings.database_url)  # idempotent; a fresh database needs no extra step
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            # Calls are still served: records wait in the spool until Postgres is back.
            log.error("Postgres unreachable at start (%s); records spool until it is back", type(exc).__name__)
        pg = PostgresStore(settings.database_url, spool_path=settings.spool_path)
        await pg.open()  # replays a spool left by an earlier run first
        store, directory = pg, CachedDirectory(pg.directory.lookup_number)
        resolve_agent = pg.directory.agent_profile
        admission: Admission | None = PostgresAdmission(pg.pool)
        token_source = pg.directory.auth_tokens
    else:
        store, directory, resolve_agent = SQLiteStore(settings.sqlite_path), SingleTenant(), None
        admission = None  # the relay counts its own calls (RELAY_MAX_CONCURRENT_CALLS)
        token_source = None
        await store.open()
    server = RelayServer(Relay(settings, store, directory=directory, resolve_agent=resolve_agent,
                               admission=admission, token_source=token_source))
    await server.start()
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: waiting for %d live call(s)", len(server.relay.sessions))
    await server.close(drain_timeout=30.0)
    await store.close()


def _check_fastpath(settings: Settings) -> None:
    if fastpath.IMPLEMENTATION != "cython" and not settings.allow_python_fastpath:
        raise ConfigError(
            [
                "the compiled fast path (relay._fastpath) is not built: run `pip install -e .` "
                "(needs a C compiler), or set RELAY_ALLOW_PYTHON_FASTPATH=1 to run the slow reference"
            ]
        )


async def admin(args: argparse.Namespace, settings: Settings) -> int:
    """The store commands: migrate, tenants, numbers (Postgres); calls and turns (either store)."""
    if not settings.database_url:
        if args.command in ("migrate", "tenants", "numbers"):
            print(f"relay {args.command}: needs DATABASE_URL (the embedded store is single-tenant)", file=sys.stderr)
            return 2
        from relay.store import SQLiteStore

        store = SQLiteStore(settings.sqlite_path)
        await store.open()
        try:
            if args.command == "calls":
                rows: list[dict[str, object]] = list(await store.calls(args.limit))
            else:
                rows = [_turn_row(t) for t in await store.turns(args.call)] if args.call else []
        finally:
            await store.close()
        _print_rows(rows)
        return 0

    from relay import pgstore

    if args.command == "migrate":
        applied = await pgstore.migrate(settings.database_url)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    async with pgstore.Directory.connect(settings.database_url) as directory:
        if args.command == "tenants" and args.action == "add":
            await directory.add_tenant(args.tenant_id, args.name or args.tenant_id)
            if args.max_calls is not None or args.calls_per_minute is not None:
                await directory.set_limits(args.tenant_id, args.max_calls, args.calls_per_minute)
            print(f"tenant {args.tenant_id} added")
        elif args.command == "tenants" and args.action == "set-token":
            # Read from stdin, never the command line (shell history, ps).
            token = sys.stdin.readline().strip()
            await directory.set_auth_token(args.tenant_id, token or None)
            print(f"tenant {args.tenant_id}: Twilio auth token {'set' if token else 'removed'}")
        elif args.command == "tenants":
            _print_rows(await directory.list_tenants())
        elif args.command == "numbers":
            await directory.add_number(args.e164, args.tenant, args.agent)
            print(f"{args.e164} -> tenant {args.tenant}, agent {args.agent}")
        elif args.command == "calls":
            # Read as the tenant, through the role row-level security applies to.
            _print_rows(await directory.tenant_calls(args.tenant, args.limit))
        elif args.command == "turns":
            _print_rows([_turn_row(t) for t in await directory.tenant_turns(args.tenant, args.call)])
    return 0


def _turn_row(turn: object) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(turn)  # type: ignore[call-overload]


def _print_rows(rows: list[dict[str, object]]) -> None:
    sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the relay (configured by the environment)")
    demo = commands.add_parser("demo", help="run simulated calls end to end on loopback")
    demo.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    demo.add_argument("--record", metavar="FILE.wav", help="write what the first caller heard")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument("--db", metavar="PATH", help="SQLite file for the turns (default: a new temp file)")
    demo.add_argument("--think-ms", type=int, default=300, help="the simulated agent's think time")
    commands.add_parser("migrate", help="create or upgrade the Postgres schema (DATABASE_URL)")
    tenants = commands.add_parser("tenants", help="add or list tenants (Postgres)")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    add_tenant = tenant_actions.add_parser("add", help="add a tenant")
    add_tenant.add_argument("tenant_id")
    add_tenant.add_argument("--name", default="")
    add_tenant.add_argument("--max-calls", type=int, help="concurrent calls admitted (default: no limit)")
    add_tenant.add_argument("--calls-per-minute", type=int, help="calls admitted per minute (default: no limit)")
    tenant_actions.add_parser("list", help="list tenants")
    set_token = tenant_actions.add_parser(
        "set-token", help="the tenant's Twilio (sub)account auth token, read from stdin (empty: remove)")
    set_token.add_argument("tenant_id")
    numbers = commands.add_parser("numbers", help="route a phone number to a tenant (Postgres)")
    number_actions = numbers.add_subparsers(dest="action", required=True)
    add_number = number_actions.add_parser("add", help="route an E.164 number to a tenant and agent")
    add_number.add_argument("e164")
    add_number.add_argument("--tenant", required=True)
    add_number.add_argument("--agent", default="default")
    calls = commands.add_parser("calls", help="recent calls of a tenant, read through row-level security")
    calls.add_argument("--tenant", default="default")
    calls.add_argument("--limit", type=int, default=20)
    turns = commands.add_parser("turns", help="stored turns of a tenant's calls, read through row-level security")
    turns.add_argument("--tenant", default="default")
    turns.add_argument("--call", help="one call's turns (default: all of the tenant's)")
    args = parser.parse_args(argv)

    if args.command in ("migrate", "tenants", "numbers", "calls", "turns"):
        try:
            settings = Settings.from_env(serve=False)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
        logs.configure("WARNING")
        return uvloop.run(admin(args, settings))

    if args.command == "serve":
        try:
            settings = Settings.from_env()
            _check_fastpath(settings)
        except ConfigError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
        logs.configure(settings.log_level)
        uvloop.run(serve(settings))
        return 0

    from relay.demo import format_table, run_demo
    from relay.sim.agent import AgentConfig

    logs.configure("WARNING")
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    summary = uvloop.run(
        run_demo(args.calls, record=args.record, db_path=args.db, agent_config=AgentConfig(think_ms=args.think_ms))
    )
    if args.json:
        brief = {k: v for k, v in summary.items() if k != "call_details"}
        sys.stdout.write(orjson.dumps(brief, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(summary))
    ok = summary["violations"] == 0 and not summary["errors"] and summary["calls_completed"] == summary["calls"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
