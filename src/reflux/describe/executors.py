"""Where a node's function runs: checks of ``executor=``, ``workers=`` and ``start_method=``.

Only the description: the pipeline refuses a bad choice when the node is
built (naming the node), long before anything starts.  The process workers
themselves are in :mod:`reflux.run.process`.
"""
from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from ..errors import ValidationError

__all__ = ["EXECUTORS", "START_METHODS", "apply_default_executor", "check_executor", "check_picklable",
           "check_start_method"]

#: accepted values of ``executor``
EXECUTORS: tuple[str, ...] = ("thread", "process")
#: accepted values of ``start_method``
START_METHODS: tuple[str, ...] = ("spawn", "fork")


def check_start_method(owner: str, executor: str, start_method: str | None) -> str:
    """Check a Transformer's ``start_method`` (errors name ``owner``); returns it normalised."""
    if start_method is None:
        return "spawn"
    if start_method not in START_METHODS:
        raise ValidationError(f"{owner}: start_method must be one of "
                              f"{', '.join(map(repr, START_METHODS))}, got {start_method!r}")
    if executor != "process":
        raise ValidationError(f"{owner}: start_method= needs executor='process' (got executor={executor!r})")
    if start_method == "fork" and not hasattr(os, "fork"):
        raise ValidationError(f"{owner}: start_method='fork' is not available on {sys.platform}")
    return start_method


def check_executor(owner: str, executor: str | None, workers: int | None,
                   ordered: bool, fn: Any = None) -> tuple[str, int | None, bool]:
    """Check a Transformer's ``executor``/``workers``/``ordered`` (errors name ``owner``);
    with ``executor="process"``, also that ``fn`` can be pickled.

    Returns ``(executor, workers, ordered)`` normalised (``executor`` None is "thread").
    """
    if executor is None:
        executor = "thread"
    if executor not in EXECUTORS:
        raise ValidationError(
            f"{owner}: executor must be one of {', '.join(map(repr, EXECUTORS))}, got {executor!r}")
    if workers is not None:
        if executor != "process":
            raise ValidationError(f"{owner}: workers= needs executor='process' (got executor={executor!r})")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValidationError(f"{owner}: workers must be a positive integer, got {workers!r}")
    if not isinstance(ordered, bool):
        raise ValidationError(f"{owner}: ordered must be True or False, got {ordered!r}")
    if executor == "process" and fn is not None:
        check_picklable(owner, fn)
    return executor, workers, ordered


def apply_default_executor(nodes: Any, executor: str) -> None:
    """Give a pipeline's default ``executor`` to its Transformers that did not choose one
    (checking, for ``"process"``, that their function can be pickled)."""
    for node in nodes:
        if node.kind == "Transformer" and not node.executor_chosen:
            if executor == "process" and (node.plugin is not None or node.parallel != 1):
                continue  # compiled plug-ins and thread replicas keep their threads
            if executor == "process":
                check_picklable(node.label, node.fn)
                if node.ordered_given is None:
                    node.ordered = True  # the process executor's default
            node.executor = executor


def check_picklable(owner: str, fn: Any) -> bytes:
    """Pickle ``fn`` as it will be sent to the workers; a clear error naming ``owner`` if it cannot be."""
    try:
        return pickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise ValidationError(
            f"{owner}: executor='process' sends the function to worker processes, but it cannot be "
            f"pickled ({type(exc).__name__}: {exc}); use a module-level function or a picklable "
            f"callable object") from exc
