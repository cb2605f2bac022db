"""Counters of a run: per-node statistics and the :class:`RunResult` of a pipeline."""
from __future__ import annotations

import sys
import sysconfig
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import AccountingError, ErrorRecord

__all__ = ["CheckpointReport", "Event", "NodeStats", "Results", "RunResult", "WallTime", "WorkerStats", "free_threaded_build",
           "gil_enabled", "thread_mode"]


def free_threaded_build() -> bool:
    """This interpreter is a free-threaded build (3.13t, 3.14t), whether or not its GIL is on."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    """The GIL is on now: always on a GIL build; on a free-threaded build unless
    turned on (``PYTHON_GIL=1``, ``-X gil=1``, or loading an extension module that
    does not declare free-threading support)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def thread_mode(gil: bool | None = None, free_threaded: bool | None = None) -> str:
    """How Python threads ran, in words: ``"GIL off (free-threaded)"``, ``"GIL on
    (free-threaded build)"`` or ``"GIL on"`` (default: this interpreter, now)."""
    gil = gil_enabled() if gil is None else gil
    free_threaded = free_threaded_build() if free_threaded is None else free_threaded
    if not gil:
        return "GIL off (free-threaded)"
    return "GIL on (free-threaded build)" if free_threaded else "GIL on"


def _name(key: Any) -> Any:
    """A node's name for a node (anything with a ``name`` string), else ``key`` itself."""
    if isinstance(key, str):
        return key
    name = getattr(key, "name", None)
    return name if isinstance(name, str) else key


class Results(dict[str, Any]):
    """What each Loader reported, by Loader name; the Loader object itself works as a key too
    (``result.results[sink]`` is ``result.results[sink.name]``)."""

    def __getitem__(self, key: object) -> Any:
        return super().__getitem__(_name(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(_name(key))

    def get(self, key: object, default: Any = None) -> Any:
        return super().get(_name(key), default)


# How a node's counters relate (see NodeStats.law):
#   "source"   received (pulled from the source) == emitted + dropped
#   "one"      every received item ends as exactly one of emitted / filtered / errors / dropped
#   "fanout"   received * fanout == emitted + errors + dropped  (Broadcast: one copy per receiver)
#   "free"     no fixed relation (flat-map Transformer, Accumulator: outputs are not inputs)
LAWS = ("source", "one", "fanout", "free")


@dataclass(frozen=True)
class Event:
    """Something a node's function reported with :func:`reflux.emit`: not a failure,
    an observation (a late record, a retried connection, a value out of range)."""

    #: name of the node whose function emitted it
    node: str
    #: the level's name: ``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or ``"critical"``
    level: str
    #: the message
    message: str
    #: the keyword fields given with it
    fields: dict[str, Any] = field(default_factory=dict)
    #: ``time.time()`` when it was emitted
    time: float = field(default_factory=_time.time)

    @property
    def levelno(self) -> int:
        """The :mod:`logging` level number."""
        return LEVELS.get(self.level, 20)


#: event levels by name, as :mod:`logging` numbers them
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@dataclass
class WorkerStats:
    """Counters of one remote worker of a node: a Ray actor (``executor="ray"``).

    ``index``
        the worker's place among the node's workers (0 to ``workers - 1``).
    ``actor``
        the Ray actor id (hex); it stays the same when Ray restarts the actor.
    ``host`` / ``node_id``
        the address of the machine it runs on and its Ray node id (empty
        until the actor has started; they change when Ray restarts it elsewhere).
    ``pid``
        its process id on that machine.
    ``state``
        ``"starting"`` (placed or waiting for room in the cluster), ``"alive"``,
        ``"restarting"`` (it died and Ray is restarting it, ``max_restarts``),
        ``"dead"`` (it died for good) or ``"ended"`` (the run is over).
    ``items`` / ``batches``
        items and batches it finished (failed items included).
    ``busy``
        seconds it spent running the node's function.
    ``restarts``
        how many times it died and was restarted.
    ``lost``
        batches it held when it died (failed or re-sent per the node's policy).
    """

    index: int
    actor: str = ""
    host: str = ""
    node_id: str = ""
    pid: int = 0
    state: str = "starting"
    items: int = 0
    batches: int = 0
    busy: float = 0.0
    restarts: int = 0
    lost: int = 0

    def copy(self) -> WorkerStats:
        """A snapshot of the counters."""
        return WorkerStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["busy"] = round(self.busy, 6)
        return d


@dataclass
class NodeStats:
    """Counters of one node.

    ``received``
        items taken from the node's input (for an Extractor: items pulled
        from its source).  ``stats["in"]`` is the same number.
    ``emitted``
        items sent downstream (a Broadcast counts one per receiver; an
        Accumulator counts lists); for a Loader, items it loaded.
        ``stats["out"]`` is the same number.
    ``filtered``
        items a Filter rejected.
    ``errors``
        items that failed after retries (whatever the policy: raise, skip,
        dead_letter or log); for an Extractor, failures of its source.
    ``dropped``
        items abandoned by ``stop(drain=False)``, a failure elsewhere, or
        Ctrl-C, so every item stays accounted for.
    ``overflowed``
        items a leaky input (``overflow="drop_oldest"`` or ``"drop_newest"``)
        dropped because it was full; they count as received.
    ``retried``
        retries made (each call after the first on one item).
    ``fed_back``
        items a Transformer fed back to itself with ``NeedsMoreWork``.
    ``resumed``
        items a node took back from the checkpoint its run resumed from, to
        process again before any new input: the items a Transformer with
        ``executor="process"`` had in its workers when the checkpoint was taken.
        They were received by the run that took the checkpoint, not by this one.
    ``busy``
        seconds the node spent in its own logic (the user's function, not
        waiting for input or for room downstream); the runtime adds them up,
        and :meth:`Pipeline.stats` turns them into a busy fraction.
    ``events``
        events the node's function emitted (:func:`reflux.emit`), by level name.
    ``workers``
        one :class:`WorkerStats` per remote worker (the Ray actors of a node
        with ``executor="ray"``; empty for other nodes).
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
    resumed: int = 0
    busy: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    #: the relation the counters obey (an internal detail used by accounting)
    law: str = field(default="one", repr=False)
    #: copies per item (Broadcast) or receivers (routing nodes)
    fanout: int = field(default=1, repr=False)
    #: ``True`` for a Loader that receives dead-letter records
    dead_letter_sink: bool = field(default=False, repr=False)
    #: per remote worker (Ray actor) counters; empty for nodes that run here
    workers: list[WorkerStats] = field(default_factory=list, repr=False, compare=False)

    _ALIASES = {"in": "received", "out": "emitted"}

    def __getitem__(self, key: str) -> int:
        """``stats["in"]``, ``stats["out"]`` or any counter by name."""
        key = self._ALIASES.get(key, key)
        if key not in _COUNTERS:
            raise KeyError(key)
        return int(getattr(self, key))

    def as_dict(self) -> dict[str, int]:
        """The counters as ``{"in": ..., "out": ..., "filtered": ..., ...}``."""
        return {"in": self.received, "out": self.emitted, "filtered": self.filtered,
                "errors": self.errors, "dropped": self.dropped, "overflowed": self.overflowed,
                "retried": self.retried, "fed_back": self.fed_back}

    def copy(self) -> NodeStats:
        """A snapshot of the counters."""
        copy = NodeStats(**{f.name: getattr(self, f.name) for f in fields(self)})
        copy.events = dict(self.events)
        copy.workers = [w.copy() for w in self.workers]
        return copy

    def imbalance(self) -> int | None:
        """How far the counters are from this node's law (0 when they add up);
        ``None`` when the node has no fixed relation between inputs and outputs."""
        if self.law == "source":
            return self.received - (self.emitted + self.dropped)
        if self.law == "one":
            return (self.received + self.resumed
                    - (self.emitted + self.filtered + self.errors + self.dropped + self.overflowed))
        if self.law == "fanout":
            return ((self.received + self.resumed - self.overflowed) * self.fanout
                    - (self.emitted + self.errors + self.dropped))
        return None


_COUNTERS = ("received", "emitted", "filtered", "errors", "dropped", "overflowed", "retried", "fed_back",
             "resumed")


@dataclass
class WallTime:
    """Where a run's time went: the pool's workers, the nodes' own logic, the GIL.

    All times are seconds, summed over the pool's worker threads (so up to
    ``workers * elapsed``).  A *step* is one turn of a worker on a unit (a node,
    a replica or a fused chain) with the GIL held; record pumps step without it.
    """

    #: wall-clock seconds of the run so far
    elapsed: float
    #: threads of the worker pool
    workers: int
    #: whether the Python lane is on (a GIL build with 2+ workers: the units that
    #: hold the GIL run on one worker at a time)
    lane: bool = False
    #: steps the workers ran through Python
    steps: int = 0
    #: worker time in those steps
    step_seconds: float = 0.0
    #: of which the nodes' own logic (their functions and per-batch code: the nodes' busy time)
    node_seconds: float = 0.0
    #: worker time in steps of lane units
    lane_seconds: float = 0.0
    #: worker time waiting for the GIL to start a step (a proxy for GIL contention)
    gil_wait_seconds: float = 0.0
    #: worker time in record pumps (without the GIL)
    pump_seconds: float = 0.0
    #: the busiest node and its busy fraction (per replica), ``None`` before any work
    bottleneck: str | None = None
    bottleneck_busy: float = 0.0

    @property
    def scheduler_seconds(self) -> float:
        """Worker time in steps not spent in the nodes' logic: moving items through
        channels and outboxes, notifications, bookkeeping."""
        return max(0.0, self.step_seconds - self.node_seconds)

    @property
    def idle_seconds(self) -> float:
        """Worker time with nothing to run (parked, costing no CPU)."""
        used = self.step_seconds + self.gil_wait_seconds + self.pump_seconds
        return max(0.0, self.workers * self.elapsed - used)

    @property
    def lane_busy(self) -> float:
        """Fraction of the run the Python lane was busy (near 1: Python is the limit)."""
        return 0.0 if self.elapsed <= 0 else min(1.0, self.lane_seconds / self.elapsed)

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        return {"elapsed": round(self.elapsed, 6), "workers": self.workers, "lane": self.lane,
                "steps": self.steps, "step_seconds": round(self.step_seconds, 6),
                "node_seconds": round(self.node_seconds, 6),
                "scheduler_seconds": round(self.scheduler_seconds, 6),
                "lane_seconds": round(self.lane_seconds, 6), "lane_busy": round(self.lane_busy, 4),
                "gil_wait_seconds": round(self.gil_wait_seconds, 6),
                "pump_seconds": round(self.pump_seconds, 6), "idle_seconds": round(self.idle_seconds, 6),
                "bottleneck": self.bottleneck, "bottleneck_busy": round(self.bottleneck_busy, 4)}

    def lines(self) -> list[str]:
        """A few lines of text saying where the time went."""
        lane = "the Python lane on" if self.lane else "no Python lane"
        out = [f"{self.workers} workers ({lane}), {self.elapsed:.2f}s: steps {self.step_seconds:.2f}s "
               f"= nodes {self.node_seconds:.2f}s + scheduler {self.scheduler_seconds:.2f}s; "
               f"waiting for the GIL {self.gil_wait_seconds:.2f}s; record pumps {self.pump_seconds:.2f}s; "
               f"idle {self.idle_seconds:.2f}s"]
        if self.bottleneck is not None:
            text = f"bottleneck: {self.bottleneck} ({self.bottleneck_busy:.0%} busy)"
            if self.lane and self.lane_busy >= 0.9:
                text += (f"; the Python lane was busy {self.lane_busy:.0%} of the time: Python holding the "
                         "GIL is the limit (more workers will not help; replicas for functions that release "
                         "the GIL, process workers or Cython plug-ins will)")
            out.append(text)
        return out


@dataclass
class CheckpointReport:
    """What a run with ``checkpoint=`` resumed from and recorded (``RunResult.checkpoint``)."""

    #: the checkpoint file
    path: str
    #: number of the checkpoint the run resumed from (``None``: it started from the beginning)
    resumed_from: int | None = None
    #: items the Extractors had pulled before that checkpoint, over the earlier runs
    resumed_items: int = 0
    #: whether that checkpoint closed a run that completed (then the sources had nothing left to read)
    resumed_final: bool = False
    #: checkpoints this run recorded (the last one at its end, when it completed or was stopped)
    taken: int = 0
    #: number of the last checkpoint in force after the run
    last: int | None = None
    #: barriers skipped because the sources did not pause or the pipeline did not drain in time
    skipped: int = 0
    #: seconds the sources were held by barriers (draining, then recording), over the run
    seconds: float = 0.0

    def line(self) -> str:
        """One line for reports: what was resumed and recorded."""
        if self.resumed_from is None:
            text = f"checkpoint {self.path}: started from the beginning"
        else:
            text = (f"checkpoint {self.path}: resumed after checkpoint #{self.resumed_from} "
                    f"({self.resumed_items} items pulled before it"
                    f"{'; that run had completed' if self.resumed_final else ''})")
        text += f"; {self.taken} checkpoint{'' if self.taken == 1 else 's'} recorded"
        if self.last is not None:
            text += f", last #{self.last}"
        if self.seconds:
            text += f" (sources held {self.seconds:.3f}s in all)"
        if self.skipped:
            text += f"; {self.skipped} skipped (no barrier in time)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        return {"path": self.path, "resumed_from": self.resumed_from, "resumed_items": self.resumed_items,
                "resumed_final": self.resumed_final, "taken": self.taken, "last": self.last,
                "skipped": self.skipped, "seconds": round(self.seconds, 6)}


@dataclass
class RunResult:
    """What a run did: returned by :meth:`Pipeline.run` and :meth:`Pipeline.join`.

    ``status`` is ``"completed"`` (every source ended and everything
    drained), ``"stopped"`` (``stop()`` was called), ``"failed"`` (a node
    failed under ``on_error="raise"``; :meth:`Pipeline.run` raised) or
    ``"interrupted"`` (Ctrl-C).
    """

    status: str
    #: per-node counters, by node name, in the order nodes were added
    nodes: dict[str, NodeStats]
    #: what each Loader returned, by Loader name (see :class:`~reflux.Loader`)
    results: Results
    #: error records kept (policies "raise", "log" and "dead_letter"), oldest first
    errors: list[ErrorRecord]
    #: items sent along each edge, keyed by ``(sender, receiver)`` names
    edges: dict[tuple[str, str], int]
    #: wall-clock seconds the run took
    elapsed: float
    #: records collected by the built-in dead-letter Loader (when no dead-letter
    #: Loader was given and some node uses ``on_error="dead_letter"``)
    dead_letters: list[ErrorRecord] = field(default_factory=list)
    #: error records not kept because ``max_error_records`` was reached
    errors_not_kept: int = 0
    #: nodes whose thread did not finish within the join timeout (stuck in user code)
    stuck: list[str] = field(default_factory=list)
    #: where the run's time went (the pool's workers, the nodes, the GIL)
    wall_time: WallTime | None = None
    #: events the nodes' functions emitted (:func:`reflux.emit`), oldest first
    events: list[Event] = field(default_factory=list)
    #: events not kept because ``max_events`` was reached
    events_not_kept: int = 0
    #: whether the GIL was on when the run ended (without it, replicas of a Python
    #: function run on as many cores as there are replicas and workers)
    gil_enabled: bool = True
    #: whether the interpreter is a free-threaded build (3.13t, 3.14t)
    free_threaded: bool = False
    #: what the run resumed from and the checkpoints it recorded (``checkpoint=`` only)
    checkpoint: CheckpointReport | None = None

    def __getitem__(self, node: Any) -> NodeStats:
        """Counters of a node: by name, or the node object itself."""
        return self.nodes[_name(node)]

    def value(self, loader: Any) -> Any:
        """What a Loader reported (by name or the Loader itself): ``results[loader]``."""
        return self.results[loader]

    def __post_init__(self) -> None:
        if not isinstance(self.results, Results):
            self.results = Results(self.results)

    def __iter__(self) -> Iterator[NodeStats]:
        return iter(self.nodes.values())

    def _total(self, kinds: tuple[str, ...], counter: str) -> int:
        return sum(getattr(s, counter) for s in self.nodes.values() if s.kind in kinds)

    @property
    def extracted(self) -> int:
        """Items pulled from every Extractor's source."""
        return self._total(("Extractor",), "received")

    @property
    def loaded(self) -> int:
        """Items the Loaders loaded (dead-letter Loaders not included)."""
        return sum(s.emitted for s in self.nodes.values() if s.kind == "Loader" and not s.dead_letter_sink)

    @property
    def dead_lettered(self) -> int:
        """Error records the dead-letter Loaders took."""
        return sum(s.received for s in self.nodes.values() if s.dead_letter_sink)

    @property
    def filtered(self) -> int:
        """Items rejected by Filters."""
        return sum(s.filtered for s in self.nodes.values())

    @property
    def error_count(self) -> int:
        """Failed items (and source failures) over all nodes."""
        return sum(s.errors for s in self.nodes.values())

    @property
    def source_errors(self) -> int:
        """Failures of the Extractors' sources (counted in :attr:`error_count`; not items)."""
        return self._total(("Extractor",), "errors")

    @property
    def dropped(self) -> int:
        """Items abandoned over all nodes (0 after a completed run)."""
        return sum(s.dropped for s in self.nodes.values())

    @property
    def overflowed(self) -> int:
        """Items leaky inputs dropped because they were full, over all nodes."""
        return sum(s.overflowed for s in self.nodes.values())

    @property
    def ok(self) -> bool:
        """``True`` when the run completed and no item failed."""
        return self.status == "completed" and self.error_count == 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{node name: {"in": ..., "out": ..., "filtered": ..., "errors": ..., "dropped": ...}}``."""
        return {name: s.as_dict() for name, s in self.nodes.items()}

    def accounting_problems(self) -> list[str]:
        """Every way the counters fail to account for the items (empty when all is well).

        Checks each node's law (what came in went out, was filtered, failed
        or was dropped) and each node's input against what its senders sent it.
        """
        problems: list[str] = []
        if self.stuck:
            problems.append(f"nodes still running, counts not final: {', '.join(self.stuck)}")
        for s in self.nodes.values():
            gap = s.imbalance()
            if gap:
                problems.append(f"{s.kind} '{s.name}': {s.as_dict()} leaves {gap} item(s) unaccounted")
        incoming: dict[str, int] = {}
        for (_, dst), n in self.edges.items():
            incoming[dst] = incoming.get(dst, 0) + n
        for s in self.nodes.values():
            if s.kind == "Extractor":
                continue
            sent = incoming.get(s.name, 0)
            if sent != s.received:
                problems.append(f"{s.kind} '{s.name}' received {s.received} item(s) "
                                f"but its senders sent {sent}")
        return problems

    def check_accounting(self) -> None:
        """Raise :class:`~reflux.errors.AccountingError` unless every item is accounted for."""
        problems = self.accounting_problems()
        if problems:
            raise AccountingError("; ".join(problems))

    @property
    def mode(self) -> str:
        """How Python threads ran: ``"GIL off (free-threaded)"``, ``"GIL on
        (free-threaded build)"`` or ``"GIL on"`` (see :func:`thread_mode`)."""
        return thread_mode(self.gil_enabled, self.free_threaded)

    def summary(self) -> str:
        """A small text table of the per-node counters, after a line saying how the run ended and its mode."""
        head = f"{'node':<24} {'kind':<12} {'in':>9} {'out':>9} {'filtered':>9} {'errors':>7} {'dropped':>8}"
        head += f" {'busy s':>8}"
        lines = [f"run {self.status} in {self.elapsed:.3f}s, {self.mode}", head]
        for s in self.nodes.values():
            lines.append(f"{s.name[:24]:<24} {s.kind:<12} {s.received:>9} {s.emitted:>9} "
                         f"{s.filtered:>9} {s.errors:>7} {s.dropped:>8} {s.busy:>8.3f}")
        if self.wall_time is not None:
            lines += self.wall_time.lines()
        if self.checkpoint is not None:
            lines.append(self.checkpoint.line())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"RunResult(status={self.status!r}, extracted={self.extracted}, loaded={self.loaded}, "
                f"filtered={self.filtered}, errors={self.error_count}, dead_lettered={self.dead_lettered}, "
                f"dropped={self.dropped}, "
                f"elapsed={self.elapsed:.3f}, mode={self.mode!r})")
