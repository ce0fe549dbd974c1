"""What every module of ``relay.pg`` shares: DSNs, the two roles' transactions, the reads of calls
and turns.

Roles (see ``migrations/0001_schema.sql``): writes and operator reads run inside transactions
that ``SET LOCAL ROLE relay_writer``; every read on a tenant's behalf runs in a transaction that
``SET LOCAL ROLE relay_reader`` and sets ``app.tenant_id``, so row-level security applies even
when the DSN's user owns the tables or is a superuser. ``SET ROLE`` is a boundary for the
queries ``relay.pg`` issues, not against SQL injection (``RESET ROLE`` undoes it): every query
there is a fixed text with parameters.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.store import TurnRecord
from relay.usage import UsageRecord

# --- DSNs: printable without their secrets -------------------------------------------------

_SECRET_PARAMS = ("password", "sslpassword")


def redact(dsn: str) -> str:
    """``dsn`` with every password removed (URL userinfo, ``?password=``, ``password=`` words)."""
    try:
        parts = urlsplit(dsn)
        if not parts.scheme:  # a libpq "key=value" string
            return re.sub(r"\b(?:ssl)?password\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)\s*", "", dsn).strip()
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hosts}"
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _SECRET_PARAMS]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))
    except ValueError:
        return "<unparsable DSN>"


def dsn_secrets(dsn: str) -> list[str]:
    """The passwords in ``dsn``, to scrub from any error text that might echo them."""
    try:
        parts = urlsplit(dsn)
        found = [unquote(parts.password)] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query) if k in _SECRET_PARAMS and v]
    except ValueError:
        return []
    return found


# --- Errors the rest of relay handles (asyncpg is imported in relay.pg alone) -----------------

# Connecting failed: nothing listening, a timeout, a connection refused or dropped.
CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
# A value outside a bound the database's CHECK constraints enforce.
CheckViolationError = asyncpg.exceptions.CheckViolationError


# --- Transactions under the two roles ---------------------------------------------------------


@asynccontextmanager
async def as_writer(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction as ``relay_writer``: every tenant's rows, read and write."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE relay_writer")
        yield conn


@asynccontextmanager
async def as_tenant(pool: asyncpg.Pool, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A read-only transaction as ``relay_reader`` that sees only ``tenant_id``'s rows.

    Both settings are transaction-local, so nothing leaks to the pooled connection's next user.
    """
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL ROLE relay_reader")
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        yield conn


# --- Queries -----------------------------------------------------------------------------------


def placeholders(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


# Reads of calls and turns: the store's (as relay_writer) and a tenant's (``Directory``, as relay_reader).
CALL_COLUMNS = (  # in SQLiteStore's order, so both stores' calls() give the same dicts
    "call_sid", "tenant_id", "stream_sid", "account_sid", "from_number", "to_number", "started_at",
    "ended_at", "end_reason", "frames_in", "frames_out", "turns", "v2v_p50_ms", "v2v_max_ms", "transferred_to",
)  # fmt: skip
TURN_COLUMNS = tuple(f.name for f in fields(TurnRecord))
SELECT_TURNS = f"SELECT {', '.join(TURN_COLUMNS)} FROM call_turns"
SELECT_CALLS = f"SELECT {', '.join(CALL_COLUMNS)} FROM calls"
USAGE_COLUMNS = tuple(f.name for f in fields(UsageRecord))
