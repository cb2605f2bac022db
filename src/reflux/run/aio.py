"""Async stages: a Transformer, Filter or Loader whose function is ``async def``.

The node's calls run on an event loop of its own, in a thread of its own, up
to ``concurrency`` at a time; the worker that runs the node hands each batch
over and takes back what completed, so the pool's workers never run the loop.

* ``process(batch)`` queues the items and starts as many calls as the
  concurrency allows; it waits (the GIL released, in short slices that watch
  for an abort) only while more than ``concurrency`` items wait for a call
  slot, so the node holds a bounded number of items and backpressure holds.
* Results come back in input order (``ordered=True``, the default) or as they
  complete; while calls are in flight ``next_deadline()`` asks the runtime to
  ``tick()`` every millisecond or so, so results flow on without new input.
* ``call_timeout=`` bounds each call (``TimeoutError``); a failure is retried
  on the loop per the node's policy (``retries``, ``backoff``), then handed to
  the policy like any failure.
* ``open()``/``close()`` of a callable object may be ``async def``: they run on
  the loop.  An abandoned run cancels the calls in flight.
* ``reflux.emit()`` and ``reflux.stopping()`` work in the calls as in any
  node's function: the loop's thread is marked as running the node.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from typing import Any

from ..logic.base import Abort, NodeContext, NodeLogic, Outbox, direct_call, set_current_context, user_hook
from ..signals import Error, NeedsMoreWork

__all__ = ["AsyncLogic"]

#: seconds between looks at the completed calls while calls are in flight
TICK = 0.001
#: longest single wait for a call slot, so an abandoned run is noticed
WAIT_SLICE = 0.05


class AsyncLogic(NodeLogic):
    """The logic of a Transformer, Filter or Loader made with an ``async def`` function."""

    def __init__(self, node: Any, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.kind = node.kind
        self.fn = node.predicate if self.kind == "Filter" else node.fn
        self.call_fn = direct_call(self.fn)
        self.concurrency: int = node.concurrency
        self.call_timeout: float | None = node.call_timeout
        self.ordered: bool = bool(node.ordered)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # items waiting for a call slot and calls in flight, by sequence number:
        # shared with the loop's thread under _lock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # signalled when a call completes
        self._waiting: deque[tuple[int, Any]] = deque()
        self._running = 0
        self._done: dict[int, tuple[Any, bool, Any, int]] = {}  # seq -> (item, ok, value, attempts)
        self._tasks: set[asyncio.Task[Any]] = set()  # the loop's thread only
        self._next_seq = 0
        self._next_emit = 0
        self.returned: list[Any] = []  # a Loader's results that are not None

    # ------------------------------------------------------------------ the loop

    def open(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        self.thread = threading.Thread(target=self._run_loop, args=(loop,), daemon=True,
                                       name=f"reflux-async:{self.node.name}")
        self.thread.start()
        self._hook("open")

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop's thread: the node's calls run here, so ``reflux.emit()`` and
        ``reflux.stopping()`` in them find the node through this thread's context."""
        set_current_context(self.ctx)
        loop.run_forever()

    def _hook(self, name: str) -> None:
        hook = user_hook(self.fn, name)
        if hook is None:
            return
        if inspect.iscoroutinefunction(hook):
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(hook(), self.loop).result()
        else:
            hook()

    def close(self) -> None:
        loop, thread = self.loop, self.thread
        if loop is None or thread is None:
            return
        try:
            self._cancel()
            self._hook("close")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self.loop = self.thread = None

    def _cancel(self) -> None:
        """Cancel the calls in flight (an abandoned run), and wait until they are gone."""
        loop = self.loop
        if loop is None or not loop.is_running():
            return

        async def cancel_all() -> None:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result()

    def _start_calls(self) -> None:
        """On the loop: start calls for waiting items while there are free slots."""
        while True:
            with self._lock:
                if not self._waiting or self._running >= self.concurrency:
                    return
                seq, item = self._waiting.popleft()
                self._running += 1
            task = asyncio.ensure_future(self._run(seq, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, seq: int, item: Any) -> None:
        """On the loop: one item's call, with the policy's retries; its outcome into _done."""
        pol = self.policy
        attempts = 0
        ok, value = False, None
        while True:
            attempts += 1
            try:
                if self.call_timeout is None:
                    value = await self.call_fn(item)
                else:
                    value = await asyncio.wait_for(self.call_fn(item), self.call_timeout)
                if value.__class__ is Error:
                    ok, value = False, value.exception
                else:
                    ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # user code: through the policy
                ok, value = False, exc
            if ok or attempts > pol.retries:
                break
            await asyncio.sleep(pol.delay(attempts))
        with self._room:
            self._running -= 1
            self._done[seq] = (item, ok, value, attempts)
            self._room.notify_all()
        self._start_calls()

    # ------------------------------------------------------------------ the worker's side

    def process(self, batch: list[Any], out: Outbox) -> None:
        loop = self.loop
        assert loop is not None
        with self._lock:
            for item in batch:
                self._waiting.append((self._next_seq, item))
                self._next_seq += 1
            self.remaining += len(batch)
        loop.call_soon_threadsafe(self._start_calls)
        # backpressure: hold at most `concurrency` items beyond those in calls
        with self._room:
            while len(self._waiting) > self.concurrency:
                if self.stop_flag.is_set:
                    raise Abort()
                self._room.wait(WAIT_SLICE)
        self._emit(out)

    def _emit(self, out: Outbox) -> None:
        """Hand on the calls that completed (in input order when ordered)."""
        with self._lock:
            if not self._done:
                return
            if self.ordered:
                ready = []
                while self._next_emit in self._done:
                    ready.append(self._done.pop(self._next_emit))
                    self._next_emit += 1
            else:
                ready = [self._done.pop(k) for k in sorted(self._done)]
        st = self.stats
        for item, ok, value, attempts in ready:
            st.retried += attempts - 1
            self.remaining -= 1
            if not ok:
                self.fail(item, value, attempts, out)
                continue
            if self.kind == "Transformer":
                if value.__class__ is NeedsMoreWork:
                    st.fed_back += 1
                    self.process_feedback_item(value.item)
                else:
                    out.ports[0].append(value)
            elif self.kind == "Filter":
                try:
                    keep = bool(value)
                except Exception as exc:  # the truth test of the user's result
                    self.fail(item, exc, attempts, out)
                    continue
                if keep:
                    out.ports[0].append(item)
                else:
                    st.filtered += 1
            else:  # Loader
                st.emitted += 1
                if value is not None:
                    self.returned.append(value)

    def process_feedback_item(self, item: Any) -> None:
        """NeedsMoreWork: the item goes back into the queue of calls."""
        with self._lock:
            self._waiting.append((self._next_seq, item))
            self._next_seq += 1
            self.remaining += 1
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._start_calls)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._waiting) + self._running + len(self._done)

    def next_deadline(self) -> float | None:
        return time.monotonic() + TICK if self.in_flight() else None

    def tick(self, now: float, out: Outbox) -> None:
        self._emit(out)

    def finish(self, out: Outbox) -> None:
        """End of input: wait for every call, handing results on as they come."""
        while True:
            self._emit(out)
            with self._room:
                if not (self._waiting or self._running or self._done):
                    return
                if self.stop_flag.is_set:
                    raise Abort()
                if not self._done:
                    self._room.wait(WAIT_SLICE)

    def abandon(self) -> int:
        self._cancel()
        with self._lock:
            n = len(self._waiting) + len(self._done) + self._running
            self._waiting.clear()
            self._done.clear()
            self._running = 0
        self.remaining = 0
        return n

    def result(self) -> Any:
        res = getattr(self.fn, "result", None)
        if callable(res) and not inspect.isroutine(self.fn):
            return res()
        return self.returned
