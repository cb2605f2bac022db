"""A user's script, typed: mypy --strict checks it against the installed reflux
(the types of nodes, flows, channels, plug-ins and results), and it also runs.

Checked by .ci/run (``mypy --strict`` in this folder) and run by
tests/test_typing.py.  wrong_types.py holds the wirings a checker must refuse.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

import reflux_core
from reflux import (
    Accumulator,
    Balancer,
    Error,
    Extractor,
    Filter,
    Flow,
    Funnel,
    Loader,
    NeedsMoreWork,
    Pipeline,
    RunResult,
    Transformer,
)
from reflux_core.channel import EMPTY, MPMCChannel, RecordChannel, SPSCChannel
from reflux_core.transform import RecordError

if sys.version_info >= (3, 11):
    from typing import Never, assert_type
else:
    from typing_extensions import Never, assert_type


def parse(line: str) -> int:
    return int(line)


def label(n: int) -> str | NeedsMoreWork | Error:
    """Returns a label; feedback and failures are not outputs."""
    if n < 0:
        return Error(ValueError(n))
    return f"#{n}"


def digits(s: str) -> Iterator[str]:
    yield from s


def halves(n: int) -> list[int]:
    return [n // 2, n - n // 2]


# nodes take their types from the functions they are given
parse_node = Transformer(parse)
assert_type(parse_node, Transformer[str, int])
assert_type(Transformer(label), Transformer[int, str])
assert_type(Transformer(digits), Transformer[str, str])         # a generator function: flat
assert_type(Transformer(halves, flat=True), Transformer[int, int])
assert_type(Filter(lambda n: n > 0), Filter[Any])               # a lambda says nothing: Any
assert_type(Extractor(["1", "2"]), Extractor[str])
assert_type(Extractor(range(3)), Extractor[int])
assert_type(Loader.to_list(), Loader[Any])
keep: list[str] = []
assert_type(Loader.to_list(keep), Loader[str])

# >> carries the types from node to node
flow = Extractor(["1", "22", "333"]) >> parse_node >> Transformer(label) >> Transformer(digits)
assert_type(flow, Flow[Never, str])
sink = Loader[str](keep.append)
whole = flow >> Filter[str](str.isdigit) >> sink
fan_out = Extractor(range(10)) >> Balancer[int]() >> [Transformer(label), Transformer(label)]
assert_type(fan_out, Flow[Never, Any])
batches = Extractor(range(10)) >> Accumulator[int](4)
assert_type(batches, Flow[Never, list[int]])

result = Pipeline(whole).run(timeout=60)
assert_type(result, RunResult)
assert_type(result.results, dict[str, Any])
assert keep == list("1223") + list("33") + ["3"] or sorted(keep) == sorted("122333"), keep
merged = Pipeline(fan_out >> Funnel[str]() >> Loader.to_list(name="merged")).run(timeout=60)
assert sorted(merged.results["merged"]) == sorted(f"#{n}" for n in range(10))

# channels are generic in their items; record channels carry numpy records
ints: SPSCChannel[int] = SPSCChannel(8)
ints.push(1)
assert_type(ints.pop(), int)
assert_type(ints.try_pop(), "int | reflux_core.channel._EmptyType")
assert ints.try_pop() is EMPTY
names = MPMCChannel[str](4)
assert_type(names.push_many(["a", "b"]), int)
assert_type(names.pop_many(2), list[str])
records = RecordChannel([("x", "<f8")], 16)
records.push(np.zeros(3, dtype=[("x", "<f8")]))
got = records.pop()
assert_type(got, npt.NDArray[np.void])
assert len(got) == 3

# the compiled core's own API
assert_type(reflux_core.ABI_VERSION, int)
assert_type(reflux_core.build_info(), dict[str, Any])
err = RecordError("bad record", code=7, index=2)
assert_type(err.code, int)
print("typed user script: ok")
