# cython: language_level=3, freethreading_compatible=True, boundscheck=False, wraparound=False, cdivision=True
"""Internal: small record plug-ins for the tests and benchmarks (not public API).

Records are ``RECORD`` = ``[("id", "<i8"), ("x", "<f8")]``.

``NewtonSqrt(rounds)``
    CTransform: ``x -> sqrt(x)`` by ``rounds`` Newton steps (CPU work per
    record grows with ``rounds``); drops records with ``x < 0``; fails a
    record whose ``x`` is NaN with error code 1.
``AtLeast(threshold)``
    CFilter: keeps records with ``x >= threshold``; fails NaN with code 2.
``IdModulo(n)``
    CKey: ``id % n``; fails a negative id with code 3.
``Progress(rounds)``
    CTransform doing the same work as NewtonSqrt that also bumps a counter
    after every record (read with ``progress()`` from any thread), for the
    GIL-freedom tests.
``c_negate_plugin()``
    A plug-in made the C way (a ``reflux_plugin`` struct filled by hand, no
    CPlugin class): negates ``x``.
``fake_plugin(abi_version, struct_size)``
    A capsule with the given header, for the ABI checks.
"""
from libc.math cimport isnan
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer

from reflux_core.transform cimport (CTransform, CFilter, CKey, reflux_status, reflux_plugin,
                                    REFLUX_ABI_VERSION, REFLUX_PLUGIN_TRANSFORM)

cdef extern from "reflux_core/atomics.h" nogil:
    uint64_t rx_load64_relaxed(uint64_t* p)
    void rx_store64_relaxed(uint64_t* p, uint64_t v)

RECORD = [("id", "<i8"), ("x", "<f8")]

cdef enum:
    LANES = 8  # records NewtonSqrt works on side by side

cdef packed struct rec:
    int64_t id
    double x


cdef inline double _newton_sqrt(double x, int rounds) noexcept nogil:
    cdef double y = x + 1.0
    cdef int k
    for k in range(rounds):
        y = 0.5 * (y + x / y)
    return y


cdef class NewtonSqrt(CTransform):
    cdef int rounds

    def __init__(self, int rounds=8):
        super().__init__(RECORD)
        self.rounds = rounds

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        cdef const rec* a = <const rec*>src
        cdef rec* b = <rec*>dst
        cdef Py_ssize_t i, m = 0, base, j, cnt
        cdef int k
        cdef double xs[LANES]
        cdef double ys[LANES]
        # pass 1: drop and check, copying the records that stay
        for i in range(n):
            if isnan(a[i].x):
                status.index = i
                status.error = 1
                break
            if a[i].x < 0:
                continue
            b[m] = a[i]
            m += 1
        # pass 2: Newton over blocks of LANES independent records, so the
        # divisions overlap (and the compiler may use SIMD); per record the
        # same operations in the same order as _newton_sqrt
        base = 0
        while base < m:
            cnt = min(<Py_ssize_t>LANES, m - base)
            for j in range(LANES):
                xs[j] = b[base + j].x if j < cnt else 1.0
                ys[j] = xs[j] + 1.0
            for k in range(self.rounds):
                for j in range(LANES):
                    ys[j] = 0.5 * (ys[j] + xs[j] / ys[j])
            for j in range(cnt):
                b[base + j].x = ys[j]
            base += LANES
        return m


cdef class Progress(CTransform):
    cdef int rounds
    cdef uint64_t done

    def __init__(self, int rounds=1000):
        super().__init__(RECORD)
        self.rounds = rounds

    def progress(self):
        """Records finished so far (a snapshot from any thread)."""
        # relaxed: a progress counter, nothing is published through it
        return rx_load64_relaxed(&self.done)

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        cdef const rec* a = <const rec*>src
        cdef rec* b = <rec*>dst
        cdef Py_ssize_t i
        for i in range(n):
            b[i].id = a[i].id
            b[i].x = _newton_sqrt(a[i].x, self.rounds)
            # relaxed: single writer, readers only want a snapshot
            rx_store64_relaxed(&self.done, rx_load64_relaxed(&self.done) + 1)
        return n


cdef class AtLeast(CFilter):
    cdef double threshold

    def __init__(self, double threshold):
        super().__init__(RECORD)
        self.threshold = threshold

    cdef Py_ssize_t keep(self, const char* src, Py_ssize_t n, uint8_t* keep,
                         reflux_status* status) noexcept nogil:
        cdef const rec* a = <const rec*>src
        cdef Py_ssize_t i, kept = 0
        for i in range(n):
            if isnan(a[i].x):
                status.index = i
                status.error = 2
                return kept
            keep[i] = a[i].x >= self.threshold
            kept += keep[i]
        return kept


cdef class IdModulo(CKey):
    cdef int64_t n

    def __init__(self, int64_t n):
        super().__init__(RECORD)
        self.n = n

    cdef void key(self, const char* src, Py_ssize_t n, int64_t* keys,
                  reflux_status* status) noexcept nogil:
        cdef const rec* a = <const rec*>src
        cdef Py_ssize_t i
        for i in range(n):
            if a[i].id < 0:
                status.index = i
                status.error = 3
                return
            keys[i] = a[i].id % self.n


# ---------------------------------------------------------------- the C way

cdef int64_t _c_negate(void* self, const void* src, int64_t n, void* dst,
                       reflux_status* status) noexcept nogil:
    cdef const rec* a = <const rec*>src
    cdef rec* b = <rec*>dst
    cdef int64_t i
    for i in range(n):
        b[i].id = a[i].id
        b[i].x = -a[i].x
    return n


cdef reflux_plugin _c_negate_struct
_c_negate_struct.abi_version = REFLUX_ABI_VERSION
_c_negate_struct.struct_size = sizeof(reflux_plugin)
_c_negate_struct.kind = REFLUX_PLUGIN_TRANSFORM
_c_negate_struct.flags = 0
_c_negate_struct.in_itemsize = sizeof(rec)
_c_negate_struct.out_itemsize = sizeof(rec)
_c_negate_struct.name = b"c_negate"
_c_negate_struct.self = NULL
_c_negate_struct.transform = _c_negate
_c_negate_struct.filter = NULL
_c_negate_struct.key = NULL


def c_negate_plugin():
    """A capsule over a static ``reflux_plugin`` filled by hand (the C lane)."""
    return PyCapsule_New(<void*>&_c_negate_struct, b"reflux_core.plugin", NULL)


cdef void _free_fake(object cap) noexcept:
    free(PyCapsule_GetPointer(cap, b"reflux_core.plugin"))


def fake_plugin(unsigned int abi_version, unsigned int struct_size):
    """A capsule whose struct claims ``abi_version`` and ``struct_size`` (else a
    copy of the C negate plug-in), to test the ABI checks."""
    cdef reflux_plugin* p = <reflux_plugin*>malloc(sizeof(reflux_plugin))
    if p == NULL:
        raise MemoryError()
    memcpy(p, &_c_negate_struct, sizeof(reflux_plugin))
    p.abi_version = abi_version
    p.struct_size = struct_size
    return PyCapsule_New(<void*>p, b"reflux_core.plugin", _free_fake)
