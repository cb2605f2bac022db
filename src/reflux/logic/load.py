"""What a Loader does: call the sink per item or per batch and keep what it reports."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..describe.nodes import Loader
from ..signals import Error
from .base import NodeContext, NodeLogic, Outbox, call_all, close_hook, direct_call, open_hook

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
        _, not_none = call_all(fn, batch, values, Error, Error, True)
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
