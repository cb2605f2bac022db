"""What every node shares, and the ``>>`` that wires nodes into flows.

A *node* is configuration: a name, its input capacity and batch size, its
error policy and, in the subclasses of :mod:`reflux.describe.nodes`, the
user's function.  Nothing here runs anything; :mod:`reflux.logic` says what a
node does with a batch and :mod:`reflux.run` when it does it.

``a >> b`` builds a :class:`Flow`, a fragment of a graph that a
:class:`~reflux.Pipeline` takes whole.

Nodes and flows are generic in what they take in and send on
(``Transformer[int, str]`` takes ints and sends strings; ``Any`` when not
said), so a type checker sees what flows along ``>>``: wiring a
``Transformer[int, str]`` into a ``Loader[int]`` is a type error.  The type
parameters are for checkers only; nothing is checked at run time.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Union, overload

from reflux_core.channel import MAX_CAPACITY as _MAX_CHANNEL_CAPACITY

from ..errors import NotCallableError, ValidationError
from ..policies import ErrorPolicy
from ..result import NodeStats

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CAPACITY", "MAX_CAPACITY", "check_capacity", "Flow", "In", "Node",
           "NodeLike", "Out", "Part", "T", "check_edge"]

if TYPE_CHECKING:
    from typing_extensions import TypeVar
else:
    def TypeVar(name: str, *constraints: Any, default: Any = None, **kwargs: Any) -> Any:
        """typing.TypeVar without ``default=`` (PEP 696), which only type checkers read."""
        return typing.TypeVar(name, *constraints, **kwargs)

#: what a node takes in (``Any`` when not said)
In = TypeVar("In", contravariant=True, default=Any)
#: what a node sends on (``Any`` when not said)
Out = TypeVar("Out", covariant=True, default=Any)
#: the items of a node that passes them on unchanged (Filter, Balancer, ...)
T = TypeVar("T", default=Any)
_X = TypeVar("_X")

#: default capacity of a node's input channel (slots, rounded up to a power of two)
DEFAULT_CAPACITY = 1024
#: default most items moved per batch
DEFAULT_BATCH_SIZE = 256
#: the largest channel the core makes (slots)
MAX_CAPACITY: int = _MAX_CHANNEL_CAPACITY


# --------------------------------------------------------------------------- checks shared by the node kinds

def default_name(fn: Any) -> str | None:
    """A readable default node name from a user function (``None`` for lambdas and the like)."""
    preferred = getattr(fn, "reflux_name", None)
    if isinstance(preferred, str) and preferred:
        return preferred
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name.startswith("<"):
        if fn is not None and not inspect.isroutine(fn) and callable(fn) and not isinstance(fn, type):
            cls = type(fn).__name__
            return cls[0].lower() + cls[1:]
        return None
    return name


def is_generator_callable(fn: Any) -> bool:
    """Whether calling ``fn`` makes a generator (a generator function or an instance whose ``__call__`` is one)."""
    if inspect.isgeneratorfunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    for klass in type(fn).__mro__:
        if "__call__" in klass.__dict__:
            return inspect.isgeneratorfunction(klass.__dict__["__call__"])
    return False


def check_callable(owner: str, fn: Any, what: str = "function") -> None:
    """Refuse a non-callable, or an ``async def`` one (its calls would make coroutines
    nobody awaits), with a message naming the node."""
    if not callable(fn):
        raise NotCallableError(f"{owner}: {what} must be callable, got {type(fn).__name__} {fn!r:.60}")
    if is_async_callable(fn):
        raise NotCallableError(
            f"{owner}: {what} {getattr(fn, '__name__', type(fn).__name__)!r} is an async function; this "
            f"node calls its function synchronously, so each call would make a coroutine that is never "
            f"awaited. Use a plain function here (an Extractor takes async sources)")


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine or an async generator (an ``async def``
    function, or an object whose ``__call__`` is one)."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    call = getattr(type(fn), "__call__", None)
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def plugin_for(owner: str, obj: Any, kind: str) -> Any:
    """The checked compiled plug-in (see :mod:`reflux.describe.plugins`) when ``obj`` is one, else ``None``.

    Plain callables never import the plug-in modules (nor numpy)."""
    if isinstance(obj, type):
        return None
    try:
        offered = getattr(obj, "__reflux_plugin__", None) is not None
    except Exception:  # a plug-in whose capsule property fails: check_plugin reports it
        offered = True
    if not offered:
        return None
    from . import plugins
    return plugins.check_plugin(obj, owner, kind)


def chunk_batches(node: Node) -> None:
    """A node given a plug-in takes one item (a chunk of records) per batch
    unless ``batch_size`` says otherwise: a chunk is a batch already, and
    replicas (``parallel=N``) then share the chunks instead of one replica
    taking a whole batch of them."""
    if node.batch_size is None:
        node.batch_size = 1


def check_replicas(owner: str, parallel: Any, ordered: Any) -> tuple[int, bool]:
    """Validate ``parallel=`` and ``ordered=`` of a Transformer or Filter."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValidationError(f"{owner}: parallel must be a positive integer, got {parallel!r}")
    if parallel > 1024:
        raise ValidationError(f"{owner}: parallel={parallel} is more replicas than reflux allows (1024)")
    if not isinstance(ordered, bool):
        raise ValidationError(f"{owner}: ordered must be True or False, got {ordered!r}")
    return parallel, ordered


def check_capacity(owner: str, value: Any, allow_none: bool = True) -> None:
    """A channel capacity: a positive int no larger than the core's :data:`MAX_CAPACITY`."""
    check_positive_int(owner, "capacity", value, allow_none)
    if value is not None and value > MAX_CAPACITY:
        raise ValidationError(f"{owner}: capacity {value} is larger than the largest channel reflux "
                              f"makes ({MAX_CAPACITY} slots)")


def check_positive_int(owner: str, label: str, value: Any, allow_none: bool = True) -> None:
    """Refuse anything but a positive int (or None) with a message naming the node."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{owner}: {label} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- the base class

NodeLike = Union["Node", "Flow", Sequence["Node"]]


class Node(Generic[In, Out]):
    """Base class of every node: a name, its input capacity, batch size and error policy.

    ``Node[In, Out]`` takes items of type ``In`` and sends items of type ``Out``
    (for type checkers; see the module docs).

    Keyword arguments shared by every node:

    ``name``
        unique within a pipeline; defaults to the function's name (or the
        node kind), made unique with a suffix when needed.
    ``capacity``
        slots of the node's bounded input channel (default: the pipeline's).
    ``batch_size``
        most items the node takes from its input at once (default: the pipeline's).
    ``on_error``, ``retries``, ``backoff``, ``backoff_factor``, ``max_backoff``
        the error policy (see :mod:`reflux.policies`).
    ``dead_letter``
        the Loader that receives this node's dead-letter records
        (default: the pipeline's).
    ``fuse``
        ``False`` keeps the node out of fused chains (it always runs as a
        task of its own, with a channel on each side).
    """

    #: the node type's name, used in messages
    kind: ClassVar[str] = "Node"
    #: sources have no input
    is_source: ClassVar[bool] = False
    #: sinks have no output
    is_sink: ClassVar[bool] = False
    #: routing nodes have one output per receiver; others have one output
    routes: ClassVar[bool] = False

    def __init__(self, *, name: str | None = None, capacity: int | None = None,
                 batch_size: int | None = None, on_error: str = "raise", retries: int = 0,
                 backoff: float = 0.0, backoff_factor: float = 2.0, max_backoff: float = 30.0,
                 dead_letter: Node | str | None = None, fuse: bool = True,
                 _default: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValidationError(f"{self.kind}: name must be a non-empty string, got {name!r}")
        self._explicit_name = name is not None
        self.name: str = name if name is not None else (_default or self.kind.lower())
        owner = self.label
        check_capacity(owner, capacity)
        check_positive_int(owner, "batch_size", batch_size)
        self.capacity: int | None = capacity
        self.batch_size: int | None = batch_size
        self.policy: ErrorPolicy = ErrorPolicy.build(owner, on_error, retries, backoff,
                                                     backoff_factor, max_backoff)
        if dead_letter is not None and not (isinstance(dead_letter, str)
                                            or (isinstance(dead_letter, Node) and dead_letter.is_sink)):
            raise ValidationError(
                f"{owner}: dead_letter must be a Loader (or a Loader's name), got {dead_letter!r:.60}")
        self.dead_letter: Node | str | None = dead_letter
        self.fuse = bool(fuse)
        #: the pipeline the node belongs to (a node is used in one pipeline only)
        self._pipeline: Any = None

    @property
    def label(self) -> str:
        """``"Kind 'name'"``, the way messages name the node."""
        return f"{self.kind} '{self.name}'"

    def __repr__(self) -> str:
        return f"<{self.label}>"

    # -- chaining shorthand: a >> b >> c, a >> [b, c], [a, b] >> c

    @overload
    def __rshift__(self, other: Node[Out, _X] | Flow[Out, _X]) -> Flow[In, _X]: ...
    @overload
    def __rshift__(self, other: Sequence[Node[Out, Any] | Flow[Out, Any]]) -> Flow[In, Any]: ...

    def __rshift__(self, other: Part) -> Flow[Any, Any]:
        return Flow.of(self) >> other

    def __rrshift__(self, other: Sequence[Node[Any, In] | Flow[Any, In]]) -> Flow[Any, Out]:
        return Flow.of(other) >> self

    # -- counters

    #: how this node's counters relate (see reflux.result.LAWS)
    stats_law = "one"

    def make_stats(self) -> NodeStats:
        """Fresh counters for one run."""
        return NodeStats(self.name, self.kind, law=self.stats_law)


# --------------------------------------------------------------------------- wiring

Part = Union[Node, "Flow", Sequence[Any]]


def check_edge(src: Node, dst: Node) -> None:
    """Refuse an edge that can never be valid; the message names both nodes."""
    if src is dst:
        hint = (" (return NeedsMoreWork(item) to feed an item back)" if src.kind == "Transformer" else "")
        raise ValidationError(f"{src.label} cannot be connected to itself{hint}")
    if src.is_sink:
        raise ValidationError(f"{src.label} is a sink: it cannot send items to {dst.label}")
    if dst.is_source:
        raise ValidationError(f"{dst.label} is a source: it cannot receive items from {src.label}")


class Flow(Generic[In, Out]):
    """A fragment of a pipeline graph built with ``>>``: nodes, edges, and the
    nodes at its start (``heads``) and end (``tails``).

    ``a >> b`` connects a's tails to b's heads; a list stands for its members
    side by side, so ``a >> [b, c]`` fans out and ``[b, c] >> d`` fans in.
    Pass flows to :class:`Pipeline` (or :meth:`Pipeline.add`).  ``Flow[In, Out]``:
    its heads take ``In``, its tails send ``Out`` (for type checkers).
    """

    __slots__ = ("edges", "heads", "nodes", "tails")

    def __init__(self, nodes: list[Node], edges: list[tuple[Node, Node]], heads: list[Node],
                 tails: list[Node]) -> None:
        self.nodes = nodes
        self.edges = edges
        self.heads = heads
        self.tails = tails

    @classmethod
    def of(cls, part: Part) -> Flow[Any, Any]:
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

    @overload
    def __rshift__(self, other: Node[Out, _X] | Flow[Out, _X]) -> Flow[In, _X]: ...
    @overload
    def __rshift__(self, other: Sequence[Node[Out, Any] | Flow[Out, Any]]) -> Flow[In, Any]: ...

    def __rshift__(self, other: Part) -> Flow[Any, Any]:
        right = Flow.of(other)
        edges = list(self.edges)
        for t in self.tails:
            for h in right.heads:
                check_edge(t, h)
                if (t, h) in edges:
                    raise ValidationError(f"{t.label} is already connected to {h.label}")
                edges.append((t, h))
        _merge_unique(edges, right.edges)
        nodes = list(self.nodes)
        _merge_unique(nodes, right.nodes)
        return Flow(nodes, edges, list(self.heads), list(right.tails))

    def __rrshift__(self, other: Sequence[Node[Any, In] | Flow[Any, In]]) -> Flow[Any, Out]:
        return Flow.of(other) >> self

    def __repr__(self) -> str:
        return f"<Flow {' , '.join(n.label for n in self.nodes)}>"


def _merge_unique(into: list[Any], items: Iterable[Any]) -> None:
    for x in items:
        if not any(x is y or (isinstance(x, tuple) and x == y) for y in into):
            into.append(x)
