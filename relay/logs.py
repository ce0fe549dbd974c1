"""Logging: one line per event, as JSON or text, with the call it belongs to, and never a secret.

``RELAY_LOG_FORMAT=json`` (the default when stderr is not a terminal, as under a process
manager or in a container) writes one object per line: ``ts``, ``level``, ``logger``, ``msg``,
and ``call_sid``, ``stream_sid`` and ``tenant`` wherever a call is in scope (``call_scope``: a
context variable, so every task a call starts carries it). ``text`` is for a terminal.

The relay logs only what it chose to log; third-party loggers that would print request
headers at DEBUG (websockets prints the upstream ``Authorization`` header there) are held at
INFO whatever the relay's own level.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import sys
from collections.abc import Mapping

import orjson

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("json", "text")

# The call a line belongs to: set once a call's stream has started (or its webhook is read).
_CALL: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("relay_call", default=None)


def call_scope(**fields: str) -> None:
    """Tag every line logged from here on in this task (and the tasks it starts) with ``fields``
    (``call_sid``, ``stream_sid``, ``tenant``); empty values are left out."""
    current = dict(_CALL.get() or {})
    current.update({k: v for k, v in fields.items() if v})
    _CALL.set(current)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, object] = {
            "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call = _CALL.get()
        if call:
            line.update(call)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def default_format() -> str:
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if (fmt or default_format()) == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("websockets.client", "websockets.server", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    # The twilio library logs every REST request's URL and headers at INFO (never its
    # Authorization): relay logs each placement itself, once.
    logging.getLogger("twilio.http_client").setLevel(max(logging.WARNING, logging.getLogger().level))
