"""Channel benchmark: reflux channels against the standard library and a plain-C ring.

Run from the repository root::

    python -m benchmarks.channels [--items N] [--repeat R] [--quick] [--json PATH]

Sections (each number is the median of ``--repeat`` runs, items per second;
the runs go in rounds, every row once per round, so drift in the machine's
speed touches all rows alike):

``1t``       one thread putting then getting each item: the per-call cost
             alone, without waiting or GIL hand-offs (diagnostic, no target).
``1p1c``     one producer thread, one consumer thread, ``--items`` small ints:
             reflux SPSCChannel / MPMCChannel, single items (push/pop) and
             batches of 256 (push_many/pop_many), at capacity 1024 (the
             bounded peers' size) and 8192; queue.Queue(maxsize=1024),
             queue.SimpleQueue, collections.deque + threading.Condition
             (bounded, 1024).
``2p2c``     two producer and two consumer threads: reflux MPMCChannel against
             queue.SimpleQueue and queue.Queue(1024).
``naive``    the hand-off as users write it: a producer thread pushing
             ``--naive-items`` ints into a fresh SPSCChannel(8192), the main
             thread popping until ChannelClosed, against the same with a fresh
             queue.SimpleQueue and a sentinel; no start gate, the thread's
             start-up inside the timing.  Targets: median at least 1.2x, and
             no round below 1.0x (each round's pair compared).  The same
             SimpleQueue run a second time in each round gives the noise of a
             round: the same code against itself.
``mp``       multiprocessing.Queue between two processes (``--mp-items``), the
             cross-process baseline.
``records``  8-byte records between two nogil threads (``--record-items``):
             RecordChannel through reflux_core._stress against a minimal
             plain-C SPSC ring (benchmarks/plain_ring.c, compiled now).

Every run checks what arrived (count and sum; for records also per-producer
order) and raises if anything is wrong.  Consumers stop at end of stream:
``close()`` for reflux, a sentinel for the peers (put by the last producer
to finish, once per consumer).  The performance targets are printed at the end
with PASS/MISS.  Nothing here is a test: timings are only reported.
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
import sys
import threading
import time
from collections import deque
from functools import partial
from time import perf_counter

from benchmarks import import_core
from benchmarks import _plain_ring

channel, _stress = import_core("channel", "_stress")
import reflux_core  # noqa: E402  (bound by import_core above)

SPSCChannel = channel.SPSCChannel
MPMCChannel = channel.MPMCChannel
RecordChannel = channel.RecordChannel
ChannelClosed = channel.ChannelClosed

BATCH = 256
PEER_CAPACITY = 1024
LARGE_CAPACITY = 8192

RECORD_BATCH_SCALE = 10
RUN_TIMEOUT = 300.0  # seconds one run may take before it counts as stuck

HEADER = "benchmark"  # first column title; the smoke test looks for the header line


class BenchmarkError(AssertionError):
    """A benchmark moved the wrong items (lost, duplicated or reordered)."""


# ====================================================================== harness

def _timed_threads(targets):
    """Run each callable in its own thread, all released by one barrier.

    Returns (seconds, results): seconds from the first thread's start to the
    last one's end, each taken inside the worker threads, so the main
    thread's own GIL wait does not count.
    """
    n = len(targets)
    barrier = threading.Barrier(n)
    starts = [0.0] * n
    ends = [0.0] * n
    results = [None] * n
    errors = []

    def run(i, fn):
        try:
            barrier.wait()
            starts[i] = perf_counter()
            results[i] = fn()
            ends[i] = perf_counter()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    # daemon threads and a deadline: a stuck run (a lost wake-up, or a peer
    # blocked forever after its partner failed) is reported, not waited for
    # (polled once a second, so the main thread rarely asks for the GIL)
    begun = time.monotonic()
    failed_at = None
    for t in threads:
        while t.is_alive():
            t.join(1.0)
            now = time.monotonic()
            if errors:
                failed_at = failed_at or now
                if now - failed_at > 5:
                    raise errors[0]
            if now - begun > RUN_TIMEOUT:
                raise BenchmarkError(
                    f"a run did not finish within {RUN_TIMEOUT:.0f} s: a thread is stuck "
                    f"(lost wake-up?); threads alive: {sum(x.is_alive() for x in threads)}")
    if errors:
        raise errors[0]
    return max(ends) - min(starts), results


class _EndOfStream:
    """Counts producers down; the last one to finish signals the end."""

    def __init__(self, producers, action):
        self._left = producers
        self._lock = threading.Lock()
        self._action = action

    def done(self):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._action()


_END = object()  # the peers' sentinel (reflux uses close())


def _ranges(n, parts):
    """Split range(n) into `parts` contiguous (lo, hi) slices."""
    step, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + step + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _check(name, n, results):
    """results: (count, sum) per consumer; all of range(n) must have arrived."""
    count = sum(r[0] for r in results)
    total = sum(r[1] for r in results)
    expected = n * (n - 1) // 2
    if count != n or total != expected:
        raise BenchmarkError(
            f"{name}: received {count} items summing to {total}, expected {n} summing to {expected}")


# ====================================================================== peers

class DequeChannel:
    """collections.deque + threading.Condition, bounded: the hand-written peer.

    ``put_many``/``get_many`` move a batch under one lock acquisition
    (deque.extend / a popleft loop).
    """

    def __init__(self, maxsize):
        self.maxsize = maxsize
        self.items = deque()
        lock = threading.Lock()
        self.not_empty = threading.Condition(lock)
        self.not_full = threading.Condition(lock)

    def put(self, item):
        with self.not_full:
            while len(self.items) >= self.maxsize:
                self.not_full.wait()
            self.items.append(item)
            self.not_empty.notify()

    def get(self):
        with self.not_empty:
            while not self.items:
                self.not_empty.wait()
            item = self.items.popleft()
            self.not_full.notify()
            return item

    def put_many(self, items):
        items = list(items)
        i, n = 0, len(items)
        while i < n:
            with self.not_full:
                while len(self.items) >= self.maxsize:
                    self.not_full.wait()
                room = self.maxsize - len(self.items)
                self.items.extend(items[i:i + room] if i or room < n else items)
                i += room
                self.not_empty.notify()

    def get_many(self, max_items):
        with self.not_empty:
            while not self.items:
                self.not_empty.wait()
            popleft = self.items.popleft
            out = [popleft() for _ in range(min(max_items, len(self.items)))]
            self.not_full.notify()
            return out


# ---------------------------------------------------------------- producers

def _put_items(put, lo, hi):
    for i in range(lo, hi):
        put(i)


def _put_batches(put_many, lo, hi, batch):
    for s in range(lo, hi, batch):
        put_many(list(range(s, min(s + batch, hi))))


def _producer(fn, eos, *args):
    def run():
        try:
            fn(*args)
        finally:
            eos.done()  # even on failure, so consumers never hang
    return run


# ---------------------------------------------------------------- consumers

def _rx_get_items(ch):
    pop = ch.pop
    count = total = 0
    try:
        while True:
            x = pop()
            count += 1
            total += x
    except ChannelClosed:
        pass
    return count, total


def _rx_get_batches(ch, batch):
    pop_many = ch.pop_many
    count = total = 0
    try:
        while True:
            items = pop_many(batch)
            count += len(items)
            total += sum(items)
    except ChannelClosed:
        pass
    return count, total


def _peer_get_items(get):
    count = total = 0
    while True:
        x = get()
        if x is _END:
            break
        count += 1
        total += x
    return count, total


def _peer_get_lists(get):
    """Consumer of a queue carrying lists of items (one put per batch)."""
    count = total = 0
    while True:
        x = get()
        if x is _END:
            break
        count += len(x)
        total += sum(x)
    return count, total


def _deque_get_batches(dq, batch):
    # one producer puts the sentinel last, so it can only end a batch
    count = total = 0
    while True:
        items = dq.get_many(batch)
        end = items[-1] is _END
        if end:
            items.pop()
        count += len(items)
        total += sum(items)
        if end:
            return count, total


# ---------------------------------------------------------------- one run

def _run_reflux(cls, capacity, n, producers, consumers, batch):
    ch = cls(capacity)
    eos = _EndOfStream(producers, ch.close)
    if batch == 1:
        prods = [_producer(_put_items, eos, ch.push, lo, hi) for lo, hi in _ranges(n, producers)]
        cons = [lambda: _rx_get_items(ch) for _ in range(consumers)]
    else:
        prods = [_producer(_put_batches, eos, ch.push_many, lo, hi, batch)
                 for lo, hi in _ranges(n, producers)]
        cons = [lambda: _rx_get_batches(ch, batch) for _ in range(consumers)]
    secs, results = _timed_threads(cons + prods)
    stats = ch.stats
    if stats.pushed != n or stats.popped != n:
        raise BenchmarkError(f"{cls.__name__}: stats say {stats.pushed} pushed, "
                             f"{stats.popped} popped, expected {n}")
    return secs, results[:consumers], {"full_waits": stats.full_waits,
                                       "empty_waits": stats.empty_waits}


def _run_peer(make, n, producers, consumers, mode):
    """mode: 'items' (put/get), 'lists' (a list of BATCH items per put),
    'batches' (DequeChannel put_many/get_many)."""
    q = make()

    def end():
        for _ in range(consumers):
            q.put(_END)

    eos = _EndOfStream(producers, end)
    parts = _ranges(n, producers)
    if mode == "items":
        prods = [_producer(_put_items, eos, q.put, lo, hi) for lo, hi in parts]
        cons = [lambda: _peer_get_items(q.get) for _ in range(consumers)]
    elif mode == "lists":
        prods = [_producer(_put_batches, eos, q.put, lo, hi, BATCH) for lo, hi in parts]
        cons = [lambda: _peer_get_lists(q.get) for _ in range(consumers)]
    elif mode == "batches":
        if consumers != 1:
            raise ValueError("DequeChannel batches: one consumer only")
        prods = [_producer(_put_batches, eos, q.put_many, lo, hi, BATCH) for lo, hi in parts]
        cons = [lambda: _deque_get_batches(q, BATCH)]
    else:
        raise ValueError(mode)
    secs, results = _timed_threads(cons + prods)
    return secs, results[:consumers], None


# ---------------------------------------------------------------- one thread

def _run_uncontended(make, n, mode):
    """One thread puts an item then takes it back: the per-call cost with no
    waiting and no GIL hand-off.  mode: 'rx', 'rx_batch', 'peer'."""
    q = make()
    count = total = 0
    t0 = perf_counter()
    if mode == "rx":
        push, pop = q.push, q.pop
        for i in range(n):
            push(i)
            total += pop()
        count = n
    elif mode == "rx_batch":
        push_many, pop_many = q.push_many, q.pop_many
        for s in range(0, n, BATCH):
            push_many(list(range(s, min(s + BATCH, n))))
            items = pop_many(BATCH)
            count += len(items)
            total += sum(items)
    else:
        put, get = q.put, q.get
        for i in range(n):
            put(i)
            total += get()
        count = n
    secs = perf_counter() - t0
    return secs, [(count, total)], None


# ====================================================================== multiprocessing

def _mp_producer(q, barrier, results, n, batch):
    barrier.wait()
    t0 = perf_counter()
    put = q.put
    if batch == 1:
        for i in range(n):
            put(i)
    else:
        for s in range(0, n, batch):
            put(list(range(s, min(s + batch, n))))
    put(None)  # sentinel
    q.close()
    q.join_thread()  # everything flushed to the pipe
    results.put(("producer", t0, perf_counter(), 0, 0))


def _mp_consumer(q, barrier, results, batch):
    barrier.wait()
    t0 = perf_counter()
    get = q.get
    count = total = 0
    if batch == 1:
        while True:
            x = get()
            if x is None:
                break
            count += 1
            total += x
    else:
        while True:
            x = get()
            if x is None:
                break
            count += len(x)
            total += sum(x)
    results.put(("consumer", t0, perf_counter(), count, total))


def _run_mp(n, batch):
    ctx = multiprocessing.get_context()
    q = ctx.Queue()
    results = ctx.Queue()
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_mp_consumer, args=(q, barrier, results, batch), daemon=True),
             ctx.Process(target=_mp_producer, args=(q, barrier, results, n, batch), daemon=True)]
    for p in procs:
        p.start()
    try:
        got = {}
        for _ in procs:
            role, t0, t1, count, total = results.get(timeout=600)
            got[role] = (t0, t1, count, total)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    for p in procs:
        if p.exitcode != 0:
            raise BenchmarkError(f"multiprocessing.Queue: a child exited with {p.exitcode}")
    # CLOCK_MONOTONIC is system-wide, so the two processes' clocks agree
    secs = max(got["producer"][1], got["consumer"][1]) - min(got["producer"][0], got["consumer"][0])
    return secs, [got["consumer"][2:]], None


# ====================================================================== records

def _check_tallies(name, pushed, tallies, per_producer):
    producers = len(pushed)
    if any(p != per_producer for p in pushed):
        raise BenchmarkError(f"{name}: producers pushed {pushed}, expected {per_producer} each")
    expected_sum = per_producer * (per_producer - 1) // 2
    for p in range(producers):
        count = sum(t["counts"][p] for t in tallies)
        total = sum(t["sums"][p] for t in tallies)
        if count != per_producer or total != expected_sum:
            raise BenchmarkError(
                f"{name}: producer {p}: received {count} records summing to {total}, "
                f"expected {per_producer} summing to {expected_sum}")
    bad = sum(t["order_errors"] + t["bad_producer"] for t in tallies)
    if bad:
        raise BenchmarkError(f"{name}: {bad} records out of order or with a bad producer tag")
    if sum(t["count"] for t in tallies) != producers * per_producer:
        raise BenchmarkError(f"{name}: total record count is wrong")


def _record_channel(capacity, mode):
    import numpy as np
    return RecordChannel(np.uint64, capacity, mode=mode)


def _run_records_native(n, capacity, batch, producers=1, consumers=1, mode="spsc"):
    ch = _record_channel(capacity, mode)
    per = n // producers
    secs, pushed, tallies = _stress.run_native(ch, producers, consumers, per, batch)
    _check_tallies(f"RecordChannel {mode} run_native", pushed, tallies, per)
    stats = ch.stats
    return secs, per * producers, {"full_waits": stats.full_waits, "empty_waits": stats.empty_waits}


def _run_records_pythreads(n, capacity, batch):
    ch = _record_channel(capacity, "spsc")
    secs, (tally, pushed) = _timed_threads([
        lambda: _stress.consume(ch, 1, batch),
        lambda: _stress.produce(ch, 0, n, batch, True),
    ])
    _check_tallies("RecordChannel produce/consume", [pushed], [tally], n)
    stats = ch.stats
    return secs, n, {"full_waits": stats.full_waits, "empty_waits": stats.empty_waits}


def _run_plain_pthreads(ring, n, capacity, batch):
    secs, pushed, tally = ring.run_threads(capacity, n, batch)
    _check_tallies("plain C ring (pthreads)", [pushed], [tally], n)
    return secs, n, None


def _run_plain_pythreads(ring, n, capacity, batch):
    r = ring.new_ring(capacity)
    try:
        secs, (tally, pushed) = _timed_threads([
            lambda: ring.consume(r, batch),
            lambda: ring.produce(r, 0, n, batch, True),
        ])
    finally:
        ring.free_ring(r)
    _check_tallies("plain C ring (ctypes threads)", [pushed], [tally], n)
    return secs, n, None


# ====================================================================== interference

class CpuMonitor:
    """CPU time that went elsewhere while a run was timed: other processes'
    work and time stolen from this VM by the hypervisor (Linux /proc/stat;
    elsewhere nothing is detected).  On 2 cores any of it distorts a run."""

    def __init__(self):
        self.enabled = os.path.exists("/proc/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if self.enabled else 100

    def snapshot(self):
        if not self.enabled:
            return None
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest is inside user)
        busy = sum(fields[:3]) + sum(fields[5:8])
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / self.hz, own

    def foreign(self, before, after):
        """Seconds of CPU used by anything but this process (and its reaped
        children) between two snapshots, or None."""
        if before is None or after is None:
            return None
        return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


def _disturbed(foreign, secs):
    """A run counts as disturbed when other work took >= 10% of a core
    during it (and at least 3 clock ticks, above the counters' resolution)."""
    return foreign is not None and foreign >= max(0.03, 0.1 * secs)


# ====================================================================== rows and tables

class Bench:
    def __init__(self, args, out=sys.stdout):
        self.args = args
        self.out = out
        self.rows = {}      # id -> row dict, in registration (and measurement) order
        self.notes = []
        self.cpu = CpuMonitor()
        # total time spent re-doing disturbed runs is capped, so a busy
        # machine cannot stretch the benchmark without end
        self.redo_budget = args.redo_budget

    def say(self, text=""):
        print(text, file=self.out, flush=True)

    def measure(self, section, rid, label, items, run, batch=1):
        """Register a row; `run()` returns (seconds, results-or-count, extra).

        Rows run in rounds (every row once per round, --repeat rounds), so a
        slow drift of the machine (other load, the hypervisor moving vCPUs)
        spreads over all rows instead of skewing the ratios of a few.
        """
        self.rows[rid] = {
            "section": section, "id": rid, "label": label, "items": items, "batch": batch,
            "rate": None, "runs": [], "extra": None, "_run": run, "_extras": [],
            "discarded": [], "disturbed": 0,
        }

    def run_rounds(self):
        rows = list(self.rows.values())
        for r in range(self.args.repeat):
            if self.args.wait_quiet > 0 and r > 0:
                _wait_quiet(self, self.args.wait_quiet, quiet_note=False)
            t0 = time.monotonic()
            for row in rows:
                items, label = row["items"], row["label"]
                for attempt in range(self.args.redo + 1):
                    before = self.cpu.snapshot()
                    secs, results, extra = row["_run"]()
                    foreign = self.cpu.foreign(before, self.cpu.snapshot())
                    if isinstance(results, list):
                        _check(label, items, results)
                    elif results != items:
                        raise BenchmarkError(f"{label}: moved {results} items, expected {items}")
                    disturbed = _disturbed(foreign, secs)
                    if self.args.verbose:
                        self.say(f"  round {r + 1}: {label}: {_fmt_rate(items / secs)} items/s"
                                 + (f"  (disturbed: {foreign:.2f} s CPU elsewhere)" if disturbed else ""))
                    if not disturbed:
                        break
                    if attempt == self.args.redo or self.redo_budget <= 0:
                        row["disturbed"] += 1  # kept anyway
                        break
                    self.redo_budget -= secs
                    row["discarded"].append(items / secs)
                    if self.args.wait_quiet > 0:
                        _wait_quiet(self, min(30.0, self.args.wait_quiet), quiet_note=False)
                    else:
                        time.sleep(0.2)
                row["runs"].append(items / secs)
                row["_extras"].append(extra)
            self.say(f"round {r + 1}/{self.args.repeat} done in {time.monotonic() - t0:.0f} s")
        for row in rows:
            rates = row["runs"]
            order = sorted(range(len(rates)), key=rates.__getitem__)
            row["rate"] = statistics.median(rates)
            row["extra"] = row.pop("_extras")[order[len(order) // 2]]
            del row["_run"]

    def ratio(self, rid, base):
        a, b = self.rows.get(rid), self.rows.get(base)
        if a is None or b is None:
            return None
        return a["rate"] / b["rate"]


def _fmt_rate(rate):
    if rate >= 1e6:
        return f"{rate / 1e6:7.2f} M"
    return f"{rate / 1e3:7.1f} k"


def _fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def _fmt_waits(extra, items):
    if not extra:
        return "-"
    return f"{extra['full_waits']}/{extra['empty_waits']}"


def print_table(bench, title, rows, columns):
    """columns: [(title, row -> baseline id or None)]."""
    if not rows:
        return
    heads = ([HEADER, "items/s", "min..max (M/s)"] + [c[0] for c in columns]
             + ["waits full/empty", "redone/noisy"])
    lines = []
    for row in rows:
        runs = row["runs"]
        cells = [row["label"], _fmt_rate(row["rate"]),
                 f"{min(runs) / 1e6:.2f}..{max(runs) / 1e6:.2f}"]
        for _, pick in columns:
            base = pick(row)
            cells.append("-" if base is None or base == row["id"]
                         else _fmt_ratio(bench.ratio(row["id"], base)))
        cells.append(_fmt_waits(row["extra"], row["items"]))
        cells.append(f"{len(row['discarded'])}/{row['disturbed']}"
                     if row["discarded"] or row["disturbed"] else "")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(heads, *lines, strict=True)]
    bench.say()
    bench.say(f"== {title}")

    def fmt(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    bench.say(fmt(heads))
    bench.say("  ".join("-" * w for w in widths))
    for cells in lines:
        bench.say(fmt(cells))


# ====================================================================== sections

def section_1p1c(bench):
    n = bench.args.items
    for cls in (SPSCChannel, MPMCChannel):
        kind = "spsc" if cls is SPSCChannel else "mpmc"
        for cap in (PEER_CAPACITY, LARGE_CAPACITY):
            bench.measure("1p1c", f"{kind}_single_{cap}", f"reflux {cls.__name__}({cap}) push/pop", n,
                          partial(_run_reflux, cls, cap, n, 1, 1, 1))
            bench.measure("1p1c", f"{kind}_batch_{cap}",
                          f"reflux {cls.__name__}({cap}) push_many/pop_many {BATCH}", n,
                          partial(_run_reflux, cls, cap, n, 1, 1, BATCH), batch=BATCH)
    bench.measure("1p1c", "queue_1024", f"queue.Queue({PEER_CAPACITY}) put/get", n,
                  lambda: _run_peer(lambda: queue.Queue(maxsize=PEER_CAPACITY), n, 1, 1, "items"))
    bench.measure("1p1c", "simplequeue", "queue.SimpleQueue put/get", n,
                  lambda: _run_peer(queue.SimpleQueue, n, 1, 1, "items"))
    bench.measure("1p1c", "simplequeue_lists", f"queue.SimpleQueue, one list of {BATCH} per put", n,
                  lambda: _run_peer(queue.SimpleQueue, n, 1, 1, "lists"), batch=BATCH)
    bench.measure("1p1c", "deque_1024", f"deque+Condition({PEER_CAPACITY}) put/get", n,
                  lambda: _run_peer(lambda: DequeChannel(PEER_CAPACITY), n, 1, 1, "items"))
    bench.measure("1p1c", "deque_batch_1024",
                  f"deque+Condition({PEER_CAPACITY}) extend/popleft {BATCH} per lock", n,
                  lambda: _run_peer(lambda: DequeChannel(PEER_CAPACITY), n, 1, 1, "batches"),
                  batch=BATCH)


def section_1t(bench):
    n = bench.args.items
    rows = [
        ("t_spsc", f"reflux SPSCChannel({PEER_CAPACITY}) push+pop", SPSCChannel, "rx"),
        ("t_mpmc", f"reflux MPMCChannel({PEER_CAPACITY}) push+pop", MPMCChannel, "rx"),
        ("t_spsc_batch", f"reflux SPSCChannel({PEER_CAPACITY}) push_many+pop_many {BATCH}",
         SPSCChannel, "rx_batch"),
        ("t_mpmc_batch", f"reflux MPMCChannel({PEER_CAPACITY}) push_many+pop_many {BATCH}",
         MPMCChannel, "rx_batch"),
    ]
    for rid, label, cls, mode in rows:
        bench.measure("1t", rid, label, n,
                      partial(_run_uncontended, partial(cls, PEER_CAPACITY), n, mode),
                      batch=BATCH if mode == "rx_batch" else 1)
    bench.measure("1t", "t_simplequeue", "queue.SimpleQueue put+get", n,
                  lambda: _run_uncontended(queue.SimpleQueue, n, "peer"))
    bench.measure("1t", "t_queue", f"queue.Queue({PEER_CAPACITY}) put+get", n,
                  lambda: _run_uncontended(lambda: queue.Queue(PEER_CAPACITY), n, "peer"))
    bench.measure("1t", "t_deque", f"deque+Condition({PEER_CAPACITY}) put+get", n,
                  lambda: _run_uncontended(lambda: DequeChannel(PEER_CAPACITY), n, "peer"))


def section_2p2c(bench):
    n = bench.args.items
    bench.measure("2p2c", "mpmc_2p2c_single", f"reflux MPMCChannel({PEER_CAPACITY}) push/pop", n,
                  lambda: _run_reflux(MPMCChannel, PEER_CAPACITY, n, 2, 2, 1))
    bench.measure("2p2c", "mpmc_2p2c_batch",
                  f"reflux MPMCChannel({PEER_CAPACITY}) push_many/pop_many {BATCH}", n,
                  lambda: _run_reflux(MPMCChannel, PEER_CAPACITY, n, 2, 2, BATCH), batch=BATCH)
    bench.measure("2p2c", f"mpmc_2p2c_single_{LARGE_CAPACITY}", f"reflux MPMCChannel({LARGE_CAPACITY}) push/pop", n,
                  lambda: _run_reflux(MPMCChannel, LARGE_CAPACITY, n, 2, 2, 1))
    bench.measure("2p2c", f"mpmc_2p2c_batch_{LARGE_CAPACITY}",
                  f"reflux MPMCChannel({LARGE_CAPACITY}) push_many/pop_many {BATCH}", n,
                  lambda: _run_reflux(MPMCChannel, LARGE_CAPACITY, n, 2, 2, BATCH), batch=BATCH)
    bench.measure("2p2c", "simplequeue_2p2c", "queue.SimpleQueue put/get", n,
                  lambda: _run_peer(queue.SimpleQueue, n, 2, 2, "items"))
    bench.measure("2p2c", "queue_1024_2p2c", f"queue.Queue({PEER_CAPACITY}) put/get", n,
                  lambda: _run_peer(lambda: queue.Queue(maxsize=PEER_CAPACITY), n, 2, 2, "items"))


def section_mp(bench):
    n = bench.args.mp_items
    bench.measure("mp", "mp_queue", "multiprocessing.Queue put/get", n, lambda: _run_mp(n, 1))
    bench.measure("mp", "mp_queue_lists", f"multiprocessing.Queue, one list of {BATCH} per put", n,
                  lambda: _run_mp(n, BATCH), batch=BATCH)


# ---------------------------------------------------------------------- naive
# The plain way to hand items from one thread to another, as a user writes it:
# no start gate, fresh objects per round, the producer thread's start inside the
# timing, the consumer in the main thread.

NAIVE_CAPACITY = 8192


def _run_naive_spsc(n):
    ch = SPSCChannel(NAIVE_CAPACITY)

    def produce():
        push = ch.push
        for i in range(n):
            push(i)
        ch.close()

    t0 = perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    pop, total, count = ch.pop, 0, 0
    try:
        while True:
            total += pop()
            count += 1
    except ChannelClosed:
        pass
    producer.join()
    secs = perf_counter() - t0
    if total != n * (n - 1) // 2:
        raise BenchmarkError(f"naive SPSCChannel: sum {total} != {n * (n - 1) // 2}")
    return secs, count, None


def _run_naive_simplequeue(n):
    q = queue.SimpleQueue()

    def produce():
        put = q.put
        for i in range(n):
            put(i)
        put(None)

    t0 = perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    get, total, count = q.get, 0, 0
    while True:
        x = get()
        if x is None:
            break
        total += x
        count += 1
    producer.join()
    secs = perf_counter() - t0
    if total != n * (n - 1) // 2:
        raise BenchmarkError(f"naive SimpleQueue: sum {total} != {n * (n - 1) // 2}")
    return secs, count, None


def run_naive(bench):
    """The naive pair, ``--naive-rounds`` rounds (their order rotating), after the other
    sections: rows whose runs are paired by round, with SimpleQueue a second time as the
    noise floor (the same code against itself)."""
    n, rounds = bench.args.naive_items, bench.args.naive_rounds
    rows = {
        "naive_spsc": (f"reflux SPSCChannel({NAIVE_CAPACITY}): a thread pushes, main pops", _run_naive_spsc),
        "naive_simplequeue": ("queue.SimpleQueue: a thread puts, main gets", _run_naive_simplequeue),
        "naive_simplequeue_again": ("queue.SimpleQueue again (the noise: the same code)", _run_naive_simplequeue),
    }
    runs = {rid: [] for rid in rows}
    t0 = time.monotonic()
    for r in range(rounds):
        order = list(rows)[r % 3:] + list(rows)[:r % 3]
        for rid in order:
            secs, count, _ = rows[rid][1](n)
            if count != n:
                raise BenchmarkError(f"{rows[rid][0]}: moved {count} items, expected {n}")
            runs[rid].append(n / secs)
    for rid, (label, _) in rows.items():
        bench.rows[rid] = {"section": "naive", "id": rid, "label": label, "items": n, "batch": 1,
                           "rate": statistics.median(runs[rid]), "runs": runs[rid], "extra": None,
                           "discarded": [], "disturbed": 0}
    bench.naive_call_ns = _naive_call_ns()
    bench.say(f"naive hand-off: {rounds} rounds in {time.monotonic() - t0:.0f} s")


def _naive_call_ns(n=8192, reps=40, runs=5):
    """Nanoseconds per item of the naive loops' calls in one thread (push then pop 8192
    items, put then get), median of ``runs``: what a round costs with no hand-over at all."""
    def timed(put, get):
        t0 = perf_counter()
        for _ in range(reps):
            for i in range(n):
                put(i)
            for i in range(n):
                get()
        return perf_counter() - t0
    out = {"spsc": [], "simplequeue": []}
    for _ in range(runs):
        ch, q = SPSCChannel(NAIVE_CAPACITY), queue.SimpleQueue()
        out["spsc"].append(timed(ch.push, ch.pop))
        out["simplequeue"].append(timed(q.put, q.get))
    return {k: statistics.median(v) / (n * reps) * 1e9 for k, v in out.items()}


def naive_rounds(bench, row="naive_spsc"):
    """Each round's ratio: ``row``'s rate (SPSCChannel's, or SimpleQueue's second run)
    over SimpleQueue's in the same round."""
    a, b = bench.rows.get(row), bench.rows.get("naive_simplequeue")
    if a is None or b is None:
        return []
    return [x / y for x, y in zip(a["runs"], b["runs"])]


def _record_items(args, batch):
    """Records per run: batch-256 runs move RECORD_BATCH_SCALE times more, so
    that even at ~600 M records/s a run lasts ~0.2 s (thread start-up and
    run_native's 1 ms completion poll then stay under 1%)."""
    return args.record_items * (RECORD_BATCH_SCALE if batch > 1 else 1)


def section_records(bench):
    # The nogil target compares _stress.run_native (native threads started
    # from C, timed from before their start to after their end) with the
    # plain ring on its own pthreads, timed the same way (pr_run_threads):
    # the fairer pair, since neither side involves Python threads.  The
    # ctypes-driven ring (two Python threads each calling into C with the GIL
    # released) is the counterpart of _stress.produce/consume from Python
    # threads, measured too.  Both sides run the same per-record work
    # (tagging, order check, per-producer count and sum).
    cap = bench.args.record_capacity
    try:
        ring = _plain_ring.load()
    except _plain_ring.PlainRingUnavailable as exc:
        ring = None
        bench.notes.append(f"plain C ring skipped: {exc}")
        bench.say(f"note: plain C ring skipped: {exc}")
    for batch in (1, BATCH):
        n = _record_items(bench.args, batch)
        if ring is not None:
            bench.measure("records", f"c_pthreads_b{batch}",
                          f"plain C SPSC ring({cap}), own pthreads, batch {batch}", n,
                          partial(_run_plain_pthreads, ring, n, cap, batch), batch=batch)
        bench.measure("records", f"rec_native_b{batch}",
                      f"RecordChannel spsc({cap}) run_native, batch {batch}", n,
                      partial(_run_records_native, n, cap, batch), batch=batch)
        if ring is not None:
            bench.measure("records", f"c_pythreads_b{batch}",
                          f"plain C SPSC ring({cap}), 2 Python threads via ctypes, batch {batch}", n,
                          partial(_run_plain_pythreads, ring, n, cap, batch), batch=batch)
        bench.measure("records", f"rec_pythreads_b{batch}",
                      f"RecordChannel spsc({cap}) produce/consume, 2 Python threads, batch {batch}",
                      n, partial(_run_records_pythreads, n, cap, batch), batch=batch)
    for batch in (1, BATCH):
        n2 = _record_items(bench.args, batch) // 2 * 2
        bench.measure("records", f"rec_mpmc_2p2c_b{batch}",
                      f"RecordChannel mpmc({cap}) run_native 2P2C, batch {batch}", n2,
                      partial(_run_records_native, n2, cap, batch, 2, 2, "mpmc"), batch=batch)


SECTIONS = {"1t": section_1t, "1p1c": section_1p1c, "2p2c": section_2p2c, "naive": lambda bench: None,
            "mp": section_mp, "records": section_records}

# (description, row id, baseline id, target ratio)
TARGETS = [
    (f"object SPSC 1P1C single vs queue.Queue({PEER_CAPACITY})",
     f"spsc_single_{PEER_CAPACITY}", "queue_1024", 20.0),
    ("object SPSC 1P1C single vs queue.SimpleQueue", f"spsc_single_{PEER_CAPACITY}", "simplequeue", 1.2),
    (f"object SPSC 1P1C batches of {BATCH} vs queue.SimpleQueue",
     f"spsc_batch_{PEER_CAPACITY}", "simplequeue", 2.0),
    (f"object MPMC 1P1C batches of {BATCH} vs queue.SimpleQueue",
     f"mpmc_batch_{PEER_CAPACITY}", "simplequeue", 2.0),
    (f"object MPMC 2P2C batches of {BATCH} vs queue.SimpleQueue 2P2C",
     "mpmc_2p2c_batch", "simplequeue_2p2c", 2.0),
    ("object MPMC 2P2C single vs queue.SimpleQueue 2P2C", "mpmc_2p2c_single", "simplequeue_2p2c", 1.0),
    ("record channel nogil 1P1C batch 1 vs plain C ring", "rec_native_b1", "c_pthreads_b1", 0.8),
    (f"record channel nogil 1P1C batch {BATCH} vs plain C ring",
     f"rec_native_b{BATCH}", f"c_pthreads_b{BATCH}", 0.8),
]

# The same object-channel targets with reflux at LARGE_CAPACITY slots (still
# bounded: 64 KiB of pointers).  Between Python threads a bounded ring costs one
# GIL hand-off each way per ring-full of items, so the capacity sets how often
# that cost is paid; SimpleQueue, unbounded, never pays it.
TARGETS_LARGE = [
    (desc.replace("SPSC", f"SPSC({LARGE_CAPACITY})").replace("MPMC", f"MPMC({LARGE_CAPACITY})"),
     (rid.replace(f"_{PEER_CAPACITY}", f"_{LARGE_CAPACITY}") if rid.endswith(f"_{PEER_CAPACITY}")
      else f"{rid}_{LARGE_CAPACITY}"), base, goal)
    for desc, rid, base, goal in TARGETS if rid.startswith(("spsc", "mpmc"))
]


def print_report(bench):
    rows = list(bench.rows.values())
    by = lambda s: [r for r in rows if r["section"] == s]  # noqa: E731
    same_batch = lambda prefix: lambda r: f"{prefix}{r['batch']}"  # noqa: E731
    print_table(bench, f"1P1C, Python threads, {bench.args.items:,} ints "
                f"(reflux at capacity {PEER_CAPACITY} like the bounded peers, and at {LARGE_CAPACITY})",
                by("1p1c"),
                [("vs SimpleQueue", lambda r: "simplequeue"),
                 (f"vs Queue({PEER_CAPACITY})", lambda r: "queue_1024")])
    print_table(bench, f"one thread, put then get each of {bench.args.items:,} ints "
                "(per-call cost: no waiting, no GIL hand-off)", by("1t"),
                [("vs SimpleQueue", lambda r: "t_simplequeue"),
                 (f"vs Queue({PEER_CAPACITY})", lambda r: "t_queue"),
                 ("vs itself 1P1C threaded", lambda r: {
                     "t_spsc": f"spsc_single_{PEER_CAPACITY}", "t_mpmc": f"mpmc_single_{PEER_CAPACITY}",
                     "t_spsc_batch": f"spsc_batch_{PEER_CAPACITY}",
                     "t_mpmc_batch": f"mpmc_batch_{PEER_CAPACITY}",
                     "t_simplequeue": "simplequeue", "t_queue": "queue_1024",
                     "t_deque": "deque_1024"}.get(r["id"]))])
    print_table(bench, f"2P2C, Python threads, {bench.args.items:,} ints", by("2p2c"),
                [("vs SimpleQueue", lambda r: "simplequeue_2p2c"),
                 (f"vs Queue({PEER_CAPACITY})", lambda r: "queue_1024_2p2c"),
                 ("vs same 1P1C", lambda r: {"mpmc_2p2c_single": f"mpmc_single_{PEER_CAPACITY}",
                                            "mpmc_2p2c_batch": f"mpmc_batch_{PEER_CAPACITY}",
                                            "simplequeue_2p2c": "simplequeue",
                                            "queue_1024_2p2c": "queue_1024"}.get(r["id"]))])
    naive = naive_rounds(bench)
    if naive:
        print_table(bench, f"the naive hand-off, {bench.args.naive_items:,} ints, {len(naive)} rounds "
                    "(fresh objects, no start gate, the thread's start timed)", by("naive"),
                    [("vs SimpleQueue", lambda r: "naive_simplequeue")])
        bench.say("per round, SPSCChannel vs SimpleQueue: " + " ".join(f"{x:.2f}" for x in naive))
        noise = naive_rounds(bench, "naive_simplequeue_again")
        if noise:
            bench.say("per round, SimpleQueue vs itself:      " + " ".join(f"{x:.2f}" for x in noise))
            bench.say(f"noise of a round (the same code against itself): slowest {min(noise):.2f}x, "
                      f"median {statistics.median(noise):.2f}x, fastest {max(noise):.2f}x")
        calls = getattr(bench, "naive_call_ns", None)
        if noise and calls:
            bench.say(f"limit: the same SimpleQueue code against itself ran {min(noise):.2f}x..{max(noise):.2f}x "
                      f"per round here, so a round of SPSCChannel stays >= 1.0x only while its lead (median "
                      f"{statistics.median(naive):.2f}x) outruns that noise; in one thread, with no hand-over "
                      f"at all, push+pop costs {calls['spsc']:.1f} ns an item and put+get "
                      f"{calls['simplequeue']:.1f} ns ({calls['simplequeue'] / calls['spsc']:.2f}x)")
    print_table(bench, f"process to process, {bench.args.mp_items:,} ints (scaled to items/s)",
                by("mp"),
                [("vs mp.Queue", lambda r: "mp_queue"),
                 ("vs SimpleQueue (threads)", lambda r: "simplequeue")])
    print_table(bench, f"8-byte records between nogil threads, {bench.args.record_items:,} records "
                f"per batch-1 run, {bench.args.record_items * RECORD_BATCH_SCALE:,} per batch-{BATCH} run, "
                f"capacity {bench.args.record_capacity}", by("records"),
                [("vs C ring pthreads", same_batch("c_pthreads_b")),
                 ("vs C ring ctypes", same_batch("c_pythreads_b"))])
    for note in bench.notes:
        bench.say(f"note: {note}")
    bench.say()
    results = []
    width = max(len(t[0]) for t in TARGETS + TARGETS_LARGE)
    for title, group in ((f"reflux rows at the peers' capacity, {PEER_CAPACITY}", TARGETS),
                         (f"object rows with reflux at {LARGE_CAPACITY} slots (still bounded)", TARGETS_LARGE)):
        bench.say(f"== targets ({title}; measured in this run)")
        for desc, rid, base, target in group:
            r = bench.ratio(rid, base)
            verdict = "n/a" if r is None else ("PASS" if r >= target else "MISS")
            results.append({"target": desc, "row": rid, "baseline": base, "goal": target,
                            "ratio": r, "verdict": verdict})
            shown = "-" if r is None else f"{r:.2f}x"
            bench.say(f"{desc.ljust(width)}  {shown:>8}  (goal >= {target:g}x)  {verdict}")
        bench.say()
    if naive:
        bench.say("== targets (the naive hand-off; measured in this run)")
        for desc, value, goal in ((f"naive SPSCChannel({NAIVE_CAPACITY}) vs SimpleQueue, median of rounds",
                                   statistics.median(naive), 1.2),
                                  ("naive SPSCChannel vs SimpleQueue, slowest round", min(naive), 1.0)):
            verdict = "PASS" if value >= goal else "MISS"
            results.append({"target": desc, "row": "naive_spsc", "baseline": "naive_simplequeue", "goal": goal,
                            "ratio": value, "verdict": verdict})
            bench.say(f"{desc.ljust(width)}  {value:>7.2f}x  (goal >= {goal:g}x)  {verdict}")
        bench.say()
    bench.say()
    bench.say("waits full/empty: the channel's stats of the median run, times a producer "
              "found it full / a consumer found it empty and had to wait")
    bench.say("redone/noisy: runs during which other processes or the hypervisor took >= 10% "
              "of a core, re-done (not counted) / kept because the re-do limit was reached")
    redone = sum(len(r["discarded"]) for r in rows)
    noisy = sum(r["disturbed"] for r in rows)
    if not bench.cpu.enabled:
        bench.say("(no /proc/stat here: disturbed runs are not detected)")
    elif redone or noisy:
        bench.say(f"{redone} run(s) re-done and {noisy} kept disturbed: other work shared the machine")
    return results


def _wait_quiet(bench, limit, quiet_note=True):
    """Wait until other work takes < 10% of a core over 1 s, or `limit` s pass."""
    cpu = bench.cpu
    if not cpu.enabled:
        return
    t0 = time.monotonic()
    while True:
        before = cpu.snapshot()
        time.sleep(1.0)
        foreign = cpu.foreign(before, cpu.snapshot())
        if foreign < 0.1:
            waited = time.monotonic() - t0
            if quiet_note or waited > 5:
                bench.say(f"machine quiet after {waited:.0f} s "
                          f"({foreign:.0%} of a core used elsewhere)")
            return
        if time.monotonic() > t0 + limit:
            bench.say(f"still busy after {limit:.0f} s ({foreign:.0%} of a core used "
                      "elsewhere); measuring anyway")
            return


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _built_at(module):
    try:
        stamp = os.path.getmtime(module.__file__)
    except (OSError, TypeError):
        return None
    return datetime.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _checkout():
    """The checkout's commit, and whether its core sources differ from it
    (which core build this measured), best effort."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*argv):
        proc = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 else None

    try:
        head = git("describe", "--always")
        if not head:
            return None
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "reflux_core", "setup.py")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" with uncommitted changes in the core" if changed else "")


def _meta(args):
    try:
        info = reflux_core.build_info()
    except Exception as exc:  # noqa: BLE001 - informational only
        info = {"error": repr(exc)}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "switch_interval": sys.getswitchinterval(),
        "reflux_core": info,
        "reflux_core_path": os.path.dirname(reflux_core.__file__),
        "checkout": _checkout(),
        "core_built": _built_at(channel),
        "items": args.items,
        "mp_items": args.mp_items,
        "record_items": args.record_items,
        "record_capacity": args.record_capacity,
        "repeat": args.repeat,
        "redo": args.redo,
        "redo_budget": args.redo_budget,
        "sections": args.only,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.channels",
        description="reflux channels vs queue.Queue, SimpleQueue, deque+Condition, "
                    "multiprocessing.Queue and a plain-C ring.")
    p.add_argument("--items", type=int, help="ints per thread benchmark (default 1,000,000)")
    p.add_argument("--naive-items", type=int, help="ints per naive hand-off run (default 500,000)")
    p.add_argument("--naive-rounds", type=int, help="rounds of the naive hand-off pair (default 24)")
    p.add_argument("--mp-items", type=int, help="ints per multiprocessing run (default 200,000)")
    p.add_argument("--record-items", type=int,
                   help="records per batch-1 record run; batch-256 runs move 10x as many "
                        "(default 10,000,000: long enough that thread start-up and run_native's "
                        "1 ms completion poll stay around 1%%)")
    p.add_argument("--record-capacity", type=int, default=PEER_CAPACITY,
                   help=f"capacity of the record rings, reflux and plain C alike (default {PEER_CAPACITY})")
    p.add_argument("--repeat", type=int, help="runs per measurement; the median is reported (default 5)")
    p.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--redo", type=int,
                   help="re-runs of a run that other load disturbed (default 2, with --quick 0; "
                        "0: keep every run)")
    p.add_argument("--redo-budget", type=float, default=60.0,
                   help="seconds of re-runs at most in all (default 60)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for other processes to leave the CPUs idle before "
                        "starting and before each round (and up to 30 s before re-doing a "
                        "disturbed run); for a shared machine")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print each row as it is measured")
    args = p.parse_args(argv)
    quick = args.quick
    if args.items is None:
        args.items = 20_000 if quick else 1_000_000
    if args.mp_items is None:
        args.mp_items = 5_000 if quick else 200_000
    if args.record_items is None:
        args.record_items = 200_000 if quick else 10_000_000
    if args.naive_items is None:
        args.naive_items = 20_000 if quick else 500_000
    if args.naive_rounds is None:
        args.naive_rounds = 2 if quick else 24
    if args.repeat is None:
        args.repeat = 1 if quick else 5
    if args.redo is None:
        args.redo = 0 if quick else 2
    if args.redo < 0:
        p.error("--redo must be >= 0")
    for name in ("items", "mp_items", "naive_items", "naive_rounds", "record_items", "repeat", "record_capacity"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.record_items < 2:
        p.error("--record-items must be >= 2")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args)
    meta = _meta(args)
    bench.say(f"reflux channel benchmark: Python {meta['python']} on {meta['platform']}, "
              f"{meta['cpus']} CPUs; reflux_core {meta['reflux_core']} from {meta['reflux_core_path']}"
              + (f", checkout {meta['checkout']}" if meta["checkout"] else "")
              + (f", core built {meta['core_built']}" if meta["core_built"] else ""))
    bench.say(f"median of {args.repeat} run(s) per row, every row once per round; items/s = "
              "items moved / wall time from the first worker's start to the last one's end")
    if args.quick:
        bench.say("--quick: a smoke run; sizes are too small for the numbers to mean anything")
    if args.wait_quiet > 0:
        _wait_quiet(bench, args.wait_quiet)
    load = _loadavg()
    if load is not None:
        bench.say(f"load average before: {load:.2f}" + (
            "  (other work is running: numbers will be noisy)" if load >= 0.5 else ""))
    t0 = time.monotonic()
    for name in args.only:
        SECTIONS[name](bench)
    bench.run_rounds()
    if "naive" in args.only:
        run_naive(bench)
    targets = print_report(bench)
    bench.say(f"total benchmark time {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": list(bench.rows.values()), "targets": targets,
                       "notes": bench.notes}, f, indent=2)
            f.write("\n")
        bench.say(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
