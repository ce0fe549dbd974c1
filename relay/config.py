"""Settings: one frozen object read once from the environment; the only reader of ``os.environ``."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from relay import models
from relay.agents import BACKENDS, RANGES, VOICES, AgentProfile, voice_fits
from relay.audio_format import FRAME_MS
from relay.call_options import CallOptions
from relay.errors import ConfigError, InputError
from relay.logs import FORMATS
from relay.outbound.jobs import QuietHours
from relay.outbound.race import BusinessHours, parse_contacts
from relay.outbound.rest import DEFAULT_API_URL as DEFAULT_TWILIO_API_URL
from relay.pricing import PriceTable
from relay.redaction import Redaction
from relay.retention import Retention
from relay.streamtoken import derive_secret
from relay.twilio import ACCOUNT_SID, E164

# The Realtime (GA) endpoint; the model is added per call, from RELAY_REALTIME_MODEL or the agent's.
DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
# GPT-Live's endpoint: no query at all, the model goes in session.start (BACKENDS §2.1).
DEFAULT_LIVE_URL = "wss://api.openai.com/v1/live/sessions"
DEFAULT_GEMINI_LIVE_URL = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
DEFAULT_DEEPGRAM_AGENT_URL = "wss://agent.deepgram.com/v1/agent/converse"
DEFAULT_FAILURE_MESSAGE = "Sorry, we are having technical difficulties and cannot take your call right now. Goodbye."

__all__ = ["DEFAULT_LIVE_URL", "DEFAULT_REALTIME_URL", "VOICES", "Settings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: the only place plain http/ws is allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything relay reads from its environment. Secrets are kept out of ``repr``."""

    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    realtime_url: str = DEFAULT_REALTIME_URL
    realtime_model: str = models.DEFAULT_REALTIME_MODEL
    backend: str = "openai-realtime"  # the default agent's speech backend (agents.BACKENDS)
    live_url: str = DEFAULT_LIVE_URL
    live_model: str = models.DEFAULT_LIVE_MODEL
    live_lead_ms: int = 80
    live_turn_gap_ms: int = 800
    openai_api_key: str = field(default="", repr=False)
    gemini_live_url: str = DEFAULT_GEMINI_LIVE_URL
    gemini_model: str = models.DEFAULT_GEMINI_MODEL
    gemini_api_key: str = field(default="", repr=False)
    deepgram_agent_url: str = DEFAULT_DEEPGRAM_AGENT_URL
    deepgram_model: str = models.DEFAULT_DEEPGRAM_THINK_MODEL  # the model a Deepgram agent thinks with
    deepgram_api_key: str = field(default="", repr=False)
    database_url: str = field(default="", repr=False)
    twilio_auth_token: str = field(default="", repr=False)
    twilio_account_sid: str = ""  # the account TWILIO_AUTH_TOKEN belongs to; checked when set
    skip_twilio_signature: bool = False  # development only: every start says so, loudly
    stream_secret: str = field(default="", repr=False)
    metrics_token: str = field(default="", repr=False)  # /metrics wants "Authorization: Bearer <it>" when set
    api_token: str = field(default="", repr=False)  # the call control API (/v1/calls/…) wants it as a bearer token
    metrics_port: int = 0  # /metrics (and /healthz) on a port of their own as well (0: only the main one)
    sqlite_path: str = "relay.sqlite3"
    spool_path: str = "relay.spool"
    dead_letter_path: str = "relay.dead-letter.jsonl"
    not_configured_message: str = "Sorry, this number is not configured. Goodbye."
    busy_message: str = "Sorry, all our lines are busy. Please call again later."
    failure_message: str = DEFAULT_FAILURE_MESSAGE
    max_concurrent_calls: int = 0  # embedded store only (Postgres: per tenant); 0 = no limit
    calls_per_minute: int = 0
    agent_instructions: str = "You are a friendly, concise assistant on a phone call."
    agent_voice: str = "marin"
    agent_reasoning_effort: str = models.DEFAULT_REASONING_EFFORT
    transcription_model: str = models.DEFAULT_TRANSCRIPTION_MODEL
    vad_threshold: float = 0.5
    vad_silence_ms: int = 500
    vad_prefix_ms: int = 300
    presession_buffer_ms: int = 2000
    playout_lead_ms: int = 100
    pacer_interval_ms: int = 20
    mark_interval_ms: int = 100
    greeting: str = ""
    voicemail_message: str = ""  # the default agent's message for an answering machine (empty: hang up)
    reconnect_message: str = ""
    upstream_max_session_s: int = 3600
    backend_ready_timeout_ms: int = 5000
    reconnect_give_up_s: int = 30
    dtmf_timeout_ms: int = 1500
    hangup_grace_ms: int = 3000
    end_call_tool: bool = True
    max_message_bytes: int = 65536
    max_messages_per_second: int = 200  # per call; Twilio sends ~100 (media + mark echoes)
    max_connections: int = 10000
    allow_python_fastpath: bool = False
    log_level: str = "INFO"
    log_format: str = ""  # json or text; empty: json unless stderr is a terminal
    prices_path: str = ""  # a price table over the shipped one (relay/prices.toml)
    drain_timeout_s: int = 3600  # after SIGTERM, how long live calls may go on before they are handed over
    start_timeout_ms: int = 10000  # a media stream that sends no start this long after opening is closed
    peer_timeout_s: int = 10  # a relay on the same database not heard from this long is gone
    slow_peer_timeout_ms: int = 5000  # a socket that stops reading what relay writes is dropped after this
    # Calls relay places (relay.outbound): Twilio's REST API (or a stand-in), the caller ID and
    # quiet hours of the embedded store's tenant, and each account's limits.
    twilio_api_url: str = DEFAULT_TWILIO_API_URL
    outbound_from: str = ""
    max_outbound: int = 5  # calls live at once per Twilio account
    outbound_cps: float = 1.0  # calls placed per second per account (Twilio's default CPS)
    outbound_ring_s: int = 30  # how long a placed call rings before it is no-answer
    # A placed call with no news this long is looked up at Twilio: its final status callback may
    # have been lost (every relay down when it came), and its slot would never free.
    outbound_recheck_s: int = 60
    timezone: str = "UTC"
    quiet_hours: str = ""  # HH:MM-HH:MM local time: no campaign call is placed then
    # After hours (outside business_hours; never open when unset) an agent may escalate an
    # urgent matter to the on-call list (Name=+1555…,…): a call and a text at once, each
    # contact given race_timeout_s to take it.
    business_hours: str = ""
    on_call: str = ""
    race_timeout_s: int = 120
    # Tenant tools (relay.tools): a CA bundle trusted beside the public ones (a tenant's
    # private CA), and whether endpoints on private addresses may be called (a sidecar, a test;
    # off: a tenant's URL never reaches relay's own network).
    tools_ca_file: str = ""
    tools_allow_private: bool = False
    # What the embedded store's tenant keeps out of its stored turns (relay.redaction): on, its
    # own patterns (JSON {"name": "regex"}), keys masked. A Postgres tenant's is its own
    # (relay tenants set-redaction).
    # How long the embedded store's tenant's turns and calls (and usage) are kept, in days (0: for
    # ever; a Postgres tenant's: relay retention set), and how often relay serve deletes what is
    # past it (0: never; relay retention run does it at will).
    retention_days: int = 0
    usage_retention_days: int = 0
    retention_interval_s: int = 0
    redact: bool = False
    redact_patterns: str = ""
    redact_dtmf: bool = False

    @property
    def stream_token_key(self) -> bytes:
        """The key signing stream tokens: RELAY_STREAM_SECRET, else derived from the auth token.

        Empty when neither is set (development without signatures): the server then makes a
        random key of its own, which only that one process accepts.
        """
        seed = self.stream_secret or self.twilio_auth_token
        return derive_secret(seed) if seed else b""

    @property
    def retention(self) -> Retention:
        """The embedded store's tenant's retention."""
        return Retention(self.retention_days or None, self.usage_retention_days or None)

    @property
    def redaction(self) -> Redaction | None:
        """The embedded store's tenant's redaction (None: turns stored as said).

        Raises:
            InputError: RELAY_REDACT_PATTERNS is not a JSON object of good patterns (``from_env`` says so first).
        """
        if not self.redact:
            return None
        patterns = self.redact_patterns or "{}"
        return Redaction.from_json(f'{{"patterns": {patterns}, "mask_dtmf": {str(self.redact_dtmf).lower()}}}')

    @property
    def agent(self) -> AgentProfile:
        """The agent the environment describes (``RELAY_AGENT_*`` and friends): every call's with
        the embedded store, and the template of each tenant's first agent with Postgres."""
        return AgentProfile(
            instructions=self.agent_instructions,
            voice=self.agent_voice,
            model=self.model_for(self.backend),
            backend=self.backend,
            transcription_model=self.transcription_model,
            vad_threshold=self.vad_threshold,
            vad_silence_ms=self.vad_silence_ms,
            vad_prefix_ms=self.vad_prefix_ms,
            greeting=self.greeting,
            end_call_tool=self.end_call_tool,
            reasoning_effort=self.agent_reasoning_effort,
            voicemail_message=self.voicemail_message,
        )

    def model_for(self, backend: str) -> str:
        """The deployment's model for an agent on ``backend``."""
        return {
            "openai-live": self.live_model,
            "gemini-live": self.gemini_model,
            "deepgram": self.deepgram_model,
        }.get(backend, self.realtime_model)

    def backend_key(self, backend: str) -> tuple[str, str]:
        """The deployment's key for ``backend``, and the setting it comes from."""
        if backend == "gemini-live":
            return self.gemini_api_key, "GEMINI_API_KEY"
        if backend == "deepgram":
            return self.deepgram_api_key, "DEEPGRAM_API_KEY"
        return self.openai_api_key, "OPENAI_API_KEY"

    @property
    def call_options(self) -> CallOptions:
        """How each call is paced and kept alive."""
        return CallOptions(
            lead_ms=self.playout_lead_ms,
            pacer_interval_ms=self.pacer_interval_ms,
            mark_frames=max(1, self.mark_interval_ms // FRAME_MS),
            presession_buffer_ms=self.presession_buffer_ms,
            dtmf_timeout_ms=self.dtmf_timeout_ms,
            reconnect_message=self.reconnect_message,
            hangup_grace_ms=self.hangup_grace_ms,
            live_lead_ms=self.live_lead_ms,
            live_turn_gap_ms=self.live_turn_gap_ms,
        )

    @property
    def stream_url(self) -> str:
        """The media WebSocket URL put in the TwiML: the public origin, wss (ws on loopback)."""
        parts = urlsplit(self.public_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/twilio/voice"

    def realtime_url_for(self, model: str) -> str:
        """The Realtime endpoint for one session of ``model`` (the URL's ``model`` parameter)."""
        parts = urlsplit(self.realtime_url)
        query = [(k, v) for k, values in parse_qs(parts.query, keep_blank_values=True).items() for v in values]
        return urlunsplit(parts._replace(query=urlencode([*query, ("model", model)])))

    def backend_endpoint(self, backend: str, model: str, key: str | None = None) -> tuple[str, dict[str, str]]:
        """Where a session of ``backend`` (with ``model``) connects, and its auth headers, with
        ``key`` (a tenant's own) or the deployment's.

        Realtime takes the model in the URL; GPT-Live takes no query (the model is in its
        session.start), nor does Gemini Live (the model is in its setup; the key goes in
        ``x-goog-api-key``, as google-genai sends it) or Deepgram (``Authorization: Token``).
        No OpenAI-Beta header: it selects Realtime's retired beta shape (PROTOCOLS §2.1).
        """
        key = key or self.backend_key(backend)[0]
        if backend == "openai-live":
            return self.live_url, {"Authorization": f"Bearer {key}"}
        if backend == "gemini-live":
            return self.gemini_live_url, {"x-goog-api-key": key}
        if backend == "deepgram":
            return self.deepgram_agent_url, {"Authorization": f"Token {key}"}
        return self.realtime_url_for(model), {"Authorization": f"Bearer {key}"}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, serve: bool = True) -> Settings:
        """Read every ``RELAY_*`` setting (and ``OPENAI_API_KEY``, ``DATABASE_URL``).

        ``serve=False`` (the admin commands) skips what only serving calls needs: the public
        URL and the API key.

        Raises:
            ConfigError: listing every problem found, not just the first.
        """
        problems: list[str] = []
        values: dict[str, object] = {}

        def text(name: str, attr: str) -> None:
            if name in env:
                values[attr] = env[name].strip()

        def number(name: str, attr: str, kind: type, lo: float, hi: float) -> None:
            if name not in env:
                return
            raw = env[name].strip()
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a {'whole number' if kind is int else 'number'}")
                return
            if not lo <= value <= hi:
                problems.append(f"{name}={raw} is outside {lo}..{hi}")
                return
            values[attr] = value

        def flag(name: str, attr: str) -> None:
            if name not in env:
                return
            raw = env[name].strip().lower()
            if raw not in ("0", "1", "true", "false", "yes", "no", ""):
                problems.append(f"{name}={raw!r} must be 0 or 1")
            values[attr] = raw in ("1", "true", "yes")

        text("RELAY_HOST", "host")
        number("RELAY_PORT", "port", int, 0, 65535)
        text("RELAY_PUBLIC_URL", "public_url")
        text("RELAY_REALTIME_URL", "realtime_url")
        text("RELAY_REALTIME_MODEL", "realtime_model")
        text("RELAY_BACKEND", "backend")
        text("RELAY_OPENAI_LIVE_URL", "live_url")
        text("RELAY_LIVE_MODEL", "live_model")
        number("RELAY_LIVE_LEAD_MS", "live_lead_ms", int, 20, 1000)
        number("RELAY_LIVE_TURN_GAP_MS", "live_turn_gap_ms", int, 200, 5000)
        text("OPENAI_API_KEY", "openai_api_key")
        text("RELAY_GEMINI_LIVE_URL", "gemini_live_url")
        text("RELAY_GEMINI_MODEL", "gemini_model")
        text("GOOGLE_API_KEY", "gemini_api_key")
        text("GEMINI_API_KEY", "gemini_api_key")  # (read last: it wins when both are set)
        text("RELAY_DEEPGRAM_AGENT_URL", "deepgram_agent_url")
        text("RELAY_DEEPGRAM_MODEL", "deepgram_model")
        text("DEEPGRAM_API_KEY", "deepgram_api_key")
        text("TWILIO_AUTH_TOKEN", "twilio_auth_token")
        text("TWILIO_ACCOUNT_SID", "twilio_account_sid")
        text("RELAY_STREAM_SECRET", "stream_secret")
        text("RELAY_METRICS_TOKEN", "metrics_token")
        text("RELAY_API_TOKEN", "api_token")
        number("RELAY_METRICS_PORT", "metrics_port", int, 0, 65535)
        flag("RELAY_INSECURE_SKIP_TWILIO_SIGNATURE", "skip_twilio_signature")
        text("DATABASE_URL", "database_url")
        text("RELAY_SQLITE_PATH", "sqlite_path")
        text("RELAY_SPOOL_PATH", "spool_path")
        text("RELAY_DEAD_LETTER_PATH", "dead_letter_path")
        number("RELAY_MAX_CONCURRENT_CALLS", "max_concurrent_calls", int, 0, 1_000_000)
        number("RELAY_CALLS_PER_MINUTE", "calls_per_minute", int, 0, 1_000_000)
        if "RELAY_BUSY_MESSAGE" in env:
            values["busy_message"] = env["RELAY_BUSY_MESSAGE"]
        if "RELAY_FAILURE_MESSAGE" in env:
            values["failure_message"] = env["RELAY_FAILURE_MESSAGE"]
        if "RELAY_NOT_CONFIGURED_MESSAGE" in env:
            values["not_configured_message"] = env["RELAY_NOT_CONFIGURED_MESSAGE"]
        if "RELAY_AGENT_INSTRUCTIONS" in env:
            values["agent_instructions"] = env["RELAY_AGENT_INSTRUCTIONS"]
        text("RELAY_AGENT_VOICE", "agent_voice")
        text("RELAY_AGENT_REASONING_EFFORT", "agent_reasoning_effort")
        text("RELAY_TRANSCRIPTION_MODEL", "transcription_model")
        number("RELAY_VAD_THRESHOLD", "vad_threshold", float, *RANGES["vad_threshold"])
        number("RELAY_VAD_SILENCE_MS", "vad_silence_ms", int, *RANGES["vad_silence_ms"])
        number("RELAY_VAD_PREFIX_MS", "vad_prefix_ms", int, *RANGES["vad_prefix_ms"])
        number("RELAY_PRESESSION_BUFFER_MS", "presession_buffer_ms", int, 0, 10000)
        number("RELAY_PLAYOUT_LEAD_MS", "playout_lead_ms", int, 20, 2000)
        number("RELAY_MARK_INTERVAL_MS", "mark_interval_ms", int, 20, 2000)
        number("RELAY_PACER_INTERVAL_MS", "pacer_interval_ms", int, 20, 200)
        if "RELAY_GREETING" in env:
            values["greeting"] = env["RELAY_GREETING"].strip()
        if "RELAY_AGENT_VOICEMAIL_MESSAGE" in env:
            values["voicemail_message"] = env["RELAY_AGENT_VOICEMAIL_MESSAGE"].strip()
        if "RELAY_RECONNECT_MESSAGE" in env:
            values["reconnect_message"] = env["RELAY_RECONNECT_MESSAGE"].strip()
        number("RELAY_UPSTREAM_MAX_SESSION_S", "upstream_max_session_s", int, 20, 86400)
        number("RELAY_BACKEND_READY_TIMEOUT_MS", "backend_ready_timeout_ms", int, 100, 60000)
        number("RELAY_RECONNECT_GIVE_UP_S", "reconnect_give_up_s", int, 1, 3600)
        number("RELAY_DTMF_TIMEOUT_MS", "dtmf_timeout_ms", int, 100, 10000)
        number("RELAY_HANGUP_GRACE_MS", "hangup_grace_ms", int, 0, 60000)
        flag("RELAY_END_CALL_TOOL", "end_call_tool")
        number("RELAY_MAX_MESSAGE_BYTES", "max_message_bytes", int, 1024, 16 * 1024 * 1024)
        number("RELAY_MAX_MESSAGES_PER_SECOND", "max_messages_per_second", int, 60, 100_000)
        number("RELAY_MAX_CONNECTIONS", "max_connections", int, 1, 1_000_000)
        text("RELAY_LOG_LEVEL", "log_level")
        text("RELAY_LOG_FORMAT", "log_format")
        flag("RELAY_ALLOW_PYTHON_FASTPATH", "allow_python_fastpath")
        text("RELAY_PRICES", "prices_path")
        number("RELAY_DRAIN_TIMEOUT_S", "drain_timeout_s", int, 0, 86400)
        number("RELAY_START_TIMEOUT_MS", "start_timeout_ms", int, 100, 600_000)
        number("RELAY_SLOW_PEER_TIMEOUT_MS", "slow_peer_timeout_ms", int, 0, 600_000)
        number("RELAY_PEER_TIMEOUT_S", "peer_timeout_s", int, 2, 300)
        text("RELAY_TWILIO_API_URL", "twilio_api_url")
        text("RELAY_OUTBOUND_FROM", "outbound_from")
        number("RELAY_MAX_OUTBOUND", "max_outbound", int, 1, 10_000)
        number("RELAY_OUTBOUND_CPS", "outbound_cps", float, 0.01, 1000)
        number("RELAY_OUTBOUND_RING_S", "outbound_ring_s", int, 5, 600)
        number("RELAY_OUTBOUND_RECHECK_S", "outbound_recheck_s", int, 2, 3600)
        text("RELAY_TIMEZONE", "timezone")
        text("RELAY_QUIET_HOURS", "quiet_hours")
        text("RELAY_BUSINESS_HOURS", "business_hours")
        text("RELAY_ON_CALL", "on_call")
        number("RELAY_RACE_TIMEOUT_S", "race_timeout_s", int, 10, 3600)
        text("RELAY_TOOLS_CA_FILE", "tools_ca_file")
        flag("RELAY_TOOLS_ALLOW_PRIVATE", "tools_allow_private")
        number("RELAY_RETENTION_DAYS", "retention_days", int, 0, 36500)
        number("RELAY_USAGE_RETENTION_DAYS", "usage_retention_days", int, 0, 36500)
        number("RELAY_RETENTION_INTERVAL_S", "retention_interval_s", int, 0, 86400 * 7)
        flag("RELAY_REDACT", "redact")
        text("RELAY_REDACT_PATTERNS", "redact_patterns")
        flag("RELAY_REDACT_DTMF", "redact_dtmf")
        if "RELAY_TWILIO_API_URL" in env and any(env.get(name) for name in ("TWILIO_EDGE", "TWILIO_REGION")):
            # The twilio library rewrites the API's host for an edge or region: a stand-in's
            # address would be mangled (BACKENDS §6.1).
            problems.append("RELAY_TWILIO_API_URL cannot be used with TWILIO_EDGE or TWILIO_REGION set: unset them")

        settings = cls(**values)  # type: ignore[arg-type]  # values checked one by one above
        try:
            settings.redaction  # noqa: B018 - read to check RELAY_REDACT_PATTERNS
        except InputError as exc:
            problems.append(f"RELAY_REDACT_PATTERNS: {exc}")
        problems += settings.problems(serve=serve)
        if problems:
            raise ConfigError(problems)
        return settings

    def problems(self, *, serve: bool = True) -> list[str]:
        """Every inconsistency in these settings (empty when they are usable for ``serve``)."""
        problems: list[str] = []
        public = urlsplit(self.public_url)
        if not serve:
            pass
        elif not self.public_url:
            problems.append(
                "RELAY_PUBLIC_URL is required: the https origin Twilio reaches, e.g. https://relay.example.com"
            )
        elif public.scheme not in ("https", "http") or not public.hostname:
            problems.append(f"RELAY_PUBLIC_URL={self.public_url!r} must be an https:// origin")
        elif public.scheme == "http" and not is_loopback(public.hostname):
            problems.append(
                f"RELAY_PUBLIC_URL={self.public_url!r} must use https: Twilio only dials wss:// on 443 "
                "(plain http is accepted for loopback only)"
            )
        elif public.path not in ("", "/") or public.query:
            problems.append(f"RELAY_PUBLIC_URL={self.public_url!r} must be an origin with no path or query")
        if self.backend not in BACKENDS:
            problems.append(f"RELAY_BACKEND={self.backend[:40]!r} is not one of {', '.join(BACKENDS)}")
        if self.live_model not in models.LIVE_MODELS:
            problems.append(f"RELAY_LIVE_MODEL={self.live_model[:40]!r} is not one of {', '.join(models.LIVE_MODELS)}")
        live = urlsplit(self.live_url)
        if live.scheme not in ("wss", "ws") or not live.hostname:
            problems.append(f"RELAY_OPENAI_LIVE_URL={self.live_url!r} must be a wss:// URL")
        elif live.scheme == "ws" and not is_loopback(live.hostname):
            problems.append(f"RELAY_OPENAI_LIVE_URL={self.live_url!r} must use wss (ws is for loopback only)")
        elif live.query:
            problems.append(
                f"RELAY_OPENAI_LIVE_URL={self.live_url!r} has a query: GPT-Live takes none (the model goes "
                "in session.start, from RELAY_LIVE_MODEL or the agent's)"
            )
        backend = urlsplit(self.realtime_url)
        if backend.scheme not in ("wss", "ws") or not backend.hostname:
            problems.append(f"RELAY_REALTIME_URL={self.realtime_url!r} must be a wss:// URL")
        elif backend.scheme == "ws" and not is_loopback(backend.hostname):
            problems.append(f"RELAY_REALTIME_URL={self.realtime_url!r} must use wss (ws is for loopback only)")
        elif "model" in parse_qs(backend.query):
            problems.append(
                f"RELAY_REALTIME_URL={self.realtime_url!r} names a model: the model is "
                "RELAY_REALTIME_MODEL (or the agent's), remove ?model= from the URL"
            )
        if not self.realtime_model or not self.realtime_model.isprintable() or " " in self.realtime_model:
            problems.append(f"RELAY_REALTIME_MODEL={self.realtime_model!r} is not a model name")
        if self.twilio_account_sid and not ACCOUNT_SID.fullmatch(self.twilio_account_sid):
            problems.append(f"TWILIO_ACCOUNT_SID={self.twilio_account_sid!r} must be AC followed by 32 hex digits")
        for name, url in (
            ("RELAY_GEMINI_LIVE_URL", self.gemini_live_url),
            ("RELAY_DEEPGRAM_AGENT_URL", self.deepgram_agent_url),
        ):
            parts = urlsplit(url)
            if parts.scheme not in ("wss", "ws") or not parts.hostname:
                problems.append(f"{name}={url!r} must be a wss:// URL")
            elif parts.scheme == "ws" and not is_loopback(parts.hostname):
                problems.append(f"{name}={url!r} must use wss (ws is for loopback only)")
        if self.gemini_model not in models.GEMINI_MODELS:
            names = ", ".join(models.GEMINI_MODELS)
            problems.append(f"RELAY_GEMINI_MODEL={self.gemini_model[:40]!r} is not one of {names}")
        key, key_name = self.backend_key(self.backend)
        if serve and not key:
            problems.append(f"{key_name} is required (RELAY_BACKEND={self.backend})")
        if serve and not self.twilio_auth_token and not self.skip_twilio_signature:
            problems.append(
                "TWILIO_AUTH_TOKEN is required to validate X-Twilio-Signature "
                "(RELAY_INSECURE_SKIP_TWILIO_SIGNATURE=1 turns validation off, for development only)"
            )
        if not voice_fits(self.agent_voice, self.backend):
            problems.append(f"RELAY_AGENT_VOICE={self.agent_voice!r} is not a voice for {self.backend}")
        if self.agent_reasoning_effort not in models.REASONING_EFFORTS:
            problems.append(
                f"RELAY_AGENT_REASONING_EFFORT={self.agent_reasoning_effort[:40]!r} is not one of "
                f"{', '.join(models.REASONING_EFFORTS)}"
            )
        if self.database_url and urlsplit(self.database_url).scheme not in ("postgres", "postgresql"):
            problems.append("DATABASE_URL must be a postgres:// or postgresql:// URL")
        if self.pacer_interval_ms % FRAME_MS or (
            self.pacer_interval_ms > FRAME_MS and self.pacer_interval_ms + FRAME_MS > self.playout_lead_ms
        ):
            problems.append(
                f"RELAY_PACER_INTERVAL_MS={self.pacer_interval_ms} must be a multiple of {FRAME_MS}, and at least "
                f"one frame under RELAY_PLAYOUT_LEAD_MS={self.playout_lead_ms} "
                "(Twilio must never run dry between ticks)"
            )
        api = urlsplit(self.twilio_api_url)
        if api.scheme not in ("https", "http") or not api.hostname:
            problems.append(f"RELAY_TWILIO_API_URL={self.twilio_api_url!r} must be an https:// origin")
        elif api.scheme == "http" and not is_loopback(api.hostname):
            problems.append(f"RELAY_TWILIO_API_URL={self.twilio_api_url!r} must use https (http is for loopback only)")
        elif api.path not in ("", "/") or api.query:
            problems.append(f"RELAY_TWILIO_API_URL={self.twilio_api_url!r} must be an origin with no path or query")
        if self.outbound_from and not E164.fullmatch(self.outbound_from):
            problems.append(f"RELAY_OUTBOUND_FROM={self.outbound_from[:40]!r} must be an E.164 number")
        try:
            self.quiet  # noqa: B018 - read for its checks
        except InputError as exc:
            problems.append(f"RELAY_TIMEZONE / RELAY_QUIET_HOURS: {exc}")
        try:
            self.business  # noqa: B018 - read for its checks
        except InputError as exc:
            problems.append(f"RELAY_TIMEZONE / RELAY_BUSINESS_HOURS: {exc}")
        try:
            parse_contacts(self.on_call)
        except InputError as exc:
            problems.append(f"RELAY_ON_CALL: {exc}")
        if self.log_format not in ("", *FORMATS):
            problems.append(f"RELAY_LOG_FORMAT={self.log_format!r} must be json or text")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            problems.append(f"RELAY_LOG_LEVEL={self.log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        try:
            self.prices  # noqa: B018 - read for its checks
        except ConfigError as exc:
            problems += exc.problems
        return problems

    @property
    def quiet(self) -> QuietHours | None:
        """The embedded store's tenant's quiet hours (None: none).

        Raises:
            InputError: an unknown time zone or a malformed span.
        """
        return QuietHours.parse(self.timezone, self.quiet_hours) if self.quiet_hours else None

    @property
    def business(self) -> BusinessHours | None:
        """The embedded store's tenant's business hours (None: never open).

        Raises:
            InputError: an unknown time zone, day or time.
        """
        return BusinessHours.parse(self.timezone, self.business_hours) if self.business_hours else None

    @property
    def prices(self) -> PriceTable:
        """The price table calls are billed at: the shipped one, under RELAY_PRICES if set.

        Raises:
            ConfigError: RELAY_PRICES cannot be read or has a bad entry.
        """
        return PriceTable.load(self.prices_path)
