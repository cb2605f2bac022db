"""Where a node's function runs: checks of ``executor=``, ``workers=``, ``start_method=``,
``ray_options=`` and a pipeline's ``ray_init=``.

Only the description: the pipeline refuses a bad choice when the node is
built (naming the node), long before anything starts.  The process workers
themselves are in :mod:`reflux.run.process`, the Ray actors in
:mod:`reflux.run.ray`.  Nothing here imports Ray: whether it is installed is
asked of the import system only.
"""
from __future__ import annotations

import importlib.util
import numbers
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError

__all__ = ["EXECUTORS", "RAY_EXTRA", "RAY_OPTIONS", "START_METHODS", "apply_default_executor", "check_executor",
           "check_picklable", "check_ray_init", "check_ray_options", "check_start_method", "ray_installed"]

#: accepted values of ``executor``
EXECUTORS: tuple[str, ...] = ("thread", "process", "ray")
#: what to install for ``executor="ray"``
RAY_EXTRA = 'pip install "pyreflux[ray]"'
#: the keys ``ray_options=`` accepts: options of Ray's ``ActorClass.options()`` that make
#: sense for a node's actors (a name, a namespace or a detached lifetime would let actors
#: outlive the run or clash between them; the concurrency of an actor is reflux's to set)
RAY_OPTIONS: tuple[str, ...] = (
    "num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "runtime_env", "max_restarts",
    "max_task_retries", "scheduling_strategy", "label_selector", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks",
)
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
                   ordered: bool, fn: Any = None, allowed: tuple[str, ...] = EXECUTORS) -> tuple[str, int | None, bool]:
    """Check a node's ``executor``/``workers``/``ordered`` (errors name ``owner``);
    with ``executor="process"``, also that ``fn`` can be pickled; with
    ``executor="ray"``, that Ray is installed.  ``allowed``: the executors the
    node kind offers.

    Returns ``(executor, workers, ordered)`` normalised (``executor`` None is "thread").
    """
    if executor is None:
        executor = "thread"
    if executor not in allowed:
        raise ValidationError(
            f"{owner}: executor must be one of {', '.join(map(repr, allowed))}, got {executor!r}")
    if workers is not None:
        if executor not in ("process", "ray"):
            raise ValidationError(f"{owner}: workers= needs executor='process' or 'ray' "
                                  f"(got executor={executor!r})")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValidationError(f"{owner}: workers must be a positive integer, got {workers!r}")
    if not isinstance(ordered, bool):
        raise ValidationError(f"{owner}: ordered must be True or False, got {ordered!r}")
    if executor == "process" and fn is not None:
        check_picklable(owner, fn)
    if executor == "ray" and not ray_installed():
        raise ValidationError(f"{owner}: executor='ray' needs Ray, which is not installed; "
                              f"install it with: {RAY_EXTRA}")
    return executor, workers, ordered


def ray_installed() -> bool:
    """Whether Ray can be imported (asked of the import system; Ray itself is not imported)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def _number(owner: str, key: str, value: Any, *, integer: bool = False, low: float = 0) -> None:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
          and float(value) >= low and value != float("inf"))
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if not ok:
        what = "an integer" if integer else "a number"
        raise ValidationError(f"{owner}: ray_options[{key!r}] must be {what} >= {low:g}, got {value!r}")


def check_ray_options(owner: str, executor: str, options: Any) -> dict[str, Any]:
    """Check ``ray_options=`` (errors name ``owner``); returns a copy as a plain dict.

    Only the options of :data:`RAY_OPTIONS`, with the types Ray expects;
    values Ray checks further (a ``runtime_env``, a scheduling strategy) are
    checked by Ray when the actors start.
    """
    if options is None:
        return {}
    if executor != "ray":
        raise ValidationError(f"{owner}: ray_options= needs executor='ray' (got executor={executor!r})")
    if not isinstance(options, Mapping):
        raise ValidationError(f"{owner}: ray_options must be a dict of Ray actor options, got {options!r:.60}")
    out = dict(options)
    for key, value in out.items():
        if key not in RAY_OPTIONS:
            raise ValidationError(f"{owner}: ray_options has an unknown or unsupported option {key!r}; "
                                  f"accepted: {', '.join(RAY_OPTIONS)}")
        if key in ("num_cpus", "num_gpus", "memory"):
            _number(owner, key, value)
        elif key in ("max_restarts", "max_task_retries"):
            _number(owner, key, value, integer=True, low=-1)
        elif key == "resources":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ValidationError(f"{owner}: ray_options['resources'] must be a dict of resource name "
                                      f"to amount, got {value!r:.60}")
            for name, amount in value.items():
                if name in ("CPU", "GPU", "memory"):
                    raise ValidationError(f"{owner}: ray_options['resources'] cannot set {name!r}; use "
                                          f"num_cpus, num_gpus or memory")
                _number(owner, f"resources'][{name!r}", amount)
        elif key == "runtime_env" and value is not None and not isinstance(value, Mapping):
            raise ValidationError(f"{owner}: ray_options['runtime_env'] must be a dict, got {value!r:.60}")
    return out


def check_ray_init(owner: str, ray_init: Any) -> dict[str, Any] | None:
    """Check a pipeline's ``ray_init=`` (keyword arguments for ``ray.init()``)."""
    if ray_init is None:
        return None
    if not isinstance(ray_init, Mapping) or not all(isinstance(k, str) for k in ray_init):
        raise ValidationError(f"{owner}: ray_init must be a dict of keyword arguments for ray.init(), "
                              f"got {ray_init!r:.60}")
    return dict(ray_init)


def apply_default_executor(nodes: Any, executor: str) -> None:
    """Give a pipeline's default ``executor`` to its Transformers that did not choose one
    (checking, for ``"process"``, that their function can be pickled)."""
    for node in nodes:
        if node.kind == "Transformer" and not node.executor_chosen:
            if executor != "thread" and (node.plugin is not None or node.parallel != 1
                                         or node.is_async or node.batched):
                continue  # compiled plug-ins, thread replicas, async and batched functions stay here
            if executor == "process":
                check_picklable(node.label, node.fn)
            if executor != "thread" and node.ordered_given is None:
                node.ordered = True  # the default of process and Ray workers
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
