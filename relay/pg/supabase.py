"""Relay's schema on a Supabase (or any PostgREST) project: a tenant's own web app reads its
calls straight from Postgres with its users' tokens (``relay migrate --supabase``).

PostgREST runs each request as the role its JWT names (``authenticated``; ``anon`` without a
token) and puts the token's claims in ``request.jwt.claims`` (older versions: one setting per
claim, ``request.jwt.claim.<name>``). Applied here, beside relay's own roles and policies:

* ``relay_jwt_tenant()``: the ``tenant_id`` claim of the request, or NULL;
* on every table a tenant may read (those relay's reader may: ``readable_tables``),
  ``SELECT`` for ``authenticated`` (of every column but a secret one: a tenant's Twilio auth
  token) and two policies: ``tenant_jwt`` admits the rows of the
  claim's tenant, and ``tenant_jwt_only``, restrictive, holds ``authenticated`` to that tenant
  alone whatever else it sets (``app.tenant_id`` is relay's, never a user's to choose);
* ``anon`` and ``authenticated`` lose every other privilege on relay's tables (Supabase's
  default privileges grant them everything on new tables);
* ``service_role`` may act as relay's writer and reader.

Without the flag nothing of this exists. Once applied, a later ``migrate`` that applies a
migration (a newer relay's, at ``relay serve``'s start) applies it again, so the tables it adds
are covered too. Every
statement is idempotent; the roles are made, NOLOGIN, where they do not exist (plain Postgres
behind PostgREST).
"""

from __future__ import annotations

import re

import asyncpg

from relay.pg.schema import migrations

ROLES = ("anon", "authenticated", "service_role")
MARKER = "relay_jwt_tenant"  # the function whose presence says the project is set up this way

_ROLE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- made by a migration running beside this one
END $$;
"""

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {MARKER}() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'tenant_id',
        nullif(current_setting('request.jwt.claim.tenant_id', true), '')
    )
$$;
REVOKE ALL ON FUNCTION {MARKER}() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {MARKER}() TO authenticated;
"""

# Columns no user of the tenant's app may read, though relay's reader may (a secret).
SECRET_COLUMNS = {"tenants": ("twilio_auth_token",)}

_GRANT_SELECT = "GRANT SELECT ON {table} TO authenticated;"
_GRANT_COLUMNS = """
DO $$ DECLARE columns text; BEGIN
    SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) INTO columns
    FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name NOT IN ({secret});
    EXECUTE format('GRANT SELECT (%s) ON {table} TO authenticated', columns);
END $$;
"""

_TABLE = f"""
DROP POLICY IF EXISTS tenant_jwt ON {{table}};
CREATE POLICY tenant_jwt ON {{table}} FOR SELECT TO authenticated USING (tenant_id = {MARKER}());
DROP POLICY IF EXISTS tenant_jwt_only ON {{table}};
CREATE POLICY tenant_jwt_only ON {{table}} AS RESTRICTIVE FOR ALL TO authenticated
    USING (tenant_id = {MARKER}()) WITH CHECK (false);
"""


def relay_tables() -> list[str]:
    """Every table relay's migrations make, and its migrations' own table."""
    made = {name for _, sql in migrations() for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql)}
    return sorted(made | {"schema_migrations"})


def readable_tables() -> list[str]:
    """The tables a tenant may read: those granted to relay's reader (never keys or secrets)."""
    granted = {
        table.strip()
        for _, sql in migrations()
        for tables in re.findall(r"GRANT SELECT ON ([\w, ]+) TO relay_reader", sql)
        for table in tables.split(",")
    }
    return sorted(granted)


def statements() -> str:
    out = [_ROLE.format(role=role) for role in ROLES]
    out.append(f"REVOKE ALL ON {', '.join(relay_tables())} FROM anon, authenticated;")
    out.append(_FUNCTION)
    for table in readable_tables():
        secret = SECRET_COLUMNS.get(table)
        if secret:
            out.append(_GRANT_COLUMNS.format(table=table, secret=", ".join(f"'{c}'" for c in secret)))
        else:
            out.append(_GRANT_SELECT.format(table=table))
        out.append(_TABLE.format(table=table))
    out.append("GRANT relay_writer, relay_reader TO service_role;")
    return "\n".join(out)


async def applied(conn: asyncpg.Connection) -> bool:
    """Whether this database was set up for Supabase before."""
    return bool(await conn.fetchval("SELECT to_regproc($1) IS NOT NULL", MARKER))
