"""The graph of a pipeline: its nodes and edges, how they are wired, and the checks that they
form a pipeline that can run.

Two ways to wire, freely mixed::

    # chaining shorthand for linear parts (and lists for fan-out / fan-in)
    p = Pipeline(Extractor(range(10)) >> Transformer(double) >> Loader.to_list())

    # explicit edges
    p = Pipeline()
    p.connect(source, split)            # split = Balancer()
    p.connect(split, [worker_a, worker_b])
    p.connect([worker_a, worker_b], sink)

:meth:`Graph.validate` checks the graph before anything runs;
:func:`reflux.describe.plan.compile_plan` turns a valid graph into a plan.
:class:`~reflux.Pipeline` is a :class:`Graph` that can also run.
"""
from __future__ import annotations

from typing import Any, TypeVar

from ..errors import ValidationError
from .base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CAPACITY,
    Flow,
    Node,
    Part,
    check_capacity,
    check_edge,
    check_positive_int,
)
from .executors import check_executor
from .nodes import Loader, Messenger

__all__ = ["Graph"]

G = TypeVar("G", bound="Graph")


class Graph:
    """The nodes and edges of a pipeline, with the defaults its nodes take.

    ``name`` names the pipeline in messages; ``capacity`` and ``batch_size``
    are the defaults of its nodes; ``dead_letter`` is the Loader that takes
    the error records of nodes with ``on_error="dead_letter"``; ``executor``
    is the default executor of its Transformers; ``fuse`` and
    ``record_edges`` say what the plan may join (see :class:`~reflux.Pipeline`).
    """

    def __init__(self, *parts: Part, name: str = "pipeline", capacity: int = DEFAULT_CAPACITY,
                 batch_size: int = DEFAULT_BATCH_SIZE, dead_letter: Loader | None = None,
                 executor: str | None = None, fuse: bool = True, record_edges: bool = True) -> None:
        check_capacity(f"Pipeline '{name}'", capacity, allow_none=False)
        check_positive_int(f"Pipeline '{name}'", "batch_size", batch_size, allow_none=False)
        if dead_letter is not None and not isinstance(dead_letter, Loader):
            raise ValidationError(f"Pipeline '{name}': dead_letter must be a Loader, got {dead_letter!r:.60}")
        self.name = name
        self.capacity = capacity
        self.batch_size = batch_size
        self.fuse = bool(fuse)
        self.record_edges = bool(record_edges)
        #: default executor of the Transformers that do not choose one (None: "thread")
        self.executor: str | None = None
        if executor is not None:
            self.executor = check_executor(f"Pipeline '{name}'", executor, None, True)[0]
        self._nodes: list[Node] = []
        self._edges: list[tuple[Node, Node]] = []
        self._dead_letter = dead_letter
        #: the built-in dead-letter Loader, added when a node needs one and none was given
        self.auto_dead_letter: Loader | None = None
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
        """Refuse a change while the graph is in use (the pipeline overrides this while it runs)."""

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

    def add(self: G, *parts: Part) -> G:
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
        check_edge(src, dst)
        if any(src is a and dst is b for a, b in self._edges):
            raise ValidationError(f"{src.label} is already connected to {dst.label}")
        self._edges.append((src, dst))

    def connect(self: G, src: Part, dst: Part) -> G:
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

    def chain(self: G, *nodes: Part) -> G:
        """Connect each part to the next: ``chain(a, b, c)`` is ``connect(a, b); connect(b, c)``."""
        if len(nodes) < 2:
            raise ValidationError(f"Pipeline '{self.name}': chain() needs at least two parts")
        for a, b in zip(nodes, nodes[1:]):
            self.connect(a, b)
        return self

    # ------------------------------------------------------------------ validation

    def resolve(self, owner: Node, what: str, target: Node | str) -> Node:
        if isinstance(target, str):
            for n in self._nodes:
                if n.name == target:
                    return n
            raise ValidationError(f"{owner.label} {what} '{target}', which is not a node of this pipeline")
        if target not in self:
            raise ValidationError(f"{owner.label} {what} {target.label}, which is not in the pipeline")
        return target

    def dead_letter_target(self, node: Node) -> Node | None:
        if node.policy.on_error != "dead_letter":
            return None
        if node.dead_letter is not None:
            target = self.resolve(node, "sends dead letters to", node.dead_letter)
        elif self._dead_letter is not None:
            target = self._dead_letter
        else:
            if self.auto_dead_letter is None:
                taken = {n.name for n in self._nodes}
                name = "dead-letter" if "dead-letter" not in taken else self._unique("dead-letter", taken)
                self.auto_dead_letter = Loader.to_list(name=name)
                self._claim(self.auto_dead_letter)
            target = self.auto_dead_letter
        if not isinstance(target, Loader):
            raise ValidationError(f"{node.label} sends dead letters to {target.label}; it must be a Loader")
        if target is node:
            raise ValidationError(f"{node.label} cannot be its own dead-letter Loader")
        if target.policy.on_error == "dead_letter":
            raise ValidationError(
                f"{target.label} receives dead letters, so it cannot use on_error='dead_letter' itself")
        return target

    def resolved(self) -> tuple[list[tuple[Node, Node]], dict[int, Node | None]]:
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
                    target = self.resolve(node, what, t)
                    check_edge(node, target)
                    if not any(node is a and target is b for a, b in edges):
                        edges.append((node, target))
        dead: dict[int, Node | None] = {}
        for node in list(self._nodes):
            dead[id(node)] = self.dead_letter_target(node)
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
        self.resolved()

    # ------------------------------------------------------------------ routes

    def route_ports(self, node: Messenger, receivers: list[Node]) -> tuple[dict[Any, int], int | None]:
        """A Messenger's table of key -> output port (its routes, then its receivers' names)
        and its default port, for ``receivers`` in port order."""
        ports: dict[Any, int] = {r.name: i for i, r in enumerate(receivers)}
        index = {id(r): i for i, r in enumerate(receivers)}
        for key, t in node.route_table.items():
            ports[key] = index[id(self.resolve(node, f"routes key {key!r} to", t))]
        default = (index[id(self.resolve(node, "has a default route to", node.default))]
                   if node.default is not None else None)
        return ports, default
