"""The per-frame hot path: the contract both implementations honour.

``relay._fastpath`` (Cython, compiled from ``_fastpath.pyx`` and its ``.pxi`` parts) and
``relay._fastpath_py`` (plain Python, the oracle: it gathers the twin module of each part)
expose exactly these names and return equal values, or raise the same error class, for every
input. Everything but the per-frame cores is sans-I/O: bytes in, bytes out, no clock, no
logging. Import it through ``relay.fastpath``, which says which one it picked.
"""

from collections import deque
from collections.abc import Callable
from typing import Any, final

from typing_extensions import disjoint_base  # PEP 800: a cdef class cannot share a subclass with another

IMPLEMENTATION: str
"""``"cython"`` for the compiled module, ``"python"`` for the reference."""

# ---- Audio format
# G.711 μ-law, 8 kHz, mono, in 20 ms frames. The compiled module exports the ``cpdef enum`` of
# ``_fastpath.pxd`` that its parts are built with; the twin re-exports ``relay.audio_format``,
# the Python definition, which says why each value is what it is. Python code reads them there.

SAMPLE_RATE: int
"""8000 Hz."""
BYTES_PER_MS: int
"""8: one μ-law byte per sample."""
FRAME_MS: int
"""20 ms."""
FRAME_BYTES: int
"""160: one frame of audio."""
B64_FRAME_BYTES: int
"""216: one frame in padded base64."""

# ---- Messages
# Twilio Media Streams and OpenAI Realtime messages, read in one pass and written in one
# allocation (``_messages.pxi``; twin ``_messages_py``).

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

def parse_audio_delta(message: bytes) -> tuple[str, bytes, str] | None:
    """Read a backend event in one pass if it is an audio delta: Realtime's
    ``response.output_audio.delta`` (PROTOCOLS §2.4) or GPT-Live's ``session.output_audio.delta``
    (BACKENDS §2.4), which has no item: its audio is one stream per session.

    Args:
        message: one WebSocket text message from the backend, as UTF-8 bytes.

    Returns:
        ``(item_id, delta, response_id)`` with the base64 audio exactly as sent (``response_id``
        "" when the event names none; ``item_id`` and ``response_id`` "" for GPT-Live, whose
        other fields are not read), or ``None`` for any other event type.

    Raises:
        ProtocolError: not a JSON object, no string ``type``, or a delta event without string
            ``delta`` (Realtime: and ``item_id``), or with a ``response_id`` that is not a string.
        PayloadError: ``delta`` is not padded standard base64.
    """

def parse_gemini_audio(message: bytes) -> bytes | None:
    """Read a Gemini Live server message in one pass if it is nothing but a chunk of the model's
    audio (BACKENDS §3.3): ``{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":
    "audio/pcm;rate=24000" or "audio/pcm","data":<base64>}}]}}}``, keys in any order, ``role``
    allowed beside ``parts``, and no other key anywhere on that path.

    Returns:
        The base64 PCM16 exactly as sent (padded standard base64), or ``None`` for any other
        message (more than audio, another mime type, not base64, not JSON): handed up whole.
    """

@disjoint_base
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

# ---- WebSocket framing (RFC 6455)
# The media path's frames on both legs (``_framing.pxi``; twin ``_framing_py``): Twilio →
# relay (masked client frames in, unmasked server frames out) and relay → backend (masked
# client frames out, unmasked frames in). The opening handshake stays with websockets'
# sans-I/O layer.

OP_CONT: int
OP_TEXT: int
OP_BINARY: int
OP_CLOSE: int
OP_PING: int
OP_PONG: int

def build_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """Build one final (FIN) frame.

    Args:
        opcode: ``OP_TEXT``, ``OP_BINARY``, ``OP_CLOSE``, ``OP_PING`` or ``OP_PONG``.
        payload: the frame's application data (for a close: 2-byte code + UTF-8 reason).
        mask: a 4-byte masking key for a client frame; ``None`` for a server frame.

    Returns:
        The frame: header (shortest length encoding), the key if any, the (masked) payload.

    Raises:
        TypeError: ``payload`` is not ``bytes``.
        ValueError: an opcode that is not one of the five ints above, a control payload over 125 bytes, or a
            mask that is not 4 bytes.
    """

@disjoint_base
class FrameReader:
    """Incremental frame parser for one direction of one connection; no I/O.

    Feed it what the transport delivers, then call ``read`` until it returns ``None``.
    Fragmented messages are reassembled; control frames come out as they arrive, also
    between the fragments of a message.
    """

    masked: bool
    """True to read client frames (each must be masked), False to read server frames."""
    max_size: int
    """The largest message accepted, fragments included (control frames: 125 bytes)."""

    def __init__(self, masked: bool, max_size: int = ...) -> None:
        """Raises ValueError unless ``max_size`` is an int from 0 to 2**63 - 1."""
    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer (bytes, bytearray or memoryview; else TypeError)."""
    def pending(self) -> int:
        """How many fed bytes are not yet parsed into a frame (a fragment already read counts
        as parsed even while its message waits for the rest)."""
    def read(self) -> tuple[int, bytes] | None:
        """Return the next message or control frame as ``(opcode, payload)``.

        A data message comes out whole as ``(OP_TEXT | OP_BINARY, data)``; a control frame as
        ``(OP_CLOSE | OP_PING | OP_PONG, payload)``. ``None``: more bytes are needed.

        Raises:
            FrameError: the peer broke RFC 6455; ``code`` is the close code to answer with:
                1002 for wrong masking, reserved bits, an unknown opcode, a fragmented or
                oversized control frame, a continuation out of place, a 1-byte close payload,
                a close code a peer may not send (RFC 6455 §7.4) or a length over 2**63; 1007 for a text
                message or close reason that is not
                UTF-8; 1009 for a message over ``max_size``. The reader is unusable after.
        """

# ---- Codec
# G.711 μ-law ↔ PCM16 and streaming resampling (``_codec.pxi``; twin ``_codec_py``).
# PCM16 is mono, signed 16-bit little-endian, 2 bytes per sample. Every input must be
# ``bytes`` exactly: ``bytearray``, ``memoryview``, ``str`` and the rest raise ``TypeError``
# in both implementations. Integer arithmetic only, so both agree bit for bit.

def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law to PCM16 through a 256-entry table; equals ``audioop.ulaw2lin(data, 2)``.

    Returns ``2 * len(data)`` bytes. Raises TypeError unless ``data`` is bytes.
    """

def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode PCM16 to G.711 μ-law through a 16384-entry table on the sample's top 14 bits;
    equals ``audioop.lin2ulaw(data, 2)`` for every sample value.

    Returns ``len(data) // 2`` bytes. Raises TypeError unless ``data`` is bytes, ValueError if
    its length is odd.
    """

@final
class Resampler:
    """Streaming PCM16 resampler: 8000 → 16000 / 24000 Hz, 16000 / 24000 → 8000 Hz, or a
    same-rate passthrough (8000, 16000 or 24000 Hz).

    Chunking never changes the result: the concatenated outputs of ``process`` over any split
    of a stream at sample boundaries equal one ``process`` of the whole stream. Nothing is held
    back, so each call returns every output sample its input completes, and over a stream of
    ``n`` input samples the total is exactly ``ceil(n * dst_rate / src_rate)`` samples. The
    stream starts from silence (zero history), so the first outputs ramp in.

    Up by L = 2 or 3 (linear interpolation, a deliberate choice: cheap, no overshoot, and
    the backends band-limit 8 kHz input anyway):
    ``y[L*n + j] = round(x[n-1] + (x[n] - x[n-1]) * (j + 1) / L)`` for j < L, ties rounded up,
    with ``x[-1] = 0``; so ``y[L*n + L-1] == x[n]``. Delay: L - 1 output samples (1/2 or 2/3
    of an 8 kHz sample, 62.5 / 83.3 µs). Never leaves the input range, so no clamping.

    Down by M = 2 or 3: a linear-phase FIR low-pass on the input rate, then every M-th
    output: ``y[m] = clamp16(floor((sum(h[k] * x[M*m - k] for k < K) + 2**14) / 2**15))``
    with ``x[<0] = 0``. ``h`` is a Kaiser-windowed sinc (β = 5, cutoff 3800 Hz,
    K = 16*M + 1 taps: 33 at 16 kHz, 49 at 24 kHz), integer Q15 coefficients summing to
    2**15: about -0.02 dB at 3 kHz, -1.2 dB at 3.4 kHz, -10.7 dB at 4 kHz, ≤ -51 dB from
    4.6 kHz. Output m is returned as soon as input sample M*m arrives; it is centred on input
    sample M*m - 8*M, a delay of 8 output samples (1 ms). Overshoot is clamped to int16.

    Raises:
        TypeError: a rate is not an int.
        ValueError: any other pair of rates.
    """

    src_rate: int
    """The input rate in Hz (read-only)."""
    dst_rate: int
    """The output rate in Hz (read-only)."""

    def __init__(self, src_rate: int, dst_rate: int) -> None: ...
    def process(self, chunk: bytes) -> bytes:
        """Resample the next ``chunk`` of the stream; returns the output it completes.

        Up: ``L * len(chunk)`` bytes. Down: one output sample per input sample M*m received
        (``ceil`` over the stream). Passthrough: ``chunk`` itself.

        Raises:
            TypeError: ``chunk`` is not bytes.
            ValueError: ``len(chunk)`` is odd (the state is left untouched).
        """
    def flush(self) -> bytes:
        """End the stream: return what is still held (always ``b""``, since nothing is held
        back) and reset to the initial state, so the next ``process`` starts a new stream."""

# ---- Playout
# The agent's audio paced out to Twilio, and the caller's audio kept on its clock
# (``_playout.pxi``; twin ``_playout_py``). Sans-I/O: time is passed in as ints, never read.
# Every count, size and time argument must be an ``int`` (``TypeError`` otherwise) within the
# range given (``ValueError`` otherwise); a bad argument changes nothing.

def silence_b64(frame_bytes: int = 160) -> bytes:
    """The padded standard base64 of ``frame_bytes`` bytes of μ-law silence (``0xFF``).

    ``silence_b64()`` is one 20 ms frame: 216 characters. ``frame_bytes``: 0 to 2**20.
    """

@final
class PlayoutRing:
    """The agent's audio waiting to be paced out to Twilio in frames of ``frame_bytes`` bytes
    (160: 20 ms of 8 kHz μ-law).

    One growable circular buffer: the first ``push`` allocates 4 KiB (or ``max_bytes`` if
    smaller), which doubles whenever it is too small, up to ``max_bytes``, and is never
    shrunk (``clear`` keeps it). The audio is decoded into it straight from base64, and each
    frame is encoded straight from it. Counters are bytes; ``pushed == sent + buffered +
    dropped`` always (padding is counted apart, in ``padded``).

    Args:
        frame_bytes: bytes per frame, 1 to 2**20.
        max_bytes: most bytes ever buffered (and allocated), 0 to 2**40.
    """

    frame_bytes: int
    max_bytes: int
    buffered: int
    """Bytes waiting to be popped."""
    pushed: int
    """Bytes ever pushed."""
    sent: int
    """Bytes ever popped, padding excluded."""
    padded: int
    """Silence bytes added to pad the last frame of ``pop(final=True)``."""
    dropped: int
    """Bytes thrown away by ``clear``."""
    heard: int
    """Of the ``sent + padded`` bytes handed out, how many the caller's ear has heard by the
    last ``frames_due`` (see there); ``sent + padded - heard`` is the audio queued at Twilio."""
    capacity: int
    """Bytes allocated for the ring: 0 before the first non-empty push."""

    def __init__(self, frame_bytes: int = 160, max_bytes: int = 8_000_000) -> None: ...
    def push(self, b64: bytes) -> int:
        """Append base64 audio (a Realtime ``delta`` as :func:`parse_audio_delta` returns it).

        Returns:
            The number of bytes it decodes to, now buffered.

        Raises:
            TypeError: ``b64`` is not ``bytes``.
            PayloadError: not padded standard base64 (exactly what :func:`b64_decoded_len`
                rejects); checked first.
            ProtocolError: ``"playout buffer full"``: ``buffered`` would exceed ``max_bytes``.
            Nothing is buffered when it raises.
        """
    def push_ulaw(self, ulaw: bytes) -> int:
        """Append raw μ-law (a binary backend's frame, or audio transcoded to it).

        Returns:
            ``len(ulaw)``, now buffered.

        Raises:
            TypeError: ``ulaw`` is not ``bytes``.
            ProtocolError: ``"playout buffer full"``, as :meth:`push`; nothing is buffered.
        """
    def pop(self, n: int = 1, *, final: bool = False) -> list[bytes]:
        """Take up to ``n`` frames, oldest first, each the base64 (padded, standard, no newline)
        of exactly ``frame_bytes`` bytes, ready for :meth:`TwilioWriter.media`.

        Only whole frames, unless ``final`` (the response is done): then, if fewer than ``n``
        whole frames were buffered, the remaining partial frame comes last, padded with
        silence to ``frame_bytes``. ``[]`` if there is nothing to give.

        Raises:
            TypeError: ``n`` is not an int. ValueError: ``n < 0``.
        """
    def clear(self) -> int:
        """Barge-in: drop everything buffered and return how many bytes that was.

        The relay sends Twilio a ``clear`` with it, which drops Twilio's queue too, so pacing
        restarts from nothing queued: ``heard`` becomes ``sent + padded`` and the next
        ``frames_due`` allows a whole lead again.
        """
    def frames_due(self, elapsed_ms: int, lead_ms: int) -> int:
        """How many whole frames may be popped now so that the audio queued at Twilio stays
        within ``lead_ms``: at least 0, at most the whole frames buffered.

        ``elapsed_ms``: the caller's clock, time since the first frame was popped (0 before
        it). The ear hears 8 bytes per ms of it, but never ahead of what was handed out:
        ``heard = min(sent + padded, heard + (elapsed_ms - previous elapsed_ms) * 8)``; so
        after the ring ran dry (between responses) the next audio is paced from when it
        comes, not sent in one burst to make up for the silence. As long as the ear never
        caught up (no underrun, no ``clear``, no padding) this is just
        ``heard = min(sent, elapsed_ms * 8)``. A clock that goes back counts as no time heard
        and becomes the new reference.

        Returns the most ``k`` with ``sent + padded - heard + k * frame_bytes <= lead_ms * 8``.
        With lead 100 ms and nothing queued, 5 frames are due at once; after that one per
        20 ms of ``elapsed_ms``. A lead under one frame (20 ms) never lets a frame go.
        Call it once per tick, then ``pop`` what it returns.

        Args:
            elapsed_ms, lead_ms: 0 to 2**53.
        """

@final
class GapFiller:
    """Keeps the caller's audio clock true: tells, for each inbound Twilio frame, how many
    silence frames to send upstream before it, or that it must be dropped.

    The first frame's ``media.timestamp`` sets a grid of slots ``frame_ms`` apart. Each later
    frame goes to the nearest slot ahead of the expected one, a frame within
    ``frame_ms // 2`` of a slot counting as on it (Twilio's timestamps jitter by a ms or two);
    the slots skipped are the frames lost. The clock (the expected slot) only moves forward,
    by whole slots, so jitter never accumulates.

    Args:
        frame_ms: the frame period, 1 to 2**20 (Twilio: 20).
        max_fill_ms: the longest gap filled, 0 to 2**40: at most ``max_fill_ms // frame_ms``
            silence frames per gap.
    """

    frame_ms: int
    max_fill_ms: int
    frames: int
    """Frames accepted (``accept`` returned >= 0)."""
    filled: int
    """Silence frames requested, in total."""
    dropped: int
    """Frames dropped: duplicates and late frames (``accept`` returned -1)."""
    capped: int
    """Gaps longer than ``max_fill_ms``, filled only up to it."""

    def __init__(self, frame_ms: int = 20, max_fill_ms: int = 1000) -> None: ...
    def accept(self, timestamp_ms: int) -> int:
        """Place the next inbound frame, by its ``media.timestamp`` (0 to 2**53 ms).

        Returns:
            0: on time (also the first frame, which sets the clock). ``k > 0``: ``k`` silence
            frames go upstream before this one: the frame is ``d`` ms after the expected
            slot, ``d > frame_ms // 2``, so ``ceil((d - frame_ms // 2) / frame_ms)`` frames were
            lost (``d // frame_ms`` when the frame is on its slot or late on it, one more when
            it is early on it), capped at ``max_fill_ms // frame_ms``; the clock moves to this
            frame's slot even past the cap. -1: drop it, the clock unmoved: it is more than
            ``frame_ms // 2`` before the expected slot (a duplicate, or a frame whose slot was
            filled or has passed).

        Raises:
            TypeError: not an int. ValueError: negative or over 2**53. Nothing changes.
        """

# ---- Per-frame cores
# The per-frame halves of a WebSocket connection and of a call (``_wscore.pxi``, ``_media.pxi``;
# twins ``_wscore_py``, ``_media_py``). Not sans-I/O like the rest: they write to the
# transport and sinks they are given. Both implementations make the same calls and the same
# writes, in the same order, and keep the same state, for every input
# (``tests/test_media_core.py``). The compiled pair calls each other in C: a routed media
# message crosses no Python frame between the transport and the other socket.

LEG_TWILIO: int
"""``WsCore.route`` leg: text messages go to ``MediaCore.twilio_frame``."""
LEG_BACKEND: int
"""``WsCore.route`` leg: text messages go to ``MediaCore.backend_frame``."""

@disjoint_base
class WsCore:
    """What ``relay.ws.Connection`` does with every read and every write.

    The subclass provides ``_violation(kind, reason, code)`` (close for a peer's error),
    ``_on_close_frame(payload)`` and ``_wake()`` (something for ``recv``, or not open any more).
    """

    client: bool
    """True on the client side: frames sent are masked (keys from ``os.urandom``, 1 KiB at a
    time), frames read must not be; False: the reverse."""
    state: str
    """``"open"`` until the subclass says otherwise; sends are no-ops once not ``"open"``."""
    @property
    def transport(self) -> Any:
        """The transport written to (the shell closes or aborts it)."""
    @property
    def messages(self) -> deque[bytes]:
        """Text messages the routed core left, in order, for ``recv``."""

    def __init__(self, transport: Any, client: bool, max_size: int, max_rate: int, clock: Callable[[], float]) -> None:
        """``max_rate``: messages per second allowed from the peer (0: no limit), counted in
        one-second windows; ``clock`` is read once per read with a routed message, and when a
        window's count passes the limit."""
    def route(self, media: MediaCore | None, leg: int = ...) -> None:
        """Offer every text message to ``media`` first (``LEG_TWILIO`` or ``LEG_BACKEND``), while
        nothing waits in the queue for ``recv``. ``None``: no message reaches a call any more.
        Raises TypeError for anything but a ``MediaCore``."""
    def data_received(self, data: bytes) -> None:
        """Parse ``data``; each message to the routed core, or (what it leaves) the queue, in
        order; pings answered; a close frame to ``_on_close_frame``; a binary message (1003), a
        framing error (1002/1007/1009) or the rate passed (1008) to ``_violation``, and
        nothing more is read from this call. Then ``_wake`` if anything is queued or not open.
        On the backend leg, the audio deltas of one read fill the ring first, and what they
        made due leaves in one write to Twilio."""
    def _write(self, data: bytes) -> None:
        """Bytes to the transport as they are, unless it is closing (for the subclass)."""
    def _mask(self) -> bytes | None:
        """The next masking key on the client side, None on the server side (for the subclass)."""
    def send(self, message: bytes) -> None:
        """One text frame."""
    def send_frames(self, frames: bytes) -> None:
        """Frames already built, as they are."""
    def send_many(self, messages: list[bytes] | tuple[bytes, ...]) -> None:
        """Text frames, in one write."""
    @property
    def wire(self) -> int:
        """The backend protocol ``send_append`` speaks (``relay.backends.WIRE_*``): 0, Realtime's
        ``input_audio_buffer.append`` (the default); 1, GPT-Live's ``session.input_audio.append``;
        2, Deepgram's binary μ-law (binary messages are then read too, see ``data_received``);
        3, Gemini Live's ``realtimeInput.audio`` in PCM16 at 16 kHz. Set once, when the
        connection is opened for a backend; ValueError for any other value."""
    @wire.setter
    def wire(self, value: int) -> None: ...
    def send_append(self, payload: bytes) -> None:
        """The caller's base64 μ-law in the wire's append, as one frame: wires 0 and 1,
        ``{"type":<the append>,"audio":"<payload>"}`` as is; wire 2, the decoded μ-law as a
        binary frame; wire 3, the μ-law decoded to PCM16, upsampled to 16 kHz (one
        ``Resampler`` per connection, its state carried from frame to frame) and sent as
        ``{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"<base64>"}}}``.

        Raises:
            TypeError: on wires 2 and 3, ``payload`` is not ``bytes``.
            PayloadError: on wires 2 and 3, it is not padded standard base64 (nothing is sent).
        """

EV_NEW_ITEM: int
"""``on_event``: audio came for an item nobody announced (``add_item``); it is known now."""
EV_PLAYED: int
"""``on_event``: a mark echo heard an ended answer to its end, or no mark is left out."""
EV_AUDIO_ERROR: int
"""``on_event``: a delta was dropped (not base64, or more than the ring holds)."""

@disjoint_base
class ItemAudio:
    """One answer's audio, in bytes of 8 kHz μ-law; the core writes it, everyone else reads."""

    @property
    def item_id(self) -> str: ...
    @property
    def produced(self) -> int:
        """Bytes the backend produced for it."""
    @property
    def out(self) -> int:
        """Bytes sent to Twilio."""
    @property
    def marked(self) -> int:
        """``out`` at the last mark sent."""
    @property
    def played(self) -> int:
        """Bytes known played (the last mark echoed)."""
    @property
    def played_at(self) -> float | None:
        """Loop time of that echo."""
    @property
    def first_in_at(self) -> float | None:
        """Loop time its first audio came from the backend."""
    @property
    def first_out_at(self) -> float | None:
        """Loop time its first frame was sent."""
    @property
    def ended(self) -> bool:
        """No more audio will come for it."""
    @property
    def interrupted(self) -> bool: ...
    @property
    def heard_ms(self) -> int | None:
        """Where the caller cut it (``MediaCore.interrupt``); None otherwise."""
    @property
    def response_id(self) -> str:
        """The response it belongs to, from its first delta ("" until one names it)."""
    def __init__(self, item_id: str) -> None: ...

@disjoint_base
class MediaCore:
    """The per-frame half of a call, a leaf: the ring, the gap filler, the writer, the framing.

    Twilio ``media`` into the gap filler, then framed for the backend (or held, bounded, until
    ``open_gate``); mark echoes read in the same pass; audio deltas into the ring, paced out to
    Twilio within ``lead_ms`` with a mark every ``mark_frames`` frames and at the end of each
    answer, one write per pump. It knows answers only as ``ItemAudio`` byte counts. What
    changes for a turn is reported through ``on_event(kind, item_id, now)`` (never for a
    steady frame); ``on_wants_clock()`` asks for ``tick`` every 20 ms while audio is queued.
    """

    frames_in: int
    frames_out: int
    frames_held: int
    frames_dropped: int
    frames_filled: int
    frames_late: int
    marks_out: int
    """Counters (C ints in the compiled core), read-only."""
    on_wants_clock: Callable[[], None]
    on_event: Callable[[int, str, float], None]

    def __init__(
        self,
        twilio_out: Any,
        stream_sid: str,
        *,
        lead_ms: int,
        mark_frames: int,
        held_frames: int,
        max_gap_fill_ms: int,
        pace_ms: int = ...,
        preroll_frames: int = ...,
    ) -> None:
        """``preroll_frames``: how many of the last frames sent to the backend are kept, to be
        replayed to a session that takes over (``attach(replay=True)``); 0 (the default): none.
        ``pace_ms``: the shared clock's period (20 by default). Over 20, audio pushed while
        Twilio holds more than the period and a frame waits for ``tick``, which sends it with
        the frames due then, in one write; an answer's first frames still go at once."""
    @property
    def buffered(self) -> int:
        """Bytes of answer audio in the ring, not sent yet."""
    @property
    def marks_pending(self) -> int:
        """Marks sent and not echoed yet."""
    @property
    def gate_open(self) -> bool:
        """The current backend session confirmed its format: caller audio flows to it."""
    @property
    def current(self) -> ItemAudio | None:
        """The answer audio last came for."""
    def item(self, item_id: str) -> ItemAudio | None: ...
    def add_item(self, item_id: str) -> ItemAudio:
        """An answer the backend announced (idempotent)."""
    def state(self) -> dict[str, Any]:
        """Every field as plain values (tests compare the core with its twin)."""
    def audio_ms_to_time(self, audio_ms: int) -> float | None:
        """Loop time of ``audio_ms`` into the current backend session's input audio, if known."""
    def attach(self, backend: Any, replay: bool = False) -> None:
        """A new backend session (``send_append``): caller audio is held until ``open_gate``. With
        ``replay``, the pre-roll the previous session was sent goes first (a caller who began a line
        as the sessions changed is heard whole by the new one)."""
    def detach(self) -> None: ...
    def open_gate(self) -> None:
        """The session confirmed its format: held audio goes to it, then every frame."""
    def twilio_frame(self, message: bytes, now: float) -> bool:
        """A ``media`` or mark echo handled (True); False for anything else, or a message the
        reference parser rejects: handed up unparsed, for the owner's one parse."""
    def caller_audio(self, payload: bytes, timestamp: int, now: float) -> None: ...
    def mark(self, name: str, now: float) -> None:
        """A mark echo: the audio before it played, unless it was sent before a ``clear``."""
    def backend_frame(self, message: bytes, now: float) -> bool:
        """An audio delta handled (True: played, or dropped as an interrupted answer's). A delta
        with no item (GPT-Live's, or on wire 3 a Gemini Live message that is audio alone,
        :func:`parse_gemini_audio`) goes to the ``live_item``; while there is none, or it has
        ended (cut by ``interrupt``), the delta is handed up (False) for the owner to open one.
        On wire 2 every text message is handed up (its audio comes in binary frames)."""
    def backend_binary(self, payload: bytes, now: float) -> bool:
        """On wire 2, a binary frame of μ-law into the ``live_item`` (True), or handed up (False)
        while there is none or it has ended; False on any other wire. TypeError unless bytes."""
    @property
    def wire(self) -> int:
        """How the backend's audio is framed and encoded (``relay.backends.WIRE_*``, as
        ``WsCore.wire``): deltas of base64 μ-law (0, 1), binary μ-law (2), or base64 PCM16 at
        24 kHz (3), which goes through one ``Resampler(24000, 8000)`` and G.711 into the ring:
        its state is carried from chunk to chunk and reset by ``interrupt`` and ``attach``. A
        chunk whose PCM16 has an odd number of bytes is an audio error (``EV_AUDIO_ERROR``)."""
    @wire.setter
    def wire(self, value: int) -> None: ...
    def live_item(self, item_id: str) -> ItemAudio:
        """The item every delta with no item id goes to from now on: a segment of a GPT-Live
        session's one stream of audio (announced as ``add_item`` does, no ``EV_NEW_ITEM``)."""
    def agent_audio(self, item_id: str, payload: bytes, now: float, response_id: str = "") -> None:
        """An answer's audio. The first delta of an item of the response whose item the caller
        last cut (``interrupt``) ends that item unplayed: a reasoning model's answer after the
        preamble the caller talked over is never heard (BACKENDS §5.4)."""
    def end_item(self, item_id: str) -> None:
        """No more audio will come for the item."""
    def end_all(self) -> None:
        """No more audio will come for any item (the backend session is gone)."""
    def flush(self, now: float) -> None:
        """Send what is due, and the final mark of each ended answer that has none yet."""
    def tick(self, now: float) -> bool:
        """The shared clock: send the frames due. False: no more ticks wanted."""
    def interrupt(self, now: float) -> ItemAudio | None:
        """Barge-in: ``clear``, the ring and the answer's later deltas dropped, the answer cut at
        what the caller heard (``heard_ms``). None when nothing was left to hear."""
    def _pump(self, now: float) -> None:
        """Send every frame due at ``now`` with its marks, in one write."""
