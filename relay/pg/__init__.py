"""Postgres: the multi-tenant store, its schema and the tenant directory.

Everything that talks to Postgres (and the only code that imports ``asyncpg``) lives here; the
rest of relay imports this package only when ``DATABASE_URL`` is set, so the embedded store's
relay never loads it.
"""

from relay.pg.store import Directory, PostgresStore, migrate, migrations, redact

__all__ = ["Directory", "PostgresStore", "migrate", "migrations", "redact"]
