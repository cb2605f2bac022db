"""Real-time analytics: page views routed by user key to shards, counted in time windows.

    python examples/analytics.py [--events N] [--window 0.05]
    reflux run examples/analytics.py

events (Extractor) -> by_user (Messenger: key = user id modulo the shards,
so one user's events always reach the same shard) -> shard-0 ... shard-N
(Accumulators: windows of `window` seconds or 1,000 events) -> count-0 ...
(Transformers: page-view counts per window) -> merge (Funnel) -> windows
(Loader: the list of windowed counts).
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from reflux import Accumulator, Extractor, Funnel, Loader, Messenger, Pipeline, Transformer

PAGES = ("/", "/search", "/item", "/cart", "/checkout")


def events(n: int, users: int = 1000, seed: int = 5) -> Iterator[dict[str, Any]]:
    """Page-view events ``{"user": ..., "page": ...}``."""
    rng = random.Random(seed)
    for i in range(n):
        yield {"seq": i, "user": rng.randrange(users), "page": rng.choice(PAGES)}


def make_counter(shard: str):  # noqa: ANN201 (a closure per shard)
    """The per-window counting function of one shard."""
    def count(window: list[dict[str, Any]]) -> dict[str, Any]:
        pages = Counter(e["page"] for e in window)
        return {"shard": shard, "events": len(window), "users": len({e["user"] for e in window}),
                "pages": dict(pages)}
    count.__name__ = f"count_{shard}"
    return count


def build(n_events: int, shards: int = 2, window: float = 0.05) -> Pipeline:
    """The analytics pipeline; the ``windows`` Loader's result is the list of window counts."""
    router = Messenger(lambda e: f"shard-{e['user'] % shards}", name="by_user")
    merge = Funnel(name="merge")
    p = Pipeline(name="analytics")
    p.add(Extractor(events(n_events), name="events") >> router)
    for i in range(shards):
        name = f"shard-{i}"
        p.add(router >> Accumulator(1000, window=window, name=name)
              >> Transformer(make_counter(name), name=f"count-{i}") >> merge)
    p.add(merge >> Loader.to_list(name="windows"))
    return p


def totals(windows: list[dict[str, Any]]) -> Counter[str]:
    """Page views over every window."""
    out: Counter[str] = Counter()
    for w in windows:
        out.update(w["pages"])
    return out


def pipeline() -> Pipeline:
    """For ``reflux run examples/analytics.py``: 200,000 events."""
    return build(200_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--window", type=float, default=0.05, help="seconds per window")
    args = ap.parse_args()
    result = build(args.events, args.shards, args.window).run(progress=None)
    print(result.summary())
    windows = result.results["windows"]
    print(f"{len(windows)} windows; page views: {dict(totals(windows).most_common())}")


if __name__ == "__main__":
    main()
