"""What :meth:`Pipeline.stats` returns: snapshots of a pipeline and its nodes, and the alerts
the watchdog raised.

:class:`PipelineStats` is a mapping of node name to :class:`NodeSnapshot`
(counters, rates over the last second, busy fraction, input channel fill, a
state); :func:`final_stats` builds one from a finished run's result.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ClogError, ErrorRecord
from ..result import Event, NodeStats, RunResult, WallTime, WorkerStats

__all__ = ["Alert", "HasStats", "NodeSnapshot", "PipelineStats", "WorkerSnapshot", "final_stats", "snapshot_of"]


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
class WorkerSnapshot:
    """One remote worker of a node (a Ray actor) in a :class:`NodeSnapshot`.

    The fields of :class:`~reflux.WorkerStats` (``index``, ``actor``,
    ``host``, ``node_id``, ``pid``, ``state``, ``items``, ``batches``,
    ``restarts``, ``lost``), with ``busy_seconds`` (seconds in the node's
    function) and ``busy``, the fraction of the last second (after the run:
    of the whole run) it spent there.
    """

    index: int
    actor: str = ""
    host: str = ""
    node_id: str = ""
    pid: int = 0
    state: str = "starting"
    items: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    busy: float = 0.0
    restarts: int = 0
    lost: int = 0

    @classmethod
    def of(cls, w: WorkerStats) -> WorkerSnapshot:
        return cls(index=w.index, actor=w.actor, host=w.host, node_id=w.node_id, pid=w.pid, state=w.state,
                   items=w.items, batches=w.batches, busy_seconds=w.busy, restarts=w.restarts, lost=w.lost)

    @property
    def label(self) -> str:
        """``"actor 0 @ 10.0.0.5"``, as the progress view and tables show it."""
        return f"actor {self.index}" + (f" @ {self.host}" if self.host else "")

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        return {"index": self.index, "actor": self.actor, "host": self.host, "node_id": self.node_id,
                "pid": self.pid, "state": self.state, "items": self.items, "batches": self.batches,
                "busy_seconds": round(self.busy_seconds, 6), "busy": round(self.busy, 4),
                "restarts": self.restarts, "lost": self.lost}


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
    ``events``
        events the node's function emitted (:func:`reflux.emit`), by level.
    ``workers``
        one :class:`WorkerSnapshot` per Ray actor of a node with
        ``executor="ray"`` (where it runs, items, busy fraction, state); empty
        for other nodes.
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
    overflowed: int = 0
    busy_seconds: float = 0.0
    rate_in: float = 0.0
    rate_out: float = 0.0
    busy: float = 0.0
    queued: int | None = None
    capacity: int | None = None
    state: str = "running"
    stalled: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    workers: list[WorkerSnapshot] = field(default_factory=list)

    _ALIASES = {"in": "received", "out": "emitted"}
    _COUNTERS = ("received", "emitted", "filtered", "errors", "dropped", "overflowed", "retried", "fed_back")

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
                "fed_back": self.fed_back, "overflowed": self.overflowed, "events": dict(self.events),
                "busy_seconds": round(self.busy_seconds, 6),
                "rate_in": round(self.rate_in, 3), "rate_out": round(self.rate_out, 3),
                "busy": round(self.busy, 4), "queued": self.queued, "capacity": self.capacity,
                "fill": None if self.fill is None else round(self.fill, 4), "state": self.state,
                "stalled": round(self.stalled, 3), "workers": [w.as_dict() for w in self.workers]}


class PipelineStats(Mapping[str, NodeSnapshot]):
    """What :meth:`Pipeline.stats` returns: a snapshot of the whole pipeline.

    It is a mapping of node name to :class:`NodeSnapshot`, in pipeline order,
    so ``stats["parse"].received`` and ``stats["parse"]["in"]`` work as with
    the plain counters; it also has the pipeline's :attr:`status`,
    :attr:`elapsed` seconds, the nodes :attr:`clogged` and :attr:`failed`, and
    the recent :attr:`alerts`.
    """

    def __init__(self, pipeline: str, status: str, elapsed: float, nodes: dict[str, NodeSnapshot],
                 alerts: list[Alert] | None = None, wall_time: WallTime | None = None,
                 events: list[Event] | None = None) -> None:
        self.pipeline = pipeline
        #: ``"idle"`` (never started), ``"running"``, ``"paused"``, or the
        #: finished run's status (``"completed"``, ``"stopped"``, ``"failed"``, ``"interrupted"``)
        self.status = status
        self.elapsed = elapsed
        self.nodes = nodes
        self.alerts: list[Alert] = list(alerts or [])
        #: where the time went (the pool's workers, the nodes, the GIL); ``None`` before a run
        self.wall_time = wall_time
        #: the latest events the nodes' functions emitted (:func:`reflux.emit`)
        self.events: list[Event] = list(events or [])

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
                           for a in self.alerts],
                "wall_time": None if self.wall_time is None else self.wall_time.as_dict()}

    def table(self) -> str:
        """A plain-text table (what the progress view shows, without colour)."""
        head = (f"{'node':<20} {'kind':<12} {'in':>9} {'out':>9} {'filt':>7} {'err':>5} "
                f"{'in/s':>9} {'busy':>5} {'input':>11}  state")
        lines = [f"pipeline '{self.pipeline}' {self.status} {self.elapsed:.1f}s", head]
        for s in self.nodes.values():
            fill = "-" if s.queued is None else f"{s.queued}/{s.capacity}"
            lines.append(f"{s.name[:20]:<20} {s.kind:<12} {s.received:>9} {s.emitted:>9} {s.filtered:>7} "
                         f"{s.errors:>5} {s.rate_in:>9.0f} {s.busy:>5.0%} {fill:>11}  {s.state}")
            for w in s.workers:
                lines.append(f"  {w.label[:31]:<31} {w.items:>9} {'':>9} {'':>7} {w.lost:>5} {'':>9} "
                             f"{w.busy:>5.0%} {'':>11}  {w.state}")
        if self.wall_time is not None:
            lines += self.wall_time.lines()
        for a in self.alerts:
            lines.append(f"! {a.message}")
        for e in self.events[-3:]:
            lines.append(f"{e.level}: {e.node}: {e.message}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<PipelineStats '{self.pipeline}' {self.status} nodes={len(self.nodes)} clogged={self.clogged}>"


def snapshot_of(s: NodeStats) -> NodeSnapshot:
    return NodeSnapshot(name=s.name, kind=s.kind, received=s.received, emitted=s.emitted,
                        filtered=s.filtered, errors=s.errors, dropped=s.dropped, retried=s.retried,
                        fed_back=s.fed_back, overflowed=s.overflowed, busy_seconds=float(getattr(s, "busy", 0.0)),
                        events=dict(s.events), workers=[WorkerSnapshot.of(w) for w in getattr(s, "workers", ())])


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
        snap = snapshot_of(s)
        snap.rate_in = s.received / elapsed
        snap.rate_out = s.emitted / elapsed
        snap.busy = min(1.0, max(0.0, snap.busy_seconds / elapsed / (replicas or {}).get(n, 1)))
        for w in snap.workers:
            w.busy = min(1.0, max(0.0, w.busy_seconds / elapsed))
        box = (inboxes or {}).get(n)
        if box is not None:
            snap.queued, snap.capacity = 0, box.channel.capacity
        snap.state = ("stuck" if n in result.stuck else "failed" if n in failed
                      else "clogged" if n in clog_stopped else "done")
        nodes[n] = snap
    return PipelineStats(name, result.status, result.elapsed, nodes, alerts, result.wall_time, result.events[-5:])


class HasStats(Protocol):
    """Anything with a ``stats()`` snapshot, such as a :class:`~reflux.Pipeline`."""

    def stats(self) -> PipelineStats:
        """A snapshot of the run."""
        ...
