"""Which transport should process workers use?  Pipes against the alternatives.

Run from the repository root::

    python -m benchmarks.process_transport [--items N] [--batch B] [--repeat R] [--quick] [--json FILE]

Part 1, the wire: one producer process sends ``--items`` small ints to one
consumer process, in lists of ``--batch`` (what reflux's process workers
move: chunks of items), through:

``pipe+writev``  reflux's native transport (:mod:`reflux.run.process.child`): pickle
                 protocol 5 with out-of-band buffers, ``os.writev`` / ``os.readv``
                 on an OS pipe (1 MiB pipe buffer asked for)
``portable``     reflux's portable transport (Windows, macOS): the same framing
                 over a ``multiprocessing.connection`` pipe, header and pickle
                 in one ``send_bytes``, each buffer in one more, read with
                 ``recv_bytes_into``
``mp.Pipe``      ``multiprocessing.Pipe()``: ``send_bytes`` / ``recv_bytes`` of
                 the same pickles
``mp.Queue``     ``multiprocessing.Queue`` of the lists (its feeder thread pickles)
``shm ring``     a single-producer single-consumer byte ring in
                 ``multiprocessing.shared_memory`` (8 MiB) carrying reflux's
                 framing (out-of-band buffers copied into the ring, read out
                 as slices of one copy), written and read from Python, the
                 reader and writer spinning (then sleeping
                 50 µs) on the other side's position: no system call per
                 message, the best case for a shared-memory ring in Python

and the same for numpy arrays (``--arrays`` arrays of ``--array-kb`` KiB),
where out-of-band buffers matter.  Timed from a start signal (both processes
already running) until the consumer has everything; the consumer checks the
count and sum.

Part 2, a pipeline: ``Extractor >> Transformer(fn, executor="process",
workers=2) >> Loader`` with each transport (``REFLUX_PROCESS_TRANSPORT``), for
the ints (``fn`` adds one) and the arrays (``fn`` doubles them), worker
start-up included; the Loader's results are checked.

Prints the median of ``--repeat`` runs and the ratios.  Nothing here is a test.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import struct
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from benchmarks import import_core

import_core("channel")  # the compiled core first (see benchmarks.import_core)
from reflux import Extractor, Loader, Pipeline, Transformer  # noqa: E402
from reflux.run.process import child as wire  # noqa: E402
from reflux.run.process.transport import TRANSPORT_ENV, _native_available  # noqa: E402

PIPE_SIZE = 1 << 20
RING = 8 << 20
_Q = struct.Struct("<Q")


def _batches(n: int, batch: int) -> Any:
    for s in range(0, n, batch):
        yield list(range(s, min(s + batch, n)))


def _arrays(count: int, kb: int) -> Any:
    a = np.ones(kb * 128, dtype=np.float64)  # kb KiB
    for _ in range(count):
        yield [a]


def _payloads(kind: str, n: int, batch: int) -> Any:
    return _batches(n, batch) if kind == "ints" else _arrays(n, batch)


def _tally(kind: str, msg: Any) -> tuple[int, float]:
    if kind == "ints":
        return len(msg), sum(msg)
    return len(msg), float(sum(float(a.sum()) for a in msg))


# ---------------------------------------------------------------- pipe with reflux framing

def _pipe_producer(fd: int, kind: str, n: int, batch: int, go: Any) -> None:
    go.wait()
    for msg in _payloads(kind, n, batch):
        wire.write_all(fd, wire.encode(msg))
    wire.write_all(fd, wire.encode(None))
    os.close(fd)


def _pipe_consumer(fd: int, kind: str, results: Any) -> None:
    count, total = 0, 0.0
    while True:
        msg = wire.read_msg(fd)
        if msg is None:
            break
        c, t = _tally(kind, msg)
        count += c
        total += t
    results.put((count, total, time.perf_counter()))


# ---------------------------------------------------------------- reflux's portable transport

def _conn_producer(conn: Any, kind: str, n: int, batch: int, go: Any) -> None:
    go.wait()
    for msg in _payloads(kind, n, batch):
        wire.send_conn(conn, wire.encode(msg))
    wire.send_conn(conn, wire.encode(None))
    conn.close()


def _conn_consumer(conn: Any, kind: str, results: Any) -> None:
    count, total = 0, 0.0
    while True:
        data, bufs = wire.recv_conn_raw(conn)
        msg = pickle.loads(data, buffers=bufs)
        if msg is None:
            break
        c, t = _tally(kind, msg)
        count += c
        total += t
    results.put((count, total, time.perf_counter()))


# ---------------------------------------------------------------- multiprocessing.Pipe

def _mpp_producer(conn: Any, kind: str, n: int, batch: int, go: Any) -> None:
    go.wait()
    for msg in _payloads(kind, n, batch):
        conn.send_bytes(pickle.dumps(msg, protocol=5))
    conn.send_bytes(pickle.dumps(None))
    conn.close()


def _mpp_consumer(conn: Any, kind: str, results: Any) -> None:
    count, total = 0, 0.0
    while True:
        msg = pickle.loads(conn.recv_bytes())
        if msg is None:
            break
        c, t = _tally(kind, msg)
        count += c
        total += t
    results.put((count, total, time.perf_counter()))


# ---------------------------------------------------------------- multiprocessing.Queue

def _q_producer(q: Any, kind: str, n: int, batch: int, go: Any) -> None:
    go.wait()
    for msg in _payloads(kind, n, batch):
        q.put(msg)
    q.put(None)
    q.close()
    q.join_thread()


def _q_consumer(q: Any, kind: str, results: Any) -> None:
    count, total = 0, 0.0
    while True:
        msg = q.get()
        if msg is None:
            break
        c, t = _tally(kind, msg)
        count += c
        total += t
    results.put((count, total, time.perf_counter()))


# ---------------------------------------------------------------- shared-memory ring

class ShmRing:
    """A single-producer single-consumer byte ring in shared memory (Python, x86 ordering).

    Layout: [0:8] head (bytes written, producer), [128:136] tail (bytes read,
    consumer), data from 256.  A message is an 8-byte length and its bytes,
    possibly wrapping around the end.  Head and tail are read and written as
    whole aligned 8-byte words (``words``: the block seen as unsigned 64-bit
    ints, one ``mov`` each on x86-64): ``struct``'s ``"<Q"`` goes byte by byte,
    and the other process could see half a new head and read bytes never written.
    """

    DATA = 256
    HEAD = 0  # index in `words` of the head (bytes 0-7)
    TAIL = 16  # and of the tail (bytes 128-135)

    def __init__(self, shm: shared_memory.SharedMemory, cap: int) -> None:
        self.shm = shm
        self.buf = shm.buf
        self.words = shm.buf[:self.DATA].cast("Q")
        self.cap = cap
        self.head = 0
        self.tail = 0

    def release(self) -> None:
        """Let go of the views of the block (before it is closed)."""
        self.words.release()

    def _copy_in(self, pos: int, data: Any) -> None:
        data = memoryview(data).cast("B")
        off = pos % self.cap
        first = min(len(data), self.cap - off)
        base = self.DATA
        self.buf[base + off:base + off + first] = data[:first]
        if first < len(data):
            self.buf[base:base + len(data) - first] = data[first:]

    def _copy_out(self, pos: int, size: int) -> bytearray:
        out = bytearray(size)
        off = pos % self.cap
        first = min(size, self.cap - off)
        base = self.DATA
        out[:first] = self.buf[base + off:base + off + first]
        if first < size:
            out[first:] = self.buf[base:base + size - first]
        return out

    @staticmethod
    def _spin(k: int) -> int:
        if k > 200:
            time.sleep(0.00005)
        return k + 1

    def put(self, parts: list[Any]) -> None:
        """Write one message made of ``parts`` (reflux's framing: header, pickle, buffers)."""
        size = sum(memoryview(p).nbytes for p in parts)
        need = 8 + size
        if need > self.cap:
            raise ValueError("message larger than the ring")
        k = 0
        while self.cap - (self.head - self.words[self.TAIL]) < need:
            k = self._spin(k)
        self._copy_in(self.head, _Q.pack(size))
        pos = self.head + 8
        for part in parts:
            self._copy_in(pos, part)
            pos += memoryview(part).nbytes
        self.head += need
        self.words[self.HEAD] = self.head  # publish (x86: stores are not reordered)

    def get(self) -> Any:
        """Read one message and unpickle it; out-of-band buffers are slices of one copy."""
        k = 0
        while self.words[self.HEAD] == self.tail:
            k = self._spin(k)
        size = _Q.unpack(bytes(self._copy_out(self.tail, 8)))[0]
        data = self._copy_out(self.tail + 8, size)
        self.tail += 8 + size
        self.words[self.TAIL] = self.tail
        plen, nbuf = struct.unpack_from("<QI", data, 0)
        pos = 12 + 8 * nbuf
        view = memoryview(data)
        body = view[pos:pos + plen]
        pos += plen
        bufs = []
        for i in range(nbuf):
            n = _Q.unpack_from(data, 12 + 8 * i)[0]
            bufs.append(view[pos:pos + n])
            pos += n
        return pickle.loads(body, buffers=bufs)


def _shm_producer(name: str, kind: str, n: int, batch: int, go: Any) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        ring = ShmRing(shm, RING)
        go.wait()
        for msg in _payloads(kind, n, batch):
            ring.put(wire.encode(msg))
        ring.put(wire.encode(None))
        ring.release()
        del ring
    finally:
        shm.close()


def _shm_consumer(name: str, kind: str, results: Any) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        ring = ShmRing(shm, RING)
        count, total = 0, 0.0
        while True:
            msg = ring.get()
            if msg is None:
                break
            c, t = _tally(kind, msg)
            count += c
            total += t
        ring.release()
        del ring
        results.put((count, total, time.perf_counter()))
    finally:
        shm.close()


# ---------------------------------------------------------------- driver

def run_one(ctx: Any, method: str, kind: str, n: int, batch: int) -> float:
    """Seconds to move everything with ``method`` (processes started before the clock)."""
    go = ctx.Event()
    results = ctx.Queue()
    cleanup: list[Any] = []
    if method == "pipe+writev":
        r, w = os.pipe()
        try:
            import fcntl
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass
        prod = ctx.Process(target=_pipe_producer, args=(w, kind, n, batch, go))
        cons = ctx.Process(target=_pipe_consumer, args=(r, kind, results))
        cleanup += [lambda: os.close(r), lambda: os.close(w)]
    elif method == "portable":
        rc, wc = ctx.Pipe(duplex=False)
        prod = ctx.Process(target=_conn_producer, args=(wc, kind, n, batch, go))
        cons = ctx.Process(target=_conn_consumer, args=(rc, kind, results))
        cleanup += [rc.close, wc.close]
    elif method == "mp.Pipe":
        rc, wc = ctx.Pipe(duplex=False)
        prod = ctx.Process(target=_mpp_producer, args=(wc, kind, n, batch, go))
        cons = ctx.Process(target=_mpp_consumer, args=(rc, kind, results))
        cleanup += [rc.close, wc.close]
    elif method == "mp.Queue":
        q = ctx.Queue()
        prod = ctx.Process(target=_q_producer, args=(q, kind, n, batch, go))
        cons = ctx.Process(target=_q_consumer, args=(q, kind, results))
    elif method == "shm ring":
        shm = shared_memory.SharedMemory(create=True, size=ShmRing.DATA + RING)
        shm.buf[:ShmRing.DATA] = bytes(ShmRing.DATA)
        prod = ctx.Process(target=_shm_producer, args=(shm.name, kind, n, batch, go))
        cons = ctx.Process(target=_shm_consumer, args=(shm.name, kind, results))
        cleanup += [shm.close, shm.unlink]
    else:
        raise ValueError(method)
    cons.start()
    prod.start()
    time.sleep(0.3)  # both interpreters up
    t0 = time.perf_counter()
    go.set()
    count, total, t1 = results.get(timeout=600)
    prod.join(60)
    cons.join(60)
    for fn in cleanup:
        fn()
    expected = n if kind == "ints" else n
    if count != expected:
        raise AssertionError(f"{method}: {count} items arrived, expected {expected}")
    return t1 - t0


def _load() -> float:
    """The 1-minute load average (-1 where the OS does not tell it)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return -1.0


# ---------------------------------------------------------------- part 2: a pipeline

def add_one(x: int) -> int:
    """The ints' function in the pipeline runs (the workers import it from here)."""
    return x + 1


def doubled(a: Any) -> Any:
    """The arrays' function in the pipeline runs."""
    return a * 2


def run_pipeline(transport: str, kind: str, n: int, batch: int) -> float:
    """Seconds for one pipeline run with process workers over ``transport``, start-up included."""
    old = os.environ.get(TRANSPORT_ENV)
    os.environ[TRANSPORT_ENV] = transport  # read when the node opens
    try:
        if kind == "ints":
            items: Any = range(n)
            node = Transformer(add_one, executor="process", workers=2, name="t")
        else:
            a = np.ones(batch * 128, dtype=np.float64)
            items = [a] * n
            node = Transformer(doubled, executor="process", workers=2, name="t")
        t0 = time.perf_counter()
        result = Pipeline(Extractor(items, batch_size=256 if kind == "ints" else 4) >> node
                          >> Loader.to_list(name="out")).run(timeout=600)
        secs = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop(TRANSPORT_ENV, None)
        else:
            os.environ[TRANSPORT_ENV] = old
    out = result.results["out"]
    if len(out) != n or (kind == "ints" and sum(out) != n * (n + 1) // 2) \
            or (kind == "arrays" and float(out[-1][0]) != 2.0):
        raise AssertionError(f"pipeline over {transport}: wrong results")
    return secs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--arrays", type=int, default=2_000)
    p.add_argument("--array-kb", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the medians and ratios as JSON")
    a = p.parse_args(argv)
    if a.quick:
        a.items, a.arrays, a.repeat = 20_000, 50, 1
    # fork: the raw pipe fds are inherited (this script has no other threads when it forks);
    # where there is no fork (Windows), spawn, and no raw-pipe method
    have_fork = "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if have_fork else "spawn")
    methods = ["pipe+writev"] if have_fork and hasattr(os, "writev") else []
    methods += ["portable", "mp.Pipe", "mp.Queue", "shm ring"]
    transports = ["native", "portable"] if _native_available() else ["portable"]
    load0 = _load()
    print(f"machine: {os.cpu_count()} cores; load average {load0:.2f} at the start")
    report: dict[str, Any] = {"load_start": load0, "wire": {}, "pipeline": {}}
    cases = (("ints", a.items, a.batch, "items"), ("arrays", a.arrays, a.array_kb, "arrays"))
    for kind, n, batch, unit in cases:
        what = (f"{n:,} small ints in lists of {batch}" if kind == "ints"
                else f"{n:,} numpy arrays of {batch} KiB, one per message")
        print(f"\n== wire: {what}, producer process -> consumer process (median of {a.repeat})")
        print(f"{'transport':<14} {'seconds':>8} {unit + '/s':>12} {'MB/s':>8}  vs {methods[0]}")
        base = None
        for m in methods:
            secs = statistics.median(run_one(ctx, m, kind, n, batch) for _ in range(a.repeat))
            rate = n / secs
            mb = (n * batch * 1024 / secs / 1e6) if kind == "arrays" else 0.0
            base = base or secs
            report["wire"][f"{kind}/{m}"] = {"seconds": secs, "ratio": base / secs}
            print(f"{m:<14} {secs:8.3f} {rate:12,.0f} {mb:8.0f}  {base / secs:5.2f}x")
    for kind, n, batch, unit in cases:
        what = (f"{n:,} ints, each plus one" if kind == "ints" else f"{n:,} numpy arrays of {batch} KiB, doubled")
        print(f"\n== pipeline: {what}, Transformer(executor='process', workers=2), "
              f"start-up included (median of {a.repeat})")
        print(f"{'transport':<14} {'seconds':>8} {unit + '/s':>12}  vs {transports[0]}")
        times: dict[str, list[float]] = {t: [] for t in transports}
        for _ in range(a.repeat):  # interleaved, so a change of load hits both alike
            for t in times:
                times[t].append(run_pipeline(t, kind, n, batch))
        base = statistics.median(times[transports[0]])
        for t, runs in times.items():
            secs = statistics.median(runs)
            report["pipeline"][f"{kind}/{t}"] = {"seconds": secs, "ratio": base / secs}
            print(f"{t:<14} {secs:8.3f} {n / secs:12,.0f}  {base / secs:5.2f}x")
    report["load_end"] = _load()
    print(f"\nload average {report['load_end']:.2f} at the end")
    if a.json:
        import json
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
