"""What a Transformer does: one output per input, or (flat) any number; feedback; failures."""
from __future__ import annotations

from collections import deque
from typing import Any, cast

from ..describe.nodes import Transformer
from ..signals import SIGNAL_TYPES, Error, NeedsMoreWork, Signal
from .base import Abort, NodeContext, NodeFailure, NodeLogic, Outbox, call_all, direct_call

__all__ = ["FlatTransformerLogic", "TransformerLogic"]


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
        # Fast path: every call in one C-level loop, then one check for
        # special values (failures are rare).  Items that failed or fed back
        # are then handled one by one, in order; a retry of such an item
        # happens after the first call of the items behind it in the batch.
        buf = out.ports[0]
        n = len(batch)
        self.remaining = n
        before = len(buf)
        specials, _ = call_all(self.direct_fn, batch, buf)
        if specials:
            results = buf[before:]
            del buf[before:]
            append = buf.append
            for j in range(n):
                r = results[j]
                if type(r) in SIGNAL_TYPES:
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
