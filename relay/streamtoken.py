"""Signed call tokens: relay acts on a stream or a callback only for a call its webhook answered.

The webhook signs, with HMAC-SHA256, what a later request about the call must match: the
token's purpose, the tenant, the agent, the call sid, the Twilio account and an expiry.

* ``stream``: travels in the TwiML's ``<Parameter>``s; Twilio hands it back in
  ``start.customParameters`` and the session verifies it against ``start.callSid`` and
  ``start.accountSid`` before any AI session opens, so a stranger who finds the WebSocket URL
  cannot spend the operator's budget, and a token cannot be replayed for another call, another
  tenant or another account. Short-lived: Twilio opens the stream within a second.
* ``after-stream``: in the query of the URL Twilio is redirected to once relay closes the
  stream (``twilio.AFTER_STREAM_PATH``); it lives as long as a call may.

Sans-I/O: the time is passed in. Relays sharing one secret (all instances of a deployment)
accept each other's tokens, so Twilio's requests can land on any of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

VERSION = "v2"
STREAM = "stream"
AFTER_STREAM = "after-stream"
DEFAULT_TTL = 120.0  # seconds from the webhook to the stream's start; Twilio takes well under one
AFTER_STREAM_TTL = 6 * 3600.0  # a Twilio call lasts at most 4 hours (its default time limit)


def derive_secret(seed: str) -> bytes:
    """The token key for a deployment, derived from a secret every instance already shares."""
    return hmac.new(seed.encode(), b"relay stream token", hashlib.sha256).digest()


def _mac(secret: bytes, purpose: str, tenant: str, agent: str, call_sid: str, account_sid: str, expires: int) -> str:
    message = "\x1f".join((VERSION, purpose, tenant, agent, call_sid, account_sid, str(expires))).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(
    secret: bytes,
    *,
    tenant: str,
    agent: str,
    call_sid: str,
    account_sid: str,
    now: float,
    purpose: str = STREAM,
    ttl: float = DEFAULT_TTL,
) -> str:
    """A token for one call and one purpose, valid until ``now + ttl``."""
    expires = int(now + ttl)
    return f"{VERSION}.{expires}.{_mac(secret, purpose, tenant, agent, call_sid, account_sid, expires)}"


def verify(
    secret: bytes,
    token: str,
    *,
    tenant: str,
    agent: str,
    call_sid: str,
    account_sid: str,
    now: float,
    purpose: str = STREAM,
) -> str | None:
    """``None`` if ``token`` was issued for exactly this purpose, call, account, tenant and agent
    and is unexpired; otherwise the reason it is refused (safe to log: never the token)."""
    # ASCII only and a bounded expiry: nothing a peer sends can make the parsing itself raise.
    parts = token.split(".") if token.isascii() and len(token) <= 200 else []
    if len(parts) != 3 or parts[0] != VERSION or not (parts[1].isdigit() and len(parts[1]) <= 12):
        return "malformed call token"
    expires = int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(secret, purpose, tenant, agent, call_sid, account_sid, expires)):
        return f"{purpose} token does not match this call"
    if now > expires:
        return f"{purpose} token expired"
    return None
