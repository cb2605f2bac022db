"""reflux_core._batch: the C loop that runs a node function over a batch."""
from __future__ import annotations

from typing import Any

import pytest

from reflux import Error, NeedsMoreWork
from reflux_core._batch import call_all, keep_all


def test_results_in_order_and_exceptions_become_errors() -> None:
    into: list[Any] = ["kept"]
    specials, not_none = call_all(lambda x: 10 // x, [5, 0, 2, 0], into, Error, NeedsMoreWork, Error, True)
    assert into[0] == "kept" and into[1] == 2 and into[3] == 5
    assert isinstance(into[2], Error) and isinstance(into[2].exception, ZeroDivisionError)
    assert isinstance(into[4], Error)
    assert specials == 2 and not_none == 4


def test_counts_special_values_and_nones() -> None:
    def fn(x: int) -> Any:
        return NeedsMoreWork(x) if x % 3 == 0 else (None if x % 3 == 1 else x)

    into: list[Any] = []
    specials, not_none = call_all(fn, list(range(9)), into, Error, NeedsMoreWork, Error, True)
    assert specials == 3 and not_none == 6 and len(into) == 9
    assert call_all(fn, list(range(9)), [], Error, NeedsMoreWork, Error) == (3, 0)  # not counted


def test_stop_iteration_is_an_ordinary_failure() -> None:
    def fn(x: int) -> int:
        if x == 1:
            raise StopIteration
        return x

    into: list[Any] = []
    assert call_all(fn, [0, 1, 2], into, Error, Error, Error)[0] == 1
    assert into[0] == 0 and into[2] == 2 and isinstance(into[1].exception, StopIteration)


def test_base_exceptions_propagate() -> None:
    def fn(x: int) -> int:
        if x == 2:
            raise KeyboardInterrupt
        return x

    into: list[Any] = []
    with pytest.raises(KeyboardInterrupt):
        call_all(fn, [0, 1, 2, 3], into, Error, Error, Error)
    assert into == [0, 1]


def test_rejects_non_lists() -> None:
    with pytest.raises(TypeError):
        call_all(abs, (1, 2), [], Error, Error, Error)  # type: ignore[arg-type]


def test_keep_all_appends_kept_items_and_stops_at_a_failure() -> None:
    calls: list[int] = []

    def pred(x: int) -> Any:
        calls.append(x)
        if x == 4:
            raise ValueError("four")
        if x == 7:
            return Error(KeyError("seven"))
        return x % 2 == 0

    items = list(range(10))
    into: list[Any] = ["before"]
    j, outcome = keep_all(pred, items, 0, into, Error)
    assert (j, type(outcome), into) == (4, ValueError, ["before", 0, 2])
    assert calls == [0, 1, 2, 3, 4]  # nothing behind the failure was called
    j, outcome = keep_all(pred, items, 5, into, Error)
    assert j == 7 and type(outcome) is Error and isinstance(outcome.exception, KeyError)
    assert into == ["before", 0, 2, 6]
    assert keep_all(pred, items, 8, into, Error) == (-1, None)
    assert into == ["before", 0, 2, 6, 8]
    assert keep_all(pred, items, 10, into, Error) == (-1, None)  # nothing left


def test_keep_all_truth_errors_and_base_exceptions_propagate() -> None:
    class NoTruth:
        def __bool__(self) -> bool:
            raise RuntimeError("no truth value")

    with pytest.raises(RuntimeError, match="no truth value"):
        keep_all(lambda x: NoTruth(), [1], 0, [], Error)

    def interrupt(x: int) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keep_all(interrupt, [1], 0, [], Error)
