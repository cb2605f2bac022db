"""What a Transformer does: one output per input, or (flat) any number; feedback; failures."""
from __future__ import annotations

from collections import deque
from typing import Any, cast

from reflux_core._batch import STOPPED, call_all

from ..describe.nodes import Transformer
from ..signals import SIGNAL_TYPES, Error, NeedsMoreWork, Signal
from .base import Abort, BatchedCalls, NodeContext, NodeFailure, NodeLogic, Outbox, direct_call
from .chunks import as_chunk, chunk_lengths, split_like

__all__ = ["BatchedTransformerLogic", "FlatTransformerLogic", "TransformerLogic"]


class TransformerLogic(NodeLogic):
    """One output (or feedback, or failure) per input."""

    node: Transformer

    def __init__(self, node: Transformer, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.fn = node.fn
        #: what the batch loops call: fn, or its class's __call__ bound to it (see _direct_call)
        self.direct_fn = direct_call(node.fn)
        self.pending: deque[Any] = deque()

    def open(self) -> None:
        self.ctx.open_user(self.fn)

    def close(self) -> None:
        self.ctx.close_user(self.fn)

    def process(self, batch: list[Any], out: Outbox) -> None:
        # One C loop calls the function on the items in order and appends the
        # results.  It stops at a failed call, which is retried (then handled
        # by the policy) here, before the items behind it are called; and it
        # stops before any call once the run is abandoned.
        if type(batch) is not list:
            batch = list(batch)
        buf = out.ports[0]
        n = len(batch)
        before = len(buf)
        fn = self.direct_fn
        stop = self.stop_flag
        self.remaining = n
        start = specials = 0
        while True:
            j, outcome, found, _ = call_all(fn, batch, start, buf, Error, NeedsMoreWork, stop)
            specials += found
            if j < 0:
                break
            self.remaining = n - j  # the items from j on (those before j have results in buf)
            if outcome is STOPPED:
                raise Abort()
            item = batch[j]
            if outcome.__class__ is Error:
                outcome = outcome.exception
            elif not isinstance(outcome, Exception):  # SystemExit and the like: not an item failure
                raise self.fatal(item, outcome) from outcome
            ok, value, attempts = self.retry(fn, item, outcome)
            self.remaining = n - j - 1
            if ok:
                buf.append(value)
                if value.__class__ is NeedsMoreWork:
                    specials += 1
            else:
                self.fail(item, value, attempts, out)
            start = j + 1
        self.remaining = 0
        if specials:
            self._take_feedback(buf, before)

    def _take_feedback(self, buf: list[Any], start: int) -> None:
        """Move the ``NeedsMoreWork`` results of ``buf[start:]`` to the feedback queue."""
        results = buf[start:]
        del buf[start:]
        append = buf.append
        pending = self.pending
        for r in results:
            if r.__class__ is NeedsMoreWork:
                self.stats.fed_back += 1
                pending.append(r.item)
            else:
                append(r)

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
        stop = self.stop_flag
        self.remaining = len(batch)
        for item in batch:
            if stop.is_set:
                raise Abort()
            produced = 0
            try:
                for r in fn(item):
                    produced += 1
                    if stop.is_set:  # a long generator: stop between its outputs too
                        raise Abort()
                    if isinstance(r, Signal):
                        if r.__class__ is NeedsMoreWork:
                            self.stats.fed_back += 1
                            self.pending.append(r.item)
                        else:
                            self.fail(item, cast(Error, r).exception, 1, out)
                    else:
                        emit(r)
            except (Abort, NodeFailure):
                raise
            except BaseException as exc:  # user code
                if not isinstance(exc, Exception):  # SystemExit and the like: not an item failure
                    raise self.fatal(item, exc) from exc
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
                    if isinstance(r, Signal):
                        if r.__class__ is NeedsMoreWork:
                            self.stats.fed_back += 1
                            self.pending.append(r.item)
                        else:
                            self.fail(item, cast(Error, r).exception, 1, out)
                    else:
                        emit(r)
                continue
            self.remaining -= 1


class BatchedTransformerLogic(BatchedCalls, TransformerLogic):
    """``batched=True``: the function takes the whole batch as a list and returns one
    result per item (a list, a tuple, a NumPy array...).

    When the items are NumPy chunks of records (1-d arrays of one dtype), the
    function gets the batch's records as one array instead of a list (the chunk
    itself, or the chunks joined) and returns one result per record; the results
    go on cut back into one piece per chunk.

    A failing call (it raised, returned ``Error``, or returned the wrong number of
    results) is retried whole per the policy; if it still fails the batch is
    split in halves, each called once, down to single items (chunks), which get
    the node's retries and then its policy: so one bad item fails alone and the
    others' results go on, in order.  A list result may hold ``NeedsMoreWork(x)``
    (fed back) and ``Error(e)`` (that item fails) values.
    """

    def process(self, batch: list[Any], out: Outbox) -> None:
        if type(batch) is not list:
            batch = list(batch)
        self.remaining = len(batch)
        if self.stop_flag.is_set:
            raise Abort()
        ok, values, attempts = self._call_with_retries(batch)
        if ok:
            self._deliver(batch, values, out)
        else:
            self._split(batch, values, attempts, out)
        self.remaining = 0

    def _call(self, items: list[Any]) -> tuple[bool, Any]:
        """One call on ``items``: ``(True, results)`` or ``(False, exception)``.
        Items that are NumPy chunks of records go to the function as one chunk
        (see :func:`~reflux.logic.chunks.as_chunk`); its results come back split per chunk."""
        lengths = chunk_lengths(items)
        arg: Any = items if lengths is None else as_chunk(items)
        try:
            values = self.direct_fn(arg)
        except Exception as exc:  # user code
            return False, exc
        except BaseException as exc:  # SystemExit and the like: not an item failure
            raise self.fatal(items[0] if items else None, exc, count=len(items)) from exc
        if values.__class__ is Error:
            return False, values.exception
        try:
            n = len(values)
        except TypeError:
            return False, TypeError(f"{self.node.label}: a batched function must return one result per "
                                    f"{'item' if lengths is None else 'record'}, got {type(values).__name__}")
        want = len(items) if lengths is None else sum(lengths)
        if n != want:
            return False, ValueError(f"{self.node.label}: the batched function returned {n} results "
                                     f"for {want} {'items' if lengths is None else 'records'}")
        if lengths is not None:
            values = split_like(values, lengths)
        return True, values

    def _deliver(self, items: list[Any], values: Any, out: Outbox) -> None:
        buf = out.ports[0]
        if isinstance(values, (list, tuple)):
            if any(type(v) in SIGNAL_TYPES for v in values):
                for item, v in zip(items, values, strict=True):
                    if v.__class__ is NeedsMoreWork:
                        self.stats.fed_back += 1
                        self.pending.append(v.item)
                    elif v.__class__ is Error:
                        self.remaining -= 1
                        self.fail(item, v.exception, 1, out)
                        continue
                    else:
                        buf.append(v)
                    self.remaining -= 1
                return
        buf.extend(values)
        self.remaining -= len(items)

