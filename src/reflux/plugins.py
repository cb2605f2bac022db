"""Compiled plug-ins (Cython classes or C structs) in Transformer, Filter and Messenger.

A *plug-in* is any object with a ``__reflux_plugin__`` attribute holding a
PyCapsule named ``"reflux_core.plugin"`` (see ``reflux_core/abi.h``), and
``in_dtype`` / ``out_dtype`` numpy dtypes: an instance of a subclass of
:class:`reflux_core.transform.CTransform`, :class:`~reflux_core.transform.CFilter`
or :class:`~reflux_core.transform.CKey`, or a C plug-in wrapped with
:func:`c_plugin`.  Nodes accept one wherever they accept a Python function::

    Transformer(MyCTransform(...))     # instead of fn
    Filter(MyCFilter(...))             # instead of predicate
    Messenger(MyCKey(...), routes=...) # instead of key

How records travel: an item is a *chunk*, a 1-d numpy array of the plug-in's
``in_dtype`` (a single numpy record works too).  The plug-in runs once per
chunk with the GIL released, so replicas of a node run on several cores.

* Transformer: the output chunk (records the plug-in dropped are left out);
  a chunk whose records were all dropped counts as ``filtered``.
* Filter: the chunk of kept records; a chunk with none left counts as
  ``filtered`` (an empty chunk is never sent).
* Messenger: the chunk is split by key, keeping record order; each part
  goes to the route of its key (an int, looked up in ``routes`` like any
  key).  Counters count chunks, so this Messenger has no fixed
  in-to-out law.

A record the plug-in fails on fails its whole chunk: the node's error policy
(retries, skip, dead-letter, raise) sees the chunk as the item and a
:class:`~reflux_core.transform.RecordError` carrying the code, the index and
the record.  Counters (received, emitted, ...) count chunks.

The version and size of the plug-in's struct are checked when the node is
made; a plug-in built against another ABI is refused with
:class:`PluginABIError`, naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reflux_core import transform as _core
from reflux_core.channel import RecordChannel
from reflux_core.transform import RecordError, RecordPump

from .errors import RoutingError, ValidationError
from .nodes import NodeLogic, Outbox, _close_hook, _open_hook

if TYPE_CHECKING:  # pragma: no cover
    from .nodes import Filter, Messenger, NodeContext, Transformer

__all__ = [
    "Plugin",
    "PluginABIError",
    "RecordError",
    "CPluginHandle",
    "c_plugin",
    "is_plugin",
    "check_plugin",
    "record_dtypes",
    "pump_for",
    "ABI_VERSION",
]

#: the ABI version this reflux_core speaks (== reflux_core.ABI_VERSION)
ABI_VERSION: int = _core.ABI_VERSION

_KINDS = {_core.KIND_TRANSFORM: "transform", _core.KIND_FILTER: "filter", _core.KIND_KEY: "key"}
_BASES = {"transform": "CTransform", "filter": "CFilter", "key": "CKey"}


class PluginABIError(ValidationError, TypeError):
    """A plug-in does not match this reflux_core: wrong ABI version or struct
    size, wrong kind, or record sizes that disagree with its dtypes."""


@dataclass(frozen=True)
class Plugin:
    """A plug-in checked for one node: what the node's logic needs to run it."""

    #: the user's object (kept alive: the capsule points into it)
    owner: Any
    #: the ``reflux_core.plugin`` capsule
    capsule: Any
    #: ``"transform"``, ``"filter"`` or ``"key"``
    kind: str
    in_dtype: np.dtype
    out_dtype: np.dtype
    name: str


class CPluginHandle:
    """A C plug-in's capsule with the dtypes reflux needs (see :func:`c_plugin`)."""

    def __init__(self, capsule: Any, in_dtype: Any, out_dtype: Any = None, *, name: str | None = None,
                 keepalive: Any = None) -> None:
        self.__reflux_plugin__ = capsule
        self.in_dtype = np.dtype(in_dtype)
        self.out_dtype = self.in_dtype if out_dtype is None else np.dtype(out_dtype)
        self.reflux_name = name or "c_plugin"
        #: whatever owns the struct the capsule points at (e.g. the C extension module)
        self.keepalive = keepalive

    def __repr__(self) -> str:
        return f"<CPluginHandle {self.reflux_name!r} in={self.in_dtype} out={self.out_dtype}>"


def c_plugin(capsule: Any, in_dtype: Any, out_dtype: Any = None, *, name: str | None = None,
             keepalive: Any = None) -> CPluginHandle:
    """Wrap a ``reflux_core.plugin`` capsule made by C or C++ code so a node accepts it.

    ``in_dtype``/``out_dtype`` describe the records (their itemsizes must
    match the struct's); ``keepalive`` is kept referenced as long as the
    plug-in is (e.g. the module whose static struct the capsule points at).
    """
    return CPluginHandle(capsule, in_dtype, out_dtype, name=name, keepalive=keepalive)


def is_plugin(obj: Any) -> bool:
    """Whether ``obj`` offers a compiled plug-in (a ``__reflux_plugin__`` attribute)."""
    if isinstance(obj, type):
        return False
    try:
        return getattr(obj, "__reflux_plugin__", None) is not None
    except Exception:  # a property that fails (e.g. not initialised) still marks a plug-in
        return True


def check_plugin(obj: Any, owner: str, expect: str) -> Plugin:
    """Check ``obj`` as a ``expect`` plug-in (``"transform"``, ``"filter"`` or
    ``"key"``) for the node labelled ``owner``; return its :class:`Plugin`.

    Raises :class:`PluginABIError` naming the node when the ABI version or
    struct size differs from this reflux_core's, the kind is wrong, or the
    dtypes disagree with the struct.
    """
    try:
        capsule = obj.__reflux_plugin__
    except Exception as exc:
        raise PluginABIError(f"{owner}: plug-in {obj!r:.80} cannot give its capsule: {exc}") from exc
    try:
        version, size = _core.plugin_header(capsule)
    except TypeError:
        raise PluginABIError(
            f"{owner}: __reflux_plugin__ of {obj!r:.80} must be a PyCapsule named "
            f"{_core.CAPSULE_NAME!r}, got {capsule!r:.80}") from None
    if version != _core.ABI_VERSION or size != _core.STRUCT_SIZE:
        raise PluginABIError(
            f"{owner}: plug-in {obj!r:.80} was built for reflux ABI version {version} "
            f"(plug-in struct of {size} bytes), but this reflux_core has ABI version "
            f"{_core.ABI_VERSION} ({_core.STRUCT_SIZE} bytes): rebuild it against the "
            f"installed reflux_core")
    info = _core.plugin_info(capsule)
    kind = _KINDS.get(info["kind"])
    if kind is None or not info["has_function"]:
        raise PluginABIError(f"{owner}: plug-in {obj!r:.80} has an unknown kind {info['kind']} "
                             "or no function pointer")
    if kind != expect:
        raise PluginABIError(f"{owner}: needs a {expect} plug-in ({_BASES[expect]}), "
                             f"got a {kind} plug-in ({_BASES[kind]}) {obj!r:.80}")
    try:
        in_dtype = np.dtype(obj.in_dtype)
        out_dtype = np.dtype(getattr(obj, "out_dtype", None) or in_dtype)
    except (AttributeError, TypeError) as exc:
        raise PluginABIError(f"{owner}: plug-in {obj!r:.80} needs numpy in_dtype/out_dtype "
                             f"attributes (wrap a C capsule with reflux.plugins.c_plugin): {exc}") from None
    out_size = info["out_itemsize"] if kind == "transform" else info["in_itemsize"]
    if in_dtype.itemsize != info["in_itemsize"] or out_dtype.itemsize != out_size:
        raise PluginABIError(
            f"{owner}: plug-in {obj!r:.80} takes {info['in_itemsize']}-byte records and makes "
            f"{out_size}-byte ones, but its dtypes are {in_dtype} ({in_dtype.itemsize} bytes) "
            f"and {out_dtype} ({out_dtype.itemsize} bytes)")
    if kind != "transform" and out_dtype != in_dtype:
        raise PluginABIError(f"{owner}: a {kind} plug-in passes records through, so its "
                             f"out_dtype must equal its in_dtype")
    name = getattr(obj, "reflux_name", None) or info["name"] or type(obj).__name__
    return Plugin(obj, capsule, kind, in_dtype, out_dtype, str(name))


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

    def fail(self, item: Any, exc: BaseException, attempts: int, out: Outbox) -> None:
        # on a record input every record of the failing chunk counts as an error
        self.stats.errors += self.size(item) - 1
        super().fail(item, exc, attempts, out)

    def open(self) -> None:
        _open_hook(self.plugin.owner)

    def close(self) -> None:
        _close_hook(self.plugin.owner)


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


def transformer_logic(node: Transformer, ctx: NodeContext) -> PluginTransformerLogic:
    """The logic of a Transformer made with a plug-in."""
    return PluginTransformerLogic(node, ctx, node.plugin)


def filter_logic(node: Filter, ctx: NodeContext) -> PluginFilterLogic:
    """The logic of a Filter made with a plug-in."""
    return PluginFilterLogic(node, ctx, node.plugin)


def messenger_logic(node: Messenger, ctx: NodeContext, ports: dict[Any, int],
                    default: int | None) -> PluginMessengerLogic:
    """The logic of a Messenger made with a key plug-in."""
    return PluginMessengerLogic(node, ctx, node.plugin, ports, default)


# --------------------------------------------------------------------------- record edges (for the runtime)

def record_dtypes(node: Any) -> tuple[np.dtype, np.dtype] | None:
    """``(in_dtype, out_dtype)`` of a node made with a plug-in, else ``None``.

    A runtime can connect two such nodes whose dtypes agree with a
    :class:`~reflux_core.channel.RecordChannel` and run each with
    :func:`pump_for`: records then go from node to node without the GIL.
    """
    plugin = getattr(node, "plugin", None)
    if not isinstance(plugin, Plugin):
        return None
    return plugin.in_dtype, plugin.out_dtype


def pump_for(node: Any, src: RecordChannel, outputs: list[RecordChannel], *, batch_size: int = 256,
             slice: float = 0.05, close_outputs: bool = True) -> RecordPump:
    """A nogil :class:`~reflux_core.transform.RecordPump` running ``node``'s plug-in
    from ``src`` into its output channels (one per output port, in port order).

    A Transformer or Filter has one output.  A Messenger's routes must map
    the keys ``0..k`` (every one of them, or through ``default``) to ports:
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
        ports: dict[Any, int] = getattr(node, "_ports", {})
        default = getattr(node, "_default_port", None)
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
