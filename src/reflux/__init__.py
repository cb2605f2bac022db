"""reflux: fast, dependable dataflow pipelines for CPU-bound streaming work.

The pipeline layer (nodes, Pipeline) is built on the compiled channel core in
:mod:`reflux_core`; the channel types and their exceptions are re-exported here.
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

__version__ = "0.1.0"

__all__ = [
    "EMPTY",
    "Channel",
    "ChannelClosed",
    "ChannelStats",
    "Empty",
    "Full",
    "MPMCChannel",
    "RecordChannel",
    "SPSCChannel",
    "__version__",
]
