"""Many relays on one Postgres as one service: who holds each call, and requests passed to it.

Each relay is an instance (a random id) with a heartbeat row in ``relay_instances``; each
call whose stream it holds has a row in ``call_owners``. A relay that receives a request about
a call it does not hold looks up the owner and sends the request on the owner's own channel
(``NOTIFY relay_<id>``); the owner answers on the asker's channel. Postgres is the only thing
the relays share: no relay needs an address of its own, and a relay that dies stops beating,
so another deletes its instance row and, with it, its calls' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import asyncpg

from relay.pg.db import CONNECT_ERRORS, as_writer
from relay.routing import (
    ASK_TIMEOUT_S,
    Answer,
    CallRequest,
    Owner,
    OwnerSilent,
    Pending,
    RoutingError,
    decode,
    encode_answer,
    encode_request,
)

log = logging.getLogger("relay.pg.cluster")

HEARTBEAT_S = 2.0
DEAD_AFTER_S = 10.0  # an instance not seen this long is gone: its calls are nobody's
ENDED_KEPT_S = 120.0  # an ended call's row waits this long at most for its after-stream hook

_OWNER = """
SELECT o.instance_id, o.tenant_id FROM call_owners o JOIN relay_instances i USING (instance_id)
WHERE o.call_sid = $1 AND i.seen_at > now() - make_interval(secs => $2)
"""
_CLAIM = """
INSERT INTO call_owners (call_sid, tenant_id, instance_id) VALUES ($1, $2, $3)
ON CONFLICT (call_sid) DO UPDATE SET instance_id = EXCLUDED.instance_id, since = now(), ended_at = NULL
"""


def channel(instance_id: str) -> str:
    return f"relay_{instance_id}"


class PostgresPeers:
    """This relay's place among the relays on one database (``relay.routing.Peers``)."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.instance_id = secrets.token_hex(8)
        self._dsn = dsn
        self._pool = pool
        self._answer: Answer | None = None  # (given at start)
        self._heartbeat_s = heartbeat_s
        self._dead_after_s = dead_after_s
        self._pending = Pending()
        self._listener: asyncpg.Connection | None = None
        self._beating: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self.claimed: dict[str, str] = {}  # call sid -> tenant of each stream here (claimed again after an absence)

    async def start(self, answer: Answer) -> None:
        self._answer = answer
        try:
            await self._beat()
        except Exception as exc:  # noqa: BLE001 - Postgres away at start: the heartbeat tries again
            log.warning("could not join the relays on Postgres yet (%s)", type(exc).__name__)
        self._beating = asyncio.create_task(self._heartbeat(), name="peers-heartbeat")

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        with contextlib.suppress(*CONNECT_ERRORS, asyncpg.PostgresError):
            async with as_writer(self._pool) as conn:
                await conn.execute("DELETE FROM relay_instances WHERE instance_id = $1", self.instance_id)
        if self._listener is not None:
            with contextlib.suppress(*CONNECT_ERRORS, asyncpg.PostgresError):
                await self._listener.close(timeout=2)

    # --- Who holds which call ---------------------------------------------------------------------

    async def claim(self, call_sid: str, tenant_id: str) -> None:
        self.claimed[call_sid] = tenant_id
        async with as_writer(self._pool) as conn:
            await conn.execute(_CLAIM, call_sid, tenant_id, self.instance_id)

    async def ended(self, call_sid: str) -> None:
        self.claimed.pop(call_sid, None)
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "UPDATE call_owners SET ended_at = now() WHERE call_sid = $1 AND instance_id = $2",
                call_sid,
                self.instance_id,
            )

    async def forget(self, call_sid: str) -> None:
        """The after-stream hook has its answer: nothing more will be asked about the stream."""
        async with as_writer(self._pool) as conn:
            await conn.execute(
                "DELETE FROM call_owners WHERE call_sid = $1 AND instance_id = $2 AND ended_at IS NOT NULL",
                call_sid,
                self.instance_id,
            )

    async def owner(self, call_sid: str) -> Owner | None:
        """The live instance holding (or, briefly after its end, last holding) the call's stream."""
        async with as_writer(self._pool) as conn:
            row = await conn.fetchrow(_OWNER, call_sid, self._dead_after_s)
        return None if row is None else Owner(row["instance_id"], row["tenant_id"])

    # --- Requests and answers -------------------------------------------------------------------

    async def ask(self, instance_id: str, request: CallRequest) -> dict[str, Any]:
        """Send ``request`` to ``instance_id`` and wait for its answer (``OwnerSilent`` after
        ``ASK_TIMEOUT_S``)."""
        request_id, answer = self._pending.open()
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                await self._notify(instance_id, encode_request(request_id, self.instance_id, request))
                return await answer
        except TimeoutError:
            raise OwnerSilent(f"relay {instance_id} did not answer a {request.kind} request") from None
        finally:
            self._pending.close(request_id)

    async def _notify(self, instance_id: str, payload: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", channel(instance_id), payload)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = decode(payload)
        except RoutingError as exc:
            log.warning("dropped a message on this relay's channel: %s", exc)
            return
        if len(message) == 2:
            self._pending.answered(*message)
            return
        task = asyncio.create_task(self._reply(*message))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _reply(self, request_id: str, sender: str, request: CallRequest) -> None:
        try:
            assert self._answer is not None
            answer = await self._answer(request)
            await self._notify(sender, encode_answer(request_id, answer))
        except Exception as exc:  # noqa: BLE001 - the asker gives up after its timeout; this relay goes on
            log.warning("could not answer a %s request from relay %s (%s)", request.kind, sender, type(exc).__name__)

    # --- Heartbeat --------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._beat()
            except Exception as exc:  # noqa: BLE001 - Postgres away: beat again later; calls go on
                log.warning("heartbeat to Postgres failed (%s)", type(exc).__name__)

    async def _beat(self) -> None:
        """Say this instance is alive (again, if others took it for dead: its calls are
        claimed anew), listen on its channel, and clear instances that have stopped beating."""
        if self._listener is None or self._listener.is_closed():
            self._listener = await asyncpg.connect(self._dsn)
            await self._listener.add_listener(channel(self.instance_id), self._on_notify)
        async with as_writer(self._pool) as conn:
            seen = await conn.fetchval(
                "UPDATE relay_instances SET seen_at = now() WHERE instance_id = $1 RETURNING true", self.instance_id
            )
            if not seen:
                await conn.execute("INSERT INTO relay_instances (instance_id) VALUES ($1)", self.instance_id)
                if self.claimed:
                    log.warning("this relay was taken for gone; claiming its %d call(s) again", len(self.claimed))
                    await conn.executemany(
                        _CLAIM, [(sid, tenant, self.instance_id) for sid, tenant in self.claimed.items()]
                    )
            gone = await conn.fetch(
                "DELETE FROM relay_instances WHERE seen_at < now() - make_interval(secs => $1) RETURNING instance_id",
                self._dead_after_s,
            )
            for row in gone:
                log.warning("relay %s stopped beating: its calls are no longer routed to it", row["instance_id"])
            await conn.execute(
                "DELETE FROM call_owners WHERE ended_at < now() - make_interval(secs => $1)", ENDED_KEPT_S
            )
