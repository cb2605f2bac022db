"""One checkpoint: where each source stood, each stateful node's state, what each file sink prepared.

A :class:`Snapshot` travels as bytes (pickle): into the checkpoint file, and into
the checkpoint table of the pipeline's deciding database sink in the same
transaction as the rows before it (see :mod:`reflux.checkpoint.commit`).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

__all__ = ["FORMAT", "Snapshot"]

#: version of the snapshot layout; a file written by another layout is refused
FORMAT = 1


@dataclass
class Snapshot:
    """The state of a pipeline at one barrier."""

    #: checkpoint number, from 1, counting on across resumed runs
    id: int
    #: ``time.time()`` when it was taken
    taken: float
    #: items the Extractors had pulled up to it, over every run since the first
    items: int
    #: source positions by Extractor name (see ``ExtractorLogic.position``)
    sources: dict[str, Any] = field(default_factory=dict)
    #: state by node name (user ``state()`` hooks, Accumulator windows)
    nodes: dict[str, Any] = field(default_factory=dict)
    #: what each file sink prepared (its files), by Loader name
    sinks: dict[str, Any] = field(default_factory=dict)
    #: taken at the end of a run that completed (the sources were done)
    final: bool = False

    def encode(self, owner: str) -> bytes:
        """The snapshot as bytes; a state that cannot be pickled names its node."""
        data = {"format": FORMAT, "id": self.id, "taken": self.taken, "items": self.items,
                "sources": self.sources, "nodes": self.nodes, "sinks": self.sinks, "final": self.final}
        try:
            return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an item or a user state that does not pickle
            for group in ("nodes", "sources", "sinks"):
                for name, value in getattr(self, group).items():
                    try:
                        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                    except Exception:  # find the culprit for the message
                        raise CheckpointError(
                            f"node '{name}': its state cannot be saved in a checkpoint "
                            f"({type(exc).__name__}: {exc})", node=name) from exc
            raise CheckpointError(f"{owner}: the checkpoint cannot be saved ({type(exc).__name__}: {exc})",
                                  node=owner) from exc

    @classmethod
    def decode(cls, blob: bytes, owner: str) -> Snapshot:
        """A snapshot back from :meth:`encode`'s bytes."""
        try:
            data = pickle.loads(blob)
        except Exception as exc:  # a damaged file, or state of a class that is gone
            raise CheckpointError(f"{owner}: the checkpoint cannot be read ({type(exc).__name__}: {exc})",
                                  node=owner) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{owner}: the checkpoint was written in another format "
                                  f"({data.get('format') if isinstance(data, dict) else '?'}, this reflux "
                                  f"reads {FORMAT})", node=owner)
        return cls(id=data["id"], taken=data["taken"], items=data["items"], sources=data["sources"],
                   nodes=data["nodes"], sinks=data["sinks"], final=data["final"])
