"""``relay demo``, the README's first command: whole conversations through a real relay."""

from __future__ import annotations

from pathlib import Path

from relay.demo import DEMO_GREETING, format_table, run_demo
from relay.sim.agent import AgentConfig


async def test_the_demo_call_is_greeted_answered_and_hung_up_by_the_agent(tmp_path: Path) -> None:
    summary = await run_demo(
        2,
        db_path=str(tmp_path / "demo.sqlite3"),
        record=str(tmp_path / "heard.wav"),
        agent_config=AgentConfig(think_ms=100, realtime_factor=8.0),
    )
    assert summary["calls_completed"] == 2 and summary["violations"] == 0 and summary["errors"] == []
    for call in summary["call_details"]:
        assert call["end_reason"] == "agent_hangup"  # after the farewell played in full
        who = [row["who"] for row in call["turns"]]
        assert who == ["agent", "caller", "agent", "caller", "agent", "caller", "agent"]
        assert call["turns"][0]["text"] == DEMO_GREETING
        assert call["turns"][-1]["text"] == AgentConfig().farewell
        assert call["caller_heard"][-1] == AgentConfig().farewell
    assert (tmp_path / "heard.wav").stat().st_size > 44
    assert "agent_hangup" in format_table(summary)
    # The scrape `relay demo --metrics` prints: both calls, every turn stored.
    assert 'relay_calls_total{end_reason="agent_hangup",tenant="default"} 2.0' in summary["metrics"]
    assert 'relay_turns_total{role="assistant",tenant="default"} 8.0' in summary["metrics"]
