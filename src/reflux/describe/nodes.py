"""The nine node types a user wires into a pipeline (the Rust crate's vocabulary).

:class:`Extractor` (source), :class:`Transformer`, :class:`Filter`,
:class:`Balancer`, :class:`Broadcast`, :class:`Funnel`, :class:`Messenger`,
:class:`Accumulator` and :class:`Loader` (sink).  Each class checks its
arguments when it is built (errors name the node) and holds them; what a node
does with a batch is in :mod:`reflux.logic`, one module per kind.

Each node type is generic in its items (see :mod:`reflux.describe.base`): the
types come from the function a node is given (``Transformer(str)`` of a
``def f(x: int) -> str`` is a ``Transformer[int, str]``), or are written out
(``Loader[int](print)``); left out, they are ``Any``.
"""
from __future__ import annotations

import inspect
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, overload

from reflux_core.channel import Channel, RecordChannel

from ..errors import NotCallableError, ValidationError
from .base import (
    In,
    Node,
    Out,
    T,
    check_async,
    check_batched,
    check_callable,
    check_positive_int,
    check_replicas,
    chunk_batches,
    default_name,
    is_async_callable,
    is_generator_callable,
    plugin_for,
)
from .executors import check_executor, check_ray_options, check_start_method
from .sinks import CallbackSink, CountSink, FileSink, ListSink, ReduceSink, SumSink

_NO_INITIAL: Any = object()  # Loader.reduce without an initial value

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Never  # noqa: F401 - named in the string Node["Never", ...]

    from ..signals import Error, NeedsMoreWork

    #: what a node function may return besides an output: feedback and failures
    _Signal = NeedsMoreWork | Error

__all__ = [
    "Extractor",
    "Transformer",
    "Filter",
    "Balancer",
    "Broadcast",
    "Funnel",
    "Messenger",
    "Accumulator",
    "Loader",
]


class SupportsPlugin(Protocol):
    """A compiled record plug-in: a ``reflux_core.transform`` CTransform, CFilter or CKey,
    or any object offering a C plug-in's capsule."""

    @property
    def __reflux_plugin__(self) -> object: ...


class BatchReader(Protocol[Out]):
    """A source that hands over items in batches (the sources of :mod:`reflux.connectors`);
    see :class:`Extractor`."""

    def read_batch(self, max_items: int, /) -> Sequence[Out]: ...


# --------------------------------------------------------------------------- Extractor

class Extractor(Node["Never", Out]):
    """Source of a pipeline: reads items from ``source`` and sends them on.

    ``source`` may be:

    * an iterable (list, range, file, iterator, ...): iterated once;
    * a generator function (called once with no arguments): once-off, or an
      infinite loop that runs until the pipeline stops;
    * an async iterable or async generator function: iterated on an event
      loop of the Extractor's own;
    * any other callable: called repeatedly with no arguments; the source ends
      when it raises ``StopIteration`` or returns ``sentinel`` (if given),
      else it runs until the pipeline stops;
    * a live channel (:class:`~reflux.SPSCChannel`, :class:`~reflux.MPMCChannel`,
      :class:`~reflux.RecordChannel`) that other code pushes into: a stream, whose
      items flow on as they arrive (a record channel's as arrays of records) and
      whose close is the end of the stream;
    * a *batch reader*: an object with a ``read_batch(max_items)`` method that
      returns a list of up to ``max_items`` items, an empty list at the end (the
      sources of :mod:`reflux.connectors` are readers).  Its optional ``open()``
      and ``close()`` are called around the run; ``blocking = False`` on it says
      it never waits (a local file), so it runs on the worker pool.

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

    @overload
    def __init__(self: Extractor[npt.NDArray[np.void]], source: RecordChannel, *, sentinel: Any = ...,
                 **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: BatchReader[Out], *, sentinel: Any = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: Channel[Out], *, sentinel: Any = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: Callable[[], Generator[Out, Any, Any]], *, sentinel: Any = ...,
                 **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: Callable[[], AsyncGenerator[Out, Any]], *, sentinel: Any = ...,
                 **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: Iterable[Out] | AsyncIterable[Out], *, sentinel: Any = ...,
                 **kwargs: Any) -> None: ...
    @overload
    def __init__(self, source: Callable[[], Out], *, sentinel: Any = ..., **kwargs: Any) -> None: ...

    def __init__(self, source: Any, *, sentinel: Any = _NO_SENTINEL, **kwargs: Any) -> None:
        default = (default_name(source) if callable(source) and not isinstance(source, Iterable)
                   or callable(getattr(source, "read_batch", None)) else None)
        super().__init__(_default=default, **kwargs)
        if isinstance(source, (str, bytes)):
            raise NotCallableError(
                f"{self.label}: source is a {type(source).__name__}; wrap it in a list to send it as one item")
        if isinstance(source, (Channel, RecordChannel)):
            self.mode = "channel"
        elif callable(getattr(source, "read_batch", None)) and not isinstance(source, type):
            self.mode = "reader"
        elif inspect.isasyncgenfunction(source):
            self.mode = "asyncgen"
        elif is_generator_callable(source) and not isinstance(source, Iterable):
            self.mode = "genfunc"
        elif isinstance(source, AsyncIterable):
            self.mode = "async"
        elif isinstance(source, Iterable):
            self.mode = "sized" if isinstance(source, Sized) else "iter"
        elif inspect.iscoroutinefunction(source):
            raise NotCallableError(
                f"{self.label}: source {getattr(source, '__name__', '')!r} is an async function (each call "
                f"would make one coroutine); give an async generator function or an async iterable")
        elif callable(source):
            self.mode = "call"
        else:
            raise NotCallableError(
                f"{self.label}: source must be an iterable, a generator function, an async "
                f"iterable or a callable, got {type(source).__name__} {source!r:.60}")
        self.source = source
        self.sentinel = sentinel

    stats_law = "source"


# --------------------------------------------------------------------------- Transformer

class Transformer(Node[In, Out]):
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
      ``open()`` and ``close()`` methods are called once, around the run
      (once per replica with ``parallel=N``).
    * a compiled transform plug-in (a ``reflux_core.transform.CTransform``
      subclass, or a C plug-in) runs over chunks of records without the GIL
      (see :mod:`reflux.logic.plugins`).

    ``parallel=N`` runs N replicas of the node, fed from one shared channel.
    A callable object is copied for each replica (``copy.deepcopy`` when the
    run starts; each copy opened and closed once); functions, bound methods
    and compiled plug-ins are shared (see :mod:`reflux.run.replicas`).  On a
    GIL build replicas speed up functions that release the GIL (numpy,
    Cython transformers, I/O); on a free-threaded CPython with the GIL off
    they run pure Python on N cores.  Replicas emit in completion order
    unless ``ordered=True``, which restores input order (per batch) on output.

    ``executor="process"`` runs ``fn`` in ``workers`` worker processes
    (default: one per CPU) for CPU-bound pure Python; ``fn`` (with its state)
    must be picklable and is sent once per worker, items and results travel
    pickled; results keep input order unless ``ordered=False``.  See
    :mod:`reflux.run.process`.  (``parallel=`` replicas run in threads; with
    ``executor="process"`` use ``workers=``.)  Workers are fresh interpreters
    (``start_method="spawn"``, the default); ``start_method="fork"`` forks them
    from this process when the run starts, which saves their start-up (tens of
    milliseconds each) and needs this process to run a single thread then.

    ``executor="ray"`` runs ``fn`` in ``workers`` Ray actors (default: one per
    CPU of the Ray cluster), anywhere in a Ray cluster; ``ray_options`` are
    Ray's actor options (``num_cpus``, ``num_gpus``, ``resources``,
    ``runtime_env``, ``max_restarts``...).  Items travel in batches, results
    keep input order unless ``ordered=False``.  See :mod:`reflux.run.ray`.
    """

    kind = "Transformer"

    # the types: a generator function (annotated to return a Generator or an Iterator)
    # yields the outputs; with flat=True the function returns iterables of them; else it
    # returns one (NeedsMoreWork and Error are not outputs)
    @overload
    def __init__(self, fn: Callable[[In], Iterator[Out | _Signal]], *, flat: bool = ...,
                 parallel: int = ..., ordered: bool | None = ..., executor: str | None = ...,
                 workers: int | None = ..., start_method: str | None = ...,
                 ray_options: Mapping[str, Any] | None = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, fn: Callable[[In], Iterable[Out | _Signal]], *, flat: Literal[True],
                 parallel: int = ..., ordered: bool | None = ..., executor: str | None = ...,
                 workers: int | None = ..., start_method: str | None = ...,
                 ray_options: Mapping[str, Any] | None = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, fn: Callable[[In], Awaitable[Out | _Signal]], *, concurrency: int | None = ...,
                 call_timeout: float | None = ..., parallel: int = ..., ordered: bool | None = ...,
                 **kwargs: Any) -> None: ...
    @overload
    def __init__(self, fn: Callable[[list[In]], Iterable[Out]], *, batched: Literal[True],
                 parallel: int = ..., ordered: bool | None = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, fn: Callable[[In], Out | _Signal], *, flat: Literal[False] = ...,
                 parallel: int = ..., ordered: bool | None = ..., executor: str | None = ...,
                 workers: int | None = ..., start_method: str | None = ...,
                 ray_options: Mapping[str, Any] | None = ..., **kwargs: Any) -> None: ...
    @overload
    def __init__(self, fn: SupportsPlugin, *, parallel: int = ..., ordered: bool | None = ...,
                 **kwargs: Any) -> None: ...

    def __init__(self, fn: Any, *, flat: bool = False, parallel: int = 1,
                 ordered: bool | None = None, executor: str | None = None, workers: int | None = None,
                 start_method: str | None = None, batched: bool = False, concurrency: int | None = None,
                 call_timeout: float | None = None, ray_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(_default=default_name(fn), **kwargs)
        #: the checked plug-in when ``fn`` is a compiled one (reflux.describe.plugins)
        self.plugin = plugin_for(self.label, fn, "transform")
        #: an ``async def`` function: its calls run on an event loop (see :meth:`async_options`)
        self.is_async = self.plugin is None and is_async_callable(fn)
        self.concurrency, self.call_timeout = check_async(self.label, fn, self.is_async, concurrency,
                                                          call_timeout)
        #: ``fn`` takes the whole batch as a list and returns one result per item
        self.batched = check_batched(self.label, batched, self.plugin, self.is_async)
        if self.batched and flat:
            raise ValidationError(f"{self.label}: batched=True returns one result per item; it does not "
                                  "combine with flat=True")
        if self.plugin is None:
            check_callable(self.label, fn, allow_async=True)
        elif flat:
            raise ValidationError(f"{self.label}: flat=True does not apply to a transform plug-in")
        else:
            chunk_batches(self)
        #: the function (or plug-in) as given
        self.fn: Any = fn
        self.generator = is_generator_callable(fn)
        self.flat = bool(flat) or self.generator
        if self.flat:
            self.stats_law = "free"  # an item in may give any number out
        self.executor: str = "thread"
        self.workers: int | None = None
        if executor in ("process", "ray") and (self.is_async or self.batched):
            raise ValidationError(f"{self.label}: executor={executor!r} takes a plain function (not "
                                  f"{'an async one' if self.is_async else 'batched=True'})")
        if executor is not None or workers is not None:
            if self.plugin is not None and executor in ("process", "ray"):
                raise ValidationError(f"{self.label}: a compiled plug-in already runs without the GIL and "
                                      f"cannot be sent to {executor} workers; use parallel= for replicas")
            self.executor, self.workers, _ = check_executor(
                self.label, executor, workers, True if ordered is None else ordered, fn)
        #: options of the Ray actors (``executor="ray"``)
        self.ray_options = check_ray_options(self.label, self.executor, ray_options)
        #: how process workers start: "spawn" (fresh interpreters) or "fork"
        self.start_method = "spawn"
        if start_method is not None:
            self.start_method = check_start_method(self.label, self.executor, start_method)
        if self.is_async and parallel != 1:
            raise ValidationError(f"{self.label}: an async function runs many calls at once on one event "
                                  "loop: set concurrency= instead of parallel=")
        if self.is_async and self.generator:
            raise ValidationError(f"{self.label}: an async generator function is not a Transformer function")
        if self.executor != "thread" and parallel != 1:
            raise ValidationError(f"{self.label}: parallel= runs replicas in threads; with "
                                  f"executor={self.executor!r} set the number of "
                                  f"{'processes' if self.executor == 'process' else 'actors'} with workers=")
        #: ``ordered=`` as given (None: the default of the executor in the end)
        self.ordered_given = ordered
        # process and Ray workers and async calls keep input order by default; thread
        # replicas emit as they complete
        default_order = self.executor != "thread" or self.is_async
        self.parallel, self.ordered = check_replicas(self.label, parallel,
                                                     default_order if ordered is None else ordered)
        #: False when the pipeline's default executor applies
        self.executor_chosen = executor is not None


# --------------------------------------------------------------------------- Filter

class Filter(Node[T, T]):
    """Passes the items for which ``predicate(item)`` is true; counts the others
    as ``filtered``.  Never sends an empty batch downstream.

    A predicate that raises (or returns ``Error``) goes through the error policy.
    A compiled filter plug-in (``reflux_core.transform.CFilter``) filters
    chunks of records without the GIL (see :mod:`reflux.logic.plugins`).
    ``parallel=N`` and ``ordered=`` work as for :class:`Transformer`, and so do
    ``executor="ray"``, ``workers=`` and ``ray_options=`` (the predicate runs
    in Ray actors; only the verdicts travel back, the items stay here).
    """

    kind = "Filter"

    def __init__(self, predicate: Callable[[T], object] | Callable[[list[T]], Any] | SupportsPlugin, *,
                 parallel: int = 1, ordered: bool | None = None, batched: bool = False,
                 concurrency: int | None = None, call_timeout: float | None = None, executor: str | None = None,
                 workers: int | None = None, ray_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(_default=default_name(predicate), **kwargs)
        #: the checked plug-in when ``predicate`` is a compiled one (reflux.describe.plugins)
        self.plugin = plugin_for(self.label, predicate, "filter")
        #: an ``async def`` predicate: its calls run on an event loop
        self.is_async = self.plugin is None and is_async_callable(predicate)
        self.concurrency, self.call_timeout = check_async(self.label, predicate, self.is_async, concurrency,
                                                          call_timeout)
        #: ``predicate`` takes the whole batch as a list and returns one truth value per item
        self.batched = check_batched(self.label, batched, self.plugin, self.is_async)
        if self.plugin is None:
            check_callable(self.label, predicate, "predicate", allow_async=True)
        else:
            chunk_batches(self)
        if self.is_async and parallel != 1:
            raise ValidationError(f"{self.label}: an async predicate runs many calls at once on one event "
                                  "loop: set concurrency= instead of parallel=")
        self.executor, self.workers, _ = check_executor(self.label, executor, workers, bool(ordered),
                                                        allowed=("thread", "ray"))
        if self.executor == "ray" and (self.plugin is not None or parallel != 1 or self.is_async or self.batched):
            raise ValidationError(f"{self.label}: executor='ray' runs a plain predicate in Ray actors: set their "
                                  "number with workers= (parallel=, compiled plug-ins, async and batched "
                                  "predicates run here)")
        #: options of the Ray actors (``executor="ray"``)
        self.ray_options = check_ray_options(self.label, self.executor, ray_options)
        self.parallel, self.ordered = check_replicas(
            self.label, parallel, (self.executor == "ray" or self.is_async) if ordered is None else ordered)
        #: the predicate (or plug-in) as given
        self.predicate: Any = predicate


# --------------------------------------------------------------------------- routing nodes

class Balancer(Node[T, T]):
    """Sends items to its receivers in turn (round-robin), one item each.

    Receivers are the nodes it is connected to, in the order connected; a
    Balancer without receivers is rejected when the pipeline is validated.
    """

    kind = "Balancer"
    routes = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class Broadcast(Node[T, T]):
    """Sends every item to every receiver.

    Receivers share the same object; pass ``copy`` (e.g. ``copy.deepcopy``)
    to give each receiver after the first its own copy when they mutate items.
    """

    kind = "Broadcast"
    routes = True

    def __init__(self, *, copy: Callable[[T], T] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if copy is not None:
            check_callable(self.label, copy, "copy")
        self.copy = copy

    stats_law = "fanout"


class Funnel(Node[T, T]):
    """Merges any number of inputs into one output.

    Every input feeds one shared channel, so an item on any input is
    forwarded at once however many inputs are idle; the Funnel ends when all
    its inputs have ended.
    """

    kind = "Funnel"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class Messenger(Node[T, T]):
    """Routes each item to the receiver named by ``key(item)``.

    The key is looked up in ``routes`` (a mapping of key to a node or a
    node's name), then among the names of the Messenger's receivers.  An
    unknown key goes to ``default`` (a node or a name) when given, else it is
    a failure (:class:`~reflux.errors.RoutingError`) handled by the node's
    error policy: never a silent drop.  Nodes named in ``routes`` and
    ``default`` are connected automatically if they are in the pipeline.

    ``key`` may be a compiled key plug-in (``reflux_core.transform.CKey``):
    each chunk of records is split by key without the GIL and the parts are
    routed (see :mod:`reflux.logic.plugins`); counters then count chunks in and
    parts out, so they follow no fixed law.
    """

    kind = "Messenger"
    routes = True

    def __init__(self, key: Callable[[T], Any] | SupportsPlugin, *,
                 routes: Mapping[Any, Node[T, Any] | str] | None = None,
                 default: Node[T, Any] | str | None = None, **kwargs: Any) -> None:
        super().__init__(_default=default_name(key), **kwargs)
        #: the checked plug-in when ``key`` is a compiled one (reflux.describe.plugins)
        self.plugin = plugin_for(self.label, key, "key")
        if self.plugin is None:
            check_callable(self.label, key, "key")
        else:
            self.stats_law = "free"  # one chunk in may leave as several parts
            chunk_batches(self)
        if routes is not None and not isinstance(routes, Mapping):
            raise ValidationError(f"{self.label}: routes must be a mapping of key to node, got {routes!r:.60}")
        for k, target in (routes or {}).items():
            if not isinstance(target, (Node, str)):
                raise ValidationError(
                    f"{self.label}: route {k!r} must lead to a node or a node's name, got {target!r:.60}")
        if default is not None and not isinstance(default, (Node, str)):
            raise ValidationError(f"{self.label}: default must be a node or a node's name, got {default!r:.60}")
        #: the key function (or plug-in) as given
        self.key: Any = key
        self.route_table: dict[Any, Node | str] = dict(routes or {})
        self.default = default


# --------------------------------------------------------------------------- Accumulator

class Accumulator(Node[T, "list[T]"]):
    """Groups items into lists: of ``count`` items, and/or of what arrived
    within ``window`` seconds of a group's first item; whichever comes first.

    At end of stream the partial group left is sent (never an empty list).
    """

    kind = "Accumulator"

    def __init__(self, count: int | None = None, *, window: float | None = None, **kwargs: Any) -> None:
        super().__init__(_default="accumulator", **kwargs)
        check_positive_int(self.label, "count", count)
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float))
                                   or not window > 0 or window != window or window == float("inf")):
            raise ValidationError(f"{self.label}: window must be a positive number of seconds, got {window!r}")
        if count is None and window is None:
            raise ValidationError(f"{self.label}: give count=, window= or both")
        self.count = count
        self.window = None if window is None else float(window)

    stats_law = "free"


# --------------------------------------------------------------------------- Loader

class Loader(Node[T, "Never"]):
    """End of a pipeline: calls ``fn`` on each item (or, with ``batch=True``, on
    each list of items) to store, send or drop it.

    What :meth:`Pipeline.run` reports for the Loader (``result.results[name]``):
    the value of ``fn.result()`` when ``fn`` has a ``result`` method (the
    built-in sinks do), else the list of the values ``fn`` returned that
    were not ``None`` (usually empty).

    Built-in sinks, fastest first: :meth:`count`, :meth:`sum`, :meth:`reduce`
    and :meth:`collect` (a list, also :meth:`to_list`) work a batch at a time;
    :meth:`to_file`, :meth:`to_callback`.
    ``fn``'s optional ``open()`` and ``close()`` methods are called once per worker.
    A batch that fails is retried as a whole, then each item of it is handled
    by the error policy.
    """

    kind = "Loader"
    is_sink = True

    def __init__(self, fn: Callable[[T], Any] | Callable[[list[T]], Any], *, batch: bool | None = None,
                 concurrency: int | None = None, call_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(_default=default_name(fn), **kwargs)
        check_callable(self.label, fn, allow_async=True)
        #: an ``async def`` function: its calls run on an event loop
        self.is_async = is_async_callable(fn)
        self.concurrency, self.call_timeout = check_async(self.label, fn, self.is_async, concurrency,
                                                          call_timeout)
        #: the function as given
        self.fn: Any = fn
        self.batch = bool(getattr(fn, "batched", False)) if batch is None else bool(batch)
        if self.batch and self.is_async:
            raise ValidationError(f"{self.label}: batch=True takes a plain function (an async one loads "
                                  "item by item, concurrency= at a time)")
        #: async calls in flight keep input order (one at a time: side effects in order)
        self.ordered = True

    @classmethod
    def count(cls, **kwargs: Any) -> Loader[Any]:
        """A Loader counting the items; reports the count (one addition per batch)."""
        return cls(CountSink(), **kwargs)

    @classmethod
    def sum(cls, start: Any = 0, **kwargs: Any) -> Loader[Any]:
        """A Loader adding the items up (``start`` + every item); reports the total
        (one C-level ``sum()`` per batch: the fastest way to reduce numbers)."""
        return cls(SumSink(start), **kwargs)

    @classmethod
    def reduce(cls, fn: Callable[[Any, T], Any], initial: Any = _NO_INITIAL, **kwargs: Any) -> Loader[T]:
        """A Loader folding the items with ``fn(accumulated, item)`` from ``initial``
        (without it, from the first item), like :func:`functools.reduce`; reports the result."""
        check_callable(f"Loader '{kwargs.get('name') or 'reduce'}'", fn)
        return cls(ReduceSink(fn) if initial is _NO_INITIAL else ReduceSink(fn, initial), **kwargs)

    @classmethod
    def collect(cls, **kwargs: Any) -> Loader[Any]:
        """A Loader collecting the items into a new list; reports the list (``to_list()``)."""
        return cls(ListSink(), **kwargs)

    @classmethod
    def to_list(cls, target: list[T] | None = None, **kwargs: Any) -> Loader[T]:
        """A Loader appending every item to ``target`` (a new list by default); reports the list."""
        return cls(ListSink(target), **kwargs)

    @classmethod
    def to_file(cls, path: Any, *, mode: str = "w", encoding: str = "utf-8",
                format: Callable[[T], str] = str, **kwargs: Any) -> Loader[T]:
        """A Loader writing each item as one line of the text file ``path``; reports lines written."""
        return cls(FileSink(path, mode=mode, encoding=encoding, format=format), **kwargs)

    @classmethod
    def to_callback(cls, fn: Callable[[T], Any], **kwargs: Any) -> Loader[T]:
        """A Loader calling ``fn(item)`` for each item; reports how many items it took."""
        check_callable(f"Loader '{kwargs.get('name') or default_name(fn) or 'loader'}'", fn)
        return cls(CallbackSink(fn), **kwargs)
