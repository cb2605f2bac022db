"""Each node type's behaviour, through real pipelines and through its logic alone."""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reflux import (
    Accumulator,
    Balancer,
    Broadcast,
    CallbackSink,
    Error,
    ErrorRecord,
    Extractor,
    FileSink,
    Filter,
    Funnel,
    ListSink,
    Loader,
    Messenger,
    NeedsMoreWork,
    NodeError,
    NotCallableError,
    Pipeline,
    RoutingError,
    Transformer,
    ValidationError,
)
from reflux.logic import LocalContext, Outbox, make_logic

HANG = 60  # generous hang guard (seconds) for every run


def run_to_list(*stages: Any, source: Any, **kwargs: Any) -> tuple[list[Any], Any]:
    """Run ``source >> stages... >> list sink``; return the loaded items and the result."""
    sink = Loader.to_list()
    flow: Any = source if isinstance(source, Extractor) else Extractor(source)
    for s in stages:
        flow = flow >> s
    result = Pipeline(flow >> sink, **kwargs).run(timeout=HANG)
    result.check_accounting()
    return result.results[sink.name], result


# --------------------------------------------------------------------------- Extractor

class TestExtractor:
    def test_list_in_order(self) -> None:
        items, result = run_to_list(source=list(range(1000)))
        assert items == list(range(1000))
        assert result.extracted == 1000

    def test_range_in_batches(self) -> None:
        items, _ = run_to_list(source=range(10_000), batch_size=7)
        assert items == list(range(10_000))

    def test_generator_function_once_off(self) -> None:
        def numbers() -> Iterator[int]:
            yield 1
            yield 2
            yield 3

        items, result = run_to_list(source=numbers)
        assert items == [1, 2, 3]
        assert result["numbers"].received == 3

    def test_infinite_generator_runs_until_stopped(self) -> None:
        def forever() -> Iterator[int]:
            i = 0
            while True:
                yield i
                i += 1

        got: list[int] = []
        enough = threading.Event()

        def load(x: int) -> None:
            got.append(x)
            if len(got) == 500:
                enough.set()

        p = Pipeline(Extractor(forever) >> Loader(load))
        p.start()
        assert enough.wait(HANG)
        p.stop()
        result = p.join(HANG)
        assert result.status == "stopped"
        assert got == list(range(len(got)))  # nothing lost, nothing reordered
        assert result.extracted == len(got)
        result.check_accounting()

    def test_iterator_object(self) -> None:
        items, _ = run_to_list(source=iter("abc"))
        assert items == ["a", "b", "c"]

    def test_callable_called_repeatedly_until_sentinel(self) -> None:
        state = iter(range(5))

        def read() -> Any:
            return next(state, None)

        sink = Loader.to_list()
        result = Pipeline(Extractor(read, sentinel=None) >> sink).run(timeout=HANG)
        assert result.results[sink.name] == [0, 1, 2, 3, 4]

    def test_callable_ends_on_stopiteration(self) -> None:
        state = iter(range(4))

        def read() -> int:
            return next(state)

        items, _ = run_to_list(source=read)
        assert items == [0, 1, 2, 3]

    def test_async_generator_function(self) -> None:
        async def ticks() -> Any:
            for i in range(5):
                await asyncio.sleep(0)
                yield i * 10

        items, _ = run_to_list(source=ticks)
        assert items == [0, 10, 20, 30, 40]

    def test_async_iterator_object(self) -> None:
        class Countdown:
            def __init__(self, n: int) -> None:
                self.n = n

            def __aiter__(self) -> Countdown:
                return self

            async def __anext__(self) -> int:
                if self.n == 0:
                    raise StopAsyncIteration
                self.n -= 1
                return self.n

        items, _ = run_to_list(source=Countdown(4))
        assert items == [3, 2, 1, 0]

    def test_async_source_stops_while_waiting(self) -> None:
        async def slow() -> Any:
            yield 1
            await asyncio.sleep(3600)
            yield 2

        got: list[int] = []
        first = threading.Event()
        p = Pipeline(Extractor(slow) >> Loader(lambda x: (got.append(x), first.set())))
        p.start()
        assert first.wait(HANG)
        p.stop()
        result = p.join(HANG)
        assert got == [1] and result.status == "stopped"

    def test_source_failure_raises_naming_node(self) -> None:
        def broken() -> Iterator[int]:
            yield 1
            raise OSError("disk gone")

        p = Pipeline(Extractor(broken) >> Loader(lambda x: None))
        with pytest.raises(NodeError, match="Extractor 'broken' failed: OSError: disk gone") as info:
            p.run(timeout=HANG)
        assert isinstance(info.value.__cause__, OSError)

    def test_source_failure_skip_ends_iterator(self) -> None:
        def broken() -> Iterator[int]:
            yield 1
            raise OSError("disk gone")

        items, result = run_to_list(source=Extractor(broken, on_error="skip"))
        assert items == [1]
        assert result["broken"].errors == 1

    def test_callable_source_retried(self) -> None:
        calls = {"n": 0}

        def flaky() -> int:
            calls["n"] += 1
            if calls["n"] > 6:
                raise StopIteration
            if calls["n"] % 2 == 1:
                raise ConnectionError("try again")
            return calls["n"]

        sink = Loader.to_list()
        result = Pipeline(Extractor(flaky, retries=1) >> sink).run(timeout=HANG)
        assert result.results[sink.name] == [2, 4, 6]
        assert result["flaky"].retried == 3
        assert result["flaky"].errors == 0

    def test_refuses_non_sources(self) -> None:
        with pytest.raises(NotCallableError, match="Extractor 'extractor': source must be"):
            Extractor(42)
        with pytest.raises(NotCallableError, match="wrap it in a list"):
            Extractor("text")


# --------------------------------------------------------------------------- Transformer

class TestTransformer:
    def test_map_keeps_order(self) -> None:
        items, result = run_to_list(Transformer(lambda x: x * 3), source=range(5000))
        assert items == [x * 3 for x in range(5000)]
        assert result["transformer"].as_dict()["in"] == 5000
        assert result["transformer"]["out"] == 5000

    def test_needs_more_work_walks_a_directory_tree(self, tmp_path: Any) -> None:
        expected = set()
        for d in ("a", "a/b", "a/b/c", "d"):
            (tmp_path / d).mkdir(parents=True, exist_ok=True)
        for f in ("top.txt", "a/1.txt", "a/b/2.txt", "a/b/c/3.txt", "d/4.txt", "d/5.txt"):
            (tmp_path / f).write_text("x")
            expected.add(os.path.normpath(str(tmp_path / f)))

        def walk(path: str) -> Iterator[Any]:
            for name in sorted(os.listdir(path)):
                full = os.path.normpath(os.path.join(path, name))
                yield NeedsMoreWork(full) if os.path.isdir(full) else full

        items, result = run_to_list(Transformer(walk, capacity=1), source=[str(tmp_path)], capacity=1)
        assert sorted(items) == sorted(expected)
        assert result["walk"].fed_back == 4  # a, a/b, a/b/c, d

    def test_needs_more_work_countdown(self) -> None:
        def countdown(x: tuple[int, int]) -> Any:
            key, n = x
            return NeedsMoreWork((key, n - 1)) if n > 0 else key

        items, result = run_to_list(Transformer(countdown), source=[(k, k % 7) for k in range(300)])
        assert sorted(items) == list(range(300))
        assert result["countdown"].fed_back == sum(k % 7 for k in range(300))

    def test_error_return_goes_through_policy(self) -> None:
        def check(x: int) -> Any:
            return Error(f"odd: {x}") if x % 2 else x

        items, result = run_to_list(Transformer(check, on_error="skip"), source=range(10))
        assert items == [0, 2, 4, 6, 8]
        assert result["check"].errors == 5

    def test_generator_flat_map_sends_every_output(self) -> None:
        def triple(x: int) -> Iterator[int]:
            yield x
            yield x + 1000
            yield x + 2000

        items, result = run_to_list(Transformer(triple), source=range(500))
        assert sorted(items) == sorted([x + k for x in range(500) for k in (0, 1000, 2000)])
        assert result["triple"].received == 500 and result["triple"].emitted == 1500

    def test_generator_yielding_nothing_drops_input(self) -> None:
        def evens_only(x: int) -> Iterator[int]:
            if x % 2 == 0:
                yield x

        items, _ = run_to_list(Transformer(evens_only), source=range(10))
        assert items == [0, 2, 4, 6, 8]

    def test_flat_true_flattens_returned_iterables(self) -> None:
        items, _ = run_to_list(Transformer(lambda s: s.split(), flat=True), source=["a b", "c", ""])
        assert items == ["a", "b", "c"]

    def test_stateful_class_with_hooks(self) -> None:
        class Numberer:
            def __init__(self) -> None:
                self.opened = 0
                self.closed = 0
                self.count = 0

            def open(self) -> None:
                self.opened += 1

            def __call__(self, item: str) -> tuple[int, str]:
                self.count += 1
                return self.count, item

            def close(self) -> None:
                self.closed += 1

        numberer = Numberer()
        items, result = run_to_list(Transformer(numberer), source=list("xyz"))
        assert items == [(1, "x"), (2, "y"), (3, "z")]
        assert (numberer.opened, numberer.closed) == (1, 1)
        assert "numberer" in result.nodes

    def test_not_callable(self) -> None:
        with pytest.raises(NotCallableError, match="Transformer 'parse': function must be callable"):
            Transformer(3, name="parse")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Filter

class TestFilter:
    def test_passes_true_counts_filtered(self) -> None:
        items, result = run_to_list(Filter(lambda x: x % 3 == 0), source=range(30))
        assert items == list(range(0, 30, 3))
        assert result["filter"].filtered == 20 and result["filter"].emitted == 10

    def test_rejecting_everything_sends_nothing(self) -> None:
        calls: list[int] = []
        sink = Loader(lambda b: calls.append(len(b)), batch=True)
        result = Pipeline(Extractor(range(1000)) >> Filter(lambda x: False) >> sink).run(timeout=HANG)
        assert calls == []
        assert result["filter"].filtered == 1000

    def test_predicate_error_policy(self) -> None:
        items, result = run_to_list(Filter(lambda x: 10 // x > 2, on_error="skip"), source=range(6))
        assert items == [1, 2, 3]
        assert result["filter"].errors == 1

    def test_retries_in_order_and_counts_every_item_once(self) -> None:
        calls: list[int] = []
        flaky_left = {4: 1, 9: 5}  # 4 fails once (then kept), 9 fails every time

        def pred(x: int) -> Any:
            calls.append(x)
            if flaky_left.get(x, 0) > 0:
                flaky_left[x] -= 1
                if x == 9:
                    return Error(ValueError("nine"))
                raise ValueError("four")
            return x % 2 == 0

        items, result = run_to_list(Filter(pred, retries=2, on_error="skip", name="filter"), source=range(12))
        assert items == [0, 2, 4, 6, 8, 10]
        # a failed item is retried before the items behind it are first called
        assert calls == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 9, 9, 10, 11]
        st = result["filter"]
        assert (st.emitted, st.filtered, st.errors, st.retried) == (6, 5, 1, 3)


# --------------------------------------------------------------------------- routing nodes

class TestBalancer:
    def test_round_robin(self) -> None:
        sinks = [Loader.to_list(name=f"s{i}") for i in range(3)]
        p = Pipeline()
        p.connect(Extractor(range(10)), Balancer(name="split"))
        p.connect(p["split"], sinks)
        result = p.run(timeout=HANG)
        assert result.results["s0"] == [0, 3, 6, 9]
        assert result.results["s1"] == [1, 4, 7]
        assert result.results["s2"] == [2, 5, 8]
        assert result["split"].emitted == 10
        result.check_accounting()


class TestBroadcast:
    def test_every_item_to_every_receiver(self) -> None:
        sinks = [Loader.to_list(name=f"s{i}") for i in range(3)]
        result = Pipeline(Extractor(range(100)) >> Broadcast() >> sinks).run(timeout=HANG)
        for s in sinks:
            assert result.results[s.name] == list(range(100))
        assert result["broadcast"].emitted == 300
        result.check_accounting()

    def test_copy(self) -> None:
        a, b = Loader.to_list(name="a"), Loader.to_list(name="b")
        mutate = Transformer(lambda lst: lst.append(0) or lst)
        p = Pipeline(Extractor([[1], [2]]) >> Broadcast(copy=list) >> [a, mutate >> b])
        result = p.run(timeout=HANG)
        assert result.results["a"] == [[1], [2]]  # untouched by the other branch
        assert result.results["b"] == [[1, 0], [2, 0]]


class TestFunnel:
    def test_merges_and_ends_when_all_inputs_end(self) -> None:
        sources = [Extractor(range(k * 1000, k * 1000 + 300), name=f"src{k}") for k in range(4)]
        sink = Loader.to_list()
        result = Pipeline(sources >> Funnel() >> sink).run(timeout=HANG)
        items = result.results[sink.name]
        assert sorted(items) == sorted(x for k in range(4) for x in range(k * 1000, k * 1000 + 300))
        for k in range(4):  # each input's own order is kept
            mine = [x for x in items if k * 1000 <= x < k * 1000 + 300]
            assert mine == sorted(mine)
        result.check_accounting()

    def test_forwards_while_other_inputs_idle(self) -> None:
        release = threading.Event()
        got = threading.Event()

        def idle() -> Iterator[int]:
            release.wait(HANG)
            return
            yield

        p = Pipeline([Extractor(idle, name="idle"), Extractor([7], name="busy")] >> Funnel()
                     >> Loader(lambda x: got.set()))
        p.start()
        try:
            assert got.wait(HANG)  # arrived while the other input is still open and idle
        finally:
            release.set()
        p.join(HANG)


class TestMessenger:
    def test_routes_by_receiver_name(self) -> None:
        m = Messenger(lambda x: "even" if x % 2 == 0 else "odd", name="router")
        even, odd = Loader.to_list(name="even"), Loader.to_list(name="odd")
        result = Pipeline(Extractor(range(10)) >> m >> [even, odd]).run(timeout=HANG)
        assert result.results["even"] == [0, 2, 4, 6, 8]
        assert result.results["odd"] == [1, 3, 5, 7, 9]

    def test_routes_mapping_and_default(self) -> None:
        small, big, rest = Loader.to_list(name="small"), Loader.to_list(name="big"), Loader.to_list(name="rest")
        m = Messenger(lambda x: len(x), routes={1: small, 3: "big"}, default=rest)
        p = Pipeline(Extractor(["a", "bbb", "cc", "d", "eeee"]) >> m, small, big, rest)
        result = p.run(timeout=HANG)
        assert result.results == {"small": ["a", "d"], "big": ["bbb"], "rest": ["cc", "eeee"]}
        result.check_accounting()

    def test_unknown_key_raises_by_default(self) -> None:
        m = Messenger(lambda x: x, name="router")
        p = Pipeline(Extractor(["a", "zzz"]) >> m >> Loader.to_list(name="a"))
        with pytest.raises(NodeError, match="Messenger 'router' failed on item 'zzz'") as info:
            p.run(timeout=HANG)
        assert isinstance(info.value.__cause__, RoutingError)

    def test_unknown_key_dead_letter(self) -> None:
        m = Messenger(lambda x: x, on_error="dead_letter")
        result = Pipeline(Extractor(["a", "q", "a"]) >> m >> Loader.to_list(name="a")).run(timeout=HANG)
        assert result.results["a"] == ["a", "a"]
        assert [r.item for r in result.dead_letters] == ["q"]
        assert isinstance(result.dead_letters[0].exception, RoutingError)
        result.check_accounting()


# --------------------------------------------------------------------------- Accumulator

class TestAccumulator:
    def test_groups_by_count_with_partial_at_end(self) -> None:
        items, result = run_to_list(Accumulator(4), source=range(10))
        assert items == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert result["accumulator"].emitted == 3

    def test_no_empty_group(self) -> None:
        items, _ = run_to_list(Accumulator(5), source=range(10))
        assert items == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]

    def test_window_emits_while_source_is_idle(self) -> None:
        gate = threading.Event()
        groups: list[list[int]] = []
        first = threading.Event()

        def source() -> Iterator[int]:
            yield 1
            yield 2
            gate.wait(HANG)  # idle: the window must close the group on its own
            yield 3

        def load(g: list[int]) -> None:
            groups.append(g)
            first.set()

        p = Pipeline(Extractor(source) >> Accumulator(window=0.05) >> Loader(load))
        p.start()
        assert first.wait(HANG)
        gate.set()
        result = p.join(HANG)
        assert groups == [[1, 2], [3]]
        result.check_accounting()

    def test_needs_count_or_window(self) -> None:
        with pytest.raises(ValidationError, match="Accumulator 'accumulator': give count=, window= or both"):
            Accumulator()
        with pytest.raises(ValidationError, match="window must be a positive number"):
            Accumulator(window=0)


# --------------------------------------------------------------------------- Loader

class TestLoader:
    def test_per_item_return_values_reported(self) -> None:
        result = Pipeline(Extractor(range(5)) >> Loader(lambda x: x * x if x % 2 else None, name="sq")
                          ).run(timeout=HANG)
        assert result.results["sq"] == [1, 9]
        assert result["sq"].emitted == 5

    def test_batch_loader(self) -> None:
        total = []
        result = Pipeline(Extractor(range(1000)) >> Loader(lambda b: total.append(sum(b)), batch=True)
                          ).run(timeout=HANG)
        assert sum(total) == sum(range(1000))
        assert result.loaded == 1000

    def test_result_method_wins(self) -> None:
        class Summer:
            def __init__(self) -> None:
                self.total = 0

            def __call__(self, x: int) -> None:
                self.total += x

            def result(self) -> int:
                return self.total

        result = Pipeline(Extractor(range(101)) >> Loader(Summer(), name="sum")).run(timeout=HANG)
        assert result.results["sum"] == 5050

    def test_to_list_into_given_list(self) -> None:
        target: list[int] = []
        result = Pipeline(Extractor(range(3)) >> Loader.to_list(target, name="out")).run(timeout=HANG)
        assert target == [0, 1, 2] and result.results["out"] is target

    def test_to_file(self, tmp_path: Any) -> None:
        path = tmp_path / "out.txt"
        result = Pipeline(Extractor(range(4)) >> Loader.to_file(path, name="file")).run(timeout=HANG)
        assert path.read_text() == "0\n1\n2\n3\n"
        assert result.results["file"] == 4

    def test_to_callback(self) -> None:
        seen: list[int] = []

        def remember(x: int) -> None:
            seen.append(x)

        result = Pipeline(Extractor(range(3)) >> Loader.to_callback(remember)).run(timeout=HANG)
        assert seen == [0, 1, 2] and result.results["remember"] == 3

    def test_sinks_directly(self, tmp_path: Any) -> None:
        p = Pipeline(Extractor(["x", "y"]) >> Broadcast() >> [Loader(ListSink(), name="l"),
                                                             Loader(FileSink(tmp_path / "f"), name="f"),
                                                             Loader(CallbackSink(print), name="c")])
        result = p.run(timeout=HANG)
        assert result.results == {"l": ["x", "y"], "f": 2, "c": 2}

    def test_batch_failure_is_per_item(self) -> None:
        seen: list[list[int]] = []

        def store(batch: list[int]) -> None:
            seen.append(list(batch))
            if 13 in batch:
                raise ValueError("bad batch")

        result = Pipeline(Extractor(range(20)) >> Loader(store, batch=True, on_error="dead_letter"),
                          batch_size=5).run(timeout=HANG)
        # batches of at most batch_size items, in order (smaller ones while the node's speed is measured)
        assert [x for b in seen for x in b] == list(range(20)) and max(map(len, seen)) <= 5
        (bad,) = [b for b in seen if 13 in b]
        assert sorted(r.item for r in result.dead_letters) == bad
        assert result.loaded == 20 - len(bad)
        result.check_accounting()


# --------------------------------------------------------------------------- logic without threads

class TestLogicAlone:
    """Node logic is plain per-batch code: it runs without a pipeline or threads."""

    def test_transformer_logic(self) -> None:
        node = Transformer(lambda x: NeedsMoreWork(x - 1) if x > 0 else "done", name="t")
        ctx = LocalContext(node.make_stats())
        logic = make_logic(node, ctx, 1, ["next"])
        out = Outbox(1)
        logic.process([0, 2], out)
        assert out.ports[0] == ["done"] and logic.has_feedback()
        while logic.has_feedback():
            logic.process_feedback(10, out)
        logic.finish(out)
        out.flush()
        assert out.sent[0] == ["done", "done"]
        assert ctx.stats.fed_back == 2

    def test_filter_and_errors_logic(self) -> None:
        node = Filter(lambda x: 1 / x > 0.3, on_error="log", name="f")
        ctx = LocalContext(node.make_stats())
        logic = make_logic(node, ctx, 1, ["next"])
        out = Outbox(1)
        logic.process([1, 0, 2, 5], out)
        assert out.ports[0] == [1, 2]
        assert ctx.stats.filtered == 1 and ctx.stats.errors == 1
        assert isinstance(ctx.errors[0], ErrorRecord) and ctx.errors[0].item == 0

    def test_balancer_logic_continues_round_robin_across_batches(self) -> None:
        node = Balancer(name="b")
        logic = make_logic(node, LocalContext(node.make_stats()), 2, ["x", "y"])
        out = Outbox(2)
        logic.process([1, 2, 3], out)
        logic.process([4, 5], out)
        assert out.ports == [[1, 3, 5], [2, 4]]

    def test_accumulator_logic_window(self) -> None:
        node = Accumulator(10, window=5.0)
        logic = make_logic(node, LocalContext(node.make_stats()), 1, ["next"])
        out = Outbox(1)
        logic.process([1, 2], out)
        deadline = logic.next_deadline()
        assert deadline is not None
        logic.tick(deadline - 1, out)
        assert out.ports[0] == []
        logic.tick(deadline, out)
        assert out.sent[0] == [[1, 2]] or out.ports[0] == [[1, 2]]


# --------------------------------------------------------------------------- calling the user's function

def test_callable_objects_are_called_as_python_would() -> None:
    import functools

    from reflux.logic.base import direct_call as _direct_call

    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def __call__(self, x: int) -> int:
            self.n += 1
            return x + self.n

    c = Counter()
    c.__call__ = lambda x: "instance attribute"  # type: ignore[method-assign]  # an implicit call ignores it
    call = _direct_call(c)
    assert call is not c and call(10) == 11 and c(10) == 12 and c.n == 2

    def f(x: int) -> int:
        return x

    part = functools.partial(pow, 2)
    for fn in (f, len, part, Counter, print):
        assert _direct_call(fn) is fn  # functions, builtins, partials and classes as they are

    class Slotted:
        __call__ = staticmethod(f)  # not a plain function on the class: left to the interpreter

    s = Slotted()
    assert _direct_call(s) is s

    # a stateful Loader and Transformer still see every item once, in order
    sink = Counter()
    t = Counter()
    result = Pipeline(Extractor(range(600)) >> Transformer(t, name="t") >> Loader(sink, name="sink")).run(timeout=HANG)
    assert t.n == 600 and sink.n == 600 and result["sink"].received == 600
