"""Parallelism on one machine: the demo, the light pipeline and a CPU-heavy process pipeline at
1, 2 and 4 pool workers, against the same work as a plain loop.

Run from the repository root::

    python -m benchmarks.demo [--quick] [--repeat R] [--json PATH] [--only demo,light,cpu,mixed]

``demo``   ``reflux demo``'s pipeline (:func:`reflux.cli.demo.build_demo`) over
           ``--items`` generated events, and :func:`reflux.cli.demo.plain_loop`: the
           same functions (generate, parse, keep known kinds, score, weigh
           purchases, total each window, write JSON lines) in one Python loop.
           Both outputs are checked to be the same windows.
``light``  the overhead pipeline of ``benchmarks.pipeline`` (3,000,000 ints through
           Extractor -> Transformer -> Filter -> Loader) and its plain loop.
``cpu``    20,000 items of CPU-heavy Python through a Transformer with process
           workers (2 processes), and the plain loop.
``mixed``  Python work and nogil work side by side, as where a Cython plug-in does
           the heavy part: 200,000 ints through a Python function (a 40-step
           loop) into ``Loader.sum()``, beside 2,000,000 float records in chunks
           of 8,192 through a compiled plug-in (400 Newton steps per record,
           without the GIL; two replicas, ``parallel=2``) into a counting
           Loader; the plain loop does both in one thread (the plug-in called on
           each chunk directly).

Each reflux row runs at ``Pipeline(workers=1, 2, 4)``; the table shows each
against its plain loop and against the same pipeline with one worker.  Rows
run in rounds (every row once per round) and report medians.  Targets: the
demo with 2 workers at least 1.0x its plain loop; no row below 0.95x its
``workers=1`` rate; where nogil work exists (``mixed``), 2 workers faster than
one.  Nothing here is a test: timings are only reported.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from time import perf_counter

from benchmarks import import_core, run_meta

import_core("channel")  # the compiled core first (see benchmarks.import_core)
from benchmarks.pipeline import (  # noqa: E402
    HEAVY_SUM_PER_ITEM,
    Bench,
    SumSink,
    _fmt_rate,
    _fmt_ratio,
    _runs,
    check,
    expected_light,
    heavy,
    keep,
    print_table,
    run_cpu_plain,
    run_plain,
    step,
)
from reflux import Extractor, Filter, Loader, Pipeline, Transformer  # noqa: E402
from reflux.cli.demo import build_demo, plain_loop  # noqa: E402

WORKERS = (1, 2, 4)


def run_demo_plain(n, out_dir):
    t0 = perf_counter()
    lines = plain_loop(n, Path(out_dir) / "plain.jsonl")
    secs = perf_counter() - t0
    return {"secs": secs, "lines": lines}


def run_demo_reflux(n, out_dir, workers, reference):
    t0 = perf_counter()
    pipeline, sinks = build_demo(n, Path(out_dir))
    pipeline.workers = workers
    result = pipeline.run(timeout=600)
    secs = perf_counter() - t0
    got = result.results[sinks["to_list"].name]
    check(f"demo, {workers} workers", sorted(got), sorted(reference()))
    result.check_accounting()
    return {"secs": secs, "busy": sum(s.busy for s in result)}


def run_light_reflux(n, workers):
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = Pipeline(Extractor(range(n)) >> Transformer(step) >> Filter(keep) >> sink,
                      workers=workers).run(timeout=600)
    secs = perf_counter() - t0
    check(f"light, {workers} workers", result.results["sum"], expected_light(n))
    return {"secs": secs}


def run_cpu_process(n, workers):
    t0 = perf_counter()
    sink = Loader(SumSink(), name="sum")
    result = Pipeline(Extractor(range(n)) >> Transformer(heavy, executor="process", workers=2) >> sink,
                      workers=workers).run(timeout=600)
    secs = perf_counter() - t0
    check(f"cpu, {workers} workers", result.results["sum"], (n, HEAVY_SUM_PER_ITEM * (n * (n - 1) // 2)))
    return {"secs": secs}


MIXED_ROUNDS = 400  # Newton steps per record: about 0.3 µs of nogil work each
MIXED_CHUNK = 8192


def mixed_work(x):
    """The Python side of ``mixed``: a short pure-Python loop."""
    acc = 0
    for i in range(40):
        acc += x ^ i
    return acc


def mixed_records(n):
    import numpy as np
    from reflux_core._testplugins import RECORD
    data = np.zeros(n, dtype=RECORD)
    data["id"] = np.arange(n)
    data["x"] = np.arange(n, dtype=np.float64)
    return [data[i:i + MIXED_CHUNK] for i in range(0, n, MIXED_CHUNK)]


class CountRecords:
    """A Loader counting the records of the chunks it gets."""

    def __init__(self):
        self.n = 0

    def __call__(self, chunk):
        self.n += len(chunk)

    def result(self):
        return self.n


def run_mixed_plain(n_ints, chunks, expected):
    import numpy as np
    from reflux_core._testplugins import NewtonSqrt
    from reflux_core.transform import run_transform
    capsule = NewtonSqrt(MIXED_ROUNDS).__reflux_plugin__
    t0 = perf_counter()
    total = 0
    for x in range(n_ints):
        total += mixed_work(x)
    count = 0
    for chunk in chunks:
        out = np.empty_like(chunk)
        n_out, error, _ = run_transform(capsule, chunk, out)
        assert error == 0
        count += n_out
    secs = perf_counter() - t0
    check("mixed, plain loop", (count, total), (sum(len(c) for c in chunks), expected))
    return {"secs": secs}


def expected_mixed(n_ints):
    return sum(mixed_work(x) for x in range(n_ints))


def run_mixed_reflux(n_ints, chunks, workers, expected):
    from reflux_core._testplugins import NewtonSqrt
    t0 = perf_counter()
    result = Pipeline(Extractor(range(n_ints), name="ints") >> Transformer(mixed_work, name="python")
                      >> Loader.sum(name="sum"),
                      Extractor(chunks, name="records") >> Transformer(NewtonSqrt(MIXED_ROUNDS), parallel=2,
                                                                        name="newton")
                      >> Loader(CountRecords(), name="count"),
                      workers=workers).run(timeout=600)
    secs = perf_counter() - t0
    check(f"mixed, {workers} workers", (result.results["count"], result.results["sum"]),
          (sum(len(c) for c in chunks), expected))
    return {"secs": secs}


def build(bench, out_dir):
    a = bench.args
    sections = set(a.only.split(","))
    if "demo" in sections:
        holder = {}

        def plain():
            sample = run_demo_plain(a.items, out_dir)
            holder["lines"] = sample.pop("lines")
            return sample

        bench.measure("demo", "demo_plain", "plain loop: the demo's functions, one loop", a.items, plain)
        for w in WORKERS:
            bench.measure("demo", f"demo_w{w}", f"reflux demo, workers={w}", a.items,
                          partial(run_demo_reflux, a.items, out_dir, w, lambda: holder["lines"]), reflux=True)
    if "light" in sections:
        bench.measure("light", "light_plain", "plain loop: x*2+1, x%3==0, sum", a.light_items,
                      partial(run_plain, a.light_items))
        for w in WORKERS:
            bench.measure("light", f"light_w{w}", f"reflux E>>T>>F>>L, workers={w}", a.light_items,
                          partial(run_light_reflux, a.light_items, w), reflux=True)
    if "cpu" in sections:
        runs = min(a.repeat, 3)
        bench.measure("cpu", "cpu_plain", "plain loop: CPU-heavy Python", a.cpu_items,
                      partial(run_cpu_plain, a.cpu_items), max_runs=runs)
        if bench.process_executor:
            for w in WORKERS:
                bench.measure("cpu", f"cpu_w{w}", f'reflux E>>T(executor="process", 2 processes)>>L, workers={w}',
                              a.cpu_items, partial(run_cpu_process, a.cpu_items, w), max_runs=runs, reflux=True)
        else:
            bench.note(f"cpu: process workers are not available here ({bench.process_executor_why})")
    if "mixed" in sections:
        n_ints, chunks = a.mixed_items // 10, mixed_records(a.mixed_items)
        expected = expected_mixed(n_ints)
        bench.measure("mixed", "mixed_plain", "plain loop: the Python loop, then the plug-in per chunk",
                      a.mixed_items, partial(run_mixed_plain, n_ints, chunks, expected))
        for w in WORKERS:
            bench.measure("mixed", f"mixed_w{w}", f"reflux, Python beside a plug-in (parallel=2), workers={w}",
                          a.mixed_items, partial(run_mixed_reflux, n_ints, chunks, w, expected), reflux=True)


def report(bench):
    rows = list(bench.rows.values())
    for section, title in (("demo", f"the demo ({bench.args.items:,} events)"),
                           ("light", f"the light pipeline ({bench.args.light_items:,} ints)"),
                           ("cpu", f"CPU-heavy Python with process workers ({bench.args.cpu_items:,} items)"),
                           ("mixed", f"Python beside nogil work ({bench.args.mixed_items:,} records, "
                                     f"{bench.args.mixed_items // 10:,} ints)")):
        part = [r for r in rows if r["section"] == section]
        base = f"{section}_w1"

        def cells(row, base=base, plain=f"{section}_plain"):
            return [f"{row['items']:,}", _fmt_rate(row["rate"]),
                    "-" if row["id"] == plain else _fmt_ratio(bench.ratio(row["id"], plain)),
                    "-" if row["id"] in (plain, base) else _fmt_ratio(bench.ratio(row["id"], base)),
                    _runs(row)]

        print_table(bench, title, part, ["items", "items/s", "vs plain loop", "vs workers=1", "runs"], cells)
    bench.say()
    bench.say("== targets (measured in this run)")
    goals = []
    if "demo_w2" in bench.rows:
        goals.append(("demo, workers=2, vs its plain loop", bench.ratio("demo_w2", "demo_plain"), 1.0))
    for section in ("demo", "light", "cpu", "mixed"):
        for w in WORKERS[1:]:
            rid = f"{section}_w{w}"
            if rid in bench.rows:
                goals.append((f"{section}, workers={w}, vs workers=1", bench.ratio(rid, f"{section}_w1"), 0.95))
    if "mixed_w2" in bench.rows:  # nogil work beside Python: a second worker runs it
        goals.append(("mixed: nogil work, workers=2 vs workers=1", bench.ratio("mixed_w2", "mixed_w1"),
                      1.2))
    for label, value, goal in goals:
        verdict = "n/a" if value is None else ("PASS" if value >= goal else "MISS")
        shown = "-" if value is None else f"{value:.2f}x"
        bench.say(f"{label:<45} {shown:>7}  goal >= {goal:.2f}x  {verdict}")
    if bench.notes:
        bench.say()
        for note in bench.notes:
            bench.say(f"note: {note}")
    noisy = sum(r["noisy"] for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    bench.say()
    bench.say(f"runs flagged noisy (other processes took >= 10% of a core): {noisy}"
              + ("" if load is None else f"; load average at the end {load:.2f}"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per row, median reported (default 5)")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--only", default="demo,light,cpu,mixed", help="comma-separated sections (default: all)")
    ap.add_argument("--items", type=int, default=1_000_000, help="demo events (default 1,000,000)")
    # 3,000,000: a run of about half a second (1,000,000 took 0.15 s, short enough for a
    # hiccup of the machine to move a row by 10%)
    ap.add_argument("--light-items", type=int, default=3_000_000, help="ints of the light pipeline")
    ap.add_argument("--cpu-items", type=int, default=20_000, help="items of the CPU-heavy pipeline")
    ap.add_argument("--mixed-items", type=int, default=2_000_000,
                    help="records of the mixed pipeline (a tenth as many ints)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.items, args.light_items, args.cpu_items = 1, 20_000, 50_000, 400
        args.mixed_items = 40_000
    bench = Bench(args)
    bench.say(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; reflux from "
              f"{os.path.dirname(os.path.dirname(Pipeline.__module__ and sys.modules['reflux'].__file__))}")
    with tempfile.TemporaryDirectory() as out_dir:
        build(bench, out_dir)
        bench.run_rounds()
    report(bench)
    if args.json:
        data = {rid: {k: v for k, v in row.items() if k not in ("samples",)} for rid, row in bench.rows.items()}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "demo", "meta": run_meta(), "rows": data, "notes": bench.notes}, f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
