"""Watching and showing a pipeline: stats, alerts and the watchdog, Prometheus, progress, graphs.

``stats``
    the snapshots :meth:`Pipeline.stats` returns, and alerts.
``watchdog``
    :class:`~reflux.observe.watchdog.Monitor`: live stats of a run and the
    clogging watchdog.
``metrics``
    the Prometheus text format and a small HTTP server for it.
``progress``
    the live terminal view (``rich``).
``diagram``
    Mermaid and Graphviz DOT drawings of a pipeline's graph.

This layer reads the runtime only through what it is handed; it never
imports the run layer.
"""
