"""Logging: one line per event, ``key=value`` friendly, and never a secret.

The relay logs only what it chose to log; third-party loggers that would print request
headers at DEBUG (websockets prints the upstream ``Authorization`` header there) are held at
INFO whatever the relay's own level.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr, force=True)
    for noisy in ("websockets.client", "websockets.server", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
