# A WebSocket connection's per-frame half, compiled (included by _fastpath.pyx).
# Contract: ``_fastpath.pyi`` (WsCore); oracle: ``_wscore_py.py``, which makes the same calls and
# the same writes for every input. The read loop runs in C: a message routed to the call's
# ``MediaCore`` goes there with a C call, and the media core's writes come back here as C calls,
# so a passthrough frame crosses no Python frame between the transport and the other socket.

import collections
import os as _os


cdef object _WS_OPEN = "open"
LEG_TWILIO = 0
LEG_BACKEND = 1


cdef class WsCore:
    def __init__(self, transport, client, max_size, max_rate, clock):
        self.transport = transport
        self._transport_write = transport.write
        self._transport_is_closing = transport.is_closing
        self.client = bool(client)
        self._reader = FrameReader(not self.client, max_size)
        self._max_rate = max_rate
        self._window_start = 0.0
        self._window_count = 0
        self._clock = clock
        self.messages = collections.deque()
        self._masks = b""
        self._mask_at = 0
        self.state = _WS_OPEN
        self._media = None
        self._leg = 0
        self._wire = 0
        self._append = _APPEND
        self._suffix = <bytes>_SUFFIXES[0]
        self._up = None

    @property
    def wire(self):
        return self._wire

    @wire.setter
    def wire(self, value):
        if type(value) is not int or not 0 <= value < len(_APPENDS):
            raise ValueError(f"wire must be one of 0..{len(_APPENDS) - 1}")
        self._wire = value
        self._append = <bytes>_APPENDS[value]
        self._suffix = <bytes>_SUFFIXES[value]
        # The caller's 8 kHz, upsampled for a PCM16 backend: one stream per connection.
        self._up = Resampler(8000, 16000) if value == WIRE_PCM16 else None

    def route(self, media, leg=0):
        if media is not None and not isinstance(media, MediaCore):
            raise TypeError("route() takes a MediaCore or None")
        self._media = media
        self._leg = leg

    def data_received(self, data):
        cdef MediaCore media = self._media
        cdef double now = -1.0
        if media is None or self._leg == 0:
            self._read(data, &now)
            return
        # The backend leg: every audio delta of this read goes into the ring first, and what is
        # due then leaves in one write to Twilio (a burst of deltas is one write, not one each).
        media._batch = True
        try:
            self._read(data, &now)
        finally:
            media._release(now)  # (now was read if any delta came: only then is there anything to send)

    cdef int _read(self, object data, double* now_out) except -1:
        cdef FrameReader reader = self._reader
        cdef int opcode
        cdef bytes payload
        cdef double now = -1.0, t
        cdef MediaCore media
        cdef bint handled
        reader.feed(data)
        while True:
            try:
                payload = reader._next(&opcode)
            except FrameError as exc:
                self._violation("size" if exc.code == 1009 else "frame", exc.reason, exc.code)
                return 0
            if payload is None:
                break
            if self._max_rate:
                self._window_count += 1
                if self._window_count > self._max_rate:
                    t = self._clock()
                    if t - self._window_start < 1.0:
                        self._violation("rate", f"over {self._max_rate} messages per second", 1008)
                        return 0
                    self._window_start, self._window_count = t, 1
            if opcode == 0x1 or (opcode == 0x2 and self._wire == WIRE_PCM16):
                # (Gemini Live's server may send its JSON in binary frames: read alike.)
                if not self.messages:
                    media = self._media
                    if media is not None:
                        if now < 0:
                            now = self._clock()
                            now_out[0] = now
                        if self._leg == 0:
                            handled = media._twilio_frame(payload, now)
                        else:
                            handled = media._backend_frame(payload, now)
                        if handled:
                            continue
                self.messages.append(payload)
            elif opcode == 0x8:
                self._on_close_frame(payload)
                break
            elif opcode == 0x9:
                self._write(build_frame(0xA, payload, self._mask()))
            elif opcode == 0x2:
                if self._wire != WIRE_BINARY:
                    self._violation("binary", "binary messages are not accepted", 1003)
                    break
                # A binary backend's audio: to the media core as a delta is, else queued in order
                # (as a bytearray: what tells ``recv``'s reader it is audio, not an event).
                if not self.messages:
                    media = self._media
                    if media is not None and self._leg == LEG_BACKEND:
                        if now < 0:
                            now = self._clock()
                            now_out[0] = now
                        if media._backend_binary(payload, now):
                            continue
                self.messages.append(bytearray(payload))
        if self.messages or self.state != _WS_OPEN:
            self._wake()
        return 0

    # ---- writing

    cdef bytes _next_mask(self):
        if not self.client:
            return None
        return PyBytes_FromStringAndSize(self._mask_ptr(), 4)

    cdef const char* _mask_ptr(self) except NULL:
        cdef Py_ssize_t at = self._mask_at
        if at + 4 > PyBytes_GET_SIZE(self._masks):
            self._masks, at = _os.urandom(1024), 0  # one syscall per 256 frames
        self._mask_at = at + 4
        return PyBytes_AS_STRING(self._masks) + at

    def _mask(self):
        return self._next_mask()

    cdef int _write_c(self, bytes data) except -1:
        if not self._transport_is_closing():
            self._transport_write(data)
        return 0

    def _write(self, data):
        self._write_c(data)

    def send(self, message):
        if self.state == _WS_OPEN:
            self._write(build_frame(0x1, message, self._next_mask()))

    def send_frames(self, frames):
        self._send_frames_c(frames)

    cdef int _send_frames_c(self, bytes frames) except -1:
        if self.state == _WS_OPEN:
            self._write_c(frames)
        return 0

    def send_many(self, messages):
        if self.state == _WS_OPEN:
            self._write(b"".join([build_frame(0x1, m, self._next_mask()) for m in messages]))

    def send_append(self, payload):
        if type(payload) is not bytes:
            if self._wire >= WIRE_BINARY:
                raise TypeError(f"send_append() takes bytes, not {type(payload).__name__}")
            if self.state == _WS_OPEN:
                self._write(build_frame(0x1, self._append + payload + self._suffix, self._next_mask()))
            return
        self._send_append_c(<cbuf>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))

    cdef int _send_append_c(self, cbuf payload, Py_ssize_t size) except -1:
        """The wire's append of base64 at payload, framed (masked if a client) in one go: as is,
        or (Deepgram) decoded into a binary frame, or (Gemini) transcoded to PCM16 at 16 kHz."""
        cdef Py_ssize_t n, m
        cdef bytes out, raw, text
        cdef const unsigned char* mask = NULL
        cdef bytes prefix = self._append, suffix = self._suffix
        cdef int opcode = 0x1
        if self.state != _WS_OPEN:
            return 0
        if self._wire >= WIRE_BINARY:
            m = _b64_len(payload, size)
            if m < 0:
                raise PayloadError("payload is not padded standard base64")
            raw = PyBytes_FromStringAndSize(NULL, m)
            _po_dec_ring(<unsigned char*>PyBytes_AS_STRING(raw), m, 0, payload, m)
            if self._wire == WIRE_BINARY:
                text, opcode = raw, 0x2
            else:
                text = _b64_bytes(self._up._up_ulaw(<cbuf>PyBytes_AS_STRING(raw), m))
            payload, size = <cbuf>PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text)
        if self.client:
            mask = <const unsigned char*>self._mask_ptr()
        n = PyBytes_GET_SIZE(prefix) + size + PyBytes_GET_SIZE(suffix)
        out = PyBytes_FromStringAndSize(NULL, _header_len(n, mask != NULL) + n)
        _write_frame3(<unsigned char*>PyBytes_AS_STRING(out), opcode, PyBytes_AS_STRING(prefix),
                      PyBytes_GET_SIZE(prefix), <const char*>payload, size, PyBytes_AS_STRING(suffix),
                      PyBytes_GET_SIZE(suffix), mask)
        return self._write_c(out)


cdef bytes _b64_bytes(bytes data):
    """Padded standard base64 of data."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 4 * ((PyBytes_GET_SIZE(data) + 2) // 3))
    _po_enc(<cbuf>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), <unsigned char*>PyBytes_AS_STRING(out))
    return out
