"""The embedded store loses nothing: a batch SQLite cannot take now waits and is retried, a record
it refuses for good goes to the dead-letter file with its reason.

"Read-only" here is the real thing: the file and its WAL made immutable (``chattr +i``), so
every write through the store's open descriptors fails (EPERM: SQLite's "disk I/O error") until
it is lifted (a plain ``chmod`` would not do: permissions are checked at open, and root passes).
That needs root and a filesystem with the attribute (ext4, xfs, btrfs), as the development
machine and CI have.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
from pathlib import Path

import pytest

from relay.demo import DEMO_GREETING, run_demo
from relay.store import CallRecord, SQLiteStore, TurnRecord, record_from_dict
from tests.pgutil import eventually
from tests.test_call import FAST

FAULT_S = 10.0  # how long the file stays read-only


def _immutable(path: Path, on: bool) -> list[Path]:
    # The database and its write-ahead log; not the -shm index, which SQLite maps into memory
    # (a store to a mapped page of an immutable file is a SIGBUS, not an error SQLite could see).
    files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    for file in files:
        subprocess.run(["chattr", "+i" if on else "-i", str(file)], check=True, capture_output=True)
    return files


def _writable(path: Path) -> bool:
    try:
        db = sqlite3.connect(path, timeout=0.5)
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
            db.execute("DROP TABLE probe")
        db.close()
        return True
    except sqlite3.Error:
        return False


async def test_twenty_calls_through_ten_seconds_of_a_read_only_file_keep_every_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "demo.sqlite3"

    def started() -> bool:  # every call is under way: its start is stored
        try:
            ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        except sqlite3.Error:
            return False  # not created yet
        try:
            return int(ro.execute("SELECT count(*) FROM calls").fetchone()[0]) >= 20
        except sqlite3.Error:
            return False  # no schema yet
        finally:
            ro.close()

    async def fault() -> bool:
        await eventually(started, timeout=30, what="the 20 calls' starts in the store")
        _immutable(db, True)
        try:
            unwritable = not _writable(db)
            await asyncio.sleep(FAULT_S)
        finally:
            _immutable(db, False)
        return unwritable

    caplog.set_level(logging.WARNING, logger="relay.store")
    faulted = asyncio.create_task(fault())
    try:
        summary = await run_demo(20, db_path=str(db), agent_config=FAST)
    finally:
        was_read_only = await faulted
    assert was_read_only, "the fault did not take: the file stayed writable"
    assert any("cannot be written" in r.getMessage() for r in caplog.records), "no write ever failed"
    assert any("writable again" in r.getMessage() for r in caplog.records)
    assert summary["errors"] == [] and summary["calls_completed"] == 20
    # Every turn of every call is stored, once: the greeting, three lines and three answers.
    assert summary["stored_turns"] == 20 * 7
    for call in summary["call_details"]:
        assert [row["who"] for row in call["turns"]] == ["agent", "caller"] * 3 + ["agent"]
        agent_said = [row["text"] for row in call["turns"] if row["who"] == "agent"]
        assert agent_said[0] == DEMO_GREETING and agent_said[-1] == FAST.farewell
        assert call["end_reason"] == "agent_hangup"
    assert not Path(f"{db}.dead-letter.jsonl").exists()


async def test_a_record_sqlite_refuses_goes_to_the_dead_letter_file_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    call = CallRecord(call_sid="CA1", stream_sid="MZ1", started_at=1.0)
    bad = TurnRecord(call_sid="CA1", seq=1, role="narrator", started_at=2.0, text_generated="once upon a time")
    good = TurnRecord(call_sid="CA1", seq=2, role="user", started_at=3.0, text_generated="hello")
    for record in (call, bad, good):
        store.submit(record)
    await store.flush()
    turns = await store.turns("CA1")
    calls = await store.calls()
    await store.close()
    assert [t.seq for t in turns] == [2] and [c["call_sid"] for c in calls] == ["CA1"]
    assert store.dead_letters == 1
    [line] = (tmp_path / "relay.sqlite3.dead-letter.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert "CHECK constraint failed" in entry["reason"] and entry["at"]
    assert record_from_dict(entry["record"]) == bad  # the whole record, to re-import by hand


async def test_a_store_still_unwritable_at_shutdown_dead_letters_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    store.submit(CallRecord(call_sid="CA0", stream_sid="MZ0", started_at=0.5))
    await store.flush()
    _immutable(path, True)
    try:
        records = [CallRecord(call_sid=f"CA{i}", stream_sid=f"MZ{i}", started_at=float(i)) for i in range(1, 4)]
        for record in records:
            store.submit(record)
        await eventually(lambda: store.write_retries >= 1, what="the writer to find the file read-only")
        await store.close(timeout=1.0)
    finally:
        _immutable(path, False)
    lines = [json.loads(line) for line in Path(f"{path}.dead-letter.jsonl").read_text().splitlines()]
    assert [record_from_dict(e["record"]) for e in lines] == records
    assert {e["reason"] for e in lines} == {"not written before shutdown"}
