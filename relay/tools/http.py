"""The HTTP client tenant tools are called with (aiohttp), made on a relay's first tool call:
a relay whose agents have no tools never loads it.

Tenants name their own URLs, so unless told otherwise it dials public addresses only, checked
after DNS on every connection (a name that later points inward is refused too): a tenant
cannot reach relay's own network. An address written in the URL never reaches the resolver,
so ``public_or_name`` checks it first.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

MAX_CONNECTIONS = 100
ERRORS = (aiohttp.ClientError, OSError)  # what a request that never got an answer raises


def public_or_name(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return True  # a name: the resolver checks what it points to


class PublicOnlyResolver(AbstractResolver):
    """A resolver that gives out public addresses only."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if ipaddress.ip_address(r["host"]).is_global]
        if not public:
            raise OSError(f"{host} is not a public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def client(ca_file: str, allow_private: bool) -> aiohttp.ClientSession:
    """One pool of connections for every tool call of a relay."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)  # a tenant's private CA, beside the public ones
    connector = aiohttp.TCPConnector(
        ssl=context, limit=MAX_CONNECTIONS, resolver=None if allow_private else PublicOnlyResolver()
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)
