"""The state of each node at a checkpoint, and putting it back when a run resumes.

* an **Extractor**: its source's position (``ExtractorLogic.position``: the
  source's ``state()`` hook, else the count of items pulled);
* an **Accumulator**: its open group and the seconds left of its window;
* any node whose function has ``state()`` and ``restore()`` hooks (a
  Transformer's ``fn``, a Filter's predicate, a Messenger's key, a Loader's
  function other than a committing sink): what ``state()`` returns.

Replicas of a node (``parallel=N``) share its function, so its state is taken
once per node.
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
        else:
            fn = stateful_function(node)
            if fn is not None:
                states[node.name] = ("state", fn.state())
    return sources, states


def restore(node: Node, logic: NodeLogic, snap: Snapshot) -> None:
    """Put ``node``'s saved state back into its just-opened ``logic``."""
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
        fn = stateful_function(node)
        if how != "state" or fn is None:
            raise CheckpointError(f"{node.label}: the checkpoint holds a state ({how}) this node cannot take "
                                  f"(it changed since)", node=node.name)
        fn.restore(value)
    except CheckpointError:
        raise
    except Exception as exc:  # the user's restore() hook, or a source that cannot skip
        raise CheckpointError(f"{node.label}: resuming from checkpoint #{snap.id} failed: "
                              f"{type(exc).__name__}: {exc}", node=node.name) from exc
