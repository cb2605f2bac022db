"""Text lines, JSON Lines and CSV files: sources and sinks.

Sources read a file, a folder, a glob pattern or a list of them (gzip read
transparently, see :mod:`reflux.connectors._files`), and resume after a
checkpoint at the file and byte offset where they stood::

    from reflux import Filter, Pipeline
    from reflux.connectors.files import read_jsonl, write_jsonl

    Pipeline(read_jsonl("logs/*.jsonl.gz") >> Filter(lambda r: r["level"] == "error")
             >> write_jsonl("out/errors.jsonl", roll_items=100_000)).run()

With ``with_position=True`` each item is a :class:`FileRecord` ``(path, line,
value)``: the file it came from and its line number (1-based; for CSV the
record's first line).

Sinks write atomically (a temporary file renamed into place when finished),
roll to a new file every ``roll_items`` items or ``roll_bytes`` bytes, and
under checkpoints give exactly-once output across a crash (see
:class:`~reflux.connectors._files.RollingFileSink`).
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import operator
import os
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from ..describe.nodes import Extractor, Loader
from ..errors import SourceRecordError
from ._files import RollingFileSink, check_paths, close_input, expand_paths, open_input

__all__ = [
    "CsvSink",
    "FileRecord",
    "FileSource",
    "JsonLinesSink",
    "LinesSink",
    "read_csv",
    "read_jsonl",
    "read_lines",
    "write_csv",
    "write_jsonl",
    "write_lines",
]

#: bytes a source reads from a file at a time
READ_SIZE = 1 << 20


class FileRecord(NamedTuple):
    """An item with where it came from (``with_position=True``)."""

    #: the file
    path: str
    #: its line number in the file, from 1 (CSV: the record's first line)
    line: int
    #: the item itself (a line, a parsed JSON value, a CSV row)
    value: Any


class FileSource:
    """A batch reader of lines, JSON Lines or CSV records from files (give it to an
    :class:`~reflux.Extractor`, or use :func:`read_lines`, :func:`read_jsonl`,
    :func:`read_csv`).

    ``format``: ``"lines"`` (each line as a string, without its line break),
    ``"jsonl"`` (each non-blank line parsed as JSON; a line that does not parse
    is a :class:`~reflux.errors.SourceRecordError` for the Extractor's error
    policy, and the reading goes on), or ``"csv"`` (each record as a dict keyed
    by the header with ``header=True``, else a list of strings; ``csv_options``
    go to :func:`csv.reader`).  Its position (``state()``) is the file, the byte
    offset (of the uncompressed data) and the line reached.
    """

    blocking = False

    def __init__(self, paths: Any, *, format: str = "lines", encoding: str = "utf-8",
                 with_position: bool = False, header: bool = True, csv_options: dict[str, Any] | None = None,
                 read_size: int = READ_SIZE) -> None:
        if format not in ("lines", "jsonl", "csv"):
            raise ValueError(f"FileSource: format must be 'lines', 'jsonl' or 'csv', got {format!r}")
        self.paths = check_paths(paths)
        self.format = format
        self.encoding = encoding
        self.with_position = bool(with_position)
        self.header = bool(header)
        self.csv_options = dict(csv_options or {})
        if format == "csv":
            csv.reader([], **self.csv_options)  # bad options fail here, when the node is built
        self.read_size = read_size
        self.reflux_name = f"read_{format}"
        # a line's text, then its JSON: straight through the C decoders (json.loads of bytes
        # first guesses their encoding in Python, about 1 us a line)
        self._text: Callable[[bytes], str] = (bytes.decode if codecs.lookup(encoding).name == "utf-8"
                                              else operator.methodcaller("decode", encoding))
        self._json = json.JSONDecoder().decode
        self.files: list[str] = []
        self._i = 0  # index of the current file in self.files
        self._f: IO[bytes] | None = None
        self._buf: list[bytes] = []
        self._pos = 0
        self._rows: Iterator[Any] | None = None  # a CSV file's reader
        #: byte offset (uncompressed) and line count reached in the current file
        self.offset = 0
        self.line = 0

    # ------------------------------------------------------------------ the reader protocol

    def open(self) -> None:
        self.close()
        self.files = expand_paths(self.paths)
        self._i = 0
        self._reset()

    def close(self) -> None:
        if self._f is not None:
            close_input(self._f)
            self._f = None
        self._rows = None

    def _reset(self) -> None:
        self._buf, self._pos = [], 0
        self.offset = self.line = 0
        self._rows = None

    def _current(self) -> IO[bytes] | None:
        """The file being read (opening the next one when needed), ``None`` at the end."""
        if self._f is None:
            if self._i >= len(self.files):
                return None
            self._f = open_input(self.files[self._i])
        return self._f

    def _next_file(self) -> None:
        self.close()
        self._i += 1
        self._reset()

    def read_batch(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` items; an empty list once every file is read."""
        if self.format == "csv":
            return self._read_csv(max_items)
        while True:
            if self._pos >= len(self._buf):
                f = self._current()
                if f is None:
                    return []
                self._buf, self._pos = f.readlines(self.read_size), 0
                if not self._buf:
                    self._next_file()
                    continue
            take = self._buf[self._pos:self._pos + max_items]
            at: list[int] | None = None  # line index in take of each item, when lines were skipped
            try:
                if self.format == "lines":
                    items: list[Any] = [line.rstrip("\r\n") for line in map(self._text, take)]
                else:
                    items = list(map(self._json, map(self._text, take)))
            except ValueError:  # bad text or JSON, or a blank JSON line: line by line
                at, items, take = self._parse_slowly(take)
            first = self.line + 1
            self._pos += len(take)
            self.offset += sum(map(len, take))
            self.line += len(take)
            if self.with_position:
                path = self.files[self._i]
                return [FileRecord(path, first + (j if at is None else at[j]), v) for j, v in enumerate(items)]
            if items:
                return items
            # only blank lines here: read on

    def _parse_slowly(self, take: list[bytes]) -> tuple[list[int], list[Any], list[bytes]]:
        """Parse ``take`` line by line: skip blank JSON lines; at a bad line, stop before it
        (or, when it is the first, step over it and raise :class:`SourceRecordError`).
        Returns the line index of each item, the items and the lines used."""
        at: list[int] = []
        out: list[Any] = []
        jsonl = self.format == "jsonl"
        for j, raw in enumerate(take):
            if jsonl and not raw.strip():
                continue
            try:
                text = self._text(raw)
                value = self._json(text) if jsonl else text.rstrip("\r\n")
            except ValueError as exc:
                if j == 0:
                    self._pos += 1
                    self.offset += len(raw)
                    self.line += 1
                    shown = raw.decode(self.encoding, "replace").rstrip("\r\n")
                    what = "not valid JSON" if jsonl and not isinstance(exc, UnicodeError) else \
                        f"not valid {self.encoding}"
                    raise SourceRecordError(f"{self.files[self._i]}:{self.line}: {what}: {exc}",
                                            item=shown) from None
                return at, out, take[:j]
            at.append(j)
            out.append(value)
        return at, out, take

    def _lines(self, f: IO[bytes]) -> Iterator[str]:
        """The decoded lines of ``f`` for the CSV reader, counting offset and lines."""
        enc = self.encoding
        while True:
            raw = f.readline()
            if not raw:
                return
            self.offset += len(raw)
            self.line += 1
            yield raw.decode(enc)

    def _csv_reader(self, f: IO[bytes]) -> Iterator[Any]:
        if self.header:
            reader = csv.DictReader(self._lines(f), **self.csv_options)
            _ = reader.fieldnames  # reads the header now: a record's line numbers count after it
            return reader
        return csv.reader(self._lines(f), **self.csv_options)

    def _read_csv(self, max_items: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < max_items:
            f = self._current()
            if f is None:
                break
            if self._rows is None:
                self._rows = self._csv_reader(f)
            first = self.line + 1
            try:
                row = next(self._rows)
            except StopIteration:
                self._next_file()
                continue
            except csv.Error as exc:
                if out:  # hand over what is good; the position is past the bad record
                    break
                raise SourceRecordError(f"{self.files[self._i]}:{first}: not valid CSV: {exc}",
                                        item=None) from None
            out.append(FileRecord(self.files[self._i], first, row) if self.with_position else row)
        return out

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """Where the reading stands: the file, how many files came before it, the
        offset and line reached in it."""
        path = self.files[self._i] if self._i < len(self.files) else None
        return {"file": path, "index": self._i, "offset": self.offset, "line": self.line}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after ``state`` (called after :meth:`open`): the files before the
        saved one are done; the saved one is read on from its offset."""
        self.close()
        self._reset()
        path = state["file"]
        if path is None:
            self._i = max(state["index"], len(self.files))
            return
        self._i = self.files.index(path) if path in self.files else min(state["index"], len(self.files))
        if self._i >= len(self.files) or self.files[self._i] != path:
            return  # the file is gone: go on with those after it
        f = self._current()
        assert f is not None
        if self.format == "csv":
            self._rows = self._csv_reader(f)  # reads the header (from the start of the file)
        if state["offset"] > self.offset:
            f.seek(state["offset"])
            self.offset = state["offset"]
            self.line = state["line"]


class _TextSink(RollingFileSink):
    """A sink of text lines (see :class:`~reflux.connectors._files.RollingFileSink`)."""

    def __init__(self, path: str | os.PathLike[str], *, encoding: str = "utf-8", roll_items: int | None = None,
                 roll_bytes: int | None = None) -> None:
        super().__init__(path, roll_items=roll_items, roll_bytes=roll_bytes)
        self.encoding = encoding


class LinesSink(_TextSink):
    """Writes each item as one line, ``format(item)`` (default ``str``)."""

    reflux_name = "write_lines"

    def __init__(self, path: str | os.PathLike[str], *, format: Callable[[Any], str] = str, **kwargs: Any) -> None:
        if not callable(format):
            raise TypeError(f"LinesSink: format must be callable, got {type(format).__name__}")
        super().__init__(path, **kwargs)
        self.format = format

    def _write(self, out: IO[bytes], batch: list[Any]) -> int:
        data = ("\n".join(map(self.format, batch)) + "\n").encode(self.encoding)
        out.write(data)
        return len(data)


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class JsonLinesSink(_TextSink):
    """Writes each item as one line of JSON (``json.dumps`` with compact separators;
    ``default=`` is called for values JSON cannot hold)."""

    reflux_name = "write_jsonl"

    def __init__(self, path: str | os.PathLike[str], *, default: Callable[[Any], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.dumps = _dumps if default is None else json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, default=default).encode

    def _write(self, out: IO[bytes], batch: list[Any]) -> int:
        data = ("\n".join(map(self.dumps, batch)) + "\n").encode(self.encoding)
        out.write(data)
        return len(data)


class CsvSink(_TextSink):
    """Writes each item as one CSV record: a dict (by ``columns``, default the first
    item's keys) or a sequence.  ``header=True`` starts each file with the column
    names (needs ``columns`` or dict items); ``csv_options`` go to :func:`csv.writer`."""

    reflux_name = "write_csv"

    def __init__(self, path: str | os.PathLike[str], *, columns: list[str] | None = None, header: bool = True,
                 csv_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.columns = list(columns) if columns is not None else None
        self.header = bool(header)
        self.csv_options = dict(csv_options or {})
        csv.writer(io.StringIO(), **self.csv_options)  # bad options fail here
        self._header_due = False

    def _begin(self, out: IO[bytes]) -> None:
        self._header_due = self.header  # written with the first batch (it may set the columns)

    def _write(self, out: IO[bytes], batch: list[Any]) -> int:
        buf = io.StringIO()
        if self.columns is None and batch and isinstance(batch[0], dict):
            self.columns = list(batch[0])
        if self._header_due:
            if self.columns is None:
                raise ValueError("CsvSink: header=True needs columns= or dict items")
            csv.writer(buf, **self.csv_options).writerow(self.columns)
            self._header_due = False
        if batch and isinstance(batch[0], dict):
            csv.DictWriter(buf, self.columns or [], **self.csv_options).writerows(batch)
        else:
            csv.writer(buf, **self.csv_options).writerows(batch)
        data = buf.getvalue().encode(self.encoding)
        out.write(data)
        return len(data)

    def checkpoint_prepare(self, checkpoint: int, final: bool) -> Any:
        prepared = super().checkpoint_prepare(checkpoint, final)
        prepared["columns"] = self.columns
        return prepared

    def checkpoint_recover(self, prepared: Any) -> None:
        super().checkpoint_recover(prepared)
        if prepared is not None and prepared.get("columns") is not None:
            self.columns = prepared["columns"]


# --------------------------------------------------------------------------- nodes

def read_lines(paths: Any, *, encoding: str = "utf-8", with_position: bool = False, **node: Any) -> Extractor:
    """An Extractor of the lines of text files (without line breaks); ``node``: the
    Extractor's arguments (``name=``, ``batch_size=``, ``on_error=``...)."""
    return Extractor(FileSource(paths, format="lines", encoding=encoding, with_position=with_position), **node)


def read_jsonl(paths: Any, *, encoding: str = "utf-8", with_position: bool = False, **node: Any) -> Extractor:
    """An Extractor of the JSON values of JSON Lines files (blank lines skipped; a line that
    does not parse goes to the Extractor's error policy)."""
    return Extractor(FileSource(paths, format="jsonl", encoding=encoding, with_position=with_position), **node)


def read_csv(paths: Any, *, header: bool = True, encoding: str = "utf-8", with_position: bool = False,
             csv_options: dict[str, Any] | None = None, **node: Any) -> Extractor:
    """An Extractor of the records of CSV files: dicts keyed by each file's header row
    (``header=True``), else lists of strings."""
    return Extractor(FileSource(paths, format="csv", encoding=encoding, with_position=with_position,
                                header=header, csv_options=csv_options), **node)


def write_lines(path: str | os.PathLike[str], *, format: Callable[[Any], str] = str, encoding: str = "utf-8",
                roll_items: int | None = None, roll_bytes: int | None = None, **node: Any) -> Loader:
    """A Loader writing each item as one line of ``path`` (rolled by ``roll_items`` /
    ``roll_bytes``; gzip when the name ends in ``.gz``); reports the items written."""
    return Loader(LinesSink(path, format=format, encoding=encoding, roll_items=roll_items,
                            roll_bytes=roll_bytes), **node)


def write_jsonl(path: str | os.PathLike[str], *, default: Callable[[Any], Any] | None = None,
                roll_items: int | None = None, roll_bytes: int | None = None, **node: Any) -> Loader:
    """A Loader writing each item as one JSON line of ``path`` (see :func:`write_lines`)."""
    return Loader(JsonLinesSink(path, default=default, roll_items=roll_items, roll_bytes=roll_bytes), **node)


def write_csv(path: str | os.PathLike[str], *, columns: list[str] | None = None, header: bool = True,
              csv_options: dict[str, Any] | None = None, roll_items: int | None = None,
              roll_bytes: int | None = None, **node: Any) -> Loader:
    """A Loader writing each item (a dict or a sequence) as one CSV record of ``path``
    (see :func:`write_lines`)."""
    return Loader(CsvSink(path, columns=columns, header=header, csv_options=csv_options, roll_items=roll_items,
                          roll_bytes=roll_bytes), **node)
