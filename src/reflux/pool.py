"""The worker-pool runtime: a fixed pool of threads runs any number of nodes.

It executes a :class:`~reflux.pipeline.Plan` as a set of *units*.  A unit is
one node, one replica of a node (``parallel=N``), or a chain of nodes fused
into one (see :func:`fuse_chains`).  A unit is *runnable* when its input holds
items (or has ended), when it has fed-back work or a due timer, or when an
output it was blocked on has room again.  A worker takes a runnable unit from
the ready queue, runs it for **one batch** and goes back to the queue, so no
unit can hold a worker for long and none starves (the queue is FIFO).

Scheduling is notification-driven; nothing polls the channels:

* a unit that pushes into a channel *notifies* the channel's consumer;
* a unit whose output channel is full keeps the rest of its output in its
  outbox, registers as a *waiter* on that channel and gives the worker back;
  the consumer notifies it after its next pop;
* each unit has a state (``IDLE``, ``QUEUED``, ``RUNNING``, ``RERUN``,
  ``DONE``), changed by atomic compare-and-swap in the core
  (:mod:`reflux_core._sched`), so a unit is in the ready queue at most once,
  and a notification that arrives while it runs (``RERUN``) makes it run
  again instead of being lost.

The ready queue is an MPMC record channel of unit indices, and the worker
loop itself is Cython in the core (:func:`reflux_core._sched.worker_loop`):
idle workers park in the queue with the GIL released (no CPU while the
pipeline waits) and wake within microseconds of a push; the GIL is taken
only to run a unit's batch.  Workers also wake every
``poll`` seconds to fire due timers (Accumulator windows), re-check units
blocked on full outputs (a safety net: a missed wake-up costs at most one
``poll``, never a hang) and see stop/pause flags.

Record edges (``Inbox.records``, made by :meth:`Pipeline.compile` between two
plug-in nodes): a unit whose input and output are record channels is a
*record pump* (:class:`reflux_core._sched.PumpTask`) that the core's worker
loop steps without the GIL, notifying and waking its neighbours through a
:class:`~reflux_core._sched.RecordEdge`; it comes back here (:meth:`PoolRuntime._pump_step`)
only to open, for a failing record (the node's error policy), at its end, and
on pause/abort.  A plug-in node with an object input and a record output
pushes its chunks' records (:class:`_RecordOutbox`); one with a record input
and an object output pops records as a chunk (:meth:`PoolRuntime._rec_in_step`).
A node counts in its input's unit (chunks or records), an edge in its
receiver's.

Extractors over sized collections (or with ``batch_size`` set, which says
the source never blocks) run on the pool; Extractors that may block in user
code (iterators, generators, callables, async sources) get a thread of their
own, and are not fused, so a blocking source never holds a pool worker.

Python node logic runs with the GIL held, one batch per call; correctness of
the scheduler itself does not depend on the GIL (its shared state is changed
under ``_lock``; counters are per unit).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from reflux_core._sched import PUMP_CLOSED, PUMP_END, PUMP_ERROR, PUMP_YIELD, PumpTask, RecordEdge, Scheduler, worker_loop
from reflux_core.channel import ChannelClosed, Empty, Full

from .errors import ErrorRecord
from .nodes import Abort, Extractor, Filter, Loader, NodeFailure, NodeLogic, Outbox, Transformer
from .pipeline import Inbox, Plan, Task
from .result import NodeStats, RunResult
from .runtime import BATCH_BUDGET, InboxOutbox, RuntimeBase, _Context, _drop_inputs

__all__ = ["PoolRuntime", "default_workers", "fuse_chains"]

logger = logging.getLogger("reflux")


#: a flat-map stage may hold this many batches of output while its receiver is full
#: before it waits for room (with a spare worker standing in for it meanwhile)
HOLD_BATCHES = 8
#: seconds a worker may keep running the same unit while no other unit is ready
LOCAL_RUN = 0.01
#: records a record pump moves per plug-in call, and a node with a record input takes per batch
RECORD_BATCH = 1024
#: seconds a record pump works in one step before its worker checks the ready queue
PUMP_BUDGET = 0.005


def default_workers() -> int:
    """Worker threads a pipeline uses by default: the CPUs this process may run
    on, and at least 2 (so one node stuck in user code never leaves the pool,
    and the watchdog the workers drive, without a thread)."""
    try:
        return max(2, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(2, os.cpu_count() or 1)


# --------------------------------------------------------------------------- fusion

def _may_block(task: Task) -> bool:
    """An Extractor whose source may block (iterator, generator, callable, async
    source without ``batch_size``): it gets a thread of its own, unfused."""
    node = task.node
    return node.is_source and node.mode != "sized" and node.batch_size is None  # type: ignore[attr-defined]


def _fusable(task: Task) -> bool:
    node = task.node
    if _may_block(task):
        return False
    if (task.inbox is not None and task.inbox.records) or any(b.records for b in task.outputs):
        return False  # a record edge: records go through a RecordChannel, never fused
    if getattr(node, "parallel", 1) != 1 or not getattr(node, "fuse", True):
        return False
    if isinstance(node, Transformer):
        return not node.flat and getattr(node, "executor", "thread") == "thread"
    return isinstance(node, (Filter, Extractor, Loader))


def fuse_chains(plan: Plan) -> list[list[Task]]:
    """Group the plan's tasks into chains that run as one unit.

    Two neighbours are fused when the first has exactly one receiver, the
    second exactly one sender, both are plain Python stages (an Extractor may
    head a chain and a Loader end it; Transformers that are not flat-maps and
    Filters may sit anywhere), neither runs replicas, and both send their
    dead-letter records to the same place.  Items then go from stage to stage
    as a list, without a channel; every node keeps its own counters.
    """
    by_box: dict[int, Task] = {id(t.inbox): t for t in plan.tasks if t.inbox is not None}
    senders: dict[int, int] = {}
    for t in plan.tasks:
        for box in {id(b): b for b in t.outputs + ([t.dead_letter] if t.dead_letter else [])}.values():
            senders[id(box)] = senders.get(id(box), 0) + 1
    nxt: dict[int, Task] = {}
    has_prev: set[int] = set()
    for t in plan.tasks:
        if not plan.fuse or len(t.outputs) != 1 or t.node.is_sink or not _fusable(t):
            continue
        box = t.outputs[0]
        succ = by_box.get(id(box))
        if succ is None or succ.node.is_source or not _fusable(succ):
            continue
        if senders.get(id(box), 0) != 1 or box.producers != 1:
            continue
        if t.dead_letter is not succ.dead_letter:
            continue
        if any(box is t2.dead_letter for t2 in plan.tasks):
            continue
        nxt[id(t)] = succ
        has_prev.add(id(succ))
    chains = []
    for t in plan.tasks:
        if id(t) in has_prev:
            continue
        chain = [t]
        while id(chain[-1]) in nxt:
            chain.append(nxt[id(chain[-1])])
        chains.append(chain)
    return chains


# --------------------------------------------------------------------------- outboxes

class _ForwardOutbox(Outbox):
    """Output of a fused stage.  Its items are handed to the next stage by the
    runtime (:meth:`PoolRuntime._forward`, a loop, so a chain of any length
    needs no recursion); a flush only moves dead-letter records to the
    chain's shared dead-letter output."""

    def __init__(self, unit: _Unit, index: int, limit: int) -> None:
        super().__init__(1, limit)
        self.unit = unit
        self.index = index
        self.sent_count = 0

    def flush(self) -> None:
        if self.dead:
            # the fused chain shares one dead-letter output (counted per record's node)
            final = self.unit.final
            final.dead.extend(self.dead)
            self.dead.clear()
            if len(final.dead) >= final.limit:
                final.flush()

    def discard(self) -> int:
        n = len(self.ports[0])
        self.ports[0].clear()
        return n


class _PoolOutbox(InboxOutbox):
    """Output of a unit into channels.  :meth:`flush` never blocks: what does
    not fit stays buffered, the unit registers as a waiter on the full channel
    and takes no new input until it is flushed."""

    def __init__(self, rt: PoolRuntime, unit: _Unit, task: Task, stats: NodeStats) -> None:
        super().__init__(task)
        self.rt = rt
        self.unit = unit
        self.stats = stats
        #: dead-letter records pushed, by the node that made them (a fused chain shares the output)
        self.dead_sent: dict[str, int] = {}
        self.blocking = False  # a source thread's outbox waits for room instead
        #: the units to wake when a full receiver has room again
        self.waiters = [unit]

    def emit(self, item: Any, port: int = 0) -> None:
        buf = self.ports[port]
        buf.append(item)
        n = len(buf)
        if n >= self.limit and n % self.limit == 0:
            self.flush()
            if len(buf) >= self.limit * HOLD_BATCHES:
                self.rt._wait_for_room(self)

    def dead_letter(self, record: ErrorRecord) -> None:
        self.dead.append(record)
        if len(self.dead) >= self.limit:
            self.flush()

    def pending(self) -> bool:
        """Items wait in the buffers (the unit is blocked on a full receiver)."""
        if self.dead:
            return True
        for b in self.ports:
            if b:
                return True
        return False

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        ch = box.channel
        rt = self.rt
        pushed = 0
        try:
            if self.blocking:
                # Push what fits and tell the consumer at once; wait for room
                # one item at a time (a consumer that is not told about the
                # items already in its channel would never make that room).
                while buf:
                    try:
                        n = ch.push_many(buf, 0)
                    except Full:
                        n = 0
                        try:
                            ch.push(buf[0], rt.poll)
                            n = 1
                        except Full:
                            pass
                    if n:
                        self._count(buf, n, port)
                        del buf[:n]
                        pushed += n
                        rt._notify_box(box)
                    if buf and rt._aborted:
                        raise Abort()
                return
            if len(buf) == 1:
                if ch.try_push(buf[0]):
                    self._count(buf, 1, port)
                    buf.clear()
                    pushed = 1
            else:
                try:
                    pushed = ch.push_many(buf, 0)
                except Full:
                    pushed = 0
                if pushed:
                    self._count(buf, pushed, port)
                    del buf[:pushed]
            if buf:
                # Register, then try once more: the consumer may have made room
                # between the failed push and the registration.
                rt._add_waiter(box, self.waiters)
                try:
                    n = ch.push_many(buf, 0)
                except Full:
                    n = 0
                if n:
                    self._count(buf, n, port)
                    del buf[:n]
                    pushed += n
            if pushed:
                rt._notify_box(box)
        except ChannelClosed:
            # only an abort closes a channel that still has live producers
            raise Abort() from None
        finally:
            if port >= 0:
                self.stats.emitted += pushed
                self.sent_per_port[port] += pushed

    def _count(self, buf: list[Any], n: int, port: int) -> None:
        """Count dead-letter records about to leave the buffer, by their node."""
        if port < 0:
            sent = self.dead_sent
            for r in buf[:n]:
                sent[r.node] = sent.get(r.node, 0) + 1

class _RecordOutbox(_PoolOutbox):
    """Output of a plug-in node into a record edge: its chunks go into the
    RecordChannel record by record, never blocking (what does not fit stays
    here, the unit tells the edge it waits for room: see
    :class:`~reflux_core._sched.RecordEdge`).  ``emitted`` counts the chunks
    that went out whole (the node counts chunks, its input's unit); the
    edge counts records (its receiver's unit)."""

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        if port < 0 or not box.records:
            super()._push(box, buf, port)
            return
        import numpy as np

        ch = box.channel
        rt = self.rt
        edge = rt._rec_edges[id(box)]
        sent = chunks = 0
        told = False
        try:
            while buf:
                arr = np.asarray(buf[0])
                if arr.ndim == 0:
                    arr = arr.reshape(1)
                if self.blocking:
                    try:
                        n = ch.push(arr, rt.poll)
                    except Full:
                        n = 0
                else:
                    n = ch.try_push(arr)
                if n:
                    sent += n
                    rt._notify_box(box)
                if n == len(arr):
                    del buf[0]
                    chunks += 1
                    continue
                if n:
                    buf[0] = arr[n:]
                if self.blocking:
                    if rt._aborted:
                        raise Abort()
                    continue
                if told:
                    break
                edge.block()  # then try once more: the consumer may have popped meanwhile
                told = True
        except ChannelClosed:
            raise Abort() from None  # only an abort closes a channel with live producers
        finally:
            self.stats.emitted += chunks
            self.sent_per_port[port] += sent


def _records_in(item: Any) -> int:
    return len(item) if getattr(item, "ndim", 0) == 1 else 1


class _CountRecordsOutbox(_PoolOutbox):
    """Output of a plug-in node whose input is a record edge: it counts in
    records (``emitted``: records of the chunks it sent; the edges out of it
    count chunks, its receivers' unit)."""

    def _count(self, buf: list[Any], n: int, port: int) -> None:
        if port >= 0:
            self.stats.emitted += sum(_records_in(x) for x in buf[:n]) - n  # _push adds n
        else:
            super()._count(buf, n, port)

    def discard(self) -> int:
        n = sum(_records_in(x) for b in self.ports for x in b)
        for b in self.ports:
            b.clear()
        self.dead.clear()
        return n


class _PumpLogic(NodeLogic):
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


# --------------------------------------------------------------------------- units

class _Group:
    """The replicas of one node (``parallel=N``): their shared input, their
    pop order and (with ``ordered=True``) the reordering of their outputs."""

    def __init__(self, task: Task, ordered: bool) -> None:
        self.task = task
        self.ordered = ordered
        self.lock = threading.Lock()
        self.units: list[_Unit] = []
        self.next_ticket = 0
        self.next_out = 0
        self.done: dict[int, tuple[list[list[Any]], list[ErrorRecord]]] = {}
        self.shared_out: _PoolOutbox | None = None  # ordered: the one outbox every replica feeds


class _Unit:
    """One schedulable thing: a chain of fused tasks, or one replica of a task."""

    def __init__(self, rt: PoolRuntime, tasks: list[Task], replica: int = 0,
                 group: _Group | None = None) -> None:
        self.tasks = tasks
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
                for f in ("received", "emitted", "filtered", "errors", "dropped", "retried", "fed_back"):
                    setattr(s, f, 0)
        self.ctxs = [_Context(rt, s) for s in self.stats]  # type: ignore[arg-type]
        self.logics: list[NodeLogic] = []
        self.final = _PoolOutbox(rt, self, self.tail, self.stats[-1])
        self.outs: list[Outbox] = [_ForwardOutbox(self, i, t.batch_size) for i, t in enumerate(tasks[:-1])]
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
        self.limit = self.head.batch_size
        self.is_source = self.head.node.is_source
        self.has_timer = False
        self.timer_at: float | None = None
        #: "pump" (record input and output), "rec_in" (record input), or None
        self.mode: str | None = None
        self.pump: PumpTask | None = None


class PoolRuntime(RuntimeBase):
    """Runs a :class:`~reflux.pipeline.Plan` on a fixed pool of worker threads."""

    def __init__(self, plan: Plan, *, workers: int | None = None, max_error_records: int = 1000,
                 poll: float = 0.1) -> None:
        super().__init__(plan, max_error_records=max_error_records, poll=poll)
        self.n_workers = workers or default_workers()
        #: [monitor hook] called by the workers every ``poll`` (the watchdog's check)
        self.on_tick: Callable[[], None] | None = None
        self._threads: list[threading.Thread] = []
        self._source_threads: dict[str, threading.Thread] = {}
        self._running: dict[int, _Unit] = {}  # thread ident -> unit it runs now
        self._timers: list[tuple[float, int, _Unit]] = []
        self._timer_seq = itertools.count()
        self._waiters: dict[int, set[_Unit]] = {}
        self._spares = 0
        self._waiting_for_room = 0
        self._build_units()
        for i, u in enumerate(self.units):
            u.index = i
        self._sched = Scheduler(len(self.units))
        self._build_record_edges()
        self._last_sweep = time.monotonic()
        self._live = len(plan.tasks)
        #: pool units not finalized; at 0 the workers have nothing left to do
        self._pool_live = sum(1 for u in self.units if not u.threaded)

    # ------------------------------------------------------------------ set-up

    def _build_units(self) -> None:
        self.units: list[_Unit] = []
        self._consumers: dict[int, list[_Unit]] = {}
        self._groups: dict[str, _Group] = {}
        self._unit_of: dict[str, list[_Unit]] = {}
        for chain in fuse_chains(self.plan):
            node = chain[0].node
            n = getattr(node, "parallel", 1) if len(chain) == 1 else 1
            if n > 1:
                group = _Group(chain[0], bool(getattr(node, "ordered", False)))
                self._groups[chain[0].name] = group
                units = [_Unit(self, chain, i, group) for i in range(n)]
                group.units = units
                if group.ordered:
                    group.shared_out = _PoolOutbox(self, units[0], chain[0], group.units[0].stats[-1])
                    group.shared_out.waiters = list(units)  # any replica may flush it
            else:
                units = [_Unit(self, chain)]
            for u in units:
                u.threaded = _may_block(u.head)
                self.units.append(u)
                if u.inbox is not None:
                    self._consumers.setdefault(id(u.inbox), []).append(u)
                for t in chain:
                    self._unit_of.setdefault(t.name, []).append(u)
        # how many units feed each channel (it ends when the last of them ends)
        self._open_producers: dict[int, int] = {id(b): 0 for b in self.plan.inboxes}
        for u in self.units:
            boxes = {id(b): b for b in u.tail.outputs}
            if u.tail.dead_letter is not None:
                boxes[id(u.tail.dead_letter)] = u.tail.dead_letter
            for t in u.tasks[:-1]:
                if t.dead_letter is not None:
                    boxes[id(t.dead_letter)] = t.dead_letter
            for key in boxes:
                self._open_producers[key] += 1
        self._unit_outputs = {}
        for u in self.units:
            boxes = {id(b): b for b in u.tail.outputs}
            for t in u.tasks:
                if t.dead_letter is not None:
                    boxes[id(t.dead_letter)] = t.dead_letter
            self._unit_outputs[id(u)] = list(boxes.values())

    def _build_record_edges(self) -> None:
        """Record edges (``Inbox.records``): who produces and consumes each, and
        the outboxes and step modes of the units on them."""
        self._rec_edges: dict[int, RecordEdge] = {}
        for box in self.plan.inboxes:
            if box.records:
                prods = [u.index for u in self.units if any(b is box for b in self._unit_outputs[id(u)])]
                cons = [u.index for u in self._consumers.get(id(box), ())]
                self._rec_edges[id(box)] = RecordEdge(prods, cons)
        for u in self.units:
            rec_out = any(b.records for b in u.tail.outputs)
            if u.inbox is not None and u.inbox.records:
                u.mode = "pump" if rec_out else "rec_in"
            if u.mode == "rec_in":
                u.final = _CountRecordsOutbox(self, u, u.tail, u.stats[-1])
            elif rec_out and u.mode is None:
                u.final = _RecordOutbox(self, u, u.tail, u.stats[-1])
            else:
                continue
            u.outs[-1] = u.final

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the worker threads and the threads of blocking sources."""
        for box in self.plan.inboxes:
            if self._open_producers[id(box)] == 0:
                box.channel.close()
        try:
            for i in range(self.n_workers):
                self._spawn_worker(f"reflux:{self.plan.name}:worker-{i}", spare=False)
            for u in self.units:
                if u.threaded:
                    u.final.blocking = True
                    t = threading.Thread(target=self._run_source_thread, args=(u,), daemon=True,
                                         name=f"reflux:{self.plan.name}:{u.name}")
                    self._source_threads[u.head.name] = t
                    t.start()
            for u in self.units:
                if not u.threaded:
                    self._notify(u)
        except BaseException:
            self.abort()
            for t in self._threads + list(self._source_threads.values()):
                if t.ident is not None:
                    t.join(self.poll * 20)
            raise

    def _spawn_worker(self, name: str, spare: bool) -> None:
        t = threading.Thread(target=self._worker, args=(spare,), daemon=True, name=name)
        self._threads.append(t)
        t.start()

    def stop_sources(self) -> None:
        """Make the Extractors end (everything extracted still flows to the end)."""
        super().stop_sources()
        for u in self.units:
            if u.is_source and not u.threaded:
                self._notify(u)

    def abort(self) -> None:
        """Abandon the run: release every waiting unit and end them all."""
        self._sched.set_hold(True)  # record pumps go through Python, which ends them
        super().abort()
        for u in self.units:
            if not u.threaded:
                self._notify(u)

    def pause(self) -> None:
        """Hold every unit between batches."""
        if self._aborted or self._stop_sources:
            return
        super().pause()
        self._sched.set_hold(True)

    def resume(self) -> None:
        """Let paused units go on."""
        super().resume()
        self._sched.set_hold(self._aborted)

    def threads(self) -> int:
        """Threads this runtime has started (workers, spares and source threads)."""
        return len(self._threads) + len(self._source_threads)

    def join_threads(self, timeout: float, source_timeout: float = 1.0) -> list[str]:
        """Join every thread (``timeout`` seconds at most in all); returns the
        names of the nodes still running in a thread that did not end."""
        deadline = time.monotonic() + timeout
        stuck: list[str] = []
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                u = self._running.get(t.ident or 0)
                if u is not None:
                    stuck.extend(task.name for task in u.tasks)
        source_deadline = min(deadline, time.monotonic() + source_timeout)
        for name, t in self._source_threads.items():
            t.join(max(0.0, source_deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(name)
        if not stuck:
            # units nobody ran since an abort (all workers gone): finalize here
            for u in self.units:
                if not u.finalized and not u.threaded:
                    self._finalize(u, abandoned=True)
        return stuck

    # ------------------------------------------------------------------ scheduling

    def _notify(self, u: _Unit) -> None:
        """``u`` may have work: queue it (once), or make it run again if it is running."""
        if not u.threaded:
            self._sched.notify(u.index)

    def _notify_box(self, box: Inbox) -> None:
        for c in self._consumers.get(id(box), ()):
            self._notify(c)

    def _add_waiter(self, box: Inbox, units: list[_Unit]) -> None:
        with self._lock:
            self._waiters.setdefault(id(box), set()).update(units)

    def _wake_waiters(self, box: Inbox) -> None:
        """After a pop made room in ``box``: notify the units blocked on it."""
        if not self._waiters.get(id(box)):
            return
        with self._lock:
            units = self._waiters.pop(id(box), ())
        for u in units:
            self._notify(u)

    def _add_timer(self, u: _Unit, deadline: float) -> None:
        with self._lock:
            heapq.heappush(self._timers, (deadline, next(self._timer_seq), u))

    def _due_timers(self) -> float:
        """Notify units whose timer is due; returns seconds to the next timer (or ``poll``)."""
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            wait = self._timers[0][0] - now if self._timers else self.poll
        for u in due:
            self._notify(u)
        return max(0.0, min(self.poll, wait))

    def _wait_for_room(self, out: _PoolOutbox) -> None:
        """A flat-map stage holds too much output: wait for its receiver to take
        some, with a spare worker standing in so the pool keeps running."""
        with self._lock:
            self._waiting_for_room += 1
            spawn = self._waiting_for_room > self._spares
            if spawn:
                self._spares += 1
        if spawn:
            self._spawn_worker(f"reflux:{self.plan.name}:spare-{self._spares}", spare=True)
        try:
            out.blocking = True
            out.flush()
        finally:
            out.blocking = False
            with self._lock:
                self._waiting_for_room -= 1

    # ------------------------------------------------------------------ workers

    def _worker(self, spare: bool) -> None:
        """A pool thread: the core's worker loop, with this runtime's step and idle hooks."""
        worker_loop(self._sched, partial(self._run_unit, spare), partial(self._idle, spare), self.poll)

    def _idle(self, spare: bool) -> float:
        """A worker timed out waiting: sweep, fire timers; the next timeout (< 0: end a spare)."""
        self._sweep()
        if spare and self._spare_surplus():
            return -1.0
        return self._due_timers() if self._timers else self.poll

    def _run_unit(self, spare: bool, index: int) -> int:
        """Run unit ``index`` (marked RUNNING by the scheduler) for a batch, or
        several while nothing else is ready.  Returns 1 if it has more work,
        plus 2 if this (spare) worker should end."""
        u = self.units[index]
        if self._paused and not self._aborted:
            while self._paused and not self._aborted:
                self._resumed.wait(self.poll)
        ident = threading.get_ident()
        self._running[ident] = u
        more = False
        try:
            if self._aborted:
                self._finalize(u, abandoned=True)
            else:
                more = self._run_step(u)
                # Nothing else is waiting: go on with the same unit here rather
                # than through the queue, which would wake another worker only
                # to hand it the GIL (tens of µs a batch).  Bounded in time so
                # timers and sweeps still run.
                if more and self._sched.queued() == 0 and u.mode != "pump":  # a pump goes on without the GIL
                    sched = self._sched
                    until = time.monotonic() + LOCAL_RUN
                    while (not u.finalized and not self._paused and not self._aborted
                           and sched.queued() == 0 and sched.again(index)):
                        more = self._run_step(u)
                        if not more or time.monotonic() >= until:
                            break
        finally:
            self._running.pop(ident, None)
        if self._timers:
            self._due_timers()
        now = time.monotonic()
        if now - self._last_sweep >= self.poll:
            self._last_sweep = now
            self._sweep()
        if spare and self._spare_surplus():
            return int(more) | 2
        return int(more)

    def _spare_surplus(self) -> bool:
        with self._lock:
            if self._spares > self._waiting_for_room:
                self._spares -= 1
                return True
        return False

    def _sweep(self) -> None:
        """Every ``poll``: notify units blocked on a full output (a safety net),
        and give the clogging watchdog its turn."""
        for u in self.units:
            if not u.finalized and not u.threaded and (u.final.pending()
                                                        or (u.pump is not None and u.pump.pending)):
                self._notify(u)
        tick = self.on_tick
        if tick is not None:
            tick()

    def _run_step(self, u: _Unit) -> bool:
        """Run one batch of ``u``; returns ``True`` if it has more work right now.
        Failures end the unit (and, under ``"raise"``, the run)."""
        abandoned = False
        try:
            return self._step(u)
        except Abort:
            abandoned = True
        except NodeFailure as f:
            abandoned = True
            self._fail(f.record)
        except BaseException as exc:  # a hook or reflux itself failed: fail the run
            abandoned = True
            name = u.tasks[0].name
            self._fail(ErrorRecord.from_exception(name, None, exc))
        self._finalize(u, abandoned=abandoned)
        return False

    def _open(self, u: _Unit) -> None:
        """Make and open the logic of every stage of ``u``."""
        for i, task in enumerate(u.tasks):
            logic = task.node.make_logic(u.ctxs[i], len(task.outputs), task.port_names)
            u.logics.append(logic)
            logic.open()
        u.opened = True

    def _step(self, u: _Unit) -> bool:
        if u.mode is not None:
            return self._pump_step(u) if u.mode == "pump" else self._rec_in_step(u)
        if not u.opened:
            self._open(u)
        out = u.final
        if u.group is not None and u.group.ordered:
            assert u.group.shared_out is not None
            out = u.group.shared_out
            with u.group.lock:
                if out.pending():
                    out.flush()  # registers every replica as a waiter if still full
                    if out.pending():
                        return False
        elif out.pending():
            out.flush()
            if out.pending():
                return False
        if u.ending:
            return self._end_step(u)
        logics = u.logics
        if u.is_source:
            if self._stop_sources:
                u.ending = True
                return True
            t0 = time.monotonic()
            more = logics[0].pull(u.outs[0], u.head.batch_size)  # type: ignore[attr-defined]
            u.stats[0].busy += time.monotonic() - t0  # [busy time]
            self._forward(u, 0)
            if not more:
                u.ending = True
                u.end_stage = 1
                return True
            return not out.pending()
        for i in range(len(logics)):
            if logics[i].has_feedback():
                t0 = time.monotonic()
                logics[i].process_feedback(u.tasks[i].batch_size, u.outs[i])
                u.stats[i].busy += time.monotonic() - t0  # [busy time]
                if u.group is not None and u.group.ordered:
                    self._hand_over(u, self._ticket(u))
                else:
                    self._forward(u, i)
                return not out.pending()
        if u.has_timer:
            now = time.monotonic()
            for i in range(len(logics)):
                d = logics[i].next_deadline()
                if d is not None and now >= d:
                    logics[i].tick(now, u.outs[i])
                    self._forward(u, i)
                    self._arm_timer(u)
                    return not out.pending()
        assert u.inbox is not None
        group = u.group
        ticket = -1
        try:
            if group is not None and group.ordered:
                with group.lock:
                    batch = u.inbox.channel.pop_many(u.limit, 0)
                    ticket = group.next_ticket
                    group.next_ticket += 1
            else:
                batch = u.inbox.channel.pop_many(u.limit, 0)
        except Empty:
            self._arm_timer(u)
            return False
        except ChannelClosed:
            u.ending = True
            return True
        self._wake_waiters(u.inbox)
        n = len(batch)
        stats = u.stats[0]
        stats.received += n
        t0 = time.monotonic()
        logics[0].process(batch, u.outs[0])
        stats.busy += time.monotonic() - t0  # [busy time]
        if ticket >= 0:
            self._hand_over(u, ticket)
        else:
            self._forward(u, 0)
        spent = time.monotonic() - t0
        # Slow items get smaller batches, so one unit holds a worker for about
        # BATCH_BUDGET seconds at most (plus one item).
        if spent > BATCH_BUDGET:
            u.limit = max(1, int(n * BATCH_BUDGET / spent))
        elif u.limit < u.head.batch_size and n == u.limit:
            u.limit = min(u.head.batch_size, u.limit * 2)
        self._arm_timer(u)
        if out.pending():
            return False
        # A full batch means more may wait; a closed input must be popped again
        # to see its end (its close may have been announced before this pop).
        return n == u.limit or u.inbox.channel.closed

    # ------------------------------------------------------------------ record edges

    def _pump_step(self, u: _Unit) -> bool:
        """A record pump through Python: its first run (open, then the worker
        loop steps it without the GIL), a status the worker loop handed over
        (a failing record, the end), a blocked dead-letter output, pause/abort."""
        pump = u.pump
        if pump is None:
            self._open(u)
            task = u.head
            plugin = task.node.plugin  # type: ignore[attr-defined]
            src, dst = task.inbox, task.outputs[0]
            assert src is not None
            pump = PumpTask(self._sched, src.channel, plugin.capsule, dst.channel, self._rec_edges[id(src)],
                            self._rec_edges[id(dst)], batch=RECORD_BATCH, budget=PUMP_BUDGET, owner=plugin.owner)
            u.logics[0] = _PumpLogic(u.logics[0], pump, u.stats[0])
            u.pump = pump
            self._sched.set_pump(u.index, pump)
        if u.finalized:
            return False
        logic = u.logics[0]
        assert isinstance(logic, _PumpLogic)
        try:
            out = u.final  # dead letters only
            if out.pending():
                out.flush()
                if out.pending():
                    pump.python = True  # its consumer wakes it (a waiter), or the sweep does
                    return False
            status, pump.held = pump.held, -1
            if status < 0:
                status = pump.step()
            if status == PUMP_ERROR:
                self._pump_error(u, logic)
                if out.pending():
                    pump.python = True
                    return False
                pump.python = False
                return True
            if status == PUMP_END:
                self._finalize(u, abandoned=False)
                return False
            if status == PUMP_CLOSED:
                raise Abort()  # only an abort closes a channel with live producers
            pump.python = False
            return status == PUMP_YIELD
        finally:
            logic.sync()

    def _pump_error(self, u: _Unit, logic: _PumpLogic) -> None:
        """A record failed in a pump: the node's error policy, with the record as the item."""
        import numpy as np

        from reflux_core.transform import RecordError

        pump = logic.pump
        node = u.head.node
        plugin = node.plugin  # type: ignore[attr-defined]
        record = np.frombuffer(pump.error_record(), dtype=plugin.in_dtype).copy()[0]
        code = pump.error_code
        exc = RecordError(f"{node.label}: plug-in {plugin.name!r} failed on a record with error code "
                          f"{code}: {record!r:.120}", code=code, index=-1, record=record, node=node.label)
        logic.inner.fail(record, exc, 1, u.final)  # counts nothing the pump has not (sync)

    def _rec_in_step(self, u: _Unit) -> bool:
        """A plug-in node whose input is a record edge and output is not: pop
        up to RECORD_BATCH records as one chunk and run the node's logic on it
        (counted in records)."""
        if not u.opened:
            self._open(u)
            u.logics[0].records = True  # type: ignore[attr-defined]
        out = u.final
        if out.pending():
            out.flush()
            if out.pending():
                return False
        if u.ending:
            return self._end_step(u)
        assert u.inbox is not None
        ch = u.inbox.channel
        try:
            arr = ch.try_pop(RECORD_BATCH)
        except ChannelClosed:
            u.ending = True
            return True
        n = len(arr)
        if n == 0:
            return False
        self._rec_edges[id(u.inbox)].wake(self._sched)
        u.stats[0].received += n
        t0 = time.monotonic()
        u.logics[0].process([arr], u.outs[0])
        u.stats[0].busy += time.monotonic() - t0  # [busy time]
        self._forward(u, 0)
        if out.pending():
            return False
        return n == RECORD_BATCH or ch.closed

    def _forward(self, u: _Unit, start: int) -> None:
        """Stage ``start`` of ``u`` wrote its outputs: run them through the
        stages after it (fused chains), then flush the unit's output."""
        outs = u.outs
        last = len(outs) - 1
        for j in range(start, last):
            out = outs[j]
            out.flush()  # dead-letter records
            buf = out.ports[0]
            if not buf:
                continue  # later stages may still hold feedback: handled in their own step
            # a fresh buffer for the stage: the logic that filled this one has
            # returned, so nothing holds it any more
            out.ports[0] = []
            items = buf
            n = len(items)
            u.stats[j].emitted += n
            out.sent_count += n  # type: ignore[attr-defined]
            u.stats[j + 1].received += n
            t0 = time.monotonic()
            u.logics[j + 1].process(items, outs[j + 1])
            u.stats[j + 1].busy += time.monotonic() - t0  # [busy time] each stage its own logic's time
        outs[last].flush()

    def _arm_timer(self, u: _Unit) -> None:
        """Schedule a wake-up of ``u`` at the earliest deadline of its stages (Accumulator windows)."""
        earliest = None
        for lg in u.logics:
            d = lg.next_deadline()
            if d is not None and (earliest is None or d < earliest):
                earliest = d
        if earliest is not None:
            u.has_timer = True
            if earliest != u.timer_at:
                u.timer_at = earliest
                self._add_timer(u, earliest)

    def _hand_over(self, u: _Unit, ticket: int) -> None:
        """Ordered replicas: give this batch's outputs to the shared outbox in ticket order."""
        group = u.group
        assert group is not None and group.shared_out is not None
        priv = u.private
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

    def _end_step(self, u: _Unit) -> bool:
        """Input ended: finish the stages in order (feedback first), then retire."""
        logics = u.logics
        while u.end_stage < len(logics):
            i = u.end_stage
            lg = logics[i]
            if lg.has_feedback():
                t0 = time.monotonic()
                lg.process_feedback(u.tasks[i].batch_size, u.outs[i])
                u.stats[i].busy += time.monotonic() - t0  # [busy time]
                if u.group is not None and u.group.ordered:
                    self._hand_over(u, self._ticket(u))
                    return True
                self._forward(u, i)
                return not u.final.pending()
            if u.group is not None and u.group.ordered:
                lg.finish(u.private)
                self._hand_over(u, self._ticket(u))
            else:
                lg.finish(u.outs[i])
                self._forward(u, i)
            u.end_stage += 1
            out = u.group.shared_out if u.group is not None and u.group.ordered else u.final
            if out is not None and out.pending():
                return False
        self._finalize(u, abandoned=False)
        return False

    def _ticket(self, u: _Unit) -> int:
        group = u.group
        assert group is not None
        with group.lock:
            t = group.next_ticket
            group.next_ticket += 1
            return t

    # ------------------------------------------------------------------ source threads

    def _run_source_thread(self, u: _Unit) -> None:
        """A source that may block in user code: pull and push (waiting for room) in its own thread."""
        abandoned = False
        try:
            self._open(u)
            logic = u.logics[0]
            batch = u.head.batch_size
            while True:
                if self._paused:
                    while self._paused and not self._aborted:
                        self._resumed.wait(self.poll)
                if self._aborted:
                    raise Abort()
                if self._stop_sources:
                    break
                t0 = time.monotonic()
                more = logic.pull(u.outs[0], batch)  # type: ignore[attr-defined]
                u.stats[0].busy += time.monotonic() - t0  # [busy time] (the blocking flush is not busy)
                self._forward(u, 0)
                if not more:
                    break
            for i in range(1, len(u.logics)):
                while u.logics[i].has_feedback():
                    u.logics[i].process_feedback(u.tasks[i].batch_size, u.outs[i])
                    self._forward(u, i)
                u.logics[i].finish(u.outs[i])
                self._forward(u, i)
        except Abort:
            abandoned = True
        except NodeFailure as f:
            abandoned = True
            self._fail(f.record)
        except BaseException as exc:  # a hook or reflux itself failed: fail the run
            abandoned = True
            self._fail(ErrorRecord.from_exception(u.head.name, None, exc))
        self._finalize(u, abandoned=abandoned)

    # ------------------------------------------------------------------ ending

    def _finalize(self, u: _Unit, abandoned: bool) -> None:
        """Close the unit's logic (once), count what it abandons, end its outputs."""
        with self._lock:
            if u.finalized:
                return
            u.finalized = True
        abandoned = abandoned or self._aborted
        try:
            for i, logic in enumerate(u.logics):
                name = u.tasks[i].name
                try:
                    logic.close()
                except BaseException as exc:  # user close() hook
                    abandoned = True
                    self._fail(ErrorRecord.from_exception(name, None, exc))
            if not u.opened:
                # never ran (abandoned early): a sink still reports its (empty) result
                for i, task in enumerate(u.tasks):
                    logic = task.node.make_logic(u.ctxs[i], len(task.outputs), task.port_names)
                    if task.node.is_sink:
                        try:
                            self._results[task.name] = logic.result()
                        except BaseException as exc:  # user result() hook
                            self._fail(ErrorRecord.from_exception(task.name, None, exc))
            for i, logic in enumerate(u.logics):
                name = u.tasks[i].name
                if abandoned:
                    u.stats[i].dropped += logic.abandon()
                    u.stats[i].dropped += u.outs[i].discard() if hasattr(u.outs[i], "discard") else 0
                if u.tasks[i].node.is_sink:
                    try:
                        self._results[name] = logic.result()
                    except BaseException as exc:  # user result() hook
                        self._fail(ErrorRecord.from_exception(name, None, exc))
            if abandoned:
                u.stats[-1].dropped += u.final.discard()
                if u.group is not None and u.group.ordered and u.group.shared_out is not None:
                    with u.group.lock:
                        u.stats[-1].dropped += sum(len(b) for b in u.private.ports)
                        u.stats[-1].dropped += u.group.shared_out.discard()
                        for ports, _dead in u.group.done.values():
                            u.stats[-1].dropped += sum(len(b) for b in ports)
                        u.group.done.clear()
        finally:
            self._retire(u)

    def _retire(self, u: _Unit) -> None:
        for box in self._unit_outputs[id(u)]:
            with self._lock:
                self._open_producers[id(box)] -= 1
                last = self._open_producers[id(box)] == 0
            if last:
                box.channel.close()
                self._notify_box(box)
        ended_tasks = []
        with self._lock:
            for task in u.tasks:
                units = self._unit_of[task.name]
                if all(x.finalized for x in units) and task.name not in self._finished:
                    self._finished.add(task.name)
                    ended_tasks.append(task)
            self._live -= len(ended_tasks)
            done = self._live == 0
            if not u.threaded:
                self._pool_live -= 1
            idle_pool = self._pool_live == 0
        if done:
            self._done.set()
        if done or idle_pool:
            self._sched.close()

    def fused_chains(self) -> list[list[str]]:
        """[monitor hook] The node names each unit runs (a fused chain, or one node)."""
        return [[t.name for t in u.tasks] for u in self.units]

    def detach_stalled_sources(self, grace: float) -> list[str]:
        """After ``stop()``: end, on their behalf, the Extractors still blocked in
        their source ``grace`` seconds later, so the rest of the pipeline drains
        and ends.  Returns the names detached."""
        if not self._stop_sources or self._stop_time is None:
            return []
        if time.monotonic() - self._stop_time < grace:
            return []
        detached = []
        for u in self.units:
            if u.threaded and not u.finalized:
                with self._lock:
                    if u.finalized:
                        continue
                    u.finalized = True
                detached.append(u.head.name)
                logger.warning("Extractor '%s' is still inside its source %.1fs after stop(); "
                               "ending the pipeline without it", u.head.name, grace)
                self._retire(u)
        return detached

    # ------------------------------------------------------------------ counters

    def _merged(self, task: Task) -> NodeStats:
        group = self._groups.get(task.name)
        if group is None:
            return task.stats.copy()
        total = task.stats.copy()
        for u in group.units:
            s = u.stats[0]
            for f in ("received", "emitted", "filtered", "errors", "dropped", "retried", "fed_back", "busy"):
                setattr(total, f, getattr(total, f) + getattr(s, f))
        return total

    def snapshot(self) -> dict[str, NodeStats]:
        """Approximate live counters."""
        for u in self.units:
            if u.pump is not None and not u.finalized:
                u.logics[0].sync()  # type: ignore[attr-defined]
        return {t.name: self._merged(t) for t in self.plan.tasks}

    def collect(self, status: str, elapsed: float, stuck: list[str]) -> RunResult:
        """Count what is left in channels as dropped and build the result.

        Call after :meth:`join_threads`; channels of stuck units are left alone.
        """
        by_owner = {t.name: t for t in self.plan.tasks}
        for name in self._groups:
            by_owner[name].stats = self._merged(by_owner[name])  # replicas' counters, summed
        self._groups = {}
        for box in self.plan.inboxes:
            if box.owner in stuck:
                continue
            left = 0
            while True:
                try:
                    if box.records:
                        got = len(box.channel.try_pop())
                        if not got:
                            break
                        left += got
                    else:
                        left += len(box.channel.pop_many(1 << 16, 0))
                except (Empty, ChannelClosed):
                    break
            if left:
                _drop_inputs(by_owner[box.owner].stats, left, received=True)
        edges: dict[tuple[str, str], int] = {}

        def add(key: tuple[str, str], n: int) -> None:
            if n:
                edges[key] = edges.get(key, 0) + n

        for u in self.units:
            for i, task in enumerate(u.tasks):
                out = u.outs[i]
                if isinstance(out, _ForwardOutbox):
                    add((task.name, u.tasks[i + 1].name), out.sent_count)
            outboxes = [u.final]
            if u.group is not None and u.group.ordered and u.group.shared_out is not None and u.replica == 0:
                outboxes.append(u.group.shared_out)
            if u.pump is not None:
                add((u.tail.name, u.tail.port_names[0]), u.pump.emitted)
            for box_out in outboxes:
                for name, n in zip(u.tail.port_names, box_out.sent_per_port):
                    add((u.tail.name, name), n)
                if box_out.dead_box is not None:
                    for node_name, n in box_out.dead_sent.items():
                        add((node_name, box_out.dead_box.owner), n)
        for t in self.plan.tasks:
            for name in t.port_names:
                edges.setdefault((t.name, name), 0)
            if t.dead_letter is not None:
                edges.setdefault((t.name, t.dead_letter.owner), 0)
        return self._result(status, elapsed, stuck, edges)
