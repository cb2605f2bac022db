"""Ray benchmark: reflux's Ray workers against Ray's own ways of running the same work.

Run from the repository root::

    python -m benchmarks.cluster [--quick] [--repeat R] [--json PATH] [--address ADDR]

Everything runs on one Ray session (a local Ray with ``--cpus`` CPUs, 2 by
default, or the cluster ``--address`` names), and every row is timed
*excluding* ``ray.init``, which is measured on its own first (a fresh
interpreter per sample: ``import ray`` and ``ray.init()`` of a local Ray, then
``ray.shutdown()``).  Rows go in rounds, every row once per round, and each
number is the median over the rounds (the 1-minute load average is printed
with each round: the machine may be shared).  Actor start-up is inside the
timing of every row that uses actors.  Before each row Ray is left to settle
(2 s, then until the CPUs are idle, at most 10 s more): a row must not pay for
the processes the previous one leaves behind (Ray Data tears its actor pool
down after its last batch, while the next row starts its actors).

``cpu``     CPU-heavy pure Python: ``--items`` items (20,000), each a loop of
            2,000 iterations: the plain loop; reflux process workers
            (``executor="process", workers=2``); Ray's ``ActorPool`` of 2
            actors over chunks of 1,000 items; Ray Data ``map_batches`` with
            batches of 1,000 (tasks, its default; and on an actor pool of 2,
            ``concurrency=2, num_cpus=0`` with a callable class); reflux
            ``executor="ray", workers=2``.
``arrays``  ``--arrays`` numpy arrays of 1 MiB (2,000) through an identity
            stage and back to the driver, in MB/s: Ray's ``ActorPool`` of 2
            actors (``submit``/``get_next``, two batches in flight per actor,
            batches of 1 and of 16 arrays); reflux ``executor="ray",
            workers=2`` in a pipeline with ``capacity=32`` (each channel holds
            up to 32 arrays, 32 MiB).  Arrays are made as they are needed, so
            the driver never holds them all.

``latency`` what a run pays before and per batch: starting 2 actors (the
            class reflux's nodes use) until each has answered once; a
            round trip at low load: a call to a Ray actor and
            back (``ray.get(actor.f.remote(x))``, one at a time), and one item
            at a time through ``Extractor >> Transformer(executor="ray") >>
            Loader`` (the source sleeps 5 ms between items; each item carries
            its creation time, the Loader takes the difference): medians.

Every row checks what came back (count and sum) and raises if it is wrong.
Ray Data is skipped with a note when it does not import (``pip install
"ray[data]"``).  The targets are printed at the end with PASS/MISS.  Nothing
here is a test: timings are only reported.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

from benchmarks import import_core

import_core("channel")  # the compiled core first (see benchmarks.import_core)
import numpy as np  # noqa: E402

import reflux  # noqa: E402
from reflux import Extractor, Loader, Pipeline, Transformer  # noqa: E402

from benchmarks.pipeline import CpuMonitor  # noqa: E402

#: the /proc/stat reader the benchmarks share
CPU = CpuMonitor()

HEADER = "benchmark"  # first column title; the smoke test looks for the header line
CPU_ITERATIONS = 2000
ARRAY_FLOATS = 256 * 1024  # float32: 1 MiB
MIB = 1024 * 1024
#: seconds of rest before each row (see settle())
SETTLE_PAUSE = 2.0


class BenchmarkError(AssertionError):
    """A row moved the wrong items: its timing means nothing."""


def heavy(x: int) -> int:
    acc = 0
    for i in range(CPU_ITERATIONS):
        acc += x * i
    return acc


HEAVY_PER_ITEM = sum(range(CPU_ITERATIONS))  # heavy(x) == x * HEAVY_PER_ITEM


def identity(x: Any) -> Any:
    return x


def check(label: str, got: Any, want: Any) -> None:
    if got != want:
        raise BenchmarkError(f"{label}: got {got!r}, expected {want!r}")


def make_arrays(n: int) -> Iterator[np.ndarray]:
    for i in range(n):
        yield np.full(ARRAY_FLOATS, i, dtype=np.float32)


class Count:
    """A Loader function: counts items and adds up ``value(item)``."""

    def __init__(self, value: Callable[[Any], float] = lambda x: x) -> None:
        self.value = value
        self.n = 0
        self.total = 0.0

    def __call__(self, x: Any) -> None:
        self.n += 1
        self.total += self.value(x)

    def result(self) -> tuple[int, float]:
        return self.n, self.total


# ====================================================================== ray.init

INIT_CODE = """
import time, sys
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False)
t2 = time.perf_counter()
ray.shutdown()
print(t1 - t0, t2 - t1)
"""


def time_ray_init(cpus: int, samples: int) -> dict[str, Any]:
    """Median seconds of ``import ray`` and of ``ray.init()`` of a local Ray, each in a fresh interpreter."""
    if samples <= 0:
        return {"import": None, "init": None, "samples": []}
    imports, inits = [], []
    for _ in range(samples):
        proc = subprocess.run([sys.executable, "-c", INIT_CODE, str(cpus)], capture_output=True, text=True,
                              timeout=300, cwd=tempfile.gettempdir())
        if proc.returncode != 0:
            raise BenchmarkError(f"ray.init in a fresh interpreter failed:\n{proc.stderr[-2000:]}")
        a, b = map(float, proc.stdout.split()[-2:])
        imports.append(a)
        inits.append(b)
    return {"import": statistics.median(imports), "init": statistics.median(inits), "samples": inits}


# ====================================================================== rows: CPU-heavy


def run_plain(n: int) -> float:
    t0 = perf_counter()
    total = 0
    for x in range(n):
        total += heavy(x)
    secs = perf_counter() - t0
    check("plain loop", total, HEAVY_PER_ITEM * (n * (n - 1) // 2))
    return secs


def run_reflux(n: int, **kw: Any) -> float:
    sink = Count()
    t0 = perf_counter()
    r = Pipeline(Extractor(range(n)) >> Transformer(heavy, **kw) >> Loader(sink, name="sum")).run()
    secs = perf_counter() - t0
    check(f"reflux {kw}", r.results["sum"], (n, float(HEAVY_PER_ITEM * (n * (n - 1) // 2))))
    return secs


def run_actor_pool(n: int, chunk: int = 1000) -> float:
    import ray
    from ray.util import ActorPool

    @ray.remote
    class Heavy:
        def run(self, xs: list[int]) -> list[int]:
            return [heavy(x) for x in xs]

    t0 = perf_counter()
    actors = [Heavy.remote() for _ in range(2)]
    pool = ActorPool(actors)
    chunks = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
    count = total = 0
    for ys in pool.map(lambda a, xs: a.run.remote(xs), chunks):
        count += len(ys)
        total += sum(ys)
    secs = perf_counter() - t0
    for a in actors:
        ray.kill(a)
    check("ActorPool", (count, total), (n, HEAVY_PER_ITEM * (n * (n - 1) // 2)))
    return secs


class HeavyBatch:
    """Ray Data's callable-class form of the batch function (runs on an actor pool)."""

    def __call__(self, b: dict[str, Any]) -> dict[str, Any]:
        return {"y": np.array([heavy(int(x)) for x in b["id"]], dtype=np.int64)}


def run_ray_data(n: int, batch: int = 1000, actors: int = 0) -> float:
    """Ray Data ``map_batches``: tasks (its default), or with ``actors`` an actor pool of that size."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    def batch_fn(b: dict[str, Any]) -> dict[str, Any]:
        return {"y": np.array([heavy(int(x)) for x in b["id"]], dtype=np.int64)}

    t0 = perf_counter()
    count = total = 0
    ds = ray.data.range(n)
    # no CPU held per actor, as reflux's actors by default: with a CPU each, the actors hold
    # every CPU of a 2-CPU Ray (or of 2 one-CPU machines) and Ray Data's read tasks never run
    ds = (ds.map_batches(HeavyBatch, batch_size=batch, concurrency=actors, num_cpus=0) if actors
          else ds.map_batches(batch_fn, batch_size=batch))
    for b in ds.iter_batches(batch_size=None):
        count += len(b["y"])
        total += int(b["y"].sum())
    secs = perf_counter() - t0
    check("Ray Data", (count, total), (n, HEAVY_PER_ITEM * (n * (n - 1) // 2)))
    return secs


# ====================================================================== rows: arrays


def array_sum(n: int) -> tuple[int, float]:
    return n, float(n * (n - 1) // 2)


def run_arrays_actor_pool(n: int, chunk: int) -> float:
    import ray
    from ray.util import ActorPool

    @ray.remote
    class Identity:
        def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
            return arrays

    t0 = perf_counter()
    actors = [Identity.remote() for _ in range(2)]
    pool = ActorPool(actors)
    count, total = 0, 0.0
    in_flight, limit = 0, 2 * len(actors)  # as many batches in flight as reflux allows

    def take() -> None:
        nonlocal count, total, in_flight
        for a in pool.get_next():
            count += 1
            total += float(a[0])
        in_flight -= 1

    source = make_arrays(n)
    while True:
        batch = list(itertools.islice(source, chunk))
        if not batch:
            break
        while in_flight >= limit:
            take()
        pool.submit(lambda actor, arrays: actor.run.remote(arrays), batch)
        in_flight += 1
    while in_flight:
        take()
    secs = perf_counter() - t0
    for a in actors:
        ray.kill(a)
    check(f"ActorPool arrays x{chunk}", (count, total), array_sum(n))
    return secs


def run_arrays_reflux(n: int) -> float:
    sink = Count(lambda a: float(a[0]))
    t0 = perf_counter()
    # capacity 32: a channel holds up to `capacity` items, so the default (1,024) would let the
    # source run 1 GiB of arrays ahead of the Ray node (measured here: about 1.5x slower)
    r = Pipeline(Extractor(_ArraySource(n), batch_size=16)
                 >> Transformer(identity, executor="ray", workers=2) >> Loader(sink, name="sum"), capacity=32).run()
    secs = perf_counter() - t0
    check("reflux arrays", r.results["sum"], array_sum(n))
    return secs


class _ArraySource:
    """A generator function making ``n`` arrays (an Extractor calls it once)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> Iterator[np.ndarray]:
        yield from make_arrays(self.n)


# ====================================================================== rows: latency


def run_call_latency(calls: int) -> float:
    """Median seconds of one actor call and back, one at a time (actor start-up excluded)."""
    import ray

    @ray.remote
    class Echo:
        def f(self, x: Any) -> Any:
            return x

    a = Echo.remote()
    ray.get(a.f.remote(0))
    times = []
    for i in range(calls):
        t0 = perf_counter()
        check("actor call", ray.get(a.f.remote(i)), i)
        times.append(perf_counter() - t0)
    ray.kill(a)
    return statistics.median(times)


def run_actor_start(n: int = 2) -> float:
    """Seconds to start ``n`` actors of the node class reflux uses and have each answer once."""
    import ray

    from reflux.run.ray.actor import RefluxActor

    cls = ray.remote(RefluxActor)
    t0 = perf_counter()
    actors = [cls.remote("benchmark", identity, {"flat": False, "retries": 0}) for _ in range(n)]
    infos = ray.get([a.info.remote() for a in actors])
    secs = perf_counter() - t0
    for a in actors:
        ray.kill(a)
    check("actor start", len({pid for _, _, pid, _ in infos}), n)
    return secs


def run_item_latency(items: int, gap: float = 0.005) -> float:
    """Median seconds from an item's creation to the Loader, one item at a time through a Ray node."""
    import threading

    lat: list[float] = []
    warm = threading.Event()

    def source() -> Iterator[float | None]:
        yield None  # a first item, to time nothing before the actor runs
        warm.wait(120)
        for _ in range(items):
            time.sleep(gap)
            yield perf_counter()

    def load(t: float | None) -> None:
        if t is None:
            warm.set()
        else:
            lat.append(perf_counter() - t)

    r = Pipeline(Extractor(source) >> Transformer(identity, executor="ray", workers=1) >> Loader(load)).run()
    check("reflux latency", (r.loaded, len(lat)), (items + 1, items))
    return statistics.median(lat)


# ====================================================================== rounds and report


class Row:
    def __init__(self, rid: str, section: str, label: str, units: float, unit: str, run: Callable[[], float]):
        self.rid, self.section, self.label = rid, section, label
        self.units, self.unit, self.run = units, unit, run
        self.samples: list[float] = []
        self.skipped: str | None = None

    @property
    def secs(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def rate(self) -> float | None:
        s = self.secs
        return None if s is None else self.units / s


def build_rows(args: argparse.Namespace, notes: list[str]) -> list[Row]:
    n, m = args.items, args.arrays
    rows = [
        Row("plain", "cpu", f"plain loop ({CPU_ITERATIONS:,} iterations per item)", n, "items/s",
            lambda: run_plain(n)),
        Row("process", "cpu", 'reflux executor="process", workers=2', n, "items/s",
            lambda: run_reflux(n, executor="process", workers=2)),
        Row("actorpool", "cpu", "Ray ActorPool(2), chunks of 1,000", n, "items/s", lambda: run_actor_pool(n)),
        Row("raydata", "cpu", "Ray Data map_batches, batches of 1,000", n, "items/s", lambda: run_ray_data(n)),
        Row("raydata_actors", "cpu", "  the same on an actor pool of 2", n, "items/s",
            lambda: run_ray_data(n, actors=2)),
        Row("reflux_ray", "cpu", 'reflux executor="ray", workers=2', n, "items/s",
            lambda: run_reflux(n, executor="ray", workers=2)),
        Row("arrays_pool1", "arrays", "Ray ActorPool(2), 1 array per call", m * ARRAY_FLOATS * 4 / 1e6, "MB/s",
            lambda: run_arrays_actor_pool(m, 1)),
        Row("arrays_pool16", "arrays", "Ray ActorPool(2), 16 arrays per call", m * ARRAY_FLOATS * 4 / 1e6, "MB/s",
            lambda: run_arrays_actor_pool(m, 16)),
        Row("arrays_reflux", "arrays", 'reflux executor="ray", workers=2, capacity=32', m * ARRAY_FLOATS * 4 / 1e6,
            "MB/s",
            lambda: run_arrays_reflux(m)),
        Row("actor_start", "latency", "start 2 actors, first answer from each", 1, "s", run_actor_start),
        Row("call_latency", "latency", "Ray actor call and back, one at a time", 1, "s",
            lambda: run_call_latency(args.latency_items)),
        Row("item_latency", "latency", 'one item through E >> T(executor="ray") >> L', 1, "s",
            lambda: run_item_latency(args.latency_items)),
    ]
    try:
        import ray.data  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure skips the peer
        why = f"skipped: Ray Data does not import ({type(exc).__name__}); pip install \"ray[data]\""
        for row in rows:
            if row.rid.startswith("raydata"):
                row.skipped = why
        notes.append(why)
    return rows


def load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def cpu_busy(span: float = 0.2) -> float | None:
    """Fraction of all CPUs busy over ``span`` seconds (Linux /proc/stat; elsewhere None)."""
    before, t0 = CPU.snapshot(), perf_counter()
    if before is None:
        return None
    time.sleep(span)
    after = CPU.snapshot()
    return (after[0] - before[0]) / ((perf_counter() - t0) * (os.cpu_count() or 1))


def settle(pause: float = SETTLE_PAUSE, limit: float = 0.15, max_wait: float = 10.0) -> None:
    """Let Ray settle after a row: its actors' processes exit, and the work a row
    leaves behind (Ray Data tears down its actor pool after the last batch) must
    not be billed to the next row.  Waits ``pause`` seconds, then until the CPUs
    are idle (below ``limit`` busy in two windows in a row), at most ``max_wait``."""
    time.sleep(pause)
    deadline, calm = time.monotonic() + max_wait, 0
    while calm < 2 and time.monotonic() < deadline:
        busy = cpu_busy()
        if busy is None:
            return
        calm = calm + 1 if busy < limit else 0


def run_rounds(rows: list[Row], repeat: int, say: Callable[[str], None], pause: float = SETTLE_PAUSE) -> list[float]:
    loads = []
    for rnd in range(repeat):
        t0 = time.monotonic()
        before = load()
        for row in rows:
            if row.skipped:
                continue
            if pause:
                settle(pause)
            row.samples.append(row.run())
        loads.append(max(before, load()))
        say(f"round {rnd + 1}/{repeat} done in {time.monotonic() - t0:.0f} s (load average {before:.2f} -> "
            f"{load():.2f})")
    return loads


def report(rows: list[Row], init: dict[str, Any], loads: list[float], say: Callable[[str], None]) -> list[dict]:
    by = {r.rid: r for r in rows}

    def ratio(a: str, b: str) -> float | None:
        ra, rb = by[a].rate, by[b].rate
        return None if ra is None or rb is None else ra / rb

    say("")
    if init["samples"]:
        say(f"ray.init (a local Ray, {init.get('cpus')} CPUs, fresh interpreter; median of "
            f"{len(init['samples'])}): {init['init']:.2f} s (samples "
            f"{', '.join(f'{s:.2f}' for s in init['samples'])}); import ray: {init['import']:.2f} s.  "
            "Not included in any row below.")
    else:
        say("ray.init: not measured (--init-samples 0)")
    for section, title, base in (("cpu", "CPU-heavy work", "plain"), ("arrays", "numpy arrays through identity", None),
                                 ("latency", "latency (median)", None)):
        say("")
        say(f"== {title}")
        head = f"{HEADER:<44} {'median s':>9} {'rate':>12}  {'vs plain':>8}  runs"
        say(head)
        say("-" * len(head))
        for r in rows:
            if r.section != section:
                continue
            if r.skipped:
                say(f"{r.label:<44} {r.skipped}")
                continue
            vs = ratio(r.rid, base) if base else None
            if r.unit == "s":  # a latency: the median itself
                say(f"{r.label:<44} {r.secs * 1e3:>7.2f} ms {'':>12}  {'-':>8}  {len(r.samples)}")
                continue
            rate = f"{r.rate / 1e3:,.2f} k/s" if r.unit == "items/s" else f"{r.rate:,.0f} MB/s"
            say(f"{r.label:<44} {r.secs:>9.3f} {rate:>12}  {'-' if vs is None else f'{vs:.2f}x':>8}  "
                f"{len(r.samples)}")
    plain, start = by["plain"].secs, by["actor_start"].secs
    if plain and start and not by["actor_start"].skipped:
        # no run on 2 actors beats this: the work split perfectly over them, after they start
        ceiling = plain / 2 + start
        say("")
        say(f"limit: 2 actors doing half the plain loop each, after the {start * 1e3:.0f} ms they take to start: "
            f"{ceiling:.3f} s, {plain / ceiling:.2f}x the plain loop"
            + (f", {by['raydata'].secs / ceiling:.2f}x Ray Data map_batches" if by["raydata"].secs else "")
            + " (as fast as any actor-based row can be here)")
    best_pool = max((by[k] for k in ("arrays_pool1", "arrays_pool16") if by[k].rate), key=lambda r: r.rate,
                    default=None)
    targets = [
        ("reflux on Ray >= 0.95x ActorPool(2), CPU-heavy", ratio("reflux_ray", "actorpool"), 0.95),
        ("reflux on Ray >= 1.5x Ray Data map_batches (tasks, its default), CPU-heavy",
         ratio("reflux_ray", "raydata"), 1.5),
        ("  the same against Ray Data on an actor pool of 2 (for reference)", ratio("reflux_ray", "raydata_actors"),
         1.5),
        ("reflux on Ray >= 0.9x ActorPool, arrays (the better of its two rows)",
         None if best_pool is None else ratio("arrays_reflux", best_pool.rid), 0.9),
    ]
    say("")
    say(f"== targets (load average during the rounds: {', '.join(f'{x:.2f}' for x in loads)})")
    out = []
    for label, value, want in targets:
        verdict = "n/a" if value is None else ("PASS" if value >= want else "MISS")
        if label.startswith(" "):
            verdict = "ref"  # for reference, not a target
        say(f"{verdict:<5} {label}: {'-' if value is None else f'{value:.2f}x'}")
        out.append({"target": label, "value": value, "want": want, "verdict": verdict})
    if loads and max(loads) >= 1.0:
        say("note: other work was running (load average >= 1 on this many CPUs): ratios are rough")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one round")
    p.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--items", type=int, default=20_000, help="items of the CPU-heavy rows (default 20,000)")
    p.add_argument("--arrays", type=int, default=2_000, help="1 MiB arrays of the array rows (default 2,000)")
    p.add_argument("--latency-items", type=int, default=200, help="round trips of the latency rows (default 200)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--address", default=None, help="use this Ray cluster instead of starting a local one")
    p.add_argument("--init-samples", type=int, default=3,
                   help="fresh-interpreter ray.init samples (default 3; 0: not measured)")
    p.add_argument("--json", default=None, help="also save the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.items, args.arrays, args.latency_items = 1, 400, 40, 20
        args.init_samples = min(args.init_samples, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = os.path.abspath(args.json) if args.json else None

    def say(text: str = "") -> None:
        print(text, flush=True)

    import ray

    say(f"reflux Ray benchmark: Python {sys.version.split()[0]} on {platform.platform()}, {os.cpu_count()} CPUs; "
        f"reflux {reflux.__version__}, ray {ray.__version__}")
    if args.quick:
        say("--quick: a smoke run; sizes are too small for the numbers to mean anything")
    say(f"load average before: {load():.2f}")
    init: dict[str, Any] = {"cpus": args.cpus}
    init.update(time_ray_init(args.cpus, args.init_samples))
    notes: list[str] = []
    # Ray puts the driver's working directory on its workers' sys.path: from the
    # repository root that would be the uncompiled reflux_core/ of the checkout
    os.chdir(tempfile.gettempdir())
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        rows = build_rows(args, notes)
        say(f"rows run in rounds of {len(rows)}; each number is the median over {args.repeat} round(s)")
        loads = run_rounds(rows, args.repeat, say, 0.0 if args.quick else SETTLE_PAUSE)
        targets = report(rows, init, loads, say)
    finally:
        ray.shutdown()
    for note in notes:
        say(f"note: {note}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"ray_init": init, "loads": loads, "targets": targets, "notes": notes,
                       "rows": [{"id": r.rid, "label": r.label, "section": r.section, "samples": r.samples,
                                 "median_secs": r.secs, "rate": r.rate, "unit": r.unit, "skipped": r.skipped}
                                for r in rows]}, f, indent=2)
            f.write("\n")
        say(f"results saved to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
