"""Tenant routing at the webhook: the called number (``To``) picks the tenant and its agent.

A ``Directory`` answers ``route(to_number)``. With the embedded store relay is single-tenant:
every number routes to the default tenant. With Postgres the ``phone_numbers`` table decides,
behind a bounded TTL cache so a burst of calls costs one query per number, and a number that
is not there gets a spoken "not configured" and a hang-up instead of a stream.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.agents import DEFAULT_AGENT
from relay.store import DEFAULT_TENANT

log = logging.getLogger("relay.tenants")


@dataclass(frozen=True, slots=True)
class Route:
    tenant_id: str
    agent_id: str = DEFAULT_AGENT


class Directory(Protocol):
    async def route(self, to_number: str) -> Route | None: ...


class SingleTenant:
    """Every call belongs to one tenant (the embedded default's single-tenant install)."""

    def __init__(self, tenant_id: str = DEFAULT_TENANT, agent_id: str = DEFAULT_AGENT) -> None:
        self._route = Route(tenant_id, agent_id)

    async def route(self, to_number: str) -> Route | None:
        return self._route


class CachedDirectory:
    """Wraps a lookup (``e164 -> (tenant_id, agent_id) | None``) in a bounded TTL cache.

    Unknown numbers are cached too, for a shorter time, so a misconfigured number being
    dialled repeatedly does not become a query per call; a number added by the CLI is seen
    within ``miss_ttl`` seconds. While the lookup fails, expired routes are still served.
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[tuple[str, str] | None]],
        *,
        ttl: float = 60.0,
        miss_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl, self._miss_ttl = ttl, miss_ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Route | None]] = OrderedDict()

    async def route(self, to_number: str) -> Route | None:
        now = self._clock()
        hit = self._cache.get(to_number)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(to_number)
            return hit[1]
        try:
            found = await self._lookup(to_number)
        except Exception:
            # The directory is unreachable (a database outage): a number seen before keeps its
            # route, however old; only a number never seen has no answer.
            if hit is not None and hit[1] is not None:
                log.warning("tenant directory unavailable; routing %s by its last known tenant", to_number)
                return hit[1]
            raise
        route = Route(*found) if found is not None else None
        self._cache[to_number] = (now + (self._ttl if route else self._miss_ttl), route)
        self._cache.move_to_end(to_number)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return route
