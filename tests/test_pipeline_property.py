"""Property-based tests: random pipelines account for every item.

Hypothesis builds random graphs of every node kind (Funnel fan-in, Balancer,
Broadcast, Messenger with and without a default route, Filter, failing
Transformers under each policy, feedback, flat-map, Accumulator) with small
channels and batches.  Every extracted item starts with weight 1; a Broadcast
branch or a flat-map splits the weight among the copies it makes, so the
weights of an item's final outcomes (loaded, filtered, failed, dead-lettered)
must add up to exactly 1, whatever path the scheduler made it take.  The
result's counters must agree with what the user functions saw.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reflux import (
    Accumulator,
    Balancer,
    Broadcast,
    Extractor,
    Filter,
    Funnel,
    Loader,
    Messenger,
    NeedsMoreWork,
    Node,
    NodeError,
    Pipeline,
    Transformer,
)

HANG = 60
#: more examples for a stress run: REFLUX_PROPERTY_EXAMPLES=2000 pytest tests/test_pipeline_property.py
EXAMPLES = int(os.environ.get("REFLUX_PROPERTY_EXAMPLES", "60"))

Item = tuple  # (root id, weight, hops)

leaf = st.tuples(st.just("load"), st.integers(0, 2))


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    many = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.tuples(st.just("map"), st.integers(2, 7), st.sampled_from(["skip", "log", "dead_letter"]), children),
        st.tuples(st.just("filter"), st.integers(2, 5), children),
        st.tuples(st.just("feedback"), st.integers(1, 3), children),
        st.tuples(st.just("flat"), st.integers(1, 3), children),
        st.tuples(st.just("acc"), st.integers(1, 5), children),
        st.tuples(st.just("balance"), many),
        st.tuples(st.just("broadcast"), many),
        st.tuples(st.just("messenger"), st.booleans(), many),
    )


specs = st.recursive(leaf, _extend, max_leaves=6)


class Builder:
    """Turns a spec into nodes of a pipeline and keeps the side records the test checks."""

    def __init__(self, p: Pipeline, raise_at: int | None) -> None:
        self.p = p
        self.ids = itertools.count()
        self.loaders: dict[int, Loader] = {}
        self.lock = threading.Lock()
        self.filtered: dict[str, list[Item]] = defaultdict(list)
        self.failed: dict[str, list[Item]] = defaultdict(list)
        self.messengers: set[str] = set()
        self.raise_at = raise_at  # a root on which the first map node fails with "raise"

    def name(self, kind: str) -> str:
        return f"{kind}{next(self.ids)}"

    def link(self, upstream: Node | None, node: Node) -> Node:
        if upstream is None:
            self.p.add(node)
        else:
            self.p.connect(upstream, node)
        return node

    def build(self, spec: Any, upstream: Node | None) -> Node:
        """Build ``spec`` fed by ``upstream`` (None: only add); return its first node."""
        kind = spec[0]
        if kind == "load":
            sink = self.loaders.get(spec[1])
            if sink is None:
                sink = self.loaders[spec[1]] = Loader.to_list(name=f"load{spec[1]}")
            if upstream is None:
                self.p.add(sink)
            elif not any(a is upstream and b is sink for a, b in self.p.edges):
                self.p.connect(upstream, sink)
            return sink
        if kind == "map":
            _, mod, policy, child = spec
            name = self.name("map")
            fail = self.failed[name]
            raise_at = self.raise_at
            if raise_at is not None:
                policy, self.raise_at = "raise", None

            def fn(item: Item, mod: int = mod, fail: list[Item] = fail) -> Item:
                if item[0] % mod == 0 or item[0] == raise_at:
                    fail.append(item)
                    raise ValueError(f"no {item[0]}")
                return item

            node = self.link(upstream, Transformer(fn, name=name, on_error=policy))
        elif kind == "filter":
            _, mod, child = spec
            name = self.name("filter")
            rejected = self.filtered[name]

            def pred(item: Item, mod: int = mod, rejected: list[Item] = rejected) -> bool:
                if (item[0] + 1) % mod == 0:
                    rejected.append(item)
                    return False
                return True

            node = self.link(upstream, Filter(pred, name=name))
        elif kind == "feedback":
            _, hops, child = spec

            def again(item: Item, hops: int = hops) -> Any:
                root, w, h = item
                return NeedsMoreWork((root, w, h + 1)) if h < hops else (root, w, 0)

            node = self.link(upstream, Transformer(again, name=self.name("feedback")))
        elif kind == "flat":
            _, k, child = spec

            def split(item: Item, k: int = k) -> Iterator[Item]:
                root, w, _ = item
                for _ in range(k):
                    yield (root, w / k, 0)

            node = self.link(upstream, Transformer(split, name=self.name("flat")))
        elif kind == "acc":
            _, count, child = spec
            acc = self.link(upstream, Accumulator(count, name=self.name("acc")))

            def unpack(group: list[Item]) -> Iterator[Item]:
                yield from group

            node = acc
            self.p.connect(acc, Transformer(unpack, name=self.name("unpack")))
            self.build(child, self.p.edges[-1][1])
            return acc
        else:
            return self.build_router(spec, upstream)
        self.build(child, node)
        return node

    def branch_head(self, share: int) -> Transformer:
        def divide(item: Item, share: int = share) -> Item:
            root, w, h = item
            return (root, w / share, h)

        return Transformer(divide, name=self.name("branch"))

    def build_router(self, spec: Any, upstream: Node | None) -> Node:
        kind = spec[0]
        children = spec[-1]
        if kind == "balance":
            router: Node = Balancer(name=self.name("balance"))
        elif kind == "broadcast":
            router = Broadcast(name=self.name("broadcast"))
        else:
            key_mod = len(children) + 1

            def key(item: Item, key_mod: int = key_mod) -> int:
                return item[0] % key_mod

            router = Messenger(key, name=self.name("messenger"), on_error="dead_letter")
            self.messengers.add(router.name)
        self.link(upstream, router)
        share = len(children) if kind == "broadcast" else 1
        heads = []
        for child in children:
            head = self.branch_head(share)
            self.p.add(head)
            heads.append(head)
            self.build(child, head)
        if isinstance(router, Messenger):
            if spec[1]:  # default route: the last child
                router.route_table.update({i: h for i, h in enumerate(heads[:-1])})
                router.default = heads[-1]
            else:  # key m has no route: dead-lettered
                router.route_table.update({i: h for i, h in enumerate(heads)})
        else:
            self.p.connect(router, heads)
        return router


def build_pipeline(spec: Any, n_sources: int, n_items: int, capacity: int, batch: int, use_funnel: bool,
                   raise_at: int | None = None, pulled: list[int] | None = None
                   ) -> tuple[Pipeline, Builder, list[int]]:
    """The pipeline of ``spec`` fed by ``n_sources`` Extractors sharing ``n_items`` roots.

    With ``pulled``, the sources are generators that record each root they yield."""
    p = Pipeline(capacity=capacity, batch_size=batch)
    b = Builder(p, raise_at)
    roots = list(range(n_items))
    if pulled is None:
        sources = [Extractor([(r, Fraction(1), 0) for r in roots[k::n_sources]], name=f"src{k}")
                   for k in range(n_sources)]
    else:
        def gen(mine: list[int]) -> Any:
            def source() -> Iterator[Item]:
                for r in mine:
                    pulled.append(r)
                    yield (r, Fraction(1), 0)
            return source

        sources = [Extractor(gen(roots[k::n_sources]), name=f"src{k}") for k in range(n_sources)]
    head = b.branch_head(1)
    p.add(head)
    if use_funnel and n_sources > 1:
        funnel = Funnel(name="funnel")
        p.connect(sources, funnel)
        p.connect(funnel, head)
    else:
        p.connect(sources, head)
    b.build(spec, head)
    return p, b, roots


def check_weights(result: Any, b: Builder, roots: list[int]) -> None:
    total: dict[int, Fraction] = defaultdict(Fraction)
    outcomes = 0
    for sink in b.loaders.values():
        for root, w, _ in result.results[sink.name]:
            total[root] += w
            outcomes += 1
    for items in list(b.filtered.values()) + list(b.failed.values()):
        for root, w, _ in items:
            total[root] += w
            outcomes += 1
    for rec in result.dead_letters:
        if rec.node in b.messengers:
            root, w, _ = rec.item
            total[root] += w
            outcomes += 1
    wrong = {r: total.get(r, Fraction(0)) for r in roots if total.get(r, Fraction(0)) != 1}
    assert not wrong, f"items not accounted for exactly once (root: weight): {dict(list(wrong.items())[:5])}"


def check_counters(result: Any, b: Builder) -> None:
    for name, rejected in b.filtered.items():
        assert result[name].filtered == len(rejected)
    for name, failed in b.failed.items():
        assert result[name].errors == len(failed)
    for sink in b.loaders.values():
        assert result[sink.name].emitted == len(result.results[sink.name])
    for name in b.messengers:
        assert result[name].errors == len([r for r in result.dead_letters if r.node == name])


@pytest.fixture(autouse=True)
def quiet_log_policy() -> Iterator[None]:
    log = logging.getLogger("reflux")
    old = log.disabled
    log.disabled = True
    yield
    log.disabled = old


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, n_sources=st.integers(1, 3), n_items=st.integers(0, 60), capacity=st.integers(1, 8),
       batch=st.integers(1, 8), use_funnel=st.booleans())
def test_random_pipelines_account_for_every_item(spec: Any, n_sources: int, n_items: int, capacity: int,
                                                 batch: int, use_funnel: bool) -> None:
    p, b, roots = build_pipeline(spec, n_sources, n_items, capacity, batch, use_funnel)
    result = p.run(timeout=HANG)
    assert result.status == "completed"
    result.check_accounting()
    assert result.dropped == 0
    assert result.extracted == n_items
    check_weights(result, b, roots)
    check_counters(result, b)
    assert not [t for t in threading.enumerate() if t.name.startswith("reflux:")]


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, n_items=st.integers(1, 60), capacity=st.integers(1, 8), batch=st.integers(1, 8),
       raise_at=st.integers(0, 59))
def test_random_failing_pipelines_still_account(spec: Any, n_items: int, capacity: int, batch: int,
                                                raise_at: int) -> None:
    """A node failing under "raise" abandons the run: the counters still add up."""
    p, _, _ = build_pipeline(("map", 97, "skip", spec), 1, n_items, capacity, batch, False, raise_at % n_items)
    with pytest.raises(NodeError):
        p.run(timeout=HANG)
    result = p.result
    assert result is not None and result.status == "failed"
    result.check_accounting()
    deadline = time.monotonic() + 10
    while [t for t in threading.enumerate() if t.name.startswith("reflux:")] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("reflux:")]


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, n_sources=st.integers(1, 3), capacity=st.integers(1, 8), batch=st.integers(1, 8),
       drain=st.booleans(), delay=st.floats(0, 0.03))
def test_random_pipelines_stopped_midway(spec: Any, n_sources: int, capacity: int, batch: int, drain: bool,
                                         delay: float) -> None:
    """stop() at a random moment: with drain=True every item extracted reaches an
    outcome; with drain=False the abandoned ones are counted as dropped."""
    pulled: list[int] = []
    p, b, _ = build_pipeline(spec, n_sources, 10**6, capacity, batch, True, pulled=pulled)
    p.start()
    time.sleep(delay)
    p.stop(drain=drain)
    result = p.join(HANG)
    assert result.status == "stopped"
    result.check_accounting()
    assert result.extracted == len(pulled) < 10**6
    if drain:
        assert result.dropped == 0
        check_weights(result, b, pulled)
        check_counters(result, b)
