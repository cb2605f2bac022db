# Public cimport surface of reflux_core.transform: the Cython plug-in base classes.
#
#     from reflux_core.transform cimport CTransform, reflux_status
#
#     cdef class Scale(CTransform):
#         cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
#                                   reflux_status* status) noexcept nogil:
#             ...
#
# Every method below is called WITHOUT the GIL, once per batch of n records.
# Changing anything here (or in include/reflux_core/abi.h) is an ABI change:
# bump reflux_core.ABI_VERSION and REFLUX_ABI_VERSION together.
# No inline functions and no private headers here (only abi.h).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from reflux_core.channel cimport RecordChannel

cdef extern from "reflux_core/abi.h":
    enum:
        REFLUX_ABI_VERSION
        REFLUX_PLUGIN_TRANSFORM
        REFLUX_PLUGIN_FILTER
        REFLUX_PLUGIN_KEY
        REFLUX_ERR_NOT_IMPLEMENTED
        REFLUX_ERR_ROUTE
        REFLUX_ERR_BAD_RETURN
    const char* REFLUX_PLUGIN_CAPSULE

    ctypedef struct reflux_status:
        int64_t index
        int32_t error
        int32_t reserved

    ctypedef int64_t (*reflux_transform_fn)(void* self, const void* src, int64_t n, void* dst,
                                            reflux_status* status) noexcept nogil
    ctypedef int64_t (*reflux_filter_fn)(void* self, const void* src, int64_t n, uint8_t* keep,
                                         reflux_status* status) noexcept nogil
    ctypedef int64_t (*reflux_key_fn)(void* self, const void* src, int64_t n, int64_t* keys,
                                      reflux_status* status) noexcept nogil

    ctypedef struct reflux_plugin:
        uint32_t abi_version
        uint32_t struct_size
        uint32_t kind
        uint32_t flags
        int64_t in_itemsize
        int64_t out_itemsize
        const char* name
        void* self
        reflux_transform_fn transform
        reflux_filter_fn filter
        reflux_key_fn key


cdef class CPlugin:
    """Base of the Cython plug-ins: holds the C ABI struct and the record dtypes."""
    cdef reflux_plugin plugin
    cdef bytes _name
    cdef readonly object in_dtype
    cdef readonly object out_dtype


cdef class CTransform(CPlugin):
    # Transform n records of in_dtype at src into dst (room for n records of
    # out_dtype).  Write 0 (drop) or 1 output per input, in order; return how
    # many were written.  To fail on record i: set status.index = i,
    # status.error = a non-zero code, return the outputs written for [0, i).
    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil


cdef class CFilter(CPlugin):
    # keep[i] = 1 to pass record i, 0 to drop it; return how many are kept.
    # Failing: as CTransform.transform.
    cdef Py_ssize_t keep(self, const char* src, Py_ssize_t n, uint8_t* keep,
                         reflux_status* status) noexcept nogil


cdef class CKey(CPlugin):
    # keys[i] = routing key of record i (an int64, looked up in the
    # Messenger's routes like a Python int).  Failing: as CTransform.transform.
    cdef void key(self, const char* src, Py_ssize_t n, int64_t* keys,
                  reflux_status* status) noexcept nogil


cdef enum pump_status:
    PUMP_END = 0          # the input ended and was drained (outputs closed if close_outputs)
    PUMP_STOPPED = 1      # stop() was called
    PUMP_ERROR = 2        # a record failed (see RecordPump.error_*); call run_nogil again to go on
    PUMP_CLOSED = 3       # an output channel was closed by its consumer
    PUMP_YIELD = 4        # about `slice` seconds passed: check signals / run other work, then call again


cdef class RecordPump:
    """Moves records input channel -> plug-in -> output channel(s) without the GIL."""
    cdef RecordChannel src
    cdef list outputs                 # RecordChannel, one per key value (kind KEY) or one
    cdef void** out_ptrs              # borrowed RecordChannel pointers (outputs holds them)
    cdef Py_ssize_t n_out             # outputs addressed by key (kind KEY) or 1
    cdef Py_ssize_t default_out       # index in out_ptrs of the default output, or -1
    cdef object plugin_owner          # keeps the plug-in (and its capsule) alive
    cdef const reflux_plugin* plug
    cdef char* inbuf
    cdef char* outbuf
    cdef uint8_t* mask
    cdef int64_t* keys
    cdef Py_ssize_t batch
    cdef Py_ssize_t got               # records in inbuf
    cdef Py_ssize_t pos               # next record of inbuf to process
    cdef uint32_t stop_flag           # written by stop() (release), read by the loop (acquire)
    cdef uint32_t running             # 1 while run() runs (exchange acq_rel): one thread at a time
    cdef double slice_s               # longest single wait, so stop() is seen
    cdef bint close_outputs           # close every output at the end of the input
    # counters in records; written by the pump's thread only (relaxed atomic
    # stores), read by any thread as a snapshot (relaxed atomic loads)
    cdef uint64_t n_received, n_emitted, n_filtered, n_errors, n_dropped
    cdef int32_t last_error           # code of the last failing record
    cdef char* errbuf                 # a copy of that record (in_itemsize bytes)

    # One slice of work without the GIL: returns PUMP_YIELD after about
    # slice_s seconds (working or waiting), or another status when the pump
    # is done (END, CLOSED), stopped, or a record failed (ERROR: call again
    # to go on after it).  Safe to call again after any status but END/CLOSED.
    # One thread at a time: the caller makes sure of it (run() checks).
    cdef pump_status run_nogil(self) noexcept nogil
    cdef void stop_nogil(self) noexcept nogil
