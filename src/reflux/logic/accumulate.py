"""What an Accumulator does: group items into lists by count and/or time window."""
from __future__ import annotations

import time
from typing import Any

from ..describe.nodes import Accumulator
from .base import NodeContext, NodeLogic, Outbox

__all__ = ["AccumulatorLogic"]


class AccumulatorLogic(NodeLogic):
    """Collects items into groups closed by count, by time window, or at end of stream."""

    node: Accumulator

    def __init__(self, node: Accumulator, ctx: NodeContext) -> None:
        super().__init__(node, ctx)
        self.group: list[Any] = []
        self.deadline: float | None = None
        #: items sent downstream inside lists
        self.grouped = 0

    def _emit(self, out: Outbox) -> None:
        group = self.group
        self.group = []
        self.deadline = None
        self.grouped += len(group)
        out.emit(group)

    def process(self, batch: list[Any], out: Outbox) -> None:
        count = self.node.count
        window = self.node.window
        now = time.monotonic() if window is not None else 0.0
        if self.deadline is not None and now >= self.deadline:
            self._emit(out)
        # whole slices of the batch at a time (no per-item Python)
        i, n = 0, len(batch)
        while i < n:
            if not self.group and window is not None:
                self.deadline = now + window
            if count is None:
                self.group.extend(batch[i:])
                break
            room = count - len(self.group)
            self.group.extend(batch[i:i + room])
            i += room
            if len(self.group) >= count:
                self._emit(out)

    def next_deadline(self) -> float | None:
        return self.deadline

    def tick(self, now: float, out: Outbox) -> None:
        if self.deadline is not None and now >= self.deadline and self.group:
            self._emit(out)

    def finish(self, out: Outbox) -> None:
        if self.group:
            self._emit(out)

    def abandon(self) -> int:
        n = len(self.group)
        self.group = []
        return n

    # ------------------------------------------------------------------ checkpoints

    def window_state(self) -> tuple[list[Any], float | None]:
        """The open group and the seconds left of its window (for a checkpoint)."""
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        return list(self.group), left

    def restore_window(self, state: tuple[list[Any], float | None]) -> None:
        """Reopen a group saved by :meth:`window_state`: its window runs for the seconds it had left."""
        group, left = state
        self.group = list(group)
        self.deadline = None if left is None or not self.group else time.monotonic() + left
