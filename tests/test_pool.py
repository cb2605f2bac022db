"""The worker-pool runtime: bounded threads, fusion, replicas, fairness, no deadlock."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from reflux import (
    Balancer,
    Extractor,
    Filter,
    Funnel,
    Loader,
    NeedsMoreWork,
    Pipeline,
    Transformer,
    ValidationError,
)
from reflux.describe.base import DEFAULT_BATCH_SIZE
from reflux.describe.sinks import SumSink
from reflux.run.fusion import fuse_chains
from reflux.run.pool import PoolRuntime
from reflux.run.units import SEALED_CHAIN_BATCH, sealed_chain_batch

HANG = 60.0


def _reflux_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("reflux:"))


class TestThreads:
    def test_thousand_stage_chain_on_two_workers(self) -> None:
        n = 5_000
        stages = [Transformer(lambda x: x + 1, name=f"t{i}", fuse=False) for i in range(1000)]
        sink = Loader.to_list()
        p = Pipeline(Extractor(range(n)), *[], workers=2)
        p.chain(p.nodes[0], *stages, sink)
        seen = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(_reflux_threads())
                time.sleep(0.005)

        w = threading.Thread(target=watch)
        w.start()
        try:
            result = p.run(timeout=HANG)
        finally:
            stop.set()
            w.join()
        assert result.results[sink.name] == [x + 1000 for x in range(n)]
        assert max(seen) <= 2  # the pool and nothing else (a range source runs on the pool)
        assert result.nodes["t999"].received == n
        result.check_accounting()

    def test_five_hundred_branch_balancer(self) -> None:
        n = 20_000
        bal, fun = Balancer(), Funnel()
        branches = [Transformer(lambda x: x * 2, name=f"b{i}") for i in range(500)]
        sink = Loader.to_list()
        p = Pipeline(Extractor(range(n)) >> bal >> branches >> fun >> sink, workers=2)
        result = p.run(timeout=HANG)
        assert sorted(result.results[sink.name]) == [x * 2 for x in range(n)]
        assert sum(result.nodes[f"b{i}"].received for i in range(500)) == n
        result.check_accounting()

    def test_blocking_source_gets_its_own_thread(self) -> None:
        gate = threading.Event()

        def source() -> Any:
            yield 1
            gate.wait(HANG)  # blocks in user code: must not hold a pool worker
            yield 2

        got: list[int] = []
        sink = Loader(got.append)
        p = Pipeline(Extractor(source) >> Transformer(lambda x: x * 10) >> sink, workers=1)
        p.start()
        deadline = time.monotonic() + HANG
        while got != [10] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [10]  # processed by the single worker while the source blocks
        gate.set()
        result = p.join(HANG)
        assert got == [10, 20]
        result.check_accounting()

    def test_workers_setting(self) -> None:
        p = Pipeline(Extractor(range(10)) >> Loader.to_list(), workers=3)
        p.start()
        rt = p._runtime
        assert isinstance(rt, PoolRuntime) and rt.n_workers == 3
        p.join(HANG)

    def test_the_pool_is_the_only_runtime(self) -> None:
        sink = Loader.to_list()
        result = Pipeline(Extractor(range(100)) >> Transformer(lambda x: -x) >> sink, runtime="pool").run(HANG)
        assert result.results[sink.name] == [-x for x in range(100)]
        with pytest.raises(ValidationError, match="runtime='threads' .* is no longer available.*workers="):
            Pipeline(runtime="threads")


class TestFusion:
    def test_chain_is_fused_and_counts_per_node(self) -> None:
        sink = Loader.to_list()
        t = Transformer(lambda x: x + 1, name="t")
        f = Filter(lambda x: x % 2 == 0, name="f")
        p = Pipeline(Extractor(range(1000), name="src") >> t >> f >> sink)
        chains = fuse_chains(p.compile())
        assert [[task.name for task in c] for c in chains] == [["src", "t", "f", sink.name]]
        result = p.run(timeout=HANG)
        assert result.results[sink.name] == [x + 1 for x in range(1000) if (x + 1) % 2 == 0]
        assert result.nodes["t"].received == 1000 and result.nodes["t"].emitted == 1000
        assert result.nodes["f"].filtered == 500 and result.nodes["f"].emitted == 500
        assert result.edges[("t", "f")] == 1000 and result.edges[("f", sink.name)] == 500
        result.check_accounting()

    def test_opt_out(self) -> None:
        t = Transformer(lambda x: x, name="t", fuse=False)
        p = Pipeline(Extractor(range(10), name="src") >> t >> Filter(bool, name="f") >> Loader.to_list(name="out"))
        assert [[x.name for x in c] for c in fuse_chains(p.compile())] == [["src"], ["t"], ["f", "out"]]
        p2 = Pipeline(Extractor(range(10), name="src") >> Transformer(abs, name="t") >> Loader.to_list(name="o"),
                      fuse=False)
        assert len(fuse_chains(p2.compile())) == 3
        assert p2.run(timeout=HANG).results["o"] == list(range(10))

    def test_not_fused_across_fan_in_fan_out_flat_and_blocking_sources(self) -> None:
        def gen() -> Any:
            yield from range(5)

        a, b = Transformer(abs, name="a"), Transformer(abs, name="b")
        flat = Transformer(lambda x: [x, x], flat=True, name="flat")
        p = Pipeline(Extractor(gen, name="src") >> flat >> Balancer(name="bal") >> [a, b]
                     >> Loader.to_list(name="out"))
        chains = [[x.name for x in c] for c in fuse_chains(p.compile())]
        assert chains == [["src"], ["flat"], ["bal"], ["a"], ["b"], ["out"]]
        result = p.run(timeout=HANG)
        assert sorted(result.results["out"]) == sorted([x for x in range(5) for _ in (0, 1)])

    def test_sealed_chains_grow_their_batches_and_others_keep_batch_size(self) -> None:
        def batch_of(*nodes: Any, **kw: Any) -> int:
            p = Pipeline(*nodes, **kw) if len(nodes) > 1 else Pipeline(nodes[0], **kw)
            (chain,) = fuse_chains(p.compile())
            return sealed_chain_batch(chain)

        step, keep = (lambda x: x + 1), (lambda x: x % 2 == 0)
        assert batch_of(Extractor(range(10)) >> Transformer(step) >> Filter(keep) >> Loader.sum()) == SEALED_CHAIN_BATCH
        assert batch_of(Extractor([1, 2]) >> Loader(print)) == SEALED_CHAIN_BATCH  # called per item
        # the function sees each batch: the pipeline's batch size holds
        assert batch_of(Extractor(range(10)) >> Loader(len, batch=True)) == DEFAULT_BATCH_SIZE
        assert batch_of(Extractor(range(10)) >> Transformer(lambda b: b, batched=True) >> Loader.sum()) \
            == DEFAULT_BATCH_SIZE
        # a batch size the user set is kept
        assert batch_of(Extractor(range(10)) >> Loader.sum(), batch_size=100) == 100

        def gen() -> Any:
            yield from range(10)
        # a source that is not an in-memory collection: its batch size is kept, not grown
        p = Pipeline(Extractor(gen, batch_size=8) >> Transformer(step) >> Loader.sum())
        assert [sealed_chain_batch(c) for c in fuse_chains(p.compile())] == [8]

    def test_a_sealed_chain_gives_its_sink_bigger_batches_and_the_same_total(self) -> None:
        class Sizes(SumSink):
            def __init__(self) -> None:
                super().__init__()
                self.sizes: list[int] = []

            def __call__(self, batch: list[Any]) -> None:
                self.sizes.append(len(batch))
                super().__call__(batch)

        n = 200_000
        sizes = Sizes()
        result = Pipeline(Extractor(range(n)) >> Transformer(lambda x: 2 * x) >> Loader(sizes, name="total")).run(
            timeout=HANG)
        assert result.results["total"] == n * (n - 1)
        assert sum(sizes.sizes) == n and DEFAULT_BATCH_SIZE < max(sizes.sizes) <= SEALED_CHAIN_BATCH
        # a function that sees its batches gets at most batch_size items each
        seen: list[int] = []
        Pipeline(Extractor(range(n)) >> Loader(lambda b: seen.append(len(b)), batch=True)).run(timeout=HANG)
        assert sum(seen) == n and max(seen) == DEFAULT_BATCH_SIZE

    def test_feedback_inside_a_fused_chain(self) -> None:
        def walk(x: int) -> Any:
            return NeedsMoreWork(x - 1) if x > 0 else "leaf"

        sink = Loader.to_list()
        p = Pipeline(Extractor(range(50), name="src") >> Transformer(abs, name="pre") >> Transformer(walk, name="walk")
                     >> Filter(lambda s: True, name="keep") >> sink)
        assert len(fuse_chains(p.compile())) == 1
        result = p.run(timeout=HANG)
        assert result.results[sink.name] == ["leaf"] * 50
        assert result.nodes["walk"].fed_back == sum(range(50))
        result.check_accounting()


class TestReplicas:
    def test_all_items_once(self) -> None:
        n = 20_000
        sink = Loader.to_list()
        t = Transformer(lambda x: x * 3, parallel=3, name="t")
        result = Pipeline(Extractor(range(n)) >> t >> sink, batch_size=64).run(timeout=HANG)
        got = result.results[sink.name]
        assert sorted(got) == [x * 3 for x in range(n)]
        assert result.nodes["t"].received == n and result.nodes["t"].emitted == n
        result.check_accounting()

    def test_ordered_restores_input_order(self) -> None:
        import random

        rnd = random.Random(7)
        delays = [rnd.random() * 0.0005 for _ in range(2000)]

        def slow(x: int) -> int:
            time.sleep(delays[x])  # releases the GIL: replicas finish out of order
            return x

        sink = Loader.to_list()
        p = Pipeline(Extractor(range(2000)) >> Transformer(slow, parallel=4, ordered=True)
                     >> Filter(lambda x: x % 7 != 0, parallel=2, ordered=True) >> sink,
                     workers=4, batch_size=16)
        result = p.run(timeout=HANG)
        assert result.results[sink.name] == [x for x in range(2000) if x % 7 != 0]
        result.check_accounting()

    def test_replicas_run_at_the_same_time(self) -> None:
        inside = 0
        most = 0
        lock = threading.Lock()
        both = threading.Event()

        def work(x: int) -> int:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
                if inside >= 2:
                    both.set()
            both.wait(0.5)  # releases the GIL; a second replica can come in meanwhile
            with lock:
                inside -= 1
            return x

        sink = Loader.to_list()
        p = Pipeline(Extractor(range(40)) >> Transformer(work, parallel=2) >> sink, workers=2, batch_size=1)
        result = p.run(timeout=HANG)
        assert sorted(result.results[sink.name]) == list(range(40))
        assert most >= 2

    def test_each_replica_opens_its_own_state(self) -> None:
        opened = []

        class Counter:
            def open(self) -> None:
                opened.append(self)

            def __call__(self, x: int) -> int:
                return x

        sink = Loader.to_list()
        result = Pipeline(Extractor(range(100)) >> Transformer(Counter(), parallel=3) >> sink).run(timeout=HANG)
        assert len(opened) == 3
        assert sorted(result.results[sink.name]) == list(range(100))

    def test_errors_in_replicas_follow_the_policy(self) -> None:
        sink = Loader.to_list()
        t = Transformer(lambda x: 1 // (x % 10), parallel=2, on_error="dead_letter", name="t")
        result = Pipeline(Extractor(range(100)) >> t >> sink).run(timeout=HANG)
        assert len(result.results[sink.name]) == 90
        assert sorted(r.item for r in result.dead_letters) == list(range(0, 100, 10))
        assert result.nodes["t"].errors == 10
        result.check_accounting()

    def test_failure_in_a_replica_stops_the_run(self) -> None:
        def boom(x: int) -> int:
            if x == 500:
                raise ValueError("boom")
            return x

        p = Pipeline(Extractor(range(10_000)) >> Transformer(boom, parallel=2, name="t") >> Loader.to_list())
        with pytest.raises(Exception, match="boom") as info:
            p.run(timeout=HANG)
        result = info.value.result  # type: ignore[attr-defined]
        assert result.status == "failed"
        result.check_accounting()

    @pytest.mark.parametrize("kwargs, message", [
        ({"parallel": 0}, "parallel must be a positive integer"),
        ({"parallel": True}, "parallel must be a positive integer"),
        ({"parallel": 5000}, "more replicas"),
        ({"ordered": "yes"}, "ordered must be True or False"),
    ])
    def test_bad_options(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            Transformer(abs, name="t", **kwargs)
        with pytest.raises(ValidationError, match=message):
            Filter(bool, name="f", **kwargs)


class TestScheduling:
    def test_single_worker_is_fair_between_independent_flows(self) -> None:
        order: list[str] = []
        a = Loader(lambda x: order.append("a"), name="a")
        b = Loader(lambda x: order.append("b"), name="b")
        p = Pipeline(Extractor(range(20_000), name="sa") >> Transformer(abs, fuse=False) >> a,
                     Extractor(range(20_000), name="sb") >> Transformer(abs, fuse=False) >> b,
                     workers=1, batch_size=64, capacity=64)
        p.run(timeout=HANG)
        first = order[: len(order) // 4]
        assert first.count("a") > 1000 and first.count("b") > 1000  # both moved early on

    def test_flat_map_flood_into_slow_receiver_does_not_deadlock(self) -> None:
        def explode(x: int) -> Any:
            yield from range(5_000)

        def explode_again(x: int) -> Any:
            yield from (x, x)

        sink = Loader(lambda x: None, name="sink")
        p = Pipeline(Extractor(range(20)) >> Transformer(explode, name="e1") >> Transformer(explode_again, name="e2")
                     >> sink, workers=1, capacity=16, batch_size=16)
        result = p.run(timeout=HANG)
        assert result.nodes["sink"].emitted == 20 * 5_000 * 2
        result.check_accounting()

    def test_bad_pipeline_options(self) -> None:
        with pytest.raises(ValidationError, match="workers must be a positive integer"):
            Pipeline(workers=0)
        with pytest.raises(ValidationError, match="runtime must be"):
            Pipeline(runtime="fibers")


class TestExecutorOptions:
    def test_replicas_and_processes_do_not_mix(self) -> None:
        with pytest.raises(ValidationError, match="executor=.process. set the number of processes with workers="):
            Transformer(abs, parallel=2, executor="process")

    def test_ordered_defaults_per_executor(self) -> None:
        assert Transformer(abs, parallel=2).ordered is False  # thread replicas: completion order
        assert Transformer(abs, executor="process").ordered is True  # processes keep input order
        assert Transformer(abs, executor="process", ordered=False).ordered is False

    def test_pipeline_default_executor_leaves_replicas_on_threads(self) -> None:
        rep = Transformer(abs, parallel=2, name="rep")
        plain = Transformer(abs, name="plain")
        p = Pipeline(Extractor(range(3)) >> rep >> plain >> Loader.to_list(), executor="process")
        p.compile()
        assert rep.executor == "thread" and plain.executor == "process" and plain.ordered is True

    def test_process_transformer_is_not_fused(self) -> None:
        p = Pipeline(Extractor(range(3), name="src") >> Transformer(abs, executor="process", name="t")
                     >> Loader.to_list(name="out"))
        assert [[t.name for t in c] for c in fuse_chains(p.compile())] == [["src"], ["t"], ["out"]]


def test_a_pure_python_run_does_not_import_numpy() -> None:
    """The pool's scheduler needs no numpy: a pipeline of Python functions never loads it
    (numpy costs start-up time and, with OpenBLAS, threads of its own)."""
    import subprocess
    import sys
    import tempfile

    code = ("import sys\nfrom reflux import Extractor, Loader, Pipeline, Transformer\n"
            "r = Pipeline(Extractor(range(100)) >> Transformer(abs) >> Loader.to_list(name='o')).run()\n"
            "assert r.results['o'] == list(range(100))\n"
            "assert 'numpy' not in sys.modules, 'numpy was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr


def test_the_watchdog_needs_no_thread_on_the_pool() -> None:
    """The pool's workers drive the clogging watchdog: a run has the pool's threads and no more."""
    gate = threading.Event()
    alerts: list[Any] = []

    def stuck(x: int) -> int:
        gate.wait(HANG)
        return x

    p = Pipeline(Extractor(range(100)) >> Transformer(stuck, name="stuck") >> Loader.to_list(),
                 capacity=4, batch_size=2, fuse=False, workers=2, clog_timeout=0.2, on_alert=alerts.append)
    p.start()
    try:
        deadline = time.monotonic() + HANG
        while not any(a.kind == "clogged" for a in alerts) and time.monotonic() < deadline:
            time.sleep(0.01)  # nobody joins: the idle worker runs the checks
        names = [t.name for t in threading.enumerate() if t.name.startswith("reflux")]
        assert sorted(names) == ["reflux:pipeline:worker-0", "reflux:pipeline:worker-1"]
        assert [a.node for a in alerts if a.kind == "clogged"] == ["stuck"]
    finally:
        gate.set()
    assert p.join(HANG).loaded == 100
