"""``python -m bench``: relay and the relays teams use today, side by side under one load.

    python -m bench --quick                      # 100 calls, all relays, under a minute
    python -m bench --calls 200 --max-calls 2000 # the full run
    python -m bench --quick --relays relay,relay-slowed --slow-ms 5

Writes report.json, report.md and two PNG plots to --out (default bench/results/<time>/)
and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import uvloop

from bench import report
from bench.harness import ROOT, Harness, Options, relay_specs


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    names = list(relay_specs())
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows and a coarse search: under a minute")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls for the main figures (default 100)")
    p.add_argument(
        "--relays",
        default="relay,sample,websockets,node",
        help=f"comma-separated, from: {', '.join(names)} (the direct path always runs)",
    )
    p.add_argument("--duration", type=float, help="seconds measured at --calls (default 10, quick 2)")
    p.add_argument("--step-duration", type=float, help="seconds measured per search step (default 3, quick 1)")
    p.add_argument("--max-calls", type=int, help="top of the step search (default 2000, quick 800)")
    p.add_argument("--bound-ms", type=float, default=5.0, help="p99 added-latency bound of the search")
    p.add_argument("--no-search", action="store_true", help="main figures only")
    p.add_argument(
        "--target-calls",
        type=int,
        default=500,
        help="also measure relay at this many calls, where its p99 target is set (0: skip)",
    )
    p.add_argument(
        "--slow-ms", type=float, default=5.0, help="relay-slowed: how late it receives what its backend sends"
    )
    p.add_argument("--burn-us", type=float, default=0.0, help="relay-slowed: extra CPU per audio delta")
    p.add_argument(
        "--answer-burst",
        type=int,
        default=1,
        help="the echo upstream answers this many frames together, as a model's burst (default 1: each at once)",
    )
    p.add_argument("--check", action="store_true", help="validate every message the relays send against Twilio's rules")
    p.add_argument("--no-pin", action="store_true", help="do not pin relay and load side to separate cores")
    p.add_argument(
        "--relay-anywhere",
        action="store_true",
        help="pin the load side only: relay (and each of its workers) may run on any core",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<time>)")
    p.add_argument("--update-readme", action="store_true", help="write the table into README.md's bench section")
    args = p.parse_args(argv)
    relays = tuple(r.strip() for r in args.relays.split(",") if r.strip())
    unknown = [r for r in relays if r not in names]
    if unknown:
        p.error(f"unknown relay(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.calls < 1:
        p.error("--calls must be at least 1")
    overrides = {
        "calls": args.calls,
        "relays": relays,
        "bound_ms": args.bound_ms,
        "search": not args.no_search,
        "slow_ms": args.slow_ms,
        "burn_us": args.burn_us,
        "check": args.check,
        "target_calls": args.target_calls,
        "burst": max(1, args.answer_burst),
    }
    if args.duration is not None:
        overrides["main_s"] = args.duration
    if args.step_duration is not None:
        overrides["step_s"] = args.step_duration
    if args.max_calls is not None:
        overrides["max_calls"] = args.max_calls
    if args.no_pin:
        overrides.update(relay_core=None, load_core=None)
    elif args.relay_anywhere:
        overrides.update(relay_core=None)
    options = Options.quick(**overrides) if args.quick else Options(**overrides)
    return options, args


def main(argv: list[str] | None = None) -> int:
    options, args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import os

    if (options.relay_core is not None) and (os.cpu_count() or 1) < 2:
        logging.warning("fewer than 2 cores: relay and load side share one; figures are upper bounds")
        options.relay_core = options.load_core = None
    harness = Harness(options)
    result = uvloop.run(harness.run())
    out = args.out or ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S")
    paths = report.write(result, out, with_plots=not args.no_plots)
    table = report.markdown(result)
    print(table)
    if args.update_readme:
        report.update_readme(ROOT / "README.md", table)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
