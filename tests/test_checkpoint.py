"""Checkpoints in-process: barriers in every shape of pipeline, resuming, what is refused.

A run that fails after some checkpoints stands for a crash here (the sinks roll back
what no checkpoint committed); the SIGKILL tests are in test_crash_restart.py.
"""
from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from typing import Any

import pytest

from reflux import (
    Accumulator,
    Balancer,
    Checkpoint,
    CheckpointError,
    Extractor,
    Filter,
    Funnel,
    Loader,
    NodeError,
    Pipeline,
    SPSCChannel,
    Transformer,
    ValidationError,
)
from reflux.checkpoint.store import CheckpointStore
from reflux.connectors.files import write_jsonl
from reflux.connectors.sqlite import write_sqlite


class FailOnce:
    """Passes items on; raises on item ``at`` while ``armed``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.armed = True

    def __call__(self, x: Any) -> Any:
        if self.armed and x == self.at:
            self.armed = False
            raise RuntimeError(f"boom at {x}")
        return x


def table_ids(db: str, table: str = "t") -> list[int]:
    with closing(sqlite3.connect(db)) as conn, conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table}")]


def sink(db: str, **kw: Any) -> Loader:
    return write_sqlite(db, "t", columns=["id"], create="CREATE TABLE IF NOT EXISTS t (id INTEGER)",
                        name=kw.pop("name", "db"), **kw)


def as_rows(x: int) -> tuple[int]:
    return (x,)


def lines(path: Any) -> list[str]:
    with open(path) as f:
        return f.readlines()


def numbers() -> Any:
    """An endless source (a generator function)."""
    yield from itertools.count()


def ck(tmp_path: Any, **kw: Any) -> Checkpoint:
    kw.setdefault("seconds", None)
    return Checkpoint(str(tmp_path / "run.ckpt"), **kw)


# --------------------------------------------------------------------------- recording and resuming

def test_a_run_records_checkpoints_and_a_completed_run_resumes_at_its_end(tmp_path: Any) -> None:
    out = Loader.to_list(name="out")
    p = Pipeline(Extractor(range(10_000)) >> Transformer(lambda x: x + 1, name="inc") >> out,
                 checkpoint=ck(tmp_path, every=1000))
    first = p.run()
    assert first.results["out"] == list(range(1, 10_001))
    rep = first.checkpoint
    assert rep is not None and rep.resumed_from is None and rep.skipped == 0
    assert 9 <= rep.taken <= 11 and rep.last == rep.taken  # about one per 1,000 items, and the last
    first.check_accounting()
    again = p.run()
    assert again.results["out"] == [] and again.extracted == 0
    assert again.checkpoint.resumed_from == rep.last and again.checkpoint.resumed_final
    assert again.checkpoint.resumed_items == 10_000 and again.checkpoint.last == rep.last + 1
    assert "resumed after checkpoint" in again.summary()


def test_a_failed_run_resumes_after_its_last_checkpoint_exactly_once(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")
    fail = FailOnce(at=3_333)
    p = Pipeline(Extractor(range(10_000)) >> Transformer(fail, name="flaky") >> Transformer(as_rows, name="row")
                 >> sink(db), checkpoint=ck(tmp_path, every=500))
    with pytest.raises(NodeError, match="boom at 3333") as info:
        p.run()
    failed = info.value.result
    assert failed.checkpoint.taken >= 5 and failed.checkpoint.last is not None
    committed = table_ids(db)
    # what the last checkpoint committed: a prefix, nothing after it (rolled back)
    assert committed == list(range(len(committed))) and 2_500 <= len(committed) <= 3_333
    result = p.run()
    assert result.checkpoint.resumed_from == failed.checkpoint.last
    assert result.extracted == 10_000 - len(committed)
    assert sorted(table_ids(db)) == list(range(10_000))
    result.check_accounting()


def test_a_stateful_function_resumes_with_its_state(tmp_path: Any) -> None:
    class Numberer:
        """Numbers the items it sees; its count is its state."""

        def open(self) -> None:
            self.count = 0

        def __call__(self, x: int) -> tuple[int, int]:
            self.count += 1
            return (x, self.count)

        def state(self) -> int:
            return self.count

        def restore(self, state: int) -> None:
            self.count = state

    db = str(tmp_path / "out.db")
    fail = FailOnce(at=777)
    p = Pipeline(Extractor(range(2_000)) >> Transformer(fail, name="flaky") >> Transformer(Numberer(), name="n")
                 >> write_sqlite(db, "t", create="CREATE TABLE IF NOT EXISTS t (id INTEGER, n INTEGER)", name="db"),
                 checkpoint=ck(tmp_path, every=100))
    with pytest.raises(NodeError):
        p.run()
    p.run()
    with closing(sqlite3.connect(db)) as conn, conn:
        rows = sorted(conn.execute("SELECT id, n FROM t"))
    assert rows == [(i, i + 1) for i in range(2_000)]  # numbered on from where the checkpoint stood


def test_an_accumulator_resumes_with_its_open_group(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")
    fail = FailOnce(at=1_234)

    def members(group: list[int]) -> list[tuple[int, int, int]]:
        return [(x, group[0], len(group)) for x in group]

    p = Pipeline(Extractor(range(3_000), batch_size=11) >> Transformer(fail, name="flaky")
                 >> Accumulator(7, window=60.0, name="groups") >> Transformer(members, flat=True, name="members")
                 >> write_sqlite(db, "t", create="CREATE TABLE IF NOT EXISTS t (id INTEGER, f INTEGER, n INTEGER)",
                                 name="db"),
                 checkpoint=ck(tmp_path, every=101))
    with pytest.raises(NodeError):
        p.run()
    p.run()
    with closing(sqlite3.connect(db)) as conn, conn:
        rows = sorted(conn.execute("SELECT id, f, n FROM t"))
    # the groups are those of a run that never failed: 7 by 7 from 0, the last one short
    assert rows == [(x, x - x % 7, 7 if x < 2_996 else 4) for x in range(3_000)]


def _list(n: int) -> tuple[Any, dict[str, Any]]:
    return list(range(n)), {}


def _genfunc(n: int) -> tuple[Any, dict[str, Any]]:
    def gen() -> Any:
        yield from range(n)
    return gen, {}


def _callable(n: int) -> tuple[Any, dict[str, Any]]:
    it = iter(range(n))
    return (lambda: next(it, None)), {"sentinel": None}


def _asyncgen(n: int) -> tuple[Any, dict[str, Any]]:
    async def agen() -> Any:
        for i in range(n):
            yield i
    return agen, {}


@pytest.mark.parametrize("make", [_list, _genfunc, _callable, _asyncgen],
                         ids=["list", "generator function", "callable", "async generator function"])
def test_counted_sources_skip_what_a_checkpoint_covered(tmp_path: Any, make: Any) -> None:
    db = str(tmp_path / "out.db")
    n = 1_500

    def build(fail: Any) -> Pipeline:
        src, extra = make(n)  # a new source object each time, as after a restart
        return Pipeline(Extractor(src, name="src", **extra) >> Transformer(fail, name="flaky")
                        >> Transformer(as_rows, name="row") >> sink(db), name="counted",
                        checkpoint=ck(tmp_path, every=100))

    with pytest.raises(NodeError):
        build(FailOnce(at=700)).run()
    build(FailOnce(at=-1)).run()
    assert sorted(table_ids(db)) == list(range(n))


def test_barriers_drain_funnels_balancers_replicas_and_unfused_nodes(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")
    fail = FailOnce(at=4_000)
    a = Extractor(range(0, 5_000), name="a", batch_size=64)
    b = Extractor(iter(range(5_000, 10_000)), name="b")  # a source in a thread of its own
    workers = [Transformer(lambda x: x, name=f"w{i}", fuse=False) for i in range(3)]
    p = Pipeline(name="shapes", checkpoint=ck(tmp_path, every=300))
    p.connect([a, b], Funnel(name="merge"))
    p.chain(p["merge"], Transformer(fail, name="flaky", fuse=False), Balancer(name="split"))
    p.connect(p["split"], workers)
    p.connect(workers, Transformer(as_rows, name="row", parallel=2))
    p.connect(p["row"], sink(db))
    with pytest.raises(NodeError):
        p.run()
    # the thread source's iterator was used up: a restarted program makes a new one
    p2 = Pipeline(name="shapes", checkpoint=ck(tmp_path, every=300))
    a2 = Extractor(range(0, 5_000), name="a", batch_size=64)
    b2 = Extractor(iter(range(5_000, 10_000)), name="b")
    workers2 = [Transformer(lambda x: x, name=f"w{i}", fuse=False) for i in range(3)]
    p2.connect([a2, b2], Funnel(name="merge"))
    p2.chain(p2["merge"], Transformer(lambda x: x, name="flaky", fuse=False), Balancer(name="split"))
    p2.connect(p2["split"], workers2)
    p2.connect(workers2, Transformer(as_rows, name="row", parallel=2))
    p2.connect(p2["row"], sink(db))
    result = p2.run()
    result.check_accounting()
    assert sorted(table_ids(db)) == list(range(10_000))


def test_process_workers_go_through_barriers(tmp_path: Any) -> None:
    import procfns
    db = str(tmp_path / "out.db")
    p = Pipeline(Extractor(range(3_000)) >> Transformer(procfns.square, executor="process", workers=2, name="sq")
                 >> Transformer(as_rows, name="row") >> sink(db), checkpoint=ck(tmp_path, every=250))
    result = p.run()
    assert result.checkpoint.taken >= 5
    assert sorted(table_ids(db)) == sorted(x * x for x in range(3_000))


def inflight_items(state: Any) -> int:
    """Items a checkpoint saved of a process node: its chunks in flight and its fed-back items."""
    import pickle
    how, (chunks, fed_back) = state
    assert how == "inflight"
    return sum(len(pickle.loads(data, buffers=bufs)[2]) for data, bufs in chunks) + len(fed_back)


def record_node_states(monkeypatch: Any, node: str) -> list[Any]:
    """The state of ``node`` in every checkpoint recorded from now on, in order (``None``: none)."""
    from reflux.checkpoint.commit import Checkpointer
    states: list[Any] = []
    real = Checkpointer.record

    def record(self: Any, sources: Any, nodes: Any, pulled: int, final: bool) -> Any:
        states.append(nodes.get(node))
        return real(self, sources, nodes, pulled, final)

    monkeypatch.setattr(Checkpointer, "record", record)
    return states


def through_process_workers(tmp_path: Any, fn: Any, name: str, *, items: int, every: int,
                            fail_at: int) -> Pipeline:
    """range(items) through ``fn`` in 2 worker processes, then a Transformer failing on
    ``fail_at`` (-1: never), into table t of out.db, with a checkpoint every ``every`` items."""
    return Pipeline(Extractor(range(items), name="src")
                    >> Transformer(fn, executor="process", workers=2, name=name)
                    >> Transformer(FailOnce(fail_at), name="fail") >> Transformer(as_rows, name="row")
                    >> sink(str(tmp_path / "out.db")), name=name, checkpoint=ck(tmp_path, every=every))


def test_chunks_in_process_workers_are_saved_at_a_barrier_and_resumed_first(tmp_path: Any,
                                                                            monkeypatch: Any) -> None:
    """A barrier does not wait for the chunks in the workers: the checkpoint keeps them, and a
    resumed run sends them again before anything new, so the table ends in input order."""
    import procfns
    db = str(tmp_path / "out.db")
    states = record_node_states(monkeypatch, "work")

    def build(fail_at: int) -> Pipeline:
        return through_process_workers(tmp_path, procfns.uneven, "work", items=4_000, every=250,
                                       fail_at=fail_at)

    with pytest.raises(NodeError, match="boom at 9000"):
        build(3 * 3_000).run()
    saved = [s for s in states if s is not None]
    assert len(saved) >= len(states) // 2 >= 4  # the source is far ahead of the workers: chunks in flight
    first = len(states)
    result = build(-1).run()
    result.check_accounting()
    k = result.checkpoint.resumed_from
    assert k is not None and 1 <= k <= first
    state = states[k - 1]  # the checkpoint resumed from (numbered from 1 in a fresh file)
    assert state is not None, "the checkpoint resumed from held no chunks (the workers were idle)"
    assert result["work"].resumed == inflight_items(state) > 0
    assert result["work"].received + result["work"].resumed == result["work"].emitted
    assert table_ids(db) == [3 * x for x in range(4_000)]  # every row once, in input order


def test_items_fed_back_in_process_workers_survive_a_resume(tmp_path: Any, monkeypatch: Any) -> None:
    import procfns
    db = str(tmp_path / "out.db")
    states = record_node_states(monkeypatch, "halve")

    def build(fail_at: int) -> Pipeline:
        return through_process_workers(tmp_path, procfns.halve_slowly, "halve", items=3_000, every=200,
                                       fail_at=fail_at)

    with pytest.raises(NodeError):
        build(2_999).run()
    result = build(-1).run()
    result.check_accounting()
    expected = []
    for x in range(3_000):
        while x > 1000 and x % 2 == 0:
            x //= 2
        expected.append(x)
    assert sorted(table_ids(db)) == sorted(expected)
    k = result.checkpoint.resumed_from
    assert k is not None and states[k - 1] is not None
    assert result["halve"].resumed == inflight_items(states[k - 1])


def test_feedback_in_a_fused_source_chain_is_drained_at_a_barrier(tmp_path: Any) -> None:
    from reflux import NeedsMoreWork

    def halve(x: int) -> Any:
        return NeedsMoreWork(x // 2) if x > 1000 and x % 2 == 0 else x

    out = Loader.to_list(name="out")
    p = Pipeline(Extractor(range(5_000), batch_size=50) >> Transformer(halve, name="halve") >> out,
                 checkpoint=ck(tmp_path, every=200))
    result = p.run()
    expected = []
    for x in range(5_000):
        while x > 1000 and x % 2 == 0:
            x //= 2
        expected.append(x)
    assert sorted(result.results["out"]) == sorted(expected)
    assert result.checkpoint.taken >= 10


def test_time_driven_checkpoints(tmp_path: Any) -> None:
    def slow() -> Any:
        for i in range(40):
            time.sleep(0.01)
            yield i

    out = Loader.to_list(name="out")
    result = Pipeline(Extractor(slow) >> out, checkpoint=Checkpoint(str(tmp_path / "c"), every=None,
                                                                    seconds=0.05)).run()
    assert result.results["out"] == list(range(40))
    assert result.checkpoint.taken >= 3


def test_a_barrier_that_cannot_complete_is_skipped_not_waited_for(tmp_path: Any, caplog: Any) -> None:
    gate = threading.Event()

    def blocked() -> Any:
        yield from range(50)
        gate.wait(10)  # a source stuck in a read: it never reaches the barrier
        yield from range(50, 60)

    timer = threading.Timer(1.5, gate.set)
    timer.start()
    try:
        out = Loader.to_list(name="out")
        p = Pipeline([Extractor(blocked, name="stuck"), Extractor(range(5_000), name="busy", batch_size=10)]
                     >> Funnel(name="merge") >> out,
                     checkpoint=Checkpoint(str(tmp_path / "c"), every=100, seconds=None, timeout=0.2))
        result = p.run(timeout=30)
    finally:
        timer.cancel()
    assert sorted(result.results["out"]) == sorted(list(range(60)) + list(range(5_000)))
    assert result.checkpoint.skipped >= 1
    assert "checkpoint skipped: source(s) stuck did not pause" in caplog.text


def test_stop_records_a_checkpoint_and_the_next_run_goes_on(tmp_path: Any) -> None:
    seen: list[int] = []
    enough = threading.Event()

    def load(x: int) -> None:
        seen.append(x)
        if len(seen) == 3_000:
            enough.set()

    def build() -> Pipeline:
        return Pipeline(Extractor(numbers, name="count", batch_size=100) >> Loader(load, name="load"),
                        name="endless", checkpoint=ck(tmp_path, every=1_000))

    p = build().start()
    assert enough.wait(30)
    p.stop()
    first = p.join(30)
    assert first.status == "stopped" and first.checkpoint.last is not None
    stop_at = len(seen)
    assert seen == list(range(stop_at))
    p2 = build().start()
    while len(seen) < stop_at + 500:
        threading.Event().wait(0.01)
    p2.stop()
    p2.join(30)
    assert seen == list(range(len(seen)))  # went on exactly where the first run stopped


def test_abandoning_a_run_rolls_back_to_the_last_checkpoint(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")
    runs: list[Pipeline] = []

    def mark(x: int) -> tuple[int]:
        if x == 2_550:
            runs[0].stop(drain=False)  # half way between two checkpoints
        return (x,)

    def build(src: Any) -> Pipeline:
        return Pipeline(Extractor(src, name="src", batch_size=100) >> Transformer(mark, name="row") >> sink(db),
                        name="abandon", checkpoint=ck(tmp_path, every=1_000))

    p = build(numbers)
    runs.append(p)
    p.start()
    r = p.join(30)
    assert r.status == "stopped" and r.checkpoint.last is not None
    committed = table_ids(db)
    assert committed == list(range(len(committed))) and len(committed) >= 1000  # up to the last checkpoint
    assert r.loaded > len(committed)  # loaded after it, then rolled back
    build(range(6_000)).run()
    assert sorted(table_ids(db)) == list(range(6_000))


# --------------------------------------------------------------------------- the commit order: crashes between steps

def test_crash_after_the_decision_before_the_checkpoint_file(tmp_path: Any, monkeypatch: Any) -> None:
    """The database committed checkpoint k; the file still says k - 1: the database wins."""
    db = str(tmp_path / "out.db")
    files = str(tmp_path / "o.jsonl")
    real = CheckpointStore.save
    calls = itertools.count()

    def save(self: Any, *a: Any, **k: Any) -> None:
        if next(calls) == 3:
            raise OSError("disk gone (the process died here)")
        real(self, *a, **k)

    def build() -> Pipeline:
        from reflux import Broadcast
        return Pipeline(Extractor(range(2_000), batch_size=50) >> Broadcast(name="both")
                        >> [Transformer(as_rows, name="row") >> sink(db),
                            write_jsonl(files, roll_items=300, name="files")],
                        name="order", checkpoint=ck(tmp_path, every=200))

    monkeypatch.setattr(CheckpointStore, "save", save)
    with pytest.raises(CheckpointError, match="could not be written"):
        build().run()
    monkeypatch.setattr(CheckpointStore, "save", real)
    with closing(sqlite3.connect(db)) as conn, conn:
        marker = conn.execute("SELECT checkpoint FROM reflux_checkpoints").fetchone()[0]
    assert marker == 4  # the fourth checkpoint was decided before its file write failed
    result = build().run()
    assert result.checkpoint.resumed_from == 4
    assert sorted(table_ids(db)) == list(range(2_000))
    written = [json.loads(line) for f in sorted(os.listdir(tmp_path)) if f.startswith("o-")
               for line in lines(tmp_path / f)]
    assert sorted(written) == list(range(2_000))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".inprogress")]


def rolled_files(tmp_path: Any, name: str) -> Pipeline:
    """3,000 items into JSON Lines files of 199 lines, a checkpoint every 400 items."""
    return Pipeline(Extractor(range(3_000), batch_size=25)
                    >> write_jsonl(str(tmp_path / "o.jsonl"), roll_items=199, name="files"),
                    name=name, checkpoint=ck(tmp_path, every=400))


def test_crash_after_the_decision_before_the_renames(tmp_path: Any, monkeypatch: Any) -> None:
    """Finished files whose rename was due when the run died are renamed by the restart."""
    from reflux.connectors._files import RollingFileSink
    real = RollingFileSink.checkpoint_commit
    calls = itertools.count()

    def commit(self: Any, checkpoint: int, prepared: Any) -> None:
        if next(calls) == 5:
            assert prepared["pending"], "this checkpoint has renames due"
            raise OSError("the process died here")
        real(self, checkpoint, prepared)

    monkeypatch.setattr(RollingFileSink, "checkpoint_commit", commit)
    with pytest.raises(CheckpointError):
        rolled_files(tmp_path, "renames").run()
    monkeypatch.setattr(RollingFileSink, "checkpoint_commit", real)
    rolled_files(tmp_path, "renames").run()
    names = sorted(f for f in os.listdir(tmp_path) if f.startswith("o-"))
    written = [json.loads(line) for f in names for line in lines(tmp_path / f)]
    assert written == list(range(3_000))
    assert [len(lines(tmp_path / f)) for f in names][:-1] == [199] * (len(names) - 1)


def test_a_commit_failing_as_the_run_ends_still_fails_the_run(tmp_path: Any, monkeypatch: Any) -> None:
    """The thread committing beside the pipeline fails the run after the pipeline has read
    its status: the run still fails with the commit's error, and the sinks roll back."""
    from reflux.connectors._files import RollingFileSink
    real = RollingFileSink.checkpoint_commit
    calls = itertools.count()

    def commit(self: Any, checkpoint: int, prepared: Any) -> None:
        if next(calls) == 6:  # the last checkpoint before the end of the run
            time.sleep(0.3)  # the run's nodes end meanwhile
            raise OSError("the disk went away")
        real(self, checkpoint, prepared)

    close = Pipeline._close_checkpoints

    def close_late(self: Pipeline, rt: Any, result: Any) -> None:
        deadline = time.monotonic() + 30
        while rt.failure is None and time.monotonic() < deadline:  # let the commit fail first
            time.sleep(0.01)
        close(self, rt, result)

    monkeypatch.setattr(RollingFileSink, "checkpoint_commit", commit)
    monkeypatch.setattr(Pipeline, "_close_checkpoints", close_late)
    with pytest.raises(CheckpointError, match="the disk went away") as e:
        rolled_files(tmp_path, "late").run()
    assert e.value.result.status == "failed"


def test_a_commit_failure_reaching_the_run_as_it_closes_still_fails_the_run(tmp_path: Any, monkeypatch: Any) -> None:
    """The failed commit has stopped the barriers but not yet reached the runtime when the
    run's nodes end and the run closes: the run still fails with the commit's error."""
    from reflux.connectors._files import RollingFileSink
    from reflux.run.barrier import BarrierGate
    real_commit, real_fail = RollingFileSink.checkpoint_commit, BarrierGate.fail
    calls = itertools.count()

    def commit(self: Any, checkpoint: int, prepared: Any) -> None:
        if next(calls) == 2:
            raise OSError("the disk went away")
        real_commit(self, checkpoint, prepared)

    def fail_late(self: BarrierGate, exc: BaseException) -> None:
        self.failed = True  # no more barriers: the run goes on to its end
        self.rt.wait(30)
        time.sleep(0.2)  # the run closes meanwhile, up to waiting for this thread
        real_fail(self, exc)

    monkeypatch.setattr(RollingFileSink, "checkpoint_commit", commit)
    monkeypatch.setattr(BarrierGate, "fail", fail_late)
    with pytest.raises(CheckpointError, match="the disk went away") as e:
        rolled_files(tmp_path, "closing").run()
    assert e.value.result.status == "failed"
    assert e.value.result.checkpoint.last == 2


@pytest.mark.parametrize("commit, workers", [("auto", False), ("beside", False), ("inline", True),
                                             ("auto", True)])
def test_where_a_checkpoint_commits(tmp_path: Any, monkeypatch: Any, commit: str, workers: bool) -> None:
    """``commit="auto"`` commits a database inline under the GIL unless process workers leave
    the pipeline's threads waiting; either way every row arrives once."""
    import procfns
    from reflux.checkpoint.commit import Checkpointer
    from reflux.result import gil_enabled
    beside_threads: list[str] = []
    real = Checkpointer._commit_loop

    def loop(self: Any) -> None:
        beside_threads.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(Checkpointer, "_commit_loop", loop)
    db = str(tmp_path / "out.db")
    square = (Transformer(procfns.square, executor="process", workers=1, name="sq") if workers
              else Transformer(procfns.square, name="sq"))
    result = Pipeline(Extractor(range(2_000)) >> square >> Transformer(as_rows, name="row") >> sink(db),
                      name="where", checkpoint=ck(tmp_path, every=200, commit=commit)).run()
    assert result.checkpoint.taken >= 5
    beside = commit == "beside" or (commit == "auto" and (workers or not gil_enabled()))
    assert beside_threads == (["reflux:where:checkpoints"] if beside else [])
    assert sorted(table_ids(db)) == sorted(x * x for x in range(2_000))


def test_a_checkpoint_file_and_a_database_that_disagree_are_refused(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")

    def build() -> Pipeline:
        return Pipeline(Extractor(range(500)) >> Transformer(as_rows, name="row") >> sink(db), name="pair",
                        checkpoint=ck(tmp_path, every=100))

    build().run()
    os.remove(db)
    with pytest.raises(CheckpointError, match="holds no checkpoint of this run"):
        build().run()


def test_a_checkpoint_of_a_node_the_pipeline_lacks_is_refused(tmp_path: Any) -> None:
    Pipeline(Extractor(range(10), name="old") >> Loader.to_list(name="out"), name="p",
             checkpoint=ck(tmp_path)).run()
    with pytest.raises(CheckpointError, match="node 'old', which is not in the pipeline"):
        Pipeline(Extractor(range(10), name="new") >> Loader.to_list(name="out"), name="p",
                 checkpoint=ck(tmp_path)).run()


def test_a_state_that_cannot_be_saved_fails_the_run_naming_the_node(tmp_path: Any) -> None:
    class Holder:
        def __call__(self, x: int) -> int:
            return x

        def state(self) -> Any:
            return threading.Lock()

        def restore(self, state: Any) -> None:
            pass

    p = Pipeline(Extractor(range(1_000)) >> Transformer(Holder(), name="holder") >> Loader.to_list(),
                 checkpoint=ck(tmp_path, every=100))
    with pytest.raises(CheckpointError, match="node 'holder': its state cannot be saved"):
        p.run()


# --------------------------------------------------------------------------- refused before running

def test_what_a_checkpointed_pipeline_refuses(tmp_path: Any) -> None:
    import procfns

    with pytest.raises(ValidationError, match="a live channel cannot be read again"):
        Pipeline(Extractor(SPSCChannel(8), name="live") >> Loader.to_list(), checkpoint=ck(tmp_path)).run()
    with pytest.raises(ValidationError, match="Transformer 'tally': its function has state.*worker processes"):
        Pipeline(Extractor(range(3)) >> Transformer(procfns.Tally(), executor="process", name="tally")
                 >> Loader.to_list(), checkpoint=ck(tmp_path)).run()
    for bad, match in ((dict(every=0), "every must be"), (dict(seconds=-1), "seconds must be"),
                       (dict(every=None, seconds=None), "give every= or seconds="), (dict(durable=1), "durable"),
                       (dict(timeout=0), "timeout must be"), (dict(commit="later"), "commit must be")):
        with pytest.raises(ValidationError, match=match):
            Checkpoint(str(tmp_path / "c"), **bad)
    with pytest.raises(ValidationError, match="checkpoint must be a file name"):
        Pipeline(Extractor(range(3)) >> Loader.to_list(), checkpoint=42)
    with pytest.raises(CheckpointError, match="does not exist"):
        Pipeline(Extractor(range(3)) >> Loader.to_list(),
                 checkpoint=str(tmp_path / "no" / "such" / "c")).run()
    not_a_db = tmp_path / "text.ckpt"
    not_a_db.write_text("hello, this is not a database\n" * 100)
    with pytest.raises(CheckpointError, match="cannot be used"):
        Pipeline(Extractor(range(3)) >> Loader.to_list(), checkpoint=str(not_a_db)).run()


def test_a_pipeline_without_checkpoints_writes_no_file(tmp_path: Any) -> None:
    p = Pipeline(Extractor(range(5)) >> Loader.to_list(name="out"))
    assert p.checkpoint is None
    result = p.run()
    assert result.checkpoint is None and "checkpoint" not in result.summary()
    p.checkpoint = str(tmp_path / "later.ckpt")
    assert p.checkpoint.path.endswith("later.ckpt") and p.checkpoint.every == 10_000
    assert p.run().checkpoint.taken == 1
    assert os.path.exists(tmp_path / "later.ckpt")


def test_durable_checkpoints(tmp_path: Any) -> None:
    files = str(tmp_path / "o.jsonl.gz")
    result = Pipeline(Extractor(range(1_000)) >> write_jsonl(files, name="files"),
                      checkpoint=Checkpoint(str(tmp_path / "c"), every=100, durable=True)).run()
    import gzip
    with gzip.open(files, "rt") as f:
        assert [json.loads(x) for x in f] == list(range(1_000))
    assert result.checkpoint.taken >= 4  # at the first pull after each 100 items (pulls of 256)


def test_a_resumed_run_accounts_for_every_item(tmp_path: Any) -> None:
    db = str(tmp_path / "out.db")
    fail = FailOnce(at=901)
    p = Pipeline(Extractor(range(2_000)) >> Filter(lambda x: x % 3 != 0, name="keep")
                 >> Transformer(fail, name="flaky") >> Transformer(as_rows, name="row") >> sink(db),
                 checkpoint=ck(tmp_path, every=150))
    with pytest.raises(NodeError):
        p.run()
    result = p.run()
    result.check_accounting()
    counts = Counter(table_ids(db))
    assert set(counts) == {x for x in range(2_000) if x % 3 != 0} and set(counts.values()) == {1}
