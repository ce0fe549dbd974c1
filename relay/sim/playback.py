"""Twilio's side of a bidirectional stream's outbound audio, sans-I/O (PROTOCOLS §1.4).

Twilio buffers every ``media`` it is sent and plays it in order at 8 kHz; a ``mark`` is
echoed once the audio sent before it has played (at once if nothing is buffered); ``clear``
drops the buffer and echoes every pending mark at once. ``TwilioPlayback`` is that model and
nothing else: the caller simulator drives it on its real 20 ms clock, the fake-clock tests
drive it by hand. It also keeps what a test needs to know what the caller really heard: the
recording, where each mark sat in the stream, how much had played at each ``clear``, and
every stall (the buffer ran dry and audio came again).
"""

from __future__ import annotations

import base64
import collections
from dataclasses import dataclass, field

from relay.audio_format import BYTES_PER_MS, FRAME_BYTES

SILENCE = 0xFF


@dataclass
class TwilioPlayback:
    queue: bytearray = field(default_factory=bytearray)  # received, not yet played
    received: int = 0  # bytes of audio received, ever
    played: int = 0  # bytes of received audio played, ever (cleared audio is never played)
    heard: bytearray = field(default_factory=bytearray)  # every played tick, silence included
    # the received audio that played, in order, without the silence of dry spells: what a word
    # split by an underrun is, put back together (a transcript of ``heard`` misses such a word)
    played_audio: bytearray = field(default_factory=bytearray)
    # mark name -> bytes received before it (its place in the stream of received audio)
    mark_offsets: dict[str, int] = field(default_factory=dict)
    echoed_played: list[str] = field(default_factory=list)  # marks echoed because their audio played
    echoed_cleared: list[str] = field(default_factory=list)  # marks echoed because of a clear
    clears_at: list[int] = field(default_factory=list)  # ``played`` at each clear
    stalls_ms: list[float] = field(default_factory=list)  # dry spells that audio ended
    peak_queued: int = 0  # the most audio ever waiting to play, in bytes
    _pending: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)
    _dry: int = 0  # bytes of silence played since the buffer ran dry mid-stream

    def media(self, payload_b64: str | bytes) -> None:
        data = base64.b64decode(payload_b64)
        if self._dry and self.received:
            self.stalls_ms.append(self._dry / BYTES_PER_MS)
        self._dry = 0
        self.queue += data
        self.received += len(data)
        self.peak_queued = max(self.peak_queued, len(self.queue))

    def mark(self, name: str) -> list[str]:
        """A mark arrived; returns the marks to echo now (it, if nothing is buffered)."""
        self.mark_offsets[name] = self.received
        if not self.queue:
            self.echoed_played.append(name)
            return [name]
        self._pending.append((self.received, name))
        return []

    def clear(self) -> list[str]:
        """Drop the buffer; returns every pending mark, to echo at once."""
        self.clears_at.append(self.played)
        self.queue.clear()
        self.received = self.played  # what was cleared will never play
        self._dry = 0
        names = [name for _, name in self._pending]
        self._pending.clear()
        self.echoed_cleared += names
        return names

    def play(self, nbytes: int = FRAME_BYTES) -> list[str]:
        """Play ``nbytes`` of audio (silence where the buffer is dry); returns the marks reached."""
        take = bytes(self.queue[:nbytes])
        del self.queue[:nbytes]
        self.played += len(take)
        self.heard += take
        self.played_audio += take
        if len(take) < nbytes:
            self.heard += bytes([SILENCE]) * (nbytes - len(take))
            if self.received:
                self._dry += nbytes - len(take)
        echoed = []
        while self._pending and self._pending[0][0] <= self.played:
            echoed.append(self._pending.popleft()[1])
        self.echoed_played += echoed
        return echoed

    def say(self, ulaw: bytes) -> None:
        """Audio Twilio plays itself (a ``<Say>`` once the stream is over): heard as it is."""
        self.heard += ulaw

    def heard_of(self, item_id: str, clear_index: int = 0) -> int | None:
        """Bytes of ``item_id`` that had played when clear number ``clear_index`` came.

        Relay names marks ``<item>:<bytes of the item before the mark>``, so any one mark of
        the item places the item's first byte in the stream.
        """
        for name, offset in self.mark_offsets.items():
            item, _, cum = name.rpartition(":")
            if item == item_id and cum.isdigit():
                start = offset - int(cum)
                return max(0, self.clears_at[clear_index] - start)
        return None
