"""Replicas of a node (``parallel=N``): the callable each replica runs, and the
hooks of an object the replicas share.

Replicas run at the same time on different worker threads, and with the GIL
gone (free-threaded CPython) truly in parallel, so a callable object that
keeps state is not shared by them: each replica runs its own copy, made with
:func:`copy.deepcopy` when the run starts, and that copy's ``open()`` and
``close()`` run once, around the replica's work.  The object given to the
node is the template and is never called.

Shared as they are: functions and lambdas (their closures and globals),
bound methods (their instance), builtins, compiled plug-ins, and objects
whose ``__deepcopy__`` returns the object itself (the way to share one
thread-safe object on purpose).  A shared object's ``open()`` runs once
before the first replica's first batch, its ``close()`` once after the last
replica ended.
"""
from __future__ import annotations

import copy
import inspect
import threading
import types
from typing import Any

from ..describe.base import Node
from ..errors import ValidationError
from ..logic.base import NodeContext, close_hook, open_hook
from ..result import NodeStats
from .base import RunContext, RuntimeBase

__all__ = ["ReplicaContext", "SharedObject", "keeps_state", "replica_nodes", "user_callable"]

#: the attribute holding the user's callable, by the kinds of node that have replicas
_CALLABLE_ATTR = {"Transformer": "fn", "Filter": "predicate"}


def user_callable(node: Node) -> Any:
    """The user's callable of a node that can have replicas (its function, predicate or plug-in owner)."""
    plugin = getattr(node, "plugin", None)
    if plugin is not None:
        return plugin.owner
    return getattr(node, _CALLABLE_ATTR.get(node.kind, "fn"), None)


def keeps_state(obj: Any) -> bool:
    """``obj`` is an instance of a Python class with a ``__call__`` method: an
    object that may keep state between calls (and have ``open``/``close``)."""
    if inspect.isroutine(obj) or isinstance(obj, type):
        return False
    for klass in type(obj).__mro__:
        if "__call__" in klass.__dict__:
            return type(klass.__dict__["__call__"]) is types.FunctionType
    return False


def replica_nodes(node: Node, n: int) -> tuple[list[Node], bool]:
    """The node each of ``n`` replicas runs, and whether the replicas share the
    user's object (see the module docs).

    A node whose callable keeps state gets ``n`` shallow copies of itself, each
    holding its own deep copy of the object.  Raises :class:`ValidationError`,
    naming the node, when the object cannot be copied."""
    attr = _CALLABLE_ATTR.get(node.kind)
    obj = getattr(node, attr, None) if attr is not None else None
    if attr is None or getattr(node, "plugin", None) is not None or not keeps_state(obj):
        return [node] * n, True
    nodes: list[Node] = []
    for _ in range(n):
        try:
            own = copy.deepcopy(obj)
        except Exception as exc:  # whatever the object's copy raises
            raise ValidationError(
                f"{node.label}: parallel={n} runs each replica on its own copy of the "
                f"{type(obj).__name__} object (made with copy.deepcopy), and it cannot be copied "
                f"({type(exc).__name__}: {exc}). Create such attributes in open(), which runs once "
                "per replica, or give the class a __deepcopy__ that returns the object itself to "
                "share one object between the replicas (it must then be thread-safe)") from exc
        if own is obj:
            return [node] * n, True  # __deepcopy__ says: share me
        clone = copy.copy(node)
        setattr(clone, attr, own)
        nodes.append(clone)
    return nodes, False


class SharedObject:
    """The user object the replicas of a node share: ``open()`` once, before any
    replica uses it; ``close()`` once, after the last replica ended."""

    def __init__(self, obj: Any, replicas: int) -> None:
        self.obj = obj
        # protects `opened` and `left`; a replica that opens while another runs
        # the object's open() waits here until it has returned
        self._lock = threading.Lock()
        self.opened = False
        self.left = replicas

    def open(self) -> None:
        with self._lock:
            if not self.opened:
                open_hook(self.obj)
                self.opened = True

    def replica_ended(self) -> bool:
        """A replica ended (opened or not); True for the last one when the
        object was opened: the caller then closes it (:func:`close_hook`)."""
        with self._lock:
            self.left -= 1
            return self.left == 0 and self.opened

    def close(self) -> None:
        close_hook(self.obj)


class ReplicaContext(RunContext):
    """The context of one replica of a node whose replicas share the user's object."""

    def __init__(self, rt: RuntimeBase, stats: NodeStats, shared: SharedObject) -> None:
        super().__init__(rt, stats)
        self.shared = shared

    def open_user(self, obj: Any) -> None:
        if obj is self.shared.obj:
            self.shared.open()
        else:
            NodeContext.open_user(self, obj)

    def close_user(self, obj: Any) -> None:
        if obj is not self.shared.obj:  # the shared one: after the last replica (SharedObject)
            NodeContext.close_user(self, obj)
