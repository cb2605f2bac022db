"""Shared state of the streaming features, under real threads: what the GIL used to
serialise, checked on every build (and, in the free-threaded leg of CI, with the GIL off).

* events: replicas emitting at once count every event by level, and the run
  keeps the first ``max_events`` and counts the rest, exactly; threads emitting
  through one context lose no count; an async node's calls count theirs;
* leaky inputs fed by several producers account for every item
  (delivered + dropped == sent);
* one built-in sink shared by Loaders in several threads adds up exactly;
* pausing and resuming a node from another thread while it runs loses nothing;
* checkpoint barriers with replicas and sources in threads of their own: the
  run's output is exact, and each replica's own state is recorded and resumed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from reflux import (Checkpoint, CheckpointError, Extractor, Loader, NodeError, Pipeline, Transformer,
                    emit)
from reflux.checkpoint.snapshot import Snapshot
from reflux.checkpoint.store import CheckpointStore
from reflux.describe.sinks import CountSink, FileSink, ListSink, ReduceSink, SumSink
from reflux.logic.base import NodeContext
from reflux.result import Event, NodeStats

from support import WATCHDOG, start  # noqa: E402


@pytest.fixture
def quiet_reflux_logger():
    """Events go to the "reflux" logger too: keep tens of thousands of them off the output."""
    log = logging.getLogger("reflux")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    yield
    log.setLevel(level)


# --------------------------------------------------------------------------- events


def emits_twice(x: int) -> int:
    emit("info", "seen", x=x)
    if x % 3 == 0:
        emit("warning", "a multiple of three", x=x)
    return x


def test_replicas_emitting_at_once_count_and_keep_every_event_exactly(quiet_reflux_logger, n=30_000):
    warnings = len(range(0, n, 3))
    p = Pipeline(Extractor(range(n), batch_size=64) >> Transformer(emits_twice, parallel=4, name="t")
                 >> Loader.count(name="out"), max_events=500)
    p.start()
    # read the live counters while the replicas add levels and counts
    live = 0
    while p.running:
        live = max(live, sum(p.stats()["t"].events.values()))
    result = p.join(WATCHDOG)
    assert result.results["out"] == n
    assert result["t"].events == {"info": n, "warning": warnings}
    assert len(result.events) == 500 and result.events_not_kept == n + warnings - 500
    assert live <= n + warnings
    result.check_accounting()


def test_threads_emitting_through_one_context_lose_no_count(quiet_reflux_logger, threads=4, m=20_000):
    ctx = NodeContext(NodeStats("shared", "Transformer"))
    go = threading.Barrier(threads)

    def emit_many(level: str) -> None:
        go.wait()
        for i in range(m):
            ctx.emit(Event("shared", level, "event", {"i": i}))

    workers = [start(emit_many, "info" if k % 2 else "error", name=f"emitter-{k}") for k in range(threads)]
    for w in workers:
        w.finish()
        assert w.error is None, w.error
    assert ctx.stats.events == {"info": threads // 2 * m, "error": (threads + 1) // 2 * m}


async def emits_async(x: int) -> int:
    emit("info", "from the loop", x=x)
    return x


def test_an_async_nodes_calls_emit_into_its_counters(quiet_reflux_logger, n=2000):
    result = Pipeline(Extractor(range(n)) >> Transformer(emits_async, concurrency=8, name="a")
                      >> Loader.count(name="out")).run(timeout=WATCHDOG)
    assert result.results["out"] == n
    assert result["a"].events == {"info": n} and len(result.events) == 1000
    assert result.events_not_kept == n - 1000 and {e.node for e in result.events} == {"a"}


# --------------------------------------------------------------------------- leaky inputs


def slow_identity(x: int) -> int:
    if x % 50 == 0:
        time.sleep(0.0005)  # the consumer falls behind: the input overflows
    return x


@pytest.mark.parametrize("how", ["drop_oldest", "drop_newest"])
@pytest.mark.parametrize("replicas", [1, 2])
def test_several_producers_into_a_leaky_input_account_for_every_item(how, replicas, n=20_000):
    a = Extractor(range(0, n), name="a", batch_size=32)
    b = Extractor(range(n, 2 * n), name="b", batch_size=32)
    c = Extractor(range(2 * n, 3 * n), name="c", batch_size=32)
    t = Transformer(slow_identity, name="t", overflow=how, capacity=16, parallel=replicas)
    out = Loader.collect(name="out")
    result = Pipeline(a >> t, b >> t, c >> t, t >> out).run(timeout=WATCHDOG)
    result.check_accounting()
    got = result.results["out"]
    st = result["t"]
    sent = sum(result[s].emitted for s in ("a", "b", "c"))
    assert sent == 3 * n
    assert len(set(got)) == len(got) and set(got) <= set(range(3 * n))  # nothing duplicated or made up
    assert st.received == sent and st.emitted == len(got)
    assert len(got) + st.overflowed == sent  # delivered + dropped == sent
    assert st.overflowed > 0


# --------------------------------------------------------------------------- shared sinks


def make_sinks(tmp_path: Any) -> dict[str, Any]:
    return {"count": CountSink(), "sum": SumSink(), "reduce": ReduceSink(lambda a, b: a + b, 0),
            "list": ListSink(), "file": FileSink(tmp_path / "lines.txt")}


def test_one_sink_called_from_several_threads_adds_up_exactly(tmp_path, threads=4, batches=3000):
    sinks = make_sinks(tmp_path)
    for sink in sinks.values():
        sink.open()
    go = threading.Barrier(threads)

    def load(k: int) -> None:
        go.wait()
        for i in range(batches):
            batch = [k * batches + i] * 3
            for sink in sinks.values():
                sink(batch)

    workers = [start(load, k, name=f"loader-{k}") for k in range(threads)]
    for w in workers:
        w.finish()
        assert w.error is None, w.error
    for sink in sinks.values():
        sink.close()
    total = 3 * sum(range(threads * batches))
    assert sinks["count"].result() == 3 * threads * batches
    assert sinks["sum"].result() == total and sinks["reduce"].result() == total
    items = sinks["list"].result()
    assert len(items) == 3 * threads * batches and sum(items) == total
    assert all(items[j] == items[j + 1] == items[j + 2] for j in range(0, len(items), 3))  # batches whole
    lines = (tmp_path / "lines.txt").read_text().splitlines()
    assert sinks["file"].result() == len(lines) == 3 * threads * batches
    assert sum(map(int, lines)) == total


def test_a_sink_shared_by_pipelines_running_at_once_adds_up_exactly(n=20_000, pipelines=3):
    count, total = CountSink(), SumSink()
    go = threading.Barrier(pipelines)

    def run(k: int) -> Any:
        # two Loaders of each pipeline share `total`, and every pipeline shares both sinks
        p = Pipeline(Extractor(range(k * n, (k + 1) * n), batch_size=16, name="a")
                     >> Transformer(lambda x: x, name="t") >> Loader(count, name="count"),
                     Extractor(range(k * n, (k + 1) * n), batch_size=16, name="b") >> Loader(total, name="sum"),
                     Extractor(range(k * n, (k + 1) * n), batch_size=16, name="c") >> Loader(total, name="sum2"),
                     name=f"p{k}")
        go.wait()
        return p.run(timeout=WATCHDOG)

    workers = [start(run, k, name=f"pipeline-{k}") for k in range(pipelines)]
    for w in workers:
        w.finish()
        assert w.error is None, w.error
    # the first Loader to open each sink started it from zero; none reset it under another
    assert count.result() == pipelines * n
    assert total.result() == 2 * sum(range(pipelines * n))


# --------------------------------------------------------------------------- per-node pause


def test_pausing_and_resuming_nodes_from_another_thread_loses_nothing(n=50_000):
    t = Transformer(lambda x: x + 1, name="t", parallel=2)
    u = Transformer(lambda x: x * 2, name="u")
    out = Loader.sum(name="out")
    p = Pipeline(Extractor(range(n), batch_size=32) >> t >> u >> out, fuse=False)
    p.start()
    toggles = 0
    while p.running:
        for node in (t, u, "out"):
            p.pause(node)
            time.sleep(0.0002)
            p.resume(node)
            toggles += 1
    result = p.join(WATCHDOG)
    assert toggles > 0 and not p.paused_nodes
    assert result.results["out"] == 2 * sum(range(1, n + 1))
    assert result["t"].received == result["t"].emitted == n
    result.check_accounting()


def endless() -> Any:
    i = 0
    while True:
        yield i
        i += 1


def test_pause_and_resume_racing_leave_each_flag_agreeing_with_its_wakeup(rounds=150):
    # a generator without batch_size: the source runs in a thread of its own and,
    # while paused, waits on the wake-up of the pause that holds it
    p = Pipeline(Extractor(endless(), name="src") >> Transformer(lambda x: x, name="t", fuse=False)
                 >> Loader.count(name="out"))
    p.start()
    rt = p._runtime
    assert rt is not None
    units = [u for u in rt.units if u.head.name == "src"]

    def race(pause: Any, resume: Any) -> None:
        go = threading.Barrier(2)
        a = start(lambda: (go.wait(), pause()), name="pausing")
        b = start(lambda: (go.wait(), resume()), name="resuming")
        for w in (a, b):
            w.finish()
            assert w.error is None, w.error

    for _ in range(rounds):
        race(p.pause, p.resume)
        # paused exactly when the workers' wake-up is clear (else they would spin or never wake)
        assert p.paused == (not rt._resumed.is_set())
        race(lambda: p.pause("src"), lambda: p.resume("src"))
        for u in units:
            assert u.paused == (not u.resumed.is_set())
    p.resume()
    p.resume("src")
    p.stop()
    result = p.join(WATCHDOG)
    assert result.results["out"] == result["src"].emitted > 0
    result.check_accounting()


# --------------------------------------------------------------------------- checkpoints


class CountsItsItems:
    """A stateful function with checkpoint hooks: each replica runs its own copy."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.items = 0
        self.fail_at = fail_at

    def __call__(self, x: int) -> int:
        if x == self.fail_at:
            raise SystemExit(f"stopped at {x}")  # fails the run whatever the policy
        self.items += 1
        return x

    def state(self) -> int:
        return self.items

    def restore(self, state: int) -> None:
        self.items = state


def blocking_source(n: int) -> Any:
    """A source reflux runs in a thread of its own (it may block)."""
    for i in range(n):
        if i % 1000 == 0:
            time.sleep(0.001)
        yield i


def test_barriers_with_replicas_and_threaded_sources_keep_the_output_exact(tmp_path, n=20_000):
    fn = CountsItsItems()
    t = Transformer(fn, name="t", parallel=3)
    out = Loader.sum(name="out")
    a = Extractor(range(n), name="a", batch_size=16)
    b = Extractor(blocking_source(n), name="b")  # a generator without batch_size: a thread of its own
    p = Pipeline(a >> t, b >> t, t >> out, checkpoint=Checkpoint(str(tmp_path / "run.ckpt"), every=700,
                                                                seconds=None))
    result = p.run(timeout=WATCHDOG)
    assert result.results["out"] == 2 * sum(range(n))
    assert result["t"].emitted == 2 * n
    rep = result.checkpoint
    assert rep is not None and rep.taken >= 5
    result.check_accounting()


def test_each_replicas_own_state_is_recorded_and_resumed(tmp_path, n=12_000):
    path = str(tmp_path / "run.ckpt")

    def pipeline(fn: CountsItsItems, parallel: int = 3) -> Pipeline:
        return Pipeline(Extractor(range(n), batch_size=16) >> Transformer(fn, name="t", parallel=parallel)
                        >> Loader.count(name="out"), checkpoint=Checkpoint(path, every=500, seconds=None))

    with pytest.raises(NodeError, match="stopped at 7000"):
        pipeline(CountsItsItems(fail_at=7000)).run(timeout=WATCHDOG)
    with pytest.raises(CheckpointError, match="holds the states of 3 replicas.*now has parallel=2"):
        pipeline(CountsItsItems(), parallel=2).run(timeout=WATCHDOG)
    template = CountsItsItems()
    result = pipeline(template).run(timeout=WATCHDOG)
    resumed = result.checkpoint.resumed_items
    assert 0 < resumed <= 7000 and result.results["out"] == n - resumed
    store = CheckpointStore(path)
    latest = store.latest("pipeline")
    store.close()
    assert latest is not None
    how, states = Snapshot.decode(latest[1], "pipeline").nodes["t"]
    # each replica's copy counted its own items, the ones before the crash restored into it
    assert how == "replicas" and len(states) == 3 and sum(states) == n
    assert template.items == 0  # the node's own object is the replicas' template, never called


def test_one_state_is_not_resumed_into_several_replicas_copies(tmp_path, n=3000):
    def pipeline(parallel: int) -> Pipeline:
        return Pipeline(Extractor(range(n)) >> Transformer(CountsItsItems(), name="t", parallel=parallel)
                        >> Loader.count(name="out"),
                        checkpoint=Checkpoint(str(tmp_path / "run.ckpt"), every=500, seconds=None))

    assert pipeline(1).run(timeout=WATCHDOG).results["out"] == n
    # the one state would be counted once per copy: refused, naming the node
    with pytest.raises(CheckpointError, match="Transformer 't'.*holds 1 state.*now runs 3 such replica"):
        pipeline(3).run(timeout=WATCHDOG)
