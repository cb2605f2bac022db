"""Watching a running pipeline: live stats, alerts and the clogging watchdog.

Everything here reads only what the runtime offers (it never imports the run
layer):

* ``runtime.snapshot()``: ``{node name: NodeStats}`` copies of the counters
  (including ``busy``, the seconds a node spent in its own logic, and
  ``workers``, the counters of a node's Ray actors);
* the plan's inboxes: each node's input channel (``len()`` and ``capacity``);
* optionally ``runtime.finished_nodes()`` (names of the nodes that ended),
  ``runtime.failure`` (the first failure) and a failure hook the runtime calls
  the moment a node dies (``runtime.on_failure``);
* ``runtime.fail(record)`` to stop the run when the watchdog policy says so.

:class:`Monitor` is made by :meth:`Pipeline.start` for each run.  It turns
counters into a :class:`PipelineStats` snapshot (rates over the last second,
busy fraction, channel fill, a state per node), and, when the pipeline has a
``clog_timeout``, runs the watchdog each time :meth:`Monitor.tick` is called
(the runtime's workers call it every ``poll``; it has no thread of its own):

    A node is **clogged** when its input channel stays full while the node
    makes no progress (no counter moves) for ``clog_timeout`` seconds.  A
    node in that state whose own receiver is full too is only **blocked**
    (back-pressure from further down), so the report names the node that is
    really stuck, not everything upstream of it.  When the runtime fuses a
    chain of nodes into one task (``runtime.fused_chains()``), the stuck one
    is the last node of the chain holding items it has not passed on.  A
    chain with no input channel at all (an Extractor fused with what follows
    it) has no channel to fill: run it with ``fuse=False`` to watch it.

What follows a clog is the pipeline's ``on_clog`` policy: ``"warn"`` logs a
warning (and an :class:`Alert`), ``"stop"`` fails the run with a
:class:`~reflux.errors.ClogError` naming the node.  A node that *dies* (its
function raised under ``on_error="raise"``) is reported at once, through the
runtime's failure hook, not after a timeout.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ClogError, ErrorRecord, safe_repr, safe_str
from .stats import Alert, NodeSnapshot, PipelineStats, final_stats, snapshot_of

if TYPE_CHECKING:  # pragma: no cover
    from ..describe.plan import Plan
    from ..result import NodeStats, RunResult

__all__ = ["Monitor", "ON_CLOG"]

logger = logging.getLogger("reflux")

#: the accepted values of ``Pipeline(on_clog=...)``
ON_CLOG: tuple[str, ...] = ("warn", "stop")

#: seconds of history the live rates are measured over
RATE_WINDOW = 1.0
#: samples closer together than this share one history entry
_MIN_SAMPLE_GAP = 0.02

_PROGRESS_COUNTERS = ("received", "emitted", "filtered", "errors", "dropped", "fed_back")


def _label(kind: str, name: str) -> str:
    return f"{kind} '{name}'"


class Monitor:
    """Stats, alerts and the clogging watchdog of one run (made by :meth:`Pipeline.start`).

    ``runtime`` needs ``snapshot()``; ``finished_nodes()``, ``failure`` and
    ``fail(record)`` are used when present.  ``clog_timeout=None`` turns the
    watchdog off (no thread is started).
    """

    #: most alerts kept for the stats
    MAX_ALERTS = 20

    def __init__(self, name: str, plan: Plan, runtime: Any, *, clog_timeout: float | None = None,
                 on_clog: str = "warn", on_alert: Callable[[Alert], Any] | None = None,
                 paused: Callable[[], bool] | None = None, interval: float | None = None) -> None:
        self.name = name
        self.plan = plan
        self.runtime = runtime
        self.clog_timeout = clog_timeout
        self.on_clog = on_clog
        self.on_alert = on_alert
        self._paused = paused or (lambda: False)
        if interval is None:
            interval = 0.25 if clog_timeout is None else min(1.0, max(0.02, clog_timeout / 5))
        self.interval = interval
        self.started = time.monotonic()
        self._kinds = {t.name: t.node.kind for t in plan.tasks}
        #: replicas per node (``parallel=N``): the busy fraction is per replica
        self._replicas = {t.name: max(1, int(getattr(t.node, "parallel", 1) or 1)) for t in plan.tasks}
        self._inbox = {box.owner: box for box in plan.inboxes}
        self._outputs = {t.name: [b.owner for b in t.outputs]
                         + ([t.dead_letter.owner] if t.dead_letter is not None else [])
                         for t in plan.tasks}
        self._lock = threading.Lock()
        #: (time, {node: (received, emitted, busy, busy of each remote worker)})
        self._history: deque[tuple[float, dict[str, tuple[int, int, float, tuple[float, ...]]]]] = deque()
        # watchdog state: node -> (progress counter, monotonic time it last moved or its input was not full)
        self._track: dict[str, tuple[int, float]] = {}
        self._stalled: dict[str, float] = {}
        self._clogged: set[str] = set()
        self._blocked: set[str] = set()
        self._failed: dict[str, ErrorRecord] = {}
        self._alerts: deque[Alert] = deque(maxlen=self.MAX_ALERTS)
        # fused chains (optional runtime hook): head name -> the chain's node names
        chains_of = getattr(runtime, "fused_chains", None)
        self._chains: dict[str, list[str]] = {c[0]: c for c in (chains_of() if chains_of else []) if len(c) > 1}
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._next_check = 0.0
        #: monotonic time the watchdog failed the run (``on_clog="stop"``)
        self.stopped_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the clock.  The watchdog has no thread of its own: :meth:`tick`
        runs its checks, called by the runtime's workers (every ``poll``) and by
        the thread waiting in ``join()``."""
        self.started = time.monotonic()

    def tick(self) -> None:
        """Run a watchdog check if one is due (cheap otherwise; safe from any
        thread: concurrent callers skip while a check runs)."""
        if self.clog_timeout is None or self._stop.is_set():
            return
        now = time.monotonic()
        if now < self._next_check or not self._tick_lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.interval
            self.check()
        except Exception:  # never let the watchdog break the caller
            logger.exception("Pipeline '%s': watchdog check failed", self.name)
        finally:
            self._tick_lock.release()

    def close(self) -> None:
        """Stop the watchdog (later ticks do nothing)."""
        self._stop.set()

    def gave_up(self, grace: float) -> bool:
        """``True`` once the watchdog stopped the run at least ``grace`` seconds
        ago: the caller stops waiting for the clogged node (it is stuck in user
        code) and finishes the run without it (it is reported as stuck)."""
        return self.stopped_at is not None and time.monotonic() - self.stopped_at >= grace

    # ------------------------------------------------------------------ alerts

    def _alert(self, alert: Alert, level: int) -> None:
        with self._lock:
            self._alerts.append(alert)
        logger.log(level, "Pipeline '%s': %s", self.name, alert.message)
        cb = self.on_alert
        if cb is not None:
            try:
                cb(alert)
            except Exception:
                logger.exception("Pipeline '%s': on_alert callback raised", self.name)

    def on_failure(self, record: ErrorRecord) -> None:
        """The runtime's failure hook: a node died; report it now."""
        if isinstance(record.exception, ClogError):
            return  # the watchdog's own stop, already reported as a clog
        with self._lock:
            if record.node in self._failed:
                return
            self._failed[record.node] = record
        exc = record.exception
        label = _label(self._kinds.get(record.node, "node"), record.node)
        where = "" if record.item is None else f" on item {safe_repr(record.item, 80)}"
        self._alert(Alert("failed", record.node, f"{label} died{where}: {type(exc).__name__}: {safe_str(exc)}",
                          record=record), logging.ERROR)

    @property
    def alerts(self) -> list[Alert]:
        """The recent alerts, oldest first."""
        with self._lock:
            return list(self._alerts)

    # ------------------------------------------------------------------ the watchdog

    def _finished(self) -> frozenset[str]:
        fn = getattr(self.runtime, "finished_nodes", None)
        return fn() if fn is not None else frozenset()

    def _note_runtime_failure(self) -> None:
        # runtimes without the hook: notice the failure on the next check
        rec = getattr(self.runtime, "failure", None)
        if rec is not None and rec.node not in self._failed:
            self.on_failure(rec)

    def check(self, now: float | None = None) -> list[str]:
        """One watchdog round (the thread calls it every ``interval``); returns
        the names of the nodes newly found clogged."""
        self._note_runtime_failure()
        if self.clog_timeout is None:
            return []
        now = time.monotonic() if now is None else now
        if self._paused() or self._stop.is_set():
            self._track.clear()
            self._stalled.clear()
            return []
        snap = self.runtime.snapshot()
        finished = self._finished()
        held = getattr(self.runtime, "paused_nodes", None)  # optional hook: nodes paused one by one
        held_nodes = held() if held is not None else frozenset()
        full: dict[str, bool] = {}
        for owner, box in self._inbox.items():
            try:
                full[owner] = len(box.channel) >= box.channel.capacity
            except Exception:  # a channel that is gone (closed and freed) is not full
                full[owner] = False
        stalled: dict[str, float] = {}
        for owner in self._inbox:
            st = snap.get(owner)
            if st is None:
                continue
            progress = sum(getattr(st, c) for c in _PROGRESS_COUNTERS)
            prev = self._track.get(owner)
            if (not full[owner] or owner in finished or owner in self._failed or owner in held_nodes
                    or prev is None or prev[0] != progress):
                self._track[owner] = (progress, now)
                continue
            stalled[owner] = now - prev[1]
        newly: list[str] = []
        clogged: set[str] = set()
        blocked: set[str] = set()
        via: dict[str, str] = {}  # clogged node -> the node whose full input showed it
        for owner, secs in list(stalled.items()):
            if secs < self.clog_timeout:
                continue
            if any(full.get(o, False) for o in self._outputs.get(owner, [])):
                blocked.add(owner)
                continue
            culprit = self._culprit(owner, snap)
            clogged.add(culprit)
            via[culprit] = owner
            if culprit != owner:
                blocked.add(owner)
                stalled[culprit] = secs
        order = [t.name for t in self.plan.tasks]
        with self._lock:
            self._stalled = stalled
            unclogged = self._clogged - clogged
            newly = sorted(clogged - self._clogged, key=order.index)
            self._clogged = clogged
            self._blocked = blocked
        for owner in unclogged:
            self._alert(Alert("unclogged", owner, f"{_label(self._kinds[owner], owner)} is moving again"),
                        logging.INFO)
        for owner in newly:
            head = via[owner]
            box = self._inbox[head]
            label = _label(self._kinds[owner], owner)
            where = ("its input channel" if head == owner
                     else f"the input channel of its fused chain (at {_label(self._kinds[head], head)})")
            msg = (f"{label} is clogged: {where} has been full ({len(box.channel)}/"
                   f"{box.channel.capacity}) for {stalled[owner]:.1f}s while it made no progress "
                   "(stuck in its function?)")
            record = None
            if self.on_clog == "stop":
                exc = ClogError(msg + "; stopping the pipeline (on_clog='stop')", node=owner)
                record = ErrorRecord(node=owner, item=None, exception=exc, traceback="")
                exc.record = record
            self._alert(Alert("clogged", owner, msg, record=record), logging.WARNING)
            if record is not None:
                self.stopped_at = time.monotonic()
                fail = getattr(self.runtime, "fail", None) or getattr(self.runtime, "_fail")
                fail(record)
        return newly

    def _culprit(self, head: str, snap: Mapping[str, NodeStats]) -> str:
        """The node really stuck when ``head`` stalls: ``head`` itself, or, when
        the runtime runs ``head`` fused with the nodes after it (one task, no
        channels between them), the last of them holding items it has not
        passed on (its counters do not add up)."""
        chain = self._chains.get(head)
        if not chain:
            return head
        for name in reversed(chain):
            st = snap.get(name)
            gap = st.imbalance() if st is not None else None
            if gap is not None and gap > 0:
                return name
        return head

    # ------------------------------------------------------------------ snapshots

    def sample(self, status: str = "running") -> PipelineStats:
        """A live :class:`PipelineStats` (cheap: a copy of the counters and a
        ``len()`` per channel; fine to call every 100 ms)."""
        now = time.monotonic()
        raw: dict[str, NodeStats] = self.runtime.snapshot()
        cur = {n: (s.received, s.emitted, s.busy, tuple(w.busy for w in s.workers)) for n, s in raw.items()}
        with self._lock:
            hist = self._history
            if not hist or now - hist[-1][0] >= _MIN_SAMPLE_GAP:
                hist.append((now, cur))
            while len(hist) > 2 and hist[1][0] <= now - RATE_WINDOW:
                hist.popleft()
            base_t, base = hist[0]
            if now - base_t < _MIN_SAMPLE_GAP:  # the first sample: since the start
                base_t, base = self.started, {}
            clogged = set(self._clogged)
            blocked = set(self._blocked)
            failed = set(self._failed)
            stalled = dict(self._stalled)
            alerts = list(self._alerts)
        dt = max(now - base_t, 1e-9)
        finished = self._finished()
        held_of = getattr(self.runtime, "paused_nodes", None)  # optional hook
        held = held_of() if held_of is not None else frozenset()
        nodes: dict[str, NodeSnapshot] = {}
        for name, s in raw.items():
            b_in, b_out, b_busy, b_workers = base.get(name, (0, 0, 0.0, ()))
            snap = snapshot_of(s)
            snap.rate_in = (s.received - b_in) / dt
            snap.rate_out = (s.emitted - b_out) / dt
            snap.busy = min(1.0, max(0.0, (s.busy - b_busy) / dt / self._replicas.get(name, 1)))
            for i, w in enumerate(snap.workers):
                before = b_workers[i] if i < len(b_workers) else 0.0
                w.busy = min(1.0, max(0.0, (w.busy_seconds - before) / dt))
            box = self._inbox.get(name)
            if box is not None:
                try:
                    snap.queued = len(box.channel)
                    snap.capacity = box.channel.capacity
                except Exception:
                    snap.queued, snap.capacity = 0, None
            snap.stalled = stalled.get(name, 0.0)
            snap.state = ("failed" if name in failed else "clogged" if name in clogged
                          else "blocked" if name in blocked else "done" if name in finished
                          else "paused" if name in held else "running")
            nodes[name] = snap
        wall = getattr(self.runtime, "wall_time", None)  # optional runtime hooks
        recent = getattr(self.runtime, "recent_events", None)
        return PipelineStats(self.name, status, now - self.started, nodes, alerts,
                             None if wall is None else wall(now - self.started, raw),
                             None if recent is None else recent())

    def final(self, result: RunResult) -> PipelineStats:
        """The snapshot of a finished run: averages over the run, nothing queued."""
        return final_stats(self.name, result, self._inbox, set(self._failed), self.alerts, self._replicas)
