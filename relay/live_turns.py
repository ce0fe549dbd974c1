"""A call's turns rebuilt from timed transcript fragments (GPT-Live), sans-I/O.

GPT-Live signals no turns (BACKENDS §2.4, §2.8 #2): it sends transcript fragments of the caller
and of the agent, each placed on the session's timeline (``start_ms``/``end_ms``), and its
audio as one stream per session at real time, silence included. ``LiveTurns`` groups each
speaker's fragments into turns (a new turn after a gap of ``gap_ms`` between fragments, or
``gap_ms`` of time with none), and tells what the caller heard of each agent turn exactly, by
word timing: a fragment was heard when the caller's playout reached its ``end_ms``.

The playout is known per segment of the session's audio (``Segment``): the media core's
``ItemAudio`` of the stretch relay forwarded without a break. A segment ends only when relay
itself clears what it held (a barge-in after a stall); the next one begins where the audio
stream went on, so byte ``k`` of the session's audio is always at ``k / 8`` ms of its timeline.
What the caller heard of a segment is what its echoed marks say (``played``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from relay.audio_format import BYTES_PER_MS
from relay.fastpath import ItemAudio


@dataclass(slots=True)
class Segment:
    """A stretch of one session's audio stream, forwarded without a break."""

    base: int  # bytes of the session's audio before it: it begins at ``base / 8`` ms
    audio: ItemAudio

    @property
    def reach(self) -> int:
        """Where the caller's ear got to, in bytes of the session's audio, as the marks echoed say.

        Not the media core's estimate between echoes (``heard_ms``, on the 8 kHz clock): after a
        stall the ear lags the clock, and a word counted heard by the estimate may have been
        cleared unheard. A mark echo is proof; what played after the last one is at most a mark
        interval (100 ms, under a word) and is not counted."""
        audio = self.audio
        return self.base + min(audio.played, audio.produced)


@dataclass(slots=True)
class TimedTurn:
    """One speaker's turn: its fragments (text, start_ms, end_ms) in delivery order."""

    seq: int
    role: str  # "user" or "assistant"
    session: int  # the backend session whose timeline its times are on
    started_at: float  # wall clock of its first fragment
    last_at: float  # loop time its last fragment came
    fragments: list[tuple[str, int, int]] = field(default_factory=list)
    closed: bool = False
    heard: str | None = None  # assistant turns: what the caller heard, once known
    after_ms: int | None = None  # assistant turns: the caller's turn it answers ended here (timeline ms)

    @property
    def text(self) -> str:
        return "".join(text for text, _, _ in self.fragments).strip()

    @property
    def start_ms(self) -> int:
        return self.fragments[0][1]

    @property
    def end_ms(self) -> int:
        return max(end for _, _, end in self.fragments)

    @property
    def v2v_ms(self) -> float | None:
        """The answer's first word from the end of the caller's speech it answers, on the
        session's timeline (the audio streams at real time, so this is what the caller waits)."""
        return float(max(0, self.start_ms - self.after_ms)) if self.after_ms is not None else None


class LiveTurns:
    """The turns of one call's GPT-Live sessions, and what the caller heard of the agent's."""

    __slots__ = ("_last_user", "_open", "_sessions", "gap_ms", "session", "turns")

    def __init__(self, gap_ms: int) -> None:
        self.gap_ms = gap_ms
        self.session = 0  # the current backend session (its timeline); 0 before the first
        self.turns: list[TimedTurn] = []  # not stored yet, in order
        self._open: dict[str, TimedTurn] = {}  # by role
        # Each session's segments, in order: the current one's, and an earlier one's while a turn
        # of it waits for its audio to play out (what was sent before a session ended still plays).
        self._sessions: dict[int, list[Segment]] = {}
        self._last_user: TimedTurn | None = None  # the caller's latest turn of this session

    # ------------------------------------------------------------------ the audio stream

    def new_session(self) -> None:
        """A backend session starts: its audio and its times begin at 0."""
        self.end_session()
        self.session += 1
        waiting = {turn.session for turn in self.turns}
        self._sessions = {n: segments for n, segments in self._sessions.items() if n in waiting}
        self._sessions[self.session] = []
        self._last_user = None

    def end_session(self) -> None:
        """The session is gone: its turns are over. What it sent still plays (its segments end,
        and their last marks come back), so what the caller heard of them is known then."""
        for turn in self.turns:
            if turn.session == self.session:
                turn.closed = True
        self._open.clear()

    @property
    def _segments(self) -> list[Segment]:
        return self._sessions.setdefault(self.session, [])

    def next_segment(self) -> str:
        """The id of the session's next segment of audio (its media item)."""
        return f"live{self.session}.{len(self._segments) + 1}"

    def open_segment(self) -> str | None:
        """The id of the segment the session's audio goes on in, while it is not over (cut)."""
        segments = self._segments
        if segments and not segments[-1].audio.ended:
            return segments[-1].audio.item_id
        return None

    def add_segment(self, audio: ItemAudio) -> None:
        """Audio came with no segment open: it goes on where the session's stream was."""
        segments = self._segments
        base = segments[-1].base + segments[-1].audio.produced if segments else 0
        segments.append(Segment(base, audio))

    # ------------------------------------------------------------------ fragments and turns

    def fragment(
        self, role: str, text: str, start_ms: int, end_ms: int, now: float, wall: float, next_seq: Callable[[], int]
    ) -> TimedTurn:
        """A fragment: it goes on the speaker's open turn unless ``gap_ms`` passed since that
        turn's last one; then a new turn begins (numbered by ``next_seq``)."""
        turn = self._open.get(role)
        if turn is not None and start_ms - turn.end_ms > self.gap_ms:
            turn.closed = True
            turn = None
        if turn is None:
            turn = TimedTurn(next_seq(), role, self.session, wall, now)
            if role == "assistant" and self._last_user is not None:
                turn.after_ms = self._last_user.end_ms
            self._open[role] = turn
            self.turns.append(turn)
        if role == "user":
            self._last_user = turn
        turn.fragments.append((text, start_ms, end_ms))
        turn.last_at = now
        return turn

    def close_quiet(self, now: float) -> None:
        """Close every turn with no fragment for ``gap_ms``."""
        for role, turn in list(self._open.items()):
            if (now - turn.last_at) * 1000 >= self.gap_ms:
                turn.closed = True
                del self._open[role]

    def ready(self) -> list[TimedTurn]:
        """The turns that can be stored now, taken off the list: closed ones whose heard text
        (an agent's) is known."""
        out: list[TimedTurn] = []
        left: list[TimedTurn] = []
        for turn in self.turns:
            if turn.closed and turn.role == "assistant" and turn.heard is None:
                turn.heard = self._heard(turn, final=False)
            (out if turn.closed and (turn.role == "user" or turn.heard is not None) else left).append(turn)
        self.turns = left
        return out

    def finish(self) -> list[TimedTurn]:
        """The call ended: every turn left, its heard text what had been heard by now."""
        self.end_session()
        for turn in self.turns:
            if turn.role == "assistant" and turn.heard is None:
                turn.heard = self._heard(turn, final=True)
        out, self.turns = self.turns, []
        return out

    @property
    def idle(self) -> bool:
        """Nobody is talking, and every turn is stored."""
        return not self._open and not self.turns

    @property
    def agent_talking(self) -> bool:
        """The agent has a turn open, or one whose end the caller has not heard yet."""
        return "assistant" in self._open or any(turn.role == "assistant" for turn in self.turns)

    # ------------------------------------------------------------------ what was heard

    def _heard(self, turn: TimedTurn, *, final: bool) -> str | None:
        """The fragments of ``turn`` the caller's playout reached; None while that is not known."""
        kept = []
        segments = self._sessions.get(turn.session, [])
        for text, start_ms, end_ms in turn.fragments:
            fate = self._fate(segments, start_ms, end_ms)
            if fate is None:
                if not final:
                    return None
                fate = False
            if fate:
                kept.append(text)
        return "".join(kept).strip()

    @staticmethod
    def _fate(segments: list[Segment], start_ms: int, end_ms: int) -> bool | None:
        """Heard (True), never to be heard (False), or not yet known (None): heard when the
        playout reached its end and no part of it was cut."""
        start, end = start_ms * BYTES_PER_MS, end_ms * BYTES_PER_MS
        for segment in segments:
            audio = segment.audio
            if segment.base + audio.produced < end and segment is not segments[-1]:
                if segment.base + audio.produced > start and audio.interrupted:
                    return False  # its start was in audio relay cut
                continue
            if end <= segment.reach:
                return True
            # Cut by relay, or the session ended and all it sent has played: never to be heard.
            return False if audio.interrupted or (audio.ended and audio.played >= audio.produced) else None
        return None  # no audio yet
