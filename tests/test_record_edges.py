"""Record edges: two compiled plug-in nodes joined by a RecordChannel on the worker pool.

Between two plug-in nodes that feed only each other, ``Pipeline.compile``
puts a :class:`~reflux_core.channel.RecordChannel`; a node with a record
input and a record output runs as a nogil record pump in the worker loop
(:class:`reflux_core._sched.PumpTask`).  Counters: a node counts in the unit
of its input (chunks on an object input, records on a record input); an
edge counts in its receiver's unit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from support import needs_posix_signals, wait_until
from test_plugins import GilHold

from reflux import Extractor, Filter, Loader, NodeError, Pipeline, Transformer
from reflux import c_plugin
from reflux_core import _testplugins as P
from reflux_core.channel import RecordChannel
from reflux_core.transform import CTransform, RecordError

REC = np.dtype(P.RECORD)
HANG = 60


def records(n: int) -> np.ndarray:
    a = np.zeros(n, REC)
    a["id"] = np.arange(n)
    a["x"] = (np.arange(n) % 97) * 1.5
    return a


def newton(a: np.ndarray, rounds: int) -> np.ndarray:
    """NewtonSqrt in numpy: drop x < 0, then ``rounds`` Newton steps."""
    a = a[a["x"] >= 0]
    y = a["x"] + 1.0
    for _ in range(rounds):
        y = 0.5 * (y + a["x"] / y)
    out = a.copy()
    out["x"] = y
    return out


def chunks_of(a: np.ndarray, size: int) -> list[np.ndarray]:
    return [a[i:i + size] for i in range(0, len(a), size)]


def negate() -> c_plugin:
    """A transform plug-in that lets NaN through (x -> -x)."""
    return c_plugin(P.c_negate_plugin(), REC, name="negate")


def chain(a: np.ndarray, chunk: int = 500, **kw) -> tuple[Pipeline, Loader]:
    """Extractor(chunks) -> Transformer t1 -> Filter f -> Transformer t2 -> Loader, all plug-ins."""
    sink = Loader.to_list(name="sink")
    pipe = Pipeline(Extractor(chunks_of(a, chunk), name="src") >> Transformer(P.NewtonSqrt(8), name="t1")
                    >> Filter(P.AtLeast(3.0), name="f") >> Transformer(P.NewtonSqrt(4), name="t2") >> sink, **kw)
    return pipe, sink


def chain_ref(a: np.ndarray) -> np.ndarray:
    ref = newton(a, 8)
    return newton(ref[ref["x"] >= 3.0], 4)


def record_inboxes(pipe: Pipeline) -> dict[str, str]:
    """``{owner: mode}`` of the plan's record edges."""
    return {b.owner: b.channel.mode for b in pipe.compile().inboxes if b.records}


# --------------------------------------------------------------------------- forming

def test_inner_edges_of_a_plugin_chain_are_record_channels():
    pipe, _ = chain(records(10))
    plan = pipe.compile()
    kinds = {b.owner: type(b.channel).__name__ for b in plan.inboxes}
    assert kinds == {"t1": "SPSCChannel", "f": "RecordChannel", "t2": "RecordChannel", "sink": "SPSCChannel"}
    assert record_inboxes(pipe) == {"f": "spsc", "t2": "spsc"}
    assert all(isinstance(b.channel, RecordChannel) and b.channel.dtype == REC
               for b in plan.inboxes if b.records)
    # turned off: object channels only
    assert record_inboxes(chain(records(10), record_edges=False)[0]) == {}


def test_which_edges_stay_object_channels():
    big = np.dtype([("id", "<i8"), ("x", "<f8"), ("pad", "<i8")])
    # a Python node in between, a fan-out, ordered replicas, retries on a pump, a dtype mismatch
    t = Transformer(P.NewtonSqrt(), name="t")
    py = Transformer(lambda c: c, name="py")
    u = Transformer(P.NewtonSqrt(), name="u")
    pipe = Pipeline(Extractor([], name="s") >> t >> py >> u >> Loader.to_list(name="l"))
    assert record_inboxes(pipe) == {}

    a, b = Transformer(P.NewtonSqrt(), name="a", parallel=2, ordered=True), Filter(P.AtLeast(1.0), name="b")
    pipe = Pipeline(Extractor([], name="s") >> a >> b >> Loader.to_list(name="l"))
    assert record_inboxes(pipe) == {}

    a, b = Transformer(P.NewtonSqrt(), name="a", parallel=2), Filter(P.AtLeast(1.0), name="b", parallel=2)
    c = Transformer(P.NewtonSqrt(), name="c")
    pipe = Pipeline(Extractor([], name="s") >> a >> b >> c >> Loader.to_list(name="l"))
    assert record_inboxes(pipe) == {"b": "mpmc", "c": "mpmc"}

    # b would be a pump (record in and out) but retries: its output stays an object edge
    a, b, c = (Transformer(P.NewtonSqrt(), name="a"), Filter(P.AtLeast(1.0), name="b", retries=2),
               Transformer(P.NewtonSqrt(), name="c"))
    pipe = Pipeline(Extractor([], name="s") >> a >> b >> c >> Loader.to_list(name="l"))
    assert record_inboxes(pipe) == {"b": "spsc"}

    w = Transformer(CTransform(REC, big), name="w")  # its out_dtype is not the next node's in_dtype
    pipe = Pipeline(Extractor([], name="s") >> w >> Transformer(P.NewtonSqrt(), name="n") >> Loader.to_list())
    assert record_inboxes(pipe) == {}


# --------------------------------------------------------------------------- results and counters

@pytest.mark.parametrize("workers", [1, 2])
def test_chain_gives_the_numpy_reference_and_exact_counters(workers):
    a = records(200_000)
    a["x"][::13] = -1.0  # t1 drops these
    pipe, sink = chain(a, workers=workers)
    result = pipe.run(timeout=HANG)
    assert result.status == "completed"
    result.check_accounting()
    got = np.concatenate(result.results[sink.name])
    ref = chain_ref(a)
    np.testing.assert_array_equal(got["id"], ref["id"])  # order kept: one replica per node
    np.testing.assert_allclose(got["x"], ref["x"], rtol=1e-12)
    st = result.nodes
    n_chunks = len(chunks_of(a, 500))
    kept_t1 = int((a["x"] >= 0).sum())
    # t1 has an object input: it counts chunks; the edge t1 -> f counts records (f's unit)
    assert st["t1"].received == st["t1"].emitted == n_chunks
    assert result.edges[("t1", "f")] == st["f"].received == kept_t1
    # f and t2 have record inputs: records
    assert st["f"].emitted + st["f"].filtered == kept_t1 and st["f"].emitted == len(ref)
    assert st["t2"].received == st["t2"].emitted == len(ref)
    # t2's output is an object edge: the Loader counts the chunks t2 sent
    assert result.edges[("t2", "sink")] == st["sink"].received == len(result.results[sink.name])
    assert sum(s.dropped for s in st.values()) == 0

    plain, plain_sink = chain(a, workers=workers, record_edges=False)
    other = np.concatenate(plain.run(timeout=HANG).results[plain_sink.name])
    np.testing.assert_array_equal(other, got)


def test_replicas_on_record_edges():
    a = records(100_000)
    sink = Loader.to_list(name="sink")
    pipe = Pipeline(Extractor(chunks_of(a, 1000), name="src")
                    >> Transformer(P.NewtonSqrt(8), name="t1", parallel=2)
                    >> Filter(P.AtLeast(3.0), name="f", parallel=2)
                    >> Transformer(P.NewtonSqrt(4), name="t2") >> sink, workers=2)
    assert record_inboxes(pipe) == {"f": "mpmc", "t2": "mpmc"}
    result = pipe.run(timeout=HANG)
    assert result.status == "completed"
    result.check_accounting()
    got = np.sort(np.concatenate(result.results[sink.name]), order="id")
    ref = chain_ref(a)
    np.testing.assert_array_equal(got["id"], ref["id"])
    np.testing.assert_allclose(got["x"], ref["x"], rtol=1e-12)
    assert result.nodes["f"].received == len(a) and result.nodes["f"].emitted == len(ref)


def test_a_single_record_item_crosses_a_record_edge():
    a = records(5)
    sink = Loader.to_list(name="sink")
    result = Pipeline(Extractor(list(a)) >> Transformer(P.NewtonSqrt(30), name="t")
                      >> Filter(P.AtLeast(0.0), name="f") >> sink).run(timeout=HANG)
    result.check_accounting()
    got = np.concatenate(result.results[sink.name])
    np.testing.assert_allclose(got["x"], np.sqrt(a["x"]), rtol=1e-9, atol=1e-6)
    assert result.nodes["t"].emitted == 5 and result.nodes["f"].received == 5


# --------------------------------------------------------------------------- error policies on a pump

def nan_chain(on_error: str, **kw) -> tuple[Pipeline, np.ndarray, np.ndarray]:
    """negate -> f (AtLeast(-60): a pump, fails NaN with code 2) -> negate -> sink."""
    a = records(20_000)
    bad = np.arange(7, len(a), 1999)
    a["x"][bad] = np.nan
    sink = Loader.to_list(name="sink")
    f = Filter(P.AtLeast(-60.0), name="f", on_error=on_error, **kw)
    pipe = Pipeline(Extractor(chunks_of(a, 700), name="src") >> Transformer(negate(), name="neg1") >> f
                    >> Transformer(negate(), name="neg2") >> sink)
    assert record_inboxes(pipe) == {"f": "spsc", "neg2": "spsc"}  # f is a pump
    good = a[~np.isnan(a["x"])]
    return pipe, a[bad], good[good["x"] <= 60.0]


@pytest.mark.parametrize("on_error", ["skip", "log", "dead_letter"])
def test_error_policies_on_a_pump_node(on_error, caplog):
    pipe, bad, ref = nan_chain(on_error)
    with caplog.at_level("ERROR", logger="reflux"):
        result = pipe.run(timeout=HANG)
    assert result.status == "completed"
    result.check_accounting()
    got = np.concatenate(result.results["sink"])
    np.testing.assert_array_equal(got["id"], ref["id"])  # order kept around the failures
    assert result.nodes["f"].errors == len(bad)
    if on_error == "skip":
        assert result.errors == []
        return
    records_ = result.dead_letters if on_error == "dead_letter" else result.errors
    assert len(records_) == len(bad)
    assert [int(r.item["id"]) for r in records_] == list(bad["id"])
    for r in records_:
        assert r.node == "f" and isinstance(r.exception, RecordError)
        assert r.exception.code == 2 and r.exception.node == "Filter 'f'"
        assert "error code 2" in str(r.exception)
    if on_error == "log":
        assert sum("error code 2" in m for m in caplog.messages) == len(bad)
    else:
        assert result.nodes["dead-letter"].received == len(bad)


def test_raise_on_a_pump_node_fails_the_run_with_every_record_accounted_for():
    pipe, bad, _ = nan_chain("raise")
    with pytest.raises(NodeError, match="Filter 'f'") as info:
        pipe.run(timeout=HANG)
    assert "error code 2" in str(info.value)
    result = info.value.result
    assert result.status == "failed" and result.nodes["f"].errors == 1
    result.check_accounting()


def test_a_failing_chunk_after_a_record_edge_counts_its_records_as_errors():
    """The last plug-in of a run pops records as a chunk: a failing record
    fails that chunk, and every record of it counts as an error."""
    a = records(20_000)
    bad = np.arange(7, len(a), 1999)
    a["x"][bad] = np.nan
    f = Filter(P.AtLeast(-60.0), name="f", on_error="dead_letter")
    pipe = Pipeline(Extractor(chunks_of(a, 700), name="src") >> Transformer(negate(), name="neg1")
                    >> Transformer(negate(), name="neg2") >> f >> Loader.to_list(name="sink"))
    assert record_inboxes(pipe) == {"neg2": "spsc", "f": "spsc"}  # neg2 is a pump, f pops chunks
    result = pipe.run(timeout=HANG)
    result.check_accounting()
    st = result.nodes["f"]
    dead = result.dead_letters
    assert 1 <= len(dead) <= len(bad) and all(isinstance(r.exception, RecordError) for r in dead)
    assert st.errors == sum(len(r.item) for r in dead) >= len(bad)
    assert st.received == len(a) == st.emitted + st.filtered + st.errors


# --------------------------------------------------------------------------- stop, pause, Ctrl-C

def test_stop_with_draining_lets_every_record_through_the_pumps():
    def endless():
        c = records(512)
        while True:
            yield c

    plugin = P.Progress(rounds=50)
    sink = Loader.to_list(name="sink")
    pipe = Pipeline(Extractor(endless, name="src") >> Transformer(P.NewtonSqrt(1), name="t")
                    >> Transformer(plugin, name="p") >> Filter(P.AtLeast(-1.0), name="f") >> sink)
    pipe.start()
    try:
        wait_until(lambda: plugin.progress() > 10_000, "records to flow")
    finally:
        pipe.stop()
        result = pipe.join(timeout=HANG)
    assert result.status == "stopped" and result.dropped == 0
    result.check_accounting()
    assert plugin.progress() == result.nodes["p"].received == 512 * result.nodes["src"].emitted
    assert sum(len(c) for c in result.results[sink.name]) == plugin.progress()


def heavy_chain(n: int, rounds: int, workers: int = 2) -> tuple[Pipeline, P.Progress]:
    """src -> t (light) -> heavy (a Progress pump) -> f -> sink, with room for all records."""
    plugin = P.Progress(rounds=rounds)
    pipe = Pipeline(Extractor(chunks_of(records(n), 4096), name="src")
                    >> Transformer(P.NewtonSqrt(1), name="t")
                    >> Transformer(plugin, name="heavy", capacity=n)
                    >> Filter(P.AtLeast(-1.0), name="f", capacity=n) >> Loader.to_list(name="sink"),
                    workers=workers)
    assert record_inboxes(pipe) == {"heavy": "spsc", "f": "spsc"}
    return pipe, plugin


def test_stop_without_draining_counts_records_left_in_record_channels():
    n = 1 << 17
    pipe, plugin = heavy_chain(n, rounds=4000)
    pipe.start()
    try:
        wait_until(lambda: pipe.stats()["t"].emitted == n // 4096, "t to push every chunk")
        wait_until(lambda: plugin.progress() > 0, "the pump to start")
    finally:
        pipe.stop(drain=False)
        result = pipe.join(timeout=HANG)
    assert result.status == "stopped"
    result.check_accounting()
    st = result.nodes
    assert st["heavy"].received == n  # popped by the pump, or left in its channel (dropped)
    assert st["heavy"].dropped > 0 and result.dropped >= st["heavy"].dropped
    assert st["sink"].emitted < n


def test_pause_holds_the_pumps_and_resume_finishes():
    n = 1 << 16
    pipe, plugin = heavy_chain(n, rounds=300)
    pipe.start()
    try:
        wait_until(lambda: plugin.progress() > 0, "the pump to start")
        pipe.pause()
        time.sleep(0.2)  # a step in flight ends (a few ms)
        held = plugin.progress()
        time.sleep(0.2)
        assert plugin.progress() == held, "a record pump went on while the pipeline was paused"
        pipe.resume()
    finally:
        result = pipe.join(timeout=HANG)
    assert result.status == "completed" and plugin.progress() == n
    result.check_accounting()


CTRL_C = textwrap.dedent("""
    import signal, sys, threading
    import numpy as np
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reflux import Extractor, Filter, Loader, Pipeline, PipelineInterrupted, Transformer
    from reflux_core import _testplugins as P

    def chunks():
        a = np.zeros(256, P.RECORD)
        a["x"] = 2.0
        i = 0
        while True:
            if i == 50:
                print("ready", flush=True)
            yield a
            i += 1

    p = Pipeline(Extractor(chunks) >> Transformer(P.NewtonSqrt(4), name="t") >> Transformer(P.Progress(200), name="h")
                 >> Filter(P.AtLeast(0.0), name="f") >> Loader(lambda c: None, name="sink"))
    assert sum(b.records for b in p.compile().inboxes) == 2
    try:
        p.run()
    except PipelineInterrupted as e:
        r = e.result
        left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print("interrupted", r.status, r["h"].received, r["h"].dropped, len(r.accounting_problems()), len(left),
              flush=True)
        sys.exit(0)
    sys.exit(3)
""")


@needs_posix_signals
def test_ctrl_c_with_record_pumps_stops_cleanly(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CTRL_C)
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    words = out.split()
    assert words[:2] == ["interrupted", "interrupted"], out
    received, _dropped, problems, threads_left = map(int, words[2:6])
    assert received > 0 and problems == 0 and threads_left == 0


# --------------------------------------------------------------------------- GIL freedom

def test_records_cross_a_record_edge_while_the_main_thread_holds_the_gil():
    """Two pumps joined by a record edge go on while this thread never lets
    the GIL go: the worker loop runs their steps, pops, pushes and wake-ups
    without it.  The second pump can only advance on records the first one
    pushed, so the check cannot pass by accident however loaded the box is.

    Four workers: the Python nodes may keep some waiting for the GIL (the
    one after the pumps is queued once at most, an idle worker's timer
    sweep needs it too); the others keep stepping the pumps."""
    n = 1 << 18
    first, second = P.Progress(rounds=1000), P.Progress(rounds=1)
    sink = Loader.to_list(name="sink")
    pipe = Pipeline(Extractor(chunks_of(records(n), 4096), name="src")
                    >> Transformer(P.NewtonSqrt(1), name="a")
                    >> Transformer(first, name="first", capacity=n)
                    >> Transformer(second, name="second", capacity=n)
                    >> Filter(P.AtLeast(-1.0), name="f", capacity=n) >> sink, workers=4)
    assert record_inboxes(pipe) == {"first": "spsc", "second": "spsc", "f": "spsc"}
    with GilHold() as g:
        pipe.start()
        try:
            wait_until(lambda: pipe.stats()["a"].emitted == n // 4096, "every record to enter the record edges")
            # past their first run (through Python, to open them): the worker loop steps them now
            wait_until(lambda: second.progress() > 4096, "records to reach the second pump")
            (f0, s0), (f1, s1), ticks = g.hold(0.5, lambda: (first.progress(), second.progress()))
        finally:
            result = pipe.join(timeout=HANG)
    assert ticks == 0, "the GIL hold was not real: a Python thread ran during it"
    if f0 < n:
        assert f1 > f0, "the first pump made no progress while the GIL was held elsewhere"
    if s0 < n and f0 < n:
        assert s1 > s0, "no record crossed the record edge while the GIL was held"
    assert result.status == "completed"
    result.check_accounting()
    assert first.progress() == second.progress() == n
    assert sum(len(c) for c in result.results[sink.name]) == n
