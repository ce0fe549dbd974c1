"""The embedded SQLite store: turns and calls written off the frame path, idempotently."""

from __future__ import annotations

from pathlib import Path

from relay.store import CallEnd, CallRecord, SQLiteStore, TurnRecord


async def test_turns_round_trip_in_order_and_replays_never_duplicate(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    store.submit(CallRecord(call_sid="CA1", stream_sid="MZ1", started_at=1.0, from_number="+1", to_number="+2"))
    user = TurnRecord(call_sid="CA1", seq=1, role="user", started_at=2.0, text_generated="hi", text_heard="hi")
    answer = TurnRecord(
        call_sid="CA1",
        seq=2,
        role="assistant",
        started_at=3.0,
        text_generated="hello there",
        text_heard="hello",
        interrupted=True,
        audio_ms=900,
        voice_to_voice_ms=812.5,
    )
    for record in (answer, user, user, answer):  # out of order and replayed
        store.submit(record)
    store.submit(CallEnd(call_sid="CA1", ended_at=9.0, end_reason="stop", frames_in=10, frames_out=5, turns=2))
    await store.flush()
    assert await store.turns("CA1") == [user, answer]
    [call] = await store.calls()
    assert call["end_reason"] == "stop" and call["frames_in"] == 10 and call["to_number"] == "+2"
    await store.close()

    reopened = SQLiteStore(tmp_path / "relay.sqlite3")
    await reopened.open()
    assert len(await reopened.turns("CA1")) == 2
    await reopened.close()


async def test_close_writes_everything_submitted(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3", queue_size=4, batch_size=2)
    await store.open()
    for seq in range(1, 51):  # far past the queue bound: nothing may be dropped
        store.submit(TurnRecord(call_sid="CA2", seq=seq, role="user", started_at=float(seq)))
    await store.close()
    again = SQLiteStore(tmp_path / "s.sqlite3")
    await again.open()
    assert [t.seq for t in await again.turns("CA2")] == list(range(1, 51))
    await again.close()


async def test_the_embedded_store_has_the_postgres_tables_and_usage(tmp_path) -> None:
    import sqlite3

    from relay.store import CallEnd, CallRecord, SQLiteStore, TurnRecord
    from relay.usage import UsageRecord

    store = SQLiteStore(tmp_path / "relay.sqlite3")
    await store.open()
    store.submit(CallRecord("CA1", "MZ1", 1.0))
    store.submit(TurnRecord("CA1", 1, "assistant", 1.5, audio_ms=2500))
    store.submit(CallEnd("CA1", 9.0, "stop", frames_in=400))
    store.submit(UsageRecord("CA1", 1.0, 9.0, audio_in_seconds=8.0, audio_out_seconds=2.5))
    await store.close()
    db = sqlite3.connect(tmp_path / "relay.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    usage = db.execute("SELECT tenant_id, audio_in_seconds, audio_out_seconds FROM usage").fetchall()
    assert {"tenants", "agents", "phone_numbers", "calls", "call_turns", "usage"} <= tables
    assert usage == [("default", 8.0, 2.5)]
