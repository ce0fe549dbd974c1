"""What Twilio sends on a Media Stream (PROTOCOLS §1.3), built as Twilio builds it: the messages
every simulated phone sends relay (``caller.TwilioCaller``, ``phones.MachineLine``), one place
for their shapes. Each takes the stream's next ``sequenceNumber``."""

from __future__ import annotations

import base64

import orjson

from relay.audio_format import FRAME_MS, SAMPLE_RATE

CONNECTED = orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()


def start(seq: int, stream_sid: str, call_sid: str, account_sid: str, parameters: dict[str, str]) -> str:
    return orjson.dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
                "customParameters": parameters,
            },
            "streamSid": stream_sid,
        }
    ).decode()


def media(seq: int, stream_sid: str, chunk: int, frame: bytes) -> str:
    """The ``chunk``-th 20 ms frame of the stream (numbered from 1)."""
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * FRAME_MS),
                "payload": base64.b64encode(frame).decode(),
            },
            "streamSid": stream_sid,
        }
    ).decode()


def mark(seq: int, stream_sid: str, name: str) -> str:
    """The echo of a mark relay sent, once the audio before it has played (or was cleared)."""
    return orjson.dumps(
        {"event": "mark", "sequenceNumber": str(seq), "streamSid": stream_sid, "mark": {"name": name}}
    ).decode()


def dtmf(seq: int, stream_sid: str, digit: str) -> str:
    return orjson.dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(seq),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    ).decode()


def stop(seq: int, stream_sid: str, call_sid: str, account_sid: str) -> str:
    return orjson.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    ).decode()
