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

On ``DEEPGRAM_PATH`` it speaks Deepgram's Voice Agent (BACKENDS §4): ``Welcome`` on connect,
``SettingsApplied`` for ``Settings`` (μ-law 8 kHz both ways), and each binary frame of the
caller's μ-law straight back as a binary frame of the same bytes, inside an utterance:
``AgentStartedSpeaking`` before its first frame, ``AgentAudioDone`` after ``frames_per_response``.

On ``GEMINI_PATH`` it speaks Gemini Live (BACKENDS §3): ``setupComplete`` for ``setup``, and each
``realtimeInput`` audio chunk (PCM16 at 16 kHz) back at once as the same 20 ms at 24 kHz, in a
``serverContent.modelTurn``, with a ``turnComplete`` every ``frames_per_response`` chunks. relay
transcodes both ways, so these bytes are not the caller's: the load generator counts what comes
back on such a relay rather than matching tags.

The same server offers the *direct path* on ``/direct``: it speaks Twilio's side of a media
stream and echoes each ``media`` straight back as an outbound ``media`` plus a ``mark``, the
same shape a relay returns. That path has no relay in it; it is the floor every relay is
measured against.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bench.wire import OP_BINARY, OP_TEXT, ServerEndpoint, frame

DEFAULT_FRAMES_PER_RESPONSE = 250  # 5 s of 20 ms chunks
LIVE_PATH = "/v1/live/sessions"
LIVE_OUTPUT_TEXT_FRAMES = 10  # an agent fragment per 200 ms of its audio (fragments land on 200 ms, BACKENDS §2.8)
LIVE_INPUT_TEXT_FRAMES = 50  # a caller fragment a second
LIVE_USAGE_FRAMES = 250  # session.usage.updated every 5 s
PCMU_8000 = {"type": "audio/pcmu", "rate": 8000}
DEEPGRAM_PATH = "/v1/agent/converse"
GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
# What each path speaks; any other path is Realtime (relay adds ?model= to it).
PROTOCOLS = {"/direct": "direct", LIVE_PATH: "live", DEEPGRAM_PATH: "deepgram", GEMINI_PATH: "gemini"}
DEEPGRAM_MULAW = {"encoding": "mulaw", "sample_rate": 8000}
DEEPGRAM_STARTED = frame(
    b'{"type":"AgentStartedSpeaking","total_latency":0.1,"tts_latency":0.05,"ttt_latency":0.05}', OP_TEXT, masked=False
)
DEEPGRAM_DONE = frame(b'{"type":"AgentAudioDone"}', OP_TEXT, masked=False)
GEMINI_INPUT_MIME = "audio/pcm;rate=16000"
GEMINI_AUDIO_HEAD = b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=24000","data":"'
GEMINI_AUDIO_TAIL = b'"}}]}}}'
GEMINI_TURN_COMPLETE = frame(b'{"serverContent":{"turnComplete":true}}', OP_TEXT, masked=False)


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


def spoken_at_24k(heard_16k: bytes) -> bytes:
    """The model's answer to 20 ms it heard: the same audio as PCM16 at 24 kHz, made cheaply.

    relay's 8 -> 16 kHz upsampler keeps each of the caller's samples at the odd positions, so
    those are the 8 kHz audio itself; each held for three samples is 24 kHz. (A hold is not a
    good resampler, but the echo only has to hand relay's decimator 24 kHz of the right length
    and level, at a cost the shared load core can bear.)"""
    heard_8k = np.frombuffer(heard_16k, "<i2")[1::2]
    return np.repeat(heard_8k, 3).tobytes()


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
    deepgram_started: int = 0  # Deepgram sessions past Settings (likewise)
    gemini_started: int = 0  # Gemini Live sessions past setup (likewise)
    appends: int = 0
    deltas: int = 0
    bad_messages: int = 0


class EchoUpstream:
    """``async with EchoUpstream() as up``: ``up.url`` for relays on Realtime, ``up.live_url`` for
    relays on GPT-Live, ``up.deepgram_url`` and ``up.gemini_url`` for relays on those,
    ``up.direct_url`` for the floor."""

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
    def deepgram_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{DEEPGRAM_PATH}"

    @property
    def gemini_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{GEMINI_PATH}"  # the key goes in a header, not ?key=

    @property
    def direct_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/direct"

    def next_id(self) -> int:
        return next(self._ids)


class _Connection(ServerEndpoint):
    def __init__(self, owner: EchoUpstream) -> None:
        super().__init__()
        self.owner = owner
        self.protocol = "realtime"  # what the request path asked for (PROTOCOLS)
        self.configured = False  # Deepgram's Settings or Gemini's setup answered
        self.speaking = False  # a Deepgram utterance is open
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
        self.protocol = PROTOCOLS.get(self.path.split("?", 1)[0], "realtime")
        if self.protocol == "direct":
            stats.direct_opened += 1
            stats.direct_open += 1
            return
        stats.sessions_opened += 1
        stats.sessions_open += 1
        if self.protocol == "realtime":
            self.session["id"] = f"sess_{self.owner.next_id():012d}"
            self._emit({"type": "session.created", "session": self.session})
        elif self.protocol == "deepgram":
            self.send(orjson.dumps({"type": "Welcome", "request_id": f"req_{self.owner.next_id():012d}"}))
        # GPT-Live and Gemini Live: the client speaks first (session.start, setup)

    def on_close(self) -> None:
        self.owner.connections.discard(self)
        stats = self.owner.stats
        if self.protocol == "direct":
            stats.direct_open -= 1
        else:
            stats.sessions_open -= 1

    def on_message(self, data: bytes) -> None:
        try:
            _SPEAKS[self.protocol](self, orjson.loads(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            self.owner.stats.bad_messages += 1

    def on_binary(self, data: bytes) -> None:
        if self.protocol == "deepgram":
            self._deepgram_echo(data)
        else:
            self.owner.stats.bad_messages += 1  # no other protocol here sends binary frames

    def _close_turn_after_this_frame(self) -> bool:
        """Count one echoed frame of the open answer; True when it is the answer's last."""
        self.frames_in_response += 1
        if self.frames_in_response < self.response_frames:
            return False
        self.frames_in_response = 0
        self.response_frames = self.owner.frames_per_response
        return True

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

    # -- Deepgram side ---------------------------------------------------------------------------
    def _deepgram(self, message: dict[str, Any]) -> None:
        stats = self.owner.stats
        if message["type"] != "Settings":
            return  # KeepAlive, InjectAgentMessage (the greeting), ...: nothing an echo answers
        audio = message["audio"]
        if self.configured or audio["input"] != DEEPGRAM_MULAW or audio["output"].get("encoding") != "mulaw":
            stats.bad_messages += 1  # a second Settings, or not Twilio's μ-law passed through
            return
        self.configured = True
        stats.deepgram_started += 1
        self.send(b'{"type":"SettingsApplied"}')

    def _deepgram_echo(self, audio: bytes) -> None:
        stats = self.owner.stats
        if not self.configured:
            stats.bad_messages += 1  # audio before SettingsApplied: the service drops it
            return
        stats.appends += 1
        out = frame(audio, OP_BINARY, masked=False)
        if not self.speaking:
            self.speaking = True
            out = DEEPGRAM_STARTED + out  # relay plays binary audio only inside an utterance
        stats.deltas += 1
        self._answer(out)
        if self._close_turn_after_this_frame():
            self._flush()
            self.send_raw(DEEPGRAM_DONE)
            self.speaking = False

    # -- Gemini Live side ------------------------------------------------------------------------
    def _gemini(self, message: dict[str, Any]) -> None:
        stats = self.owner.stats
        if "realtimeInput" in message:
            audio = message["realtimeInput"].get("audio")
            if audio is None:
                return  # text (the greeting, as a line to say): an echo has nothing to say
            if not self.configured or audio["mimeType"] != GEMINI_INPUT_MIME:
                stats.bad_messages += 1  # audio before setupComplete, or not what relay's upsampler makes
                return
            self._gemini_echo(binascii.a2b_base64(audio["data"]))
        elif "setup" in message:
            if self.configured:
                stats.bad_messages += 1  # exactly once per connection
                return
            self.configured = True
            stats.gemini_started += 1
            self.send(b'{"setupComplete":{}}')
        # clientContent (a seeded history), toolResponse: nothing an echo answers

    def _gemini_echo(self, heard_16k: bytes) -> None:
        stats = self.owner.stats
        stats.appends += 1
        spoken = binascii.b2a_base64(spoken_at_24k(heard_16k), newline=False)
        self._answer(frame(GEMINI_AUDIO_HEAD + spoken + GEMINI_AUDIO_TAIL, OP_TEXT, masked=False))
        stats.deltas += 1
        if self._close_turn_after_this_frame():
            self._flush()
            self.send_raw(GEMINI_TURN_COMPLETE)  # relay opens the next answer at the next audio

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


# Each protocol's handler of a text message, by what the request path asked for.
_SPEAKS = {
    "realtime": _Connection._realtime,
    "live": _Connection._live,
    "deepgram": _Connection._deepgram,
    "gemini": _Connection._gemini,
    "direct": _Connection._twilio,
}
