"""The façade over the per-frame hot path: the compiled module when it is built.

Import the hot path from here, never from ``_fastpath`` or ``_fastpath_py`` directly.
``IMPLEMENTATION`` says which one is running; the server logs it at start and refuses to run
on the Python reference unless ``RELAY_ALLOW_PYTHON_FASTPATH=1`` (a slow relay should be loud).
"""

from __future__ import annotations

try:
    from relay._fastpath import (
        IMPLEMENTATION,
        LEG_BACKEND,
        LEG_TWILIO,
        OP_BINARY,
        OP_CLOSE,
        OP_CONT,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        FrameReader,
        GapFiller,
        MediaCore,
        PlayoutRing,
        Resampler,
        TwilioWriter,
        b64_decoded_len,
        build_frame,
        parse_audio_delta,
        parse_media,
        pcm16_to_ulaw,
        silence_b64,
        WsCore,
        ulaw_to_pcm16,
    )
except ImportError:  # not built: the reference keeps tools and tests usable
    from relay._fastpath_py import (  # type: ignore[assignment]
        IMPLEMENTATION,
        LEG_BACKEND,
        LEG_TWILIO,
        OP_BINARY,
        OP_CLOSE,
        OP_CONT,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        FrameReader,
        GapFiller,
        MediaCore,
        PlayoutRing,
        Resampler,
        TwilioWriter,
        b64_decoded_len,
        build_frame,
        parse_audio_delta,
        parse_media,
        pcm16_to_ulaw,
        silence_b64,
        WsCore,
        ulaw_to_pcm16,
    )

__all__ = [
    "IMPLEMENTATION",
    "LEG_BACKEND",
    "LEG_TWILIO",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "GapFiller",
    "MediaCore",
    "PlayoutRing",
    "Resampler",
    "TwilioWriter",
    "b64_decoded_len",
    "build_frame",
    "parse_audio_delta",
    "parse_media",
    "pcm16_to_ulaw",
    "silence_b64",
    "WsCore",
    "ulaw_to_pcm16",
]
