"""What an Extractor does: pull items from its source (iterable, generator, callable, async)."""
from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING, Any

from reflux_core.channel import ChannelClosed, Empty, RecordChannel

from ..describe.nodes import Extractor
from ..errors import SourceRecordError
from .base import Abort, NodeContext, NodeLogic, Outbox, close_hook, open_hook, user_hook

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

__all__ = ["ExtractorLogic"]

#: seconds a pull from a live channel waits for its first item (stop and pause are seen in between)
CHANNEL_SLICE = 0.05


class ExtractorLogic(NodeLogic):
    """Pulls items from an Extractor's source into port 0."""

    node: Extractor

    def __init__(self, node: Extractor, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.mode = node.mode
        self._it: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done = False
        #: items per pull: whole batches for sized sources and readers, else one (or batch_size if set)
        self.batched = self.mode in ("sized", "reader") or node.batch_size is not None
        #: items of the source skipped to resume after a checkpoint (see restore_position)
        self.skipped = 0

    def open(self) -> None:
        src = self.node.source
        if self.mode == "reader":
            open_hook(src)
        elif self.mode in ("sized", "iter"):
            self._it = iter(src)
        elif self.mode == "genfunc":
            self._it = src()
        elif self.mode in ("async", "asyncgen"):
            self._it = src() if self.mode == "asyncgen" else src
            self._it = self._it.__aiter__()
            import asyncio  # only for async sources (it takes ~20 ms to import)

            self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        if self.mode == "reader":
            close_hook(self.node.source)
            return
        it = self._it
        self._it = None
        if self._loop is not None:
            loop = self._loop
            self._loop = None
            try:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    loop.run_until_complete(aclose())
            finally:
                loop.close()
        elif inspect.isgenerator(it):
            it.close()

    def pull(self, out: Outbox, max_items: int) -> bool:
        """Move up to ``max_items`` items from the source into ``out.ports[0]``.

        Returns ``False`` once the source is exhausted (after adding its last items).
        """
        if self._done:
            return False
        if self.mode == "call":
            return self._pull_call(out, max_items if self.batched else 1)
        if self.mode == "channel":
            return self._pull_channel(out, max_items)
        if self.mode == "reader":
            return self._pull_reader(out, max_items)
        if self.mode in ("async", "asyncgen"):
            return self._pull_async(out)
        buf = out.ports[0]
        before = len(buf)
        try:
            if self.batched:
                buf.extend(itertools.islice(self._it, max_items))
                if len(buf) - before < max_items:
                    self._done = True
            else:
                buf.append(next(self._it))
        except StopIteration:
            self._done = True
        except BaseException as exc:  # user code
            self._done = True
            self.stats.received += len(buf) - before  # what came before the failure still flows on
            if not isinstance(exc, Exception):  # SystemExit and the like: not a source failure to skip
                raise self.fatal(None, exc) from exc
            self.fail(None, exc, 1, out)
            return False
        self.stats.received += len(buf) - before
        return not self._done

    def _pull_channel(self, out: Outbox, max_items: int) -> bool:
        """A live channel: whatever has arrived (up to ``max_items`` items, or one
        array of records), waiting a short slice for the first; its close ends the stream."""
        ch = self.node.source
        try:
            if isinstance(ch, RecordChannel):
                got: list[Any] = [ch.pop(None, CHANNEL_SLICE)]
            else:
                got = ch.pop_many(max_items, CHANNEL_SLICE)
        except Empty:
            return True  # nothing yet: the runtime checks stop and pause, then pulls again
        except ChannelClosed:
            self._done = True
            return False
        self.stats.received += len(got)
        out.ports[0].extend(got)
        return True

    def _pull_reader(self, out: Outbox, max_items: int) -> bool:
        """A batch reader: one ``read_batch`` call.  A :class:`~reflux.errors.SourceRecordError`
        (one bad record the reader stepped over) goes to the error policy and the reading goes
        on; any other failure is retried per the policy (a reader reconnects on the next call),
        then handled by it, and ends the source."""
        if self.stop_flag.is_set:
            raise Abort()
        read = self.node.source.read_batch
        try:
            got = read(max_items)
        except SourceRecordError as exc:
            self.fail(exc.item, exc, 1, out)
            return True
        except Exception as exc:  # user code
            ok, got, attempts = self.retry(read, max_items, exc)
            if not ok:
                if isinstance(got, SourceRecordError):
                    self.fail(got.item, got, attempts, out)
                    return True
                self._done = True
                self.fail(None, got, attempts, out)
                return False
        except BaseException as exc:  # SystemExit and the like: not a source failure to skip
            raise self.fatal(None, exc) from exc
        if not got:
            self._done = True
            return False
        self.stats.received += len(got)
        out.ports[0].extend(got)
        return True

    # ------------------------------------------------------------------ positions (checkpoints)

    def position(self) -> Any:
        """Where the source stands: what its ``state()`` hook returns when it has one
        (a reader's file and offset, a query key), else the count of items pulled
        (counting those skipped to resume)."""
        hook = user_hook(self.node.source, "state")
        if hook is not None and user_hook(self.node.source, "restore") is not None:
            return ("state", hook())
        return ("count", self.skipped + self.stats.received)

    def restore_position(self, position: Any) -> None:
        """Resume after ``position`` (from :meth:`position` of an earlier run); call after
        :meth:`open`.  A source with ``state()``/``restore()`` hooks restores itself; any other
        source is read again from its start and the items before the position are skipped."""
        how, value = position
        src = self.node.source
        if how == "state":
            if user_hook(src, "restore") is None:
                raise TypeError(f"{self.node.label}: the checkpoint holds the state of a source with "
                                f"state()/restore() hooks, and this source has no restore()")
            src.restore(value)
            return
        n = int(value)
        self.skipped = n
        if n <= 0:
            return
        if self.mode in ("sized", "iter", "genfunc"):
            self._it = itertools.islice(self._it, n, None)
        elif self.mode == "call":
            fn, sentinel = src, self.node.sentinel
            for _ in range(n):
                try:
                    if fn() is sentinel:
                        self._done = True
                        return
                except StopIteration:
                    self._done = True
                    return
        elif self.mode in ("async", "asyncgen"):
            loop = self._loop
            assert loop is not None
            for _ in range(n):
                try:
                    loop.run_until_complete(self._it.__anext__())
                except StopAsyncIteration:
                    self._done = True
                    return
        else:
            raise TypeError(f"{self.node.label}: a {self.mode} source cannot resume from a checkpoint")

    def _pull_call(self, out: Outbox, n: int) -> bool:
        fn = self.node.source
        sentinel = self.node.sentinel
        buf = out.ports[0]
        stop = self.stop_flag
        for _ in range(n):
            if stop.is_set:
                raise Abort()
            try:
                item = fn()
            except StopIteration:
                self._done = True
                return False
            except Exception as exc:  # user code
                ok, item, attempts = self.retry(lambda _: fn(), None, exc)
                if not ok:
                    if isinstance(item, StopIteration):
                        self._done = True
                        return False
                    self.fail(None, item, attempts, out)
                    continue
            if item is sentinel:
                self._done = True
                return False
            self.stats.received += 1
            buf.append(item)
        return True

    def _pull_async(self, out: Outbox) -> bool:
        import asyncio
        loop = self._loop
        assert loop is not None
        fut = loop.create_task(self._it.__anext__())
        while not fut.done():
            loop.run_until_complete(asyncio.wait([fut], timeout=0.1))
            if not fut.done() and self.ctx.should_stop():
                fut.cancel()
                try:
                    loop.run_until_complete(fut)
                except (asyncio.CancelledError, Exception):  # cancelled user code
                    pass
                self._done = True
                return False
        try:
            item = fut.result()
        except StopAsyncIteration:
            self._done = True
            return False
        except Exception as exc:  # user code
            self._done = True
            self.fail(None, exc, 1, out)
            return False
        self.stats.received += 1
        out.ports[0].append(item)
        return True
