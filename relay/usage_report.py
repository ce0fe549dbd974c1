"""``relay usage``: a tenant's stored usage and cost, by day, call or agent, from either store.

The same grouping query runs on SQLite and on Postgres (there through row-level security, as
the tenant); only the day expression and the placeholders differ. Money stays in whole
nano-dollars until it is printed, as exact decimal dollars.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from relay.pricing import usd
from relay.usage import TOKEN_KINDS

BY = ("day", "call", "agent")
COST_PARTS = ("backend_cost_nanousd", "transcription_cost_nanousd", "twilio_cost_nanousd", "cost_nanousd")

_DAY = {
    "sqlite": "strftime('%Y-%m-%d', started_at, 'unixepoch')",
    "postgres": "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def queries(by: str, dialect: str) -> tuple[str, str]:
    """The grouping query and the unpriced-items query, both taking (tenant, since epoch s)."""
    key = {"day": _DAY[dialect], "call": "call_sid", "agent": "agent_id"}[by]
    p1, p2 = ("?", "?") if dialect == "sqlite" else ("$1", "$2")
    where = f"WHERE tenant_id = {p1} AND started_at >= {p2}"
    sums = ", ".join(f"sum({kind}_tokens) AS {kind}_tokens" for kind in TOKEN_KINDS)
    costs = ", ".join(f"sum({part}) AS {part}" for part in COST_PARTS)
    grouped = (
        f"SELECT {key} AS key, count(DISTINCT call_sid) AS calls, min(started_at) AS first_started_at, "
        f"sum(backend_seconds) AS seconds, sum(twilio_minutes) AS twilio_minutes, "
        f"sum(transcription_seconds) AS transcription_seconds, {sums}, {costs}, "
        f"count(DISTINCT CASE WHEN estimated THEN call_sid END) AS estimated_calls, "
        f"count(DISTINCT CASE WHEN unpriced <> '' THEN call_sid END) AS unpriced_calls "
        f"FROM usage {where} GROUP BY {key} ORDER BY min(started_at), {key}"
    )
    unpriced = f"SELECT DISTINCT {key} AS key, unpriced FROM usage {where} AND unpriced <> ''"
    return grouped, unpriced


def since_epoch(text: str | None) -> float:
    """``--since``: a date (UTC midnight) or an ISO time; none means the beginning.

    Raises:
        ValueError: neither.
    """
    if not text:
        return 0.0
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text[:40]!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def report(
    tenant_id: str, by: str, since: float, rows: list[dict[str, Any]], unpriced: list[dict[str, Any]]
) -> dict[str, Any]:
    """The rows of ``queries`` as ``relay usage`` prints them (``--json``), with a total."""
    items: dict[str, set[str]] = {}
    for row in unpriced:
        items.setdefault(str(row["key"]), set()).update(str(row["unpriced"]).split(","))
    out_rows = [_row(row, items.get(str(row["key"]), set()), by) for row in rows]
    counts = ("calls", "twilio_minutes", "estimated_calls", "unpriced_calls")
    return {
        "tenant": tenant_id,
        "by": by,
        "since": datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat() if since else None,
        "rows": out_rows,
        "total": {
            **{name: sum(row[name] for row in out_rows) for name in counts},
            "seconds": round(sum(row["seconds"] for row in out_rows), 3),
            "transcription_seconds": round(sum(row["transcription_seconds"] for row in out_rows), 3),
            "tokens": {kind: sum(row["tokens"][kind] for row in out_rows) for kind in TOKEN_KINDS},
            **_costs({part: sum(int(row[part] or 0) for row in rows) for part in COST_PARTS}),
            "unpriced": sorted(set().union(*items.values())),
        },
    }


def _row(row: dict[str, Any], unpriced: set[str], by: str) -> dict[str, Any]:
    return {
        by: row["key"],
        "calls": row["calls"],
        "seconds": round(float(row["seconds"] or 0), 3),
        "twilio_minutes": int(row["twilio_minutes"] or 0),
        "transcription_seconds": round(float(row["transcription_seconds"] or 0), 3),
        "tokens": {kind: int(row[f"{kind}_tokens"] or 0) for kind in TOKEN_KINDS},
        **_costs({part: int(row[part] or 0) for part in COST_PARTS}),
        "estimated_calls": int(row["estimated_calls"] or 0),
        "unpriced_calls": int(row["unpriced_calls"] or 0),
        "unpriced": sorted(unpriced),
    }


def _costs(nanos: dict[str, int]) -> dict[str, str]:
    # Exact decimal dollars, as strings: JSON numbers would round them.
    return {part.replace("nanousd", "usd"): f"{usd(n):.9f}" for part, n in nanos.items()}


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain table, with what makes a cost a lower bound said under it."""
    by = report["by"]
    head = (by, "calls", "minutes", "tokens in", "tokens out", "cost USD", "")
    lines = [head]
    for row in [*report["rows"], {by: "total", **report["total"]}]:
        tokens = row["tokens"]
        notes = []
        if row["estimated_calls"]:
            notes.append(f"{row['estimated_calls']} estimated")
        if row["unpriced_calls"]:
            notes.append(f"{row['unpriced_calls']} with unpriced items")
        lines.append(
            (
                str(row[by]),
                str(row["calls"]),
                f"{row['seconds'] / 60:.1f}",
                str(tokens["text_in"] + tokens["audio_in"]),
                str(tokens["text_out"] + tokens["audio_out"]),
                f"{Decimal(row['cost_usd']):.4f}",
                ", ".join(notes),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    left = (0, len(head) - 1)  # the key and the notes; the figures align right

    def cells(line: tuple[str, ...]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        return "  ".join(padded).rstrip()

    text = "\n".join(cells(line) for line in lines)
    if report["total"]["unpriced"]:
        text += "\nunpriced (not in the price table, so not in the cost; set them in RELAY_PRICES): " + ", ".join(
            report["total"]["unpriced"]
        )
    if report["total"]["estimated_calls"]:
        text += "\nestimated: the backend did not account for some responses; relay estimated them from their audio"
    return text
