"""Exceptions and error records of the pipeline layer.

Every exception reflux raises about a pipeline derives from :class:`RefluxError`
and names the node it concerns, so a message reads like
``ValidationError: Balancer 'split' has no receivers``.
"""
from __future__ import annotations

import time
import traceback as _traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .result import RunResult

__all__ = [
    "RefluxError",
    "ValidationError",
    "NotCallableError",
    "NodeError",
    "ClogError",
    "RoutingError",
    "TransformError",
    "PipelineInterrupted",
    "AccountingError",
    "CheckpointError",
    "SourceRecordError",
    "ErrorRecord",
    "safe_repr",
    "safe_str",
]


def safe_repr(obj: Any, limit: int = 200) -> str:
    """``repr(obj)`` cut to ``limit`` characters; never raises (error reporting must
    not fail because an item's ``__repr__`` does)."""
    try:
        text = repr(obj)
    except Exception as exc:  # a user's __repr__
        text = f"<{type(obj).__name__} object (its repr() raised {type(exc).__name__})>"
    if len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."
    return text


def safe_str(obj: Any) -> str:
    """``str(obj)`` (e.g. of an exception), or a stand-in when its ``__str__`` raises."""
    try:
        return str(obj)
    except Exception as exc:  # a user's __str__
        return f"<{type(obj).__name__} (its str() raised {type(exc).__name__})>"


class RefluxError(Exception):
    """Base class of the errors the pipeline layer raises."""


class ValidationError(RefluxError, ValueError):
    """The pipeline graph or a node's configuration is invalid.

    Raised before anything runs (when a node is built, when nodes are
    connected, or by :meth:`Pipeline.validate`); the message names the node.
    """


class NotCallableError(ValidationError, TypeError):
    """A node was given a function (or source) it cannot call or iterate."""


class AccountingError(RefluxError, AssertionError):
    """A :class:`RunResult` does not account for every item (a reflux bug)."""


class TransformError(RefluxError):
    """Wraps the payload of ``Error(...)`` when it is not an exception itself."""


class RoutingError(RefluxError, LookupError):
    """A Messenger found no route for an item's key and has no default route."""


class NodeError(RefluxError):
    """A node failed under the ``"raise"`` error policy and stopped the pipeline.

    The original exception is chained as ``__cause__`` (its traceback is kept);
    :attr:`record` holds the :class:`ErrorRecord` and :attr:`result` the
    partial :class:`RunResult` (what was done before the failure).
    """

    def __init__(self, message: str, *, node: str, record: ErrorRecord | None = None) -> None:
        super().__init__(message)
        self.node: str = node
        self.record: ErrorRecord | None = record
        self.result: RunResult | None = None


class ClogError(NodeError):
    """The clogging watchdog stopped the pipeline (``on_clog="stop"``): the
    input channel of :attr:`node` stayed full while the node made no progress
    for longer than the pipeline's ``clog_timeout``.

    Raised by :meth:`Pipeline.run` / :meth:`Pipeline.join`; :attr:`result`
    holds the partial result.
    """


class CheckpointError(NodeError):
    """A checkpoint could not be recorded or resumed from.

    Raised when a run starts (the checkpoint file and a sink's database disagree,
    a checkpoint names a node the pipeline lacks, a source cannot resume) and when
    a barrier fails to commit (the run then fails: restart it to resume from the
    last checkpoint).  :attr:`node` names the node concerned (the pipeline's name
    when no node is); :attr:`result` holds the partial result when a run had started.
    """


class SourceRecordError(RefluxError, ValueError):
    """Raised by a batch reader (a source of :mod:`reflux.connectors`) for one bad
    record it has stepped over, for example a line that is not valid JSON.

    The Extractor applies its error policy to the record (:attr:`item`, the raw
    record) and reads on: the record is not retried, since the reader has already
    moved past it.
    """

    def __init__(self, message: str, item: Any = None) -> None:
        super().__init__(message)
        self.item = item


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived while :meth:`Pipeline.run` was waiting.

    The pipeline was stopped (in-flight items abandoned) and every worker
    joined before this was raised.  It is a :class:`KeyboardInterrupt`, so
    code that catches that keeps working; :attr:`result` reports what was
    done before the interrupt.
    """

    def __init__(self, result: RunResult | None = None) -> None:
        super().__init__("pipeline interrupted")
        self.result: RunResult | None = result


@dataclass
class ErrorRecord:
    """One item that failed in a node, after any retries.

    These are the records kept in :attr:`RunResult.errors` and sent to the
    dead-letter Loader under ``on_error="dead_letter"``.
    """

    #: name of the node where the item failed
    node: str
    #: the item that failed (for an Extractor whose source failed: ``None``)
    item: Any
    #: the exception raised (or carried by ``Error(...)``)
    exception: BaseException
    #: the formatted traceback of the last attempt
    traceback: str
    #: how many times the function was called on the item (1 + retries used)
    attempts: int = 1
    #: ``time.time()`` when the record was made
    time: float = field(default_factory=time.time)

    @classmethod
    def from_exception(cls, node: str, item: Any, exc: BaseException, attempts: int = 1) -> ErrorRecord:
        """Build a record from an exception that was raised (or made by ``Error``)."""
        tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(node=node, item=item, exception=exc, traceback=tb, attempts=attempts)

    def __repr__(self) -> str:
        return (f"ErrorRecord(node={self.node!r}, item={safe_repr(self.item)}, "
                f"exception={safe_repr(self.exception)}, attempts={self.attempts})")
