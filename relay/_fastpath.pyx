# cython: language_level=3
"""Compiled per-frame hot path. Contract, docstrings: ``_fastpath.pyi``; layouts: ``_fastpath.pxd``.

One module built from one part per concern, each held equal to its plain-Python twin
(``_fastpath_py`` gathers the twins under this module's names):

* ``_messages.pxi`` (twin ``_messages_py``): Twilio and Realtime messages, the one-pass JSON scan
* ``_framing.pxi`` (``_framing_py``): WebSocket frames, RFC 6455
* ``_codec.pxi`` (``_codec_py``): G.711 μ-law and resampling
* ``_playout.pxi`` (``_playout_py``): the playout ring, the gap filler
* ``_wscore.pxi`` (``_wscore_py``): a socket's read loop and writes
* ``_media.pxi`` (``_media_py``): a call's per-frame media core

Parts are included in that order: each may use what the ones before it define.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8,
                              PyUnicode_GET_LENGTH)
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy, memset

from relay.errors import FrameError, PayloadError, ProtocolError

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)

IMPLEMENTATION = "cython"

cdef enum:  # bytes of JSON and base64 text
    QUOTE = 34      # "
    BSLASH = 92     # backslash
    EQ = 61         # =


include "_messages.pxi"
include "_framing.pxi"
include "_codec.pxi"
include "_playout.pxi"
include "_wscore.pxi"
include "_media.pxi"
