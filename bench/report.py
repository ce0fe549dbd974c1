"""The harness's output: a JSON file, a Markdown table with ratios to relay, and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or not reference or math.isnan(value) or math.isnan(reference):
        return "–"
    return f"{value / reference:.1f}×"


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _max_calls(entry: dict[str, Any]) -> str:
    if (entry.get("main") or {}).get("untagged"):
        return "n/a"  # the search is on latency
    search = entry.get("search")
    if not search:
        return "–"
    if search["load_bound"]:
        return f"≥ {search['max_calls']:,} (load side full)"
    if search["first_failing"] is None:
        return f"≥ {search['max_calls']:,} (ladder top)"
    return f"{search['max_calls']:,}"


def markdown(report: dict[str, Any]) -> str:
    """The side-by-side table: one row per relay at the main call count, ratios to relay."""
    o = report["options"]
    m = report["machine"]
    relays = report["relays"]
    ours = (relays.get("relay") or {}).get("main")
    direct = (report.get("direct") or {}).get("main") or {}
    lines = [
        f"{o['calls']} concurrent calls, {o['main_s']:g} s measured per relay"
        + (f", answers in bursts of {o['burst']} frames" if o.get("burst", 1) > 1 else "")
        + "; "
        f"{m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gib']} GiB; {report['started_at']}. "
        f"Direct-path round trip (the floor): p50 {_num(direct.get('rtt_ms', {}).get('p50'))} ms, "
        f"p99 {_num(direct.get('rtt_ms', {}).get('p99'))} ms.",
        "",
        "| relay | added p50 ms | added p99 ms | added p99.9 ms | p99 × relay | CPU ms / call-s | CPU × relay "
        "| calls / core | max calls, p99 added < "
        + f"{o['bound_ms']:g} ms | RSS KiB / call | lost | misrouted | late |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in relays.items():
        title = entry.get("title", name)
        if "skipped" in entry or "error" in entry:
            why = entry.get("skipped") or entry.get("error")
            lines.append(f"| {title} | {why} |" + " |" * 11)
            continue
        f = entry["main"]
        added = f["added_ms"]
        if added is None:
            lines.append(_untagged_row(title, f, ours and ours["cpu_ms_per_call_s"], _max_calls(entry)))
            continue
        lines.append(
            f"| {title} | {_num(added['p50'])} | {_num(added['p99'])} | {_num(added['p999'])} "
            f"| {_ratio(added['p99'], ours and ours['added_ms']['p99'])} | {_num(f['cpu_ms_per_call_s'])} "
            f"| {_ratio(f['cpu_ms_per_call_s'], ours and ours['cpu_ms_per_call_s'])} "
            f"| {_num(f['calls_per_core'], 0)} | {_max_calls(entry)} | {_num(f.get('rss_kib_per_call'), 1)} "
            f"| {f['lost']} | {f['misrouted']} | {f['late']} |"
        )
    lines += [
        "",
        "Added latency is each relay's round-trip quantile minus the direct path's at the same call count. "
        "Ratios are each row over relay's (above 1× means relay does better). "
        "Late: frames back more than one frame period (20 ms) after the floor's median.",
    ]
    if ours:
        lines += ["", *targets(relays["relay"])]
    if report.get("transcoding"):
        lines += ["", transcoding_line(report["transcoding"], relays)]
    notes = []
    for name, entry in relays.items():
        f = entry.get("main") or {}
        if f.get("load_bound"):
            notes.append(
                f"{entry.get('title', name)}: the load side's core was over 90 % busy; its figures are an upper bound."
            )
        if f.get("untagged"):
            notes.append(
                f"{entry.get('title', name)}: {f['frames_back']:,} of the {f['frames_sent']:,} frames sent in the "
                f"window came back, counted per call; latency and loss {f['untagged']}."
            )
        if f.get("violation_count"):
            notes.append(
                f"{entry.get('title', name)}: {f['violation_count']} message(s) Twilio would reject, e.g. "
                f"{'; '.join(f['violations'][:3])}"
            )
    if report.get("upstream_sessions_left_open"):
        notes.append(f"{report['upstream_sessions_left_open']} upstream session(s) outlived their call.")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _untagged_row(title: str, f: dict[str, Any], our_cpu: float | None, max_calls: str) -> str:
    """A transcoding relay's row: its CPU and memory as any other's, latency and loss n/a."""
    return (
        f"| {title} | {f['untagged']} | n/a | n/a | n/a | {_num(f['cpu_ms_per_call_s'])} "
        f"| {_ratio(f['cpu_ms_per_call_s'], our_cpu)} "
        f"| {_num(f['calls_per_core'], 0)} | {max_calls} | {_num(f.get('rss_kib_per_call'), 1)} "
        f"| {_count(f['lost'])} | {_count(f['misrouted'])} | {_count(f['late'])} |"
    )


# What transcoding may add to a call-second of relay's CPU, over passing μ-law through.
TARGET_TRANSCODE_MS = 0.5


def transcoding_line(cost: dict[str, Any], relays: dict[str, Any]) -> str:
    """The transcoded relay's CPU per call-second over the passthrough one's, against its target."""
    extra = cost["extra_cpu_ms_per_call_s"]
    verdict = "met" if extra < TARGET_TRANSCODE_MS else f"{extra / TARGET_TRANSCODE_MS:.1f}× over"
    # Below zero the two rows differ by less than the run's noise: said as such, not as a saving.
    cost_text = f"costs {extra:.2f} ms" if extra >= 0 else f"costs no measurable ({extra:.2f} ms)"
    return (
        f"transcoding (Gemini) {cost_text} CPU per call-second more than passthrough "
        f"(target < {TARGET_TRANSCODE_MS:g}): {verdict} "
        f"({relays[cost['transcoded']]['title']} {cost['transcoded_cpu_ms_per_call_s']:.2f} against "
        f"{relays[cost['passthrough']]['title']} {cost['passthrough_cpu_ms_per_call_s']:.2f}, "
        f"at {cost['calls']} calls in this run)."
    )


# relay's own targets (the compiled hot path's): CPU per call-second, p99 added latency at
# TARGET_CALLS concurrent calls, memory per call.
TARGET_CPU_MS = 1.0
TARGET_P99_MS = 2.0
TARGET_CALLS = 500
TARGET_RSS_KIB = 64.0


def targets(entry: dict[str, Any]) -> list[str]:
    """relay's figures against its targets: met, or by how much not, and what the kernel took."""
    main = entry["main"]
    out = ["relay against its targets:"]
    cpu = main["cpu_ms_per_call_s"]
    line = f"- CPU {cpu:.2f} ms per call-second (target ≤ {TARGET_CPU_MS:g}): "
    if cpu <= TARGET_CPU_MS:
        line += "met."
    else:
        line += f"{cpu / TARGET_CPU_MS:.1f}× over."
        share = main.get("kernel_share")
        if share is not None:
            line += (
                f" {share:.0%} of it is kernel time ({cpu * share:.2f} ms: loopback TCP, where each write "
                "also runs the receiver's side of the stack), which alone "
                + (
                    "is over the target."
                    if cpu * share > TARGET_CPU_MS
                    else f"leaves {TARGET_CPU_MS - cpu * share:.2f} ms for all of user space."
                )
            )
    out.append(line)
    at = [s for s in entry.get("steps") or [] if s.get("calls", 0) >= TARGET_CALLS and "added_ms" in s]
    if at:
        step = min(at, key=lambda s: s["calls"])
        p99 = step["added_ms"]["p99"]
        verdict = "met." if p99 < TARGET_P99_MS else f"not met, {p99 / TARGET_P99_MS:.1f}× over"
        if p99 >= TARGET_P99_MS:
            busy = step["cpu_ms_per_call_s"] * step["calls"] / 1000
            verdict += f" (at {step['cpu_ms_per_call_s']:.2f} ms per call-second the relay's core is {busy:.0%} busy)."
        load = " The load side's core was full: an upper bound." if step.get("load_bound") else ""
        out.append(
            f"- p99 added latency at {step['calls']} calls {p99:.2f} ms (target < {TARGET_P99_MS:g} ms at "
            f"{TARGET_CALLS}): {verdict}{load}"
        )
    else:
        out.append(
            f"- p99 added latency at {TARGET_CALLS} calls: not measured in this run "
            f"(`--calls {TARGET_CALLS} --no-search` measures it)."
        )
    rss = main.get("rss_kib_per_call")
    if rss is not None:
        out.append(
            f"- memory {rss:.1f} KiB per call (target ≤ {TARGET_RSS_KIB:g}): "
            + ("met." if rss <= TARGET_RSS_KIB else f"{rss / TARGET_RSS_KIB:.1f}× over.")
        )
    return out


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Added-latency CDF per relay; CPU per call-second against concurrent calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bench.harness import CDF_QS

    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for entry in report["relays"].values():
        f = entry.get("main")
        if not f or "cdf_ms" not in f:
            continue  # skipped, failed, or transcoded (no latency to plot)
        added = np.maximum(np.array(f["cdf_ms"]) - np.array(f["floor_cdf_ms"]), 0.01)
        ax.plot(np.sort(added), CDF_QS / 100, label=entry["title"])
    ax.set_xscale("log")
    ax.set_xlabel("added latency per frame, ms (relay round trip minus direct path, by quantile)")
    ax.set_ylabel("fraction of frames")
    ax.set_title(f"Added latency at {report['options']['calls']} concurrent calls")
    ax.axvline(report["options"]["bound_ms"], color="grey", linestyle=":", linewidth=1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    for entry in report["relays"].values():
        steps = [s for s in entry.get("steps") or [] if "cpu_ms_per_call_s" in s]
        if steps:
            ax.plot(
                [s["calls"] for s in steps], [s["cpu_ms_per_call_s"] for s in steps], marker="o", label=entry["title"]
            )
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("relay CPU ms per call-second")
    ax.set_title("CPU per call-second (one core; lower is better)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "cpu_per_call.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write(report: dict[str, Any], out: Path, *, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    paths[1].write_text(markdown(report))
    if with_plots:
        paths += plots(report, out)
    return paths


def update_readme(readme: Path, table: str) -> None:
    """Replace the section between the bench markers in ``readme`` with ``table``."""
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + table + text[end:])
