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

from .errors import (
    AccountingError,
    ClogError,
    ErrorRecord,
    NodeError,
    NotCallableError,
    PipelineInterrupted,
    RefluxError,
    RoutingError,
    TransformError,
    ValidationError,
)
from .nodes import (
    Accumulator,
    Balancer,
    Broadcast,
    Error,
    Extractor,
    Filter,
    Funnel,
    Loader,
    Messenger,
    NeedsMoreWork,
    Node,
    Transformer,
)
from .monitor import Alert, NodeSnapshot, PipelineStats
from .pipeline import Flow, Pipeline
from .policies import ErrorPolicy
from .result import NodeStats, RunResult
from .sinks import CallbackSink, FileSink, ListSink

__version__ = "0.1.0"

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
    # pipeline and results
    "Pipeline",
    "Flow",
    "RunResult",
    "NodeStats",
    "PipelineStats",
    "NodeSnapshot",
    "Alert",
    "ErrorPolicy",
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
    "ErrorRecord",
    "__version__",
]
