"""``relay tools`` and ``relay transfers``: an agent's own tools and the people its calls can be
put through to, on either store (the embedded one has one tenant and agent); ``relay calls
control``: steer a live call through a running relay's API.

Bad input gets one line saying what is wrong and exit status 2, as every store command.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from relay.agents import DEFAULT_AGENT
from relay.config import Settings
from relay.errors import InputError
from relay.store import DEFAULT_TENANT
from relay.tools.spec import TenantTool, TransferTarget
from relay.tools.store import SQLiteToolStore, ToolStore

COMMANDS = ("tools", "transfers")


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    tools = commands.add_parser("tools", help="an agent's own tools: HTTPS endpoints the model may call")
    actions = tools.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add (or replace) a tool; prints the tenant's signing secret")
    add.add_argument("name", help="what the model calls it: 1..64 of A-Z a-z 0-9 _ -")
    add.add_argument("--description", required=True, help="what it does and when to use it, for the model")
    add.add_argument("--url", required=True, help="the tenant's endpoint (https://)")
    add.add_argument(
        "--schema",
        default='{"type": "object", "properties": {}}',
        help="JSON Schema of the arguments: JSON, or @FILE (default: no arguments)",
    )
    add.add_argument("--timeout-ms", type=int, default=5000, help="how long an answer may take (100..30000)")
    add.add_argument("--filler", default="", help="what the agent says while a slow answer is awaited")
    listing = actions.add_parser("list", help="an agent's tools")
    remove = actions.add_parser("rm", help="remove a tool")
    remove.add_argument("name")
    secret = actions.add_parser("secret", help="print the tenant's signing secret (HMAC-SHA256 of t.body)")
    secret.add_argument("--rotate", action="store_true", help="replace it (endpoints must learn the new one)")
    for parser in (add, listing, remove, secret):
        parser.add_argument("--tenant", default=DEFAULT_TENANT)
        if parser is not secret:
            parser.add_argument("--agent", default=DEFAULT_AGENT)

    transfers = commands.add_parser("transfers", help="who an agent may put a caller through to (transfer_call)")
    actions = transfers.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add (or replace) a transfer target")
    add.add_argument("label", help='what the model calls them ("front desk")')
    add.add_argument("--to", required=True, help="an E.164 number or a sip: address")
    add.add_argument("--warm", action="store_true", help="an agent briefs them first; the caller waits")
    listing = actions.add_parser("list", help="an agent's transfer targets")
    remove = actions.add_parser("rm", help="remove a transfer target")
    remove.add_argument("label")
    for parser in (add, listing, remove):
        parser.add_argument("--tenant", default=DEFAULT_TENANT)
        parser.add_argument("--agent", default=DEFAULT_AGENT)


def add_control(calls: argparse.ArgumentParser) -> None:
    """``relay calls control SID say|hangup|transfer``, under ``relay calls``."""
    actions = calls.add_subparsers(dest="action")
    control = actions.add_parser(
        "control",
        help="steer a live call through the relay's API (RELAY_API_TOKEN, or a tenant's key in RELAY_API_KEY)",
    )
    control.add_argument("call_sid")
    control.add_argument("what", choices=("say", "hangup", "transfer"))
    control.add_argument("--text", default="", help="say: the line; transfer: what the agent says first")
    control.add_argument("--to", default="", help="transfer: an E.164 number or sip: address")
    control.add_argument("--url", default="", help="the relay (default: http://127.0.0.1:RELAY_PORT)")


async def run(args: argparse.Namespace, settings: Settings) -> None:
    """One ``tools`` or ``transfers`` command."""
    async with _store(settings, args.tenant) as store:
        if args.command == "tools":
            await _tools(store, args)
        else:
            await _transfers(store, args)


@asynccontextmanager
async def _store(settings: Settings, tenant_id: str) -> AsyncIterator[ToolStore]:
    if not settings.database_url:
        yield SQLiteToolStore(settings.sqlite_path, DEFAULT_TENANT, DEFAULT_AGENT)
        return
    from relay import pg
    from relay.pg.tools import PostgresToolStore

    async with pg.Directory.connect(settings.database_url) as directory:
        await directory.require_tenant(tenant_id)
        yield PostgresToolStore(directory.pool)


async def _tools(store: ToolStore, args: argparse.Namespace) -> None:
    if args.action == "add":
        text = args.schema
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(f"cannot read {text[1:]}: {exc.strerror}") from None
        try:
            schema = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InputError("--schema is not JSON") from None
        tool = TenantTool(args.name, args.description, schema, args.url, args.timeout_ms, args.filler)
        secret = await store.add_tool(args.tenant, args.agent, tool)
        print(f"tool {tool.name} added to {args.tenant}/{args.agent}; requests are signed with:\n{secret}")
    elif args.action == "list":
        for tool in await store.tools(args.tenant, args.agent):
            print(orjson.dumps({**tool.function(), "url": tool.url, "timeout_ms": tool.timeout_ms}).decode())
    elif args.action == "rm":
        if not await store.remove_tool(args.tenant, args.agent, args.name):
            raise InputError(f"{args.tenant}/{args.agent} has no tool {args.name[:64]!r}")
        print(f"tool {args.name} removed")
    else:
        print(await store.secret(args.tenant, rotate=args.rotate))


async def _transfers(store: ToolStore, args: argparse.Namespace) -> None:
    if args.action == "add":
        target = TransferTarget(args.label, args.to, "warm" if args.warm else "cold")
        await store.add_target(args.tenant, args.agent, target)
        print(f"{target.mode} transfer target {target.label!r} ({target.target}) added")
    elif args.action == "list":
        for target in await store.targets(args.tenant, args.agent):
            print(f"{target.label}\t{target.target}\t{target.mode}")
    elif not await store.remove_target(args.tenant, args.agent, args.label):
        raise InputError(f"{args.tenant}/{args.agent} has no transfer target {args.label[:60]!r}")
    else:
        print(f"transfer target {args.label!r} removed")


def control(args: argparse.Namespace, settings: Settings) -> int:
    """``relay calls control``: one request to the running relay's call control API."""
    token = os.environ.get("RELAY_API_KEY") or settings.api_token
    if not token:
        raise InputError("set RELAY_API_TOKEN (the operator's) or RELAY_API_KEY (a tenant's key)")
    body: dict[str, str] = {}
    if args.what == "say":
        if not args.text.strip():
            raise InputError("say needs --text")
        body["text"] = args.text
    elif args.what == "transfer":
        if not args.to:
            raise InputError("transfer needs --to")
        body = {"to": args.to, **({"text": args.text} if args.text else {})}
    base = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    request = urllib.request.Request(
        f"{base}/v1/calls/{args.call_sid}/{args.what}",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"relay calls control: HTTP {exc.code}: {exc.read().decode()[:300]}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relay calls control: {base} unreachable ({exc})", file=sys.stderr)
        return 1
