# cython: language_level=3, freethreading_compatible=True, embedsignature=True, embedsignature.format=clinic, boundscheck=False, wraparound=False, cdivision=True, binding=False
"""Bounded lock-free channels: the transport under every reflux pipeline.

``SPSCChannel``
    One producer thread, one consumer thread at a time; each side caches the
    other's position, so the shared cache lines move once per batch.
``MPMCChannel``
    Any number of producers and consumers (per-slot sequence numbers).
``RecordChannel``
    Fixed-size records described by a numpy dtype, moved by copy; Cython code
    can push and pop records without the GIL (see ``channel.pxd``).

Capacity is rounded up to a power of two.  ``close()`` is end-of-stream:
producers get :class:`ChannelClosed`, consumers first receive every item still
in the channel, then :class:`ChannelClosed` (iteration simply ends).  Timeouts
raise :class:`Full` / :class:`Empty`, subclasses of :class:`queue.Full` and
:class:`queue.Empty`.

Blocking calls spin briefly, then park with the GIL released (futex on Linux,
WaitOnAddress on Windows, a condition variable elsewhere), in slices of at most
50 ms so Ctrl-C raises ``KeyboardInterrupt`` promptly in the main thread.
"""

import queue as _queue
from collections import namedtuple as _namedtuple
from types import GenericAlias as _GenericAlias

cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

from reflux_core._ring cimport *

cdef extern from "Python.h":
    # declared without an exception value on purpose: called from nogil
    # code, which leaves the exception set and reports SIGNALLED
    int _check_signals_noexc "PyErr_CheckSignals"() noexcept
    object PyList_New(Py_ssize_t n)
    # PyList_SET_ITEM steals the reference it is given; declared with a raw
    # pointer so Cython does not add an INCREF of its own.
    void _list_set_stolen "PyList_SET_ITEM"(object lst, Py_ssize_t i, void* item)
    Py_ssize_t PyList_GET_SIZE(object lst)
    void* _list_get_borrowed "PyList_GET_ITEM"(object lst, Py_ssize_t i)

cdef extern from *:
    """
    /* The reference an object channel holds for an item in flight, taken by
     * the producer.  Free-threaded CPython counts the references of an
     * object in two fields: a plain one for the thread that made it and an
     * atomic one for every other thread.  A reference taken in the plain
     * field and dropped by the consumer thread drives the atomic field below
     * zero, and the object is queued to its owner for a merge (a lock per
     * queue, and work for the owner when it next checks): most of the cost
     * of each item between two threads.  Taken in the atomic field, the
     * consumer's drop balances it and the object is freed by whichever
     * thread drops the last reference.  GIL builds: a plain Py_INCREF. */
    static inline void rx_ref_for_channel(PyObject *op) {
    #if defined(Py_GIL_DISABLED) && defined(_Py_REF_SHARED_SHIFT)
        if (_Py_IsImmortal(op)) return;
        /* what Py_INCREF does from a thread other than the owner */
        _Py_atomic_add_ssize(&op->ob_ref_shared, ((Py_ssize_t)1 << _Py_REF_SHARED_SHIFT));
    #else
        Py_INCREF(op);
    #endif
    }
    /* Hands the channel's reference of a popped item to the caller. */
    static inline PyObject *rx_take_ref(void *p) { return (PyObject *)p; }
    """
    void rx_ref_for_channel(object op)
    object rx_take_ref(void* p)  # a new reference: Cython adds no INCREF

__all__ = [
    "Channel", "SPSCChannel", "MPMCChannel", "RecordChannel",
    "ChannelClosed", "Full", "Empty", "EMPTY", "ChannelStats",
    "park_backend", "barrier_mode", "set_wait_policy", "MAX_CAPACITY",
]


class ChannelClosed(Exception):
    """The channel is closed: no more pushes; for consumers, it is also drained."""


class Full(_queue.Full):
    """A push timed out because the channel stayed full."""


class Empty(_queue.Empty):
    """A pop timed out because the channel stayed empty."""


class _EmptyType:
    __slots__ = ()

    def __repr__(self):
        return "EMPTY"

    def __reduce__(self):
        return "EMPTY"

    def __bool__(self):
        return False


EMPTY = _EmptyType()
"""Returned by ``try_pop()`` when nothing is available (items may be ``None``)."""

ChannelStats = _namedtuple("ChannelStats", ["pushed", "popped", "full_waits", "empty_waits"])
ChannelStats.__doc__ = """Counters of a channel: items pushed and popped so far, times a
producer waited because the channel was full, times a consumer waited because it was empty."""

MAX_CAPACITY = RX_MAX_CAPACITY
"""Largest capacity a channel accepts (slots)."""

# Largest ring a RecordChannel allocates, in bytes (4 GiB).
cdef uint64_t MAX_RECORD_RING_BYTES = (<uint64_t>1) << 32

cdef enum:
    # probes of _brief_wait before a nogil caller enters _wait_ready
    BRIEF_PROBES = 16
    # The adaptive spin budget never drops below this, so a side can learn
    # again that spinning pays.
    SPIN_FLOOR_NS = 2000
    # A ready Python waiter settling for the GIL (see _settle_for_gil) gives
    # up once the ring has not moved for this long: the thread holding the
    # GIL is then not streaming through this ring.
    SETTLE_IDLE_NS = 10000
    # Longest single park: after each slice a blocked call checks signals
    # (Ctrl-C), the close flag and its deadline.
    PARK_SLICE_NS = 50 * 1000 * 1000
    # pop_many moves at most this many pointers through the stack buffer
    STACK_BATCH = 256

# Bounded spinning before parking, in nanoseconds, for callers that hold no
# GIL (C-level record transfer, worker loops): a spinning consumer sees an
# item within a fraction of a microsecond, a parked one within tens.
cdef int64_t _spin_ns_nogil = 50000
# For calls from Python on a GIL build: a waiter spins with the GIL
# released, and once the channel is ready it settles (below) until the thread
# that made it ready gives the GIL up in a reflux wait, so neither side sleeps
# in the kernel.  On 2 cores this moved 1P1C single items 1.2-1.3x faster
# than parking at once.  Spinners are capped (_python_spinner_limit) so they
# never take the core the thread holding the GIL needs.  On a free-threaded
# build there is no GIL to hand over: a Python waiter spins as a nogil one
# does (adaptive, the same budget), and settling and the cap are compiled out.
cdef int64_t _spin_ns_python = 5000 if RX_HAS_GIL else 50000
# How many Python-level waiters may spin at once: one fewer than the CPUs
# this process may use (0 on one CPU: spinning there only delays the GIL
# holder).  Set at import.
cdef uint64_t _python_spinner_limit = 1
# Python-level waiters spinning now (a hint).
cdef uint64_t _python_spinners = 0
# Longest a ready Python caller waits for the GIL to be released by a reflux
# waiter before taking it the ordinary way (see _settle_for_gil), however
# busily the other side moves the ring.  Draining a full ring of 8192 slots
# takes 0.25-0.35 ms when the items cross cores; at a 0.25 ms cap the settle
# gave up mid-drain and both sides parked on every hand-over (60-120 context
# switches per 500,000 items instead of 5-15, and rounds a third slower).
cdef int64_t _gil_settle_max_ns = 1000000
# Threads inside a Python-level wait, i.e. not holding the GIL (a hint).
cdef uint64_t _gil_waiters = 0


# Every module that runs ring operations initialises the barrier mode once.
cdef int _asym_mode = rx_asym_init()


def _usable_cpus():
    import os
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_cpus = _usable_cpus()
_python_spinner_limit = <uint64_t>max(0, _cpus - 1)


def park_backend():
    """Name of the parking primitive this build uses: futex, waitonaddress or condvar."""
    return rx_park_backend().decode()


def barrier_mode():
    """How parked threads and the hot path agree on ordering: ``"membarrier"``
    (the hot path has no fence at all) or ``"fence"`` (a fence on both sides)."""
    return "membarrier" if _asym_mode else "fence"


def set_wait_policy(python_ns=None, nogil_ns=None):
    """Set how long a blocked call spins before it parks, in nanoseconds.

    ``python_ns`` applies to blocking calls made from Python, ``nogil_ns``
    to C-level calls made without the GIL (``push_records``...).  ``None``
    keeps a value.  Returns the previous ``(python_ns, nogil_ns)``.

    Spinning helps when producer and consumer run on different cores and
    hand items over quickly; it wastes CPU when threads outnumber cores.
    Defaults: 5,000 ns from Python, 50,000 ns without the GIL (0 and 0 on a
    one-CPU machine).  On a GIL build, however long the budget, at most one
    fewer Python waiters than the CPUs this process may use spin at a time;
    the others park at once.  On a free-threaded build Python waiters spin
    like nogil ones (default 50,000 ns), each side of a channel shortening
    its spin when spinning stops paying (threads outnumber cores).
    """
    old = (_spin_budget(True), _spin_budget(False))
    for name, value in (("python_ns", python_ns), ("nogil_ns", nogil_ns)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise ValueError(f"set_wait_policy: {name} must be an integer >= 0 or None, got {value!r}")
    # relaxed stores: tuning knobs read by waiters in other threads, which
    # may use the old or the new value (see _spin_budget)
    if python_ns is not None:
        rx_store64_relaxed(<uint64_t*>&_spin_ns_python, <uint64_t>int(python_ns))
    if nogil_ns is not None:
        rx_store64_relaxed(<uint64_t*>&_spin_ns_nogil, <uint64_t>int(nogil_ns))
    return old


cdef inline int64_t _spin_budget(bint from_python) noexcept nogil:
    """The spin budget of a waiter, in nanoseconds (set_wait_policy)."""
    # relaxed: a tuning knob; pairs with the relaxed stores in set_wait_policy
    if from_python:
        return <int64_t>rx_load64_relaxed(<uint64_t*>&_spin_ns_python)
    return <int64_t>rx_load64_relaxed(<uint64_t*>&_spin_ns_nogil)


def _init_wait_policy():
    if _cpus < 2:
        set_wait_policy(0, 0)


_init_wait_policy()


# ---------------------------------------------------------------- validation

cdef uint64_t _check_capacity(object capacity, str owner) except 0:
    if isinstance(capacity, bool):
        raise TypeError(f"{owner}: capacity must be an integer, got a bool")
    try:
        cap = capacity.__index__()
    except AttributeError:
        raise TypeError(
            f"{owner}: capacity must be an integer, got {type(capacity).__name__}") from None
    if cap < 1:
        raise ValueError(f"{owner}: capacity must be >= 1, got {cap}")
    if cap > RX_MAX_CAPACITY:
        raise ValueError(f"{owner}: capacity {cap} is larger than the maximum {RX_MAX_CAPACITY}")
    return <uint64_t>cap


cdef int64_t _deadline(object timeout) except -2:
    """-1: wait forever; 0: do not wait; otherwise an absolute rx_now_ns() deadline."""
    cdef double t
    if timeout is None:
        return -1
    if isinstance(timeout, bool):
        raise TypeError("timeout must be a number of seconds or None, got a bool")
    try:
        t = timeout
    except TypeError:
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}") from None
    except OverflowError:
        if timeout > 0:
            return -1  # longer than any wait: forever
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}") from None
    if t != t:
        raise ValueError("timeout must be >= 0 or None, got nan")
    if t < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return _deadline_from_seconds(t)


cdef inline int64_t _deadline_from_seconds(double t) noexcept nogil:
    if t < 0 or t > 1e9:
        return -1
    if t == 0:
        return 0
    return rx_now_ns() + <int64_t>(t * 1e9) + 1


cdef Py_ssize_t _check_count(object n, str what) except -1:
    if isinstance(n, bool):
        raise TypeError(f"{what} must be an integer, got a bool")
    try:
        v = n.__index__()
    except AttributeError:
        raise TypeError(f"{what} must be an integer, got {type(n).__name__}") from None
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {v}")
    # no channel holds more than MAX_CAPACITY; larger requests mean "all"
    return v if v <= RX_MAX_CAPACITY else RX_MAX_CAPACITY


# ---------------------------------------------------------------- ring dispatch
# One switch on the ring kind, inlined; the branch is perfectly predicted.

cdef inline int64_t _try_push(ring_kind k, void* r, bint recs, const void* src, uint64_t n) noexcept nogil:
    if k == RING_SPSC:
        if recs:
            return rx_spsc_push_recs(<rx_spsc*>r, src, n)
        return rx_spsc_push_ptrs(<rx_spsc*>r, <void**>src, n)
    if recs:
        return rx_mpmc_push_recs(<rx_mpmc*>r, src, n)
    return rx_mpmc_push_ptrs(<rx_mpmc*>r, <void**>src, n)


cdef inline int64_t _try_pop(ring_kind k, void* r, bint recs, void* dst, uint64_t n) noexcept nogil:
    if k == RING_SPSC:
        if recs:
            return rx_spsc_pop_recs(<rx_spsc*>r, dst, n)
        return rx_spsc_pop_ptrs(<rx_spsc*>r, <void**>dst, n)
    if recs:
        return rx_mpmc_pop_recs(<rx_mpmc*>r, dst, n)
    return rx_mpmc_pop_ptrs(<rx_mpmc*>r, <void**>dst, n)


cdef inline int _ready(ring_kind k, void* r, bint for_push) noexcept nogil:
    if k == RING_SPSC:
        return rx_spsc_can_push(<rx_spsc*>r) if for_push else rx_spsc_can_pop(<rx_spsc*>r)
    return rx_mpmc_can_push(<rx_mpmc*>r) if for_push else rx_mpmc_can_pop(<rx_mpmc*>r)


cdef inline rx_event* _event(ring_kind k, void* r, bint for_push) noexcept nogil:
    if k == RING_SPSC:
        return &(<rx_spsc*>r).not_full if for_push else &(<rx_spsc*>r).not_empty
    return &(<rx_mpmc*>r).not_full if for_push else &(<rx_mpmc*>r).not_empty


cdef inline uint64_t* _wait_counter(ring_kind k, void* r, bint for_push) noexcept nogil:
    if k == RING_SPSC:
        return &(<rx_spsc*>r).full_waits if for_push else &(<rx_spsc*>r).empty_waits
    return &(<rx_mpmc*>r).full_waits if for_push else &(<rx_mpmc*>r).empty_waits


cdef inline uint32_t* _side_flag(ring_kind k, void* r, bint producer) noexcept nogil:
    """The SPSC misuse detector of one side; NULL for MPMC (any number allowed)."""
    if k != RING_SPSC:
        return NULL
    return &(<rx_spsc*>r).producer_busy if producer else &(<rx_spsc*>r).consumer_busy


cdef inline uint64_t _ring_capacity(ring_kind k, void* r) noexcept nogil:
    return (<rx_spsc*>r).capacity if k == RING_SPSC else (<rx_mpmc*>r).capacity


cdef inline uint64_t _len(ring_kind k, void* r) noexcept nogil:
    return rx_spsc_len(<rx_spsc*>r) if k == RING_SPSC else rx_mpmc_len(<rx_mpmc*>r)


cdef inline bint _drained(ring_kind k, void* r) noexcept nogil:
    """End of stream: closed, nothing in flight, nothing left."""
    return rx_spsc_drained(<rx_spsc*>r) if k == RING_SPSC else rx_mpmc_drained(<rx_mpmc*>r)


cdef enum:
    # how RecordChannel pops behave when nothing is there
    POP_WAIT = 0     # pop(): wait up to the timeout, then Empty
    POP_TRY = 1      # try_pop(): an empty array at once
    POP_ITER = 2     # iteration: wait; StopIteration at the end


cdef inline bint _is_closed(ring_kind k, void* r) noexcept nogil:
    return rx_spsc_closed(<rx_spsc*>r) if k == RING_SPSC else rx_mpmc_closed(<rx_mpmc*>r)


cdef inline void _close(ring_kind k, void* r) noexcept nogil:
    if k == RING_SPSC:
        rx_spsc_close(<rx_spsc*>r)
    else:
        rx_mpmc_close(<rx_mpmc*>r)


cdef object _stats(ring_kind k, void* r):
    cdef rx_spsc* s
    cdef rx_mpmc* m
    # relaxed/acquire snapshots: exact only when the channel is quiet
    if k == RING_SPSC:
        s = <rx_spsc*>r
        return ChannelStats(rx_load64_relaxed(&s.tail),
                            rx_load64_relaxed(&s.head),
                            rx_load64_relaxed(&s.full_waits),
                            rx_load64_relaxed(&s.empty_waits))
    m = <rx_mpmc*>r
    return ChannelStats(rx_load64_relaxed(&m.enq) & ~((<uint64_t>1) << 63),
                        rx_load64_relaxed(&m.deq),
                        rx_load64_relaxed(&m.full_waits),
                        rx_load64_relaxed(&m.empty_waits))


# ---------------------------------------------------------------- waiting

cdef int _propagate() except -1:
    """Re-raise the exception a nogil loop left set (SIGNALLED)."""
    return -1


cdef inline bint _spin_until_ready(ring_kind k, void* r, bint for_push, int64_t spin_ns,
                                   bint may_yield) noexcept nogil:
    """Poll the ring for up to ``spin_ns`` nanoseconds; True once it is ready.
    ``may_yield``: give the core away now and then (a waiter whose peer may
    share its core; a capped Python spinner must not, its peer is about to
    hand it the GIL and a yield there cost a third of 1P1C throughput)."""
    cdef int64_t spin_end = rx_now_ns() + spin_ns
    cdef unsigned int j, backoff = 1, rounds = 0
    while True:
        if _ready(k, r, for_push):
            return True
        if rx_now_ns() >= spin_end:
            return False
        # exponential back-off (up to 64 pauses, ~2 us): polling the other
        # side's cache line too often slows the thread that owns it
        for j in range(backoff):
            rx_cpu_relax()
        if backoff < 64:
            backoff <<= 1
        elif may_yield:
            rounds += 1
            if rounds % 8 == 0:
                # let a peer that shares this core run
                rx_thread_yield()


cdef int _wait_ready(ring_kind k, void* r, bint for_push, int64_t deadline,
                     bint from_python) noexcept nogil:
    """Block until the ring may accept (for_push) or yield an element, or is
    closed.  Returns 1 when ready, 0 when the deadline passed.

    from_python: the caller released the GIL and will take it back; signal
    handlers (Ctrl-C) then run between park slices, and SIGNALLED is
    returned, the exception set, when one raised.
    """
    cdef rx_event* ev = _event(k, r, for_push)
    cdef int64_t now, slice_ns
    cdef uint32_t s
    cdef int result = -100
    cdef bint failed
    cdef int64_t spin_max = _spin_budget(from_python)
    cdef int64_t spin_ns
    cdef bint gil_aware = from_python and RX_HAS_GIL
    cdef bint spinner = False
    # relaxed: a statistic only
    rx_add64_relaxed(_wait_counter(k, r, for_push), 1)
    if gil_aware:
        # relaxed: a hint read by _settle_for_gil in other threads
        rx_add64_relaxed(&_gil_waiters, 1)
    if spin_max > 0 and gil_aware:
        # relaxed: a scheduling hint, never a correctness condition; pairs
        # with the decrement after the spin below
        if rx_add64_relaxed(&_python_spinners, 1) < _python_spinner_limit:
            spinner = True
        else:
            rx_sub64_relaxed(&_python_spinners, 1)
            spin_max = 0
    if spinner:
        # Python waiters spin a fixed budget: the spinner cap above already
        # keeps them off a core the GIL holder needs, and an adaptive budget
        # could settle at its floor, too short to see a GIL hand-over, after
        # which both sides parked on every wait (8 instead of 14 M items/s).
        if _spin_until_ready(k, r, for_push, spin_max, False):
            result = 1
        # relaxed: pairs with the increment above
        rx_sub64_relaxed(&_python_spinners, 1)
    elif spin_max > 0:
        # Adaptive: each side of a ring remembers whether spinning paid off
        # last time.  When the peer shares our core (threads outnumber
        # cores), spins fail, the budget halves towards the floor and the
        # side parks at once; when hand-offs are quick it grows back.
        # relaxed: a heuristic shared by the threads of one side
        spin_ns = rx_load32_relaxed(&ev.spin_hint)
        if spin_ns > spin_max:
            spin_ns = spin_max
        if _spin_until_ready(k, r, for_push, spin_ns, True):
            result = 1
            spin_ns = spin_ns * 2 + SPIN_FLOOR_NS
            rx_store32_relaxed(&ev.spin_hint, <uint32_t>(spin_ns if spin_ns < spin_max else spin_max))
        else:
            rx_store32_relaxed(&ev.spin_hint, <uint32_t>(spin_ns // 2 if spin_ns > 2 * SPIN_FLOOR_NS else SPIN_FLOOR_NS))
    while result == -100:
        if _ready(k, r, for_push):
            result = 1
            break
        s = rx_event_prepare(ev)
        # heavy barrier: the waiter half of the Dekker handshake between the
        # announcement above and the re-check below; pairs with the light
        # barrier a notifier runs between publishing and rx_event_notify
        rx_heavy_barrier()
        if _ready(k, r, for_push):
            result = 1
            break
        slice_ns = PARK_SLICE_NS
        if deadline > 0:
            now = rx_now_ns()
            if now >= deadline:
                result = 0
                break
            if deadline - now < slice_ns:
                slice_ns = deadline - now
        rx_event_wait(ev, s, slice_ns)
        if _ready(k, r, for_push):
            result = 1
            break
        if from_python:
            with gil:
                failed = _check_signals_noexc() < 0
            if failed:
                result = SIGNALLED
    if gil_aware:
        if result == 1:
            _settle_for_gil(k, r)
        rx_sub64_relaxed(&_gil_waiters, 1)
    return result


cdef inline void _settle_for_gil(ring_kind k, void* r) noexcept nogil:
    """The channel is ready; before taking the GIL back, wait (briefly,
    spinning) until another thread has released it in a reflux wait.

    Taking the GIL while the thread that made us ready still runs Python
    parks us in the interpreter's own GIL wait, and waking from there costs
    tens of microseconds, twice per hand-over.  A producer that fills a ring
    and then waits, or a consumer that drains it and then waits, releases
    the GIL inside a reflux wait, which this counts.  Settling lasts while
    the other side keeps moving the ring (it is filling or draining it and
    will wait next), and ends once the ring has stood still for
    SETTLE_IDLE_NS (the GIL holder is doing other work) or after
    _gil_settle_max_ns.  A fixed or adaptive time budget failed here: once
    it fell below the time the other side takes to drain a ring, every
    settle failed, and both sides parked on every hand-over (8 instead of
    14 M items/s for 1P1C single items)."""
    cdef int64_t now = rx_now_ns()
    cdef int64_t hard_end = now + _gil_settle_max_ns
    cdef int64_t idle_end = now + SETTLE_IDLE_NS
    cdef uint64_t seen = _len(k, r), cur
    cdef unsigned int j, backoff = 1
    if _gil_settle_max_ns <= 0:
        return
    # relaxed: a scheduling hint, never a correctness condition
    while rx_load64_relaxed(&_gil_waiters) < 2:
        for j in range(backoff):
            rx_cpu_relax()
        if backoff < 64:
            backoff <<= 1
        now = rx_now_ns()
        cur = _len(k, r)
        if cur != seen:
            seen = cur
            idle_end = now + SETTLE_IDLE_NS
        elif now >= idle_end:
            return
        if now >= hard_end:
            return


cdef enum:
    # extra results of the blocking loops, besides counts >= 0
    CLOSED_NONE = -1     # closed before anything moved
    MISUSE = -3          # a second thread on one side of an SPSC ring
    SIGNALLED = -4       # a signal handler raised (e.g. KeyboardInterrupt); exception set


cdef inline bint _brief_wait(ring_kind k, void* r, bint for_push) noexcept nogil:
    """A few pause-spaced probes before the full wait machinery (clock,
    counters, parking): a peer on another core often frees a slot or
    publishes an item within a few hundred nanoseconds."""
    cdef int i
    if _spin_budget(False) == 0:
        return False
    for i in range(BRIEF_PROBES):
        rx_cpu_relax()
        rx_cpu_relax()
        if _ready(k, r, for_push):
            return True
    return False


cdef enum push_status:
    PUSH_DONE = 0
    PUSH_CLOSED = 1
    PUSH_TIMEOUT = 2
    PUSH_MISUSE = 3
    PUSH_SIGNALLED = 4


cdef push_status _push_blocking(ring_kind k, void* r, bint recs, uint64_t elem,
                                const char* src, uint64_t n, uint64_t* done,
                                int64_t deadline, bint check_signals) noexcept nogil:
    """Push src[*done:n], blocking as needed; *done counts what went in, so
    nothing is lost or pushed twice whatever the outcome."""
    cdef int64_t got
    cdef int ready = 1
    cdef push_status status = PUSH_DONE
    while done[0] < n:
        got = _try_push(k, r, recs, src + done[0] * elem, n - done[0])
        if got < 0:
            status = PUSH_CLOSED
            break
        done[0] += <uint64_t>got
        if done[0] == n:
            break
        if deadline == 0 or ready == 0:
            status = PUSH_TIMEOUT
            break
        if not check_signals and _brief_wait(k, r, 1):
            continue
        ready = _wait_ready(k, r, 1, deadline, check_signals)
        if ready == SIGNALLED:
            status = PUSH_SIGNALLED
            break
    return status


cdef int _raise_push_failure(object ch, push_status status, str what) except -1:
    if status == PUSH_SIGNALLED:
        return _propagate()
    if status == PUSH_MISUSE:
        return _raise_misuse(ch, 1)
    if status == PUSH_TIMEOUT:
        raise Full(f"{type(ch).__name__}: {what} timed out, channel full ({ch.capacity} slots)")
    raise ChannelClosed(f"{type(ch).__name__}: {what} on a closed channel")


cdef int64_t _pop_blocking(ring_kind k, void* r, bint recs, char* dst, uint64_t n,
                           int64_t deadline, bint check_signals) noexcept nogil:
    """Pop 1..n elements, blocking until at least one is there.  Returns the
    count, 0 when the deadline passed, -1 at end of stream, or SIGNALLED."""
    cdef int64_t got
    cdef int ready = 1
    while True:
        got = _try_pop(k, r, recs, dst, n)
        if got != 0 or deadline == 0 or ready == 0:
            break
        if not check_signals and _brief_wait(k, r, 0):
            continue
        ready = _wait_ready(k, r, 0, deadline, check_signals)
        if ready == SIGNALLED:
            got = SIGNALLED
            break
    return got


cdef object _list_of_refs(void** buf, int64_t n):
    """A list of the n popped items, taking over the channel's references
    (released if the list cannot be made)."""
    cdef int64_t i
    try:
        result = PyList_New(n)
    except BaseException:
        for i in range(n):
            Py_DECREF(<object>buf[i])
        raise
    for i in range(n):
        _list_set_stolen(result, i, buf[i])  # steals the channel's reference
    return result


cdef int _raise_misuse(object ch, bint producer) except -1:
    side = "producer" if producer else "consumer"
    raise RuntimeError(
        f"{type(ch).__name__}: a second {side} thread used the channel concurrently; "
        f"an SPSC channel allows one {side} at a time (use MPMCChannel for several)")


# SPSC exclusivity of the Python-level methods.  Two threads inside one side
# of an SPSC ring at once would lose and duplicate items, so each call
# checks that no other thread of its side is inside:
#
# * free-threaded and debug builds: the call holds the side's flag from
#   start to end (an exchange on the side's own cache line);
# * GIL builds: the GIL keeps the parts of two calls that hold it apart, so
#   the flag is taken only around a wait, before the GIL is released, and a
#   call only reads it (a thread of its side waits without the GIL).
#
# A misuse is refused with RuntimeError; nothing is lost or duplicated.
# The nogil C-level methods (push_records...) are not checked: their callers
# keep to one thread per side.

cdef inline bint _enter_call(ring_kind k, void* r, bint producer, uint32_t** held) noexcept nogil:
    """Start a Python-level call on one side.  Returns True on misuse.
    ``*held``: the flag this call holds until it ends (leave with
    rx_leave_side), or NULL."""
    cdef uint32_t* flag = _side_flag(k, r, producer)
    held[0] = NULL
    if flag == NULL:
        return False  # MPMC: any number of threads
    if REFLUX_DEBUG or not RX_HAS_GIL:
        if rx_enter_side(flag):
            return True
        held[0] = flag
        return False
    return _side_busy(k, r, producer)


cdef inline bint _side_busy(ring_kind k, void* r, bint producer) noexcept nogil:
    """GIL builds: a thread of this side is inside a wait, without the GIL.
    Checked right before a ring operation, with nothing in between that
    could run Python code (and so let another thread take the GIL)."""
    cdef uint32_t* flag = _side_flag(k, r, producer)
    # relaxed: the flag was last written by a thread holding the GIL, which
    # this thread holds now (the GIL orders it)
    return flag != NULL and rx_load32_relaxed(flag) != 0


cdef inline bint _enter_wait(ring_kind k, void* r, bint producer, uint32_t* held,
                             uint32_t** taken) noexcept nogil:
    """Before a Python-level call releases the GIL to wait (GIL builds): take
    the side's flag, so a thread that gets the GIL meanwhile sees the side
    busy.  ``*taken``: the flag to leave after the wait, or NULL (the call
    holds it already, or MPMC).  Returns True on misuse."""
    cdef uint32_t* flag
    taken[0] = NULL
    if held != NULL:
        return False
    flag = _side_flag(k, r, producer)
    if flag == NULL:
        return False
    if rx_enter_side(flag):
        return True
    taken[0] = flag
    return False


cdef inline void _leave(uint32_t* flag) noexcept nogil:
    if flag != NULL:
        rx_leave_side(flag)


# ---------------------------------------------------------------- object channels

cdef int _make_channel(Channel self, object capacity, ring_kind kind) except -1:
    cdef uint64_t cap = _check_capacity(capacity, type(self).__name__)
    cdef void* ring
    if self._ring != NULL:
        raise RuntimeError(f"{type(self).__name__}: already initialised")
    self._kind = kind  # one value per class: a racing __init__ writes the same
    ring = rx_spsc_new(cap, sizeof(void*)) if kind == RING_SPSC else rx_mpmc_new(cap, sizeof(void*))
    if ring == NULL:
        raise MemoryError(f"{type(self).__name__}: cannot allocate a ring of {cap} slots")
    if not _install_ring(&self._ring, ring, kind):
        raise RuntimeError(f"{type(self).__name__}: already initialised")
    self.capacity = <Py_ssize_t>_ring_capacity(kind, ring)
    return 0


cdef bint _install_ring(void** slot, void* ring, ring_kind kind) noexcept nogil:
    """Publish a new ring in an empty ``_ring`` slot; False (the ring freed)
    if another thread's ``__init__`` got there first."""
    cdef void* expected = NULL
    # acq_rel CAS: one __init__ wins; publishes the ring's set-up (release)
    if rx_cas_ptr_acqrel(slot, &expected, ring):
        return True
    if kind == RING_SPSC:
        rx_spsc_free(<rx_spsc*>ring)
    else:
        rx_mpmc_free(<rx_mpmc*>ring)
    return False


cdef int _not_ready(object ch) except -1:
    raise TypeError(
        f"{type(ch).__name__} is abstract or not initialised; "
        "create an SPSCChannel, MPMCChannel or RecordChannel")


@cython.final
cdef class _ChannelIterator:
    cdef Channel ch

    def __iter__(self):
        return self

    def __next__(self):
        return _pop_one(self.ch, -1, True)


cdef class Channel:
    """A bounded channel of Python objects.

    Abstract: create an :class:`SPSCChannel` or an :class:`MPMCChannel`.
    """

    def __cinit__(self, *args, **kwargs):
        self._ring = NULL
        self.capacity = 0

    def __dealloc__(self):
        cdef void* p
        if self._ring == NULL:
            return
        # release the references of items still in the channel (nobody else
        # can use it any more)
        while _try_pop(self._kind, self._ring, 0, &p, 1) == 1:
            Py_DECREF(<object>p)
        if self._kind == RING_SPSC:
            rx_spsc_free(<rx_spsc*>self._ring)
        else:
            rx_mpmc_free(<rx_mpmc*>self._ring)
        self._ring = NULL

    # -- producer side

    def push(self, item, timeout=None):
        """Put ``item`` in the channel, waiting up to ``timeout`` seconds
        (``None``: forever; ``0``: not at all) for room.

        Raises :class:`Full` on timeout and :class:`ChannelClosed` if the
        channel is closed.
        """
        cdef void* p = <void*>item
        cdef uint64_t done = 0
        cdef int64_t deadline = -1
        cdef push_status status = PUSH_DONE
        cdef uint32_t* guard
        cdef uint32_t* waiting
        if timeout is not None:
            deadline = _deadline(timeout)
        if self._ring == NULL:
            _not_ready(self)
        if _enter_call(self._kind, self._ring, 1, &guard):
            _raise_misuse(self, 1)
        # the channel's reference, handed to the consumer on pop
        rx_ref_for_channel(item)
        if _try_push(self._kind, self._ring, 0, &p, 1) == 1:
            done = 1
        elif _enter_wait(self._kind, self._ring, 1, guard, &waiting):
            status = PUSH_MISUSE
        else:
            with nogil:
                status = _push_blocking(self._kind, self._ring, 0, sizeof(void*),
                                        <const char*>&p, 1, &done, deadline, 1)
            _leave(waiting)
        if done == 0:
            Py_DECREF(item)
        _leave(guard)
        if done == 0:
            _raise_push_failure(self, status, "push")

    def try_push(self, item):
        """Put ``item`` in the channel if there is room now.  Returns ``True``
        if it went in, ``False`` if the channel is full; raises
        :class:`ChannelClosed` if the channel is closed."""
        cdef void* p = <void*>item
        cdef int64_t got
        cdef uint32_t* guard
        if self._ring == NULL:
            _not_ready(self)
        if _enter_call(self._kind, self._ring, 1, &guard):
            _raise_misuse(self, 1)
        rx_ref_for_channel(item)
        got = _try_push(self._kind, self._ring, 0, &p, 1)
        _leave(guard)
        if got == 1:
            return True
        Py_DECREF(item)
        if got == 0:
            return False
        raise ChannelClosed(f"{type(self).__name__}: push on a closed channel")

    def push_many(self, items, timeout=None):
        """Put every item of ``items`` in the channel, in order, waiting for
        room as needed (one wake-up of the consumer per batch, not per item).

        Returns how many items went in: all of them, unless the timeout
        expired or the channel was closed part-way, in which case the count
        says which prefix went in.  Raises :class:`Full` (timeout) or
        :class:`ChannelClosed` when not a single item could go in.
        """
        cdef int64_t deadline = _deadline(timeout)
        cdef list seq
        cdef Py_ssize_t n, i
        cdef uint64_t done = 0
        cdef push_status status = PUSH_DONE
        cdef void** buf = NULL
        cdef uint32_t* guard
        cdef uint32_t* waiting
        if self._ring == NULL:
            _not_ready(self)
        seq = items if type(items) is list else list(items)
        # Snapshot the pointers and take the channel's references, so the
        # caller's list may change while we wait without the GIL.  The
        # critical section keeps other threads from changing the list during
        # the snapshot on free-threaded builds (the GIL does elsewhere).
        with cython.critical_section(seq):
            n = PyList_GET_SIZE(seq)
            if n > 0:
                buf = <void**>PyMem_Malloc(n * sizeof(void*))
                if buf != NULL:
                    for i in range(n):
                        buf[i] = _list_get_borrowed(seq, i)
                        rx_ref_for_channel(<object>buf[i])
        if n == 0:
            return 0
        if buf == NULL:
            raise MemoryError()
        if _enter_call(self._kind, self._ring, 1, &guard):
            status = PUSH_MISUSE
        else:
            # first attempt with the GIL held: releasing it costs a hand-off
            status = _push_blocking(self._kind, self._ring, 0, sizeof(void*), <const char*>buf,
                                    n, &done, 0, 0)
            if status == PUSH_TIMEOUT and deadline != 0:
                if _enter_wait(self._kind, self._ring, 1, guard, &waiting):
                    status = PUSH_MISUSE
                else:
                    with nogil:
                        status = _push_blocking(self._kind, self._ring, 0, sizeof(void*),
                                                <const char*>buf, n, &done, deadline, 1)
                    _leave(waiting)
            _leave(guard)
        # drop the references of whatever did not go in
        for i in range(<Py_ssize_t>done, n):
            Py_DECREF(<object>buf[i])
        PyMem_Free(buf)
        if status == PUSH_DONE or (done > 0 and (status == PUSH_TIMEOUT or status == PUSH_CLOSED)):
            return done
        _raise_push_failure(self, status, "push_many")

    # -- consumer side

    def pop(self, timeout=None):
        """Take the oldest item, waiting up to ``timeout`` seconds (``None``:
        forever; ``0``: not at all).

        Raises :class:`Empty` on timeout and :class:`ChannelClosed` once the
        channel is closed and every item in it was taken.
        """
        return _pop_one(self, _deadline(timeout) if timeout is not None else -1, False)

    def try_pop(self):
        """Take the oldest item if there is one now; otherwise return the
        sentinel :data:`EMPTY` (items themselves may be ``None``).  Raises
        :class:`ChannelClosed` once the channel is closed and drained."""
        cdef void* p
        cdef int64_t got
        cdef uint32_t* guard
        if self._ring == NULL:
            _not_ready(self)
        if _enter_call(self._kind, self._ring, 0, &guard):
            _raise_misuse(self, 0)
        got = _try_pop(self._kind, self._ring, 0, &p, 1)
        _leave(guard)
        if got == 1:
            return rx_take_ref(p)
        if got == 0:
            return EMPTY
        raise ChannelClosed(f"{type(self).__name__}: channel closed and drained")

    def pop_many(self, max_items, timeout=None):
        """Take up to ``max_items`` items (oldest first), waiting up to
        ``timeout`` seconds for the first one; returns a non-empty list of
        whatever is there then, without waiting for more.

        Raises :class:`Empty` on timeout and :class:`ChannelClosed` once the
        channel is closed and drained.
        """
        cdef Py_ssize_t want = _check_count(max_items, "pop_many: max_items")
        cdef int64_t deadline = _deadline(timeout)
        cdef void* stack_buf[STACK_BATCH]
        cdef void** buf = stack_buf
        cdef int64_t got
        cdef Py_ssize_t i
        cdef uint32_t* guard
        cdef uint32_t* waiting
        if self._ring == NULL:
            _not_ready(self)
        if want > self.capacity:
            want = self.capacity
        if want > STACK_BATCH:
            buf = <void**>PyMem_Malloc(want * sizeof(void*))
            if buf == NULL:
                raise MemoryError()
        try:
            if _enter_call(self._kind, self._ring, 0, &guard):
                got = MISUSE
            else:
                got = _try_pop(self._kind, self._ring, 0, buf, want)
                if got == 0 and deadline != 0:
                    if _enter_wait(self._kind, self._ring, 0, guard, &waiting):
                        got = MISUSE
                    else:
                        with nogil:
                            got = _pop_blocking(self._kind, self._ring, 0, <char*>buf, want, deadline, 1)
                        _leave(waiting)
                _leave(guard)
            if got > 0:
                return _list_of_refs(buf, got)
        finally:
            if buf != stack_buf:
                PyMem_Free(buf)
        if got == SIGNALLED:
            _propagate()
        if got == MISUSE:
            _raise_misuse(self, 0)
        if got == 0:
            raise Empty(f"{type(self).__name__}: pop_many timed out, channel empty")
        raise ChannelClosed(f"{type(self).__name__}: channel closed and drained")

    def __iter__(self):
        """Iterate over items as they arrive; ends when the channel is closed and drained."""
        cdef _ChannelIterator it = _ChannelIterator.__new__(_ChannelIterator)
        if self._ring == NULL:
            _not_ready(self)
        it.ch = self
        return it

    # -- either side

    def close(self):
        """End of stream.  Later pushes raise :class:`ChannelClosed`; consumers
        still receive every item in the channel, then the end.  Wakes every
        blocked producer and consumer.  Idempotent; safe from any thread."""
        if self._ring == NULL:
            _not_ready(self)
        _close(self._kind, self._ring)

    @property
    def closed(self):
        """``True`` once :meth:`close` was called."""
        if self._ring == NULL:
            _not_ready(self)
        return _is_closed(self._kind, self._ring)

    @property
    def stats(self):
        """A :class:`ChannelStats` snapshot (pushed, popped, full_waits, empty_waits)."""
        if self._ring == NULL:
            _not_ready(self)
        return _stats(self._kind, self._ring)

    def __len__(self):
        """Items in the channel now (a snapshot when other threads are active)."""
        if self._ring == NULL:
            _not_ready(self)
        return _len(self._kind, self._ring)

    def __bool__(self):
        # a channel object is always truthy, even when empty (as queue.Queue is)
        return True

    def __repr__(self):
        if self._ring == NULL:
            return f"<{type(self).__name__} (uninitialised)>"
        state = "closed" if _is_closed(self._kind, self._ring) else "open"
        return (f"<{type(self).__name__} capacity={self.capacity} "
                f"len={_len(self._kind, self._ring)} {state}>")

    @classmethod
    def __class_getitem__(cls, item):
        """``SPSCChannel[int]``: a channel of ints, for annotations (a generic alias)."""
        return _GenericAlias(cls, item)

    def __reduce__(self):
        raise TypeError(
            f"{type(self).__name__} cannot be pickled: it is shared memory between the "
            "threads of one process; send the items instead")


cdef class SPSCChannel(Channel):
    """Bounded channel for one producer thread and one consumer thread.

    The fastest channel: each side caches the other side's position, so the
    shared cache lines move once per batch, not per item.  More than one
    thread pushing (or popping) at the same time is a misuse: the call is
    refused with ``RuntimeError`` and nothing is lost or duplicated (checked
    on every call on free-threaded builds and in ``REFLUX_DEBUG`` builds; on
    a GIL build, which keeps the calls apart, while one of them waits).
    Handing a side over from one thread to another between calls is fine.

    ``capacity`` is rounded up to a power of two (at most ``MAX_CAPACITY``).
    """

    def __init__(self, capacity):
        _make_channel(self, capacity, RING_SPSC)


cdef class MPMCChannel(Channel):
    """Bounded channel for any number of producer and consumer threads.

    Per-slot sequence numbers (Vyukov's bounded queue): producers and
    consumers claim positions with one compare-and-swap each.  Items from one
    producer stay in order; items from several producers interleave.

    ``capacity`` is rounded up to a power of two, and to at least 2 (the
    sequence numbers need two slots), at most ``MAX_CAPACITY``.
    """

    def __init__(self, capacity):
        _make_channel(self, capacity, RING_MPMC)


# ---------------------------------------------------------------- record channel

cdef int64_t _c_deadline(double timeout) noexcept nogil:
    if timeout < 0:
        return -1
    return _deadline_from_seconds(timeout)


cdef class RecordChannel:
    """Bounded channel of fixed-size records described by a numpy dtype.

    Records are copied in and out; ``push`` takes an array (or anything
    numpy turns into one) of ``dtype``, ``pop`` returns a new array.  Cython
    code can move records without the GIL through the methods declared in
    ``reflux_core/channel.pxd`` (``push_records``, ``pop_records``, ...).

    ``mode="spsc"`` (default): one producer and one consumer at a time.
    ``mode="mpmc"``: any number of both (capacity at least 2).
    """

    def __cinit__(self, *args, **kwargs):
        self._ring = NULL

    def __init__(self, dtype, capacity, *, mode="spsc"):
        import numpy as np
        cdef uint64_t cap = _check_capacity(capacity, "RecordChannel")
        cdef ring_kind kind
        cdef void* ring
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"RecordChannel: {dtype!r} is not a numpy dtype: {exc}") from None
        if dt.hasobject:
            raise TypeError(
                f"RecordChannel: dtype {dt} holds Python objects; records must be plain "
                "bytes (use SPSCChannel/MPMCChannel for objects)")
        if dt.itemsize < 1:
            raise ValueError(f"RecordChannel: dtype {dt} has no size")
        if dt.subdtype is not None:
            raise TypeError(
                f"RecordChannel: sub-array dtype {dt} is ambiguous; wrap it in a structured "
                f"dtype, e.g. [('value', {dt.base.str!r}, {dt.shape})]")
        if mode not in ("spsc", "mpmc"):
            raise ValueError(f"RecordChannel: mode must be 'spsc' or 'mpmc', got {mode!r}")
        if rx_round_capacity(cap) * <uint64_t>dt.itemsize > MAX_RECORD_RING_BYTES:
            raise ValueError(
                f"RecordChannel: {cap} records of {dt.itemsize} bytes exceed the "
                f"{MAX_RECORD_RING_BYTES} byte limit")
        if self._ring != NULL:
            raise RuntimeError("RecordChannel: already initialised")
        kind = RING_SPSC if mode == "spsc" else RING_MPMC
        ring = rx_spsc_new(cap, dt.itemsize) if kind == RING_SPSC else rx_mpmc_new(cap, dt.itemsize)
        if ring == NULL:
            raise MemoryError(f"RecordChannel: cannot allocate {cap} records of {dt.itemsize} bytes")
        # _kind before the ring is published (a thread that sees the ring
        # reads it), and again after: a losing __init__ of another mode may
        # have written its own in between
        self._kind = kind
        if not _install_ring(&self._ring, ring, kind):
            raise RuntimeError("RecordChannel: already initialised")
        self._kind = kind
        self.capacity = <Py_ssize_t>_ring_capacity(kind, ring)
        self.itemsize = dt.itemsize
        self.dtype = dt

    def __dealloc__(self):
        if self._ring == NULL:
            return
        if self._kind == RING_SPSC:
            rx_spsc_free(<rx_spsc*>self._ring)
        else:
            rx_mpmc_free(<rx_mpmc*>self._ring)
        self._ring = NULL

    @property
    def mode(self):
        """``'spsc'`` or ``'mpmc'``."""
        return "spsc" if self._kind == RING_SPSC else "mpmc"


    # -- C level, without the GIL (declared in channel.pxd)

    cdef Py_ssize_t try_push_records(self, const void* records, Py_ssize_t n) noexcept nogil:
        if n <= 0:
            return 0
        return <Py_ssize_t>_try_push(self._kind, self._ring, 1, records, <uint64_t>n)

    cdef Py_ssize_t try_pop_records(self, void* out, Py_ssize_t n) noexcept nogil:
        if n <= 0:
            return 0
        return <Py_ssize_t>_try_pop(self._kind, self._ring, 1, out, <uint64_t>n)

    cdef Py_ssize_t push_records(self, const void* records, Py_ssize_t n, double timeout) noexcept nogil:
        if n <= 0:
            return 0
        cdef uint64_t done = 0
        cdef push_status status = _push_blocking(
            self._kind, self._ring, 1, self.itemsize, <const char*>records, <uint64_t>n,
            &done, _c_deadline(timeout), 0)
        if status == PUSH_CLOSED and done == 0:
            return -1
        return <Py_ssize_t>done

    cdef Py_ssize_t pop_records(self, void* out, Py_ssize_t n, double timeout) noexcept nogil:
        cdef int64_t got
        if n <= 0:
            return 0
        got = _pop_blocking(self._kind, self._ring, 1, <char*>out, <uint64_t>n,
                            _c_deadline(timeout), 0)
        return <Py_ssize_t>got

    cdef void close_nogil(self) noexcept nogil:
        _close(self._kind, self._ring)

    # -- Python level

    def push(self, records, timeout=None):
        """Copy ``records`` (a 1-d array of ``dtype``, or one record) into
        the channel, waiting up to ``timeout`` seconds for room as needed.

        Returns how many records went in: all, unless the timeout expired or
        the channel closed part-way.  Raises :class:`Full` or
        :class:`ChannelClosed` when none could go in.
        """
        return _push_impl(self, records, _deadline(timeout), True)

    def try_push(self, records):
        """Copy as many of ``records`` as fit now; returns that count (0 when
        full).  Raises :class:`ChannelClosed` if the channel is closed."""
        return _push_impl(self, records, 0, False)

    def pop(self, max_records=None, timeout=None):
        """Take up to ``max_records`` records (default: up to the capacity),
        waiting up to ``timeout`` seconds for the first one.  Returns a new
        1-d array of ``dtype`` with at least one record.

        Raises :class:`Empty` on timeout and :class:`ChannelClosed` once the
        channel is closed and drained.
        """
        return _pop_array(self, max_records, _deadline(timeout), POP_WAIT)

    def try_pop(self, max_records=None):
        """Take up to ``max_records`` records available now; returns an array,
        empty when nothing is there.  Raises :class:`ChannelClosed` once the
        channel is closed and drained."""
        return _pop_array(self, max_records, 0, POP_TRY)

    def __iter__(self):
        """Iterate over arrays of records as they arrive, until closed and drained."""
        if self._ring == NULL:
            _not_ready(self)
        return _RecordIterator(self)

    def close(self):
        """End of stream (see :meth:`Channel.close`)."""
        if self._ring == NULL:
            _not_ready(self)
        _close(self._kind, self._ring)

    @property
    def closed(self):
        """``True`` once :meth:`close` was called."""
        if self._ring == NULL:
            _not_ready(self)
        return _is_closed(self._kind, self._ring)

    @property
    def stats(self):
        """A :class:`ChannelStats` snapshot, counted in records."""
        if self._ring == NULL:
            _not_ready(self)
        return _stats(self._kind, self._ring)

    def __len__(self):
        if self._ring == NULL:
            _not_ready(self)
        return _len(self._kind, self._ring)

    def __bool__(self):
        return True

    def __repr__(self):
        if self._ring == NULL:
            return "<RecordChannel (uninitialised)>"
        state = "closed" if _is_closed(self._kind, self._ring) else "open"
        return (f"<RecordChannel dtype={self.dtype} capacity={self.capacity} mode={self.mode} "
                f"len={_len(self._kind, self._ring)} {state}>")

    def __reduce__(self):
        raise TypeError(
            "RecordChannel cannot be pickled: it is shared memory between the threads "
            "of one process; send the records instead")


@cython.final
cdef class _RecordIterator:
    cdef RecordChannel ch

    def __init__(self, RecordChannel ch):
        self.ch = ch

    def __iter__(self):
        return self

    def __next__(self):
        return _pop_array(self.ch, None, -1, POP_ITER)


def _debug_build():
    """1 in REFLUX_DEBUG builds (every SPSC call checks for a second thread)."""
    return REFLUX_DEBUG


def _free_threaded_build():
    """True when compiled for a free-threaded CPython (no GIL hand-over tuning)."""
    return not RX_HAS_GIL


# ---------------------------------------------------------------- method bodies

cdef object _pop_one(Channel self, int64_t deadline, bint for_iter):
    """Pop one item; ends iteration (for_iter) or raises at end of stream."""
    cdef void* p
    cdef int64_t got
    cdef uint32_t* guard
    cdef uint32_t* waiting
    if self._ring == NULL:
        _not_ready(self)
    if _enter_call(self._kind, self._ring, 0, &guard):
        _raise_misuse(self, 0)
    got = _try_pop(self._kind, self._ring, 0, &p, 1)
    if got == 0 and deadline != 0:
        if _enter_wait(self._kind, self._ring, 0, guard, &waiting):
            got = MISUSE
        else:
            with nogil:
                got = _pop_blocking(self._kind, self._ring, 0, <char*>&p, 1, deadline, 1)
            _leave(waiting)
    _leave(guard)
    if got == 1:
        return rx_take_ref(p)  # the channel's reference, handed over
    if got == SIGNALLED:
        _propagate()
    if got == MISUSE:
        _raise_misuse(self, 0)
    if got == 0:
        raise Empty(f"{type(self).__name__}: pop timed out, channel empty")
    if for_iter:
        raise StopIteration
    raise ChannelClosed(f"{type(self).__name__}: channel closed and drained")


cdef object _as_records(RecordChannel self, object records):
    import numpy as np
    arr = np.asarray(records)
    if arr.dtype != self.dtype:
        if (arr.dtype.fields is None and self.dtype.fields is None
                and np.can_cast(arr.dtype, self.dtype, "safe")):
            arr = arr.astype(self.dtype)
        else:
            raise TypeError(
                f"RecordChannel: records have dtype {arr.dtype}, the channel holds {self.dtype}")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.ndim != 1:
        raise ValueError(f"RecordChannel: expected a 1-d array of records, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


cdef object _push_impl(RecordChannel self, object records, int64_t deadline, bint raise_full):
    cdef Py_buffer view
    cdef uint64_t done = 0
    cdef push_status status = PUSH_DONE
    cdef Py_ssize_t n
    cdef uint32_t* guard
    cdef uint32_t* waiting
    if self._ring == NULL:
        _not_ready(self)
    arr = _as_records(self, records)
    n = len(arr)
    if n == 0:
        return 0
    PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS)
    if _enter_call(self._kind, self._ring, 1, &guard):
        status = PUSH_MISUSE
    else:
        # first attempt with the GIL held: releasing it costs a hand-off
        status = _push_blocking(self._kind, self._ring, 1, self.itemsize, <const char*>view.buf,
                                n, &done, 0, 0)
        if status == PUSH_TIMEOUT and deadline != 0:
            if _enter_wait(self._kind, self._ring, 1, guard, &waiting):
                status = PUSH_MISUSE
            else:
                with nogil:
                    status = _push_blocking(self._kind, self._ring, 1, self.itemsize,
                                            <const char*>view.buf, n, &done, deadline, 1)
                _leave(waiting)
        _leave(guard)
    PyBuffer_Release(&view)
    if status == PUSH_DONE or done > 0 and (status == PUSH_TIMEOUT or status == PUSH_CLOSED):
        return done
    if status == PUSH_TIMEOUT and not raise_full:
        return 0
    _raise_push_failure(self, status, "push")


cdef object _pop_array(RecordChannel self, object max_records, int64_t deadline, int mode):
    import numpy as np
    cdef Py_ssize_t want = self.capacity
    cdef Py_ssize_t avail
    cdef Py_buffer view
    cdef int64_t got = 0
    cdef int ready = 1
    cdef uint32_t* guard
    cdef uint32_t* waiting
    if self._ring == NULL:
        _not_ready(self)
    if max_records is not None:
        want = min(_check_count(max_records, "RecordChannel.pop: max_records"), self.capacity)
    if _enter_call(self._kind, self._ring, 0, &guard):
        _raise_misuse(self, 0)
    try:
        while True:
            avail = <Py_ssize_t>_len(self._kind, self._ring)
            if avail > 0:
                # size the array to what is there, so no large array is
                # kept alive by a small result
                out = np.empty(min(want, avail), dtype=self.dtype)
                PyObject_GetBuffer(out, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
                try:
                    # GIL builds: np.empty may have run Python code (a
                    # collection) and let another consumer start waiting
                    if guard == NULL and _side_busy(self._kind, self._ring, 0):
                        got = MISUSE
                    else:
                        got = _try_pop(self._kind, self._ring, 1, view.buf, len(out))
                finally:
                    PyBuffer_Release(&view)
                if got == MISUSE:
                    _raise_misuse(self, 0)
                if got > 0:
                    return out if got == len(out) else out[:got]
            if _drained(self._kind, self._ring):
                if mode == POP_ITER:
                    raise StopIteration
                raise ChannelClosed("RecordChannel: channel closed and drained")
            if deadline == 0 and mode == POP_TRY:
                return np.empty(0, dtype=self.dtype)
            if deadline == 0 or not ready:
                raise Empty("RecordChannel: pop timed out, channel empty")
            if _enter_wait(self._kind, self._ring, 0, guard, &waiting):
                _raise_misuse(self, 0)
            with nogil:
                ready = _wait_ready(self._kind, self._ring, 0, deadline, 1)
            _leave(waiting)
            if ready == SIGNALLED:
                _propagate()
    finally:
        _leave(guard)


def _raw_record_channel(capacity, Py_ssize_t itemsize, mode="mpmc"):
    """Internal to reflux_core (the scheduler's ready queue): a RecordChannel
    of raw ``itemsize``-byte records, made without importing numpy.  Its
    ``dtype`` is None, so only its C-level (nogil) methods, ``len()``,
    ``close()`` and ``closed`` may be used."""
    cdef uint64_t cap = _check_capacity(capacity, "RecordChannel")
    if itemsize < 1:
        raise ValueError(f"RecordChannel: itemsize must be >= 1, got {itemsize}")
    if mode not in ("spsc", "mpmc"):
        raise ValueError(f"RecordChannel: mode must be 'spsc' or 'mpmc', got {mode!r}")
    cdef RecordChannel ch = RecordChannel.__new__(RecordChannel)
    ch._kind = RING_SPSC if mode == "spsc" else RING_MPMC
    if ch._kind == RING_SPSC:
        ch._ring = rx_spsc_new(cap, <uint64_t>itemsize)
    else:
        ch._ring = rx_mpmc_new(cap, <uint64_t>itemsize)
    if ch._ring == NULL:
        raise MemoryError(f"RecordChannel: cannot allocate {cap} records of {itemsize} bytes")
    ch.capacity = <Py_ssize_t>_ring_capacity(ch._kind, ch._ring)
    ch.itemsize = itemsize
    ch.dtype = None
    return ch
