"""Ray workers: ``Transformer(fn, executor="ray")`` and ``Filter(predicate, executor="ray")``.

A node logic (see :mod:`reflux.logic.base`) that runs the node's function in
Ray actors, anywhere in a Ray cluster, while the pipeline (sources, routing,
sinks, the other nodes) runs in this process, the driver.

How it works
------------
* ``open()`` starts ``workers`` actors (:class:`~reflux.run.ray.actors.ActorSet`)
  with the node's ``ray_options``; the function (with its state) travels in
  each actor's creation call, and the actor loads it and calls its ``open()``.
  The actors start while the pipeline runs; batches go to an actor once it
  has answered a first call.
* ``process(batch)`` adds the items to the batch being cut; a batch leaves
  for the least busy actor once it holds about :data:`BATCH_SECONDS` of work
  (one item per batch until the first result tells the cost of an item;
  at most :data:`MAX_BATCH_ITEMS` items and about :data:`MAX_BATCH_BYTES`,
  judged by the pickled size of one item per batch), at once when no batch
  is in flight, and after :data:`FLUSH_AFTER` seconds otherwise.  A batch of
  :data:`PUT_BYTES` or more (numpy arrays, long strings...) is put in the
  object store with ``ray.put`` and sent by reference, so its data is not
  pickled into the call (array data is not copied into the pickle at all),
  and a batch re-sent after its actor died is not serialised again.
* Backpressure: each actor has :data:`~reflux.run.ray.actors.PREFETCH`
  batches in flight at most; with every slot taken, ``process()`` waits
  (``ray.wait``, GIL released, in slices of :data:`WAIT_SLICE` seconds that
  notice an abort), so a slow actor slows the node's input as a slow local
  node does and the driver holds a bounded number of items.
* Results are emitted in input order (``ordered=True``, the default) or as
  they complete.  While batches are in flight, ``next_deadline()`` asks the
  runtime to call ``tick()`` every 0.5-10 ms.  A Filter's actors send back
  one byte per item (keep or drop); the items themselves stay here.
* Failures: an exception of the function is an item failure with the
  actor's traceback attached, through the node's policy (retries run in the
  actor).  A batch whose actor died (its process exited, its machine left
  the cluster) is re-sent to another actor (or the restarted one) while the
  node's ``retries`` allow, else its items fail with
  :class:`~reflux.run.ray.connect.RayWorkerError`.  Ray restarts a dead actor
  while ``max_restarts`` allows (default: always).  An actor that cannot
  start, or a node whose every actor is gone for good, fails the run.
* The actors end with the node: after a normal end they call the function's
  ``close()``; on an abort they are killed at once.  Either way every actor
  is killed (``ray.kill``), so none outlives the run; an actor also dies
  with the driver process, as Ray's non-detached actors do.
"""
from __future__ import annotations

import itertools
import pickle
import time
from collections import deque
from typing import Any

from ...logic.base import Abort, NodeContext, NodeLogic, Outbox
from ...result import WorkerStats
from ...signals import Error, NeedsMoreWork, Signal
from ..process.launch import RemoteError
from .actors import PROBE_INTERVAL, ActorSet, NodeActor, first_line
from .connect import RayWorkerError, actor_options, default_workers, load_cloudpickle, load_ray

__all__ = ["RayFilterLogic", "RayTransformerLogic"]

#: Ray (this module is imported only when a run has a Ray node)
ray: Any = load_ray()

#: seconds of actor work a batch aims at once the cost of an item is known
BATCH_SECONDS = 0.05
#: most items, and about the most bytes (pickled), in one batch
MAX_BATCH_ITEMS = 8192
MAX_BATCH_BYTES = 16 << 20
#: a batch of this many bytes (pickled) goes through ray.put
PUT_BYTES = 100 << 10
#: seconds a partial batch waits for more items while other batches are in flight
FLUSH_AFTER = 0.005
#: result polling interval bounds while batches are in flight (seconds)
MIN_POLL, MAX_POLL = 0.0005, 0.01
#: longest single blocking wait, so an abandoned run is noticed
WAIT_SLICE = 0.05
#: seconds the actors get to run the function's close() at the end
EXIT_GRACE = 5.0


class _Batch:
    """Items sent to an actor together, and their results once back."""

    __slots__ = ("seq", "items", "arg", "actor", "sends", "result", "failure")

    def __init__(self, seq: int, items: list[Any]) -> None:
        self.seq = seq
        self.items = items
        #: what the call carries: the items, or their object ref (ray.put)
        self.arg: Any = None
        self.actor: NodeActor | None = None
        #: times it was sent
        self.sends = 0
        self.result: tuple[Any, ...] | None = None
        #: set when its items failed as a whole (their actor died, or the call failed)
        self.failure: BaseException | None = None


def _pickled_size(item: Any) -> int:
    """Bytes ``item`` takes pickled, buffers (numpy array data) counted without copying them."""
    buffers: list[Any] = []
    try:
        data = load_cloudpickle().dumps(item, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - it fails again when sent, and is handled there
        return 0
    return len(data) + sum(memoryview(b).nbytes for b in buffers)


class RayTransformerLogic(NodeLogic):
    """The logic of a Transformer with ``executor="ray"`` (see the module docs)."""

    #: the function is a predicate (Filter): only verdicts come back
    is_filter = False

    def __init__(self, node: Any, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.fn = node.predicate if self.is_filter else node.fn
        self.flat: bool = bool(getattr(node, "flat", False))
        self.ordered: bool = bool(getattr(node, "ordered", True))
        self.actors: ActorSet | None = None
        #: items fed back with NeedsMoreWork, not sent yet
        self.pending: deque[Any] = deque()
        #: items taken and not cut into a batch yet, and when the first of them came
        self._cut: list[Any] = []
        self._cut_at = 0.0
        #: batches to send (again) as soon as an actor has room
        self._resend: deque[_Batch] = deque()
        #: batches cut and not emitted yet, by sequence number
        self._batches: dict[int, _Batch] = {}
        #: object ref of each batch in flight
        self._refs: dict[Any, _Batch] = {}
        #: finished batches waiting to be emitted (unordered: arrival order)
        self._done: deque[_Batch] = deque()
        self._next_seq = 0
        self._next_emit = 0
        #: EWMA of actor seconds per item, and of bytes per item (pickled)
        self._cost: float | None = None
        self._item_bytes = 0.0
        self._deadline: float | None = None
        self._interval = MIN_POLL

    # ------------------------------------------------------------------ actors

    def open(self) -> None:
        """Start the actors (they load the function and call its ``open()`` as they start)."""
        node: Any = self.node  # a Transformer or a Filter
        options = actor_options(node.ray_options)
        n = node.workers or default_workers(options)
        pol = self.policy
        run_opts = {"flat": self.flat, "filter": self.is_filter, "retries": pol.retries, "backoff": pol.backoff,
                    "backoff_factor": pol.backoff_factor, "max_backoff": pol.max_backoff}
        # a list made once: stats() reads it from other threads while this logic
        # changes the counters of its WorkerStats in place (single attribute writes)
        self.stats.workers = [WorkerStats(i) for i in range(n)]
        self.actors = ActorSet(node.label, self.fn, run_opts, options, self.stats.workers)

    def _busy(self) -> bool:
        return bool(self._batches or self.pending or self._cut or self._resend)

    # ------------------------------------------------------------------ sending

    def _target(self) -> int:
        """Items per batch: about BATCH_SECONDS of work, within the item and byte bounds."""
        if self._cost is None:
            return 1  # an item may take seconds: learn its cost first
        n = BATCH_SECONDS / self._cost if self._cost > 0 else MAX_BATCH_ITEMS
        if self._item_bytes > 0:
            n = min(n, MAX_BATCH_BYTES / self._item_bytes)
        return int(max(1, min(MAX_BATCH_ITEMS, n)))

    def _next_size(self, final: bool) -> int:
        """How many items of the cut to send now (0: wait for more)."""
        n = len(self._cut)
        if not n:
            return 0
        target = self._target()
        if n >= target:
            return target
        if final or not self._refs or time.monotonic() - self._cut_at >= FLUSH_AFTER:
            return n
        return 0

    def _send(self, out: Outbox, *, block: bool, final: bool = False) -> None:
        """Send the batches that are ready; with ``block``, wait while a full batch finds no room."""
        while True:
            size = 0 if self._resend else self._next_size(final)
            if not self._resend and not size:
                return
            assert self.actors is not None
            actor = self.actors.free()
            if actor is None:
                if not block:
                    return
                self._wait(out)
                continue
            if self._resend:
                batch = self._resend.popleft()
            else:
                cut = self._cut
                items = cut if size == len(cut) else cut[:size]
                self._cut = [] if size == len(cut) else cut[size:]
                self._cut_at = time.monotonic()
                batch = _Batch(self._next_seq, items)
                self._next_seq += 1
                self._batches[batch.seq] = batch
            self._submit(batch, actor, out)

    def _submit(self, batch: _Batch, actor: NodeActor, out: Outbox) -> None:
        """Send one batch to ``actor`` (items Ray cannot pickle fail here, the rest go)."""
        try:
            if batch.arg is None:
                # the size of a batch, judged by its first item (one item pickled per batch)
                per = _pickled_size(batch.items[0])
                self._item_bytes = per if not self._item_bytes else 0.7 * self._item_bytes + 0.3 * per
                big = per * len(batch.items) >= PUT_BYTES
                batch.arg = ray.put(batch.items) if big else batch.items
            ref = actor.handle.run.remote(batch.seq, batch.arg)
        except Exception:
            # some item cannot be pickled: fail those, send the rest (anything else is raised)
            if not self._drop_unpicklable(batch, out):
                raise
            if batch.items:
                batch.arg = None
                self._resend.appendleft(batch)
            return
        batch.sends += 1
        batch.actor = actor
        actor.inflight += 1
        self._refs[ref] = batch
        if len(self._refs) == 1:  # the only batch in flight: look for it soon
            self._interval = MIN_POLL
            self._deadline = time.monotonic() + MIN_POLL

    def _drop_unpicklable(self, batch: _Batch, out: Outbox) -> int:
        """Fail the items of ``batch`` Ray cannot pickle (through the policy); returns how many."""
        cloudpickle = load_cloudpickle()
        good = []
        for item in batch.items:
            try:
                cloudpickle.dumps(item)
            except Exception as exc:  # noqa: BLE001
                self.remaining -= 1
                err = TypeError(f"{self.node.label}: this item cannot be sent to a Ray actor: "
                                f"{type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self.fail(item, err, 1, out)
            else:
                good.append(item)
        dropped = len(batch.items) - len(good)
        batch.items = good
        if dropped and not good:  # nothing left: an empty result keeps the order of emission going
            batch.result = (batch.seq, b"" if self.is_filter else [], [], 0, 0.0, False)
            self._done.append(batch)
        return dropped

    # ------------------------------------------------------------------ receiving

    def _collect(self, timeout: float) -> bool:
        """Take in whatever answers are ready, waiting up to ``timeout`` seconds for the first.

        Returns whether anything arrived.
        """
        assert self.actors is not None
        actors = self.actors
        refs = [*self._refs, *actors.refs]
        if not refs:
            due = actors.tend()
            if timeout > 0:
                self.ctx.sleep(timeout if due is None else max(0.0, min(timeout, due - time.monotonic())))
                actors.tend()
            return False
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            batch = self._refs.pop(ref, None)
            if batch is None:
                actors.on_ready(ref)
            else:
                self._on_result(batch, ref)
        actors.tend()
        return bool(ready)

    def _on_result(self, batch: _Batch, ref: Any) -> None:
        actor = batch.actor
        assert actor is not None and self.actors is not None
        actor.inflight -= 1
        try:
            res = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the call itself failed (e.g. items could not be loaded)
            err = RayWorkerError(f"{self.node.label}: the call to {actor.where()} failed: {first_line(exc)}")
            err.__cause__ = exc
            self._fail_batch(batch, err)
            return
        except ray.exceptions.RayError as exc:  # the actor died, or the result was lost with its machine
            if isinstance(exc, ray.exceptions.RayActorError):
                self.actors.lost(actor, exc)
            if batch.sends <= self.policy.retries:
                self.stats.retried += len(batch.items)
                self._resend.append(batch)
                return
            err = RayWorkerError(f"{self.node.label}: {actor.where()} died while it held this item "
                                 f"({first_line(exc)})")
            err.__cause__ = exc
            self._fail_batch(batch, err)
            return
        batch.result = res
        st = actor.stats
        n = len(batch.items)
        st.items += n
        st.batches += 1
        st.busy += res[4]
        if n:
            per = res[4] / n
            self._cost = per if self._cost is None else 0.7 * self._cost + 0.3 * per
        self._done.append(batch)

    def _fail_batch(self, batch: _Batch, exc: BaseException) -> None:
        batch.failure = exc
        self._done.append(batch)

    def _wait(self, out: Outbox) -> None:
        """Block (GIL released) until some answer arrives or a slice passes; emit what is ready.

        Raises :class:`~reflux.logic.base.Abort` (through ``ctx.sleep(0)``) when the run is abandoned.
        """
        if out.held():  # about to block: hand on what is ready first
            out.flush()
        self._collect(WAIT_SLICE)
        self._emit(out)
        self.ctx.sleep(0)  # raises Abort if the run is being abandoned

    # ------------------------------------------------------------------ emitting

    def _emit(self, out: Outbox) -> None:
        """Emit the results of finished batches (in input order when ``ordered``)."""
        done = self._done
        if not done:
            return
        if self.ordered:
            ready: dict[int, _Batch] = {}
            while done:
                b = done.popleft()
                ready[b.seq] = b
            while self._next_emit in ready:
                b = ready.pop(self._next_emit)
                self._next_emit += 1
                self._apply(b, out)
            if ready:
                done.extend(sorted(ready.values(), key=lambda b: b.seq))
        else:
            while done:
                self._apply(done.popleft(), out)

    def _apply(self, batch: _Batch, out: Outbox) -> None:
        """Emit one finished batch's outputs; failed items go through the error policy."""
        del self._batches[batch.seq]
        items = batch.items
        if batch.failure is not None:
            for item in items:
                self.remaining -= 1
                self.fail(item, batch.failure, batch.sends, out)
            return
        res = batch.result
        assert res is not None
        _, values, errors, retried, _busy, signals = res
        self.stats.retried += retried
        if not errors and not signals and not self.flat:
            buf = out.ports[0]
            buf.extend(values)
            self.remaining -= len(items)
            if len(buf) >= out.limit:
                out.flush()
            return
        failed = {e[0]: e for e in errors}
        emit = out.emit
        for i, item in enumerate(items):
            self.remaining -= 1
            e = failed.get(i)
            if e is not None:
                self.fail(item, self._exception(e, batch), e[5], out)
                continue
            v = values[i]
            if self.flat:
                for r in v:
                    if isinstance(r, Signal):
                        if r.__class__ is NeedsMoreWork:
                            self.stats.fed_back += 1
                            self.pending.append(r.item)
                        elif r.__class__ is Error:
                            self.fail(item, r.exception, 1, out)
                    else:
                        emit(r)
            elif v.__class__ is NeedsMoreWork:
                self.stats.fed_back += 1
                self.pending.append(v.item)
            else:
                emit(v)

    def _exception(self, e: tuple[Any, ...], batch: _Batch) -> BaseException:
        """The exception of an error entry, with the actor's traceback attached."""
        _i, data, name, message, tb, _attempts = e
        exc: BaseException | None = None
        if data is not None:
            try:
                exc = pickle.loads(data)
            except Exception:  # noqa: BLE001 - e.g. its class is not importable here
                exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteError(f"{name}: {message}")
        assert batch.actor is not None
        text = f"Traceback in {batch.actor.where()}:\n{tb.rstrip()}"
        add_note = getattr(exc, "add_note", None)
        if add_note is not None:  # 3.11+: shown by traceback.format_exception
            add_note(text)
        else:  # pragma: no cover - 3.10
            exc.__cause__ = RemoteError(text)
        return exc

    # ------------------------------------------------------------------ the logic contract

    def process(self, batch: list[Any], out: Outbox) -> None:
        """Cut the items into batches for the actors; emit whatever results are ready."""
        self.remaining += len(batch)
        if not self._cut:
            self._cut_at = time.monotonic()
        self._cut.extend(batch)
        self._send(out, block=True)
        if self._collect(0):
            self._interval = MIN_POLL
        self._emit(out)

    def has_feedback(self) -> bool:
        return bool(self.pending)

    def process_feedback(self, max_items: int, out: Outbox) -> None:
        pending = self.pending
        # most recent first (depth-first), as the thread Transformer does
        self.process([pending.pop() for _ in range(min(max_items, len(pending)))], out)

    def next_deadline(self) -> float | None:
        """When to look again: soon while batches are in flight or items wait, every
        PROBE_INTERVAL while an actor is starting or restarting (its state shows in the
        stats even while no item comes), else never."""
        if self._deadline is None:
            self._deadline = self._next_look()
        return self._deadline

    def _next_look(self) -> float | None:
        if self._busy():
            return time.monotonic() + self._interval
        if self.actors is not None and self.actors.waiting():
            return time.monotonic() + PROBE_INTERVAL
        return None

    def tick(self, now: float, out: Outbox) -> None:
        """Emit results that arrived while no input came; send a partial batch that waited long
        enough; take in the answers of starting or restarting actors."""
        if self._collect(0):
            self._interval = MIN_POLL
        else:
            self._interval = min(MAX_POLL, self._interval * 2)
        self._emit(out)
        self._send(out, block=False)
        self._deadline = self._next_look()

    def finish(self, out: Outbox) -> None:
        """End of stream: send what is left, wait for every result (and the work fed back meanwhile)."""
        while True:
            if self.pending:
                fed = [self.pending.pop() for _ in range(len(self.pending))]
                self.remaining += len(fed)
                self._cut.extend(fed)
            self._send(out, block=False, final=True)
            if self._collect(0):
                self._emit(out)
            if not self._busy():
                break
            self._wait(out)
        self._deadline = None

    def close(self) -> None:
        """End the actors: after a normal end they run the function's ``close()`` first."""
        actors = self.actors
        if actors is None:
            return
        graceful = not self._busy() and not self._aborted()
        if graceful:
            actors.close()
            deadline = time.monotonic() + EXIT_GRACE
            while actors.closing() and time.monotonic() < deadline and not self._aborted():
                refs = list(actors.refs)
                ready, _ = ray.wait(refs, num_returns=len(refs),
                                    timeout=min(WAIT_SLICE, max(0.0, deadline - time.monotonic())))
                for ref in ready:
                    try:
                        actors.on_ready(ref)
                    except RayWorkerError:  # a probe's news no longer matters
                        pass
        actors.kill()
        if actors.close_errors:
            errors = list(actors.close_errors)
            actors.close_errors.clear()
            raise RayWorkerError(f"{self.node.label}: the function's close() failed in a Ray actor:\n{errors[0]}")

    def _aborted(self) -> bool:
        try:
            self.ctx.sleep(0)
        except Abort:
            return True
        return False

    def abandon(self) -> int:
        """Forget the items in flight, waiting and fed back; the actors are killed."""
        if self.actors is not None:
            self.actors.kill()
        n = self.remaining + len(self.pending)
        self.remaining = 0
        self.pending.clear()
        self._cut = []
        self._resend.clear()
        self._batches.clear()
        self._refs.clear()
        self._done.clear()
        return n


class RayFilterLogic(RayTransformerLogic):
    """The logic of a Filter with ``executor="ray"``: verdicts come back, items stay here."""

    is_filter = True

    def _apply(self, batch: _Batch, out: Outbox) -> None:
        if batch.failure is not None or batch.result is None:
            super()._apply(batch, out)
            return
        del self._batches[batch.seq]
        items = batch.items
        _, flags, errors, retried, _busy, _signals = batch.result
        self.stats.retried += retried
        buf = out.ports[0]
        before = len(buf)
        if not errors:
            buf.extend(itertools.compress(items, flags))
            self.remaining -= len(items)
            self.stats.filtered += len(items) - (len(buf) - before)
        else:
            failed = {e[0]: e for e in errors}
            for i, item in enumerate(items):
                self.remaining -= 1
                e = failed.get(i)
                if e is not None:
                    self.fail(item, self._exception(e, batch), e[5], out)
                elif flags[i]:
                    out.emit(item)
                else:
                    self.stats.filtered += 1
        if len(out.ports[0]) >= out.limit:
            out.flush()
