"""Built-in sinks for :class:`~reflux.Loader`: a count, a sum, a reduction, a list, a file of
lines, a callback.

Each is a callable object taking a batch (``batched = True``), with a
``result()`` that :meth:`Pipeline.run` reports for its Loader::

    sink = Loader.to_list()            # or Loader(ListSink())
    result = Pipeline(Extractor(range(3)) >> sink).run()
    result.results[sink.name]          # [0, 1, 2]
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import IO, Any

__all__ = ["CallbackSink", "CountSink", "FileSink", "ListSink", "ReduceSink", "SumSink"]

_NOTHING: Any = object()  # no initial value given to ReduceSink


class CountSink:
    """Counts the items; reports the count.  One addition per batch."""

    batched = True
    reflux_name = "count"

    def __init__(self) -> None:
        self.count = 0

    def open(self) -> None:
        """A run starts: count from zero."""
        self.count = 0

    def __call__(self, batch: list[Any]) -> None:
        self.count += len(batch)

    def result(self) -> int:
        """Items loaded."""
        return self.count


class SumSink:
    """Adds the items up (``start`` plus every item, as ``sum()`` does); reports the total.

    One ``sum()`` per batch, a C loop: the fastest way to reduce numbers."""

    batched = True
    reflux_name = "sum"

    def __init__(self, start: Any = 0) -> None:
        self.start = start
        self.total: Any = start

    def open(self) -> None:
        """A run starts: from ``start`` again."""
        self.total = self.start

    def __call__(self, batch: list[Any]) -> None:
        self.total = sum(batch, self.total)

    def result(self) -> Any:
        """The total."""
        return self.total


class ReduceSink:
    """Folds the items with ``fn(accumulated, item)``, starting from ``initial``
    (without it, from the first item), as :func:`functools.reduce` does; reports
    the result (``initial``, or ``None``, when no item came).  One
    :func:`functools.reduce` per batch."""

    batched = True
    reflux_name = "reduce"

    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any = _NOTHING) -> None:
        if not callable(fn):
            raise TypeError(f"ReduceSink: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.initial = initial
        self.value: Any = initial

    def open(self) -> None:
        """A run starts: from ``initial`` again."""
        self.value = self.initial

    def __call__(self, batch: list[Any]) -> None:
        if not batch:
            return
        if self.value is _NOTHING:
            self.value = functools.reduce(self.fn, batch)
        else:
            self.value = functools.reduce(self.fn, batch, self.value)

    def result(self) -> Any:
        """The folded value."""
        return None if self.value is _NOTHING else self.value


class ListSink:
    """Appends every item to a list (``target``, or a new one); reports the list."""

    batched = True
    reflux_name = "list"

    def __init__(self, target: list[Any] | None = None) -> None:
        if target is not None and not isinstance(target, list):
            raise TypeError(f"ListSink: target must be a list, got {type(target).__name__}")
        self._own = target is None
        self.items: list[Any] = [] if target is None else target

    def open(self) -> None:
        """A run starts: a new list (so an earlier run's result keeps its own),
        unless the sink appends to a ``target`` list the caller gave."""
        if self._own:
            self.items = []

    def __call__(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    def result(self) -> list[Any]:
        """The list of loaded items."""
        return self.items


class FileSink:
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
        self.path = os.fspath(path)
        self.mode = mode
        self.encoding = encoding
        self.format = format
        self.lines = 0
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Open the file (called by the Loader's worker when a run starts)."""
        self.lines = 0
        self._file = open(self.path, self.mode, encoding=self.encoding)

    def __call__(self, batch: list[Any]) -> None:
        if self._file is None:
            self.open()
        fmt = self.format
        assert self._file is not None
        self._file.write("".join(f"{fmt(item)}\n" for item in batch))
        self.lines += len(batch)

    def flush(self) -> None:
        """Hand what was written to the operating system (called at each checkpoint, so a
        crash loses nothing written before it)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def result(self) -> int:
        """Lines written."""
        return self.lines


class CallbackSink:
    """Calls ``fn(item)`` for each item; reports how many items it took."""

    batched = False

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"CallbackSink: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.count = 0
        name = getattr(fn, "__name__", None)
        self.reflux_name = name if isinstance(name, str) and not name.startswith("<") else "callback"

    def open(self) -> None:
        """A run starts: count from zero."""
        self.count = 0

    def __call__(self, item: Any) -> None:
        self.fn(item)
        self.count += 1

    def result(self) -> int:
        """Items passed to the callback."""
        return self.count
