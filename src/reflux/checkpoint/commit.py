"""Recording a checkpoint across the sinks, and finding where a run resumes.

A checkpoint is recorded at a barrier, when the pipeline is drained and held
(:mod:`reflux.run.barrier`).  The order makes the *decision* one atomic write:

1. at-least-once sinks: ``flush()``; database sinks after the first commit;
2. file sinks *prepare* (flush or sync their files; say which renames are due);
3. the decision: the first database sink (``checkpoint_role = "transaction"``)
   commits its rows together with the checkpoint (the snapshot bytes) in one
   transaction; without a database sink, the checkpoint file's write is the
   decision;
4. the checkpoint file records it (without a database sink this was step 3);
5. file sinks *commit*: rename their finished files into place.

A crash before 3 leaves the previous checkpoint in force (and a restart cuts
the file sinks back to it); a crash after 3 leaves this one, whose renames a
restart redoes.  So the deciding database sink and the file sinks are
exactly-once.  Sinks of step 1 may see items again: at-least-once.

**The commit runs beside the pipeline** (``Checkpoint(commit="beside")``, and by default
where the pipeline's threads wait on worker processes or run without the GIL; under the GIL a
pipeline writing to a database commits inline, in its own thread, which cost less than
taking turns at the GIL with a thread committing beside it).  Only what must see the drained
pipeline runs while it is held: the flushes, the file sinks' *prepare*, the
snapshot, and a *cut* of each database sink's transaction (its rows so far are
what the checkpoint commits; rows that arrive later wait for the commit, in
memory or in the call, see :meth:`~reflux.connectors._sql.SqlSink.checkpoint_cut`).
Steps 1 (database sinks), 3, 4 and 5 then run in a thread of their own while
the sources go on, so the pipeline does not wait for a database to flush its
log.  They run in one thread kept for the run (starting a thread per
checkpoint made the pipeline wait for each start: about 0.5 ms).  The next
checkpoint (and the end of the run) first waits for them; a failure there
fails the run.  A database sink without ``checkpoint_cut`` commits while the
pipeline is held.

**Committing inline, a deciding sink that can send its commit** (``checkpoint_send``:
PostgreSQL) sends it while the pipeline is held and does not wait for the answer; the
sources go on, and the next checkpoint (or the end of the run) first collects the
answer (``checkpoint_confirm``), then does steps 4 and 5.  So the checkpoint file and
the file sinks' renames follow the decision one checkpoint later; a restart in
between finds the decision in the database (step 3) and catches up.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CheckpointError
from .config import Checkpoint
from .protocol import role_of
from .snapshot import Snapshot
from .store import CheckpointStore

__all__ = ["Checkpointer"]

logger = logging.getLogger("reflux")


class Checkpointer:
    """Records a pipeline's checkpoints and resumes it (see the module docs).

    ``sinks`` are the pipeline's Loaders as ``(name, function)``, in pipeline order.
    """

    def __init__(self, config: Checkpoint, pipeline: str, sinks: Sequence[tuple[str, Any]], *,
                 overlaps: bool = False) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store = CheckpointStore(config.path, durable=config.durable)
        transactional = [(n, fn) for n, fn in sinks if role_of(fn) == "transaction"]
        #: the sink whose commit decides a checkpoint (the first database sink), if any
        self.decider: tuple[str, Any] | None = transactional[0] if transactional else None
        #: further database sinks: committed before the decision (at-least-once)
        self.early: list[tuple[str, Any]] = transactional[1:]
        self.files = [(n, fn) for n, fn in sinks if role_of(fn) == "files"]
        self.flushers = [(n, fn) for n, fn in sinks
                         if role_of(fn) is None and callable(getattr(fn, "flush", None))]
        self.run_id = ""
        #: the checkpoint the run resumed from
        self.resumed: Snapshot | None = None
        #: number of the last checkpoint decided (or resumed from)
        self.last = 0
        #: number given to the last checkpoint taken (its commit may still run)
        self._numbered = 0
        #: checkpoints recorded by this run
        self.taken = 0
        self._items_base = 0
        self._attached: list[tuple[str, Any]] = []
        #: called (from the commit thread) with the exception when a commit fails
        self.on_error: Callable[[BaseException], None] | None = None
        #: the thread committing checkpoints beside the pipeline (started at the first one),
        #: and the commits it is given (wait() joins the queue: each is marked done after it ran)
        self._committer: threading.Thread | None = None
        self._jobs: queue.Queue[tuple[int, Snapshot, bytes, dict[str, Any]] | None] = queue.Queue()
        self._failure: BaseException | None = None
        tx = ([self.decider] if self.decider else []) + self.early
        # Checkpoint(commit="auto"): beside the pipeline where its own threads leave room for
        # it (``overlaps``: they wait on worker processes or Ray, or run without the GIL) or
        # where no database commits; else inline (see Checkpoint.commit)
        beside = config.commit == "beside" or (config.commit == "auto" and (overlaps or not tx))
        #: whether checkpoints commit beside the pipeline (the database sinks all have checkpoint_cut)
        self.background = beside and all(callable(getattr(fn, "checkpoint_cut", None)) for _, fn in tx)
        #: committing inline, the deciding sink's commit was sent and not yet confirmed (see
        #: TransactionalSink.checkpoint_send): the rest of its decision, done by the next wait()
        self._sent: tuple[int, Snapshot, bytes, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ before the run

    def resume(self) -> Snapshot | None:
        """Open the checkpoint file, attach the sinks and find the checkpoint to resume
        from (``None``: start from the beginning).  File sinks finish what it promised."""
        self.store.open()
        self.run_id = self.store.run_id(self.pipeline)
        stored = self.store.latest(self.pipeline)
        for name, sink in ([self.decider] if self.decider else []) + self.early + self.files:
            self._call(name, sink.checkpoint_attach, self.run_id, name, self.config.durable)
            self._attached.append((name, sink))
        snap: Snapshot | None = None
        if self.decider is not None:
            name, sink = self.decider
            marker = self._call(name, sink.checkpoint_recover)
            if marker is None and stored is not None:
                raise CheckpointError(
                    f"Loader '{name}': the checkpoint file {self.config.path!r} records checkpoint "
                    f"#{stored[0]} of pipeline '{self.pipeline}', but the sink's database holds no checkpoint "
                    f"of this run: it is not the database the run wrote to, or it was changed. Delete the "
                    f"checkpoint file to start over", node=name)
            if marker is not None:
                if stored is not None and marker[0] < stored[0]:
                    raise CheckpointError(
                        f"Loader '{name}': the sink's database holds checkpoint #{marker[0]} of this run, "
                        f"older than #{stored[0]} in the checkpoint file {self.config.path!r}: the database "
                        f"was restored from an older copy. Delete the checkpoint file to start over",
                        node=name)
                snap = Snapshot.decode(marker[1], self.pipeline)
                if stored is None or stored[0] != marker[0]:
                    # the run crashed between the decision and the file's write: catch up
                    self.store.save(self.pipeline, snap.id, snap.taken, snap.items, snap.final, marker[1])
        elif stored is not None:
            snap = Snapshot.decode(stored[1], self.pipeline)
        for name, sink in self.files:
            self._call(name, sink.checkpoint_recover, None if snap is None else snap.sinks.get(name))
        self.resumed = snap
        self.last = self._numbered = 0 if snap is None else snap.id
        self._items_base = 0 if snap is None else snap.items
        return snap

    # ------------------------------------------------------------------ at a barrier

    def record(self, sources: dict[str, Any], nodes: dict[str, Any], pulled: int, final: bool) -> Snapshot:
        """Take checkpoint ``last + 1`` (the pipeline is drained and held; ``pulled``:
        items the Extractors pulled in this run so far) and start its commit, beside the
        pipeline when the sinks allow (see the module docs); ``final``: the run is over,
        commit now."""
        self.wait()
        k = self._numbered + 1
        for name, sink in self.flushers:
            self._call(name, sink.flush)
        prepared = {name: self._call(name, sink.checkpoint_prepare, k, final) for name, sink in self.files}
        snap = Snapshot(id=k, taken=time.time(), items=self._items_base + pulled, sources=sources,
                        nodes=nodes, sinks=prepared, final=final)
        blob = snap.encode(f"Pipeline '{self.pipeline}'")
        self._numbered = k
        tx = ([self.decider] if self.decider else []) + self.early
        if self.background:
            for name, sink in tx:
                self._call(name, sink.checkpoint_cut, k)
        if final or not self.background:
            self._decide(k, snap, blob, prepared, send=not final)
            return snap
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_loop, name=f"reflux:{self.pipeline}:checkpoints",
                                               daemon=True)
            self._committer.start()
        self._jobs.put((k, snap, blob, prepared))
        return snap

    def _commit_loop(self) -> None:
        """[the committer thread] Commit each checkpoint given, until told to stop (``None``)."""
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            try:
                self._decide(*job)
            except BaseException as exc:  # reported to the run (which fails) and to the next wait()
                self._failure = exc
                hook = self.on_error
                if hook is not None:
                    hook(exc)
            finally:
                self._jobs.task_done()

    def _decide(self, k: int, snap: Snapshot, blob: bytes, prepared: dict[str, Any], send: bool = False) -> None:
        """Steps 1 (database sinks), 3, 4, 5 of the module docs.  ``send``: a deciding sink
        that can send its commit and confirm it later does so, and the next :meth:`wait`
        does steps 4 and 5."""
        for name, sink in self.early:
            self._call(name, sink.checkpoint_commit, k, None)
        if self.decider is not None:
            name, sink = self.decider
            if send and callable(getattr(sink, "checkpoint_send", None)):
                if self._call(name, sink.checkpoint_send, k, blob):
                    self._sent = (k, snap, blob, prepared)
                    return
            else:
                self._call(name, sink.checkpoint_commit, k, blob)
        self._decided(k, snap, blob, prepared)

    def _decided(self, k: int, snap: Snapshot, blob: bytes, prepared: dict[str, Any]) -> None:
        """Steps 4 and 5: checkpoint ``k`` is decided."""
        try:
            self.store.save(self.pipeline, k, snap.taken, snap.items, snap.final, blob)
        except Exception as exc:  # the file went away, the disk is full
            raise CheckpointError(f"Pipeline '{self.pipeline}': checkpoint #{k} could not be written to "
                                  f"{self.config.path!r}: {type(exc).__name__}: {exc}", node=self.pipeline) from exc
        for name, sink in self.files:
            self._call(name, sink.checkpoint_commit, k, prepared[name])
        self.last = k
        self.taken += 1
        logger.debug("Pipeline '%s': checkpoint #%d recorded (%d items)", self.pipeline, k, snap.items)

    def wait(self) -> None:
        """Wait for the commit running beside the pipeline, or for the answer to the one
        sent inline; raise its failure."""
        sent, self._sent = self._sent, None
        if sent is not None and self.decider is not None:
            name, sink = self.decider
            self._call(name, sink.checkpoint_confirm, sent[0])
            self._decided(*sent)
        self._jobs.join()
        if self._failure is not None:
            raise self._failure

    def _stop_committer(self) -> None:
        """End the committer thread (after wait(): it has nothing left)."""
        thread = self._committer
        if thread is not None:
            self._committer = None
            self._jobs.put(None)
            thread.join()

    # ------------------------------------------------------------------ after the run

    def detach(self, rollback: bool) -> None:
        """Let the sinks go (rolling back what no checkpoint committed if ``rollback``) and
        close the checkpoint file.  Every sink is detached even if one fails; the first
        failure is raised after."""
        first: BaseException | None = None
        try:
            self.wait()
        except BaseException as exc:  # reported to the run already; still let the sinks go
            first = exc if not rollback else None
        self._stop_committer()
        for name, sink in self._attached:
            try:
                self._call(name, sink.checkpoint_detach, rollback)
            except BaseException as exc:  # report after the others are detached
                if first is None:
                    first = exc
        self._attached = []
        self.store.close()
        if first is not None:
            raise first

    def _call(self, name: str, fn: Any, *args: Any) -> Any:
        """Call a sink's checkpoint method; a failure names the Loader."""
        try:
            return fn(*args)
        except (CheckpointError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the sink's database or files (TransactionAborted is a BaseException)
            what = getattr(fn, "__name__", "checkpoint")
            raise CheckpointError(f"Loader '{name}': {what} failed: {type(exc).__name__}: {exc}",
                                  node=name) from exc
