"""The node types of a reflux pipeline and their per-batch logic.

A *node* (:class:`Extractor`, :class:`Transformer`, ...) is the configuration a
user builds and wires into a :class:`~reflux.Pipeline`.  When a pipeline runs,
each node makes a *logic* object (:meth:`Node.make_logic`): plain Python that
processes one batch at a time and writes its outputs into an :class:`Outbox`.
The logic knows nothing about threads or channels; the runtime decides when a
batch runs and where the outbox goes.  This keeps node semantics (what
NeedsMoreWork, a filter or a round-robin means) apart from scheduling, so the
runtime can change without touching them.

The logic contract (used by the runtime):

``open()`` / ``close()``
    once per worker, around everything else (they call the user's hooks).
``process(batch, out)``
    handle a non-empty list of input items.
``has_feedback()`` / ``process_feedback(max_items, out)``
    items a Transformer fed back to itself (``NeedsMoreWork``); the runtime
    runs them before taking new input, so feedback never waits on the
    node's own bounded input channel.
``next_deadline()`` / ``tick(now, out)``
    time-driven output (the Accumulator's window).
``finish(out)``
    end of stream: every input ended and all feedback is done.
``abandon()``
    the run is being abandoned: count and release whatever the logic holds.

Sources instead implement ``pull(out, max_items) -> bool`` (False at the end).
"""
from __future__ import annotations

import inspect
import itertools
import logging
import time
import types
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, ClassVar, Union, cast, final

from reflux_core._batch import call_all as _core_call_all
from reflux_core._batch import keep_all as _core_keep_all

from .errors import (
    ErrorRecord,
    NotCallableError,
    RoutingError,
    TransformError,
    ValidationError,
)
from .policies import ErrorPolicy
from .result import NodeStats

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

    from .pipeline import Flow

__all__ = [
    "NeedsMoreWork",
    "Error",
    "Node",
    "Extractor",
    "Transformer",
    "Filter",
    "Balancer",
    "Broadcast",
    "Funnel",
    "Messenger",
    "Accumulator",
    "Loader",
    "Outbox",
    "NodeContext",
    "LocalContext",
]

logger = logging.getLogger("reflux")

#: default capacity of a node's input channel (slots, rounded up to a power of two)
DEFAULT_CAPACITY = 1024
#: default most items moved per batch
DEFAULT_BATCH_SIZE = 256


# --------------------------------------------------------------------------- results of a Transformer

class _Signal:
    """Base of the special values a node function may return (NeedsMoreWork, Error)."""

    __slots__ = ()


@final
class NeedsMoreWork(_Signal):
    """Returned (or yielded) by a Transformer: feed ``item`` back into the same
    Transformer for more work, e.g. a sub-directory while walking a tree.

    Feedback is held by the node itself (never in its bounded input channel),
    so it cannot deadlock, and the node ends only once its feedback is done.
    """

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __repr__(self) -> str:
        return f"NeedsMoreWork({self.item!r})"


@final
class Error(_Signal):
    """Returned (or yielded) by a node's function to report a failure without
    raising.  ``error`` is an exception, or any value (wrapped in
    :class:`~reflux.errors.TransformError`).  It goes through the node's error
    policy exactly as a raised exception does (retries included).
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException | Any) -> None:
        self.error = error

    @property
    def exception(self) -> BaseException:
        """The error as an exception."""
        if isinstance(self.error, BaseException):
            return self.error
        return TransformError(str(self.error))

    def __repr__(self) -> str:
        return f"Error({self.error!r})"


# --------------------------------------------------------------------------- internal control flow

#: the exact types of the special return values (both classes are final)
_SIGNAL_TYPES = frozenset((NeedsMoreWork, Error))


def _call_all(fn: Callable[[Any], Any], batch: list[Any], into: list[Any], special_a: type = NeedsMoreWork,
              special_b: type = Error, count_not_none: bool = False) -> tuple[int, int]:
    """Append ``fn(item)`` for every item of ``batch`` to ``into`` (a C loop in
    :mod:`reflux_core._batch`): an item whose call raised gets an
    :class:`Error` holding the exception, and the calls after it go on.
    Returns how many results are of type ``special_a``/``special_b``, and
    (with ``count_not_none``) how many are not ``None``."""
    if type(batch) is not list:
        batch = list(batch)
    return _core_call_all(fn, batch, into, Error, special_a, special_b, count_not_none)


class Abort(Exception):
    """Internal: the run is being abandoned; unwind the node's worker."""


class NodeFailure(Exception):
    """Internal: an item failed under ``on_error="raise"``; the runtime fails the pipeline."""

    def __init__(self, record: ErrorRecord) -> None:
        super().__init__(record.node)
        self.record = record


# --------------------------------------------------------------------------- what a logic talks to

class NodeContext:
    """What the runtime offers a node's logic (the default runs standalone).

    A runtime subclasses it: :meth:`sleep` must end early (raising
    :class:`Abort`) when the run is abandoned, :meth:`should_stop` tells
    sources to end, and :meth:`keep_error` stores records in the run result.
    """

    def __init__(self, stats: NodeStats) -> None:
        self.stats = stats

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (retry back-off); raise :class:`Abort` if the run is abandoned."""
        if seconds > 0:
            time.sleep(seconds)

    def should_stop(self) -> bool:
        """``True`` when sources should stop extracting (``stop()`` or abort)."""
        return False

    def keep_error(self, record: ErrorRecord) -> None:
        """Store an error record in the run result."""


class LocalContext(NodeContext):
    """A context for running a node's logic by hand (tests, notebooks): it keeps error records."""

    def __init__(self, stats: NodeStats) -> None:
        super().__init__(stats)
        self.errors: list[ErrorRecord] = []
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop

    def keep_error(self, record: ErrorRecord) -> None:
        self.errors.append(record)


class Outbox:
    """Where a node's logic puts its outputs: one buffer per output port
    (receiver) plus one for dead-letter records.

    The runtime's subclass moves buffers into channels in :meth:`flush`
    (blocking while they are full: that is the backpressure).  Logic that can
    produce unboundedly many outputs per input (flat-map) calls :meth:`emit`,
    which flushes once a buffer holds ``limit`` items; one-for-one logic
    appends to ``ports[i]`` directly and the runtime flushes after the batch.
    This base class keeps everything it is given (useful in tests):
    :attr:`sent` and :attr:`dead_sent` collect what was flushed.
    """

    def __init__(self, n_ports: int = 1, limit: int = DEFAULT_BATCH_SIZE) -> None:
        self.ports: list[list[Any]] = [[] for _ in range(n_ports)]
        self.dead: list[ErrorRecord] = []
        self.limit = max(1, limit)
        self.sent: list[list[Any]] = [[] for _ in range(n_ports)]
        self.dead_sent: list[ErrorRecord] = []

    def emit(self, item: Any, port: int = 0) -> None:
        """Add ``item`` to port ``port``; flush when the buffer is full."""
        buf = self.ports[port]
        buf.append(item)
        if len(buf) >= self.limit:
            self.flush()

    def dead_letter(self, record: ErrorRecord) -> None:
        """Queue an error record for the dead-letter Loader."""
        self.dead.append(record)
        if len(self.dead) >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Hand every buffered item on (here: to :attr:`sent`)."""
        for buf, sent in zip(self.ports, self.sent):
            sent.extend(buf)
            buf.clear()
        self.dead_sent.extend(self.dead)
        self.dead.clear()

    def held(self) -> int:
        """Items (and records) still buffered."""
        return sum(len(b) for b in self.ports) + len(self.dead)


# --------------------------------------------------------------------------- helpers

def _default_name(fn: Any) -> str | None:
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


def _direct_call(fn: Any) -> Callable[[Any], Any]:
    """What the batch loops call for ``fn``: ``fn`` itself, or, for an instance of
    a Python class whose ``__call__`` is a plain function, that function bound to
    the instance.  Calling an instance goes through the interpreter's generic
    path (an argument tuple and a type lookup per call); the bound method does
    the same call about a third faster (111 -> 73 ns here).  The method is looked
    up on the class, as the implicit call does, once when the node's logic is made."""
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return fn
    for klass in type(fn).__mro__:
        if "__call__" in klass.__dict__:
            # the raw class attribute: a staticmethod, classmethod or other
            # descriptor is left to the interpreter
            call = klass.__dict__["__call__"]
            if type(call) is types.FunctionType:
                return types.MethodType(call, fn)
            break
    return fn


def _is_generator_callable(fn: Any) -> bool:
    """Whether calling ``fn`` makes a generator (a generator function or an instance whose ``__call__`` is one)."""
    if inspect.isgeneratorfunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    for klass in type(fn).__mro__:
        if "__call__" in klass.__dict__:
            return inspect.isgeneratorfunction(klass.__dict__["__call__"])
    return False


def _hook(obj: Any, name: str) -> Callable[[], Any] | None:
    """``obj.open``/``obj.close`` if it is a user hook (never a function's own attributes)."""
    if inspect.isroutine(obj) or isinstance(obj, type):
        return None
    h = getattr(obj, name, None)
    return h if callable(h) else None


def _check_callable(owner: str, fn: Any, what: str = "function") -> None:
    """Refuse a non-callable with a message naming the node."""
    if not callable(fn):
        raise NotCallableError(f"{owner}: {what} must be callable, got {type(fn).__name__} {fn!r:.60}")


def _plugin_for(owner: str, obj: Any, kind: str) -> Any:
    """The checked compiled plug-in (see :mod:`reflux.plugins`) when ``obj`` is one, else ``None``.

    Plain callables never import reflux.plugins (nor numpy)."""
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


def _chunk_batches(node: Node) -> None:
    """A node given a plug-in takes one item (a chunk of records) per batch
    unless ``batch_size`` says otherwise: a chunk is a batch already, and
    replicas (``parallel=N``) then share the chunks instead of one replica
    taking a whole batch of them."""
    if node.batch_size is None:
        node.batch_size = 1


def _replicas(owner: str, parallel: Any, ordered: Any) -> tuple[int, bool]:
    """Validate ``parallel=`` and ``ordered=`` of a Transformer or Filter."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValidationError(f"{owner}: parallel must be a positive integer, got {parallel!r}")
    if parallel > 1024:
        raise ValidationError(f"{owner}: parallel={parallel} is more replicas than reflux allows (1024)")
    if not isinstance(ordered, bool):
        raise ValidationError(f"{owner}: ordered must be True or False, got {ordered!r}")
    return parallel, ordered


def _check_positive_int(owner: str, label: str, value: Any, allow_none: bool = True) -> None:
    """Refuse anything but a positive int (or None) with a message naming the node."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{owner}: {label} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- nodes

NodeLike = Union["Node", "Flow", Sequence["Node"]]


class Node:
    """Base class of every node: a name, its input capacity, batch size and error policy.

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
                 dead_letter: Loader | str | None = None, fuse: bool = True,
                 _default: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValidationError(f"{self.kind}: name must be a non-empty string, got {name!r}")
        self._explicit_name = name is not None
        self.name: str = name if name is not None else (_default or self.kind.lower())
        owner = self.label
        _check_positive_int(owner, "capacity", capacity)
        _check_positive_int(owner, "batch_size", batch_size)
        self.capacity: int | None = capacity
        self.batch_size: int | None = batch_size
        self.policy: ErrorPolicy = ErrorPolicy.build(owner, on_error, retries, backoff,
                                                     backoff_factor, max_backoff)
        if dead_letter is not None and not isinstance(dead_letter, (Loader, str)):
            raise ValidationError(
                f"{owner}: dead_letter must be a Loader (or a Loader's name), got {dead_letter!r:.60}")
        self.dead_letter: Loader | str | None = dead_letter
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

    def __rshift__(self, other: NodeLike) -> Flow:
        from .pipeline import Flow
        return Flow.of(self) >> other

    def __rrshift__(self, other: NodeLike) -> Flow:
        from .pipeline import Flow
        return Flow.of(other) >> self

    # -- running

    #: how this node's counters relate (see reflux.result.LAWS)
    stats_law = "one"

    def make_stats(self) -> NodeStats:
        """Fresh counters for one run."""
        return NodeStats(self.name, self.kind, law=self.stats_law)

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> NodeLogic:
        """The per-run logic of this node (see the module docs)."""
        raise NotImplementedError


class NodeLogic:
    """Per-run processing of one node; see the module docs for the contract."""

    #: one input yields at most one output (runtime: flush after each batch is enough)
    def __init__(self, node: Node, ctx: NodeContext) -> None:
        self.node = node
        self.ctx = ctx
        self.stats = ctx.stats
        self.policy = node.policy
        self.name = node.name
        #: items of the current batch not finished yet (dropped if the run is abandoned)
        self.remaining = 0

    def open(self) -> None:
        """Called once per worker before any item."""

    def close(self) -> None:
        """Called once per worker after the last item (also after a failure)."""

    def process(self, batch: list[Any], out: Outbox) -> None:
        """Handle a non-empty batch of input items."""
        raise NotImplementedError

    def has_feedback(self) -> bool:
        """Whether fed-back items wait to be processed."""
        return False

    def process_feedback(self, max_items: int, out: Outbox) -> None:
        """Process up to ``max_items`` fed-back items."""

    def next_deadline(self) -> float | None:
        """``time.monotonic()`` time at which :meth:`tick` must run, or ``None``."""
        return None

    def tick(self, now: float, out: Outbox) -> None:
        """Time-driven work (called at or after :meth:`next_deadline`)."""

    def finish(self, out: Outbox) -> None:
        """End of stream: emit anything held."""

    def abandon(self) -> int:
        """The run is abandoned: forget held items and return how many there were."""
        n = self.remaining
        self.remaining = 0
        return n

    def result(self) -> Any:
        """What the node reports in :attr:`RunResult.results` (Loaders only)."""
        return None

    # -- error handling shared by all kinds

    def retry(self, fn: Callable[[Any], Any], arg: Any, exc: BaseException) -> tuple[bool, Any, int]:
        """After a first failure of ``fn(arg)``: retry per the policy.

        Returns ``(True, value, attempts)`` once a call succeeds, or
        ``(False, exception, attempts)`` when every retry failed.  An ``Error``
        returned by ``fn`` counts as a failure.
        """
        pol = self.policy
        attempts = 1
        while attempts <= pol.retries:
            self.ctx.sleep(pol.delay(attempts))
            self.stats.retried += 1
            attempts += 1
            try:
                value = fn(arg)
            except Exception as e:  # user code
                exc = e
                continue
            if value.__class__ is Error:
                exc = value.exception
                continue
            return True, value, attempts
        return False, exc, attempts

    def fail(self, item: Any, exc: BaseException, attempts: int, out: Outbox) -> None:
        """Apply the node's policy to an item that failed for good (counts it in ``errors``)."""
        self.stats.errors += 1
        how = self.policy.on_error
        if how == "skip":
            return
        record = ErrorRecord.from_exception(self.name, item, exc, attempts)
        if how == "raise":
            raise NodeFailure(record)
        self.ctx.keep_error(record)
        if how == "log":
            logger.error("%s failed on item %.200r (%d attempt%s): %s: %s", self.node.label, item,
                         attempts, "" if attempts == 1 else "s", type(exc).__name__, exc,
                         exc_info=(type(exc), exc, exc.__traceback__))
        else:  # dead_letter
            out.dead_letter(record)

    def call(self, fn: Callable[[Any], Any], item: Any, out: Outbox) -> tuple[bool, Any]:
        """``fn(item)`` under the policy: ``(True, value)``, or ``(False, None)`` once the
        failure was handled (skip, log, dead-letter; ``"raise"`` raises)."""
        try:
            value = fn(item)
        except Exception as exc:  # user code
            ok, value, attempts = self.retry(fn, item, exc)
        else:
            if value.__class__ is not Error:
                return True, value
            ok, value, attempts = self.retry(fn, item, value.exception)
        if ok:
            return True, value
        self.fail(item, value, attempts, out)
        return False, None


def _open_hook(fn: Any) -> None:
    """Call ``fn.open()`` if the user object has one."""
    h = _hook(fn, "open")
    if h is not None:
        h()


def _close_hook(fn: Any) -> None:
    """Call ``fn.close()`` if the user object has one."""
    h = _hook(fn, "close")
    if h is not None:
        h()


# --------------------------------------------------------------------------- Extractor

class Extractor(Node):
    """Source of a pipeline: reads items from ``source`` and sends them on.

    ``source`` may be:

    * an iterable (list, range, file, iterator, ...): iterated once;
    * a generator function (called once with no arguments): once-off, or an
      infinite loop that runs until the pipeline stops;
    * an async iterable or async generator function: iterated on an event
      loop of the Extractor's own;
    * any other callable: called repeatedly with no arguments; the source ends
      when it raises ``StopIteration`` or returns ``sentinel`` (if given),
      else it runs until the pipeline stops.

    Items from sized collections (list, tuple, range, ...) move in batches of
    ``batch_size``.  Items from generators, iterators and callables move one
    at a time as soon as they are made (a generator may block, e.g. on a
    socket, and an item must not wait for the next one); pass ``batch_size``
    to batch them when the source never blocks.

    A failing source is handled by the error policy; an iterator or
    generator ends at its first failure (it cannot resume), a callable
    source is retried per ``retries`` and then called again.
    """

    kind = "Extractor"
    is_source = True
    _NO_SENTINEL: ClassVar[object] = object()

    def __init__(self, source: Any, *, sentinel: Any = _NO_SENTINEL, **kwargs: Any) -> None:
        default = _default_name(source) if callable(source) and not isinstance(source, Iterable) else None
        super().__init__(_default=default, **kwargs)
        if isinstance(source, (str, bytes)):
            raise NotCallableError(
                f"{self.label}: source is a {type(source).__name__}; wrap it in a list to send it as one item")
        if inspect.isasyncgenfunction(source):
            self.mode = "asyncgen"
        elif _is_generator_callable(source) and not isinstance(source, Iterable):
            self.mode = "genfunc"
        elif isinstance(source, AsyncIterable):
            self.mode = "async"
        elif isinstance(source, Iterable):
            self.mode = "sized" if isinstance(source, Sized) else "iter"
        elif callable(source):
            self.mode = "call"
        else:
            raise NotCallableError(
                f"{self.label}: source must be an iterable, a generator function, an async "
                f"iterable or a callable, got {type(source).__name__} {source!r:.60}")
        self.source = source
        self.sentinel = sentinel

    stats_law = "source"

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> ExtractorLogic:
        return ExtractorLogic(self, ctx)


class ExtractorLogic(NodeLogic):
    """Pulls items from an Extractor's source into port 0."""

    node: Extractor

    def __init__(self, node: Extractor, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.mode = node.mode
        self._it: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done = False
        #: items per pull: whole batches for sized sources, else one (or batch_size if set)
        self.batched = self.mode == "sized" or node.batch_size is not None

    def open(self) -> None:
        src = self.node.source
        if self.mode in ("sized", "iter"):
            self._it = iter(src)
        elif self.mode == "genfunc":
            self._it = src()
        elif self.mode in ("async", "asyncgen"):
            self._it = src() if self.mode == "asyncgen" else src
            self._it = self._it.__aiter__()
            import asyncio  # only for async sources (it takes ~20 ms to import)

            self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        it = self._it
        self._it = None
        if self._loop is not None:
            loop = self._loop
            self._loop = None
            try:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    loop.run_until_complete(aclose())
            finally:
                loop.close()
        elif inspect.isgenerator(it):
            it.close()

    def pull(self, out: Outbox, max_items: int) -> bool:
        """Move up to ``max_items`` items from the source into ``out.ports[0]``.

        Returns ``False`` once the source is exhausted (after adding its last items).
        """
        if self._done:
            return False
        if self.mode == "call":
            return self._pull_call(out, max_items if self.batched else 1)
        if self.mode in ("async", "asyncgen"):
            return self._pull_async(out)
        buf = out.ports[0]
        before = len(buf)
        try:
            if self.batched:
                buf.extend(itertools.islice(self._it, max_items))
                if len(buf) - before < max_items:
                    self._done = True
            else:
                buf.append(next(self._it))
        except StopIteration:
            self._done = True
        except Exception as exc:  # user code
            self._done = True
            self.stats.received += len(buf) - before
            self.fail(None, exc, 1, out)
            return False
        self.stats.received += len(buf) - before
        return not self._done

    def _pull_call(self, out: Outbox, n: int) -> bool:
        fn = self.node.source
        sentinel = self.node.sentinel
        buf = out.ports[0]
        for _ in range(n):
            try:
                item = fn()
            except StopIteration:
                self._done = True
                return False
            except Exception as exc:  # user code
                ok, item, attempts = self.retry(lambda _: fn(), None, exc)
                if not ok:
                    if isinstance(item, StopIteration):
                        self._done = True
                        return False
                    self.fail(None, item, attempts, out)
                    continue
            if item is sentinel:
                self._done = True
                return False
            self.stats.received += 1
            buf.append(item)
        return True

    def _pull_async(self, out: Outbox) -> bool:
        import asyncio
        loop = self._loop
        assert loop is not None
        fut = loop.create_task(self._it.__anext__())
        while not fut.done():
            loop.run_until_complete(asyncio.wait([fut], timeout=0.1))
            if not fut.done() and self.ctx.should_stop():
                fut.cancel()
                try:
                    loop.run_until_complete(fut)
                except (asyncio.CancelledError, Exception):  # cancelled user code
                    pass
                self._done = True
                return False
        try:
            item = fut.result()
        except StopAsyncIteration:
            self._done = True
            return False
        except Exception as exc:  # user code
            self._done = True
            self.fail(None, exc, 1, out)
            return False
        self.stats.received += 1
        out.ports[0].append(item)
        return True


# --------------------------------------------------------------------------- Transformer

class Transformer(Node):
    """Applies ``fn`` to each item.

    * a plain return value is the output (Transformed);
    * ``NeedsMoreWork(x)`` feeds ``x`` back into this Transformer (e.g. walk a
      directory tree); the node ends only once its feedback is done;
    * raising, or returning ``Error(e)``, is a failure handled by the node's
      error policy (``on_error``, ``retries``);
    * a generator function yields any number of outputs per input (flat-map);
      it may also yield ``NeedsMoreWork(x)`` and ``Error(e)``.  With
      ``flat=True``, the iterable a plain function returns is flattened.
    * a class instance with ``__call__`` may keep state; its optional
      ``open()`` and ``close()`` methods are called once per worker.
    * a compiled transform plug-in (a ``reflux_core.transform.CTransform``
      subclass, or a C plug-in) runs over chunks of records without the GIL
      (see :mod:`reflux.plugins`).

    ``parallel=N`` runs N replicas of the node, fed from one shared channel
    (each replica has its own ``open()``/``close()`` and state).  On a GIL
    build this speeds up functions that release the GIL (numpy, Cython
    transformers, I/O).  Replicas emit in completion order unless
    ``ordered=True``, which restores input order (per batch) on output.

    ``executor="process"`` runs ``fn`` in ``workers`` worker processes
    (default: one per CPU) for CPU-bound pure Python; ``fn`` (with its state)
    must be picklable and is sent once per worker, items and results travel
    pickled; results keep input order unless ``ordered=False``.  See
    :mod:`reflux.process`.  (``parallel=`` replicas run in threads; with
    ``executor="process"`` use ``workers=``.)  Workers are fresh interpreters
    (``start_method="spawn"``, the default); ``start_method="fork"`` forks them
    from this process when the run starts, which saves their start-up (tens of
    milliseconds each) and needs this process to run a single thread then.
    """

    kind = "Transformer"

    def __init__(self, fn: Callable[[Any], Any], *, flat: bool = False, parallel: int = 1,
                 ordered: bool | None = None, executor: str | None = None, workers: int | None = None,
                 start_method: str | None = None, **kwargs: Any) -> None:
        super().__init__(_default=_default_name(fn), **kwargs)
        #: the checked plug-in when ``fn`` is a compiled one (reflux.plugins)
        self.plugin = _plugin_for(self.label, fn, "transform")
        if self.plugin is None:
            _check_callable(self.label, fn)
        elif flat:
            raise ValidationError(f"{self.label}: flat=True does not apply to a transform plug-in")
        else:
            _chunk_batches(self)
        self.fn = fn
        self.generator = _is_generator_callable(fn)
        self.flat = bool(flat) or self.generator
        self.executor: str = "thread"
        self.workers: int | None = None
        if executor is not None or workers is not None:
            if self.plugin is not None and executor == "process":
                raise ValidationError(f"{self.label}: a compiled plug-in already runs without the GIL and "
                                      "cannot be sent to worker processes; use parallel= for replicas")
            from .process import check_executor  # imported only when asked for (start-up time)
            self.executor, self.workers, _ = check_executor(
                self.label, executor, workers, True if ordered is None else ordered, fn)
        #: how process workers start: "spawn" (fresh interpreters) or "fork"
        self.start_method = "spawn"
        if start_method is not None:
            from .process import check_start_method
            self.start_method = check_start_method(self.label, self.executor, start_method)
        #: start_method="fork": workers forked at the start of the run, until the logic adopts them
        self._preforked: list[Any] | None = None
        if self.executor == "process" and parallel != 1:
            raise ValidationError(f"{self.label}: parallel= runs replicas in threads; with "
                                  "executor='process' set the number of processes with workers=")
        #: ``ordered=`` as given (None: the default of the executor in the end)
        self.ordered_given = ordered
        # process workers keep input order by default; thread replicas emit as they complete
        default_order = self.executor == "process"
        self.parallel, self.ordered = _replicas(self.label, parallel,
                                                default_order if ordered is None else ordered)
        #: False when the pipeline's default executor applies
        self.executor_chosen = executor is not None

    @property  # type: ignore[override]
    def stats_law(self) -> str:
        return "free" if self.flat else "one"

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> NodeLogic:
        if self.executor == "process":
            from .process import ProcessTransformerLogic
            return ProcessTransformerLogic(self, ctx)
        if self.plugin is not None:
            from .plugins import transformer_logic
            return transformer_logic(self, ctx)
        return (FlatTransformerLogic if self.flat else TransformerLogic)(self, ctx)


class TransformerLogic(NodeLogic):
    """One output (or feedback, or failure) per input."""

    node: Transformer

    def __init__(self, node: Transformer, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.fn = node.fn
        #: what the batch loops call: fn, or its class's __call__ bound to it (see _direct_call)
        self.direct_fn = _direct_call(node.fn)
        self.pending: deque[Any] = deque()

    def open(self) -> None:
        _open_hook(self.fn)

    def close(self) -> None:
        _close_hook(self.fn)

    def process(self, batch: list[Any], out: Outbox) -> None:
        # Fast path: every call in one C-level loop, then one check for
        # special values (failures are rare).  Items that failed or fed back
        # are then handled one by one, in order; a retry of such an item
        # happens after the first call of the items behind it in the batch.
        buf = out.ports[0]
        n = len(batch)
        self.remaining = n
        before = len(buf)
        specials, _ = _call_all(self.direct_fn, batch, buf)
        if specials:
            results = buf[before:]
            del buf[before:]
            append = buf.append
            for j in range(n):
                r = results[j]
                if type(r) in _SIGNAL_TYPES:
                    self.remaining = n - j
                    self._slow(batch[j], r, out)
                else:
                    append(r)
        self.remaining = 0

    def _slow(self, item: Any, r: Any, out: Outbox) -> None:
        """A result that is not a plain value: a failure, an Error or NeedsMoreWork.
        (``remaining`` counts this item; it is decremented once the item is handled.)"""
        if isinstance(r, BaseException) or r.__class__ is Error:
            exc = r if isinstance(r, BaseException) else r.exception
            ok, r, attempts = self.retry(self.direct_fn, item, exc)
            if not ok:
                self.remaining -= 1
                self.fail(item, r, attempts, out)
                return
        self.remaining -= 1
        if r.__class__ is NeedsMoreWork:
            self.stats.fed_back += 1
            self.pending.append(r.item)
        else:
            out.ports[0].append(r)

    def has_feedback(self) -> bool:
        return bool(self.pending)

    def process_feedback(self, max_items: int, out: Outbox) -> None:
        pending = self.pending
        # most recent first (depth-first), so a tree walk holds little at once
        batch = [pending.pop() for _ in range(min(max_items, len(pending)))]
        self.process(batch, out)

    def abandon(self) -> int:
        n = self.remaining + len(self.pending)
        self.remaining = 0
        self.pending.clear()
        return n


class FlatTransformerLogic(TransformerLogic):
    """Any number of outputs per input (generator function or ``flat=True``)."""

    def process(self, batch: list[Any], out: Outbox) -> None:
        fn = self.direct_fn
        emit = out.emit
        self.remaining = len(batch)
        for item in batch:
            produced = 0
            try:
                for r in fn(item):
                    produced += 1
                    if isinstance(r, _Signal):
                        if r.__class__ is NeedsMoreWork:
                            self.stats.fed_back += 1
                            self.pending.append(r.item)
                        else:
                            self.fail(item, cast(Error, r).exception, 1, out)
                    else:
                        emit(r)
            except (Abort, NodeFailure):
                raise
            except Exception as exc:  # user code
                if produced or self.policy.retries == 0:
                    # outputs already sent: a retry would send them twice
                    self.remaining -= 1
                    self.fail(item, exc, 1, out)
                    continue
                ok, value, attempts = self.retry(lambda x: list(fn(x)), item, exc)
                self.remaining -= 1
                if not ok:
                    self.fail(item, value, attempts, out)
                    continue
                for r in value:
                    if isinstance(r, _Signal):
                        if r.__class__ is NeedsMoreWork:
                            self.stats.fed_back += 1
                            self.pending.append(r.item)
                        else:
                            self.fail(item, cast(Error, r).exception, 1, out)
                    else:
                        emit(r)
                continue
            self.remaining -= 1


# --------------------------------------------------------------------------- Filter

class Filter(Node):
    """Passes the items for which ``predicate(item)`` is true; counts the others
    as ``filtered``.  Never sends an empty batch downstream.

    A predicate that raises (or returns ``Error``) goes through the error policy.
    A compiled filter plug-in (``reflux_core.transform.CFilter``) filters
    chunks of records without the GIL (see :mod:`reflux.plugins`).
    ``parallel=N`` and ``ordered=`` work as for :class:`Transformer`.
    """

    kind = "Filter"

    def __init__(self, predicate: Callable[[Any], Any], *, parallel: int = 1, ordered: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(_default=_default_name(predicate), **kwargs)
        #: the checked plug-in when ``predicate`` is a compiled one (reflux.plugins)
        self.plugin = _plugin_for(self.label, predicate, "filter")
        if self.plugin is None:
            _check_callable(self.label, predicate, "predicate")
        else:
            _chunk_batches(self)
        self.parallel, self.ordered = _replicas(self.label, parallel, ordered)
        self.predicate = predicate

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> NodeLogic:
        if self.plugin is not None:
            from .plugins import filter_logic
            return filter_logic(self, ctx)
        return FilterLogic(self, ctx)


class FilterLogic(NodeLogic):
    """Keeps the items whose predicate is true; counts the rest as filtered."""

    node: Filter

    def __init__(self, node: Filter, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.direct_fn = _direct_call(node.predicate)

    def open(self) -> None:
        _open_hook(self.node.predicate)

    def close(self) -> None:
        _close_hook(self.node.predicate)

    def process(self, batch: list[Any], out: Outbox) -> None:
        # One C loop appends the kept items straight to the output; it stops
        # at a failed call, which is retried (or failed) here, in order,
        # before the loop goes on with the items behind it.
        pred = self.direct_fn
        buf = out.ports[0]
        if type(batch) is not list:
            batch = list(batch)
        n = len(batch)
        self.remaining = n
        rejected = 0
        start = 0
        try:
            while True:
                before = len(buf)
                j, outcome = _core_keep_all(pred, batch, start, buf, Error)
                # the calls that succeeded this round, less the items kept
                rejected += (n if j < 0 else j) - start - (len(buf) - before)
                if j < 0:
                    break
                self.remaining = n - j
                item = batch[j]
                exc = outcome.exception if outcome.__class__ is Error else outcome
                ok, keep, attempts = self.retry(pred, item, exc)
                self.remaining = n - j - 1
                start = j + 1
                if not ok:
                    self.fail(item, keep, attempts, out)
                elif keep:
                    buf.append(item)
                else:
                    rejected += 1
        finally:
            self.stats.filtered += rejected
        self.remaining = 0


# --------------------------------------------------------------------------- routing nodes

class Balancer(Node):
    """Sends items to its receivers in turn (round-robin), one item each.

    Receivers are the nodes it is connected to, in the order connected; a
    Balancer without receivers is rejected when the pipeline is validated.
    """

    kind = "Balancer"
    routes = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> BalancerLogic:
        return BalancerLogic(self, ctx, n_ports)


class BalancerLogic(NodeLogic):
    """Round-robin over the output ports, continued across batches."""

    def __init__(self, node: Balancer, ctx: NodeContext, n_ports: int) -> None:
        super().__init__(node, ctx)
        self.n = n_ports
        self.next = 0

    def process(self, batch: list[Any], out: Outbox) -> None:
        ports = out.ports
        n = self.n
        i = self.next
        for item in batch:
            ports[i].append(item)
            i += 1
            if i == n:
                i = 0
        self.next = i


class Broadcast(Node):
    """Sends every item to every receiver.

    Receivers share the same object; pass ``copy`` (e.g. ``copy.deepcopy``)
    to give each receiver after the first its own copy when they mutate items.
    """

    kind = "Broadcast"
    routes = True

    def __init__(self, *, copy: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if copy is not None:
            _check_callable(self.label, copy, "copy")
        self.copy = copy

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> BroadcastLogic:
        ctx.stats.fanout = n_ports
        return BroadcastLogic(self, ctx, n_ports)

    stats_law = "fanout"


class BroadcastLogic(NodeLogic):
    """Every item to every output port (copied for ports after the first when ``copy`` is set)."""

    node: Broadcast

    def __init__(self, node: Broadcast, ctx: NodeContext, n_ports: int) -> None:
        super().__init__(node, ctx)
        self.n = n_ports

    def process(self, batch: list[Any], out: Outbox) -> None:
        copy = self.node.copy
        if copy is None:
            for buf in out.ports:
                buf.extend(batch)
            return
        out.ports[0].extend(batch)
        self.remaining = len(batch) * (self.n - 1)
        for buf in out.ports[1:]:
            for item in batch:
                ok, value = self.call(copy, item, out)
                self.remaining -= 1
                if ok:
                    buf.append(value)

    def abandon(self) -> int:
        n = self.remaining
        self.remaining = 0
        return n


class Funnel(Node):
    """Merges any number of inputs into one output.

    Every input feeds one shared channel, so an item on any input is
    forwarded at once however many inputs are idle; the Funnel ends when all
    its inputs have ended.
    """

    kind = "Funnel"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> FunnelLogic:
        return FunnelLogic(self, ctx)


class FunnelLogic(NodeLogic):
    """Forwards its (merged) input unchanged."""

    def process(self, batch: list[Any], out: Outbox) -> None:
        out.ports[0].extend(batch)


class Messenger(Node):
    """Routes each item to the receiver named by ``key(item)``.

    The key is looked up in ``routes`` (a mapping of key to a node or a
    node's name), then among the names of the Messenger's receivers.  An
    unknown key goes to ``default`` (a node or a name) when given, else it is
    a failure (:class:`~reflux.errors.RoutingError`) handled by the node's
    error policy: never a silent drop.  Nodes named in ``routes`` and
    ``default`` are connected automatically if they are in the pipeline.

    ``key`` may be a compiled key plug-in (``reflux_core.transform.CKey``):
    each chunk of records is split by key without the GIL and the parts are
    routed (see :mod:`reflux.plugins`); counters then count chunks in and
    parts out, so they follow no fixed law.
    """

    kind = "Messenger"
    routes = True

    def __init__(self, key: Callable[[Any], Any], *, routes: Mapping[Any, Node | str] | None = None,
                 default: Node | str | None = None, **kwargs: Any) -> None:
        super().__init__(_default=_default_name(key), **kwargs)
        #: the checked plug-in when ``key`` is a compiled one (reflux.plugins)
        self.plugin = _plugin_for(self.label, key, "key")
        if self.plugin is None:
            _check_callable(self.label, key, "key")
        else:
            self.stats_law = "free"  # one chunk in may leave as several parts
            _chunk_batches(self)
        if routes is not None and not isinstance(routes, Mapping):
            raise ValidationError(f"{self.label}: routes must be a mapping of key to node, got {routes!r:.60}")
        for k, target in (routes or {}).items():
            if not isinstance(target, (Node, str)):
                raise ValidationError(
                    f"{self.label}: route {k!r} must lead to a node or a node's name, got {target!r:.60}")
        if default is not None and not isinstance(default, (Node, str)):
            raise ValidationError(f"{self.label}: default must be a node or a node's name, got {default!r:.60}")
        self.key = key
        self.route_table: dict[Any, Node | str] = dict(routes or {})
        self.default = default
        #: filled in by the pipeline: key -> output port, default port
        self._ports: dict[Any, int] = {}
        self._default_port: int | None = None

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> NodeLogic:
        if self.plugin is not None:
            from .plugins import messenger_logic
            return messenger_logic(self, ctx, dict(self._ports), self._default_port)
        return MessengerLogic(self, ctx, dict(self._ports), self._default_port)


class MessengerLogic(NodeLogic):
    """Sends each item to the port its key maps to (or the default port)."""

    node: Messenger

    def __init__(self, node: Messenger, ctx: NodeContext, ports: dict[Any, int], default: int | None) -> None:
        super().__init__(node, ctx)
        self.ports = ports
        self.default = default

    def open(self) -> None:
        _open_hook(self.node.key)

    def close(self) -> None:
        _close_hook(self.node.key)

    def process(self, batch: list[Any], out: Outbox) -> None:
        key = self.node.key
        ports = self.ports
        bufs = out.ports
        default = self.default
        self.remaining = len(batch)
        for item in batch:
            try:
                k = key(item)
            except Exception as exc:  # user code
                k = Error(exc)
            if k.__class__ is Error:
                ok, k, attempts = self.retry(key, item, k.exception)
                if not ok:
                    self.remaining -= 1
                    self.fail(item, k, attempts, out)
                    continue
            try:
                port = ports.get(k, default)
            except TypeError as exc:  # unhashable key
                self.remaining -= 1
                self.fail(item, RoutingError(f"{self.node.label}: key {k!r:.60} is unhashable: {exc}"), 1, out)
                continue
            self.remaining -= 1
            if port is None:
                self.fail(item, RoutingError(f"{self.node.label}: no route for key {k!r:.60} "
                                             f"and no default route"), 1, out)
                continue
            bufs[port].append(item)


# --------------------------------------------------------------------------- Accumulator

class Accumulator(Node):
    """Groups items into lists: of ``count`` items, and/or of what arrived
    within ``window`` seconds of a group's first item; whichever comes first.

    At end of stream the partial group left is sent (never an empty list).
    """

    kind = "Accumulator"

    def __init__(self, count: int | None = None, *, window: float | None = None, **kwargs: Any) -> None:
        super().__init__(_default="accumulator", **kwargs)
        _check_positive_int(self.label, "count", count)
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float))
                                   or not window > 0 or window != window or window == float("inf")):
            raise ValidationError(f"{self.label}: window must be a positive number of seconds, got {window!r}")
        if count is None and window is None:
            raise ValidationError(f"{self.label}: give count=, window= or both")
        self.count = count
        self.window = None if window is None else float(window)

    stats_law = "free"

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> AccumulatorLogic:
        return AccumulatorLogic(self, ctx)


class AccumulatorLogic(NodeLogic):
    """Collects items into groups closed by count, by time window, or at end of stream."""

    node: Accumulator

    def __init__(self, node: Accumulator, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.group: list[Any] = []
        self.deadline: float | None = None
        #: items sent downstream inside lists
        self.grouped = 0

    def _emit(self, out: Outbox) -> None:
        group = self.group
        self.group = []
        self.deadline = None
        self.grouped += len(group)
        out.emit(group)

    def process(self, batch: list[Any], out: Outbox) -> None:
        count = self.node.count
        window = self.node.window
        now = time.monotonic() if window is not None else 0.0
        if self.deadline is not None and now >= self.deadline:
            self._emit(out)
        for item in batch:
            if not self.group and window is not None:
                self.deadline = now + window
            self.group.append(item)
            if count is not None and len(self.group) >= count:
                self._emit(out)

    def next_deadline(self) -> float | None:
        return self.deadline

    def tick(self, now: float, out: Outbox) -> None:
        if self.deadline is not None and now >= self.deadline and self.group:
            self._emit(out)

    def finish(self, out: Outbox) -> None:
        if self.group:
            self._emit(out)

    def abandon(self) -> int:
        n = len(self.group)
        self.group = []
        return n


# --------------------------------------------------------------------------- Loader

class Loader(Node):
    """End of a pipeline: calls ``fn`` on each item (or, with ``batch=True``, on
    each list of items) to store, send or drop it.

    What :meth:`Pipeline.run` reports for the Loader (``result.results[name]``):
    the value of ``fn.result()`` when ``fn`` has a ``result`` method (the
    built-in sinks do), else the list of the values ``fn`` returned that
    were not ``None`` (usually empty).

    Built-in sinks: :meth:`to_list`, :meth:`to_file`, :meth:`to_callback`.
    ``fn``'s optional ``open()`` and ``close()`` methods are called once per worker.
    A batch that fails is retried as a whole, then each item of it is handled
    by the error policy.
    """

    kind = "Loader"
    is_sink = True

    def __init__(self, fn: Callable[[Any], Any], *, batch: bool | None = None, **kwargs: Any) -> None:
        super().__init__(_default=_default_name(fn), **kwargs)
        _check_callable(self.label, fn)
        self.fn = fn
        self.batch = bool(getattr(fn, "batched", False)) if batch is None else bool(batch)

    @classmethod
    def to_list(cls, target: list[Any] | None = None, **kwargs: Any) -> Loader:
        """A Loader appending every item to ``target`` (a new list by default); reports the list."""
        from .sinks import ListSink
        return cls(ListSink(target), **kwargs)

    @classmethod
    def to_file(cls, path: Any, *, mode: str = "w", encoding: str = "utf-8",
                format: Callable[[Any], str] = str, **kwargs: Any) -> Loader:
        """A Loader writing each item as one line of the text file ``path``; reports lines written."""
        from .sinks import FileSink
        return cls(FileSink(path, mode=mode, encoding=encoding, format=format), **kwargs)

    @classmethod
    def to_callback(cls, fn: Callable[[Any], Any], **kwargs: Any) -> Loader:
        """A Loader calling ``fn(item)`` for each item; reports how many items it took."""
        from .sinks import CallbackSink
        _check_callable(f"Loader '{kwargs.get('name') or _default_name(fn) or 'loader'}'", fn)
        return cls(CallbackSink(fn), **kwargs)

    def make_logic(self, ctx: NodeContext, n_ports: int, port_names: Sequence[str]) -> LoaderLogic:
        return LoaderLogic(self, ctx)


class LoaderLogic(NodeLogic):
    """Calls the Loader's function per item or per batch and keeps what it returned."""

    node: Loader

    def __init__(self, node: Loader, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.fn = node.fn
        self.direct_fn = _direct_call(node.fn)
        self.returned: list[Any] = []

    def open(self) -> None:
        _open_hook(self.fn)

    def close(self) -> None:
        _close_hook(self.fn)

    def process(self, batch: list[Any], out: Outbox) -> None:
        fn = self.direct_fn
        st = self.stats
        self.remaining = len(batch)
        if self.node.batch:
            ok, value = self._call_batch(fn, batch)
            self.remaining = 0
            if ok:
                st.emitted += len(batch)
                if value is not None:
                    self.returned.append(value)
            else:
                self.remaining = len(batch)
                for item in batch:
                    self.remaining -= 1
                    self.fail(item, value[0], value[1], out)
            return
        returned = self.returned
        n = len(batch)
        values: list[Any] = []
        _, not_none = _call_all(fn, batch, values, Error, Error, True)
        if not not_none:
            # fast path: every call returned None (the usual sink)
            self.remaining = 0
            st.emitted += n
            return
        loaded = 0
        try:
            for j in range(n):
                r = values[j]
                if r is None:
                    loaded += 1
                    continue
                if r.__class__ is Error:
                    self.remaining = n - j
                    ok, r, attempts = self.retry(fn, batch[j], r.exception)
                    if not ok:
                        self.remaining = n - j - 1
                        self.fail(batch[j], r, attempts, out)
                        continue
                loaded += 1
                if r is not None:
                    returned.append(r)
            self.remaining = 0
        finally:
            st.emitted += loaded

    def _call_batch(self, fn: Callable[[Any], Any], batch: list[Any]) -> tuple[bool, Any]:
        try:
            value = fn(batch)
        except Exception as exc:  # user code
            value = Error(exc)
        if value.__class__ is not Error:
            return True, value
        ok, value, attempts = self.retry(fn, batch, value.exception)
        return (True, value) if ok else (False, (value, attempts))

    def result(self) -> Any:
        res = getattr(self.fn, "result", None)
        if callable(res) and not inspect.isroutine(self.fn):
            return res()
        return self.returned
