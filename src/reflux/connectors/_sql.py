"""What the SQLite and PostgreSQL connectors share: turning items into rows, the batching
sink with its transactions and checkpoint row, and resumable queries.

**Sinks** (:class:`SqlSink`) insert each batch inside a transaction.  Without
checkpoints they commit every ``commit_every`` rows and at the end of the run;
under checkpoints (``checkpoint_role = "transaction"``) they commit only when a
checkpoint does, together with a row of the checkpoint table
(``reflux_checkpoints``: run id, sink name, checkpoint number, the snapshot),
so rows and checkpoint exist together or not at all.  A batch that fails is
not in the transaction, so the Loader's error policy handles it like any
failed batch (``retries=``, then ``on_error``):

* PostgreSQL aborts the whole transaction on any error, and a connection may
  be lost: the rows of the open transaction are kept in memory until it
  commits, and after a failure the next call rolls back (reconnecting if it
  must) and writes them again before its batch;
* SQLite writes each batch under a savepoint and rolls back only the batch.

**A sink that** ``sends`` **does not wait for its commits** (PostgreSQL): it sends
the end of the ``COPY`` and the ``COMMIT`` (with a checkpoint's row) and returns;
the Loader's next calls collect the server's answer, and rows that arrive before
it wait in memory (``defers``; else, or once ``commit_every`` rows wait, the call
waits for the answer).  A commit
that failed for a lost connection is written again by the next call, as any
failed write; a checkpoint's commit that failed fails the run.  Committing
inline, a checkpoint is sent this way and confirmed at the next barrier
(:meth:`SqlSink.checkpoint_send`, :meth:`SqlSink.checkpoint_confirm`).

**Under checkpoints the commit may run beside the pipeline** (see
:mod:`reflux.checkpoint.commit`): at a barrier :meth:`SqlSink.checkpoint_cut`
marks the rows written so far as the transaction the checkpoint commits, and
until a thread of the checkpoint has committed it, the rows of the next
batches wait: in memory when the sink would only learn of a refused row at the
commit anyway (PostgreSQL ``COPY``; the Loader's first call after the commit
writes them, in the pipeline's thread, so two threads never write rows at once),
else in the call, which returns once it has written its batch after the commit
(so a refused batch still goes to the error policy of the call that brought it).

**Items** become rows like this: a dict by column name (``columns=``, by
default the first item's keys); a tuple or list as it is (in the table's
column order unless ``columns=`` names them); a numpy structured array (a
chunk of records, as compiled plug-ins make) record by record, its fields as
columns.

**Sources** run a query and fetch its rows in batches.  With ``key=`` (a
column of the result, unique and ordered) they read in key order and resume
after the last key read; without it they resume by skipping the rows already
read, which assumes the query returns its rows in a stable order.
"""
from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["SqlSink", "TransactionAborted", "quote_ident", "resumable_query"]


class TransactionAborted(BaseException):
    """The database aborted a transaction holding rows of batches the sink had already
    taken, and the sink cannot write them again: a row refused at the end of a
    PostgreSQL ``COPY`` (which cannot be told from the others), or an SQLite
    transaction rolled back by the database itself (a full disk, an I/O error).
    Not an :class:`Exception` on purpose: it fails the run whatever the node's
    ``on_error`` (under checkpoints a restart resumes from the last one)."""


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: each dotted part in double quotes (a name that
    already holds a double quote is taken as written)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a table or column name must be a non-empty string, got {name!r}")
    if '"' in name:
        return name
    return ".".join('"' + part + '"' for part in name.split("."))


def resumable_query(query: str, params: Any, key: str | None, after: Any, count: int, style: str) -> tuple[str, Any]:
    """The query to (re)start a source: in ``key`` order after ``after``, or skipping
    ``count`` rows; ``style`` is the driver's placeholder (``"qmark"``: ``?`` and
    ``:name``; ``"format"``: ``%s`` and ``%(name)s``)."""
    body = query.strip().rstrip(";")
    if key is None:
        if count <= 0:
            return body, params
        return f"SELECT * FROM ({body}) AS reflux_q OFFSET {int(count)}" if style == "format" else \
            f"SELECT * FROM ({body}) AS reflux_q LIMIT -1 OFFSET {int(count)}", params
    k = f"reflux_q.{quote_ident(key)}"
    if after is None:
        return f"SELECT * FROM ({body}) AS reflux_q ORDER BY {k}", params
    if isinstance(params, Mapping):
        marker = ":reflux_after" if style == "qmark" else "%(reflux_after)s"
        merged: Any = {**params, "reflux_after": after}
    else:
        marker = "?" if style == "qmark" else "%s"
        merged = tuple(params or ()) + (after,)
    return f"SELECT * FROM ({body}) AS reflux_q WHERE {k} > {marker} ORDER BY {k}", merged


def _records(batch: list[Any]) -> list[Any]:
    out: list[Any] = []
    for arr in batch:
        out.extend(arr.tolist())
    return out


class SqlSink:
    """A batching, transactional database sink (see the module docs).  Subclasses
    connect and speak their database's SQL: :meth:`_connect`, :meth:`_insert`,
    :meth:`_commit`, :meth:`_rollback`, :meth:`_disconnect`, :meth:`_marker_setup`,
    :meth:`_read_marker`, and :meth:`_write_marker` (or :meth:`_commit_marked`, which
    writes a checkpoint's row and commits); a sink that ``sends`` its commits has
    :meth:`_send_commit` and :meth:`_commit_answered` in place of the commits."""

    batched = True
    checkpoint_role = "transaction"
    #: keep the rows of the open transaction to write them again after a failure
    #: (else a subclass isolates each batch: :meth:`_insert_batch`)
    replays = True
    #: while a checkpoint commits, keep the rows of new batches in memory (else the call waits)
    defers = False
    #: a commit can be sent to the server and its answer collected later (:meth:`_send_commit`,
    #: :meth:`_commit_answered`): the pipeline goes on while the server commits
    sends = False

    def __init__(self, table: str, *, columns: Sequence[str] | None, create: str | None, commit_every: int,
                 checkpoint_table: str) -> None:
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ValueError(f"commit_every must be a positive integer, got {commit_every!r}")
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise ValueError(f"columns must be a list of column names, got {columns!r:.60}")
        self.table = table
        self.qtable = quote_ident(table)
        self.columns: list[str] | None = list(columns) if columns is not None else None
        self.create = create
        self.commit_every = commit_every
        self.checkpoint_table = quote_ident(checkpoint_table)
        #: rows written by this run (committed or not yet)
        self.loaded = 0
        self._conn: Any = None
        self._getter: Callable[[Any], Any] | None = None
        self._uncommitted: list[list[Any]] = []
        self._n_uncommitted = 0
        self._broken = False
        self._attached = False
        self._run_id = ""
        self._key = ""
        # _lock protects _cut and _later: the Loader's calls and a checkpoint's commit thread
        # (the connection itself is used by one of them at a time: the calls leave it alone
        # while _cut is set); _cond wakes calls waiting for the commit
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: a checkpoint's transaction was cut and is not committed yet
        self._cut = False
        #: rows of batches taken while _cut is set (``defers``): the Loader's next call writes
        #: them (in its own thread: two threads writing rows would only fight for the GIL)
        self._later: list[list[Any]] = []
        #: deferred rows still unwritten when the next checkpoint was cut: they came before
        #: it, so that checkpoint's commit writes them into its transaction
        self._before_cut: list[list[Any]] = []
        #: rows of the transaction whose commit was sent and not answered yet (``sends``)
        self._sent: list[list[Any]] | None = None
        #: why the commit of a checkpoint sent by checkpoint_send() failed (checkpoint_confirm raises it)
        self._send_failure: BaseException | None = None

    # ------------------------------------------------------------------ rows

    def _rows(self, batch: list[Any]) -> list[Any]:
        first = batch[0]
        if isinstance(first, Mapping):
            if self.columns is None:
                self.columns = list(first)
            if self._getter is None:
                cols = self.columns
                self._getter = (operator.itemgetter(*cols) if len(cols) > 1
                                else (lambda d, c=cols[0]: (d[c],)))
            try:
                return list(map(self._getter, batch))
            except KeyError as exc:
                raise ValueError(f"an item has no column {exc.args[0]!r} (columns: {self.columns})") from None
        if getattr(first, "dtype", None) is not None and getattr(first.dtype, "names", None):
            if self.columns is None:
                self.columns = list(first.dtype.names)
            return _records(batch)
        return batch

    # ------------------------------------------------------------------ the Loader's hooks

    def open(self) -> None:
        """A run starts: connect (a checkpointed run is connected already)."""
        self.loaded = 0
        if self._conn is None:
            self._open_connection()

    def _open_connection(self) -> None:
        self._conn = self._connect()
        self._broken = False
        if self.create:
            self._setup(self.create)

    def __call__(self, batch: list[Any]) -> None:
        rows = self._rows(batch)
        if self._cut:  # set only while the pipeline is held: a stale False cannot be read here
            with self._cond:
                if self._cut and self.defers:
                    self._keep(rows)
                    return
                while self._cut:
                    self._cond.wait()
        if self._sent is not None and not self._answered_in_call():
            with self._lock:
                self._keep(rows)  # the server is still committing
            return
        if not self.replays:
            if self._conn is None:
                self._open_connection()
            self._insert_batch(rows)
        else:
            if self._broken or self._conn is None:
                self._recover_connection()
            if self._later:  # deferred while the last checkpoint committed: they go first
                self._write_later()
            try:
                self._insert(rows)
            except BaseException:
                self._broken = True  # the transaction is lost: rolled back and written again next call
                raise
            self._uncommitted.append(rows)
        self._n_uncommitted += len(rows)
        self.loaded += len(rows)
        if not self._attached and self._n_uncommitted >= self.commit_every:
            try:
                self._commit_all(wait=False)
            except Exception as exc:
                if not self.replays:
                    raise TransactionAborted(f"{self.table}: the commit failed: {type(exc).__name__}: "
                                             f"{exc}") from exc
                # the batch is taken: its rows are kept, and the next call (or the end of the
                # run) reconnects, writes them again and commits
                self._broken = True

    def close(self) -> None:
        """The run ends: without checkpoints commit and disconnect; under checkpoints the
        last checkpoint commits (or the run's end rolls back)."""
        if self._attached or self._conn is None:
            return
        try:
            try:
                self._settle(block=True)
            except Exception:  # the sent commit failed: its rows are written again below
                pass
            if self._broken:
                self._recover_connection()
            if self._later:
                self._write_later()
            self._commit_all()
        finally:
            self._drop_connection()

    def result(self) -> int:
        """Rows written by this run."""
        return self.loaded

    def _recover_connection(self) -> None:
        """After a failed write: roll back (reconnecting if the connection is gone) and
        write the transaction's rows again."""
        if self._conn is not None:
            try:
                self._rollback()
            except Exception:  # the connection is gone: a new one
                self._drop_connection()
        if self._conn is None:
            self._open_connection()
        self._broken = True
        for rows in self._uncommitted:
            self._insert(rows)
        self._broken = False

    def _keep(self, rows: list[Any]) -> None:
        """[with _lock held] Keep a batch's rows in memory while a commit runs (written by
        :meth:`_write_later`)."""
        self._later.append(rows)
        self._n_uncommitted += len(rows)
        self.loaded += len(rows)

    def _commit_all(self, marker: tuple[str, str, int, bytes] | None = None, *, wait: bool = True) -> None:
        """Commit the transaction (with a checkpoint's row in it: ``marker``, the arguments
        of :meth:`_commit_marked`); its rows need no replay any more.  ``wait=False``: a
        sink that ``sends`` returns once the commit is on its way (:meth:`_settle` collects
        the answer)."""
        if self.sends:
            self._send_commit(marker)
            self._sent, self._uncommitted = self._uncommitted, []
            self._n_uncommitted = 0
            if wait:
                self._settle(block=True)
            return
        if marker is None:
            self._commit()
        else:
            self._commit_marked(*marker)
        self._uncommitted = []
        self._n_uncommitted = 0

    def _settle(self, block: bool) -> bool:
        """Collect the server's answer to the commit sent, if one is out (``block``: wait for
        it); True when none is out any more.  A failure is raised after the rows of the lost
        transaction are put back to be written again (after a reconnection)."""
        if self._sent is None:
            return True
        try:
            if not self._commit_answered(block):
                return False
        except BaseException:
            lost, self._sent = self._sent, None
            self._uncommitted = lost + self._uncommitted
            self._n_uncommitted += sum(map(len, lost))
            self._broken = True
            raise
        self._sent = None
        return True

    def _answered_in_call(self) -> bool:
        """[the Loader's call] Whether the commit sent is answered (waiting for it if the
        sink does not keep rows in memory meanwhile, or keeps ``commit_every`` rows already:
        a server slow to commit slows the pipeline rather than fill the memory).  Without
        checkpoints a lost commit is written again by this call; a checkpoint's failed
        commit fails the run."""
        try:
            return self._settle(block=not self.defers or sum(map(len, self._later)) >= self.commit_every)
        except Exception as exc:
            if not self._attached:
                return True  # _broken: this call reconnects and writes the lost rows again
            self._send_failure = exc
            raise TransactionAborted(f"{self.table}: a checkpoint's commit failed: {type(exc).__name__}: "
                                     f"{exc}") from exc

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._disconnect(conn)
            except Exception:  # closing a broken connection
                pass

    # ------------------------------------------------------------------ checkpoints (see reflux.checkpoint.protocol)

    def checkpoint_attach(self, run_id: str, key: str, durable: bool = False) -> None:
        self._attached = True
        self._run_id = run_id
        self._key = key

    def checkpoint_recover(self) -> tuple[int, bytes] | None:
        if self._conn is None:
            self._open_connection()
        self._marker_setup()
        return self._read_marker(self._run_id, self._key)

    def checkpoint_cut(self, checkpoint: int) -> None:
        """The pipeline is held at a barrier: the rows written so far, and those deferred
        during the last commit that no call has written yet, are the transaction that
        :meth:`checkpoint_commit` commits; later rows wait for it."""
        with self._lock:
            self._cut = True
            self._before_cut, self._later = self._later, []

    def checkpoint_commit(self, checkpoint: int, state: bytes | None) -> None:
        try:
            self._commit_checkpoint(checkpoint, state, wait=True)
        finally:
            with self._cond:
                self._cut = False  # from here on the calls write themselves (deferred rows first)
                self._cond.notify_all()

    def checkpoint_send(self, checkpoint: int, state: bytes) -> bool:
        """Commit everything written so far with the checkpoint's row.  A sink that
        ``sends`` does not wait for the server's answer: the pipeline goes on (new rows
        wait in memory, or the call waits, until the answer) and :meth:`checkpoint_confirm`
        collects it; returns whether it did so (else the commit is done)."""
        if not self.sends:
            self.checkpoint_commit(checkpoint, state)
            return False
        self._commit_checkpoint(checkpoint, state, wait=False)
        return True

    def _commit_checkpoint(self, checkpoint: int, state: bytes | None, wait: bool) -> None:
        """Commit the rows before the barrier (with the checkpoint's row if ``state``)."""
        self._settle(block=True)
        if self._conn is None or self._broken:
            self._recover_connection()
        before, self._before_cut = self._before_cut, []
        for rows in before:
            self._uncommitted.append(rows)  # kept first: a recovery writes them again
            self._insert(rows)
        if not self._cut and self._later:  # inline: rows kept during a commit sent earlier came before it
            self._write_later()
        self._commit_all(None if state is None else (self._run_id, self._key, checkpoint, state), wait=wait)

    def checkpoint_confirm(self, checkpoint: int) -> None:
        """Wait for the answer to :meth:`checkpoint_send`; raise if the commit failed."""
        failure, self._send_failure = self._send_failure, None
        if failure is not None:
            raise failure
        self._settle(block=True)

    def _write_later(self) -> None:
        """Write the rows kept in memory while the last commit ran into the open transaction."""
        with self._lock:
            later, self._later = self._later, []
        # all kept first: if one batch fails, the recovery writes every one of them again
        self._uncommitted.extend(later)
        for rows in later:
            try:
                self._insert(rows)
            except BaseException:
                self._broken = True  # the transaction is lost: rolled back and written again next call
                raise

    def checkpoint_detach(self, rollback: bool) -> None:
        with self._cond:
            self._cut = False
            self._cond.notify_all()
        self._attached = False
        if self._conn is None:
            return
        try:
            try:
                self._settle(block=True)
            except Exception:  # a failed commit of the run's end: what it held is rolled back
                pass
            if rollback:
                self._uncommitted = []
                self._n_uncommitted = 0
                self._later, self._before_cut = [], []  # after the last checkpoint: a restart replays them
                self._rollback()
        finally:
            self._drop_connection()

    # ------------------------------------------------------------------ what a database says

    def _connect(self) -> Any:
        raise NotImplementedError

    def _disconnect(self, conn: Any) -> None:
        conn.close()

    def _setup(self, sql: str) -> None:
        """Run ``sql`` (DDL) and commit."""
        raise NotImplementedError

    def _insert(self, rows: list[Any]) -> None:
        raise NotImplementedError

    def _insert_batch(self, rows: list[Any]) -> None:
        """Insert a batch so that a failure leaves the transaction as it was (``replays = False``)."""
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _send_commit(self, marker: tuple[str, str, int, bytes] | None) -> None:
        """(``sends``) Send the commit (with a checkpoint's row: ``marker``) and return."""
        raise NotImplementedError

    def _commit_answered(self, block: bool) -> bool:
        """(``sends``) Whether the server answered the commit sent (``block``: wait for the
        answer); raise its failure."""
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _marker_setup(self) -> None:
        raise NotImplementedError

    def _read_marker(self, run_id: str, key: str) -> tuple[int, bytes] | None:
        raise NotImplementedError

    def _write_marker(self, run_id: str, key: str, checkpoint: int, state: bytes) -> None:
        raise NotImplementedError

    def _commit_marked(self, run_id: str, key: str, checkpoint: int, state: bytes) -> None:
        """Write the checkpoint's row into the transaction and commit it."""
        self._write_marker(run_id, key, checkpoint, state)
        self._commit()
