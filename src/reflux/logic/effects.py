"""What a node's function may call while it runs: :func:`emit` an event, ask :func:`stopping`.

Both find the node through the thread the call runs in (the runtime marks it),
so a plain function needs no extra argument::

    from reflux import emit, stopping

    def enrich(row):
        if row["price"] < 0:
            emit("warning", "negative price", row_id=row["id"])   # an event, not a failure
        while not done(row):
            if stopping():              # the run is stopping: end a long call early
                break
            work(row)
        return row

Called outside a running node (a test calling the function directly), ``emit``
logs on the ``"reflux"`` logger and ``stopping`` returns ``False``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ..result import LEVELS, Event
from .base import current_context

__all__ = ["emit", "stopping", "take_worker_events"]

logger = logging.getLogger("reflux")

#: the crate's severities, by their names, and Python's level numbers, on reflux's levels
_ALIASES = {"warn": "warning", "err": "error", "fatal": "critical", "trace": "debug",
            10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def emit(level: str | int, message: str, **fields: Any) -> None:
    """Report an event from a node's function: ``level`` is ``"debug"``, ``"info"``,
    ``"warning"``, ``"error"`` or ``"critical"`` (or a :mod:`logging` level number),
    ``fields`` any values worth keeping with it.

    The event goes to the ``"reflux"`` logger at that level, into the node's
    counters by level (``NodeStats.events``), into :attr:`RunResult.events`
    (the first ``max_events`` of a run), the Prometheus metrics and the live
    view.  It is not a failure: the item goes on (use ``Error(...)`` or raise
    for that)."""
    name = _ALIASES.get(level.lower() if isinstance(level, str) else level,
                        level.lower() if isinstance(level, str) else level)
    if name not in LEVELS:
        raise ValueError(f"emit: level must be one of {', '.join(LEVELS)} (or a logging level number), "
                         f"got {level!r}")
    ctx = current_context()
    if ctx is None:
        if os.environ.get("REFLUX_PROCESS_WORKER"):
            # in a worker process: the events go back to the node with the chunk's results
            _worker_events.append((name, str(message), dict(fields)))
            return
        logger.log(LEVELS[name], "%s", message, extra={"reflux_node": None, "reflux_fields": fields})
        return
    ctx.emit(Event(ctx.stats.name, name, str(message), dict(fields)))


# events emitted in a process worker, until the worker sends them with its next results
_worker_events: list[tuple[str, str, dict[str, Any]]] = []


def take_worker_events() -> list[tuple[str, str, dict[str, Any]]]:
    """The events emitted in this worker process since the last call (the worker calls it)."""
    events = _worker_events[:]
    del _worker_events[:len(events)]
    return events


def stopping() -> bool:
    """``True`` once the run of the node whose function calls it is stopping:
    ``stop()`` (with or without draining), a node failing under ``"raise"``, a
    timeout or Ctrl-C.  A long call can end early then; what it returns still
    flows on if the run drains, and is dropped if the run is abandoned."""
    ctx = current_context()
    return False if ctx is None else ctx.stopping()
