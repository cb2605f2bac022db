"""Process workers: ``Transformer(fn, executor="process", workers=N, ordered=True)``.

CPU-bound pure Python does not scale over threads on a GIL build of CPython;
this module runs a Transformer's function in ``N`` worker processes instead.
It is a node *logic* (see :mod:`reflux.logic.base`), so any runtime that drives
logics runs it: the runtime hands it batches, it hands results to the outbox.

How it works
------------
* ``open()`` pickles the function once (with its state: a callable object's
  attributes) and starts a fresh interpreter (``subprocess``, the equivalent
  of multiprocessing's "spawn": no fork of a threaded process); more start,
  up to ``N``, as soon as a chunk finds every worker busy.
  Each gets the function once, with the data multiprocessing's spawn sends
  (``sys.path``, the working directory, the parent's ``__main__``), so
  functions defined in the user's script work as with ``multiprocessing``.
  The workers start while the pipeline runs; nothing waits for them.
* ``process(batch)`` cuts the batch into chunks (sized from the measured cost
  per item: one item per chunk until the first result is back, then cheap
  items travel as whole batches, costly ones in pieces of about
  :data:`CHUNK_SECONDS` of work), sends each chunk to the least busy
  worker and emits whatever results are back.  It blocks (in ``poll``, the
  GIL released) only while ``workers * PREFETCH`` chunks are in flight.
* Items travel as pickle protocol 5 with out-of-band buffers, over plain OS
  pipes (``os.writev``/``os.readv``) on Linux, over
  :mod:`multiprocessing.connection` pipes elsewhere (see
  :mod:`reflux.run.process.transport`): numpy array data is not copied into
  the pickle stream and arrives writable (see :mod:`reflux.run.process.child`).
* Results are emitted in input order (``ordered=True``, the default) or as
  they complete (``ordered=False``).  While chunks are in flight,
  ``next_deadline()`` asks the runtime to call ``tick()`` every 0.5-10 ms, so
  results come out even when no new input arrives; ``finish()`` drains.
* A worker's failure on an item comes back with the worker's formatted
  traceback (added to the exception as a note; ``__cause__`` on 3.10) and goes
  through the node's error policy per item.  Retries run in the worker.
  A worker that dies fails the items it held (``ProcessWorkerError``, through
  the policy) and is replaced.
* For a runtime whose threads must not block, the logic also offers
  :meth:`~ProcessTransformerLogic.busy` (``process()`` would block),
  :meth:`~ProcessTransformerLogic.wait_handles` (what
  :func:`multiprocessing.connection.wait` takes, ready when results are back) and :meth:`~ProcessTransformerLogic.drain_step` (a non-blocking
  step of ``finish()``).
* A checkpoint barrier does not wait for the chunks in flight: they are saved
  with the checkpoint as the messages already encoded to send them
  (:meth:`~ProcessTransformerLogic.inflight_state`), the workers keep working,
  and a run resuming from it sends them again before any new input
  (:meth:`~ProcessTransformerLogic.restore_inflight`).
* The workers end with the node: on a normal end they finish their input,
  run the function's ``close()`` and exit; on an abort (a failure, ``stop
  (drain=False)``, Ctrl-C) they are terminated.  A worker whose parent dies
  sees its input pipe close and exits.
"""
from __future__ import annotations

import math
import multiprocessing.spawn
import pickle
import subprocess
import time
from collections import deque
from typing import Any

from ...describe.executors import check_picklable
from ...describe.nodes import Transformer
from ...logic.base import NodeContext, NodeLogic, Outbox
from ...result import Event
from ...signals import Error, NeedsMoreWork, Signal
from . import child as wire
from .launch import (
    ForkedProcess,
    ProcessWorkerError,
    RemoteError,
    default_workers,
    spawn_worker,
    untrack,
)
from .transport import Link, PipeLink, Waiter, chosen_transport, make_waiter, spawn_portable_worker

__all__ = ["ProcessTransformerLogic"]

#: chunks in flight per worker (one being worked on, the rest queued in its pipe)
PREFETCH = 3
#: seconds of worker time a chunk aims at once the cost per item is known
CHUNK_SECONDS = 0.005
#: result polling interval bounds while chunks are in flight (seconds)
MIN_POLL, MAX_POLL = 0.0005, 0.01
#: longest single blocking wait, so an abandoned run is noticed
WAIT_SLICE = 0.05
#: seconds a worker gets to finish (close hook, exit) before it is killed
EXIT_GRACE = 5.0


class _Worker:
    """Parent-side handle of one worker process."""

    __slots__ = ("popen", "pid", "link", "key", "inflight", "ready", "closed", "index")

    def __init__(self, popen: Any, link: Link, index: int) -> None:
        self.popen = popen
        self.pid: int = popen.pid
        #: the parent's ends of the worker's pipes (see :mod:`reflux.run.process.transport`)
        self.link = link
        #: what the waiter waits on for this worker's results (fixed while it lives)
        self.key: Any = link.waitable
        #: chunks sent and not answered yet, oldest first (the worker answers in order)
        self.inflight: deque[_Chunk] = deque()
        self.ready = False
        #: the CLOSED message arrived (or the pipe ended)
        self.closed = False
        self.index = index


class _Chunk:
    """Items sent to a worker together, and their results once back."""

    __slots__ = ("seq", "items", "wire", "result", "pid")

    def __init__(self, seq: int, items: list[Any], wire: list[Any]) -> None:
        self.seq = seq
        self.items = items
        #: the message as sent (encoded): what a checkpoint saves of it (see inflight_state)
        self.wire = wire
        self.result: tuple[Any, ...] | None = None
        #: the worker that answered
        self.pid = 0


def _attach_traceback(exc: BaseException, tb: str, pid: int) -> BaseException:
    """Attach a worker's formatted traceback to the exception the parent re-raises or records."""
    text = f"Traceback in worker process {pid}:\n{tb.rstrip()}"
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:  # 3.11+: shown by traceback.format_exception
        add_note(text)
    else:  # pragma: no cover - 3.10
        exc.__cause__ = RemoteError(text)
    return exc


class ProcessTransformerLogic(NodeLogic):
    """The logic of a Transformer with ``executor="process"`` (see the module docs)."""

    node: Transformer

    def __init__(self, node: Transformer, ctx: NodeContext, preforked: list[Any] | None = None) -> None:
        super().__init__(node, ctx)
        #: workers forked for this node when the run started (start_method="fork"), to adopt at open
        self._preforked = preforked
        self.flat: bool = bool(node.flat)
        self.ordered: bool = bool(getattr(node, "ordered", True))
        self.n_workers: int = getattr(node, "workers", None) or default_workers()
        self.max_chunks = self.n_workers * PREFETCH
        #: items fed back with NeedsMoreWork, not sent yet
        self.pending: deque[Any] = deque()
        self.workers: list[_Worker] = []
        #: the transport of spawned workers, and what waits for their results (set by open())
        self._transport = "native"
        self._waiter: Waiter | None = None
        #: live workers by their link's waitable (a result pipe's fd or connection)
        self._by_key: dict[Any, _Worker] = {}
        #: chunks sent and not emitted yet, by sequence number
        self._chunks: dict[int, _Chunk] = {}
        #: finished chunks waiting to be emitted (unordered: arrival order)
        self._done: deque[_Chunk] = deque()
        self._next_seq = 0
        self._next_emit = 0
        #: EWMA of worker seconds per item (None until the first result)
        self._cost: float | None = None
        self._deadline: float | None = None
        self._interval = MIN_POLL
        self._setup: list[Any] | None = None  # the SETUP message for spawned workers
        self._fork_setup: list[Any] | None = None  # ... for forked ones (no preparation)
        self._fn_pickle = b""
        self._opts: dict[str, Any] = {}
        self._stopped = False
        self._closing_errors: list[str] = []

    # ------------------------------------------------------------------ workers

    def open(self) -> None:
        """Pickle the function (once) and start the worker processes."""
        node = self.node
        fn_pickle = check_picklable(node.label, node.fn)  # its state may have changed since
        pol = self.policy
        opts = {"flat": self.flat, "retries": pol.retries, "backoff": pol.backoff,
                "backoff_factor": pol.backoff_factor, "max_backoff": pol.max_backoff}
        self._fn_pickle, self._opts = fn_pickle, opts
        try:
            self._transport = chosen_transport()
        except ValueError as exc:
            raise ProcessWorkerError(f"{node.label}: {exc}") from None
        self._waiter = make_waiter(self._transport)
        pre, self._preforked = self._preforked, None
        if pre:
            # start_method="fork": adopt the workers forked when the run started; they
            # share this interpreter's state, so they need no preparation
            self._fork_setup = wire.encode((wire.SETUP, None, fn_pickle, opts))
            for i, (proc, to_w, from_r) in enumerate(pre):
                self._send_setup(self._adopt(_Worker(proc, PipeLink(to_w, from_r), i)))
            return
        # one worker now; the others when there is work for them (see _pick), so a
        # short run starts (and ends) one interpreter, not ``workers`` of them
        self._send_setup(self._spawn(0))

    def _adopt(self, w: _Worker) -> _Worker:
        """Track a started worker: its slot, and its result pipe in the waiter."""
        assert self._waiter is not None
        if w.index < len(self.workers):
            self.workers[w.index] = w
        else:
            self.workers.append(w)
        self._by_key[w.key] = w
        self._waiter.register(w.key)
        return w

    def _spawn(self, index: int) -> _Worker:
        """Start one worker interpreter with a pipe each way (over the chosen transport)."""
        link: Link
        if self._transport == "portable":
            popen, link = spawn_portable_worker()
        else:
            popen, wfd, rfd = spawn_worker()
            link = PipeLink(wfd, rfd)
        return self._adopt(_Worker(popen, link, index))

    def _send_setup(self, w: _Worker) -> None:
        if isinstance(w.popen, ForkedProcess):
            setup = self._fork_setup
        else:  # a fresh interpreter: it first re-creates sys.path, cwd and __main__
            if self._setup is None:
                prep = multiprocessing.spawn.get_preparation_data(f"reflux:{self.node.name}")
                if "authkey" in prep:  # an AuthenticationString refuses plain pickling
                    prep["authkey"] = bytes(prep["authkey"])
                self._setup = wire.encode((wire.SETUP, prep, self._fn_pickle, self._opts))
            setup = self._setup
        assert setup is not None
        try:
            w.link.send(setup)
        except OSError:
            pass  # it died already: its pipe's end tells us when we read

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.pid for w in self.workers]

    def _crashed(self, w: _Worker) -> None:
        """A worker's pipe ended unexpectedly: fail what it held, start a replacement."""
        try:
            code = w.popen.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            w.popen.kill()
            code = w.popen.wait()
        self._forget(w)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        lost = list(w.inflight)
        w.inflight.clear()
        if not w.ready:
            self._stopped = True
            raise ProcessWorkerError(f"{self.node.label}: worker process {w.pid} {how} while starting")
        if not self._stopped:
            self._send_setup(self._spawn(w.index))
        for chunk in lost:
            n = len(chunk.items)
            err = ProcessWorkerError(f"{self.node.label}: worker process {w.pid} {how} while it held "
                                     f"this item (in a chunk of {n})")
            chunk.pid = w.pid
            chunk.result = (wire.DONE, chunk.seq, [None] * n,
                            [(i, None, "", "", "", 1) for i in range(n)], 0, 0.0, False, err)
            self._done.append(chunk)

    def _forget(self, w: _Worker) -> None:
        """Close the parent's ends of a worker's pipes and stop tracking it."""
        self._unwatch(w)
        w.link.close()
        w.closed = True
        untrack(w.popen)

    def _unwatch(self, w: _Worker) -> None:
        """Stop waiting for a worker's messages (idempotent)."""
        if self._by_key.get(w.key) is w:
            del self._by_key[w.key]
            assert self._waiter is not None
            self._waiter.unregister(w.key)

    # ------------------------------------------------------------------ sending

    def _chunk_size(self, left: int) -> int:
        """Items for the next chunk, ``left`` items of the batch still to send.

        Until the first result tells the cost of an item, chunks hold one item
        (an item may take seconds: a big first chunk would hold everything up);
        then about CHUNK_SECONDS of work each.
        """
        if self._cost is None:
            return 1
        if self._cost <= 0:
            return left
        return max(1, min(left, math.ceil(CHUNK_SECONDS / self._cost)))

    def _submit(self, items: list[Any], out: Outbox) -> None:
        """Send one chunk to the least busy worker (items that cannot be pickled fail here)."""
        seq = self._next_seq
        try:
            parts = wire.encode((wire.WORK, seq, items))
        except Exception:  # noqa: BLE001 - some item cannot be pickled: fail those, send the rest
            good = []
            for item in items:
                try:
                    pickle.dumps(item, protocol=5)
                except Exception as exc:  # noqa: BLE001
                    self.remaining -= 1
                    err = TypeError(f"{self.node.label}: this item cannot be sent to a worker "
                                    f"process: {type(exc).__name__}: {exc}")
                    err.__cause__ = exc
                    self.fail(item, err, 1, out)
                else:
                    good.append(item)
            if good:
                self._submit(good, out)
            return
        self._next_seq = seq + 1
        chunk = _Chunk(seq, items, parts)
        self._chunks[seq] = chunk
        w = self._pick()
        w.inflight.append(chunk)
        try:
            w.link.send(parts)
        except OSError:  # it died: reading its pipe's end fails what it held
            pass
        if len(self._chunks) == 1:  # the only chunk in flight: look for it soon
            self._interval = MIN_POLL
            self._deadline = time.monotonic() + MIN_POLL

    def _pick(self) -> _Worker:
        """The worker for the next chunk: an idle one, else a new one while fewer than
        ``workers`` run, else the least busy."""
        live = [w for w in self.workers if not w.closed]
        for w in live:
            if not w.inflight:
                return w
        if len(self.workers) < self.n_workers:
            w = self._spawn(len(self.workers))
            self._send_setup(w)
            return w
        return min(live, key=lambda w: len(w.inflight))

    def _send(self, items: list[Any], out: Outbox) -> None:
        """Send ``items`` (already counted in ``remaining``), waiting while too many are in flight."""
        i, n = 0, len(items)
        while i < n:
            while len(self._chunks) >= self.max_chunks:
                self._wait(out)
            size = self._chunk_size(n - i)
            self._submit(items if size == n else items[i:i + size], out)
            i += size

    # ------------------------------------------------------------------ receiving

    def _collect(self, timeout: float) -> bool:
        """Read whatever results are ready, waiting up to ``timeout`` seconds for the first.

        Returns whether anything arrived.
        """
        got = False
        waiter = self._waiter
        if waiter is None:  # never opened
            return False
        for _ in range(64):  # bounded: the caller gets to emit and to check for an abort
            ready = waiter.wait(timeout)
            if not ready:
                break
            timeout = 0
            for key in ready:
                w = self._by_key.get(key)
                if w is None:
                    continue
                try:
                    data, bufs = w.link.recv_raw()
                except (EOFError, OSError):
                    self._crashed(w)
                    got = True
                    continue
                got = True
                self._on_message(w, pickle.loads(data, buffers=bufs))
        return got

    def _on_message(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == wire.DONE:
            chunk = w.inflight.popleft()
            if chunk.seq != msg[1]:  # pragma: no cover - a reflux bug
                raise ProcessWorkerError(f"{self.node.label}: worker {w.pid} answered chunk {msg[1]} "
                                         f"instead of {chunk.seq}")
            chunk.result = msg
            chunk.pid = w.pid
            for level, message, fields in msg[8] if len(msg) > 8 else ():  # reflux.emit() in the worker
                self.ctx.emit(Event(self.name, level, message, fields))
            busy, n = msg[5], len(chunk.items)
            if n:
                per = busy / n
                self._cost = per if self._cost is None else 0.7 * self._cost + 0.3 * per
            self._done.append(chunk)
        elif kind == wire.READY:
            w.ready = True
        elif kind == wire.FAILED_START:
            self._stopped = True
            raise ProcessWorkerError(
                f"{self.node.label}: worker process {msg[1]} could not load the function:\n{msg[2]}")
        elif kind == wire.CLOSED:
            if msg[2]:
                self._closing_errors.append(msg[2])
            w.closed = True

    def _wait(self, out: Outbox) -> None:
        """Block (GIL released) until some result arrives or a slice passes; emit what is ready.

        Raises :class:`~reflux.logic.base.Abort` (through ``ctx.sleep(0)``) when the run is abandoned.
        """
        if out.held():  # about to block: hand on what is ready first
            out.flush()
        self._collect(WAIT_SLICE)
        self._emit(out)
        self.ctx.sleep(0)  # raises Abort if the run is being abandoned

    def _emit(self, out: Outbox) -> None:
        """Emit the results of finished chunks (in input order when ``ordered``)."""
        done = self._done
        if not done:
            return
        if self.ordered:
            ready: dict[int, _Chunk] = {}
            while done:
                c = done.popleft()
                ready[c.seq] = c
            while self._next_emit in ready:
                c = ready.pop(self._next_emit)
                self._next_emit += 1
                self._apply(c, out)
            if ready:
                done.extend(sorted(ready.values(), key=lambda c: c.seq))
        else:
            while done:
                self._apply(done.popleft(), out)

    def _apply(self, chunk: _Chunk, out: Outbox) -> None:
        """Emit one finished chunk's outputs; failed items go through the error policy."""
        del self._chunks[chunk.seq]
        res = chunk.result
        assert res is not None
        _, _, values, errors, retried, _busy, signals = res[:7]
        crash = res[7] if len(res) > 7 else None
        joined = len(res) > 9 and res[9]  # a flat-map's outputs, already one list
        items = chunk.items
        self.stats.retried += retried
        if joined or (not errors and not signals and not self.flat):
            buf = out.ports[0]
            buf.extend(values)
            self.remaining -= len(items)
            if len(buf) >= out.limit:
                out.flush()
            return
        failed = {e[0]: e for e in errors}
        emit = out.emit
        for i, item in enumerate(items):
            e = failed.get(i)
            if e is not None:
                self.remaining -= 1
                self.fail(item, crash if crash is not None else self._exception(e, chunk.pid), e[5], out)
                continue
            self.remaining -= 1
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

    def _exception(self, e: tuple[Any, ...], pid: int) -> BaseException:
        """The exception of an error entry, with the worker's traceback attached."""
        _i, data, name, message, tb, _attempts = e
        exc: BaseException | None = None
        if data is not None:
            try:
                exc = pickle.loads(data)
            except Exception:  # noqa: BLE001 - e.g. its class is not importable here
                exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteError(f"{name}: {message}")
        return _attach_traceback(exc, tb, pid)

    # ------------------------------------------------------------------ the logic contract

    def process(self, batch: list[Any], out: Outbox) -> None:
        """Send the batch to the workers; emit whatever results are ready."""
        self.remaining += len(batch)
        self._send(batch, out)
        if self._collect(0):
            self._interval = MIN_POLL
        self._emit(out)

    def has_feedback(self) -> bool:
        return bool(self.pending)

    def process_feedback(self, max_items: int, out: Outbox) -> None:
        pending = self.pending
        # most recent first (depth-first), as the thread Transformer does
        batch = [pending.pop() for _ in range(min(max_items, len(pending)))]
        self.process(batch, out)

    def next_deadline(self) -> float | None:
        """While chunks are in flight: when to look for their results again."""
        return self._deadline if self._chunks else None

    def tick(self, now: float, out: Outbox) -> None:
        """Emit results that arrived while no input came (polling interval backs off to MAX_POLL)."""
        if self._collect(0):
            self._interval = MIN_POLL
        else:
            self._interval = min(MAX_POLL, self._interval * 2)
        self._emit(out)
        self._deadline = time.monotonic() + self._interval if self._chunks else None

    def finish(self, out: Outbox) -> None:
        """End of stream: wait for every result (and the work fed back meanwhile)."""
        while not self.drain_step(out):
            self._wait(out)
        self._deadline = None

    # ------------------------------------------------------------------ for a runtime that never blocks
    # Optional hooks beyond the logic contract: a worker-pool runtime can use them to
    # keep this node from blocking one of its threads (see the module docs).

    def busy(self) -> bool:
        """``True`` while every in-flight slot is taken: ``process()`` would block now."""
        return len(self._chunks) >= self.max_chunks

    def wait_handles(self) -> list[Any]:
        """What becomes ready when a worker has sent something: the result pipes' file
        descriptors (native transport) or connections (portable), all of which
        :func:`multiprocessing.connection.wait` accepts; a runtime may wait on them to
        know when :meth:`tick` / :meth:`drain_step` has work."""
        return list(self._by_key)

    def drain_step(self, out: Outbox) -> bool:
        """One non-blocking step of :meth:`finish`: emit what is back, send fed-back items
        while slots are free; ``True`` once nothing is in flight or pending."""
        if self._collect(0):
            self._interval = MIN_POLL
        self._emit(out)
        pending = self.pending
        while pending and len(self._chunks) < self.max_chunks:
            batch = [pending.pop() for _ in range(min(len(pending), 256))]
            self.remaining += len(batch)
            i, n = 0, len(batch)
            while i < n:
                if len(self._chunks) >= self.max_chunks:  # no room: keep the rest for later
                    pending.extend(reversed(batch[i:]))
                    self.remaining -= n - i
                    break
                size = self._chunk_size(n - i)
                self._submit(batch[i:i + size], out)
                i += size
        return not self._chunks and not pending

    # ------------------------------------------------------------------ checkpoints

    #: a checkpoint saves the chunks in flight instead of waiting for them (the workers
    #: keep working through a barrier, and the pipeline does not run dry at each one)
    saves_inflight = True

    def inflight_state(self) -> Any:
        """``(chunks, fed_back)``: each chunk not emitted yet as its encoded message (the
        pickle already made to send it, so saving costs no pickling of the items), oldest
        first, and the items fed back and not sent yet; ``None`` when there are none."""
        if not self._chunks and not self.pending:
            return None
        chunks = []
        for seq in sorted(self._chunks):
            _head, data, *raws = self._chunks[seq].wire
            chunks.append((data, [bytes(r) for r in raws]))  # out-of-band buffers: copied
        return chunks, list(self.pending)

    def restore_inflight(self, state: Any) -> None:
        """Take back the chunks and fed-back items :meth:`inflight_state` saved: they are
        sent before any new input (as fed-back items, the chunks' items first, in order)."""
        chunks, fed_back = state
        items: list[Any] = []
        for data, bufs in chunks:
            items.extend(pickle.loads(data, buffers=bufs)[2])
        self.pending.extend(fed_back)
        self.pending.extend(reversed(items))  # popped from the right: oldest first
        self.stats.resumed += len(items) + len(fed_back)

    def close(self) -> None:
        """Stop the workers: gracefully once everything is done, else terminate them."""
        self._shutdown(graceful=not self._chunks and not self.pending)
        if self._closing_errors:
            errors = self._closing_errors
            self._closing_errors = []
            raise ProcessWorkerError(f"{self.node.label}: the function's close() failed in a worker "
                                     f"process:\n{errors[0]}")

    def abandon(self) -> int:
        """Forget the items in flight and fed back; the workers are terminated."""
        self._shutdown(graceful=False)
        n = self.remaining + len(self.pending)
        self.remaining = 0
        self.pending.clear()
        self._chunks.clear()
        self._done.clear()
        return n

    def _shutdown(self, graceful: bool) -> None:
        """End every worker (idempotent): close its input; on a graceful end wait for its
        CLOSED message and exit, else (or after EXIT_GRACE) terminate it."""
        self._stopped = True
        workers = [w for w in self.workers if w.popen.returncode is None or self._by_key.get(w.key) is w]
        if not workers:
            return
        if not graceful:
            for w in workers:
                if w.popen.poll() is None:
                    w.popen.terminate()
        for w in workers:  # end of input: the worker finishes and exits
            w.link.close_input()
        deadline = time.monotonic() + (EXIT_GRACE if graceful else 1.0)
        if graceful and self._waiter is not None:
            while any(not w.closed for w in workers) and time.monotonic() < deadline:
                if not self._by_key:
                    break
                for key in self._waiter.wait(WAIT_SLICE):
                    sender = self._by_key.get(key)
                    if sender is None:
                        continue
                    try:
                        data, bufs = sender.link.recv_raw()
                        msg = pickle.loads(data, buffers=bufs)
                    except (EOFError, OSError):
                        sender.closed = True
                        self._unwatch(sender)
                        sender.link.close()
                        continue
                    if msg[0] == wire.CLOSED:
                        self._on_message(sender, msg)
        for w in workers:
            try:
                w.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.popen.kill()
                w.popen.wait()
            self._forget(w)
