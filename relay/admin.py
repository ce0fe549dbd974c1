"""The store commands of ``relay``: migrate, tenants, numbers, agents (Postgres); calls, turns
and usage (either store).

Every bad input gets one line that says what is wrong and exit status 2, the same on both
stores: a limit out of range, an unknown tenant or agent, a number that is not E.164, a call
sid that is not one, a Postgres-only command on the embedded store. The tenant's secrets (its
Twilio auth token) are read from stdin, never the command line, and never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from relay import erasure_cli, models, retention_cli, usage_report
from relay.agents import BACKENDS, RANGES, Agent
from relay.config import Settings
from relay.errors import InputError
from relay.redaction import Redaction
from relay.store import DEFAULT_TENANT
from relay.tools import cli as tool_cli
from relay.twilio import CALL_SID

COMMANDS = (
    "migrate", "tenants", "numbers", "agents", "calls", "turns", "usage", "keys", "call", "campaign", "jobs",
    *tool_cli.COMMANDS, "retention", "erase",
)  # fmt: skip
# Commands on the outbound queue and API keys, served by both stores (``_outbound``).
OUTBOUND = ("keys", "call", "campaign", "jobs")
POSTGRES_ONLY = ("migrate", "tenants", "numbers", "agents")
# The agent settings the CLI may set (``--vad-silence-ms`` sets vad_silence_ms, and so on).
AGENT_OPTIONS = (
    "instructions",
    "voice",
    "greeting",
    "model",
    "transcription_model",
    "vad_threshold",
    "vad_silence_ms",
    "vad_prefix_ms",
    "max_concurrent_calls",
    "calls_per_minute",
    "reasoning_effort",
    "backend",
    "voicemail_message",
)
# Settings a flag may set to None ("none": no limit); present on the command line only when given.
_CLEARABLE = ("max_concurrent_calls", "calls_per_minute")


def limit(text: str) -> int | None:
    """A call limit from the command line: a whole number in range, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    lo, hi = RANGES["max_concurrent_calls"]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number (or none)") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is outside {lo:g}..{hi:g} (none: no limit)")
    return value


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """The store commands' parsers, under ``relay``'s subcommands."""
    migrate = commands.add_parser("migrate", help="create or upgrade the Postgres schema (DATABASE_URL)")
    migrate.add_argument(
        "--supabase",
        action="store_true",
        help="also let a Supabase/PostgREST project's users read their tenant's rows with their own tokens "
        "(the tenant_id claim; role authenticated, read-only; anon gets nothing)",
    )
    tenants = commands.add_parser("tenants", help="add or list tenants (Postgres)")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    add_tenant = tenant_actions.add_parser("add", help="add a tenant, with a default agent from RELAY_AGENT_*")
    add_tenant.add_argument("tenant_id")
    add_tenant.add_argument("--name", default="")
    add_tenant.add_argument("--max-calls", type=limit, help="concurrent calls admitted (default: no limit)")
    add_tenant.add_argument("--calls-per-minute", type=limit, help="calls admitted per minute (default: no limit)")
    tenant_actions.add_parser("list", help="list tenants")
    set_token = tenant_actions.add_parser(
        "set-token", help="the tenant's Twilio (sub)account: auth token read from stdin (empty: remove)"
    )
    set_token.add_argument("tenant_id")
    set_token.add_argument("--account-sid", help="the AccountSid the token belongs to (AC…); required with a token")

    set_outbound = tenant_actions.add_parser(
        "set-outbound", help="the tenant's caller ID for calls relay places, and its campaigns' quiet hours"
    )
    set_outbound.add_argument("tenant_id")
    set_outbound.add_argument("--from", dest="from_number", help="caller ID (E.164; default: its first number)")
    set_outbound.add_argument("--timezone", help="IANA time zone of the quiet hours (default UTC)")
    set_outbound.add_argument("--quiet-hours", help="HH:MM-HH:MM local time when no campaign call is placed")
    set_outbound.add_argument(
        "--business-hours", help="when it is open, e.g. 'mon-fri 09:00-17:00, sat 10:00-14:00' (unset: never)"
    )
    set_outbound.add_argument(
        "--on-call", help="who an after-hours escalation reaches, in order: 'Dana=+1555…,Lee=+1555…'"
    )
    set_outbound.add_argument("--race-timeout-s", type=int, help="how long each on-call contact has to take it")

    set_key = tenant_actions.add_parser(
        "set-backend-key",
        help="the tenant's own key for a speech backend, read from stdin (empty: the deployment's again)",
    )
    set_key.add_argument("tenant_id")
    set_key.add_argument("backend", choices=BACKENDS)

    set_redaction = tenant_actions.add_parser(
        "set-redaction",
        help="keep card numbers, digit runs, e-mail addresses (and your patterns) out of the tenant's stored turns",
    )
    set_redaction.add_argument("tenant_id")
    set_redaction.add_argument(
        "--pattern", action="append", default=[], metavar="NAME=REGEX", help="also stored as [NAME] (repeatable)"
    )
    set_redaction.add_argument("--mask-dtmf", action="store_true", help="store keys pressed as *")
    set_redaction.add_argument("--off", action="store_true", help="store turns as said again")

    numbers = commands.add_parser("numbers", help="route a phone number to a tenant (Postgres)")
    number_actions = numbers.add_subparsers(dest="action", required=True)
    add_number = number_actions.add_parser("add", help="route an E.164 number to a tenant and agent")
    add_number.add_argument("e164")
    add_number.add_argument("--tenant", required=True)
    add_number.add_argument("--agent", default="default")

    agents = commands.add_parser("agents", help="a tenant's agents: how the model behaves on its calls (Postgres)")
    agent_actions = agents.add_subparsers(dest="action", required=True)
    for action, text in (
        ("add", "add an agent; unset values come from RELAY_AGENT_* and friends"),
        ("set", "change an agent's settings; unset values stay"),
    ):
        parser = agent_actions.add_parser(action, help=text)
        parser.add_argument("agent_id")
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--instructions")
        parser.add_argument("--voice")
        parser.add_argument("--greeting")
        parser.add_argument(
            "--voicemail-message",
            help="on a call the agent placed that a machine answers: the message left after the beep (empty: hang up)",
        )
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            help="the speech backend (RELAY_BACKEND by default); openai-live takes a GPT-Live --model (gpt-live-1)",
        )
        parser.add_argument("--model", help="the speech model (RELAY_REALTIME_MODEL, or RELAY_LIVE_MODEL, by default)")
        parser.add_argument("--transcription-model")
        parser.add_argument("--vad-threshold", type=float)
        parser.add_argument("--vad-silence-ms", type=int)
        parser.add_argument("--vad-prefix-ms", type=int)
        parser.add_argument(
            "--reasoning-effort",
            help=f"how hard a reasoning model (gpt-realtime-2 and later) thinks before it speaks: "
            f"{', '.join(models.REASONING_EFFORTS)}",
        )
        parser.add_argument(
            "--max-calls",
            dest="max_concurrent_calls",
            type=limit,
            default=argparse.SUPPRESS,
            help="the agent's own concurrent-call limit (none: no limit)",
        )
        parser.add_argument(
            "--calls-per-minute",
            dest="calls_per_minute",
            type=limit,
            default=argparse.SUPPRESS,
            help="the agent's own calls-per-minute limit (none: no limit)",
        )
    list_agents = agent_actions.add_parser("list", help="a tenant's agents")
    list_agents.add_argument("--tenant", required=True)
    show_agent = agent_actions.add_parser("show", help="one agent")
    show_agent.add_argument("agent_id")
    show_agent.add_argument("--tenant", required=True)

    calls = commands.add_parser("calls", help="recent calls of a tenant, read through row-level security")
    calls.add_argument("--tenant", default=DEFAULT_TENANT)
    calls.add_argument("--limit", type=int, default=20)
    tool_cli.add_control(calls)
    turns = commands.add_parser("turns", help="stored turns of a tenant's calls, read through row-level security")
    turns.add_argument("--tenant", default=DEFAULT_TENANT)
    turns.add_argument("--call", help="one call's turns (default: all of the tenant's)")
    keys = commands.add_parser("keys", help="a tenant's API keys for /v1/calls and /v1/campaigns")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create_key = key_actions.add_parser("create", help="make a key: printed once, stored only as a hash")
    create_key.add_argument("--tenant", default=DEFAULT_TENANT)
    create_key.add_argument("--name", default="", help="what the key is for")
    revoke_key = key_actions.add_parser("revoke", help="revoke a key (every relay refuses it within seconds)")
    revoke_key.add_argument("key_id")
    revoke_key.add_argument("--tenant", default=DEFAULT_TENANT)
    list_keys = key_actions.add_parser("list", help="the tenant's keys (never the keys themselves)")
    list_keys.add_argument("--tenant", default=DEFAULT_TENANT)
    call = commands.add_parser("call", help="queue a call for the agent to place (a running relay places it)")
    call.add_argument("to", help="the number to call, E.164")
    call.add_argument("--tenant", default=DEFAULT_TENANT)
    call.add_argument("--agent", default="default")
    call.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a variable the agent is given")
    call.add_argument("--idempotency-key", default="", help="the same key queues the call once")
    campaign = commands.add_parser("campaign", help="queue a CSV of calls (header row; 'to' column, E.164)")
    campaign.add_argument("file", help="the CSV: every column but 'to' is a variable of its call")
    campaign.add_argument("--tenant", default=DEFAULT_TENANT)
    campaign.add_argument("--agent", default="default")
    jobs = commands.add_parser("jobs", help="a tenant's outbound jobs and what became of them")
    jobs.add_argument("--tenant", default=DEFAULT_TENANT)
    jobs.add_argument("--campaign", default="", help="one campaign's jobs")
    jobs.add_argument("--limit", type=int, default=100)

    usage = commands.add_parser("usage", help="what a tenant's calls used and cost, read through row-level security")
    usage.add_argument("--tenant", default=DEFAULT_TENANT)
    usage.add_argument("--since", help="from this UTC date (YYYY-MM-DD) or ISO time on (default: all)")
    usage.add_argument("--by", choices=usage_report.BY, default="day", help="one row per day (default), call or agent")
    usage.add_argument("--json", action="store_true", help="print the report as JSON, costs as exact decimal strings")
    tool_cli.add_commands(commands)
    retention_cli.add_commands(commands)
    erasure_cli.add_commands(commands)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one store command; a bad input prints one line and returns 2."""
    try:
        if args.command == "calls" and not 1 <= args.limit <= 10_000:
            raise InputError(f"--limit {args.limit} is outside 1..10000")
        if getattr(args, "call", None) and not CALL_SID.fullmatch(args.call):
            raise InputError(f"{args.call[:40]!r} is not a call sid (CA followed by 32 hex digits)")
        if args.command == "usage":
            try:
                args.since_epoch = usage_report.since_epoch(args.since)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        if args.command == "calls" and args.action == "control":
            return tool_cli.control(args, settings)
        if args.command == "retention":
            await retention_cli.run(args, settings)
            return 0
        if args.command == "erase":
            await erasure_cli.run(args, settings)
            return 0
        if args.command in tool_cli.COMMANDS:
            await tool_cli.run(args, settings)
            return 0
        if args.command in OUTBOUND:
            return await _outbound(args, settings)
        if not settings.database_url:
            return await _embedded(args, settings)
        return await _postgres(args, settings)
    except InputError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return 2


async def _outbound(args: argparse.Namespace, settings: Settings) -> int:
    """API keys and the outbound queue, on either store."""
    from relay.outbound import wiring

    if not settings.database_url:
        if args.tenant != DEFAULT_TENANT:
            raise InputError(f"no tenant {args.tenant[:100]!r} (the embedded store has one: {DEFAULT_TENANT!r})")
        jobs = await wiring.embedded_jobs(settings)
        try:
            await _outbound_command(jobs, args)
        finally:
            await jobs.queue.close()
        return 0
    from relay import pg
    from relay.pg.jobs import postgres_jobs

    async with pg.Directory.connect(settings.database_url) as directory:
        await directory.require_tenant(args.tenant)
        jobs = postgres_jobs(
            directory.pool, directory, account_sid=settings.twilio_account_sid, from_number=settings.outbound_from
        )
        await _outbound_command(jobs, args)
    return 0


async def _outbound_command(jobs: Any, args: argparse.Namespace) -> None:
    from relay.outbound import jobs as job_rules

    if args.command == "keys":
        if args.action == "create":
            key_id, key = await jobs.keys.create(args.tenant, args.name)
            print(f"key {key_id} for tenant {args.tenant} (shown once; relay keeps only its hash):\n{key}")
        elif args.action == "revoke":
            if not await jobs.keys.revoke(args.tenant, args.key_id):
                raise InputError(f"tenant {args.tenant!r} has no live key {args.key_id[:40]!r}")
            print(f"key {args.key_id} revoked")
        else:
            _print_rows(await jobs.keys.list(args.tenant))
    elif args.command == "call":
        if any("=" not in v for v in args.var):
            raise InputError("--var takes NAME=VALUE")
        variables = dict(v.split("=", 1) for v in args.var)
        spec = job_rules.CallSpec(args.to, variables, args.idempotency_key or job_rules.new_id("key_"))
        if spec.problems():
            raise InputError("; ".join(spec.problems()))
        (job,) = await jobs.enqueue(args.tenant, args.agent, [spec])
        _print_rows([job.public()])
    elif args.command == "campaign":
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {args.file}: {exc}") from None
        specs = job_rules.parse_campaign_csv(text)
        # The file's content is the campaign's identity: queued twice, its calls are placed once.
        key = "csv:" + hashlib.sha256(text.encode()).hexdigest()
        summary = await jobs.campaign(args.tenant, args.agent, specs, key)
        print(f"campaign {summary['campaign']}: {summary['calls']} call(s) {summary['states']}")
    else:
        if not 1 <= args.limit <= 10_000:
            raise InputError(f"--limit {args.limit} is outside 1..10000")
        found = await jobs.queue.jobs(args.tenant, campaign_id=args.campaign, limit=args.limit)
        _print_rows([job.public() for job in found])


async def _embedded(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in POSTGRES_ONLY:
        raise InputError("needs DATABASE_URL (the embedded store is single-tenant; RELAY_AGENT_* is its agent)")
    if args.tenant != DEFAULT_TENANT:
        raise InputError(f"no tenant {args.tenant[:100]!r} (the embedded store has one: {DEFAULT_TENANT!r})")
    from relay.store import SQLiteStore

    store = SQLiteStore(settings.sqlite_path, dead_letter_path=settings.dead_letter_path)
    await store.open()
    try:
        if args.command == "usage":
            _print_usage(args, *await store.usage(args.tenant, args.by, args.since_epoch))
            return 0
        if args.command == "calls":
            rows: list[dict[str, object]] = list(await store.calls(args.limit))
        else:
            rows = [asdict(t) for t in await store.turns(args.call)] if args.call else []
    finally:
        await store.close()
    _print_rows(rows)
    return 0


async def _postgres(args: argparse.Namespace, settings: Settings) -> int:
    from relay import pg

    if args.command == "migrate":
        applied = await pg.migrate(settings.database_url, supabase=args.supabase)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    try:
        async with pg.Directory.connect(settings.database_url) as directory:
            handler: Callable[[pg.Directory, argparse.Namespace, Settings], Awaitable[None]] = _HANDLERS[
                (args.command, getattr(args, "action", None))
            ]
            await handler(directory, args, settings)
    except pg.CheckViolationError as exc:  # a bound only the database knew
        raise InputError(f"the database refused a value ({exc.constraint_name})") from None
    return 0


async def _tenants_add(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.add_tenant(args.tenant_id, args.name or args.tenant_id, settings.agent)
    if args.max_calls is not None or args.calls_per_minute is not None:
        await directory.set_limits(args.tenant_id, args.max_calls, args.calls_per_minute)
    print(f"tenant {args.tenant_id} added")


async def _tenants_list(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    _print_rows(await directory.list_tenants())


async def _tenants_set_token(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    token = sys.stdin.readline().strip()  # stdin, never argv: shell history and ps show argv
    await directory.set_auth_token(args.tenant_id, token or None, args.account_sid)
    print(f"tenant {args.tenant_id}: Twilio auth token {'set for ' + args.account_sid if token else 'removed'}")


async def _tenants_set_backend_key(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    key = sys.stdin.readline().strip()  # stdin, never argv: shell history and ps show argv
    await directory.set_backend_key(args.tenant_id, args.backend, key or None)
    print(f"tenant {args.tenant_id}: {args.backend} calls use {'its own key' if key else 'the deployment key'}")


async def _tenants_set_outbound(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.set_outbound(
        args.tenant_id,
        outbound_from=args.from_number,
        timezone=args.timezone,
        quiet_hours=args.quiet_hours,
        business_hours=args.business_hours,
        on_call=args.on_call,
        race_timeout_s=args.race_timeout_s,
    )
    print(f"tenant {args.tenant_id}: outbound settings saved")


async def _tenants_set_redaction(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    if any("=" not in p for p in args.pattern):
        raise InputError("--pattern takes NAME=REGEX")
    patterns = tuple((name, regex) for name, _, regex in (p.partition("=") for p in args.pattern))
    redaction = Redaction(patterns, args.mask_dtmf)
    if redaction.problems():
        raise InputError("; ".join(redaction.problems()))
    await directory.set_redaction(args.tenant_id, None if args.off else redaction)
    print(f"tenant {args.tenant_id}: stored turns are " + ("as said" if args.off else "redacted"))


async def _numbers_add(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.add_number(args.e164, args.tenant, args.agent)
    print(f"{args.e164} -> tenant {args.tenant}, agent {args.agent}")


def _agent_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line."""
    return {
        name: getattr(args, name)
        for name in AGENT_OPTIONS
        if (name in _CLEARABLE and hasattr(args, name)) or getattr(args, name, None) is not None
    }


async def _agents_add(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.require_tenant(args.tenant)
    if await directory.get_agent(args.tenant, args.agent_id) is not None:
        raise InputError(f"tenant {args.tenant!r} has an agent {args.agent_id!r} already (relay agents set changes it)")
    agent = Agent.from_profile(args.tenant, args.agent_id, settings.agent)
    _print_rows([asdict(await directory.add_agent(dataclasses.replace(agent, **_agent_changes(args))))])


async def _agents_set(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    changes = _agent_changes(args)
    if not changes:
        raise InputError("nothing to change: give at least one setting (relay agents set --help)")
    _print_rows([asdict(await directory.set_agent(args.tenant, args.agent_id, **changes))])


async def _agents_list(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    _print_rows([asdict(a) for a in await directory.list_agents(args.tenant)])


async def _agents_show(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    agent = await directory.get_agent(args.tenant, args.agent_id)
    if agent is None:
        await directory.require_tenant(args.tenant)
        raise InputError(f"tenant {args.tenant!r} has no agent {args.agent_id[:100]!r}")
    _print_rows([asdict(agent)])


async def _calls(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    # Read as the tenant, through the role row-level security applies to.
    await directory.require_tenant(args.tenant)
    _print_rows(await directory.tenant_calls(args.tenant, args.limit))


async def _turns(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.require_tenant(args.tenant)
    _print_rows([asdict(t) for t in await directory.tenant_turns(args.tenant, args.call)])


async def _usage(directory: Any, args: argparse.Namespace, settings: Settings) -> None:
    await directory.require_tenant(args.tenant)
    _print_usage(args, *await directory.tenant_usage(args.tenant, args.by, args.since_epoch))


def _print_usage(args: argparse.Namespace, rows: list[dict[str, Any]], unpriced: list[dict[str, Any]]) -> None:
    report = usage_report.report(args.tenant, args.by, args.since_epoch, rows, unpriced)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(usage_report.format_table(report))


_HANDLERS: dict[tuple[str, str | None], Callable[..., Awaitable[None]]] = {
    ("tenants", "add"): _tenants_add,
    ("tenants", "list"): _tenants_list,
    ("tenants", "set-token"): _tenants_set_token,
    ("tenants", "set-outbound"): _tenants_set_outbound,
    ("tenants", "set-redaction"): _tenants_set_redaction,
    ("tenants", "set-backend-key"): _tenants_set_backend_key,
    ("numbers", "add"): _numbers_add,
    ("agents", "add"): _agents_add,
    ("agents", "set"): _agents_set,
    ("agents", "list"): _agents_list,
    ("agents", "show"): _agents_show,
    ("calls", None): _calls,
    ("turns", None): _turns,
    ("usage", None): _usage,
}


def _print_rows(rows: list[dict[str, object]]) -> None:
    sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
