# A call's per-frame media core, compiled (included by _fastpath.pyx).
# Contract: ``_fastpath.pyi`` (MediaCore, ItemAudio); oracle: ``_media_py.py``: the same bytes in
# the same writes, and the same state, for every input. A leaf: ``relay.conversation`` holds one
# and reads what it reports; the core calls no Python of its own on a steady frame. On the
# common path (a well-formed media frame, mark echo or audio delta) nothing is parsed into
# Python objects: the caller's payload is framed for the backend straight from Twilio's
# message, the agent's delta is decoded from its message into the ring, and paced frames are
# encoded from the ring straight into the one write that carries them and their marks.

from relay import twilio as _twilio_events  # Mark, for the rare mark echo the one-pass scan leaves


# ``on_event`` kinds (see ``_media_py``).
EV_NEW_ITEM = 1
EV_PLAYED = 2
EV_AUDIO_ERROR = 3


cdef class ItemAudio:
    """One answer's audio, in bytes of 8 kHz μ-law (read-only outside the core)."""

    def __init__(self, item_id):
        self.item_id = item_id
        self.produced = self.out = self.marked = self.played = 0
        self.played_at = self.first_in_at = self.first_out_at = self.heard_ms = None
        self.ended = self.interrupted = False
        self.response_id = ""

    def __repr__(self):
        return (f"ItemAudio({self.item_id!r}, produced={self.produced}, out={self.out}, played={self.played}, "
                f"ended={self.ended}, interrupted={self.interrupted})")


def _no_event(kind, item_id, now):
    pass


cdef class MediaCore:
    def __init__(self, twilio_out, stream_sid, *, lead_ms, mark_frames, held_frames, max_gap_fill_ms,
                 pace_ms=FRAME_MS, preroll_frames=0):
        self._twilio = twilio_out
        self._pace_ms = _po_int(pace_ms, "pace_ms", FRAME_MS, PO_MAX_MS)
        self._writer = TwilioWriter(stream_sid)
        self._lead_ms = _po_int(lead_ms, "lead_ms", 0, PO_MAX_MS)
        self._mark_frames = mark_frames
        self.on_wants_clock = _no_clock
        self.on_event = _no_event
        self.frames_in = self.frames_out = self.frames_held = self.frames_dropped = 0
        self.frames_filled = self.frames_late = self.marks_out = 0
        self._backend = None
        self._gate_open = False
        self._held = collections.deque(maxlen=max(1, held_frames))
        self._preroll = collections.deque(maxlen=preroll_frames) if preroll_frames > 0 else None
        self._gaps = GapFiller(FRAME_MS, max_gap_fill_ms)
        self._epoch = None
        self._ts0 = None
        self._ring = PlayoutRing(FRAME_BYTES)
        self._segments = collections.deque()
        self._t0 = None
        self._since_mark = 0
        self._clocked = False
        self._batch = self._batch_due = False
        self._current = None
        self._live = None
        self._wire = 0
        self._down = None
        self._items = {}
        self._dropped = set()
        self._cut_response = ""
        self._marks = {}
        self._cleared = set()
        self._fast_item = None
        self._fast_id = None

    # ---------------------------------------------------------------- state the owner reads

    @property
    def buffered(self):
        return self._ring._len

    @property
    def wire(self):
        return self._wire

    @wire.setter
    def wire(self, value):
        if type(value) is not int or not 0 <= value <= WIRE_PCM16:
            raise ValueError(f"wire must be one of 0..{WIRE_PCM16}")
        self._wire = value
        # The agent's 24 kHz, downsampled for Twilio: one stream, reset where the audio breaks.
        self._down = Resampler(24000, 8000) if value == WIRE_PCM16 else None

    @property
    def marks_pending(self):
        return len(self._marks)

    @property
    def gate_open(self):
        return self._gate_open

    @property
    def current(self):
        return self._current

    def item(self, item_id):
        return self._items.get(item_id)

    def state(self):
        """Every field, as plain values: what tests compare between the core and its twin."""
        cdef ItemAudio i
        ring = self._ring
        items = []
        for found in self._items.values():
            i = <ItemAudio>found
            items.append((i.item_id, i.produced, i.out, i.marked, i.played, i.played_at, i.first_in_at, i.first_out_at, i.ended,
                          i.interrupted, i.heard_ms))
        return {"ring": (ring.buffered, ring.pushed, ring.sent, ring.padded, ring.heard, ring.dropped),
                "segments": [((<ItemAudio>segment[0]).item_id, segment[1]) for segment in self._segments],
                "since mark": self._since_mark, "epoch": self._epoch, "ts0": self._ts0, "t0": self._t0,
                "held": list(self._held),
                "preroll": list(self._preroll) if self._preroll is not None else None, "gate": self._gate_open, "clocked": self._clocked, "pace": self._pace_ms,
                "current": self._current.item_id if self._current is not None else None,
                "items": items,
                "marks": [(name, (<ItemAudio>entry[0]).item_id, entry[1]) for name, entry in self._marks.items()],
                "cleared": sorted(self._cleared), "dropped": sorted(self._dropped), "cut": self._cut_response,
                "live": self._live.item_id if self._live is not None else None, "wire": self._wire}

    def audio_ms_to_time(self, audio_ms):
        if self._epoch is None or self._ts0 is None:
            return None
        return self._epoch + (self._ts0 + audio_ms) / 1000

    # ---------------------------------------------------------------- the backend session

    def attach(self, backend, replay=False):
        self._backend = backend
        self._gate_open = False
        self._ts0 = None
        if self._down is not None:
            self._down._reset()  # a new session's audio: no filter memory of the last one's
        if replay and self._preroll:
            self._held.extendleft(reversed(self._preroll))
        if self._preroll is not None:
            self._preroll.clear()

    def detach(self):
        self._backend = None
        self._gate_open = False

    def open_gate(self):
        self._gate_open = True
        held, self._held = list(self._held), collections.deque(maxlen=self._held.maxlen)
        if held:
            self._ts0 = held[0][1]
        for payload, ts in held:
            self._backend.send_append(payload)
            if self._preroll is not None:
                self._preroll.append((payload, ts))

    # ---------------------------------------------------------------- Twilio → backend

    def twilio_frame(self, message, now):
        return self._twilio_frame(message, now)

    cdef bint _twilio_frame(self, object message, double now) except -1:
        cdef Field f[6]
        cdef cbuf p
        cdef long long ts = 0
        cdef int kind
        if type(message) is bytes:
            p = <cbuf>PyBytes_AS_STRING(message)
            kind = _scan_twilio(p, PyBytes_GET_SIZE(message), f, &ts)
            if kind == SCAN_MEDIA:
                self._caller_audio(p + f[2].start, f[2].end - f[2].start, None, ts, now)
                return True
            if kind == SCAN_MARK:  # a mark echo, read in the same pass: what twilio.parse_event returns
                self._mark(PyUnicode_DecodeASCII(<const char*>p + f[5].start, f[5].end - f[5].start, NULL), now)
                return True
            if kind == SCAN_OTHER:
                return False  # another event, read by the owner
        # An unusual shape (escapes, non-ASCII, ...): the reference decides, as the twin does.
        twilio = _twilio_events
        try:
            media = _messages_py.parse_media(message)
            if media is not None:
                self.caller_audio(media[0], media[1], now)
                return True
            if b'"mark"' in message:
                event = twilio.parse_event(message)
                if isinstance(event, twilio.Mark):
                    self._mark(event.name, now)
                    return True
        except ProtocolError:
            pass  # handed up: the owner's parse says what is wrong, and the call closes
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
            silence = silence_b64(lost * FRAME_BYTES)
            self._upstream(<cbuf>PyBytes_AS_STRING(silence), PyBytes_GET_SIZE(silence), silence,
                           ts - lost * FRAME_MS)
        return self._upstream(p, n, payload, ts)

    cdef int _upstream(self, cbuf p, Py_ssize_t n, object payload, long long ts) except -1:
        backend = self._backend
        if self._gate_open:
            if self._ts0 is None:
                self._ts0 = ts
            if self._preroll is not None:  # (only a backend that is handed over mid-call keeps one)
                if payload is None:
                    payload = PyBytes_FromStringAndSize(<const char*>p, n)
                self._preroll.append((payload, ts))
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

    def mark(self, name, now):
        self._mark(name, now)

    cdef int _mark(self, object name, double now) except -1:
        cdef ItemAudio item, heard_out = None
        cdef long long cum
        marks = self._marks
        if name in self._cleared:
            # Echoed because of our clear: it means "cleared", not "played" (PROTOCOLS §1.4).
            self._cleared.discard(name)
            return 0
        if name not in marks:
            return 0
        while marks:
            first = next(iter(marks))
            entry = marks.pop(first)
            item = <ItemAudio>entry[0]
            cum = entry[1]
            if not item.interrupted and cum > item.played:
                item.played = cum
                item.played_at = now
                if item.ended and cum >= item.produced:
                    heard_out = item
            if first == name:
                break
        if heard_out is not None or not (marks or self._ring._len):
            self.on_event(EV_PLAYED, heard_out.item_id if heard_out is not None else "", now)
        return 0

    # ---------------------------------------------------------------- backend → Twilio

    def backend_frame(self, message, now):
        return self._backend_frame(message, now)

    cdef bint _backend_frame(self, object message, double now) except -1:
        cdef Field f[8]
        cdef cbuf p
        cdef Py_ssize_t ni
        cdef ItemAudio item
        cdef int kind
        if self._wire == WIRE_BINARY:
            return False  # its audio comes in binary frames (_backend_binary): a text one is an event
        if self._wire == WIRE_PCM16:
            if type(message) is bytes:
                p = <cbuf>PyBytes_AS_STRING(message)
                kind = _scan_gemini(p, PyBytes_GET_SIZE(message), f)
                if kind == SCAN_GEMINI:
                    return self._live_push(p + f[5].start, f[5].end - f[5].start, now)
                if kind == SCAN_OTHER:
                    return False
            data = _messages_py.parse_gemini_audio(message)
            if data is None:
                return False
            return self._live_push(<cbuf>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), now)
        if type(message) is bytes:
            p = <cbuf>PyBytes_AS_STRING(message)
            kind = _scan_delta(p, PyBytes_GET_SIZE(message), f)
            if kind == SCAN_OTHER:
                return False
            if kind == SCAN_LIVE or (kind == SCAN_DELTA and f[1].end == f[1].start):
                return self._live_push(p + f[2].start, f[2].end - f[2].start, now)
            if kind == SCAN_DELTA:
                ni = f[1].end - f[1].start
                item = self._fast_item
                if (item is not None and PyBytes_GET_SIZE(self._fast_id) == ni
                        and memcmp(PyBytes_AS_STRING(self._fast_id), p + f[1].start, ni) == 0
                        and (f[3].kind != STRING or item.response_id)):  # (a response named first: slow path)
                    # The item's answer: an interrupted one has ended set, and stays dropped.
                    if not item.ended:
                        self._agent_push(item, p + f[2].start, f[2].end - f[2].start, now)
                    return True
                self.agent_audio(PyUnicode_DecodeASCII(<const char*>p + f[1].start, ni, NULL),
                                 PyBytes_FromStringAndSize(<const char*>p + f[2].start, f[2].end - f[2].start), now,
                                 _response_id(p, f))
                return True
        # An unusual shape: the reference decides, as the twin does.
        try:
            delta = _messages_py.parse_audio_delta(message)
        except ProtocolError:
            return False
        if delta is None:
            return False
        if not delta[0]:
            return self._live_push(<cbuf>PyBytes_AS_STRING(delta[1]), PyBytes_GET_SIZE(delta[1]), now)
        self.agent_audio(delta[0], delta[1], now, delta[2])
        return True

    def backend_binary(self, payload, now):
        if type(payload) is not bytes:
            raise TypeError(f"backend_binary() takes bytes, not {type(payload).__name__}")
        return self._backend_binary(payload, now)

    cdef bint _backend_binary(self, bytes payload, double now) except -1:
        """A binary frame from the backend: its μ-law into the live item (False: handed up)."""
        if self._wire != WIRE_BINARY:
            return False
        return self._live_push(<cbuf>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), now)

    cdef bint _live_push(self, cbuf s, Py_ssize_t n, double now) except -1:
        """A delta with no item: into the live item, or handed up (False) when there is none."""
        cdef ItemAudio item = self._live
        if item is None or item.ended:
            return False
        self._agent_push(item, s, n, now)
        return True

    def live_item(self, item_id):
        self._live = <ItemAudio>self.add_item(item_id)
        return self._live

    def add_item(self, item_id):
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = ItemAudio(item_id)
        return item

    def agent_audio(self, item_id, payload, now, response_id=""):
        cdef ItemAudio item
        if item_id in self._dropped:
            return  # a late delta of an item the caller interrupted
        found = self._items.get(item_id)
        if found is None:
            found = self.add_item(item_id)
            self.on_event(EV_NEW_ITEM, item_id, now)
        item = <ItemAudio>found
        if item.ended:
            return
        if response_id and not item.response_id:
            item.response_id = response_id
            if response_id == self._cut_response:
                # A later item of the response the caller cut (a preamble's answer): never heard.
                item.ended = item.interrupted = True
                item.heard_ms = 0
                self._dropped.add(item.item_id)
                return
        if type(payload) is not bytes:
            raise TypeError(f"push() takes bytes, not {type(payload).__name__}")
        if type(item_id) is str and PyUnicode_IS_ASCII(item_id):
            self._fast_item, self._fast_id = item, item_id.encode()
        self._agent_push(item, <cbuf>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), now)

    cdef int _agent_push(self, ItemAudio item, cbuf s, Py_ssize_t n, double now) except -1:
        cdef Py_ssize_t m
        try:
            m = self._push_audio(s, n)
        except ProtocolError:  # not base64, or an answer longer than the ring holds
            self.on_event(EV_AUDIO_ERROR, item.item_id, now)
            return 0
        if item.produced == 0:
            item.first_in_at = now
        item.produced += m
        segments = self._segments
        if segments and segments[-1][0] is item:
            segments[-1][1] += m
        else:
            segments.append([item, m])
        self._current = item
        if self._batch:
            self._batch_due = True  # the read's end sends it (_release)
        elif not self._defer(now):
            self._pump_c(now)
        if self._ring._len and not self._clocked:
            self._clocked = True  # asked once, until a tick says it needs no more
            self.on_wants_clock()
        return 0

    cdef Py_ssize_t _push_audio(self, cbuf s, Py_ssize_t n) except -1:
        """The n bytes of audio at s, in the wire's encoding, into the ring as μ-law; returns its length."""
        cdef Py_ssize_t m
        cdef bytes pcm
        if self._wire == WIRE_BINARY:
            return self._ring._push_ulaw(s, n)
        if self._wire != WIRE_PCM16:
            return self._ring._push_raw(s, n)
        m = _b64_len(s, n)
        if m < 0:
            raise PayloadError("payload is not padded standard base64")
        if m & 1:
            raise PayloadError("PCM16 audio must have an even number of bytes")
        pcm = PyBytes_FromStringAndSize(NULL, m)
        _po_dec_ring(<unsigned char*>PyBytes_AS_STRING(pcm), m, 0, s, m)
        pcm = self._down._down_ulaw(<cbuf>PyBytes_AS_STRING(pcm), m >> 1)
        return self._ring._push_ulaw(<cbuf>PyBytes_AS_STRING(pcm), PyBytes_GET_SIZE(pcm))

    def end_item(self, item_id):
        found = self._items.get(item_id)
        if found is not None:
            (<ItemAudio>found).ended = True

    def end_all(self):
        for found in self._items.values():
            (<ItemAudio>found).ended = True

    def flush(self, now):
        cdef ItemAudio item
        self._pump_c(now)
        for found in self._items.values():
            item = <ItemAudio>found
            if (item.ended and not item.interrupted and item.out == item.produced and item.marked < item.out
                    and not any(segment[0] is item for segment in self._segments)):
                self._twilio.send_frames(build_frame(0x1, self._writer.mark(self._mark_name(item))))

    def tick(self, double now):
        """The shared clock's 20 ms tick: release the frames due. False: no more ticks wanted."""
        self._pump_c(now)
        self._clocked = self._ring._len > 0
        return self._clocked

    cdef long long _heard(self, ItemAudio item, double now):
        since = item.played_at if item.played_at is not None else item.first_out_at
        if since is None:
            return item.played
        return max(item.played, min(item.out, item.played + <long long>((now - <double>since) * 1000 * BYTES_PER_MS)))

    cdef ItemAudio _being_heard(self, double now):
        cdef ItemAudio item = self._current
        cdef ItemAudio other
        if item is None or not item.response_id:
            return item
        for found in self._items.values():
            other = <ItemAudio>found
            if other is item:
                break
            if (other.response_id == item.response_id and not other.interrupted and other.produced > 0
                    and self._heard(other, now) < other.produced):
                return other
        return item

    def interrupt(self, double now):
        cdef ItemAudio item = self._being_heard(now)
        cdef ItemAudio later
        if item is None or item.interrupted or item.produced == 0:
            return None
        if item.ended and item.played >= item.produced:
            return None  # everything was heard: no clear, no truncate (PROTOCOLS §2.5 step 4)
        self._twilio.send(self._writer.clear())
        self._ring.clear()
        if self._down is not None:
            self._down._reset()  # the next answer starts afresh, not from the cut one's filter memory
        for segment in self._segments:
            later = <ItemAudio>segment[0]
            later.ended = True
            if later is not item and later.response_id and later.response_id == item.response_id:
                later.interrupted = True  # queued behind the item cut, in its response: never heard
                later.heard_ms = 0
                self._dropped.add(later.item_id)
        self._segments.clear()
        self._cleared.update(self._marks)
        self._marks.clear()
        item.heard_ms = self._heard(item, now) // BYTES_PER_MS
        item.interrupted = True
        item.ended = True
        self._dropped.add(item.item_id)
        self._cut_response = item.response_id
        return item

    cdef str _mark_name(self, ItemAudio item):
        self._since_mark = 0
        item.marked = item.out
        name = f"{item.item_id}:{item.out}"
        self._marks[name] = (item, item.out)
        self.marks_out += 1
        return name

    def _pump(self, now):
        self._pump_c(now)

    cdef int _release(self, double now) except -1:
        """The end of a read of the backend leg: what its deltas made due goes in one write."""
        self._batch = False
        if self._batch_due:
            self._batch_due = False
            if not self._defer(now):
                self._pump_c(now)
        return 0

    cdef bint _defer(self, double now) except -1:
        cdef long long elapsed
        cdef PlayoutRing ring = self._ring
        if self._pace_ms <= FRAME_MS or self._t0 is None:
            return False
        elapsed = <long long>((now - <double>self._t0) * 1000)
        if elapsed < 0 or elapsed > PO_MAX_MS:
            return False
        ring._due(elapsed, self._lead_ms)  # brings what the ear has heard up to now
        return ring.sent + ring.padded - ring.heard >= (self._pace_ms + FRAME_MS) * BYTES_PER_MS

    @cython.cdivision(True)
    cdef int _pump_c(self, double now) except -1:
        cdef PlayoutRing ring = self._ring
        cdef long long elapsed, n, whole, k, count, lead = self._lead_ms, take, used, left
        cdef Py_ssize_t i, np, size, w, media_len
        cdef bint final, partial
        cdef unsigned char* o
        cdef bytes out, mark
        cdef list marks = None
        cdef ItemAudio item, last, ended
        if ring._len == 0:
            return 0
        if self._t0 is None:
            elapsed = 0
        else:
            elapsed = <long long>((now - <double>self._t0) * 1000)
        if elapsed < 0 or elapsed > PO_MAX_MS:
            ring.frames_due(elapsed, lead)  # raises as the reference does
        n = ring._due(elapsed, lead)
        whole = ring._len // FRAME_BYTES
        segments = self._segments
        final = (<ItemAudio>segments[-1][0]).ended if segments else False
        if final and n == whole and ring._len > whole * FRAME_BYTES:
            # The answer's last, partial frame goes out padded with silence, if the lead has room.
            if lead * BYTES_PER_MS - (ring.sent + ring.padded - ring.heard) >= (n + 1) * FRAME_BYTES:
                n += 1
        if n == 0:
            return 0
        if self._t0 is None:
            self._t0 = now
        k = whole if n > whole else n
        partial = final and n > whole and ring._len > k * FRAME_BYTES
        count = k + partial
        # Pass 1: which answers each frame carries; an answer whose audio ends in it gets a mark
        # right after it, and so does the newest one every ``mark_frames`` frames.
        for i in range(count):
            take, last, ended, more = FRAME_BYTES, None, None, None
            while take and segments:
                segment = segments[0]
                item = <ItemAudio>segment[0]
                left = segment[1]
                used = take if take < left else left
                if item.first_out_at is None:
                    item.first_out_at = now
                item.out += used
                take -= used
                last = item
                segment[1] = left - used
                if left == used:
                    segments.popleft()
                    if item.ended or segments:  # the answer ends here (not a dry ring)
                        if ended is None:
                            ended = item
                        else:
                            if more is None:
                                more = []
                            more.append(item)
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
                    for item in more:
                        marks.append((i, self._writer.mark(self._mark_name(item))))
        # Pass 2: the frames, encoded from the ring into one buffer with their marks.
        np = PyBytes_GET_SIZE(self._writer._media_prefix)
        media_len = np + B64_FRAME_BYTES + 3
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
            ring._frame_into(FRAME_BYTES if ring._len >= FRAME_BYTES else ring._len, o + w)
            w += B64_FRAME_BYTES
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
        return 0


def _no_clock():
    pass
