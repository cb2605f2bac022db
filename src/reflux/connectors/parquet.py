"""Parquet files through Arrow (``pip install "pyreflux[arrow]"``: pyarrow): a source
yielding rows or record batches, a sink writing row groups.

::

    from reflux import Filter, Pipeline
    from reflux.connectors.parquet import read_parquet, write_parquet

    Pipeline(read_parquet("trips/*.parquet", columns=["id", "fare"])
             >> Filter(lambda r: r["fare"] > 10)
             >> write_parquet("out/fares.parquet", roll_items=1_000_000)).run()

The sink takes dicts, or tuples in the order of ``columns=`` (both buffered into
row groups of ``row_group_rows``; tuples travel back from process workers and
become Arrow columns for about half what dicts cost), Arrow record batches and
tables (written as they are), and numpy structured arrays
(chunks of records from compiled plug-ins: converted column by column, with no
Python work per row).  It writes atomically and rolls like the file sinks
(:mod:`reflux.connectors._files`).  A Parquet file is only readable once its
footer is written, so a file in progress cannot be cut back and continued:
under checkpoints every checkpoint finishes the file in progress (it is
renamed into place when the checkpoint commits), so the output is always a
set of numbered files (``out/fares-00000.parquet``, ``-00001``...), at least
one per checkpoint interval that wrote rows.  Choose the checkpoint interval
with the file size in mind (``Checkpoint(every=...)``).
"""
from __future__ import annotations

# pyarrow is an optional dependency: a type check without it installed (or, for pyarrow, which
# ships no type information) treats it as Any
# mypy: disable-error-code="import-not-found,import-untyped"
import os
from typing import IO, Any

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("reflux.connectors.parquet needs pyarrow: pip install \"pyreflux[arrow]\"") from exc

from ..describe.nodes import Extractor, Loader
from ._files import RollingFileSink, check_paths, expand_paths

__all__ = ["ParquetSink", "ParquetSource", "read_parquet", "write_parquet"]


class ParquetSource:
    """A batch reader of Parquet files: rows as dicts (``rows=True``) or Arrow record
    batches of up to ``batch_rows`` rows (``rows=False``); give it to an
    :class:`~reflux.Extractor` or use :func:`read_parquet`.  Its position is the
    file and the rows read from it."""

    blocking = False
    reflux_name = "read_parquet"

    def __init__(self, paths: Any, *, columns: list[str] | None = None, rows: bool = True,
                 batch_rows: int = 65_536) -> None:
        self.paths = check_paths(paths)
        self.columns = list(columns) if columns is not None else None
        self.rows = bool(rows)
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"ParquetSource: batch_rows must be a positive integer, got {batch_rows!r}")
        self.batch_rows = batch_rows
        self.files: list[str] = []
        self._i = 0
        self._file: pq.ParquetFile | None = None
        self._batches: Any = None
        self._buf: list[Any] = []
        self._pos = 0
        #: rows handed on from the current file
        self.offset = 0

    def open(self) -> None:
        self.close()
        self.files = expand_paths(self.paths)
        self._i = 0
        self.offset = 0

    def close(self) -> None:
        self._batches = None
        self._buf, self._pos = [], 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def _start_file(self, skip: int = 0) -> bool:
        """Open file ``_i`` and position it ``skip`` rows in; ``False`` past the last file."""
        self.close()
        if self._i >= len(self.files):
            return False
        pf = pq.ParquetFile(self.files[self._i])
        meta = pf.metadata
        first, before = 0, 0
        while first < meta.num_row_groups and before + meta.row_group(first).num_rows <= skip:
            before += meta.row_group(first).num_rows
            first += 1
        self._file = pf
        self._batches = pf.iter_batches(batch_size=self.batch_rows, columns=self.columns,
                                        row_groups=list(range(first, meta.num_row_groups)))
        self.offset = skip
        self._cut = skip - before  # rows of the first batches to drop
        return True

    def _next_batch(self) -> Any:
        """The next record batch of the files, ``None`` at the end."""
        while True:
            if self._batches is None and not self._start_file():
                return None
            batch = next(self._batches, None)
            if batch is None:
                self._i += 1
                self.offset = 0
                self._batches = None
                continue
            if self._cut:
                drop = min(self._cut, batch.num_rows)
                self._cut -= drop
                batch = batch.slice(drop)
                if batch.num_rows == 0:
                    continue
            return batch

    def read_batch(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` rows (or one record batch); an empty list at the end."""
        if not self.rows:
            batch = self._next_batch()
            if batch is None:
                return []
            self.offset += batch.num_rows
            return [batch]
        if self._pos >= len(self._buf):
            batch = self._next_batch()
            if batch is None:
                return []
            self._buf, self._pos = batch.to_pylist(), 0
        take = self._buf[self._pos:self._pos + max_items]
        self._pos += len(take)
        self.offset += len(take)
        return take

    def state(self) -> dict[str, Any]:
        """The file being read, how many came before it and the rows handed on from it."""
        path = self.files[self._i] if self._i < len(self.files) else None
        return {"file": path, "index": self._i, "offset": self.offset}

    def restore(self, state: dict[str, Any]) -> None:
        """Read on after ``state`` (called after :meth:`open`)."""
        self.close()
        path = state["file"]
        if path is None:
            self._i = max(state["index"], len(self.files))
            return
        self._i = self.files.index(path) if path in self.files else min(state["index"], len(self.files))
        if self._i < len(self.files) and self.files[self._i] == path:
            self._start_file(skip=state["offset"])


class ParquetSink(RollingFileSink):
    """Writes items to Parquet files (see :func:`write_parquet`)."""

    reflux_name = "write_parquet"
    appendable = False

    def __init__(self, path: str | os.PathLike[str], *, schema: pa.Schema | None = None,
                 row_group_rows: int = 65_536, compression: str = "snappy", roll_items: int | None = None,
                 roll_bytes: int | None = None, columns: list[str] | None = None) -> None:
        if os.fspath(path).endswith(".gz"):
            raise ValueError("ParquetSink: Parquet files compress themselves (compression=); drop the .gz")
        if isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) or row_group_rows < 1:
            raise ValueError(f"ParquetSink: row_group_rows must be a positive integer, got {row_group_rows!r}")
        if schema is not None and not isinstance(schema, pa.Schema):
            raise TypeError(f"ParquetSink: schema must be a pyarrow.Schema, got {type(schema).__name__}")
        if columns is not None and (isinstance(columns, str) or not columns
                                    or not all(isinstance(c, str) for c in columns)):
            raise ValueError(f"ParquetSink: columns must be a list of column names, got {columns!r:.60}")
        if columns is not None and schema is not None and list(columns) != schema.names:
            raise ValueError(f"ParquetSink: columns {list(columns)} differ from the schema's {schema.names}")
        super().__init__(path, roll_items=roll_items, roll_bytes=roll_bytes)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.columns = list(columns) if columns is not None else None
        self._writer: pq.ParquetWriter | None = None
        #: rows waiting for a row group: all dicts or all tuples (``_tuples``)
        self._rows: list[Any] = []
        self._tuples = False

    def _begin(self, out: IO[bytes]) -> None:
        self._writer = None
        self._rows = []

    def _table(self, item: Any) -> pa.Table:
        if isinstance(item, pa.Table):
            return item
        if isinstance(item, pa.RecordBatch):
            return pa.Table.from_batches([item])
        names = getattr(getattr(item, "dtype", None), "names", None)
        if names:  # a numpy structured array: column by column, no Python per row
            return pa.table({name: item[name] for name in names})
        raise TypeError(f"ParquetSink: cannot write a {type(item).__name__}; give dicts, tuples (with "
                        f"columns=), Arrow record batches or tables, or numpy structured arrays")

    def _put(self, out: IO[bytes], table: pa.Table) -> int:
        if self._writer is None:
            if self.schema is None:
                self.schema = table.schema
            self._writer = pq.ParquetWriter(out, self.schema, compression=self.compression)
        if table.schema != self.schema:
            table = table.cast(self.schema)
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        return int(table.nbytes)

    def _flush_rows(self, out: IO[bytes]) -> int:
        if not self._rows:
            return 0
        rows, self._rows = self._rows, []
        if not self._tuples:
            return self._put(out, pa.Table.from_pylist(rows, schema=self.schema))
        cols = self.columns
        assert cols is not None
        values = list(zip(*rows))  # column by column, in C (every row's length was checked)
        if self.schema is not None:
            arrays = [pa.array(v, type=f.type) for v, f in zip(values, self.schema)]
            return self._put(out, pa.Table.from_arrays(arrays, schema=self.schema))
        return self._put(out, pa.Table.from_arrays([pa.array(v) for v in values], names=cols))

    def _write(self, out: IO[bytes], batch: list[Any]) -> int:
        written = 0
        for item in batch:
            is_dict = item.__class__ is dict or isinstance(item, dict)
            if is_dict or isinstance(item, (tuple, list)):
                tuples = not is_dict
                if tuples:
                    if self.columns is None:
                        raise TypeError(f"ParquetSink: cannot write a {type(item).__name__} without columns=; "
                                        f"give the column names of its values")
                    if len(item) != len(self.columns):
                        raise ValueError(f"ParquetSink: a row has {len(item)} values for {len(self.columns)} "
                                         f"columns {self.columns}")
                if tuples != self._tuples:  # dicts after tuples or the other way: a row group each
                    written += self._flush_rows(out)
                    self._tuples = tuples
                self._rows.append(item)
                if len(self._rows) >= self.row_group_rows:
                    written += self._flush_rows(out)
                continue
            written += self._flush_rows(out)
            written += self._put(out, self._table(item))
        return written

    def __call__(self, batch: list[Any]) -> None:
        if self.roll_items is not None and batch and not isinstance(batch[0], (dict, tuple, list)):
            raise ValueError("ParquetSink: roll_items counts rows given as dicts or tuples; roll files of "
                             "record batches or arrays with roll_bytes")
        super().__call__(batch)

    def _end(self, out: IO[bytes]) -> None:
        self._flush_rows(out)
        if self._writer is None:  # nothing written: still a valid (empty) file when a schema is known
            if self.schema is None:
                return
            self._writer = pq.ParquetWriter(out, self.schema, compression=self.compression)
        self._writer.close()
        self._writer = None


def read_parquet(paths: Any, *, columns: list[str] | None = None, rows: bool = True, batch_rows: int = 65_536,
                 **node: Any) -> Extractor:
    """An Extractor of the rows (dicts) of Parquet files, or with ``rows=False`` of their
    Arrow record batches (``batch_rows`` rows at most); ``columns``: read only these.
    ``paths``: a file, a folder, a glob or a list.  ``node``: the Extractor's arguments."""
    return Extractor(ParquetSource(paths, columns=columns, rows=rows, batch_rows=batch_rows), **node)


def write_parquet(path: str | os.PathLike[str], *, schema: pa.Schema | None = None, row_group_rows: int = 65_536,
                  compression: str = "snappy", roll_items: int | None = None, roll_bytes: int | None = None,
                  columns: list[str] | None = None, **node: Any) -> Loader:
    """A Loader writing items (dicts, tuples in the order of ``columns``, Arrow record
    batches or tables, numpy structured arrays) to Parquet ``path``, in row groups of
    ``row_group_rows`` rows (``schema``:
    by default the first batch's), rolled by ``roll_items`` rows or ``roll_bytes``
    (uncompressed) bytes.  Reports the items written."""
    return Loader(ParquetSink(path, schema=schema, row_group_rows=row_group_rows, compression=compression,
                              roll_items=roll_items, roll_bytes=roll_bytes, columns=columns), **node)
