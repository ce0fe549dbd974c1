# cython: language_level=3
# Data layout of the compiled hot path's classes, part by part; the contract is in _fastpath.pyi.
# (WsCore and MediaCore are declared in their own parts, _wscore.pxi and _media.pxi.)

cimport cython
from libc.stdint cimport int16_t

ctypedef const unsigned char* cbuf  # a bytes object's content, read-only

# The audio format and its frame: relay/audio_format.py has the Python definition and why each
# value is what it is (a test holds the two equal). Exported by the module under these names.
cpdef enum:
    SAMPLE_RATE = 8000      # Hz: Twilio's audio/x-mulaw, and the backends' audio/pcmu
    BYTES_PER_MS = 8        # μ-law: one byte per sample
    FRAME_MS = 20           # the frame period, Twilio's and the playout's
    FRAME_BYTES = 160       # FRAME_MS * BYTES_PER_MS
    B64_FRAME_BYTES = 216   # FRAME_BYTES in padded base64: 4 * ceil(160 / 3)

# ---------------------------------------------------------------- _messages.pxi

cdef class TwilioWriter:
    cdef readonly object stream_sid  # object, not str: a str subclass is stored as given
    cdef bytes _media_prefix         # {"event":"media","streamSid":<sid>,"media":{"payload":"
    cdef bytes _mark_prefix          # {"event":"mark","streamSid":<sid>,"mark":{"name":
    cdef bytes _clear                # the whole clear message; built once, returned every time

# ---------------------------------------------------------------- _framing.pxi

cdef class FrameReader:
    cdef readonly bint masked           # True on the server side: every client frame is masked
    cdef readonly Py_ssize_t max_size   # largest message accepted, fragments included
    cdef bytes _buf                     # unread bytes live in _buf[_pos:]
    cdef Py_ssize_t _pos                # where they start
    cdef list _parts                    # fragments of the message being reassembled
    cdef int _part_op                   # its opcode, or -1 when none is in progress
    cdef Py_ssize_t _part_size          # its bytes so far, held to max_size
    cdef bytes _frame(self, int* fin_out, int* op_out)  # the next frame's payload, or None
    cdef bytes _next(self, int* op_out)                  # ``read`` without the tuple

# ---------------------------------------------------------------- _codec.pxi

@cython.final
cdef class Resampler:
    cdef readonly int src_rate       # the input rate, Hz
    cdef readonly int dst_rate       # the output rate, Hz
    cdef int _mode                   # RS_PASS, RS_UP or RS_DOWN
    cdef int _f                      # the factor L (up) or M (down)
    cdef const int16_t* _taps        # down: the low-pass filter (_TAPS2 or _TAPS3); else NULL
    cdef int _ntaps                  # K, its length (0 when not down)
    cdef int _prev                   # up: the previous input sample (0 before the stream)
    cdef int16_t* _buf               # down: x[M*m - (K-1)] ... for the next output m (zeros before)
    cdef Py_ssize_t _len             # samples in _buf
    cdef Py_ssize_t _cap             # room in _buf, in samples
    cdef int _reserve(self, Py_ssize_t need) except -1   # room for need samples in _buf
    cdef void _reset(self) noexcept                      # back to the start of a stream
    cdef bytes _up(self, cbuf p, Py_ssize_t n)           # n input samples at p, upsampled
    cdef bytes _down(self, cbuf p, Py_ssize_t n)         # n input samples at p, filtered, decimated
    cdef bytes _up_ulaw(self, cbuf u, Py_ssize_t n)      # n μ-law bytes at u, decoded and upsampled
    cdef bytes _down_ulaw(self, cbuf p, Py_ssize_t n)    # _down, encoded as μ-law

# ---------------------------------------------------------------- _playout.pxi

@cython.final
cdef class PlayoutRing:
    cdef readonly Py_ssize_t frame_bytes  # bytes per frame popped
    cdef readonly long long max_bytes     # most bytes ever buffered (and allocated)
    cdef readonly long long pushed        # bytes ever pushed
    cdef readonly long long sent          # bytes ever popped, padding excluded
    cdef readonly long long padded        # silence bytes that padded a last, partial frame
    cdef readonly long long dropped       # bytes thrown away by clear()
    cdef readonly long long heard         # bytes handed out (padding included) the ear has heard
    cdef long long _clock                 # the elapsed_ms of the last frames_due
    cdef unsigned char* _buf              # the ring: _len bytes from _head, wrapping at _cap
    cdef Py_ssize_t _cap                  # bytes allocated at _buf (0: none yet)
    cdef Py_ssize_t _head                 # the oldest buffered byte's index
    cdef Py_ssize_t _len                  # bytes buffered (``buffered``)
    cdef unsigned char* _scratch          # one frame, for frames that straddle the end or are padded
    cdef int _grow(self, Py_ssize_t need) except -1                       # room for need bytes
    cdef Py_ssize_t _push_raw(self, cbuf s, Py_ssize_t size) except -1    # ``push`` of base64 at s
    cdef Py_ssize_t _push_ulaw(self, cbuf s, Py_ssize_t m) except -1     # ``push_ulaw`` of m bytes at s
    cdef Py_ssize_t _room(self, Py_ssize_t m) except -1                   # room for m more; the new length
    cdef bytes _frame(self, Py_ssize_t take)                              # the next frame, encoded
    cdef void _frame_into(self, Py_ssize_t take, unsigned char* o) noexcept  # ... written at o
    cdef long long _due(self, long long elapsed, long long lead) noexcept  # ``frames_due``, checked args

@cython.final
cdef class GapFiller:
    cdef readonly long long frame_ms      # the frame period, ms
    cdef readonly long long max_fill_ms   # the longest gap filled with silence, ms
    cdef readonly long long frames        # frames accepted
    cdef readonly long long filled        # silence frames requested, in total
    cdef readonly long long dropped       # duplicates and late frames
    cdef readonly long long capped        # gaps longer than max_fill_ms, filled only up to it
    cdef long long _cap                   # most silence frames for one gap
    cdef long long _tol                   # jitter accepted either side of a slot
    cdef long long _next                  # timestamp of the next slot on the grid; -1 before the first frame
    cdef long long _accept(self, long long ts) noexcept  # ``accept``, checked arg

# ---------------------------------------------------------------- _wscore.pxi

cdef class MediaCore

cdef class WsCore:
    cdef readonly object transport        # the asyncio transport (the shell closes or aborts it)
    cdef readonly FrameReader _reader
    cdef readonly bint client             # every frame we send is masked; every frame we read must not be
    cdef long long _max_rate              # messages per second allowed from the peer (0: no limit)
    cdef double _window_start             # the current one-second window's start (clock time)
    cdef long long _window_count          # messages in it
    cdef object _clock                    # the loop's time()
    cdef readonly object messages         # deque of text messages left for ``recv``, in order
    cdef bytes _masks                     # random masking keys, 4 bytes each, used from _mask_at on
    cdef Py_ssize_t _mask_at
    cdef public object state              # "open", then the shell's "closing" / "closed"
    cdef MediaCore _media                 # the routed call's core, or None
    cdef int _leg                         # LEG_TWILIO or LEG_BACKEND: which of its entries
    cdef object _transport_write          # the transport's bound methods, looked up once
    cdef object _transport_is_closing
    cdef int _wire                        # the backend's wire (``relay.backends.WIRE_*``)
    cdef bytes _append                    # the wire's append up to its audio
    cdef bytes _suffix                    # and after it
    cdef Resampler _up                    # WIRE_PCM16: the caller's audio, 8 -> 16 kHz; else None
    cdef int _read(self, object data, double* now_out) except -1
    cdef bytes _next_mask(self)
    cdef const char* _mask_ptr(self) except NULL
    cdef int _write_c(self, bytes data) except -1
    cdef int _send_frames_c(self, bytes frames) except -1
    cdef int _send_append_c(self, cbuf payload, Py_ssize_t size) except -1

# ---------------------------------------------------------------- _media.pxi

cdef class ItemAudio:
    cdef readonly object item_id
    cdef readonly long long produced      # bytes the backend produced for it
    cdef readonly long long out           # bytes sent to Twilio
    cdef readonly long long marked        # ``out`` at the last mark sent
    cdef readonly long long played        # bytes known played (the last mark echoed)
    cdef readonly object played_at        # loop time of that echo, or None
    cdef readonly object first_in_at      # loop time its first audio came from the backend, or None
    cdef readonly object first_out_at     # loop time its first frame was sent, or None
    cdef readonly object heard_ms         # where the caller cut it, or None
    cdef readonly bint ended              # no more audio will come for it
    cdef readonly bint interrupted
    cdef readonly object response_id      # the response it belongs to ("" until a delta names it)

cdef class MediaCore:
    cdef object _twilio                   # the Twilio leg (a WsCore: written to in C)
    cdef TwilioWriter _writer
    cdef long long _lead_ms               # audio queued at Twilio ahead of the ear, at most
    cdef long long _mark_frames           # a mark every this many frames
    cdef long long _pace_ms               # the shared clock's period: over 20, audio waits for it
    cdef public object on_wants_clock     # hook: ticks wanted (called once until a tick says no)
    cdef public object on_event           # hook: on_event(kind, item_id, now), a turn changed
    cdef readonly long long frames_in, frames_out, frames_held, frames_dropped, frames_filled, frames_late
    cdef readonly long long marks_out
    # inbound
    cdef object _backend                  # the backend leg (send_append), or None
    cdef bint _gate_open                  # it confirmed its format: audio flows, not held
    cdef object _held                     # deque of (payload, timestamp) held while the gate is shut
    cdef object _preroll                  # deque of the last (payload, timestamp) sent, or None: replayed on a take-over
    cdef GapFiller _gaps
    cdef object _epoch                    # loop time of Twilio timestamp 0, or None
    cdef object _ts0                      # Twilio timestamp of the backend session's audio 0, or None
    # outbound
    cdef PlayoutRing _ring
    cdef object _segments                 # deque of [ItemAudio, bytes in the ring], oldest first
    cdef object _t0                       # loop time of the first frame sent (the ring's clock 0)
    cdef long long _since_mark            # frames since the last mark
    cdef bint _clocked                    # ticks were asked for and are still wanted
    cdef bint _batch                      # a read of the backend leg is in progress: deltas only fill the ring
    cdef bint _batch_due                  # and some did: the read's end sends what is due (_release)
    cdef ItemAudio _current               # the answer audio last came for
    cdef ItemAudio _live                  # where deltas with no item go (GPT-Live), or None
    cdef int _wire                        # the backend's wire: how its audio is encoded
    cdef Resampler _down                  # WIRE_PCM16: the agent's audio, 24 -> 8 kHz; else None
    cdef dict _items                      # item id -> ItemAudio
    cdef set _dropped                     # interrupted items: their late deltas are dropped
    cdef object _cut_response             # the response of the last item cut: its later items are dropped
    cdef dict _marks                      # name -> (ItemAudio, out at the mark), in the order sent
    cdef set _cleared                     # sent before a clear: their echoes mean "cleared"
    cdef ItemAudio _fast_item             # the answer the last delta went to, and its id as bytes:
    cdef bytes _fast_id                   # the next delta of the same item skips the lookups
    cdef bint _twilio_frame(self, object message, double now) except -1
    cdef int _caller_audio(self, cbuf p, Py_ssize_t n, object payload, long long ts, double now) except -1
    cdef int _upstream(self, cbuf p, Py_ssize_t n, object payload, long long ts) except -1
    cdef int _mark(self, object name, double now) except -1
    cdef bint _backend_frame(self, object message, double now) except -1
    cdef int _agent_push(self, ItemAudio item, cbuf s, Py_ssize_t n, double now) except -1
    cdef bint _live_push(self, cbuf s, Py_ssize_t n, double now) except -1
    cdef bint _backend_binary(self, bytes payload, double now) except -1
    cdef Py_ssize_t _push_audio(self, cbuf s, Py_ssize_t n) except -1
    cdef str _mark_name(self, ItemAudio item)
    cdef long long _heard(self, ItemAudio item, double now)
    cdef ItemAudio _being_heard(self, double now)
    cdef int _pump_c(self, double now) except -1
    cdef bint _defer(self, double now) except -1
    cdef int _release(self, double now) except -1
