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
