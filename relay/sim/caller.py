"""A simulated Twilio phone call: webhook, TwiML, Media Stream, playback, marks, clears.

It does what Twilio does for an inbound call to a number whose voice URL is relay's webhook
(PROTOCOLS §1): POSTs the form, reads the TwiML's ``<Connect><Stream>``, opens the WebSocket,
sends ``connected`` and ``start``, then one ``media`` message every 20 ms on a real clock for
the whole call, speech or silence. What comes back is checked the way Twilio checks it
(``outbound_violations``), queued, played at 8 kHz (160 bytes per tick) into a recording of
what the caller heard, and each ``mark`` is echoed when playback reaches it; ``clear`` drops
the queue and echoes pending marks at once.

The caller speaks a script (``speak()`` audio, or a WAV file), waits for the answer to finish
playing, and measures voice-to-voice at the Twilio edge: the end of its own speech to the
first ``media`` message it receives afterwards.

When the server ends the stream (or refuses its handshake) while the caller is still on the
line, ``<Connect>`` is over and Twilio runs the TwiML after it, as here: a ``<Redirect>`` is
fetched with a signed POST, a ``<Say>`` is heard (synthesised into the recording), ``<Pause>``
is silence, ``<Hangup>`` ends the call (PROTOCOLS §1.1), and a ``<Connect><Stream>`` opens a
new stream on the same call (a new stream sid, numbering from 1 again): the script goes on
there, a line whose answer never came said again. That is how a call moves between relays.
A ``<Dial>`` rings the people and joins the conference rooms of the caller's ``Switchboard``
(``relay.sim.switchboard``), in real time: the caller hears who picks up (``talked_to``), and
Twilio posts how it went to the verb's ``action`` URL, signed, and runs the TwiML it answers.

The same caller is the person who picks up an outbound call in the REST simulator
(``relay.sim.twilio_rest``), which runs the call's TwiML itself and hands each
``<Connect><Stream>`` to ``stream()``; when that call is hung up or given new TwiML through the
REST API, Twilio ends the stream with ``stop`` and a close (BACKENDS §6.6), which is what
cancelling ``stream()`` does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import itertools
import secrets
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import websockets
from twilio.request_validator import RequestValidator

from relay.audio_format import FRAME_BYTES, FRAME_MS
from relay.sim import audio, stream_messages
from relay.sim.playback import TwilioPlayback
from relay.sim.switchboard import Dial, DialOutcome, Leg, Switchboard, parse_dial

ALLOWED_KEYS = {
    "media": ({"event", "streamSid", "media"}, "media", {"payload"}),
    "mark": ({"event", "streamSid", "mark"}, "mark", {"name"}),
    "clear": ({"event", "streamSid"}, None, set()),
}


def outbound_violations(message: str | bytes, stream_sid: str | None) -> list[str]:
    """What Twilio would reject in one message a server sends on a bidirectional stream.

    Twilio accepts only ``media``, ``mark`` and ``clear`` and warns (31951) on invalid JSON,
    unknown events, missing fields, **unexpected fields**, or a ``streamSid`` that does not
    match; audio with a file header plays as noise (PROTOCOLS §1.4, §0.3).
    """
    if isinstance(message, bytes):
        return ["binary frame: Twilio accepts JSON text messages only"]
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return ["message is not valid JSON"]
    if not isinstance(obj, dict):
        return ["message is not a JSON object"]
    event = obj.get("event")
    if event not in ALLOWED_KEYS:
        return [f"unknown event {event!r}"]
    problems = []
    top, inner_name, inner_keys = ALLOWED_KEYS[event]
    if set(obj) != top:
        extra, missing = set(obj) - top, top - set(obj)
        if extra:
            problems.append(f"{event}: unexpected field(s) {sorted(extra)}")
        if missing:
            problems.append(f"{event}: missing required field(s) {sorted(missing)}")
    if stream_sid is None:
        problems.append(f"{event} before the stream started")
    elif "streamSid" in obj and obj["streamSid"] != stream_sid:
        problems.append(f"{event}: streamSid {obj['streamSid']!r} does not match {stream_sid!r}")
    if inner_name is not None:
        inner = obj.get(inner_name)
        if not isinstance(inner, dict):
            problems.append(f"{event}: {inner_name!r} must be an object")
        else:
            if set(inner) != inner_keys:
                problems.append(f"{event}.{inner_name}: fields {sorted(inner)}, expected {sorted(inner_keys)}")
            if event == "mark" and not (isinstance(inner.get("name"), str) and inner["name"]):
                problems.append("mark: mark.name must be a non-empty string")
            if event == "media":
                payload = inner.get("payload")
                try:
                    raw = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
                except (binascii.Error, ValueError):
                    raw = None
                if raw is None:
                    problems.append("media: payload is not base64")
                elif raw[:4] in (b"RIFF", b"ID3\x03", b"fLaC", b"OggS"):
                    problems.append("media: payload carries a file header; Twilio wants raw mulaw/8000")
    return problems


@dataclass
class TurnResult:
    """One exchange as the caller lived it."""

    said: str
    heard: str = ""
    speech_end_at: float = 0.0
    voice_to_voice_ms: float | None = None
    answered: bool = False


@dataclass
class CallResult:
    """Everything the caller saw, for the demo's table and the tests' assertions."""

    call_sid: str
    stream_sid: str = ""
    turns: list[TurnResult] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    violations: list[str] = field(default_factory=list)
    playback: TwilioPlayback = field(default_factory=TwilioPlayback)  # what played, marks, clears, stalls
    close_code: int | None = None
    error: str | None = None
    closed_by_relay: bool = False  # the relay ended the stream (the agent hung up, or a failure)
    said_by_twilio: list[str] = field(default_factory=list)  # <Say> text run after the stream
    # (URL, HTTP status) of the TwiML fetched after it: <Redirect>s and <Dial action>s
    redirects: list[tuple[str, int]] = field(default_factory=list)
    dialed: list[str] = field(default_factory=list)  # numbers and SIP URIs a <Dial> rang, answered or not
    # (number or SIP URI, or "conference:<name>"; the words heard there): each <Dial> that connected
    talked_to: list[tuple[str, str]] = field(default_factory=list)
    twilio_hung_up: bool = False  # the TwiML after the stream ended with <Hangup/>
    streams: int = 1  # media streams the call had (more than one: handed over between relays)
    handover_gaps_ms: list[float] = field(default_factory=list)  # from a stream's close to the next's start
    # (loop time, bytes of received audio played by then) at every playback tick: where the
    # caller's ear was at any moment (so a test can tell how much old audio it heard after one)
    played_at: list[tuple[float, int]] = field(default_factory=list)

    @property
    def heard(self) -> bytearray:
        """Everything the caller's ear got, silence included, 8 kHz μ-law."""
        return self.playback.heard

    def note_dial(self, outcome: DialOutcome) -> None:
        """Keep what one ``<Dial>`` of the call did: what it rang, and who it talked with."""
        self.dialed.extend(outcome.dialed)
        if outcome.reached is not None:
            self.talked_to.append((outcome.reached, outcome.heard))


@dataclass(frozen=True)
class CallerScript:
    """What the caller says and how patiently it listens."""

    utterances: tuple[str, ...] = (
        "Hi, I would like to book a table for two.",
        "Tomorrow at seven in the evening, please.",
    )
    wav: str | None = None  # speak this file's audio (8 kHz mono 16-bit) instead, as one turn
    lead_in_ms: int = 600  # silence after the stream starts, before the first word
    answer_quiet_ms: int = 800  # the answer is over after this long with nothing left to play
    answer_timeout_ms: int = 15000
    hangup: str = "stop"  # "stop" (Twilio's normal hang-up) or "drop" (socket closed, no stop)
    barge_in_ms: int | None = None  # speak the next line this long into an answer, interrupting it
    dtmf: str = ""  # keys pressed after the last line's answer (each 200 ms apart), then listen again
    expect_greeting: bool = False  # the agent speaks first: listen before the first line
    run_for_ms: int | None = None  # hang up after the first answer that ends past this much call time
    wait_for_hangup: bool = False  # after the script, stay on the line until the relay ends the stream
    stall_after_ms: int | None = None  # a stalled network: stop reading what the relay sends, this far in
    conference_stay_s: float = 3.0  # a <Dial><Conference> leaves the room after this long, if it has not ended


class TwilioCaller:
    """One simulated call against a relay's webhook URL (``http://host:port/twilio/voice``)."""

    def __init__(
        self,
        webhook_url: str,
        script: CallerScript = CallerScript(),
        *,
        auth_token: str = "sim-auth-token",
        from_number: str = "+15005550006",
        to_number: str = "+15005550001",
        account_sid: str | None = None,
        call_sid: str | None = None,
        direction: str = "inbound",
        call_status: str | None = None,
        switchboard: Switchboard | None = None,
        join_line: str = "",
    ) -> None:
        """A call from ``from_number`` to ``to_number``, speaking ``script``.

        Args:
            webhook_url: the voice URL ``run()`` POSTs first (``stream()`` does not use it).
            call_sid: the call's sid (a new one if not given).
            direction: ``Direction`` on Twilio's requests: ``inbound``, or ``outbound-api`` for a
                call placed through the REST API.
            call_status: ``CallStatus`` on the first request: ``ringing`` for an inbound call by
                default, ``in-progress`` for an outbound one (Twilio asks for its TwiML once
                answered).
            switchboard: who a ``<Dial>`` after the stream can reach (an empty one if not given).
            join_line: what the caller says as it joins a ``<Dial><Conference>`` ("" says nothing).
        """
        self.webhook_url = webhook_url
        self.script = script
        self.auth_token = auth_token
        self.from_number = from_number
        self.to_number = to_number
        self.direction = direction
        self.call_status = call_status or ("ringing" if direction == "inbound" else "in-progress")
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.switchboard = switchboard if switchboard is not None else Switchboard()
        self.join_line = join_line
        self.result = CallResult(self.call_sid)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._playback = self.result.playback
        self._last_media_at = 0.0
        self._first_media_after: float | None = None
        self._listening_since: float | None = None
        self._ws: websockets.ClientConnection | None = None
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)
        self._next_line = 0  # the script's line to say next, across the call's streams
        self._keys_pressed = False
        self._handed_over_at: float | None = None  # loop time the last stream closed, until the next starts
        self._streamed = False  # stream() has opened a stream of this call before

    # ------------------------------------------------------------------ the call

    async def run(self) -> CallResult:
        self._loop = asyncio.get_running_loop()
        stream: tuple[str, dict[str, str], list[ET.Element]] | None
        try:
            stream = await self._webhook()
        except (OSError, ValueError) as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
            return self.result
        while stream is not None:
            stream_url, parameters, after = stream
            hung_up = await self._one_stream(stream_url, parameters)  # the caller ended the call: nothing more
            if hung_up or not after:
                break
            closed_at = self._loop.time()
            try:
                stream = await self._run_twiml(after)
            except (OSError, ValueError) as exc:  # Twilio would say "an application error has occurred"
                self.result.error = self.result.error or f"after the stream: {type(exc).__name__}: {exc}"
                break
            if stream is not None:  # the TwiML connected a new stream: the call goes on there
                self._new_stream()
                self._handed_over_at = closed_at
        return self.result

    async def stream(self, stream_url: str, parameters: dict[str, str]) -> bool:
        """One ``<Connect><Stream>`` of a call whose TwiML someone else runs, to its end.

        The script goes on from where this call's last stream left it. Cancelling it is Twilio
        ending the stream (the call was hung up or given new TwiML): ``stop``, then a clean close.

        Returns:
            True if the caller hung up on it (the script is over); False if the relay ended the
            stream or it failed (``result.error``).
        """
        self._loop = asyncio.get_running_loop()
        if self._streamed:
            self._new_stream()
        self._streamed = True
        return await self._one_stream(stream_url, parameters)

    def _new_stream(self) -> None:
        """A new ``<Connect><Stream>`` on the same call: a new stream sid, its own numbering, and
        nothing left of the last stream's audio (Twilio drops what it had not played)."""
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self._seq, self._chunk = itertools.count(1), itertools.count(1)
        self._playback.clear()
        self.result.streams += 1
        self.result.closed_by_relay = False
        self.result.error = None

    async def _one_stream(self, stream_url: str, parameters: dict[str, str]) -> bool:
        """One media stream of the call, to its end; True if the caller hung up on it."""
        try:
            # Twilio signs the stream URL itself, with no params, as it signs webhooks.
            signature = RequestValidator(self.auth_token).compute_signature(stream_url, {})
            async with websockets.connect(
                stream_url,
                compression=None,
                max_size=2**20,
                additional_headers={"X-Twilio-Signature": signature},
                sock=await self._socket(stream_url),
            ) as ws:
                self._ws = ws
                receiver = asyncio.create_task(self._receive(ws))
                if self.script.stall_after_ms is not None:
                    assert self._loop is not None
                    self._loop.call_later(self.script.stall_after_ms / 1000, ws.transport.pause_reading)
                try:
                    await ws.send(stream_messages.CONNECTED)
                    await ws.send(self._start_message(parameters))
                    if self._handed_over_at is not None:
                        assert self._loop is not None
                        self.result.handover_gaps_ms.append(round((self._loop.time() - self._handed_over_at) * 1000, 1))
                        self._handed_over_at = None
                    try:
                        await self._talk()
                    except websockets.ConnectionClosed as closed:
                        # The relay ended the stream: <Connect> is over, and Twilio goes on with the
                        # TwiML after it. Only an agent's hang-up the script waits for, or a
                        # hand-over to another relay, is no error.
                        self.result.closed_by_relay = True
                        if not (isinstance(closed, websockets.ConnectionClosedOK) and self.script.wait_for_hangup):
                            raise
                    if not self.result.closed_by_relay:
                        await self._hang_up(ws)
                        return True
                except asyncio.CancelledError:
                    # Twilio ends the stream itself (the call was hung up or redirected through
                    # the REST API): stop, then a clean close (BACKENDS §6.6).
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await ws.send(self._stop_message())
                        await ws.close()
                    raise
                finally:
                    receiver.cancel()
                    await asyncio.gather(receiver, return_exceptions=True)
                self.result.close_code = ws.close_code
        except (OSError, websockets.WebSocketException, ValueError) as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
            if self._ws is not None:
                self.result.close_code = self._ws.close_code
        return False

    async def _socket(self, stream_url: str) -> socket.socket | None:
        """The stream's socket: the default, or for a stalled network one with a small receive
        window, so that what the relay sends backs up on its side soon after reading stops."""
        if self.script.stall_after_ms is None:
            return None
        parts = urlsplit(stream_url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window it offers
        sock.setblocking(False)
        assert self._loop is not None
        await self._loop.sock_connect(sock, (parts.hostname or "127.0.0.1", parts.port or 80))
        return sock

    async def _run_twiml(
        self, verbs: list[ET.Element], depth: int = 0
    ) -> tuple[str, dict[str, str], list[ET.Element]] | None:
        """Run TwiML verbs as Twilio does once the stream is over; a ``<Connect><Stream>`` among
        them opens a new stream on the call (returned: its URL, parameters and what follows it)."""
        for index, verb in enumerate(verbs):
            if verb.tag == "Say":
                text = (verb.text or "").strip()
                self.result.said_by_twilio.append(text)
                self._playback.say(_speech(text))
            elif verb.tag == "Pause":
                self._playback.say(audio.silence(int(verb.get("length", "1")) * 1000))
            elif verb.tag == "Hangup":
                self.result.twilio_hung_up = True
                return None
            elif verb.tag == "Dial":
                dial = parse_dial(verb)
                self.result.violations += [f"<Dial> noun {noun} is not simulated" for noun in dial.skipped]
                if not dial.targets:
                    continue
                leg = Leg(self.call_sid, self._playback.say, self.join_line, self.script.conference_stay_s)
                outcome = await self.switchboard.dial(dial, leg)
                self.result.note_dial(outcome)
                if dial.action is not None:  # the call goes on with the action's TwiML, not the verbs after
                    return await self._dial_action(dial, outcome, depth)
            elif verb.tag == "Connect":
                document = ET.Element("Response")
                document.extend(verbs)
                twiml = ET.tostring(document, encoding="unicode")
                return (*parse_connect_stream(twiml), verbs[index + 1 :])
            elif verb.tag == "Redirect":
                if depth >= 10:
                    raise ValueError("more than 10 redirects in a row")
                url, method = (verb.text or "").strip(), verb.get("method", "POST").upper()
                if method != "POST":
                    raise ValueError(f"<Redirect method={method!r}>: this simulator follows POST only")
                form = self._call_form("in-progress")
                signature = RequestValidator(self.auth_token).compute_signature(url, form)
                status, body = await http_post(url, urlencode(form).encode(), {"X-Twilio-Signature": signature})
                self.result.redirects.append((url, status))
                if status != 200:
                    raise ValueError(f"<Redirect> to {url} answered HTTP {status}")
                return await self._run_twiml(list(ET.fromstring(body.decode())), depth + 1)
            else:
                self.result.violations.append(f"TwiML verb <{verb.tag}> after the stream is not simulated")
        return None

    async def _dial_action(
        self, dial: Dial, outcome: DialOutcome, depth: int
    ) -> tuple[str, dict[str, str], list[ET.Element]] | None:
        """Tell the ``<Dial>``'s ``action`` URL how the dial went, signed as every Twilio request
        is, and run the TwiML it answers."""
        assert dial.action is not None
        url = urljoin(self.webhook_url, dial.action)
        form = {**self._call_form("in-progress"), **outcome.action_params()}
        validator = RequestValidator(self.auth_token)
        if dial.method == "GET":  # the parameters ride in the URL, and the signature covers them there
            full = url + ("&" if "?" in url else "?") + urlencode(form)
            status, body = await http_get(full, {"X-Twilio-Signature": validator.compute_signature(full, {})})
        else:
            signature = validator.compute_signature(url, form)
            status, body = await http_post(url, urlencode(form).encode(), {"X-Twilio-Signature": signature})
        self.result.redirects.append((url, status))
        if status != 200:
            raise ValueError(f"<Dial action> {url} answered HTTP {status}")
        try:
            root = ET.fromstring(body.decode())
        except ET.ParseError as exc:
            raise ValueError(f"<Dial action> {url} answered no TwiML: {exc}") from exc
        return await self._run_twiml(list(root), depth + 1)

    async def _hang_up(self, ws: websockets.ClientConnection) -> None:
        """End the call as the script says: Twilio's ``stop`` and a clean close, or a dropped line."""
        if self.script.hangup != "stop":
            ws.transport.abort()  # the line drops: no stop, no closing handshake
            return
        await ws.send(self._stop_message())
        await ws.close()

    def _stop_message(self) -> str:
        return stream_messages.stop(next(self._seq), self.stream_sid, self.call_sid, self.account_sid)

    def _call_form(self, status: str) -> dict[str, str]:
        """The parameters of every voice request Twilio makes for this call."""
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": status,
            "Called": self.to_number,
            "Caller": self.from_number,
            "Direction": self.direction,
            "From": self.from_number,
            "To": self.to_number,
        }

    async def _webhook(self) -> tuple[str, dict[str, str], list[ET.Element]]:
        """POST the voice webhook exactly as Twilio does; read the stream, and what follows it,
        from the TwiML."""
        form = self._call_form(self.call_status)
        signature = RequestValidator(self.auth_token).compute_signature(self.webhook_url, form)
        status, body = await http_post(self.webhook_url, urlencode(form).encode(), {"X-Twilio-Signature": signature})
        if status != 200:
            raise ValueError(f"webhook answered HTTP {status}")
        twiml = body.decode()
        return (*parse_connect_stream(twiml), after_connect(twiml))

    def _start_message(self, parameters: dict[str, str]) -> str:
        return stream_messages.start(next(self._seq), self.stream_sid, self.call_sid, self.account_sid, parameters)

    async def _talk(self) -> None:
        """Speak each line, then keep the line open (silence) until the answer has played.

        On a call handed to a new stream, the script goes on where it was: a line whose answer
        never came on the old stream is said again.
        """
        assert self._loop is not None
        script = self.script
        clock = _Clock(self._loop)
        await self._stream(clock, audio.silence(script.lead_in_ms))
        if script.expect_greeting and self.result.streams == 1:  # the agent speaks first: listen to it all
            await self._listen(clock, TurnResult(said=""), may_interrupt=False)
        wav = audio.read_wav(script.wav) if script.wav else None
        lines = [f"[{script.wav}]"] if script.wav else list(script.utterances)
        began = self._loop.time()
        for index in range(self._next_line, len(lines)):
            if script.run_for_ms is not None and (self._loop.time() - began) * 1000 >= script.run_for_ms:
                break
            turn = TurnResult(said=lines[index])
            try:
                await self._stream(clock, wav if wav is not None else _speech(lines[index]))
                await self._listen(clock, turn, may_interrupt=index < len(lines) - 1)
            except websockets.ConnectionClosed:
                if turn.answered:
                    self._next_line = index + 1
                elif turn in self.result.turns:
                    self.result.turns.remove(turn)  # said again on the next stream, if there is one
                raise
            self._next_line = index + 1
        if script.dtmf and not self._keys_pressed:
            self._keys_pressed = True
            turn = TurnResult(said=f"[DTMF {script.dtmf}]")
            for index, digit in enumerate(script.dtmf):
                if index:
                    await self._stream(clock, audio.silence(200))
                await self._send_dtmf(digit)
            await self._listen(clock, turn, may_interrupt=False)
        if script.wait_for_hangup:
            deadline = self._loop.time() + script.answer_timeout_ms / 1000
            while self._loop.time() < deadline:
                await self._stream(clock, audio.silence(FRAME_MS))

    def _begin_listening(self, since: float) -> None:
        """Wait for an answer from ``since`` on: the reader fills ``_first_media_after`` in when
        its audio comes (a method, so that the awaiting loop of ``_listen`` reads the field anew)."""
        self._first_media_after = None
        self._listening_since = since

    async def _listen(self, clock: _Clock, turn: TurnResult, *, may_interrupt: bool) -> None:
        """Stream silence until the answer has played (or, barging in, this far into it)."""
        assert self._loop is not None
        self.result.turns.append(turn)
        turn.speech_end_at = self._loop.time()
        self._begin_listening(turn.speech_end_at)
        heard_from = len(self.result.heard)
        deadline = turn.speech_end_at + self.script.answer_timeout_ms / 1000
        barge_in_ms = self.script.barge_in_ms if may_interrupt else None
        try:
            while self._loop.time() < deadline:
                await self._stream(clock, audio.silence(FRAME_MS))
                if self._first_media_after is None:
                    continue
                if barge_in_ms is not None and (self._loop.time() - self._first_media_after) * 1000 >= barge_in_ms:
                    break
                quiet = self._loop.time() - max(self._last_media_at, self._first_media_after)
                if not _audible_bytes(self._playback.queue) and quiet * 1000 >= self.script.answer_quiet_ms:
                    break
        finally:  # also when the relay ends the stream (the agent hung up) while we listen
            if self._first_media_after is not None:
                turn.answered = True
                turn.voice_to_voice_ms = round((self._first_media_after - turn.speech_end_at) * 1000, 1)
            turn.heard = audio.transcribe(self.result.heard[heard_from:]) if turn.answered else ""
            self._listening_since = None

    async def _send_dtmf(self, digit: str) -> None:
        assert self._ws is not None
        await self._ws.send(stream_messages.dtmf(next(self._seq), self.stream_sid, digit))

    async def _stream(self, clock: _Clock, ulaw: bytes) -> None:
        """Send ``ulaw`` as 20 ms ``media`` messages, one per tick, playing back on the same tick."""
        assert self._ws is not None
        for offset in range(0, len(ulaw), FRAME_BYTES):
            frame = ulaw[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, bytes([audio.ULAW_SILENCE]))
            await clock.tick()
            await self._ws.send(stream_messages.media(next(self._seq), self.stream_sid, next(self._chunk), frame))
            self.result.frames_sent += 1
            await self._play_tick()

    async def _play_tick(self) -> None:
        """Play 20 ms of received audio (or silence) and echo the marks it reaches."""
        marks = self._playback.play(FRAME_BYTES)
        assert self._loop is not None
        self.result.played_at.append((self._loop.time(), self._playback.played))
        for name in marks:
            await self._echo_mark(name)

    async def _echo_mark(self, name: str) -> None:
        assert self._ws is not None
        self.result.marks_echoed += 1
        await self._ws.send(stream_messages.mark(next(self._seq), self.stream_sid, name))

    async def _receive(self, ws: websockets.ClientConnection) -> None:
        assert self._loop is not None
        try:
            async for message in ws:
                problems = outbound_violations(message, self.stream_sid)
                if problems:
                    self.result.violations.extend(problems)
                    continue
                obj = orjson.loads(message)
                event = obj["event"]
                if event == "media":
                    payload = obj["media"]["payload"]
                    self._playback.media(payload)
                    self.result.frames_received += 1
                    # Only audible frames are an answer: a backend that streams at real time
                    # (GPT-Live) sends silence between its answers too.
                    if _audible(payload):
                        self._last_media_at = self._loop.time()
                        if self._listening_since is not None and self._first_media_after is None:
                            self._first_media_after = self._last_media_at
                elif event == "mark":
                    self.result.marks_received += 1
                    for name in self._playback.mark(obj["mark"]["name"]):
                        await self._echo_mark(name)  # nothing buffered: echoed at once
                else:  # clear
                    self.result.clears += 1
                    for name in self._playback.clear():
                        await self._echo_mark(name)
        except websockets.ConnectionClosed:
            pass


_SILENT = bytes([audio.ULAW_SILENCE, 0x7F])  # μ-law +0 and -0


def _audible_bytes(ulaw: bytes | bytearray) -> bool:
    return bool(ulaw.translate(None, _SILENT))


def _audible(payload_b64: str) -> bool:
    """Whether a ``media`` payload holds anything but silence."""
    return _audible_bytes(base64.b64decode(payload_b64))


@functools.lru_cache(maxsize=256)
def _speech(text: str) -> bytes:
    """A line's audio, made when it is about to be said (and once for many callers saying it)."""
    return audio.speak(text)


class _Clock:
    """A drift-free 20 ms tick: each tick is due at start + n × 20 ms, whatever the lateness."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._next = loop.time()

    async def tick(self) -> None:
        delay = self._next - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next += FRAME_MS / 1000


def parse_connect_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """Read ``<Response><Connect><Stream url>`` and its ``<Parameter>``s as Twilio would.

    Raises:
        ValueError: the TwiML does not connect a stream, or its URL would fail at Twilio
            (not wss, or a query string, which Twilio drops: PROTOCOLS §1.1).
    """
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None:
        raise ValueError("TwiML has no <Connect><Stream>")
    url = stream.get("url", "")
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "wss" and not (parts.scheme == "ws" and loopback):
        raise ValueError(f"stream url {url!r} is not wss://")
    if parts.query:
        raise ValueError(f"stream url {url!r} has a query string; Twilio drops it")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return url, parameters


def after_connect(twiml: str) -> list[ET.Element]:
    """The verbs after ``<Connect>``: what Twilio runs once the stream is over."""
    verbs = list(ET.fromstring(twiml))
    at = next((i for i, verb in enumerate(verbs) if verb.tag == "Connect"), len(verbs))
    return verbs[at + 1 :]


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET over a fresh connection; returns status and body."""
    return await _http("GET", url, b"", headers or {})


async def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 POST (form body) over a fresh connection; returns status and body."""
    return await _http("POST", url, body, {"Content-Type": "application/x-www-form-urlencoded", **headers})


async def _http(method: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        lines = [
            f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}",
            "User-Agent: TwilioProxy/1.1",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)
    finally:
        writer.close()
