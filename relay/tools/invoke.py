"""Calling a tenant's tool: one signed POST to its endpoint, off the frame path, bounded.

``ToolInvoker.call`` never raises and never outlives the tool's timeout: whatever happens —
an answer, a timeout, a refused connection, a non-2xx status, a body that is not JSON or is
larger than ``MAX_ANSWER_BYTES`` — it returns the output the model gets, ``{"result": …}`` or
``{"error": "<short words the agent can say something about>"}``.

The request body is ``{"tool", "call_sid", "tenant_id", "agent_id", "arguments"}``, signed with
the tenant's secret (``relay.tools.signing``), sent by the client of ``relay.tools.http``: public
addresses only, unless the operator runs tools beside relay (a sidecar, a test) and allows
private ones with ``RELAY_TOOLS_ALLOW_PRIVATE``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from relay import __version__
from relay.tools import signing
from relay.tools.spec import TenantTool

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("relay.tools")

MAX_ANSWER_BYTES = 64 * 1024  # more than any answer a model should be read


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Whose call a tool request is for, and the tenant's signing secret."""

    call_sid: str
    tenant_id: str
    agent_id: str
    secret: str


class ToolInvoker:
    """Every tenant tool call of a relay, over one pool of connections."""

    def __init__(self, *, ca_file: str = "", allow_private: bool = False) -> None:
        self._ca_file = ca_file
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None
        self.calls: dict[str, int] = {}  # by result kind, for /metrics

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            from relay.tools import http

            self._session = http.client(self._ca_file, self._allow_private)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, tool: TenantTool, context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's output for the model (never raises; done within the tool's timeout)."""
        body = orjson.dumps(
            {
                "tool": tool.name,
                "call_sid": context.call_sid,
                "tenant_id": context.tenant_id,
                "agent_id": context.agent_id,
                "arguments": arguments,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"relay/{__version__}",
            signing.HEADER: signing.sign(context.secret, int(time.time()), body),
        }
        from relay.tools import http

        try:
            async with asyncio.timeout(tool.timeout_ms / 1000):
                output, kind = await self._post(tool, body, headers)
        except TimeoutError:
            output, kind = {"error": f"{tool.name} did not answer in time"}, "timeout"
        except http.ERRORS as exc:
            log.warning("call %s: tool %s unreachable (%s)", context.call_sid, tool.name, type(exc).__name__)
            output, kind = {"error": f"{tool.name} could not be reached"}, "unreachable"
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind != "ok":
            log.info("call %s: tool %s failed (%s)", context.call_sid, tool.name, kind)
        return output

    async def _post(self, tool: TenantTool, body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], str]:
        from relay.tools import http

        if not self._allow_private and not http.public_or_name(urlsplit(tool.url).hostname or ""):
            # (the resolver sees names only: an address in the URL is checked here)
            return {"error": f"{tool.name} could not be reached"}, "refused"
        async with self._client().post(tool.url, data=body, headers=headers, allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                return {"error": f"{tool.name} failed (HTTP {response.status})"}, "status"
            if (response.content_length or 0) > MAX_ANSWER_BYTES:
                return {"error": f"{tool.name} answered with too much"}, "oversize"
            answer = bytearray()
            async for chunk in response.content.iter_chunked(16384):
                answer += chunk
                if len(answer) > MAX_ANSWER_BYTES:
                    return {"error": f"{tool.name} answered with too much"}, "oversize"
        try:
            return {"result": orjson.loads(answer)}, "ok"
        except orjson.JSONDecodeError:
            return {"error": f"{tool.name} gave an answer that could not be read"}, "garbage"
