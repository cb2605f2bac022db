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

**The Python lane** (GIL builds, pools of two or more workers): units marked
with :meth:`Scheduler.set_lane` hold the GIL for most of a step, so two
workers running them at once only hand the GIL back and forth (each hand-over
costs a context switch, and a thread that released the GIL inside a step
waits up to the interpreter's switch interval to get it back).  At most one
worker at a time, the *lane holder*, runs lane units: it keeps the lane while
it has lane work, and a worker that pops a lane unit while another holds the
lane forwards it to the holder through ``lane_q`` instead of running it.  The
other workers run record pumps and the units that are not in the lane.

    holder:     runs lane_q first, then the ready queue; when both are empty it
                releases the lane, fences, and takes it back if lane_q is not
                empty (Dekker: a forward racing with the release is never lost)
    forwarder:  pushes to lane_q, fences, and takes the lane if it is free
    a stuck holder (one step longer than the patience, which the pool sets to
                50 ms): another worker takes the lane over, so one slow or
                endless call never holds up the rest
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer

from reflux_core.channel cimport RecordChannel
from reflux_core.transform cimport (reflux_plugin, reflux_status, REFLUX_PLUGIN_TRANSFORM,
                                    REFLUX_PLUGIN_FILTER, REFLUX_ERR_BAD_RETURN)

from reflux_core.channel import _raw_record_channel

cdef extern from "reflux_core/atomics.h" nogil:
    uint32_t rx_load32_acquire(uint32_t* p)
    void rx_store32_release(uint32_t* p, uint32_t v)
    bint rx_cas32_acqrel(uint32_t* p, uint32_t* expected, uint32_t desired)
    uint32_t rx_xchg32_acqrel(uint32_t* p, uint32_t v)
    uint32_t rx_add32_relaxed(uint32_t* p, uint32_t v)
    uint64_t rx_add64_relaxed(uint64_t* p, uint64_t v)
    uint64_t rx_load64_relaxed(uint64_t* p)
    void rx_store64_relaxed(uint64_t* p, uint64_t v)
    void rx_fence_seqcst()

cdef extern from "reflux_core/park.h" nogil:
    int64_t rx_now_ns()

cdef enum:
    IDLE = 0
    QUEUED = 1
    RUNNING = 2
    RERUN = 3
    DONE = 4
    C_TIMEOUT = -1
    C_CLOSED = -2
    C_NONE = -3     # nothing ready now (non-blocking pops)

#: what :meth:`Scheduler.next` returns when it timed out / the queue was closed
TIMEOUT = C_TIMEOUT
CLOSED = C_CLOSED
STATE_NAMES = ("IDLE", "QUEUED", "RUNNING", "RERUN", "DONE")


cdef class Scheduler:
    """States of ``n`` units and the queue of the runnable ones."""

    cdef uint32_t* states
    cdef readonly Py_ssize_t n
    cdef RecordChannel ready
    # per unit: its PumpTask (borrowed; pump_refs holds it) or NULL (a Python unit)
    cdef void** pumps
    cdef list pump_refs
    # 1 while paused or aborting: pumps go through Python (release store in
    # set_hold, acquire loads in the worker loop and PumpTask.step_nogil)
    cdef uint32_t hold
    # per unit: 1 = a lane unit (see the module docs); written before the
    # workers start (set_lane), read-only while they run
    cdef uint8_t* lane
    # queued lane units waiting for the lane holder (each index in ready or lane_q at most once)
    cdef RecordChannel lane_q
    # the lane holder's id, 0 when free; changed by CAS/exchange (acq_rel), read
    # with acquire; a releaser and a forwarder each fence after their write
    cdef uint32_t lane_owner
    # ids handed to workers (relaxed fetch-add: only uniqueness matters)
    cdef uint32_t next_worker_id
    # rx_now_ns() when the holder started its current lane step, 0 between
    # steps (relaxed: a late sight only delays a take-over by one poll)
    cdef uint64_t lane_since
    # ns a holder may spend in one step before another worker takes the lane over
    cdef readonly int64_t lane_patience_ns
    # where the workers' time went (relaxed fetch-adds by every worker: totals
    # read as snapshots, nothing is published through them)
    cdef uint64_t n_steps        # steps run through Python
    cdef uint64_t step_ns        # time in those steps (the GIL held)
    cdef uint64_t lane_ns        # ... of which lane units' steps
    cdef uint64_t gil_wait_ns    # from a unit handed out to its step starting (taking the GIL)
    cdef uint64_t pump_ns        # record pump steps, without the GIL

    def __cinit__(self, Py_ssize_t n):
        if n < 0:
            raise ValueError(f"Scheduler: n must be >= 0, got {n}")
        self.n = n
        self.states = <uint32_t*>calloc(n if n > 0 else 1, sizeof(uint32_t))
        self.pumps = <void**>calloc(n if n > 0 else 1, sizeof(void*))
        self.lane = <uint8_t*>calloc(n if n > 0 else 1, sizeof(uint8_t))
        self.pump_refs = []
        if self.states == NULL or self.pumps == NULL or self.lane == NULL:
            raise MemoryError()
        # every unit is in the queue at most once, so a push never finds it full
        # raw 8-byte records (unit indices): no numpy import for a pure-Python pipeline
        self.ready = _raw_record_channel(n + 2, 8, "mpmc")  # + the lane wake (release_lane)
        self.lane_q = _raw_record_channel(n if n > 2 else 2, 8, "mpmc")
        self.lane_patience_ns = 100_000_000

    def __dealloc__(self):
        free(self.states)
        free(self.pumps)
        free(self.lane)

    def set_lane(self, Py_ssize_t i, bint on):
        """Unit ``i`` holds the GIL for most of a step: it runs in the Python lane
        (see the module docs).  Call before the workers start."""
        self._check(i)
        self.lane[i] = 1 if on else 0

    def set_lane_patience(self, double seconds):
        """How long one lane step may take before another worker takes the lane over."""
        self.lane_patience_ns = <int64_t>(seconds * 1e9)

    # -- the lane (see the module docs)

    cdef inline bint lane_take(self, uint32_t me) noexcept nogil:
        cdef uint32_t free_ = 0
        # acq_rel CAS: pairs with lane_give's CAS (the previous holder's writes are visible)
        return rx_cas32_acqrel(&self.lane_owner, &free_, me)

    cdef inline bint lane_held_by(self, uint32_t me) noexcept nogil:
        # acquire: pairs with the CAS of a take-over
        return rx_load32_acquire(&self.lane_owner) == me

    cdef bint lane_give(self, uint32_t me) noexcept nogil:
        """Release the lane; True if this worker took it back because lane_q had work."""
        cdef uint32_t owner = me
        cdef int64_t index
        # acq_rel CAS me->0: fails only if the lane was taken over meanwhile
        if not rx_cas32_acqrel(&self.lane_owner, &owner, 0):
            return False
        # Dekker with lane_forward: release, fence, look at lane_q
        rx_fence_seqcst()
        if self.lane_q.try_pop_records(&index, 1) == 1:
            if self.lane_take(me):
                self._lane_push(index)  # run it next (lane_q first)
                return True
            self._lane_push(index)  # another worker has the lane: it runs it
        return False

    cdef inline void _lane_push(self, int64_t index) noexcept nogil:
        if self.lane_q.try_push_records(&index, 1) == 0:  # see _enqueue: a claimed slot
            self.lane_q.push_records(&index, 1, -1.0)

    cdef bint lane_forward(self, int64_t index, uint32_t me) noexcept nogil:
        """Hand a lane unit to the lane holder; True if this worker took the lane
        (it was free after all, or its holder is stuck) and must run lane_q."""
        cdef uint32_t st = rx_load32_acquire(&self.states[index])
        # back to QUEUED (lane_q, like the ready queue, holds queued units); a
        # notify that made it RERUN meanwhile is covered: it runs anyway
        while True:
            if st == DONE:
                return False
            # acq_rel CAS: pairs with notify's CAS RUNNING->RERUN and next's QUEUED->RUNNING
            if rx_cas32_acqrel(&self.states[index], &st, QUEUED):
                break
        self._lane_push(index)
        # Dekker with lane_give: push, fence, look at the lane
        rx_fence_seqcst()
        if self.lane_take(me):
            return True
        return self.lane_take_over(me)

    cdef bint lane_take_over(self, uint32_t me) noexcept nogil:
        """Take the lane from a holder stuck in one step longer than the patience."""
        cdef uint32_t owner = rx_load32_acquire(&self.lane_owner)
        cdef uint64_t since = rx_load64_relaxed(&self.lane_since)
        if owner == 0 or owner == me or since == 0:
            return False
        if <int64_t>(rx_now_ns() - <int64_t>since) < self.lane_patience_ns:
            return False
        # acq_rel CAS: the stuck holder sees it lost the lane after its step
        if rx_cas32_acqrel(&self.lane_owner, &owner, me):
            rx_store64_relaxed(&self.lane_since, 0)
            return True
        return False

    cdef int64_t lane_pop(self) noexcept nogil:
        """A QUEUED unit from lane_q, marked RUNNING; C_NONE when lane_q is empty."""
        cdef int64_t index
        cdef uint32_t st
        while self.lane_q.try_pop_records(&index, 1) == 1:
            st = QUEUED
            # acq_rel CAS: as in next_nogil
            if rx_cas32_acqrel(&self.states[index], &st, RUNNING):
                return index
            # retired while it waited (DONE): skip it
        return C_NONE

    cdef int64_t try_next_nogil(self) noexcept nogil:
        """Pop a runnable unit if one is queued now (marked RUNNING), else C_NONE."""
        cdef int64_t index = 0
        cdef Py_ssize_t got
        cdef uint32_t s
        while True:
            got = self.ready.try_pop_records(&index, 1)
            if got == 0:
                return C_NONE
            if got < 0:
                return C_CLOSED
            if index == self.n:
                return index  # the lane wake: not a unit
            s = QUEUED
            # acq_rel CAS: as in next_nogil
            if rx_cas32_acqrel(&self.states[index], &s, RUNNING):
                return index

    def set_pump(self, Py_ssize_t i, PumpTask pump not None):
        """Unit ``i`` (RUNNING in the calling worker) is a record pump from now on:
        the worker loop runs its steps without the GIL."""
        self._check(i)
        self.pump_refs.append(pump)  # keeps it alive as long as the scheduler
        self.lane[i] = 0  # a pump steps without the GIL: never in the lane
        # published to other workers by done_nogil's acq_rel CAS (which
        # follows in this worker) and read after next_nogil's acq_rel CAS
        self.pumps[i] = <void*>pump

    def set_hold(self, bint on):
        """Pause/abort (``True``): pump units run through Python, which sees the flags."""
        # release: pairs with the acquire loads in worker_loop and step_nogil
        rx_store32_release(&self.hold, 1 if on else 0)

    cdef inline int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.n:
            raise IndexError(f"Scheduler: unit {i} out of range 0..{self.n - 1}")
        return 0

    cdef inline void _enqueue(self, int64_t index) noexcept nogil:
        """Push a unit that just became QUEUED (each unit is in the queue once at most)."""
        # The ring never really fills up, but a Vyukov ring reports "full" at
        # a slot that a popping worker has claimed and not yet freed (it was
        # preempted in between) once the other pushes have gone round the
        # ring.  Losing the index would leave the unit QUEUED forever: wait
        # for the slot instead (the pop's notify wakes us).  -1: closed, the
        # pool is over.
        cdef int64_t wake = self.n
        if self.lane[index] and rx_load32_acquire(&self.lane_owner) != 0:
            # the lane is held: its holder takes lane_q first, and no other worker
            # needs waking for a unit it could not run anyway
            self._lane_push(index)
            # Dekker with lane_give: push, fence, look at the lane again
            rx_fence_seqcst()
            if rx_load32_acquire(&self.lane_owner) != 0:
                return
            index = wake  # released meanwhile: wake a worker to take the lane
        if self.ready.try_push_records(&index, 1) == 0:
            self.ready.push_records(&index, 1, -1.0)

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
                    self._enqueue(index)
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
            if index == self.n:
                return index  # the lane wake (release_lane): not a unit
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
                    self._enqueue(index)
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
        """How many units wait in the ready queue or for the lane holder (a snapshot)."""
        return len(self.ready) + len(self.lane_q)

    def timing(self):
        """Where the workers' time went so far: ``{"steps": n, "step": s, "lane": s,
        "gil_wait": s, "pump": s}`` (seconds; a snapshot)."""
        return {"steps": rx_load64_relaxed(&self.n_steps),
                "step": rx_load64_relaxed(&self.step_ns) / 1e9,
                "lane": rx_load64_relaxed(&self.lane_ns) / 1e9,
                "gil_wait": rx_load64_relaxed(&self.gil_wait_ns) / 1e9,
                "pump": rx_load64_relaxed(&self.pump_ns) / 1e9}

    def lane_holder(self):
        """The id of the worker holding the Python lane, 0 if none (for diagnostics)."""
        return rx_load32_acquire(&self.lane_owner)

    def release_lane(self):
        """Called by a lane step about to block for long (waiting for room): give the
        lane up so that the other lane units run meanwhile.  The worker takes the
        lane again later like any other."""
        cdef uint32_t owner = rx_load32_acquire(&self.lane_owner)
        cdef int64_t wake = self.n  # not a unit: tells the popping worker to look at lane_q
        if owner == 0:
            return
        # acq_rel CAS owner->0 (whoever holds it: the caller runs a lane step, so it is the holder)
        if not rx_cas32_acqrel(&self.lane_owner, &owner, 0):
            return
        rx_store64_relaxed(&self.lane_since, 0)
        rx_fence_seqcst()  # Dekker with lane_forward, as in lane_give
        if len(self.lane_q):
            # a parked worker must come for the units waiting in lane_q
            if self.ready.try_push_records(&wake, 1) == 0:
                self.ready.push_records(&wake, 1, -1.0)

    def close(self):
        """End the queue: workers waiting in :meth:`next` get ``CLOSED``."""
        self.ready.close_nogil()


# --------------------------------------------------------------------------- record pumps

cdef enum:
    P_YIELD = 0    # budget spent with input left: run again
    P_EMPTY = 1    # input empty: idle until a producer pushes (it notifies)
    P_FULL = 2     # output full: idle until the consumer pops (it wakes us)
    P_ERROR = 3    # a record failed: Python applies the node's error policy
    P_END = 4      # input closed and drained, nothing pending
    P_CLOSED = 5   # the output was closed under us (only an abort does that)
    P_NONE = -1

PUMP_YIELD = P_YIELD
PUMP_EMPTY = P_EMPTY
PUMP_FULL = P_FULL
PUMP_ERROR = P_ERROR
PUMP_END = P_END
PUMP_CLOSED = P_CLOSED


cdef inline void _count(uint64_t* counter, int64_t v) noexcept nogil:
    # single writer (the worker running the unit: the scheduler's state CAS
    # orders successive runners), relaxed because other threads only read
    # progress snapshots; nothing is published through the counters
    rx_store64_relaxed(counter, rx_load64_relaxed(counter) + <uint64_t>v)


cdef class RecordEdge:
    """A record channel between units: its producer and consumer units, and a
    flag a producer sets when it found the channel full.

    Handshake (no lost wake-up): a producer exchanges ``blocked`` to 1, then
    tries its push once more; a consumer pops, then exchanges ``blocked`` to 0
    and, if it was 1, notifies every producer.  Both are acq_rel RMWs on one
    word, so whichever comes second sees the other side's ring update.
    """

    cdef uint32_t blocked
    cdef int64_t* producers
    cdef Py_ssize_t n_producers
    cdef int64_t* consumers
    cdef Py_ssize_t n_consumers

    def __cinit__(self, producers, consumers):
        cdef Py_ssize_t i
        prods = [int(x) for x in producers]
        cons = [int(x) for x in consumers]
        self.producers = <int64_t*>calloc(len(prods) + 1, sizeof(int64_t))
        self.consumers = <int64_t*>calloc(len(cons) + 1, sizeof(int64_t))
        if self.producers == NULL or self.consumers == NULL:
            raise MemoryError()
        for i in range(len(prods)):
            self.producers[i] = prods[i]
        for i in range(len(cons)):
            self.consumers[i] = cons[i]
        self.n_producers = len(prods)
        self.n_consumers = len(cons)

    def __dealloc__(self):
        free(self.producers)
        free(self.consumers)

    cdef void block_nogil(self) noexcept nogil:
        # acq_rel: pairs with wake_nogil's exchange (see the class docs)
        rx_xchg32_acqrel(&self.blocked, 1)

    cdef void wake_nogil(self, Scheduler sched) noexcept nogil:
        cdef Py_ssize_t i
        # acq_rel: pairs with block_nogil's exchange (see the class docs)
        if rx_xchg32_acqrel(&self.blocked, 0):
            for i in range(self.n_producers):
                sched.notify_nogil(self.producers[i])

    cdef void notify_nogil(self, Scheduler sched) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.n_consumers):
            sched.notify_nogil(self.consumers[i])

    def block(self):
        """A producer found the channel full (then tries once more to push)."""
        self.block_nogil()

    def wake(self, Scheduler sched not None):
        """A consumer popped: notify the producers if one found it full."""
        self.wake_nogil(sched)


cdef class PumpTask:
    """One unit of the pool moving records ``src`` -> plug-in -> ``dst`` (a
    Transformer's or Filter's plug-in), one non-blocking step at a time.

    :meth:`step_nogil` never waits: it pushes what is pending, pops a batch
    of up to ``batch`` records, runs the plug-in once over it and pushes the
    result, until ``budget`` seconds passed (``P_YIELD``), the input is empty
    (``P_EMPTY``), the output is full (``P_FULL``: the rest waits here), a
    record fails (``P_ERROR``: outputs before it stay pending, the step after
    goes on behind it), the input ended (``P_END``) or the output was closed
    (``P_CLOSED``).

    Counters count records: ``received == emitted + filtered + errors +
    pending`` where :meth:`abandon` returns (and forgets) the pending ones.
    """

    cdef Scheduler sched
    cdef RecordChannel src
    cdef RecordChannel dst
    cdef RecordEdge in_edge
    cdef RecordEdge out_edge
    cdef object owner
    cdef const reflux_plugin* plug
    cdef char* inbuf
    cdef char* outbuf
    cdef uint8_t* mask
    cdef char* errbuf
    cdef Py_ssize_t batch, in_size, out_size, got, pos, out_n, out_done
    cdef int64_t budget_ns
    cdef uint64_t n_received, n_emitted, n_filtered, n_errors, busy_ns
    cdef int32_t last_error
    #: a status the worker loop handed over to Python (P_NONE if none)
    cdef public int held
    #: 1: the next run of the unit goes through Python (written by the runner only)
    cdef public bint python

    def __cinit__(self, *args, **kwargs):
        self.inbuf = NULL
        self.outbuf = NULL
        self.mask = NULL
        self.errbuf = NULL
        self.held = P_NONE

    def __init__(self, Scheduler sched not None, RecordChannel src not None, capsule,
                 RecordChannel dst not None, RecordEdge in_edge not None, RecordEdge out_edge not None,
                 *, Py_ssize_t batch=1024, double budget=0.002, owner=None):
        cdef const reflux_plugin* p = <const reflux_plugin*>PyCapsule_GetPointer(capsule, b"reflux_core.plugin")
        if p.kind != REFLUX_PLUGIN_TRANSFORM and p.kind != REFLUX_PLUGIN_FILTER:
            raise TypeError("PumpTask: a transform or filter plug-in is needed")
        if batch < 1:
            raise ValueError("PumpTask: batch must be >= 1")
        self.in_size = p.in_itemsize
        self.out_size = p.out_itemsize if p.kind == REFLUX_PLUGIN_TRANSFORM else p.in_itemsize
        if src.itemsize != self.in_size or dst.itemsize != self.out_size:
            raise TypeError(f"PumpTask: channels hold {src.itemsize}/{dst.itemsize}-byte records, "
                            f"the plug-in takes {self.in_size} and makes {self.out_size}")
        self.plug = p
        self.owner = (owner, capsule)  # the capsule keeps the plug-in alive
        self.sched = sched
        self.src = src
        self.dst = dst
        self.in_edge = in_edge
        self.out_edge = out_edge
        self.batch = batch
        self.budget_ns = <int64_t>(budget * 1e9)
        self.inbuf = <char*>calloc(batch, self.in_size)
        self.outbuf = <char*>calloc(batch, max(self.in_size, self.out_size))
        self.mask = <uint8_t*>calloc(batch, 1)
        self.errbuf = <char*>calloc(1, self.in_size)
        if self.inbuf == NULL or self.outbuf == NULL or self.mask == NULL or self.errbuf == NULL:
            raise MemoryError("PumpTask: cannot allocate its buffers")

    def __dealloc__(self):
        free(self.inbuf)
        free(self.outbuf)
        free(self.mask)
        free(self.errbuf)

    cdef int _fail(self, Py_ssize_t i, int32_t code) noexcept nogil:
        memcpy(self.errbuf, self.inbuf + i * self.in_size, self.in_size)
        self.last_error = code
        _count(&self.n_errors, 1)
        self.pos = i + 1
        return P_ERROR

    cdef int _flush(self) noexcept nogil:
        """Push the pending outputs: 0 all out, P_FULL, or P_CLOSED."""
        cdef Py_ssize_t r
        cdef int tries = 0
        while self.out_done < self.out_n:
            r = self.dst.try_push_records(self.outbuf + self.out_done * self.out_size,
                                          self.out_n - self.out_done)
            if r < 0:
                return P_CLOSED
            if r > 0:
                self.out_done += r
                _count(&self.n_emitted, r)
                self.out_edge.notify_nogil(self.sched)
            elif tries == 0:
                # full: say so, then try once more (see RecordEdge)
                self.out_edge.block_nogil()
                tries = 1
            else:
                return P_FULL
        return 0

    cdef int step_nogil(self) noexcept nogil:
        """One step of work (see the class docs); never waits, never needs the GIL."""
        cdef const reflux_plugin* p = self.plug
        cdef reflux_status st
        cdef Py_ssize_t r, n, rest, i, kept
        cdef int s
        cdef int64_t t0, until = rx_now_ns() + self.budget_ns
        while True:
            s = self._flush()
            if s != 0:
                return s
            if self.pos >= self.got:
                # acquire: pairs with set_hold's release store
                if rx_now_ns() >= until or rx_load32_acquire(&self.sched.hold):
                    return P_YIELD
                r = self.src.try_pop_records(self.inbuf, self.batch)
                if r < 0:
                    return P_END
                if r == 0:
                    return P_EMPTY
                self.got = r
                self.pos = 0
                _count(&self.n_received, r)
                self.in_edge.wake_nogil(self.sched)
            rest = self.got - self.pos
            st.index = rest
            st.error = 0
            st.reserved = 0
            self.out_n = 0
            self.out_done = 0
            t0 = rx_now_ns()
            if p.kind == REFLUX_PLUGIN_TRANSFORM:
                r = p.transform(p.self, self.inbuf + self.pos * self.in_size, rest, self.outbuf, &st)
                n = st.index if st.error != 0 else rest
                if st.error != 0 and (n < 0 or n >= rest) or r < 0 or r > n:
                    # a broken plug-in: fail the first record, go on after it
                    return self._fail(self.pos, REFLUX_ERR_BAD_RETURN)
            else:
                p.filter(p.self, self.inbuf + self.pos * self.in_size, rest, self.mask, &st)
                n = st.index if st.error != 0 else rest
                if st.error != 0 and (n < 0 or n >= rest):
                    return self._fail(self.pos, REFLUX_ERR_BAD_RETURN)
                kept = 0
                for i in range(n):
                    if self.mask[i]:
                        memcpy(self.outbuf + kept * self.in_size,
                               self.inbuf + (self.pos + i) * self.in_size, self.in_size)
                        kept += 1
                r = kept
            _count(&self.busy_ns, rx_now_ns() - t0)
            _count(&self.n_filtered, n - r)
            self.out_n = r
            if st.error != 0:
                return self._fail(self.pos + n, st.error)
            self.pos = self.got

    def step(self):
        """One step with the GIL released; returns its status (``PUMP_*``)."""
        cdef int s
        with nogil:
            s = self.step_nogil()
        return s

    def abandon(self):
        """Forget the records taken but not emitted (input left in the batch,
        outputs not pushed); returns how many there were."""
        n = (self.got - self.pos) + (self.out_n - self.out_done)
        self.got = self.pos = 0
        self.out_n = self.out_done = 0
        return n

    @property
    def pending(self):
        """Outputs wait for room in ``dst``."""
        return self.out_done < self.out_n

    @property
    def received(self):
        return rx_load64_relaxed(&self.n_received)

    @property
    def emitted(self):
        return rx_load64_relaxed(&self.n_emitted)

    @property
    def filtered(self):
        return rx_load64_relaxed(&self.n_filtered)

    @property
    def errors(self):
        return rx_load64_relaxed(&self.n_errors)

    @property
    def busy(self):
        """Seconds spent in the plug-in (its normal calls)."""
        return rx_load64_relaxed(&self.busy_ns) / 1e9

    @property
    def error_code(self):
        """The code of the last failing record (0 if none failed)."""
        return self.last_error

    def error_record(self):
        """A copy of the last failing record as ``bytes`` (``None`` if none failed)."""
        if self.last_error == 0:
            return None
        return self.errbuf[:self.in_size]


cdef void _lane_quit(Scheduler sched, uint32_t me) noexcept nogil:
    """A worker that ends while it holds the lane: free it, and wake a worker
    for whatever waits in lane_q."""
    cdef uint32_t owner = me
    cdef int64_t index
    cdef int64_t wake = sched.n
    # acq_rel CAS me->0: fails if the lane was taken over already
    if not rx_cas32_acqrel(&sched.lane_owner, &owner, 0):
        return
    rx_store64_relaxed(&sched.lane_since, 0)
    rx_fence_seqcst()  # Dekker with lane_forward
    if sched.lane_q.try_pop_records(&index, 1) == 1:
        sched._lane_push(index)
        if sched.ready.try_push_records(&wake, 1) == 0:
            sched.ready.push_records(&wake, 1, 0.1)


cdef int64_t _next_step(Scheduler sched, uint32_t me, bint* holding, double timeout) noexcept nogil:
    """The next unit this worker runs through Python, or TIMEOUT / CLOSED.

    On the way it steps record pumps without the GIL, and applies the lane:
    the holder takes lane_q first; a lane unit popped by another worker is
    forwarded to the holder (see the module docs)."""
    cdef int64_t index, t0
    cdef int status
    cdef void* p
    while True:
        if holding[0]:
            if not sched.lane_held_by(me):
                holding[0] = False  # taken over while this worker was stuck in a step
                continue
            index = sched.lane_pop()
            if index >= 0:
                return index
            index = sched.try_next_nogil()
            if index == C_NONE:
                if sched.lane_give(me):
                    continue  # lane_q got work meanwhile: still the holder
                holding[0] = False
                index = sched.next_nogil(timeout)
        elif rx_load32_acquire(&sched.lane_owner) != 0:
            # another worker holds the lane: wake up within the patience to see
            # whether it is stuck in one step (then take the lane over)
            index = sched.next_nogil(min(timeout, sched.lane_patience_ns / 1e9))
        else:
            index = sched.next_nogil(timeout)
        if index == C_TIMEOUT:
            if sched.lane_take_over(me):  # the holder is stuck in one step
                holding[0] = True
                continue
            return index
        if index < 0:
            return index
        if index == sched.n:  # the lane wake (release_lane, _lane_quit)
            if sched.lane_take(me) or sched.lane_take_over(me):
                holding[0] = True
            continue
        p = sched.pumps[index]
        # acquire: pairs with set_hold's release store
        if p != NULL and not (<PumpTask>p).python and not rx_load32_acquire(&sched.hold):
            # a record pump: a step here, without the GIL
            t0 = rx_now_ns()
            status = (<PumpTask>p).step_nogil()
            rx_add64_relaxed(&sched.pump_ns, <uint64_t>(rx_now_ns() - t0))
            if status >= P_ERROR:
                # the error policy / the end need Python: hand the status over
                (<PumpTask>p).held = status
                (<PumpTask>p).python = 1
                return index
            sched.done_nogil(index, status == P_YIELD)
            continue
        if not sched.lane[index]:
            if holding[0]:
                # a unit off the lane may block for long (a replica waiting on I/O):
                # give the lane up first, so the lane units go on meanwhile
                _lane_quit(sched, me)
                holding[0] = False
            return index
        if holding[0]:
            return index
        if sched.lane_take(me):
            holding[0] = True
            return index
        if sched.lane_forward(index, me):
            holding[0] = True  # the lane was free after all: index is in lane_q, run it from there


def worker_loop(Scheduler sched, run, idle, double poll):
    """The body of a pool worker.

    Waits for a runnable unit with the GIL released, runs ``run(index)`` (one
    batch, with the GIL: the unit's Python logic) and hands the unit back to
    the scheduler.  ``run`` returns 1 if the unit has more work now, plus 2 if
    this worker should end (a spare no longer needed).  On a
    timeout it calls ``idle()``, which returns the next timeout in seconds
    (timers, sweeps) or a negative number to end this worker.  Returns when
    the queue is closed.

    A unit with a :class:`PumpTask` (``Scheduler.set_pump``) is stepped here
    without the GIL, unit after unit, as long as the queue hands out pumps;
    ``run(index)`` sees it only when the pump asks for Python (its
    ``python`` flag, a status in ``held``) or while paused/aborting (``hold``).
    Lane units run only while this worker holds the Python lane (see the
    module docs).
    """
    cdef int64_t index, handed, started
    cdef double timeout = poll
    cdef int verdict
    cdef bint holding = False
    # this worker's id in the lane (relaxed fetch-add: ids only need to differ)
    cdef uint32_t me = rx_add32_relaxed(&sched.next_worker_id, 1) + 1
    try:
        while True:
            with nogil:
                index = _next_step(sched, me, &holding, timeout)
                handed = rx_now_ns()
            # here the GIL is held again: the wait for it is the step's GIL wait
            started = rx_now_ns()
            if index == C_CLOSED:
                return
            if index == C_TIMEOUT:
                timeout = idle()
                if timeout < 0:
                    return
                continue
            if holding:
                # relaxed: only a would-be taker reads it (lane_take_over)
                rx_store64_relaxed(&sched.lane_since, <uint64_t>rx_now_ns())
            try:
                verdict = run(index)
            finally:
                if holding and sched.lane_held_by(me):
                    rx_store64_relaxed(&sched.lane_since, 0)
                rx_add64_relaxed(&sched.n_steps, 1)
                rx_add64_relaxed(&sched.gil_wait_ns, <uint64_t>(started - handed))
                handed = rx_now_ns() - started
                rx_add64_relaxed(&sched.step_ns, <uint64_t>handed)
                if sched.lane[index]:
                    rx_add64_relaxed(&sched.lane_ns, <uint64_t>handed)
            sched.done_nogil(index, verdict & 1)
            if verdict & 2:
                return
            timeout = poll
    finally:
        if holding:
            with nogil:
                _lane_quit(sched, me)
