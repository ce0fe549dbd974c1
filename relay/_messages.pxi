# Twilio and Realtime messages: the one-pass JSON scan and what is read and written with it;
# included into _fastpath.pyx. Contract: _fastpath.pyi; oracle: relay/_messages_py.py.
#
# The parsers scan the common well-formed shape in one C pass. Anything outside that subset
# (escapes, non-ASCII, duplicate wanted keys, exponents, deep nesting, any error) is handed to the
# twin, so every value returned and every error raised is the twin's by construction.
# _media.pxi runs the same scan (_scan, Field, _DIGIT) on the messages it takes in C.

from cpython.long cimport PyLong_FromLongLong

import orjson

from relay import _messages_py  # looked up per call, so tests can watch the fallback

cdef enum:
    MAX_DEPTH = 64  # orjson allows 1024; deeper than this is not a frame we see, so fall back

cdef enum Kind:
    ABSENT = 0
    STRING = 1
    OBJECT = 2
    OTHER = 3

cdef enum Mode:
    SKIP = 0   # no wanted keys: just validate
    MEDIA = 1  # Twilio: event, media{payload, timestamp}, mark{name}
    DELTA = 2  # Realtime: type, item_id, delta, response_id
    GEMINI = 3  # Gemini Live: serverContent{modelTurn{parts[{inlineData{mimeType, data}}], role}}; else extra

cdef struct Field:
    Py_ssize_t start  # string content [start, end), quotes excluded
    Py_ssize_t end
    int kind
    bint b64          # content is padded standard base64 (set only for payload / delta)

# Byte classes, filled once at import.
cdef unsigned char _B64[256]   # 1: A-Z a-z 0-9 + /
cdef unsigned char _STR[256]   # 0: plain string byte, 1: closing quote, 2: fall back
cdef unsigned char _WS[256]    # 1: JSON whitespace
cdef unsigned char _DIGIT[256]  # 1: 0-9


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        _B64[c] = (65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 43 or c == 47
        # Control bytes are JSON errors, backslash means escapes, >= 0x80 means UTF-8 to check;
        # all three are the reference's job. NUL (the bytes sentinel) is in this class too.
        _STR[c] = 1 if c == QUOTE else 2 if (c < 0x20 or c >= 0x80 or c == BSLASH) else 0
        _WS[c] = c == 32 or c == 9 or c == 10 or c == 13
        _DIGIT[c] = 48 <= c <= 57


_init_tables()

# Every scanner below may read p[n]: a bytes object always has a NUL after its last byte, and
# no loop accepts NUL, so that sentinel stops them without a separate i < n test.
#
# boundscheck/wraparound are switched off on the byte loops only: their indices are kept in
# range by the sentinel (or an explicit n) and are never negative, so checks would be pure cost.
# Everything else keeps Cython's default checks.


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _ws(cbuf p, Py_ssize_t i) noexcept nogil:
    while _WS[p[i]]:
        i += 1
    return i


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _str(cbuf p, Py_ssize_t i) noexcept nogil:
    """i is just past the opening quote; return the closing quote's index, or -1."""
    while _STR[p[i]] == 0:
        i += 1
    return i if p[i] == QUOTE else -1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _b64_run(cbuf p, Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    """Index of the first byte of p[j:n] outside the base64 alphabet, or n."""
    # Eight lookups per branch: audio is kilobytes of alphabet, so the loop is the parser.
    while j + 8 <= n and (_B64[p[j]] & _B64[p[j + 1]] & _B64[p[j + 2]] & _B64[p[j + 3]]
                          & _B64[p[j + 4]] & _B64[p[j + 5]] & _B64[p[j + 6]] & _B64[p[j + 7]]):
        j += 8
    while j < n and _B64[p[j]]:
        j += 1
    return j


cdef inline Py_ssize_t _str_b64(cbuf p, Py_ssize_t i, Py_ssize_t n, bint* ok) noexcept nogil:
    """Like _str, and also say whether the content is padded standard base64 (one pass)."""
    cdef Py_ssize_t j = _b64_run(p, i, n), k
    k = j
    if p[k] == EQ:
        k += 1
        if p[k] == EQ:
            k += 1
    if p[k] == QUOTE:
        ok[0] = (k - i) % 4 == 0  # with <= 2 '=' at the end this is exactly the regex
        return k
    ok[0] = False
    return _str(p, j)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _number(cbuf p, Py_ssize_t i) noexcept nogil:
    """Strict JSON number without exponent and at most 18 bytes, else -1 (orjson can raise on
    huge or overflowing numbers, so those go to the reference)."""
    cdef Py_ssize_t s = i
    if p[i] == 45:  # -
        i += 1
    if p[i] == 48:  # a leading 0 stands alone
        i += 1
    elif _DIGIT[p[i]]:
        while _DIGIT[p[i]]:
            i += 1
    else:
        return -1
    if p[i] == 46:  # .
        i += 1
        if not _DIGIT[p[i]]:
            return -1
        while _DIGIT[p[i]]:
            i += 1
    if p[i] == 101 or p[i] == 69 or i - s > 18:  # e E, or too long
        return -1
    return i


cdef inline bint _is(cbuf p, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept nogil:
    return n == m and memcmp(p, lit, m) == 0


cdef inline int _slot(int mode, int level, cbuf k, Py_ssize_t n) noexcept nogil:
    """Field index of a wanted key at this level, or -1."""
    if mode == MEDIA:
        if level == 1:
            if _is(k, n, b"event", 5):
                return 0
            if _is(k, n, b"media", 5):
                return 1
            if _is(k, n, b"mark", 4):
                return 4
        elif level == 2:
            if _is(k, n, b"payload", 7):
                return 2
            if _is(k, n, b"timestamp", 9):
                return 3
        elif level == 3 and _is(k, n, b"name", 4):  # in the mark object
            return 5
    elif mode == GEMINI:
        if level == 1 and _is(k, n, b"serverContent", 13):
            return 0
        if level == 2 and _is(k, n, b"modelTurn", 9):
            return 1
        if level == 3:
            if _is(k, n, b"parts", 5):
                return 2
            if _is(k, n, b"role", 4):
                return 6
        if level == 4 and _is(k, n, b"inlineData", 10):
            return 3
        if level == 5:
            if _is(k, n, b"mimeType", 8):
                return 4
            if _is(k, n, b"data", 4):
                return 5
        return 7  # any other key: the message is more than a chunk of audio
    elif mode == DELTA and level == 1:
        if _is(k, n, b"type", 4):
            return 0
        if _is(k, n, b"item_id", 7):
            return 1
        if _is(k, n, b"delta", 5):
            return 2
        if _is(k, n, b"response_id", 11):
            return 3
    return -1


cdef inline bint _is_b64_slot(int mode, int slot) noexcept nogil:
    return (slot == 2 and (mode == MEDIA or mode == DELTA)) or (slot == 5 and mode == GEMINI)  # payload, delta, data


cdef Py_ssize_t _value(cbuf p, Py_ssize_t i, Py_ssize_t n, int depth) noexcept nogil:
    """Skip one JSON value at p[i] (no leading whitespace); return the index after it, or -1.
    depth is the depth the value has if it is a container."""
    cdef unsigned char c = p[i]
    cdef Py_ssize_t e
    if c == QUOTE:
        e = _str(p, i + 1)
        return e + 1 if e >= 0 else -1
    if c == 123:  # {
        return _object(p, i + 1, n, SKIP, 0, NULL, depth)
    if c == 91:  # [
        return _array(p, i + 1, n, depth)
    if c == 116:  # true
        return i + 4 if p[i + 1] == 114 and p[i + 2] == 117 and p[i + 3] == 101 else -1
    if c == 102:  # false
        return (i + 5 if p[i + 1] == 97 and p[i + 2] == 108 and p[i + 3] == 115
                and p[i + 4] == 101 else -1)
    if c == 110:  # null
        return i + 4 if p[i + 1] == 117 and p[i + 2] == 108 and p[i + 3] == 108 else -1
    return _number(p, i)


cdef Py_ssize_t _array(cbuf p, Py_ssize_t i, Py_ssize_t n, int depth) noexcept nogil:
    """i is just past '['; return the index after ']', or -1."""
    if depth > MAX_DEPTH:
        return -1
    i = _ws(p, i)
    if p[i] == 93:  # ]
        return i + 1
    while True:
        i = _value(p, i, n, depth + 1)
        if i < 0:
            return -1
        i = _ws(p, i)
        if p[i] == 44:  # ,
            i = _ws(p, i + 1)
        elif p[i] == 93:
            return i + 1
        else:
            return -1


cdef Py_ssize_t _object(cbuf p, Py_ssize_t i, Py_ssize_t n, int mode, int level, Field* f,
                        int depth) noexcept nogil:
    """i is just past '{'; record wanted fields into f; return the index after '}', or -1."""
    cdef Py_ssize_t ks, ke
    cdef int slot
    if depth > MAX_DEPTH:
        return -1
    i = _ws(p, i)
    if p[i] == 125:  # }
        return i + 1
    while True:
        if p[i] != QUOTE:
            return -1
        ks = i + 1
        ke = _str(p, ks)
        if ke < 0:
            return -1
        slot = _slot(mode, level, p + ks, ke - ks) if mode != SKIP else -1
        i = _ws(p, ke + 1)
        if p[i] != 58:  # :
            return -1
        i = _ws(p, i + 1)
        if slot == 7 and mode == GEMINI:  # (repeats allowed: it only says "not audio alone")
            f[7].kind = OTHER
            i = _value(p, i, n, depth + 1)
        elif slot < 0:
            i = _value(p, i, n, depth + 1)
        elif f[slot].kind != ABSENT:
            return -1  # repeated wanted key (orjson keeps the last): the reference decides
        elif p[i] == QUOTE:
            f[slot].start = i + 1
            if _is_b64_slot(mode, slot):
                ke = _str_b64(p, i + 1, n, &f[slot].b64)
            else:
                ke = _str(p, i + 1)
            if ke < 0:
                return -1
            f[slot].end = ke
            f[slot].kind = STRING
            i = ke + 1
        elif p[i] == 123 and mode == MEDIA and level == 1 and slot == 1:  # the media object
            f[slot].kind = OBJECT
            i = _object(p, i + 1, n, MEDIA, 2, f, depth + 1)
        elif p[i] == 123 and mode == MEDIA and level == 1 and slot == 4:  # a mark echo's mark object
            f[slot].kind = OBJECT
            i = _object(p, i + 1, n, MEDIA, 3, f, depth + 1)
        elif p[i] == 123 and mode == GEMINI and (slot == 0 or slot == 1 or slot == 3):
            f[slot].kind = OBJECT
            i = _object(p, i + 1, n, GEMINI, level + 1, f, depth + 1)
        elif p[i] == 91 and mode == GEMINI and slot == 2:  # parts: one object, or more than audio
            f[slot].kind = OBJECT
            i = _gemini_parts(p, i + 1, n, f, depth + 1)
        else:
            f[slot].kind = OTHER
            i = _value(p, i, n, depth + 1)
        if i < 0:
            return -1
        i = _ws(p, i)
        if p[i] == 44:  # ,
            i = _ws(p, i + 1)
        elif p[i] == 125:
            return i + 1
        else:
            return -1


cdef Py_ssize_t _gemini_parts(cbuf p, Py_ssize_t i, Py_ssize_t n, Field* f, int depth) noexcept nogil:
    """i is just past the '[' of ``parts``: its one object read into f, more than one (or none, or
    another value) marked in f[7]; return the index after ']', or -1."""
    if depth > MAX_DEPTH:
        return -1
    i = _ws(p, i)
    if p[i] != 123:  # { (an empty list, or a list of something else: not audio)
        f[7].kind = OTHER
        return _array(p, i, n, depth)
    i = _object(p, i + 1, n, GEMINI, 4, f, depth + 1)
    if i < 0:
        return -1
    i = _ws(p, i)
    if p[i] == 93:  # ]
        return i + 1
    if p[i] != 44:  # ,
        return -1
    f[7].kind = OTHER
    return _array(p, _ws(p, i + 1), n, depth)


cdef bint _scan(cbuf p, Py_ssize_t n, int mode, Field* f) noexcept nogil:
    """Whole message: one object, whitespace around it, nothing else. False means fall back."""
    cdef Py_ssize_t i = _ws(p, 0)
    if p[i] != 123:
        return False
    i = _object(p, i + 1, n, mode, 1, f, 1)
    return i >= 0 and _ws(p, i) == n


cdef inline Py_ssize_t _b64_len(cbuf p, Py_ssize_t n) noexcept nogil:
    """Decoded length of padded standard base64 p[0:n], or -1 if it is not."""
    cdef Py_ssize_t j, k
    if n % 4:
        return -1
    j = _b64_run(p, 0, n)
    k = j
    if k < n and p[k] == EQ:
        k += 1
        if k < n and p[k] == EQ:
            k += 1
    if k != n:
        return -1
    return n // 4 * 3 - (k - j)


cdef inline bytes _join3(const char* a, Py_ssize_t na, const char* b, Py_ssize_t nb,
                         const char* c, Py_ssize_t nc):
    """a + b + c in one allocation."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, na + nb + nc)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, a, na)
    memcpy(o + na, b, nb)
    memcpy(o + na + nb, c, nc)
    return out


def b64_decoded_len(data):
    cdef Py_ssize_t r
    if type(data) is not bytes:
        return _messages_py.b64_decoded_len(data)
    r = _b64_len(<cbuf>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    if r < 0:
        raise PayloadError("payload is not padded standard base64")
    return r


cdef enum Scanned:
    SCAN_FALLBACK = 0  # outside the one-pass subset (or malformed): the reference parser decides
    SCAN_OTHER = 1     # a well-formed message of another kind
    SCAN_MEDIA = 2     # Twilio media: f[2] the payload (padded base64), *ts its timestamp
    SCAN_MARK = 3      # Twilio mark echo: f[5] the name (ASCII)
    SCAN_DELTA = 4     # Realtime audio delta: f[1] the item id (ASCII), f[2] the audio (padded base64),
                       # f[3] its response's id (ASCII; ABSENT: none given)
    SCAN_LIVE = 5      # GPT-Live audio delta: f[2] the audio (padded base64); no item, no response
    SCAN_GEMINI = 6    # Gemini Live audio chunk: f[5] the PCM16 (padded base64)


cdef int _scan_twilio(cbuf p, Py_ssize_t n, Field* f, long long* ts) noexcept nogil:
    """One pass over a Twilio message into f[0..5]: what it is, and where its parts are. The one
    reading of ``media`` and mark echoes, for ``parse_media`` and the media core alike."""
    cdef Py_ssize_t i, tn
    cdef long long t = 0
    memset(f, 0, 6 * sizeof(Field))
    if not _scan(p, n, MEDIA, f) or f[0].kind != STRING:
        return SCAN_FALLBACK
    if _is(p + f[0].start, f[0].end - f[0].start, b"media", 5):
        tn = f[3].end - f[3].start
        if (f[1].kind != OBJECT or f[2].kind != STRING or not f[2].b64 or f[3].kind != STRING
                or tn < 1 or tn > 15):
            return SCAN_FALLBACK
        for i in range(f[3].start, f[3].end):
            if not _DIGIT[p[i]]:
                return SCAN_FALLBACK
            t = t * 10 + (p[i] - 48)
        ts[0] = t
        return SCAN_MEDIA
    if _is(p + f[0].start, f[0].end - f[0].start, b"mark", 4) and f[4].kind == OBJECT and f[5].kind == STRING:
        return SCAN_MARK
    return SCAN_OTHER


cdef int _scan_delta(cbuf p, Py_ssize_t n, Field* f) noexcept nogil:
    """One pass over a Realtime event into f[0..3]: an audio delta and its parts, or not one.
    The one reading of deltas, for ``parse_audio_delta`` and the media core alike."""
    memset(f, 0, 4 * sizeof(Field))
    if not _scan(p, n, DELTA, f) or f[0].kind != STRING:
        return SCAN_FALLBACK
    if _is(p + f[0].start, f[0].end - f[0].start, b"session.output_audio.delta", 26):
        if f[2].kind != STRING or not f[2].b64:
            return SCAN_FALLBACK
        return SCAN_LIVE
    if not _is(p + f[0].start, f[0].end - f[0].start, b"response.output_audio.delta", 27):
        return SCAN_OTHER
    if f[1].kind != STRING or f[2].kind != STRING or not f[2].b64 or (f[3].kind != ABSENT and f[3].kind != STRING):
        return SCAN_FALLBACK
    return SCAN_DELTA


cdef inline str _response_id(cbuf p, Field* f):
    """A scanned delta's response id ("" when it names none)."""
    if f[3].kind != STRING:
        return ""
    return PyUnicode_DecodeASCII(<const char*>p + f[3].start, f[3].end - f[3].start, NULL)


def parse_media(message):
    cdef Field f[6]
    cdef cbuf p
    cdef long long ts = 0
    cdef int kind
    if type(message) is not bytes:
        return _messages_py.parse_media(message)
    p = <cbuf>PyBytes_AS_STRING(message)
    kind = _scan_twilio(p, PyBytes_GET_SIZE(message), f, &ts)
    if kind == SCAN_FALLBACK:
        return _messages_py.parse_media(message)
    if kind != SCAN_MEDIA:
        return None
    return (PyBytes_FromStringAndSize(<const char*>p + f[2].start, f[2].end - f[2].start),
            PyLong_FromLongLong(ts))


cdef inline bint _gemini_mime(cbuf p, Field* f) noexcept nogil:
    """The scanned mimeType is one relay reads as PCM16 at 24 kHz (``GEMINI_AUDIO_TYPES``)."""
    return (_is(p + f[4].start, f[4].end - f[4].start, b"audio/pcm;rate=24000", 20)
            or _is(p + f[4].start, f[4].end - f[4].start, b"audio/pcm", 9))


cdef int _scan_gemini(cbuf p, Py_ssize_t n, Field* f) noexcept nogil:
    """One pass over a Gemini Live server message into f[0..7]: a chunk of the model's audio and
    nothing else (f[5] its base64 PCM16), or not one. For ``parse_gemini_audio`` and the core."""
    memset(f, 0, 8 * sizeof(Field))
    if not _scan(p, n, GEMINI, f):
        return SCAN_FALLBACK
    if (f[7].kind != ABSENT or f[0].kind != OBJECT or f[1].kind != OBJECT or f[2].kind != OBJECT
            or f[3].kind != OBJECT or f[4].kind != STRING or f[5].kind != STRING or not f[5].b64
            or not _gemini_mime(p, f)):
        return SCAN_OTHER
    return SCAN_GEMINI


def parse_gemini_audio(message):
    cdef Field f[8]
    cdef cbuf p
    cdef int kind
    if type(message) is not bytes:
        return _messages_py.parse_gemini_audio(message)
    p = <cbuf>PyBytes_AS_STRING(message)
    kind = _scan_gemini(p, PyBytes_GET_SIZE(message), f)
    if kind == SCAN_FALLBACK:
        return _messages_py.parse_gemini_audio(message)
    if kind != SCAN_GEMINI:
        return None
    return PyBytes_FromStringAndSize(<const char*>p + f[5].start, f[5].end - f[5].start)


def parse_audio_delta(message):
    cdef Field f[4]
    cdef cbuf p
    cdef int kind
    if type(message) is not bytes:
        return _messages_py.parse_audio_delta(message)
    p = <cbuf>PyBytes_AS_STRING(message)
    kind = _scan_delta(p, PyBytes_GET_SIZE(message), f)
    if kind == SCAN_FALLBACK:
        return _messages_py.parse_audio_delta(message)
    if kind == SCAN_LIVE:
        return "", PyBytes_FromStringAndSize(<const char*>p + f[2].start, f[2].end - f[2].start), ""
    if kind != SCAN_DELTA:
        return None
    return (PyUnicode_DecodeASCII(<const char*>p + f[1].start, f[1].end - f[1].start, NULL),
            PyBytes_FromStringAndSize(<const char*>p + f[2].start, f[2].end - f[2].start),
            _response_id(p, f))


# The caller-audio append around its audio, per backend wire (``relay.backends.WIRE_*``):
# Realtime's input_audio_buffer.append (PROTOCOLS §2.3), GPT-Live's session.input_audio.append
# (BACKENDS §2.3), none for Deepgram (a binary frame of the μ-law itself, §4.3), Gemini Live's
# realtimeInput.audio with PCM16 at 16 kHz (§3.3). WsCore.send_append writes the audio's base64
# between the two, into the frame it sends the backend.
cdef bytes _APPEND = b'{"type":"input_audio_buffer.append","audio":"'
cdef tuple _APPENDS = (_APPEND, b'{"type":"session.input_audio.append","audio":"', b"",
                       b'{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"')
cdef tuple _SUFFIXES = (b'"}', b'"}', b"", b'"}}}')
cdef enum:
    WIRE_BINARY = 2  # Deepgram: raw μ-law in binary frames both ways
    WIRE_PCM16 = 3   # Gemini Live: PCM16 16 kHz in, 24 kHz out, base64 in JSON


cdef bytes _json_str(value):
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # lone surrogates
        raise ProtocolError("string cannot be encoded as JSON") from exc


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint _plain(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """True if orjson would write s as is between quotes: printable ASCII, no quote/backslash."""
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] < 0x20 or s[i] >= 0x7f or s[i] == QUOTE or s[i] == BSLASH:
            return False
    return True


cdef void _uninitialised() except *:
    # TwilioWriter.__new__ without __init__: the reference's slots would be unset, so it raises
    # AttributeError; the C code must not read a NULL prefix.
    raise AttributeError("TwilioWriter was not initialised")


cdef class TwilioWriter:
    def __init__(self, stream_sid):
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ProtocolError("streamSid must be a non-empty string")
        self.stream_sid = stream_sid
        sid = _json_str(stream_sid)
        self._media_prefix = b'{"event":"media","streamSid":' + sid + b',"media":{"payload":"'
        self._mark_prefix = b'{"event":"mark","streamSid":' + sid + b',"mark":{"name":'
        self._clear = b'{"event":"clear","streamSid":' + sid + b"}"

    def media(self, payload):
        if self._media_prefix is None:
            _uninitialised()
        if type(payload) is not bytes:
            return self._media_prefix + payload + b'"}}'
        return _join3(PyBytes_AS_STRING(self._media_prefix), PyBytes_GET_SIZE(self._media_prefix),
                      PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), b'"}}', 3)

    def mark(self, name):
        cdef Py_ssize_t n, np
        cdef char* o
        cdef bytes out
        if type(name) is str and PyUnicode_IS_ASCII(name):
            n = PyUnicode_GET_LENGTH(name)
            if n and _plain(PyUnicode_1BYTE_DATA(name), n):
                if self._mark_prefix is None:
                    _uninitialised()
                # Same bytes as prefix + orjson.dumps(name) + '}}', in one allocation.
                np = PyBytes_GET_SIZE(self._mark_prefix)
                out = PyBytes_FromStringAndSize(NULL, np + n + 4)
                o = PyBytes_AS_STRING(out)
                memcpy(o, PyBytes_AS_STRING(self._mark_prefix), np)
                o[np] = QUOTE
                memcpy(o + np + 1, PyUnicode_1BYTE_DATA(name), n)
                memcpy(o + np + 1 + n, b'"}}', 3)
                return out
        if not isinstance(name, str) or not name:
            raise ProtocolError("mark.name must be a non-empty string")
        if self._mark_prefix is None:
            _uninitialised()
        return self._mark_prefix + _json_str(name) + b"}}"

    def clear(self):
        if self._clear is None:
            _uninitialised()
        return self._clear
