"""The phones a simulated Twilio account calls and texts, and what each does on the line.

``relay.sim.twilio_rest`` places outbound calls (BACKENDS §6) to these:

* ``Person`` answers after ``answer_after_s`` and talks on the call's Media Stream as a
  ``TwilioCaller`` speaking its own ``CallerScript`` (by default: "Hello?", then it listens to
  the answer and waits for the relay to end the stream). Answering-machine detection calls it
  ``human``. A text to it is answered with ``sms_reply``, if it has one. In a
  ``<Dial><Conference>`` it says ``join_line`` as it joins and stays ``script.conference_stay_s``.
* ``Voicemail`` answers after ``answer_after_s``, plays its greeting, a beep (a 1 kHz tone), and
  records what it hears for up to ``record_ms``; then it hangs up. ``MachineLine`` is its side of
  the call.
* ``NoAnswer`` rings for ``ring_s`` (or the call's ``Timeout``, if shorter): ``no-answer``.
* ``Busy`` gives a busy signal after ``after_s`` of ringing: ``busy`` (SIP 486).

Times are real but short (a second of ringing), so that a test hears a whole call in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson
import websockets
from twilio.request_validator import RequestValidator

from relay.audio_format import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from relay.sim import audio, stream_messages
from relay.sim.caller import CallerScript, outbound_violations
from relay.sim.playback import TwilioPlayback

__all__ = [
    "PERSON_SCRIPT",
    "Busy",
    "MachineLine",
    "MediaSide",
    "NoAnswer",
    "Person",
    "Phone",
    "Voicemail",
    "beep",
]

# Someone who picks up a call they did not expect: "Hello?" at once (the agent must not wait
# for a greeting of its own), then they listen to the answer and stay on the line, silent, until
# the relay ends the stream (or for 8 s more, then they hang up).
PERSON_SCRIPT = CallerScript(
    utterances=("Hello?",), lead_in_ms=300, answer_quiet_ms=800, answer_timeout_ms=8000, wait_for_hangup=True
)

DEFAULT_GREETING = "Hi, you have reached Sam. Please leave a message after the tone."


@dataclass(frozen=True)
class Person:
    """A person who answers, talks on the Media Stream (``script``), and may answer a text."""

    script: CallerScript = PERSON_SCRIPT
    answer_after_s: float = 1.0  # rings this long before they pick up
    amd_ms: int = 1500  # answering-machine detection says ``human`` this long after the answer
    sms_reply: str | None = None  # a text to this number is answered with this, if set
    sms_reply_after_s: float = 1.0  # after the text was delivered
    join_line: str = ""  # said as they join a <Dial><Conference> ("" says nothing)


@dataclass(frozen=True)
class Voicemail:
    """An answering machine: greeting, beep, then it records what it hears."""

    greeting: str = DEFAULT_GREETING
    beep_ms: int = 500
    record_ms: int = 8000  # the longest message it takes; then it hangs up
    answer_after_s: float = 1.0
    amd_ms: int = 1500  # ``MachineDetection=Enable`` says ``machine_start`` this long after the answer


@dataclass(frozen=True)
class NoAnswer:
    """Rings until the caller gives up."""

    ring_s: float = 1.0


@dataclass(frozen=True)
class Busy:
    """A busy line (SIP 486) after a moment of ringing."""

    after_s: float = 0.3


Phone = Person | Voicemail | NoAnswer | Busy


class MediaSide(Protocol):
    """The phone's end of a ``<Connect><Stream>``, as the simulated call runs it."""

    async def stream(self, stream_url: str, parameters: dict[str, str]) -> bool:
        """Run one stream to its end; True if the phone hung up on it. Cancelling it is Twilio
        ending the stream: ``stop``, then a clean close."""
        ...


def beep(ms: int) -> bytes:
    """A 1 kHz tone, μ-law, with 5 ms ramps: the answering machine's beep.

    A pure tone repeats every 8 samples, so its low bits never form the word marks of
    ``audio.speak`` and ``audio.transcribe`` reads no words in it.
    """
    n = ms * SAMPLE_RATE // 1000
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.ones(n)
    ramp = min(n // 2, 5 * SAMPLE_RATE // 1000)
    if ramp:
        envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
        envelope[n - ramp :] = np.linspace(1.0, 0.0, ramp)
    pcm = (0.3 * 32767 * envelope * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
    return audio.ulaw_encode(pcm)


class MachineLine:
    """A voicemail machine's side of one answered call.

    The machine's timeline starts at the answer: greeting, then beep, then recording until
    ``hangup_at``. A Media Stream opened at any point carries that timeline from where it is
    (the greeting does not wait for the stream), and Twilio plays what the relay sends at 8 kHz
    (``TwilioPlayback``, marks echoed as they play). What plays after the beep is recorded;
    so is a ``<Say>`` Twilio speaks after the beep (``hear``).
    """

    def __init__(
        self, machine: Voicemail, *, call_sid: str, account_sid: str, auth_token: str, answered_at: float
    ) -> None:
        self.machine = machine
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.answered_at = answered_at
        self.intro = audio.speak(machine.greeting) + beep(machine.beep_ms)
        self.greeting_end_at = answered_at + (len(self.intro) - machine.beep_ms * SAMPLE_RATE // 1000) / SAMPLE_RATE
        self.beep_end_at = answered_at + len(self.intro) / SAMPLE_RATE
        self.hangup_at = self.beep_end_at + machine.record_ms / 1000
        self.recording = bytearray()  # what it heard after the beep, 8 kHz μ-law
        self.playback = TwilioPlayback()
        self.stream_sid = ""
        self.streams = 0
        self.closed_by_relay = False
        self.error: str | None = None
        self.violations: list[str] = []
        self.marks_echoed = 0
        self._seq = itertools.count(1)

    @property
    def intro_ms(self) -> int:
        """Greeting and beep, in milliseconds: when ``DetectMessageEnd`` hears the beep end."""
        return len(self.intro) * 1000 // SAMPLE_RATE

    def hear(self, ulaw: bytes, now: float) -> None:
        """Audio Twilio plays on the line itself (``<Say>``): recorded once the beep is over."""
        if self.beep_end_at <= now < self.hangup_at:
            self.recording += ulaw

    async def stream(self, stream_url: str, parameters: dict[str, str]) -> bool:
        """One Media Stream on the machine's line, until the relay closes it (False) or Twilio
        ends it (cancelled: ``stop``, then close). The machine's own hang-up is the call's."""
        loop = asyncio.get_running_loop()
        self.streams += 1
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self._seq = itertools.count(1)
        self.playback = TwilioPlayback()  # a new stream plays nothing the last one had queued
        signature = RequestValidator(self.auth_token).compute_signature(stream_url, {})
        try:
            ids = (self.stream_sid, self.call_sid, self.account_sid)
            async with websockets.connect(
                stream_url, compression=None, max_size=2**20, additional_headers={"X-Twilio-Signature": signature}
            ) as ws:
                receiver = asyncio.create_task(self._receive(ws))
                try:
                    await ws.send(stream_messages.CONNECTED)
                    await ws.send(stream_messages.start(next(self._seq), *ids, parameters))
                    await self._talk(ws, loop)
                except websockets.ConnectionClosed:
                    self.closed_by_relay = True
                    return False
                except asyncio.CancelledError:
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await ws.send(stream_messages.stop(next(self._seq), *ids))
                        await ws.close()
                    raise
                finally:
                    receiver.cancel()
                    await asyncio.gather(receiver, return_exceptions=True)
        except (OSError, websockets.WebSocketException, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    async def _talk(self, ws: websockets.ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        """Send the machine's timeline a 20 ms frame at a time, play what the relay sent on the
        same tick, and record it once the beep is over. Runs until the stream ends."""
        began = loop.time()
        # where the timeline is now, on a frame boundary; the frames that follow are contiguous
        offset = max(0, int((began - self.answered_at) * SAMPLE_RATE)) // FRAME_BYTES * FRAME_BYTES
        for tick in itertools.count():
            frame = self.intro[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, bytes([audio.ULAW_SILENCE]))
            await ws.send(stream_messages.media(next(self._seq), self.stream_sid, tick + 1, frame))
            heard_from = len(self.playback.heard)
            marks = self.playback.play(FRAME_BYTES)
            if offset >= len(self.intro):  # recording: the beep is over
                self.recording += self.playback.heard[heard_from:]
            for name in marks:
                await self._echo(ws, name)
            offset += FRAME_BYTES
            delay = began + (tick + 1) * FRAME_MS / 1000 - loop.time()
            await asyncio.sleep(max(0.0, delay))

    async def _receive(self, ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                problems = outbound_violations(message, self.stream_sid)
                if problems:
                    self.violations.extend(problems)
                    continue
                obj = orjson.loads(message)
                if obj["event"] == "media":
                    self.playback.media(obj["media"]["payload"])
                elif obj["event"] == "mark":
                    for name in self.playback.mark(obj["mark"]["name"]):
                        await self._echo(ws, name)
                else:  # clear
                    for name in self.playback.clear():
                        await self._echo(ws, name)

    async def _echo(self, ws: websockets.ClientConnection, name: str) -> None:
        self.marks_echoed += 1
        await ws.send(stream_messages.mark(next(self._seq), self.stream_sid, name))
