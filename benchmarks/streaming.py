"""Streaming features against the plain ways of doing the same work, side by side in one run.

Run from the repository root::

    python -m benchmarks.streaming [--quick] [--repeat R] [--json PATH] [--only async,batched,sum]

``async``    10,000 items through a stage awaiting a 10 ms call: reflux
             ``Transformer(async fn, concurrency=100)`` against the same calls
             (blocking, ``time.sleep``) in a ``ThreadPoolExecutor(100)`` and a
             plain ``asyncio.gather`` with a ``Semaphore(100)``.
             Target: reflux at least 0.9x the best of them.
``batched``  1,000,000 floats through a NumPy stage (square root): reflux
             ``Transformer(np.sqrt, batched=True)`` over float records in
             NumPy chunks (one call per batch of chunks), and over Python
             floats (one call per batch, on a list), against the same
             Transformer called per item (``np.sqrt(x)``).  The ratio is
             reported (10x or more is expected for records).
``sum``      the overhead pipeline (1,000,000 ints: x*2+1, x%3==0) ending in
             ``Loader.sum()`` against a plain loop making the same calls and
             summing.  Target: at least 0.9x the plain loop.
``sinks``    1,000,000 ints from an Extractor straight into each built-in sink
             (``Loader.count()``, ``.sum()``, ``.reduce()``, ``.collect()``,
             ``.to_callback()``, ``.to_file()``) and into a Loader calling a
             function per item and per batch, against a plain loop summing.

Rows run in rounds and report medians; every run checks what arrived.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter

from benchmarks import import_core, run_meta

import_core("channel")
import numpy as np  # noqa: E402

from benchmarks.pipeline import Bench, _fmt_rate, _fmt_ratio, _runs, check, keep, print_table, step  # noqa: E402
from reflux import Extractor, Filter, Loader, Pipeline, Transformer  # noqa: E402

DELAY = 0.01
CHUNK = 4096  # float records per NumPy chunk


# ---------------------------------------------------------------------- async

async def _call(x):
    await asyncio.sleep(DELAY)
    return x


def run_async_reflux(n, concurrency):
    t0 = perf_counter()
    result = Pipeline(Extractor(range(n)) >> Transformer(_call, concurrency=concurrency)
                      >> Loader.sum(name="total")).run(timeout=600)
    secs = perf_counter() - t0
    check("reflux async", (result.results["total"],), (sum(range(n)),))
    return {"secs": secs}


def run_async_threads(n, threads):
    def call(x):
        time.sleep(DELAY)
        return x

    t0 = perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(call, range(n)))
    secs = perf_counter() - t0
    check("ThreadPoolExecutor", (total,), (sum(range(n)),))
    return {"secs": secs}


def run_async_gather(n, concurrency):
    async def main():
        sem = asyncio.Semaphore(concurrency)

        async def one(x):
            async with sem:
                return await _call(x)

        return sum(await asyncio.gather(*(one(x) for x in range(n))))

    t0 = perf_counter()
    total = asyncio.run(main())
    secs = perf_counter() - t0
    check("asyncio.gather", (total,), (sum(range(n)),))
    return {"secs": secs}


# ---------------------------------------------------------------------- batched

def run_batched(values, batched):
    """Python floats, one item each: np.sqrt per item, or over each batch (a list)."""
    expected = float(np.sqrt(np.asarray(values)).sum())
    stage = (Transformer(lambda xs: np.sqrt(xs), batched=True) if batched else Transformer(np.sqrt))
    t0 = perf_counter()
    result = Pipeline(Extractor(values) >> stage >> Loader.sum(0.0, name="total")).run(timeout=600)
    secs = perf_counter() - t0
    _check_total(f"batched={batched}", float(result.results["total"]), expected)
    return {"secs": secs}


def run_batched_records(records, chunk):
    """Float records in NumPy chunks: np.sqrt over the batch's records as one array."""
    expected = float(np.sqrt(records).sum())
    chunks = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    t0 = perf_counter()
    result = Pipeline(Extractor(chunks) >> Transformer(np.sqrt, batched=True)
                      >> Loader.reduce(lambda total, c: total + float(c.sum()), 0.0, name="total")).run(timeout=600)
    secs = perf_counter() - t0
    _check_total("records", float(result.results["total"]), expected)
    return {"secs": secs}


def _check_total(label, got, expected):
    if abs(got - expected) > 1e-6 * max(1.0, abs(expected)):
        raise AssertionError(f"{label}: total {got} != {expected}")


# ---------------------------------------------------------------------- Loader.sum

def run_sum_plain(n):
    t0 = perf_counter()
    total = 0
    for x in range(n):
        y = step(x)
        if keep(y):
            total += y
    secs = perf_counter() - t0
    check("plain loop", (total,), (_expected_sum(n),))
    return {"secs": secs}


def run_sum_reflux(n):
    t0 = perf_counter()
    result = Pipeline(Extractor(range(n)) >> Transformer(step) >> Filter(keep)
                      >> Loader.sum(name="total")).run(timeout=600)
    secs = perf_counter() - t0
    check("reflux Loader.sum()", (result.results["total"],), (_expected_sum(n),))
    return {"secs": secs}


def _expected_sum(n):
    return sum(y for y in (x * 2 + 1 for x in range(n)) if y % 3 == 0)


# ---------------------------------------------------------------------- sinks

def _sink_rows(path):
    """(row id, label, the Loader, what its result must be for n items) of every sink measured."""
    import operator

    seen = []
    return [
        ("sink_count", "Loader.count()", lambda: Loader.count(name="out"), lambda n: n),
        ("sink_sum", "Loader.sum()", lambda: Loader.sum(name="out"), lambda n: n * (n - 1) // 2),
        ("sink_reduce", "Loader.reduce(operator.add, 0)", lambda: Loader.reduce(operator.add, 0, name="out"),
         lambda n: n * (n - 1) // 2),
        ("sink_collect", "Loader.collect()", lambda: Loader.collect(name="out"), lambda n: list(range(n))),
        ("sink_batch", "Loader(fn, batch=True): fn(batch) per batch", lambda: Loader(len, batch=True, name="out"),
         None),
        ("sink_callback", "Loader.to_callback(list.append)", lambda: (seen.clear(), Loader.to_callback(
            seen.append, name="out"))[1], lambda n: n),
        ("sink_item", "Loader(fn): fn(item) per item, returning None", lambda: Loader(_nothing, name="out"), None),
        ("sink_file", "Loader.to_file(path): a line per item", lambda: Loader.to_file(path, name="out"), lambda n: n),
    ]


def _nothing(x):
    return None


def run_sink_plain(n):
    t0 = perf_counter()
    total = 0
    for x in range(n):
        total += x
    secs = perf_counter() - t0
    check("plain loop", (total,), (n * (n - 1) // 2,))
    return {"secs": secs}


def run_sink(n, make, want):
    loader = make()
    t0 = perf_counter()
    result = Pipeline(Extractor(range(n)) >> loader).run(timeout=600)
    secs = perf_counter() - t0
    got = result.results["out"]
    if want is not None:
        check(loader.name, (got,), (want(n),))
    if result.loaded != n:
        raise AssertionError(f"{loader.name}: loaded {result.loaded} of {n}")
    return {"secs": secs}


# ---------------------------------------------------------------------- report

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--only", default="async,batched,sum,sinks")
    ap.add_argument("--async-items", type=int, default=10_000)
    ap.add_argument("--floats", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.async_items, args.floats, args.items = 1, 500, 20_000, 50_000
    bench = Bench(args)
    only = set(args.only.split(","))
    if "async" in only:
        n = args.async_items
        bench.measure("async", "async_reflux", "reflux Transformer(async, concurrency=100)", n,
                      partial(run_async_reflux, n, 100), reflux=True)
        bench.measure("async", "async_threads", "ThreadPoolExecutor(100), time.sleep", n,
                      partial(run_async_threads, n, 100))
        bench.measure("async", "async_gather", "asyncio.gather + Semaphore(100)", n,
                      partial(run_async_gather, n, 100))
    if "batched" in only:
        values = np.random.default_rng(1).random(args.floats).tolist()
        records = np.random.default_rng(1).random(args.floats)
        bench.measure("batched", "batched_records", "reflux Transformer(np.sqrt, batched=True), float records "
                      f"in chunks of {CHUNK:,}", len(records), partial(run_batched_records, records, CHUNK),
                      reflux=True)
        bench.measure("batched", "batched_yes", "reflux Transformer(np.sqrt over the batch, batched=True), floats",
                      len(values), partial(run_batched, values, True), reflux=True)
        bench.measure("batched", "batched_no", "reflux Transformer(np.sqrt), per item", len(values),
                      partial(run_batched, values, False), reflux=True)
    if "sum" in only:
        bench.measure("sum", "sum_plain", "plain loop: x*2+1, x%3==0, total +=", args.items,
                      partial(run_sum_plain, args.items))
        bench.measure("sum", "sum_reflux", "reflux E>>T>>F>>Loader.sum()", args.items,
                      partial(run_sum_reflux, args.items), reflux=True)
    tmp = tempfile.TemporaryDirectory()
    if "sinks" in only:
        n = args.items
        bench.measure("sinks", "sink_plain", "plain loop: total += x", n, partial(run_sink_plain, n))
        for rid, label, make, want in _sink_rows(os.path.join(tmp.name, "out.txt")):
            bench.measure("sinks", rid, label, n, partial(run_sink, n, make, want), reflux=True)
    bench.run_rounds()
    tmp.cleanup()
    rows = list(bench.rows.values())
    for section, base, title in (("async", None, f"async calls ({args.async_items:,} items x {DELAY * 1000:.0f} ms)"),
                                 ("batched", "batched_no", f"a NumPy stage ({args.floats:,} floats)"),
                                 ("sum", "sum_plain", f"the overhead pipeline into Loader.sum() ({args.items:,} ints)"),
                                 ("sinks", "sink_plain", f"Extractor >> each sink ({args.items:,} ints)")):
        part = [r for r in rows if r["section"] == section]
        if section == "async":
            best = max((r for r in part if r["id"] != "async_reflux" and "median" in r),
                       key=lambda r: r["rate"], default=None)
            base = best["id"] if best else None

        def cells(row, base=base):
            return [f"{row['items']:,}", _fmt_rate(row["rate"]),
                    "-" if row["id"] == base else _fmt_ratio(bench.ratio(row["id"], base) if base else None),
                    _runs(row)]

        if not part:
            continue
        label = "vs the best peer" if section == "async" else "vs per item" if section == "batched" else "vs plain loop"
        print_table(bench, title, part, ["items", "items/s", label, "runs"], cells)
    bench.say()
    bench.say("== targets (measured in this run)")
    best_peer = max((bench.get(r) or 0) for r in ("async_threads", "async_gather")) or None
    goals = [("async: reflux vs the best of ThreadPoolExecutor / gather",
              None if not best_peer or bench.get("async_reflux") is None else bench.get("async_reflux") / best_peer,
              0.9),
             ("batched: batched=True over float records vs per item", bench.ratio("batched_records", "batched_no"),
              10.0),
             ("sum: Loader.sum() pipeline vs plain loop", bench.ratio("sum_reflux", "sum_plain"), 0.9)]
    for label, value, goal in goals:
        verdict = "n/a" if value is None else ("PASS" if value >= goal else "MISS")
        bench.say(f"{label:<60} {'-' if value is None else f'{value:.2f}x':>8}  goal >= {goal:g}x  {verdict}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    bench.say(f"\nruns flagged noisy: {sum(r['noisy'] for r in rows)}"
              + ("" if load is None else f"; load average at the end {load:.2f}"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "streaming", "meta": run_meta(),
                       "rows": {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in bench.rows.items()}},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
