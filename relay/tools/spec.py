"""What an agent can do beyond talking: the tenant's own tools and the people a call can be
transferred to, as stored (``relay tools``, ``relay transfers``) and as offered to the model.

A ``TenantTool`` is a function the model may call, served by the tenant's HTTPS endpoint
(``relay.tools.invoke``); its ``parameters`` are a JSON Schema the model's arguments are checked
against before any request leaves. A ``TransferTarget`` is a number or SIP address with the
label the model sees; ``cold`` hands the caller over at once, ``warm`` has an agent brief the
person there first (``relay.tools.transfer``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from relay.config import is_loopback
from relay.twilio import E164, SIP_URI

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what Realtime and the Responses API accept as a function name
BUILT_IN = frozenset({"end_call", "escalate", "transfer_call"})
MAX_DESCRIPTION = 1024
MAX_SCHEMA = 16_384  # bytes of a tool's JSON Schema
MAX_FILLER = 200
TIMEOUT_MS = (100, 30_000)
MAX_LABEL = 60
MODES = ("cold", "warm")


@dataclass(frozen=True, slots=True)
class TenantTool:
    """One of an agent's tools, served by the tenant."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments (an object)
    url: str  # https:// (http:// on loopback only)
    timeout_ms: int = 5000
    filler: str = ""  # said when the answer is slow in coming

    def problems(self) -> list[str]:
        """Every reason this tool cannot be stored, one line each."""
        out = []
        if not NAME.fullmatch(self.name):
            out.append(f"tool name {self.name[:64]!r} must be 1..64 of A-Z a-z 0-9 _ -")
        elif self.name in BUILT_IN:
            out.append(f"{self.name!r} is a built-in tool's name")
        if not self.description.strip() or len(self.description) > MAX_DESCRIPTION:
            out.append(f"a description of 1..{MAX_DESCRIPTION} characters is required")
        url = urlsplit(self.url)
        if not (url.scheme == "https" and url.hostname) and not (
            url.scheme == "http" and is_loopback(url.hostname or "")
        ):
            out.append("the endpoint must be an https:// URL (http:// on loopback only)")
        lo, hi = TIMEOUT_MS
        if not lo <= self.timeout_ms <= hi:
            out.append(f"timeout {self.timeout_ms} ms is outside {lo}..{hi}")
        if len(self.filler) > MAX_FILLER or not self.filler.isprintable():
            out.append(f"the filler line is at most {MAX_FILLER} printable characters")
        out.extend(schema_problems(self.parameters))
        return out

    def function(self) -> dict[str, Any]:
        """The tool as the model sees it (a Realtime/Responses function)."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}

    def check_arguments(self, arguments: str) -> tuple[dict[str, Any] | None, str]:
        """The model's argument JSON, parsed and checked against the schema: ``(arguments, "")``,
        or ``(None, what is wrong)`` in words the model can act on."""
        try:
            value = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            return None, "the arguments are not JSON"
        if not isinstance(value, dict):
            return None, "the arguments must be a JSON object"
        import jsonschema  # loaded by the first tool call, not by every relay

        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(self.parameters).iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            return None, f"{where}: {error.message}"[:300]
        return value, ""


def schema_problems(schema: object) -> list[str]:
    """Why ``schema`` cannot be a tool's parameters: not a JSON Schema object of an object."""
    if not isinstance(schema, dict):
        return ["the parameters must be a JSON Schema object"]
    import jsonschema

    if len(orjson.dumps(schema)) > MAX_SCHEMA:
        return [f"the parameters' schema is over {MAX_SCHEMA} bytes"]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return [f"the parameters are not a valid JSON Schema: {exc.message[:200]}"]
    if schema.get("type") != "object":
        return ['the parameters\' schema must be of "type": "object"']
    return []


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """Someone a call can be put through to: a number or SIP address, and what the model calls it."""

    label: str
    target: str  # E.164, or sip:user@host
    mode: str = "cold"  # cold: at once; warm: an agent briefs them first

    def problems(self) -> list[str]:
        out = []
        if not self.label.strip() or len(self.label) > MAX_LABEL or not self.label.isprintable():
            out.append(f"a label of 1..{MAX_LABEL} printable characters is required")
        if not (E164.fullmatch(self.target) or SIP_URI.fullmatch(self.target)):
            out.append(f"{self.target[:60]!r} is neither an E.164 number nor a sip: address")
        if self.mode not in MODES:
            out.append(f"mode {self.mode[:20]!r} is not one of {', '.join(MODES)}")
        elif self.mode == "warm" and not E164.fullmatch(self.target):
            out.append("a warm transfer calls the person first: its target must be an E.164 number")
        return out


TRANSFER_CALL = "transfer_call"


def transfer_tool(targets: tuple[TransferTarget, ...]) -> dict[str, Any]:
    """The built-in ``transfer_call``, offering the agent's targets by label."""
    return {
        "type": "function",
        "name": TRANSFER_CALL,
        "description": "Put the caller through to a person. Only when the caller asks for a person or the "
        "matter needs one. Tell the caller first, in the same response, that you are putting them through.",
        "parameters": {
            "type": "object",
            "properties": {
                "target": {"type": "string", "enum": [t.label for t in targets], "description": "Who to reach."},
                "summary": {"type": "string", "description": "The matter in two sentences, for the person."},
            },
            "required": ["target", "summary"],
        },
    }
