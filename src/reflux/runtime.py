"""The first runtime, one thread per node (``Pipeline(runtime="threads")``),
and :class:`RuntimeBase`, what every runtime shares.

It executes a :class:`~reflux.pipeline.Plan`: every task (node) runs its logic
in a thread of its own, taking batches from its bounded input channel with
``pop_many`` and handing its outputs on with ``push_many``.  Every wait is a
channel wait (the thread parks with the GIL released) or an
:class:`threading.Event` wait, in slices of ``poll`` seconds so the stop,
abort and pause flags are seen; nothing spins, so an idle pipeline uses
essentially no CPU.

End of stream: a task that ends closes each channel it feeds once every
producer of that channel has ended; its consumers drain what is left and
then end too.  Abort (a failure under ``"raise"``, ``stop(drain=False)``,
Ctrl-C): every channel is closed at once, so blocked producers and consumers
are released wherever they wait; items left anywhere are counted as
``dropped``.

The worker pool (:mod:`reflux.pool`) is the default runtime now; this one is
kept for comparison and debugging.  Node logic depends on neither.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reflux_core.channel import ChannelClosed, Empty, Full

from .errors import ErrorRecord
from .nodes import Abort, NodeContext, NodeFailure, NodeLogic, Outbox
from .pipeline import Inbox, Plan, Task
from .result import NodeStats, RunResult

__all__ = ["RuntimeBase", "ThreadRuntime"]

#: seconds of work a stage aims to do per batch; slower items get smaller batches
BATCH_BUDGET = 0.05

logger = logging.getLogger("reflux")


def _drop_inputs(stats: NodeStats, n: int, *, received: bool) -> None:
    """Count ``n`` input items of a node as abandoned (a Broadcast drops one copy per receiver)."""
    if received:
        stats.received += n
    stats.dropped += n * stats.fanout if stats.law == "fanout" else n


class _Context(NodeContext):
    """What a task's logic sees of the runtime."""

    def __init__(self, rt: ThreadRuntime, stats: NodeStats) -> None:
        super().__init__(stats)
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


class InboxOutbox(Outbox):
    """An outbox whose flush hands each port's buffer to the receiver's
    :class:`~reflux.pipeline.Inbox` (and dead-letter records to the dead-letter
    one) through :meth:`_push`, which each runtime defines."""

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


class _ChannelOutbox(InboxOutbox):
    """The thread runtime's outbox: a flush pushes each buffer into the receiver's channel,
    waiting while it is full."""

    def __init__(self, rt: ThreadRuntime, task: Task) -> None:
        super().__init__(task)
        self.rt = rt
        self.stats = task.stats
        self.dead_count = 0
        self.poll = rt.poll

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        """Push all of ``buf`` (blocking while the channel is full) and count what went in;
        ``port`` -1 is the dead-letter output."""
        ch = box.channel
        rt = self.rt
        pushed = 0
        poll = self.poll
        try:
            if len(buf) == 1 and ch.try_push(buf[0]):
                buf.clear()
                pushed = 1
            while buf:
                try:
                    n = ch.push_many(buf, poll)
                except Full:
                    n = 0
                if n:
                    del buf[:n]
                    pushed += n
                if buf and rt._aborted:
                    raise Abort()
        except ChannelClosed:
            # only an abort closes a channel that still has live producers
            raise Abort() from None
        finally:
            if port >= 0:
                self.stats.emitted += pushed
                self.sent_per_port[port] += pushed
            else:
                self.dead_count += pushed


class RuntimeBase:
    """What every runtime shares: the run's flags (stop, abort, pause), its
    failure, the error records it keeps, and the result it builds.

    Subclasses start the work and call :meth:`_fail` when a node fails; they
    extend :meth:`stop_sources`, :meth:`abort`, :meth:`pause` and
    :meth:`resume` with what they must wake.
    """

    def __init__(self, plan: Plan, *, max_error_records: int = 1000, poll: float = 0.1) -> None:
        self.plan = plan
        self.poll = poll
        self.max_error_records = max_error_records
        self._stop_sources = False
        self._stop_time: float | None = None
        self._aborted = False
        self._abort_event = threading.Event()
        self._paused = False
        self._resumed = threading.Event()
        self._resumed.set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished: set[str] = set()
        self._errors: list[ErrorRecord] = []
        self._errors_not_kept = 0
        self._failure: ErrorRecord | None = None
        self._results: dict[str, Any] = {}
        # [monitor hook] called once, in the failing node's thread, with the
        # record of the first failure, before the run is aborted (issue 6: the
        # watchdog reports a node that died at once).  Set by the Pipeline.
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
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        self._stop_sources = True
        self._abort_event.set()
        self._paused = False
        self._resumed.set()
        for box in self.plan.inboxes:
            box.channel.close()

    def pause(self) -> None:
        """Hold every task between batches."""
        if self._aborted or self._stop_sources:
            return
        self._resumed.clear()
        self._paused = True

    def resume(self) -> None:
        """Let paused tasks go on."""
        self._paused = False
        self._resumed.set()

    @property
    def paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused

    @property
    def failure(self) -> ErrorRecord | None:
        """The record of the failure that aborted the run (``on_error="raise"``), if any."""
        return self._failure

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for every task to end; ``True`` if they have."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------ bookkeeping

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
        return RunResult(
            status=status,
            nodes={t.name: t.stats.copy() for t in self.plan.tasks},
            results=results,
            errors=errors,
            edges=edges,
            elapsed=elapsed,
            dead_letters=dead_letters,
            errors_not_kept=not_kept,
            stuck=list(stuck),
        )


class ThreadRuntime(RuntimeBase):
    """Runs a :class:`~reflux.pipeline.Plan` with one thread per task."""

    def __init__(self, plan: Plan, *, max_error_records: int = 1000, poll: float = 0.1) -> None:
        super().__init__(plan, max_error_records=max_error_records, poll=poll)
        self._open_producers = {id(box): box.producers for box in plan.inboxes}
        self._live = len(plan.tasks)
        self._threads: dict[str, threading.Thread] = {}
        self._outboxes: dict[str, _ChannelOutbox] = {}
        self._started = 0.0

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start one thread per task."""
        self._started = time.monotonic()
        for task in self.plan.tasks:
            t = threading.Thread(target=self._run_task, args=(task,), daemon=True,
                                 name=f"reflux:{self.plan.name}:{task.name}")
            self._threads[task.name] = t
        # an input nobody feeds (the pipeline's dead-letter Loader when no node
        # uses it) is at its end from the start
        for box in self.plan.inboxes:
            if box.producers == 0:
                box.channel.close()
        try:
            for t in self._threads.values():
                t.start()
        except BaseException:
            # could not start every thread (resources): end the ones that did start
            self.abort()
            for t in self._threads.values():
                if t.ident is not None:
                    t.join(self.poll * 20)
            raise

    def join_threads(self, timeout: float, source_timeout: float = 1.0) -> list[str]:
        """Join every thread (``timeout`` seconds at most in all); returns the names still alive.

        Once the other tasks ended, an Extractor still running is blocked inside
        its source (user code that cannot be interrupted): it is waited for
        ``source_timeout`` seconds at most, since nothing waits on it any more.
        """
        deadline = time.monotonic() + timeout
        stuck = []
        sources = []
        for task in self.plan.tasks:
            t = self._threads.get(task.name)
            if t is None:
                continue
            if task.node.is_source:
                sources.append((task.name, t))
                continue
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(task.name)
        source_deadline = min(deadline, time.monotonic() + source_timeout)
        for name, t in sources:
            t.join(max(0.0, source_deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(name)
        return stuck

    # ------------------------------------------------------------------ bookkeeping

    def _end_outputs(self, task: Task) -> None:
        boxes: list[Inbox] = []
        for box in task.outputs + ([task.dead_letter] if task.dead_letter is not None else []):
            if not any(box is b for b in boxes):
                boxes.append(box)
        for box in boxes:
            with self._lock:
                self._open_producers[id(box)] -= 1
                last = self._open_producers[id(box)] == 0
            if last:
                box.channel.close()

    def _retire(self, task: Task) -> bool:
        """Mark ``task`` as ended (once): end its outputs, count it out of the live tasks."""
        with self._lock:
            if task.name in self._finished:
                return False
            self._finished.add(task.name)
        self._end_outputs(task)
        with self._lock:
            self._live -= 1
            if self._live == 0:
                self._done.set()
        return True

    def detach_stalled_sources(self, grace: float) -> list[str]:
        """After ``stop()``: end, on their behalf, the Extractors still blocked in
        their source ``grace`` seconds later, so the rest of the pipeline drains
        and ends.  Returns the names detached."""
        if not self._stop_sources or self._stop_time is None:
            return []
        if time.monotonic() - self._stop_time < grace:
            return []
        detached = []
        for task in self.plan.tasks:
            if task.node.is_source and task.name not in self._finished and self._retire(task):
                detached.append(task.name)
                logger.warning("Extractor '%s' is still inside its source %.1fs after stop(); "
                               "ending the pipeline without it", task.name, grace)
        return detached

    def snapshot(self) -> dict[str, NodeStats]:
        """Approximate live counters."""
        return {t.name: t.stats.copy() for t in self.plan.tasks}

    # ------------------------------------------------------------------ task threads

    def _wait_resumed(self) -> None:
        while self._paused and not self._aborted:
            self._resumed.wait(self.poll)

    def _run_task(self, task: Task) -> None:
        """Thread body: open the logic, run it to its end (or an abort), close it, end the outputs."""
        ctx = _Context(self, task.stats)
        out = _ChannelOutbox(self, task)
        self._outboxes[task.name] = out
        logic: NodeLogic | None = None
        opened = False
        abandoned = False
        try:
            logic = task.node.make_logic(ctx, len(task.outputs), task.port_names)
            logic.open()
            opened = True
            if task.node.is_source:
                self._run_source(task, logic, out)
            else:
                self._run_stage(task, logic, out)
        except Abort:
            abandoned = True
        except NodeFailure as f:
            abandoned = True
            self._fail(f.record)
        except BaseException as exc:  # a hook or reflux itself failed: fail the run
            abandoned = True
            self._fail(ErrorRecord.from_exception(task.name, None, exc))
        finally:
            try:
                if logic is not None:
                    if opened:
                        try:
                            logic.close()
                        except BaseException as exc:  # user close() hook
                            abandoned = True
                            self._fail(ErrorRecord.from_exception(task.name, None, exc))
                    if abandoned or self._aborted:
                        task.stats.dropped += logic.abandon()
                    try:
                        self._results[task.name] = logic.result()
                    except BaseException as exc:  # user result() hook
                        self._fail(ErrorRecord.from_exception(task.name, None, exc))
                task.stats.dropped += out.discard()
            finally:
                self._retire(task)

    def _run_source(self, task: Task, logic: Any, out: _ChannelOutbox) -> None:
        """An Extractor: pull from the source and push until it ends or extraction stops."""
        batch = task.batch_size
        stats = task.stats
        monotonic = time.monotonic
        while True:
            if self._paused:
                self._wait_resumed()
            if self._aborted:
                raise Abort()
            if self._stop_sources:
                return
            t0 = monotonic()
            more = logic.pull(out, batch)
            stats.busy += monotonic() - t0  # [busy time]
            out.flush()
            if not more:
                return

    def _run_stage(self, task: Task, logic: NodeLogic, out: _ChannelOutbox) -> None:
        """Any other node: feedback first, then batches from the input, until end of stream."""
        assert task.inbox is not None
        pop_many = task.inbox.channel.pop_many
        batch_size = task.batch_size
        stats = task.stats
        poll = self.poll
        monotonic = time.monotonic
        limit = batch_size
        while True:
            if self._paused:
                self._wait_resumed()
            if self._aborted:
                raise Abort()
            if logic.has_feedback():
                t0 = monotonic()
                logic.process_feedback(batch_size, out)
                stats.busy += monotonic() - t0  # [busy time]
                out.flush()
                continue
            timeout = poll
            deadline = logic.next_deadline()
            if deadline is not None:
                now = monotonic()
                if now >= deadline:
                    logic.tick(now, out)
                    out.flush()
                    continue
                timeout = min(poll, deadline - now)
            try:
                batch = pop_many(limit, timeout)
            except Empty:
                continue
            except ChannelClosed:
                break
            n = len(batch)
            stats.received += n
            if self._aborted:
                _drop_inputs(stats, n, received=False)
                raise Abort()
            t0 = monotonic()
            logic.process(batch, out)
            spent = monotonic() - t0
            stats.busy += spent  # [busy time]
            # Slow items get smaller batches, so stop, pause and Ctrl-C are
            # seen within about BATCH_BUDGET seconds (plus one item).
            if spent > BATCH_BUDGET:
                limit = max(1, int(n * BATCH_BUDGET / spent))
            elif limit < batch_size and n == limit:
                limit = min(batch_size, limit * 2)
            out.flush()
        logic.finish(out)
        out.flush()

    # ------------------------------------------------------------------ the result

    def collect(self, status: str, elapsed: float, stuck: list[str]) -> RunResult:
        """Count what is left in channels as dropped and build the result.

        Call after :meth:`join_threads`; channels of stuck tasks are left alone.
        """
        by_owner = {t.name: t for t in self.plan.tasks}
        for box in self.plan.inboxes:
            if box.owner in stuck:
                continue
            left = 0
            while True:
                try:
                    left += len(box.channel.pop_many(1 << 16, 0))
                except (Empty, ChannelClosed):
                    break
            if left:
                _drop_inputs(by_owner[box.owner].stats, left, received=True)
        edges: dict[tuple[str, str], int] = {}
        for task in self.plan.tasks:
            out = self._outboxes.get(task.name)
            if out is None:
                continue
            for name, n in zip(task.port_names, out.sent_per_port):
                edges[(task.name, name)] = edges.get((task.name, name), 0) + n
            if task.dead_letter is not None:
                key = (task.name, task.dead_letter.owner)
                edges[key] = edges.get(key, 0) + out.dead_count
        return self._result(status, elapsed, stuck, edges)
