# cython: language_level=3, freethreading_compatible=True
"""The hot path of ``reflux demo``: event scoring as a record plug-in.

A :class:`~reflux_core.transform.CTransform` over chunks of event records; it
runs without the GIL, so the demo's two scoring replicas use both cores.
Internal to reflux (the demo imports it); the README's "Writing a Cython
transformer" shows how to build one of your own.
"""
from libc.stdint cimport int64_t, uint64_t

from reflux_core.transform cimport CTransform, reflux_status

#: one event: sequence number, kind code, value, and the score this plug-in fills in
EVENT = [("seq", "<i8"), ("kind", "<i8"), ("value", "<i8"), ("score", "<i8")]

cdef packed struct event_rec:  # the layout of EVENT: four little-endian int64
    int64_t seq
    int64_t kind
    int64_t value
    int64_t score


cdef class ScoreEvents(CTransform):
    """``score`` = a few rounds of integer mixing of ``seq`` and ``value``
    (0-999), the same arithmetic as :func:`reflux.demo.score_event`."""

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
