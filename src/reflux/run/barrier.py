"""Checkpoint barriers in a running worker pool: pause the sources, drain, hold, record, go on.

A pipeline with ``checkpoint=`` gives its :class:`~reflux.run.pool.PoolRuntime`
a :class:`BarrierGate` (``rt.gate``); without one, none of the hooks below
runs.  A barrier is a *quiescent* stop of the world:

1. **Due.** Every ``every`` items the Extractors pulled, or ``seconds``
   seconds, a source about to pull finds the barrier due and starts it.
2. **Sources pause.** Each source stops before its next pull: a source unit
   of the pool returns from its step (:meth:`BarrierGate.hold_source`), a
   source in a thread of its own waits (:meth:`BarrierGate.source_wait`).
   Feedback still held by the stages fused behind a source is run first.
3. **Drain.** Everything already pulled flows on to the sinks as usual.  The
   pipeline is drained when every source has paused (or ended) and every other
   node has an empty input, nothing in its outbox, no fed-back items and
   nothing in flight, except a logic that saves its items in flight with the
   checkpoint (:attr:`~reflux.logic.base.NodeLogic.saves_inflight`: process
   workers, which keep working through the barrier).
4. **Hold and record.** The last step to leave a drained pipeline holds the
   pool (no step may start: :meth:`BarrierGate.enter` waits) and, in its
   thread, takes the sources' positions and the nodes' states
   (:func:`reflux.checkpoint.state.capture`) and hands them to ``record``
   (:meth:`reflux.checkpoint.commit.Checkpointer.record`), which prepares the
   sinks and starts their commit.
5. **Go on.** The pool is released and the sources are woken; the databases
   commit the checkpoint in a thread of its own meanwhile (rows that arrive
   before it is done wait for it in their sink).

Why stop the world rather than pass barrier markers along the channels
(Chandy-Lamport, as Flink does): a drained pipeline holds no item between
nodes, so a checkpoint needs no channel contents, no marker alignment at
Funnels or replicas, nothing special for fused chains or feedback loops, and
items need not be picklable; the nodes' logic is left untouched.  The price
is a pause of the sources while the pipeline drains, which on a GIL build
costs little: the Python that runs while the sources wait is work that had to
be done anyway (the connector benchmark measures it: see docs/benchmarks.md).
Process workers are the exception: waiting for their chunks would leave them
idle at every barrier (the pipeline ran dry, then had to fill them again), so
their chunks in flight are saved instead, already pickled as they were sent.

A barrier that cannot complete within ``timeout`` seconds (a source blocked
inside a read, a paused pipeline) is skipped: the sources go on and the next
barrier is tried later; nothing waits forever.  Stopping or abandoning the
run ends a pending barrier too.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..checkpoint import state as node_state
from ..checkpoint.snapshot import Snapshot
from ..describe.plan import Task
from ..errors import ErrorRecord
from ..logic.base import NodeLogic

if TYPE_CHECKING:  # pragma: no cover
    from .pool import PoolRuntime
    from .units import Unit

__all__ = ["BarrierGate", "Record"]

logger = logging.getLogger("reflux")

#: what records a checkpoint: ``(sources, nodes, pulled, final)`` (see Checkpointer.record)
Record = Callable[[dict[str, Any], dict[str, Any], int, bool], Any]


class BarrierGate:
    """Takes checkpoint barriers in a running :class:`~reflux.run.pool.PoolRuntime`.

    ``record`` records a checkpoint (the pipeline is drained and held);
    ``resume`` is the snapshot the run resumes from (its positions and states
    go into each node's logic when it opens).
    """

    def __init__(self, rt: PoolRuntime, *, record: Record, every: int | None, seconds: float | None,
                 timeout: float, resume: Snapshot | None = None) -> None:
        self.rt = rt
        self.record = record
        self.every = every
        self.seconds = seconds
        self.timeout = timeout
        self.resume = resume
        # _lock protects running, held, pending, arrived, deadline and the counters below;
        # _cond (on _lock) wakes the steps and source threads waiting for a barrier to end
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: pool steps in progress (between enter and leave)
        self.running = 0
        #: the pool is held: a checkpoint is being recorded, no step may start
        self.held = False
        #: a barrier is under way: sources pause before their next pull (read without the
        #: lock on the sources' fast path: a stale False only delays a pause by one pull)
        self.pending = False
        #: units of the sources paused at the barrier
        self.arrived: set[int] = set()
        self.deadline = 0.0
        self.sources: list[Unit] = [u for u in rt.units if u.is_source]
        self._source_stats = [t.stats for t in rt.plan.tasks if t.node.is_source]
        #: items pulled at the last barrier, and when the next one is due by time
        self._mark = 0
        self._next_at = time.monotonic() + seconds if seconds is not None else float("inf")
        #: barriers recorded and skipped by this run; set once recording failed (no more barriers).
        #: `taken` and `_mark` change outside the lock, but only in the one thread that holds
        #: the pool (held: no step runs, no other thread records) or after the run
        self.taken = 0
        self.skipped = 0
        self.failed = False
        #: seconds the sources were held by barriers (from a barrier's start to its end)
        self.held_seconds = 0.0
        self._started = 0.0

    # ------------------------------------------------------------------ is one due?

    def pulled(self) -> int:
        """Items the Extractors have pulled in this run."""
        return sum(s.received for s in self._source_stats)

    def _due(self) -> bool:
        rt = self.rt
        if self.failed or rt._stop_sources or rt._aborted:
            return False
        if self.every is not None and self.pulled() - self._mark >= self.every:
            return True
        return time.monotonic() >= self._next_at

    def _start(self) -> None:
        with self._lock:
            if not self.pending:
                self.pending = True
                self.arrived.clear()
                self._started = time.monotonic()
                self.deadline = self._started + self.timeout

    # ------------------------------------------------------------------ the sources' hooks

    def hold_source(self, u: Unit) -> bool:
        """[step of a source unit] ``True``: pull nothing now, a barrier is under way
        (the unit is woken when it is over)."""
        if not self.pending:
            if not self._due():
                return False
            self._start()
        if not self._drain_chain(u):
            return True  # its fused stages still have work; their outbox wakes it
        with self._lock:
            if not self.pending:
                return False  # ended meanwhile (skipped): pull
            self.arrived.add(u.index)
        return True

    def source_wait(self, u: Unit) -> None:
        """[a source in its own thread, before each pull] If a barrier is under way, pause
        here until it is recorded (or skipped, or the run stops)."""
        if not self.pending:
            if not self._due():
                return
            self._start()
        self._drain_chain(u)  # its outbox waits for room in this thread
        with self._lock:
            if not self.pending:
                return
            self.arrived.add(u.index)
        self.try_complete()
        rt = self.rt
        with self._lock:
            while self.pending and u.index in self.arrived and not rt._aborted and not rt._stop_sources:
                if not self.held and time.monotonic() > self.deadline:
                    self._skip_locked()
                    break
                self._cond.wait(rt.poll)
            self.arrived.discard(u.index)
        self._wake_sources()

    def _drain_chain(self, u: Unit) -> bool:
        """Run the fed-back items held by the stages fused behind a source (they are
        processed only between pulls); ``True`` once none is left and its output is out."""
        for i in range(1, len(u.logics)):
            lg = u.logics[i]
            while lg.has_feedback():
                u.stage = i
                lg.process_feedback(u.limit, u.outs[i])
                u.forward(i)
                if u.final.pending():
                    return False
        return not u.final.pending()

    # ------------------------------------------------------------------ the pool's hooks

    def enter(self) -> None:
        """[before a pool step] Wait while the pool is held; count the step as running."""
        rt = self.rt
        with self._lock:
            while self.held and not rt._aborted:
                self._cond.wait(rt.poll)
            self.running += 1

    def leave(self) -> None:
        """[after a pool step] The last step out of a drained pipeline records the barrier."""
        with self._lock:
            self.running -= 1
            if not self.pending or self.held or self.running:
                return
        self.try_complete()

    def idle(self) -> None:
        """[an idle worker, every poll] Skip a barrier past its timeout; finish one nothing else did."""
        if self.pending:
            self.try_complete()

    # ------------------------------------------------------------------ recording

    def _quiet(self) -> bool:
        """The pipeline is drained: every source paused or ended, nothing anywhere else
        (call with the lock held and no step running)."""
        for u in self.rt.units:
            if u.finalized:
                continue
            if u.is_source:
                if u.index not in self.arrived:
                    return False
                continue
            box = u.inbox
            if box is not None and (len(box.channel) or box.channel.closed):
                return False  # items to take, or its input ended and it is finishing
            if u.final.pending():
                return False
            for lg in u.logics:
                if (lg.remaining or lg.has_feedback()) and not lg.saves_inflight:
                    return False  # items in flight or fed back (process workers save theirs)
            group = u.group
            if group is not None and group.shared_out is not None and (group.done or group.shared_out.pending()):
                return False
        return True

    def try_complete(self) -> None:
        """Record the barrier if the pipeline is drained and no step runs; skip it if it
        is past its timeout."""
        with self._lock:
            if not self.pending or self.held or self.running:
                return
            if self.rt._aborted:
                self._end_locked()
                return
            if time.monotonic() > self.deadline:
                self._skip_locked()
                wake = True
            elif not self._quiet():
                return
            else:
                self.held = True
                wake = False
        if wake:
            self._wake_sources()
            return
        try:
            self._record(final=False)
            self.taken += 1
        except BaseException as exc:  # the sinks' commit failed: the run fails, restart resumes
            self.fail(exc)
        finally:
            with self._lock:
                self.held = False
                self._end_locked()
            self._wake_sources()

    def _record(self, final: bool) -> None:
        units: dict[str, list[NodeLogic]] = {}
        for u in self.rt.units:
            for task, lg in zip(u.tasks, u.logics):
                units.setdefault(task.name, []).append(lg)
        nodes = [(t.node, units.get(t.name, [])) for t in self.rt.plan.tasks]
        sources, states = node_state.capture(nodes)
        pulled = self.pulled()
        self.record(sources, states, pulled, final)
        self._mark = pulled
        if self.seconds is not None:
            self._next_at = time.monotonic() + self.seconds

    def fail(self, exc: BaseException) -> None:
        """Recording a checkpoint failed (here, or in the thread committing it beside the
        pipeline): no more barriers, and the run fails naming the sink."""
        self.failed = True
        node = getattr(exc, "node", None) or self.rt.plan.name
        self.rt._fail(ErrorRecord.from_exception(node, None, exc))

    def final(self, completed: bool) -> None:
        """After the run (every unit has ended; the sinks deferred their last commit):
        record the last checkpoint."""
        self._record(final=completed)
        self.taken += 1

    def _end_locked(self) -> None:
        if self.pending:
            self.held_seconds += time.monotonic() - self._started
        self.pending = False
        self.arrived.clear()
        self._cond.notify_all()

    def _skip_locked(self) -> None:
        waiting = [u.name for u in self.sources if not u.finalized and u.index not in self.arrived]
        busy = [u.name for u in self.rt.units if not u.is_source and not u.finalized]
        if not self.rt.paused:
            logger.warning("Pipeline '%s': checkpoint skipped: %s within %.1fs; trying again later",
                           self.rt.plan.name,
                           f"source(s) {', '.join(waiting)} did not pause" if waiting
                           else f"the pipeline did not drain (nodes {', '.join(busy[:5])})", self.timeout)
        self.skipped += 1
        self._mark = self.pulled()
        if self.seconds is not None:
            self._next_at = time.monotonic() + self.seconds
        self._end_locked()

    def _wake_sources(self) -> None:
        for u in self.sources:
            if not u.threaded and not u.finalized:
                self.rt._notify(u)

    # ------------------------------------------------------------------ resuming

    def restore(self, task: Task, logic: NodeLogic, replica: int | None = None, replicas: int = 1) -> None:
        """[a node's logic just opened] Put back its position or state when the run resumes
        (``replica`` of ``replicas``: a replica running its own copy of the node's object)."""
        if self.resume is not None:
            node_state.restore(task.node, logic, self.resume, replica, replicas)
