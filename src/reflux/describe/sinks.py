"""Built-in sinks for :class:`~reflux.Loader`: a count, a sum, a reduction, a list, a file of
lines, a callback.

Each is a callable object taking a batch (``batched = True``), with a
``result()`` that :meth:`Pipeline.run` reports for its Loader::

    sink = Loader.to_list()            # or Loader(ListSink())
    result = Pipeline(Extractor(range(3)) >> sink).run()
    result.results[sink.name]          # [0, 1, 2]

A Loader calls its sink from one thread at a time.  One sink object given to
several Loaders (of one pipeline, or of pipelines running at once) is called
from several threads, with or without the GIL: each sink adds up under a lock
of its own, so nothing is lost, starts from zero (or opens its file) when the
first of its Loaders opens it and ends (closes its file) when the last closes
it; every Loader then reports the same result, the one over all of them.
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import IO, Any

__all__ = ["CallbackSink", "CountSink", "FileSink", "ListSink", "ReduceSink", "SumSink"]

_NOTHING: Any = object()  # no initial value given to ReduceSink


class _SharedSink:
    """What the built-in sinks share: a lock around their accumulator, and the number
    of Loaders that opened the sink and have not closed it yet (see the module docs)."""

    def __init__(self) -> None:
        # protects the sink's accumulator (count, total, value, items, lines, the
        # file) and _users: Loaders sharing the sink call it from their own threads
        self._lock = threading.Lock()
        self._users = 0

    def _start(self) -> None:
        """Start over (a run starts; called under the lock by the first open())."""

    def _end(self) -> None:
        """The last Loader using the sink closed it (called under the lock)."""

    def open(self) -> None:
        """A Loader starts: the first one using the sink starts it over."""
        with self._lock:
            if self._users == 0:
                self._start()
            self._users += 1

    def close(self) -> None:
        """A Loader ended: the last one using the sink ends it."""
        with self._lock:
            if self._users > 0:
                self._users -= 1
                if self._users == 0:
                    self._end()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # a lock cannot be pickled or copied: a copy gets its own
        del state["_lock"]
        state["_users"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class CountSink(_SharedSink):
    """Counts the items; reports the count.  One addition per batch."""

    batched = True
    reflux_name = "count"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _start(self) -> None:
        """A run starts: count from zero."""
        self.count = 0

    def __call__(self, batch: list[Any]) -> None:
        n = len(batch)
        with self._lock:
            self.count += n

    def result(self) -> int:
        """Items loaded."""
        return self.count


class SumSink(_SharedSink):
    """Adds the items up (``start`` plus every item, as ``sum()`` does); reports the total.

    One ``sum()`` per batch, a C loop: the fastest way to reduce numbers."""

    batched = True
    reflux_name = "sum"

    def __init__(self, start: Any = 0) -> None:
        super().__init__()
        self.start = start
        self.total: Any = start

    def _start(self) -> None:
        """A run starts: from ``start`` again."""
        self.total = self.start

    def __call__(self, batch: list[Any]) -> None:
        with self._lock:  # (the items are added in order, to the total: as sum() would)
            self.total = sum(batch, self.total)

    def result(self) -> Any:
        """The total."""
        return self.total


class ReduceSink(_SharedSink):
    """Folds the items with ``fn(accumulated, item)``, starting from ``initial``
    (without it, from the first item), as :func:`functools.reduce` does; reports
    the result (``initial``, or ``None``, when no item came).  One
    :func:`functools.reduce` per batch."""

    batched = True
    reflux_name = "reduce"

    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any = _NOTHING) -> None:
        if not callable(fn):
            raise TypeError(f"ReduceSink: fn must be callable, got {type(fn).__name__}")
        super().__init__()
        self.fn = fn
        self.initial = initial
        self.value: Any = initial

    def _start(self) -> None:
        """A run starts: from ``initial`` again."""
        self.value = self.initial

    def __call__(self, batch: list[Any]) -> None:
        if not batch:
            return
        with self._lock:
            if self.value is _NOTHING:
                self.value = functools.reduce(self.fn, batch)
            else:
                self.value = functools.reduce(self.fn, batch, self.value)

    def result(self) -> Any:
        """The folded value."""
        return None if self.value is _NOTHING else self.value


class ListSink(_SharedSink):
    """Appends every item to a list (``target``, or a new one); reports the list."""

    batched = True
    reflux_name = "list"

    def __init__(self, target: list[Any] | None = None) -> None:
        if target is not None and not isinstance(target, list):
            raise TypeError(f"ListSink: target must be a list, got {type(target).__name__}")
        super().__init__()
        self._own = target is None
        self.items: list[Any] = [] if target is None else target

    def _start(self) -> None:
        """A run starts: a new list (so an earlier run's result keeps its own),
        unless the sink appends to a ``target`` list the caller gave."""
        if self._own:
            self.items = []

    def __call__(self, batch: list[Any]) -> None:
        with self._lock:  # one batch stays in one piece when Loaders share the sink
            self.items.extend(batch)

    def result(self) -> list[Any]:
        """The list of loaded items."""
        return self.items


class FileSink(_SharedSink):
    """Writes each item as one line (``format(item)`` then a newline) to a text file.

    The file is opened when the Loader's worker starts (``mode="w"`` truncates,
    ``"a"`` appends) and closed when it ends; reports the number of lines written.
    """

    batched = True
    reflux_name = "file"

    def __init__(self, path: str | os.PathLike[str], *, mode: str = "w", encoding: str = "utf-8",
                 format: Callable[[Any], str] = str) -> None:
        if mode not in ("w", "a", "x"):
            raise ValueError(f"FileSink: mode must be 'w', 'a' or 'x', got {mode!r}")
        if not callable(format):
            raise TypeError(f"FileSink: format must be callable, got {type(format).__name__}")
        super().__init__()
        self.path = os.fspath(path)
        self.mode = mode
        self.encoding = encoding
        self.format = format
        self.lines = 0
        self._file: IO[str] | None = None

    def _start(self) -> None:
        """Open the file (the first Loader using the sink opens it when a run starts)."""
        self.lines = 0
        self._file = open(self.path, self.mode, encoding=self.encoding)

    def __call__(self, batch: list[Any]) -> None:
        fmt = self.format
        text = "".join(f"{fmt(item)}\n" for item in batch)  # formatted outside the lock
        with self._lock:  # one batch's lines stay together when Loaders share the sink
            if self._file is None:
                self._start()
            assert self._file is not None
            self._file.write(text)
            self.lines += len(batch)

    def flush(self) -> None:
        """Hand what was written to the operating system (called at each checkpoint, so a
        crash loses nothing written before it)."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def _end(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """A Loader ended: the last one using the sink flushes and closes the file."""
        super().close()
        with self._lock:
            if self._users == 0:
                self._end()  # also when it was written to without being opened

    def result(self) -> int:
        """Lines written."""
        return self.lines


class CallbackSink(_SharedSink):
    """Calls ``fn(item)`` for each item; reports how many items it took."""

    batched = False

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"CallbackSink: fn must be callable, got {type(fn).__name__}")
        super().__init__()
        self.fn = fn
        self.count = 0
        name = getattr(fn, "__name__", None)
        self.reflux_name = name if isinstance(name, str) and not name.startswith("<") else "callback"

    def _start(self) -> None:
        """A run starts: count from zero."""
        self.count = 0

    def __call__(self, item: Any) -> None:
        self.fn(item)  # not under the lock: the callback may take its time
        with self._lock:
            self.count += 1

    def result(self) -> int:
        """Items passed to the callback."""
        return self.count
