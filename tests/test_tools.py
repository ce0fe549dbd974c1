"""The tenant's own tools, end to end: the model (simulated) calls a tool, relay POSTs its
arguments, signed, to the tenant's HTTPS endpoint (a local one with its own CA), and the result
reaches the model and is spoken; an endpoint that hangs, fails, answers garbage or 5 MB gives the
caller the agent's apology within the tool's timeout + 1 s, and the call goes on. Every call and
its result are stored as turns of role ``tool``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from relay.sim.agent import TOOL_FAILED
from relay.sim.caller import CallerScript, CallResult, TwilioCaller
from relay.store import TurnRecord
from relay.tools import signing
from relay.tools.invoke import MAX_ANSWER_BYTES, ToolContext, ToolInvoker
from relay.tools.spec import TenantTool, TransferTarget, transfer_tool
from relay.tools.store import AgentActions, SQLiteToolStore
from tests.test_outbound_calls import ACCOUNT, CALLER_ID, TOKEN, Stack, outbound_stack

BOOKED = "Booked a table for 2 at seven."
STILL = "Still checking the stock, bear with me."
TIMEOUT_MS = 1500
PARTY = {"type": "object", "properties": {"party": {"type": "integer", "minimum": 1}}, "required": ["party"]}


@dataclass
class Endpoint:
    """The tenant's HTTPS endpoint: what it was sent, and whether each signature held."""

    url: str
    secret: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)


@contextlib.asynccontextmanager
async def endpoint(ca: trustme.CA) -> AsyncIterator[Endpoint]:
    """One route per behaviour: /book answers, /hang never does, /fail is a 500, /garbage is
    not JSON, /huge is 5 MB."""
    found = Endpoint("")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        found.verified.append(signing.verify(found.secret, request.headers.get(signing.HEADER, ""), body, time.time()))
        found.requests.append(orjson.loads(body))
        kind = request.match_info["kind"]
        if kind == "book":
            party = found.requests[-1]["arguments"]["party"]
            return web.json_response({"say": f"Booked a table for {party} at seven.", "ref": "T-100"})
        if kind == "hang":
            await asyncio.sleep(30)
        if kind == "fail":
            return web.Response(status=500, text="boom")
        if kind == "garbage":
            return web.Response(text="<html>not json", content_type="application/json")
        return web.Response(body=b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/{kind}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"https://localhost:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, str]:
    authority = trustme.CA()
    path = tmp_path / "tenant-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


def script(*lines: str) -> CallerScript:
    return CallerScript(utterances=lines, lead_in_ms=200, answer_quiet_ms=2500, answer_timeout_ms=8000)


async def call(s: Stack, caller_script: CallerScript) -> tuple[CallResult, list[TurnRecord]]:
    caller = TwilioCaller(
        f"{s.url}/twilio/voice", caller_script, auth_token=TOKEN, account_sid=ACCOUNT, to_number=CALLER_ID
    )
    result = await caller.run()
    await s.store.flush()
    return result, await s.store.turns(result.call_sid)


async def test_a_tool_answer_reaches_the_model_and_is_spoken(tmp_path: Path, ca: tuple[trustme.CA, str]) -> None:
    async with (
        endpoint(ca[0]) as site,
        outbound_stack(tmp_path, {}, tools_ca_file=ca[1], tools_allow_private=True) as s,
    ):
        tool = TenantTool("book_table", "Book a table.", PARTY, f"{site.url}/book", TIMEOUT_MS)
        site.secret = await s.tools.add_tool("default", "default", tool)
        result, turns = await call(s, script("Can you book a table for 4 please?", "Thank you."))

    assert result.error is None and result.violations == []
    assert site.verified == [True]
    [sent] = site.requests
    assert sent["tool"] == "book_table" and sent["arguments"] == {"party": 4}
    assert sent["call_sid"] == result.call_sid and sent["tenant_id"] == "default"
    assert "Booked a table for 4 at seven" in result.turns[0].heard
    roles = [t.role for t in turns]
    assert roles.count("tool") == 1
    [tool_turn] = [t for t in turns if t.role == "tool"]
    assert tool_turn.text_generated == 'book_table {"party":4}'
    assert tool_turn.text_heard is not None and '"ref":"T-100"' in tool_turn.text_heard
    # in order: the caller's ask, the agent's "One moment.", the tool, the answer spoken
    spoken = [t for t in turns if t.seq > tool_turn.seq and t.role == "assistant"]
    assert spoken and "Booked a table for 4" in (spoken[0].text_heard or "")


# Each failure behind a tool of its own, asked for by a caller of its own, all at once.
FAILING = {
    "hang": ("check_stock", "Please check the stock of apples."),
    "fail": ("find_order", "Where is my order?"),
    "garbage": ("get_weather", "What is the weather like?"),
    "huge": ("list_menu", "Read me the menu."),
}


async def test_failing_tools_are_apologised_for_in_time_and_the_calls_go_on(
    tmp_path: Path, ca: tuple[trustme.CA, str]
) -> None:
    async with (
        endpoint(ca[0]) as site,
        outbound_stack(tmp_path, {}, tools_ca_file=ca[1], tools_allow_private=True) as s,
    ):
        schema = {"type": "object", "properties": {"item": {"type": "string"}}}
        for kind, (name, _) in FAILING.items():
            tool = TenantTool(name, "Ask the shop.", schema, f"{site.url}/{kind}", TIMEOUT_MS, filler=STILL)
            site.secret = await s.tools.add_tool("default", "default", tool)
        calls = await asyncio.gather(*(call(s, script(line, "What else is good?")) for _, line in FAILING.values()))

    assert site.verified == [True] * 4
    for kind, (result, turns) in zip(FAILING, calls, strict=True):
        assert result.error is None and result.violations == [], kind
        [tool_turn] = [t for t in turns if t.role == "tool"]
        assert tool_turn.text_generated is not None and tool_turn.text_generated.startswith(FAILING[kind][0])
        assert tool_turn.text_heard is not None and '"error"' in tool_turn.text_heard, kind
        [apology] = [t for t in turns if t.role == "assistant" and t.text_generated == TOOL_FAILED]
        assert apology.started_at - tool_turn.started_at <= TIMEOUT_MS / 1000 + 1.0, kind
        assert TOOL_FAILED.rstrip(".") in result.turns[0].heard, kind
        if kind == "hang":  # the wait was long enough for the filler line
            assert STILL.rstrip(".") in result.turns[0].heard
        # the call goes on: the next line is answered as usual
        assert len(result.turns) == 2 and result.turns[1].heard.startswith("You said"), kind


async def test_bad_arguments_are_refused_before_any_request(tmp_path: Path, ca: tuple[trustme.CA, str]) -> None:
    invoker = ToolInvoker(ca_file=ca[1], allow_private=True)
    tool = TenantTool("book_table", "Book a table.", PARTY, "https://localhost:1/book", TIMEOUT_MS)
    assert tool.check_arguments('{"party": 0}')[0] is None
    assert "party" in tool.check_arguments("{}")[1]
    assert tool.check_arguments("[1]")[1] == "the arguments must be a JSON object"
    assert tool.check_arguments('{"party": 3}') == ({"party": 3}, "")
    # nothing listens on port 1: a short error, never an exception
    output = await invoker.call(tool, ToolContext("CA" + "0" * 32, "t", "a", "s"), {"party": 3})
    assert output == {"error": "book_table could not be reached"}
    await invoker.close()


async def test_private_addresses_are_refused_unless_allowed() -> None:
    invoker = ToolInvoker()
    context = ToolContext("CA" + "0" * 32, "t", "a", "s")
    for url in ("https://127.0.0.1:9/x", "https://localhost:9/x", "https://169.254.169.254/latest"):
        tool = TenantTool("peek", "Peek.", {"type": "object"}, url, 1000)
        assert (await invoker.call(tool, context, {}))["error"] == "peek could not be reached"
    await invoker.close()
    assert MAX_ANSWER_BYTES < 5 * 1024 * 1024


def test_tools_and_targets_are_checked() -> None:
    assert TenantTool("end_call", "x", {"type": "object"}, "https://a.example/x").problems() == [
        "'end_call' is a built-in tool's name"
    ]
    problems = TenantTool("x y", "", {"type": "array"}, "http://a.example/x", 50).problems()
    assert len(problems) == 5
    assert TenantTool("ok", "Fine.", {"type": "object"}, "http://127.0.0.1:8/x").problems() == []
    assert TransferTarget("front desk", "+15551230000").problems() == []
    assert TransferTarget("sales", "sip:sales@pbx.example.com").problems() == []
    assert TransferTarget("sales", "sip:sales@pbx.example.com", "warm").problems() != []
    assert TransferTarget("", "bob", "lukewarm").problems() != []
    offered = transfer_tool((TransferTarget("front desk", "+15551230000"), TransferTarget("manager", "+15551230001")))
    assert offered["parameters"]["properties"]["target"]["enum"] == ["front desk", "manager"]


def test_signatures_verify_only_the_body_signed_recently() -> None:
    header = signing.sign("rts_secret", 1_000_000, b'{"a":1}')
    assert signing.verify("rts_secret", header, b'{"a":1}', 1_000_100)
    assert not signing.verify("rts_secret", header, b'{"a":2}', 1_000_100)
    assert not signing.verify("rts_other", header, b'{"a":1}', 1_000_100)
    assert not signing.verify("rts_secret", header, b'{"a":1}', 1_000_000 + signing.TOLERANCE_S + 1)
    assert not signing.verify("rts_secret", "garbage", b'{"a":1}', 1_000_100)


async def test_a_burst_of_calls_reads_an_agents_actions_once(tmp_path: Path) -> None:
    store = SQLiteToolStore(tmp_path / "relay.sqlite3", "default", "default")
    reads = 0
    read = store._read_actions

    async def counted(tenant_id: str, agent_id: str) -> AgentActions:
        nonlocal reads
        reads += 1
        return await read(tenant_id, agent_id)

    store._read_actions = counted  # type: ignore[method-assign]
    first = await asyncio.gather(*(store.actions("default", "default") for _ in range(50)))
    assert reads == 1 and first[0] == AgentActions()
    tool = TenantTool("book_table", "Book.", PARTY, "https://t.example/book")
    await store.add_tool("default", "default", tool)  # a change made here is seen at once
    assert (await store.actions("default", "default")).tools == (tool,) and reads == 2
    assert await store.remove_tool("default", "default", "book_table")
    assert (await store.actions("default", "default")).tools == () and reads == 3
