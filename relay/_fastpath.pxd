# cython: language_level=3
# Data layout of the compiled hot path's one class; the contract is in _fastpath.pyi.

cdef class TwilioWriter:
    cdef readonly object stream_sid  # object, not str: a str subclass is stored as given
    cdef bytes _media_prefix         # {"event":"media","streamSid":<sid>,"media":{"payload":"
    cdef bytes _mark_prefix          # {"event":"mark","streamSid":<sid>,"mark":{"name":
    cdef bytes _clear                # the whole clear message; built once, returned every time
