"""SQLite (standard library): a source over a query, a sink inserting in batches inside transactions.

::

    from reflux import Pipeline, Transformer
    from reflux.connectors.sqlite import read_sqlite, write_sqlite

    Pipeline(read_sqlite("shop.db", "SELECT id, total FROM orders", key="id")
             >> Transformer(lambda r: (r[0], r[1] * 1.2))
             >> write_sqlite("report.db", "gross", columns=["id", "total"],
                             create="CREATE TABLE IF NOT EXISTS gross (id INTEGER, total REAL)"),
             checkpoint="report.ckpt").run()

The sink commits every ``commit_every`` rows and at the end of the run; under
checkpoints it commits with each checkpoint, in the same transaction as its
row of ``reflux_checkpoints``: exactly-once across a crash (see
:mod:`reflux.connectors._sql`).  Both open the database with a 30 s busy
timeout; ``pragmas=`` sets others on the sink's connection (for example
``{"journal_mode": "WAL", "synchronous": "NORMAL"}``).
"""
from __future__ import annotations

import os
import sqlite3
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from ..describe.nodes import Extractor, Loader
from ._sql import SqlSink, TransactionAborted, quote_ident, resumable_query

__all__ = ["SqliteSink", "SqliteSource", "read_sqlite", "write_sqlite"]


class SqliteSource:
    """A batch reader of a query's rows (tuples, or dicts with ``as_dict=True``); give
    it to an :class:`~reflux.Extractor` or use :func:`read_sqlite`.  Its position
    is the last ``key`` value read, or the number of rows read."""

    blocking = False
    reflux_name = "read_sqlite"

    def __init__(self, database: str | os.PathLike[str], query: str, params: Sequence[Any] | Mapping[str, Any] = (),
                 *, key: str | None = None, as_dict: bool = False, timeout: float = 30.0) -> None:
        self.database = os.fspath(database)
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"SqliteSource: query must be an SQL string, got {query!r:.60}")
        self.query = query
        self.params = params
        self.key = key
        self.as_dict = bool(as_dict)
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._cur: sqlite3.Cursor | None = None
        self._key_at = -1
        self._names: list[str] = []
        self.after: Any = None
        self.count = 0

    def open(self) -> None:
        self.close()
        self.after, self.count = None, 0
        if not os.path.exists(self.database):
            raise FileNotFoundError(f"no such database file: {self.database!r}")
        uri = "file:" + urllib.request.pathname2url(os.path.abspath(self.database)) + "?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=self.timeout)

    def close(self) -> None:
        self._cur = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _start(self) -> sqlite3.Cursor:
        assert self._conn is not None
        if self.key is not None:
            probe = self._conn.execute(f"SELECT * FROM ({self.query.strip().rstrip(';')}) AS reflux_q LIMIT 0",
                                       self.params)
            names = [d[0] for d in probe.description or ()]
            if self.key not in names:
                raise ValueError(f"SqliteSource: key {self.key!r} is not a column of the query's result "
                                 f"({', '.join(names)})")
            self._key_at = names.index(self.key)
        sql, params = resumable_query(self.query, self.params, self.key, self.after, self.count, "qmark")
        cur = self._conn.execute(sql, params)
        self._names = [d[0] for d in cur.description or ()]
        return cur

    def read_batch(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` rows; an empty list at the end."""
        if self._cur is None:
            self._cur = self._start()
        rows = self._cur.fetchmany(max_items)
        if not rows:
            return []
        self.count += len(rows)
        if self._key_at >= 0:
            self.after = rows[-1][self._key_at]
        if self.as_dict:
            names = self._names
            return [dict(zip(names, r)) for r in rows]
        return rows

    def state(self) -> dict[str, Any]:
        """The last key read (with ``key=``) and the rows read."""
        return {"after": self.after, "count": self.count}

    def restore(self, state: dict[str, Any]) -> None:
        """Read on after ``state`` (the query restarts from there on the next read)."""
        self._cur = None
        self.after, self.count = state["after"], state["count"]


class SqliteSink(SqlSink):
    """Inserts rows into ``table`` of the SQLite ``database`` (see :func:`write_sqlite`)."""

    reflux_name = "write_sqlite"
    replays = False  # each batch under a savepoint instead

    def __init__(self, database: str | os.PathLike[str], table: str, *, columns: Sequence[str] | None = None,
                 create: str | None = None, statement: str | None = None, commit_every: int = 10_000,
                 pragmas: Mapping[str, Any] | None = None, timeout: float = 30.0,
                 checkpoint_table: str = "reflux_checkpoints") -> None:
        super().__init__(table, columns=columns, create=create, commit_every=commit_every,
                         checkpoint_table=checkpoint_table)
        self.database = os.fspath(database)
        self.statement = statement
        self.pragmas = dict(pragmas or {})
        for name in self.pragmas:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"SqliteSink: {name!r} is not a pragma name")
        self.timeout = timeout
        self._sql: str | None = None
        self._in_tx = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.database, check_same_thread=False, isolation_level=None, timeout=self.timeout)
        try:
            for name, value in self.pragmas.items():
                conn.execute(f"PRAGMA {name}={value}")
        except BaseException:
            conn.close()  # a pragma the database refused: no connection left behind
            raise
        self._in_tx = False
        return conn

    def _setup(self, sql: str) -> None:
        self._conn.executescript(sql)

    def _begin(self) -> None:
        if not self._in_tx:
            self._conn.execute("BEGIN")
            self._in_tx = True

    def _insert_batch(self, rows: list[Any]) -> None:
        if not rows:
            return
        if self._sql is None:
            self._sql = self.statement or self._insert_sql(len(rows[0]))
        self._begin()
        conn = self._conn
        conn.execute("SAVEPOINT reflux_batch")
        try:
            conn.executemany(self._sql, rows)
        except BaseException:
            try:
                conn.execute("ROLLBACK TO reflux_batch")
                conn.execute("RELEASE reflux_batch")
            except sqlite3.Error as exc:  # SQLite rolled the whole transaction back itself
                self._in_tx = False
                raise TransactionAborted(f"{self.table}: the database rolled back the transaction with "
                                         f"the rows of earlier batches: {exc}") from exc
            raise
        conn.execute("RELEASE reflux_batch")

    def _insert_sql(self, width: int) -> str:
        marks = ", ".join("?" * (len(self.columns) if self.columns else width))
        cols = f" ({', '.join(map(quote_ident, self.columns))})" if self.columns else ""
        return f"INSERT INTO {self.qtable}{cols} VALUES ({marks})"

    def _commit(self) -> None:
        if self._in_tx:
            self._conn.execute("COMMIT")
            self._in_tx = False

    def _rollback(self) -> None:
        if self._in_tx:
            self._in_tx = False
            self._conn.execute("ROLLBACK")

    def _marker_setup(self) -> None:
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self.checkpoint_table} (run_id TEXT NOT NULL, "
                           f"sink TEXT NOT NULL, checkpoint INTEGER NOT NULL, state BLOB NOT NULL, "
                           f"PRIMARY KEY (run_id, sink))")

    def _read_marker(self, run_id: str, key: str) -> tuple[int, bytes] | None:
        row = self._conn.execute(f"SELECT checkpoint, state FROM {self.checkpoint_table} "
                                 f"WHERE run_id = ? AND sink = ?", (run_id, key)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _write_marker(self, run_id: str, key: str, checkpoint: int, state: bytes) -> None:
        self._begin()
        self._conn.execute(f"INSERT INTO {self.checkpoint_table} (run_id, sink, checkpoint, state) "
                           f"VALUES (?, ?, ?, ?) ON CONFLICT (run_id, sink) DO UPDATE SET "
                           f"checkpoint = excluded.checkpoint, state = excluded.state",
                           (run_id, key, checkpoint, state))


def read_sqlite(database: str | os.PathLike[str], query: str, params: Sequence[Any] | Mapping[str, Any] = (), *,
                key: str | None = None, as_dict: bool = False, **node: Any) -> Extractor:
    """An Extractor of the rows of ``query`` on the SQLite ``database`` (opened
    read-only): tuples, or dicts with ``as_dict=True``.  With ``key=`` (a unique,
    ordered column of the result) rows come in key order and a resumed run goes
    on after the last key read; without it a resumed run skips the rows already
    read.  ``node``: the Extractor's arguments (``name=``, ``batch_size=``...)."""
    return Extractor(SqliteSource(database, query, params, key=key, as_dict=as_dict), **node)


def write_sqlite(database: str | os.PathLike[str], table: str, *, columns: Sequence[str] | None = None,
                 create: str | None = None, statement: str | None = None, commit_every: int = 10_000,
                 pragmas: Mapping[str, Any] | None = None, **node: Any) -> Loader:
    """A Loader inserting each item as a row of ``table`` (dicts by column name,
    tuples in order, numpy record chunks record by record) with ``executemany``
    inside transactions.  ``create``: SQL run once when the sink connects (for
    example ``CREATE TABLE IF NOT EXISTS ...``); ``statement``: the insert
    statement to use instead of ``INSERT INTO table (columns) VALUES (?, ...)``;
    ``commit_every``: rows per transaction without checkpoints.  Reports the rows
    written."""
    return Loader(SqliteSink(database, table, columns=columns, create=create, statement=statement,
                             commit_every=commit_every, pragmas=pragmas), **node)
