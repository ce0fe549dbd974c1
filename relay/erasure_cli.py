"""``relay erase``: erase one caller from a tenant's records (``relay.erasure``), on either store;
``relay erase --list``: the erasures done for a tenant (counts only)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from relay.config import Settings
from relay.erasure import Erased, SQLiteEraser, erase
from relay.errors import InputError, SpoolError
from relay.store import DEFAULT_TENANT


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "erase", help="erase one caller's calls, turns and usage everywhere relay keeps them, on request"
    )
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help=f"the tenant (default {DEFAULT_TENANT!r})")
    parser.add_argument("--caller", help="the caller's number, E.164 (+15551234567)")
    parser.add_argument("--list", action="store_true", help="list the tenant's erasures instead (when, how many)")


async def run(args: argparse.Namespace, settings: Settings) -> None:
    if not args.list and not args.caller:
        raise InputError("relay erase needs --caller +15551234567 (or --list)")
    if not settings.database_url:
        await _embedded(args, settings)
        return
    await _postgres(args, settings)


async def _embedded(args: argparse.Namespace, settings: Settings) -> None:
    if args.tenant != DEFAULT_TENANT:
        raise InputError(f"no tenant {args.tenant[:100]!r} (the embedded store has one: {DEFAULT_TENANT!r})")
    from relay.store import SQLiteStore

    store = SQLiteStore(settings.sqlite_path, dead_letter_path=settings.dead_letter_path)
    await store.open()  # the file, made or brought up to date
    eraser = SQLiteEraser(settings.sqlite_path)
    try:
        if args.list:
            _print_list(await eraser.erasures(args.tenant))
            return
        erased = await erase(
            eraser, args.tenant, args.caller, by="cli", dead_letter_path=Path(settings.dead_letter_path), store=store
        )
    finally:
        await store.close()
    _print(erased, spool_held=False)


async def _postgres(args: argparse.Namespace, settings: Settings) -> None:
    from relay import pg
    from relay.pg.erasure import PostgresEraser

    async with pg.Directory.connect(settings.database_url) as directory:
        await directory.require_tenant(args.tenant)
        eraser = PostgresEraser(directory.pool)
        if args.list:
            _print_list(await eraser.erasures(args.tenant))
            return
        store = pg.PostgresStore(
            settings.database_url, spool_path=settings.spool_path, dead_letter_path=settings.dead_letter_path
        )
        try:
            await store.open()  # (replays a spool no relay holds first: its records are erased below)
        except SpoolError:
            # A relay running here holds the spool: what it still has spooled is erased only
            # through it (its API), so say so rather than claim it is done.
            erased = await erase(
                eraser, args.tenant, args.caller, by="cli", dead_letter_path=Path(settings.dead_letter_path)
            )
            _print(erased, spool_held=True)
            return
        try:
            erased = await erase(
                eraser, args.tenant, args.caller, by="cli", dead_letter_path=store.dead_letter_path, store=store
            )
        finally:
            await store.close()
        _print(erased, spool_held=False)


def _print(erased: Erased, *, spool_held: bool) -> None:
    counts = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in erased.as_dict().items())
    print(f"erased: {counts}")
    if spool_held:
        print(
            "the spool is held by a relay running here: records of this caller still spooled in it are not "
            "erased; erase through that relay (POST /v1/erasures), or again once it is stopped"
        )


def _print_list(rows: list[dict[str, object]]) -> None:
    if not rows:
        print("no erasures")
    for row in rows:
        at = datetime.datetime.fromtimestamp(float(str(row["erased_at"])), datetime.UTC).isoformat(timespec="seconds")
        counts = ", ".join(f"{k} {row[k]}" for k in ("calls", "turns", "usage", "jobs", "spooled", "dead_letters"))
        print(f"{at}  by {row['requested_by']}: {counts}")
