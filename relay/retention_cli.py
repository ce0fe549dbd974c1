"""``relay retention set|show|run``: how long a tenant's records are kept, and deleting what is
past it now, on either store (the embedded store's tenant's retention is the environment's)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from relay.config import Settings
from relay.errors import InputError
from relay.retention import Report, Retention, SQLitePurger, purge
from relay.store import DEFAULT_TENANT


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    retention = commands.add_parser("retention", help="how long a tenant's turns, calls and usage are kept")
    actions = retention.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="a tenant's retention (Postgres; the embedded store: RELAY_RETENTION_DAYS)")
    set_.add_argument("tenant_id")
    set_.add_argument("--days", type=int, help="turns and calls, in days (none given: kept for ever)")
    set_.add_argument("--usage-days", type=int, help="usage, in days (default: as long as the calls)")
    run = actions.add_parser("run", help="delete what is past every tenant's retention now, in bounded batches")
    run.add_argument("--tenant", help="one tenant's only")


async def run(args: argparse.Namespace, settings: Settings) -> None:
    if not settings.database_url:
        if args.action == "set":
            raise InputError("the embedded store's retention is RELAY_RETENTION_DAYS and RELAY_USAGE_RETENTION_DAYS")
        if args.tenant not in (None, DEFAULT_TENANT):
            raise InputError(f"no tenant {args.tenant[:100]!r} (the embedded store has one: {DEFAULT_TENANT!r})")
        from relay.store import SQLiteStore

        store = SQLiteStore(settings.sqlite_path, dead_letter_path=settings.dead_letter_path)
        await store.open()  # the file, made or brought up to date
        await store.close()
        _print(await purge(SQLitePurger(settings.sqlite_path), embedded_policies(settings), time.time()))
        return
    from relay import pg
    from relay.pg.retention import PostgresPurger

    async with pg.Directory.connect(settings.database_url) as directory:
        purger = PostgresPurger(directory.pool)
        if args.action == "set":
            retention = Retention(args.days, args.usage_days)
            if retention.problems():
                raise InputError("; ".join(retention.problems()))
            if not await purger.set_policy(args.tenant_id, retention):
                raise InputError(f"no tenant {args.tenant_id[:100]!r} (relay tenants list shows them)")
            print(f"tenant {args.tenant_id}: turns and calls kept {args.days or 'for ever'} day(s)")
            return
        if args.tenant is not None:
            await directory.require_tenant(args.tenant)
        _print(await purge(purger, await purger.policies(args.tenant), time.time()))


def embedded_policies(settings: Settings) -> dict[str, Retention]:
    """The embedded store's one tenant's retention, if it has one (the environment's)."""
    retention = settings.retention
    return {DEFAULT_TENANT: retention} if retention.cutoffs(0.0) else {}


def _print(report: Report) -> None:
    counts = ", ".join(f"{table} {n}" for table, n in report.deleted.items())
    print(f"deleted: {counts} ({report.batches} batch(es), the longest {report.longest_batch_s * 1000:.0f} ms)")
