"""The ``relay`` store commands: agents as real objects, and one clear line (exit 2) for every bad
input, the same on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from relay.__main__ import main
from tests.pgutil import create_database, drop_database, dsn

ENV = {
    "RELAY_AGENT_INSTRUCTIONS": "You answer for Acme. Be brief.",
    "RELAY_AGENT_VOICE": "cedar",
    "RELAY_REALTIME_MODEL": "gpt-realtime-2.1-mini",
    "RELAY_TRANSCRIPTION_MODEL": "gpt-4o-transcribe",
    "RELAY_VAD_SILENCE_MS": "700",
    "RELAY_GREETING": "Acme, hello.",
}


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[int, str, str]:
    if monkeypatch is not None and stdin:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _keep_the_runs_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` configures logging for a terminal; the test run's own log must stay as it is."""
    monkeypatch.setattr("relay.logs.configure", lambda level="INFO": None)


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    name = asyncio.run(create_database())
    monkeypatch.setenv("DATABASE_URL", dsn(name))
    monkeypatch.setenv("RELAY_SPOOL_PATH", str(tmp_path / "relay.spool"))  # (relay erase opens the store)
    monkeypatch.setenv("RELAY_DEAD_LETTER_PATH", str(tmp_path / "dead.jsonl"))
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    try:
        yield dsn(name)
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("RELAY_SQLITE_PATH", str(tmp_path / "relay.sqlite3"))
    return tmp_path / "relay.sqlite3"


@pytest.mark.postgres
def test_a_tenants_first_agent_is_the_environments(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenants", "add", "acme")[0] == 0
    code, out, _ = run(capsys, "agents", "show", "default", "--tenant", "acme")
    [agent] = orjson.loads(out)
    assert code == 0
    assert {
        k: agent[k]
        for k in ("instructions", "voice", "model", "transcription_model", "vad_silence_ms", "greeting", "backend")
    } == {
        "instructions": "You answer for Acme. Be brief.",
        "voice": "cedar",
        "model": "gpt-realtime-2.1-mini",
        "transcription_model": "gpt-4o-transcribe",
        "vad_silence_ms": 700,
        "greeting": "Acme, hello.",
        "backend": "openai-realtime",
    }
    assert agent["max_concurrent_calls"] is None and agent["calls_per_minute"] is None


@pytest.mark.postgres
def test_agents_are_added_changed_listed_and_shown(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "tenants", "add", "acme")
    code, out, _ = run(
        capsys,
        "agents",
        "add",
        "sales",
        "--tenant",
        "acme",
        "--voice",
        "ash",
        "--max-calls",
        "5",
        "--instructions",
        "You sell.",
        "--vad-threshold",
        "0.7",
    )
    assert code == 0 and orjson.loads(out)[0]["max_concurrent_calls"] == 5
    code, out, _ = run(
        capsys,
        "agents",
        "set",
        "sales",
        "--tenant",
        "acme",
        "--greeting",
        "Sales!",
        "--max-calls",
        "none",
        "--calls-per-minute",
        "30",
        "--model",
        "gpt-realtime-2.1",
        "--reasoning-effort",
        "minimal",
    )
    [sales] = orjson.loads(out)
    assert code == 0
    assert (
        sales["greeting"],
        sales["max_concurrent_calls"],
        sales["calls_per_minute"],
        sales["voice"],
        sales["model"],
        sales["vad_threshold"],
        sales["reasoning_effort"],
    ) == ("Sales!", None, 30, "ash", "gpt-realtime-2.1", 0.7, "minimal")
    # An agent on GPT-Live: its backend and one of its models (the database's CHECK allows it).
    code, out, _ = run(
        capsys, "agents", "set", "sales", "--tenant", "acme", "--backend", "openai-live", "--model", "gpt-live-1"
    )
    assert code == 0 and (orjson.loads(out)[0]["backend"], orjson.loads(out)[0]["model"]) == (
        "openai-live",
        "gpt-live-1",
    )
    code, out, _ = run(
        capsys,
        "agents",
        "set",
        "sales",
        "--tenant",
        "acme",
        "--backend",
        "openai-realtime",
        "--model",
        "gpt-realtime-2.1",
    )
    assert code == 0
    code, out, _ = run(capsys, "agents", "list", "--tenant", "acme")
    assert code == 0 and [a["agent_id"] for a in orjson.loads(out)] == ["default", "sales"]
    assert run(capsys, "numbers", "add", "+15550100009", "--tenant", "acme", "--agent", "sales")[0] == 0


@pytest.mark.postgres
@pytest.mark.parametrize(
    "argv, says",
    [
        (("agents", "add", "x", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("agents", "add", "default", "--tenant", "acme"), "has an agent 'default' already"),
        (("agents", "add", "x", "--tenant", "acme", "--voice", "nova"), "voice 'nova' is not one of"),
        (("agents", "add", "x", "--tenant", "acme", "--reasoning-effort", "none"), "reasoning effort 'none' is not"),
        (("agents", "add", "x", "--tenant", "acme", "--vad-threshold", "2"), "vad threshold 2.0 is outside 0..1"),
        (("agents", "add", "x", "--tenant", "acme", "--vad-silence-ms", "5"), "vad silence ms 5 is outside 100..10000"),
        (("agents", "add", "x", "--tenant", "acme", "--max-calls", "-1"), "-1 is outside 0..100000"),
        (("agents", "add", "x", "--tenant", "acme", "--calls-per-minute", "many"), "'many' is not a whole number"),
        (("agents", "add", "x", "--tenant", "acme", "--model", "gpt realtime"), "not a model name"),
        (("agents", "add", "x", "--tenant", "acme", "--backend", "openai-live"), "is not a GPT-Live model"),
        (("agents", "set", "nobody", "--tenant", "acme", "--voice", "ash"), "has no agent 'nobody'"),
        (("agents", "set", "default", "--tenant", "acme"), "nothing to change"),
        (("agents", "show", "nobody", "--tenant", "acme"), "has no agent 'nobody'"),
        (("agents", "list", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("tenants", "add", "t2", "--max-calls", "-1"), "-1 is outside 0..100000"),
        (("tenants", "add", "t2", "--calls-per-minute", "99999999"), "99999999 is outside 0..100000"),
        (("tenants", "set-token", "nosuch", "--account-sid", "AC" + "1" * 32), "no tenant 'nosuch'"),
        (("tenants", "set-token", "acme"), "needs its account"),
        (("tenants", "set-token", "acme", "--account-sid", "AC123"), "needs its account"),
        (("numbers", "add", "555-0100", "--tenant", "acme"), "is not an E.164 number"),
        (("numbers", "add", "+15550100001", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("numbers", "add", "+15550100001", "--tenant", "acme", "--agent", "nobody"), "has no agent 'nobody'"),
        (("calls", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("turns", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("turns", "--tenant", "acme", "--call", "CA-bogus"), "is not a call sid"),
        (("calls", "--tenant", "acme", "--limit", "0"), "--limit 0 is outside"),
        (("usage", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("usage", "--tenant", "acme", "--since", "yesterday"), "is not a date (YYYY-MM-DD)"),
        (("usage", "--tenant", "acme", "--by", "week"), "invalid choice: 'week'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    pg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], says: str
) -> None:
    run(capsys, "tenants", "add", "acme")
    code, out, err = run(capsys, *argv, stdin="a-token\n", monkeypatch=monkeypatch)
    assert code == 2 and out == ""
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, says",
    [
        (("calls", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("turns", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("turns", "--call", "CA-bogus"), "is not a call sid"),
        (("calls", "--limit", "0"), "--limit 0 is outside"),
        (("usage", "--tenant", "nosuch"), "no tenant 'nosuch'"),
        (("usage", "--since", "2026-13-01"), "is not a date (YYYY-MM-DD)"),
        (("tenants", "add", "t2", "--max-calls", "-1"), "-1 is outside 0..100000"),
        (("tenants", "add", "t2"), "needs DATABASE_URL"),
        (("agents", "list", "--tenant", "default"), "needs DATABASE_URL"),
        (("numbers", "add", "555-0100", "--tenant", "default"), "needs DATABASE_URL"),
        (("serve", "--workers", "0"), "0 workers is outside 1..256"),
        (("serve", "--workers", "many"), "'many' is not a number of workers (or auto)"),
    ],
)
def test_the_embedded_store_answers_bad_input_the_same_way(
    embedded: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert says in err and err.count("\n") == 1, err
    code, out, _ = run(capsys, "calls")
    assert code == 0 and orjson.loads(out) == []
    code, out, _ = run(capsys, "usage", "--json")
    assert code == 0 and orjson.loads(out)["rows"] == [] and orjson.loads(out)["total"]["cost_usd"] == "0.000000000"


@pytest.mark.postgres
def test_the_database_itself_refuses_what_relay_refuses(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "tenants", "add", "acme")

    async def attempts() -> list[str]:
        conn = await asyncpg.connect(pg)
        refused = []
        try:
            for column, value in (
                ("voice", "'nova'"),
                ("backend", "'openai'"),
                ("max_concurrent_calls", "-1"),
                ("calls_per_minute", "100001"),
                ("model", "''"),
                ("vad_silence_ms", "5"),
            ):
                try:
                    await conn.execute(f"UPDATE agents SET {column} = {value} WHERE tenant_id = 'acme'")
                except asyncpg.exceptions.CheckViolationError as exc:
                    refused.append(exc.constraint_name)
            try:
                await conn.execute("UPDATE tenants SET twilio_account_sid = 'AC1' WHERE tenant_id = 'acme'")
            except asyncpg.exceptions.CheckViolationError as exc:
                refused.append(exc.constraint_name)
        finally:
            await conn.close()
        return refused

    assert len(asyncio.run(attempts())) == 7


SCHEMA = '{"type": "object", "properties": {"party": {"type": "integer"}}, "required": ["party"]}'


def test_tools_and_transfer_targets_on_the_embedded_store(embedded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "tools", "add", "book_table", "--description", "Book a table.", "--url", "https://t.example/book",
        "--schema", SCHEMA, "--filler", "One moment.",
    )  # fmt: skip
    secret = out.splitlines()[-1]
    assert code == 0 and secret.startswith("rts_")
    code, out, _ = run(capsys, "tools", "list")
    assert code == 0 and orjson.loads(out)["name"] == "book_table" and orjson.loads(out)["timeout_ms"] == 5000
    assert run(capsys, "tools", "secret")[1].strip() == secret  # the same until rotated
    assert run(capsys, "tools", "secret", "--rotate")[1].strip() != secret
    assert run(capsys, "transfers", "add", "front desk", "--to", "+15551230000")[0] == 0
    assert run(capsys, "transfers", "add", "manager", "--to", "+15551230001", "--warm")[0] == 0
    code, out, _ = run(capsys, "transfers", "list")
    assert out.splitlines() == ["front desk\t+15551230000\tcold", "manager\t+15551230001\twarm"]
    assert run(capsys, "tools", "rm", "book_table")[0] == 0 and run(capsys, "tools", "list")[1] == ""
    assert run(capsys, "transfers", "rm", "manager")[0] == 0


@pytest.mark.parametrize(
    "argv, says",
    [
        (("tools", "add", "end_call", "--description", "x", "--url", "https://t.example/x"), "built-in tool's name"),
        (("tools", "add", "x", "--description", "x", "--url", "http://t.example/x"), "must be an https:// URL"),
        (("tools", "add", "x", "--description", "x", "--url", "https://t.example/x", "--schema", "{"), "not JSON"),
        (("tools", "add", "x", "--description", "x", "--url", "https://t.example/x", "--schema", '{"type": 1}'),
         "not a valid JSON Schema"),
        (("tools", "add", "x", "--description", "x", "--url", "https://t.example/x", "--agent", "b"), "no agent"),
        (("tools", "rm", "nosuch"), "has no tool 'nosuch'"),
        (("transfers", "add", "desk", "--to", "555"), "neither an E.164 number nor a sip: address"),
        (("transfers", "add", "desk", "--to", "sip:desk@pbx.example.com", "--warm"), "must be an E.164 number"),
        (("transfers", "rm", "nosuch"), "has no transfer target 'nosuch'"),
        (("calls", "control", "CA" + "0" * 32, "say"), "RELAY_API_TOKEN"),
    ],
)  # fmt: skip
def test_bad_tools_and_targets_get_one_line_and_exit_2(
    embedded: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    says: str,
) -> None:
    monkeypatch.delenv("RELAY_API_TOKEN", raising=False)
    monkeypatch.delenv("RELAY_API_KEY", raising=False)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert says in err and err.count("\n") == 1, err


@pytest.mark.postgres
def test_tools_are_a_tenants_own_on_postgres(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "tenants", "add", "acme")
    argv = ("tools", "add", "book", "--description", "Book.", "--url", "https://t.example/b", "--tenant")
    assert run(capsys, *argv, "acme")[0] == 0
    code, _, err = run(capsys, *argv, "nosuch")
    assert code == 2 and "no tenant 'nosuch'" in err
    assert orjson.loads(run(capsys, "tools", "list", "--tenant", "acme")[1])["name"] == "book"


@pytest.mark.postgres
def test_migrate_sets_a_supabase_project_up_on_request(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate", "--supabase")
    assert code == 0 and out.strip() == "applied: supabase"
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and "nothing (up to date)" in out


@pytest.mark.postgres
def test_a_tenants_redaction_is_set_and_read_back(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    from relay.pg import Directory
    from relay.redaction import Redaction

    run(capsys, "tenants", "add", "acme")
    assert run(capsys, "tenants", "set-redaction", "acme", "--pattern", r"order=ORD-\d+", "--mask-dtmf")[0] == 0
    code, _, err = run(capsys, "tenants", "set-redaction", "acme", "--pattern", "x=(")
    assert code == 2 and "not a regular expression" in err

    async def read() -> Redaction | None:
        async with Directory.connect(pg) as directory:
            return await directory.redaction("acme")

    assert asyncio.run(read()) == Redaction((("order", r"ORD-\d+"),), mask_dtmf=True)
    assert run(capsys, "tenants", "set-redaction", "acme", "--off")[0] == 0
    assert asyncio.run(read()) is None
    code, _, err = run(capsys, "tenants", "set-redaction", "nosuch")
    assert code == 2 and "no tenant 'nosuch'" in err


@pytest.mark.postgres
def test_retention_is_set_per_tenant_and_run_at_will(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "tenants", "add", "acme")
    assert run(capsys, "retention", "set", "acme", "--days", "30", "--usage-days", "400")[0] == 0
    code, out, _ = run(capsys, "retention", "run")
    assert code == 0 and out.startswith("deleted: call_turns 0, calls 0, usage 0")
    code, _, err = run(capsys, "retention", "set", "acme", "--days", "0")
    assert code == 2 and "days 0 is outside 1..36500" in err
    code, _, err = run(capsys, "retention", "run", "--tenant", "nosuch")
    assert code == 2 and "no tenant 'nosuch'" in err


def test_retention_on_the_embedded_store_is_the_environments(
    embedded: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_RETENTION_DAYS", "30")
    code, out, _ = run(capsys, "retention", "run")
    assert code == 0 and out.startswith("deleted: call_turns 0")
    code, _, err = run(capsys, "retention", "set", "default", "--days", "3")
    assert code == 2 and "RELAY_RETENTION_DAYS" in err


@pytest.mark.postgres
def test_erase_removes_a_callers_calls_and_lists_the_erasure(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "tenants", "add", "acme")
    code, out, _ = run(capsys, "erase", "--tenant", "acme", "--caller", "+15557654321")
    assert code == 0 and out.startswith("erased: calls 0, turns 0, usage 0, jobs 0, spooled 0, dead letters 0")
    code, out, _ = run(capsys, "erase", "--tenant", "acme", "--list")
    assert code == 0 and "by cli: calls 0" in out and "+1555" not in out
    code, _, err = run(capsys, "erase", "--tenant", "acme", "--caller", "5557654321")
    assert code == 2 and "E.164" in err
    code, _, err = run(capsys, "erase", "--tenant", "nosuch", "--caller", "+15557654321")
    assert code == 2 and "no tenant 'nosuch'" in err


def test_erase_on_the_embedded_store(embedded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "erase", "--caller", "+15557654321")
    assert code == 0 and out.startswith("erased: calls 0")
    code, _, err = run(capsys, "erase")
    assert code == 2 and "--caller" in err
    code, out, _ = run(capsys, "erase", "--list")
    assert code == 0 and "by cli" in out


@pytest.mark.postgres
def test_erase_says_when_a_running_relay_holds_the_spool(
    pg: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from relay.spool import Spool

    run(capsys, "tenants", "add", "acme")
    held = Spool(tmp_path / "relay.spool")  # as a relay serving here holds it
    held.open()
    try:
        code, out, _ = run(capsys, "erase", "--tenant", "acme", "--caller", "+15557654321")
    finally:
        held.close()
    assert code == 0 and "erased: calls 0" in out and "POST /v1/erasures" in out


@pytest.mark.postgres
def test_a_tenants_own_backend_key_is_set_from_stdin_and_read_by_relay_only(
    pg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.pg import Directory
    from relay.pg.db import as_tenant

    run(capsys, "tenants", "add", "acme")
    code, out, _ = run(
        capsys, "tenants", "set-backend-key", "acme", "gemini-live", stdin="AIza-acme\n", monkeypatch=monkeypatch
    )
    assert code == 0 and "its own key" in out and "AIza" not in out

    async def read() -> tuple[str | None, str | None]:
        async with Directory.connect(pg) as directory:
            own = await directory.backend_key("acme", "gemini-live")
            async with as_tenant(directory.pool, "acme") as conn:
                try:
                    await conn.fetch("SELECT api_key FROM backend_keys")
                    seen = "readable"
                except asyncpg.exceptions.InsufficientPrivilegeError:
                    seen = None
            return own, seen

    assert asyncio.run(read()) == ("AIza-acme", None)  # the tenant's readers never see it
    code, out, _ = run(capsys, "tenants", "set-backend-key", "acme", "gemini-live", stdin="\n", monkeypatch=monkeypatch)
    assert code == 0 and "the deployment key" in out
    assert asyncio.run(read())[0] is None
    code, _, err = run(capsys, "tenants", "set-backend-key", "nosuch", "deepgram", stdin="k\n", monkeypatch=monkeypatch)
    assert code == 2 and "no tenant 'nosuch'" in err
