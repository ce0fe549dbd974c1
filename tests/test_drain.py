"""Running relay as a service: readiness, a drain that drops no call, and calls handed over.

``relay serve`` runs as its own process here, as it does in a pod: SIGTERM must make
``/readyz`` fail at once while every live call finishes normally, and the process must exit
when the last one has ended. With a short drain timeout and a second relay on the same
Postgres behind a load balancer, each call still up is handed to the other relay through
Twilio (the after-stream hook connects a new stream) and finishes there, its stored turns one
unbroken sequence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from relay.sim.agent import RealtimeAgent
from relay.sim.caller import CallerScript, CallResult, TwilioCaller, http_get
from tests.test_call import FAST, SIM_AUTH_TOKEN, stack

ROOT = Path(__file__).resolve().parent.parent
# Long enough that a drain begins while every call is mid-conversation.
SCRIPT = CallerScript(
    utterances=("Book a table for two.", "At seven tonight.", "By the window, please.", "Thank you."),
    lead_in_ms=200,
    answer_quiet_ms=400,
)


class RelayProcess:
    """``python -m relay serve`` in a child process, as an operator runs it."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args  # after `relay serve`
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> RelayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", *self.args,
            cwd=ROOT, env={**os.environ, **self.env}, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        listening = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(listening))
        self.port = await asyncio.wait_for(listening, 30)
        return self

    async def _read(self, listening: asyncio.Future[int]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = {"msg": line.decode(errors="replace")}
            self.log.append(entry)
            msg = str(entry.get("msg", ""))
            if not listening.done() and " listening on " in msg:
                listening.set_result(int(msg.split(" listening on ")[1].split(";", maxsplit=1)[0].rsplit(":", 1)[1]))
        if not listening.done():
            listening.set_exception(RuntimeError(f"relay exited: {self.log[-5:]}"))

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = await http_get(f"http://127.0.0.1:{self.port}{path}")
        return status, orjson.loads(body)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def relay_env(agent: RealtimeAgent, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": "0",
        "RELAY_REALTIME_URL": agent.url,
        "OPENAI_API_KEY": "sk-sim",
        "TWILIO_AUTH_TOKEN": SIM_AUTH_TOKEN,
        "RELAY_SQLITE_PATH": str(tmp_path / f"{name}.sqlite3"),
        "RELAY_SPOOL_PATH": str(tmp_path / f"{name}.spool"),
        "RELAY_DEAD_LETTER_PATH": str(tmp_path / f"{name}.dead-letter.jsonl"),
        "RELAY_LOG_FORMAT": "json",
        **extra,
    }


@contextlib.asynccontextmanager
async def running(env: dict[str, str]) -> AsyncIterator[RelayProcess]:
    relay = await RelayProcess(env).start()
    try:
        yield relay
    finally:
        await relay.stop()


async def until(condition: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def completed(result: CallResult) -> bool:
    """Every line answered, and the caller, not the relay, ended the call."""
    return result.error is None and not result.closed_by_relay and all(t.answered for t in result.turns)


# --- Readiness ---------------------------------------------------------------------------------


async def test_readyz_says_ready_and_why_not(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        relay = s.relay
        await until(lambda: _true(relay.backend_seen_at is not None), 5, "the backend probe")
        ready, checks = relay.readiness()
        assert ready and checks["fastpath"] == "cython" and checks["store_writable"] and not checks["draining"]
        base = s.webhook.removesuffix("/twilio/voice")
        status, body = await http_get(f"{base}/readyz")
        assert status == 200 and orjson.loads(body)["ready"] is True

        relay.draining = True
        status, body = await http_get(f"{base}/readyz")
        assert status == 503 and orjson.loads(body)["draining"] is True
        relay.draining = False

        relay.backend_seen_at = asyncio.get_running_loop().time() - 120  # not reached for two minutes
        assert relay.readiness()[0] is False
        status, _ = await http_get(f"{base}/healthz")
        assert status == 200  # alive all the same: liveness is only the loop turning


async def _true(value: bool) -> bool:
    return value


async def test_drain_is_refused_from_anywhere_but_this_machine(tmp_path: Path) -> None:
    from relay.server import HttpProtocol

    async with stack(tmp_path) as s:
        protocol = HttpProtocol(s.relay)

        class Peer:
            def __init__(self, host: str) -> None:
                self.host, self.sent = host, b""

            def get_extra_info(self, name: str) -> Any:
                return (self.host, 40000) if name == "peername" else None

            def write(self, data: bytes) -> None:
                self.sent += data

            def is_closing(self) -> bool:
                return False

            def close(self) -> None:
                pass

        for host, status in (("10.1.2.3", b"403"), ("127.0.0.1", b"202")):
            peer = Peer(host)
            protocol._transport = peer  # type: ignore[assignment]  # a transport's two calls used here
            protocol._drain("handoff=1", keep_alive=False)
            assert peer.sent.split(b" ")[1] == status
        assert s.relay.drain_requests.get_nowait() is True and s.relay.drain_requests.empty()


# --- SIGTERM: every call finishes -----------------------------------------------------------------


async def test_sigterm_fails_readiness_at_once_and_every_call_finishes(tmp_path: Path) -> None:
    from tests.pgutil import TcpProxy

    async with RealtimeAgent(FAST) as agent, TcpProxy() as balancer:
        env = relay_env(agent, tmp_path, "a", RELAY_PUBLIC_URL=f"http://127.0.0.1:{balancer.port}")
        relay = await RelayProcess(env).start()
        balancer.retarget(relay.port)
        try:
            webhook = f"http://127.0.0.1:{balancer.port}/twilio/voice"
            callers = [TwilioCaller(webhook, SCRIPT) for _ in range(20)]
            calls = [asyncio.create_task(c.run()) for c in callers]

            async def all_live() -> bool:
                return (await relay.get("/healthz"))[1]["calls_active"] == 20

            await until(all_live, 30, "20 live calls")
            status, _ = await relay.get("/readyz")
            assert status == 200
            relay.signal(signal.SIGTERM)
            signalled = time.monotonic()
            while (await relay.get("/readyz"))[0] != 503:
                pass
            not_ready_ms = (time.monotonic() - signalled) * 1000
            assert not any(c.done() for c in calls)  # calls were live when it stopped being ready

            results = await asyncio.gather(*calls)
            ended = time.monotonic()
            code = await relay.wait(30)
            exited_s = time.monotonic() - ended
        finally:
            await relay.stop()
    print(
        f"\n/readyz failed {not_ready_ms:.1f} ms after SIGTERM; the process exited {exited_s:.2f} s after the last call"
    )
    assert code == 0
    assert [completed(r) for r in results] == [True] * 20, [r.error for r in results]
    assert all(len(r.turns) == len(SCRIPT.utterances) for r in results)
    db = sqlite3.connect(tmp_path / "a.sqlite3")
    ends = dict(db.execute("SELECT call_sid, end_reason FROM calls").fetchall())
    assert ends == {r.call_sid: "stop" for r in results}  # 0 dropped: every call ended by its caller
    messages = [str(e.get("msg")) for e in relay.log]
    assert any("draining: 20 live call(s)" in m for m in messages)


# --- A short drain timeout: calls move to another relay ------------------------------------------


@pytest.mark.postgres
async def test_calls_still_up_at_the_drain_timeout_finish_on_another_relay(tmp_path: Path) -> None:
    from tests.pgutil import ACME_NUMBER, TcpProxy, database_with_acme

    async with database_with_acme() as database:
        async with RealtimeAgent(FAST) as agent, TcpProxy() as balancer:
            shared = {"DATABASE_URL": database, "RELAY_PUBLIC_URL": f"http://127.0.0.1:{balancer.port}"}
            async with (
                running(relay_env(agent, tmp_path, "a", RELAY_DRAIN_TIMEOUT_S="1", **shared)) as a,
                running(relay_env(agent, tmp_path, "b", **shared)) as b,
            ):
                balancer.retarget(a.port)
                webhook = f"http://127.0.0.1:{balancer.port}/twilio/voice"
                callers = [TwilioCaller(webhook, SCRIPT, to_number=ACME_NUMBER) for _ in range(20)]
                calls = [asyncio.create_task(c.run()) for c in callers]

                async def all_live_on_a() -> bool:
                    return (await a.get("/healthz"))[1]["calls_active"] == 20

                await until(all_live_on_a, 30, "20 live calls on the first relay")
                a.signal(signal.SIGTERM)
                balancer.retarget(b.port)  # /readyz fails: the balancer sends new connections to b
                results = await asyncio.gather(*calls)
                code = await a.wait(60)
                b_took = (await b.get("/healthz"))[1]
                b.signal(signal.SIGTERM)  # b stops as a pod does: what it holds is written first
                assert await b.wait(60) == 0
        db = await asyncpg.connect(database)
        try:
            turns = await db.fetch("SELECT call_sid, seq, role, text_generated FROM call_turns ORDER BY call_sid, seq")
            ends = dict(await db.fetch("SELECT call_sid, end_reason FROM calls"))
            usage = await db.fetch("SELECT call_sid, stream_sid FROM usage")
        finally:
            await db.close()

    gaps = [g for r in results for g in r.handover_gaps_ms]
    print(f"\nhand-over gap (stream closed -> the next one started): p50 {statistics.median(gaps):.1f} ms, "
          f"max {max(gaps):.1f} ms over {len(gaps)} calls")  # fmt: skip
    assert code == 0 and b_took["status"] == "ok"
    assert [completed(r) for r in results] == [True] * 20, [r.error for r in results]
    assert [r.streams for r in results] == [2] * 20  # every call was handed over, once
    assert ends == {r.call_sid: "stop" for r in results}
    by_call: dict[str, list[Any]] = {}
    for row in turns:
        by_call.setdefault(row["call_sid"], []).append(row)
    for r in results:
        rows = by_call[r.call_sid]
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))  # one unbroken sequence
        # Each line once, in order, across both relays. (A caller who starts a line just as the
        # stream closes leaves a user turn with no transcript, and says the line again on the
        # next stream, as a caller on a phone does.)
        said = [row["text_generated"] for row in rows if row["role"] == "user" and row["text_generated"]]
        assert said == list(SCRIPT.utterances)
    assert sorted(collections.Counter(u["call_sid"] for u in usage).values()) == [2] * 20  # a row per stream


# --- Limits a service needs -----------------------------------------------------------------------


async def test_a_stream_that_never_starts_is_closed(tmp_path: Path) -> None:
    import websockets
    from twilio.request_validator import RequestValidator

    async with stack(tmp_path, start_timeout_ms=300) as s:
        url = s.webhook.replace("http://", "ws://")
        signature = RequestValidator(SIM_AUTH_TOKEN).compute_signature(url, {})  # as Twilio signs it
        async with websockets.connect(url, additional_headers={"X-Twilio-Signature": signature}) as ws:
            await ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "no start event"


LONG = "Let me tell you everything about our long menu of dishes and drinks for tonight and tomorrow " * 2


async def test_a_caller_that_stops_reading_is_dropped_alone_with_its_buffer_bounded(tmp_path: Path) -> None:
    from relay.ws import SEND_BUFFER, WRITE_HIGH_WATER

    agent = dataclasses.replace(FAST, reply=lambda text, history: LONG)
    script = CallerScript(utterances=("Tell me about the menu.",), lead_in_ms=200, answer_quiet_ms=400)
    async with stack(tmp_path, agent, slow_peer_timeout_ms=1000) as s:
        stalled = TwilioCaller(s.webhook, dataclasses.replace(script, stall_after_ms=1500))
        others = [TwilioCaller(s.webhook, script) for _ in range(3)]
        calls = [asyncio.create_task(c.run()) for c in (stalled, *others)]
        most_buffered = 0
        while not all(c.done() for c in calls[1:]) or s.relay.violations["slow_peer"] == 0:
            for session in s.relay.live.values():
                if session.call_sid == stalled.call_sid:
                    most_buffered = max(most_buffered, session.twilio.transport.get_write_buffer_size())
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*calls)
        for task in list(s.relay.sessions):
            await task
        await s.store.flush()
        ends = {c["call_sid"]: c["end_reason"] for c in await s.store.calls()}
    print(f"\nthe stalled caller's unsent audio peaked at {most_buffered} bytes before it was dropped")
    assert ends[stalled.call_sid] == "twilio_slow" and s.relay.violations["slow_peer"] == 1
    # What waited for the stalled caller never grew past the pause mark and a second of audio.
    assert 0 < most_buffered <= WRITE_HIGH_WATER + 32 * 1024, most_buffered
    assert SEND_BUFFER == 32 * 1024
    for result in results[1:]:  # every other call went on as if nothing happened
        assert completed(result) and ends[result.call_sid] == "stop" and result.turns[0].heard.startswith("Let me")
        assert result.playback.stalls_ms == [] or max(result.playback.stalls_ms) < 100
