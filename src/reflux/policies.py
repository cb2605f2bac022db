"""Error policies: what a node does with an item its function failed on.

A node's policy is set with the node's keyword arguments::

    Transformer(parse, on_error="dead_letter", retries=3, backoff=0.05)

``on_error``
    ``"raise"`` (default)
        stop the pipeline; :meth:`Pipeline.run` raises :class:`~reflux.NodeError`
        naming the node, with the original exception chained (``__cause__``).
    ``"skip"``
        count the failure in the node's ``errors`` and go on.
    ``"dead_letter"``
        send an :class:`~reflux.ErrorRecord` (item, node name, exception,
        traceback) to the dead-letter Loader; without one, the records are
        collected in :attr:`RunResult.dead_letters`.
    ``"log"``
        log the failure with its traceback on the ``"reflux"`` logger and go on.
``retries``
    how many more times to call the function on the failed item before the
    policy applies (default 0).
``backoff``
    seconds to wait before the first retry; each further retry waits
    ``backoff_factor`` times longer (default 2.0), at most ``max_backoff``
    seconds.  A stop of the pipeline interrupts the wait.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import ValidationError

__all__ = ["ErrorPolicy", "ON_ERROR", "OnError"]

OnError = Literal["raise", "skip", "dead_letter", "log"]

#: the accepted values of ``on_error``
ON_ERROR: tuple[str, ...] = ("raise", "skip", "dead_letter", "log")


@dataclass(frozen=True)
class ErrorPolicy:
    """How a node handles an item its function failed on (see the module docs)."""

    on_error: str = "raise"
    retries: int = 0
    backoff: float = 0.0
    backoff_factor: float = 2.0
    max_backoff: float = 30.0

    @classmethod
    def build(cls, owner: str, on_error: str = "raise", retries: int = 0, backoff: float = 0.0,
              backoff_factor: float = 2.0, max_backoff: float = 30.0) -> ErrorPolicy:
        """Check the arguments and build a policy; errors name ``owner`` (e.g. ``"Transformer 'parse'"``)."""
        if on_error not in ON_ERROR:
            raise ValidationError(
                f"{owner}: on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(f"{owner}: retries must be an integer >= 0, got {retries!r}")
        for label, value in (("backoff", backoff), ("backoff_factor", backoff_factor),
                             ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValidationError(f"{owner}: {label} must be a finite number >= 0, got {value!r}")
        if backoff_factor < 1:
            raise ValidationError(f"{owner}: backoff_factor must be >= 1, got {backoff_factor!r}")
        return cls(on_error, retries, float(backoff), float(backoff_factor), float(max_backoff))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if self.backoff <= 0:
            return 0.0
        return min(self.max_backoff, self.backoff * self.backoff_factor ** (retry - 1))
