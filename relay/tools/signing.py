"""How a tenant's endpoint knows a tool request came from relay, unaltered and recent.

Every request carries ``Relay-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 under the tenant's tool secret (``relay tools secret``) of ``"<t>.<body>"``. The
endpoint recomputes it over the raw body it received and refuses a signature that differs or a
``t`` further than ``TOLERANCE_S`` from its clock (a replayed request). ``verify`` is that check,
for endpoints written in Python and for relay's tests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

HEADER = "Relay-Signature"
TOLERANCE_S = 300


def new_secret() -> str:
    return "rts_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` and is recent."""
    parts = dict(part.partition("=")[::2] for part in header.split(","))
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), f"t={stamp},v1={given}")
