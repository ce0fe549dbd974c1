"""relay with a deliberate handicap, to prove the harness cannot flatter.

``python -m bench.slowed --delay-ms 5 --burn-us 0 -- serve`` runs the real relay, except that
every audio frame going back to the caller is held ``delay-ms`` longer (a timer, in order, as
a slow hop would) and costs ``burn-us`` of extra CPU (a busy loop, as heavy per-frame code
would). The harness must report both: the delay in added latency, the burn in CPU per
call-second. Nothing in relay itself carries such a switch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from relay import session
from relay.conversation import Conversation
from relay.errors import ProtocolError
from relay.fastpath import parse_audio_delta


def handicap(delay_ms: float, burn_us: float) -> None:
    """Every audio delta costs ``burn_us`` of CPU and reaches the conversation ``delay_ms`` late."""
    delay, burn_ns = delay_ms / 1000, int(burn_us * 1000)

    def route(self: session.CallSession, upstream: session.Upstream, conversation: Conversation) -> None:
        loop = asyncio.get_running_loop()

        def on_message(message: bytes) -> bool:
            try:
                if parse_audio_delta(message) is None:
                    return False
            except ProtocolError:
                return False
            if burn_ns:
                until = time.perf_counter_ns() + burn_ns
                while time.perf_counter_ns() < until:
                    pass
            if delay:
                loop.call_later(delay, _late, conversation, message, loop)
            else:
                conversation.backend_frame(message, loop.time())
            return True

        upstream.on_message = on_message  # type: ignore[attr-defined]  # not routed: every delta comes here

    def _late(conversation: Conversation, message: bytes, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):  # the call may have ended while the frame was held
            conversation.backend_frame(message, loop.time())

    session.CallSession._route_backend = route  # type: ignore[method-assign]


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
