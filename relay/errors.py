"""The exceptions relay raises, defined once and shared by both fast-path implementations.

::

    RelayError
    ├── ConfigError(RelayError, ValueError)      bad environment; raised before the port opens
    ├── ProtocolError(RelayError, ValueError)    malformed peer message (Twilio or backend)
    │   └── PayloadError(ProtocolError)          bad base64 in a media payload or audio delta
    └── BackendError(RelayError)                 the speech backend refused or broke the session
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


class BackendError(RelayError):
    """The speech backend refused the session or failed during it."""
