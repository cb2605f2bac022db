# cython: language_level=3, freethreading_compatible=True
"""The compiled parts of ``reflux demo``: parsing event lines into records, and the
record plug-ins of its hot path, all running without the GIL.

Events travel as records (:data:`EVENT`) from the parser to the window totals:
a Filter drops unknown kinds (:class:`KnownKinds`), two scoring replicas score
them (:class:`ScoreEvents`), a Messenger routes purchases by kind
(:class:`KindKey`) and purchases are weighted (:class:`TripleValue`).  Internal
to reflux (the demo imports it); the documentation's "Writing Cython transformers" page
(docs/cython.md) shows how to build plug-ins of your own.
"""
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp

from reflux_core.transform cimport CFilter, CKey, CTransform, reflux_status

import numpy as np

#: one event: sequence number, kind code (-1: unknown), value, score, its window
#: (``seq // WINDOW``) and how many events of a known kind that window holds
EVENT = [("seq", "<i8"), ("kind", "<i8"), ("value", "<i8"), ("score", "<i8"),
         ("window", "<i8"), ("wsize", "<i8")]
#: the kinds, by code
KINDS = ("click", "view", "buy", "scroll")
#: input events per window of totals
WINDOW = 100
#: the kind code of a purchase
BUY = 2

cdef packed struct event_rec:  # the layout of EVENT: six little-endian int64
    int64_t seq
    int64_t kind
    int64_t value
    int64_t score
    int64_t window
    int64_t wsize

cdef enum:
    C_WINDOW = 100
    C_BUY = 2
    MAX_WINDOWS = 4096  # windows one parsed chunk may span


cdef inline int64_t _kind_code(const char* p, Py_ssize_t n) noexcept nogil:
    if n == 5 and memcmp(p, b"click", 5) == 0:
        return 0
    if n == 4 and memcmp(p, b"view", 4) == 0:
        return 1
    if n == 3 and memcmp(p, b"buy", 3) == 0:
        return 2
    if n == 6 and memcmp(p, b"scroll", 6) == 0:
        return 3
    return -1


cdef Py_ssize_t _parse(const char* s, Py_ssize_t size, event_rec* out, Py_ssize_t n) noexcept nogil:
    """Parse ``n`` lines ``seq,kind,value`` separated by newlines; returns the index
    of the first malformed line, or -1."""
    cdef Py_ssize_t pos = 0, i, start
    cdef int64_t v
    cdef int digits
    for i in range(n):
        # seq
        v = 0
        digits = 0
        while pos < size and s[pos] >= 48 and s[pos] <= 57:
            v = v * 10 + (s[pos] - 48)
            pos += 1
            digits += 1
        if digits == 0 or digits > 18 or pos >= size or s[pos] != 44:  # ','
            return i
        out[i].seq = v
        pos += 1
        # kind
        start = pos
        while pos < size and s[pos] != 44:
            pos += 1
        if pos >= size:
            return i
        out[i].kind = _kind_code(s + start, pos - start)
        pos += 1
        # value
        v = 0
        digits = 0
        while pos < size and s[pos] >= 48 and s[pos] <= 57:
            v = v * 10 + (s[pos] - 48)
            pos += 1
            digits += 1
        if digits == 0 or digits > 18 or (pos < size and s[pos] != 10):  # '\n'
            return i
        out[i].value = v
        out[i].score = 0
        out[i].window = out[i].seq // C_WINDOW
        pos += 1
    return -1


def parse_lines(list lines):
    """Event lines ``"seq,kind,value"`` (a chunk of consecutive ones) -> an
    :data:`EVENT` array, parsed without the GIL.

    Unknown kinds get kind -1.  Each event gets its window (``seq // WINDOW``)
    and that window's number of known events (``wsize``), so a consumer that
    sees the events in any order knows when a window is complete.  For that a
    chunk must hold whole windows: consecutive events starting at a window
    boundary, a multiple of ``WINDOW`` of them except in the stream's last
    chunk.  Raises ``ValueError`` for a malformed line or lines that are not
    consecutive events from a window boundary.
    """
    cdef Py_ssize_t n = len(lines)
    out = np.empty(n, dtype=EVENT)
    if n == 0:
        return out
    cdef bytes blob = "\n".join(lines).encode("ascii")  # one C-level join and encode, with the GIL
    cdef const char* s = blob
    cdef Py_ssize_t size = len(blob)
    cdef uint8_t[::1] raw = out.view(np.uint8)
    cdef event_rec* recs = <event_rec*>&raw[0]
    cdef Py_ssize_t bad, i
    cdef int64_t first, w
    cdef int64_t counts[MAX_WINDOWS]
    with nogil:
        bad = _parse(s, size, recs, n)
    if bad >= 0:
        raise ValueError(f"parse_lines: line {bad} is not 'seq,kind,value': {lines[bad]!r:.80}")
    first = recs[0].window
    if recs[0].seq % C_WINDOW != 0 or recs[n - 1].window - first >= MAX_WINDOWS:
        raise ValueError(f"parse_lines: a chunk must start at a window boundary (seq {recs[0].seq})"
                         f" and span at most {MAX_WINDOWS} windows")
    with nogil:
        for i in range(recs[n - 1].window - first + 1):
            counts[i] = 0
        for i in range(n):
            w = recs[i].window - first
            if w < 0 or w >= MAX_WINDOWS or recs[i].seq != recs[0].seq + i:
                bad = i
                break
            if recs[i].kind >= 0:
                counts[w] += 1
        if bad < 0:
            for i in range(n):
                recs[i].wsize = counts[recs[i].window - first]
    if bad >= 0:
        raise ValueError(f"parse_lines: the lines of a chunk must be consecutive events (line {bad})")
    return out


cdef class KnownKinds(CFilter):
    """Keeps the events of a known kind (drops kind -1)."""

    def __init__(self, *, name="known_kinds"):
        super().__init__(EVENT, name=name)

    cdef Py_ssize_t keep(self, const char* src, Py_ssize_t n, uint8_t* keep,
                         reflux_status* status) noexcept nogil:
        cdef const event_rec* a = <const event_rec*>src
        cdef Py_ssize_t i, kept = 0
        for i in range(n):
            keep[i] = a[i].kind >= 0
            kept += keep[i]
        return kept


cdef class ScoreEvents(CTransform):
    """``score`` = a few rounds of integer mixing of ``seq`` and ``value``
    (0-999), the same arithmetic as :func:`reflux.cli.demo.score_event`."""

    def __init__(self, *, name="score"):
        super().__init__(EVENT, name=name)

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        cdef const event_rec* a = <const event_rec*>src
        cdef event_rec* b = <event_rec*>dst
        cdef Py_ssize_t i
        cdef uint64_t h
        cdef int k
        for i in range(n):
            b[i] = a[i]
            # seq < 2**32 and value < 2**31 keep every product below 2**64
            h = (<uint64_t>a[i].seq * 2654435761ULL + <uint64_t>a[i].value) & 0xFFFFFFFFULL
            for k in range(8):
                h ^= h >> 15
                h = (h * 2246822519ULL) & 0xFFFFFFFFULL
            b[i].score = <int64_t>(h % 1000)
        return n


cdef class KindKey(CKey):
    """Routing key: 0 for a purchase, 1 for any other kind."""

    def __init__(self, *, name="kind_key"):
        super().__init__(EVENT, name=name)

    cdef void key(self, const char* src, Py_ssize_t n, int64_t* keys,
                  reflux_status* status) noexcept nogil:
        cdef const event_rec* a = <const event_rec*>src
        cdef Py_ssize_t i
        for i in range(n):
            keys[i] = 0 if a[i].kind == C_BUY else 1


cdef class TripleValue(CTransform):
    """A purchase weighs three times its value."""

    def __init__(self, *, name="triple_value"):
        super().__init__(EVENT, name=name)

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        cdef const event_rec* a = <const event_rec*>src
        cdef event_rec* b = <event_rec*>dst
        cdef Py_ssize_t i
        for i in range(n):
            b[i] = a[i]
            b[i].value = a[i].value * 3
        return n
