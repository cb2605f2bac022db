"""Pipeline wiring, validation, running and control (start/stop/join/pause), backpressure."""
from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from reflux import (
    Accumulator,
    Balancer,
    Broadcast,
    Extractor,
    Filter,
    Flow,
    Funnel,
    Loader,
    Messenger,
    NeedsMoreWork,
    NotCallableError,
    Pipeline,
    RunResult,
    Transformer,
    ValidationError,
)
from support import forever

HANG = 60


# --------------------------------------------------------------------------- wiring

class TestWiring:
    def test_chaining_shorthand(self) -> None:
        sink = Loader.to_list()
        flow = Extractor(range(5)) >> Transformer(lambda x: x + 1) >> sink
        assert isinstance(flow, Flow)
        assert Pipeline(flow).run(timeout=HANG).results[sink.name] == [1, 2, 3, 4, 5]

    def test_fan_out_and_in_with_lists(self) -> None:
        a, b = Transformer(lambda x: ("a", x), name="a"), Transformer(lambda x: ("b", x), name="b")
        sink = Loader.to_list()
        p = Pipeline(Extractor(range(6)) >> Balancer() >> [a, b] >> sink)
        items = p.run(timeout=HANG).results[sink.name]
        assert sorted(items) == sorted([("a", x) for x in (0, 2, 4)] + [("b", x) for x in (1, 3, 5)])

    def test_explicit_connect(self) -> None:
        src, split = Extractor(range(100)), Broadcast()
        evens, odds = Filter(lambda x: x % 2 == 0, name="evens"), Filter(lambda x: x % 2, name="odds")
        join, sink = Funnel(), Loader.to_list()
        p = Pipeline()
        p.connect(src, split).connect(split, [evens, odds]).connect([evens, odds], join).connect(join, sink)
        result = p.run(timeout=HANG)
        assert sorted(result.results[sink.name]) == list(range(100))
        assert [n.name for n in p.nodes] == ["extractor", "broadcast", "evens", "odds", "funnel", "list"]
        result.check_accounting()

    def test_chain_method(self) -> None:
        sink = Loader.to_list()
        p = Pipeline()
        p.chain(Extractor([1, 2]), Transformer(str), sink)
        assert p.run(timeout=HANG).results[sink.name] == ["1", "2"]

    def test_fan_in_into_any_node(self) -> None:
        sink = Loader.to_list()
        p = Pipeline([Extractor(range(3), name="x"), Extractor(range(10, 13), name="y")] >> sink)
        assert sorted(p.run(timeout=HANG).results[sink.name]) == [0, 1, 2, 10, 11, 12]

    def test_default_names_made_unique(self) -> None:
        def double(x: int) -> int:
            return 2 * x

        t1, t2 = Transformer(double), Transformer(double)
        p = Pipeline(Extractor([1]) >> t1 >> t2 >> Loader.to_list())
        assert (t1.name, t2.name) == ("double", "double-2")
        assert p["double-2"] is t2

    def test_explicit_name_wins_over_default(self) -> None:
        def double(x: int) -> int:
            return 2 * x

        t1 = Transformer(double)
        t2 = Transformer(lambda x: x, name="double")
        Pipeline(Extractor([1]) >> t1 >> t2 >> Loader.to_list())
        assert (t1.name, t2.name) == ("double-2", "double")


# --------------------------------------------------------------------------- validation

class TestValidation:
    def test_balancer_without_receivers(self) -> None:
        p = Pipeline(Extractor(range(3)) >> Balancer(name="split"))
        with pytest.raises(ValidationError, match="^Balancer 'split' has no receivers$"):
            p.run(timeout=HANG)

    @pytest.mark.parametrize("node", [Broadcast(name="r"), Messenger(lambda x: x, name="r")])
    def test_router_without_receivers(self, node: Any) -> None:
        with pytest.raises(ValidationError, match=f"^{node.kind} 'r' has no receivers$"):
            Pipeline(Extractor([1]) >> node).validate()

    def test_node_without_output(self) -> None:
        with pytest.raises(ValidationError, match="Transformer 'dangling' has no receivers"):
            Pipeline(Extractor([1]) >> Transformer(str, name="dangling")).validate()

    def test_extractor_without_output(self) -> None:
        with pytest.raises(ValidationError, match="Extractor 'lonely' has no receivers"):
            Pipeline(Extractor([1], name="lonely")).validate()

    def test_node_without_input(self) -> None:
        p = Pipeline(Extractor([1]) >> Loader.to_list(), Transformer(str, name="orphan") >> Loader.to_list())
        with pytest.raises(ValidationError, match="Transformer 'orphan' has no input"):
            p.validate()

    def test_no_extractor(self) -> None:
        with pytest.raises(ValidationError, match="has no Extractor"):
            Pipeline(Transformer(str) >> Loader.to_list()).validate()

    def test_empty_pipeline(self) -> None:
        with pytest.raises(ValidationError, match="Pipeline 'empty' has no nodes"):
            Pipeline(name="empty").run()

    def test_two_receivers_need_a_router(self) -> None:
        t = Transformer(str, name="t")
        p = Pipeline()
        p.connect(Extractor([1]), t)
        p.connect(t, [Loader.to_list(name="a"), Loader.to_list(name="b")])
        with pytest.raises(ValidationError, match="Transformer 't' has 2 receivers.*Broadcast.*Balancer"):
            p.validate()

    def test_route_to_node_not_in_pipeline(self) -> None:
        outside = Loader.to_list(name="elsewhere")
        m = Messenger(lambda x: x, routes={"k": outside}, name="m")
        p = Pipeline(Extractor([1]) >> m >> Loader.to_list(name="in"))
        with pytest.raises(ValidationError,
                           match="Messenger 'm' routes key 'k' to Loader 'elsewhere', which is not in the pipeline"):
            p.validate()

    def test_route_to_unknown_name(self) -> None:
        m = Messenger(lambda x: x, default="nowhere", name="m")
        p = Pipeline(Extractor([1]) >> m >> Loader.to_list(name="in"))
        with pytest.raises(ValidationError, match="Messenger 'm' has a default route to 'nowhere'"):
            p.validate()

    def test_dead_letter_target_not_in_pipeline(self) -> None:
        t = Transformer(str, name="t", on_error="dead_letter", dead_letter=Loader.to_list(name="dl"))
        with pytest.raises(ValidationError, match="Transformer 't' sends dead letters to Loader 'dl'"):
            Pipeline(Extractor([1]) >> t >> Loader.to_list()).validate()

    def test_cycle(self) -> None:
        a, b = Transformer(str, name="a"), Transformer(str, name="b")
        p = Pipeline()
        p.connect(Extractor([1]), Funnel(name="merge"))
        p.connect(p["merge"], a)
        p.connect(a, Broadcast(name="fork"))
        p.connect(p["fork"], [b, Loader.to_list()])
        p.connect(b, p["merge"])
        with pytest.raises(ValidationError, match="cycle: .*Funnel 'merge'.*NeedsMoreWork"):
            p.validate()

    def test_self_loop_hints_feedback(self) -> None:
        t = Transformer(str, name="t")
        with pytest.raises(ValidationError, match="Transformer 't' cannot be connected to itself.*NeedsMoreWork"):
            t >> t

    def test_node_used_twice(self) -> None:
        t = Transformer(str, name="shared")
        Pipeline(Extractor([1]) >> t >> Loader.to_list(), name="first")
        with pytest.raises(ValidationError, match="Transformer 'shared' is already used in Pipeline 'first'"):
            Pipeline(Extractor([1]) >> t >> Loader.to_list(), name="second")

    def test_duplicate_edge(self) -> None:
        a, b = Extractor([1], name="a"), Loader.to_list(name="b")
        p = Pipeline(a >> b)
        with pytest.raises(ValidationError, match="Extractor 'a' is already connected to Loader 'b'"):
            p.connect(a, b)

    def test_duplicate_explicit_names(self) -> None:
        with pytest.raises(ValidationError, match="two nodes named 'x'"):
            Pipeline(Extractor([1], name="x") >> Loader.to_list(name="x"))

    def test_sink_cannot_send_and_source_cannot_receive(self) -> None:
        with pytest.raises(ValidationError, match="Loader 'l' is a sink: it cannot send items to Transformer"):
            Loader.to_list(name="l") >> Transformer(str)
        with pytest.raises(ValidationError, match="Extractor 'e' is a source: it cannot receive"):
            Transformer(str) >> Extractor([1], name="e")

    @pytest.mark.parametrize("make", [
        lambda: Transformer(None, name="n"), lambda: Filter(1, name="n"),
        lambda: Loader("x", name="n"), lambda: Messenger(2, name="n")])
    def test_non_callable(self, make: Any) -> None:
        with pytest.raises(NotCallableError, match="'n': .* must be callable"):
            make()

    def test_bad_settings(self) -> None:
        with pytest.raises(ValidationError, match="Transformer 't': capacity must be a positive integer"):
            Transformer(str, name="t", capacity=0)
        with pytest.raises(ValidationError, match="Transformer 't': on_error must be one of"):
            Transformer(str, name="t", on_error="ignore")
        with pytest.raises(ValidationError, match="Pipeline 'pipeline': batch_size must be a positive integer"):
            Pipeline(batch_size=0)
        with pytest.raises(ValidationError, match="is not a node"):
            Pipeline().add(42)  # type: ignore[arg-type]

    def test_nothing_runs_when_invalid(self) -> None:
        pulled: list[int] = []

        def source() -> Iterator[int]:
            pulled.append(1)
            yield 1

        p = Pipeline(Extractor(source) >> Balancer(name="split"))
        with pytest.raises(ValidationError):
            p.run(timeout=HANG)
        assert pulled == []


# --------------------------------------------------------------------------- running and results

class TestRun:
    def test_result_counts(self) -> None:
        sink = Loader.to_list()
        result = Pipeline(Extractor(range(100)) >> Filter(lambda x: x % 4 == 0, name="f")
                          >> Transformer(lambda x: x // 4, name="t") >> sink).run(timeout=HANG)
        assert isinstance(result, RunResult)
        assert result.status == "completed" and result.ok
        assert result.counts()["f"] == {"in": 100, "out": 25, "filtered": 75, "errors": 0, "dropped": 0,
                                        "overflowed": 0, "retried": 0, "fed_back": 0}
        assert result["t"]["in"] == 25 and result["t"]["out"] == 25
        assert (result.extracted, result.loaded, result.filtered, result.error_count, result.dropped) \
            == (100, 25, 75, 0, 0)
        assert result.results[sink.name] == list(range(25))
        assert result.edges[("f", "t")] == 25
        assert "completed" in result.summary() and "Filter" in result.summary()
        result.check_accounting()

    def test_start_join(self) -> None:
        p = Pipeline(Extractor(range(1000)) >> Loader.to_list(name="out"))
        assert p.start() is p
        result = p.join(HANG)
        assert result.results["out"] == list(range(1000))
        assert p.result is result and not p.running
        assert p.join() is result  # joining again returns the same result

    def test_join_timeout_raises_and_run_goes_on(self) -> None:
        gate = threading.Event()
        p = Pipeline(Extractor(range(3)) >> Loader(lambda x: gate.wait(HANG), name="slow"))
        p.start()
        with pytest.raises(TimeoutError, match="Pipeline 'pipeline' still running"):
            p.join(timeout=0.2)
        assert p.running
        gate.set()
        assert p.join(HANG).loaded == 3

    def test_run_timeout_abandons(self) -> None:
        p = Pipeline(Extractor(forever) >> Loader(lambda x: None))
        with pytest.raises(TimeoutError):
            p.run(timeout=0.3)
        assert p.result is not None and p.result.status == "stopped"
        p.result.check_accounting()

    def test_rerun_after_finish(self) -> None:
        p = Pipeline(Extractor(range(3)) >> Loader.to_list(name="out"))  # a range can be iterated again
        assert p.run(timeout=HANG).results["out"] == [0, 1, 2]
        assert p.run(timeout=HANG).results["out"] == [0, 1, 2]  # each run's result is its own

    def test_cannot_start_twice(self) -> None:
        gate = threading.Event()
        p = Pipeline(Extractor([1]) >> Loader(lambda x: gate.wait(HANG)))
        p.start()
        with pytest.raises(RuntimeError, match="already running"):
            p.start()
        gate.set()
        p.join(HANG)

    def test_live_stats(self) -> None:
        gate = threading.Event()
        p = Pipeline(Extractor(range(10)) >> Loader(lambda x: gate.wait(HANG), name="slow"))
        p.start()
        deadline = time.monotonic() + HANG
        while p.stats()["slow"].received == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            live = p.stats()
            # the Loader is stuck on its first item: the counters show the run as it is now
            assert live["slow"].received >= 1 and live["slow"].emitted == 0
            assert 1 <= live["extractor"].received < 10 and live.status == "running"
        finally:
            gate.set()
        assert p.join(HANG).loaded == 10

    def test_stop_drains_in_flight_items(self) -> None:
        seen: list[int] = []
        many = threading.Event()

        def load(x: int) -> None:
            seen.append(x)
            if len(seen) >= 1000:
                many.set()

        p = Pipeline(Extractor(forever) >> Transformer(lambda x: x, name="t") >> Loader(load, name="sink"),
                     capacity=64)
        p.start()
        assert many.wait(HANG)
        p.stop(drain=True)
        result = p.join(HANG)
        assert result.status == "stopped"
        assert result.dropped == 0
        assert result.extracted == result.loaded == len(seen)
        assert seen == list(range(len(seen)))
        result.check_accounting()

    def test_stop_without_drain_abandons(self) -> None:
        started = threading.Event()

        def slow(x: int) -> None:
            started.set()
            time.sleep(0.002)

        p = Pipeline(Extractor(forever) >> Transformer(lambda x: x) >> Loader(slow), capacity=256)
        p.start()
        assert started.wait(HANG)
        time.sleep(0.05)
        p.stop(drain=False)
        result = p.join(HANG)
        assert result.status == "stopped"
        assert result.dropped > 0  # the full channels were abandoned ...
        assert result.extracted == result.loaded + result.dropped  # ... and counted
        result.check_accounting()

    def test_stop_with_source_blocked_in_user_code(self) -> None:
        gate = threading.Event()

        def blocked() -> Iterator[int]:
            yield 1
            gate.wait(HANG)  # e.g. a socket read that never returns

        got: list[int] = []
        p = Pipeline(Extractor(blocked, name="socket") >> Loader(got.append))
        p.stop_grace = 0.2
        p.start()
        deadline = time.monotonic() + HANG
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        p.stop()
        try:
            result = p.join(HANG)  # ends without waiting for the source
            assert got == [1]
            assert result.stuck == ["socket"]
        finally:
            gate.set()

    def test_pause_resume(self) -> None:
        count = [0]
        p = Pipeline(Extractor(forever) >> Loader(lambda x: count.__setitem__(0, count[0] + 1)), capacity=16)
        p.start()
        deadline = time.monotonic() + HANG
        while count[0] < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        p.pause()
        assert p.paused
        time.sleep(0.3)  # let in-progress batches finish
        frozen = count[0]
        time.sleep(0.5)
        assert count[0] == frozen  # nothing moves while paused
        p.resume()
        deadline = time.monotonic() + HANG
        while count[0] == frozen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count[0] > frozen
        p.stop()
        p.join(HANG).check_accounting()

    def test_context_manager_waits(self) -> None:
        with Pipeline(Extractor(range(50)) >> Loader.to_list(name="out")) as p:
            p.start()
        assert p.result is not None and p.result.results["out"] == list(range(50))

    def test_context_manager_abandons_on_error(self) -> None:
        with pytest.raises(RuntimeError, match="user code"):
            with Pipeline(Extractor(forever) >> Loader(lambda x: None)) as p:
                p.start()
                raise RuntimeError("user code")
        assert p.result is not None and p.result.status == "stopped"

    def test_many_nodes(self) -> None:
        flow: Any = Extractor(range(2000))
        for i in range(60):
            flow = flow >> Transformer(lambda x: x + 1, name=f"t{i}")
        sink = Loader.to_list()
        result = Pipeline(flow >> sink, capacity=32).run(timeout=HANG)
        assert result.results[sink.name] == [x + 60 for x in range(2000)]

    def test_feedback_and_accumulator_mix(self) -> None:
        def halve(x: int) -> Any:
            return NeedsMoreWork(x // 2) if x > 1 else x

        sink = Loader.to_list()
        result = Pipeline(Extractor(range(1, 200)) >> Transformer(halve) >> Accumulator(7) >> sink).run(timeout=HANG)
        groups = result.results[sink.name]
        assert sum(len(g) for g in groups) == 199 and all(g == [1] * len(g) for g in groups)


# --------------------------------------------------------------------------- backpressure and idleness

class TestBackpressure:
    def test_slow_loader_bounds_what_is_extracted(self) -> None:
        """With a slow Loader, the source is only read as fast as the Loader
        consumes: what is extracted but not loaded stays within the channels."""
        pulled = [0]

        def source() -> Iterator[int]:
            for i in range(10**9):
                pulled[0] += 1
                yield i

        loaded = [0]
        lead: list[int] = []

        def slow(x: int) -> None:
            loaded[0] += 1
            lead.append(pulled[0] - loaded[0])
            if loaded[0] % 50 == 0:
                time.sleep(0.01)

        p = Pipeline(Extractor(source) >> Transformer(lambda x: x) >> Loader(slow), capacity=32)
        p.start()
        deadline = time.monotonic() + HANG
        while loaded[0] < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        p.stop()
        result = p.join(HANG)
        # two channels of 32 plus a batch in each node's hands: a few hundred at most
        assert max(lead) <= 2 * 32 + 3 * 256
        assert result.extracted < 10**6
        result.check_accounting()

    def test_memory_stays_flat(self) -> None:
        def run(n_items: int) -> int:
            def source() -> Iterator[bytes]:
                for _ in range(n_items):
                    yield bytes(1000)

            count = [0]

            def slowish(b: bytes) -> None:
                count[0] += 1
                if count[0] % 1000 == 0:
                    time.sleep(0.001)

            tracemalloc.start()
            try:
                p = Pipeline(Extractor(source) >> Loader(slowish), capacity=64)
                p.run(timeout=HANG)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                gc.collect()

        small, big = run(3_000), run(30_000)
        # ten times the items, not ten times the memory (each item is 1 kB)
        assert big < small + 2_000_000

    def test_idle_pipeline_uses_no_cpu(self) -> None:
        gate = threading.Event()

        def waiting() -> Iterator[int]:
            gate.wait(HANG)
            yield 1

        p = Pipeline(Extractor(waiting) >> Transformer(lambda x: x) >> Filter(bool) >> Balancer()
                     >> [Accumulator(10, window=0.5) >> Loader(lambda x: None), Loader(lambda x: None)])
        p.start()
        time.sleep(0.3)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(2.0)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        gate.set()
        p.join(HANG)
        # a spinning node would burn ~wall seconds of CPU; parked ones almost none
        assert cpu < 0.25 * wall, f"idle pipeline used {cpu:.3f}s CPU in {wall:.2f}s"

    def test_paused_pipeline_uses_no_cpu(self) -> None:
        p = Pipeline(Extractor(forever) >> Transformer(lambda x: x) >> Loader(lambda x: None))
        p.start()
        time.sleep(0.2)
        p.pause()
        time.sleep(0.3)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(1.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        p.stop()
        p.join(HANG)
        assert cpu < 0.25 * wall, f"paused pipeline used {cpu:.3f}s CPU in {wall:.2f}s"

    def test_capacity_per_node_and_pipeline(self) -> None:
        t = Transformer(lambda x: x, name="t", capacity=4)
        sink = Loader.to_list()
        p = Pipeline(Extractor(range(10)) >> t >> sink, capacity=8)
        plan = p.compile()
        caps = {task.name: task.inbox.channel.capacity for task in plan.tasks if task.inbox is not None}
        assert caps == {"t": 4, "list": 8}
        assert p.run(timeout=HANG).results[sink.name] == list(range(10))


# --------------------------------------------------------------------------- long stress runs

@pytest.mark.slow
def test_stress_many_items_through_fan_out_and_in() -> None:
    """Two million items from four sources through Funnel, Balancer and back:
    none lost, none duplicated, each source's order kept up to the Balancer."""
    n = 500_000

    def source(k: int) -> Any:
        def gen() -> Iterator[tuple[int, int]]:
            for i in range(n):
                yield (k, i)
        return gen

    last = {k: -1 for k in range(4)}
    in_order = [True]

    def check_order(item: tuple[int, int]) -> tuple[int, int]:
        k, i = item
        if i != last[k] + 1:
            in_order[0] = False
        last[k] = i
        return item

    seen = bytearray(4 * n)

    def load(batch: list[tuple[int, int]]) -> None:
        for k, i in batch:
            seen[k * n + i] += 1

    workers = [Transformer(lambda x: x, name=f"w{i}") for i in range(3)]
    p = Pipeline([Extractor(source(k), name=f"src{k}") for k in range(4)] >> Funnel() >> Transformer(check_order)
                 >> Balancer() >> workers >> Funnel(name="merge") >> Loader(load, batch=True), capacity=256)
    result = p.run(timeout=600)
    assert in_order[0]
    assert seen.count(1) == 4 * n
    assert result.loaded == 4 * n
    result.check_accounting()


@pytest.mark.slow
def test_stress_repeated_start_stop() -> None:
    """Hundreds of runs stopped at once, drained or abandoned: no thread or item leaks."""
    for i in range(300):
        p = Pipeline(Extractor(forever) >> Transformer(lambda x: x) >> Balancer()
                     >> [Loader(lambda x: None, name="a"), Loader(lambda x: None, name="b")], capacity=8)
        p.start()
        if i % 3 == 0:
            p.pause()
        p.stop(drain=i % 2 == 0)
        result = p.join(HANG)
        result.check_accounting()
        if i % 2 == 0:
            assert result.dropped == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("reflux:")]
