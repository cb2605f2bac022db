# cython: language_level=3, freethreading_compatible=True
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
    uint64_t rx_load64_relaxed(uint64_t* p)
    void rx_store64_relaxed(uint64_t* p, uint64_t v)

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

    def __cinit__(self, Py_ssize_t n):
        if n < 0:
            raise ValueError(f"Scheduler: n must be >= 0, got {n}")
        self.n = n
        self.states = <uint32_t*>calloc(n if n > 0 else 1, sizeof(uint32_t))
        self.pumps = <void**>calloc(n if n > 0 else 1, sizeof(void*))
        self.pump_refs = []
        if self.states == NULL or self.pumps == NULL:
            raise MemoryError()
        # every unit is in the queue at most once, so a push never finds it full
        # raw 8-byte records (unit indices): no numpy import for a pure-Python pipeline
        self.ready = _raw_record_channel(n if n > 2 else 2, 8, "mpmc")

    def __dealloc__(self):
        free(self.states)
        free(self.pumps)

    def set_pump(self, Py_ssize_t i, PumpTask pump not None):
        """Unit ``i`` (RUNNING in the calling worker) is a record pump from now on:
        the worker loop runs its steps without the GIL."""
        self._check(i)
        self.pump_refs.append(pump)  # keeps it alive as long as the scheduler
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
        """How many units wait in the ready queue (a snapshot)."""
        return len(self.ready)

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


cdef inline int64_t _get(int64_t* field) noexcept nogil:
    # relaxed: a field with one writer (the unit's runner) that other threads
    # only read as a hint; nothing is published through it
    return <int64_t>rx_load64_relaxed(<uint64_t*>field)


cdef inline void _set(int64_t* field, int64_t v) noexcept nogil:
    # relaxed: see _get
    rx_store64_relaxed(<uint64_t*>field, <uint64_t>v)


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
    cdef Py_ssize_t batch, in_size, out_size, got, pos
    # outputs of the last plug-in call, and how many of them went out: written
    # by the runner only, read by the pool's sweep in any thread (`pending`),
    # so every access is a relaxed atomic (_get / _set)
    cdef int64_t out_n, out_done
    cdef int64_t budget_ns
    cdef uint64_t n_received, n_emitted, n_filtered, n_errors, busy_ns
    cdef int32_t last_error
    # `held` and `python` are read and written only by the thread running the
    # unit (the worker loop, or the unit's step in Python), never by two at
    # once: the scheduler's acq_rel state CAS (next_nogil / done_nogil)
    # orders one runner after the other, with or without a GIL
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
                _set(&self.out_done, self.out_done + r)
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
            _set(&self.out_n, 0)
            _set(&self.out_done, 0)
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
            _set(&self.out_n, r)
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
        _set(&self.out_n, 0)
        _set(&self.out_done, 0)
        return n

    @property
    def pending(self):
        """Outputs wait for room in ``dst`` (a snapshot when read from another thread)."""
        return _get(&self.out_done) < _get(&self.out_n)

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
    """
    cdef int64_t index
    cdef double timeout = poll
    cdef int verdict, status
    cdef void* p
    while True:
        with nogil:
            index = sched.next_nogil(timeout)
            # record pumps run here, without the GIL, step after step
            while index >= 0:
                p = sched.pumps[index]
                # acquire: pairs with set_hold's release store
                if p == NULL or (<PumpTask>p).python or rx_load32_acquire(&sched.hold):
                    break
                status = (<PumpTask>p).step_nogil()
                if status >= P_ERROR:
                    # the error policy / the end need Python: hand the status over
                    (<PumpTask>p).held = status
                    (<PumpTask>p).python = 1
                    break
                sched.done_nogil(index, status == P_YIELD)
                index = sched.next_nogil(poll)
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
