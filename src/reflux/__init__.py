"""reflux: fast, dependable dataflow pipelines for CPU-bound streaming work.

Wire nodes into a :class:`Pipeline` and run it::

    from reflux import Extractor, Transformer, Filter, Loader, Pipeline

    sink = Loader.to_list()
    result = Pipeline(
        Extractor(range(10)) >> Transformer(lambda x: x * x) >> Filter(lambda x: x % 2 == 0) >> sink
    ).run()
    result.results[sink.name]   # [0, 4, 16, 36, 64]

The node types are :class:`Extractor`, :class:`Transformer`, :class:`Filter`,
:class:`Balancer`, :class:`Broadcast`, :class:`Funnel`, :class:`Messenger`,
:class:`Accumulator` and :class:`Loader`.  Items move between nodes through
the bounded lock-free channels of the compiled core (:mod:`reflux_core`),
which are re-exported here too.
"""
from __future__ import annotations

import logging
from typing import Any

from reflux_core.channel import (
    EMPTY,
    Channel,
    ChannelClosed,
    ChannelStats,
    Empty,
    Full,
    MPMCChannel,
    RecordChannel,
    SPSCChannel,
)

from .checkpoint.config import Checkpoint
from .describe.base import Flow, Node
from .describe.nodes import (
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
from .describe.sinks import CallbackSink, CountSink, FileSink, ListSink, ReduceSink, SumSink
from .errors import (
    AccountingError,
    CheckpointError,
    ClogError,
    ErrorRecord,
    NodeError,
    NotCallableError,
    PipelineInterrupted,
    RefluxError,
    RoutingError,
    SourceRecordError,
    TransformError,
    ValidationError,
)
from .logic.effects import emit, stopping
from .observe.stats import Alert, NodeSnapshot, PipelineStats, WorkerSnapshot
from .pipeline import Pipeline
from .policies import ErrorPolicy
from .result import CheckpointReport, Event, NodeStats, Results, RunResult, WallTime, WorkerStats
from .signals import Error, NeedsMoreWork

__version__ = "0.1.0"

# A library logs and never prints: without this, Python's last-resort handler would
# write reflux's warnings and errors (a node failure the application caught) to
# standard error although the application configured no logging.
logging.getLogger("reflux").addHandler(logging.NullHandler())

__all__ = [
    # channels (compiled core)
    "EMPTY",
    "Channel",
    "ChannelClosed",
    "ChannelStats",
    "Empty",
    "Full",
    "MPMCChannel",
    "RecordChannel",
    "SPSCChannel",
    # nodes
    "Node",
    "Extractor",
    "Transformer",
    "Filter",
    "Balancer",
    "Broadcast",
    "Funnel",
    "Messenger",
    "Accumulator",
    "Loader",
    "NeedsMoreWork",
    "Error",
    # sinks
    "ListSink",
    "FileSink",
    "CallbackSink",
    "CountSink",
    "SumSink",
    "ReduceSink",
    # pipeline and results
    "Pipeline",
    "Flow",
    "RunResult",
    "Results",
    "WallTime",
    "Event",
    "emit",
    "stopping",
    "NodeStats",
    "WorkerStats",
    "PipelineStats",
    "NodeSnapshot",
    "WorkerSnapshot",
    "Alert",
    "ErrorPolicy",
    # checkpoints
    "Checkpoint",
    "CheckpointReport",
    # errors
    "RefluxError",
    "ValidationError",
    "NotCallableError",
    "NodeError",
    "ClogError",
    "RoutingError",
    "TransformError",
    "PipelineInterrupted",
    "AccountingError",
    "CheckpointError",
    "SourceRecordError",
    "ErrorRecord",
    # loaded on first use (they import numpy, rich, http.server or subprocess; never Ray)
    "CPluginHandle",
    "LiveProgress",
    "MetricsServer",
    "PluginABIError",
    "ProcessWorkerError",
    "RayWorkerError",
    "RecordError",
    "RemoteError",
    "c_plugin",
    "prometheus_text",
    "pump_for",
    "render_stats",
    "__version__",
]

#: public names whose modules are imported only when a name is first used, so
#: ``import reflux`` stays cheap: {name: module}
_LAZY = {
    "CPluginHandle": "reflux.describe.plugins",
    "PluginABIError": "reflux.describe.plugins",
    "c_plugin": "reflux.describe.plugins",
    "RecordError": "reflux_core.transform",
    "pump_for": "reflux.logic.plugins",
    "LiveProgress": "reflux.observe.progress",
    "render_stats": "reflux.observe.progress",
    "MetricsServer": "reflux.observe.metrics",
    "prometheus_text": "reflux.observe.metrics",
    "ProcessWorkerError": "reflux.run.process.launch",
    "RemoteError": "reflux.run.process.launch",
    "RayWorkerError": "reflux.run.ray.connect",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reflux' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
