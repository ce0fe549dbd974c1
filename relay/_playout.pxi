# Playout ring, inbound gap filler, μ-law silence; included into _fastpath.pyx.
# Contract: the "Playout" section of _fastpath.pyi; oracle: relay/_playout_py.py.
#
# The ring is one growable circular C buffer: push() validates the base64 with the module's
# _b64_len (the check b64_decoded_len makes) and decodes it straight into the ring, wrapping at
# the end; pop() encodes each frame straight from the ring into its returned bytes object
# (a frame that straddles the end, or the padded last one, goes through a one-frame scratch).
# Counters and clocks are C integers; the only objects made are the ones returned.
# Argument checks give the oracle's answer for every value: an exact int in range is read in C,
# anything else is compared as a Python int, as the oracle does, so a huge or negative value
# raises the oracle's ValueError, never OverflowError.

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint16_t, uint32_t

cdef enum:
    PO_MIN_CAPACITY = 4096   # first allocation; doubles from there, never above max_bytes
    PO_SILENCE = 0xFF        # μ-law (positive) zero
    PO_MAX_FRAME = 1 << 20   # frame_bytes / frame_ms ceiling

cdef long long PO_MAX_BYTES = (<long long>1) << 40  # max_bytes / max_fill_ms ceiling
cdef long long PO_MAX_MS = (<long long>1) << 53  # timestamps, elapsed and lead times

cdef const char* _PO_ENC = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Decoding: byte -> its 6 bits already shifted to their place in the group's 24 bits, one
# table per position ('=' and anything else -> 0), so a group is four loads and three ORs.
cdef uint32_t _PO_DEC0[256]
cdef uint32_t _PO_DEC1[256]
cdef uint32_t _PO_DEC2[256]
cdef uint32_t _PO_DEC3[256]
# Encoding: 12 bits -> their two base64 bytes, so a group is two loads.
cdef uint16_t _PO_ENC2[4096]


cdef void _init_playout() noexcept:
    cdef int i
    cdef unsigned char* e
    memset(_PO_DEC0, 0, sizeof(_PO_DEC0))
    memset(_PO_DEC1, 0, sizeof(_PO_DEC1))
    memset(_PO_DEC2, 0, sizeof(_PO_DEC2))
    memset(_PO_DEC3, 0, sizeof(_PO_DEC3))
    for i in range(64):
        _PO_DEC0[<unsigned char>_PO_ENC[i]] = <uint32_t>i << 18
        _PO_DEC1[<unsigned char>_PO_ENC[i]] = <uint32_t>i << 12
        _PO_DEC2[<unsigned char>_PO_ENC[i]] = <uint32_t>i << 6
        _PO_DEC3[<unsigned char>_PO_ENC[i]] = <uint32_t>i
    for i in range(4096):  # stored as the two bytes in memory order, whatever the host's order
        e = <unsigned char*>&_PO_ENC2[i]
        e[0] = <unsigned char>_PO_ENC[i >> 6]
        e[1] = <unsigned char>_PO_ENC[i & 63]


_init_playout()


cdef long long _po_int(object value, str name, long long lo, long long hi) except -1:
    """The oracle's _int: TypeError unless an int, ValueError outside [lo, hi]."""
    cdef int overflow = 0
    cdef long long v
    if type(value) is int:  # the common case, in C; the rest compares as the oracle does
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow and lo <= v <= hi:
            return v
    elif not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < lo or value > hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, not {value}")
    return value


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _po_dec(cbuf s, Py_ssize_t g, unsigned char* o) noexcept nogil:
    """Decode g groups of 4 base64 bytes (already validated) to 3 * g bytes at o."""
    cdef Py_ssize_t i
    cdef uint32_t w
    for i in range(g):
        w = _PO_DEC0[s[0]] | _PO_DEC1[s[1]] | _PO_DEC2[s[2]] | _PO_DEC3[s[3]]
        o[0] = <unsigned char>(w >> 16)
        o[1] = <unsigned char>(w >> 8)
        o[2] = <unsigned char>w
        s += 4
        o += 3


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _po_enc(cbuf p, Py_ssize_t n, unsigned char* o) noexcept nogil:
    """Padded standard base64 of p[0:n] to o (4 * ceil(n / 3) bytes)."""
    cdef Py_ssize_t i = 0
    cdef uint32_t w
    while i + 3 <= n:
        w = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8) | p[i + 2]
        memcpy(o, &_PO_ENC2[w >> 12], 2)
        memcpy(o + 2, &_PO_ENC2[w & 4095], 2)
        i += 3
        o += 4
    if n - i == 1:
        w = <uint32_t>p[i] << 16
        o[0] = _PO_ENC[w >> 18]
        o[1] = _PO_ENC[(w >> 12) & 63]
        o[2] = EQ
        o[3] = EQ
    elif n - i == 2:
        w = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8)
        o[0] = _PO_ENC[w >> 18]
        o[1] = _PO_ENC[(w >> 12) & 63]
        o[2] = _PO_ENC[(w >> 6) & 63]
        o[3] = EQ


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _po_dec_ring(unsigned char* buf, Py_ssize_t cap, Py_ssize_t pos, cbuf s,
                       Py_ssize_t m) noexcept nogil:
    """Decode validated base64 s (m decoded bytes) into the ring buf[0:cap] from pos on,
    wrapping at cap. The caller guarantees m bytes of free room from pos."""
    cdef Py_ssize_t g = m // 3, r = m - 3 * (m // 3), k
    cdef unsigned char t[3]
    cdef int j
    k = (cap - pos) // 3  # whole groups before the end
    if k > g:
        k = g
    _po_dec(s, k, buf + pos)
    s += 4 * k
    pos += 3 * k
    g -= k
    if g > 0:  # this group straddles the end (or starts right at it): the rest is contiguous
        _po_dec(s, 1, t)
        s += 4
        g -= 1
        for j in range(3):
            if pos == cap:
                pos = 0
            buf[pos] = t[j]
            pos += 1
        if pos == cap:
            pos = 0
        _po_dec(s, g, buf + pos)
        s += 4 * g
        pos += 3 * g
    if r:  # the padded last group: 1 or 2 bytes
        _po_dec(s, 1, t)
        for j in range(r):
            if pos == cap:
                pos = 0
            buf[pos] = t[j]
            pos += 1


@cython.final
cdef class PlayoutRing:
    # Fields and C methods: declared in _fastpath.pxd.

    def __cinit__(self):
        # Usable (as the defaults) even if __init__ is skipped: PlayoutRing.__new__(PlayoutRing).
        self.frame_bytes, self.max_bytes = FRAME_BYTES, 8_000_000
        self._scratch = <unsigned char*>PyMem_Malloc(FRAME_BYTES)
        if self._scratch == NULL:
            raise MemoryError()

    def __init__(self, frame_bytes=FRAME_BYTES, max_bytes=8_000_000):
        cdef Py_ssize_t fb = <Py_ssize_t>_po_int(frame_bytes, "frame_bytes", 1, PO_MAX_FRAME)
        cdef long long mx = _po_int(max_bytes, "max_bytes", 0, PO_MAX_BYTES)
        cdef unsigned char* scratch = <unsigned char*>PyMem_Malloc(<size_t>fb)
        if scratch == NULL:
            raise MemoryError()
        PyMem_Free(self._buf)  # __init__ again starts afresh, as the oracle's does
        PyMem_Free(self._scratch)
        self._buf, self._cap, self._head, self._len = NULL, 0, 0, 0
        self._scratch = scratch
        self.frame_bytes, self.max_bytes = fb, mx
        self.pushed = self.sent = self.padded = self.dropped = self.heard = self._clock = 0

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._scratch)

    @property
    def buffered(self):
        return self._len

    @property
    def capacity(self):
        return self._cap

    cdef int _grow(self, Py_ssize_t need) except -1:
        """Make room for need bytes (need <= max_bytes); the content moves to the front."""
        cdef Py_ssize_t cap = self._cap if self._cap else PO_MIN_CAPACITY, first
        cdef unsigned char* nb
        while cap < need:
            cap *= 2
        if cap > self.max_bytes:
            cap = <Py_ssize_t>self.max_bytes
        nb = <unsigned char*>PyMem_Malloc(<size_t>cap)
        if nb == NULL:
            raise MemoryError()
        first = self._cap - self._head
        if first > self._len:
            first = self._len
        if self._len:
            memcpy(nb, self._buf + self._head, <size_t>first)
            memcpy(nb + first, self._buf, <size_t>(self._len - first))
        PyMem_Free(self._buf)
        self._buf, self._cap, self._head = nb, cap, 0
        return 0

    def push(self, b64):
        if type(b64) is not bytes:
            raise TypeError(f"push() takes bytes, not {type(b64).__name__}")
        return self._push_raw(<cbuf>PyBytes_AS_STRING(b64), PyBytes_GET_SIZE(b64))

    def push_ulaw(self, ulaw):
        if type(ulaw) is not bytes:
            raise TypeError(f"push_ulaw() takes bytes, not {type(ulaw).__name__}")
        return self._push_ulaw(<cbuf>PyBytes_AS_STRING(ulaw), PyBytes_GET_SIZE(ulaw))

    cdef Py_ssize_t _push_ulaw(self, cbuf s, Py_ssize_t m) except -1:
        """``push_ulaw`` of the m bytes at s (a binary frame's μ-law, or audio transcoded to it)."""
        cdef Py_ssize_t need = self._room(m), tail, first
        if m:
            tail = self._head + self._len
            if tail >= self._cap:
                tail -= self._cap
            first = self._cap - tail
            if first > m:
                first = m
            memcpy(self._buf + tail, s, <size_t>first)
            memcpy(self._buf, s + first, <size_t>(m - first))
            self._len = need
            self.pushed += m
        return m

    cdef Py_ssize_t _room(self, Py_ssize_t m) except -1:
        """Room for m more bytes (grown if need be); returns the length they make."""
        cdef Py_ssize_t need = self._len + m
        if need > self.max_bytes:
            raise ProtocolError("playout buffer full")
        if need > self._cap:
            self._grow(need)
        return need

    cdef Py_ssize_t _push_raw(self, cbuf s, Py_ssize_t size) except -1:
        """``push`` of base64 text at s (size bytes), decoded straight from the message it sits in."""
        cdef Py_ssize_t m, need, tail
        m = _b64_len(s, size)
        if m < 0:
            raise PayloadError("payload is not padded standard base64")
        need = self._room(m)
        if m:
            tail = self._head + self._len
            if tail >= self._cap:
                tail -= self._cap
            _po_dec_ring(self._buf, self._cap, tail, s, m)
            self._len = need
            self.pushed += m
        return m

    cdef bytes _frame(self, Py_ssize_t take):
        """Encode the next frame (take <= frame_bytes bytes, padded with silence) and drop it."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, 4 * ((self.frame_bytes + 2) // 3))
        self._frame_into(take, <unsigned char*>PyBytes_AS_STRING(out))
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _frame_into(self, Py_ssize_t take, unsigned char* o) noexcept:
        """``_frame`` written at o (4 * ceil(frame_bytes / 3) bytes of base64), no bytes object."""
        cdef Py_ssize_t fb = self.frame_bytes, first
        cdef cbuf src
        if take == fb and self._head + fb <= self._cap:
            src = self._buf + self._head
        else:
            first = self._cap - self._head
            if first > take:
                first = take
            memcpy(self._scratch, self._buf + self._head, <size_t>first)
            memcpy(self._scratch + first, self._buf, <size_t>(take - first))
            memset(self._scratch + take, PO_SILENCE, <size_t>(fb - take))
            src = self._scratch
        _po_enc(src, fb, o)
        self._head += take
        if self._head >= self._cap:
            self._head -= self._cap
        self._len -= take
        self.sent += take
        self.padded += fb - take
        if self._len == 0:
            self._head = 0  # keep an empty ring contiguous from the start

    def pop(self, n=1, *, bint final=False):
        cdef Py_ssize_t whole, k, i
        cdef bint more
        cdef list out = []
        if not isinstance(n, int):
            raise TypeError(f"pop() n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError("pop() n must be >= 0")
        whole = self._len // self.frame_bytes
        more = n > whole
        k = whole if more else <Py_ssize_t>n
        for i in range(k):
            out.append(self._frame(self.frame_bytes))
        if final and more and self._len:
            out.append(self._frame(self._len))
        if self._len == 0:
            self._head = 0  # keep an empty ring contiguous from the start
        return out

    def clear(self):
        cdef Py_ssize_t n = self._len
        self._len = self._head = 0
        self.dropped += n
        self.heard = self.sent + self.padded  # Twilio's clear drops its queue too
        return n

    def frames_due(self, elapsed_ms, lead_ms):
        return self._due(_po_int(elapsed_ms, "elapsed_ms", 0, PO_MAX_MS), _po_int(lead_ms, "lead_ms", 0, PO_MAX_MS))

    cdef long long _due(self, long long elapsed, long long lead) noexcept:
        cdef long long out = self.sent + self.padded, room, due, whole
        if elapsed > self._clock:
            room = (elapsed - self._clock) * BYTES_PER_MS  # how much the ear heard since
            self.heard = out if room >= out - self.heard else self.heard + room
        self._clock = elapsed
        room = lead * BYTES_PER_MS - (out - self.heard)
        if room < self.frame_bytes:
            return 0
        due = room // self.frame_bytes
        whole = self._len // self.frame_bytes
        return due if due < whole else whole

    def __repr__(self):
        return f"PlayoutRing(frame_bytes={self.frame_bytes}, max_bytes={self.max_bytes})"


@cython.final
cdef class GapFiller:
    # Fields and C methods: declared in _fastpath.pxd.

    def __cinit__(self):
        # The defaults, as __init__ sets them, even if it is skipped.
        self.frame_ms, self.max_fill_ms, self._next = FRAME_MS, 1000, -1
        self._cap, self._tol = 1000 // FRAME_MS, FRAME_MS // 2

    def __init__(self, frame_ms=FRAME_MS, max_fill_ms=1000):
        cdef long long f = _po_int(frame_ms, "frame_ms", 1, PO_MAX_FRAME)
        cdef long long mf = _po_int(max_fill_ms, "max_fill_ms", 0, PO_MAX_BYTES)
        self.frame_ms, self.max_fill_ms = f, mf
        self._cap, self._tol, self._next = mf // f, f // 2, -1
        self.frames = self.filled = self.dropped = self.capped = 0

    def accept(self, timestamp_ms):
        return self._accept(_po_int(timestamp_ms, "timestamp_ms", 0, PO_MAX_MS))

    @cython.cdivision(True)
    cdef long long _accept(self, long long ts) noexcept:
        cdef long long f = self.frame_ms, d, k
        if self._next < 0:
            self._next = ts + f
            self.frames += 1
            return 0
        d = ts - self._next
        if d < -self._tol:
            self.dropped += 1
            return -1
        # The nearest slot ahead (ties: the earlier). d - tol > 0 here, so C's division is
        # the floor and this is the ceiling of (d - tol) / f.
        k = 0 if d <= self._tol else (d - self._tol + f - 1) // f
        self._next += (k + 1) * f
        if k > self._cap:
            k = self._cap
            self.capped += 1
        self.frames += 1
        self.filled += k
        return k

    def __repr__(self):
        return f"GapFiller(frame_ms={self.frame_ms}, max_fill_ms={self.max_fill_ms})"


def silence_b64(frame_bytes=FRAME_BYTES):
    cdef Py_ssize_t n = <Py_ssize_t>_po_int(frame_bytes, "frame_bytes", 0, PO_MAX_FRAME), g
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 4 * ((n + 2) // 3))
    cdef char* o = PyBytes_AS_STRING(out)
    g = n // 3
    memset(o, 47, <size_t>(4 * g))  # 0xFFFFFF is "////"
    if n - 3 * g == 1:
        memcpy(o + 4 * g, b"/w==", 4)
    elif n - 3 * g == 2:
        memcpy(o + 4 * g, b"//8=", 4)
    return out
