"""Pipeline benchmark: whole reflux pipelines against a plain loop and the peers.

Run from the repository root::

    python -m benchmarks.pipeline [--quick] [--repeat R] [--json PATH] [--only SECTIONS]

It measures the runtime of the installed reflux (the worker pool) against a
plain loop and the peers.  Sections
(each number is the median of ``--repeat`` runs; runs go in rounds, every row
once per round, so drift in the machine's speed touches all rows alike):

``overhead``  1,000,000 ints through Extractor -> Transformer(x*2+1) ->
              Filter(x%3==0) -> Loader(sum), against a plain for-loop making
              the same calls, a three-thread queue.Queue pipeline, and the
              peers where they import: bytewax (one worker, run_main),
              pypeln (threads), streamz, mpipe (one process per stage).  The
              slow peers (thread+queue, pypeln, streamz, mpipe) move
              ``--peer-items`` ints (rates are per second, so comparable).
``cpu``       CPU-heavy Python: 20,000 items, each a pure-Python loop of 2,000
              iterations, against the plain loop and multiprocessing.Pool(2)
              .imap with a tuned chunksize; reflux on threads with
              ``parallel=1`` and ``parallel=2`` (replicas: on a free-threaded
              build with the GIL off they run on both cores), and its
              process workers (``Transformer(..., executor="process")``,
              worker start-up included).  On a free-threaded build with the
              GIL off, also the limit for threads: 2 bare threads over their
              own ``range()``, and over items another thread made (what a
              pipeline's replicas get from its source).  Also 1,000,000 small ints from
              process to process: multiprocessing.Queue (per item and in
              lists), against reflux process workers (there and back).
``many``      a 1,000-stage chain and a 500-branch Balancer graph moving
              100,000 items, each run in a fresh interpreter with a deadline:
              throughput, the time start() took, threads used (peak over the
              idle baseline, Python's count and the OS's), peak RSS growth.
``latency``   one item at a time through Extractor -> Transformer -> Loader
              at low load (the source sleeps ~1 ms between items; an item
              carries its creation time, the Loader takes the difference):
              p50 and p99, against the same three stages as threads and
              queue.Queue.
``startup``   the overhead pipeline with a single item: build plus the whole
              run(), in-process (and in a fresh interpreter, with the import),
              against bytewax and a thread+queue pipeline; with the Transformer
              as two replicas (``parallel=2``); and with the Transformer in
              process workers (their start included).

Every measurement checks what arrived (count and sum) and raises if it is
wrong.  Peers that do not import are skipped with a note (install them with
``pip install ".[bench]"``); features reflux does not have yet are printed as
"not available yet".  The performance targets are printed at the end with
PASS/MISS.  Nothing here is a test: timings are only reported.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from time import perf_counter

from benchmarks import import_core

import_core("channel")  # the compiled core first (see benchmarks.import_core)
import reflux_core  # noqa: E402  (bound by import_core above)
import reflux  # noqa: E402
from reflux.result import gil_enabled, thread_mode  # noqa: E402
from reflux import (  # noqa: E402
    Balancer,
    Extractor,
    Filter,
    Loader,
    Pipeline,
    Transformer,
    ValidationError,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "benchmark"  # first column title; the smoke test looks for the header line
RUN_TIMEOUT = 300.0   # seconds an in-process run may take before it counts as stuck
PEERS = ("bytewax", "pypeln", "streamz", "mpipe")
CPU_ITERATIONS = 2_000
HEAVY_SUM_PER_ITEM = CPU_ITERATIONS * (CPU_ITERATIONS - 1) // 2  # heavy(x) == x * this
NOT_YET = "not available yet"


class BenchmarkError(AssertionError):
    """A run moved the wrong items (lost, duplicated, altered) or got stuck."""


# ====================================================================== the work

def step(x):
    """The Transformer of the overhead pipeline."""
    return x * 2 + 1


def keep(y):
    """The Filter of the overhead pipeline."""
    return y % 3 == 0


def keep_or_none(y):
    """keep() for peers without a filter (mpipe drops a None result)."""
    return y if y % 3 == 0 else None


def heavy(x):
    """CPU-heavy pure Python: a loop of CPU_ITERATIONS iterations; returns x * HEAVY_SUM_PER_ITEM."""
    acc = 0
    for i in range(CPU_ITERATIONS):
        acc += x * i
    return acc


def add1(x):
    return x + 1


def identity(x):
    return x


class SumSink:
    """The Loader's function: counts and sums (reflux reports result())."""

    def __init__(self):
        self.count = 0
        self.total = 0

    def __call__(self, y):
        self.count += 1
        self.total += y

    def result(self):
        return self.count, self.total


_expected_cache: dict[int, tuple[int, int]] = {}


def expected_light(n):
    """(count, sum) the overhead pipeline must load for range(n): y = 2x+1 with y%3 == 0 <=> x%3 == 1."""
    if n not in _expected_cache:
        xs = range(1, n, 3)
        _expected_cache[n] = (len(xs), 2 * sum(xs) + len(xs))
    return _expected_cache[n]


def check(label, got, expected):
    if tuple(got) != tuple(expected):
        raise BenchmarkError(f"{label}: loaded (count, sum) = {tuple(got)}, expected {tuple(expected)}")


def process_executor_support():
    """(True, None) if ``Transformer(fn, executor="process")`` is accepted, else (False, why)."""
    try:
        Transformer(identity, executor="process")
    except (TypeError, ValidationError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def fork_start_support():
    """Whether ``Transformer(..., executor="process", start_method="fork")`` is accepted here."""
    try:
        Transformer(identity, executor="process", start_method="fork")
    except (TypeError, ValidationError):
        return False
    return True


def _join_all(label, threads, timeout=RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise BenchmarkError(f"{label}: a thread did not finish within {timeout:.0f} s")


def _reflux_run(label, pipeline):
    try:
        return pipeline.run(timeout=RUN_TIMEOUT)
    except TimeoutError:
        raise BenchmarkError(f"{label}: run() did not finish within {RUN_TIMEOUT:.0f} s (hang?)") from None


_END = object()  # the thread peers' end-of-stream sentinel


# ====================================================================== section 1: overhead

def run_plain(n):
    sink = SumSink()
    t0 = perf_counter()
    for x in range(n):
        y = step(x)
        if keep(y):
            sink(y)
    secs = perf_counter() - t0
    check("plain loop", sink.result(), expected_light(n))
    return {"secs": secs}


def run_reflux_light(n):
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = _reflux_run("reflux", Pipeline(Extractor(range(n)) >> Transformer(step) >> Filter(keep) >> sink))
    secs = perf_counter() - t0
    check("reflux", result.results["sum"], expected_light(n))
    return {"secs": secs}


def run_thread_queue(n):
    """Three threads joined by bounded queue.Queue: source+Transformer, Filter, Loader."""
    q1, q2 = queue.Queue(maxsize=1024), queue.Queue(maxsize=1024)
    sink = SumSink()

    def transform():
        put = q1.put
        for x in range(n):
            put(step(x))
        put(_END)

    def filt():
        get, put = q1.get, q2.put
        while True:
            y = get()
            if y is _END:
                put(_END)
                return
            if keep(y):
                put(y)

    def load():
        get = q2.get
        while True:
            y = get()
            if y is _END:
                return
            sink(y)

    threads = [threading.Thread(target=fn, daemon=True) for fn in (transform, filt, load)]
    t0 = perf_counter()
    for t in threads:
        t.start()
    _join_all("thread+queue", threads)
    secs = perf_counter() - t0
    check("thread+queue", sink.result(), expected_light(n))
    return {"secs": secs}


def _bytewax_flow(source_items, sink_acc, batch_size):
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource

    class _Partition(StatelessSinkPartition):
        def write_batch(self, items):
            sink_acc[0] += len(items)
            sink_acc[1] += sum(items)

    class _SumSink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return _Partition()

    flow = Dataflow("bench")
    s = op.input("extract", flow, TestingSource(source_items, batch_size=batch_size))
    s = op.map("transform", s, step)
    s = op.filter("filter", s, keep)
    op.output("load", s, _SumSink())
    return flow


BYTEWAX_BATCH = 256  # TestingSource's default is 1 (10x slower); 256 is reflux's default batch


def run_bytewax(n):
    from bytewax.testing import run_main
    acc = [0, 0]
    t0 = perf_counter()
    run_main(_bytewax_flow(range(n), acc, BYTEWAX_BATCH))
    secs = perf_counter() - t0
    check("bytewax", acc, expected_light(n))
    return {"secs": secs}


def run_pypeln(n):
    import pypeln as pl
    sink = SumSink()
    t0 = perf_counter()
    stage = pl.thread.map(step, range(n), workers=1, maxsize=1024)
    stage = pl.thread.filter(keep, stage, workers=1, maxsize=1024)
    for y in stage:
        sink(y)
    secs = perf_counter() - t0
    check("pypeln", sink.result(), expected_light(n))
    return {"secs": secs}


def run_streamz(n):
    from streamz import Stream
    sink = SumSink()
    t0 = perf_counter()
    source = Stream()
    source.map(step).filter(keep).sink(sink)
    emit = source.emit
    for x in range(n):
        emit(x)
    secs = perf_counter() - t0
    check("streamz", sink.result(), expected_light(n))
    return {"secs": secs}


def run_mpipe(n):
    import mpipe
    sink = SumSink()
    t0 = perf_counter()
    transform = mpipe.OrderedStage(step, 1)
    filt = mpipe.OrderedStage(keep_or_none, 1)  # a None result is not passed on
    transform.link(filt)
    pipe = mpipe.Pipeline(transform)

    def feed():  # pipes are small: feed from a thread while the main thread drains
        for x in range(n):
            pipe.put(x)
        pipe.put(None)  # stop

    failed = []

    def drain():
        try:
            for y in pipe.results():
                sink(y)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=fn, daemon=True) for fn in (drain, feed)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if failed or any(t.is_alive() for t in threads):
        for child in multiprocessing.active_children():  # a stuck or dead stage: end the rest
            child.terminate()
        raise RuntimeError(f"mpipe {'failed: ' + repr(failed[0]) if failed else 'did not finish'}")
    secs = perf_counter() - t0
    _reap_children()
    check("mpipe", sink.result(), expected_light(n))
    return {"secs": secs}


def _reap_children(timeout=10.0):
    """Wait for finished child processes, so their CPU time is accounted for."""
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)


def section_overhead(bench):
    n, m = bench.args.items, bench.args.peer_items
    bench.measure("overhead", "ov_plain", "plain for-loop, same calls", n, partial(run_plain, n))
    bench.measure("overhead", "ov_reflux", "reflux E>>T>>F>>L (build + run())", n,
                  partial(run_reflux_light, n), reflux=True)
    bench.measure("overhead", "ov_threads", "3 threads + queue.Queue(1024)", m, partial(run_thread_queue, m))
    bench.peer("overhead", "ov_bytewax", f"bytewax 1 worker, run_main, batch {BYTEWAX_BATCH}", n,
               "bytewax", partial(run_bytewax, n))
    bench.peer("overhead", "ov_pypeln", "pypeln threads, map/filter (1 worker each)", m,
               "pypeln", partial(run_pypeln, m))
    bench.peer("overhead", "ov_streamz", "streamz Stream().map().filter().sink()", m,
               "streamz", partial(run_streamz, m))
    bench.peer("overhead", "ov_mpipe", "mpipe OrderedStage x2 (1 process each)", m,
               "mpipe", partial(run_mpipe, m))


# ====================================================================== section 2: CPU-heavy, processes

def run_cpu_plain(n):
    total = 0
    t0 = perf_counter()
    for x in range(n):
        total += heavy(x)
    secs = perf_counter() - t0
    check("CPU plain loop", (n, total), (n, HEAVY_SUM_PER_ITEM * (n * (n - 1) // 2)))
    return {"secs": secs}


def run_cpu_pool(n, chunksize, workers=2):
    """multiprocessing.Pool(workers).imap, pool start-up and shutdown included."""
    count = total = 0
    t0 = perf_counter()
    pool = multiprocessing.Pool(workers)
    try:
        for r in pool.imap(heavy, range(n), chunksize=chunksize):
            count += 1
            total += r
        pool.close()
        pool.join()
    except BaseException:
        pool.terminate()
        raise
    secs = perf_counter() - t0
    check(f"multiprocessing.Pool({workers})", (count, total),
          (n, HEAVY_SUM_PER_ITEM * (n * (n - 1) // 2)))
    return {"secs": secs, "chunksize": chunksize}


def tune_chunksize(n, candidates=(16, 64, 256, 1024)):
    """Best imap chunksize for `n` items, each candidate timed once on n/4 items."""
    sample = max(100, n // 4)
    times = {}
    for cs in candidates:
        if cs * 2 > sample and times:
            break
        times[cs] = run_cpu_pool(sample, cs)["secs"]
    return min(times, key=times.get), times


def run_cpu_reflux(n, **kwargs):
    label = "reflux process workers" if kwargs.get("executor") == "process" else "reflux threads"
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = _reflux_run(label, Pipeline(Extractor(range(n)) >> Transformer(heavy, **kwargs) >> sink))
    secs = perf_counter() - t0
    check(label, result.results["sum"], (n, HEAVY_SUM_PER_ITEM * (n * (n - 1) // 2)))
    return {"secs": secs}


def run_cpu_bare_threads(n, items_from_another_thread=False, k=2):
    """``k`` plain threads, each calling heavy() on its share of the items: the
    most threads can do, with no pipeline between them.  ``items_from_another_thread``:
    the items are made by this thread first (as a pipeline's source makes them), and
    without the GIL every reference a worker takes to an object another thread made
    is counted with an atomic operation (biased reference counting, PEP 703)."""
    items = list(range(n)) if items_from_another_thread else None
    totals = [(0, 0)] * k

    def work(i):
        count = total = 0
        for x in (items[i::k] if items is not None else range(i, n, k)):
            count += 1
            total += heavy(x)
        totals[i] = (count, total)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(k)]
    t0 = perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = perf_counter() - t0
    check(f"{k} bare threads", (sum(c for c, _ in totals), sum(t for _, t in totals)),
          (n, HEAVY_SUM_PER_ITEM * (n * (n - 1) // 2)))
    return {"secs": secs}


def _mp_producer(q, n, batch):
    put = q.put
    if batch == 1:
        for i in range(n):
            put(i)
    else:
        for s in range(0, n, batch):
            put(list(range(s, min(s + batch, n))))
    put(None)
    q.close()
    q.join_thread()


def _mp_consumer(q, results, batch):
    get = q.get
    count = total = 0
    while True:
        x = get()
        if x is None:
            break
        if batch == 1:
            count += 1
            total += x
        else:
            count += len(x)
            total += sum(x)
    results.put((count, total, perf_counter()))


def run_mp_queue(n, batch=1):
    """multiprocessing.Queue from a producer process to a consumer process
    (timed from before the processes start until the consumer has everything)."""
    q, results = multiprocessing.Queue(), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_mp_consumer, args=(q, results, batch), daemon=True),
             multiprocessing.Process(target=_mp_producer, args=(q, n, batch), daemon=True)]
    t0 = perf_counter()
    for p in procs:
        p.start()
    try:
        count, total, t1 = results.get(timeout=RUN_TIMEOUT)
    except queue.Empty:
        raise BenchmarkError(f"multiprocessing.Queue: nothing back within {RUN_TIMEOUT:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    check("multiprocessing.Queue", (count, total), (n, n * (n - 1) // 2))
    return {"secs": t1 - t0}


def run_reflux_p2p(n):
    """Small ints from the main process to a worker process and back (two hops)."""
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = _reflux_run("reflux process workers",
                         Pipeline(Extractor(range(n)) >> Transformer(identity, executor="process") >> sink))
    secs = perf_counter() - t0
    check("reflux process to process", result.results["sum"], (n, n * (n - 1) // 2))
    return {"secs": secs}


def section_cpu(bench):
    n = bench.args.cpu_items
    runs = min(bench.args.repeat, 3)
    bench.measure("cpu", "cpu_plain", f"plain for-loop ({CPU_ITERATIONS:,} iterations per item)", n,
                  partial(run_cpu_plain, n), max_runs=runs)
    if bench.args.chunksize:
        cs, how = bench.args.chunksize, "--chunksize"
    else:
        cs, times = tune_chunksize(n)
        how = "tuned: " + ", ".join(f"{k}: {v:.2f} s" for k, v in times.items()) + f" on {max(100, n // 4):,} items"
    bench.note(f"multiprocessing.Pool(2).imap chunksize {cs} ({how})")
    bench.measure("cpu", "cpu_pool", f"multiprocessing.Pool(2).imap, chunksize {cs}", n,
                  partial(run_cpu_pool, n, cs), max_runs=runs)
    bench.measure("cpu", "cpu_reflux_threads", "reflux E>>T(heavy)>>L, threads, parallel=1", n,
                  partial(run_cpu_reflux, n), max_runs=runs, reflux=True)
    bench.measure("cpu", "cpu_reflux_parallel", "reflux E>>T(heavy, parallel=2)>>L, threads", n,
                  partial(run_cpu_reflux, n, parallel=2), max_runs=runs, reflux=True)
    if not gil_enabled():  # the limit for threads, with and without a source making the items
        bench.measure("cpu", "cpu_bare", "2 bare threads, each over its own range()", n,
                      partial(run_cpu_bare_threads, n), max_runs=runs)
        bench.measure("cpu", "cpu_bare_foreign", "2 bare threads over items another thread made", n,
                      partial(run_cpu_bare_threads, n, True), max_runs=runs)
    label = 'reflux E>>T(heavy, executor="process")>>L'
    if bench.process_executor:
        bench.measure("cpu", "cpu_reflux_process", label, n,
                      partial(run_cpu_reflux, n, executor="process"), max_runs=runs, reflux=True)
        if fork_start_support():
            bench.measure("cpu", "cpu_reflux_fork", label.replace('"process"', '"process", start_method="fork"'),
                          n, partial(run_cpu_reflux, n, executor="process", start_method="fork"),
                          max_runs=runs, reflux=True)
    else:
        bench.unavailable("cpu", "cpu_reflux_process", label, n, NOT_YET)
    m = bench.args.mp_items
    bench.measure("p2p", "mp_queue", "multiprocessing.Queue put/get, process to process", m,
                  partial(run_mp_queue, m, 1), max_runs=runs)
    bench.measure("p2p", "mp_queue_lists", "multiprocessing.Queue, one list of 256 per put", m,
                  partial(run_mp_queue, m, 256), max_runs=runs)
    label = 'reflux E>>T(identity, executor="process")>>L (there and back)'
    if bench.process_executor:
        bench.measure("p2p", "p2p_reflux", label, m, partial(run_reflux_p2p, m), max_runs=runs, reflux=True)
    else:
        bench.unavailable("p2p", "p2p_reflux", label, m, NOT_YET)


# ====================================================================== section 3: many nodes

def _proc_status():
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Threads", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])  # VmRSS/VmHWM in kB
    except OSError:
        pass
    return out


class _Sampler(threading.Thread):
    """Samples the thread counts and RSS every `interval` seconds."""

    def __init__(self, interval=0.005):
        super().__init__(daemon=True, name="bench-sampler")
        self.interval = interval
        self.halt = threading.Event()
        self.peak_py = self.peak_os = self.peak_rss = 0
        self.samples = 0

    def sample(self):
        self.samples += 1
        self.peak_py = max(self.peak_py, threading.active_count())
        st = _proc_status()
        self.peak_os = max(self.peak_os, st.get("Threads", 0))
        self.peak_rss = max(self.peak_rss, st.get("VmRSS", 0))

    def run(self):
        while not self.halt.wait(self.interval):
            self.sample()


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5); False if it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def many_child(spec):
    """Run one many-node pipeline (in a fresh interpreter) and return what happened."""
    import resource
    shape, nodes, n, timeout = spec["shape"], spec["nodes"], spec["items"], spec["timeout"]
    sampler = _Sampler()
    sampler.start()
    time.sleep(0.02)
    base_py = threading.active_count()
    base_os = _proc_status().get("Threads", 0)
    base_rss = _proc_status().get("VmRSS", 0)
    hwm_reset = _reset_peak_rss()
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # count the Python threads started during the run (a thread-per-node
    # runtime may end early nodes before it starts the last ones, so the
    # peak alive at once can be far below the number started)
    started = [0]
    thread_start = threading.Thread.start

    def counting_start(self):
        started[0] += 1
        return thread_start(self)

    threading.Thread.start = counting_start
    out = {"outcome": "ok"}
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    if shape == "chain":
        p = Pipeline(name="chain", fuse=spec.get("fuse", True))
        p.chain(Extractor(range(n)), *[Transformer(add1, name=f"stage{i}") for i in range(nodes)], sink)
        expected = (n, n * (n - 1) // 2 + nodes * n)
    else:
        p = Pipeline(Extractor(range(n)) >> Balancer()
                     >> [Transformer(add1, name=f"branch{i}") for i in range(nodes)] >> sink, name="balancer")
        expected = (n, n * (n - 1) // 2 + n)
    t_built = perf_counter()
    try:
        p.start()
    except BaseException as exc:  # e.g. RuntimeError: can't start new thread
        out["outcome"] = f"start() failed after {perf_counter() - t0:.1f} s: {type(exc).__name__}: {exc}"
    t_started = perf_counter()
    result = None
    if out["outcome"] == "ok":
        try:
            result = p.join(max(1.0, timeout - (t_started - t0)))
        except TimeoutError:
            loaded = p.stats().get("sum")
            p.stop(drain=False)
            try:
                p.join(30)
            except BaseException:  # noqa: BLE001 - reporting only
                pass
            out["outcome"] = (f"stopped at the {timeout:.0f} s deadline, not finished (start() alone took "
                              f"{t_started - t_built:.1f} s; {getattr(loaded, 'emitted', '?')} of {n:,} "
                              "items loaded)")
        except BaseException as exc:  # noqa: BLE001 - reported
            out["outcome"] = f"run failed: {type(exc).__name__}: {exc}"
    t_end = perf_counter()
    threading.Thread.start = thread_start
    sampler.sample()
    sampler.halt.set()
    sampler.join(5)
    st = _proc_status()
    if hwm_reset and "VmHWM" in st:
        rss_peak, how = st["VmHWM"] - base_rss, "VmHWM"
    elif sampler.peak_rss:
        rss_peak, how = sampler.peak_rss - base_rss, "sampled VmRSS"
    else:
        rss_peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ru0, "ru_maxrss delta"
    out.update({
        "secs": t_end - t0, "build_secs": t_built - t0, "start_secs": t_started - t_built,
        "threads_py": sampler.peak_py - base_py, "threads_os": sampler.peak_os - base_os,
        "threads_started": started[0],
        "rss_kb": rss_peak, "rss_how": how, "samples": sampler.samples,
        "tasks": nodes + 2 + (1 if shape == "balancer" else 0),
        "loaded": list(result.results["sum"]) if result is not None else None,
        "expected": list(expected),
    })
    return out


def run_many(shape, nodes, n, timeout, fuse=True):
    spec = {"shape": shape, "nodes": nodes, "items": n, "timeout": timeout, "fuse": fuse}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    argv = [sys.executable, "-m", "benchmarks.pipeline", "--child-many", json.dumps(spec)]
    label = f"{nodes}-{'stage chain' if shape == 'chain' else 'branch Balancer'}"
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return {"secs": None, "outcome": f"killed: the interpreter was still running after {timeout + 60:.0f} s"}
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"secs": None, "outcome": f"the interpreter failed (exit {proc.returncode}): {tail[:300]}"}
    out = json.loads(line[len("RESULT "):])
    if out["outcome"] != "ok":
        out["secs"] = None
        return out
    check(f"reflux {label}", out["loaded"], out["expected"])
    return out


def section_many(bench):
    a = bench.args
    runs = min(a.repeat, 3)
    bench.measure("many", "many_chain", f"reflux {a.chain_stages:,}-stage chain of Transformer(x+1)",
                  a.many_items, partial(run_many, "chain", a.chain_stages, a.many_items, a.many_timeout),
                  max_runs=runs, reflux=True, nodes=a.chain_stages, hops=a.chain_stages + 1)
    bench.measure("many", "many_chain_unfused",
                  f"reflux {a.chain_stages:,}-stage chain, fuse=False (a channel per hop)",
                  a.many_items, partial(run_many, "chain", a.chain_stages, a.many_items, a.many_timeout, False),
                  max_runs=runs, reflux=True, nodes=a.chain_stages, hops=a.chain_stages + 1)
    bench.measure("many", "many_balancer",
                  f"reflux Balancer >> {a.branches:,} x Transformer(x+1) >> Loader",
                  a.many_items, partial(run_many, "balancer", a.branches, a.many_items, a.many_timeout),
                  max_runs=runs, reflux=True, nodes=a.branches, hops=3)


# ====================================================================== section 4: latency

def _latency_source(n, gap, lead_in=0.02):
    def source():
        time.sleep(lead_in)  # let every stage start
        for i in range(n):
            time.sleep(gap)
            yield (perf_counter(), i)
    return source


def _latency_stats(label, lat, ids, n, warmup):
    check(label, (len(ids), sum(ids)), (n, n * (n - 1) // 2))
    lat = sorted(lat[warmup:])
    k = len(lat)
    return {"p50": lat[k // 2] * 1e6, "p99": lat[min(k - 1, int(k * 0.99))] * 1e6,
            "mean": statistics.fmean(lat) * 1e6, "max": lat[-1] * 1e6}


def run_latency_reflux(n, gap, warmup):
    lat, ids = [], []

    def load(item):
        lat.append(perf_counter() - item[0])
        ids.append(item[1])

    t0 = perf_counter()
    _reflux_run("reflux latency",
                Pipeline(Extractor(_latency_source(n, gap)) >> Transformer(identity) >> Loader(load)))
    secs = perf_counter() - t0
    return {"secs": secs, **_latency_stats("reflux latency", lat, ids, n, warmup)}


def run_latency_threads(n, gap, warmup):
    q1, q2 = queue.Queue(maxsize=1024), queue.Queue(maxsize=1024)
    lat, ids = [], []

    def extract():
        for item in _latency_source(n, gap)():
            q1.put(item)
        q1.put(_END)

    def transform():
        while True:
            item = q1.get()
            q2.put(item if item is _END else identity(item))
            if item is _END:
                return

    def load():
        while True:
            item = q2.get()
            if item is _END:
                return
            lat.append(perf_counter() - item[0])
            ids.append(item[1])

    threads = [threading.Thread(target=fn, daemon=True) for fn in (extract, transform, load)]
    t0 = perf_counter()
    for t in threads:
        t.start()
    _join_all("thread+queue latency", threads)
    secs = perf_counter() - t0
    return {"secs": secs, **_latency_stats("thread+queue latency", lat, ids, n, warmup)}


def section_latency(bench):
    n, gap = bench.args.latency_items, 0.001
    warmup = min(20, n // 10)
    runs = min(bench.args.repeat, 3)
    bench.note(f"latency: {n:,} items ~{gap * 1e3:g} ms apart per run; the first {warmup} of each run "
               "are not counted (warm-up)")
    bench.measure("latency", "lat_reflux", "reflux E>>T>>L, one item at a time", n,
                  partial(run_latency_reflux, n, gap, warmup), max_runs=runs, reflux=True)
    bench.measure("latency", "lat_threads", "3 threads + queue.Queue(1024)", n,
                  partial(run_latency_threads, n, gap, warmup), max_runs=runs)


# ====================================================================== section 5: start-up

def _median_of(k, fn):
    """Run fn() k times; the sample of the median run."""
    samples = sorted((fn() for _ in range(k)), key=lambda s: s["secs"])
    return samples[len(samples) // 2]


def run_startup_reflux(**kwargs):
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = _reflux_run("reflux start-up",
                         Pipeline(Extractor([1]) >> Transformer(step, **kwargs) >> Filter(keep) >> sink))
    secs = perf_counter() - t0
    check("reflux start-up", result.results["sum"], (1, 3))
    return {"secs": secs}


_FRESH = r"""
import json, time
t0 = time.perf_counter()
import reflux
t1 = time.perf_counter()
from reflux import Extractor, Filter, Loader, Pipeline, Transformer
sink = Loader.to_list(name="out")
r = Pipeline(Extractor([1]) >> Transformer(lambda x: x * 2 + 1) >> Filter(lambda y: y % 3 == 0) >> sink).run()
t2 = time.perf_counter()
print("RESULT " + json.dumps({"import": t1 - t0, "run": t2 - t1, "out": r.results["out"]}))
"""


def run_startup_fresh():
    """A fresh interpreter (outside the checkout, so the installed packages are used):
    import reflux, build and run(); the interpreter's own start is not counted."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", _FRESH], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchmarkError(f"fresh interpreter start-up failed: {proc.stderr.strip()[-500:]}")
    out = json.loads(line[len("RESULT "):])
    check("fresh interpreter start-up", (len(out["out"]), sum(out["out"])), (1, 3))
    return {"secs": out["import"] + out["run"], "import": out["import"]}


def run_startup_bytewax():
    from bytewax.testing import run_main
    acc = [0, 0]
    t0 = perf_counter()
    run_main(_bytewax_flow([1], acc, BYTEWAX_BATCH))
    secs = perf_counter() - t0
    check("bytewax start-up", acc, (1, 3))
    return {"secs": secs}


def run_startup_threads():
    return run_thread_queue(2)  # range(2): one item passes the filter


def section_startup(bench):
    k = bench.args.startup_inner
    bench.measure("startup", "st_reflux", "reflux, 1 item, E>>T>>F>>L build + run()", 1,
                  partial(_median_of, k, run_startup_reflux), reflux=True)
    bench.measure("startup", "st_fresh", "reflux in a fresh interpreter: import + build + run()", 1,
                  run_startup_fresh, max_runs=min(bench.args.repeat, 3), reflux=True)
    bench.measure("startup", "st_parallel", "reflux, 1 item, T(parallel=2): build + run()", 1,
                  partial(_median_of, k, partial(run_startup_reflux, parallel=2)), reflux=True)
    bench.measure("startup", "st_threads", "3 threads + queue.Queue, 1 item", 1,
                  partial(_median_of, k, run_startup_threads))
    bench.peer("startup", "st_bytewax", "bytewax 1 worker, run_main, 1 item", 1, "bytewax",
               partial(_median_of, k, run_startup_bytewax))
    label = 'reflux, 1 item, T(executor="process"): build + run()'
    if bench.process_executor:
        bench.measure("startup", "st_process", label, 1,
                      partial(_median_of, k, partial(run_startup_reflux, executor="process")), reflux=True)
        if fork_start_support():
            bench.measure("startup", "st_fork", label.replace('"process"', '"process", start_method="fork"'), 1,
                          partial(_median_of, k, partial(run_startup_reflux, executor="process",
                                                         start_method="fork")), reflux=True)
    else:
        bench.unavailable("startup", "st_process", label, 1, NOT_YET)


SECTIONS = {"overhead": section_overhead, "cpu": section_cpu, "many": section_many,
            "latency": section_latency, "startup": section_startup}


# ====================================================================== interference

class CpuMonitor:
    """CPU time that went elsewhere while a run was timed: other processes'
    work and time stolen by the hypervisor (Linux /proc/stat; elsewhere
    nothing is detected).  On 2 cores any of it distorts a run."""

    def __init__(self):
        self.enabled = os.path.exists("/proc/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if self.enabled else 100

    def snapshot(self):
        if not self.enabled:
            return None
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        t = os.times()
        return busy / self.hz, t.user + t.system + t.children_user + t.children_system

    def foreign(self, before, after):
        if before is None or after is None:
            return None
        return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


# ====================================================================== rows, rounds, tables

class Bench:
    def __init__(self, args, out=sys.stdout):
        self.args = args
        self.out = out
        self.rows = {}
        self.notes = []
        self.cpu = CpuMonitor()
        self.process_executor, self.process_executor_why = process_executor_support()
        self.peer_versions = {}

    def say(self, text=""):
        print(text, file=self.out, flush=True)

    def note(self, text):
        self.notes.append(text)
        if self.args.verbose:
            self.say(f"note: {text}")

    def measure(self, section, rid, label, items, run, *, max_runs=None, reflux=False, nodes=None, hops=None):
        """Register a row; run() returns a dict with "secs" (None: it did not finish,
        "outcome" says why) and other measurements, having checked what it moved."""
        self.rows[rid] = {"section": section, "id": rid, "label": label, "items": items,
                          "nodes": nodes, "hops": hops, "reflux": reflux, "status": None,
                          "max_runs": max_runs or self.args.repeat, "samples": [], "noisy": 0,
                          "_run": run}

    def unavailable(self, section, rid, label, items, why):
        self.rows[rid] = {"section": section, "id": rid, "label": label, "items": items,
                          "nodes": None, "hops": None, "reflux": True, "status": why, "max_runs": 0,
                          "samples": [], "noisy": 0, "_run": None}

    def peer(self, section, rid, label, items, module, run):
        """A peer's row, skipped with a note if `module` does not import."""
        if module not in self.peer_versions:
            try:
                __import__(module)
                from importlib.metadata import version
                try:
                    self.peer_versions[module] = version(module)
                except Exception:  # noqa: BLE001 - informational
                    self.peer_versions[module] = "?"
            except Exception as exc:  # noqa: BLE001 - any import failure skips the peer
                self.peer_versions[module] = None
                self.notes.append(f"{module} skipped: it does not import ({type(exc).__name__}: {exc}); "
                                  'pip install ".[bench]"')
        if self.peer_versions[module] is None:
            self.unavailable(section, rid, label, items, f"skipped: {module} not installed")
            self.rows[rid]["reflux"] = False
            return
        self.measure(section, rid, f"{label} ({module} {self.peer_versions[module]})", items, run)

    def run_rounds(self):
        rows = [r for r in self.rows.values() if r["_run"] is not None]
        rounds = max((r["max_runs"] for r in rows), default=0)
        for rnd in range(rounds):
            t0 = time.monotonic()
            for row in rows:
                if row["status"] is not None or len(row["samples"]) >= row["max_runs"]:
                    continue
                before = self.cpu.snapshot()
                try:
                    sample = row["_run"]()
                except BenchmarkError:
                    raise
                except Exception as exc:
                    if row["reflux"]:
                        raise
                    # a peer broke at run time (API change, environment): skip it, say why
                    row["status"] = f"skipped: failed ({type(exc).__name__}: {exc})"[:160]
                    self.notes.append(f"{row['label']}: {type(exc).__name__}: {exc}")
                    continue
                foreign = self.cpu.foreign(before, self.cpu.snapshot())
                secs = sample.get("secs")
                if secs is None:  # did not finish: report it, do not run it again
                    row["status"] = sample.get("outcome", "did not finish")
                    row["samples"].append(sample)
                    self.say(f"  {row['label']}: {row['status']}")
                    continue
                if foreign is not None and foreign >= max(0.03, 0.1 * secs):
                    row["noisy"] += 1
                    sample["foreign_cpu"] = foreign
                row["samples"].append(sample)
                if self.args.verbose:
                    self.say(f"  round {rnd + 1}: {row['label']}: {secs:.4f} s"
                             + (f" ({row['items'] / secs:,.0f} items/s)" if row["items"] > 1 else ""))
            self.say(f"round {rnd + 1}/{rounds} done in {time.monotonic() - t0:.0f} s")
        for row in self.rows.values():
            del row["_run"]
            ok = [s for s in row["samples"] if s.get("secs")]
            if not ok:
                continue
            keys = [k for k, v in ok[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            row["median"] = {k: statistics.median(s[k] for s in ok if k in s) for k in keys}
            row["rate"] = row["items"] / row["median"]["secs"]
            rates = [row["items"] / s["secs"] for s in ok]
            row["rate_min"], row["rate_max"] = min(rates), max(rates)

    def get(self, rid, key="rate"):
        row = self.rows.get(rid)
        if row is None or "median" not in row:
            return None
        if key == "threads":  # threads a run used: started ones, or (native pools) the OS's peak
            m = row["median"]
            return max(m.get("threads_started", 0), m.get("threads_os", 0))
        return row["rate"] if key == "rate" else row["median"].get(key)

    def ratio(self, rid, base):
        a, b = self.get(rid), self.get(base)
        return None if a is None or b is None else a / b


def _fmt_rate(rate):
    if rate is None:
        return "-"
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    return f"{rate / 1e3:.1f} k"


def _fmt_ratio(r):
    return "-" if r is None else (f"{r:.2f}x" if r < 100 else f"{r:.0f}x")


def _runs(row):
    ok = [s for s in row["samples"] if s.get("secs")]
    return f"{len(ok)}" + (f" ({row['noisy']} noisy)" if row["noisy"] else "")


def print_table(bench, title, rows, heads, cells_of):
    """heads: column titles after the first; cells_of(row) -> cells (a str for an unavailable row)."""
    if not rows:
        return
    heads = [HEADER, *heads]
    lines = []
    for row in rows:
        if "median" not in row:
            lines.append((row["label"], row["status"] or "no result"))
        else:
            lines.append([row["label"], *cells_of(row)])
    widths = [len(h) for h in heads]
    for cells in lines:
        if isinstance(cells, list):
            widths = [max(w, len(str(c))) for w, c in zip(widths, cells, strict=True)]
    widths[0] = max(widths[0], *(len(c[0]) for c in lines))

    def fmt(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    bench.say()
    bench.say(f"== {title}")
    bench.say(fmt(heads))
    bench.say("  ".join("-" * w for w in widths))
    for cells in lines:
        if isinstance(cells, tuple):
            bench.say(f"{cells[0].ljust(widths[0])}  {cells[1]}")
        else:
            bench.say(fmt(cells))


def print_report(bench):
    a = bench.args
    rows = list(bench.rows.values())
    by = lambda s: [r for r in rows if r["section"] == s]  # noqa: E731

    def rate_cells(row, bases):
        cells = [f"{row['items']:,}", _fmt_rate(row["rate"]),
                 f"{row['rate_min'] / 1e6:.3f}..{row['rate_max'] / 1e6:.3f}"]
        for base in bases:
            cells.append("-" if base == row["id"] else _fmt_ratio(bench.ratio(row["id"], base)))
        cells.append(_runs(row))
        return cells

    ov_bases = ["ov_plain", "ov_bytewax", "ov_threads"]
    print_table(bench, "overhead: Extractor -> Transformer(x*2+1) -> Filter(x%3==0) -> Loader(sum)",
                by("overhead"),
                ["items", "items/s", "min..max M/s", "vs plain loop", "vs bytewax", "vs thread+queue", "runs"],
                lambda r: rate_cells(r, ov_bases))
    print_table(bench, f"CPU-heavy Python: items each a pure-Python loop of {CPU_ITERATIONS:,} iterations, 2 cores",
                by("cpu"), ["items", "items/s", "min..max M/s", "vs plain loop", "runs"],
                lambda r: rate_cells(r, ["cpu_plain"]))
    print_table(bench, "process to process: small ints (items/s; --mp-items sets how many)", by("p2p"),
                ["items", "items/s", "min..max M/s", "vs mp.Queue", "runs"],
                lambda r: rate_cells(r, ["mp_queue"]))

    def many_cells(row):
        m = row["median"]
        return [f"{row['nodes']:,}", f"{row['items']:,}", _fmt_rate(row["rate"]),
                f"{m['start_secs']:.2f}", f"{m['secs']:.2f}",
                f"{m['secs'] / (row['items'] * row['hops']) * 1e9:.0f}",
                f"{m['threads_py']:.0f} / {m['threads_os']:.0f}", f"{m['threads_started']:.0f}",
                f"{m['rss_kb'] / 1024:.1f}", _runs(row)]

    print_table(bench, "many nodes (each run in a fresh interpreter; alive py/OS: most threads alive at once, "
                "over the idle baseline; started: Python threads started; RSS: peak over the baseline)",
                by("many"),
                ["nodes", "items", "items/s", "start() s", "total s", "ns/item/hop", "alive py/OS",
                 "started", "peak RSS +MB", "runs"], many_cells)

    def lat_cells(row):
        m = row["median"]
        return [f"{row['items']:,}", f"{m['p50']:.0f}", f"{m['p99']:.0f}", f"{m['mean']:.0f}",
                f"{m['max']:.0f}", _runs(row)]

    print_table(bench, "latency at low load (µs from creation in the source to the Loader; median of runs)",
                by("latency"), ["items", "p50 µs", "p99 µs", "mean µs", "max µs", "runs"], lat_cells)

    def st_cells(row):
        m = row["median"]
        secs = [s["secs"] for s in row["samples"] if s.get("secs")]
        extra = f"import {m['import'] * 1e3:.0f} ms" if "import" in m else ""
        return [f"{m['secs'] * 1e3:.1f}", f"{min(secs) * 1e3:.1f}..{max(secs) * 1e3:.1f}", _runs(row), extra]

    print_table(bench, f"start-up: one item, whole run (ms; each run the median of {a.startup_inner})",
                by("startup"), ["ms", "min..max ms", "runs", ""], st_cells)

    for note in bench.notes:
        bench.say(f"note: {note}")
    if not bench.process_executor:
        bench.say(f"note: process workers {NOT_YET}: Transformer(..., executor=\"process\") is refused "
                  f"({bench.process_executor_why})")
    bench.say()
    bench.say(f"== targets (measured in this run; Python threads: {thread_mode()})")
    results = []
    for desc, value, goal, verdict in targets(bench):
        results.append({"target": desc, "value": value, "goal": goal, "verdict": verdict})
    width = max(len(r["target"]) for r in results)
    vwidth = max(len(r["value"]) for r in results)
    gwidth = max(len(r["goal"]) for r in results)
    for r in results:
        bench.say(f"{r['target'].ljust(width)}  {r['value'].rjust(vwidth)}  {r['goal'].ljust(gwidth)}  "
                  f"{r['verdict']}")
    bench.say()
    bench.say("runs: runs in the median; noisy: runs during which other processes or the hypervisor "
              "took >= 10% of a core (kept, not re-done)")
    return results


def targets(bench):
    """(description, measured, goal, verdict) per performance target."""
    out = []

    def ratio_target(desc, rid, base, goal):
        if bench.get(rid) is None:
            why = bench.rows[rid]["status"] if rid in bench.rows else "not measured"
            return out.append((desc, "-", f"goal >= {goal:g}x", f"n/a ({why})"))
        r = bench.ratio(rid, base)
        if r is None:
            why = bench.rows[base]["status"] if base in bench.rows else "not measured"
            return out.append((desc, "-", f"goal >= {goal:g}x", f"n/a (baseline {why})"))
        out.append((desc, f"{r:.2f}x", f"goal >= {goal:g}x", "PASS" if r >= goal else "MISS"))

    def limit_target(desc, rid, key, goal, unit, scale, fmt):
        v = bench.get(rid, key)
        if v is None:
            why = bench.rows[rid]["status"] if rid in bench.rows else "not measured"
            return out.append((desc, "-", f"goal <= {fmt(goal * scale)} {unit}", f"n/a ({why})"))
        out.append((desc, f"{fmt(v * scale)} {unit}", f"goal <= {fmt(goal * scale)} {unit}",
                    "PASS" if v <= goal else "MISS"))

    ratio_target("1. overhead: reflux vs plain loop", "ov_reflux", "ov_plain", 0.6)
    ratio_target("1. overhead: reflux vs bytewax (1 worker)", "ov_reflux", "ov_bytewax", 2.0)
    ratio_target("1. overhead: reflux vs thread+queue pipeline", "ov_reflux", "ov_threads", 15.0)
    ratio_target("2. CPU-heavy: reflux process workers vs plain loop", "cpu_reflux_process", "cpu_plain", 1.8)
    ratio_target('2. CPU-heavy: the same, start_method="fork"', "cpu_reflux_fork", "cpu_plain", 1.8)
    ratio_target("2. process to process: reflux vs multiprocessing.Queue", "p2p_reflux", "mp_queue", 5.0)
    cores = os.cpu_count() or 1
    limit_target(f"3. many nodes: threads of the chain <= pool ({cores} cores; the worker pool)",
                 "many_chain", "threads", cores, "threads", 1, lambda v: f"{v:.0f}")
    limit_target(f"3. many nodes: threads of the unfused chain <= pool ({cores} cores)",
                 "many_chain_unfused", "threads", cores, "threads", 1, lambda v: f"{v:.0f}")
    limit_target("4. latency p50 under 200 µs", "lat_reflux", "p50", 200.0, "µs", 1, lambda v: f"{v:.0f}")
    limit_target("5. start-up in-process under 0.1 s", "st_reflux", "secs", 0.1, "ms", 1e3,
                 lambda v: f"{v:.1f}")
    limit_target("5. start-up with process workers under 0.5 s", "st_process", "secs", 0.5, "ms", 1e3,
                 lambda v: f"{v:.1f}")
    limit_target('5. start-up with process workers, start_method="fork"', "st_fork", "secs", 0.5, "ms", 1e3,
                 lambda v: f"{v:.1f}")
    # without the GIL, replicas on threads are the way to use the cores
    if gil_enabled():
        why = f"n/a (Python threads: {thread_mode()}; run on a free-threaded build with the GIL off)"
        for desc, goal in (("6. no GIL: reflux parallel=2 vs plain loop", "goal >= 1.9x"),
                           ("6. no GIL: reflux parallel=2 vs multiprocessing.Pool(2)", "goal >= 1.1x"),
                           ("6. no GIL: start-up of a threaded pipeline (parallel=2)", "goal <= 10.0 ms"),
                           ("6. no GIL: overhead, reflux vs plain loop", "goal >= 0.7x")):
            out.append((desc, "-", goal, why))
    else:
        ratio_target("6. no GIL: reflux parallel=2 vs plain loop", "cpu_reflux_parallel", "cpu_plain", 1.9)
        ratio_target("6. no GIL: reflux parallel=2 vs multiprocessing.Pool(2)", "cpu_reflux_parallel", "cpu_pool", 1.1)
        for rid, what in (("cpu_bare", "2 bare threads over their own range()"),
                          ("cpu_bare_foreign", "2 bare threads over items another thread made")):
            limit, pool, mine = bench.ratio(rid, "cpu_plain"), bench.ratio(rid, "cpu_pool"), \
                bench.ratio("cpu_reflux_parallel", rid)
            if limit is not None:
                out.append((f"   limit: {what}", f"{limit:.2f}x",
                            f"plain; {pool or 0:.2f}x Pool(2); reflux {mine or 0:.2f}x this", "ref"))
        limit_target("6. no GIL: start-up of a threaded pipeline (parallel=2)", "st_parallel", "secs", 0.01, "ms",
                     1e3, lambda v: f"{v:.1f}")
        ratio_target("6. no GIL: overhead, reflux vs plain loop", "ov_reflux", "ov_plain", 0.7)
    return out


# ====================================================================== meta and main

def _checkout():
    def git(*argv):
        proc = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 else None

    try:
        head = git("describe", "--always")
        if not head:
            return None
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "reflux_core", "src", "setup.py")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" with uncommitted changes in reflux" if changed else "")


def _runtime_doc():
    try:
        from reflux.run import pool
        return (pool.__doc__ or "").strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - informational
        return "?"


def _meta(args, bench):
    try:
        info = reflux_core.build_info()
    except Exception as exc:  # noqa: BLE001 - informational only
        info = {"error": repr(exc)}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "reflux": reflux.__version__,
        "gil_enabled": gil_enabled(),
        "thread_mode": thread_mode(),
        "reflux_path": os.path.dirname(reflux.__file__),
        "runtime": _runtime_doc(),
        "reflux_core": info,
        "checkout": _checkout(),
        "process_executor": bench.process_executor,
        "peers": bench.peer_versions,
        "args": {k: v for k, v in vars(args).items() if k != "child_many"},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Whole reflux pipelines vs a plain loop, threads+queue.Queue, multiprocessing, "
                    "bytewax, pypeln, streamz and mpipe.")
    p.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    p.add_argument("--repeat", type=int, help="runs per row, median reported (default 5; the heavy "
                   "rows of cpu, many and latency run at most 3 times)")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    p.add_argument("--items", type=int, help="ints through the overhead pipeline (default 1,000,000)")
    p.add_argument("--peer-items", type=int,
                   help="ints for the slow overhead peers: thread+queue, pypeln, streamz, mpipe (default 100,000)")
    p.add_argument("--cpu-items", type=int, help="items of the CPU-heavy rows (default 20,000)")
    p.add_argument("--chunksize", type=int, help="multiprocessing.Pool imap chunksize (default: tuned)")
    p.add_argument("--mp-items", type=int, help="ints from process to process (default 1,000,000)")
    p.add_argument("--chain-stages", type=int, help="Transformers in the chain (default 1,000)")
    p.add_argument("--branches", type=int, help="Balancer branches (default 500)")
    p.add_argument("--many-items", type=int, help="items through the many-node graphs (default 100,000)")
    p.add_argument("--many-timeout", type=float, default=120.0,
                   help="seconds a many-node run may take before it is stopped and reported (default 120)")
    p.add_argument("--latency-items", type=int, help="items per latency run (default 2,000)")
    p.add_argument("--startup-inner", type=int, help="start-up runs per round, median taken (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run as it is measured")
    p.add_argument("--child-many", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"repeat": (1, 5), "items": (20_000, 1_000_000), "peer_items": (5_000, 100_000),
                "cpu_items": (400, 20_000), "mp_items": (5_000, 1_000_000), "chain_stages": (50, 1_000),
                "branches": (25, 500), "many_items": (2_000, 100_000), "latency_items": (100, 2_000),
                "startup_inner": (3, 10)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.latency_items < 10:
        p.error("--latency-items must be >= 10")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child_many:
        print("RESULT " + json.dumps(many_child(json.loads(args.child_many))), flush=True)
        return 0
    bench = Bench(args)
    bench.say(f"reflux pipeline benchmark: Python {sys.version.split()[0]} on {platform.platform()}, "
              f"{os.cpu_count()} CPUs; reflux {reflux.__version__} from {os.path.dirname(reflux.__file__)}"
              + (f", checkout {c}" if (c := _checkout()) else ""))
    bench.say(f"runtime: {_runtime_doc()}  process workers: "
              + ("yes" if bench.process_executor else NOT_YET))
    bench.say(f"Python threads: {thread_mode()}")
    bench.say(f"median of up to {args.repeat} run(s) per row, every row once per round; "
              "items/s = items / wall time of the whole run")
    if args.quick:
        bench.say("--quick: a smoke run; sizes are too small for the numbers to mean anything")
    try:
        load = os.getloadavg()[0]
        bench.say(f"load average before: {load:.2f}"
                  + ("  (other work is running: numbers will be noisy)" if load >= 0.5 else ""))
    except (AttributeError, OSError):
        pass
    t0 = time.monotonic()
    for name in args.only:
        SECTIONS[name](bench)
    meta = _meta(args, bench)
    bench.say("peers: " + ", ".join(f"{k} {v or 'missing'}" for k, v in bench.peer_versions.items())
              if bench.peer_versions else "peers: none measured")
    bench.run_rounds()
    results = print_report(bench)
    bench.say(f"total benchmark time {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": list(bench.rows.values()), "targets": results,
                       "notes": bench.notes}, f, indent=2, default=str)
            f.write("\n")
        bench.say(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
