"""CallSession: the asyncio shell of one phone call, from Twilio's ``start`` to the last stored turn.

The protocol lives in ``relay.conversation.Conversation`` (sans-I/O); this module owns what
it cannot: the sockets, the tasks and the clock. Per call:

* the Twilio pump (events that are not per-frame: ``stop``, ``dtmf``, odd messages);
* the backend loop: pumps the current backend session, and when one drops unexpectedly
  reconnects with backoff and hands the conversation so far to the new one; the phone call
  does not drop because of a backend fault it can outlast;
* the recycler: before the backend's session cap (OpenAI: 60 min) a fresh session is opened
  and takes over at the first idle moment between turns, seeded with the conversation;
* the hang-up watch: when the agent calls ``end_call``, the farewell plays to its final mark
  (bounded wait) before the stream closes.

Per-frame messages never reach a task: media, marks and audio deltas are handled in the
transports' ``data_received``, routed in C to the conversation's media core (``route``), and
outbound audio is paced by
the server's one shared ``Pacer``. Whichever side ends the call, the backend session closes
with it; one that will not close in time is aborted, logged and counted.

No call goes silent. A backend session must confirm itself (``session.updated``, μ-law) within
``backend_ready_timeout_s``; the call's first session that does not (refused, wrong format, no
answer, closed), or a backend that stays lost for ``reconnect_give_up_s`` mid-call, ends the
call. Then, as whenever relay itself ends a stream, the end is recorded (``on_ended``, and the
store, waited for briefly) before the stream closes: Twilio goes on to the TwiML after
``<Connect>``, whose after-stream hook answers from that record (an apology after a failure).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from relay import logs, tracing, twilio
from relay.agents import Agent, AgentProfile
from relay.call_options import CallOptions
from relay.conversation import TRANSFERRED, AssistantTurn, CallStats, Conversation, Resumed, cut_words
from relay.errors import BackendError, BackendFatal, ProtocolError
from relay.fastpath import LEG_BACKEND, LEG_TWILIO, MediaCore
from relay.pacer import Pacer
from relay.pricing import PriceTable
from relay.redaction import Redaction
from relay.store import DEFAULT_TENANT, Store, TurnRecord
from relay.tools.invoke import ToolContext, ToolInvoker
from relay.tools.spec import TenantTool, TransferTarget
from relay.tools.store import ToolStore
from relay.ws import ConnectionClosed

log = logging.getLogger("relay.session")

UPSTREAM_CLOSE_TIMEOUT = 3.0
RECONNECT_BACKOFF = (0.1, 5.0)  # first delay, most delay (doubling), seconds
SHORT_LIVED_S = 5.0  # a backend session that drops sooner than this delays the next one
IDLE_POLL_S = 0.05
END_WRITE_TIMEOUT = 2.0  # how long the stream's close waits for the call's end to be stored
# A call asked to leave (moved to another relay, or hung up by request) leaves between turns;
# one that never falls quiet leaves after this long anyway.
LEAVE_MAX_WAIT_S = 30.0
RESUME_READ_TIMEOUT = 3.0  # how long a handed-over call waits for its past from the store
TOOL_FILLER_AFTER_S = 1.0  # a tool's answer later than this has the agent say the tool's filler line
UNKNOWN_PAST_SEQ = 100_000  # where a handed-over call whose past is unreadable numbers its turns from

# How relay closes a stream it ends, by end reason (Twilio's own ends, stop and a closed
# socket, need no close of ours beyond the handshake).
_CLOSE_CODES = {
    "stop": 1000,
    "agent_hangup": 1000,
    "handoff": 1000,
    "api_hangup": 1000,
    "call_completed": 1000,
    "voicemail_left": 1000,
    "machine_hangup": 1000,
    "race_accepted": 1000,
    "transferred": 1000,
    "twilio_protocol_error": 1007,
}
_CLOSE_REASONS = {
    "handoff": "handing the call to another relay",
    "api_hangup": "hung up by request",
    "voicemail_left": "voicemail left",
    "machine_hangup": "an answering machine took the call",
    "race_accepted": "the person on call took the matter",
    "transferred": "connecting the caller to another number",
    "call_completed": "Twilio reports the call over",
    "backend_unavailable": "speech backend unavailable",
    "backend_refused": "speech backend refused the session",
    "backend_not_ready": "speech backend did not confirm the session in time",
    "backend_lost": "speech backend lost",
    "backend_content": "speech backend ended the session over its content",
    "relay_shutdown": "relay is shutting down",
    "error": "internal error",
}

__all__ = ["CallSession", "CallStats", "ConnectUpstream", "ResolveAgent", "TwilioSocket", "Upstream", "cut_words"]


class TwilioSocket(Protocol):
    """What a session needs from the Twilio leg (``relay.ws.Connection``)."""

    def route(self, media: MediaCore | None, leg: int = LEG_TWILIO) -> None: ...
    async def recv(self) -> bytes: ...
    def send(self, message: bytes) -> None: ...
    def send_frames(self, frames: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Upstream(Protocol):
    """What a session needs from the backend leg (``relay.upstream.UpstreamConnection``)."""

    aborted: bool

    def route(self, media: MediaCore | None, leg: int = LEG_TWILIO) -> None: ...
    async def recv(self) -> bytes: ...
    def send(self, message: bytes) -> None: ...
    def send_append(self, payload: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


# A new backend session for a call's agent (its model picks the endpoint).
ConnectUpstream = Callable[[AgentProfile], Awaitable[Upstream]]
# The tenant's agent for a call: (tenant_id, agent_id) -> its stored row, or None for the default.
ResolveAgent = Callable[[str, str], Awaitable["Agent | None"]]


class BackendNotReady(BackendError):
    """A backend session did not confirm itself within the ready timeout."""


# How often a backend that needs it hears that the session is alive while no audio flows
# (Deepgram wants something every 8 s: BACKENDS §4.5).
KEEPALIVE_S = 4.0


def _recycle_margin(cap_s: float) -> float:
    """How long before the cap a fresh session is opened: 10 %, at least 5 s, at most 5 min."""
    return min(max(5.0, cap_s * 0.1), 300.0)


class CallHooks(Protocol):
    """What a call's tools and keys reach beyond the call (``relay.outbound.service.Outbound``)."""

    def escalate(self, session: CallSession, summary: str) -> dict[str, Any]: ...

    def key(self, session: CallSession, digit: str) -> None: ...

    def ended(self, session: CallSession, reason: str) -> None: ...


# Readies a transfer the agent asked for: None for a cold one (the call ends for it), else what
# the model is told while a warm one runs (``relay.server.Relay.transfer``).
OnTransfer = Callable[["CallSession", TransferTarget, str], "dict[str, Any] | None"]


class CallSession:
    """Runs one call; ``run()`` returns when the call has ended and its records are submitted."""

    def __init__(
        self,
        twilio_ws: TwilioSocket,
        *,
        connect_upstream: ConnectUpstream,
        agent: AgentProfile,
        store: Store,
        options: CallOptions = CallOptions(),
        pacer: Pacer | None = None,
        upstream_max_session_s: float = 3600.0,
        backend_ready_timeout_s: float = 5.0,
        reconnect_give_up_s: float = 30.0,
        start_timeout_s: float = 10.0,
        resolve_agent: ResolveAgent | None = None,
        prepare: Callable[[twilio.Start, AgentProfile], Awaitable[AgentProfile]] | None = None,
        hooks: CallHooks | None = None,
        verify_start: Callable[[twilio.Start], str | None] | None = None,
        on_started: Callable[[str], None] | None = None,
        on_ended: Callable[[str, str], None] | None = None,
        on_upstream_outlived: Callable[[], None] | None = None,
        on_turn_stored: Callable[[str, str, AssistantTurn | None, float | None], None] | None = None,
        prices: PriceTable | None = None,
        tool_store: ToolStore | None = None,
        tool_invoker: ToolInvoker | None = None,
        on_transfer: OnTransfer | None = None,
        redaction_for: Callable[[str], Awaitable[Redaction | None]] | None = None,
    ) -> None:
        self.twilio = twilio_ws
        self._connect_upstream = connect_upstream
        self._agent = agent
        self._store = store
        self._options = options
        self._loop = asyncio.get_running_loop()
        self._pacer = pacer if pacer is not None else Pacer(self._loop, options.pacer_interval_ms / 1000)
        self._cap_s = upstream_max_session_s
        self._ready_timeout_s = backend_ready_timeout_s
        self._give_up_s = reconnect_give_up_s
        self._start_timeout_s = start_timeout_s
        self._resolve_agent = resolve_agent
        # The agent as this call needs it (briefed on a call it placed, given tools), and what
        # its tools and keys reach beyond the call (``relay.outbound``).
        self._prepare = prepare
        self._hooks = hooks
        self._verify_start = verify_start
        self._on_started = on_started
        self._on_ended = on_ended
        self._on_outlived = on_upstream_outlived
        self._on_turn_stored = on_turn_stored  # (tenant, role, the answer or None, v2v ms): for metrics
        self._prices = prices  # what the call is billed at (None: the shipped table)
        # The agent's own tools and transfer targets (read as the call starts), what calls them,
        # and what readies a transfer (``relay.server.Relay.transfer``).
        self._tool_store = tool_store
        self._tool_invoker = tool_invoker
        self._tool_secret = ""
        self._on_transfer = on_transfer
        self._tool_calls: set[asyncio.Task[None]] = set()
        self._redaction_for = redaction_for  # the tenant's redaction of what is stored
        self.start: twilio.Start | None = None
        self.conversation: Conversation | None = None
        self.end_reason = ""
        self._upstream: Upstream | None = None
        self._ending = False
        self._hangup = asyncio.Event()
        self._leave = asyncio.Event()  # end the stream on relay's side (``leave``)
        self._leave_reason = "handoff"
        self._leave_at_pause = True
        self._recycler: asyncio.Task[None] | None = None
        self._opened_at = 0.0  # loop time the current backend session was taken into use
        self._short_lived = 0  # backend sessions in a row that dropped young
        self._ever_ready = False  # some backend session of this call confirmed itself
        self._lost_at: float | None = None  # loop time the call lost its last ready session
        self._close_reason = ""  # said in the stream's close frame, when relay ends the stream
        self._closing: set[asyncio.Task[None]] = set()
        self._session_of: dict[int, int] = {}  # id(upstream) -> the call's backend session number
        self._pumping: Upstream | None = None  # the session the backend loop is reading
        self._pump_left = asyncio.Event()  # set whenever it stops reading one

    @property
    def call_sid(self) -> str:
        return self.start.call_sid if self.start else ""

    @property
    def tenant_id(self) -> str:
        """The tenant the webhook routed this call to (its ``<Parameter name="tenant">``)."""
        return (self.start.custom_parameters.get("tenant") if self.start else None) or DEFAULT_TENANT

    @property
    def stats(self) -> CallStats:
        return self.conversation.stats if self.conversation is not None else CallStats()

    def hand_off(self) -> None:
        """Move the call to another relay: at the next pause between turns, its stream ends with
        ``handoff`` and Twilio fetches the after-stream hook, which connects a new stream."""
        self.leave("handoff")

    def leave(self, reason: str, *, at_pause: bool = True) -> None:
        """End the stream with ``reason``: at the next pause between turns (after the line in
        progress), or at once. The first request to leave is the one that counts."""
        if self._leave.is_set():
            return
        self._leave_reason, self._leave_at_pause = reason, at_pause
        self._leave.set()

    @property
    def agent_id(self) -> str:
        """The tenant's agent the webhook picked for this call (its ``<Parameter name="agent">``)."""
        return (self.start.custom_parameters.get("agent") if self.start else None) or "default"

    def say_and_hang_up(self, line: str, reason: str) -> None:
        """The agent stops, says ``line``, and the call ends (``reason``) once it has been heard."""
        if self.conversation is not None:
            self.conversation.say_and_hang_up(line, self._loop.time(), reason)

    def put_through(self, target: str, line: str, record: str = "") -> None:
        """The agent stops, says ``line``, and the stream ends ``transferred`` to ``target`` once it
        has been heard (the relay's after-stream hook then dials it). ``record``: where the call's
        record says it went, when not ``target`` itself (the person in a conference room)."""
        if self.conversation is not None:
            self.conversation.transferred_to = record or target
            self.conversation.say_and_hang_up(line, self._loop.time(), TRANSFERRED)

    def say_between_turns(self, line: str) -> None:
        """The agent says ``line`` at the next pause between turns, never over itself or the
        caller (after ``LEAVE_MAX_WAIT_S`` without one, it is not said)."""
        self._at_pause(lambda conversation: conversation.say(line), "a line asked for through the API")

    def tell(self, note: str) -> None:
        """Tell the agent something it should pass on (it answers the caller about it, at the next
        pause between turns)."""
        self._at_pause(lambda conversation: conversation.tell(note), "a note for the agent")

    def _at_pause(self, act: Callable[[Conversation], None], what: str) -> None:
        task = asyncio.ensure_future(self._when_idle(act, what))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _when_idle(self, act: Callable[[Conversation], None], what: str) -> None:
        deadline = self._loop.time() + LEAVE_MAX_WAIT_S
        while self._loop.time() < deadline and not self._ending:
            conversation = self.conversation
            if conversation is not None and conversation.idle:
                log.info("call %s: passing on %s", self.call_sid, what)
                act(conversation)
                return
            await asyncio.sleep(IDLE_POLL_S)
        log.warning("call %s: no pause between turns came; %s is not passed on", self.call_sid, what)

    def answering_machine(self) -> str:
        """A call the agent placed reached an answering machine, its greeting over: the agent
        leaves its voicemail message, or, with none, the call ends now. Returns which."""
        conversation = self.conversation
        message = self._agent.voicemail_message
        if conversation is None or not message:
            if conversation is not None:  # what the agent was saying stops now, not at the close
                conversation.stop_talking(self._loop.time())
            self.leave("machine_hangup", at_pause=False)
            return "hung_up"
        log.info("call %s: an answering machine; leaving the agent's message", self.call_sid)
        conversation.say_and_hang_up(message, self._loop.time(), "voicemail_left")
        return "left"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self._start_timeout_s):
                self.start = await self._await_start()
        except ConnectionClosed:
            self.end_reason = "twilio_closed_before_start"
            return
        except TimeoutError:
            # A stream that never says which call it is holds a socket and nothing else: closed.
            log.warning("closing a stream that sent no start in %.1f s", self._start_timeout_s)
            self.end_reason = "start_timeout"
            await self.twilio.close(1008, "no start event")
            return
        except ProtocolError as exc:
            log.warning("closing stream before start: %s", exc)
            self.end_reason = "start_invalid"
            await self.twilio.close(1007, str(exc)[:100])
            return
        start = self.start
        refused = self._verify_start(start) if self._verify_start is not None else None
        if refused:
            # Not a call our webhook answered (or not this call): no upstream, nothing stored.
            log.warning("closing stream %s: %s", start.stream_sid, refused)
            self.end_reason = "stream_token_invalid"
            await self.twilio.close(1008, refused[:100])
            return
        logs.call_scope(call_sid=start.call_sid, stream_sid=start.stream_sid, tenant=self.tenant_id)
        if self._on_started is not None:
            self._on_started(start.call_sid)
        await self._pick_agent()
        await self._load_actions()
        if self._prepare is not None:
            await self._prepare_agent(start)
        resumed = await self._resumed(start) if start.custom_parameters.get("resume") == "1" else None
        conversation = self.conversation = Conversation(
            start,
            self._agent,
            self.twilio,
            self._store.submit,
            self._options,
            prices=self._prices,
            resumed=resumed,
            redaction=await self._redaction(),
        )
        # The shared clock paces the media core's ring (a C call per tick) and, while keys wait
        # to be sent, the conversation's own tick.
        media = conversation.media
        media.on_wants_clock = lambda: self._pacer.add(media, media.tick)
        conversation.on_wants_clock = lambda: self._pacer.add(conversation, conversation.tick)
        conversation.on_hangup = self._hangup.set
        conversation.on_session_ending = self._session_ending
        hooks = self._hooks
        if hooks is not None:
            conversation.on_escalate = lambda summary: hooks.escalate(self, summary)
            conversation.on_key = lambda digit: hooks.key(self, digit)
        conversation.on_tool = self._call_tool
        on_transfer = self._on_transfer
        if on_transfer is not None:

            def transfer(target: TransferTarget, summary: str) -> dict[str, Any] | None:
                output = on_transfer(self, target, summary)
                if output is None:  # cold: the call ends for it
                    conversation.transferred_to = target.target
                return output

            conversation.on_transfer = transfer
        call_trace = tracing.CallTrace(start.call_sid, start.stream_sid, self.tenant_id)
        on_turn, tenant = self._on_turn_stored, self.tenant_id

        def turn_stored(record: TurnRecord, turn: AssistantTurn | None) -> None:
            call_trace.turn(record, turn)
            if on_turn is not None:
                on_turn(tenant, record.role, turn, record.voice_to_voice_ms if turn is None else None)

        conversation.on_turn_stored = turn_stored
        log.info("call %s stream %s started", start.call_sid, start.stream_sid)
        try:
            await self._bridge(conversation)
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "relay_shutdown"
            raise
        finally:
            self._ending = True
            self._pacer.remove(conversation.media)
            self._pacer.remove(conversation)
            self.end_reason = self.end_reason or "error"
            conversation.finish(self.end_reason)
            call_trace.end(self.end_reason, conversation.stats)
            log.info(
                "call %s ended (%s): %d frames in, %d out, %d backend session(s)",
                start.call_sid,
                self.end_reason,
                conversation.stats.frames_in,
                conversation.stats.frames_out,
                conversation.stats.backend_sessions,
            )
            if self._on_ended is not None:
                self._on_ended(start.call_sid, self.end_reason)
            if self._hooks is not None:
                self._hooks.ended(self, self.end_reason)
            await self._end_stream()

    async def _end_stream(self) -> None:
        """Close the stream the way the call ended. When relay ends a live call, its end is
        stored first (bounded): the after-stream hook Twilio fetches next reads it."""
        reason = self.end_reason
        if reason not in ("stop", "twilio_closed"):
            try:
                async with asyncio.timeout(END_WRITE_TIMEOUT):
                    await self._store.flush()
            except TimeoutError:
                log.warning("call %s: its end is not stored yet; closing the stream anyway", self.call_sid)
        text = self._close_reason or _CLOSE_REASONS.get(reason, "")
        await self.twilio.close(_CLOSE_CODES.get(reason, 1011), text[:100])

    async def _await_start(self) -> twilio.Start:
        while True:
            event = twilio.parse_event(await self.twilio.recv())
            if isinstance(event, twilio.Start):
                twilio.check_start(event)
                return event
            if not isinstance(event, twilio.Connected):  # media, a mark, ... before start
                raise ProtocolError(f"{type(event).__name__.lower()} before start")

    async def _resumed(self, start: twilio.Start) -> Resumed:
        """A call handed over from another relay: its turns so far, from the store. When the store
        cannot say, the call goes on unseeded, its turns numbered far past any the call had, so
        none overwrites one stored before."""
        try:
            async with asyncio.timeout(RESUME_READ_TIMEOUT):
                call = await self._store.call(start.call_sid)
                turns = await self._store.turns(start.call_sid)
        except Exception as exc:  # noqa: BLE001 - the store is down: better a call without its past than none
            log.warning("call %s: handed over; its turns are unreadable (%s)", start.call_sid, type(exc).__name__)
            return Resumed((), started_at=time.time(), last_seq=UNKNOWN_PAST_SEQ)
        log.info("call %s: taken over from another relay after %d turn(s)", start.call_sid, len(turns))
        return Resumed(
            turns,
            last_seq=max((t.seq for t in turns), default=0),
            started_at=float(call["started_at"]) if call else time.time(),
            frames_in=int(call.get("frames_in") or 0) if call else 0,
            frames_out=int(call.get("frames_out") or 0) if call else 0,
        )

    def _for_backend(self) -> AgentProfile:
        """The call's agent as its backend sessions open: with the tenant, whose own key for the
        backend (if it has one) opens them."""
        return dataclasses.replace(self._agent, tenant_id=self.tenant_id)

    async def _pick_agent(self) -> None:
        if self._resolve_agent is None:
            return
        params = self.start.custom_parameters if self.start else {}
        try:
            found = await self._resolve_agent(self.tenant_id, params.get("agent") or "default")
        except Exception as exc:  # noqa: BLE001 - the directory is down: the call goes on with the default agent
            log.warning("call %s: agent lookup failed (%s); using the default agent", self.call_sid, type(exc).__name__)
            found = None
        if found is not None:
            self._agent = found.profile(self._agent)

    async def _redaction(self) -> Redaction | None:
        """The tenant's redaction. Unreadable, every turn is redacted as the default redacts
        (cards, digit runs, e-mail addresses): a tenant that asked for it is never stored in clear."""
        if self._redaction_for is None:
            return None
        try:
            async with asyncio.timeout(RESUME_READ_TIMEOUT):
                return await self._redaction_for(self.tenant_id)
        except Exception as exc:  # noqa: BLE001 - the store is away: redact rather than risk it
            log.warning(
                "call %s: the tenant's redaction is unreadable (%s); redacting", self.call_sid, type(exc).__name__
            )
            return Redaction()

    async def _load_actions(self) -> None:
        """The agent's tools and transfer targets, from the store (bounded: without them the call
        goes on, the agent only talking)."""
        if self._tool_store is None:
            return
        try:
            async with asyncio.timeout(RESUME_READ_TIMEOUT):
                actions = await self._tool_store.actions(self.tenant_id, self.agent_id)
        except Exception as exc:  # noqa: BLE001 - the store is away: the agent talks without its tools
            log.warning("call %s: the agent's tools are unavailable (%s)", self.call_sid, type(exc).__name__)
            return
        self._tool_secret = actions.secret
        if actions.tools or actions.targets:
            self._agent = dataclasses.replace(self._agent, tools=actions.tools, transfer_targets=actions.targets)

    def _call_tool(self, call_id: str, tool: TenantTool, arguments: dict[str, Any]) -> None:
        task = asyncio.create_task(self._tool_call(call_id, tool, arguments), name=f"tool-{self.call_sid}")
        self._tool_calls.add(task)
        task.add_done_callback(self._tool_calls.discard)

    async def _tool_call(self, call_id: str, tool: TenantTool, arguments: dict[str, Any]) -> None:
        """One tenant tool call, beside the call's frames: its filler line if it is slow, then its
        output to the conversation (the invoker answers within the tool's timeout, whatever happens)."""
        conversation = self.conversation
        assert conversation is not None
        if self._tool_invoker is None:
            conversation.tool_answered(call_id, {"error": "tools are unavailable"}, self._loop.time())
            return
        context = ToolContext(self.call_sid, self.tenant_id, self.agent_id, self._tool_secret)
        answer = asyncio.ensure_future(self._tool_invoker.call(tool, context, arguments))
        try:
            done, _ = await asyncio.wait({answer}, timeout=TOOL_FILLER_AFTER_S)
            if not done:
                conversation.tool_slow(call_id)
            output = await answer
        finally:
            answer.cancel()
        if not self._ending:
            conversation.tool_answered(call_id, output, self._loop.time())

    async def _prepare_agent(self, start: twilio.Start) -> None:
        assert self._prepare is not None
        try:
            async with asyncio.timeout(RESUME_READ_TIMEOUT):
                self._agent = await self._prepare(start, self._agent)
        except Exception as exc:  # noqa: BLE001 - the store is away: the agent talks without its notes
            log.warning("call %s: the call's details are unavailable (%s)", self.call_sid, type(exc).__name__)

    async def _bridge(self, conversation: Conversation) -> None:
        try:
            upstream = await self._connect_upstream(self._for_backend())
        except Exception as exc:  # noqa: BLE001 - no backend at all when the call starts: this call ends, clearly
            log.error("call %s: speech backend unavailable: %s", self.call_sid, exc)
            self.end_reason = "backend_unavailable"
            return
        self._use(upstream, "start")
        self.twilio.route(conversation.media, LEG_TWILIO)
        tasks = [
            asyncio.create_task(self._twilio_pump(conversation), name=f"twilio-{self.call_sid}"),
            asyncio.create_task(self._backend_loop(conversation), name=f"backend-{self.call_sid}"),
            asyncio.create_task(self._hang_up_watch(conversation), name=f"hangup-{self.call_sid}"),
            asyncio.create_task(self._leave_watch(conversation), name=f"leave-{self.call_sid}"),
        ]
        if hasattr(conversation.backend, "keepalive"):
            tasks.append(asyncio.create_task(self._keepalive(conversation), name=f"keepalive-{self.call_sid}"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            error = None if first.cancelled() else first.exception()
            if error is not None:
                log.error("call %s failed", self.call_sid, exc_info=error)
            self.end_reason = "error" if first.cancelled() or error is not None else first.result()
        finally:
            self._ending = True
            self.twilio.route(None)
            running: list[asyncio.Task[str] | asyncio.Task[None]] = [*tasks, *self._tool_calls]
            if self._recycler is not None:
                running.append(self._recycler)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if self._upstream is not None:
                self._retire(self._upstream)
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)

    async def _keepalive(self, conversation: Conversation) -> str:
        """A backend that closes an idle session (Deepgram, after ~10 s of nothing) hears a
        KeepAlive whenever no caller audio went to it for a while (a muted or held call)."""
        sent = conversation.media.frames_in
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            upstream, frames = self._upstream, conversation.media.frames_in
            if upstream is not None and conversation.backend_ready and frames == sent:
                upstream.send(conversation.backend.keepalive())  # type: ignore[attr-defined]  # (checked at start)
            sent = frames

    # ------------------------------------------------------------------ Twilio leg

    async def _twilio_pump(self, conversation: Conversation) -> str:
        while True:
            try:
                message = await self.twilio.recv()
            except ConnectionClosed:
                # Dropped by relay for not reading what it was sent, or closed by Twilio.
                return "twilio_slow" if getattr(self.twilio, "too_slow", False) else "twilio_closed"
            try:
                if conversation.twilio_message(message, self._loop.time()) == "stop":
                    return "stop"
            except ProtocolError as exc:
                log.warning("call %s: bad message from Twilio: %s", self.call_sid, exc)
                self._close_reason = str(exc)
                return "twilio_protocol_error"

    async def _hang_up_watch(self, conversation: Conversation) -> str:
        """When the agent ends the call: let the farewell play to its final mark, bounded."""
        await self._hangup.wait()
        grace = self._options.hangup_grace_ms / 1000
        deadline = self._loop.time() + conversation.farewell_ms_left() / 1000 + grace
        while not conversation.farewell_played:
            self._hangup.clear()
            try:
                await asyncio.wait_for(self._hangup.wait(), max(0.0, deadline - self._loop.time()))
            except TimeoutError:
                log.warning("call %s: the farewell's final mark did not come back in time; hanging up", self.call_sid)
                break
        return conversation.hangup_reason

    async def _leave_watch(self, conversation: Conversation) -> str:
        """When the stream is to end on relay's side (``leave``): at the first pause between
        turns, or at once."""
        await self._leave.wait()
        deadline = self._loop.time() + LEAVE_MAX_WAIT_S
        while self._leave_at_pause and not conversation.idle and self._loop.time() < deadline:
            await asyncio.sleep(IDLE_POLL_S)
        log.info("call %s: ending the stream (%s)", self.call_sid, self._leave_reason)
        return self._leave_reason

    # ------------------------------------------------------------------ backend leg

    def _use(self, upstream: Upstream, reason: str) -> None:
        """Make ``upstream`` the call's backend session (``reason``: start, recycle, reconnect)."""
        assert self.conversation is not None
        conversation, loop = self.conversation, self._loop
        self._upstream = upstream
        self._opened_at = loop.time()
        # Audio deltas go from the upstream's reads straight to the media core (only the
        # current session is routed: a retired one is unrouted before it is replaced).
        upstream.route(conversation.media, LEG_BACKEND)
        conversation.attach_backend(upstream, reason)
        self._session_of[id(upstream)] = conversation.session_index
        self._start_recycler(upstream, loop.time())

    def _start_recycler(self, upstream: Upstream, opened_at: float, ending_in: float | None = None) -> None:
        if self._recycler is not None:
            self._recycler.cancel()
        self._recycler = asyncio.create_task(
            self._recycle(upstream, opened_at, ending_in), name=f"recycle-{self.call_sid}"
        )

    def _session_ending(self, seconds: float) -> None:
        """The backend ends its session in ``seconds`` (Gemini's goAway): a fresh one takes over
        now, at the first pause, resuming it (``Conversation.resume_handle``)."""
        if self._upstream is not None and not self._ending:
            self._start_recycler(self._upstream, self._opened_at, max(0.0, seconds))

    async def _backend_loop(self, conversation: Conversation) -> str:
        while True:
            upstream = self._upstream
            assert upstream is not None
            try:
                await self._pump(conversation, upstream)
                failure = None
            except BackendFatal as exc:
                # Another session would fail the same way (no quota, a bad key) or must not be tried.
                log.error("call %s: %s; ending the call", self.call_sid, exc)
                return exc.end_reason
            except BackendError as exc:
                failure = exc
            if failure is None and upstream is not self._upstream:
                continue  # replaced by a fresh session (recycle): pump that one
            if not self._ever_ready:
                # The call's first session never confirmed itself: the call ends, with an apology.
                log.error("call %s: %s", self.call_sid, failure or "the backend closed the session before it was ready")
                return "backend_not_ready" if isinstance(failure, BackendNotReady) else "backend_refused"
            if failure is not None:
                log.warning("call %s: %s; reconnecting", self.call_sid, failure)
                self._retire(upstream)
            else:
                log.warning(
                    "call %s: the backend session ended unexpectedly (close code %s); reconnecting",
                    self.call_sid,
                    getattr(upstream, "close_code", None),
                )
                self._upstream = None
            now = self._loop.time()
            if self._lost_at is None:
                self._lost_at = now
            conversation.backend_lost(now)
            # A session that dies young (refused after its handshake, say) is not retried in a
            # tight loop: the wait doubles with every short-lived one.
            if now - self._opened_at < SHORT_LIVED_S:
                self._short_lived += 1
                await asyncio.sleep(
                    min(
                        RECONNECT_BACKOFF[0] * 2 ** (self._short_lived - 1),
                        RECONNECT_BACKOFF[1],
                        max(0.0, self._lost_at + self._give_up_s - now),
                    )
                )
            else:
                self._short_lived = 0
            fresh = await self._reconnect()
            if fresh is None:
                log.error(
                    "call %s: no working backend session for %.0f s; ending the call", self.call_sid, self._give_up_s
                )
                return "backend_lost"
            self._use(fresh, "reconnect")

    async def _pump(self, conversation: Conversation, upstream: Upstream) -> None:
        """Read ``upstream`` until it closes or is replaced.

        Raises:
            BackendError: the session refused the call (an error, not μ-law) before confirming.
            BackendNotReady: it did not confirm within the ready timeout.
        """
        self._pumping = upstream
        try:
            await self._read(conversation, upstream)
        finally:
            self._pumping = None
            self._pump_left.set()

    async def _read(self, conversation: Conversation, upstream: Upstream) -> None:
        deadline = None if conversation.backend_ready else self._loop.time() + self._ready_timeout_s
        while True:
            try:
                if deadline is None:
                    message = await upstream.recv()
                else:
                    # (asyncio.timeout, not wait_for: wait_for can swallow the call's cancellation
                    # when a message arrives at the same moment, and this loop would read on.)
                    async with asyncio.timeout_at(deadline):
                        message = await upstream.recv()
            except ConnectionClosed:
                return
            except TimeoutError:
                raise BackendNotReady(
                    f"the backend did not confirm the session within {self._ready_timeout_s * 1000:.0f} ms"
                ) from None
            if upstream is not self._upstream:
                # Replaced while this read waited: its message is a retired session's.
                index = self._session_of.get(id(upstream))
                if index is not None:
                    conversation.retired_message(index, message)
                return
            conversation.backend_message(message, self._loop.time())
            if deadline is not None and conversation.backend_ready:
                deadline = None
                self._ever_ready = True
                self._lost_at = None

    async def _reconnect(self) -> Upstream | None:
        """A new backend session, retried with backoff until ``reconnect_give_up_s`` after the
        loss (None: the time is up)."""
        assert self._lost_at is not None
        give_up_at = self._lost_at + self._give_up_s
        delay, most = RECONNECT_BACKOFF
        while (left := give_up_at - self._loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    return await self._connect_upstream(self._for_backend())
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried until the give-up time
                log.warning(
                    "call %s: reconnecting to the backend failed (%s); again in %.1f s",
                    self.call_sid,
                    type(exc).__name__,
                    delay,
                )
            await asyncio.sleep(min(delay, max(0.0, give_up_at - self._loop.time())))
            delay = min(delay * 2, most)
        return None

    async def _recycle(self, upstream: Upstream, opened_at: float, ending_in: float | None = None) -> None:
        """Before ``upstream`` reaches the session cap, a fresh session takes over between turns
        (``ending_in``: the backend said it ends the session in so many seconds: at once)."""
        assert self.conversation is not None
        conversation = self.conversation
        cap_s = self._cap_s
        if ending_in is not None:
            cap_s = self._loop.time() + ending_in - opened_at
        else:
            # A backend that says when its session expires (GPT-Live's expires_at) sets the cap.
            while upstream is self._upstream and not conversation.backend_ready:
                await asyncio.sleep(IDLE_POLL_S)
            expires_at = conversation.backend_expires_at
            if expires_at is not None:
                cap_s = min(cap_s, max(1.0, expires_at - time.time() + self._loop.time() - opened_at))
            await asyncio.sleep(max(0.0, opened_at + cap_s - _recycle_margin(cap_s) - self._loop.time()))
        if upstream is not self._upstream:
            return
        try:
            fresh = await self._connect_upstream(self._for_backend())
        except Exception as exc:  # noqa: BLE001 - the cap's close will reconnect instead
            log.warning("call %s: could not open a fresh backend session (%s)", self.call_sid, type(exc).__name__)
            return
        adopted = False
        try:
            # Wait for a moment with nobody talking; at the very end, take over regardless.
            last_moment = opened_at + cap_s - 0.5
            while not conversation.idle and self._loop.time() < last_moment and upstream is self._upstream:
                await asyncio.sleep(IDLE_POLL_S)
            if upstream is not self._upstream or self._ending:
                return
            log.info("call %s: a fresh backend session takes over (session cap %.0f s)", self.call_sid, cap_s)
            upstream.route(None)
            self._recycler = None  # _use starts the next one; this task must not cancel itself
            self._use(fresh, "recycle")
            adopted = True
            self._retire(upstream)
        finally:
            if not adopted:  # the call ended (or the session was lost) while it waited: close it too
                self._retire(fresh)

    def _retire(self, upstream: Upstream) -> None:
        """Close a backend session in the background; one that will not close is aborted and counted."""
        if upstream is self._upstream:
            self._upstream = None
        upstream.route(None)
        task = asyncio.ensure_future(self._close_upstream(upstream, self._session_of.get(id(upstream))))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_upstream(self, upstream: Upstream, index: int | None = None) -> None:
        conversation = self.conversation
        closing = conversation.backend.close() if conversation is not None and index is not None else None
        if closing is not None and conversation is not None and index is not None:
            # A backend that finalizes a session on request (GPT-Live's session.close) says what
            # the session used in its last word (session.closed): read until it closes, bounded.
            try:
                upstream.send(closing)
                async with asyncio.timeout(UPSTREAM_CLOSE_TIMEOUT):
                    while self._pumping is upstream:  # one reader at a time: the loop leaves it first
                        self._pump_left.clear()
                        await self._pump_left.wait()
                    while True:
                        conversation.retired_message(index, await upstream.recv())
            except (TimeoutError, ConnectionClosed, OSError):
                pass
        self._session_of.pop(id(upstream), None)
        try:
            await asyncio.wait_for(upstream.close(), UPSTREAM_CLOSE_TIMEOUT)
            outlived = bool(getattr(upstream, "aborted", False))
        except (TimeoutError, OSError, ConnectionClosed):
            outlived = True
        if outlived:
            log.warning("call %s: a backend session outlived its call; aborted", self.call_sid)
            if self._on_outlived is not None:
                self._on_outlived()
