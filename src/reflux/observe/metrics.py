"""Metrics for monitoring systems: a pipeline's stats in the Prometheus text format.

:func:`prometheus_text` renders a :class:`~reflux.PipelineStats`
snapshot in the Prometheus text exposition format (version 0.0.4);
:class:`MetricsServer` serves it at ``/metrics`` from a small standard-library
HTTP server on a background thread (no ``prometheus_client`` needed), which
is what ``reflux run --metrics-port N`` starts.

Every series carries the labels ``pipeline`` and ``node`` (and ``kind``);
counters end in ``_total``::

    reflux_node_items_in_total{pipeline="demo",node="parse",kind="Transformer"} 120000
    reflux_channel_items{pipeline="demo",node="parse",kind="Transformer"} 1024

The Ray actors of a node with ``executor="ray"`` have series of their own,
labelled also with ``worker`` (its index), ``host`` and ``ray_node_id``::

    reflux_worker_items_total{pipeline="demo",node="score",kind="Transformer",worker="0",
                              host="10.0.0.5",ray_node_id="4f1c..."} 5120   (on one line)

Rates are left to the monitoring system (``rate(reflux_node_items_in_total[1m])``).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

from .stats import HasStats, NodeSnapshot, PipelineStats, WorkerSnapshot

__all__ = ["CONTENT_TYPE", "MetricsServer", "prometheus_text"]

logger = logging.getLogger("reflux")

#: the content type of the text format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (metric name, type, help, value of a node snapshot or None to skip the node)
_NODE_METRICS: list[tuple[str, str, str, Callable[[NodeSnapshot], float | None]]] = [
    ("reflux_node_items_in_total", "counter", "Items a node took from its input (an Extractor: from its source).",
     lambda s: s.received),
    ("reflux_node_items_out_total", "counter", "Items a node sent downstream (a Loader: items it loaded).",
     lambda s: s.emitted),
    ("reflux_node_items_filtered_total", "counter", "Items a Filter rejected.", lambda s: s.filtered),
    ("reflux_node_errors_total", "counter", "Items that failed in a node after retries.", lambda s: s.errors),
    ("reflux_node_items_dropped_total", "counter", "Items abandoned by a stop, a failure or Ctrl-C.",
     lambda s: s.dropped),
    ("reflux_node_items_overflowed_total", "counter", "Items a leaky input dropped because it was full.",
     lambda s: s.overflowed),
    ("reflux_node_retries_total", "counter", "Retries a node made.", lambda s: s.retried),
    ("reflux_node_fed_back_total", "counter", "Items a Transformer fed back to itself (NeedsMoreWork).",
     lambda s: s.fed_back),
    ("reflux_node_busy_seconds_total", "counter", "Seconds a node spent in its own logic.",
     lambda s: s.busy_seconds),
    ("reflux_node_busy_ratio", "gauge", "Fraction of the last second a node spent in its own logic.",
     lambda s: s.busy),
    ("reflux_channel_items", "gauge", "Items waiting in a node's input channel.", lambda s: s.queued),
    ("reflux_channel_capacity", "gauge", "Slots of a node's input channel.", lambda s: s.capacity),
    ("reflux_node_clogged", "gauge", "1 while the watchdog reports the node as clogged.",
     lambda s: 1.0 if s.state == "clogged" else 0.0),
    ("reflux_node_up", "gauge", "1 while the node runs, 0 once it ended, failed or clogged.",
     lambda s: 1.0 if s.state in ("running", "blocked") else 0.0),
]

#: the series of each remote worker (Ray actor) of a node
_WORKER_METRICS: list[tuple[str, str, str, Callable[[WorkerSnapshot], float]]] = [
    ("reflux_worker_items_total", "counter", "Items a node's Ray actor finished (failed ones included).",
     lambda w: w.items),
    ("reflux_worker_batches_total", "counter", "Batches a node's Ray actor finished.", lambda w: w.batches),
    ("reflux_worker_busy_seconds_total", "counter", "Seconds a node's Ray actor spent in the node's function.",
     lambda w: w.busy_seconds),
    ("reflux_worker_busy_ratio", "gauge", "Fraction of the last second a node's Ray actor spent in the function.",
     lambda w: w.busy),
    ("reflux_worker_restarts_total", "counter", "Times a node's Ray actor died and was restarted.",
     lambda w: w.restarts),
    ("reflux_worker_lost_batches_total", "counter", "Batches a node's Ray actor held when it died.",
     lambda w: w.lost),
    ("reflux_worker_up", "gauge", "1 while a node's Ray actor is alive.", lambda w: 1.0 if w.state == "alive" else 0.0),
]

_STATUSES = ("idle", "running", "paused", "completed", "stopped", "failed", "interrupted")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def prometheus_text(stats: PipelineStats | Iterable[PipelineStats]) -> str:
    """The snapshot(s) in the Prometheus text exposition format."""
    snapshots = [stats] if isinstance(stats, PipelineStats) else list(stats)
    lines: list[str] = []
    for name, kind, help_text, get in _NODE_METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for st in snapshots:
            for node in st.nodes.values():
                v = get(node)
                if v is None:
                    continue
                labels = (f'pipeline="{_escape(st.pipeline)}",node="{_escape(node.name)}",'
                          f'kind="{_escape(node.kind)}"')
                lines.append(f"{name}{{{labels}}} {_number(v)}")
    lines.append("# HELP reflux_node_events_total Events a node's function emitted (reflux.emit), by level.")
    lines.append("# TYPE reflux_node_events_total counter")
    for st in snapshots:
        for node in st.nodes.values():
            for level, count in sorted(node.events.items()):
                labels = (f'pipeline="{_escape(st.pipeline)}",node="{_escape(node.name)}",'
                          f'kind="{_escape(node.kind)}",level="{_escape(level)}"')
                lines.append(f"reflux_node_events_total{{{labels}}} {_number(count)}")
    for name, kind, help_text, wget in _WORKER_METRICS:
        rows = [(st, node, w) for st in snapshots for node in st.nodes.values() for w in node.workers]
        if not rows:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for st, node, w in rows:
            labels = (f'pipeline="{_escape(st.pipeline)}",node="{_escape(node.name)}",kind="{_escape(node.kind)}",'
                      f'worker="{w.index}",host="{_escape(w.host)}",ray_node_id="{_escape(w.node_id)}"')
            lines.append(f"{name}{{{labels}}} {_number(wget(w))}")
    lines.append("# HELP reflux_pipeline_elapsed_seconds Seconds since the run started (its length once over).")
    lines.append("# TYPE reflux_pipeline_elapsed_seconds gauge")
    for st in snapshots:
        lines.append(f'reflux_pipeline_elapsed_seconds{{pipeline="{_escape(st.pipeline)}"}} {_number(st.elapsed)}')
    lines.append("# HELP reflux_pipeline_status 1 for the pipeline's current status.")
    lines.append("# TYPE reflux_pipeline_status gauge")
    for st in snapshots:
        for status in _STATUSES:
            lines.append(f'reflux_pipeline_status{{pipeline="{_escape(st.pipeline)}",status="{status}"}} '
                         f"{1 if st.status == status else 0}")
    return "\n".join(lines) + "\n"


Source = Union[HasStats, Callable[[], Union[PipelineStats, Iterable[PipelineStats]]]]


class MetricsServer:
    """Serves ``prometheus_text(source)`` at ``http://host:port/metrics``.

    ``source`` is a :class:`~reflux.Pipeline` (its :meth:`~reflux.Pipeline.stats`
    is rendered on each scrape) or a callable returning stats snapshot(s).
    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, source: Source, port: int = 0, host: str = "127.0.0.1") -> None:
        if hasattr(source, "stats") and callable(source.stats):
            self._get: Callable[[], Any] = source.stats
        elif callable(source):
            self._get = source
        else:
            raise TypeError(f"MetricsServer needs a Pipeline or a callable, got {source!r:.60}")
        self.host = host
        self._requested_port = int(port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def render(self) -> str:
        """The text a scrape gets now."""
        return prometheus_text(self._get())

    @property
    def port(self) -> int:
        """The port served (the one picked when started with ``port=0``)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Bind and serve from a background thread; returns ``self``."""
        if self._server is not None:
            return self
        render = self.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = render().encode("utf-8")
                except Exception:
                    logger.exception("metrics: rendering failed")
                    self.send_error(500, "rendering the metrics failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("metrics: " + format, *args)

        server = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name=f"reflux-metrics:{self.port}")
        self._thread.start()
        logger.info("serving metrics at %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._requested_port = int(server.server_address[1])
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
