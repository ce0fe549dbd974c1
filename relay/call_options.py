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
    # GPT-Live (a backend whose audio streams at real time, silence included): the lead, kept
    # small, since the stream needs no more than the network's jitter and whatever the lead holds
    # is what the caller still hears after the model yields; and the gap between transcript
    # fragments that ends a turn.
    live_lead_ms: int = 80
    live_turn_gap_ms: int = 800
    # The caller's last audio replayed to a GPT-Live or Gemini session that takes over (recycle,
    # reconnect, goAway): with no speech events to wait for, a line begun as the sessions change
    # is heard whole.
    live_preroll_ms: int = 600
