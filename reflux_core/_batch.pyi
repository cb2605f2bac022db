"""Type stubs of reflux_core._batch (compiled, internal): the C loops of a node over a batch."""
from collections.abc import Callable
from typing import Any, Final

class StopFlag:
    """A flag the loops check before each call (set when the run is abandoned)."""

    def set(self) -> None: ...
    @property
    def is_set(self) -> bool: ...

#: the outcome of an item the loop did not call because the flag was set
STOPPED: Final[object]

def call_all(fn: Callable[[Any], Any], batch: list[Any], start: int, into: list[Any], error_type: type[Any],
             special_type: type[Any], stop: StopFlag) -> tuple[int, Any, int, int]: ...
def keep_all(pred: Callable[[Any], Any], batch: list[Any], start: int, into: list[Any], error_type: type[Any],
             stop: StopFlag) -> tuple[int, Any]: ...
