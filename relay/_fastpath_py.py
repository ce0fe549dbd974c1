"""The plain-Python twin of ``relay._fastpath``, gathered under the compiled module's names.

Each compiled part has its twin module, the oracle it is tested against, and this module only
re-exports them; nothing is defined here:

* ``_messages_py``: Twilio and Realtime messages (twin of ``_messages.pxi``)
* ``_framing_py``: WebSocket frames, RFC 6455 (``_framing.pxi``)
* ``_codec_py``: G.711 μ-law and resampling (``_codec.pxi``)
* ``_playout_py``: the playout ring, the gap filler (``_playout.pxi``)
* ``_wscore_py``: a socket's read loop and writes (``_wscore.pxi``)
* ``_media_py``: a call's per-frame media core (``_media.pxi``)

The audio format constants are ``relay.audio_format``'s, as the compiled module exports its own.
The contract and its docstrings live in ``_fastpath.pyi``; ``relay.fastpath`` picks this module
when the compiled one is not built.
"""

from __future__ import annotations

from relay._codec_py import Resampler, pcm16_to_ulaw, ulaw_to_pcm16
from relay._framing_py import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, FrameReader, build_frame
from relay._media_py import EV_AUDIO_ERROR, EV_NEW_ITEM, EV_PLAYED, ItemAudio, MediaCore
from relay._messages_py import TwilioWriter, b64_decoded_len, parse_audio_delta, parse_gemini_audio, parse_media
from relay._playout_py import GapFiller, PlayoutRing, silence_b64
from relay._wscore_py import LEG_BACKEND, LEG_TWILIO, WsCore
from relay.audio_format import B64_FRAME_BYTES, BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SAMPLE_RATE

IMPLEMENTATION = "python"

__all__ = [
    "B64_FRAME_BYTES",
    "BYTES_PER_MS",
    "EV_AUDIO_ERROR",
    "EV_NEW_ITEM",
    "EV_PLAYED",
    "FRAME_BYTES",
    "FRAME_MS",
    "IMPLEMENTATION",
    "LEG_BACKEND",
    "LEG_TWILIO",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "SAMPLE_RATE",
    "FrameReader",
    "GapFiller",
    "ItemAudio",
    "MediaCore",
    "PlayoutRing",
    "Resampler",
    "TwilioWriter",
    "WsCore",
    "b64_decoded_len",
    "build_frame",
    "parse_audio_delta",
    "parse_gemini_audio",
    "parse_media",
    "pcm16_to_ulaw",
    "silence_b64",
    "ulaw_to_pcm16",
]
