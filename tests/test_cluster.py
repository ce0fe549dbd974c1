"""Many relays on one Postgres as one service: a request about a call reaches the relay holding it.

Three ``relay serve`` processes share a database behind one load balancer (the address Twilio
is given). A call's stream lives on the first; Twilio's status callback, the after-stream hook
and a hang-up from the API each land on another relay, and each is answered by the first,
through Postgres (``relay.pg.cluster``): no relay needs an address of its own. A relay that
dies stops beating, and its calls stop being routed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from relay.routing import CallRequest, Pending, RoutingError, decode, encode_answer, encode_request
from relay.sim.agent import RealtimeAgent
from relay.sim.caller import CallerScript, TwilioCaller, http_get
from tests.pgutil import ACME_NUMBER, eventually
from tests.test_call import FAST, SIM_AUTH_TOKEN
from tests.test_drain import RelayProcess, relay_env, until

API_TOKEN = "control-api-token"
# A caller who talks, then stays on the line until relay ends the stream.
STAYS = CallerScript(utterances=("Hello there.",), lead_in_ms=100, answer_quiet_ms=300, wait_for_hangup=True)


# --- The wire (sans-I/O) ------------------------------------------------------------------------


def test_requests_and_answers_round_trip_and_junk_is_refused() -> None:
    request = CallRequest("status", "CA" + "1" * 32, {"CallStatus": "completed"})
    assert decode(encode_request("r1", "a" * 16, request)) == ("r1", "a" * 16, request)
    assert decode(encode_answer("r1", {"instance": "b" * 16, "status": "completed"})) == (
        "r1",
        {"instance": "b" * 16, "status": "completed"},
    )
    for junk in ("{", "[]", '{"id": 1}', '{"id": "x", "kind": "reboot", "call_sid": "CA", "from": "a", "args": {}}',
                 '{"id": "x", "answer": 3}'):  # fmt: skip
        with pytest.raises(RoutingError):
            decode(junk)
    with pytest.raises(RoutingError, match="over"):
        encode_request("r", "a", CallRequest("status", "CA", {"x": "y" * 9000}))


async def test_an_answer_reaches_only_the_request_waiting_for_it() -> None:
    pending = Pending()
    first, answer = pending.open()
    assert not pending.answered("not-ours", {"x": 1})
    assert pending.answered(first, {"instance": "b"}) and await answer == {"instance": "b"}
    assert not pending.answered(first, {"instance": "b"})  # a duplicate, late
    pending.close(first)
    assert len(pending) == 0


# --- Three relays -------------------------------------------------------------------------------


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Cluster:
    def __init__(self, relays: list[RelayProcess], public: str) -> None:
        self.relays = relays
        self.public = public

    async def status_callback(
        self, relay: RelayProcess, caller: TwilioCaller, status: str, account_sid: str | None = None
    ) -> int:
        """Twilio's status callback for ``caller``'s call, signed as Twilio signs it, sent to ``relay``."""
        form = {"CallSid": caller.call_sid, "AccountSid": account_sid or caller.account_sid, "CallStatus": status,
                "SequenceNumber": "1"}  # fmt: skip
        signature = RequestValidator(SIM_AUTH_TOKEN).compute_signature(f"{self.public}/twilio/status", form)
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        url = f"http://127.0.0.1:{relay.port}/twilio/status"
        status_code, _ = await asyncio.to_thread(post, url, urlencode(form).encode(), headers)
        return status_code

    async def hang_up(self, relay: RelayProcess, call_sid: str, token: str = API_TOKEN) -> tuple[int, dict[str, Any]]:
        return await self.control(relay, call_sid, "hangup", token=token)

    async def control(
        self,
        relay: RelayProcess,
        call_sid: str,
        action: str,
        args: dict[str, str] | None = None,
        token: str = API_TOKEN,
    ) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{relay.port}/v1/calls/{call_sid}/{action}"
        body = orjson.dumps(args) if args else b""
        code, answer = await asyncio.to_thread(post, url, body, {"Authorization": f"Bearer {token}"})
        return code, orjson.loads(answer) if answer.startswith(b"{") else {"text": answer.decode()}


async def requests_seen(relay: RelayProcess) -> dict[tuple[str, str], float]:
    _, body = await http_get(f"http://127.0.0.1:{relay.port}/metrics")
    return {
        (s.labels["kind"], s.labels["where"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "relay_call_requests_total"
    }


@contextlib.asynccontextmanager
async def three_relays(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Any, str, RealtimeAgent]]:
    from tests.pgutil import TcpProxy, database_with_acme

    async with database_with_acme() as database, RealtimeAgent(FAST) as agent, TcpProxy() as balancer:
        public = f"http://127.0.0.1:{balancer.port}"
        shared = {"DATABASE_URL": database, "RELAY_PUBLIC_URL": public, "RELAY_API_TOKEN": API_TOKEN,
                  "RELAY_PEER_TIMEOUT_S": "3"}  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            relays = []
            for label in "abc":
                relay = RelayProcess(relay_env(agent, tmp_path, label, **shared))
                await relay.start()
                stack.push_async_callback(relay.stop)
                relays.append(relay)
            balancer.retarget(relays[0].port)
            yield Cluster(relays, public), balancer, database, agent


async def owners(database: str) -> dict[str, str]:
    """Which relay instance holds each live call, as recorded in Postgres."""
    db = await asyncpg.connect(database)
    try:
        return dict(await db.fetch("SELECT call_sid, instance_id FROM call_owners WHERE ended_at IS NULL"))
    finally:
        await db.close()


async def held_by(relay: RelayProcess, database: str) -> None:
    """Wait until a call is live on ``relay`` and recorded as held by it."""
    instance = (await relay.get("/healthz"))[1]["instance"]

    async def held() -> bool:
        return instance in (await owners(database)).values()

    await until(held, 30, "a live call recorded as the relay's")


@pytest.mark.postgres
async def test_each_request_sent_to_the_wrong_relay_is_answered_by_the_one_holding_the_call(tmp_path: Path) -> None:
    async with three_relays(tmp_path) as (cluster, balancer, database, _):
        a, b, c = cluster.relays
        owner = (await a.get("/healthz"))[1]["instance"]
        caller = TwilioCaller(f"{cluster.public}/twilio/voice", STAYS, to_number=ACME_NUMBER)
        call = asyncio.create_task(caller.run())
        await held_by(a, database)
        balancer.retarget(b.port)  # from here Twilio's requests reach b (the after-stream hook)

        # Twilio's status callback, progress only, at c: a's to answer, 20 times, timed.
        took = []
        for _ in range(20):
            began = time.perf_counter()
            assert await cluster.status_callback(c, caller, "in-progress") == 200
            took.append((time.perf_counter() - began) * 1000)
        print(f"\nstatus callback through another relay: p50 {statistics.median(took):.1f} ms, max {max(took):.1f} ms")
        assert (await requests_seen(a))["status", "for_peer"] == 20
        assert (await requests_seen(c))["status", "routed"] == 20

        # Signed, but about the call as if it were on another account: a refuses it.
        assert await cluster.status_callback(c, caller, "completed", account_sid="AC" + "9" * 32) == 403

        # A hang-up from the API at c: a ends the call after the line in progress.
        code, body = await cluster.hang_up(c, caller.call_sid)
        assert code == 202 and body["instance"] == owner and body["hung_up"], body
        result = await asyncio.wait_for(call, 30)
        # The after-stream hook reached b, which asked a how the stream ended: the call hangs up.
        assert result.closed_by_relay and result.twilio_hung_up and result.said_by_twilio == [], result
        assert (await requests_seen(b))["outcome", "routed"] == 1
        assert (await requests_seen(a))["outcome", "for_peer"] == 1

        # A final status callback at b ends a call whose stream is still up on a.
        balancer.retarget(a.port)
        second = TwilioCaller(f"{cluster.public}/twilio/voice", STAYS, to_number=ACME_NUMBER)
        call = asyncio.create_task(second.run())
        await held_by(a, database)
        assert await cluster.status_callback(b, second, "completed") == 200
        await asyncio.wait_for(call, 30)

        # A transfer from the API at c, for a call on a: a says the line and ends the stream; the
        # after-stream hook reaches b, which learns the target from a and answers <Dial>.
        balancer.retarget(a.port)
        third = TwilioCaller(f"{cluster.public}/twilio/voice", STAYS, to_number=ACME_NUMBER)
        call = asyncio.create_task(third.run())
        await held_by(a, database)
        balancer.retarget(b.port)
        await eventually(lambda: bool(third.result.turns and third.result.turns[0].heard), what="the first answer")
        code, body = await cluster.control(c, third.call_sid, "transfer", {"to": "+15550701111"})
        assert code == 202 and body["instance"] == owner and body["transferring"], body
        result = await asyncio.wait_for(call, 30)
        assert result.closed_by_relay and result.dialed == ["+15550701111"], result

        # Bad requests: a wrong token, a call nobody holds, junk.
        assert (await cluster.hang_up(c, caller.call_sid, token="wrong"))[0] == 401
        assert (await cluster.hang_up(c, "CA" + "f" * 32))[0] == 404
        assert (await cluster.hang_up(c, "not-a-sid"))[0] == 400
        db = await asyncpg.connect(database)
        try:
            ends = dict(await db.fetch("SELECT call_sid, end_reason FROM calls"))
        finally:
            await db.close()
        assert ends == {caller.call_sid: "api_hangup", second.call_sid: "call_completed", third.call_sid: "transferred"}
        assert await owners(database) == {}  # no call is live: none is recorded as held


@pytest.mark.postgres
async def test_a_relay_that_dies_stops_being_asked_and_its_calls_are_cleared(tmp_path: Path) -> None:
    async with three_relays(tmp_path) as (cluster, balancer, database, _agent):
        a, b, _c = cluster.relays
        caller = TwilioCaller(f"{cluster.public}/twilio/voice", STAYS, to_number=ACME_NUMBER)
        call = asyncio.create_task(caller.run())
        await held_by(a, database)
        a.signal(signal.SIGKILL)
        balancer.retarget(b.port)  # its health checks fail: the balancer sends Twilio to b
        began = time.perf_counter()
        code, _ = await cluster.hang_up(b, caller.call_sid)  # a is still taken for alive: b waits, bounded
        waited = time.perf_counter() - began
        assert code == 504 and waited < 5, (code, waited)

        async def cleared() -> bool:
            return not await owners(database)

        await until(cleared, 15, "the dead relay's call cleared")
        assert (await cluster.hang_up(b, caller.call_sid))[0] == 404
        result = await asyncio.wait_for(call, 30)
        assert result.said_by_twilio, "the caller of a relay that died hears the failure message"
