"""What a Transformer, Filter or Messenger made with a compiled plug-in does with a batch.

Each item is a chunk of records; the plug-in runs over it once with the GIL
released (see :mod:`reflux.describe.plugins` for what a plug-in is and how
it is checked).  :func:`pump_for` makes a nogil record pump of such a node,
which moves records between record channels without the GIL at all.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from reflux_core import transform as _core
from reflux_core.channel import RecordChannel
from reflux_core.transform import RecordError, RecordPump

from ..describe.plugins import Plugin
from ..errors import RoutingError, ValidationError
from .base import NodeContext, NodeLogic, Outbox, close_hook, open_hook

if TYPE_CHECKING:  # pragma: no cover
    from ..describe.nodes import Messenger

__all__ = ["PluginFilterLogic", "PluginMessengerLogic", "PluginTransformerLogic", "as_chunk", "pump_for"]


# --------------------------------------------------------------------------- chunks

def as_chunk(item: Any, dtype: np.dtype, owner: str) -> tuple[np.ndarray, bool]:
    """``item`` as a C-contiguous 1-d array of ``dtype``; the flag tells
    whether it was a single record (a 0-d array or a numpy record)."""
    arr = np.asarray(item)
    if arr.dtype != dtype:
        raise TypeError(f"{owner}: the plug-in takes records of dtype {dtype}, got an item of "
                        f"dtype {arr.dtype}")
    scalar = arr.ndim == 0
    if scalar:
        arr = arr.reshape(1)
    elif arr.ndim != 1:
        raise TypeError(f"{owner}: the plug-in takes 1-d chunks of records, got shape {arr.shape}")
    return np.ascontiguousarray(arr), scalar


def _failure(owner: str, plugin: Plugin, code: int, index: int, chunk: np.ndarray) -> RecordError:
    """The exception a chunk fails with when the plug-in reported ``code`` at ``index``."""
    record = chunk[index] if 0 <= index < len(chunk) else None
    return RecordError(f"{owner}: plug-in {plugin.name!r} failed on record {index} of a chunk of "
                       f"{len(chunk)} with error code {code}: {record!r:.120}",
                       code=code, index=index, record=record, node=owner)


class _PluginLogic(NodeLogic):
    """Shared by the plug-in logics: open/close hooks, and one chunk at a time under the policy."""

    plugin: Plugin
    #: counters count records, not chunks (the node's input is a record edge)
    records = False

    def __init__(self, node: Any, ctx: NodeContext, plugin: Plugin) -> None:
        super().__init__(node, ctx)
        self.plugin = plugin
        self.owner = node.label

    def size(self, item: Any) -> int:
        """What ``item`` counts for: 1 (a chunk), or its records on a record input."""
        if not self.records:
            return 1
        return len(item) if isinstance(item, np.ndarray) and item.ndim == 1 else 1

    def weight(self, item: Any) -> int:
        return self.size(item)

    def fail(self, item: Any, exc: BaseException, attempts: int, out: Outbox) -> None:
        # on a record input every record of the failing chunk counts as an error
        self.stats.errors += self.size(item) - 1
        super().fail(item, exc, attempts, out)

    def open(self) -> None:
        open_hook(self.plugin.owner)

    def close(self) -> None:
        close_hook(self.plugin.owner)


class PluginTransformerLogic(_PluginLogic):
    """A Transformer whose function is a transform plug-in: one output chunk per input chunk."""

    def apply(self, item: Any) -> Any:
        """The output chunk for one input chunk (empty if every record was dropped)."""
        p = self.plugin
        chunk, scalar = as_chunk(item, p.in_dtype, self.owner)
        out = np.empty(len(chunk), dtype=p.out_dtype)
        n_out, code, index = _core.run_transform(p.capsule, chunk, out)
        if code:
            raise _failure(self.owner, p, code, index, chunk)
        if scalar:
            return out[0] if n_out else out[:0]
        return out if n_out == len(out) else out[:n_out]

    def process(self, batch: list[Any], out: Outbox) -> None:
        append = out.ports[0].append
        apply = self.apply
        if self.records:
            self._process_records(batch, out)
            return
        self.remaining = len(batch)
        for item in batch:
            ok, value = self.call(apply, item, out)
            self.remaining -= 1
            if not ok:
                continue
            if isinstance(value, np.ndarray) and value.ndim == 1 and len(value) == 0:
                self.stats.filtered += 1
            else:
                append(value)

    def _process_records(self, batch: list[np.ndarray], out: Outbox) -> None:
        """On a record input: the items are arrays popped from it, counted in records."""
        append = out.ports[0].append
        self.remaining = sum(len(a) for a in batch)
        for arr in batch:
            ok, value = self.call(self.apply, arr, out)
            self.remaining -= len(arr)
            if not ok:
                continue
            self.stats.filtered += len(arr) - len(value)
            if len(value):
                append(value)


class PluginFilterLogic(_PluginLogic):
    """A Filter whose predicate is a filter plug-in: the kept records of each chunk."""

    def apply(self, item: Any) -> Any:
        """The kept part of one chunk (``item`` itself when all of it is kept)."""
        p = self.plugin
        chunk, scalar = as_chunk(item, p.in_dtype, self.owner)
        keep = np.empty(len(chunk), dtype=np.uint8)
        n_kept, code, index = _core.run_filter(p.capsule, chunk, keep)
        if code:
            raise _failure(self.owner, p, code, index, chunk)
        if n_kept == len(chunk):
            return item
        if scalar or n_kept == 0:
            return None
        return chunk[keep.view(np.bool_)]

    def process(self, batch: list[Any], out: Outbox) -> None:
        append = out.ports[0].append
        apply = self.apply
        rejected = 0
        size = self.size
        self.remaining = sum(size(item) for item in batch)
        try:
            for item in batch:
                ok, value = self.call(apply, item, out)
                n = size(item)
                self.remaining -= n
                if not ok:
                    continue
                if value is None:
                    rejected += n
                else:
                    rejected += n - size(value)
                    append(value)
        finally:
            self.stats.filtered += rejected


class PluginMessengerLogic(_PluginLogic):
    """A Messenger whose key is a key plug-in: each chunk split by key, in record order."""

    def __init__(self, node: Messenger, ctx: NodeContext, plugin: Plugin, ports: dict[Any, int],
                 default: int | None) -> None:
        super().__init__(node, ctx, plugin)
        self.ports = ports
        self.default = default

    def apply(self, item: Any) -> Any:
        """``[(key, part), ...]`` for one chunk: the records of each key, in order."""
        p = self.plugin
        chunk, scalar = as_chunk(item, p.in_dtype, self.owner)
        keys = np.empty(len(chunk), dtype=np.int64)
        _, code, index = _core.run_key(p.capsule, chunk, keys)
        if code:
            raise _failure(self.owner, p, code, index, chunk)
        if scalar or len(chunk) == 0:
            return [(int(keys[0]) if len(chunk) else None, item)]
        first = keys[0]
        if (keys == first).all():
            return [(int(first), item)]
        uniq, inverse = np.unique(keys, return_inverse=True)
        return [(int(k), chunk[inverse == j]) for j, k in enumerate(uniq)]

    def process(self, batch: list[Any], out: Outbox) -> None:
        bufs = out.ports
        ports = self.ports
        default = self.default
        apply = self.apply
        self.remaining = len(batch)
        for item in batch:
            ok, parts = self.call(apply, item, out)
            self.remaining -= 1
            if not ok:
                continue
            for k, part in parts:
                port = ports.get(k, default)
                if port is None:
                    self.fail(part, RoutingError(f"{self.owner}: no route for key {k!r:.60} "
                                                 f"and no default route"), 1, out)
                    continue
                bufs[port].append(part)


def pump_for(node: Any, src: RecordChannel, outputs: list[RecordChannel], *, batch_size: int = 256,
             slice: float = 0.05, close_outputs: bool = True, ports: Mapping[Any, int] | None = None,
             default_port: int | None = None) -> RecordPump:
    """A nogil :class:`~reflux_core.transform.RecordPump` running ``node``'s plug-in
    from ``src`` into its output channels (one per output port, in port order).

    A Transformer or Filter has one output.  A Messenger needs its table of
    key -> output port (``ports``, and ``default_port``: what a compiled
    plan's task holds, see :meth:`reflux.describe.plan.Plan.task`), which
    must map the keys ``0..k`` (every one of them, or through the default):
    the pump sends a record with key ``i`` to the channel of that port, and
    any other key to the default port (without one, it fails with
    ``ERR_ROUTE``).  With ``close_outputs`` the pump closes its outputs at
    the end of its input (each once, also a port several keys share).
    """
    owner = getattr(node, "label", repr(node))
    plugin = getattr(node, "plugin", None)
    if not isinstance(plugin, Plugin):
        raise ValidationError(f"{owner}: not made with a compiled plug-in, it cannot run as a record pump")
    if plugin.kind != "key":
        if len(outputs) != 1:
            raise ValidationError(f"{owner}: a record pump for a {plugin.kind} has one output, got {len(outputs)}")
        dst: Any = outputs[0]
    else:
        if ports is None:
            raise ValidationError(f"{owner}: a record pump for a Messenger needs ports= (key -> output port)")
        default = default_port
        int_keys = [k for k in ports if isinstance(k, int) and not isinstance(k, bool) and k >= 0]
        if not int_keys:
            raise ValidationError(f"{owner}: a record pump needs routes for the int keys 0..k")
        table = []
        for k in range(max(int_keys) + 1):
            port = ports.get(k, default)
            if port is None:
                raise ValidationError(f"{owner}: key {k} has no route and there is no default route, "
                                      "so it cannot run as a record pump")
            table.append(outputs[port])
        return RecordPump(src, plugin.owner, table, batch_size=batch_size, slice=slice,
                          close_outputs=close_outputs, default=None if default is None else outputs[default])
    return RecordPump(src, plugin.owner, dst, batch_size=batch_size, slice=slice, close_outputs=close_outputs)
