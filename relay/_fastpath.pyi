"""The per-frame hot path: the contract both implementations honour.

``relay._fastpath`` (Cython, compiled from ``_fastpath.pyx``) and ``relay._fastpath_py``
(plain Python, the oracle) expose exactly these names and return equal values, or raise the
same error class, for every input. Everything here is sans-I/O: bytes in, bytes out, no clock,
no logging. Import it through ``relay.fastpath``, which says which one it picked.
"""

IMPLEMENTATION: str
"""``"cython"`` for the compiled module, ``"python"`` for the reference."""

def b64_decoded_len(data: bytes) -> int:
    """Return how many bytes padded standard base64 ``data`` decodes to, without decoding.

    Args:
        data: base64 text (``A-Z a-z 0-9 + /``, ``=`` padding, length a multiple of 4).

    Returns:
        The decoded length: ``len(data) // 4 * 3`` less the padding.

    Raises:
        PayloadError: ``data`` is not padded standard base64.
    """

def parse_media(message: bytes) -> tuple[bytes, int] | None:
    """Read an inbound Twilio message in one pass if it is a ``media`` event (PROTOCOLS §1.3).

    Args:
        message: one WebSocket text message from Twilio, as UTF-8 bytes.

    Returns:
        ``(payload, timestamp)`` for a ``media`` event: the base64 payload exactly as sent
        (never decoded) and ``media.timestamp`` in ms as an int; ``None`` for any other event,
        which the caller then parses in full with orjson.

    Raises:
        ProtocolError: not a JSON object, no string ``event``, or a ``media`` event without a
            ``media`` object, a string ``media.payload`` or a digit-string ``media.timestamp``
            (at most 15 digits).
        PayloadError: ``media.payload`` is not padded standard base64.
    """

def parse_audio_delta(message: bytes) -> tuple[str, bytes] | None:
    """Read a Realtime server event in one pass if it is ``response.output_audio.delta`` (§2.4).

    Args:
        message: one WebSocket text message from the backend, as UTF-8 bytes.

    Returns:
        ``(item_id, delta)`` with the base64 audio exactly as sent, or ``None`` for any other
        event type.

    Raises:
        ProtocolError: not a JSON object, no string ``type``, or a delta event without string
            ``item_id`` and ``delta``.
        PayloadError: ``delta`` is not padded standard base64.
    """

def build_append(payload: bytes) -> bytes:
    """Build ``{"type":"input_audio_buffer.append","audio":<payload>}`` (PROTOCOLS §2.3).

    Args:
        payload: base64 audio already validated by :func:`parse_media`; copied, not decoded.
    """

class TwilioWriter:
    """Builds the three messages a bidirectional stream may send (PROTOCOLS §1.4).

    One per call: the ``streamSid`` is escaped once here, so each message is a single
    concatenation. Output carries exactly the documented fields, because Twilio rejects
    extra ones (warning 31951).

    Raises:
        ProtocolError: ``stream_sid`` is empty or cannot be encoded as JSON.
    """

    stream_sid: str
    def __init__(self, stream_sid: str) -> None: ...
    def media(self, payload: bytes) -> bytes:
        """``{"event":"media","streamSid":…,"media":{"payload":<payload>}}``; payload is base64."""
    def mark(self, name: str) -> bytes:
        """``{"event":"mark","streamSid":…,"mark":{"name":<name>}}``.

        Raises:
            ProtocolError: ``name`` is empty or cannot be encoded as JSON.
        """
    def clear(self) -> bytes:
        """``{"event":"clear","streamSid":…}``."""
