"""The special values a node's function may return: :class:`NeedsMoreWork` and :class:`Error`.

They are the vocabulary of the Rust crate's Transformer (Transformed /
NeedsMoreWork / Error): a plain return value is the output, these two are
not.  Both classes are final, so the batch loops recognise them by exact type.
"""
from __future__ import annotations

from typing import Any, final

from .errors import TransformError

__all__ = ["NeedsMoreWork", "Error", "Signal", "SIGNAL_TYPES"]


class Signal:
    """Base of the special values a node function may return (NeedsMoreWork, Error)."""

    __slots__ = ()


@final
class NeedsMoreWork(Signal):
    """Returned (or yielded) by a Transformer: feed ``item`` back into the same
    Transformer for more work, e.g. a sub-directory while walking a tree.

    Feedback is held by the node itself (never in its bounded input channel),
    so it cannot deadlock, and the node ends only once its feedback is done.
    """

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __repr__(self) -> str:
        return f"NeedsMoreWork({self.item!r})"


@final
class Error(Signal):
    """Returned (or yielded) by a node's function to report a failure without
    raising.  ``error`` is an exception, or any value (wrapped in
    :class:`~reflux.errors.TransformError`).  It goes through the node's error
    policy exactly as a raised exception does (retries included).
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException | Any) -> None:
        self.error = error

    @property
    def exception(self) -> BaseException:
        """The error as an exception."""
        if isinstance(self.error, BaseException):
            return self.error
        return TransformError(str(self.error))

    def __repr__(self) -> str:
        return f"Error({self.error!r})"


#: the exact types of the special return values (both classes are final)
SIGNAL_TYPES = frozenset((NeedsMoreWork, Error))
