"""No secret reaches a log: runs last (in its test process), after the other tests have logged at DEBUG.

``tests/conftest.py`` sends every log record of the run, at DEBUG, to one file per test process.
This test also runs one whole call of its own at DEBUG (with a Postgres password in the DSN), so
it proves something even when run alone, then greps every file of the run for every secret the
tests used. With several workers the run's end greps them all again, once every test is done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from relay.pg import PostgresStore
from relay.sim.caller import TwilioCaller
from tests.conftest import RUN_LOG, RUN_LOG_JSON, leaked_secrets, run_logs
from tests.pgutil import TcpProxy, create_database, drop_database, dsn
from tests.test_call import SHORT, stack


@pytest.mark.postgres
async def test_no_secret_appears_in_the_logs_of_the_run(tmp_path: Path) -> None:
    logging.getLogger("relay").setLevel(logging.DEBUG)
    name = await create_database()
    try:
        async with TcpProxy() as proxy:
            store = PostgresStore(
                dsn(name, port=proxy.port, password="s3cret-in-a-dsn"),
                spool_path=tmp_path / "relay.spool",
                connect_timeout=1.0,
            )
            await store.open()
            async with stack(tmp_path, store=store) as s:
                proxy.down()  # failures get logged too: they must not show the DSN's password
                result = await TwilioCaller(s.webhook, SHORT).run()
                for task in list(s.relay.sessions):
                    await task
                await store.flush()
                proxy.up()
                await store.drained(timeout=30)
            await store.close()
    finally:
        await drop_database(name)
    assert result.error is None
    for handler in logging.getLogger().handlers:
        handler.flush()
    for path in (RUN_LOG, RUN_LOG_JSON):
        assert "relay." in Path(path).read_text(encoding="utf-8", errors="replace"), "an empty log proves nothing"
    assert leaked_secrets(run_logs()) == {}
    lines = Path(RUN_LOG_JSON).read_text(encoding="utf-8").splitlines()
    assert all(isinstance(orjson.loads(line), dict) for line in lines)  # one object a line, every line
