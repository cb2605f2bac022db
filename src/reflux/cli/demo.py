"""The pipeline ``reflux demo`` runs: real-time analytics on generated events.

Every node type works in it::

    events (Extractor) -> parse (Transformer) -> valid (Filter)
      -> pack (Accumulator, 256 events) -> to_records (Transformer: numpy event records)
      -> spread (Balancer) -> score-1 | score-2 (the hot path: a Cython plug-in,
         reflux_core._demo.ScoreEvents, two replicas running without the GIL)
      -> unpack (flat Transformer) -> route_by_kind (Messenger):
         "buy" -> purchases, anything else -> interactions
      -> merge (Funnel) -> windows (Accumulator, 100 events) -> totals (Transformer)
      -> fan_out (Broadcast) -> to_file (Loader: a JSON-lines file) and to_list (Loader)

No set-up, no network: the events come from a seeded random generator, so a
run is reproducible and its totals can be checked.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Pipeline

__all__ = ["EVENT_KINDS", "build_demo", "generate_events", "score_event", "to_records", "unpack"]

EVENT_KINDS = ("click", "view", "buy", "scroll")
#: events per window of totals
WINDOW = 100
#: replicas of the hot-path node behind the Balancer
HOT_PATH_REPLICAS = 2


def generate_events(n: int, seed: int) -> Iterator[str]:
    """Raw event lines ``"seq,kind,value"``, as a log or socket would deliver
    them; every 97th is of an unknown kind (the Filter drops it)."""
    rng = random.Random(seed)
    for i in range(n):
        kind = rng.choice(EVENT_KINDS) if i % 97 else "bogus"
        yield f"{i},{kind},{rng.randint(1, 500)}"


def parse_event(line: str) -> dict[str, Any]:
    """``"seq,kind,value"`` -> ``{"seq": ..., "kind": ..., "value": ...}``."""
    seq, kind, value = line.split(",")
    return {"seq": int(seq), "kind": kind, "value": int(value)}


# ---------------------------------------------------------------------------
# THE HOT PATH runs as a Cython record plug-in (reflux_core/_demo.pyx,
# ScoreEvents) over chunks of event records, without the GIL.  score_event is
# the same arithmetic in Python: the reference the tests check it against.
# ---------------------------------------------------------------------------

#: events per chunk of records sent through the hot path
CHUNK = 256


def score_event(event: dict[str, Any]) -> dict[str, Any]:
    """A per-event fraud-style score: a few rounds of integer mixing of the
    event's sequence number and value (CPU work, no I/O).  Adds ``"score"``
    (0-999); the other fields are unchanged.  (The demo runs the same
    arithmetic compiled: :class:`reflux_core._demo.ScoreEvents`.)"""
    h = (event["seq"] * 2654435761 + event["value"]) & 0xFFFFFFFF
    for _ in range(8):
        h ^= h >> 15
        h = (h * 2246822519) & 0xFFFFFFFF
    event["score"] = h % 1000
    return event


def to_records(events: list[dict[str, Any]]) -> Any:
    """A list of parsed events -> a numpy array of event records (score 0)."""
    import numpy as np

    from reflux_core._demo import EVENT

    chunk = np.zeros(len(events), dtype=EVENT)
    chunk["seq"] = [e["seq"] for e in events]
    chunk["kind"] = [EVENT_KINDS.index(e["kind"]) for e in events]
    chunk["value"] = [e["value"] for e in events]
    return chunk


def unpack(chunk: Any) -> Iterator[dict[str, Any]]:
    """A scored chunk of records -> one event dict per record."""
    for seq, kind, value, score in chunk.tolist():
        yield {"seq": seq, "kind": EVENT_KINDS[kind], "value": value, "score": score}


def window_totals(batch: list[dict[str, Any]]) -> str:
    """One window of events -> a JSON line of value totals per kind."""
    counts: dict[str, int] = {}
    for event in batch:
        counts[event["kind"]] = counts.get(event["kind"], 0) + event["value"]
    return json.dumps(counts, sort_keys=True)


def _triple(event: dict[str, Any]) -> dict[str, Any]:
    event["value"] *= 3
    return event


def _same(event: dict[str, Any]) -> dict[str, Any]:
    return event


def build_demo(items: int, out_dir: Path, seed: int = 7) -> tuple[Pipeline, dict[str, Any]]:
    """The demo pipeline over ``items`` generated events, writing its totals to
    ``out_dir / "reflux-demo-totals.jsonl"``.  Returns the pipeline and its
    sinks by role (``"file"``: the result path, ``"to_list"``, ``"to_file"``)."""
    from ..describe.nodes import (
        Accumulator,
        Balancer,
        Broadcast,
        Extractor,
        Filter,
        Funnel,
        Loader,
        Messenger,
        Transformer,
    )
    from ..pipeline import Pipeline

    source = Extractor(generate_events(items, seed), name="events")
    parse = Transformer(parse_event, name="parse")
    valid = Filter(lambda e: e["kind"] in EVENT_KINDS, name="valid")
    from reflux_core._demo import ScoreEvents

    pack = Accumulator(CHUNK, name="pack")
    records = Transformer(to_records, name="to_records")
    spread = Balancer(name="spread")
    scorers = [Transformer(ScoreEvents(), name=f"score-{i + 1}") for i in range(HOT_PATH_REPLICAS)]
    explode = Transformer(unpack, name="unpack")
    router = Messenger(lambda e: e["kind"], name="route_by_kind",
                       routes={"buy": "purchases"}, default="interactions")
    purchases = Transformer(_triple, name="purchases")
    interactions = Transformer(_same, name="interactions")
    merge = Funnel(name="merge")
    windows = Accumulator(WINDOW, name="windows")
    totals = Transformer(window_totals, name="totals")
    fan = Broadcast(name="fan_out")
    result_path = Path(out_dir) / "reflux-demo-totals.jsonl"
    to_file = Loader.to_file(result_path, name="to_file")
    to_list = Loader.to_list(name="to_list")

    p = Pipeline(name="demo", capacity=4096)
    p.add(source >> parse >> valid >> pack >> records >> spread >> scorers >> explode >> router)
    p.add(purchases, interactions)
    p.connect([purchases, interactions], merge)
    p.add(merge >> windows >> totals >> fan)
    p.connect(fan, [to_file, to_list])
    return p, {"file": result_path, "to_list": to_list, "to_file": to_file}
