"""Type stubs of reflux_core._batch (compiled, internal): the C loops of a node over a batch."""
from collections.abc import Callable
from typing import Any

def call_all(fn: Callable[[Any], Any], batch: list[Any], into: list[Any], error_type: type[Any],
             special_a: type[Any], special_b: type[Any], count_not_none: bool = False) -> tuple[int, int]: ...
def keep_all(pred: Callable[[Any], Any], batch: list[Any], start: int, into: list[Any],
             error_type: type[Any]) -> tuple[int, Any]: ...
