"""The pipeline ``reflux demo`` runs: real-time analytics on generated events.

Every node type works in it; events travel as records (numpy arrays of
:data:`reflux_core._demo.EVENT`) from the parser on, and the compiled steps run
without the GIL::

    events (Extractor: "seq,kind,value" lines) -> pack (Accumulator: 500 lines)
      -> parse (Transformer: lines -> records, parsed without the GIL)
      -> valid (Filter: a plug-in drops unknown kinds)
      -> spread (Balancer) -> score-1 | score-2 (Transformers: a scoring plug-in, two replicas)
      -> route_by_kind (Messenger: a key plug-in): purchases -> purchases, the rest -> interactions
      -> purchases (Transformer: a plug-in weighs a purchase 3x) | interactions (Transformer)
      -> merge (Funnel) -> windows (Transformer: totals per window of 100 events, as JSON)
      -> fan_out (Broadcast) -> to_file (Loader: a JSON-lines file) and to_list (Loader)

The scoring, kind routing and weighting are what the pure-Python functions of
this module do (:func:`score_event`, :func:`window_totals`), compiled;
:func:`plain_loop` does the same work as one plain Python loop, and the tests
check that both write the same windows.  Windows are tumbling windows of
:data:`WINDOW` input events (by sequence number); each line holds the value
totals per kind of the window's known events, how many of them scored at
least :data:`FLAG` (``flagged``) and the window's number.  The windows come out
in the order they complete.

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

__all__ = ["EVENT_KINDS", "FLAG", "WINDOW", "WindowTotals", "build_demo", "generate_events", "parse_chunk",
           "parse_event", "plain_loop", "score_event", "window_totals"]

EVENT_KINDS = ("click", "view", "buy", "scroll")
#: input events per window of totals
WINDOW = 100
#: an event scoring at least this is flagged
FLAG = 950
#: event lines the parser takes at once (a multiple of WINDOW: a chunk holds whole windows)
CHUNK = 500
#: replicas of the scoring node behind the Balancer
HOT_PATH_REPLICAS = 2


def generate_events(n: int, seed: int) -> Iterator[str]:
    """Raw event lines ``"seq,kind,value"``, as a log or socket would deliver
    them; every 97th is of an unknown kind (the Filter drops it)."""
    rng = random.Random(seed)
    for i in range(n):
        kind = rng.choice(EVENT_KINDS) if i % 97 else "bogus"
        yield f"{i},{kind},{rng.randint(1, 500)}"


# --------------------------------------------------------------------------- the reference, in Python

def parse_event(line: str) -> dict[str, Any]:
    """``"seq,kind,value"`` -> ``{"seq": ..., "kind": ..., "value": ...}``."""
    seq, kind, value = line.split(",")
    return {"seq": int(seq), "kind": kind, "value": int(value)}


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


def window_totals(window: int, events: list[dict[str, Any]]) -> str:
    """One window's scored events -> a JSON line: value totals per kind, flagged events, the window."""
    totals: dict[str, int] = {}
    flagged = 0
    for event in events:
        totals[event["kind"]] = totals.get(event["kind"], 0) + event["value"]
        flagged += event["score"] >= FLAG
    return json.dumps({**totals, "flagged": flagged, "window": window}, sort_keys=True)


def plain_loop(items: int, out_path: Path, seed: int = 7) -> list[str]:
    """The demo's work as one plain Python loop, with the functions above: generate,
    parse, keep known kinds, score, weigh purchases 3x, total each window, write
    JSON lines to ``out_path``.  Returns the lines (in window order)."""
    lines: list[str] = []
    window = 0
    events: list[dict[str, Any]] = []
    with open(out_path, "w", encoding="utf-8") as f:
        for line in generate_events(items, seed):
            event = parse_event(line)
            w = event["seq"] // WINDOW
            if w != window:
                if events:
                    lines.append(window_totals(window, events))
                window, events = w, []
            if event["kind"] not in EVENT_KINDS:
                continue
            event = score_event(event)
            if event["kind"] == "buy":
                event["value"] *= 3
            events.append(event)
        if events:
            lines.append(window_totals(window, events))
        f.write("".join(line + "\n" for line in lines))
    return lines


# --------------------------------------------------------------------------- the pipeline's own steps

def parse_chunk(lines: list[str]) -> Any:
    """A chunk of consecutive event lines -> an array of event records (the parsing
    runs compiled, without the GIL: :func:`reflux_core._demo.parse_lines`)."""
    from reflux_core._demo import parse_lines
    return parse_lines(lines)


class WindowTotals:
    """Totals per window from chunks of scored event records that arrive in any
    order: each record carries its window and how many known events the window
    holds (``wsize``), so a window's line is sent as soon as its last event is in."""

    def __init__(self) -> None:
        #: window -> [events seen, value per kind code, flagged events]
        self.open: dict[int, list[Any]] = {}

    def __call__(self, chunk: Any) -> list[str]:
        import numpy as np

        done: list[str] = []
        if not len(chunk):
            return done
        # every window of the chunk at once: one bincount per total
        first = int(chunk["window"].min())
        where = chunk["window"] - first
        span = int(where.max()) + 1
        kinds = len(EVENT_KINDS)
        sums = np.bincount(where * kinds + chunk["kind"], weights=chunk["value"],
                           minlength=span * kinds).reshape(span, kinds)
        counts = np.bincount(where, minlength=span)
        flagged = np.bincount(where, weights=chunk["score"] >= FLAG, minlength=span)
        sizes = np.zeros(span, dtype=np.int64)
        sizes[where] = chunk["wsize"]
        for j in np.flatnonzero(counts).tolist():
            w = first + j
            state = self.open.get(w)
            if state is None:
                state = self.open[w] = [0, np.zeros(kinds), 0]
            state[0] += int(counts[j])
            state[1] += sums[j]
            state[2] += int(flagged[j])
            if state[0] == int(sizes[j]):
                del self.open[w]
                totals = {EVENT_KINDS[k]: int(v) for k, v in enumerate(state[1].tolist()) if v}
                done.append(json.dumps({**totals, "flagged": state[2], "window": w}, sort_keys=True))
        return done


def _same(chunk: Any) -> Any:
    return chunk


def build_demo(items: int, out_dir: Path, seed: int = 7) -> tuple[Pipeline, dict[str, Any]]:
    """The demo pipeline over ``items`` generated events, writing its window totals
    to ``out_dir / "reflux-demo-totals.jsonl"``.  Returns the pipeline and its
    sinks by role (``"file"``: the result path, ``"to_list"``, ``"to_file"``)."""
    from reflux_core._demo import KindKey, KnownKinds, ScoreEvents, TripleValue

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

    # batch_size: the generator never blocks, so its lines move in batches on the pool
    source = Extractor(generate_events(items, seed), name="events", batch_size=CHUNK)
    pack = Accumulator(CHUNK, name="pack")
    parse = Transformer(parse_chunk, name="parse")
    valid = Filter(KnownKinds(), name="valid")
    spread = Balancer(name="spread")
    scorers = [Transformer(ScoreEvents(), name=f"score-{i + 1}") for i in range(HOT_PATH_REPLICAS)]
    router = Messenger(KindKey(), name="route_by_kind", routes={0: "purchases", 1: "interactions"})
    purchases = Transformer(TripleValue(), name="purchases")
    interactions = Transformer(_same, name="interactions")
    merge = Funnel(name="merge")
    windows = Transformer(WindowTotals(), flat=True, name="windows")
    fan = Broadcast(name="fan_out")
    result_path = Path(out_dir) / "reflux-demo-totals.jsonl"
    to_file = Loader.to_file(result_path, name="to_file")
    to_list = Loader.to_list(name="to_list")

    p = Pipeline(name="demo", capacity=256)
    p.add(source >> pack >> parse >> valid >> spread >> scorers >> router)
    p.add(purchases, interactions)
    p.connect([purchases, interactions], merge)
    p.add(merge >> windows >> fan)
    p.connect(fan, [to_file, to_list])
    return p, {"file": result_path, "to_list": to_list, "to_file": to_file}
