"""The worker-pool runtime: a fixed pool of threads runs any number of nodes.

It executes a :class:`~reflux.describe.plan.Plan` as a set of *units*.  A unit is
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

Record edges (``Inbox.records``, made by :func:`~reflux.describe.plan.compile_plan` between two
plug-in nodes): a unit whose input and output are record channels is a
*record pump* (:class:`reflux_core._sched.PumpTask`) that the core's worker
loop steps without the GIL, notifying and waking its neighbours through a
:class:`~reflux_core._sched.RecordEdge`; it comes back to Python
(:meth:`~reflux.run.units.Unit.step`) only to open, for a failing record (the
node's error policy), at its end, and on pause/abort.  A plug-in node with an
object input and a record output pushes its chunks' records
(:class:`~reflux.run.outboxes.RecordOutbox`); one with a record input and an
object output pops records as a chunk.
A node counts in its input's unit (chunks or records), an edge in its
receiver's.

Extractors over sized collections (or with ``batch_size`` set, which says
the source never blocks) run on the pool; Extractors that may block in user
code (iterators, generators, callables, async sources) get a thread of their
own, and are not fused, so a blocking source never holds a pool worker.

Python node logic runs with the GIL held, one batch per call; correctness of
the scheduler itself does not depend on the GIL (its shared state is changed
under ``_lock``; counters are per unit).

This module is one class, the scheduler, and a little over 600 lines: what a
unit does in a step lives in :mod:`reflux.run.units`, where its outputs go in
:mod:`reflux.run.outboxes`; what is left here (starting and ending workers,
notifications, waiters, timers, spares, finishing units, the result) is the
scheduler's shared state and the code that changes it under one lock.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from reflux_core._sched import (
    RecordEdge,
    Scheduler,
    worker_loop,
)
from reflux_core.channel import ChannelClosed, Empty
from reflux_core.transform import gil_wanted, plugin_nogil_ns

from ..describe.plan import Inbox, Plan, Task
from ..errors import ErrorRecord
from ..logic.base import Abort, NodeFailure
from ..result import NodeStats, RunResult, WallTime
from .base import BATCH_BUDGET, RuntimeBase, drop_inputs
from .fusion import fuse_chains, may_block
from .outboxes import CountRecordsOutbox, ForwardOutbox, PoolOutbox, RecordOutbox
from .placement import task_logic
from .replicas import SharedObject, replica_nodes, user_callable
from .units import ReplicaGroup, Unit

__all__ = ["PoolRuntime", "default_workers"]

logger = logging.getLogger("reflux")

#: seconds a worker may keep running the same unit while no other unit is ready
LOCAL_RUN = 0.01
#: seconds between two warnings about one node's leaky input dropping items
OVERFLOW_LOG_EVERY = 10.0
#: seconds a step of a lane unit aims at while a plug-in's thread may wait for the GIL
#: (it gets the GIL between two steps: see PoolRuntime._watch_plugins)
LANE_YIELD_BUDGET = 0.0005
#: share of the wall time plug-ins must spend without the GIL for the lane to hand it
#: over to them between short steps (below it, the shorter steps would cost more than
#: the plug-ins' threads gain)
PLUGIN_SHARE = 0.1
#: seconds one step may hold the Python lane before another worker takes it over
#: (about one batch budget: a longer step is one slow call, which need not hold up the rest)
LANE_PATIENCE = 0.05


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (always before 3.13)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def in_lane(u: Unit) -> bool:
    """Whether a unit runs in the Python lane: every unit but the replicas of a
    ``parallel=N`` node (asking for replicas says the function releases the GIL:
    they run on any worker), record pumps (no GIL) and sources in threads of their own."""
    return u.group is None and not u.threaded and u.mode != "pump"


def default_workers() -> int:
    """Worker threads a pipeline uses by default: the CPUs this process may run
    on, and at least 2 (so one node stuck in user code never leaves the pool,
    and the watchdog the workers drive, without a thread)."""
    try:
        return max(2, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(2, os.cpu_count() or 1)


class PoolRuntime(RuntimeBase):
    """Runs a :class:`~reflux.describe.plan.Plan` on a fixed pool of worker threads."""

    def __init__(self, plan: Plan, *, workers: int | None = None, max_error_records: int = 1000,
                 poll: float = 0.1, preforked: dict[str, list[Any]] | None = None, max_events: int = 1000) -> None:
        super().__init__(plan, max_error_records=max_error_records, poll=poll, max_events=max_events)
        self.n_workers = workers or default_workers()
        #: worker processes forked for nodes when the run started (start_method="fork"), by
        #: node name, until the node's logic opens and adopts them (under _lock)
        self.preforked: dict[str, list[Any]] = dict(preforked or {})
        #: [monitor hook] called by the workers every ``poll`` (the watchdog's check)
        self.on_tick: Callable[[], None] | None = None
        #: [checkpoint hook] the barrier gate (:mod:`reflux.run.barrier`) when the pipeline
        #: records checkpoints, else None (then none of its hooks costs anything)
        self.gate: Any = None
        self._threads: list[threading.Thread] = []
        self._source_threads: dict[str, threading.Thread] = {}
        self._running: dict[int, Unit] = {}  # thread ident -> unit it runs now
        self._timers: list[tuple[float, int, Unit]] = []
        self._timer_seq = itertools.count()
        self._waiters: dict[int, set[Unit]] = {}
        self._spares = 0
        self._waiting_for_room = 0
        #: items leaky inputs dropped, by id(inbox); when each last logged, and since (under _lock)
        self._overflow: dict[int, int] = {}
        self._overflow_logged: dict[int, float] = {}
        self._overflow_unlogged: dict[int, int] = {}
        self._build_units()
        for i, u in enumerate(self.units):
            u.index = i
        self._sched = Scheduler(len(self.units))
        self._build_record_edges()
        #: whether the GIL-holding units run in the Python lane, one worker at a time
        #: (a GIL build with two or more workers: see reflux_core._sched)
        self.lanes = gil_enabled() and self.n_workers > 1
        #: whether lane units hand the GIL over between short steps to a plug-in's thread
        #: that waits for it (else that thread idles up to the interpreter's switch
        #: interval, 5 ms, after each chunk): on while plug-ins do a noticeable share of
        #: the work (see _watch_plugins)
        self._yield_to_plugins = False
        self._plugin_units = False
        if self.lanes:
            self._sched.set_lane_patience(LANE_PATIENCE)
            for u in self.units:
                if in_lane(u):
                    u.in_lane = True
                    self._sched.set_lane(u.index, True)
                elif any(getattr(t.node, "plugin", None) is not None for t in u.tasks):
                    self._plugin_units = True
        self._plugin_ns = plugin_nogil_ns()
        self._plugin_at = time.monotonic()
        self._last_sweep = time.monotonic()
        self._live = len(plan.tasks)
        #: pool units not finalized; at 0 the workers have nothing left to do
        self._pool_live = sum(1 for u in self.units if not u.threaded)

    # ------------------------------------------------------------------ set-up

    def _build_units(self) -> None:
        self.units: list[Unit] = []
        self._consumers: dict[int, list[Unit]] = {}
        self._groups: dict[str, ReplicaGroup] = {}
        self._unit_of: dict[str, list[Unit]] = {}
        for chain in fuse_chains(self.plan):
            node = chain[0].node
            n = getattr(node, "parallel", 1) if len(chain) == 1 else 1
            if n > 1:
                group = ReplicaGroup(chain[0], bool(getattr(node, "ordered", False)))
                self._groups[chain[0].name] = group
                # each replica its own copy of a stateful object, or one object shared
                nodes, shared = replica_nodes(node, n)
                if shared:
                    group.shared = SharedObject(user_callable(node), n)
                units = [Unit(self, chain, i, group, node=None if shared else nodes[i]) for i in range(n)]
                group.units = units
                if group.ordered:
                    group.shared_out = PoolOutbox(self, units[0], chain[0], group.units[0].stats[-1])
                    group.shared_out.waiters = list(units)  # any replica may flush it
            else:
                units = [Unit(self, chain)]
            for u in units:
                u.threaded = may_block(u.head)
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
                u.final = CountRecordsOutbox(self, u, u.tail, u.stats[-1])
            elif rec_out and u.mode is None:
                u.final = RecordOutbox(self, u, u.tail, u.stats[-1])
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
                    try:
                        t.join(self.poll * 20)
                    except RuntimeError:
                        # interrupted (Ctrl-C) inside its start(): since 3.13 a thread has
                        # its ident before it has started, and join() refuses it; it sees
                        # the abort when it runs
                        pass
            raise

    def _spawn_worker(self, name: str, spare: bool) -> None:
        t = threading.Thread(target=self._worker, args=(spare,), daemon=True, name=name)
        self._threads.append(t)
        t.start()

    def stop_sources(self) -> None:
        """Make the Extractors end (everything extracted still flows to the end); paused
        nodes go on, or the run could not drain."""
        super().stop_sources()
        for u in self.units:
            if u.paused:
                with self._pause_lock:
                    u.paused = False
                    u.resumed.set()
                self._notify(u)
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
            else:
                u.resumed.set()  # a paused source thread sees the abort now

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

    def pause_node(self, name: str) -> None:
        """Hold the units that run node ``name`` (a fused chain it belongs to, all its
        replicas) between batches; their input backs up as behind a slow node."""
        with self._pause_lock:
            for u in self._unit_of[name]:
                u.paused = True
                u.resumed.clear()
                if u.pump is not None:
                    u.pump.python = True  # route its steps through Python, which sees the pause

    def resume_node(self, name: str) -> None:
        """Let the units of node ``name`` go on after :meth:`pause_node`."""
        with self._pause_lock:
            for u in self._unit_of[name]:
                u.paused = False
                u.resumed.set()
        for u in self._unit_of[name]:
            self._notify(u)

    def paused_nodes(self) -> frozenset[str]:
        """[monitor hook] Names of the nodes held by :meth:`pause_node` (with the nodes fused with them)."""
        return frozenset(t.name for u in self.units if u.paused for t in u.tasks)

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
                    stuck.append(u.tasks[u.stage].name)  # the node whose call never returned
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

    def _notify(self, u: Unit) -> None:
        """``u`` may have work: queue it (once), or make it run again if it is running."""
        if not u.threaded:
            self._sched.notify(u.index)

    def _notify_box(self, box: Inbox) -> None:
        for c in self._consumers.get(id(box), ()):
            self._notify(c)

    def _add_waiter(self, box: Inbox, units: list[Unit]) -> None:
        with self._lock:
            self._waiters.setdefault(id(box), set()).update(units)

    def _wake_waiters(self, box: Inbox) -> None:
        """After a pop made room in ``box``: notify the units blocked on it.

        Under the lock, always: a blocked producer registers under it, then
        tries its push once more, so either that push sees the room this pop
        made or this pop sees the registration.  Without the lock (and without
        a GIL to order them) both could miss, leaving the producer to the next
        sweep, up to ``poll`` later."""
        with self._lock:
            units = self._waiters.pop(id(box), ())
        for u in units:
            self._notify(u)

    def _add_timer(self, u: Unit, deadline: float) -> None:
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

    def _wait_for_room(self, out: PoolOutbox) -> None:
        """A flat-map stage holds too much output: wait for its receiver to take
        some, with a spare worker standing in so the pool keeps running."""
        with self._lock:
            self._waiting_for_room += 1
            spawn = self._waiting_for_room > self._spares
            if spawn:
                self._spares += 1
        if spawn:
            self._spawn_worker(f"reflux:{self.plan.name}:spare-{self._spares}", spare=True)
        if self.lanes and in_lane(out.unit):
            self._sched.release_lane()  # the receiver is a lane unit too, most likely: let it run
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
        if self.gate is not None:
            self.gate.idle()  # a barrier that timed out, or one that nothing else finished
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
        if u.paused and not self._aborted:
            return 0  # its node is paused: idle until resume_node() notifies it
        gate = self.gate
        if gate is not None:
            gate.enter()  # waits while a checkpoint holds the pool; counts this step as running
        ident = threading.get_ident()
        self._running[ident] = u
        more = False
        try:
            if self._aborted:
                self._finalize(u, abandoned=True)
            else:
                more = self._run_step(u)
                if self._yield_to_plugins and u.in_lane and gil_wanted():
                    time.sleep(0)  # releases the GIL: the plug-in's thread takes it now
                # Nothing else is waiting: go on with the same unit here rather
                # than through the queue, which would wake another worker only
                # to hand it the GIL (tens of µs a batch).  Bounded in time so
                # timers and sweeps still run.
                if more and self._sched.queued() == 0 and u.mode != "pump":  # a pump goes on without the GIL
                    sched = self._sched
                    until = time.monotonic() + LOCAL_RUN
                    while (not u.finalized and not self._paused and not self._aborted and not u.paused
                           and sched.queued() == 0 and sched.again(index)):
                        more = self._run_step(u)
                        if self._yield_to_plugins and u.in_lane and gil_wanted():
                            time.sleep(0)
                        if not more or time.monotonic() >= until:
                            break
        finally:
            self._running.pop(ident, None)
            if gate is not None:
                gate.leave()  # the last step out of a drained barrier records the checkpoint
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

    def _watch_plugins(self) -> None:
        """Every ``poll`` on a GIL build with plug-ins outside the lane: measure the
        share of the time they ran without the GIL, and have the lane units take
        short steps and hand the GIL over between them while it is large."""
        now, ns = time.monotonic(), plugin_nogil_ns()
        share = (ns - self._plugin_ns) / 1e9 / max(1e-6, now - self._plugin_at)
        self._plugin_ns, self._plugin_at = ns, now
        on = share >= PLUGIN_SHARE
        if on != self._yield_to_plugins:
            self._yield_to_plugins = on
            for u in self.units:
                if u.in_lane:
                    u.budget = LANE_YIELD_BUDGET if on else BATCH_BUDGET

    def _sweep(self) -> None:
        """Every ``poll``: notify units blocked on a full output (a safety net),
        and give the clogging watchdog its turn."""
        if self._plugin_units:
            self._watch_plugins()
        for u in self.units:
            if not u.finalized and not u.threaded and not u.paused and (u.final.pending()
                                                        or (u.pump is not None and u.pump.pending)):
                self._notify(u)
        tick = self.on_tick
        if tick is not None:
            tick()

    def _run_step(self, u: Unit) -> bool:
        """Run one batch of ``u``; returns ``True`` if it has more work right now.
        Failures end the unit (and, under ``"raise"``, the run)."""
        abandoned = False
        try:
            return u.step()
        except Abort:
            abandoned = True
        except NodeFailure as f:
            abandoned = True
            self._fail(f.record)
        except BaseException as exc:  # a hook or reflux itself failed: fail the run
            abandoned = True
            name = u.tasks[u.stage].name  # the stage whose code raised, not the chain's head
            self._fail(ErrorRecord.from_exception(name, None, exc))
        self._finalize(u, abandoned=abandoned)
        return False

    # ------------------------------------------------------------------ source threads

    def _run_source_thread(self, u: Unit) -> None:
        """A source that may block in user code: pull and push (waiting for room) in its own thread."""
        abandoned = False
        try:
            u.open()
            u.enter(0)
            logic = u.logics[0]
            batch = u.head.batch_size
            gate = self.gate
            while True:
                if gate is not None:
                    gate.source_wait(u)  # a checkpoint barrier: wait here until it is recorded
                if self._paused or u.paused:
                    while (self._paused or u.paused) and not self._aborted:
                        # the pipeline's pause, else the node's own (each event is set
                        # while its pause is off: waiting on the other would spin)
                        (self._resumed if self._paused else u.resumed).wait(self.poll)
                if self._aborted:
                    raise Abort()
                if self._stop_sources:
                    break
                t0 = time.monotonic()
                more = logic.pull(u.outs[0], batch)  # type: ignore[attr-defined]
                u.stats[0].busy += time.monotonic() - t0  # [busy time] (the blocking flush is not busy)
                u.forward(0)
                if not more:
                    break
            for i in range(1, len(u.logics)):
                while u.logics[i].has_feedback():
                    u.logics[i].process_feedback(u.tasks[i].batch_size, u.outs[i])
                    u.forward(i)
                u.logics[i].finish(u.outs[i])
                u.forward(i)
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

    def _finalize(self, u: Unit, abandoned: bool) -> None:
        """Close the unit's logic (once), count what it abandons, end its outputs."""
        with self._lock:
            if u.finalized:
                return
            u.finalized = True
        abandoned = abandoned or self._aborted
        try:
            for i, logic in enumerate(u.logics):
                name = u.tasks[i].name
                u.enter(i)
                try:
                    logic.close()
                except BaseException as exc:  # user close() hook
                    abandoned = True
                    self._fail(ErrorRecord.from_exception(name, None, exc))
            shared = u.group.shared if u.group is not None else None
            if shared is not None and shared.replica_ended():
                try:
                    shared.close()  # the last replica of those sharing one object
                except BaseException as exc:  # user close() hook
                    abandoned = True
                    self._fail(ErrorRecord.from_exception(u.head.name, None, exc))
            if not u.opened:
                # never ran (abandoned early): a sink still reports its (empty) result
                for i, task in enumerate(u.tasks):
                    if task.node.is_sink:
                        try:
                            self._results[task.name] = task_logic(task, u.ctxs[i]).result()
                        except BaseException as exc:  # user result() hook
                            self._fail(ErrorRecord.from_exception(task.name, None, exc))
            for i, logic in enumerate(u.logics):
                name = u.tasks[i].name
                if abandoned:
                    u.stats[i].dropped += logic.abandon()
                    discard = getattr(u.outs[i], "discard", None)  # outboxes that buffer
                    u.stats[i].dropped += discard() if discard is not None else 0
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

    def _retire(self, u: Unit) -> None:
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
        """A task's counters: its replicas' summed, and what its leaky input dropped."""
        total = task.stats.copy()
        group = self._groups.get(task.name)
        if group is not None:
            for u in group.units:
                s = u.stats[0]
                for f in ("received", "emitted", "filtered", "errors", "dropped", "overflowed", "retried",
                          "fed_back", "resumed", "busy"):
                    setattr(total, f, getattr(total, f) + getattr(s, f))
                # a copy first: the replica may add a level meanwhile (iterating the
                # live dict would raise "dictionary changed size during iteration")
                for level, n in dict(s.events).items():
                    total.events[level] = total.events.get(level, 0) + n
        if task.inbox is not None and task.inbox.overflow != "block":
            with self._lock:
                lost = self._overflow.get(id(task.inbox), 0)
            total.received += lost  # they reached the node's input, which dropped them
            total.overflowed += lost
        return total

    def _overflowed(self, box: Inbox, n: int) -> None:
        """A producer dropped ``n`` items at the leaky input ``box`` (count them; log at
        most one warning per node every OVERFLOW_LOG_EVERY seconds)."""
        now = time.monotonic()
        with self._lock:
            self._overflow[id(box)] = self._overflow.get(id(box), 0) + n
            pending = self._overflow_unlogged.get(id(box), 0) + n
            last = self._overflow_logged.get(id(box))
            if last is not None and now - last < OVERFLOW_LOG_EVERY:
                self._overflow_unlogged[id(box)] = pending
                return
            self._overflow_logged[id(box)] = now
            self._overflow_unlogged[id(box)] = 0
        task = next(t for t in self.plan.tasks if t.inbox is box)
        logger.warning("%s: its input is full; dropped %d item(s) (overflow=%r)%s", task.node.label, pending,
                       box.overflow, "" if last is None else f" in the last {now - last:.1f}s")

    def snapshot(self) -> dict[str, NodeStats]:
        """Approximate live counters."""
        for u in self.units:
            if u.pump is not None and not u.finalized:
                # copies the pump's counters (relaxed atomics in the core) into the
                # node's stats; the unit's runner does the same, so either copy is current
                u.logics[0].sync()  # type: ignore[attr-defined]
        return {t.name: self._merged(t) for t in self.plan.tasks}

    def wall_time(self, elapsed: float, nodes: dict[str, NodeStats] | None = None) -> WallTime:
        """[monitor hook] Where the time went so far (``nodes``: the counters to use,
        by default a live snapshot)."""
        nodes = self.snapshot() if nodes is None else nodes
        t = self._sched.timing()
        threaded = {u.head.name for u in self.units if u.threaded}
        replicas = {t.name: max(1, int(getattr(t.node, "parallel", 1) or 1)) for t in self.plan.tasks}
        node_seconds = sum(s.busy for name, s in nodes.items() if name not in threaded)
        busiest, busiest_busy = None, 0.0
        if elapsed > 0:
            for name, s in nodes.items():
                frac = min(1.0, s.busy / elapsed / replicas.get(name, 1))
                if frac > busiest_busy:
                    busiest, busiest_busy = name, frac
        return WallTime(elapsed=elapsed, workers=self.n_workers, lane=self.lanes, steps=int(t["steps"]),
                        step_seconds=t["step"], node_seconds=node_seconds, lane_seconds=t["lane"],
                        gil_wait_seconds=t["gil_wait"], pump_seconds=t["pump"], bottleneck=busiest,
                        bottleneck_busy=busiest_busy)

    def collect(self, status: str, elapsed: float, stuck: list[str]) -> RunResult:
        """Count what is left in channels as dropped and build the result.

        Call after :meth:`join_threads`; channels of stuck units are left alone.
        """
        by_owner = {t.name: t for t in self.plan.tasks}
        for t in self.plan.tasks:
            if t.name in self._groups or (t.inbox is not None and t.inbox.overflow != "block"):
                t.stats = self._merged(t)  # replicas' counters summed, a leaky input's drops
        self._groups = {}
        self._overflow = {}
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
                drop_inputs(by_owner[box.owner].stats, left, received=True)
        edges: dict[tuple[str, str], int] = {}

        def add(key: tuple[str, str], n: int) -> None:
            if n:
                edges[key] = edges.get(key, 0) + n

        for u in self.units:
            for i, task in enumerate(u.tasks):
                out = u.outs[i]
                if isinstance(out, ForwardOutbox):
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
                    for node_name, n in box_out.dead_counts.items():
                        add((node_name, box_out.dead_box.owner), n)
        for t in self.plan.tasks:
            for name in t.port_names:
                edges.setdefault((t.name, name), 0)
            if t.dead_letter is not None:
                edges.setdefault((t.name, t.dead_letter.owner), 0)
        result = self._result(status, elapsed, stuck, edges)
        result.wall_time = self.wall_time(elapsed, result.nodes)
        return result
