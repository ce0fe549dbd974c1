"""``relay serve --workers N``: several processes on one port, supervised, seen as one.

The supervisor is run as an operator runs it; calls go through the shared port, land on
both workers, and ``/metrics`` on either one counts every call. A worker killed outright is
started again, and SIGTERM to the supervisor drains them all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.sim.agent import RealtimeAgent
from relay.sim.caller import CallerScript, TwilioCaller, http_get
from relay.workers import Worker, merge
from tests.test_call import FAST
from tests.test_drain import RelayProcess, completed, relay_env, until

SHORT = CallerScript(utterances=("Hello there.",), lead_in_ms=100, answer_quiet_ms=300)


def samples(scrape: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape.decode())
        for s in family.samples
        if s.name == name
    }


def test_merged_metrics_sum_each_series_across_workers() -> None:
    one = (
        b"# HELP relay_calls_total Calls ended.\n# TYPE relay_calls_total counter\n"
        b'relay_calls_total{tenant="a",end_reason="stop"} 3\n'
        b"# HELP relay_v2v_ms Voice to voice.\n# TYPE relay_v2v_ms histogram\n"
        b'relay_v2v_ms_bucket{le="500.0"} 2\nrelay_v2v_ms_bucket{le="+Inf"} 3\n'
        b"relay_v2v_ms_count 3\nrelay_v2v_ms_sum 1500\n"
    )
    two = (
        b"# HELP relay_calls_total Calls ended.\n# TYPE relay_calls_total counter\n"
        b'relay_calls_total{tenant="a",end_reason="stop"} 4\n'
        b'relay_calls_total{tenant="b",end_reason="stop"} 1\n'
    )
    merged = merge([one, b"", two])  # a worker that did not answer adds nothing
    assert samples(merged, "relay_calls_total") == {
        (("end_reason", "stop"), ("tenant", "a")): 7.0,
        (("end_reason", "stop"), ("tenant", "b")): 1.0,
    }
    assert samples(merged, "relay_v2v_ms_bucket") == {(("le", "500.0"),): 2.0, (("le", "+Inf"),): 3.0}
    assert samples(merged, "relay_v2v_ms_sum") == {(): 1500.0}


def test_a_worker_knows_itself_and_its_files() -> None:
    env = {"RELAY_WORKER_INDEX": "1", "RELAY_WORKER_COUNT": "3", "RELAY_WORKER_DIR": "/run/w",
           "RELAY_SUPERVISOR_PID": "42"}  # fmt: skip
    worker = Worker.from_env(env)
    assert worker == Worker(1, 3, Path("/run/w"), 42)
    assert worker.suffix("relay.spool") == "relay.spool.w1"
    assert worker.socket_path(2) == Path("/run/w/worker-2.sock")
    assert Worker.from_env({}) is None


def listening(process: RelayProcess, count: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``count`` workers have said they are listening (restarts count again)."""

    async def enough() -> bool:
        return sum(" listening on " in str(e.get("msg", "")) for e in process.log) >= count

    return enough


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_workers_share_the_port_report_as_one_survive_a_kill_and_drain(tmp_path: Path) -> None:
    port = free_port()  # each worker binds it (SO_REUSEPORT); 0 would give each its own
    async with RealtimeAgent(FAST) as agent:
        supervisor = RelayProcess(
            relay_env(agent, tmp_path, "w", RELAY_PORT=str(port), RELAY_PUBLIC_URL=f"http://127.0.0.1:{port}"),
            "--workers",
            "2",
        )
        await supervisor.start()
        try:
            webhook = f"http://127.0.0.1:{port}/twilio/voice"

            def started() -> dict[int, int]:  # worker index -> pid, from the supervisor's log
                found: dict[int, int] = {}
                for entry in supervisor.log:
                    words = str(entry.get("msg", "")).split()
                    if words[:1] == ["worker"] and "started" in words:
                        found[int(words[1])] = int(words[-1].rstrip(")"))
                return found

            await until(listening(supervisor, 2), 30, "both workers listening")
            directory = next(
                Path(str(e["msg"]).rsplit(" ", 1)[1]) for e in supervisor.log if "socket in" in str(e.get("msg", ""))
            )
            results = await asyncio.gather(*(TwilioCaller(webhook, SHORT).run() for _ in range(16)))
            assert all(completed(r) for r in results), [r.error for r in results]

            async def own(index: int) -> bytes:
                reader, writer = await asyncio.open_unix_connection(str(directory / f"worker-{index}.sock"))
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
                answer = await reader.read()
                writer.close()
                return answer.partition(b"\r\n\r\n")[2]

            async def all_counted() -> bool:
                status, body = await http_get(f"http://127.0.0.1:{port}/metrics")
                return status == 200 and sum(samples(body, "relay_calls_total").values()) == 16

            await until(all_counted, 10, "every call in the merged scrape")
            per_worker = [sum(samples(await own(i), "relay_calls_total").values()) for i in (0, 1)]
            print(f"\ncalls per worker: {per_worker}")
            assert sum(per_worker) == 16 and min(per_worker) > 0  # the kernel spread them

            first = started()
            os.kill(first[0], signal.SIGKILL)

            async def restarted() -> bool:
                return started().get(0, first[0]) != first[0]

            await until(restarted, 30, "the killed worker started again")
            assert any("worker 0 died" in str(e.get("msg", "")) and e.get("level") == "ERROR" for e in supervisor.log)
            await until(listening(supervisor, 3), 30, "the new worker listening")
            again = await asyncio.gather(*(TwilioCaller(webhook, SHORT).run() for _ in range(6)))
            assert all(completed(r) for r in again)

            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait(30) == 0
            assert not directory.exists()
            for pid in started().values():  # every worker has exited with it
                assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        finally:
            await supervisor.stop()
