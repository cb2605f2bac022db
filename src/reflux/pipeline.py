"""Wiring nodes into a pipeline, validating it, compiling it to a plan, and running it.

Two ways to wire, freely mixed::

    # chaining shorthand for linear parts (and lists for fan-out / fan-in)
    p = Pipeline(Extractor(range(10)) >> Transformer(double) >> Loader.to_list())

    # explicit edges
    p = Pipeline()
    p.connect(source, split)            # split = Balancer()
    p.connect(split, [worker_a, worker_b])
    p.connect([worker_a, worker_b], sink)

:meth:`Pipeline.validate` (run by :meth:`Pipeline.start`) checks the graph
before anything runs; :meth:`Pipeline.compile` turns it into a :class:`Plan`
(one bounded channel per node input, one task per node) that a runtime
executes.  The default runtime is the worker pool (:mod:`reflux.pool`), which
also fuses chains and runs replicas; ``runtime="threads"`` runs one thread per
node (:mod:`reflux.runtime`).  The plan does not depend on either.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from reflux_core.channel import Channel, MPMCChannel, RecordChannel, SPSCChannel

from .errors import ClogError, ErrorRecord, NodeError, PipelineInterrupted, ValidationError
from .monitor import ON_CLOG, Alert, Monitor, PipelineStats
from .nodes import DEFAULT_BATCH_SIZE, DEFAULT_CAPACITY, Loader, Messenger, Node
from .result import NodeStats, RunResult
from .sinks import ListSink

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from .metrics import MetricsServer
    from .pool import PoolRuntime
    from .runtime import ThreadRuntime

__all__ = ["Flow", "Pipeline", "Plan", "Task", "Inbox"]

logger = logging.getLogger("reflux")

#: least records a record edge holds (its capacity is the larger of this and the node's ``capacity``)
RECORD_EDGE_CAPACITY = 4096

Part = Union[Node, "Flow", Sequence[Any]]


def _check_edge(src: Node, dst: Node) -> None:
    """Refuse an edge that can never be valid; the message names both nodes."""
    if src is dst:
        hint = (" (return NeedsMoreWork(item) to feed an item back)" if src.kind == "Transformer" else "")
        raise ValidationError(f"{src.label} cannot be connected to itself{hint}")
    if src.is_sink:
        raise ValidationError(f"{src.label} is a sink: it cannot send items to {dst.label}")
    if dst.is_source:
        raise ValidationError(f"{dst.label} is a source: it cannot receive items from {src.label}")


class Flow:
    """A fragment of a pipeline graph built with ``>>``: nodes, edges, and the
    nodes at its start (``heads``) and end (``tails``).

    ``a >> b`` connects a's tails to b's heads; a list stands for its members
    side by side, so ``a >> [b, c]`` fans out and ``[b, c] >> d`` fans in.
    Pass flows to :class:`Pipeline` (or :meth:`Pipeline.add`).
    """

    __slots__ = ("edges", "heads", "nodes", "tails")

    def __init__(self, nodes: list[Node], edges: list[tuple[Node, Node]], heads: list[Node],
                 tails: list[Node]) -> None:
        self.nodes = nodes
        self.edges = edges
        self.heads = heads
        self.tails = tails

    @classmethod
    def of(cls, part: Part) -> Flow:
        """A flow made of a node, a flow, or a list/tuple of them (side by side)."""
        if isinstance(part, Flow):
            return part
        if isinstance(part, Node):
            return cls([part], [], [part], [part])
        if isinstance(part, (list, tuple)):
            if not part:
                raise ValidationError("an empty list cannot be wired with >>")
            flows = [cls.of(p) for p in part]
            nodes: list[Node] = []
            edges: list[tuple[Node, Node]] = []
            heads: list[Node] = []
            tails: list[Node] = []
            for f in flows:
                _merge_unique(nodes, f.nodes)
                _merge_unique(edges, f.edges)
                _merge_unique(heads, f.heads)
                _merge_unique(tails, f.tails)
            return cls(nodes, edges, heads, tails)
        raise ValidationError(f"cannot wire {type(part).__name__} {part!r:.60}: expected a node, "
                              "a flow, or a list of them")

    def __rshift__(self, other: Part) -> Flow:
        right = Flow.of(other)
        edges = list(self.edges)
        for t in self.tails:
            for h in right.heads:
                _check_edge(t, h)
                if (t, h) in edges:
                    raise ValidationError(f"{t.label} is already connected to {h.label}")
                edges.append((t, h))
        _merge_unique(edges, right.edges)
        nodes = list(self.nodes)
        _merge_unique(nodes, right.nodes)
        return Flow(nodes, edges, list(self.heads), list(right.tails))

    def __rrshift__(self, other: Part) -> Flow:
        return Flow.of(other) >> self

    def __repr__(self) -> str:
        return f"<Flow {' , '.join(n.label for n in self.nodes)}>"


def _merge_unique(into: list[Any], items: Iterable[Any]) -> None:
    for x in items:
        if not any(x is y or (isinstance(x, tuple) and x == y) for y in into):
            into.append(x)


# --------------------------------------------------------------------------- the plan

@dataclass(eq=False)
class Inbox:
    """The bounded input channel of one node and how many tasks write into it.

    The channel is closed (end of stream) when the last of its producers ends.
    With ``records`` it is a :class:`~reflux_core.channel.RecordChannel`
    between two plug-in nodes (a *record edge*, see :meth:`Pipeline.compile`).
    """

    owner: str
    channel: Channel | RecordChannel
    producers: int
    records: bool = False


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


# --------------------------------------------------------------------------- the pipeline

class Pipeline:
    """A graph of nodes joined by bounded channels; runs them and accounts for every item.

    ``Pipeline(*parts, name="pipeline", capacity=1024, batch_size=256,
    dead_letter=None, max_error_records=1000, join_timeout=10.0, workers=None, fuse=True,
    runtime="pool", executor=None, clog_timeout=60.0, on_clog="warn", on_alert=None,
    record_edges=True)``

    ``parts``
        nodes and flows (``a >> b``) to add.
    ``capacity``
        default slots of each node's input channel (a node's own
        ``capacity=`` wins); channels are bounded, so a slow Loader holds
        memory flat however long the source is.
    ``batch_size``
        default most items a node takes per batch.
    ``dead_letter``
        the Loader that receives the error records of nodes with
        ``on_error="dead_letter"`` (added to the pipeline); without it the
        records are collected in :attr:`RunResult.dead_letters`.
    ``max_error_records``
        how many error records the result keeps (the rest are only counted).
    ``join_timeout``
        seconds to wait for each worker to end once the run is over or
        abandoned; a worker stuck in user code past it is reported in
        :attr:`RunResult.stuck` (and logged) instead of hanging the caller.
    ``workers``
        threads of the worker pool that runs every node (default: the CPUs
        this process may use, at least 2).  Extractors that may block in their source
        (iterators, generators, callables) get a thread of their own.
    ``fuse``
        run chains of plain stages (Extractor, Transformer, Filter, Loader
        joined one to one) as one task, handing lists from stage to stage
        without channels (default ``True``; ``fuse=False`` on a node opts
        that node out).
    ``runtime``
        ``"pool"`` (default, the worker pool) or ``"threads"`` (one thread
        per node, the first runtime; kept for comparison and debugging).
    ``executor``
        the default ``executor`` of the pipeline's Transformers (``"thread"``
        or ``"process"``); a Transformer's own ``executor=`` wins.
    ``clog_timeout``
        the clogging watchdog: a node whose input channel stays full while
        it makes no progress for this many seconds is reported as clogged
        (in :meth:`stats`, the progress view and the log).  ``None`` turns
        the watchdog off.
    ``on_clog``
        what follows a clog: ``"warn"`` (log a warning and go on) or
        ``"stop"`` (fail the run with a :class:`~reflux.ClogError` naming
        the node).
    ``on_alert``
        called with each :class:`~reflux.monitor.Alert` (a node died, was
        clogged, moved again), from a reflux thread, as it happens.
    ``record_edges``
        join two compiled plug-in nodes that feed only each other with a
        record channel, so records go from plug-in to plug-in without the
        GIL (default ``True``, worker pool only; see :meth:`compile`).
    """

    #: seconds between checks of stop / pause flags while waiting
    POLL = 0.1
    #: seconds an Extractor blocked inside its source may delay the end after ``stop()``
    stop_grace = 1.0

    def __init__(self, *parts: Part, name: str = "pipeline", capacity: int = DEFAULT_CAPACITY,
                 batch_size: int = DEFAULT_BATCH_SIZE, dead_letter: Loader | None = None,
                 max_error_records: int = 1000, join_timeout: float = 10.0,
                 workers: int | None = None, fuse: bool = True, runtime: str = "pool",
                 executor: str | None = None, clog_timeout: float | None = 60.0, on_clog: str = "warn",
                 on_alert: Callable[[Alert], Any] | None = None, record_edges: bool = True) -> None:
        for label, value in (("capacity", capacity), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"Pipeline '{name}': {label} must be a positive integer, got {value!r}")
        if isinstance(max_error_records, bool) or not isinstance(max_error_records, int) or max_error_records < 0:
            raise ValidationError(
                f"Pipeline '{name}': max_error_records must be an integer >= 0, got {max_error_records!r}")
        if dead_letter is not None and not isinstance(dead_letter, Loader):
            raise ValidationError(f"Pipeline '{name}': dead_letter must be a Loader, got {dead_letter!r:.60}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValidationError(f"Pipeline '{name}': workers must be a positive integer, got {workers!r}")
        if runtime not in ("pool", "threads"):
            raise ValidationError(f"Pipeline '{name}': runtime must be 'pool' or 'threads', got {runtime!r}")
        self.workers = workers
        self.fuse = bool(fuse)
        self.record_edges = bool(record_edges)
        self.runtime = runtime
        #: default executor of the Transformers that do not choose one (None: "thread")
        self.executor: str | None = None
        if executor is not None:
            from .process import check_executor
            self.executor = check_executor(f"Pipeline '{name}'", executor, None, True)[0]
        if clog_timeout is not None and (isinstance(clog_timeout, bool)
                                         or not isinstance(clog_timeout, (int, float)) or not clog_timeout > 0):
            raise ValidationError(
                f"Pipeline '{name}': clog_timeout must be a positive number of seconds or None, got {clog_timeout!r}")
        if on_clog not in ON_CLOG:
            raise ValidationError(f"Pipeline '{name}': on_clog must be one of {', '.join(ON_CLOG)}; got {on_clog!r}")
        if on_alert is not None and not callable(on_alert):
            raise ValidationError(f"Pipeline '{name}': on_alert must be callable, got {on_alert!r:.60}")
        self.clog_timeout: float | None = None if clog_timeout is None else float(clog_timeout)
        self.on_clog = on_clog
        self.on_alert = on_alert
        self._monitor: Monitor | None = None
        self.name = name
        self.capacity = capacity
        self.batch_size = batch_size
        self.max_error_records = max_error_records
        self.join_timeout = float(join_timeout)
        self._nodes: list[Node] = []
        self._edges: list[tuple[Node, Node]] = []
        self._dead_letter = dead_letter
        self._auto_dead_letter: Loader | None = None
        self._runtime: ThreadRuntime | PoolRuntime | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._finish_lock = threading.Lock()
        self._stopped = False
        self._interrupted = False
        self._started_at = 0.0
        if dead_letter is not None:
            self.add(dead_letter)
        for part in parts:
            self.add(part)

    def __repr__(self) -> str:
        return f"<Pipeline '{self.name}' nodes={len(self._nodes)} edges={len(self._edges)}>"

    # ------------------------------------------------------------------ building

    @property
    def nodes(self) -> list[Node]:
        """The nodes, in the order they were added."""
        return list(self._nodes)

    @property
    def edges(self) -> list[tuple[Node, Node]]:
        """The explicit edges ``(sender, receiver)``, in the order they were made."""
        return list(self._edges)

    def __getitem__(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self._nodes:
            if n.name == name:
                return n
        raise KeyError(f"Pipeline '{self.name}' has no node named {name!r}")

    def __contains__(self, node: object) -> bool:
        return any(node is n for n in self._nodes)

    def _check_mutable(self) -> None:
        if self._runtime is not None and self._result is None:
            raise RuntimeError(f"Pipeline '{self.name}' is running; it cannot be changed now")

    def _claim(self, node: Node) -> None:
        if not isinstance(node, Node):
            raise ValidationError(
                f"Pipeline '{self.name}': {node!r:.60} is not a node (Extractor, Transformer, ...)")
        if node in self:
            return
        if node._pipeline is not None and node._pipeline is not self:
            raise ValidationError(
                f"{node.label} is already used in Pipeline '{node._pipeline.name}'; "
                "a node belongs to one pipeline (make another node)")
        taken = {n.name: n for n in self._nodes}
        if node.name in taken:
            other = taken[node.name]
            if node._explicit_name and other._explicit_name:
                raise ValidationError(
                    f"Pipeline '{self.name}' has two nodes named '{node.name}' "
                    f"({other.kind} and {node.kind}); names must be unique")
            if node._explicit_name:
                other.name = self._unique(other.name, set(taken) | {node.name})
            else:
                node.name = self._unique(node.name, set(taken))
        node._pipeline = self
        self._nodes.append(node)

    @staticmethod
    def _unique(base: str, taken: set[str]) -> str:
        i = 2
        while f"{base}-{i}" in taken:
            i += 1
        return f"{base}-{i}"

    def add(self, *parts: Part) -> Pipeline:
        """Add nodes and flows (with their edges).  Returns the pipeline."""
        self._check_mutable()
        for part in parts:
            if not isinstance(part, (Node, Flow, list, tuple)):
                raise ValidationError(
                    f"Pipeline '{self.name}': {part!r:.60} is not a node (Extractor, Transformer, ...) "
                    "or a flow (a >> b)")
            flow = Flow.of(part)
            for node in flow.nodes:
                self._claim(node)
            for src, dst in flow.edges:
                self._add_edge(src, dst)
        return self

    def _add_edge(self, src: Node, dst: Node) -> None:
        _check_edge(src, dst)
        if any(src is a and dst is b for a, b in self._edges):
            raise ValidationError(f"{src.label} is already connected to {dst.label}")
        self._edges.append((src, dst))

    def connect(self, src: Part, dst: Part) -> Pipeline:
        """Send what ``src`` emits to ``dst``, adding both to the pipeline if needed.

        Either side may be a list: ``connect(a, [b, c])`` fans out (``a``
        must be a Balancer, Broadcast or Messenger), ``connect([a, b], c)``
        fans in.  Returns the pipeline, so calls chain.
        """
        self._check_mutable()
        left = Flow.of(src)
        right = Flow.of(dst)
        for node in left.nodes + right.nodes:
            self._claim(node)
        for a, b in left.edges + right.edges:
            if not any(a is x and b is y for x, y in self._edges):
                self._add_edge(a, b)
        for t in left.tails:
            for h in right.heads:
                self._add_edge(t, h)
        return self

    def chain(self, *nodes: Part) -> Pipeline:
        """Connect each part to the next: ``chain(a, b, c)`` is ``connect(a, b); connect(b, c)``."""
        if len(nodes) < 2:
            raise ValidationError(f"Pipeline '{self.name}': chain() needs at least two parts")
        for a, b in zip(nodes, nodes[1:]):
            self.connect(a, b)
        return self

    # ------------------------------------------------------------------ validation

    def _resolve(self, owner: Node, what: str, target: Node | str) -> Node:
        if isinstance(target, str):
            for n in self._nodes:
                if n.name == target:
                    return n
            raise ValidationError(f"{owner.label} {what} '{target}', which is not a node of this pipeline")
        if target not in self:
            raise ValidationError(f"{owner.label} {what} {target.label}, which is not in the pipeline")
        return target

    def _dead_letter_target(self, node: Node) -> Node | None:
        if node.policy.on_error != "dead_letter":
            return None
        if node.dead_letter is not None:
            target = self._resolve(node, "sends dead letters to", node.dead_letter)
        elif self._dead_letter is not None:
            target = self._dead_letter
        else:
            if self._auto_dead_letter is None:
                taken = {n.name for n in self._nodes}
                name = "dead-letter" if "dead-letter" not in taken else self._unique("dead-letter", taken)
                self._auto_dead_letter = Loader(ListSink(), name=name)
                self._claim(self._auto_dead_letter)
            target = self._auto_dead_letter
        if not isinstance(target, Loader):
            raise ValidationError(f"{node.label} sends dead letters to {target.label}; it must be a Loader")
        if target is node:
            raise ValidationError(f"{node.label} cannot be its own dead-letter Loader")
        if target.policy.on_error == "dead_letter":
            raise ValidationError(
                f"{target.label} receives dead letters, so it cannot use on_error='dead_letter' itself")
        return target

    def _graph(self) -> tuple[list[tuple[Node, Node]], dict[int, Node | None]]:
        """Effective edges (explicit + Messenger routes) and dead-letter targets; validates."""
        if not self._nodes:
            raise ValidationError(f"Pipeline '{self.name}' has no nodes")
        edges = list(self._edges)
        for node in list(self._nodes):
            if isinstance(node, Messenger):
                targets = [(f"routes key {k!r} to", t) for k, t in node.route_table.items()]
                if node.default is not None:
                    targets.append(("has a default route to", node.default))
                for what, t in targets:
                    target = self._resolve(node, what, t)
                    _check_edge(node, target)
                    if not any(node is a and target is b for a, b in edges):
                        edges.append((node, target))
        dead: dict[int, Node | None] = {}
        for node in list(self._nodes):
            dead[id(node)] = self._dead_letter_target(node)
        if not any(n.is_source for n in self._nodes):
            raise ValidationError(f"Pipeline '{self.name}' has no Extractor (nothing would feed it)")
        ins: dict[int, list[Node]] = {id(n): [] for n in self._nodes}
        outs: dict[int, list[Node]] = {id(n): [] for n in self._nodes}
        for a, b in edges:
            outs[id(a)].append(b)
            ins[id(b)].append(a)
        for node in self._nodes:
            fed_dead = any(t is node for t in dead.values()) or node is self._dead_letter
            if not node.is_source and not ins[id(node)] and not fed_dead:
                raise ValidationError(f"{node.label} has no input (connect a node to it)")
            receivers = outs[id(node)]
            if not node.is_sink:
                if not receivers:
                    if node.routes:
                        raise ValidationError(f"{node.label} has no receivers")
                    raise ValidationError(f"{node.label} has no receivers (connect it to a node, e.g. a Loader)")
                if not node.routes and len(receivers) > 1:
                    names = ", ".join(r.label for r in receivers)
                    raise ValidationError(
                        f"{node.label} has {len(receivers)} receivers ({names}); put a Broadcast "
                        "(every item to all) or a Balancer (round-robin) after it to fan out")
        self._check_cycles(edges)
        return edges, dead

    def _check_cycles(self, edges: list[tuple[Node, Node]]) -> None:
        outs: dict[int, list[Node]] = {id(n): [] for n in self._nodes}
        for a, b in edges:
            outs[id(a)].append(b)
        WHITE, GREY, BLACK = 0, 1, 2
        color = {id(n): WHITE for n in self._nodes}
        for start in self._nodes:
            if color[id(start)] != WHITE:
                continue
            stack: list[tuple[Node, int]] = [(start, 0)]
            path: list[Node] = [start]
            color[id(start)] = GREY
            while stack:
                node, i = stack[-1]
                nxt = outs[id(node)]
                if i < len(nxt):
                    stack[-1] = (node, i + 1)
                    child = nxt[i]
                    if color[id(child)] == GREY:
                        loop = path[path.index(child):] + [child]
                        raise ValidationError(
                            "cycle: " + " -> ".join(n.label for n in loop)
                            + " (only a Transformer's own feedback may loop: return NeedsMoreWork(item))")
                    if color[id(child)] == WHITE:
                        color[id(child)] = GREY
                        stack.append((child, 0))
                        path.append(child)
                else:
                    color[id(node)] = BLACK
                    stack.pop()
                    path.pop()

    def validate(self) -> None:
        """Check the graph; raise :class:`~reflux.ValidationError` naming the first bad node.

        Checks: every node but an Extractor has an input; every node but a
        Loader has a receiver (a Balancer, Broadcast or Messenger may have
        several, other nodes one); routes and dead-letter targets are nodes
        of this pipeline; there is no cycle.  (A non-callable function, a
        node used twice, a sink sending or a source receiving are refused
        even earlier, when the node is built or connected.)
        """
        self._graph()

    # ------------------------------------------------------------------ compiling

    def compile(self) -> Plan:
        """Validate, then build the plan: one bounded channel per node input
        (SPSC when one node feeds it, MPMC when several do), one task per node.

        A *record edge* ``a -> b`` gets a
        :class:`~reflux_core.channel.RecordChannel` of ``max(capacity, 4096)``
        records instead (``Inbox.records``): when ``a`` and ``b`` are
        Transformers or Filters made with compiled plug-ins, ``b`` is ``a``'s
        only receiver and ``a`` is ``b``'s only sender (replicas of ``a`` or
        ``b`` make it MPMC), ``a``'s output dtype is ``b``'s input dtype,
        neither keeps order across replicas (``ordered=True``) nor runs in
        processes, and the pipeline runs on the worker pool with
        ``record_edges=True``.  A node with a record input and a record
        output runs as a nogil record pump, so it cannot retry: with
        ``retries`` its output stays an object channel.
        """
        edges, dead = self._graph()
        inbox: dict[int, Inbox] = {}
        producers: dict[int, set[int]] = {id(n): set() for n in self._nodes}
        for a, b in edges:
            producers[id(b)].add(id(a))
        for node in self._nodes:
            target = dead.get(id(node))
            if target is not None:
                producers[id(target)].add(id(node))
        inboxes: list[Inbox] = []
        record_in = self._record_edges(edges, producers)
        for node in self._nodes:
            if node.is_source:
                continue
            n_prod = len(producers[id(node)])
            cap = node.capacity or self.capacity
            # replicas (parallel=N) make a channel multi-producer or multi-consumer
            single = (n_prod == 1 and getattr(node, "parallel", 1) == 1
                      and all(getattr(p, "parallel", 1) == 1 for p in self._nodes if id(p) in producers[id(node)]))
            if id(node) in record_in:
                rch = RecordChannel(record_in[id(node)], max(cap, RECORD_EDGE_CAPACITY),
                                    mode="spsc" if single else "mpmc")
                box = Inbox(node.name, rch, n_prod, records=True)
                inbox[id(node)] = box
                inboxes.append(box)
                continue
            ch: Channel = SPSCChannel(cap) if single else MPMCChannel(cap)
            box = Inbox(node.name, ch, n_prod)
            inbox[id(node)] = box
            inboxes.append(box)
        if self.executor is not None:
            from .process import apply_default_executor
            apply_default_executor(self._nodes, self.executor)
        tasks: list[Task] = []
        for node in self._nodes:
            receivers = [b for a, b in edges if a is node]
            if isinstance(node, Messenger):
                self._assign_routes(node, receivers)
            stats = node.make_stats()
            stats.dead_letter_sink = any(t is node for t in dead.values())
            if node.routes:
                stats.fanout = max(1, len(receivers))
            target = dead.get(id(node))
            tasks.append(Task(
                node=node, stats=stats, inbox=inbox.get(id(node)),
                outputs=[inbox[id(r)] for r in receivers], port_names=[r.name for r in receivers],
                batch_size=node.batch_size or self.batch_size,
                dead_letter=inbox[id(target)] if target is not None else None))
        auto = self._auto_dead_letter.name if self._auto_dead_letter is not None else None
        return Plan(self.name, tasks, inboxes, auto, fuse=self.fuse)

    def _record_edges(self, edges: list[tuple[Node, Node]], producers: dict[int, set[int]]) -> dict[int, Any]:
        """The nodes whose input is a record edge (see :meth:`compile`): ``{id(node): dtype}``."""
        if not self.record_edges or self.runtime != "pool":
            return {}
        if not any(getattr(n, "plugin", None) is not None for n in self._nodes):
            return {}  # plain Python pipelines never import the plug-in layer (nor numpy)
        from .plugins import record_dtypes

        def eligible(n: Node) -> bool:
            plugin = getattr(n, "plugin", None)
            return (n.kind in ("Transformer", "Filter") and record_dtypes(n) is not None
                    and plugin.kind in ("transform", "filter") and not getattr(n, "flat", False)
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
        for a in self._nodes:
            if id(a) in record_in and id(a) in feeds and a.policy.retries > 0:
                del record_in[id(feeds.pop(id(a)))]
        return record_in

    def _assign_routes(self, node: Messenger, receivers: list[Node]) -> None:
        ports: dict[Any, int] = {r.name: i for i, r in enumerate(receivers)}
        index = {id(r): i for i, r in enumerate(receivers)}
        for key, t in node.route_table.items():
            ports[key] = index[id(self._resolve(node, f"routes key {key!r} to", t))]
        node._ports = ports
        node._default_port = (index[id(self._resolve(node, "has a default route to", node.default))]
                              if node.default is not None else None)

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """``True`` between :meth:`start` and the end of the run."""
        return self._runtime is not None and self._result is None and not self._runtime.wait(0)

    @property
    def paused(self) -> bool:
        """``True`` while paused."""
        return self._runtime is not None and self._runtime.paused

    @property
    def result(self) -> RunResult | None:
        """The result of the last finished run (``None`` before)."""
        return self._result

    def start(self) -> Pipeline:
        """Validate, compile and start the run in the background; returns at once.

        Follow with :meth:`join` (or use :meth:`run`, which does both).
        """
        from .pool import PoolRuntime
        from .runtime import ThreadRuntime

        if self._runtime is not None and self._result is None:
            raise RuntimeError(f"Pipeline '{self.name}' is already running")
        plan = self.compile()
        forked = []
        if any(getattr(n, "executor", "thread") == "process" for n in self._nodes):
            from .process import refuse_while_bootstrapping
            refuse_while_bootstrapping(f"Pipeline '{self.name}'")
            forked = [n for n in self._nodes if getattr(n, "executor", "thread") == "process"
                      and getattr(n, "start_method", "spawn") == "fork"]
        self._result = None
        self._error = None
        self._stopped = False
        self._interrupted = False
        self._started_at = time.monotonic()
        if self.runtime == "threads":
            self._runtime = ThreadRuntime(plan, max_error_records=self.max_error_records, poll=self.POLL)
        else:
            self._runtime = PoolRuntime(plan, workers=self.workers, max_error_records=self.max_error_records,
                                        poll=self.POLL)
        # issue 6: stats, alerts and the clogging watchdog (reflux.monitor)
        self._monitor = Monitor(self.name, plan, self._runtime, clog_timeout=self.clog_timeout,
                                on_clog=self.on_clog, on_alert=self.on_alert, paused=lambda: self.paused)
        self._runtime.on_failure = self._monitor.on_failure
        # On the pool the watchdog needs no thread of its own: the workers (every
        # poll) and the thread waiting in join() run its checks.
        pooled = isinstance(self._runtime, PoolRuntime)
        if pooled:
            self._runtime.on_tick = self._monitor.tick
        logger.debug("Pipeline '%s': starting %d nodes", self.name, len(plan.tasks))
        try:
            if forked:
                from .process import prefork
                prefork(forked)  # before any thread of the run exists (see there)
            self._runtime.start()
            self._monitor.start(thread=not pooled)
        except BaseException:
            self._monitor.close()
            self._runtime = None
            if forked:
                from .process import discard_preforked
                discard_preforked(forked)
            raise
        return self

    def stop(self, drain: bool = True) -> None:
        """Stop the run.

        With ``drain=True`` (default) the Extractors stop extracting and every
        item already extracted flows on to the end (so the result shows
        nothing dropped); with ``drain=False`` in-flight items are abandoned
        (counted as ``dropped``) and every node ends at once.  Returns without
        waiting: call :meth:`join`.  Safe from any thread, also from a node's
        own function.
        """
        rt = self._runtime
        if rt is None:
            return
        self._stopped = True
        if drain:
            rt.stop_sources()
        else:
            rt.abort()

    def pause(self) -> None:
        """Pause every node between batches (no CPU is used while paused)."""
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' is not running")
        self._runtime.pause()

    def resume(self) -> None:
        """Resume after :meth:`pause`."""
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' is not running")
        self._runtime.resume()

    def stats(self) -> PipelineStats:
        """A snapshot of the run: a mapping of node name to
        :class:`~reflux.monitor.NodeSnapshot` (counters in/out/filtered/errors/...,
        ``rate_in``/``rate_out`` over the last second, ``busy`` fraction, input
        channel ``queued``/``capacity``/``fill``, ``state``), plus the pipeline's
        ``status``, ``elapsed``, ``clogged``, ``failed`` and ``alerts``.

        Cheap enough to call every 100 ms while the pipeline runs; exact once the
        run is over (rates are then averages over the run).  Before the first
        run it is empty.
        """
        mon = self._monitor
        if self._result is not None:
            if mon is not None:
                return mon.final(self._result)
            from .monitor import final_stats
            return final_stats(self.name, self._result)
        if self._runtime is None or mon is None:
            return PipelineStats(self.name, "idle", 0.0, {})
        return mon.sample("paused" if self.paused else "running")

    # ------------------------------------------------------------------ graphs and metrics (issue 6)

    def to_mermaid(self) -> str:
        """The graph as a Mermaid ``flowchart`` (see :mod:`reflux.graph`); validates first."""
        from .graph import to_mermaid
        return to_mermaid(self)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (see :mod:`reflux.graph`); validates first."""
        from .graph import to_dot
        return to_dot(self)

    def metrics(self) -> str:
        """The current :meth:`stats` in the Prometheus text format (see :mod:`reflux.metrics`)."""
        from .metrics import prometheus_text
        return prometheus_text(self.stats())

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve :meth:`metrics` over HTTP at ``http://host:port/metrics`` from a
        background thread; returns the started :class:`~reflux.metrics.MetricsServer`
        (``port=0`` picks a free port: see its ``port``; call ``close()`` when done)."""
        from .metrics import MetricsServer
        return MetricsServer(self, port=port, host=host).start()

    def join(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its :class:`RunResult`.

        Raises :class:`TimeoutError` if it is still running after ``timeout``
        seconds (the run goes on), and :class:`~reflux.NodeError` if a node
        failed under ``on_error="raise"`` (its ``result`` attribute holds the
        partial result).  Ctrl-C while waiting stops the pipeline (abandoning
        in-flight items), joins every worker and raises
        :class:`~reflux.PipelineInterrupted` (a ``KeyboardInterrupt``) carrying
        the partial result.
        """
        rt = self._runtime
        if rt is None:
            raise RuntimeError(f"Pipeline '{self.name}' was not started")
        if self._result is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not rt.wait(self.POLL):
                    rt.detach_stalled_sources(self.stop_grace)
                    if self._monitor is not None:
                        self._monitor.tick()
                    if self._monitor is not None and self._monitor.gave_up(self.stop_grace):
                        break  # the watchdog stopped the run; the clogged node is stuck in user code
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"Pipeline '{self.name}' still running after {timeout}s")
                self._finish()
            except KeyboardInterrupt:
                self._interrupt()
                raise PipelineInterrupted(self._result) from None
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _rt(self) -> ThreadRuntime | PoolRuntime:
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' was not started")
        return self._runtime

    def _finish(self, status: str | None = None) -> RunResult:
        """Join the workers, collect the counters, build the result (once)."""
        with self._finish_lock:
            if self._result is not None:
                return self._result
            rt = self._rt()
            if self._monitor is not None:
                self._monitor.close()
            stuck = rt.join_threads(self.join_timeout)
            if any(getattr(n, "_preforked", None) for n in self._nodes):
                from .process import discard_preforked
                discard_preforked(self._nodes)  # forked workers of nodes that never opened
            if stuck:
                logger.warning("Pipeline '%s': node(s) %s did not end within %.1fs (stuck in user "
                               "code?); their threads are left behind", self.name, ", ".join(stuck),
                               self.join_timeout)
            failure = rt.failure
            if status is None:
                status = ("failed" if failure is not None else "interrupted" if self._interrupted
                          else "stopped" if self._stopped else "completed")
            result = rt.collect(status, time.monotonic() - self._started_at, stuck)
            if failure is not None:
                self._error = self._node_error(failure, result)
            self._result = result
            logger.debug("Pipeline '%s': %r", self.name, result)
            return result

    def _node_error(self, record: ErrorRecord, result: RunResult) -> NodeError:
        node = next((n for n in self._nodes if n.name == record.node), None)
        label = node.label if node is not None else f"node '{record.node}'"
        exc = record.exception
        if isinstance(exc, ClogError):  # the watchdog stopped the run: its error names the node
            exc.result = result
            return exc
        where = "" if record.item is None else f" on item {record.item!r:.100}"
        text = str(exc)
        if "\n" in text:
            # a multi-line message (a worker's traceback) is shown in full with the
            # chained cause; repeating it here doubled the output
            text = text.split("\n", 1)[0].rstrip(":") + " (see its cause for the rest)"
        err = NodeError(f"{label} failed{where}: {type(exc).__name__}: {text}", node=record.node, record=record)
        err.__cause__ = exc
        err.result = result
        return err

    def run(self, timeout: float | None = None, *, progress: bool | None = False) -> RunResult:
        """Start, wait for the end, and return the :class:`RunResult`.

        Raises :class:`~reflux.NodeError` if a node failed under
        ``on_error="raise"``.  Ctrl-C stops the pipeline (abandoning in-flight
        items), joins every worker and raises :class:`~reflux.PipelineInterrupted`
        (a ``KeyboardInterrupt``) carrying the partial result.  With
        ``timeout``, a run still going after that many seconds is abandoned
        and :class:`TimeoutError` is raised.

        ``progress=True`` shows a live view of the nodes on the terminal (see
        :mod:`reflux.progress`); ``None`` shows it only when standard error is
        a terminal.
        """
        self.start()
        try:
            if progress or progress is None:
                from .progress import LiveProgress
                with LiveProgress(self, enabled=progress):
                    return self.join(timeout)
            return self.join(timeout)
        except TimeoutError:
            self._rt().abort()
            self._stopped = True
            self._finish()
            raise

    def _interrupt(self) -> None:
        self._interrupted = True
        self._rt().abort()
        while True:
            try:
                result = self._finish("interrupted")
                break
            except KeyboardInterrupt:  # a second Ctrl-C while shutting down: keep shutting down
                self._rt().abort()
        logger.warning("Pipeline '%s' interrupted: %r", self.name, result)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Leaving the block waits for a started run to end (like an executor);
        if the block raised, the run is stopped first (``drain=False``)."""
        if self._runtime is None or self._result is not None:
            return
        if exc_type is not None:
            self.stop(drain=False)
            try:
                self._finish()
            except BaseException:  # never mask the block's own exception
                logger.exception("Pipeline '%s': error while stopping", self.name)
            return
        self.join()

