"""What the runtime shares with its parts: the run's flags (stop, abort, pause), its failure,
the error records it keeps and the result it builds (:class:`RuntimeBase`); the context a
node's logic sees (:class:`RunContext`); and the outbox that hands a node's outputs to
its receivers' channels (:class:`InboxOutbox`).

End of stream: a unit that ends closes each channel it feeds once every
producer of that channel has ended; its consumers drain what is left and
then end too.  Abort (a failure under ``"raise"``, ``stop(drain=False)``,
Ctrl-C): every channel is closed at once, so blocked producers and consumers
are released wherever they wait; items left anywhere are counted as
``dropped``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reflux_core._batch import StopFlag

from ..describe.plan import Inbox, Plan, Task
from ..errors import ErrorRecord
from ..logic.base import Abort, NodeContext, Outbox
from ..result import Event, NodeStats, Results, RunResult, free_threaded_build, gil_enabled

__all__ = ["BATCH_BUDGET", "InboxOutbox", "RunContext", "RuntimeBase", "drop_inputs"]

#: seconds of work a stage aims to do per batch; slower items get smaller batches
BATCH_BUDGET = 0.05

logger = logging.getLogger("reflux")


def drop_inputs(stats: NodeStats, n: int, *, received: bool) -> None:
    """Count ``n`` input items of a node as abandoned (a Broadcast drops one copy per receiver)."""
    if received:
        stats.received += n
    stats.dropped += n * stats.fanout if stats.law == "fanout" else n


class RunContext(NodeContext):
    """What a task's logic sees of the runtime."""

    def __init__(self, rt: RuntimeBase, stats: NodeStats) -> None:
        super().__init__(stats, rt.stop_flag)
        self.rt = rt

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self.rt._abort_event.wait(seconds):
            raise Abort()
        if self.rt._aborted:
            raise Abort()

    def should_stop(self) -> bool:
        return self.rt._stop_sources or self.rt._aborted

    def keep_error(self, record: ErrorRecord) -> None:
        self.rt._keep_error(record)

    def emit(self, event: Event) -> None:
        super().emit(event)
        self.rt._keep_event(event)


class InboxOutbox(Outbox):
    """An outbox whose flush hands each port's buffer to the receiver's
    :class:`~reflux.describe.plan.Inbox` (and dead-letter records to the dead-letter
    one) through :meth:`_push`, which the pool's outboxes define."""

    def __init__(self, task: Task) -> None:
        super().__init__(len(task.outputs), task.batch_size)
        self.boxes: list[Inbox] = list(task.outputs)
        self.dead_box: Inbox | None = task.dead_letter
        self.sent_per_port = [0] * len(task.outputs)

    def flush(self) -> None:
        ports = self.ports
        for i in range(len(ports)):
            if ports[i]:
                self._push(self.boxes[i], ports[i], i)
        if self.dead:
            if self.dead_box is None:  # cannot happen with a validated plan
                raise RuntimeError("dead-letter record without a dead-letter channel")
            self._push(self.dead_box, self.dead, -1)

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        """Move ``buf`` into ``box`` (``port`` -1: the dead-letter output)."""
        raise NotImplementedError

    def discard(self) -> int:
        """Forget what is left in the buffers; returns how many items (not records) there were."""
        n = sum(len(b) for b in self.ports)
        for b in self.ports:
            b.clear()
        self.dead.clear()
        return n


class RuntimeBase:
    """What every runtime shares: the run's flags (stop, abort, pause), its
    failure, the error records it keeps, and the result it builds.

    Subclasses start the work and call :meth:`_fail` when a node fails; they
    extend :meth:`stop_sources`, :meth:`abort`, :meth:`pause` and
    :meth:`resume` with what they must wake.
    """

    def __init__(self, plan: Plan, *, max_error_records: int = 1000, poll: float = 0.1,
                 max_events: int = 1000) -> None:
        self.plan = plan
        self.poll = poll
        self.max_error_records = max_error_records
        self._stop_sources = False
        self._stop_time: float | None = None
        self._abort_time: float | None = None
        self._aborted = False
        self._abort_event = threading.Event()
        #: raised by abort(); the nodes' batch loops check it before each call of user code
        self.stop_flag = StopFlag()
        # protects the pair (_paused, _resumed) and the units' pause flags against
        # pause() and resume() called at once from different threads: without it
        # (or, without a GIL, more often) the pair could end as "paused" with the
        # event set, and every worker would spin on a wait that returns at once
        self._pause_lock = threading.Lock()
        self._paused = False
        self._resumed = threading.Event()
        self._resumed.set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished: set[str] = set()
        self._errors: list[ErrorRecord] = []
        self._errors_not_kept = 0
        self.max_events = max_events
        self._events: list[Event] = []  # under _lock
        self._events_not_kept = 0
        self._failure: ErrorRecord | None = None
        self._results: dict[str, Any] = {}
        # [monitor hook] called once, in the failing node's thread, with the
        # record of the first failure, before the run is aborted (the watchdog
        # reports a node that died at once).  Set by the Pipeline.
        self.on_failure: Callable[[ErrorRecord], None] | None = None
        if not plan.tasks:
            self._done.set()

    # ------------------------------------------------------------------ control

    def stop_sources(self) -> None:
        """Make the Extractors end (everything extracted still flows to the end)."""
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        self._stop_sources = True
        self.resume()

    def abort(self) -> None:
        """Abandon the run: release every waiting task and end them all."""
        self._aborted = True
        self.stop_flag.set()
        if self._abort_time is None:
            self._abort_time = time.monotonic()
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        self._stop_sources = True
        self._abort_event.set()
        with self._pause_lock:
            self._paused = False
            self._resumed.set()
        for box in self.plan.inboxes:
            box.channel.close()

    def pause(self) -> None:
        """Hold every task between batches."""
        with self._pause_lock:
            if self._aborted or self._stop_sources:
                return
            self._resumed.clear()
            self._paused = True

    def resume(self) -> None:
        """Let paused tasks go on."""
        with self._pause_lock:
            self._paused = False
            self._resumed.set()

    @property
    def paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def abandoned_for(self) -> float:
        """Seconds since the run was abandoned (:meth:`abort`), 0 if it was not."""
        if self._abort_time is None:
            return 0.0
        return time.monotonic() - self._abort_time

    @property
    def failure(self) -> ErrorRecord | None:
        """The record of the failure that aborted the run (``on_error="raise"``), if any."""
        return self._failure

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for every task to end; ``True`` if they have."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------ bookkeeping

    def _keep_event(self, event: Event) -> None:
        with self._lock:
            if len(self._events) < self.max_events:
                self._events.append(event)
            else:
                self._events_not_kept += 1

    def recent_events(self, n: int = 5) -> list[Event]:
        """[monitor hook] The last ``n`` events kept."""
        with self._lock:
            return self._events[-n:]

    def _keep_error(self, record: ErrorRecord) -> None:
        with self._lock:
            if len(self._errors) < self.max_error_records:
                self._errors.append(record)
            else:
                self._errors_not_kept += 1

    def _fail(self, record: ErrorRecord) -> None:
        with self._lock:
            first = self._failure is None
            if first:
                self._failure = record
        if first:
            self._keep_error(record)
            logger.debug("node '%s' failed: %r; aborting the run", record.node, record.exception)
            hook = self.on_failure  # [monitor hook]
            if hook is not None:
                try:
                    hook(record)
                except Exception:  # a monitor must never break the abort
                    logger.exception("failure hook raised")
        self.abort()

    def fail(self, record: ErrorRecord) -> None:
        """Fail the run from outside a node (the clogging watchdog under
        ``on_clog="stop"``): as if the node of ``record`` had failed."""
        self._fail(record)

    def finished_nodes(self) -> frozenset[str]:
        """[monitor hook] Names of the nodes that have ended."""
        with self._lock:
            return frozenset(self._finished)

    def _result(self, status: str, elapsed: float, stuck: list[str],
                edges: dict[tuple[str, str], int]) -> RunResult:
        """The :class:`RunResult` from the counters, results and error records kept."""
        results = {t.name: self._results.get(t.name) for t in self.plan.tasks if t.node.is_sink}
        dead_letters: list[ErrorRecord] = []
        if self.plan.auto_dead_letter is not None:
            dead_letters = list(results.get(self.plan.auto_dead_letter) or [])
        with self._lock:
            errors = list(self._errors)
            not_kept = self._errors_not_kept
            events = list(self._events)
            events_not_kept = self._events_not_kept
        return RunResult(
            status=status,
            nodes={t.name: t.stats.copy() for t in self.plan.tasks},
            results=Results(results),
            errors=errors,
            edges=edges,
            elapsed=elapsed,
            dead_letters=dead_letters,
            errors_not_kept=not_kept,
            stuck=list(stuck),
            events=events,
            events_not_kept=events_not_kept,
            # at the end: an extension module imported during the run may have turned the GIL on
            gil_enabled=gil_enabled(),
            free_threaded=free_threaded_build(),
        )
