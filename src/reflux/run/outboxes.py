"""Where a unit of the worker pool puts its outputs.

:class:`PoolOutbox` pushes into the receivers' channels and never blocks: what
does not fit stays buffered, the unit registers as a waiter on the full
channel and takes no new input until it is flushed (that is the
backpressure).  :class:`ForwardOutbox` is the output of a fused stage (the
runtime hands it to the next stage); :class:`RecordOutbox` and
:class:`CountRecordsOutbox` are the outputs of plug-in nodes on record edges.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reflux_core.channel import ChannelClosed, Full

from ..describe.plan import Inbox, Task
from ..errors import ErrorRecord
from ..logic.base import Abort, Outbox
from ..result import NodeStats
from .base import InboxOutbox

if TYPE_CHECKING:  # pragma: no cover
    from .pool import PoolRuntime
    from .units import Unit

__all__ = ["CountRecordsOutbox", "ForwardOutbox", "HOLD_BATCHES", "PoolOutbox", "RecordOutbox", "records_in"]

#: a flat-map stage may hold this many batches of output while its receiver is full
#: before it waits for room (with a spare worker standing in for it meanwhile)
HOLD_BATCHES = 8


class ForwardOutbox(Outbox):
    """Output of a fused stage.  Its items are handed to the next stage by the
    runtime (:meth:`PoolRuntime._forward`, a loop, so a chain of any length
    needs no recursion); a flush only moves dead-letter records to the
    chain's shared dead-letter output."""

    def __init__(self, unit: Unit, index: int, limit: int) -> None:
        super().__init__(1, limit)
        self.unit = unit
        self.index = index
        self.sent_count = 0

    def flush(self) -> None:
        if self.dead:
            # the fused chain shares one dead-letter output (counted per record's node)
            final = self.unit.final
            final.dead.extend(self.dead)
            self.dead.clear()
            if len(final.dead) >= final.limit:
                final.flush()

    def discard(self) -> int:
        n = len(self.ports[0])
        self.ports[0].clear()
        return n


class PoolOutbox(InboxOutbox):
    """Output of a unit into channels.  :meth:`flush` never blocks: what does
    not fit stays buffered, the unit registers as a waiter on the full channel
    and takes no new input until it is flushed."""

    def __init__(self, rt: PoolRuntime, unit: Unit, task: Task, stats: NodeStats) -> None:
        super().__init__(task)
        self.rt = rt
        self.unit = unit
        self.stats = stats
        #: dead-letter records pushed, by the node that made them (a fused chain shares the output)
        self.dead_counts: dict[str, int] = {}
        self.blocking = False  # a source thread's outbox waits for room instead
        #: the units to wake when a full receiver has room again
        self.waiters = [unit]

    def emit(self, item: Any, port: int = 0) -> None:
        buf = self.ports[port]
        buf.append(item)
        n = len(buf)
        if n >= self.limit and n % self.limit == 0:
            self.flush()
            if len(buf) >= self.limit * HOLD_BATCHES:
                self.rt._wait_for_room(self)

    def dead_letter(self, record: ErrorRecord) -> None:
        self.dead.append(record)
        if len(self.dead) >= self.limit:
            self.flush()

    def pending(self) -> bool:
        """Items wait in the buffers (the unit is blocked on a full receiver)."""
        if self.dead:
            return True
        for b in self.ports:
            if b:
                return True
        return False

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        ch = box.channel
        rt = self.rt
        pushed = 0
        try:
            if self.blocking:
                # Push what fits and tell the consumer at once; wait for room
                # one item at a time (a consumer that is not told about the
                # items already in its channel would never make that room).
                while buf:
                    try:
                        n = ch.push_many(buf, 0)
                    except Full:
                        n = 0
                        try:
                            ch.push(buf[0], rt.poll)
                            n = 1
                        except Full:
                            pass
                    if n:
                        self._count(buf, n, port)
                        del buf[:n]
                        pushed += n
                        rt._notify_box(box)
                    if buf and rt._aborted:
                        raise Abort()
                return
            if len(buf) == 1:
                if ch.try_push(buf[0]):
                    self._count(buf, 1, port)
                    buf.clear()
                    pushed = 1
            else:
                try:
                    pushed = ch.push_many(buf, 0)
                except Full:
                    pushed = 0
                if pushed:
                    self._count(buf, pushed, port)
                    del buf[:pushed]
            if buf:
                # Register, then try once more: the consumer may have made room
                # between the failed push and the registration.
                rt._add_waiter(box, self.waiters)
                try:
                    n = ch.push_many(buf, 0)
                except Full:
                    n = 0
                if n:
                    self._count(buf, n, port)
                    del buf[:n]
                    pushed += n
            if pushed:
                rt._notify_box(box)
        except ChannelClosed:
            # only an abort closes a channel that still has live producers
            raise Abort() from None
        finally:
            if port >= 0:
                self.stats.emitted += pushed
                self.sent_per_port[port] += pushed

    def _count(self, buf: list[Any], n: int, port: int) -> None:
        """Count dead-letter records about to leave the buffer, by their node."""
        if port < 0:
            sent = self.dead_counts
            for r in buf[:n]:
                sent[r.node] = sent.get(r.node, 0) + 1

class RecordOutbox(PoolOutbox):
    """Output of a plug-in node into a record edge: its chunks go into the
    RecordChannel record by record, never blocking (what does not fit stays
    here, the unit tells the edge it waits for room: see
    :class:`~reflux_core._sched.RecordEdge`).  ``emitted`` counts the chunks
    that went out whole (the node counts chunks, its input's unit); the
    edge counts records (its receiver's unit)."""

    def _push(self, box: Inbox, buf: list[Any], port: int) -> None:
        if port < 0 or not box.records:
            super()._push(box, buf, port)
            return
        import numpy as np

        ch = box.channel
        rt = self.rt
        edge = rt._rec_edges[id(box)]
        sent = chunks = 0
        told = False
        try:
            while buf:
                arr = np.asarray(buf[0])
                if arr.ndim == 0:
                    arr = arr.reshape(1)
                if self.blocking:
                    try:
                        n = ch.push(arr, rt.poll)
                    except Full:
                        n = 0
                else:
                    n = ch.try_push(arr)
                if n:
                    sent += n
                    rt._notify_box(box)
                if n == len(arr):
                    del buf[0]
                    chunks += 1
                    continue
                if n:
                    buf[0] = arr[n:]
                if self.blocking:
                    if rt._aborted:
                        raise Abort()
                    continue
                if told:
                    break
                edge.block()  # then try once more: the consumer may have popped meanwhile
                told = True
        except ChannelClosed:
            raise Abort() from None  # only an abort closes a channel with live producers
        finally:
            self.stats.emitted += chunks
            self.sent_per_port[port] += sent


def records_in(item: Any) -> int:
    return len(item) if getattr(item, "ndim", 0) == 1 else 1


class CountRecordsOutbox(PoolOutbox):
    """Output of a plug-in node whose input is a record edge: it counts in
    records (``emitted``: records of the chunks it sent; the edges out of it
    count chunks, its receivers' unit)."""

    def _count(self, buf: list[Any], n: int, port: int) -> None:
        if port >= 0:
            self.stats.emitted += sum(records_in(x) for x in buf[:n]) - n  # _push adds n
        else:
            super()._count(buf, n, port)

    def discard(self) -> int:
        n = sum(records_in(x) for b in self.ports for x in b)
        for b in self.ports:
            b.clear()
        self.dead.clear()
        return n
