"""What a Loader does: call the sink per item or per batch and keep what it reports."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from reflux_core._batch import STOPPED, call_all

from ..describe.nodes import Loader
from ..signals import Error
from .base import Abort, NodeContext, NodeLogic, Outbox, close_hook, direct_call, open_hook

__all__ = ["LoaderLogic"]


class LoaderLogic(NodeLogic):
    """Calls the Loader's function per item or per batch and keeps what it returned."""

    node: Loader

    def __init__(self, node: Loader, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.fn = node.fn
        self.direct_fn = direct_call(node.fn)
        self.returned: list[Any] = []

    def open(self) -> None:
        open_hook(self.fn)

    def close(self) -> None:
        close_hook(self.fn)

    def process(self, batch: list[Any], out: Outbox) -> None:
        # Side effects happen in order: one C loop calls the sink on the items
        # until a call fails; that item is retried, then skipped, recorded or
        # fails the run, before the next item is called.  Once the run is
        # abandoned no further item is called.
        fn = self.direct_fn
        st = self.stats
        if type(batch) is not list:
            batch = list(batch)
        n = len(batch)
        self.remaining = n
        if self.node.batch:
            self._process_batch(fn, batch, out)
            return
        returned = self.returned
        values: list[Any] = []
        stop = self.stop_flag
        start = loaded = 0
        try:
            while True:
                j, outcome, _, not_none = call_all(fn, batch, start, values, Error, Error, stop)
                loaded += (n if j < 0 else j) - start  # the calls that succeeded this round
                if not_none:
                    returned.extend(v for v in values if v is not None)
                values.clear()
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
                ok, value, attempts = self.retry(fn, item, outcome)
                self.remaining = n - j - 1
                if ok:
                    loaded += 1
                    if value is not None:
                        returned.append(value)
                else:
                    self.fail(item, value, attempts, out)
                start = j + 1
            self.remaining = 0
        finally:
            st.emitted += loaded

    def _process_batch(self, fn: Callable[[Any], Any], batch: list[Any], out: Outbox) -> None:
        """``batch=True``: one call for the whole batch; a failing batch is retried
        as a whole, then each of its items goes through the policy."""
        n = len(batch)
        if self.stop_flag.is_set:
            raise Abort()
        try:
            value = fn(batch)
        except Exception as exc:  # user code
            value = Error(exc)
        except BaseException as exc:  # SystemExit and the like: not an item failure
            raise self.fatal(batch, exc, count=n) from exc
        if value.__class__ is Error:
            ok, value, attempts = self.retry(fn, batch, value.exception)
        else:
            ok, attempts = True, 1
        if ok:
            self.remaining = 0
            self.stats.emitted += n
            if value is not None:
                self.returned.append(value)
            return
        for item in batch:
            self.remaining -= 1
            self.fail(item, value, attempts, out)

    def result(self) -> Any:
        res = getattr(self.fn, "result", None)
        if callable(res) and not inspect.isroutine(self.fn):
            return res()
        return self.returned
