"""Compiled plug-ins (Cython classes or C structs) in Transformer, Filter and Messenger: the checks.

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
from typing import Any

import numpy as np

import reflux_core.transform as _core

from ..errors import ValidationError

__all__ = [
    "ABI_VERSION",
    "CPluginHandle",
    "Plugin",
    "PluginABIError",
    "c_plugin",
    "check_plugin",
    "is_plugin",
    "record_dtypes",
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
                             f"attributes (wrap a C capsule with reflux.c_plugin): {exc}") from None
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


def record_dtypes(node: Any) -> tuple[np.dtype, np.dtype] | None:
    """``(in_dtype, out_dtype)`` of a node made with a plug-in, else ``None``.

    A runtime can connect two such nodes whose dtypes agree with a
    :class:`~reflux_core.channel.RecordChannel` and run each with
    :func:`reflux.logic.plugins.pump_for`: records then go from node to node without the GIL.
    """
    plugin = getattr(node, "plugin", None)
    if not isinstance(plugin, Plugin):
        return None
    return plugin.in_dtype, plugin.out_dtype
