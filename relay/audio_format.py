"""The one audio format relay carries, and the frame it is cut into: G.711 μ-law, 8 kHz, mono.

The Python definition; compiled code has the same values as the ``cpdef enum`` in
``_fastpath.pxd``, which ``relay._fastpath`` exports under the same names (a test holds the two
equal).
"""

from __future__ import annotations

__all__ = ["B64_FRAME_BYTES", "BYTES_PER_MS", "FRAME_BYTES", "FRAME_MS", "SAMPLE_RATE"]

# Twilio Media Streams carry audio/x-mulaw at 8000 Hz, mono, both ways (PROTOCOLS §1.3), and
# the backends are asked for audio/pcmu, the same format: relay never resamples a call.
SAMPLE_RATE = 8000

# μ-law is one byte per sample, so 8000 samples per second are 8 bytes per millisecond: the
# unit that turns buffered bytes into ms of audio and ms of lead into bytes.
BYTES_PER_MS = 8

# Twilio sends the caller's audio in 20 ms frames and plays what it is sent in 20 ms steps; the
# playout ring paces the agent's audio out in the same frames, one per tick of the shared clock.
FRAME_MS = 20

# One frame's audio: 20 ms at 8 bytes per ms.
FRAME_BYTES = 160

# One frame as it travels in JSON: padded standard base64, 4 characters per 3 bytes,
# 4 * ceil(160 / 3) = 216: the length of every media payload relay sends Twilio.
B64_FRAME_BYTES = 216
