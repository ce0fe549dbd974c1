"""Requests about a call, answered by the relay that holds it.

A call's media stream lives on one relay, but Twilio's status callback, the after-stream hook
and a hang-up from the API arrive through the load balancer at any relay. Each is a
``CallRequest``; the relay that receives one answers it itself when it holds the call, else
passes it to the owner through the peers (``relay.pg.cluster``: Postgres records who holds
each call and carries the request over LISTEN/NOTIFY) and waits a bounded time for the answer.

This module is the sans-I/O part: what a request and an answer are on the wire, and the
requests in flight waiting for their answers. The relay that owns a call answers in
``relay.server.Relay.answer_request``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

# What a request may ask of the call's owner.
STATUS = "status"  # Twilio's status callback: the call's progress (a final status ends the stream)
OUTCOME = "outcome"  # the after-stream hook: how the stream ended
HANGUP = "hangup"  # the API: end the call after the line in progress
VOICEMAIL = "voicemail"  # a call relay placed reached an answering machine: leave the message
NOTE = "note"  # tell the call's agent something to pass on (an escalation's outcome)
TRANSFER = "transfer"  # end the call's stream with a line, then connect the caller to a number
SAY = "say"  # the API: the agent says a line at the next pause between turns
KINDS = frozenset({STATUS, OUTCOME, HANGUP, VOICEMAIL, NOTE, TRANSFER, SAY})

ASK_TIMEOUT_S = 2.0  # how long a relay waits for the owner's answer before it answers without it
# Postgres refuses a NOTIFY payload of 8000 bytes or more; requests are a few hundred.
MAX_PAYLOAD = 7900


class RoutingError(Exception):
    """A message on the peers' channel that is not one (logged and dropped, never answered)."""


@dataclass(frozen=True)
class CallRequest:
    kind: str
    call_sid: str
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Owner:
    """The relay instance holding a call's stream, and the call's tenant."""

    instance_id: str
    tenant_id: str


class OwnerSilent(Exception):
    """The relay that holds the call did not answer within ``ASK_TIMEOUT_S``."""


Answer = Callable[[CallRequest], Awaitable[dict[str, Any]]]


class Peers(Protocol):
    """The other relays on the same database (``relay.pg.cluster.PostgresPeers``)."""

    instance_id: str

    async def start(self, answer: Answer) -> None:
        """Join the others; ``answer`` answers the requests they pass to this relay."""

    async def close(self) -> None: ...

    async def claim(self, call_sid: str, tenant_id: str) -> None: ...

    async def ended(self, call_sid: str) -> None: ...

    async def forget(self, call_sid: str) -> None: ...

    async def owner(self, call_sid: str) -> Owner | None: ...

    async def ask(self, instance_id: str, request: CallRequest) -> dict[str, Any]: ...


# --- The wire: one JSON object per NOTIFY ---------------------------------------------------------


def encode_request(request_id: str, sender: str, request: CallRequest) -> str:
    payload = orjson.dumps(
        {"id": request_id, "from": sender, "kind": request.kind, "call_sid": request.call_sid, "args": request.args}
    ).decode()
    if len(payload) > MAX_PAYLOAD:
        raise RoutingError(f"a {request.kind} request of {len(payload)} bytes is over {MAX_PAYLOAD}")
    return payload


def encode_answer(request_id: str, answer: Mapping[str, Any]) -> str:
    return orjson.dumps({"id": request_id, "answer": answer}).decode()


def decode(payload: str) -> tuple[str, str, CallRequest] | tuple[str, dict[str, Any]]:
    """A request as (id, sender, request), or an answer as (id, answer)."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RoutingError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("id"), str):
        raise RoutingError("a message without an id")
    if "answer" in message:
        if not isinstance(message["answer"], dict):
            raise RoutingError("an answer that is not an object")
        return message["id"], message["answer"]
    kind, call_sid = message.get("kind"), message.get("call_sid")
    sender, args = message.get("from"), message.get("args")
    if kind not in KINDS or not isinstance(call_sid, str) or not isinstance(sender, str) or not isinstance(args, dict):
        raise RoutingError(f"not a request: kind {str(kind)[:20]!r}")
    return message["id"], sender, CallRequest(kind, call_sid, {str(k): str(v) for k, v in args.items()})


class Pending:
    """Requests sent to another relay, waiting for its answer."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def open(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return request_id, future

    def answered(self, request_id: str, answer: dict[str, Any]) -> bool:
        """Deliver an answer; False when nothing waits for it (late, or not ours)."""
        future = self._waiting.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(answer)
        return True

    def close(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._waiting)
