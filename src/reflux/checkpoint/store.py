"""The checkpoint file: a small SQLite database holding each pipeline's last checkpoint.

One file may serve several pipelines (rows are keyed by the pipeline's name).
For each pipeline it holds a *run id*, made when the pipeline first runs with
the file, which names this series of runs in the checkpoint tables the
database sinks keep, and the last checkpoint taken (a
:class:`~reflux.checkpoint.snapshot.Snapshot` as bytes).  Deleting the file
starts the series over.

The file is in WAL mode with ``synchronous=NORMAL``: a checkpoint that was
recorded survives a crash of the process (the SIGKILL tests kill it at random
points); ``durable=True`` (``synchronous=FULL``) also makes it survive a power
cut.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid

from ..errors import CheckpointError

__all__ = ["CheckpointStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reflux_runs (
    pipeline TEXT PRIMARY KEY,
    run_id   TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reflux_checkpoints (
    pipeline   TEXT PRIMARY KEY,
    checkpoint INTEGER NOT NULL,
    taken      REAL NOT NULL,
    items      INTEGER NOT NULL,
    final      INTEGER NOT NULL,
    state      BLOB NOT NULL
);
"""


class CheckpointStore:
    """The checkpoint file of :class:`~reflux.Checkpoint` ``path`` (see the module docs)."""

    def __init__(self, path: str, *, durable: bool = False) -> None:
        self.path = path
        self.durable = durable
        self._db: sqlite3.Connection | None = None
        #: one connection serves the thread that records a barrier and the one that starts or ends the run
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open (creating) the file."""
        if self._db is not None:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise CheckpointError(f"checkpoint file {self.path!r}: folder {folder!r} does not exist",
                                  node=self.path)
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()  # not a checkpoint file: let it go now
            raise CheckpointError(f"checkpoint file {self.path!r} cannot be used: {exc} (is it a reflux "
                                  f"checkpoint file?)", node=self.path) from exc
        self._db = db

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def run_id(self, pipeline: str) -> str:
        """The run id of ``pipeline``'s series of runs, made (and recorded) on first use."""
        with self._lock:
            db = self._conn()
            row = db.execute("SELECT run_id FROM reflux_runs WHERE pipeline = ?", (pipeline,)).fetchone()
            if row is not None:
                return str(row[0])
            run_id = uuid.uuid4().hex
            db.execute("INSERT INTO reflux_runs (pipeline, run_id, created) VALUES (?, ?, ?)",
                       (pipeline, run_id, time.time()))
            return run_id

    def latest(self, pipeline: str) -> tuple[int, bytes] | None:
        """``(checkpoint id, snapshot bytes)`` of ``pipeline``'s last checkpoint, or ``None``."""
        with self._lock:
            row = self._conn().execute(
                "SELECT checkpoint, state FROM reflux_checkpoints WHERE pipeline = ?", (pipeline,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def save(self, pipeline: str, checkpoint: int, taken: float, items: int, final: bool, state: bytes) -> None:
        """Record ``pipeline``'s checkpoint (replacing the one before: one transaction)."""
        with self._lock:
            self._conn().execute(
                "INSERT INTO reflux_checkpoints (pipeline, checkpoint, taken, items, final, state) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pipeline) DO UPDATE SET checkpoint = excluded.checkpoint, "
                "taken = excluded.taken, items = excluded.items, final = excluded.final, state = excluded.state",
                (pipeline, checkpoint, taken, items, int(final), state))

    def forget(self, pipeline: str) -> None:
        """Drop ``pipeline``'s run id and checkpoint: its next run starts over."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.execute("DELETE FROM reflux_checkpoints WHERE pipeline = ?", (pipeline,))
            db.execute("DELETE FROM reflux_runs WHERE pipeline = ?", (pipeline,))
            db.execute("COMMIT")
