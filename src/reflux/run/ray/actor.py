"""What runs inside a Ray actor of a node with ``executor="ray"``.

:class:`RefluxActor` holds the node's function (with its state) for the
life of the actor: ``__init__`` calls its ``open()``, :meth:`~RefluxActor.run`
applies it to one batch with the node's retry policy (the same per-batch
runner process workers use, :func:`reflux.run.process.child.run_chunk`), and
:meth:`~RefluxActor.close` calls its ``close()``.  The driver wraps the class
with ``ray.remote`` (:mod:`reflux.run.ray.actors`).

This module and :mod:`reflux.run.process.child` use the standard library only
(and Ray, inside the methods that need it), and the driver has Ray pickle
both by value: an actor imports nothing of reflux, so the cluster's machines
need reflux only if the node's function itself imports it (to return
``NeedsMoreWork`` or ``Error``, say).
"""
from __future__ import annotations

import importlib
import inspect
import os
import time
import traceback
from typing import Any

from ..process.child import pack_exception, run_chunk

__all__ = ["RefluxActor"]


def _hook(fn: Any, name: str) -> Any:
    """The user's ``open``/``close`` method of a callable object (never a function's own attribute)."""
    if inspect.isroutine(fn) or isinstance(fn, type):
        return None
    h = getattr(fn, name, None)
    return h if callable(h) else None


class RefluxActor:
    """One Ray actor of a node: the node's function, called on batches of items.

    ``opts`` holds the node's retry policy (``retries``, ``backoff``...),
    ``flat`` (every result is an iterable of outputs) and ``filter`` (the
    function is a predicate: only the verdicts go back, one byte per item).
    """

    def __init__(self, label: str, fn: Any, opts: dict[str, Any]) -> None:
        self._label = label
        self._fn = fn
        self._opts = opts
        self._filter = bool(opts.get("filter"))
        hook = _hook(fn, "open")
        if hook is not None:
            hook()  # a failure here ends the actor: the driver reports it with this traceback

    def info(self) -> tuple[str, str, int, str]:
        """``(Ray node id, host address, pid, actor id)``: where this actor runs."""
        ray: Any = importlib.import_module("ray")  # loaded already: this runs in a Ray actor
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), os.getpid(), ctx.get_actor_id() or ""

    def run(self, seq: int, items: list[Any]) -> tuple[Any, ...]:
        """Apply the function to ``items``: ``(seq, values, errors, retried, busy, signals)``.

        ``values`` and ``errors`` are as :func:`~reflux.run.process.child.run_chunk`
        returns them; for a predicate, ``values`` is ``bytes`` (1 keep, 0 drop).
        ``busy`` is the seconds spent in the function.
        """
        t0 = time.perf_counter()
        values, errors, retried, signals = run_chunk(self._fn, items, self._opts)
        busy = time.perf_counter() - t0
        if self._filter:
            return seq, bytes(1 if v else 0 for v in values), errors, retried, busy, False
        _check_results(values, errors)
        return seq, values, errors, retried, busy, signals

    def close(self) -> str | None:
        """Call the function's ``close()``; returns its formatted traceback if it failed."""
        hook = _hook(self._fn, "close")
        if hook is None:
            return None
        try:
            hook()
        except BaseException:  # noqa: BLE001 - reported to the driver
            return traceback.format_exc()
        return None


def _check_results(values: list[Any], errors: list[tuple[Any, ...]]) -> None:
    """Turn results that cannot be sent back into per-item errors (in place).

    Ray pickles the returned batch with cloudpickle; one result it cannot
    pickle would fail the whole batch.  The check pickles the batch once with
    out-of-band buffers (array data is not copied) and, only if that fails,
    finds the items at fault.
    """
    cloudpickle: Any = importlib.import_module("ray.cloudpickle")

    def dumps(obj: Any) -> None:
        cloudpickle.dumps(obj, protocol=5, buffer_callback=lambda _b: None)

    try:
        dumps(values)
        return
    except Exception:  # noqa: BLE001 - some value cannot be pickled: find which
        pass
    failed = {e[0] for e in errors}
    for i, v in enumerate(values):
        if i in failed:
            continue
        try:
            dumps(v)
        except Exception as exc:  # noqa: BLE001
            err = TypeError(f"the result of this item cannot be sent back from the Ray actor: "
                            f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
            values[i] = None
            errors.append((i, *pack_exception(err), 1))
    errors.sort(key=lambda e: e[0])
