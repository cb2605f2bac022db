"""What a pipeline's ``checkpoint=`` says: where checkpoints go and how often they are taken."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError

__all__ = ["Checkpoint", "as_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """Where a pipeline records its checkpoints, and how often.

    ``Pipeline(..., checkpoint="run.ckpt")`` is ``checkpoint=Checkpoint("run.ckpt")``.

    ``path``
        the checkpoint file (a SQLite database; one file may serve several
        pipelines, told apart by their names).  It is created on the first run.
    ``every``
        take a checkpoint once the Extractors have pulled this many items since
        the last one (``None``: not by count).
    ``seconds``
        take a checkpoint once this many seconds have passed since the last one
        (``None``: not by time).  Whichever comes first.
    ``timeout``
        seconds a barrier may wait for the sources to pause and the pipeline to
        drain; past that the checkpoint is skipped (logged) and tried again later,
        so a source blocked in a read never stalls the pipeline.
    ``durable``
        also survive a power cut, not only a crash of the process: the checkpoint
        file is synced to disk at every checkpoint (``synchronous=FULL``) and the
        file sinks call ``fsync`` before a checkpoint counts.  It costs one or more
        disk flushes per checkpoint.  Databases sinks are as durable as their
        server (PostgreSQL) or file's settings (SQLite) make them.
    ``commit``
        where a checkpoint's commit runs: ``"beside"`` the pipeline, in a thread
        of its own while the sources go on; ``"inline"``, in the pipeline's own
        thread while it is held (a PostgreSQL sink sends its commit from there
        and collects the server's answer as the pipeline goes on, so the
        pipeline does not wait for it); ``"auto"`` (default): inline when the pipeline
        writes to a database, runs with the GIL and has no process or Ray
        workers, else beside it.  Under the GIL a commit beside the pipeline
        takes turns at the GIL with it, which cost more than the commit's own
        wait (measured with SQLite and PostgreSQL on the same machine); with a
        database far away, whose commits take many milliseconds, ``"beside"``
        hides that wait.
    """

    path: str
    every: int | None = 10_000
    seconds: float | None = 30.0
    timeout: float = 10.0
    durable: bool = False
    commit: str = "auto"

    def __post_init__(self) -> None:
        try:
            path = os.fspath(self.path)
        except TypeError:
            raise ValidationError(f"Checkpoint: path must be a file name, got {self.path!r:.60}") from None
        if not isinstance(path, str) or not path:
            raise ValidationError(f"Checkpoint: path must be a file name, got {self.path!r:.60}")
        object.__setattr__(self, "path", path)
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int)
                                       or self.every < 1):
            raise ValidationError(f"Checkpoint: every must be a positive number of items or None, got {self.every!r}")
        for name in ("seconds", "timeout"):
            value = getattr(self, name)
            if value is None and name == "seconds":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or value == float("inf"):
                raise ValidationError(f"Checkpoint: {name} must be a positive number of seconds, got {value!r}")
        if self.every is None and self.seconds is None:
            raise ValidationError("Checkpoint: give every= or seconds= (or both), or checkpoints are never taken")
        if not isinstance(self.durable, bool):
            raise ValidationError(f"Checkpoint: durable must be True or False, got {self.durable!r}")
        if self.commit not in ("auto", "beside", "inline"):
            raise ValidationError(f"Checkpoint: commit must be 'auto', 'beside' or 'inline', got {self.commit!r}")


def as_checkpoint(value: Any, owner: str) -> Checkpoint | None:
    """``checkpoint=`` as given to a pipeline: ``None``, a path or a :class:`Checkpoint`."""
    if value is None or isinstance(value, Checkpoint):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Checkpoint(os.fspath(value))
    raise ValidationError(f"{owner}: checkpoint must be a file name or a reflux.Checkpoint, got {value!r:.60}")
