"""What a Filter does: keep the items whose predicate is true, count the rest as filtered."""
from __future__ import annotations

import itertools
from typing import Any

from reflux_core._batch import STOPPED, keep_all

from ..describe.nodes import Filter
from ..signals import Error
from .base import Abort, BatchedCalls, NodeContext, NodeLogic, Outbox, direct_call
from .chunks import as_chunk, chunk_lengths, split_like

__all__ = ["BatchedFilterLogic", "FilterLogic"]


class FilterLogic(NodeLogic):
    """Keeps the items whose predicate is true; counts the rest as filtered."""

    node: Filter

    def __init__(self, node: Filter, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.direct_fn = direct_call(node.predicate)

    def open(self) -> None:
        self.ctx.open_user(self.node.predicate)

    def close(self) -> None:
        self.ctx.close_user(self.node.predicate)

    def process(self, batch: list[Any], out: Outbox) -> None:
        # One C loop appends the kept items straight to the output; it stops
        # at a failed call (or a result whose truth test raised), which is
        # retried (or failed) here, in order, before the loop goes on with the
        # items behind it; and it stops before any call once the run is abandoned.
        pred = self.direct_fn
        buf = out.ports[0]
        stop = self.stop_flag
        if type(batch) is not list:
            batch = list(batch)
        n = len(batch)
        self.remaining = n
        rejected = 0
        start = 0
        try:
            while True:
                before = len(buf)
                j, outcome = keep_all(pred, batch, start, buf, Error, stop)
                # the calls that succeeded this round, less the items kept
                rejected += (n if j < 0 else j) - start - (len(buf) - before)
                if j < 0:
                    break
                self.remaining = n - j
                if outcome is STOPPED:
                    raise Abort()
                item = batch[j]
                if outcome.__class__ is Error:
                    outcome = outcome.exception
                elif not isinstance(outcome, Exception):  # SystemExit and the like: not an item failure
                    raise self.fatal(item, outcome) from outcome
                ok, value, attempts = self.retry(pred, item, outcome)
                if ok:
                    try:
                        keep = bool(value)
                    except Exception as exc:  # the truth test of the user's result
                        ok, value = False, exc
                self.remaining = n - j - 1
                start = j + 1
                if not ok:
                    self.fail(item, value, attempts, out)
                elif keep:
                    buf.append(item)
                else:
                    rejected += 1
        finally:
            self.stats.filtered += rejected
        self.remaining = 0


class BatchedFilterLogic(BatchedCalls, FilterLogic):
    """``batched=True``: the predicate takes the whole batch as a list and returns one
    truth value per item (a mask: a list of bools, a NumPy bool array...).

    When the items are NumPy chunks of records, the predicate gets their records
    as one array and returns one truth value per record: each chunk goes on
    with the records it keeps (a chunk left empty counts as filtered).

    A failing call is retried whole per the policy, then the batch is split in
    halves down to single items, as for a batched Transformer (see
    :class:`~reflux.logic.transform.BatchedTransformerLogic`).
    """

    def process(self, batch: list[Any], out: Outbox) -> None:
        if type(batch) is not list:
            batch = list(batch)
        self.remaining = len(batch)
        if self.stop_flag.is_set:
            raise Abort()
        ok, mask, attempts = self._call_with_retries(batch)
        if ok:
            self._deliver(batch, mask, out)
        else:
            self._split(batch, mask, attempts, out)
        self.remaining = 0

    def _call(self, items: list[Any]) -> tuple[bool, Any]:
        lengths = chunk_lengths(items)
        if lengths is not None:
            return self._call_chunks(items, lengths)
        try:
            mask = self.direct_fn(items)
        except Exception as exc:  # user code
            return False, exc
        except BaseException as exc:  # SystemExit and the like: not an item failure
            raise self.fatal(items[0] if items else None, exc, count=len(items)) from exc
        if mask.__class__ is Error:
            return False, mask.exception
        try:
            n = len(mask)
        except TypeError:
            return False, TypeError(f"{self.node.label}: a batched predicate must return one truth value "
                                    f"per item, got {type(mask).__name__}")
        if n != len(items):
            return False, ValueError(f"{self.node.label}: the batched predicate returned {n} truth values "
                                     f"for {len(items)} items")
        return True, mask

    def _call_chunks(self, chunks: list[Any], lengths: list[int]) -> tuple[bool, Any]:
        """NumPy chunks of records: one call on their records as one array, one truth
        value per record; each chunk goes on with the records its part of the mask keeps."""
        import numpy as np  # the items are NumPy arrays: NumPy is loaded

        records = as_chunk(chunks)
        try:
            mask = self.direct_fn(records)
        except Exception as exc:  # user code
            return False, exc
        except BaseException as exc:  # SystemExit and the like: not an item failure
            raise self.fatal(chunks[0], exc, count=len(chunks)) from exc
        if mask.__class__ is Error:
            return False, mask.exception
        try:
            keep = np.asarray(mask, dtype=bool)
        except Exception as exc:  # noqa: BLE001 - the user's mask is not one of truth values
            return False, TypeError(f"{self.node.label}: a batched predicate must return one truth value "
                                    f"per record, got {type(mask).__name__}: {exc}")
        if keep.ndim != 1 or len(keep) != len(records):
            return False, ValueError(f"{self.node.label}: the batched predicate returned {keep.size} truth "
                                     f"values for {len(records)} records")
        return True, _KeptChunks([c[m] for c, m in zip(chunks, split_like(keep, lengths), strict=True)])

    def _deliver(self, items: list[Any], mask: Any, out: Outbox) -> None:
        buf = out.ports[0]
        before = len(buf)
        if mask.__class__ is _KeptChunks:  # chunks of records: those left with no record end here
            buf.extend(c for c in mask.chunks if len(c))
            self.stats.filtered += len(items) - (len(buf) - before)
            self.remaining -= len(items)
            return
        try:
            buf.extend(itertools.compress(items, mask))  # the mask's truth tests, in C
        except Exception as exc:  # a truth test of the user's mask failed
            del buf[before:]
            if len(items) == 1:
                self.remaining -= 1
                self.fail(items[0], exc, 1, out)
                return
            self._split(items, exc, 1, out)
            return
        self.stats.filtered += len(items) - (len(buf) - before)
        self.remaining -= len(items)


class _KeptChunks:
    """What a batched predicate kept of a batch of chunks: one array per chunk."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
