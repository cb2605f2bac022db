"""The units the worker pool schedules: a fused chain of tasks, or one replica of a task.

A unit holds, per stage, the node's logic, its counters and its outbox, and
knows how to take one step (:meth:`Unit.step`: a batch through its stages,
a timer, feedback, its end); the runtime (:mod:`reflux.run.pool`) decides
when and on which worker.  A
:class:`ReplicaGroup` ties the replicas of one node (``parallel=N``)
together; a :class:`PumpLogic` stands for a node that the core runs as a
nogil record pump.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from reflux_core._sched import PUMP_CLOSED, PUMP_END, PUMP_ERROR, PUMP_YIELD, PumpTask
from reflux_core.channel import ChannelClosed, Empty

from ..describe.base import DEFAULT_BATCH_SIZE, Node
from ..describe.nodes import Extractor, Filter, Loader, Transformer
from ..describe.plan import Task
from ..describe.sinks import CallbackSink, CountSink, FileSink, ListSink, ReduceSink, SumSink
from ..errors import ErrorRecord
from ..logic.base import CURRENT, Abort, NodeLogic, Outbox, set_current_context
from ..result import NodeStats
from .base import BATCH_BUDGET, RunContext
from .outboxes import ForwardOutbox, PoolOutbox
from .placement import task_logic
from .replicas import ReplicaContext, SharedObject

if TYPE_CHECKING:  # pragma: no cover
    from .pool import PoolRuntime

__all__ = ["PUMP_BUDGET", "PumpLogic", "RECORD_BATCH", "ReplicaGroup", "Unit"]

#: records a record pump moves per plug-in call, and a node with a record input takes per batch
RECORD_BATCH = 1024
#: seconds a record pump works in one step before its worker checks the ready queue
PUMP_BUDGET = 0.005


class PumpLogic(NodeLogic):
    """The logic of a record-pump unit: the node's own logic keeps its hooks
    and error policy; the :class:`~reflux_core._sched.PumpTask` does the work
    and holds the counters (records), copied into the node's stats."""

    def __init__(self, inner: NodeLogic, pump: PumpTask, stats: NodeStats) -> None:
        super().__init__(inner.node, inner.ctx)
        self.inner = inner
        self.pump = pump
        self.stats = stats

    def sync(self) -> None:
        s, p = self.stats, self.pump
        s.received, s.emitted, s.filtered, s.errors = p.received, p.emitted, p.filtered, p.errors
        s.busy = p.busy

    def close(self) -> None:
        self.pump.python = True  # over: never stepped without the GIL again
        self.sync()
        self.inner.close()

    def abandon(self) -> int:
        return self.pump.abandon()


#: the batch a sealed chain (see sealed_chain_batch) grows to: a step's fixed cost
#: (scheduling, clocks, counters) shared by this many items is under 1% of their work
SEALED_CHAIN_BATCH = 4096

#: Loaders whose function never sees where one batch ends (the built-in sinks)
_BOUNDARY_FREE_SINKS = (CountSink, SumSink, ReduceSink, ListSink, FileSink, CallbackSink)


def sealed_chain_batch(tasks: list[Task]) -> int:
    """How many items a batch of a fused chain may grow to.

    The pipeline's ``batch_size``, unless the chain is *sealed*: it starts at an
    Extractor over an in-memory collection, ends at a Loader, and no function of
    it can tell one batch from the next (item-at-a-time Transformers and
    Filters, a Loader called per item or one of the built-in sinks).  Nothing
    then waits for a batch to fill, no channel holds it, and a step still lasts
    at most about ``BATCH_BUDGET`` (adapt()), so the default grows to
    :data:`SEALED_CHAIN_BATCH` items.  A ``batch_size`` the user set is kept."""
    size = tasks[0].batch_size
    if size != DEFAULT_BATCH_SIZE or tasks[-1].outputs:
        return size
    for t in tasks:
        node = t.node
        if isinstance(node, Extractor):
            if node.mode != "sized":
                return size
        elif isinstance(node, (Transformer, Filter)):
            if getattr(node, "batched", False) or getattr(node, "plugin", None) is not None:
                return size
        elif isinstance(node, Loader):
            if node.batch and not isinstance(node.fn, _BOUNDARY_FREE_SINKS):
                return size
        else:
            return size
    return max(size, SEALED_CHAIN_BATCH)


class ReplicaGroup:
    """The replicas of one node (``parallel=N``): their shared input, their
    pop order and (with ``ordered=True``) the reordering of their outputs."""

    def __init__(self, task: Task, ordered: bool) -> None:
        self.task = task
        self.ordered = ordered
        self.lock = threading.Lock()
        self.units: list[Unit] = []
        self.next_ticket = 0
        self.next_out = 0
        self.done: dict[int, tuple[list[list[Any]], list[ErrorRecord]]] = {}
        self.shared_out: PoolOutbox | None = None  # ordered: the one outbox every replica feeds
        #: the user's object when the replicas share it (opened and closed once), else None
        self.shared: SharedObject | None = None


class Unit:
    """One schedulable thing: a chain of fused tasks, or one replica of a task."""

    def __init__(self, rt: PoolRuntime, tasks: list[Task], replica: int = 0,
                 group: ReplicaGroup | None = None, node: Node | None = None) -> None:
        self.rt = rt
        self.tasks = tasks
        #: the node this replica runs (a copy holding its own copy of the user's object), or None
        self.node = node
        self.head = tasks[0]
        self.tail = tasks[-1]
        self.group = group
        self.replica = replica
        self.name = self.head.name if len(tasks) == 1 else f"{self.head.name}..{self.tail.name}"
        if group is not None:
            self.name = f"{self.head.name}#{replica}"
        self.inbox = self.head.inbox
        # counters: a replica counts apart (merged into the task's counters)
        self.stats = [t.stats for t in tasks] if group is None else [t.stats.copy() for t in tasks]
        if group is not None:
            for s in self.stats:
                for f in ("received", "emitted", "filtered", "errors", "dropped", "retried", "fed_back",
                          "overflowed", "resumed", "busy"):
                    setattr(s, f, 0)
                s.events = {}
        shared = group.shared if group is not None else None
        self.ctxs = [RunContext(rt, s) if shared is None else ReplicaContext(rt, s, shared) for s in self.stats]
        self.logics: list[NodeLogic] = []
        self.final = PoolOutbox(rt, self, self.tail, self.stats[-1])
        self.outs: list[Outbox] = [ForwardOutbox(self, i, t.batch_size) for i, t in enumerate(tasks[:-1])]
        self.outs.append(self.final)
        if group is not None and group.ordered:
            # a replica collects a batch's outputs privately, then hands them
            # over in ticket order
            self.private = Outbox(len(self.tail.outputs), 1 << 30)
            self.outs[-1] = self.private
        self.index = -1  # in the scheduler
        self.opened = False
        self.finalized = False
        self.ending = False  # input ended: finishing stage by stage
        self.end_stage = 0
        self.threaded = False  # runs in a thread of its own (a source that may block)
        #: runs in the Python lane (set by the pool: see pool.in_lane)
        self.in_lane = False
        #: seconds a step aims to last at most (see adapt(); the pool shortens it for
        #: lane units that hand the GIL over to plug-ins between steps)
        self.budget = BATCH_BUDGET
        #: items the next batch takes: starts at 1 and grows while batches stay
        #: short, so a slow function never holds a worker (nor delays a stop, a
        #: pause or the watchdog) for a whole batch (see adapt())
        self.limit = 1
        #: the most items a batch of this unit grows to (see adapt() and sealed_chain_batch())
        self.max_limit = sealed_chain_batch(tasks) if group is None else self.head.batch_size
        #: the stage whose code runs now (a failure outside any item is blamed on it)
        self.stage = 0
        #: held by pause_node() (a plain bool: read by the worker that picks the unit up,
        #: which at worst runs one more step); written under the runtime's _pause_lock
        self.paused = False
        #: set unless paused: what a source in a thread of its own waits on while paused
        self.resumed = threading.Event()
        self.resumed.set()
        self.is_source = self.head.node.is_source
        self.has_timer = False
        self.timer_at: float | None = None
        #: "pump" (record input and output), "rec_in" (record input), or None
        self.mode: str | None = None
        self.pump: PumpTask | None = None

    def enter(self, i: int) -> None:
        """Stage ``i``'s code runs next in this thread: blame it for a failure, and let
        its function's ``reflux.emit()``/``reflux.stopping()`` find its node."""
        self.stage = i
        set_current_context(self.ctxs[i])

    def out_blocked(self, out: PoolOutbox) -> bool:
        """``out`` (the unit's output) holds items its receiver had no room for.

        The ordered replicas of a node share one output, which any of them
        fills and flushes under the group's lock; read without it, another
        replica's items could be seen between their hand-over and their flush
        (which may then succeed), and this replica would wait for a wake-up
        no flush registered.  Under the lock, a pending output is one a flush
        left pending, after registering every replica as a waiter."""
        group = self.group
        if group is not None and group.ordered:
            with group.lock:
                return out.pending()
        return out.pending()

    def open(self) -> None:
        """Make and open the logic of every stage."""
        rt = self.rt
        for i, task in enumerate(self.tasks):
            self.enter(i)
            with rt._lock:
                pre = rt.preforked.pop(task.name, None)
            logic = task_logic(task, self.ctxs[i], pre, node=self.node if i == 0 else None)
            self.logics.append(logic)
            logic.open()
            if rt.gate is not None:  # resuming from a checkpoint: positions and state
                if self.node is not None and self.group is not None:  # a replica with its own copy
                    rt.gate.restore(task, logic, self.replica, len(self.group.units))
                else:
                    rt.gate.restore(task, logic)
        self.opened = True

    # ------------------------------------------------------------------ one turn of a worker

    def step(self) -> bool:
        """Run one batch (or one record-pump step, a timer, feedback, the end):
        what a worker does when the scheduler hands it this unit.  Returns
        ``True`` when the unit has more work right now; failures propagate
        (the runtime ends the unit and applies the policy)."""
        rt = self.rt
        if self.mode is not None:
            return self._pump_step() if self.mode == "pump" else self._rec_in_step()
        if not self.opened:
            self.open()
        out = self.final
        if self.group is not None and self.group.ordered:
            assert self.group.shared_out is not None
            out = self.group.shared_out
            with self.group.lock:
                if out.pending():
                    out.flush()  # registers every replica as a waiter if still full
                    if out.pending():
                        return False
        elif out.pending():
            out.flush()
            if out.pending():
                return False
        if self.ending:
            return self.end_step()
        logics = self.logics
        if self.is_source:
            if rt._stop_sources:
                self.ending = True
                return True
            if rt.gate is not None and rt.gate.hold_source(self):
                return False  # a checkpoint barrier: pull nothing until it is recorded (it notifies)
            t0 = time.monotonic()
            self.enter(0)
            before = len(self.outs[0].ports[0])
            more = logics[0].pull(self.outs[0], self.limit)  # type: ignore[attr-defined]
            pulled = len(self.outs[0].ports[0]) - before
            self.stats[0].busy += time.monotonic() - t0  # [busy time]
            self.forward(0)
            self.adapt(pulled, time.monotonic() - t0)
            if not more:
                self.ending = True
                self.end_stage = 1
                return True
            return not out.pending()
        for i in range(len(logics)):
            if logics[i].has_feedback():
                t0 = time.monotonic()
                self.enter(i)
                logics[i].process_feedback(self.limit, self.outs[i])
                self.stats[i].busy += time.monotonic() - t0  # [busy time]
                if self.group is not None and self.group.ordered:
                    self.hand_over(self.ticket())
                else:
                    self.forward(i)
                return not self.out_blocked(out)
        if self.has_timer:
            now = time.monotonic()
            for i in range(len(logics)):
                d = logics[i].next_deadline()
                if d is not None and now >= d:
                    self.enter(i)
                    logics[i].tick(now, self.outs[i])
                    self.forward(i)
                    self.arm_timer()
                    return not self.out_blocked(out)
        assert self.inbox is not None
        group = self.group
        ticket = -1
        try:
            if group is not None and group.ordered:
                with group.lock:
                    batch = self.inbox.channel.pop_many(self.limit, 0)
                    ticket = group.next_ticket
                    group.next_ticket += 1
            else:
                batch = self.inbox.channel.pop_many(self.limit, 0)
        except Empty:
            self.arm_timer()
            return False
        except ChannelClosed:
            self.ending = True
            return True
        rt._wake_waiters(self.inbox)
        n = len(batch)
        stats = self.stats[0]
        stats.received += n
        t0 = time.monotonic()
        self.enter(0)
        logics[0].process(batch, self.outs[0])
        stats.busy += time.monotonic() - t0  # [busy time]
        if ticket >= 0:
            self.hand_over(ticket)
        else:
            self.forward(0)
        full = n == self.limit
        self.adapt(n, time.monotonic() - t0)
        self.arm_timer()
        if self.out_blocked(out):
            return False
        # A full batch means more may wait; a closed input must be popped again
        # to see its end (its close may have been announced before this pop).
        return full or self.inbox.channel.closed

    def adapt(self, n: int, spent: float) -> None:
        """Size the next batch from the last one (``n`` items in ``spent``
        seconds): a unit holds a worker for about ``budget`` seconds at most
        (plus one item), so a stop, a pause or the watchdog is seen within about
        that long, while fast functions grow to the full batch size."""
        # checkpoint barriers count items per batch of the pipeline's size
        cap = self.max_limit if self.rt.gate is None else self.head.batch_size
        budget = self.budget
        if spent > budget:
            self.limit = max(1, int(n * budget / spent))
        elif n >= self.limit and self.limit < cap and spent * 2 <= budget:
            self.limit = min(cap, self.limit * 2)

    # ------------------------------------------------------------------ record edges

    def _pump_step(self) -> bool:
        """A record pump through Python: its first run (open, then the worker
        loop steps it without the GIL), a status the worker loop handed over
        (a failing record, the end), a blocked dead-letter output, pause/abort."""
        rt = self.rt
        pump = self.pump
        if pump is None:
            self.open()
            task = self.head
            plugin = task.node.plugin  # type: ignore[attr-defined]
            src, dst = task.inbox, task.outputs[0]
            assert src is not None
            pump = PumpTask(rt._sched, src.channel, plugin.capsule, dst.channel, rt._rec_edges[id(src)],
                            rt._rec_edges[id(dst)], batch=RECORD_BATCH, budget=PUMP_BUDGET, owner=plugin.owner)
            self.logics[0] = PumpLogic(self.logics[0], pump, self.stats[0])
            self.pump = pump
            rt._sched.set_pump(self.index, pump)
        if self.finalized:
            return False
        logic = self.logics[0]
        assert isinstance(logic, PumpLogic)
        try:
            out = self.final  # dead letters only
            if out.pending():
                out.flush()
                if out.pending():
                    pump.python = True  # its consumer wakes it (a waiter), or the sweep does
                    return False
            status, pump.held = pump.held, -1
            if status < 0:
                status = pump.step()
            if status == PUMP_ERROR:
                self._pump_error(logic)
                if out.pending():
                    pump.python = True
                    return False
                pump.python = False
                return True
            if status == PUMP_END:
                rt._finalize(self, abandoned=False)
                return False
            if status == PUMP_CLOSED:
                raise Abort()  # only an abort closes a channel with live producers
            pump.python = False
            return status == PUMP_YIELD
        finally:
            logic.sync()

    def _pump_error(self, logic: PumpLogic) -> None:
        """A record failed in a pump: the node's error policy, with the record as the item."""
        import numpy as np

        from reflux_core.transform import RecordError

        pump = logic.pump
        node = self.head.node
        plugin = node.plugin  # type: ignore[attr-defined]
        raw = pump.error_record()
        assert raw is not None  # the pump reported a failed record
        record = np.frombuffer(raw, dtype=plugin.in_dtype).copy()[0]
        code = pump.error_code
        exc = RecordError(f"{node.label}: plug-in {plugin.name!r} failed on a record with error code "
                          f"{code}: {record!r:.120}", code=code, index=-1, record=record, node=node.label)
        logic.inner.fail(record, exc, 1, self.final)  # counts nothing the pump has not (sync)

    def _rec_in_step(self) -> bool:
        """A plug-in node whose input is a record edge and output is not: pop
        up to RECORD_BATCH records as one chunk and run the node's logic on it
        (counted in records)."""
        rt = self.rt
        if not self.opened:
            self.open()
            self.logics[0].records = True  # type: ignore[attr-defined]
        out = self.final
        if out.pending():
            out.flush()
            if out.pending():
                return False
        if self.ending:
            return self.end_step()
        assert self.inbox is not None
        ch = self.inbox.channel
        try:
            arr = ch.try_pop(RECORD_BATCH)
        except ChannelClosed:
            self.ending = True
            return True
        n = len(arr)
        if n == 0:
            return False
        rt._rec_edges[id(self.inbox)].wake(rt._sched)
        self.stats[0].received += n
        t0 = time.monotonic()
        self.logics[0].process([arr], self.outs[0])
        self.stats[0].busy += time.monotonic() - t0  # [busy time]
        self.forward(0)
        if out.pending():
            return False
        return n == RECORD_BATCH or ch.closed

    def forward(self, start: int) -> None:
        """Stage ``start`` wrote its outputs: run them through the
        stages after it (fused chains), then flush the unit's output."""
        outs = self.outs
        last = len(outs) - 1
        if start < last:
            # the per-batch path of every fused chain: locals, and one clock
            # read per stage (a stage's end is the next one's start)
            stats, logics, ctxs = self.stats, self.logics, self.ctxs
            monotonic = time.monotonic
            t0 = monotonic()
            for j in range(start, last):
                out = outs[j]
                if out.dead:
                    out.flush()  # dead-letter records, to the chain's shared output
                items = out.ports[0]
                if not items:
                    continue  # later stages may still hold feedback: handled in their own step
                # a fresh buffer for the stage: the logic that filled this one has
                # returned, so nothing holds it any more
                out.ports[0] = []
                n = len(items)
                stats[j].emitted += n
                out.sent_count += n  # type: ignore[attr-defined]
                nxt = stats[j + 1]
                nxt.received += n
                self.stage = j + 1  # blame and reflux.emit() go to this stage (enter(), inlined)
                CURRENT.ctx = ctxs[j + 1]
                logics[j + 1].process(items, outs[j + 1])
                t1 = monotonic()
                nxt.busy += t1 - t0  # [busy time] each stage its own logic's time
                t0 = t1
        outs[last].flush()

    def arm_timer(self) -> None:
        """Schedule a wake-up at the earliest deadline of its stages (Accumulator windows)."""
        rt = self.rt
        earliest = None
        for lg in self.logics:
            d = lg.next_deadline()
            if d is not None and (earliest is None or d < earliest):
                earliest = d
        if earliest is not None:
            self.has_timer = True
            if earliest != self.timer_at:
                self.timer_at = earliest
                rt._add_timer(self, earliest)

    def hand_over(self, ticket: int) -> None:
        """Ordered replicas: give this batch's outputs to the shared outbox in ticket order."""
        group = self.group
        assert group is not None and group.shared_out is not None
        priv = self.private
        parts = ([b[:] for b in priv.ports], priv.dead[:])
        for b in priv.ports:
            b.clear()
        priv.dead.clear()
        shared = group.shared_out
        with group.lock:
            group.done[ticket] = parts
            while group.next_out in group.done:
                ports, dead = group.done.pop(group.next_out)
                group.next_out += 1
                for dst, src in zip(shared.ports, ports):
                    dst.extend(src)
                shared.dead.extend(dead)
            if shared.pending():
                shared.flush()

    def end_step(self) -> bool:
        """Input ended: finish the stages in order (feedback first), then retire."""
        rt = self.rt
        logics = self.logics
        while self.end_stage < len(logics):
            i = self.end_stage
            lg = logics[i]
            self.enter(i)
            if lg.has_feedback():
                t0 = time.monotonic()
                lg.process_feedback(self.limit, self.outs[i])
                self.stats[i].busy += time.monotonic() - t0  # [busy time]
                if self.group is not None and self.group.ordered:
                    self.hand_over(self.ticket())
                    return True
                self.forward(i)
                return not self.final.pending()
            if self.group is not None and self.group.ordered:
                lg.finish(self.private)
                self.hand_over(self.ticket())
            else:
                lg.finish(self.outs[i])
                self.forward(i)
            self.end_stage += 1
            out = self.group.shared_out if self.group is not None and self.group.ordered else self.final
            if out is not None and self.out_blocked(out):
                return False
        rt._finalize(self, abandoned=False)
        return False

    def ticket(self) -> int:
        group = self.group
        assert group is not None
        with group.lock:
            t = group.next_ticket
            group.next_ticket += 1
            return t
