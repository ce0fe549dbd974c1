# A call's per-frame media core, compiled (included by _fastpath.pyx).
# Contract: ``_fastpath.pyi`` (MediaCore); oracle: ``_media_py.py``: the same bytes in the same
# writes, and the same state, for every input. ``relay.conversation.Conversation`` subclasses
# it. On the common path (a well-formed media frame or audio delta) nothing is parsed into
# Python objects: the caller's payload is framed for the backend straight from Twilio's
# message, the agent's delta is decoded from its message into the ring, and paced frames are
# encoded from the ring straight into the one write that carries them and their marks.

cdef object _twilio_module = None


cdef object _twilio():
    # relay.twilio imports this module (through relay.fastpath): import it on first use.
    global _twilio_module
    if _twilio_module is None:
        from relay import twilio as module
        _twilio_module = module
    return _twilio_module


cdef enum:
    MC_FRAME_BYTES = 160
    MC_FRAME_MS = 20
    MC_BYTES_PER_MS = 8
    MC_B64_FRAME = 216  # 4 * ceil(160 / 3)


cdef class MediaCore:
    cdef public object _twilio
    cdef public TwilioWriter _writer
    cdef public object _stats
    cdef readonly long long _lead_ms
    cdef readonly long long _mark_frames
    cdef public object on_wants_clock
    cdef public long long frames_in, frames_out, frames_held, frames_dropped, frames_filled, frames_late
    # inbound
    cdef public object _backend
    cdef public bint _gate_open
    cdef public object _held
    cdef public GapFiller _gaps
    cdef public object _epoch
    cdef public object _ts0
    # outbound
    cdef public PlayoutRing _ring
    cdef public object _segments
    cdef public object _t0
    cdef public long long _since_mark
    cdef public object _current
    cdef public dict _assistants
    cdef public dict _unstored
    cdef public set _dropped_items
    cdef public object _keys_due  # when the keys collected so far are sent (the subclass's)
    cdef object _fast_turn   # the answer the last delta went to, and its item id as bytes:
    cdef bytes _fast_item    # the next delta of the same item skips the lookups

    def __init__(self, twilio_out, stream_sid, stats, *, lead_ms, mark_frames, held_frames,
                 max_gap_fill_ms):
        self._twilio = twilio_out
        self._writer = TwilioWriter(stream_sid)
        self._stats = stats
        self._lead_ms = _po_int(lead_ms, "lead_ms", 0, PO_MAX_MS)
        self._mark_frames = mark_frames
        self.on_wants_clock = _no_clock
        self.frames_in = self.frames_out = self.frames_held = self.frames_dropped = 0
        self.frames_filled = self.frames_late = 0
        self._backend = None
        self._gate_open = False
        self._held = collections.deque(maxlen=max(1, held_frames))
        self._gaps = GapFiller(MC_FRAME_MS, max_gap_fill_ms)
        self._epoch = None
        self._ts0 = None
        self._ring = PlayoutRing(MC_FRAME_BYTES)
        self._segments = collections.deque()
        self._t0 = None
        self._since_mark = 0
        self._current = None
        self._assistants = {}
        self._unstored = {}
        self._dropped_items = set()
        self._keys_due = None
        self._fast_turn = None
        self._fast_item = None

    @property
    def stats(self):
        stats = self._stats
        stats.frames_in, stats.frames_out = self.frames_in, self.frames_out
        stats.frames_held, stats.frames_dropped = self.frames_held, self.frames_dropped
        stats.frames_filled, stats.frames_late = self.frames_filled, self.frames_late
        return stats

    # ---------------------------------------------------------------- Twilio → backend

    def twilio_frame(self, message, now):
        return self._twilio_frame(message, now)

    cdef bint _twilio_frame(self, object message, double now) except -1:
        cdef Field f[6]
        cdef cbuf p
        cdef Py_ssize_t i, tn
        cdef long long ts = 0
        if type(message) is bytes:
            p = <cbuf>PyBytes_AS_STRING(message)
            memset(f, 0, sizeof(f))
            if _scan(p, PyBytes_GET_SIZE(message), MEDIA, f) and f[0].kind == STRING:
                if _is(p + f[0].start, f[0].end - f[0].start, b"media", 5):
                    tn = f[3].end - f[3].start
                    if (f[1].kind == OBJECT and f[2].kind == STRING and f[2].b64 and f[3].kind == STRING
                            and 1 <= tn <= 15):
                        for i in range(f[3].start, f[3].end):
                            if not _DIGIT[p[i]]:
                                break
                            ts = ts * 10 + (p[i] - 48)
                        else:
                            self._caller_audio(p + f[2].start, f[2].end - f[2].start, None, ts, now)
                            return True
                elif (_is(p + f[0].start, f[0].end - f[0].start, b"mark", 4) and f[4].kind == OBJECT
                        and f[5].kind == STRING):
                    # A mark echo, read in the same pass: what twilio.parse_event returns for it.
                    self.mark(PyUnicode_DecodeASCII(<const char*>p + f[5].start, f[5].end - f[5].start, NULL),
                              now)
                    return True
        twilio = _twilio()
        try:
            media = parse_media(message)
            if media is not None:
                self.caller_audio(media[0], media[1], now)
                return True
            if b'"mark"' in message:
                event = twilio.parse_event(message)
                if isinstance(event, twilio.Mark):
                    self.mark(event.name, now)
                    return True
        except ProtocolError:
            pass  # the pump parses it again and closes the call with the reason
        return False

    def caller_audio(self, payload, timestamp, now):
        cdef long long ts = _po_int(timestamp, "timestamp_ms", 0, PO_MAX_MS)
        if type(payload) is not bytes:
            raise TypeError("caller_audio() takes bytes")
        self._caller_audio(<cbuf>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), payload, ts, now)

    cdef int _caller_audio(self, cbuf p, Py_ssize_t n, object payload, long long ts, double now) except -1:
        cdef long long lost
        self.frames_in += 1
        if self._epoch is None:
            self._epoch = now - ts / 1000.0
        lost = self._gaps._accept(ts)
        if lost < 0:
            self.frames_late += 1  # a duplicate, or too late for its slot
            return 0
        if lost:
            self.frames_filled += lost
            silence = silence_b64(lost * MC_FRAME_BYTES)
            self._upstream(<cbuf>PyBytes_AS_STRING(silence), PyBytes_GET_SIZE(silence), silence,
                           ts - lost * MC_FRAME_MS)
        return self._upstream(p, n, payload, ts)

    cdef int _upstream(self, cbuf p, Py_ssize_t n, object payload, long long ts) except -1:
        backend = self._backend
        if self._gate_open:
            if self._ts0 is None:
                self._ts0 = ts
            if isinstance(backend, WsCore):
                return (<WsCore>backend)._send_append_c(p, n)
            if payload is None:
                payload = PyBytes_FromStringAndSize(<const char*>p, n)
            backend.send_append(payload)
            return 0
        if payload is None:
            payload = PyBytes_FromStringAndSize(<const char*>p, n)
        if len(self._held) == self._held.maxlen:
            self.frames_dropped += 1
        self._held.append((payload, ts))
        self.frames_held += 1
        return 0

    # ---------------------------------------------------------------- backend → Twilio

    def backend_frame(self, message, now):
        return self._backend_frame(message, now)

    cdef bint _backend_frame(self, object message, double now) except -1:
        cdef Field f[3]
        cdef cbuf p
        cdef Py_ssize_t ni
        if type(message) is bytes:
            p = <cbuf>PyBytes_AS_STRING(message)
            memset(f, 0, sizeof(f))
            if _scan(p, PyBytes_GET_SIZE(message), DELTA, f) and f[0].kind == STRING:
                if not _is(p + f[0].start, f[0].end - f[0].start, b"response.output_audio.delta", 27):
                    return False
                if f[1].kind == STRING and f[2].kind == STRING and f[2].b64:
                    ni = f[1].end - f[1].start
                    turn = self._fast_turn
                    if (turn is not None and PyBytes_GET_SIZE(self._fast_item) == ni
                            and memcmp(PyBytes_AS_STRING(self._fast_item), p + f[1].start, ni) == 0):
                        # The item's answer: an interrupted one has audio_done set, and stays dropped.
                        if not turn.audio_done:
                            self._agent_push(turn, p + f[2].start, f[2].end - f[2].start, now)
                        return True
        try:
            delta = parse_audio_delta(message)
        except ProtocolError:
            return False
        if delta is None:
            return False
        self.agent_audio(delta[0], delta[1], now)
        return True

    def agent_audio(self, item_id, payload, now):
        if item_id in self._dropped_items:
            return  # a late delta of an item the caller interrupted
        turn = self._assistants.get(item_id) or self._new_assistant(item_id)
        if turn.audio_done:
            return
        if type(payload) is not bytes:
            raise TypeError(f"push() takes bytes, not {type(payload).__name__}")
        if type(item_id) is str and PyUnicode_IS_ASCII(item_id):
            self._fast_turn, self._fast_item = turn, item_id.encode()
        self._agent_push(turn, <cbuf>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), now)

    cdef int _agent_push(self, turn, cbuf s, Py_ssize_t n, double now) except -1:
        cdef Py_ssize_t m
        try:
            m = self._ring._push_raw(s, n)
        except ProtocolError as exc:  # not base64, or an answer longer than the ring holds
            self._audio_dropped(exc)
            return 0
        turn.produced += m
        segments = self._segments
        if segments and segments[-1][0] is turn:
            segments[-1][1] += m
        else:
            segments.append([turn, m])
        self._current = turn
        self._pump_c(now)
        if self._ring._len:
            self.on_wants_clock()
        return 0

    def tick(self, double now):
        """The shared clock's 20 ms tick: release due frames, send due keys. False: no more ticks wanted."""
        if self._keys_due is not None and now >= <double>self._keys_due:
            self._send_keys(now)
        self._pump_c(now)
        return self._ring._len > 0 or self._keys_due is not None

    def _pump(self, now):
        self._pump_c(now)

    @cython.cdivision(True)
    cdef int _pump_c(self, double now) except -1:
        cdef PlayoutRing ring = self._ring
        cdef long long elapsed, n, whole, k, count, lead = self._lead_ms, take, used, left
        cdef Py_ssize_t i, np, size, w, media_len
        cdef bint final, partial
        cdef unsigned char* o
        cdef bytes out, mark
        cdef list marks = None
        if ring._len == 0:
            return 0
        if self._t0 is None:
            elapsed = 0
        else:
            elapsed = <long long>((now - <double>self._t0) * 1000)
        if elapsed < 0 or elapsed > PO_MAX_MS:
            ring.frames_due(elapsed, lead)  # raises as the reference does
        n = ring._due(elapsed, lead)
        whole = ring._len // MC_FRAME_BYTES
        segments = self._segments
        final = bool(segments[-1][0].audio_done) if segments else False
        if final and n == whole and ring._len > whole * MC_FRAME_BYTES:
            # The answer's last, partial frame goes out padded with silence, if the lead has room.
            if lead * MC_BYTES_PER_MS - (ring.sent + ring.padded - ring.heard) >= (n + 1) * MC_FRAME_BYTES:
                n += 1
        if n == 0:
            return 0
        if self._t0 is None:
            self._t0 = now
        k = whole if n > whole else n
        partial = final and n > whole and ring._len > k * MC_FRAME_BYTES
        count = k + partial
        # Pass 1: which answers each frame carries; an answer whose audio ends in it gets a mark
        # right after it, and so does the newest one every ``mark_frames`` frames.
        for i in range(count):
            take, last, ended, more = MC_FRAME_BYTES, None, None, None
            while take and segments:
                segment = segments[0]
                turn = segment[0]
                left = segment[1]
                used = take if take < left else left
                if turn.first_out_at is None:
                    turn.first_out_at = now
                    if turn.speech_end_at is not None:
                        self._stats.v2v_ms.append((now - turn.speech_end_at) * 1000)
                turn.out += used
                take -= used
                last = turn
                segment[1] = left - used
                if left == used:
                    segments.popleft()
                    if turn.audio_done or segments:  # the answer ends here (not a dry ring)
                        if ended is None:
                            ended = turn
                        else:
                            if more is None:
                                more = []
                            more.append(turn)
            self._since_mark += 1
            if (last is not None and last is not ended and (more is None or last not in more)
                    and self._since_mark >= self._mark_frames):
                if ended is None:
                    ended = last
                else:
                    if more is None:
                        more = []
                    more.append(last)
            if ended is not None:
                if marks is None:
                    marks = []
                marks.append((i, self._writer.mark(self._mark_name(ended))))
                if more is not None:
                    for turn in more:
                        marks.append((i, self._writer.mark(self._mark_name(turn))))
        # Pass 2: the frames, encoded from the ring into one buffer with their marks.
        np = PyBytes_GET_SIZE(self._writer._media_prefix)
        media_len = np + MC_B64_FRAME + 3
        size = count * (_header_len(media_len, False) + media_len)
        if marks is not None:
            for _, mark in marks:
                size += _header_len(PyBytes_GET_SIZE(mark), False) + PyBytes_GET_SIZE(mark)
        out = PyBytes_FromStringAndSize(NULL, size)
        o = <unsigned char*>PyBytes_AS_STRING(out)
        w = 0
        k = 0  # next mark
        for i in range(count):
            w += _write_header(o + w, 0x1, media_len, NULL)
            memcpy(o + w, PyBytes_AS_STRING(self._writer._media_prefix), np)
            w += np
            ring._frame_into(MC_FRAME_BYTES if ring._len >= MC_FRAME_BYTES else ring._len, o + w)
            w += MC_B64_FRAME
            memcpy(o + w, b'"}}', 3)
            w += 3
            while marks is not None and k < len(marks) and marks[k][0] == i:
                mark = marks[k][1]
                w += _write_text3(o + w, PyBytes_AS_STRING(mark), PyBytes_GET_SIZE(mark), b"", 0, b"", 0, NULL)
                k += 1
        self.frames_out += count
        twilio = self._twilio
        if isinstance(twilio, WsCore):
            (<WsCore>twilio)._send_frames_c(out)
        else:
            twilio.send_frames(out)
        if not ring._len:
            self._check_stored()
        return 0

    def _check_stored(self):
        """Store every answer whose text and heard part are both known (only a done one can be)."""
        for turn in self._unstored.values():
            if turn.done:
                break
        else:
            return
        for turn in list(self._unstored.values()):
            if turn.done:
                self._maybe_store_assistant(turn)


def _no_clock():
    pass
