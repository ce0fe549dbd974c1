"""The Postgres schema: the bundled migrations (``relay/pg/migrations/NNNN_name.sql``) and
``migrate``, which applies the ones a database lacks (``relay migrate``, and ``relay serve`` at start).
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import asyncpg

from relay.pg.db import redact

log = logging.getLogger("relay.pg.schema")

# Key of the transaction-scoped advisory lock that serialises relays migrating together.
_MIGRATION_LOCK = 0x72656C6179  # b"relay"
_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     TEXT PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migrations() -> list[tuple[str, str]]:
    """Every bundled migration as ``(version, sql)``, in order: ``0001_schema.sql`` is "0001"."""
    found = []
    for entry in resources.files("relay.pg.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((match[1], entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def migrate(dsn: str, *, supabase: bool = False) -> list[str]:
    """Apply the migrations ``dsn``'s database lacks, each in its own transaction.

    Safe to run from several relays at once: each migration runs under a transaction-scoped
    advisory lock and re-checks ``schema_migrations`` once it holds it.

    Args:
        supabase: also set the database up for reads with a Supabase project's users' tokens
            (``relay.pg.supabase``); a database set up so before is set up again whenever a
            migration is applied, whatever this says.

    Returns:
        The versions applied by this call, in order (empty when the schema is current), then
        ``"supabase"`` when asked for.
    """
    from relay.pg import supabase as project

    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        for version, sql in migrations():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(_MIGRATIONS_TABLE)
                if await conn.fetchval("SELECT true FROM schema_migrations WHERE version = $1", version):
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s to %s", version, redact(dsn))
            applied.append(version)
        # Again after new migrations only (their tables need it): a policy's re-creation locks its
        # table, which a relay starting beside live calls must not do for nothing.
        if supabase or (applied and await project.applied(conn)):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(project.statements())
            if supabase:
                applied.append("supabase")
    finally:
        await conn.close()
    return applied
