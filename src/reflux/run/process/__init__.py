"""Process workers: ``Transformer(fn, executor="process")`` runs ``fn`` in worker processes.

``logic``
    the node's logic in the parent: chunks out, results back, in order, through the policy.
``launch``
    starting (spawn or fork), tracking and ending the worker processes.
``child``
    the program a worker runs, and the framing of messages both sides use
    (standard library only: a worker imports nothing of reflux unless the
    user's function does).
"""
from __future__ import annotations

from .launch import ProcessWorkerError, RemoteError

__all__ = ["ProcessWorkerError", "RemoteError"]
