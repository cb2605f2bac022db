"""Where a node's logic runs: in this process, or (``executor="process"``) in worker processes.

The logic layer says what a node does with a batch; this is the one place
that picks, per node, the logic that does it here or the one that ships the
batch to process workers (:mod:`reflux.run.process`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..describe.base import Node
from ..describe.nodes import Transformer
from ..describe.plan import Task
from ..logic import make_logic
from ..logic.base import NodeContext, NodeLogic

__all__ = ["logic_for", "task_logic"]


def logic_for(node: Node, ctx: NodeContext, n_ports: int = 1, port_names: Sequence[str] = (), *,
              ports: Mapping[Any, int] | None = None, default_port: int | None = None,
              preforked: list[Any] | None = None) -> NodeLogic:
    """The logic of ``node`` for one run: :func:`reflux.logic.make_logic`, or for a
    Transformer with ``executor="process"`` the logic that runs its function in
    worker processes (``preforked``: the workers forked for it when the run started)."""
    if isinstance(node, Transformer) and node.executor == "process":
        from .process.logic import ProcessTransformerLogic  # only when asked for (start-up time)
        return ProcessTransformerLogic(node, ctx, preforked=preforked)
    return make_logic(node, ctx, n_ports, port_names, ports=ports, default_port=default_port)


def task_logic(task: Task, ctx: NodeContext, preforked: list[Any] | None = None) -> NodeLogic:
    """The logic of a task of a compiled plan (its outputs and routes as the plan wired them)."""
    return logic_for(task.node, ctx, len(task.outputs), task.port_names, ports=task.ports,
                     default_port=task.default_port, preforked=preforked)
