"""Routing: a Messenger dispatches requests to handlers by key; what cannot be handled goes to a dead-letter sink.

    python examples/routing.py [--requests N]
    reflux run examples/routing.py

requests (Extractor) -> dispatch (Messenger: key = the request's "type";
"order" -> orders, "refund" -> refunds, "query" -> queries) -> the handlers
(Transformers) -> merge (Funnel) -> responses (Loader).

A request of an unknown type has no route: the Messenger fails it with a
RoutingError, and its on_error="dead_letter" policy sends an ErrorRecord
(request, node, exception) to the "dead-letters" Loader.  A handler that
fails on a request (a refund above the limit) does the same.  Nothing is
dropped silently: responses + dead letters = requests.
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from reflux import Extractor, Funnel, Loader, Messenger, Pipeline, Transformer

TYPES = ("order", "refund", "query", "order", "query", "unsubscribe")
REFUND_LIMIT = 400


def requests(n: int, seed: int = 11) -> Iterator[dict[str, Any]]:
    """Requests ``{"id", "type", "amount"}``; "unsubscribe" has no handler."""
    rng = random.Random(seed)
    for i in range(n):
        yield {"id": i, "type": rng.choice(TYPES), "amount": rng.randint(1, 500)}


def handle_order(req: dict[str, Any]) -> dict[str, Any]:
    return {"id": req["id"], "handler": "orders", "status": "accepted", "charge": req["amount"]}


def handle_refund(req: dict[str, Any]) -> dict[str, Any]:
    if req["amount"] > REFUND_LIMIT:
        raise ValueError(f"refund {req['amount']} above the limit {REFUND_LIMIT}: needs a human")
    return {"id": req["id"], "handler": "refunds", "status": "refunded", "charge": -req["amount"]}


def handle_query(req: dict[str, Any]) -> dict[str, Any]:
    return {"id": req["id"], "handler": "queries", "status": "answered", "charge": 0}


def build(n_requests: int) -> Pipeline:
    """The routing pipeline; results: ``responses`` (list) and ``dead-letters`` (ErrorRecords)."""
    dead = Loader.to_list(name="dead-letters")
    handlers = [Transformer(handle_order, name="orders"),
                Transformer(handle_refund, name="refunds", on_error="dead_letter"),
                Transformer(handle_query, name="queries")]
    dispatch = Messenger(lambda r: r["type"], name="dispatch", on_error="dead_letter",
                         routes={"order": "orders", "refund": "refunds", "query": "queries"})
    p = Pipeline(name="routing", dead_letter=dead)
    p.add(Extractor(requests(n_requests), name="requests") >> dispatch)
    p.add(handlers)
    p.connect(handlers, Funnel(name="merge"))
    p.connect(p["merge"], Loader.to_list(name="responses"))
    return p


def pipeline() -> Pipeline:
    """For ``reflux run examples/routing.py``: 50,000 requests."""
    return build(50_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args()
    result = build(args.requests).run(progress=None)
    print(result.summary())
    by_handler = Counter(r["handler"] for r in result.results["responses"])
    dead = result.results["dead-letters"]
    reasons = Counter(type(rec.exception).__name__ for rec in dead)
    print(f"responses by handler: {dict(by_handler)}; dead letters: {len(dead)} {dict(reasons)}")


if __name__ == "__main__":
    main()
