"""Signed stream tokens: a media stream opens an upstream only for a call our webhook answered.

The webhook puts a short-lived token in the TwiML's ``<Parameter>``s; it signs the tenant,
the agent, the call sid and an expiry with HMAC-SHA256. Twilio hands the parameters back in
``start.customParameters``, and the session verifies the token against ``start.callSid``
before any AI session opens, so a stranger who finds the WebSocket URL cannot spend the
operator's budget, and a token cannot be replayed for another call or another tenant.

Sans-I/O: the time is passed in. Relays sharing one secret (all instances of a deployment)
accept each other's tokens, so Twilio's handshake can land on any of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

VERSION = "v1"
DEFAULT_TTL = 120.0  # seconds from the webhook to the stream's start; Twilio takes well under one


def derive_secret(seed: str) -> bytes:
    """The token key for a deployment, derived from a secret every instance already shares."""
    return hmac.new(seed.encode(), b"relay stream token " + VERSION.encode(), hashlib.sha256).digest()


def _mac(secret: bytes, tenant: str, agent: str, call_sid: str, expires: int) -> str:
    message = "\x1f".join((VERSION, tenant, agent, call_sid, str(expires))).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: bytes, *, tenant: str, agent: str, call_sid: str, now: float, ttl: float = DEFAULT_TTL) -> str:
    """A token for one call, valid until ``now + ttl``."""
    expires = int(now + ttl)
    return f"{VERSION}.{expires}.{_mac(secret, tenant, agent, call_sid, expires)}"


def verify(secret: bytes, token: str, *, tenant: str, agent: str, call_sid: str, now: float) -> str | None:
    """``None`` if ``token`` was issued for exactly this call, tenant and agent and is unexpired;
    otherwise the reason it is refused (safe to log: it never contains the token)."""
    # ASCII only and a bounded expiry: nothing a peer sends can make the parsing itself raise.
    parts = token.split(".") if isinstance(token, str) and token.isascii() and len(token) <= 200 else []
    if len(parts) != 3 or parts[0] != VERSION or not (parts[1].isdigit() and len(parts[1]) <= 12):
        return "malformed stream token"
    expires = int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(secret, tenant, agent, call_sid, expires)):
        return "stream token does not match this call"
    if now > expires:
        return "stream token expired"
    return None
