"""Checkpoints: what a pipeline records so that a later run resumes where it stopped.

``Pipeline(..., checkpoint="run.ckpt")`` (or a :class:`Checkpoint` with its
options) records, at barriers every ``every`` items or ``seconds`` seconds,
each source's position and each stateful node's state, once the sinks have
committed everything before the barrier.  ``run()`` with the same checkpoint
continues after the last barrier.

* :mod:`~reflux.checkpoint.config`: :class:`Checkpoint`, the options;
* :mod:`~reflux.checkpoint.store`: the checkpoint file (SQLite);
* :mod:`~reflux.checkpoint.snapshot`: one checkpoint's content;
* :mod:`~reflux.checkpoint.protocol`: what sources, sinks and functions offer
  (``state()``/``restore()``, ``checkpoint_role``...);
* :mod:`~reflux.checkpoint.commit`: the order in which sinks commit, and resuming;
* :mod:`~reflux.checkpoint.state`: the nodes' states.

How a barrier stops and drains a running pipeline is the run layer's job
(:mod:`reflux.run.barrier`).
"""
from __future__ import annotations

from typing import Any

from .config import Checkpoint
from .protocol import FileSetSink, StatefulCallable, TransactionalSink

__all__ = ["Checkpoint", "CheckpointStore", "FileSetSink", "Snapshot", "StatefulCallable", "TransactionalSink"]

#: names whose modules load on first use (``import reflux`` needs neither sqlite3 nor pickle)
_LAZY = {"CheckpointStore": ".store", "Snapshot": ".snapshot"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reflux.checkpoint' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
