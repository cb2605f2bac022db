"""Compiling a graph into a plan: one bounded channel per node input, one task per node.

The plan is what the run layer executes (:mod:`reflux.run`); it holds real
channels of the compiled core but no threads, and does not depend on how it
will be run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reflux_core.channel import Channel, MPMCChannel, RecordChannel, SPSCChannel

from ..result import NodeStats
from .base import Node
from .executors import apply_default_executor
from .graph import Graph
from .nodes import Messenger

__all__ = ["Inbox", "Plan", "RECORD_EDGE_CAPACITY", "Task", "compile_plan"]

#: least records a record edge holds (its capacity is the larger of this and the node's ``capacity``)
RECORD_EDGE_CAPACITY = 4096


@dataclass(eq=False)
class Inbox:
    """The bounded input channel of one node and how many tasks write into it.

    The channel is closed (end of stream) when the last of its producers ends.
    With ``records`` it is a :class:`~reflux_core.channel.RecordChannel`
    between two plug-in nodes (a *record edge*, see :func:`compile_plan`).
    """

    owner: str
    #: a Channel, or a RecordChannel when ``records`` (``Any``: users branch on ``records``)
    channel: Any
    producers: int
    records: bool = False
    #: what a full input does with more items: "block", "drop_oldest" or "drop_newest"
    overflow: str = "block"


@dataclass(eq=False)
class Task:
    """One node of the plan: its counters, input, outputs (one per receiver) and dead-letter output."""

    node: Node
    stats: NodeStats
    inbox: Inbox | None
    outputs: list[Inbox]
    port_names: list[str]
    batch_size: int
    dead_letter: Inbox | None = None
    #: a Messenger's table of key -> output port, and its default port
    ports: dict[Any, int] | None = None
    default_port: int | None = None

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.name


@dataclass(eq=False)
class Plan:
    """What a runtime executes: the tasks and their channels, in pipeline order."""

    name: str
    tasks: list[Task]
    inboxes: list[Inbox] = field(default_factory=list)
    #: name of the built-in dead-letter Loader, if one was added
    auto_dead_letter: str | None = None
    #: whether the runtime may fuse chains of plain stages into one task
    fuse: bool = True

    def task(self, name: str) -> Task:
        """The task of the node called ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"plan '{self.name}' has no node named {name!r}")


def compile_plan(graph: Graph, *, record_edges: bool | None = None) -> Plan:
    """Validate, then build the plan: one bounded channel per node input
    (SPSC when one node feeds it, MPMC when several do), one task per node.

    A *record edge* ``a -> b`` gets a
    :class:`~reflux_core.channel.RecordChannel` of ``max(capacity, 4096)``
    records instead (``Inbox.records``): when ``a`` and ``b`` are
    Transformers or Filters made with compiled plug-ins, ``b`` is ``a``'s
    only receiver and ``a`` is ``b``'s only sender (replicas of ``a`` or
    ``b`` make it MPMC), ``a``'s output dtype is ``b``'s input dtype,
    neither keeps order across replicas (``ordered=True``) nor runs in
    processes, and the pipeline has ``record_edges=True``.  A node with a
    record input and a record output runs as a nogil record pump, so it
    cannot retry: with ``retries`` its output stays an object channel.
    ``record_edges=False`` makes none whatever the pipeline says.
    """
    edges, dead = graph.resolved()
    nodes = graph.nodes
    inbox: dict[int, Inbox] = {}
    producers: dict[int, set[int]] = {id(n): set() for n in nodes}
    for a, b in edges:
        producers[id(b)].add(id(a))
    for node in nodes:
        target = dead.get(id(node))
        if target is not None:
            producers[id(target)].add(id(node))
    inboxes: list[Inbox] = []
    record_in = _record_edges(graph, edges, producers) if record_edges is not False else {}
    for node in nodes:
        if node.is_source:
            continue
        n_prod = len(producers[id(node)])
        cap = node.capacity or graph.capacity
        # replicas (parallel=N) make a channel multi-producer or multi-consumer
        single = (n_prod == 1 and getattr(node, "parallel", 1) == 1
                  and all(getattr(p, "parallel", 1) == 1 for p in nodes if id(p) in producers[id(node)]))
        if id(node) in record_in:
            rch = RecordChannel(record_in[id(node)], max(cap, RECORD_EDGE_CAPACITY),
                                mode="spsc" if single else "mpmc")
            box = Inbox(node.name, rch, n_prod, records=True)
            inbox[id(node)] = box
            inboxes.append(box)
            continue
        # drop_oldest: a producer takes the oldest item out of a full channel, so the
        # channel must allow more than one consumer
        ch: Channel = SPSCChannel(cap) if single and node.overflow != "drop_oldest" else MPMCChannel(cap)
        box = Inbox(node.name, ch, n_prod, overflow=node.overflow)
        inbox[id(node)] = box
        inboxes.append(box)
    if graph.executor is not None:
        apply_default_executor(nodes, graph.executor)
    tasks: list[Task] = []
    for node in nodes:
        receivers = [b for a, b in edges if a is node]
        ports: dict[Any, int] | None = None
        default_port: int | None = None
        if isinstance(node, Messenger):
            ports, default_port = graph.route_ports(node, receivers)
        stats = node.make_stats()
        stats.dead_letter_sink = any(t is node for t in dead.values())
        if node.routes:
            stats.fanout = max(1, len(receivers))
        target = dead.get(id(node))
        tasks.append(Task(
            node=node, stats=stats, inbox=inbox.get(id(node)),
            outputs=[inbox[id(r)] for r in receivers], port_names=[r.name for r in receivers],
            batch_size=node.batch_size or graph.batch_size,
            dead_letter=inbox[id(target)] if target is not None else None,
            ports=ports, default_port=default_port))
    auto = graph.auto_dead_letter.name if graph.auto_dead_letter is not None else None
    return Plan(graph.name, tasks, inboxes, auto, fuse=graph.fuse)


def _record_edges(graph: Graph, edges: list[tuple[Node, Node]], producers: dict[int, set[int]]) -> dict[int, Any]:
    """The nodes whose input is a record edge (see :func:`compile_plan`): ``{id(node): dtype}``."""
    if not graph.record_edges:
        return {}
    nodes = graph.nodes
    if not any(getattr(n, "plugin", None) is not None for n in nodes):
        return {}  # plain Python pipelines never import the plug-in layer (nor numpy)
    from .plugins import record_dtypes

    def eligible(n: Node) -> bool:
        plugin = getattr(n, "plugin", None)
        return (n.kind in ("Transformer", "Filter") and record_dtypes(n) is not None and n.overflow == "block"
                and plugin is not None and plugin.kind in ("transform", "filter")
                and not getattr(n, "flat", False)
                and not getattr(n, "ordered", False) and getattr(n, "executor", "thread") == "thread")

    outs: dict[int, list[Node]] = {}
    for a, b in edges:
        outs.setdefault(id(a), []).append(b)
    record_in: dict[int, Any] = {}
    feeds: dict[int, Node] = {}  # id(a) -> b for each record edge a -> b
    for a, b in edges:
        if (outs.get(id(a)) == [b] and producers[id(b)] == {id(a)} and eligible(a) and eligible(b)
                and record_dtypes(a)[1] == record_dtypes(b)[0]):  # type: ignore[index]
            record_in[id(b)] = record_dtypes(b)[0]  # type: ignore[index]
            feeds[id(a)] = b
    # a record pump (record input and output) cannot retry: keep its output an object edge
    for a in nodes:
        if id(a) in record_in and id(a) in feeds and a.policy.retries > 0:
            del record_in[id(feeds.pop(id(a)))]
    return record_in
