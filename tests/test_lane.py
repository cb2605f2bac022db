"""The Python lane of the worker pool (GIL builds, 2+ workers): units that hold the GIL run on
one worker at a time, forwarded to the lane's holder, without losing, duplicating or
starving any of them; a holder stuck in one long call is taken over.

Stress: many Python nodes on 4 workers with per-source sequence numbers and sums.
"""
from __future__ import annotations

import sys
import threading

import pytest
from support import wait_until

from reflux import Balancer, Extractor, Funnel, Loader, Pipeline, Transformer
from reflux.run.pool import gil_enabled

HANG = 60.0
needs_gil = pytest.mark.skipif(not gil_enabled(), reason="the Python lane is on only with the GIL")


@needs_gil
@pytest.mark.parametrize("workers", [2, 4])
def test_many_python_branches_keep_order_and_sums_through_the_lane(workers: int) -> None:
    """4 sources through 3 Python stages each (unfused: every stage is a lane unit of its
    own), merged: every item arrives once, each source's items in order."""
    n = 20_000

    def numbered(s: int) -> list[tuple[int, int]]:
        return [(s, i) for i in range(n)]

    sources = [Extractor(numbered(s), name=f"src{s}", batch_size=64) for s in range(4)]
    stages = [Transformer(lambda x: x, name=f"a{s}", fuse=False) >> Transformer(lambda x: x, name=f"b{s}", fuse=False)
              >> Transformer(lambda x: (x[0], x[1], x[0] * n + x[1]), name=f"c{s}", fuse=False)
              for s in range(4)]
    seen: dict[int, list[int]] = {s: [] for s in range(4)}
    total = [0]

    def load(item: tuple[int, int, int]) -> None:
        seen[item[0]].append(item[1])
        total[0] += item[2]

    p = Pipeline(workers=workers)
    for src, stage in zip(sources, stages):
        p.add(src >> stage)
    merge = Funnel(name="merge")
    p.connect([st.tails[0] for st in stages], merge)
    p.add(merge >> Loader(load, name="sink"))
    p.start()
    rt = p._runtime
    assert rt is not None and rt.lanes
    result = p.join(HANG)
    result.check_accounting()
    for s in range(4):
        assert seen[s] == list(range(n)), f"source {s}: items lost, doubled or reordered"
    assert total[0] == sum(s * n + i for s in range(4) for i in range(n))
    wall = result.wall_time
    assert wall is not None and wall.lane and wall.steps > 0
    assert wall.lane_seconds <= wall.step_seconds + 1e-6


@needs_gil
def test_a_holder_stuck_in_a_long_call_is_taken_over() -> None:
    """While one lane unit sleeps for seconds in its function, another branch of Python
    units still runs to its end (the lane is taken over after its patience)."""
    release = threading.Event()
    fast_done = threading.Event()

    def slow(x: int) -> int:
        if x == 0:
            release.wait(HANG)  # a call that holds the lane (but not the GIL) for long
        return x

    def fast_sink(x: int) -> None:
        if x == 999:
            fast_done.set()

    p = Pipeline(workers=2)
    p.add(Extractor(range(10), name="slow_src") >> Transformer(slow, name="slow") >> Loader(lambda x: None))
    p.add(Extractor(range(1000), name="fast_src") >> Transformer(lambda x: x + 1, name="t1", fuse=False)
          >> Transformer(lambda x: x - 1, name="t2", fuse=False) >> Loader(fast_sink, name="fast"))
    p.start()
    try:
        assert fast_done.wait(20), "the fast branch did not finish while a lane unit was stuck"
    finally:
        release.set()
    result = p.join(HANG)
    assert result.status == "completed" and result.loaded == 1010
    result.check_accounting()


@needs_gil
def test_replicas_run_off_the_lane_in_parallel() -> None:
    """Replicas (parallel=N) say their function releases the GIL: they run on any worker,
    so two replicas waiting in their calls overlap (both calls are in flight at once)."""
    lock = threading.Lock()
    inside = [0, 0]  # calls in flight now, most at once
    both = threading.Event()

    def io(x: int) -> int:
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
            if inside[0] == 2:
                both.set()
        both.wait(5)  # waits (GIL released) until the other replica is in a call too
        with lock:
            inside[0] -= 1
        return x

    p = Pipeline(Extractor(range(8), batch_size=1) >> Transformer(io, parallel=2, name="io")
                 >> Loader.to_list(name="out"), workers=2)
    result = p.run(timeout=HANG)
    assert sorted(result.results["out"]) == list(range(8))
    assert inside[1] == 2, "the two replicas never ran at the same time"


def test_one_worker_has_no_lane_and_the_wall_time_adds_up() -> None:
    p = Pipeline(Extractor(range(50_000)) >> Balancer() >> [Transformer(abs, name="a"), Transformer(abs, name="b")]
                 >> Loader.to_list(name="out"), workers=1)
    result = p.run(timeout=HANG)
    wall = result.wall_time
    assert wall is not None and not wall.lane and wall.workers == 1
    assert wall.steps > 0 and wall.step_seconds > 0 and 0 <= wall.node_seconds
    assert wall.bottleneck in result.nodes and 0 < wall.bottleneck_busy <= 1
    assert abs(wall.scheduler_seconds - max(0.0, wall.step_seconds - wall.node_seconds)) < 1e-9
    text = result.summary()
    assert "1 workers (no Python lane)" in text and f"bottleneck: {wall.bottleneck}" in text
    assert p.stats().wall_time is not None and "bottleneck" in p.stats().table()


@needs_gil
def test_live_stats_report_the_wall_time_while_running() -> None:
    gate = threading.Event()
    p = Pipeline(Extractor(range(100_000)) >> Transformer(lambda x: x, name="t")
                 >> Loader(lambda x: gate.wait(HANG) if x == 50_000 else None, name="sink"), workers=2)
    p.start()
    try:
        wait_until(lambda: p.stats()["sink"].received > 50_000, "the run to reach the gate")
        live = p.stats()
        # the counters of the step in progress count once it ends; the nodes' time counts already
        assert live.wall_time is not None and live.wall_time.lane and live.wall_time.node_seconds > 0
        assert live.as_dict()["wall_time"]["workers"] == 2
    finally:
        gate.set()
    p.join(HANG)


def test_gil_enabled_matches_the_interpreter() -> None:
    check = getattr(sys, "_is_gil_enabled", None)
    assert gil_enabled() == (True if check is None else check())


def test_plugin_calls_count_their_time_without_the_gil() -> None:
    import numpy as np
    from reflux_core._testplugins import RECORD, NewtonSqrt
    from reflux_core.transform import gil_wanted, plugin_nogil_ns, run_transform

    data = np.zeros(50_000, dtype=RECORD)
    data["x"] = np.arange(50_000, dtype=np.float64)
    out = np.empty_like(data)
    before = plugin_nogil_ns()
    n_out, error, _ = run_transform(NewtonSqrt(64).__reflux_plugin__, data, out)
    assert (n_out, error) == (50_000, 0)
    assert plugin_nogil_ns() > before
    assert gil_wanted() == 0  # nobody is between a plug-in's work and the GIL now


@needs_gil
def test_the_lane_hands_the_gil_to_plugin_replicas_only_while_they_work() -> None:
    """Python work beside a compiled plug-in on two replicas (outside the lane): while the
    plug-in does a large share of the work, the lane units take short steps and hand the GIL
    over between them; a pipeline without such replicas never does.  Results stay exact."""
    import numpy as np
    from reflux_core._testplugins import RECORD, NewtonSqrt

    from reflux.run.base import BATCH_BUDGET
    from reflux.run.pool import LANE_YIELD_BUDGET

    data = np.zeros(600_000, dtype=RECORD)
    data["id"] = np.arange(600_000)
    data["x"] = np.arange(600_000, dtype=np.float64)
    chunks = [data[i:i + 8192] for i in range(0, 600_000, 8192)]
    budgets: list[float] = []
    counted = [0]
    holder: list[Pipeline] = []

    def step(x: int) -> int:
        if x % 5_000 == 0 and holder and holder[0]._runtime is not None:
            budgets.append(next(u.budget for u in holder[0]._runtime.units if u.in_lane))
        acc = 0
        for i in range(30):
            acc += x ^ i
        return acc

    def count(chunk: object) -> None:
        counted[0] += len(chunk)  # type: ignore[arg-type]

    p = Pipeline(Extractor(range(100_000), name="ints") >> Transformer(step, name="python") >> Loader.sum(name="sum"),
                 Extractor(chunks, name="records") >> Transformer(NewtonSqrt(400), parallel=2, name="newton")
                 >> Loader(count, name="count"), workers=2)
    holder.append(p)
    result = p.run(timeout=HANG)
    result.check_accounting()
    assert counted[0] == 600_000
    assert result.results["sum"] == sum(step(x) for x in range(100_000))
    assert LANE_YIELD_BUDGET in budgets, budgets  # handed over while the plug-in worked

    plain: list[float] = []

    def watch(x: int) -> int:
        if x % 5_000 == 0 and holder[1]._runtime is not None:
            plain.append(next(u.budget for u in holder[1]._runtime.units if u.in_lane))
        return x

    q = Pipeline(Extractor(range(50_000)) >> Transformer(watch, fuse=False) >> Loader.sum(), workers=2)
    holder.append(q)
    q.run(timeout=HANG)
    assert plain and set(plain) == {BATCH_BUDGET}
