"""No call goes silent, and no backend session outlives its call.

When the backend will not serve a call (it refuses the session, never confirms it, or stays
lost mid-call), relay ends the stream; Twilio then runs the TwiML after ``<Connect>``, whose
after-stream hook answers from the call's recorded end: the caller hears the failure message
and the call hangs up. After a normal end (the agent hung up) the hook only hangs up. The hook
works on any relay sharing the database (PROTOCOLS §1.1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from relay.backends import realtime
from relay.conversation import Conversation
from relay.errors import BackendError
from relay.pg import Directory, PostgresStore
from relay.sim import audio
from relay.sim.agent import AgentConfig
from relay.sim.caller import CallerScript, TwilioCaller, after_connect, http_post
from relay.tenants import CachedDirectory
from tests.pgutil import AGENT, TcpProxy, create_database, drop_database, dsn
from tests.test_call import FAST, SHORT, _calls, post_webhook, stack, voice_form
from tests.vcall import START

FAILURE = "Sorry, we are having technical difficulties and cannot take your call right now. Goodbye."
ONE_LINE = dataclasses.replace(SHORT, utterances=("Hello?",))


async def settle(s) -> None:  # type: ignore[no-untyped-def]
    for task in list(s.relay.sessions):
        await task
    await s.store.flush()


def heard_the_apology(result) -> bool:  # type: ignore[no-untyped-def]
    return result.said_by_twilio == [FAILURE] and FAILURE in audio.transcribe(result.heard) and result.twilio_hung_up


@pytest.mark.parametrize(
    "agent, reason",
    [
        (
            dataclasses.replace(FAST, session_error=("model_not_found", "The model `gpt-x` does not exist.")),
            "backend_refused",
        ),
        (dataclasses.replace(FAST, session_updated_delay_ms=60_000), "backend_not_ready"),
    ],
)
async def test_a_backend_that_will_not_serve_the_call_gets_the_caller_an_apology(
    tmp_path: Path, agent: AgentConfig, reason: str
) -> None:
    async with stack(tmp_path, agent, backend_ready_timeout_ms=800) as s:
        result = await TwilioCaller(s.webhook, ONE_LINE).run()
        await settle(s)
        upstreams = s.relay.health()["upstreams_open"]
        [session] = s.agent.sessions
    assert result.closed_by_relay and result.close_code == 1011
    assert heard_the_apology(result), (result.said_by_twilio, audio.transcribe(result.heard))
    wav = tmp_path / "heard.wav"
    audio.write_wav(wav, result.heard)
    assert audio.transcribe(audio.read_wav(wav)).endswith(FAILURE)  # the recording ends with it
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == reason
    assert upstreams == 0 and session.closed_at is not None
    assert session.appends == 0  # no caller audio ever went to a session that was not confirmed


async def test_a_backend_lost_mid_call_for_good_ends_it_with_the_apology(tmp_path: Path) -> None:
    script = dataclasses.replace(SHORT, utterances=("First question.", "Second question."), answer_timeout_ms=8000)
    async with stack(tmp_path, reconnect_give_up_s=2) as s:
        caller = asyncio.create_task(TwilioCaller(s.webhook, script).run())
        await s.agent.wait_until(
            lambda: bool(s.agent.sessions) and any(k == "response.done" for _, k in s.agent.sessions[0].sent), 20
        )
        await s.agent.stop()  # the backend goes away: every reconnect fails
        s.agent.kill(s.agent.sessions[0])
        result = await caller
        await settle(s)
        upstreams = s.relay.upstreams_open
    assert result.turns[0].answered and heard_the_apology(result)
    [call] = await _calls(tmp_path)
    assert call["end_reason"] == "backend_lost" and upstreams == 0


async def test_after_the_agents_farewell_the_hook_only_hangs_up(tmp_path: Path) -> None:
    script = dataclasses.replace(SHORT, utterances=("Thanks, that is all. Goodbye.",), wait_for_hangup=True)
    async with stack(tmp_path) as s:
        result = await TwilioCaller(s.webhook, script).run()
        await settle(s)
    assert result.error is None and result.closed_by_relay and result.close_code == 1000
    assert result.said_by_twilio == [] and result.twilio_hung_up
    assert [status for _, status in result.redirects] == [200]


async def test_a_call_whose_stream_never_started_hears_the_apology(tmp_path: Path) -> None:
    """Twilio could not open the stream (or the relay died): no end was ever recorded."""
    async with stack(tmp_path) as s:
        _, body = await post_webhook(s.webhook, voice_form(7))
        [redirect] = after_connect(body.decode())
        url = (redirect.text or "").strip()
        form = {**voice_form(7), "CallStatus": "in-progress"}
        answer = await post_webhook(url, form)
        forged = await http_post(url, b"", {})
        other_call = await post_webhook(url, {**form, "CallSid": voice_form(8)["CallSid"]})
    assert redirect.tag == "Redirect" and redirect.get("method") == "POST"
    assert answer[0] == 200
    root = ET.fromstring(answer[1].decode())
    assert [(c.tag, c.text) for c in root] == [("Say", FAILURE), ("Hangup", None)]
    assert forged[0] == 403 and other_call[0] == 403  # Twilio's signature, and this call's token


async def test_ending_a_call_while_a_fresh_session_waits_closes_both(tmp_path: Path) -> None:
    """The recycle opens a fresh session before the cap and waits for a quiet moment; the
    caller hangs up before one comes, mid-sentence."""
    long_line = " ".join(["word"] * 40)  # a caller who talks on through the recycle
    script = CallerScript(utterances=(long_line,), lead_in_ms=200, answer_quiet_ms=400, hangup="drop")
    async with stack(tmp_path, upstream_max_session_s=6) as s:  # the fresh session opens at 1 s
        caller = TwilioCaller(s.webhook, script)
        task = asyncio.create_task(caller.run())
        await s.agent.wait_until(lambda: len(s.agent.sessions) == 2, 10)
        assert caller._ws is not None
        caller._ws.transport.abort()  # the line drops while the fresh session waits for quiet
        await asyncio.gather(task, return_exceptions=True)
        await settle(s)
        first, fresh = s.agent.sessions
        await s.agent.wait_closed(fresh, timeout=5)
        health = s.relay.health()
    assert fresh.closed_at is not None and first.closed_at is not None
    assert fresh.appends == 0, "the fresh session was never taken into use"
    assert health["upstreams_open"] == 0 and health["upstreams_outlived"] == 0


@pytest.mark.postgres
async def test_the_hook_on_another_relay_reads_the_end_from_the_database(tmp_path: Path) -> None:
    """Two relays behind one address: the webhook and stream land on the first, Twilio's
    redirect after the stream on the second, which has only the database to go by."""
    name = await create_database()
    stores: list[PostgresStore] = []
    try:
        async with Directory.connect(dsn(name)) as directory:
            await directory.add_tenant("acme", "Acme", AGENT)
            await directory.add_number("+15550100001", "acme")
        for i in range(2):
            store = PostgresStore(dsn(name), spool_path=tmp_path / f"r{i}.spool")
            await store.open()
            stores.append(store)
        refusing = dataclasses.replace(FAST, session_error=("insufficient_quota", "You exceeded your quota."))
        async with (
            stack(tmp_path / "a", refusing, CachedDirectory(stores[0].directory.lookup_number), stores[0]) as a,
            stack(tmp_path / "b", FAST, CachedDirectory(stores[1].directory.lookup_number), stores[1]) as b,
        ):
            async with Balancer([a.webhook, a.webhook, b.webhook]) as lb:
                for relay in (a.relay, b.relay):
                    relay.settings = dataclasses.replace(relay.settings, public_url=lb.origin)
                result = await TwilioCaller(f"{lb.origin}/twilio/voice", ONE_LINE, to_number="+15550100001").run()
                served_by = lb.served
                ports = [int(x.webhook.split(":")[2].split("/")[0]) for x in (a, b)]
            await settle(a)
            outcomes_b = dict(b.relay.outcomes)
    finally:
        for store in stores:
            await store.close()
        await drop_database(name)
    assert served_by == [ports[0], ports[0], ports[1]]  # webhook and stream on one, the redirect on the other
    assert outcomes_b == {}  # the second relay never ran the call
    assert heard_the_apology(result)
    assert [status for _, status in result.redirects] == [200]


class Balancer:
    """A TCP front for several relays: connection N goes to ``targets[N]`` (the last one after);
    ``served`` lists the port each connection went to."""

    def __init__(self, targets: list[str]) -> None:
        self._targets = [int(t.split(":")[2].split("/")[0]) for t in targets]
        self.served: list[int] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._targets[min(len(self.served), len(self._targets) - 1)]
        self.served.append(port)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        pump = TcpProxy._pump
        tasks = [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


class _Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def send_frames(self, frames: bytes) -> None:
        self.sent.append(frames)

    def send_append(self, payload: bytes) -> None:
        self.sent.append(payload)


def _error(event_id: str | None) -> bytes:
    error = {"type": "invalid_request_error", "code": "x", "message": "no", "event_id": event_id}
    return orjson.dumps({"type": "error", "event_id": "event_1", "error": error})


@pytest.mark.parametrize(
    "event_id, refuses", [(realtime.SESSION_UPDATE_ID, True), (None, True), ("relay_seed_3", False)]
)
def test_an_error_before_the_session_is_confirmed_refuses_it_only_if_it_is_about_it(
    event_id: str | None, refuses: bool
) -> None:
    conversation = Conversation(START, realtime.AgentProfile(instructions="Hi."), _Sink(), lambda record: None)
    backend = _Sink()
    conversation.attach_backend(backend)
    assert orjson.loads(backend.sent[0])["event_id"] == realtime.SESSION_UPDATE_ID
    if refuses:
        with pytest.raises(BackendError, match="refused the session"):
            conversation.backend_message(_error(event_id), 0.0)
    else:
        conversation.backend_message(_error(event_id), 0.0)  # logged; the session may still confirm
    assert not conversation.backend_ready
