"""The fake speech backend of the harness: a Realtime (GA) and a GPT-Live endpoint that echo audio back.

Each ``input_audio_buffer.append`` is answered at once with a ``response.output_audio.delta``
carrying the same bytes, inside the event lifecycle a real session sends (``session.created``,
``session.updated``, ``response.created`` … ``response.done``; a response closes every
``frames_per_response`` chunks and the next append opens a new one; each session's first
response is cut short at a random point, so turn boundaries do not line up across calls,
as they do not on real phone lines). The audio bytes carry
the load generator's tag, so every frame's round trip through a relay can be timed.

On ``/v1/live/sessions`` it speaks GPT-Live (BACKENDS §2): ``session.start`` is answered with
``session.started`` (μ-law 8 kHz unless the client asked otherwise), and each
``session.input_audio.append`` at once with one ``session.output_audio.delta`` of the same bytes.
A GPT-Live session streams its audio continuously at real time, silence included, with no
response or item around it, so every frame is echoed; what relay rebuilds its turns from comes
as the real service sends it: an agent transcript fragment every ``LIVE_OUTPUT_TEXT_FRAMES``
frames and a caller one every ``LIVE_INPUT_TEXT_FRAMES``, each timed on the session's timeline
(byte ``k`` of the audio is at ``k / 8`` ms), and the cumulative usage every
``LIVE_USAGE_FRAMES``.

The same server offers the *direct path* on ``/direct``: it speaks Twilio's side of a media
stream and echoes each ``media`` straight back as an outbound ``media`` plus a ``mark``, the
same shape a relay returns. That path has no relay in it; it is the floor every relay is
measured against.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.wire import OP_TEXT, ServerEndpoint, frame

DEFAULT_FRAMES_PER_RESPONSE = 250  # 5 s of 20 ms chunks
LIVE_PATH = "/v1/live/sessions"
LIVE_OUTPUT_TEXT_FRAMES = 10  # an agent fragment per 200 ms of its audio (fragments land on 200 ms, BACKENDS §2.8)
LIVE_INPUT_TEXT_FRAMES = 50  # a caller fragment a second
LIVE_USAGE_FRAMES = 250  # session.usage.updated every 5 s
PCMU_8000 = {"type": "audio/pcmu", "rate": 8000}


def _default_session() -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_bench",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                    "idle_timeout_ms": None,
                },
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
    }


def _live_session(requested: dict[str, Any], session_id: str) -> dict[str, Any]:
    """The resolved session ``session.started`` carries for a ``session.start``'s ``session``."""
    audio = requested.get("audio") or {}
    output = audio.get("output") or {}
    session: dict[str, Any] = {
        "id": session_id,
        "expires_at": int(time.time()) + 3600,
        "model": requested.get("model") or "gpt-live-1",
        "status": "active",
        "audio": {
            "format": audio.get("format") or dict(PCMU_8000),
            "output": {"voice": output.get("voice") or "marin"},
        },
        "instructions": requested.get("instructions") or "",
        "delegation": requested.get("delegation"),
        "store": bool(requested.get("store", False)),
    }
    if requested.get("input"):
        session["input"] = requested["input"]
    return session


def _decoded_len(b64: bytes) -> int:
    """The audio bytes a padded base64 string carries."""
    return len(b64) // 4 * 3 - (2 if b64.endswith(b"==") else 1 if b64.endswith(b"=") else 0)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key != "format" and isinstance(value, dict) and isinstance(base.get(key), dict):  # a format is whole
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


@dataclass
class UpstreamStats:
    sessions_opened: int = 0
    sessions_open: int = 0
    direct_opened: int = 0
    direct_open: int = 0
    live_started: int = 0  # GPT-Live sessions past session.start (also counted in sessions_opened/open)
    appends: int = 0
    deltas: int = 0
    bad_messages: int = 0


class EchoUpstream:
    """``async with EchoUpstream() as up``: ``up.url`` for relays on Realtime, ``up.live_url`` for
    relays on GPT-Live, ``up.direct_url`` for the floor."""

    def __init__(
        self,
        frames_per_response: int = DEFAULT_FRAMES_PER_RESPONSE,
        *,
        stagger: bool = True,
        seed: int = 3,
        burst: int = 1,
    ) -> None:
        self.frames_per_response = frames_per_response
        # Frames answered together, in one write, once this many have come: a model answers in
        # bursts faster than real time, which is when a relay's pacing is at work (1: at once).
        self.burst = max(1, burst)
        self.stagger = stagger
        self.stats = UpstreamStats()
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self._ids = itertools.count(1)
        self.rng = random.Random(seed)
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await self._server.wait_closed()

    async def __aenter__(self) -> EchoUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"  # relay adds ?model= (the baselines need none)

    @property
    def live_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{LIVE_PATH}"  # no query: GPT-Live takes the model in session.start

    @property
    def direct_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/direct"

    def next_id(self) -> int:
        return next(self._ids)


class _Connection(ServerEndpoint):
    def __init__(self, owner: EchoUpstream) -> None:
        super().__init__()
        self.owner = owner
        self.direct = False
        self.live = False
        self.live_session: dict[str, Any] | None = None  # set by session.start
        self.live_appends = 0
        self.live_bytes = 0  # audio in so far, and out: the echo's output is its input, byte for byte
        self.live_text_from = [0, 0]  # where the next output, input fragment starts (bytes)
        self.session = _default_session()
        self.response_id = b""
        self.item_id = b""
        self.frames_in_response = 0
        fpr = owner.frames_per_response
        self.response_frames = owner.rng.randint(1, fpr) if owner.stagger else fpr  # the first one: staggered
        self.stream_sid = b""
        self.marks = 0
        self._held: list[bytes] = []  # answers waiting for the burst to fill
        self._held_frames = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def on_open(self) -> None:
        self.owner.connections.add(self)
        stats = self.owner.stats
        if self.path.startswith("/direct"):
            self.direct = True
            stats.direct_opened += 1
            stats.direct_open += 1
            return
        stats.sessions_opened += 1
        stats.sessions_open += 1
        if self.path.split("?", 1)[0] == LIVE_PATH:
            self.live = True  # the client speaks first (session.start)
            return
        self.session["id"] = f"sess_{self.owner.next_id():012d}"
        self._emit({"type": "session.created", "session": self.session})

    def on_close(self) -> None:
        self.owner.connections.discard(self)
        stats = self.owner.stats
        if self.direct:
            stats.direct_open -= 1
        else:
            stats.sessions_open -= 1

    def on_message(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            if self.direct:
                self._twilio(message)
            elif self.live:
                self._live(message)
            else:
                self._realtime(message)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.owner.stats.bad_messages += 1

    # -- Realtime side ------------------------------------------------------------------------
    def _event_id(self) -> bytes:
        return b"event_%012d" % self.owner.next_id()

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"type": event.pop("type"), "event_id": self._event_id().decode(), **event}
        self.send(orjson.dumps(event))

    def _realtime(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "input_audio_buffer.append":
            self._echo(message["audio"].encode())
        elif kind == "session.update":
            _merge(self.session, message.get("session") or {})
            self._emit({"type": "session.updated", "session": self.session})
        elif kind == "conversation.item.truncate":
            self._emit(
                {
                    "type": "conversation.item.truncated",
                    "item_id": message.get("item_id"),
                    "content_index": message.get("content_index", 0),
                    "audio_end_ms": message.get("audio_end_ms", 0),
                }
            )
        elif kind == "response.cancel" and self.response_id:
            self._held.clear()  # a cancelled answer's audio never comes
            self._held_frames = 0
            self._finish("cancelled")

    def _echo(self, audio: bytes) -> None:
        stats = self.owner.stats
        stats.appends += 1
        out = []
        if not self.response_id:
            out.append(self._begin())
        out.append(
            frame(
                b'{"type":"response.output_audio.delta","event_id":"'
                + self._event_id()
                + b'","response_id":"'
                + self.response_id
                + b'","item_id":"'
                + self.item_id
                + b'","output_index":0,"content_index":0,"delta":"'
                + audio
                + b'"}',
                OP_TEXT,
                masked=False,
            )
        )
        stats.deltas += 1
        self._answer(b"".join(out))
        self.frames_in_response += 1
        if self.frames_in_response >= self.response_frames:
            self._flush()
            self._finish("completed")
            self.response_frames = self.owner.frames_per_response

    def _answer(self, data: bytes) -> None:
        """One frame's answer: sent now, or with the rest of its burst."""
        if self.owner.burst == 1:
            self.send_raw(data)
            return
        self._held.append(data)
        self._held_frames += 1
        if self._held_frames >= self.owner.burst:
            self._flush()

    def _flush(self) -> None:
        if self._held:
            self.send_raw(b"".join(self._held))
            self._held.clear()
        self._held_frames = 0

    def _item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.item_id.decode(),
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "echo"}],
        }

    def _response(self, status: str) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": self.response_id.decode(),
            "status": status,
            "status_details": None,
            "output": [self._item(status)] if status != "in_progress" else [],
            "output_modalities": ["audio"],
            "usage": None,
            "metadata": None,
        }

    def _begin(self) -> bytes:
        n = self.owner.next_id()
        self.response_id, self.item_id, self.frames_in_response = b"resp_%012d" % n, b"item_%012d" % n, 0
        ids = {"response_id": self.response_id.decode(), "output_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self._response("in_progress")},
            {"type": "response.output_item.added", **ids, "item": self._item("in_progress")},
            {
                "type": "response.content_part.added",
                **ids,
                "item_id": self.item_id.decode(),
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            },
        ]
        return b"".join(
            frame(
                orjson.dumps({"type": e.pop("type"), "event_id": self._event_id().decode(), **e}), OP_TEXT, masked=False
            )
            for e in events
        )

    def _finish(self, status: str) -> None:
        ids = {
            "response_id": self.response_id.decode(),
            "item_id": self.item_id.decode(),
            "output_index": 0,
            "content_index": 0,
        }
        for event in (
            {"type": "response.output_audio.done", **ids},
            {"type": "response.output_audio_transcript.done", **ids, "transcript": "echo"},
            {"type": "response.content_part.done", **ids, "part": {"type": "audio", "transcript": "echo"}},
            {
                "type": "response.output_item.done",
                "response_id": ids["response_id"],
                "output_index": 0,
                "item": self._item("completed" if status == "completed" else "incomplete"),
            },
            {"type": "response.done", "response": self._response(status)},
        ):
            self._emit(event)
        self.response_id = self.item_id = b""

    # -- GPT-Live side ------------------------------------------------------------------------
    def _live(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        stats = self.owner.stats
        if kind == "session.input_audio.append":
            if self.live_session is None:
                stats.bad_messages += 1  # audio before session.start
                return
            self._live_echo(message["audio"].encode())
        elif kind == "session.start":
            if self.live_session is not None:
                stats.bad_messages += 1  # exactly once per session
                return
            self.live_session = _live_session(message["session"], f"sess_{self.owner.next_id():012d}")
            stats.live_started += 1
            started: dict[str, Any] = {"type": "session.started", "session": self.live_session}
            if isinstance(message.get("event_id"), str):
                started["client_event_id"] = message["event_id"]
            self._emit(started)
        elif kind == "session.close" and self.live_session is not None:
            self._flush()
            self._emit(
                {
                    "type": "session.closed",
                    "reason": "close_requested",
                    "session": self.live_session,
                    "usage": {"seconds": self.live_bytes / 8000},
                }
            )
            self.close(1000)

    def _live_echo(self, audio: bytes) -> None:
        stats = self.owner.stats
        stats.appends += 1
        self.live_appends += 1
        self.live_bytes += _decoded_len(audio)
        out = frame(
            b'{"type":"session.output_audio.delta","event_id":"' + self._event_id() + b'","delta":"' + audio + b'"}',
            OP_TEXT,
            masked=False,
        )
        stats.deltas += 1
        n = self.live_appends
        if n % LIVE_OUTPUT_TEXT_FRAMES == 0:
            out += self._live_text("session.output_transcript.delta", 0, " echo")
        if n % LIVE_INPUT_TEXT_FRAMES == 0:
            out += self._live_text("session.input_transcript.delta", 1, " hello")
        if n % LIVE_USAGE_FRAMES == 0:
            out += self._live_frame({"type": "session.usage.updated", "usage": {"seconds": self.live_bytes / 8000}})
        self._answer(out)  # what the frame brought goes with its audio, in order, in its burst

    def _live_text(self, kind: str, timeline: int, text: str) -> bytes:
        """A transcript fragment spanning the audio since the last one of its speaker (ms = bytes / 8)."""
        start, self.live_text_from[timeline] = self.live_text_from[timeline], self.live_bytes
        return self._live_frame({"type": kind, "delta": text, "start_ms": start // 8, "end_ms": self.live_bytes // 8})

    def _live_frame(self, event: dict[str, Any]) -> bytes:
        event = {"type": event.pop("type"), "event_id": self._event_id().decode(), **event}
        return frame(orjson.dumps(event), OP_TEXT, masked=False)

    # -- Twilio side (the direct path) ---------------------------------------------------------
    def _twilio(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event == "media":
            self.owner.stats.appends += 1
            self.marks += 1
            payload = message["media"]["payload"].encode()
            self._answer(
                frame(
                    b'{"event":"media","streamSid":"' + self.stream_sid + b'","media":{"payload":"' + payload + b'"}}',
                    OP_TEXT,
                    masked=False,
                )
                + frame(
                    b'{"event":"mark","streamSid":"' + self.stream_sid + b'","mark":{"name":"echo:%d"}}' % self.marks,
                    OP_TEXT,
                    masked=False,
                )
            )
            self.owner.stats.deltas += 1
        elif event == "start":
            self.stream_sid = message["start"]["streamSid"].encode()
        elif event == "stop":
            self.close(1000)
