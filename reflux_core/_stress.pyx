# cython: language_level=3, freethreading_compatible=True, boundscheck=False, wraparound=False, cdivision=True
"""Internal: nogil producer and consumer loops over a RecordChannel of uint64
records, for the stress tests and the benchmarks.

Each record is ``producer << 32 | seq``.  Consumers check that, per producer,
the sequence numbers they see only grow, and report per-producer counts and
sums so a test can prove no loss and no duplicate.

``produce``/``consume`` release the GIL and are meant to be called from Python
threads; ``run_native`` starts plain native threads from C (no Python thread
state at all) and waits for them.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from cpython.pythread cimport PyThread_start_new_thread

from reflux_core.channel cimport RecordChannel
from reflux_core._ring cimport (rx_event, rx_event_init, rx_event_destroy, rx_event_wait,
                                rx_event_prepare, rx_event_notify, rx_heavy_barrier,
                                rx_light_barrier, rx_now_ns, rx_load64_acquire, rx_add64_release,
                                rx_sub64_acqrel, rx_thread_yield, rx_cpu_relax, rx_store64_release)

cdef enum:
    MAX_PRODUCERS = 64


cdef struct Tally:
    uint64_t count
    uint64_t order_errors
    uint64_t bad_producer
    uint64_t counts[MAX_PRODUCERS]
    uint64_t sums[MAX_PRODUCERS]
    int64_t last[MAX_PRODUCERS]


cdef int _check_channel(RecordChannel ch) except -1:
    if ch.itemsize != 8:
        raise TypeError(f"stress loops need 8-byte records, the channel holds {ch.dtype}")
    return 0


cdef Py_ssize_t _produce(RecordChannel ch, uint32_t producer, Py_ssize_t n,
                         Py_ssize_t batch, uint64_t* buf) noexcept nogil:
    cdef Py_ssize_t seq = 0, i, k, got
    while seq < n:
        k = batch if n - seq > batch else n - seq
        for i in range(k):
            buf[i] = (<uint64_t>producer << 32) | <uint64_t>(seq + i)
        if k == 1:
            # the single-record path, as a per-item producer would use it
            got = ch.try_push_records(buf, 1)
            if got == 0:
                got = ch.push_records(buf, 1, -1.0)
        else:
            got = ch.push_records(buf, k, -1.0)
        if got <= 0:
            break
        seq += got
        if got < k:
            break
    return seq


cdef void _consume(RecordChannel ch, Py_ssize_t batch, uint64_t* buf, Tally* t) noexcept nogil:
    cdef Py_ssize_t got, i
    cdef uint64_t v, p
    cdef int64_t s
    while True:
        got = ch.pop_records(buf, batch, -1.0)
        if got < 0:
            return
        for i in range(got):
            v = buf[i]
            p = v >> 32
            s = <int64_t>(v & 0xFFFFFFFFu)
            if p >= MAX_PRODUCERS:
                t.bad_producer += 1
                continue
            if s <= t.last[p]:
                t.order_errors += 1
            t.last[p] = s
            t.counts[p] += 1
            t.sums[p] += <uint64_t>s
            t.count += 1


cdef dict _tally_dict(Tally* t, int nproducers):
    return {
        "count": t.count,
        "order_errors": t.order_errors,
        "bad_producer": t.bad_producer,
        "counts": [t.counts[i] for i in range(nproducers)],
        "sums": [t.sums[i] for i in range(nproducers)],
    }


def produce(RecordChannel ch, unsigned int producer, Py_ssize_t n, Py_ssize_t batch=64,
            bint close=False):
    """Push n tagged records without the GIL (batch 1 uses the single-record path).
    Returns how many went in; closes the channel afterwards if asked."""
    cdef uint64_t* buf
    cdef Py_ssize_t done
    _check_channel(ch)
    if producer >= MAX_PRODUCERS or batch < 1:
        raise ValueError(f"producer must be < {MAX_PRODUCERS} and batch >= 1")
    buf = <uint64_t*>malloc(batch * sizeof(uint64_t))
    if buf == NULL:
        raise MemoryError()
    with nogil:
        done = _produce(ch, producer, n, batch, buf)
        if close:
            ch.close_nogil()
    free(buf)
    return done


def consume(RecordChannel ch, int nproducers, Py_ssize_t batch=64):
    """Pop until end of stream without the GIL; returns a tally dict."""
    cdef Tally* t
    cdef uint64_t* buf
    cdef int i
    _check_channel(ch)
    if not 0 < nproducers <= MAX_PRODUCERS or batch < 1:
        raise ValueError(f"nproducers must be 1..{MAX_PRODUCERS} and batch >= 1")
    t = <Tally*>calloc(1, sizeof(Tally))
    buf = <uint64_t*>malloc(batch * sizeof(uint64_t))
    if t == NULL or buf == NULL:
        free(t)
        free(buf)
        raise MemoryError()
    for i in range(MAX_PRODUCERS):
        t.last[i] = -1
    with nogil:
        _consume(ch, batch, buf, t)
    result = _tally_dict(t, nproducers)
    free(buf)
    free(t)
    return result


# ---------------------------------------------------------------- native threads

cdef struct Job:
    void* ch            # borrowed RecordChannel; run_native keeps it alive
    int producer        # >= 0: a producer with this id; -1: a consumer
    Py_ssize_t n
    Py_ssize_t batch
    uint64_t pushed
    Tally tally
    uint64_t* done_counter
    uint64_t* producers_left
    rx_event* finished      # notified as each thread ends (run_native sleeps on it)
    uint64_t* notified      # counts the notifies done: run_native frees `finished` after all
    uint64_t* arrived       # start gate: threads that reached their loop
    uint64_t* gate          # threads to wait for at the gate (lowered if one failed to start)


cdef void _native_run(RecordChannel ch, Job* job) noexcept:
    cdef uint64_t* buf = <uint64_t*>malloc(job.batch * sizeof(uint64_t))
    cdef int i
    if buf != NULL:
        with nogil:
            # start gate: no side waits on a ring while the other is still starting
            # release: pairs with the acquire loads of the other threads
            rx_add64_release(job.arrived, 1)
            # acquire: pairs with the increments above, and with run_native's
            # release store when it lowers the gate
            while rx_load64_acquire(job.arrived) < rx_load64_acquire(job.gate):
                rx_cpu_relax()
            if job.producer >= 0:
                job.pushed = _produce(ch, <uint32_t>job.producer, job.n, job.batch, buf)
                # acq_rel: each producer's pushes happen-before the close;
                # pairs with the other producers' decrements
                if rx_sub64_acqrel(job.producers_left, 1) == 1:
                    ch.close_nogil()
            else:
                for i in range(MAX_PRODUCERS):
                    job.tally.last[i] = -1
                _consume(ch, job.batch, buf, &job.tally)
        free(buf)


cdef void _native_main(void* arg) noexcept nogil:
    cdef Job* job = <Job*>arg
    # the GIL only to borrow the channel as a typed reference (this also gives
    # the native thread a thread state); the loops themselves run without it
    with gil:
        _native_run(<RecordChannel>job.ch, job)
    cdef rx_event* finished = job.finished
    cdef uint64_t* notified = job.notified
    # release: publishes this thread's results; pairs with the acquire load
    # of the counter in run_native's wait loop
    rx_add64_release(job.done_counter, 1)
    # light barrier: the notifier half of the Dekker pair with run_native's
    # prepare + heavy barrier, so its wake-up is never lost
    rx_light_barrier()
    rx_event_notify(finished)
    # release: the last touch of run_native's memory; pairs with its acquire
    # load before it destroys the event and frees the jobs
    rx_add64_release(notified, 1)


def run_native(RecordChannel ch, int producers, int consumers, Py_ssize_t per_producer,
               Py_ssize_t batch=64):
    """Start ``producers`` + ``consumers`` native threads (no Python thread
    state) that move tagged records through ``ch`` without the GIL; the last
    producer closes the channel.  Returns (seconds, pushed per producer, tally
    per consumer).

    The threads meet at a start gate before their loops, as the benchmark's
    Python-thread runs meet at a barrier.  Without it, runs where the loops
    were preempted hundreds to thousands of times (involuntary context
    switches; parks stayed rare) waited 300-1,500 times per 10 M records,
    likely because a thread started while the other already spun can be
    placed on the same CPU until the scheduler moves it."""
    cdef int total = producers + consumers
    cdef Job* jobs
    cdef uint64_t done = 0
    cdef uint64_t left = producers
    cdef int i
    cdef int64_t t0, t1
    cdef rx_event finished
    cdef uint64_t notified = 0
    cdef uint64_t arrived = 0
    cdef uint64_t gate = total
    cdef uint32_t seen
    cdef int started = 0
    _check_channel(ch)
    if not (0 < producers <= MAX_PRODUCERS and 0 < consumers <= 64 and batch >= 1):
        raise ValueError("need 1..64 producers, 1..64 consumers and batch >= 1")
    jobs = <Job*>calloc(total, sizeof(Job))
    if jobs == NULL:
        raise MemoryError()
    # consumers first, as the plain C ring's pr_run_threads starts them
    for i in range(total):
        jobs[i].ch = <void*>ch
        jobs[i].producer = i - consumers if i >= consumers else -1
        jobs[i].n = per_producer
        jobs[i].batch = batch
        jobs[i].done_counter = &done
        jobs[i].producers_left = &left
        jobs[i].finished = &finished
        jobs[i].notified = &notified
        jobs[i].arrived = &arrived
        jobs[i].gate = &gate
    if rx_event_init(&finished) != 0:
        free(jobs)
        raise MemoryError()
    t0 = rx_now_ns()
    for i in range(total):
        if PyThread_start_new_thread(_native_main, &jobs[i]) == <unsigned long>-1:
            # cannot start: close so the started threads finish, then wait for them
            ch.close()
            break
        started += 1
    if started < total:
        # release: pairs with the gate's acquire load in the started threads
        rx_store64_release(&gate, <uint64_t>started)
    with nogil:
        # Sleep until the threads have ended, woken by each one as it ends (a
        # periodic wake-up here would take a core from the threads measured:
        # with a 1 ms poll the 1P1C run waited ~10x more often than the same
        # loops on Python threads, whose starter blocks in join).
        while True:
            # acquire: pairs with the release increment at each thread's end
            if rx_load64_acquire(&done) >= <uint64_t>started:
                break
            seen = rx_event_prepare(&finished)
            # heavy barrier: the waiter half of the Dekker pair; pairs with the
            # light barrier each thread runs between its count and its notify
            rx_heavy_barrier()
            # acquire: as above
            if rx_load64_acquire(&done) >= <uint64_t>started:
                break
            rx_event_wait(&finished, seen, 100000000)
        # acquire: pairs with each thread's last increment; a few instructions
        # separate a thread's count from its notify, so this spins briefly
        while rx_load64_acquire(&notified) < <uint64_t>started:
            rx_thread_yield()
    rx_event_destroy(&finished)
    t1 = rx_now_ns()
    if started < total:
        free(jobs)
        raise RuntimeError("could not start every native thread")
    pushed = [jobs[i].pushed for i in range(consumers, total)]
    tallies = [_tally_dict(&jobs[i].tally, producers) for i in range(consumers)]
    free(jobs)
    return (t1 - t0) / 1e9, pushed, tallies
