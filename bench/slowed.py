"""relay with a deliberate handicap, to prove the harness cannot flatter.

``python -m bench.slowed --delay-ms 5 --burn-us 0 -- serve`` runs the real relay, except that
everything the backend sends reaches relay ``delay-ms`` later (a timer, in order, as a slow hop
would) and every audio delta in it costs ``burn-us`` of extra CPU (a busy loop, as heavy
per-frame code would). The harness must report both: the delay in added latency, the burn in
CPU per call-second. Nothing in relay itself carries such a switch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from relay import upstream

_DELTA = b'"response.output_audio.delta"'


def handicap(delay_ms: float, burn_us: float) -> None:
    """Wrap the backend leg's reads: ``delay_ms`` late, ``burn_us`` of CPU per audio delta."""
    delay, burn_ns = delay_ms / 1000, int(burn_us * 1000)
    read = upstream.UpstreamConnection.data_received

    def data_received(self: upstream.UpstreamConnection, data: bytes) -> None:
        if burn_ns:
            until = time.perf_counter_ns() + burn_ns * bytes(data).count(_DELTA)
            while time.perf_counter_ns() < until:
                pass
        if delay:
            asyncio.get_running_loop().call_later(delay, read, self, bytes(data))
        else:
            read(self, data)

    upstream.UpstreamConnection.data_received = data_received  # type: ignore[method-assign]  # the handicap itself


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowed", description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0, help="extra hold per outbound frame")
    parser.add_argument("--burn-us", type=float, default=0.0, help="extra CPU per outbound frame")
    parser.add_argument("relay_args", nargs="*", default=["serve"], help="arguments for `relay` (default: serve)")
    args = parser.parse_args(argv)
    handicap(args.delay_ms, args.burn_us)
    from relay.__main__ import main as relay_main

    return relay_main(args.relay_args)


if __name__ == "__main__":
    sys.exit(main())
