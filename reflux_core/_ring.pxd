# Private: the C ring buffers, atomics and parking of reflux_core (include/reflux_core/*.h).
# Not part of the public cimport surface; public .pxd files never cimport this.
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "reflux_core/atomics.h" nogil:
    void rx_cpu_relax()
    void rx_fence_seqcst()
    int rx_asym_init()
    void rx_heavy_barrier()
    void rx_light_barrier()
    uint64_t rx_add64_relaxed(uint64_t* p, uint64_t v)
    uint32_t rx_add32_relaxed(uint32_t* p, uint32_t v)
    uint32_t rx_sub32_relaxed(uint32_t* p, uint32_t v)
    uint32_t rx_load32_relaxed(uint32_t* p)
    uint32_t rx_load32_acquire(uint32_t* p)
    void rx_store32_relaxed(uint32_t* p, uint32_t v)
    uint64_t rx_load64_relaxed(uint64_t* p)
    void rx_store64_relaxed(uint64_t* p, uint64_t v)
    uint64_t rx_load64_acquire(uint64_t* p)
    uint64_t rx_add64_release(uint64_t* p, uint64_t v)
    void rx_store64_release(uint64_t* p, uint64_t v)
    uint64_t rx_sub64_acqrel(uint64_t* p, uint64_t v)
    uint64_t rx_sub64_relaxed(uint64_t* p, uint64_t v)
    bint rx_cas_ptr_acqrel(void** p, void** expected, void* desired)

cdef extern from "reflux_core/park.h" nogil:
    ctypedef struct rx_event:
        uint32_t spin_hint
        uint32_t gil_hint
    const char* rx_park_backend()
    int64_t rx_now_ns()
    int rx_event_init(rx_event* ev)
    void rx_event_destroy(rx_event* ev)
    void rx_thread_yield()
    uint32_t rx_event_prepare(rx_event* ev)
    int rx_event_wait(rx_event* ev, uint32_t s, int64_t timeout_ns)
    void rx_event_notify(rx_event* ev)

cdef extern from "reflux_core/rings.h" nogil:
    uint64_t RX_MAX_CAPACITY
    uint64_t rx_round_capacity(uint64_t n)
    int rx_enter_side(uint32_t* busy)
    void rx_leave_side(uint32_t* busy)

    ctypedef struct rx_spsc:
        uint64_t capacity
        uint64_t elem
        uint64_t tail
        uint64_t head
        uint64_t full_waits
        uint64_t empty_waits
        uint32_t producer_busy
        uint32_t consumer_busy
        rx_event not_empty
        rx_event not_full
    rx_spsc* rx_spsc_new(uint64_t capacity, uint64_t elem)
    void rx_spsc_free(rx_spsc* r)
    int64_t rx_spsc_push_ptrs(rx_spsc* r, void** src, uint64_t n)
    int64_t rx_spsc_pop_ptrs(rx_spsc* r, void** dst, uint64_t n)
    int64_t rx_spsc_push_recs(rx_spsc* r, const void* src, uint64_t n)
    int64_t rx_spsc_pop_recs(rx_spsc* r, void* dst, uint64_t n)
    int rx_spsc_can_pop(rx_spsc* r)
    int rx_spsc_can_push(rx_spsc* r)
    uint64_t rx_spsc_len(rx_spsc* r)
    int rx_spsc_closed(rx_spsc* r)
    int rx_spsc_drained(rx_spsc* r)
    int rx_spsc_close(rx_spsc* r)

    ctypedef struct rx_mpmc:
        uint64_t capacity
        uint64_t elem
        uint64_t enq
        uint64_t deq
        uint64_t full_waits
        uint64_t empty_waits
        rx_event not_empty
        rx_event not_full
    rx_mpmc* rx_mpmc_new(uint64_t capacity, uint64_t elem)
    void rx_mpmc_free(rx_mpmc* r)
    int64_t rx_mpmc_push_ptrs(rx_mpmc* r, void** src, uint64_t n)
    int64_t rx_mpmc_pop_ptrs(rx_mpmc* r, void** dst, uint64_t n)
    int64_t rx_mpmc_push_recs(rx_mpmc* r, const void* src, uint64_t n)
    int64_t rx_mpmc_pop_recs(rx_mpmc* r, void* dst, uint64_t n)
    int rx_mpmc_can_pop(rx_mpmc* r)
    int rx_mpmc_can_push(rx_mpmc* r)
    uint64_t rx_mpmc_len(rx_mpmc* r)
    int rx_mpmc_closed(rx_mpmc* r)
    int rx_mpmc_drained(rx_mpmc* r)
    int rx_mpmc_close(rx_mpmc* r)

cdef extern from *:
    """
    #ifndef REFLUX_DEBUG
    #define REFLUX_DEBUG 0
    #endif
    """
    # 1 in builds made with REFLUX_DEBUG=1 (asserts, -O0 -g, misuse checks on every call)
    const int REFLUX_DEBUG

cdef extern from *:
    """
    #if defined(Py_GIL_DISABLED)
    #define RX_HAS_GIL 0
    #else
    #define RX_HAS_GIL 1
    #endif
    """
    # 0 on free-threaded CPython builds
    const int RX_HAS_GIL
