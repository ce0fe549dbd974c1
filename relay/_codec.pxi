# G.711 μ-law ↔ PCM16 and streaming resampling; included into _fastpath.pyx.
# Contract: the "Codec" section of _fastpath.pyi; oracle: relay/_codec_py.py.
#
# Integer arithmetic only, the same formulas as the oracle, so results agree bit for bit.
# Every function writes straight into one preallocated bytes object; samples are read and
# written as explicit little-endian byte pairs, so the host's byte order does not matter.

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int16_t, int32_t, int64_t, uint16_t
from libc.string cimport memmove

from relay._codec_py import _DOWN_TAPS as _py_down_taps  # one source for the filter design

# ---------------------------------------------------------------- G.711 μ-law tables

cdef unsigned char _ULAW_DEC[512]     # code -> its PCM16 sample, as 2 little-endian bytes
cdef unsigned char _ULAW_ENC[16384]   # (sample as uint16) >> 2 -> code


cdef void _init_ulaw() noexcept:
    cdef int code, u, t, v, mask, seg, i
    cdef int seg_end[8]
    seg_end[:] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
    for code in range(256):  # ITU-T G.711, as audioop's st_ulaw2linear16
        u = ~code & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
        v = 0x84 - t if u & 0x80 else t - 0x84
        _ULAW_DEC[2 * code] = <unsigned char>(v & 0xFF)
        _ULAW_DEC[2 * code + 1] = <unsigned char>((v >> 8) & 0xFF)
    for i in range(16384):  # as audioop's st_14linear2ulaw on the 14-bit sample
        v = i - 16384 if i & 0x2000 else i
        if v < 0:
            v, mask = -v, 0x7F
        else:
            mask = 0xFF
        if v > 8159:
            v = 8159
        v += 0x84 >> 2
        seg = 0
        while seg < 8 and v > seg_end[seg]:
            seg += 1
        if seg >= 8:
            _ULAW_ENC[i] = <unsigned char>(0x7F ^ mask)
        else:
            _ULAW_ENC[i] = <unsigned char>(((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask)


_init_ulaw()


cdef inline int _codec_need_bytes(object data, str what) except -1:
    if type(data) is not bytes:
        raise TypeError(f"{what} takes bytes, not {type(data).__name__}")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def ulaw_to_pcm16(data):
    cdef Py_ssize_t i, n
    cdef cbuf p
    cdef unsigned char* o
    cdef const unsigned char* t
    cdef bytes out
    _codec_need_bytes(data, "ulaw_to_pcm16()")
    n = PyBytes_GET_SIZE(data)
    p = <cbuf>PyBytes_AS_STRING(data)
    out = PyBytes_FromStringAndSize(NULL, 2 * n)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(n):
        t = &_ULAW_DEC[2 * p[i]]
        o[2 * i] = t[0]
        o[2 * i + 1] = t[1]
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def pcm16_to_ulaw(data):
    cdef Py_ssize_t i, n
    cdef cbuf p
    cdef unsigned char* o
    cdef bytes out
    _codec_need_bytes(data, "pcm16_to_ulaw()")
    n = PyBytes_GET_SIZE(data)
    if n & 1:
        raise ValueError("PCM16 data must have an even number of bytes")
    n >>= 1
    p = <cbuf>PyBytes_AS_STRING(data)
    out = PyBytes_FromStringAndSize(NULL, n)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(n):
        o[i] = _ULAW_ENC[((<unsigned int>p[2 * i + 1] << 8) | p[2 * i]) >> 2]
    return out


# ---------------------------------------------------------------- streaming resampler

cdef enum:
    RS_PASS = 0
    RS_UP = 1
    RS_DOWN = 2
    RS_MAX_TAPS = 49

cdef int16_t _TAPS2[RS_MAX_TAPS]  # decimation by 2 (16 kHz -> 8 kHz), from the oracle
cdef int16_t _TAPS3[RS_MAX_TAPS]  # decimation by 3 (24 kHz -> 8 kHz)
cdef int _NTAPS2 = len(_py_down_taps[2])
cdef int _NTAPS3 = len(_py_down_taps[3])


def _init_taps():
    for taps in _py_down_taps.values():  # linear phase: odd length, symmetric (the delay is (K-1)/2)
        if not (len(taps) <= RS_MAX_TAPS and len(taps) % 2 == 1 and tuple(taps) == tuple(taps)[::-1]):
            raise ImportError("resampler taps must be symmetric, odd in length, at most 49")
    for k in range(_NTAPS2):
        _TAPS2[k] = _py_down_taps[2][k]
    for k in range(_NTAPS3):
        _TAPS3[k] = _py_down_taps[3][k]


_init_taps()
del _init_taps


cdef inline int _sample(cbuf p, Py_ssize_t i) noexcept nogil:
    """The i-th little-endian int16 of p."""
    return <int16_t>(<uint16_t>((<unsigned int>p[2 * i + 1] << 8) | p[2 * i]))


cdef inline void _put(unsigned char* o, Py_ssize_t i, int v) noexcept nogil:
    o[2 * i] = <unsigned char>(v & 0xFF)
    o[2 * i + 1] = <unsigned char>((v >> 8) & 0xFF)


@cython.final
cdef class Resampler:
    # Fields and C methods: declared in _fastpath.pxd.

    def __init__(self, src_rate, dst_rate):
        if not isinstance(src_rate, int) or not isinstance(dst_rate, int):
            raise TypeError("Resampler() rates must be int")
        if src_rate == dst_rate and src_rate in (8000, 16000, 24000):
            mode, f = RS_PASS, 1
        elif src_rate == 8000 and dst_rate in (16000, 24000):
            mode, f = RS_UP, dst_rate // 8000
        elif dst_rate == 8000 and src_rate in (16000, 24000):
            mode, f = RS_DOWN, src_rate // 8000
        else:
            raise ValueError(f"unsupported resampling {src_rate} -> {dst_rate} Hz "
                             "(supported: 8000 <-> 16000, 8000 <-> 24000, or the same rate)")
        self.src_rate, self.dst_rate, self._mode, self._f = src_rate, dst_rate, mode, f
        self._taps, self._ntaps = NULL, 0
        if mode == RS_DOWN:
            if f == 2:
                self._taps, self._ntaps = &_TAPS2[0], _NTAPS2
            else:
                self._taps, self._ntaps = &_TAPS3[0], _NTAPS3
            self._reserve(self._ntaps + 1024)
        self._reset()

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef int16_t* nb
        if need <= self._cap:
            return 0
        if need < 2 * self._cap:
            need = 2 * self._cap
        nb = <int16_t*>PyMem_Realloc(self._buf, <size_t>need * sizeof(int16_t))
        if nb == NULL:
            raise MemoryError()
        self._buf, self._cap = nb, need
        return 0

    cdef void _reset(self) noexcept:
        cdef Py_ssize_t i
        self._prev = 0
        self._len = self._ntaps - 1 if self._ntaps > 0 else 0
        for i in range(self._len):
            self._buf[i] = 0

    def process(self, chunk):
        cdef Py_ssize_t n
        _codec_need_bytes(chunk, "process()")
        n = PyBytes_GET_SIZE(chunk)
        if n & 1:
            raise ValueError("PCM16 chunk must have an even number of bytes")
        if self._mode == RS_UP:
            return self._up(<cbuf>PyBytes_AS_STRING(chunk), n >> 1)
        if self._mode == RS_DOWN:
            return self._down(<cbuf>PyBytes_AS_STRING(chunk), n >> 1)
        return chunk

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef bytes _up(self, cbuf p, Py_ssize_t n):
        # y[L*n + j] = round(x[n-1] + (x[n] - x[n-1]) * (j + 1) / L), ties up; y[L*n + L-1] = x[n].
        # Numerators are offset by L * 32768 to be >= 0, so C's division is the floor.
        cdef bytes out = PyBytes_FromStringAndSize(NULL, 2 * n * self._f)
        cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
        cdef int a = self._prev, b
        cdef Py_ssize_t i
        if self._f == 2:
            for i in range(n):
                b = _sample(p, i)
                _put(o, 2 * i, ((a + b + 1 + 65536) >> 1) - 32768)
                _put(o, 2 * i + 1, b)
                a = b
        else:
            for i in range(n):
                b = _sample(p, i)
                _put(o, 3 * i, (2 * a + b + 1 + 98304) / 3 - 32768)
                _put(o, 3 * i + 1, (a + 2 * b + 1 + 98304) / 3 - 32768)
                _put(o, 3 * i + 2, b)
                a = b
        self._prev = a
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bytes _down(self, cbuf p, Py_ssize_t n):
        # y[m] = clamp(floor((sum_k h[k] * x[M*m - k] + 2**14) / 2**15)), x[<0] = 0; output m is
        # due once input sample M*m has arrived. sum(|h|) < 2**16, so int32 cannot overflow.
        cdef Py_ssize_t i, s, m, nout, total
        cdef int k, nt = self._ntaps, f = self._f
        cdef const int16_t* h = self._taps
        cdef const int16_t* w
        cdef int32_t acc
        cdef int64_t v
        cdef bytes out
        cdef unsigned char* o
        self._reserve(self._len + n)
        for i in range(n):
            self._buf[self._len + i] = <int16_t>_sample(p, i)
        total = self._len + n
        nout = (total - nt + f) // f
        out = PyBytes_FromStringAndSize(NULL, 2 * nout)
        o = <unsigned char*>PyBytes_AS_STRING(out)
        for m in range(nout):
            w = self._buf + m * f
            acc = 0
            for k in range(nt):  # one straight pass: the compiler vectorises it (int16 x int16 -> int32)
                acc += <int32_t>h[k] * <int32_t>w[k]
            v = ((<int64_t>acc + 16384 + (<int64_t>1 << 40)) >> 15) - (<int64_t>1 << 25)
            if v > 32767:
                v = 32767
            elif v < -32768:
                v = -32768
            _put(o, m, <int>v)
        s = nout * f
        memmove(self._buf, self._buf + s, <size_t>(total - s) * sizeof(int16_t))
        self._len = total - s
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bytes _up_ulaw(self, cbuf u, Py_ssize_t n):
        cdef bytes pcm = PyBytes_FromStringAndSize(NULL, 2 * n)
        cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(pcm)
        cdef const unsigned char* t
        cdef Py_ssize_t i
        for i in range(n):
            t = &_ULAW_DEC[2 * u[i]]
            o[2 * i] = t[0]
            o[2 * i + 1] = t[1]
        return self._up(<cbuf>o, n)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bytes _down_ulaw(self, cbuf p, Py_ssize_t n):
        cdef bytes pcm = self._down(p, n)
        cdef Py_ssize_t i, k = PyBytes_GET_SIZE(pcm) >> 1
        cdef cbuf q = <cbuf>PyBytes_AS_STRING(pcm)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, k)
        cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
        for i in range(k):
            o[i] = _ULAW_ENC[((<unsigned int>q[2 * i + 1] << 8) | q[2 * i]) >> 2]
        return out

    def flush(self):
        # Nothing is ever held back (each output is returned by the call that completes it):
        # flush() ends the stream, and the next one starts from silence.
        self._reset()
        return b""

    def __repr__(self):
        return f"Resampler({self.src_rate}, {self.dst_rate})"
