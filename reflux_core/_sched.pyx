# cython: language_level=3
"""The scheduling core of the worker pool: unit states, the ready queue and the worker loop.

Private to reflux (the Python layer's :mod:`reflux.pool` drives it).  Every
schedulable unit has a state word changed only by atomic compare-and-swap, and
the ready queue is an MPMC record channel of unit indices, so the scheduler's
correctness relies on no lock and no GIL:

    IDLE    --notify-->  QUEUED   (and its index is pushed: in the queue once)
    QUEUED  --next---->  RUNNING  (a worker popped it)
    RUNNING --notify-->  RERUN    (work arrived while it ran: run it again)
    RUNNING --done---->  IDLE, or QUEUED when it has more work / was RERUN
    any     --retire-->  DONE     (never queued again; a stale index is skipped)

Workers wait in :meth:`Scheduler.next` with the GIL released, parked in the
channel (no CPU while idle; woken within microseconds of a notify).
"""
from libc.stdint cimport uint32_t, int64_t
from libc.stdlib cimport calloc, free

from reflux_core.channel cimport RecordChannel

import numpy as np

cdef extern from "reflux_core/atomics.h" nogil:
    uint32_t rx_load32_acquire(uint32_t* p)
    void rx_store32_release(uint32_t* p, uint32_t v)
    bint rx_cas32_acqrel(uint32_t* p, uint32_t* expected, uint32_t desired)

cdef enum:
    IDLE = 0
    QUEUED = 1
    RUNNING = 2
    RERUN = 3
    DONE = 4
    C_TIMEOUT = -1
    C_CLOSED = -2

#: what :meth:`Scheduler.next` returns when it timed out / the queue was closed
TIMEOUT = C_TIMEOUT
CLOSED = C_CLOSED
STATE_NAMES = ("IDLE", "QUEUED", "RUNNING", "RERUN", "DONE")


cdef class Scheduler:
    """States of ``n`` units and the queue of the runnable ones."""

    cdef uint32_t* states
    cdef readonly Py_ssize_t n
    cdef RecordChannel ready

    def __cinit__(self, Py_ssize_t n):
        if n < 0:
            raise ValueError(f"Scheduler: n must be >= 0, got {n}")
        self.n = n
        self.states = <uint32_t*>calloc(n if n > 0 else 1, sizeof(uint32_t))
        if self.states == NULL:
            raise MemoryError()
        # every unit is in the queue at most once, so a push never finds it full
        self.ready = RecordChannel(np.int64, n if n > 2 else 2, mode="mpmc")

    def __dealloc__(self):
        free(self.states)

    cdef inline int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.n:
            raise IndexError(f"Scheduler: unit {i} out of range 0..{self.n - 1}")
        return 0

    cdef bint notify_nogil(self, Py_ssize_t i) noexcept nogil:
        """Make unit ``i`` run: queue it if idle, mark it RERUN if running.
        Returns True if this call queued it."""
        cdef int64_t index = i
        # acquire: pairs with the release/acq_rel stores of the other transitions
        cdef uint32_t s = rx_load32_acquire(&self.states[i])
        while True:
            if s == IDLE:
                # acq_rel CAS: pairs with the worker's CAS QUEUED->RUNNING in next_nogil
                if rx_cas32_acqrel(&self.states[i], &s, QUEUED):
                    self.ready.try_push_records(&index, 1)  # -1 once closed: the pool is over
                    return True
            elif s == RUNNING:
                # acq_rel CAS: pairs with done_nogil's CAS RUNNING->IDLE, which then fails
                if rx_cas32_acqrel(&self.states[i], &s, RERUN):
                    return False
            else:  # QUEUED, RERUN: it will run anyway; DONE: over
                return False
            # the CAS failed and reloaded s: decide again

    def notify(self, Py_ssize_t i):
        """Make unit ``i`` run (see the module docs); True if this call queued it."""
        self._check(i)
        return self.notify_nogil(i)

    cdef int64_t next_nogil(self, double timeout) noexcept nogil:
        """Pop a runnable unit (waiting up to ``timeout`` s) and mark it RUNNING;
        TIMEOUT or CLOSED otherwise."""
        cdef int64_t index = 0
        cdef Py_ssize_t got
        cdef uint32_t s
        while True:
            got = self.ready.pop_records(&index, 1, timeout)
            if got == 0:
                return C_TIMEOUT
            if got < 0:
                return C_CLOSED
            s = QUEUED
            # acq_rel CAS: pairs with notify's CAS IDLE->QUEUED (the unit's
            # inputs, written before that notify, are visible to the step)
            if rx_cas32_acqrel(&self.states[index], &s, RUNNING):
                return index
            # retired while it waited in the queue (DONE): skip it

    def next(self, double timeout):
        """Wait up to ``timeout`` seconds (GIL released) for a runnable unit;
        its index, or ``TIMEOUT`` / ``CLOSED``."""
        cdef int64_t r
        with nogil:
            r = self.next_nogil(timeout)
        return r

    cdef bint done_nogil(self, Py_ssize_t i, bint more) noexcept nogil:
        """A worker finished a step of unit ``i``: idle it, or queue it again
        (``more`` work, or notified meanwhile).  Returns True if queued."""
        cdef int64_t index = i
        # acquire: pairs with notify's acq_rel CAS RUNNING->RERUN
        cdef uint32_t s = rx_load32_acquire(&self.states[i])
        while True:
            if s == DONE:
                return False
            if more or s == RERUN:
                # acq_rel CAS: pairs with next_nogil's CAS QUEUED->RUNNING
                if rx_cas32_acqrel(&self.states[i], &s, QUEUED):
                    self.ready.try_push_records(&index, 1)
                    return True
            else:
                # acq_rel CAS RUNNING->IDLE: fails if a notify made it RERUN meanwhile
                if rx_cas32_acqrel(&self.states[i], &s, IDLE):
                    return False

    def done(self, Py_ssize_t i, bint more):
        """End of a step of unit ``i`` (see :meth:`done_nogil`)."""
        self._check(i)
        return self.done_nogil(i, more)

    def again(self, Py_ssize_t i):
        """The running unit ``i`` goes on in the same worker: clears a RERUN
        (the step about to run sees that work).  False if it was retired."""
        self._check(i)
        # acquire: pairs with notify's acq_rel CAS RUNNING->RERUN
        cdef uint32_t s = rx_load32_acquire(&self.states[i])
        while True:
            if s == RUNNING:
                return True
            if s != RERUN:
                return False
            # acq_rel CAS RERUN->RUNNING: pairs with notify's CAS RUNNING->RERUN
            if rx_cas32_acqrel(&self.states[i], &s, RUNNING):
                return True

    def retire(self, Py_ssize_t i):
        """Unit ``i`` has ended: it is never queued again."""
        self._check(i)
        # release: pairs with the acquire loads of notify/done/next (they then see DONE)
        rx_store32_release(&self.states[i], DONE)

    def state(self, Py_ssize_t i):
        """The state of unit ``i`` as a name (for diagnostics)."""
        self._check(i)
        return STATE_NAMES[rx_load32_acquire(&self.states[i])]

    def queued(self):
        """How many units wait in the ready queue (a snapshot)."""
        return len(self.ready)

    def close(self):
        """End the queue: workers waiting in :meth:`next` get ``CLOSED``."""
        self.ready.close_nogil()


def worker_loop(Scheduler sched, run, idle, double poll):
    """The body of a pool worker.

    Waits for a runnable unit with the GIL released, runs ``run(index)`` (one
    batch, with the GIL: the unit's Python logic) and hands the unit back to
    the scheduler.  ``run`` returns 1 if the unit has more work now, plus 2 if
    this worker should end (a spare no longer needed).  On a
    timeout it calls ``idle()``, which returns the next timeout in seconds
    (timers, sweeps) or a negative number to end this worker.  Returns when
    the queue is closed.
    """
    cdef int64_t index
    cdef double timeout = poll
    cdef int verdict
    while True:
        with nogil:
            index = sched.next_nogil(timeout)
        if index == C_CLOSED:
            return
        if index == C_TIMEOUT:
            timeout = idle()
            if timeout < 0:
                return
            continue
        verdict = run(index)
        sched.done_nogil(index, verdict & 1)
        if verdict & 2:
            return
        timeout = poll
