"""What a Filter does: keep the items whose predicate is true, count the rest as filtered."""
from __future__ import annotations

from typing import Any

from reflux_core._batch import STOPPED, keep_all

from ..describe.nodes import Filter
from ..signals import Error
from .base import Abort, NodeContext, NodeLogic, Outbox, close_hook, direct_call, open_hook

__all__ = ["FilterLogic"]


class FilterLogic(NodeLogic):
    """Keeps the items whose predicate is true; counts the rest as filtered."""

    node: Filter

    def __init__(self, node: Filter, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.direct_fn = direct_call(node.predicate)

    def open(self) -> None:
        open_hook(self.node.predicate)

    def close(self) -> None:
        close_hook(self.node.predicate)

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
