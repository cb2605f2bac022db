"""reflux_core._batch: the C loops that run a node function over a batch."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from reflux import Error, NeedsMoreWork
from reflux_core._batch import STOPPED, StopFlag, call_all, keep_all


def test_results_in_order_up_to_the_first_failure() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        return 10 // x

    into: list[Any] = ["kept"]
    stop = StopFlag()
    j, outcome, specials, not_none = call_all(fn, [5, 2, 0, 1], 0, into, Error, NeedsMoreWork, stop)
    assert (j, type(outcome)) == (2, ZeroDivisionError)
    assert into == ["kept", 2, 5] and (specials, not_none) == (0, 2)
    assert calls == [5, 2, 0]  # nothing behind the failure was called
    assert call_all(fn, [5, 2, 0, 1], 3, into, Error, NeedsMoreWork, stop) == (-1, None, 0, 1)
    assert into == ["kept", 2, 5, 10]


def test_an_error_value_stops_the_loop_and_specials_and_nones_are_counted() -> None:
    def fn(x: int) -> Any:
        if x == 7:
            return Error(KeyError("seven"))
        return NeedsMoreWork(x) if x % 3 == 0 else (None if x % 3 == 1 else x)

    into: list[Any] = []
    j, outcome, specials, not_none = call_all(fn, list(range(9)), 0, into, Error, NeedsMoreWork, StopFlag())
    assert j == 7 and type(outcome) is Error and len(into) == 7
    assert specials == 3 and not_none == 5  # 0, 3, 6 fed back; 2, 5 plain values


def test_stop_iteration_is_an_ordinary_failure() -> None:
    def fn(x: int) -> int:
        if x == 1:
            raise StopIteration
        return x

    j, outcome, _, _ = call_all(fn, [0, 1, 2], 0, [], Error, Error, StopFlag())
    assert j == 1 and isinstance(outcome, StopIteration)


def test_base_exceptions_are_returned_with_their_index() -> None:
    def fn(x: int) -> int:
        if x == 2:
            raise KeyboardInterrupt
        return x

    into: list[Any] = []
    j, outcome, _, _ = call_all(fn, [0, 1, 2, 3], 0, into, Error, Error, StopFlag())
    assert j == 2 and type(outcome) is KeyboardInterrupt and into == [0, 1]


def test_rejects_non_lists_and_needs_a_flag() -> None:
    with pytest.raises(TypeError):
        call_all(abs, (1, 2), 0, [], Error, Error, StopFlag())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        call_all(abs, [1, 2], 0, [], Error, Error, None)  # type: ignore[arg-type]


def test_a_set_flag_stops_both_loops_before_the_next_call() -> None:
    stop = StopFlag()
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if x == 3:
            stop.set()  # e.g. an abort from another thread while this call runs
        return x

    into: list[Any] = []
    assert call_all(fn, list(range(10)), 0, into, Error, Error, stop) == (4, STOPPED, 0, 4)
    assert calls == [0, 1, 2, 3] and into == [0, 1, 2, 3]
    assert keep_all(fn, list(range(10)), 0, [], Error, stop) == (0, STOPPED)
    assert calls == [0, 1, 2, 3]  # not called again
    assert stop.is_set and "set" in repr(stop)


def test_a_flag_set_by_another_thread_ends_a_long_batch_within_one_call() -> None:
    stop = StopFlag()
    calls: list[int] = []

    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.01)
        return x

    timer = threading.Timer(0.05, stop.set)
    timer.start()
    j, outcome, _, _ = call_all(slow, list(range(1000)), 0, [], Error, Error, stop)
    timer.join()
    assert outcome is STOPPED and j == len(calls) and j < 1000


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
    stop = StopFlag()
    j, outcome = keep_all(pred, items, 0, into, Error, stop)
    assert (j, type(outcome), into) == (4, ValueError, ["before", 0, 2])
    assert calls == [0, 1, 2, 3, 4]  # nothing behind the failure was called
    j, outcome = keep_all(pred, items, 5, into, Error, stop)
    assert j == 7 and type(outcome) is Error and isinstance(outcome.exception, KeyError)
    assert into == ["before", 0, 2, 6]
    assert keep_all(pred, items, 8, into, Error, stop) == (-1, None)
    assert into == ["before", 0, 2, 6, 8]
    assert keep_all(pred, items, 10, into, Error, stop) == (-1, None)  # nothing left


def test_keep_all_returns_truth_test_errors_and_base_exceptions() -> None:
    class NoTruth:
        def __bool__(self) -> bool:
            raise RuntimeError("no truth value")

    j, outcome = keep_all(lambda x: NoTruth(), [1], 0, [], Error, StopFlag())
    assert j == 0 and isinstance(outcome, RuntimeError)

    def interrupt(x: int) -> bool:
        raise KeyboardInterrupt

    j, outcome = keep_all(interrupt, [1], 0, [], Error, StopFlag())
    assert j == 0 and type(outcome) is KeyboardInterrupt
