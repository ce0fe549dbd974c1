"""The exceptions relay raises, defined once and shared by both fast-path implementations.

::

    RelayError
    ├── ConfigError(RelayError, ValueError)      bad environment; raised before the port opens
    ├── ProtocolError(RelayError, ValueError)    malformed peer message (Twilio or backend)
    │   ├── PayloadError(ProtocolError)          bad base64 in a media payload or audio delta
    │   └── FrameError(ProtocolError)            a WebSocket frame breaks RFC 6455; carries the close code
    ├── BackendError(RelayError)                 the speech backend refused or broke the session
    ├── InputError(RelayError, ValueError)       an operator's input (CLI, API) is invalid: one line to show
    └── SpoolError(RelayError)                   the outage spool is held by another process or not open
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error relay raises on purpose."""


class ConfigError(RelayError, ValueError):
    """The configuration is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class ProtocolError(RelayError, ValueError):
    """A peer sent a message that does not follow its protocol."""


class PayloadError(ProtocolError):
    """A media payload or audio delta is not valid base64."""


class FrameError(ProtocolError):
    """A WebSocket frame breaks RFC 6455; ``code`` is the close code to answer with.

    1002: protocol error (masking, reserved bits, opcodes, fragmentation, control frames);
    1007: a text message or close reason that is not UTF-8; 1009: a message over the limit.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{reason} (close code {code})")


class BackendError(RelayError):
    """The speech backend refused the session or failed during it."""


class BackendFatal(BackendError):
    """The backend cannot serve this call at all (no quota, a bad key, content it will not go on
    with): the call ends with ``end_reason``, no new session is tried."""

    def __init__(self, message: str, end_reason: str) -> None:
        super().__init__(message)
        self.end_reason = end_reason


class InputError(RelayError, ValueError):
    """An operator's input is invalid (an unknown tenant, a bad number, a limit out of range);
    the message is one line that says what and why."""


class SpoolError(RelayError):
    """The spool cannot be used: another process holds it, or it is not open."""
