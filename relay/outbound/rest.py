"""Twilio's REST API, through the ``twilio`` library (BACKENDS §6): calls created, updated and
hung up, and SMS sent, for any account relay holds a token for.

``RELAY_TWILIO_API_URL`` replaces the library's hard-coded ``https://api.twilio.com`` on
``client.api`` (the domain both ``calls`` and ``messages`` hang off), so the simulator, or any
Twilio-compatible endpoint, stands in. The library's client is blocking (``requests``), so each
request runs in a worker thread; there are a few per call, never one per frame.

What a failure means for a placement is decided here (``PlaceError``): Twilio says requests
refused with 20429 were not processed and are safe to retry, as is one that never reached it
(no connection); one whose answer was lost after it was sent may have created the call, and
is never sent again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

log = logging.getLogger("relay.outbound.rest")

DEFAULT_API_URL = "https://api.twilio.com"
TIMEOUT_S = 15.0  # a REST request's connect + read bound; placements pending longer are abandoned
RETRYABLE_CODES = frozenset({20429})
RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Account:
    """A Twilio account relay acts for: the deployment's, or a tenant's (sub)account."""

    sid: str
    token: str = field(repr=False)


class PlaceError(Exception):
    """Twilio did not create the call (or may have, ``uncertain``)."""

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False, uncertain: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.uncertain = uncertain


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened before the request could have been sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def place_error(exc: Exception) -> PlaceError:
    """What a failed ``calls.create`` means for the job."""
    if isinstance(exc, TwilioRestException):
        code = exc.code if isinstance(exc.code, int) else None
        retryable = code in RETRYABLE_CODES or exc.status in RETRYABLE_STATUSES
        # A 5xx other than 503 may have been processed before it failed.
        uncertain = exc.status >= 500 and not retryable
        return PlaceError(f"Twilio refused: {exc.msg}"[:300], code=code, retryable=retryable, uncertain=uncertain)
    if isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc):
        return PlaceError(f"Twilio unreachable ({type(exc).__name__})", retryable=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return PlaceError(f"Twilio's answer was lost ({type(exc).__name__})", uncertain=True)
    return PlaceError(f"{type(exc).__name__}: {exc}"[:300], uncertain=True)


class TwilioRest:
    """One ``twilio`` client per account, pointed at ``api_url``."""

    def __init__(self, api_url: str = DEFAULT_API_URL, *, timeout_s: float = TIMEOUT_S) -> None:
        self.api_url = api_url.rstrip("/")
        self._timeout_s = timeout_s
        self._clients: dict[tuple[str, str], Client] = {}

    def client(self, account: Account) -> Client:
        key = (account.sid, account.token)
        client = self._clients.get(key)
        if client is None:
            client = Client(account.sid, account.token, http_client=TwilioHttpClient(timeout=self._timeout_s))
            if self.api_url != DEFAULT_API_URL:
                client.api.base_url = self.api_url
            self._clients[key] = client
        return client

    async def create_call(self, account: Account, **params: Any) -> str:
        """Place a call (``calls.create``); returns its CallSid.

        Raises:
            PlaceError: the call was not created (or may have been: ``uncertain``).
        """
        try:
            call = await asyncio.to_thread(self.client(account).calls.create, **params)
        except Exception as exc:
            raise place_error(exc) from exc
        return str(call.sid)

    async def update_call(self, account: Account, call_sid: str, **params: Any) -> str:
        """Change a live call (``status="completed"`` hangs it up; ``twiml=`` replaces its TwiML);
        returns its status.

        Raises:
            TwilioRestException, requests.RequestException: as the library raises them.
        """
        call = await asyncio.to_thread(self.client(account).calls(call_sid).update, **params)
        return str(call.status)

    async def fetch_call(self, account: Account, call_sid: str) -> dict[str, Any]:
        """A call's resource (status, answered_by, duration …)."""
        call = await asyncio.to_thread(self.client(account).calls(call_sid).fetch)
        return {"sid": call.sid, "status": str(call.status), "answered_by": call.answered_by, "duration": call.duration}

    async def send_sms(self, account: Account, *, to: str, from_: str, body: str, status_callback: str = "") -> str:
        """Send an SMS (``messages.create``); returns its MessageSid.

        Raises:
            TwilioRestException, requests.RequestException: as the library raises them.
        """
        params: dict[str, Any] = {"to": to, "from_": from_, "body": body}
        if status_callback:
            params["status_callback"] = status_callback
        message = await asyncio.to_thread(self.client(account).messages.create, **params)
        return str(message.sid)
