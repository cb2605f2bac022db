"""The driver's side of a node's Ray actors: starting them, knowing which can take work, ending them.

:class:`ActorSet` makes the ``workers`` actors of one node
(:class:`~reflux.run.ray.actor.RefluxActor` wrapped with ``ray.remote``, with
the node's ``ray_options``), asks each where it runs (a cheap ``info`` call,
the *probe*), and tracks its state in its :class:`~reflux.result.WorkerStats`:

``starting``
    created; its probe has not answered (Ray is placing it, or starting its
    process).  No batch is sent to it yet.
``alive``
    its probe answered: batches may go to it.
``restarting``
    a batch sent to it failed because the actor died (its process exited, its
    machine left the cluster).  Ray restarts it while ``max_restarts`` allows;
    it is probed every :data:`PROBE_INTERVAL` seconds until it answers
    (``alive`` again) or Ray says it is gone for good (``dead``).
``dead`` / ``ended``
    gone for good / ended with the run.

Nothing here blocks: probes and ``close()`` calls are object refs that the
node's logic waits on together with its batches, in short slices.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

from ...result import WorkerStats
from ..process import child as child_module
from . import actor as actor_module
from .actor import RefluxActor
from .connect import RayWorkerError, load_cloudpickle, load_ray

__all__ = ["PREFETCH", "PROBE_INTERVAL", "ActorSet", "NodeActor"]

logger = logging.getLogger("reflux")

#: batches in flight per actor (one running, one queued, so it never waits for the driver)
PREFETCH = 2
#: seconds between probes of an actor that died and that Ray may be restarting
PROBE_INTERVAL = 0.2
#: seconds after which an actor not started yet is reported (the cluster may lack what it asks for)
PLACEMENT_WARNING = 30.0


class NodeActor:
    """The driver's handle of one actor slot of a node."""

    __slots__ = ("index", "handle", "stats", "inflight", "probe", "probe_at", "since", "warned")

    def __init__(self, index: int, handle: Any, stats: WorkerStats) -> None:
        self.index = index
        self.handle = handle
        self.stats = stats
        #: batches sent to it and not answered yet
        self.inflight = 0
        #: the object ref of its probe in flight, if any
        self.probe: Any = None
        #: when to probe it next (``restarting``)
        self.probe_at = 0.0
        #: when it entered its current state
        self.since = time.monotonic()
        self.warned = False

    def where(self) -> str:
        """``"Ray actor 1 on 10.0.0.5 (pid 4242)"``, as messages name it."""
        s = self.stats
        return f"Ray actor {self.index}" + (f" on {s.host} (pid {s.pid})" if s.host else "")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """The gist of a Ray error (its message's first line, without Ray's colour codes)."""
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class ActorSet:
    """The actors of one node (see the module docs)."""

    def __init__(self, label: str, fn: Any, run_opts: dict[str, Any], options: dict[str, Any],
                 workers: list[WorkerStats]) -> None:
        ray = load_ray()
        self._ray = ray
        self.label = label
        self.options = options
        #: probe / close refs in flight -> (what, actor)
        self.refs: dict[Any, tuple[str, NodeActor]] = {}
        #: formatted tracebacks of the function's close() that failed in an actor
        self.close_errors: list[str] = []
        self.actors: list[NodeActor] = []
        self._killed = False
        # the actor's code travels by value (it uses the standard library only), so an
        # actor imports nothing of reflux and the cluster's machines need not have it
        for module in (actor_module, child_module):
            load_cloudpickle().register_pickle_by_value(module)
        remote_cls = ray.remote(RefluxActor)
        try:
            for st in workers:
                # the function travels in the creation call (Ray keeps it for restarts;
                # a large one goes through the object store by itself)
                handle = remote_cls.options(**options).remote(label, fn, run_opts)
                actor = NodeActor(st.index, handle, st)
                self.actors.append(actor)
                self._probe(actor)
        except BaseException:
            self.kill()
            raise

    # ------------------------------------------------------------------ states

    def _probe(self, actor: NodeActor) -> None:
        actor.probe = actor.handle.info.remote()
        self.refs[actor.probe] = ("probe", actor)

    def free(self) -> NodeActor | None:
        """The alive actor with the fewest batches in flight, if one has room."""
        best = None
        for a in self.actors:
            if a.stats.state == "alive" and a.inflight < PREFETCH and (best is None or a.inflight < best.inflight):
                best = a
        return best

    def waiting(self) -> bool:
        """Whether some actor is starting or restarting (its state may change without any batch)."""
        return any(a.stats.state in ("starting", "restarting") for a in self.actors)

    def usable(self) -> bool:
        """Whether some actor is alive or may still become so."""
        return any(a.stats.state in ("starting", "alive", "restarting") for a in self.actors)

    def lost(self, actor: NodeActor, exc: BaseException) -> None:
        """A batch sent to ``actor`` failed because the actor died: stop sending it work and probe it."""
        actor.stats.lost += 1
        if actor.stats.state != "alive":
            return  # already known (several of its batches fail together)
        actor.stats.state = "restarting"
        actor.since = time.monotonic()
        actor.warned = False
        restarts = self.options.get("max_restarts", 0)
        logger.warning("%s: %s died (%s); %s", self.label, actor.where(), first_line(exc),
                       "Ray restarts it while max_restarts allows" if restarts else
                       "it is not restarted (max_restarts=0)")
        if actor.probe is None:
            self._probe(actor)

    def on_ready(self, ref: Any) -> None:
        """A probe or close call of :attr:`refs` has answered."""
        what, actor = self.refs.pop(ref)
        ray = self._ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if what == "close":
                return  # it died while closing: nothing left to close
            actor.probe = None
            self._probe_failed(actor, exc)
            return
        except ray.exceptions.RayError as exc:  # pragma: no cover - e.g. the object store lost the answer
            if what == "probe":
                actor.probe = None
                actor.probe_at = time.monotonic() + PROBE_INTERVAL
            logger.debug("%s: %s: %s", self.label, actor.where(), first_line(exc))
            return
        if what == "close":
            if value:
                self.close_errors.append(value)
            actor.stats.state = "ended"
            return
        actor.probe = None
        st = actor.stats
        node_id, host, pid, actor_id = value
        back = st.state == "restarting"
        if back and (pid != st.pid or node_id != st.node_id):  # a new process (else it was only unreachable)
            st.restarts += 1
        st.node_id, st.host, st.pid, st.actor = node_id, host, pid, actor_id
        if back:
            logger.info("%s: %s is back", self.label, actor.where())
        st.state = "alive"
        actor.since = time.monotonic()
        actor.warned = False

    def _probe_failed(self, actor: NodeActor, exc: BaseException) -> None:
        st = actor.stats
        ray = self._ray
        if isinstance(exc, ray.exceptions.ActorDiedError):
            if st.state == "starting":
                st.state = "dead"
                text = _ANSI.sub("", str(exc)).strip()
                last = text.splitlines()[-1].strip() if text else type(exc).__name__
                # the gist first (the last line of Ray's report: the exception of open()), then the report
                raise RayWorkerError(f"{self.label}: {actor.where()} could not start ({last}):\n{text}") from exc
            st.state = "dead"
            logger.warning("%s: %s is gone for good (%s)", self.label, actor.where(), first_line(exc))
            if not self.usable():
                raise RayWorkerError(f"{self.label}: every Ray actor of the node died ({len(self.actors)}; "
                                     f"the last: {first_line(exc)}); raise ray_options['max_restarts'] "
                                     f"(default -1: without limit) to have Ray restart them") from exc
            return
        # unavailable for now (restarting): ask again a little later
        if st.state == "alive":
            st.state = "restarting"
        actor.probe_at = time.monotonic() + PROBE_INTERVAL

    def tend(self) -> float | None:
        """Send the probes that are due; warn about actors that do not start.  Returns the
        ``time.monotonic()`` time of the next probe due, if any."""
        now = time.monotonic()
        due: float | None = None
        for a in self.actors:
            st = a.stats.state
            if st == "restarting" and a.probe is None:
                if now >= a.probe_at:
                    self._probe(a)
                elif due is None or a.probe_at < due:
                    due = a.probe_at
            if st in ("starting", "restarting") and not a.warned and now - a.since >= PLACEMENT_WARNING:
                a.warned = True
                logger.warning("%s: Ray actor %d has not %s after %.0fs: the cluster may lack what it asks "
                               "for (%s); the node goes on with the actors that run", self.label, a.index,
                               "started" if st == "starting" else "restarted", now - a.since,
                               {k: v for k, v in self.options.items()
                                if k in ("num_cpus", "num_gpus", "memory", "resources")})
        return due

    # ------------------------------------------------------------------ ending

    def close(self) -> None:
        """Ask every actor that is alive or starting to call the function's ``close()`` (answers
        arrive in :attr:`refs`): every actor that ran ``open()`` runs ``close()``, also one that
        started too late to get work (an actor never placed is killed after the grace period)."""
        for a in self.actors:
            if a.stats.state in ("alive", "starting"):
                self.refs[a.handle.close.remote()] = ("close", a)

    def closing(self) -> bool:
        """Whether some ``close()`` call has not answered yet."""
        return any(what == "close" for what, _ in self.refs.values())

    def kill(self) -> None:
        """End every actor now (no restart); idempotent."""
        if self._killed:
            return
        self._killed = True
        ray = self._ray
        for a in self.actors:
            if a.stats.state != "dead":
                a.stats.state = "ended"
            try:
                ray.kill(a.handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already gone, or Ray is shutting down
                logger.debug("%s: killing %s: %s", self.label, a.where(), exc)
        self.refs.clear()
