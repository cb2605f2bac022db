"""What one node does with one batch, one module per kind of node.

:func:`make_logic` makes the logic of a node for one run (see
:mod:`reflux.logic.base` for the contract every logic follows).  A logic is
plain per-batch Python: it runs the same under any runtime, or by hand with a
:class:`~reflux.logic.base.LocalContext` and an
:class:`~reflux.logic.base.Outbox`::

    node = Transformer(abs)
    logic = make_logic(node, LocalContext(node.make_stats()))
    out = Outbox()
    logic.process([-1, 2], out)       # out.ports[0] == [1, 2]

Where a node's function runs when it is not in this process (process
workers) is the run layer's choice (:func:`reflux.run.placement.logic_for`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..describe.base import Node
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
from .accumulate import AccumulatorLogic
from .base import LocalContext, NodeContext, NodeLogic, Outbox
from .extract import ExtractorLogic
from .filter import BatchedFilterLogic, FilterLogic
from .load import LoaderLogic
from .route import BalancerLogic, BroadcastLogic, FunnelLogic, MessengerLogic
from .transform import BatchedTransformerLogic, FlatTransformerLogic, TransformerLogic

__all__ = ["LocalContext", "NodeContext", "NodeLogic", "Outbox", "make_logic"]


def make_logic(node: Node, ctx: NodeContext, n_ports: int = 1, port_names: Sequence[str] = (), *,
               ports: Mapping[Any, int] | None = None, default_port: int | None = None) -> NodeLogic:
    """The logic of ``node`` for one run, in this process.

    ``n_ports`` is the number of outputs (receivers of a routing node) and
    ``port_names`` their names; a Messenger takes its table of key -> output
    port (``ports``, ``default_port``: what a compiled plan's task holds),
    by default the receivers' names.  A node made with a compiled plug-in
    gets the plug-in's logic (:mod:`reflux.logic.plugins`, which imports numpy
    only then).
    """
    if getattr(node, "is_async", False):
        raise TypeError(f"{node.label}: an async function runs on an event loop the run layer provides "
                        "(reflux.run.placement.logic_for)")
    if isinstance(node, (Transformer, Filter, Messenger)) and node.plugin is not None:
        from . import plugins
        if isinstance(node, Transformer):
            return plugins.PluginTransformerLogic(node, ctx, node.plugin)
        if isinstance(node, Filter):
            return plugins.PluginFilterLogic(node, ctx, node.plugin)
        return plugins.PluginMessengerLogic(node, ctx, node.plugin, _ports(port_names, ports), default_port)
    if isinstance(node, Extractor):
        return ExtractorLogic(node, ctx)
    if isinstance(node, Transformer):
        if node.batched:
            return BatchedTransformerLogic(node, ctx)
        return (FlatTransformerLogic if node.flat else TransformerLogic)(node, ctx)
    if isinstance(node, Filter):
        return BatchedFilterLogic(node, ctx) if node.batched else FilterLogic(node, ctx)
    if isinstance(node, Balancer):
        return BalancerLogic(node, ctx, n_ports)
    if isinstance(node, Broadcast):
        ctx.stats.fanout = n_ports
        return BroadcastLogic(node, ctx, n_ports)
    if isinstance(node, Funnel):
        return FunnelLogic(node, ctx)
    if isinstance(node, Messenger):
        return MessengerLogic(node, ctx, _ports(port_names, ports), default_port)
    if isinstance(node, Accumulator):
        return AccumulatorLogic(node, ctx)
    if isinstance(node, Loader):
        return LoaderLogic(node, ctx)
    raise TypeError(f"{node.label}: no logic for a node of kind {node.kind!r}")


def _ports(port_names: Sequence[str], ports: Mapping[Any, int] | None) -> dict[Any, int]:
    """A Messenger's key -> port table: as given, else the receivers' names."""
    return dict(ports) if ports is not None else {name: i for i, name in enumerate(port_names)}
