"""What the routing nodes do: Balancer (round-robin), Broadcast (to all), Funnel (merge) and
Messenger (by key).  Each writes into one outbox port per receiver."""
from __future__ import annotations

from typing import Any

from ..describe.nodes import Balancer, Broadcast, Messenger
from ..errors import RoutingError
from ..signals import Error
from .base import Abort, NodeContext, NodeLogic, Outbox, close_hook, open_hook

__all__ = ["BalancerLogic", "BroadcastLogic", "FunnelLogic", "MessengerLogic"]


class BalancerLogic(NodeLogic):
    """Round-robin over the output ports, continued across batches."""

    def __init__(self, node: Balancer, ctx: NodeContext, n_ports: int) -> None:
        super().__init__(node, ctx)
        self.n = n_ports
        self.next = 0

    def process(self, batch: list[Any], out: Outbox) -> None:
        ports = out.ports
        n = self.n
        i = self.next
        for item in batch:
            ports[i].append(item)
            i += 1
            if i == n:
                i = 0
        self.next = i


class BroadcastLogic(NodeLogic):
    """Every item to every output port (copied for ports after the first when ``copy`` is set)."""

    node: Broadcast

    def __init__(self, node: Broadcast, ctx: NodeContext, n_ports: int) -> None:
        super().__init__(node, ctx)
        self.n = n_ports

    def process(self, batch: list[Any], out: Outbox) -> None:
        copy = self.node.copy
        if copy is None:
            for buf in out.ports:
                buf.extend(batch)
            return
        out.ports[0].extend(batch)
        self.remaining = len(batch) * (self.n - 1)
        for buf in out.ports[1:]:
            for item in batch:
                ok, value = self.call(copy, item, out)
                self.remaining -= 1
                if ok:
                    buf.append(value)

    def abandon(self) -> int:
        n = self.remaining
        self.remaining = 0
        return n


class FunnelLogic(NodeLogic):
    """Forwards its (merged) input unchanged."""

    def process(self, batch: list[Any], out: Outbox) -> None:
        out.ports[0].extend(batch)


class MessengerLogic(NodeLogic):
    """Sends each item to the port its key maps to (or the default port)."""

    node: Messenger

    def __init__(self, node: Messenger, ctx: NodeContext, ports: dict[Any, int], default: int | None) -> None:
        super().__init__(node, ctx)
        self.ports = ports
        self.default = default

    def open(self) -> None:
        open_hook(self.node.key)

    def close(self) -> None:
        close_hook(self.node.key)

    def process(self, batch: list[Any], out: Outbox) -> None:
        key = self.node.key
        ports = self.ports
        bufs = out.ports
        default = self.default
        stop = self.stop_flag
        self.remaining = len(batch)
        for item in batch:
            if stop.is_set:
                raise Abort()
            try:
                k = key(item)
            except Exception as exc:  # user code
                k = Error(exc)
            except BaseException as exc:  # SystemExit and the like: not an item failure
                raise self.fatal(item, exc) from exc
            if k.__class__ is Error:
                ok, k, attempts = self.retry(key, item, k.exception)
                if not ok:
                    self.remaining -= 1
                    self.fail(item, k, attempts, out)
                    continue
            try:
                port = ports.get(k, default)
            except TypeError as exc:  # unhashable key
                self.remaining -= 1
                self.fail(item, RoutingError(f"{self.node.label}: key {k!r:.60} is unhashable: {exc}"), 1, out)
                continue
            self.remaining -= 1
            if port is None:
                self.fail(item, RoutingError(f"{self.node.label}: no route for key {k!r:.60} "
                                             f"and no default route"), 1, out)
                continue
            bufs[port].append(item)
