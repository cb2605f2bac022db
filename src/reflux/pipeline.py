"""The :class:`Pipeline`: a graph of nodes that validates, compiles and runs itself.

It is the facade over the layers below: :class:`~reflux.describe.graph.Graph`
(wiring and validation) and :func:`~reflux.describe.plan.compile_plan` (the
plan), :class:`~reflux.run.pool.PoolRuntime` (running it) and
:mod:`reflux.observe` (stats, the watchdog, graphs, metrics, the progress
view).  Nothing below imports it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .checkpoint.config import Checkpoint, as_checkpoint
from .describe.base import DEFAULT_BATCH_SIZE, DEFAULT_CAPACITY, Node, Part
from .describe.executors import check_ray_init
from .describe.graph import Graph
from .describe.nodes import Extractor, Loader
from .describe.plan import Plan, compile_plan
from .errors import (
    CheckpointError,
    ClogError,
    ErrorRecord,
    NodeError,
    PipelineInterrupted,
    ValidationError,
    safe_repr,
    safe_str,
)
from .observe.stats import Alert, PipelineStats, final_stats
from .observe.watchdog import ON_CLOG, Monitor
from .result import RunResult, gil_enabled
from .run.interrupt import InterruptLatch
from .run.pool import PoolRuntime

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint.commit import Checkpointer
    from .observe.metrics import MetricsServer

__all__ = ["Pipeline"]

logger = logging.getLogger("reflux")


class Pipeline(Graph):
    """A graph of nodes joined by bounded channels; runs them and accounts for every item.

    ``Pipeline(*parts, name="pipeline", capacity=1024, batch_size=256,
    dead_letter=None, max_error_records=1000, join_timeout=10.0, workers=None, fuse=True,
    runtime="pool", executor=None, clog_timeout=60.0, on_clog="warn", on_alert=None,
    record_edges=True, max_events=1000, ray_init=None, checkpoint=None)``

    ``parts``
        nodes and flows (``a >> b``) to add.
    ``capacity``
        default slots of each node's input channel (a node's own
        ``capacity=`` wins); channels are bounded, so a slow Loader holds
        memory flat however long the source is.
    ``batch_size``
        default most items a node takes per batch.
    ``dead_letter``
        the Loader that receives the error records of nodes with
        ``on_error="dead_letter"`` (added to the pipeline); without it the
        records are collected in :attr:`RunResult.dead_letters`.
    ``max_error_records``
        how many error records the result keeps (the rest are only counted).
    ``max_events``
        how many events (:func:`reflux.emit`) the result keeps (the rest are
        only counted).
    ``join_timeout``
        seconds to wait for each worker to end once the run is over or
        abandoned; a worker stuck in user code past it is reported in
        :attr:`RunResult.stuck` (and logged) instead of hanging the caller.
    ``workers``
        threads of the worker pool that runs every node (default: the CPUs
        this process may use, at least 2).  Extractors that may block in their source
        (iterators, generators, callables) get a thread of their own.
    ``fuse``
        run chains of plain stages (Extractor, Transformer, Filter, Loader
        joined one to one) as one task, handing lists from stage to stage
        without channels (default ``True``; ``fuse=False`` on a node opts
        that node out).
    ``runtime``
        ``"pool"``, the only runtime: the worker pool (kept so that code
        naming it keeps working).
    ``executor``
        the default ``executor`` of the pipeline's Transformers (``"thread"``,
        ``"process"`` or ``"ray"``); a Transformer's own ``executor=`` wins.
    ``clog_timeout``
        the clogging watchdog: a node whose input channel stays full while
        it makes no progress for this many seconds is reported as clogged
        (in :meth:`stats`, the progress view and the log).  ``None`` turns
        the watchdog off.
    ``on_clog``
        what follows a clog: ``"warn"`` (log a warning and go on) or
        ``"stop"`` (fail the run with a :class:`~reflux.ClogError` naming
        the node).
    ``on_alert``
        called with each :class:`~reflux.Alert` (a node died, was
        clogged, moved again), from a reflux thread, as it happens.
    ``record_edges``
        join two compiled plug-in nodes that feed only each other with a
        record channel, so records go from plug-in to plug-in without the
        GIL (default ``True``; see :meth:`compile`).
    ``ray_init``
        keyword arguments for ``ray.init()`` when a node has
        ``executor="ray"`` and this process is not connected to Ray yet
        (default: ``ray.init()``, which joins the cluster ``RAY_ADDRESS``
        names or starts a local Ray); an existing session is used as it is.
    ``checkpoint``
        a file name or a :class:`~reflux.Checkpoint`: record checkpoints there
        (each source's position, each stateful node's state, once the sinks
        committed everything before them), and resume after the last one when
        the pipeline runs again.  See :mod:`reflux.checkpoint`.  A checkpointed
        pipeline joins plug-ins with object channels (as ``record_edges=False``).
    """

    #: seconds between checks of stop / pause flags while waiting
    POLL = 0.1
    #: seconds an Extractor blocked inside its source may delay the end after ``stop()``
    stop_grace = 1.0

    def __init__(self, *parts: Part, name: str = "pipeline", capacity: int = DEFAULT_CAPACITY,
                 batch_size: int = DEFAULT_BATCH_SIZE, dead_letter: Loader | None = None,
                 max_error_records: int = 1000, join_timeout: float = 10.0,
                 workers: int | None = None, fuse: bool = True, runtime: str = "pool",
                 executor: str | None = None, clog_timeout: float | None = 60.0, on_clog: str = "warn",
                 on_alert: Callable[[Alert], Any] | None = None, record_edges: bool = True,
                 max_events: int = 1000, ray_init: Mapping[str, Any] | None = None,
                 checkpoint: str | os.PathLike[str] | Checkpoint | None = None) -> None:
        if isinstance(max_error_records, bool) or not isinstance(max_error_records, int) or max_error_records < 0:
            raise ValidationError(
                f"Pipeline '{name}': max_error_records must be an integer >= 0, got {max_error_records!r}")
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
            raise ValidationError(f"Pipeline '{name}': max_events must be an integer >= 0, got {max_events!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValidationError(f"Pipeline '{name}': workers must be a positive integer, got {workers!r}")
        if runtime == "threads":
            raise ValidationError(
                f"Pipeline '{name}': runtime='threads' (one thread per node) is no longer available; "
                "every pipeline runs on the worker pool (set its threads with workers=)")
        if runtime != "pool":
            raise ValidationError(f"Pipeline '{name}': runtime must be 'pool', got {runtime!r}")
        if clog_timeout is not None and (isinstance(clog_timeout, bool)
                                         or not isinstance(clog_timeout, (int, float)) or not clog_timeout > 0):
            raise ValidationError(
                f"Pipeline '{name}': clog_timeout must be a positive number of seconds or None, got {clog_timeout!r}")
        if on_clog not in ON_CLOG:
            raise ValidationError(f"Pipeline '{name}': on_clog must be one of {', '.join(ON_CLOG)}; got {on_clog!r}")
        if on_alert is not None and not callable(on_alert):
            raise ValidationError(f"Pipeline '{name}': on_alert must be callable, got {on_alert!r:.60}")
        #: keyword arguments for ray.init() (see above)
        self.ray_init = check_ray_init(f"Pipeline '{name}'", ray_init)
        self._checkpoint = as_checkpoint(checkpoint, f"Pipeline '{name}'")
        self._checkpointer: Checkpointer | None = None
        self.workers = workers
        self.runtime = runtime
        self.clog_timeout: float | None = None if clog_timeout is None else float(clog_timeout)
        self.on_clog = on_clog
        self.on_alert = on_alert
        self.max_error_records = max_error_records
        self.max_events = max_events
        self.join_timeout = float(join_timeout)
        self._monitor: Monitor | None = None
        self._runtime: PoolRuntime | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._finish_lock = threading.Lock()
        self._stopped = False
        self._interrupted = False
        #: notes a Ctrl-C while run() or join() waits, for the waiting loop to act on
        self._latch = InterruptLatch()
        self._started_at = 0.0
        #: runs started so far
        self._runs = 0
        super().__init__(*parts, name=name, capacity=capacity, batch_size=batch_size, dead_letter=dead_letter,
                         executor=executor, fuse=fuse, record_edges=record_edges)

    def _check_sources_can_run_again(self) -> None:
        """A second run reads its sources again: refuse one that an earlier run used up."""
        for node in self._nodes:
            if not isinstance(node, Extractor):
                continue
            src = node.source
            if node.mode == "iter" and iter(src) is src or node.mode == "async" and src.__aiter__() is src:
                raise ValidationError(
                    f"{node.label}: its source is an iterator, used up by the previous run of Pipeline "
                    f"'{self.name}'; to run again, give a list, a range, a generator function or a new "
                    f"Extractor")

    def _check_mutable(self) -> None:
        if self._runtime is not None and self._result is None:
            raise RuntimeError(f"Pipeline '{self.name}' is running; it cannot be changed now")

    def compile(self) -> Plan:
        """Validate, then build the plan: one bounded channel per node input
        (SPSC when one node feeds it, MPMC when several do), one task per node,
        and record channels between plug-in nodes that feed only each other
        (see :func:`~reflux.describe.plan.compile_plan`; not when the pipeline
        records checkpoints)."""
        return compile_plan(self, record_edges=False if self._checkpoint is not None else None)

    @property
    def checkpoint(self) -> Checkpoint | None:
        """Where the pipeline records checkpoints (``None``: it does not); settable
        between runs with a file name or a :class:`~reflux.Checkpoint`."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, value: str | os.PathLike[str] | Checkpoint | None) -> None:
        self._check_mutable()
        self._checkpoint = as_checkpoint(value, f"Pipeline '{self.name}'")

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """``True`` between :meth:`start` and the end of the run."""
        return self._runtime is not None and self._result is None and not self._runtime.wait(0)

    @property
    def paused(self) -> bool:
        """``True`` while paused."""
        return self._runtime is not None and self._runtime.paused

    @property
    def result(self) -> RunResult | None:
        """The result of the last finished run (``None`` before)."""
        return self._result

    def start(self) -> Pipeline:
        """Validate, compile and start the run in the background; returns at once.

        Follow with :meth:`join` (or use :meth:`run`, which does both).
        """
        if self._runtime is not None and self._result is None:
            raise RuntimeError(f"Pipeline '{self.name}' is already running")
        if self._runs:
            self._check_sources_can_run_again()
        plan = self.compile()
        on_ray = [n for n in self._nodes if getattr(n, "executor", "thread") == "ray"]
        if on_ray:
            from .run.ray.connect import connect
            connect(self.ray_init, on_ray)  # here, in the caller's thread: errors reach the caller
        to_fork = []
        if any(getattr(n, "executor", "thread") == "process" for n in self._nodes):
            from .run.process.launch import refuse_while_bootstrapping
            refuse_while_bootstrapping(f"Pipeline '{self.name}'")
            to_fork = [n for n in self._nodes if getattr(n, "executor", "thread") == "process"
                       and getattr(n, "start_method", "spawn") == "fork"]
        self._result = None
        self._error = None
        self._stopped = False
        self._interrupted = False
        self._started_at = time.monotonic()
        #: worker processes forked for nodes with start_method="fork", by node name (the
        #: runtime hands them to the nodes' logics; what is left is ended with the run)
        forked: dict[str, list[Any]] = {}
        runtime: PoolRuntime | None = None
        started = False
        self._checkpointer = None
        try:
            resume_from = self._open_checkpoints(plan) if self._checkpoint is not None else None
            if to_fork:
                from .run.process.launch import prefork
                prefork(to_fork, forked)  # before any thread of the run exists (see there)
            runtime = PoolRuntime(plan, workers=self.workers, max_error_records=self.max_error_records,
                                  poll=self.POLL, preforked=forked, max_events=self.max_events)
            # stats, alerts and the clogging watchdog; the watchdog has no thread of its
            # own: the workers (every poll) and the thread waiting in join() run its checks
            self._monitor = Monitor(self.name, plan, runtime, clog_timeout=self.clog_timeout,
                                    on_clog=self.on_clog, on_alert=self.on_alert, paused=lambda: self.paused)
            runtime.on_failure = self._monitor.on_failure
            runtime.on_tick = self._monitor.tick
            if self._checkpointer is not None:
                from .run.barrier import BarrierGate
                ck = self._checkpointer.config
                gate = BarrierGate(runtime, record=self._checkpointer.record, every=ck.every,
                                   seconds=ck.seconds, timeout=ck.timeout, resume=resume_from)
                self._checkpointer.on_error = gate.fail  # a commit beside the pipeline failed
                runtime.gate = gate
            logger.debug("Pipeline '%s': starting %d nodes", self.name, len(plan.tasks))
            self._runtime = runtime  # before its threads run: a node may call stop() at once
            runtime.start()
            started = True
            self._runs += 1
            self._monitor.start()
        except BaseException:
            # a failure or a Ctrl-C at any point of the start: end whatever began
            if self._monitor is not None:
                self._monitor.close()
            if runtime is not None and started:
                runtime.abort()
                runtime.join_threads(self.join_timeout)
            self._runtime = None
            if forked:
                from .run.process.launch import discard_preforked
                discard_preforked(forked if runtime is None else runtime.preforked)
            if self._checkpointer is not None:
                checkpointer, self._checkpointer = self._checkpointer, None
                try:
                    checkpointer.detach(rollback=True)
                except Exception:  # never mask the start's own failure
                    logger.exception("Pipeline '%s': error while letting the sinks go", self.name)
            raise
        return self

    def _open_checkpoints(self, plan: Plan) -> Any:
        """Open the checkpoint file, attach the sinks, find the checkpoint to resume
        from and check the pipeline can take it (before anything runs)."""
        from .checkpoint.commit import Checkpointer
        from .checkpoint.state import check_nodes

        assert self._checkpoint is not None
        check_nodes(self._nodes, None, f"Pipeline '{self.name}'")
        sinks = [(t.name, t.node.fn) for t in plan.tasks if isinstance(t.node, Loader)]
        # its threads leave room for a commit beside them: they wait on other processes, or
        # run without the GIL
        overlaps = not gil_enabled() or any(getattr(n, "executor", "thread") != "thread" for n in self._nodes)
        checkpointer = Checkpointer(self._checkpoint, self.name, sinks, overlaps=overlaps)
        self._checkpointer = checkpointer
        snap = checkpointer.resume()
        check_nodes(self._nodes, snap, f"Pipeline '{self.name}'")
        if snap is not None:
            logger.info("Pipeline '%s': resuming after checkpoint #%d of %s (%d items pulled before it%s)",
                        self.name, snap.id, self._checkpoint.path, snap.items,
                        "; that run had completed" if snap.final else "")
        else:
            logger.info("Pipeline '%s': no checkpoint in %s yet: starting from the beginning",
                        self.name, self._checkpoint.path)
        return snap

    def stop(self, drain: bool = True) -> None:
        """Stop the run.

        With ``drain=True`` (default) the Extractors stop extracting and every
        item already extracted flows on to the end (so the result shows
        nothing dropped); with ``drain=False`` in-flight items are abandoned
        (counted as ``dropped``) and every node ends at once.  Returns without
        waiting: call :meth:`join`.  Safe from any thread, also from a node's
        own function.
        """
        rt = self._runtime
        if rt is None:
            return
        self._stopped = True
        if drain:
            rt.stop_sources()
        else:
            rt.abort()

    def pause(self, node: Node | str | None = None) -> None:
        """Pause every node between batches (no CPU is used while paused); with
        ``node`` (a node or its name), only that node: its input backs up through
        the bounded channels, as it would behind a slow node, while the rest of
        the pipeline goes on.  A node fused with others pauses with its chain
        (give it ``fuse=False`` to pause it alone)."""
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' is not running")
        if node is None:
            self._runtime.pause()
        else:
            self._runtime.pause_node(self._node_name(node))

    def resume(self, node: Node | str | None = None) -> None:
        """Resume after :meth:`pause` (of the pipeline, or of ``node``)."""
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' is not running")
        if node is None:
            self._runtime.resume()
        else:
            self._runtime.resume_node(self._node_name(node))

    @property
    def paused_nodes(self) -> frozenset[str]:
        """Names of the nodes paused one by one (with the nodes fused with them)."""
        return frozenset() if self._runtime is None else self._runtime.paused_nodes()

    def _node_name(self, node: Node | str) -> str:
        name = node if isinstance(node, str) else getattr(node, "name", None)
        if not isinstance(name, str) or not any(n.name == name for n in self._nodes) or (
                not isinstance(node, str) and node not in self):
            raise ValidationError(f"Pipeline '{self.name}' has no node {node!r:.60}")
        return name

    def stats(self) -> PipelineStats:
        """A snapshot of the run: a mapping of node name to
        :class:`~reflux.NodeSnapshot` (counters in/out/filtered/errors/...,
        ``rate_in``/``rate_out`` over the last second, ``busy`` fraction, input
        channel ``queued``/``capacity``/``fill``, ``state``), plus the pipeline's
        ``status``, ``elapsed``, ``clogged``, ``failed`` and ``alerts``.

        Cheap enough to call every 100 ms while the pipeline runs; exact once the
        run is over (rates are then averages over the run).  Before the first
        run it is empty.
        """
        mon = self._monitor
        if self._result is not None:
            if mon is not None:
                return mon.final(self._result)
            return final_stats(self.name, self._result)
        if self._runtime is None or mon is None:
            return PipelineStats(self.name, "idle", 0.0, {})
        return mon.sample("paused" if self.paused else "running")

    # ------------------------------------------------------------------ graphs and metrics

    def to_mermaid(self) -> str:
        """The graph as a Mermaid ``flowchart`` (see :mod:`reflux.observe.diagram`); validates first."""
        from .observe.diagram import to_mermaid
        return to_mermaid(self)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (see :mod:`reflux.observe.diagram`); validates first."""
        from .observe.diagram import to_dot
        return to_dot(self)

    def to_svg(self, direction: str = "LR") -> str:
        """The graph as an SVG picture (see :mod:`reflux.observe.svg`); validates first."""
        from .observe.svg import to_svg
        return to_svg(self, direction)

    def metrics(self) -> str:
        """The current :meth:`stats` in the Prometheus text format (see :mod:`reflux.observe.metrics`)."""
        from .observe.metrics import prometheus_text
        return prometheus_text(self.stats())

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve :meth:`metrics` over HTTP at ``http://host:port/metrics`` from a
        background thread; returns the started :class:`~reflux.MetricsServer`
        (``port=0`` picks a free port: see its ``port``; call ``close()`` when done)."""
        from .observe.metrics import MetricsServer
        return MetricsServer(self, port=port, host=host).start()

    def join(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its :class:`RunResult`.

        Raises :class:`TimeoutError` if it is still running after ``timeout``
        seconds (the run goes on), and :class:`~reflux.NodeError` if a node
        failed under ``on_error="raise"`` (its ``result`` attribute holds the
        partial result).  Ctrl-C while waiting stops the pipeline (abandoning
        in-flight items), joins every worker and raises
        :class:`~reflux.PipelineInterrupted` (a ``KeyboardInterrupt``) carrying
        the partial result.
        """
        rt = self._runtime
        if rt is None:
            raise RuntimeError(f"Pipeline '{self.name}' was not started")
        if self._result is None:
            with self._latch:
                self._wait(rt, timeout)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _wait(self, rt: PoolRuntime, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not rt.wait(self.POLL):
                if self._latch.take():
                    raise KeyboardInterrupt
                rt.detach_stalled_sources(self.stop_grace)
                if self._monitor is not None:
                    self._monitor.tick()
                if self._monitor is not None and self._monitor.gave_up(self.stop_grace):
                    break  # the watchdog stopped the run; the clogged node is stuck in user code
                if rt.abandoned_for() > self.join_timeout:
                    break  # abandoned, and a call of user code never returned: finish without it
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"Pipeline '{self.name}' still running after {timeout}s")
            self._finish()
            if self._latch.take():  # Ctrl-C as the run ended: still the caller's to see
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._interrupt()
            raise PipelineInterrupted(self._result) from None

    def _rt(self) -> PoolRuntime:
        if self._runtime is None:
            raise RuntimeError(f"Pipeline '{self.name}' was not started")
        return self._runtime

    def _finish(self, status: str | None = None) -> RunResult:
        """Join the workers, collect the counters, build the result (once)."""
        with self._finish_lock:
            if self._result is not None:
                return self._result
            rt = self._rt()
            if self._monitor is not None:
                self._monitor.close()
            # after an abort, join_timeout counts from the abort (join() may have waited already)
            wait = self.join_timeout - rt.abandoned_for()
            stuck = rt.join_threads(max(wait, 0.1))
            if rt.preforked:
                from .run.process.launch import discard_preforked
                discard_preforked(rt.preforked)  # forked workers of nodes that never opened
            if stuck:
                logger.warning("Pipeline '%s': node(s) %s did not end within %.1fs (stuck in user "
                               "code?); their threads are left behind", self.name, ", ".join(stuck),
                               self.join_timeout)
            failure = rt.failure
            if status is None:
                status = ("failed" if failure is not None else "interrupted" if self._interrupted
                          else "stopped" if self._stopped else "completed")
            result = rt.collect(status, time.monotonic() - self._started_at, stuck)
            if failure is not None:
                self._error = self._node_error(failure, result)
            if self._checkpointer is not None:
                self._close_checkpoints(rt, result)
            self._result = result
            logger.debug("Pipeline '%s': %r", self.name, result)
            return result

    def _close_checkpoints(self, rt: PoolRuntime, result: RunResult) -> None:
        """After the run: record the last checkpoint when it completed or was stopped
        (the sinks commit what they hold), else roll the sinks back to the last one."""
        from .result import CheckpointReport

        checkpointer, self._checkpointer = self._checkpointer, None
        assert checkpointer is not None
        gate = rt.gate
        keep = (result.status in ("completed", "stopped") and not rt._aborted and rt.failure is None
                and not result.stuck and gate is not None and not gate.failed)
        error: BaseException | None = None
        if keep:
            try:
                gate.final(completed=result.status == "completed")
            except BaseException as exc:  # the last commit failed: the run fails
                error, keep = exc, False
        try:
            checkpointer.detach(rollback=not keep)
        except BaseException as exc:  # a sink's rollback or close failed
            error = error or exc
        # a commit beside the pipeline may fail the run after its status was read: read the
        # runtime's failure after detach(), which joined the thread committing (before it, a
        # failure could land between the gate's ``failed`` flag and the runtime's record)
        late = rt.failure if self._error is None else None
        snap = checkpointer.resumed
        result.checkpoint = CheckpointReport(
            path=checkpointer.config.path, resumed_from=None if snap is None else snap.id,
            resumed_items=0 if snap is None else snap.items, resumed_final=snap is not None and snap.final,
            taken=checkpointer.taken, last=checkpointer.last or None,
            skipped=0 if gate is None else gate.skipped, seconds=0.0 if gate is None else gate.held_seconds)
        if late is not None and self._error is None:
            self._error = self._node_error(late, result)
            result.status = "failed"
        if error is not None and self._error is None:
            if not isinstance(error, CheckpointError):
                wrapped = CheckpointError(f"Pipeline '{self.name}': the last checkpoint failed: "
                                          f"{type(error).__name__}: {error}", node=self.name)
                wrapped.__cause__ = error
                error = wrapped
            assert isinstance(error, CheckpointError)
            error.result = result
            result.status = "failed"
            self._error = error

    def _node_error(self, record: ErrorRecord, result: RunResult) -> NodeError:
        node = next((n for n in self._nodes if n.name == record.node), None)
        label = node.label if node is not None else f"node '{record.node}'"
        exc = record.exception
        if isinstance(exc, (ClogError, CheckpointError)):  # the watchdog, or a barrier: its error names the node
            exc.result = result
            return exc
        where = "" if record.item is None else f" on item {safe_repr(record.item, 100)}"
        text = safe_str(exc)
        if "\n" in text:
            # a multi-line message (a worker's traceback) is shown in full with the
            # chained cause; repeating it here doubled the output
            text = text.split("\n", 1)[0].rstrip(":") + " (see its cause for the rest)"
        err = NodeError(f"{label} failed{where}: {type(exc).__name__}: {text}", node=record.node, record=record)
        err.__cause__ = exc
        err.result = result
        return err

    def run(self, timeout: float | None = None, *, progress: bool | None = False) -> RunResult:
        """Start, wait for the end, and return the :class:`RunResult`.

        Raises :class:`~reflux.NodeError` if a node failed under
        ``on_error="raise"``.  Ctrl-C stops the pipeline (abandoning in-flight
        items), joins every worker and raises :class:`~reflux.PipelineInterrupted`
        (a ``KeyboardInterrupt``) carrying the partial result.  With
        ``timeout``, a run still going after that many seconds is abandoned
        and :class:`TimeoutError` is raised.

        ``progress=True`` shows a live view of the nodes on the terminal (see
        :mod:`reflux.observe.progress`); ``None`` shows it only when standard error is
        a terminal.
        """
        with self._latch:
            return self._run(timeout, progress)

    def _run(self, timeout: float | None, progress: bool | None) -> RunResult:
        try:
            self.start()
            if progress or progress is None:
                from .observe.progress import LiveProgress
                with LiveProgress(self, enabled=progress):
                    return self.join(timeout)
            return self.join(timeout)
        except TimeoutError:
            self._rt().abort()
            self._stopped = True
            self._finish()
            raise
        except KeyboardInterrupt as exc:
            # join() turns a Ctrl-C while it waits into PipelineInterrupted; one that
            # lands between start() and join() still stops the run it started
            if isinstance(exc, PipelineInterrupted) or self._runtime is None or self._result is not None:
                raise
            self._interrupt()
            raise PipelineInterrupted(self._result) from None

    def _interrupt(self) -> None:
        self._interrupted = True
        self._rt().abort()
        while True:
            try:
                result = self._finish("interrupted")
                break
            except KeyboardInterrupt:  # a second Ctrl-C while shutting down: keep shutting down
                self._rt().abort()
        logger.warning("Pipeline '%s' interrupted: %r", self.name, result)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Leaving the block waits for a started run to end (like an executor);
        if the block raised, the run is stopped first (``drain=False``)."""
        if self._runtime is None or self._result is not None:
            return
        if exc_type is not None:
            self.stop(drain=False)
            try:
                self._finish()
            except BaseException:  # never mask the block's own exception
                logger.exception("Pipeline '%s': error while stopping", self.name)
            return
        self.join()

