# WebSocket framing (RFC 6455): the reader, the frame builder, and the header and mask writers
# the per-frame cores build their writes with; included into _fastpath.pyx.
# Contract: _fastpath.pyi; oracle: relay/_framing_py.py.

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


cdef inline bint _is_control(int opcode) noexcept nogil:
    return opcode == 0x8 or opcode == 0x9 or opcode == 0xA


cdef inline bint _known(int opcode) noexcept nogil:
    return 0 <= opcode <= 0x2 or _is_control(opcode)


cdef inline bint _valid_close_code(int code) noexcept nogil:
    # RFC 6455 §7.4: codes a peer may send (1004-1006 and 1015 are reserved, never sent).
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _mask_copy(unsigned char* out, const unsigned char* src, Py_ssize_t n,
                            const unsigned char* key) noexcept nogil:
    """out = src XOR the 4-byte key, repeated (out may be src): eight bytes at a time."""
    cdef Py_ssize_t i = 0
    cdef uint64_t w, k8
    cdef unsigned char k[8]
    memcpy(k, key, 4)
    memcpy(k + 4, key, 4)
    memcpy(&k8, k, 8)
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k8
        memcpy(out + i, &w, 8)
        i += 8
    while i < n:
        out[i] = src[i] ^ key[i & 3]
        i += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _check_utf8(const unsigned char* p, Py_ssize_t n, str what) except -1:
    cdef Py_ssize_t i = 0, j
    cdef uint64_t w
    while i + 8 <= n:  # ASCII, the whole of a media message, eight bytes at a time
        memcpy(&w, p + i, 8)
        if w & 0x8080808080808080ULL:
            break
        i += 8
    for j in range(i, n):
        if p[j] >= 0x80:
            try:
                PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
            except UnicodeDecodeError:
                raise FrameError(1007, f"{what} is not valid UTF-8") from None
            return 0
    return 0


def build_frame(opcode, payload, mask=None):
    cdef Py_ssize_t n, head
    cdef int op
    cdef bytes out
    cdef unsigned char* o
    cdef int bit
    if type(payload) is not bytes:
        raise TypeError("payload must be bytes")
    if type(opcode) is not int or opcode not in (1, 2, 8, 9, 10):
        raise ValueError(f"cannot build a frame with opcode {opcode!r}")
    op = opcode
    n = PyBytes_GET_SIZE(payload)
    if _is_control(op) and n > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    if mask is not None and (type(mask) is not bytes or PyBytes_GET_SIZE(mask) != 4):
        raise ValueError("mask must be 4 bytes")
    bit = 0x80 if mask is not None else 0
    head = 2 if n < 126 else 4 if n < 65536 else 10
    out = PyBytes_FromStringAndSize(NULL, head + (4 if bit else 0) + n)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0] = 0x80 | op
    if n < 126:
        o[1] = bit | n
    elif n < 65536:
        o[1] = bit | 126
        o[2] = (n >> 8) & 0xFF
        o[3] = n & 0xFF
    else:
        o[1] = bit | 127
        for i in range(8):
            o[2 + i] = (n >> (56 - 8 * i)) & 0xFF
    if bit:
        memcpy(o + head, PyBytes_AS_STRING(mask), 4)
        _mask_copy(o + head + 4, <const unsigned char*>PyBytes_AS_STRING(payload), n,
                   <const unsigned char*>PyBytes_AS_STRING(mask))
    else:
        memcpy(o + head, PyBytes_AS_STRING(payload), n)
    return out


cdef class FrameReader:
    def __init__(self, masked, max_size=1 << 20):
        if type(max_size) is not int or not 0 <= max_size < 1 << 63:
            raise ValueError("max_size must be an int from 0 to 2**63 - 1")
        self.masked = bool(masked)
        self.max_size = max_size
        self._buf = b""
        self._pos = 0
        self._parts = []
        self._part_op = -1
        self._part_size = 0

    def feed(self, data):
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError("feed() takes bytes")
            data = bytes(data)
        if self._pos >= PyBytes_GET_SIZE(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0

    def pending(self):
        return PyBytes_GET_SIZE(self._buf) - self._pos

    def read(self):
        cdef int opcode
        cdef bytes payload = self._next(&opcode)
        if payload is None:
            return None
        return opcode, payload

    cdef bytes _next(self, int* op_out):
        """The next whole message's payload (its opcode in op_out), or None: ``read`` without the tuple."""
        cdef int fin, opcode
        cdef bytes payload
        while True:
            payload = self._frame(&fin, &opcode)
            if payload is None:
                return None
            if _is_control(opcode):
                if opcode == 0x8:
                    if PyBytes_GET_SIZE(payload) == 1:
                        raise FrameError(1002, "close frame with a 1-byte payload")
                    if PyBytes_GET_SIZE(payload) >= 2 and not _valid_close_code(
                            (<unsigned char>PyBytes_AS_STRING(payload)[0] << 8) | <unsigned char>PyBytes_AS_STRING(payload)[1]):
                        raise FrameError(1002, "invalid close code")
                    if PyBytes_GET_SIZE(payload) > 2:
                        _check_utf8(<const unsigned char*>PyBytes_AS_STRING(payload) + 2,
                                    PyBytes_GET_SIZE(payload) - 2, "close reason")
                op_out[0] = opcode
                return payload
            if opcode == 0:
                if self._part_op < 0:
                    raise FrameError(1002, "continuation frame without a message to continue")
                self._parts.append(payload)
                if not fin:
                    continue
                opcode, payload = self._part_op, b"".join(self._parts)
                self._parts, self._part_op, self._part_size = [], -1, 0
            elif self._part_op >= 0:
                raise FrameError(1002, "new message before the fragmented one ended")
            elif not fin:
                self._parts, self._part_op = [payload], opcode
                continue
            if opcode == 0x1:
                _check_utf8(<const unsigned char*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload),
                            "text message")
            op_out[0] = opcode
            return payload

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bytes _frame(self, int* fin_out, int* op_out):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self._buf) + self._pos
        cdef Py_ssize_t avail = PyBytes_GET_SIZE(self._buf) - self._pos
        cdef Py_ssize_t head = 2, mask_at, i
        cdef unsigned long long n
        cdef int b0, b1, fin, opcode
        cdef bytes payload
        if avail < 2:
            return None
        b0, b1 = p[0], p[1]
        fin, opcode = b0 & 0x80, b0 & 0x0F
        if b0 & 0x70:
            raise FrameError(1002, "reserved bits set without an extension")
        if not _known(opcode):
            raise FrameError(1002, f"unknown opcode {opcode}")
        if (b1 & 0x80 != 0) != self.masked:
            raise FrameError(1002, "client frames must be masked" if self.masked
                             else "server frames must not be masked")
        n = b1 & 0x7F
        if _is_control(opcode):
            if not fin:
                raise FrameError(1002, "fragmented control frame")
            if n > 125:
                raise FrameError(1002, "control frame over 125 bytes")
        if n == 126:
            if avail < 4:
                return None
            n, head = (p[2] << 8) | p[3], 4
        elif n == 127:
            if avail < 10:
                return None
            n = 0
            for i in range(8):
                n = (n << 8) | p[2 + i]
            head = 10
            if n >> 63:
                raise FrameError(1002, "frame length over 2**63")
        if not _is_control(opcode) and <unsigned long long>self._part_size + n > <unsigned long long>self.max_size:
            raise FrameError(1009, f"message over {self.max_size} bytes")
        mask_at = head
        if self.masked:
            head += 4
        if <unsigned long long>avail < head + n:
            return None
        payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
        if self.masked:
            _mask_copy(<unsigned char*>PyBytes_AS_STRING(payload), p + head, <Py_ssize_t>n, p + mask_at)
        else:
            memcpy(PyBytes_AS_STRING(payload), p + head, <size_t>n)
        self._pos += head + <Py_ssize_t>n
        if not _is_control(opcode) and (opcode == 0 or not fin):
            self._part_size += <Py_ssize_t>n
        fin_out[0] = fin != 0
        op_out[0] = opcode
        return payload


# The writers the per-frame cores build their frames with, straight into one buffer.

cdef inline Py_ssize_t _header_len(Py_ssize_t n, bint masked) noexcept nogil:
    return (2 if n < 126 else 4 if n < 65536 else 10) + (4 if masked else 0)


cdef inline Py_ssize_t _write_header(unsigned char* o, int opcode, Py_ssize_t n,
                                     const unsigned char* mask) noexcept nogil:
    """A final frame's header (and key) for ``n`` payload bytes; returns its length."""
    cdef int bit = 0x80 if mask != NULL else 0
    cdef Py_ssize_t head, i
    o[0] = 0x80 | opcode
    if n < 126:
        o[1] = bit | n
        head = 2
    elif n < 65536:
        o[1] = bit | 126
        o[2] = (n >> 8) & 0xFF
        o[3] = n & 0xFF
        head = 4
    else:
        o[1] = bit | 127
        for i in range(8):
            o[2 + i] = (n >> (56 - 8 * i)) & 0xFF
        head = 10
    if mask != NULL:
        memcpy(o + head, mask, 4)
        head += 4
    return head


cdef inline Py_ssize_t _write_text3(unsigned char* o, const char* a, Py_ssize_t na, const char* b,
                                    Py_ssize_t nb, const char* c, Py_ssize_t nc,
                                    const unsigned char* mask) noexcept nogil:
    """One text frame carrying a + b + c, masked when ``mask`` is given; returns bytes written."""
    return _write_frame3(o, 0x1, a, na, b, nb, c, nc, mask)


cdef inline Py_ssize_t _write_frame3(unsigned char* o, int opcode, const char* a, Py_ssize_t na,
                                     const char* b, Py_ssize_t nb, const char* c, Py_ssize_t nc,
                                     const unsigned char* mask) noexcept nogil:
    """One frame of ``opcode`` carrying a + b + c, masked when ``mask`` is given; returns bytes written."""
    cdef Py_ssize_t head = _write_header(o, opcode, na + nb + nc, mask)
    cdef unsigned char* p = o + head
    memcpy(p, a, na)
    memcpy(p + na, b, nb)
    memcpy(p + na + nb, c, nc)
    cdef Py_ssize_t n = na + nb + nc
    if mask != NULL:
        _mask_copy(p, p, n, mask)
    return head + n
