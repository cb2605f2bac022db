"""The state of each node at a checkpoint, and putting it back when a run resumes.

* an **Extractor**: its source's position (``ExtractorLogic.position``: the
  source's ``state()`` hook, else the count of items pulled);
* an **Accumulator**: its open group and the seconds left of its window;
* a Transformer with ``executor="process"``: the items in its worker
  processes and fed back (``NodeLogic.inflight_state``), processed again
  first when the run resumes, so a barrier need not wait for them;
* any node whose function has ``state()`` and ``restore()`` hooks (a
  Transformer's ``fn``, a Filter's predicate, a Messenger's key, a Loader's
  function other than a committing sink): what ``state()`` returns.

Replicas of a node (``parallel=N``) that share its function (a function, or an
object whose ``__deepcopy__`` returns itself) have one state, taken once per
node.  Replicas that each run their own copy of a stateful object have one
state each, taken from each copy and put back into the copy of the same
replica; resuming such a checkpoint needs the same ``parallel=`` (a
:class:`~reflux.errors.CheckpointError` names the node otherwise).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..describe.base import Node
from ..describe.nodes import Extractor, Filter, Loader, Messenger, Transformer
from ..errors import CheckpointError, ValidationError
from ..logic.accumulate import AccumulatorLogic
from ..logic.base import NodeLogic, user_hook
from ..logic.extract import ExtractorLogic
from .protocol import role_of
from .snapshot import Snapshot

__all__ = ["capture", "check_nodes", "restore", "stateful_function"]


def stateful_function(node: Node) -> Any:
    """The node's function when it has ``state()`` and ``restore()`` hooks, else ``None``."""
    fn: Any = None
    if isinstance(node, Transformer):
        fn = node.fn
    elif isinstance(node, Filter):
        fn = node.predicate
    elif isinstance(node, Messenger):
        fn = node.key
    elif isinstance(node, Loader) and role_of(node.fn) is None:
        fn = node.fn
    if fn is None or user_hook(fn, "state") is None or user_hook(fn, "restore") is None:
        return None
    return fn


def check_nodes(nodes: Sequence[Node], snap: Snapshot | None, owner: str) -> None:
    """Refuse, before anything runs, what a checkpoint cannot hold or what does not
    match the checkpoint to resume from (a node it names is missing)."""
    for node in nodes:
        if isinstance(node, Extractor) and node.mode == "channel":
            raise ValidationError(f"{node.label}: a live channel cannot be read again after a crash, so a "
                                  f"checkpointed pipeline cannot resume it; feed it from a source reflux reads")
        if getattr(node, "executor", "thread") == "process" and stateful_function(node) is not None:
            raise ValidationError(f"{node.label}: its function has state()/restore() hooks but runs in worker "
                                  f"processes, where a checkpoint cannot reach its state; use "
                                  f"executor='thread', or drop the hooks")
    if snap is None:
        return
    for node in nodes:
        saved = snap.nodes.get(node.name)
        parallel = getattr(node, "parallel", 1)
        if saved is not None and saved[0] == "replicas" and len(saved[1]) != parallel:
            raise CheckpointError(f"{node.label}: its checkpoint #{snap.id} holds the states of {len(saved[1])} "
                                  f"replicas, each running its own copy of the function, and the node now has "
                                  f"parallel={parallel}; resume with the parallel= the checkpoint was taken "
                                  f"with", node=node.name)
    names = {n.name for n in nodes}
    for group in (snap.sources, snap.nodes):
        for name in group:
            if name not in names:
                raise CheckpointError(f"{owner}: its checkpoint #{snap.id} holds the state of node '{name}', "
                                      f"which is not in the pipeline (nodes are matched by name)", node=name)


def capture(logics: Iterable[tuple[Node, list[NodeLogic]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(sources, nodes)``: positions by Extractor name and states by node name, from
    the logics of each node (the pipeline is drained and held)."""
    sources: dict[str, Any] = {}
    states: dict[str, Any] = {}
    for node, lgs in logics:
        if not lgs:
            continue  # never opened: nothing happened to it (what a resume gave it still holds)
        first = lgs[0]
        if isinstance(first, ExtractorLogic):
            sources[node.name] = first.position()
        elif isinstance(first, AccumulatorLogic):
            states[node.name] = ("window", first.window_state())
        elif first.saves_inflight:
            held = first.inflight_state()
            if held is not None:
                states[node.name] = ("inflight", held)
        else:
            # each logic's own node: a replica's copy holds that replica's copy of the object
            fns = [stateful_function(lg.node) for lg in lgs]
            if fns[0] is None:
                continue
            if all(fn is fns[0] for fn in fns):
                states[node.name] = ("state", fns[0].state())
            else:
                states[node.name] = ("replicas", [fn.state() for fn in fns])
    return sources, states


def restore(node: Node, logic: NodeLogic, snap: Snapshot, replica: int | None = None,
            replicas: int = 1) -> None:
    """Put ``node``'s saved state back into its just-opened ``logic`` (``replica`` of
    ``replicas``: the logic is that replica's, running its own copy of the node's object)."""
    try:
        if isinstance(logic, ExtractorLogic):
            pos = snap.sources.get(node.name)
            if pos is not None:
                logic.restore_position(pos)
            return
        saved = snap.nodes.get(node.name)
        if saved is None:
            return
        how, value = saved
        if how == "window" and isinstance(logic, AccumulatorLogic):
            logic.restore_window(value)
            return
        if how == "inflight" and logic.saves_inflight:
            logic.restore_inflight(value)
            return
        fn = stateful_function(logic.node)
        if fn is None or how not in ("state", "replicas"):
            raise CheckpointError(f"{node.label}: the checkpoint holds a state ({how}) this node cannot take "
                                  f"(it changed since)", node=node.name)
        saved_replicas = len(value) if how == "replicas" else 1
        if saved_replicas != (replicas if replica is not None else 1):
            raise CheckpointError(
                f"{node.label}: the checkpoint holds {saved_replicas} state(s) of its function, one per "
                f"replica running its own copy, and the node now runs "
                f"{replicas if replica is not None else 1} such replica(s); resume with the parallel= the "
                f"checkpoint was taken with", node=node.name)
        fn.restore(value[replica] if how == "replicas" and replica is not None else value)
    except CheckpointError:
        raise
    except Exception as exc:  # the user's restore() hook, or a source that cannot skip
        raise CheckpointError(f"{node.label}: resuming from checkpoint #{snap.id} failed: "
                              f"{type(exc).__name__}: {exc}", node=node.name) from exc
