"""Watching a running pipeline: live stats, alerts and the clogging watchdog.

Everything here reads only what any runtime offers:

* ``runtime.snapshot()``: ``{node name: NodeStats}`` copies of the counters
  (including ``busy``, the seconds a node spent in its own logic);
* the plan's inboxes: each node's input channel (``len()`` and ``capacity``);
* optionally ``runtime.finished_nodes()`` (names of the nodes that ended),
  ``runtime.failure`` (the first failure) and a failure hook the runtime calls
  the moment a node dies (``runtime.on_failure``);
* ``runtime.fail(record)`` to stop the run when the watchdog policy says so.

:class:`Monitor` is made by :meth:`Pipeline.start` for each run.  It turns
counters into a :class:`PipelineStats` snapshot (rates over the last second,
busy fraction, channel fill, a state per node), and, when the pipeline has a
``clog_timeout``, runs the watchdog on a small thread of its own:

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ClogError, ErrorRecord

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Plan
    from .result import NodeStats, RunResult

__all__ = ["Alert", "Monitor", "NodeSnapshot", "PipelineStats", "ON_CLOG"]

logger = logging.getLogger("reflux")

#: the accepted values of ``Pipeline(on_clog=...)``
ON_CLOG: tuple[str, ...] = ("warn", "stop")

#: seconds of history the live rates are measured over
RATE_WINDOW = 1.0
#: samples closer together than this share one history entry
_MIN_SAMPLE_GAP = 0.02

_PROGRESS_COUNTERS = ("received", "emitted", "filtered", "errors", "dropped", "fed_back")


@dataclass(frozen=True)
class Alert:
    """Something the monitor noticed about one node.

    ``kind`` is ``"failed"`` (the node died), ``"clogged"`` (the watchdog
    found it stuck) or ``"unclogged"`` (a clogged node made progress again).
    """

    kind: str
    node: str
    message: str
    #: ``time.time()`` when it was noticed
    time: float = field(default_factory=time.time)
    #: the failure record, for ``"failed"`` and a ``"clogged"`` that stopped the run
    record: ErrorRecord | None = field(default=None, repr=False, compare=False)


@dataclass
class NodeSnapshot:
    """One node in a :class:`PipelineStats` snapshot.

    The counters are those of :class:`~reflux.NodeStats` (``snapshot["in"]``
    and ``snapshot.received`` are the same number); then:

    ``rate_in`` / ``rate_out``
        items per second taken / sent over the last second or so (after the
        run: averages over the whole run).
    ``busy``
        fraction of that time (0 to 1) the node spent in its own logic (per
        replica for a node with ``parallel=N``); near 1 means the node is the
        bottleneck.
    ``queued`` / ``capacity``
        items waiting in the node's input channel and its size (``None`` for
        an Extractor, which has no input).
    ``state``
        ``"running"``, ``"done"``, ``"failed"``, ``"clogged"`` (input full, no
        progress, stuck in itself), ``"blocked"`` (input full and no progress
        because a receiver is full) or ``"stuck"`` (did not end when the run
        was over).
    ``stalled``
        seconds the node has been without progress with a full input (0 when
        it is moving).
    """

    name: str
    kind: str
    received: int = 0
    emitted: int = 0
    filtered: int = 0
    errors: int = 0
    dropped: int = 0
    retried: int = 0
    fed_back: int = 0
    busy_seconds: float = 0.0
    rate_in: float = 0.0
    rate_out: float = 0.0
    busy: float = 0.0
    queued: int | None = None
    capacity: int | None = None
    state: str = "running"
    stalled: float = 0.0

    _ALIASES = {"in": "received", "out": "emitted"}
    _COUNTERS = ("received", "emitted", "filtered", "errors", "dropped", "retried", "fed_back")

    @property
    def fill(self) -> float | None:
        """``queued / capacity`` (0 to 1), ``None`` for an Extractor."""
        if self.queued is None or not self.capacity:
            return None
        return min(1.0, self.queued / self.capacity)

    def __getitem__(self, key: str) -> int:
        """``snapshot["in"]``, ``snapshot["out"]`` or any counter by name."""
        key = self._ALIASES.get(key, key)
        if key not in self._COUNTERS:
            raise KeyError(key)
        return int(getattr(self, key))

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        return {"kind": self.kind, "in": self.received, "out": self.emitted, "filtered": self.filtered,
                "errors": self.errors, "dropped": self.dropped, "retried": self.retried,
                "fed_back": self.fed_back, "busy_seconds": round(self.busy_seconds, 6),
                "rate_in": round(self.rate_in, 3), "rate_out": round(self.rate_out, 3),
                "busy": round(self.busy, 4), "queued": self.queued, "capacity": self.capacity,
                "fill": None if self.fill is None else round(self.fill, 4), "state": self.state,
                "stalled": round(self.stalled, 3)}


class PipelineStats(Mapping[str, NodeSnapshot]):
    """What :meth:`Pipeline.stats` returns: a snapshot of the whole pipeline.

    It is a mapping of node name to :class:`NodeSnapshot`, in pipeline order,
    so ``stats["parse"].received`` and ``stats["parse"]["in"]`` work as with
    the plain counters; it also has the pipeline's :attr:`status`,
    :attr:`elapsed` seconds, the nodes :attr:`clogged` and :attr:`failed`, and
    the recent :attr:`alerts`.
    """

    def __init__(self, pipeline: str, status: str, elapsed: float, nodes: dict[str, NodeSnapshot],
                 alerts: list[Alert] | None = None) -> None:
        self.pipeline = pipeline
        #: ``"idle"`` (never started), ``"running"``, ``"paused"``, or the
        #: finished run's status (``"completed"``, ``"stopped"``, ``"failed"``, ``"interrupted"``)
        self.status = status
        self.elapsed = elapsed
        self.nodes = nodes
        self.alerts: list[Alert] = list(alerts or [])

    def __getitem__(self, name: str) -> NodeSnapshot:
        return self.nodes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def clogged(self) -> list[str]:
        """Names of the nodes the watchdog reports as clogged now."""
        return [n for n, s in self.nodes.items() if s.state == "clogged"]

    @property
    def failed(self) -> list[str]:
        """Names of the nodes that died."""
        return [n for n, s in self.nodes.items() if s.state == "failed"]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-able values (what ``reflux run --json`` prints)."""
        return {"pipeline": self.pipeline, "status": self.status, "elapsed": round(self.elapsed, 6),
                "nodes": {n: s.as_dict() for n, s in self.nodes.items()},
                "clogged": self.clogged, "failed": self.failed,
                "alerts": [{"kind": a.kind, "node": a.node, "message": a.message, "time": a.time}
                           for a in self.alerts]}

    def table(self) -> str:
        """A plain-text table (what the progress view shows, without colour)."""
        head = (f"{'node':<20} {'kind':<12} {'in':>9} {'out':>9} {'filt':>7} {'err':>5} "
                f"{'in/s':>9} {'busy':>5} {'input':>11}  state")
        lines = [f"pipeline '{self.pipeline}' {self.status} {self.elapsed:.1f}s", head]
        for s in self.nodes.values():
            fill = "-" if s.queued is None else f"{s.queued}/{s.capacity}"
            lines.append(f"{s.name[:20]:<20} {s.kind:<12} {s.received:>9} {s.emitted:>9} {s.filtered:>7} "
                         f"{s.errors:>5} {s.rate_in:>9.0f} {s.busy:>5.0%} {fill:>11}  {s.state}")
        for a in self.alerts:
            lines.append(f"! {a.message}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<PipelineStats '{self.pipeline}' {self.status} nodes={len(self.nodes)} clogged={self.clogged}>"


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
        self._history: deque[tuple[float, dict[str, tuple[int, int, float]]]] = deque()
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
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        self._next_check = 0.0
        #: monotonic time the watchdog failed the run (``on_clog="stop"``)
        self.stopped_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, thread: bool = True) -> None:
        """Start the watchdog (only when there is a ``clog_timeout``): in a
        thread of its own, or (``thread=False``) driven by :meth:`tick`, which
        the runtime's workers and the thread waiting in ``join()`` call."""
        self.started = time.monotonic()
        if self.clog_timeout is None or self._thread is not None or not thread:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"reflux-monitor:{self.name}")
        self._thread.start()

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
        """Stop the watchdog thread and wait for it."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the watchdog die silently
                logger.exception("Pipeline '%s': watchdog check failed", self.name)

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
        where = "" if record.item is None else f" on item {record.item!r:.80}"
        self._alert(Alert("failed", record.node, f"{label} died{where}: {type(exc).__name__}: {exc}",
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
            if (not full[owner] or owner in finished or owner in self._failed
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
        cur = {n: (s.received, s.emitted, s.busy) for n, s in raw.items()}
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
        nodes: dict[str, NodeSnapshot] = {}
        for name, s in raw.items():
            b_in, b_out, b_busy = base.get(name, (0, 0, 0.0))
            snap = _snapshot(s)
            snap.rate_in = (s.received - b_in) / dt
            snap.rate_out = (s.emitted - b_out) / dt
            snap.busy = min(1.0, max(0.0, (s.busy - b_busy) / dt / self._replicas.get(name, 1)))
            box = self._inbox.get(name)
            if box is not None:
                try:
                    snap.queued = len(box.channel)
                    snap.capacity = box.channel.capacity
                except Exception:
                    snap.queued, snap.capacity = 0, None
            snap.stalled = stalled.get(name, 0.0)
            snap.state = ("failed" if name in failed else "clogged" if name in clogged
                          else "blocked" if name in blocked else "done" if name in finished else "running")
            nodes[name] = snap
        return PipelineStats(self.name, status, now - self.started, nodes, alerts)

    def final(self, result: RunResult) -> PipelineStats:
        """The snapshot of a finished run: averages over the run, nothing queued."""
        return final_stats(self.name, result, self._inbox, set(self._failed), self.alerts, self._replicas)


def _snapshot(s: NodeStats) -> NodeSnapshot:
    return NodeSnapshot(name=s.name, kind=s.kind, received=s.received, emitted=s.emitted,
                        filtered=s.filtered, errors=s.errors, dropped=s.dropped, retried=s.retried,
                        fed_back=s.fed_back, busy_seconds=float(getattr(s, "busy", 0.0)))


def final_stats(name: str, result: RunResult, inboxes: Mapping[str, Any] | None = None,
                failed: set[str] | None = None, alerts: list[Alert] | None = None,
                replicas: Mapping[str, int] | None = None) -> PipelineStats:
    """A :class:`PipelineStats` built from a :class:`~reflux.RunResult` (rates and busy
    fractions are averages over the run)."""
    elapsed = max(result.elapsed, 1e-9)
    failed = set(failed or ())
    for rec in result.errors:
        if isinstance(rec.exception, ClogError):
            failed.discard(rec.node)
    clog_stopped = {rec.node for rec in result.errors if isinstance(rec.exception, ClogError)}
    nodes: dict[str, NodeSnapshot] = {}
    for n, s in result.nodes.items():
        snap = _snapshot(s)
        snap.rate_in = s.received / elapsed
        snap.rate_out = s.emitted / elapsed
        snap.busy = min(1.0, max(0.0, snap.busy_seconds / elapsed / (replicas or {}).get(n, 1)))
        box = (inboxes or {}).get(n)
        if box is not None:
            snap.queued, snap.capacity = 0, box.channel.capacity
        snap.state = ("stuck" if n in result.stuck else "failed" if n in failed
                      else "clogged" if n in clog_stopped else "done")
        nodes[n] = snap
    return PipelineStats(name, result.status, result.elapsed, nodes, alerts)
