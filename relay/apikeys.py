"""Per-tenant API keys: who may queue calls and read jobs through ``/v1/…``.

A key is ``rk_<id>_<secret>``: the id (16 hex digits) finds the row, the secret (32 random
bytes) proves the holder. Only SHA-256 of the whole key is stored — the secret has 256 bits,
so a fast hash is enough, and a database dump gives no key away. A key is shown once, when it
is made (``relay keys create``), and acts for its tenant alone; a revoked key stops at once
on every relay (keys are looked up per request, behind a short cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any

from relay.errors import InputError

_KEY = re.compile(r"rk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
CACHE_S = 5.0  # how long a key's lookup is reused: a revocation reaches every relay within it
MAX_NAME = 100


def issue() -> tuple[str, str, str]:
    """A new key: ``(key_id, key, stored hash)``."""
    key_id = secrets.token_hex(8)
    key = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key; None for anything else (never looked up)."""
    match = _KEY.fullmatch(key)
    return match[1] if match else None


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header ('' when there is none)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class KeyStore(ABC):
    """Where keys are kept; ``tenant_of`` is what every API request asks."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self.cache_s = CACHE_S

    async def tenant_of(self, key: str) -> str | None:
        """The tenant a key acts for; None for a malformed, unknown or revoked key."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._lookup(key_id)
        tenant = None
        if found is not None and hmac.compare_digest(found[1], digest(key)):
            tenant = found[0]
        self._cache[key] = (now + self.cache_s, tenant)
        while len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return tenant

    async def create(self, tenant_id: str, name: str = "") -> tuple[str, str]:
        """A new key for the tenant: ``(key_id, key)``; the key is not kept, only its hash.

        Raises:
            InputError: a bad name, or no such tenant.
        """
        if len(name) > MAX_NAME or not name.isprintable():
            raise InputError(f"a key's name is at most {MAX_NAME} printable characters")
        key_id, key, hashed = issue()
        await self._insert(tenant_id, key_id, hashed, name)
        return key_id, key

    @abstractmethod
    async def _lookup(self, key_id: str) -> tuple[str, str] | None:
        """(tenant, stored hash) of an unrevoked key."""

    @abstractmethod
    async def _insert(self, tenant_id: str, key_id: str, hashed: str, name: str) -> None: ...

    @abstractmethod
    async def revoke(self, tenant_id: str, key_id: str) -> bool:
        """Revoke the tenant's key; False when it has no such (unrevoked) key."""

    @abstractmethod
    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's keys: id, name, when made and revoked (never a hash)."""


class SQLiteKeyStore(KeyStore):
    """Keys in the embedded store's file (its one tenant)."""

    def __init__(self, path: str | Path, tenant_id: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.tenant_id = tenant_id

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, "
            "secret_hash TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked_at REAL)"
        )
        return db

    async def _sql(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            db = self._connect()
            try:
                return db.execute(sql, params).fetchall()
            finally:
                db.close()

        return await asyncio.to_thread(run)

    def _own(self, tenant_id: str) -> None:
        if tenant_id != self.tenant_id:
            raise InputError(f"no tenant {tenant_id[:100]!r} (the embedded store has one: {self.tenant_id!r})")

    async def _lookup(self, key_id: str) -> tuple[str, str] | None:
        rows = await self._sql(
            "SELECT tenant_id, secret_hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def _insert(self, tenant_id: str, key_id: str, hashed: str, name: str) -> None:
        self._own(tenant_id)
        await self._sql(
            "INSERT INTO api_keys (key_id, tenant_id, secret_hash, name, created_at) VALUES (?, ?, ?, ?, ?)",
            (key_id, tenant_id, hashed, name, time.time()),
        )

    async def revoke(self, tenant_id: str, key_id: str) -> bool:
        self._own(tenant_id)
        rows = await self._sql(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND tenant_id = ? AND revoked_at IS NULL "
            "RETURNING key_id",
            (time.time(), key_id, tenant_id),
        )
        return bool(rows)

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        self._own(tenant_id)
        rows = await self._sql(
            "SELECT key_id, name, created_at, revoked_at FROM api_keys WHERE tenant_id = ? ORDER BY created_at",
            (tenant_id,),
        )
        return [{"key_id": r[0], "name": r[1], "created_at": r[2], "revoked_at": r[3]} for r in rows]
