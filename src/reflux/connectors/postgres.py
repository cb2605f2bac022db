"""PostgreSQL (``pip install "pyreflux[postgres]"``: psycopg 3): a source over a query
(a server-side cursor read in batches), a sink using ``COPY`` or batched inserts
inside transactions.

::

    from reflux import Pipeline
    from reflux.connectors.files import read_jsonl
    from reflux.connectors.postgres import write_postgres

    Pipeline(read_jsonl("events/*.jsonl") >> write_postgres("events", columns=["id", "kind", "value"]),
             checkpoint="events.ckpt").run()

**Connecting.** ``conninfo`` is a libpq connection string or URI
(``"host=db dbname=shop user=etl"``, ``"postgresql://etl@db/shop"``); what it
leaves out comes from the ``PG*`` environment variables (``PGHOST``,
``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``...), as with ``psql``.

**Reconnecting.** A lost connection is an error of the node, so its error
policy applies: these nodes default to ``retries=3`` with ``backoff=0.5``
seconds, doubling (pass your own ``retries=``, ``backoff=``...).  Each retry
reconnects: the source restarts its query after the last row it handed on (by
``key``, or by skipping the rows read), the sink rolls back and writes the
rows of its open transaction again before the batch.  Once the retries are
spent the policy decides (``"raise"``, the default, fails the run; with a
checkpoint, a restart resumes).

The sink commits every ``commit_every`` rows and at the end of the run; under
checkpoints, with each checkpoint, in the same transaction as its row of
``reflux_checkpoints``: exactly-once across a crash (see
:mod:`reflux.connectors._sql`).  It does not wait for a commit: it sends the
end of the ``COPY`` and the ``COMMIT``, and its next calls collect the server's
answer while the pipeline goes on (rows arriving before the answer wait in
memory, up to ``commit_every`` rows; past that the call waits), so the server
finishes the rows and flushes its log beside the pipeline.  The end of the run
waits for the last commit.

**COPY or INSERT.** With ``method="copy"`` (the default) the rows of a
transaction stream through one ``COPY ... FROM STDIN``, so the server parses
them while the pipeline makes the next ones (on this 2-core machine a ``COPY``
per batch of 256 rows cost 2.5 times as much per row as one long ``COPY``).
The server judges the rows only when the ``COPY`` ends, at the commit, so a
row it refuses (a bad value, a broken constraint) cannot be told from the
others of the transaction: the sink raises :class:`TransactionAborted`, which fails
the run whatever the node's error policy (under checkpoints a restart
resumes from the last one).  With ``method="insert"`` each batch is sent on
its own (``executemany``) and a refused batch goes through the error policy.

**Rows encoded elsewhere.** Formatting rows for ``COPY`` costs the sink about
as much as parsing a JSON line; where the rows are made in process workers
(``executor="process"``), make them there with :func:`encode_copy_row` and give
the sink ``encoded=True``: it then writes the bytes as they come::

    def parse(line):
        r = json.loads(line)
        return [encode_copy_row((r["id"], r["kind"], r["value"]))] if r["kind"] != "view" else []

    (read_lines("events/*.jsonl") >> Transformer(parse, flat=True, executor="process", workers=2)
     >> write_postgres("events", columns=["id", "kind", "value"], encoded=True))
"""
from __future__ import annotations

# psycopg is an optional dependency: a type check without it installed (or, for pyarrow, which
# ships no type information) treats it as Any (so a class deriving from psycopg's derives from Any)
# mypy: disable-error-code="import-not-found,import-untyped,misc"
import datetime
import decimal
import itertools
import math
import uuid
from collections.abc import Generator, Mapping, Sequence
from typing import Any

try:
    import psycopg
    from psycopg import pq
    from psycopg.copy import LibpqWriter
    from psycopg.rows import dict_row
    from psycopg.waiting import Ready, Wait
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("reflux.connectors.postgres needs psycopg 3: pip install \"pyreflux[postgres]\"") from exc

from ..describe.nodes import Extractor, Loader
from ._sql import SqlSink, TransactionAborted, quote_ident, resumable_query

__all__ = ["PostgresSink", "PostgresSource", "TransactionAborted", "encode_copy_row", "read_postgres",
           "write_postgres"]

#: the error policy these nodes get unless told otherwise (a lost connection is retried)
RETRY_DEFAULTS = {"retries": 3, "backoff": 0.5}

_cursor_names = itertools.count()

# the checkpoint row's parameters: run id and sink (text), checkpoint (bigint, as text),
# the snapshot (bytea, binary)
_MARKER_TYPES = (25, 25, 20, 17)
_MARKER_FORMATS = (0, 0, 0, 1)

# COPY's text format: a backslash, tab, newline or carriage return in a value is escaped
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_PLAIN = (datetime.date, datetime.time, decimal.Decimal, uuid.UUID)


def _copy_field(v: Any) -> str:
    """A value encode_copy_row() does not format inline (exact str, int, finite float and
    None are): subclasses (enums...) as their base type, as psycopg's own formatting does."""
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return float.__repr__(v)
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, str):
        return str.translate(v, _COPY_ESCAPES)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(v).hex()  # bytea's hex form, its backslash escaped for COPY
    if isinstance(v, _COPY_PLAIN):
        return str(v).translate(_COPY_ESCAPES)
    raise TypeError(f"encode_copy_row: cannot encode a {type(v).__name__} value; give None, bool, int, "
                    f"float, str, bytes, date, time, datetime, Decimal or UUID values")


def encode_copy_row(row: Sequence[Any]) -> bytes:
    r"""One row in ``COPY``'s text format (UTF-8, tab-separated, ending in a newline), for a
    :func:`write_postgres` sink with ``encoded=True``: values may be ``None`` (NULL),
    ``bool``, ``int``, ``float``, ``str``, ``bytes`` (``bytea``), ``date``, ``time``,
    ``datetime``, ``Decimal`` or ``UUID``.  Made where the rows are made (process
    workers), it spares the sink formatting them.  Needs no connection.

    >>> encode_copy_row((1, "a b", None, True, 2.5)) == b"1\ta b\t\\N\tt\t2.5\n"
    True
    """
    if row.__class__ is not tuple and row.__class__ is not list and (
            isinstance(row, (str, bytes)) or not isinstance(row, Sequence)):
        raise TypeError(f"encode_copy_row: a row is a tuple or list of values, got {type(row).__name__}")
    # the common types inline (a call per value costs as much as formatting it)
    fields: list[str] = []
    add = fields.append
    for v in row:
        cls = v.__class__
        if cls is str:
            add(v.translate(_COPY_ESCAPES) if ("\\" in v or "\t" in v or "\n" in v or "\r" in v) else v)
        elif cls is int:
            add(str(v))
        elif cls is float and v - v == 0.0:  # finite
            add(repr(v))
        elif v is None:
            add("\\N")
        else:
            add(_copy_field(v))
    return ("\t".join(fields) + "\n").encode()


def _flushed(pgconn: Any) -> Generator[Wait, Any, None]:
    """[for Connection.wait] Send what libpq holds for the server (as libpq asks: flush
    again once the socket can be written, read what arrives meanwhile)."""
    while pgconn.flush() != 0:
        ready = yield Wait.RW
        if ready & Ready.R:
            pgconn.consume_input()


def _copy_end_sent(pgconn: Any) -> Generator[Wait, Any, None]:
    """[for Connection.wait] Send the end of a ``COPY``, not waiting for the server's answer."""
    while pgconn.put_copy_end() == 0:
        yield Wait.W
    yield from _flushed(pgconn)


def _readable() -> Generator[Wait, Any, None]:
    """[for Connection.wait] Wait until the server sends something."""
    yield Wait.R


class _CopyEndSender(LibpqWriter):
    """psycopg's writer of a ``COPY``'s data, except that it ends the ``COPY`` without
    waiting for the server's answer: the sink collects that answer later, so the pipeline
    goes on while the server finishes the rows and commits them."""

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is not None:  # a COPY abandoned: psycopg's own end, which waits for it
            super().finish(exc)
        else:
            self.connection.wait(_copy_end_sent(self._pgconn))


def _server_error(res: Any, encoding: str) -> psycopg.Error:
    """The psycopg error of a failed result."""
    def field(code: Any) -> str:
        value = res.error_field(code)
        return value.decode(encoding, "replace") if value else ""
    message = field(pq.DiagnosticField.MESSAGE_PRIMARY) or res.error_message.decode(encoding, "replace")
    try:
        cls: type[psycopg.Error] = psycopg.errors.lookup(field(pq.DiagnosticField.SQLSTATE))
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)


class PostgresSource:
    """A batch reader of a query's rows through a server-side cursor (tuples, or dicts
    with ``as_dict=True``); give it to an :class:`~reflux.Extractor` or use
    :func:`read_postgres`.  Its position is the last ``key`` value read, or the
    number of rows read."""

    reflux_name = "read_postgres"

    def __init__(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, conninfo: str = "",
                 key: str | None = None, as_dict: bool = False, connect_timeout: float = 10.0) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"PostgresSource: query must be an SQL string, got {query!r:.60}")
        self.query = query
        self.params = params
        self.conninfo = conninfo
        self.key = key
        self.as_dict = bool(as_dict)
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._cur: Any = None
        self._key_at = -1
        self.after: Any = None
        self.count = 0

    def open(self) -> None:
        self.close()
        self.after, self.count = None, 0

    def close(self) -> None:
        cur, self._cur = self._cur, None
        conn, self._conn = self._conn, None
        try:
            if cur is not None and not cur.closed:
                cur.close()
        except psycopg.Error:  # its connection is gone: nothing to close on the server
            pass
        finally:
            if conn is not None:
                conn.close()

    def _start(self) -> Any:
        self.close()
        self._conn = psycopg.connect(self.conninfo, connect_timeout=int(self.connect_timeout))
        sql, params = resumable_query(self.query, self.params, self.key, self.after, self.count, "format")
        cur = self._conn.cursor(name=f"reflux_{next(_cursor_names)}",
                                row_factory=dict_row if self.as_dict else psycopg.rows.tuple_row)
        if self.key is not None:
            probe = self._conn.execute(f"SELECT * FROM ({self.query.strip().rstrip(';')}) AS reflux_q LIMIT 0",
                                       self.params)
            names = [d.name for d in probe.description or ()]
            if self.key not in names:
                raise ValueError(f"PostgresSource: key {self.key!r} is not a column of the query's result "
                                 f"({', '.join(names)})")
            self._key_at = names.index(self.key)
        cur.execute(sql, params)
        return cur

    def read_batch(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` rows; an empty list at the end.  A failure drops the
        connection: the next call reconnects and goes on after the last row read."""
        try:
            if self._cur is None:
                self._cur = self._start()
            rows: list[Any] = self._cur.fetchmany(max_items)
        except BaseException:
            try:
                self.close()
            except Exception:  # a broken connection may fail to close
                pass
            raise
        if not rows:
            self.close()
            return []
        self.count += len(rows)
        if self.key is not None:
            last = rows[-1]
            self.after = last[self.key] if self.as_dict else last[self._key_at]
        return rows

    def state(self) -> dict[str, Any]:
        """The last key read (with ``key=``) and the rows read."""
        return {"after": self.after, "count": self.count}

    def restore(self, state: dict[str, Any]) -> None:
        """Read on after ``state`` (the query restarts from there on the next read)."""
        self.close()
        self.after, self.count = state["after"], state["count"]


class PostgresSink(SqlSink):
    """Writes rows into ``table`` with ``COPY`` (``method="copy"``) or batched ``INSERT``
    (``method="insert"``); see :func:`write_postgres`."""

    reflux_name = "write_postgres"

    def __init__(self, table: str, *, conninfo: str = "", columns: Sequence[str] | None = None,
                 method: str = "copy", create: str | None = None, statement: str | None = None,
                 commit_every: int = 10_000, connect_timeout: float = 10.0,
                 checkpoint_table: str = "reflux_checkpoints", encoded: bool = False) -> None:
        if method not in ("copy", "insert"):
            raise ValueError(f"PostgresSink: method must be 'copy' or 'insert', got {method!r}")
        if encoded and (method != "copy" or statement is not None):
            raise ValueError("PostgresSink: encoded=True takes rows already in COPY's format, so it "
                             "needs method='copy' and no statement=")
        super().__init__(table, columns=columns, create=create, commit_every=commit_every,
                         checkpoint_table=checkpoint_table)
        self.conninfo = conninfo
        self.method = method
        self.statement = statement
        self.encoded = encoded
        self.connect_timeout = connect_timeout
        self._sql: str | None = None
        self._copying: Any = None  # the COPY in progress: (cursor, its context manager, the Copy)
        #: the commit's queries still to send, each once the server has answered the one before
        #: (see _commit_answered): a query and its parameters (None: a simple query)
        self._steps: list[tuple[bytes, list[bytes] | None]] = []
        #: the answer awaited is the COPY's (a failure there is a refused row)
        self._copy_answer_due = False
        #: (run id, sink name) and the checkpoint row's query, with those two parameters encoded
        self._marker_sql: tuple[tuple[str, str] | None, bytes, list[bytes]] = (None, b"", [])
        # a COPY learns of a refused row at its end anyway: rows arriving while a checkpoint
        # commits wait in memory instead of in the call
        self.defers = method == "copy" and statement is None

    #: commits are sent and their answer collected at the sink's next call
    sends = True

    def _connect(self) -> psycopg.Connection[Any]:
        self._copying = None
        self._steps = []
        self._copy_answer_due = False
        return psycopg.connect(self.conninfo, connect_timeout=int(self.connect_timeout))

    def _setup(self, sql: str) -> None:
        self._conn.execute(sql)
        self._conn.commit()

    def _cols(self) -> str:
        return f" ({', '.join(map(quote_ident, self.columns))})" if self.columns else ""

    def _rows(self, batch: list[Any]) -> list[Any]:
        if not self.encoded:
            return super()._rows(batch)
        try:
            data = b"".join(batch)
        except TypeError:
            bad = next(x for x in batch if not isinstance(x, (bytes, bytearray, memoryview)))
            raise TypeError(f"PostgresSink: with encoded=True every item is a row made by encode_copy_row(), "
                            f"got a {type(bad).__name__}") from None
        if data.count(b"\n") != len(batch) or not data.endswith(b"\n"):
            raise ValueError("PostgresSink: with encoded=True every item is one row in COPY's text format "
                             "ending in a newline (see encode_copy_row())")
        return batch

    def _insert(self, rows: list[Any]) -> None:
        if not rows:
            return
        if self.method == "copy" and self.statement is None:
            if self._copying is None:
                cur = self._conn.cursor()
                cm = cur.copy(f"COPY {self.qtable}{self._cols()} FROM STDIN", writer=_CopyEndSender(cur))
                self._copying = (cur, cm, cm.__enter__())
            if self.encoded:
                self._copying[2].write(b"".join(rows))
                return
            write = self._copying[2].write_row
            for row in rows:
                write(row)
            return
        if self._sql is None:
            width = len(self.columns) if self.columns else len(rows[0])
            self._sql = self.statement or \
                f"INSERT INTO {self.qtable}{self._cols()} VALUES ({', '.join(['%s'] * width)})"
        with self._conn.cursor() as cur:
            cur.executemany(self._sql, rows)

    def _abandon_copy(self) -> None:
        if self._copying is None:
            return
        cur, cm, _ = self._copying
        self._copying = None
        try:
            cm.__exit__(RuntimeError, RuntimeError("rolled back"), None)  # CopyFail: nothing is kept
        except Exception:  # the COPY was failing anyway
            pass
        finally:
            try:
                cur.close()
            except Exception:  # a broken connection
                pass

    def _rollback(self) -> None:
        self._abandon_copy()
        self._conn.rollback()

    def _marker_setup(self) -> None:
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self.checkpoint_table} (run_id TEXT NOT NULL, "
                           f"sink TEXT NOT NULL, checkpoint BIGINT NOT NULL, state BYTEA NOT NULL, "
                           f"PRIMARY KEY (run_id, sink))")
        self._conn.commit()
        # the snapshot stored as it comes: compressing it at every checkpoint cost the server
        # more than the bytes it saved (a snapshot holding items in flight is 100-300 KB);
        # looked up first, as the change locks the table that other runs may be writing to
        row = self._conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass "
                                 "AND attname = 'state'", (self.checkpoint_table,)).fetchone()
        self._conn.rollback()
        if row is not None and row[0] != "e":
            try:
                self._conn.execute(f"ALTER TABLE {self.checkpoint_table} ALTER COLUMN state SET STORAGE EXTERNAL")
                self._conn.commit()
            except psycopg.Error:  # not the table's owner: stored compressed, which only costs time
                self._conn.rollback()

    def _read_marker(self, run_id: str, key: str) -> tuple[int, bytes] | None:
        row = self._conn.execute(f"SELECT checkpoint, state FROM {self.checkpoint_table} "
                                 f"WHERE run_id = %s AND sink = %s", (run_id, key)).fetchone()
        self._conn.rollback()  # end the read's transaction: the run's writes start a new one
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _send_commit(self, marker: tuple[str, str, int, bytes] | None) -> None:
        # COMMIT, after the checkpoint's row if one is given; each query is sent once the
        # server has answered the one before (the end of the COPY first, if one runs)
        steps: list[tuple[bytes, list[bytes] | None]] = [(b"COMMIT", None)]
        if marker is not None:
            run_id, key, checkpoint, state = marker
            if self._marker_sql[0] != (run_id, key):
                enc = self._conn.info.encoding
                self._marker_sql = ((run_id, key), (
                    f"INSERT INTO {self.checkpoint_table} (run_id, sink, checkpoint, state) VALUES "
                    f"($1, $2, $3, $4) ON CONFLICT (run_id, sink) DO UPDATE SET checkpoint = "
                    f"excluded.checkpoint, state = excluded.state").encode(enc), [run_id.encode(enc), key.encode(enc)])
            # the snapshot as a binary parameter: the server neither parses nor unescapes it
            # (a hex literal in the query text cost the server 2.4 times as much)
            steps.insert(0, (self._marker_sql[1], [*self._marker_sql[2], b"%d" % checkpoint, state]))
        if self._copying is None:
            self._send_step(*steps[0])
            self._steps = steps[1:]
            return
        cur, cm, _ = self._copying
        self._copying = None
        try:
            cm.__exit__(None, None, None)  # sends the end of the COPY (_CopyEndSender)
        finally:
            cur.close()
        self._copy_answer_due = True
        self._steps = steps

    def _send_step(self, sql: bytes, params: list[bytes] | None) -> None:
        """Send one query of a commit without waiting for its answer."""
        pgconn = self._conn.pgconn
        if params is None:
            pgconn.send_query(sql)
        else:  # text, text, bigint as text; the snapshot (bytea) in binary
            pgconn.send_query_params(sql, params, param_types=_MARKER_TYPES, param_formats=_MARKER_FORMATS)
        self._conn.wait(_flushed(pgconn))

    def _commit_answered(self, block: bool) -> bool:
        # the answer comes in parts: the COPY's, then that of each query of the commit (each
        # sent once the one before is answered)
        pgconn = self._conn.pgconn
        failed: Any = None  # the first failed result of the part being read
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                res = pgconn.get_result()
                if res is None:
                    break
                if res.status == pq.ExecStatus.FATAL_ERROR and failed is None:
                    failed = res
            else:  # the rest of the answer is still on its way
                if not block:
                    return False
                self._conn.wait(_readable())
                continue
            copy_answer, self._copy_answer_due = self._copy_answer_due, False
            if failed is not None:
                self._steps = []
                error = _server_error(failed, self._conn.info.encoding)
                if copy_answer:  # the server refused one of the COPY's rows
                    raise TransactionAborted(f"{self.table}: the server refused a row of the transaction: "
                                             f"{type(error).__name__}: {error}") from error
                raise error
            if not self._steps:
                return True
            self._send_step(*self._steps.pop(0))
            failed = None


def _node_args(node: dict[str, Any]) -> dict[str, Any]:
    """The node's arguments, over the retry defaults."""
    return {**RETRY_DEFAULTS, **node}


def read_postgres(query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, conninfo: str = "",
                  key: str | None = None, as_dict: bool = False, **node: Any) -> Extractor:
    """An Extractor of the rows of ``query`` (tuples, or dicts with ``as_dict=True``),
    read through a server-side cursor in batches (the Extractor's batch size).  With
    ``key=`` (a unique, ordered column of the result) rows come in key order and a
    resumed run (or a reconnection) goes on after the last key read; without it, it
    skips the rows already read.  Runs in a thread of its own (it waits on the
    network).  ``node``: the Extractor's arguments; ``retries=3, backoff=0.5`` unless given."""
    return Extractor(PostgresSource(query, params, conninfo=conninfo, key=key, as_dict=as_dict),
                     **_node_args(node))


def write_postgres(table: str, *, conninfo: str = "", columns: Sequence[str] | None = None, method: str = "copy",
                   create: str | None = None, statement: str | None = None, commit_every: int = 10_000,
                   encoded: bool = False, **node: Any) -> Loader:
    """A Loader writing each item as a row of ``table`` (dicts by column name, tuples in
    order, numpy record chunks record by record), by one ``COPY ... FROM STDIN`` per
    transaction (default) or batched ``INSERT`` (``method="insert"``, or your own
    ``statement=``, e.g. an upsert), inside transactions (see the module docs for how
    each handles a row the server refuses).  ``create``: SQL run once when the sink connects.
    ``encoded=True``: each item is a row already in ``COPY``'s format, made by
    :func:`encode_copy_row` (in process workers, say), written as it comes.
    ``node``: the Loader's arguments; ``retries=3, backoff=0.5`` unless given.
    Reports the rows written."""
    return Loader(PostgresSink(table, conninfo=conninfo, columns=columns, method=method, create=create,
                               statement=statement, commit_every=commit_every, encoded=encoded),
                  **_node_args(node))
