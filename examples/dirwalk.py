"""Directory walk with NeedsMoreWork: a Transformer that feeds sub-folders back to itself.

    python examples/dirwalk.py [ROOT] [--suffix .py]
    reflux run examples/dirwalk.py          # walks the folder reflux is installed in

roots (Extractor: the root folders) -> walk (Transformer, a generator: a
folder yields NeedsMoreWork(entry) for each entry, so it comes back into
`walk`; a file yields (path, size)) -> wanted (Filter: by suffix) -> report
(Loader: file count, bytes, largest files).

The feedback is held by the node itself, never in its bounded input, so a
deep or wide tree cannot deadlock it, and `walk` ends only when the whole
tree is done.
"""
from __future__ import annotations

import argparse
import heapq
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reflux import Extractor, Filter, Loader, NeedsMoreWork, Pipeline, Transformer


def walk(path: str) -> Iterator[Any]:
    """A folder: each entry back into this node; a file: ``(path, size)``.
    Symbolic links are not followed; unreadable entries are skipped."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            with os.scandir(path) as it:
                for entry in it:
                    yield NeedsMoreWork(entry.path)
        elif os.path.isfile(path) and not os.path.islink(path):
            yield path, os.path.getsize(path)
    except OSError:
        return


class Report:
    """A Loader function: file count, total bytes and the largest files."""

    def __init__(self, top: int = 5) -> None:
        self.files = 0
        self.bytes = 0
        self.top = top
        self.largest: list[tuple[int, str]] = []

    def __call__(self, item: tuple[str, int]) -> None:
        path, size = item
        self.files += 1
        self.bytes += size
        if len(self.largest) < self.top:
            heapq.heappush(self.largest, (size, path))
        else:
            heapq.heappushpop(self.largest, (size, path))

    def result(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes,
                "largest": [(p, s) for s, p in sorted(self.largest, reverse=True)]}


def build(roots: list[str | Path], suffix: str = "") -> Pipeline:
    """Walk ``roots``; the ``report`` Loader's result counts the files ending in ``suffix``."""
    return Pipeline(
        Extractor([str(r) for r in roots], name="roots")
        >> Transformer(walk, name="walk")
        >> Filter(lambda item: item[0].endswith(suffix), name="wanted")
        >> Loader(Report(), name="report"),
        name="dirwalk")


def pipeline() -> Pipeline:
    """For ``reflux run examples/dirwalk.py``: the Python files of the installed reflux."""
    import reflux
    return build([Path(reflux.__file__).parent], ".py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("roots", nargs="*", default=["."])
    ap.add_argument("--suffix", default="", help="count only files ending in this")
    args = ap.parse_args()
    result = build(args.roots, args.suffix).run(progress=None)
    print(result.summary())
    report = result.results["report"]
    print(f"{report['files']} files, {report['bytes']:,} bytes; largest:")
    for path, size in report["largest"]:
        print(f"  {size:>12,}  {path}")


if __name__ == "__main__":
    main()
