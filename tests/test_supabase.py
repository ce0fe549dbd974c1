"""A Supabase/PostgREST project reads its tenants' rows with its users' tokens (``relay migrate
--supabase``): the claims PostgREST sets per request admit that tenant's rows and no other's,
read-only; no claims and ``anon`` see nothing; without the flag nothing changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import orjson
import pytest

from relay.pg import PostgresStore, migrate
from relay.pg import supabase as project
from tests.pgutil import throwaway_database
from tests.test_pgstore import CALL_TABLES, _two_tenants

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def as_user(
    conn: asyncpg.Connection, role: str, claims: str | None, *, old_style: bool = False
) -> AsyncIterator[None]:
    """What PostgREST does for one request: its role, and the JWT's claims as settings."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        if claims is not None and old_style:
            for name, value in orjson.loads(claims).items():
                await conn.execute("SELECT set_config($1, $2, true)", f"request.jwt.claim.{name}", str(value))
        elif claims is not None:
            await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        yield


async def test_a_users_token_reads_its_tenants_rows_alone_and_only_reads(tmp_path: Path) -> None:
    async with throwaway_database() as database:
        assert await migrate(database, supabase=True) == ["supabase"]
        assert await migrate(database) == []  # idempotent, and kept on every later migrate
        store = PostgresStore(database, spool_path=tmp_path / "relay.spool")
        await store.open()
        try:
            a, b = await _two_tenants(store)
        finally:
            await store.close()
        conn = await asyncpg.connect(database)
        try:
            claims_a = orjson.dumps({"tenant_id": a, "role": "authenticated", "sub": "u1"}).decode()
            claims_b = orjson.dumps({"tenant_id": b, "role": "authenticated", "sub": "u2"}).decode()
            async with as_user(conn, "authenticated", claims_a):
                turns = await conn.fetch("SELECT * FROM call_turns")  # no WHERE: row-level security alone
                assert len(turns) == 4 and {t["tenant_id"] for t in turns} == {a}
                for table in sorted(CALL_TABLES):
                    assert {r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")} == {a}, table
            async with as_user(conn, "authenticated", claims_a):
                assert [r["name"] for r in await conn.fetch("SELECT tenant_id, name FROM tenants")] == [a.upper()]
            async with as_user(conn, "authenticated", claims_b):
                assert {t["tenant_id"] for t in await conn.fetch("SELECT * FROM call_turns")} == {b}
                # relay's own setting is not a user's to choose: the claim still decides
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", a)
                assert {t["tenant_id"] for t in await conn.fetch("SELECT * FROM call_turns")} == {b}
            async with as_user(conn, "authenticated", claims_a, old_style=True):  # older PostgREST
                assert {t["tenant_id"] for t in await conn.fetch("SELECT * FROM call_turns")} == {a}
            async with as_user(conn, "authenticated", None):
                assert await conn.fetch("SELECT * FROM call_turns") == []
            async with as_user(conn, "authenticated", '{"role": "authenticated"}'):
                assert await conn.fetch("SELECT * FROM calls") == []
            for statement in (
                "INSERT INTO call_turns (call_sid, seq, tenant_id, role, started_at) "
                f"VALUES ('CA-x', 1, '{a}', 'user', 0)",
                "UPDATE call_turns SET text_heard = 'x'",
                "DELETE FROM call_turns",
                "SELECT * FROM api_keys",
                "SELECT twilio_auth_token FROM tenants",
                "SELECT * FROM tool_secrets",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with as_user(conn, "authenticated", claims_a):
                        await conn.execute(statement)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with as_user(conn, "anon", claims_a):
                    await conn.fetch("SELECT * FROM call_turns")
            # service_role may act as relay's writer and reader
            for role in ("relay_writer", "relay_reader"):
                assert await conn.fetchval("SELECT pg_has_role('service_role', $1, 'MEMBER')", role)
        finally:
            await conn.close()


async def test_without_the_flag_nothing_of_it_exists() -> None:
    async with throwaway_database() as database:
        conn = await asyncpg.connect(database)
        try:
            assert not await project.applied(conn)
            policies = await conn.fetchval("SELECT count(*) FROM pg_policies WHERE policyname LIKE 'tenant_jwt%'")
            assert policies == 0
        finally:
            await conn.close()


def test_the_readable_tables_are_the_readers_never_keys_or_secrets() -> None:
    readable = set(project.readable_tables())
    assert {"call_turns", "calls", "usage", "outbound_jobs"} <= readable
    assert not readable & {"api_keys", "tool_secrets", "outbound_accounts", "relay_instances"}
    assert readable <= set(project.relay_tables())
