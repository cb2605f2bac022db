"""What a source, a sink or a node's function offers to take part in checkpoints.

Everything here is duck-typed: reflux looks for the methods, it never asks for a
base class.  The connectors of :mod:`reflux.connectors` implement them; your own
sources and sinks can too.

**Sources** (the object given to an :class:`~reflux.Extractor`) and **stateful
functions** (of a Transformer, Filter, Messenger or Loader) offer ``state()``,
which returns a picklable value, and ``restore(state)``, called with it after
``open()`` when a run resumes.  A source without them is positioned by
counting: it is read again from its start and the items before the checkpoint
are skipped.  The replicas of a node with ``parallel=N`` that each run their
own copy of a stateful object have a state each: every copy's ``state()`` is
saved, and each is restored into the copy of the same replica (so a run
resumes with the ``parallel=`` its checkpoint was taken with).

**Sinks** (the function of a :class:`~reflux.Loader`) say how they commit with a
``checkpoint_role`` attribute:

``"transaction"`` (:class:`TransactionalSink`)
    a database sink whose writes stay in an open transaction until a
    checkpoint commits them, with a row recording the checkpoint in the same
    transaction.  The first such sink of a pipeline *decides* each checkpoint:
    it exists exactly when that transaction committed.  Exactly-once.
``"files"`` (:class:`FileSetSink`)
    a sink of files that it writes under temporary names: ``prepare`` makes what
    it wrote safe (flushed, or synced with ``durable=True``) and returns what a
    restart needs to finish the job, ``commit`` renames the finished files into
    place.  A restart redoes the renames of the checkpoint it resumes from and
    cuts the file in progress back to that checkpoint.  Exactly-once.

Any other Loader is **at-least-once**: after a crash the items since the last
checkpoint reach it again.  If its function has a ``flush()`` method, it is
called at each checkpoint before the checkpoint counts, so nothing it buffered
is lost.  Further ``"transaction"`` sinks of a pipeline after the first commit
at each checkpoint before the decision, so they too are at-least-once.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["FileSetSink", "StatefulCallable", "TransactionalSink", "role_of"]


@runtime_checkable
class StatefulCallable(Protocol):
    """A source or function whose state a checkpoint saves."""

    def state(self) -> Any:
        """A picklable value that :meth:`restore` can resume from."""

    def restore(self, state: Any) -> None:
        """Continue from ``state`` (called after ``open()``)."""


class TransactionalSink(Protocol):
    """A database sink that commits with the checkpoint (``checkpoint_role = "transaction"``)."""

    checkpoint_role: str

    def checkpoint_attach(self, run_id: str, key: str, durable: bool) -> None:
        """Before the run: from now on writes are committed only by :meth:`checkpoint_commit`;
        ``run_id`` and ``key`` (the Loader's name) name this sink's checkpoint row;
        ``durable`` is :attr:`Checkpoint.durable <reflux.Checkpoint.durable>`."""

    def checkpoint_recover(self) -> tuple[int, bytes] | None:
        """Before the run: the last checkpoint committed with this sink for this run id
        (its number and snapshot bytes), or ``None``."""

    def checkpoint_cut(self, checkpoint: int) -> None:
        """(Optional) The pipeline is held at a barrier: what was written so far is what
        :meth:`checkpoint_commit` will commit, from another thread, while the pipeline goes
        on; writes that come in between must wait for it.  A sink without this method
        commits while the pipeline is held."""

    def checkpoint_commit(self, checkpoint: int, state: bytes | None) -> None:
        """Commit everything written before the barrier; with ``state``, record the
        checkpoint in the same transaction."""

    def checkpoint_send(self, checkpoint: int, state: bytes) -> bool:
        """(Optional) Like :meth:`checkpoint_commit` with ``state``, called while the
        pipeline is held when it commits inline, but the sink may return before the
        database has answered (True: :meth:`checkpoint_confirm` is called before the
        next checkpoint or at the end; False: it committed already).  Writes that come
        meanwhile must not join the transaction sent."""

    def checkpoint_confirm(self, checkpoint: int) -> None:
        """(With :meth:`checkpoint_send`) Wait for the answer to the commit sent; raise
        if it failed."""

    def checkpoint_detach(self, rollback: bool) -> None:
        """After the run: roll back what was not committed (``rollback``) and let go."""


class FileSetSink(Protocol):
    """A sink of files committed by rename (``checkpoint_role = "files"``)."""

    checkpoint_role: str

    def checkpoint_attach(self, run_id: str, key: str, durable: bool) -> None:
        """Before the run: from now on files are finished only by :meth:`checkpoint_commit`;
        with ``durable`` they are synced to disk before a checkpoint counts."""

    def checkpoint_recover(self, prepared: Any) -> None:
        """Before the run: finish what ``prepared`` (of the checkpoint resumed from, or
        ``None``) promised, and drop what was written after it."""

    def checkpoint_prepare(self, checkpoint: int, final: bool) -> Any:
        """Make everything written so far safe; return (picklable) what a restart needs.
        ``final``: the run has ended, every file is finished."""

    def checkpoint_commit(self, checkpoint: int, prepared: Any) -> None:
        """The checkpoint counts: rename the finished files into place."""

    def checkpoint_detach(self, rollback: bool) -> None:
        """After the run: let go of open files."""


def role_of(fn: Any) -> str | None:
    """A Loader function's checkpoint role: ``"transaction"``, ``"files"`` or ``None``."""
    role = getattr(fn, "checkpoint_role", None)
    return role if role in ("transaction", "files") else None
