"""Who signed a Twilio request, and which tenant's calls that signer may act for (sans-I/O).

Twilio signs every request with the auth token of the account the call is on
(``X-Twilio-Signature``, PROTOCOLS §1.6); a tenant whose numbers live on its own Twilio
(sub)account has that account's token in the directory. A valid signature therefore names a
*signer*: the deployment (``TWILIO_AUTH_TOKEN``) or one tenant. A signature alone is not
enough: a request signed with tenant A's token is good only for A's calls, and only from A's
account, or a holder of A's token could spend B's budget on B's numbers.

The rules (``may_act_for``):

* a tenant's token acts for that tenant alone, and the request's ``AccountSid`` must be the
  account stored beside the token;
* the deployment's token acts for every tenant whose calls arrive on the deployment's account:
  the request's ``AccountSid`` must be ``TWILIO_ACCOUNT_SID`` when that is set, and when it is
  not, it must not be an account that has a token of its own (those sign with their own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from twilio.request_validator import RequestValidator


@dataclass(frozen=True, slots=True)
class Credential:
    """One Twilio account's auth token: the deployment's (``tenant_id`` None) or a tenant's."""

    tenant_id: str | None
    account_sid: str | None
    token: str = field(repr=False)

    @property
    def name(self) -> str:
        """Who this is, for logs (never the token)."""
        return "the deployment" if self.tenant_id is None else f"tenant {self.tenant_id}"


def signers(
    credentials: Iterable[Credential], url: str, params: Mapping[str, str] | str, signature: str | None
) -> tuple[Credential, ...]:
    """The credentials whose token made ``signature`` over ``url`` and ``params`` (a form, or a
    JSON body's text when the URL carries its ``bodySHA256``). Usually one; none: not Twilio."""
    if not signature:
        return ()
    return tuple(c for c in credentials if RequestValidator(c.token).validate(url, params, signature))


def may_act_for(signer: Credential, tenant_id: str, account_sid: str, own_accounts: Mapping[str, str]) -> bool:
    """Whether a request ``signer`` signed, from ``account_sid``, may act for ``tenant_id``'s call.

    ``own_accounts`` maps every account with a token of its own to its tenant.
    """
    if signer.tenant_id is not None:
        return signer.tenant_id == tenant_id and (signer.account_sid is None or signer.account_sid == account_sid)
    if signer.account_sid is not None:
        return account_sid == signer.account_sid
    return account_sid not in own_accounts


def binding_problem(
    found: Iterable[Credential], tenant_id: str, account_sid: str, own_accounts: Mapping[str, str]
) -> str | None:
    """``None`` when one of the request's signers may act for the call; else why not (loggable)."""
    found = tuple(found)
    if any(may_act_for(s, tenant_id, account_sid, own_accounts) for s in found):
        return None
    names = ", ".join(s.name for s in found) or "nobody"
    return f"signed by {names}, which may not act for tenant {tenant_id}'s calls on account {account_sid[:34]}"
