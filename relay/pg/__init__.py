"""Postgres: the multi-tenant store, its schema, the tenant directory and the shared admission count.

Everything that talks to Postgres (and the only code that imports ``asyncpg``) lives here; the
rest of relay imports this package only when ``DATABASE_URL`` is set, so the embedded store's
relay never loads it.

    db.py          DSNs without their secrets, transactions as relay_writer / relay_reader
    schema.py      the bundled migrations (migrations/) and ``migrate``
    store.py       ``PostgresStore``: calls and turns, and the outage spool
    directory.py   ``Directory``: tenants, numbers, agents, and reads on a tenant's behalf
    admission.py   ``PostgresAdmission``: call limits counted across relays
    cluster.py     ``PostgresPeers``: which relay holds each call; requests passed to it (NOTIFY)
"""

from relay.pg.admission import PostgresAdmission
from relay.pg.db import CONNECT_ERRORS, CheckViolationError, redact
from relay.pg.directory import Directory
from relay.pg.schema import migrate, migrations
from relay.pg.store import PostgresStore

__all__ = [
    "CONNECT_ERRORS",
    "CheckViolationError",
    "Directory",
    "PostgresAdmission",
    "PostgresStore",
    "migrate",
    "migrations",
    "redact",
]
