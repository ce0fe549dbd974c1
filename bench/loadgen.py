"""The load generator: many simulated Twilio calls in one process, on one shared 20 ms clock.

Each call is what Twilio does on a Media Stream: the voice webhook (when the target has one),
then ``connected``, ``start`` and a ``media`` frame every 20 ms, ``mark`` echoes once the
audio before them has played, ``stop`` at the end. Calls are spread over twenty 1 ms slots of
the 20 ms period, as independent phone calls are, so the load is smooth rather than a burst
every 20 ms.

Every frame's 160 bytes begin with a tag (magic, call index, frame number). A relay passes
the bytes through to the speech backend and the echo upstream sends them back, so when a
frame returns the generator knows which call sent it, which frame it was, and when it left:
its round trip, and whether it was lost, misrouted or duplicated.

A relay that transcodes (Gemini Live: PCM16 at 16 and 24 kHz) cannot give the bytes back, so
on such a target (``Target.tagged`` False) the generator only counts the media frames each call
receives: how many came back, not which, nor when.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import os
import time
from array import array
from dataclasses import dataclass, field
from urllib.parse import urlencode

import numpy as np
import orjson
from twilio.request_validator import RequestValidator

from bench.wire import ClientEndpoint, WireError, connect, frame
from relay.audio_format import FRAME_BYTES, FRAME_MS
from relay.sim.caller import http_post, outbound_violations, parse_connect_stream

FRAME_NS = FRAME_MS * 1_000_000
SLOTS = 20  # 1 ms apart
MAGIC = b"\x7e\x81"
TAG_BYTES = 8
FILLER = b"\xff" * (FRAME_BYTES - TAG_BYTES)  # μ-law silence after the tag
MAX_VIOLATIONS = 50
AUTH_TOKEN = "bench-auth-token"  # relays under test get it as TWILIO_AUTH_TOKEN


FIRST_FRAME_WAIT_S = 3.0  # how long a new call waits for its first frame back before it streams


@dataclass(frozen=True)
class Target:
    """Where the calls go: a media-stream URL, reached through a voice webhook if given."""

    name: str
    stream_url: str
    webhook_url: str | None = None
    tagged: bool = True  # False: its audio comes back transcoded, so frames are counted, not matched


def tag(call: int, seq: int) -> bytes:
    return MAGIC + call.to_bytes(3, "big") + seq.to_bytes(3, "big")


def read_tag(payload: bytes) -> tuple[int, int] | None:
    if len(payload) < TAG_BYTES or payload[:2] != MAGIC:
        return None
    return int.from_bytes(payload[2:5], "big"), int.from_bytes(payload[5:8], "big")


@dataclass
class Counters:
    frames_in: int = 0
    misrouted: int = 0
    duplicates: int = 0
    foreign: int = 0  # media without a tag of ours
    marks_echoed: int = 0
    clears: int = 0
    violations: int = 0  # outbound messages Twilio would reject (with check=True)


@dataclass
class Window:
    """What one measurement window saw: frames sent in it and what became of them."""

    calls: int
    seconds: float
    rtt_ns: np.ndarray  # empty for an untagged target
    sent: int
    lost: int | None  # None: not measurable (an untagged target)
    misrouted: int
    duplicates: int
    foreign: int
    load_cpu: float  # share of one core the load side (generator + upstream) used
    tick_lag_p99_ms: float
    violation_count: int = 0
    violations: list[str] = field(default_factory=list)  # examples
    tagged: bool = True
    received: int = 0  # media frames that arrived during the window, counted per call (any target)


class LoadCall(ClientEndpoint):
    """One simulated call: sends on its clock slot, times what comes back."""

    def __init__(self, run: LoadRun, index: int, url: str) -> None:
        # Signed as Twilio signs a stream's handshake: the stream URL, no params.
        super().__init__(url, {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {})})
        self.run = run
        self.index = index
        self.call_sid = f"CA{index:032x}"
        self.stream_sid = f"MZ{index:032x}"
        self._sid = self.stream_sid.encode()
        self._head = MAGIC + index.to_bytes(3, "big")
        self.sent = array("q")  # send time of frame k (perf_counter ns)
        self.back = array("q")  # arrival time of frame k, 0 until it returns
        self.received = 0  # media frames that came back, tagged or not
        self._sequence = 0
        self._play_end = 0  # when what the caller has been sent so far finishes playing
        self._marks: list[tuple[int, bytes]] = []  # (due, name) in play order
        self.stopped = False
        self.first_back: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def begin(self, parameters: dict[str, str]) -> None:
        self.send(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.send(
            orjson.dumps(
                {
                    "event": "start",
                    "sequenceNumber": str(self._next_sequence()),
                    "start": {
                        "accountSid": "AC" + "0" * 32,
                        "streamSid": self.stream_sid,
                        "callSid": self.call_sid,
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        "customParameters": parameters,
                    },
                    "streamSid": self.stream_sid,
                }
            )
        )

    def tick(self, now: int) -> None:
        """Send this call's next frame, with every mark echo that has come due, in one write."""
        if self.stopped or not self.open:
            return
        k = len(self.sent)
        payload = binascii.b2a_base64(self._head + k.to_bytes(3, "big") + FILLER, newline=False)
        out = frame(
            b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
            b'"timestamp":"%d","payload":"%b"},"streamSid":"%b"}'
            % (self._next_sequence(), k + 1, k * FRAME_MS, payload, self._sid),
            masked=True,
        )
        if self._marks and self._marks[0][0] <= now:
            out += self._echo_marks(now)
        self.sent.append(time.perf_counter_ns())
        self.back.append(0)
        self.send_raw(out)

    def _echo_marks(self, until: int | None) -> bytes:
        out, marks = [], self._marks
        while marks and (until is None or marks[0][0] <= until):
            _, name = marks.pop(0)
            out.append(
                frame(
                    b'{"event":"mark","sequenceNumber":"%d","streamSid":"%b","mark":{"name":%b}}'
                    % (self._next_sequence(), self._sid, name),
                    masked=True,
                )
            )
        self.run.counters.marks_echoed += len(out)
        return b"".join(out)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.send(
            b'{"event":"stop","sequenceNumber":"%d","stop":{"accountSid":"%b","callSid":"%b"},"streamSid":"%b"}'
            % (self._next_sequence(), b"AC" + b"0" * 32, self.call_sid.encode(), self._sid)
        )
        self.close(1000)

    def on_message(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        run = self.run
        if run.check:
            found = outbound_violations(data.decode(), self.stream_sid)
            run.counters.violations += len(found)
            if found and len(run.violations) < MAX_VIOLATIONS:  # examples; the counter has them all
                run.violations.extend(f"call {self.index}: {v}" for v in found)
        message = orjson.loads(data)
        event = message.get("event")
        if event == "media":
            payload = binascii.a2b_base64(message["media"]["payload"])
            self._play_end = max(self._play_end, now) + len(payload) * 125_000  # 8 bytes per ms
            self.received += 1
            if not run.target.tagged:
                if not self.first_back.done():
                    self.first_back.set_result(None)
                return
            found = read_tag(payload)
            counters = run.counters
            if found is None:
                counters.foreign += 1
                return
            call, k = found
            if call != self.index:
                counters.misrouted += 1
            elif k >= len(self.back):
                counters.foreign += 1
            elif self.back[k]:
                counters.duplicates += 1
            else:
                self.back[k] = now
                counters.frames_in += 1
                if k == 0 and not self.first_back.done():
                    self.first_back.set_result(None)
        elif event == "mark":
            self._marks.append((self._play_end, orjson.dumps(message["mark"]["name"])))
        elif event == "clear":
            # Twilio drops what it had buffered and echoes every pending mark at once.
            run.counters.clears += 1
            self._play_end = now
            if self._marks:
                self.send_raw(self._echo_marks(None))


class SharedClock:
    """One timer for every call: 20 slots of 1 ms; a call sends when its slot comes round."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots: list[list[LoadCall]] = [[] for _ in range(SLOTS)]
        self._start = self.loop.time()
        self._k = 0
        self._handle: asyncio.TimerHandle | None = None
        self.lags_ms: list[float] = []

    def add(self, call: LoadCall) -> None:
        min(self.slots, key=len).append(call)
        if self._handle is None:
            self._start = self.loop.time()
            self._k = 0
            self._handle = self.loop.call_at(self._start, self._fire)

    def remove(self, call: LoadCall) -> None:
        for slot in self.slots:
            if call in slot:
                slot.remove(call)

    def _fire(self) -> None:
        due = self._start + self._k / 1000
        self.lags_ms.append((self.loop.time() - due) * 1000)
        now = time.perf_counter_ns()
        for call in self.slots[self._k % SLOTS]:
            call.tick(now)
        self._k += 1
        self._handle = self.loop.call_at(self._start + self._k / 1000, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class LoadRun:
    """A growing set of calls against one target, measured in windows."""

    def __init__(self, target: Target, *, check: bool = False) -> None:
        self.target = target
        self.check = check
        self.calls: list[LoadCall] = []
        self.counters = Counters()
        self.violations: list[str] = []
        self.setup_errors: list[str] = []
        self.clock = SharedClock()
        self._indices = 0

    async def add_calls(self, n: int, *, rate: float = 500.0) -> None:
        """Open ``n`` more calls, starting ``rate`` per second; all are streaming on return."""
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(self._open_call(self._indices)))
            self._indices += 1
            await asyncio.sleep(1 / rate)
        failed = [
            f"{type(r).__name__}: {r}"
            for r in await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(r, BaseException)
        ]
        self.setup_errors += failed  # every one, for the report; this step fails on its own only
        if failed:
            raise WireError(f"{len(failed)} call(s) failed to start: {failed[0]}")

    async def _open_call(self, index: int) -> None:
        url, parameters = self.target.stream_url, {}
        if self.target.webhook_url:
            url, parameters = await self._webhook(index)
        call = await connect(lambda: LoadCall(self, index, url), url)  # signed in LoadCall
        assert isinstance(call, LoadCall)
        self.calls.append(call)
        call.begin(parameters)
        # The first frame goes alone, and the call joins the clock once it is back (or after
        # FIRST_FRAME_WAIT_S). A relay that holds the caller's audio until its backend session
        # is ready, so that the model hears the first words, hands the echo a burst at that
        # moment; the echo answers every frame in real time and never pauses, so that burst
        # would stay in the relay's paced playout as a standing backlog for the whole call,
        # counted against every later frame. Setup time is not per-frame cost.
        call.tick(time.perf_counter_ns())
        with contextlib.suppress(TimeoutError):  # a relay that drops early audio: the stream starts anyway
            await asyncio.wait_for(asyncio.shield(call.first_back), FIRST_FRAME_WAIT_S)
        self.clock.add(call)

    async def _webhook(self, index: int) -> tuple[str, dict[str, str]]:
        assert self.target.webhook_url
        form = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": f"CA{index:032x}",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+15550100000",
            "To": "+15550199999",
        }
        signature = RequestValidator(AUTH_TOKEN).compute_signature(self.target.webhook_url, form)
        status, body = await http_post(
            self.target.webhook_url, urlencode(form).encode(), {"X-Twilio-Signature": signature}
        )
        if status != 200:
            raise WireError(f"webhook answered HTTP {status}")
        return parse_connect_stream(body.decode())

    @property
    def live(self) -> list[LoadCall]:
        return [c for c in self.calls if not c.stopped]

    async def set_calls(self, n: int, *, rate: float = 500.0) -> None:
        """Grow to ``n`` streaming calls, or hang up the newest ones down to ``n``."""
        live = self.live
        if n > len(live):
            await self.add_calls(n - len(live), rate=rate)
            return
        for call in live[n:]:
            self.clock.remove(call)
            call.stop()

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the frames sent so far have come back: an overload backlog has cleared.

        Frames of a call return in order, so it is enough that each call's latest frame is back;
        on an untagged target, that each call has had as many frames as it sent, save the one
        a transcoder may still hold in part.
        """
        marks = [(c, len(c.sent) - 1) for c in self.live if c.sent]
        tagged = self.target.tagged
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all((c.back[k] if tagged else c.received >= k) or c.stopped for c, k in marks):
                return True
            await asyncio.sleep(0.05)
        return False

    async def window(self, seconds: float, *, on_start=None, on_end=None, grace: float = 2.0) -> Window:
        """Measure the frames sent during the next ``seconds``; wait up to ``grace`` for them."""
        calls = self.live
        before = dict(vars(self.counters))
        violations_before = len(self.violations)
        first = [len(c.sent) for c in calls]
        received_before = sum(c.received for c in calls)
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        self.clock.lags_ms.clear()
        if on_start:
            on_start()
        await asyncio.sleep(seconds)
        if on_end:
            on_end()
        last = [len(c.sent) for c in calls]
        received = sum(c.received for c in calls) - received_before
        cpu1, wall1 = _cpu_seconds(), time.perf_counter()
        lags = list(self.clock.lags_ms)
        tagged = self.target.tagged
        deadline = time.perf_counter() + grace
        while (
            tagged
            and time.perf_counter() < deadline
            and not all(all(c.back[a:b]) for c, a, b in zip(calls, first, last, strict=True))
        ):
            await asyncio.sleep(0.05)
        rtts, sent, lost = [], 0, 0
        for c, a, b in zip(calls, first, last, strict=True):
            s = np.frombuffer(c.sent, dtype=np.int64)[a:b]
            r = np.frombuffer(c.back, dtype=np.int64)[a:b]
            came = r > 0
            sent += b - a
            lost += int((~came).sum())
            rtts.append(r[came] - s[came])
        after = vars(self.counters)
        return Window(
            calls=len(calls),
            seconds=wall1 - wall0,
            rtt_ns=np.concatenate(rtts) if rtts and tagged else np.zeros(0, np.int64),
            sent=sent,
            lost=lost if tagged else None,
            misrouted=after["misrouted"] - before["misrouted"],
            duplicates=after["duplicates"] - before["duplicates"],
            foreign=after["foreign"] - before["foreign"],
            load_cpu=(cpu1 - cpu0) / max(1e-9, wall1 - wall0),
            tick_lag_p99_ms=float(np.percentile(lags, 99)) if lags else 0.0,
            violation_count=after["violations"] - before["violations"],
            violations=self.violations[violations_before:],
            tagged=tagged,
            received=received,
        )

    async def close(self, timeout: float = 5.0) -> None:
        """``stop`` every call and wait for the sockets to close."""
        self.clock.stop()
        for call in self.calls:
            call.stop()
        pending = [c.closed for c in self.calls if not c.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for call in self.calls:
            if call.transport is not None and not call.closed.done():
                call.transport.abort()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
