"""The ``reflux`` command: ``reflux demo`` runs a small analytics pipeline on
generated data (no set-up, no network) and prints what every node did."""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_demo"]

EVENT_KINDS = ("click", "view", "buy", "scroll")


def _generate_events(n: int, seed: int) -> Any:
    """Raw event lines, as a log or socket would deliver them."""
    rng = random.Random(seed)
    for i in range(n):
        kind = rng.choice(EVENT_KINDS) if i % 97 else "bogus"
        yield f"{i},{kind},{rng.randint(1, 500)}"


def _parse(line: str) -> dict[str, Any]:
    seq, kind, value = line.split(",")
    return {"seq": int(seq), "kind": kind, "value": int(value)}


def _window_totals(batch: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for event in batch:
        counts[event["kind"]] = counts.get(event["kind"], 0) + event["value"]
    return json.dumps(counts, sort_keys=True)


def build_demo(items: int, out_dir: Path, seed: int = 7) -> tuple[Any, dict[str, Any]]:
    """The demo pipeline: events -> parse -> route by kind -> per-kind totals
    over windows of 100 events -> a result file and an in-memory list.
    Returns the pipeline and its sinks by role."""
    from reflux import Accumulator, Broadcast, Extractor, Filter, Funnel, Loader, Messenger, Pipeline, Transformer

    source = Extractor(_generate_events(items, seed), name="events")
    parse = Transformer(_parse, name="parse")
    valid = Filter(lambda e: e["kind"] in EVENT_KINDS, name="valid")
    router = Messenger(lambda e: e["kind"], name="route_by_kind",
                       routes={"buy": "purchases"}, default="interactions")
    purchases = Transformer(lambda e: {**e, "value": e["value"] * 3}, name="purchases")
    interactions = Transformer(lambda e: e, name="interactions")
    merge = Funnel(name="merge")
    windows = Accumulator(100, name="windows")
    totals = Transformer(_window_totals, name="totals")
    fan = Broadcast(name="fan_out")
    result_path = out_dir / "reflux-demo-totals.jsonl"
    to_file = Loader.to_file(result_path, name="to_file")
    to_list = Loader.to_list(name="to_list")

    p = Pipeline(name="demo", capacity=4096)
    p.add(source >> parse >> valid >> router)
    p.add(purchases, interactions)
    p.connect(purchases, merge)
    p.connect(interactions, merge)
    p.add(merge >> windows >> totals >> fan)
    p.connect(fan, to_file)
    p.connect(fan, to_list)
    return p, {"file": result_path, "to_list": to_list, "to_file": to_file}


def _cmd_demo(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else Path(tempfile.gettempdir())
    pipeline, sinks = build_demo(args.items, out_dir)
    t0 = time.perf_counter()
    result = pipeline.run()
    elapsed = time.perf_counter() - t0
    print(result.summary())
    windows = len(result.results[sinks["to_list"].name])
    print(f"\n{args.items} events in {elapsed:.2f} s ({args.items / elapsed:,.0f} events/s); "
          f"{windows} windows of totals written to {sinks['file']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in demo pipeline on generated data")
    demo.add_argument("--items", type=int, default=200_000, help="events to generate (default 200000)")
    demo.add_argument("--out", help="folder for the result file (default: the temp folder)")
    demo.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    if getattr(args, "items", 1) < 1:
        parser.error("--items must be >= 1")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
