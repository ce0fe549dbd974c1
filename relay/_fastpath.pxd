# cython: language_level=3
# Data layout of the compiled hot path's one class; the contract is in _fastpath.pyi.

cdef class TwilioWriter:
    cdef readonly object stream_sid  # object, not str: a str subclass is stored as given
    cdef bytes _media_prefix         # {"event":"media","streamSid":<sid>,"media":{"payload":"
    cdef bytes _mark_prefix          # {"event":"mark","streamSid":<sid>,"mark":{"name":
    cdef bytes _clear                # the whole clear message; built once, returned every time

cdef class FrameReader:
    cdef readonly bint masked           # True on the server side: every client frame is masked
    cdef readonly Py_ssize_t max_size   # largest message accepted, fragments included
    cdef bytes _buf                     # unread bytes live in _buf[_pos:]
    cdef Py_ssize_t _pos
    cdef list _parts                    # fragments of the message being reassembled
    cdef int _part_op                   # its opcode, or -1 when none is in progress
    cdef Py_ssize_t _part_size
    cdef bytes _frame(self, int* fin_out, int* op_out)
    cdef bytes _next(self, int* op_out)
