"""The package's layout holds: Postgres (and asyncpg) only when a database is configured, a store
that does not read the environment, the development tools apart from the service, every package
in the distribution."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "relay"
PG = RELAY / "pg"

LOADED = "sorted(m for m in sys.modules if m == 'asyncpg' or m.startswith(('asyncpg.', 'relay.pg')))"


def python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _sources(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def test_importing_the_service_loads_neither_asyncpg_nor_relay_pg() -> None:
    python(
        "import relay.server, relay.admin, relay.__main__, relay.config, relay.store, relay.admission, "
        "relay.tenants, relay.demo; import sys; assert 'asyncpg' not in sys.modules; "
        f"assert {LOADED} == [], {LOADED}; "
        "assert not [m for m in sys.modules if m.startswith('relay.devtools')]"
    )


def test_the_embedded_stores_commands_load_neither(tmp_path: Path) -> None:
    out = python(
        "import os, sys; os.environ.pop('DATABASE_URL', None); os.environ['RELAY_SQLITE_PATH'] = sys.argv[1]\n"
        "from relay.__main__ import main\n"
        f"assert main(['calls']) == 0 and main(['turns']) == 0\nprint({LOADED})\n",
        str(tmp_path / "relay.sqlite3"),
    )
    assert out.splitlines()[-1] == "[]"


def test_serving_on_the_embedded_store_loads_neither(tmp_path: Path) -> None:
    out = python(
        "import asyncio, logging, os, signal, sys\n"
        "from relay.__main__ import serve\n"
        "from relay.config import Settings\n"
        "seen = []\n"
        "class Started(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        if 'listening on' in record.getMessage():\n"
        f"            seen.append({LOADED})\n"
        "            # after serve() has set its signal handlers, which it does once it has logged this\n"
        "            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)\n"
        "logging.getLogger('relay').addHandler(Started())\n"
        "logging.getLogger('relay').setLevel(logging.INFO)\n"
        "asyncio.run(serve(Settings(host='127.0.0.1', port=0, public_url='http://127.0.0.1', openai_api_key='sk-x',\n"
        "                           twilio_auth_token='x', sqlite_path=sys.argv[1],\n"
        "                           dead_letter_path=sys.argv[1] + '.dead')))\n"
        "print(seen)\n",
        str(tmp_path / "relay.sqlite3"),
    )
    assert out.splitlines()[-1] == "[[]]"


def test_asyncpg_is_imported_in_relay_pg_alone_and_relay_pg_only_where_a_database_is_configured() -> None:
    for path in _sources(RELAY):
        in_pg = PG in path.parents
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if not in_pg:
                assert not any(n == "asyncpg" or n.startswith("asyncpg.") for n in names), where
                # relay.pg is imported inside the functions that run with DATABASE_URL set, never on load
                assert node not in top_level or not any(n == "relay.pg" or n.startswith("relay.pg.") for n in names), (
                    where
                )


def test_the_postgres_code_does_not_read_the_environment() -> None:
    for path in _sources(PG):
        text = path.read_text(encoding="utf-8")
        for word in ("os.environ", "getenv(", "relay.config", "Settings("):
            assert word not in text, f"{path.relative_to(ROOT)} mentions {word}"
    assert python("import relay.pg, sys; print('relay.config' in sys.modules)").strip() == "False"


def test_every_package_and_the_migrations_are_in_the_distribution() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in RELAY.rglob("__init__.py") if "__pycache__" not in p.parts
    }
    assert set(tool["packages"]) == packages
    assert "*.sql" in tool["package-data"]["relay.pg.migrations"]
    assert sorted(p.name for p in (PG / "migrations").glob("*.sql"))
