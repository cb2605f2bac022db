"""Ray workers: ``Transformer(fn, executor="ray")`` and ``Filter(predicate, executor="ray")``
(reflux.run.ray), on a real local Ray cluster of two simulated machines.

The cluster (``ray_cluster`` in conftest.py) starts once per session.  Every
test checks (autouse fixture) with Ray's state API that no actor it made is
left alive.  The whole module is skipped, with the reason, when Ray is not
installed; ``.ci/run`` has a leg that installs the ``ray`` extra and runs it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rayfns
from support import wait_until
from test_doc_examples import RAY_BLOCKS, run_example

from reflux import (
    Extractor,
    Filter,
    Loader,
    NodeError,
    Pipeline,
    RayWorkerError,
    Transformer,
    prometheus_text,
    render_stats,
)

HANG = 120  # seconds: a hang guard only

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is not installed (pip install 'pyreflux[ray]')"),
]


def live_actors() -> list[Any]:
    """The node actors of this cluster that are not dead (Ray's state API)."""
    from ray.util.state import list_actors
    return list_actors(filters=[("class_name", "=", "RefluxActor"), ("state", "!=", "DEAD")])


@pytest.fixture(autouse=True)
def cluster(ray_cluster: Any) -> Iterator[Any]:
    """The session's cluster; after each test, no actor of a node may be left alive."""
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(rayfns)  # the actors need not import the tests' module
    yield ray_cluster
    deadline = time.monotonic() + 30
    left = live_actors()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = live_actors()
    assert not left, f"actors left behind: {[(a.actor_id, a.state) for a in left]}"


def run(*parts: Any, **kwargs: Any) -> Any:
    return Pipeline(*parts, **kwargs).run(timeout=HANG)


def cluster_node_ids() -> set[str]:
    import ray
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


# --------------------------------------------------------------------------- results and placement


def test_actors_on_both_machines_give_exact_results() -> None:
    n = 4000
    r = run(Extractor(range(n)) >> Transformer(rayfns.uneven, executor="ray", workers=2,
                                               ray_options={"resources": {"slot": 1}})
            >> Loader.to_list(name="out"), batch_size=64)
    assert r.status == "completed"
    assert r.results["out"] == [x * 3 for x in range(n)]  # in input order
    st = r.nodes["uneven"]
    assert (st.received, st.emitted, st.errors, st.dropped) == (n, n, 0, 0)
    assert not r.accounting_problems()
    workers = st.workers
    assert [w.index for w in workers] == [0, 1]
    # one actor on each machine (the "slot" resource), each with a host, a pid and an actor id
    assert {w.node_id for w in workers} == cluster_node_ids()
    assert all(w.host and w.pid and w.actor and w.state == "ended" for w in workers)
    assert sum(w.items for w in workers) == n and all(w.items > 0 and w.busy > 0 for w in workers)


def test_unordered_emits_everything_once() -> None:
    n = 2000
    r = run(Extractor(range(n)) >> Transformer(rayfns.uneven, executor="ray", workers=2, ordered=False)
            >> Loader.to_list(name="out"), batch_size=32)
    assert sorted(r.results["out"]) == [x * 3 for x in range(n)]


def test_filter_sends_back_verdicts_and_keeps_the_items() -> None:
    n = 3000
    items = [(i, "payload") for i in range(n)]
    r = run(Extractor(items) >> Filter(lambda t: t[0] % 3 == 0, executor="ray", workers=2, name="keep")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [t for t in items if t[0] % 3 == 0]
    assert all(a is b for a, b in zip(r.results["out"], items[::3], strict=True))  # the very objects: never sent back
    st = r.nodes["keep"]
    assert (st.received, st.emitted, st.filtered) == (n, n // 3, n - n // 3)
    assert not r.accounting_problems()


def test_a_longer_pipeline_with_local_stages_between() -> None:
    n = 5000
    r = run(Extractor(range(n)) >> Transformer(rayfns.heavy, executor="ray", workers=2)
            >> Filter(lambda y: y % 2 == 0) >> Transformer(rayfns.square, executor="ray", workers=1)
            >> Loader.to_list(name="out"))
    want = [rayfns.heavy(x) ** 2 for x in range(n) if rayfns.heavy(x) % 2 == 0]
    assert r.results["out"] == want
    assert not r.accounting_problems()


def test_generator_flat_and_feedback() -> None:
    r = run(Extractor(range(100)) >> Transformer(rayfns.twice, executor="ray", workers=2) >> Loader.to_list(name="a"))
    assert r.results["a"] == [x for x in range(100) for _ in range(2)]
    r = run(Extractor(range(100)) >> Transformer(rayfns.explode, flat=True, executor="ray") >> Loader.to_list(name="b"))
    assert r.results["b"] == [x for x in range(100) for _ in range(x % 4)]
    r = run(Extractor(range(50)) >> Transformer(rayfns.countdown, executor="ray", workers=2)
            >> Loader.to_list(name="c"))
    assert r.results["c"] == [0] * 50
    assert r.nodes["countdown"].fed_back == sum(range(50))
    assert not r.accounting_problems()


def test_stateful_callable_lives_in_its_actor_with_open_and_close_once(tmp_path: Path) -> None:
    fn = rayfns.Tracked(str(tmp_path))
    n = 400
    r = run(Extractor(range(n)) >> Transformer(fn, executor="ray", workers=2, ray_options={"resources": {"slot": 1}})
            >> Loader.to_list(name="out"), batch_size=16)
    out = r.results["out"]
    pids = {pid for pid, _ in out}
    for pid in pids:  # each actor's own counter, one call per item
        assert sorted(c for p, c in out if p == pid) == list(range(1, sum(1 for p, _ in out if p == pid) + 1))
    # both actors opened once and closed once (one may have started too late to get work)
    opened = {int(p.name.split("-")[1]) for p in tmp_path.glob("open-*")}
    closes = {int(p.name.split("-")[1]): int(p.read_text()) for p in tmp_path.glob("close-*")}
    assert len(opened) == 2 and set(closes) == opened and pids <= opened
    assert sum(closes.values()) == n
    assert fn.calls == 0  # the driver's copy was never called


def test_numpy_arrays_travel_through_the_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from reflux.run.ray import logic

    puts: list[int] = []
    real_put = ray.put

    def counting_put(value: Any, **kw: Any) -> Any:
        puts.append(sum(a.nbytes for a in value))
        return real_put(value, **kw)

    monkeypatch.setattr(logic.ray, "put", counting_put)
    arrays = [np.full(256 * 1024, i, dtype=np.float32) for i in range(40)]  # 1 MiB each
    r = run(Extractor(arrays) >> Transformer(rayfns.identity, executor="ray", workers=2) >> Loader.to_list(name="out"),
            batch_size=8)
    out = r.results["out"]
    assert [int(a[0]) for a in out] == list(range(40))
    assert all(np.array_equal(a, b) for a, b in zip(out, arrays, strict=True))
    # every batch was put in the object store once (none pickled into the call)
    assert puts and sum(puts) == sum(a.nbytes for a in arrays)
    # results are read-only views of Ray's object store (zero-copy), not copies made here
    assert not any(a.flags.writeable for a in out)


def test_long_strings_travel_through_the_object_store_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from reflux.run.ray import logic

    puts: list[int] = []
    real_put = ray.put
    monkeypatch.setattr(logic.ray, "put", lambda v, **kw: puts.append(len(v)) or real_put(v, **kw))
    texts = [str(i) * 120_000 for i in range(10)]  # 120 kB each: every batch is put
    r = run(Extractor(texts) >> Transformer(len, executor="ray") >> Loader.to_list(name="out"))
    assert r.results["out"] == [len(t) for t in texts] and sum(puts) == 10


def test_small_items_travel_in_the_call() -> None:
    import ray

    from reflux.run.ray import logic

    calls = []
    real_put = logic.ray.put
    logic.ray.put = lambda v, **kw: calls.append(v) or real_put(v, **kw)  # type: ignore[assignment]
    try:
        r = run(Extractor(range(500)) >> Transformer(rayfns.square, executor="ray") >> Loader.to_list(name="out"))
    finally:
        logic.ray.put = real_put  # type: ignore[assignment]
    assert r.results["out"] == [x * x for x in range(500)] and calls == []
    assert ray.is_initialized()


# --------------------------------------------------------------------------- failures through the policy


def test_an_exception_in_the_actor_is_an_item_failure_with_the_remote_traceback() -> None:
    r = run(Extractor(range(50)) >> Transformer(rayfns.fail_on_7, executor="ray", workers=2, on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [x for x in range(50) if x % 7]
    assert [rec.item for rec in r.dead_letters] == [x for x in range(50) if x % 7 == 0]
    rec = r.dead_letters[0]
    assert isinstance(rec.exception, ValueError) and str(rec.exception) == "bad item 0"
    assert "Traceback in Ray actor" in rec.traceback and "fail_on_7" in rec.traceback
    assert not r.accounting_problems()

    p = Pipeline(Extractor(range(50)) >> Transformer(rayfns.fail_on_7, executor="ray", name="strict")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="Transformer 'strict' failed on item 0: ValueError: bad item 0") as e:
        p.run(timeout=HANG)
    assert isinstance(e.value.__cause__, ValueError)
    assert not e.value.result.accounting_problems()


def test_returned_error_retries_and_skip() -> None:
    r = run(Extractor(range(30)) >> Transformer(rayfns.odd_or_error, executor="ray", on_error="skip")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [x for x in range(30) if x % 3]
    assert r.nodes["odd_or_error"].errors == 10
    r = run(Extractor(range(40)) >> Transformer(rayfns.Flaky(), executor="ray", workers=2, retries=1)
            >> Loader.to_list(name="out"))
    assert r.results["out"] == list(range(40))
    assert r.nodes["flaky"].retried == 40 and r.nodes["flaky"].errors == 0


def test_items_and_results_ray_cannot_pickle_fail_alone() -> None:
    lock = threading.Lock()
    r = run(Extractor([1, lock, 2, 3, 4]) >> Transformer(rayfns.lock_for_3, executor="ray", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [1, 2, 4]
    assert [rec.item for rec in r.dead_letters] in ([lock, 3], [3, lock])
    assert all(isinstance(rec.exception, TypeError) for rec in r.dead_letters)
    assert not r.accounting_problems()


def test_an_actor_whose_process_exits_fails_its_batches_and_is_restarted(tmp_path: Path) -> None:
    n = 300
    fn = rayfns.ExitOnce(at=40, marker=str(tmp_path / "exited"))
    r = run(Extractor(range(n)) >> Transformer(fn, executor="ray", workers=2, on_error="dead_letter", name="f")
            >> Loader.to_list(name="out"), batch_size=8)
    lost = [rec.item for rec in r.dead_letters]
    assert 40 in lost
    assert all(isinstance(rec.exception, RayWorkerError) and "died while it held this item" in str(rec.exception)
               for rec in r.dead_letters)
    assert sorted(r.results["out"] + lost) == list(range(n))
    assert r.results["out"] == sorted(r.results["out"])  # still in input order
    assert not r.accounting_problems()
    workers = r.nodes["f"].workers
    assert sum(w.lost for w in workers) >= 1 and sum(w.restarts for w in workers) >= 1


def test_a_batch_whose_actor_died_is_re_sent_per_retries(tmp_path: Path) -> None:
    n = 300
    fn = rayfns.ExitOnce(at=40, marker=str(tmp_path / "exited"))
    r = run(Extractor(range(n)) >> Transformer(fn, executor="ray", workers=2, retries=1, name="f")
            >> Loader.to_list(name="out"), batch_size=8)
    assert r.results["out"] == list(range(n))
    st = r.nodes["f"]
    assert st.errors == 0 and st.retried >= 1 and sum(w.lost for w in st.workers) >= 1
    assert not r.accounting_problems()


def test_an_actor_that_cannot_start_fails_the_node_with_its_traceback() -> None:
    p = Pipeline(Extractor(range(10)) >> Transformer(rayfns.BadOpen(), executor="ray", workers=2, name="model")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="Transformer 'model'") as e:
        p.run(timeout=HANG)
    assert "could not start" in str(e.value.__cause__) and "the model file is missing" in str(e.value.__cause__)
    assert isinstance(e.value.__cause__, RayWorkerError)
    assert not e.value.result.accounting_problems()


def test_a_failing_close_fails_the_run() -> None:
    p = Pipeline(Extractor(range(10)) >> Transformer(rayfns.BadClose(), executor="ray", name="flush")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="close\\(\\) failed in a Ray actor"):
        p.run(timeout=HANG)


def test_a_node_whose_every_actor_died_for_good_fails() -> None:
    p = Pipeline(Extractor(range(100)) >> Transformer(rayfns.always_exit, executor="ray", workers=2, on_error="skip",
                                                      ray_options={"max_restarts": 0}, name="doomed")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="Transformer 'doomed'") as e:
        p.run(timeout=HANG)
    assert "every Ray actor of the node died" in str(e.value)
    assert not e.value.result.accounting_problems()


# --------------------------------------------------------------------------- a machine leaves the cluster


def gated(gate: threading.Event, n: int) -> Any:
    """A source that gives ``n`` items once ``gate`` is set (so every actor runs before items flow)."""
    def source() -> Iterator[int]:
        gate.wait(HANG)
        yield from range(n)
    return source


def _remove_when_busy(p: Pipeline, gate: threading.Event, cluster: Any, victim: Any, node: str) -> None:
    """Start ``p``; once both actors run, let the items flow; once the actor on ``victim``
    has finished items, remove that machine."""
    p.start()
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        workers = p.stats()[node].workers
        if not gate.is_set() and len(workers) == 2 and all(w.state == "alive" for w in workers):
            gate.set()
        if any(w.node_id == victim.node_id and w.items > 0 for w in workers):
            break
        if not p.running:
            pytest.fail("the run ended before the actor on the machine to remove got work")
        time.sleep(0.02)
    cluster.remove_node(victim)


def test_a_machine_removed_mid_run_under_skip_loses_its_batches_exactly(cluster: Any) -> None:
    victim = cluster.add_node(num_cpus=1, resources={"spot": 1}, object_store_memory=100 * 1024 * 1024)
    cluster.wait_for_nodes()
    n = 1500
    gate = threading.Event()
    p = Pipeline(Extractor(gated(gate, n), batch_size=16)
                 >> Transformer(rayfns.Sleepy(0.004), executor="ray", workers=2, name="slow",
                                on_error="skip", ray_options={"resources": {"spot": 1}})
                 >> Loader.to_list(name="out"), batch_size=16)
    _remove_when_busy(p, gate, cluster, victim, "slow")
    r = p.join(HANG)
    out = r.results["out"]
    st = r.nodes["slow"]
    assert r.status == "completed"
    assert st.errors > 0 and st.errors + len(out) == n == st.received
    assert len(set(out)) == len(out) and set(out) <= set(range(n)) and out == sorted(out)
    assert not r.accounting_problems()
    on_victim = [w for w in st.workers if w.node_id == victim.node_id]
    assert len(on_victim) == 1 and on_victim[0].lost >= 1


def test_a_machine_removed_mid_run_under_raise_names_the_node(cluster: Any) -> None:
    victim = cluster.add_node(num_cpus=1, resources={"spot": 1}, object_store_memory=100 * 1024 * 1024)
    cluster.wait_for_nodes()
    gate = threading.Event()
    p = Pipeline(Extractor(gated(gate, 100_000), batch_size=16)
                 >> Transformer(rayfns.Sleepy(0.004), executor="ray", workers=2, name="slow",
                                ray_options={"resources": {"spot": 1}})
                 >> Loader.to_list(name="out"), batch_size=16)
    _remove_when_busy(p, gate, cluster, victim, "slow")
    with pytest.raises(NodeError, match="Transformer 'slow' failed on item") as e:
        p.join(HANG)
    assert isinstance(e.value.__cause__, RayWorkerError) and "died while it held this item" in str(e.value)
    r = e.value.result
    assert r.status == "failed" and r.stuck == [] and not r.accounting_problems()


# --------------------------------------------------------------------------- stopping
# The bounds are those tests/test_stopping.py sets for local nodes (50 ms calls there and
# here): stop(drain=False) + join() within 0.5 s, run(timeout=1) within 1.5 s, a failure
# under "raise" and Ctrl-C within 1.5 s and 1 s.  Bounds on waiting, generous next to the
# 50 ms slices a Ray node waits in.

SLOW = 0.05


def _slow_ray_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline(Extractor(range(100_000)) >> Transformer(rayfns.Sleepy(SLOW), executor="ray", workers=2,
                                                             name="slow")
                    >> Loader.to_list(name="out"), **kwargs)


def test_stop_without_drain_ends_within_the_local_bound_and_kills_the_actors() -> None:
    for _ in range(2):
        p = _slow_ray_pipeline()
        p.start()
        wait_until(lambda p=p: p.stats()["out"].received >= 4, "some items to be loaded", HANG)
        t0 = time.monotonic()
        p.stop(drain=False)
        r = p.join(HANG)
        took = time.monotonic() - t0
        assert r.status == "stopped" and r.stuck == []
        assert r.nodes["slow"].dropped > 0 and not r.accounting_problems()
        assert took < 0.5, f"stop(drain=False) + join() took {took:.2f} s"


def test_stop_with_drain_finishes_what_was_taken() -> None:
    p = Pipeline(Extractor(range(1_000_000)) >> Transformer(rayfns.Sleepy(0.002), executor="ray", workers=2,
                                                            name="slow")
                 >> Loader.to_list(name="out"))
    p.start()
    wait_until(lambda: p.stats()["slow"].emitted >= 20, "some items through the Ray node", HANG)
    p.stop()
    r = p.join(HANG)
    out = r.results["out"]
    assert r.status == "stopped" and out == list(range(len(out)))
    assert r.nodes["slow"].dropped == 0 and not r.accounting_problems()


def test_run_timeout_ends_within_the_local_bound() -> None:
    p = _slow_ray_pipeline()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        p.run(timeout=1)
    took = time.monotonic() - t0
    assert p.result is not None and p.result.stuck == [] and not p.result.accounting_problems()
    assert took < 1.5, f"run(timeout=1) took {took:.2f} s"


def test_a_failure_under_raise_ends_the_run_within_the_local_bound(tmp_path: Path) -> None:
    stamp = tmp_path / "failed-at"
    p = Pipeline(Extractor(range(100_000)) >> Transformer(rayfns.FailLate(at=30, stamp=str(stamp), seconds=SLOW),
                                                          executor="ray", workers=2, name="late")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="Transformer 'late' failed on item 30: ValueError: item 30"):
        p.run(timeout=HANG)
    took = time.time() - float(stamp.read_text())  # from the raise in the actor (same machine, same clock)
    assert p.result is not None and p.result.stuck == [] and not p.result.accounting_problems()
    assert took < 1.5, f"the failure took {took:.2f} s to end the run"


CTRL_C = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reflux import Extractor, Transformer, Loader, Pipeline, PipelineInterrupted

    def slow(x):
        time.sleep(0.05)
        return x

    seen = [0]
    def load(x):
        seen[0] += 1
        if seen[0] == 4:
            print("ready", flush=True)

    if __name__ == "__main__":
        p = Pipeline(Extractor(range(10_000_000)) >> Transformer(slow, executor="ray", workers=2)
                     >> Loader(load), ray_init={{"address": {address!r}}})
        try:
            p.run()
        except PipelineInterrupted as e:
            r = e.result
            print("ended", flush=True)
            from ray.util.state import list_actors
            import ray
            job = ray.get_runtime_context().get_job_id()
            deadline = time.monotonic() + 30
            while True:  # the actors of this run, killed by the run itself (not by this process ending)
                mine = list_actors(filters=[("class_name", "=", "RefluxActor"), ("job_id", "=", job)])
                left = [a for a in mine if a.state != "DEAD"]
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            print("interrupted", r.status, len(r.accounting_problems()), len(r.stuck), len(mine), len(left),
                  flush=True)
            sys.exit(0)
        sys.exit(3)
""")


def test_ctrl_c_in_a_subprocess_ends_the_run_and_its_actors(cluster: Any, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CTRL_C.format(address=cluster.address))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=str(tmp_path))
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line == ["ready"], child.stderr.read() if child.stderr else ""
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        ended = child.stdout.readline().strip()
        took = time.monotonic() - t0
        out, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert ended == "ended" and out.split() == ["interrupted", "interrupted", "0", "0", "2", "0"], (ended, out, err)
    assert took < 1.0, f"Ctrl-C took {took:.2f} s to end the run"


# --------------------------------------------------------------------------- backpressure and observability


def test_a_slow_actor_holds_the_source_back_and_is_seen_in_stats_metrics_and_progress() -> None:
    p = Pipeline(Extractor(range(1_000_000), name="src")
                 >> Transformer(rayfns.Sleepy(0.004), executor="ray", workers=1, name="slow")
                 >> Loader.to_list(name="out"), capacity=64, batch_size=16, name="bp")
    p.start()
    try:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            workers = p.stats()["slow"].workers  # empty until the node's logic has opened
            if workers and workers[0].items >= 100:
                break
            time.sleep(0.05)
        worst = 0
        for _ in range(20):  # over a second: what the source took beyond what the sink has
            st = p.stats()
            worst = max(worst, st["src"].emitted - st["out"].received)
            time.sleep(0.05)
        # the channel of the Ray node (64), one source batch (16), what its logic holds (a
        # batch being cut, PREFETCH batches of about 0.05 s of work in flight) and the sink's
        # channel (64): a few hundred items at most of the million the source could give
        assert worst <= 400, worst
        snap = p.stats()["slow"]
        w = snap.workers[0]
        assert w.state == "alive" and w.host and w.items >= 100 and 0 <= w.busy <= 1
        text = prometheus_text(p.stats())
        labels = f'pipeline="bp",node="slow",kind="Transformer",worker="0",host="{w.host}"'
        assert f"reflux_worker_items_total{{{labels}" in text
        assert 'reflux_worker_up{pipeline="bp",node="slow"' in text
        from rich.console import Console
        console = Console(width=140, record=True)
        console.print(render_stats(p.stats(), 140))
        assert f"actor 0 @ {w.host}" in console.export_text()
        assert f"actor 0 @ {w.host}" in p.stats().table()
        assert p.stats().as_dict()["nodes"]["slow"]["workers"][0]["host"] == w.host
    finally:
        p.stop(drain=False)
    r = p.join(HANG)
    assert not r.accounting_problems()
    final = p.stats()["slow"].workers[0]
    assert final.state == "ended" and final.items == r.nodes["slow"].workers[0].items


# --------------------------------------------------------------------------- the session


def test_an_existing_session_is_used_and_ray_init_is_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    import ray
    before = ray.get_runtime_context().gcs_address
    with caplog.at_level(logging.INFO, logger="reflux"):
        r = run(Extractor(range(10)) >> Transformer(rayfns.square, executor="ray") >> Loader.to_list(name="out"),
                ray_init={"num_cpus": 7})
    assert r.results["out"] == [x * x for x in range(10)]
    assert ray.get_runtime_context().gcs_address == before
    assert "ray_init={'num_cpus': 7} is not applied" in caplog.text


def test_pipeline_default_executor_ray() -> None:
    p = Pipeline(Extractor(range(100)) >> Transformer(rayfns.square, name="sq")
                 >> Transformer(lambda x: x + 1, name="inc") >> Loader.to_list(name="out"), executor="ray")
    r = p.run(timeout=HANG)
    assert r.results["out"] == [x * x + 1 for x in range(100)]
    assert p["sq"].executor == "ray" and p["sq"].ordered
    assert len(r.nodes["sq"].workers) >= 1 and len(r.nodes["inc"].workers) >= 1


def test_a_function_ray_cannot_pickle_is_refused_at_start_naming_the_node() -> None:
    lock = threading.Lock()
    p = Pipeline(Extractor(range(3)) >> Transformer(lambda x: (lock, x)[1], executor="ray", name="locked")
                 >> Loader.to_list())
    from reflux import ValidationError
    with pytest.raises(ValidationError, match="Transformer 'locked': executor='ray' sends the function to Ray"):
        p.start()
    assert not p.running


def test_the_logic_runs_without_a_runtime() -> None:
    from reflux.logic.base import LocalContext, Outbox
    from reflux.run.ray.logic import RayTransformerLogic

    node = Transformer(rayfns.square, executor="ray", workers=2, name="sq")
    logic = RayTransformerLogic(node, LocalContext(node.make_stats()))
    out = Outbox()
    logic.open()
    try:
        for start in range(0, 1000, 100):
            logic.process(list(range(start, start + 100)), out)
        logic.finish(out)
    finally:
        logic.close()
    out.flush()
    assert out.sent[0] == [x * x for x in range(1000)]
    assert logic.remaining == 0


def test_many_runs_in_a_row_leave_nothing_behind() -> None:
    """Runs start and end their actors each time (the autouse check counts them after)."""
    for i in range(3):
        r = run(Extractor(range(200)) >> Transformer(rayfns.square, executor="ray", workers=2)
                >> Loader.to_list(name="o"))
        assert r.results["o"] == [x * x for x in range(200)], i


def test_an_actor_imports_nothing_of_reflux() -> None:
    """The actor's code travels by value: the cluster's machines need reflux only for
    functions that import it themselves."""
    r = run(Extractor(range(4)) >> Transformer(lambda x: sorted(m for m in sys.modules if m.startswith("reflux")),
                                               executor="ray", name="modules") >> Loader.to_list(name="out"))
    assert r.results["out"] == [[]] * 4


def test_the_cluster_benchmark_runs(cluster: Any, tmp_path: Path) -> None:
    """``python -m benchmarks.cluster --quick`` on this cluster: it runs every row (checking what
    came back) and prints its tables and targets; never a timing assertion."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "cluster.py").exists():
        pytest.skip("the benchmarks are not next to the tests")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out_json = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cluster", "--quick", "--init-samples", "0",
                           "--address", cluster.address, "--json", str(out_json)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    for title in ("== CPU-heavy work", "== numpy arrays through identity", "== latency", "== targets"):
        assert title in proc.stdout, proc.stdout
    assert out_json.exists()


@pytest.mark.parametrize("code", [pytest.param(code, id=name) for name, code in RAY_BLOCKS])
def test_the_docs_examples_that_need_ray_run(cluster: Any, code: str, tmp_path: Path) -> None:
    """Every example of the documentation that needs Ray (docs/ray.md's), run as a reader would
    on a cluster (``RAY_ADDRESS`` names this one), with warnings as errors."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RAY_ADDRESS"] = cluster.address
    run_example(code, tmp_path, env)


KILLED_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    from reflux import Extractor, Transformer, Loader, Pipeline

    def slow(x):
        time.sleep(0.005)
        return x

    seen = [0]
    def load(x):
        seen[0] += 1
        if seen[0] == 20:
            import ray
            print("ready", ray.get_runtime_context().get_job_id(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    Pipeline(Extractor(range(10_000_000)) >> Transformer(slow, executor="ray", workers=2) >> Loader(load),
             ray_init={{"address": {address!r}}}).run()
""")


def test_the_actors_of_a_killed_driver_end(cluster: Any, tmp_path: Path) -> None:
    from ray.util.state import list_actors
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER.format(address=cluster.address))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=HANG)
    line = proc.stdout.split()
    assert proc.returncode == -signal.SIGKILL and line[:1] == ["ready"], proc.stderr
    job = line[1]
    deadline = time.monotonic() + 60
    while True:
        mine = list_actors(filters=[("class_name", "=", "RefluxActor"), ("job_id", "=", job)])
        left = [a for a in mine if a.state != "DEAD"]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(mine) == 2 and not left, mine


def test_a_forked_process_node_next_to_a_ray_node_is_refused_clearly() -> None:
    """Ray's threads run in the driver once it is connected: forking process workers then is unsafe."""
    p = Pipeline(Extractor(range(3)) >> Transformer(rayfns.square, executor="ray", name="on_ray")
                 >> Transformer(abs, executor="process", start_method="fork", name="forked") >> Loader.to_list())
    with pytest.raises(RuntimeError, match="Transformer 'forked': start_method='fork' forks the worker processes"):
        p.start()
    assert not p.running
