"""What one node does with one batch: the logic contract, its context and its outbox.

When a pipeline runs, each node gets a *logic* object (made by
:func:`reflux.logic.make_logic`): plain Python that processes one batch at a
time and writes its outputs into an :class:`Outbox`.  The logic knows nothing
about threads or channels; the runtime (:mod:`reflux.run`) decides when a
batch runs and where the outbox goes.  This keeps node semantics (what
NeedsMoreWork, a filter or a round-robin means) apart from scheduling, so the
runtime can change without touching them.

The logic contract (used by the runtime):

``open()`` / ``close()``
    once per replica, around everything else (they call the user's hooks
    through the context: :meth:`NodeContext.open_user`).
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
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from reflux_core._batch import StopFlag

from ..describe.base import DEFAULT_BATCH_SIZE, Node
from ..errors import ErrorRecord, safe_repr, safe_str
from ..result import Event, NodeStats
from ..signals import Error

__all__ = [
    "BatchedCalls",
    "Abort",
    "LocalContext",
    "current_context",
    "set_current_context",
    "CURRENT",
    "NodeContext",
    "NodeFailure",
    "NodeLogic",
    "Outbox",
    "close_hook",
    "direct_call",
    "open_hook",
]

logger = logging.getLogger("reflux")


# --------------------------------------------------------------------------- internal control flow

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
    :attr:`stop_flag` is raised when the run is abandoned: the batch loops
    read it before each call of user code (a runtime gives every node its own
    run's flag).
    """

    def __init__(self, stats: NodeStats, stop_flag: StopFlag | None = None) -> None:
        self.stats = stats
        self.stop_flag: StopFlag = StopFlag() if stop_flag is None else stop_flag
        # protects the read-modify-write of stats.events: more than one thread can emit
        # through one context (an async node's event loop beside the worker running the
        # node, user threads the runtime marked), and without a GIL two increments
        # of one level could lose one; readers copy the dict (dict(events): one
        # atomic copy) and need no lock
        self._events_lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (retry back-off); raise :class:`Abort` if the run is abandoned."""
        if seconds > 0:
            time.sleep(seconds)

    def should_stop(self) -> bool:
        """``True`` when sources should stop extracting (``stop()`` or abort)."""
        return False

    def keep_error(self, record: ErrorRecord) -> None:
        """Store an error record in the run result."""

    def stopping(self) -> bool:
        """``True`` once the run is stopping (``stop()``, a failure, a timeout, Ctrl-C)."""
        return self.should_stop()

    def emit(self, event: Event) -> None:
        """An event the node's function emitted (:func:`reflux.emit`): counted by level
        in the node's counters, and logged on the ``"reflux"`` logger."""
        events = self.stats.events
        with self._events_lock:
            events[event.level] = events.get(event.level, 0) + 1
        logger.log(event.levelno, "%s '%s': %s", self.stats.kind, event.node, event.message,
                   extra={"reflux_node": event.node, "reflux_fields": event.fields})

    def open_user(self, obj: Any) -> None:
        """Call the ``open()`` hook of the user's object, if it has one.  (A
        runtime whose replicas share one object opens it once for all.)"""
        open_hook(obj)

    def close_user(self, obj: Any) -> None:
        """Call the ``close()`` hook of the user's object, if it has one.  (A
        runtime whose replicas share one object closes it once, after the last.)"""
        close_hook(obj)


class LocalContext(NodeContext):
    """A context for running a node's logic by hand (tests, notebooks): it keeps error
    records and events."""

    def __init__(self, stats: NodeStats) -> None:
        super().__init__(stats)
        self.errors: list[ErrorRecord] = []
        self.events: list[Event] = []
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop

    def keep_error(self, record: ErrorRecord) -> None:
        self.errors.append(record)

    def emit(self, event: Event) -> None:
        super().emit(event)
        self.events.append(event)


# The context of the node whose code runs in this thread now: set by the runtime
# (one thread-local word per worker), read by reflux.emit() and reflux.stopping().
_current = threading.local()
#: the same thread-local, for the runtime's per-batch path (``CURRENT.ctx = ctx``
#: saves a call a stage)
CURRENT = _current


def current_context() -> NodeContext | None:
    """The context of the node whose code this thread runs now, if any."""
    return getattr(_current, "ctx", None)


def set_current_context(ctx: NodeContext | None) -> None:
    """Mark ``ctx`` as the context of the code this thread runs next (the runtime calls it)."""
    _current.ctx = ctx


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


# --------------------------------------------------------------------------- calling user code

def direct_call(fn: Any) -> Callable[[Any], Any]:
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
    return fn  # type: ignore[no-any-return]  # a callable object (checked when the node was built)


def user_hook(obj: Any, name: str) -> Callable[[], Any] | None:
    """``obj.open``/``obj.close`` if it is a user hook (never a function's own attributes)."""
    if inspect.isroutine(obj) or isinstance(obj, type):
        return None
    h = getattr(obj, name, None)
    return h if callable(h) else None


# --------------------------------------------------------------------------- the logic base class

class NodeLogic:
    """Per-run processing of one node; see the module docs for the contract."""

    def __init__(self, node: Node, ctx: NodeContext) -> None:
        self.node = node
        self.ctx = ctx
        self.stats = ctx.stats
        self.policy = node.policy
        self.name = node.name
        #: raised when the run is abandoned; checked before each call of user code
        self.stop_flag = ctx.stop_flag
        #: items of the current batch not finished yet (dropped if the run is abandoned)
        self.remaining = 0

    def open(self) -> None:
        """Called once (per replica) before any item."""

    def close(self) -> None:
        """Called once (per replica) after the last item (also after a failure)."""

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

    # -- checkpoints

    #: ``True``: a checkpoint barrier need not wait for the items in flight (:attr:`remaining`)
    #: and fed back; :meth:`inflight_state` saves them with the checkpoint instead (a logic
    #: whose items are worked on elsewhere, e.g. in worker processes, would otherwise stall
    #: the pipeline until they are back)
    saves_inflight = False

    def inflight_state(self) -> Any:
        """The items in flight and fed back, as a checkpoint keeps them (picklable), or
        ``None`` when there are none (only when :attr:`saves_inflight`; the pipeline is
        held: nothing is processed meanwhile)."""
        return None

    def restore_inflight(self, state: Any) -> None:
        """Take back what :meth:`inflight_state` saved, to be processed before any new
        input (a run resuming from the checkpoint; the logic was just opened)."""
        raise NotImplementedError

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
            except BaseException as e:  # SystemExit and the like: not an item failure
                raise self.fatal(arg, e) from e
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
            logger.error("%s failed on item %s (%d attempt%s): %s: %s", self.node.label, safe_repr(item),
                         attempts, "" if attempts == 1 else "s", type(exc).__name__, safe_str(exc),
                         exc_info=(type(exc), exc, exc.__traceback__))
        else:  # dead_letter
            out.dead_letter(record)

    def fatal(self, item: Any, exc: BaseException, count: int = 1) -> NodeFailure:
        """User code raised a ``BaseException`` that is not an ``Exception``
        (``SystemExit``, ``KeyboardInterrupt``) on ``item``: the node fails
        whatever its policy.  Counts the item (``count`` items: a batch) as
        errors, out of :attr:`remaining`; returns the exception to raise."""
        self.stats.errors += count
        self.remaining = max(0, self.remaining - count)
        return NodeFailure(ErrorRecord.from_exception(self.name, item, exc))

    def call(self, fn: Callable[[Any], Any], item: Any, out: Outbox) -> tuple[bool, Any]:
        """``fn(item)`` under the policy: ``(True, value)``, or ``(False, None)`` once the
        failure was handled (skip, log, dead-letter; ``"raise"`` raises).  Raises
        :class:`Abort` instead of calling when the run is abandoned.  The caller
        counts ``item`` in :attr:`remaining` until this returns."""
        if self.stop_flag.is_set:
            raise Abort()
        try:
            value = fn(item)
        except Exception as exc:  # user code
            ok, value, attempts = self.retry(fn, item, exc)
        except BaseException as exc:  # SystemExit and the like: not an item failure
            raise self.fatal(item, exc) from exc
        else:
            if value.__class__ is not Error:
                return True, value
            ok, value, attempts = self.retry(fn, item, value.exception)
        if ok:
            return True, value
        try:
            self.fail(item, value, attempts, out)
        except NodeFailure:
            self.remaining -= self.weight(item)  # counted in errors now, not to be dropped too
            raise
        return False, None

    def weight(self, item: Any) -> int:
        """How many units of :attr:`remaining` (and of the counters) ``item`` is: 1."""
        return 1


class BatchedCalls(NodeLogic):
    """What a batch-level function's logic (``batched=True``) shares: retrying a failed
    call of a whole batch, then splitting it to find the failing items.

    The logic provides ``_call(items) -> (ok, value)`` (``value`` is the result, or the
    exception) and ``_deliver(items, value, out)`` (what a successful call's result
    becomes)."""

    _call: Callable[[list[Any]], tuple[bool, Any]]
    _deliver: Callable[[list[Any], Any, Outbox], None]

    def _call_with_retries(self, items: list[Any]) -> tuple[bool, Any, int]:
        ok, value = self._call(items)
        attempts = 1
        pol = self.policy
        while not ok and attempts <= pol.retries:
            self.ctx.sleep(pol.delay(attempts))
            self.stats.retried += len(items)
            attempts += 1
            ok, value = self._call(items)
        return ok, value, attempts

    def _split(self, items: list[Any], exc: BaseException, attempts: int, out: Outbox) -> None:
        """Find the failing items of a failed batch: halves, then single items."""
        if len(items) == 1:
            if attempts == 1 and self.policy.retries:
                ok, value, attempts = self._call_with_retries(items)
                if ok:
                    self._deliver(items, value, out)
                    return
                exc = value
            self.remaining -= 1
            self.fail(items[0], exc, attempts, out)
            return
        mid = len(items) // 2
        for part in (items[:mid], items[mid:]):
            if self.stop_flag.is_set:
                raise Abort()
            ok, value = self._call(part)
            if ok:
                self._deliver(part, value, out)
            else:
                self._split(part, value, 1, out)


def open_hook(fn: Any) -> None:
    """Call ``fn.open()`` if the user object has one."""
    h = user_hook(fn, "open")
    if h is not None:
        h()


def close_hook(fn: Any) -> None:
    """Call ``fn.close()`` if the user object has one."""
    h = user_hook(fn, "close")
    if h is not None:
        h()
