"""Cython transformer benchmark: one numeric transform four ways, over 1,000,000 records.

Run from the repository root::

    python -m benchmarks.cython_transform [--quick] [--records N] [--rounds R]
                                          [--chunk C] [--repeat K] [--json PATH]

The transform: ``x -> sqrt(x)`` by ``--rounds`` Newton steps per record (128 by
default), over records ``[("id", "<i8"), ("x", "<f8")]``.  Rows:

``python per item``        a Python function, one record (a float) per item
``numpy in a Transformer`` a Python function doing the same with numpy over a
                           chunk of ``--chunk`` records per item
``cython parallel=1``      ``Transformer(NewtonSqrt(rounds))``: the compiled
                           plug-in (reflux_core._testplugins) over the same chunks,
                           GIL released per chunk
``cython parallel=2``      two replicas of it (``parallel=2``, see :func:`replicated`)
``record pump x1 / x2``    the nogil RecordPump moving records channel to
                           channel, no Python at all per batch (1 or 2 pumps
                           sharing MPMC channels)

Each row runs Extractor -> transform -> Loader, timed as the whole
``Pipeline.run()`` (sources are prepared before the clock starts), and
checks the count and the sum of what arrived against numpy.  Numbers are
medians of ``--repeat`` runs; every row runs once per round, so drift in
the machine's speed touches all rows alike.  Nothing here is a test.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks import import_core

import_core("channel", "transform", "_testplugins")  # the compiled core first
import numpy as np  # noqa: E402

from reflux import Balancer, Extractor, Funnel, Loader, Pipeline, Transformer  # noqa: E402
from reflux_core import _testplugins  # noqa: E402
from reflux_core.channel import RecordChannel  # noqa: E402
from reflux_core.transform import RecordPump  # noqa: E402

HEADER = "benchmark"
#: CPU seconds (all threads of this process) of the last run, appended by the runners
_CPU: list[float] = []
REC = np.dtype(_testplugins.RECORD)


def replicated(make: Callable[[str], Transformer], n: int, name: str) -> Any:
    """``n`` replicas of a Transformer as one flow.

    With the worker pool, ``Transformer(..., parallel=n)``: one node whose
    replicas share its input.  Without it (an older runtime), a Balancer in
    front of ``n`` Transformers and a Funnel behind them.
    """
    if n > 1 and "parallel" in inspect.signature(Transformer.__init__).parameters:
        node = make(name)
        return Transformer(node.fn, name=name, parallel=n)  # type: ignore[call-arg]
    if n == 1:
        return make(name)
    return Balancer(name=f"{name}-split") >> [make(f"{name}{i}") for i in range(n)] >> Funnel(name=f"{name}-merge")


def make_records(n: int) -> np.ndarray:
    a = np.zeros(n, REC)
    a["id"] = np.arange(n)
    a["x"] = (np.arange(n) % 10_007) * 0.5
    return a


def reference_sum(a: np.ndarray, rounds: int) -> float:
    y = a["x"] + 1.0
    for _ in range(rounds):
        y = 0.5 * (y + a["x"] / y)
    return float(y.sum())


class Tally:
    """A batch Loader function: counts records and sums x (from floats or chunks)."""

    batched = True

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def __call__(self, items: list[Any]) -> None:
        for it in items:
            if isinstance(it, float):
                self.count += 1
                self.total += it
            else:
                self.count += len(it)
                self.total += float(it["x"].sum())

    def result(self) -> tuple[int, float]:
        return self.count, self.total


def py_newton(rounds: int) -> Callable[[float], float]:
    def newton(x: float) -> float:
        y = x + 1.0
        for _ in range(rounds):
            y = 0.5 * (y + x / y)
        return y
    return newton


def np_newton(rounds: int) -> Callable[[np.ndarray], np.ndarray]:
    def newton_chunk(chunk: np.ndarray) -> np.ndarray:
        x = chunk["x"]
        y = x + 1.0
        for _ in range(rounds):
            y = 0.5 * (y + x / y)
        out = np.empty(len(chunk), REC)
        out["id"] = chunk["id"]
        out["x"] = y
        return out
    return newton_chunk


def run_pipeline(source: list[Any], middle: Any) -> tuple[float, int, float]:
    sink = Tally()
    pipe = Pipeline(Extractor(source) >> middle >> Loader(sink, name="sink"))
    t0, c0 = time.perf_counter(), time.process_time()
    result = pipe.run()
    secs = time.perf_counter() - t0
    _CPU.append(time.process_time() - c0)
    if result.status != "completed":
        raise RuntimeError(f"run ended {result.status}: {result.errors[:1]}")
    count, total = result.results["sink"]
    return secs, count, total


def run_pumps(a: np.ndarray, rounds: int, pumps: int, batch: int) -> tuple[float, int, float]:
    """``pumps`` RecordPumps (one thread each) between two record channels
    (MPMC when shared); a Python thread feeds the input in chunks of 8192
    records and another drains the output."""
    mode = "mpmc" if pumps > 1 else "spsc"
    src, dst = RecordChannel(REC, 1 << 14, mode=mode), RecordChannel(REC, 1 << 14, mode=mode)
    plugin = _testplugins.NewtonSqrt(rounds)
    # several pumps share the output: the last one to finish closes it
    workers = [RecordPump(src, plugin, dst, batch_size=batch, close_outputs=False) for _ in range(pumps)]
    sums: list[float] = []
    count = [0]

    def feed() -> None:
        for i in range(0, len(a), 8192):
            src.push(a[i:i + 8192])
        src.close()

    def drain() -> None:
        for arr in dst:
            count[0] += len(arr)
            sums.append(float(arr["x"].sum()))

    pump_threads = [threading.Thread(target=w.run, name=f"bench-pump{i}") for i, w in enumerate(workers)]
    others = [threading.Thread(target=feed, name="bench-feed"), threading.Thread(target=drain, name="bench-drain")]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in pump_threads + others:
        t.start()
    for t in pump_threads:
        t.join()
    dst.close()
    for t in others:
        t.join()
    secs = time.perf_counter() - t0
    _CPU.append(time.process_time() - c0)
    return secs, count[0], float(sum(sums))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cython_transform", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    p.add_argument("--records", type=int, help="records per row (default 1,000,000)")
    p.add_argument("--rounds", type=int, default=128, help="Newton steps per record (default 128)")
    p.add_argument("--chunk", type=int, default=4096, help="records per chunk item (default 4096)")
    p.add_argument("--repeat", type=int, help="runs per row, median reported (default 5)")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    a = p.parse_args(argv)
    n = a.records or (20_000 if a.quick else 1_000_000)
    repeat = a.repeat or (1 if a.quick else 5)
    rounds, chunk = a.rounds, a.chunk

    data = make_records(n)
    want_sum = reference_sum(data, rounds)
    floats = data["x"].tolist()
    chunks = [data[i:i + chunk] for i in range(0, n, chunk)]
    plugin_node = lambda name: Transformer(_testplugins.NewtonSqrt(rounds), name=name)  # noqa: E731

    rows: dict[str, Callable[[], tuple[float, int, float]]] = {
        "python per item": lambda: run_pipeline(floats, Transformer(py_newton(rounds), name="py")),
        "numpy in a Transformer": lambda: run_pipeline(chunks, Transformer(np_newton(rounds), name="np")),
        "cython parallel=1": lambda: run_pipeline(chunks, replicated(plugin_node, 1, "cy")),
        "cython parallel=2": lambda: run_pipeline(chunks, replicated(plugin_node, 2, "cy")),
        "record pump x1 (nogil)": lambda: run_pumps(data, rounds, 1, 1024),
        "record pump x2 (nogil)": lambda: run_pumps(data, rounds, 2, 1024),
    }
    samples: dict[str, list[float]] = {k: [] for k in rows}
    cores: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeat):
        for name, fn in rows.items():
            secs, count, total = fn()
            cores[name].append(_CPU[-1] / secs)
            if count != n or not np.isclose(total, want_sum, rtol=1e-9):
                raise RuntimeError(f"{name}: got {count} records summing {total}, want {n} summing {want_sum}")
            samples[name].append(secs)

    med = {k: statistics.median(v) for k, v in samples.items()}
    rate = {k: n / v for k, v in med.items()}
    py, cy1, cy2 = rate["python per item"], rate["cython parallel=1"], rate["cython parallel=2"]
    print(f"Cython transformer benchmark: {n:,} records, {rounds} Newton steps each, chunks of {chunk}, "
          f"median of {repeat} run(s); {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{HEADER:<28} {'items/s':>14} {'seconds':>9} {'vs python per item':>20} {'vs cython parallel=1':>22}"
          f" {'cores used':>11}")
    for name in rows:
        print(f"{name:<28} {rate[name]:>14,.0f} {med[name]:>9.3f} {rate[name] / py:>19.1f}x "
              f"{rate[name] / cy1:>21.2f}x {statistics.median(cores[name]):>11.2f}")
    print("cores used: CPU seconds of all this process's threads per wall-clock second (median); "
          "below ~1.9 for a 2-replica row, other processes held the second core")
    print("== targets (this run)")
    for label, value, goal in (("cython parallel=2 vs parallel=1", cy2 / cy1, 1.8),
                               ("cython parallel=2 vs python per item", cy2 / py, 20.0)):
        print(f"{label:<40} {value:>7.2f}x  (target >= {goal}x)  {'PASS' if value >= goal else 'MISS'}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"records": n, "rounds": rounds, "chunk": chunk, "repeat": repeat,
                       "seconds": samples, "median_seconds": med, "records_per_s": rate,
                       "cores_used": cores}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
