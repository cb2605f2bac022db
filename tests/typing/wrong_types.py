"""Wirings a type checker must refuse: each line carries the error mypy reports,
so ``mypy --strict`` (with its warnings about unused ignores) fails if a line
stops being an error.  Not run: it only states what a checker sees."""
from __future__ import annotations

from reflux import Extractor, Filter, Loader, Transformer
from reflux_core.channel import SPSCChannel


def to_str(n: int) -> str:
    return str(n)


def length(s: str) -> int:
    return len(s)


words = Extractor(["a", "b"])
ints_to_str = Transformer(to_str)
store_ints = Loader[int](print)

# a Transformer[int, str] sends strings: a Loader[int] cannot take them
ints_to_str >> store_ints  # type: ignore[operator]
# strings out of the Extractor, but this Transformer takes ints
words >> ints_to_str  # type: ignore[operator]
# the same, built in place: the checker refuses the function it is given
words >> Transformer(to_str)  # type: ignore[arg-type]
# the middle of a chain: ints out of length(), a Filter of strings
words >> Transformer(length) >> Filter[str](str.isdigit)  # type: ignore[operator]
# fanning in: a list of string senders into a Loader of ints
[ints_to_str, ints_to_str] >> store_ints  # type: ignore[operator]
# a channel of ints takes no string
SPSCChannel[int](4).push("x")  # type: ignore[arg-type]
