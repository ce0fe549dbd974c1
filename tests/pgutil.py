"""Test helpers for the Postgres store: throwaway databases, a TCP proxy to fake outages.

The real server on 127.0.0.1:5432 is shared with other test runs and is never stopped: an
outage is this proxy switched down (every live connection cut, new ones refused).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from relay.config import Settings
from relay.pg import migrate
from relay.store import CallEnd, CallRecord, Record, TurnRecord
from relay.usage import UsageRecord

PG_HOST, PG_PORT = "127.0.0.1", 5432
# The agent a new tenant starts with: the environment's, as ``relay tenants add`` gives it.
AGENT = Settings().agent
ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


def dsn(database: str, *, port: int = PG_PORT, password: str | None = None) -> str:
    auth = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{auth}@{PG_HOST}:{port}/{database}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"these tests need Postgres at {PG_HOST}:{PG_PORT} (user postgres, database test); "
            f"start it with `pg_ctlcluster --skip-systemctl-redirect <version> main start`: {exc!r}",
            pytrace=False,
        )


async def create_database(*, migrated: bool = True) -> str:
    """A new empty database ``relay_test_<random>`` (migrated unless told otherwise)."""
    name = f"relay_test_{secrets.token_hex(6)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    if migrated:
        await migrate(dsn(name))
    return name


def lasting_database() -> Iterator[str]:
    """A migrated throwaway database for a fixture that outlives each test's event loop (module
    or session scope): made and dropped on a loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        name = loop.run_until_complete(create_database())
        try:
            yield name
        finally:
            loop.run_until_complete(drop_database(name))
    finally:
        loop.close()


async def drop_database(name: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def throwaway_database(*, migrated: bool = True) -> AsyncIterator[str]:
    """The DSN of a fresh database, dropped on exit."""
    name = await create_database(migrated=migrated)
    try:
        yield dsn(name)
    finally:
        await drop_database(name)


ACME_NUMBER = "+15550100001"


@asynccontextmanager
async def database_with_acme() -> AsyncIterator[str]:
    """The DSN of a fresh database where tenant ``acme`` answers ``ACME_NUMBER``, dropped on exit."""
    from relay.pg import Directory

    async with throwaway_database() as url:
        async with Directory.connect(url) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.add_number(ACME_NUMBER, "acme")
        yield url


async def eventually(condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` (bounded) until it holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to Postgres; ``down()`` fakes an outage, ``up()`` ends it.

    While down it keeps listening (so nothing else can take the port) but closes every
    connection as soon as it is accepted, and it has cut all the ones that were open.
    """

    def __init__(self, target_host: str = PG_HOST, target_port: int = PG_PORT) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections forwarded (not refused)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def is_up(self) -> bool:
        return self._up

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._on_client, PG_HOST, 0)
        return self

    def down(self) -> None:
        self._up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def up(self) -> None:
        self._up = True

    def retarget(self, port: int, host: str = PG_HOST) -> None:
        """Send new connections to ``host:port`` (open ones stay where they are): a load balancer
        that has taken one backend out."""
        self._target = (host, port)

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        if not self._up:  # went down while we were connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.accepted += 1
        self._writers |= {writer, up_writer}
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()  # one side gone: cut the other, as a dead link would


def call_records(
    call_sid: str, *, tenant_id: str = "default", turns: int = 6, t0: float = 1_700_000_000.0
) -> list[Record]:
    """A whole call as a session submits it: its start, ``turns`` alternating turns, its end."""
    records: list[Record] = [
        CallRecord(call_sid=call_sid, stream_sid=f"MZ{call_sid}", started_at=t0, tenant_id=tenant_id,
                   from_number="+15550100", to_number="+15550199")
    ]  # fmt: skip
    for seq in range(1, turns + 1):
        role = "user" if seq % 2 else "assistant"
        records.append(
            TurnRecord(
                call_sid=call_sid, seq=seq, role=role, started_at=t0 + seq + 0.1, tenant_id=tenant_id,
                item_id=f"item_{seq}", text_generated=f"turn {seq} of {call_sid}", text_heard=f"turn {seq}",
                interrupted=seq == 4, ended_at=t0 + seq + 0.9, audio_ms=0 if role == "user" else 700 + seq,
                voice_to_voice_ms=None if role == "user" else 400.25 + seq,
            )
        )  # fmt: skip
    records.append(
        CallEnd(call_sid=call_sid, ended_at=t0 + turns + 2, end_reason="stop", frames_in=50 * (turns + 2),
                frames_out=40 * turns, turns=turns, v2v_p50_ms=402.5, v2v_max_ms=410.0, tenant_id=tenant_id)
    )  # fmt: skip
    answers_ms = sum(r.audio_ms for r in records if isinstance(r, TurnRecord))
    records.append(
        UsageRecord(call_sid=call_sid, started_at=t0, ended_at=t0 + turns + 2, tenant_id=tenant_id,
                    backend="openai-realtime", model="gpt-realtime-2.1", audio_in_seconds=(turns + 2) * 1.0,
                    audio_out_seconds=answers_ms / 1000, text_in_tokens=100 * turns, audio_in_tokens=50 * turns,
                    audio_out_tokens=answers_ms // 50, prices_version="test", cost_nanousd=1000 * turns)
    )  # fmt: skip
    return records
