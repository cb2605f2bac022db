"""Fusion: which tasks of a plan run together as one unit, handing lists from stage to stage.

A chain of plain stages (an Extractor may head it, a Loader end it;
Transformers that are not flat-maps and Filters anywhere) joined one to one
runs as one unit of the worker pool, without a channel between its stages.
"""
from __future__ import annotations

from ..describe.nodes import Extractor, Filter, Loader, Transformer
from ..describe.plan import Plan, Task

__all__ = ["fusable", "fuse_chains", "may_block"]


def may_block(task: Task) -> bool:
    """An Extractor whose source may block (iterator, generator, callable, async
    source without ``batch_size``, a batch reader unless it says ``blocking = False``,
    and any live channel): it gets a thread of its own, unfused."""
    node = task.node
    if not node.is_source:
        return False
    mode = node.mode  # type: ignore[attr-defined]
    if mode == "reader" and getattr(node.source, "blocking", True) is False:  # type: ignore[attr-defined]
        return False
    return mode == "channel" or (mode != "sized" and node.batch_size is None)


def fusable(task: Task) -> bool:
    node = task.node
    if may_block(task):
        return False
    if (task.inbox is not None and task.inbox.records) or any(b.records for b in task.outputs):
        return False  # a record edge: records go through a RecordChannel, never fused
    if getattr(node, "parallel", 1) != 1 or not getattr(node, "fuse", True):
        return False
    if getattr(node, "executor", "thread") != "thread":
        return False  # its work runs elsewhere (process or Ray workers): a unit of its own
    if isinstance(node, Transformer):
        return not node.flat
    return isinstance(node, (Filter, Extractor, Loader))


def fuse_chains(plan: Plan) -> list[list[Task]]:
    """Group the plan's tasks into chains that run as one unit.

    Two neighbours are fused when the first has exactly one receiver, the
    second exactly one sender, both are plain Python stages (an Extractor may
    head a chain and a Loader end it; Transformers that are not flat-maps and
    Filters may sit anywhere), neither runs replicas, and both send their
    dead-letter records to the same place.  Items then go from stage to stage
    as a list, without a channel; every node keeps its own counters.
    """
    by_box: dict[int, Task] = {id(t.inbox): t for t in plan.tasks if t.inbox is not None}
    senders: dict[int, int] = {}
    for t in plan.tasks:
        for box in {id(b): b for b in t.outputs + ([t.dead_letter] if t.dead_letter else [])}.values():
            senders[id(box)] = senders.get(id(box), 0) + 1
    nxt: dict[int, Task] = {}
    has_prev: set[int] = set()
    for t in plan.tasks:
        if not plan.fuse or len(t.outputs) != 1 or t.node.is_sink or not fusable(t):
            continue
        box = t.outputs[0]
        succ = by_box.get(id(box))
        if succ is None or succ.node.is_source or not fusable(succ) or succ.node.overflow != "block":
            continue  # (a leaky input needs its channel: full is what it drops on)
        if senders.get(id(box), 0) != 1 or box.producers != 1:
            continue
        if t.dead_letter is not succ.dead_letter:
            continue
        if any(box is t2.dead_letter for t2 in plan.tasks):
            continue
        nxt[id(t)] = succ
        has_prev.add(id(succ))
    chains = []
    for t in plan.tasks:
        if id(t) in has_prev:
            continue
        chain = [t]
        while id(chain[-1]) in nxt:
            chain.append(nxt[id(chain[-1])])
        chains.append(chain)
    return chains
