"""How a call is paced and kept alive: the ``RELAY_*`` call settings, as one value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How a call is paced and kept alive (``RELAY_*`` settings; see README)."""

    lead_ms: int = 100  # audio queued at Twilio ahead of the caller's ear, at most
    pacer_interval_ms: int = 20  # the shared clock's period; over 20, paced frames go two or more per write
    mark_frames: int = 5  # a mark every this many frames (and at the end of every answer)
    presession_buffer_ms: int = 2000  # caller audio held while no backend session is ready
    max_gap_fill_ms: int = 1000  # longest run of lost caller frames filled with silence
    dtmf_timeout_ms: int = 1500  # keys pressed are sent this long after the last one (or on '#')
    reconnect_message: str = ""  # said after a reconnect to the backend, if set
    seed_max_chars: int = 20000  # conversation carried to a new backend session, newest first
    hangup_grace_ms: int = 3000  # after the farewell's audio: how long its final mark may take
