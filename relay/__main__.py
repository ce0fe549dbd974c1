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


async def serve(settings: Settings) -> None:
    from relay.server import Relay, RelayServer
    from relay.store import SQLiteStore

    store = SQLiteStore(settings.sqlite_path)
    await store.open()
    server = RelayServer(Relay(settings, store))
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
    args = parser.parse_args(argv)

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
