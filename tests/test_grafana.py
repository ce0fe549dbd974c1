"""The shipped Grafana dashboard asks only for metrics relay exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.config import Settings
from relay.metrics import render
from relay.server import Relay
from relay.store import SQLiteStore

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "relay.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(tmp_path: Path) -> set[str]:
    relay = Relay(Settings(openai_api_key="k", twilio_auth_token="t"), SQLiteStore(tmp_path / "x.sqlite3"))  # type: ignore[arg-type]
    names = set()
    for family in text_string_to_metric_families(render(relay).decode()):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


async def test_every_query_of_the_dashboard_names_a_metric_relay_exports(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\brelay_[a-z_]+\b", expr)}
    assert exprs and used
    assert sorted(used - exported(tmp_path)) == []
    # Calls, voice to voice, barge-ins, errors and cost by tenant are all on it.
    for needed in (
        "relay_calls_active",
        "relay_voice_to_voice_ms_bucket",
        "relay_barge_ins_total",
        "relay_refusals_total",
        "relay_cost_usd_total",
    ):
        assert needed in used
