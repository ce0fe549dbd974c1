"""Tenants' API keys in Postgres (``relay.apikeys``): relay's own table, written and read as
``relay_writer`` (a key is looked up before any tenant is known)."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.apikeys import KeyStore
from relay.errors import InputError
from relay.pg.db import as_writer


class PostgresKeyStore(KeyStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._pool = pool

    async def _lookup(self, key_id: str) -> tuple[str, str] | None:
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(
                "SELECT tenant_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id
            )
        return (row["tenant_id"], row["secret_hash"]) if row is not None else None

    async def _insert(self, tenant_id: str, key_id: str, hashed: str, name: str) -> None:
        try:
            async with as_writer(self._pool) as conn:
                await conn.execute(
                    "INSERT INTO api_keys (key_id, tenant_id, secret_hash, name) VALUES ($1, $2, $3, $4)",
                    key_id, tenant_id, hashed, name,
                )  # fmt: skip
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise InputError(f"no tenant {tenant_id[:100]!r} (relay tenants list shows them)") from None

    async def revoke(self, tenant_id: str, key_id: str) -> bool:
        async with as_writer(self._pool) as conn:
            done = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                key_id,
                tenant_id,
            )
        return bool(done != "UPDATE 0")

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        async with as_writer(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT key_id, name, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at",
                tenant_id,
            )
        return [dict(r) for r in rows]
