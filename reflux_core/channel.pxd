# Public cimport surface of reflux_core.channel.
#
# Changing anything here is an ABI change: bump reflux_core.ABI_VERSION.
# Fields are opaque (void*) so user extensions never depend on the private
# ring layout or headers; use the methods below.

cdef enum ring_kind:
    RING_SPSC = 0
    RING_MPMC = 1

cdef class Channel:
    """Bounded channel of Python objects (base of SPSCChannel and MPMCChannel)."""
    cdef void* _ring          # rx_spsc* or rx_mpmc*, per _kind
    cdef ring_kind _kind
    cdef readonly Py_ssize_t capacity

cdef class SPSCChannel(Channel):
    pass

cdef class MPMCChannel(Channel):
    pass

cdef class RecordChannel:
    """Bounded channel of fixed-size records described by a numpy dtype."""
    cdef void* _ring
    cdef ring_kind _kind
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t itemsize
    cdef readonly object dtype

    # C-level record transfer, callable without the GIL.  `records` points at
    # n contiguous records of `itemsize` bytes.  These never check Python
    # signals: pass a timeout (seconds; < 0 waits forever) to stay responsive.
    #
    # try_push_records: how many were pushed now (0 when full), -1 if closed.
    cdef Py_ssize_t try_push_records(self, const void* records, Py_ssize_t n) noexcept nogil
    # try_pop_records: how many were popped (0 when empty), -1 at end of stream.
    cdef Py_ssize_t try_pop_records(self, void* out, Py_ssize_t n) noexcept nogil
    # push_records: blocks until all n are in; returns n, or the count pushed
    # before the channel closed (-1 if none) or the timeout expired.
    cdef Py_ssize_t push_records(self, const void* records, Py_ssize_t n, double timeout) noexcept nogil
    # pop_records: blocks until at least one record is there; returns 1..n,
    # 0 on timeout, -1 at end of stream (closed and drained).
    cdef Py_ssize_t pop_records(self, void* out, Py_ssize_t n, double timeout) noexcept nogil
    # close: end of stream; wakes every waiter.  Safe from any thread.
    cdef void close_nogil(self) noexcept nogil
