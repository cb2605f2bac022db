"""Connectors: ready-made sources and sinks for files and databases.

Each module makes :class:`~reflux.Extractor` and :class:`~reflux.Loader` nodes
(any node argument, such as ``name=`` or ``on_error=``, passes through):

:mod:`reflux.connectors.files`
    text lines, JSON Lines and CSV: ``read_lines``, ``read_jsonl``, ``read_csv``,
    ``write_lines``, ``write_jsonl``, ``write_csv`` (standard library).
:mod:`reflux.connectors.parquet`
    Parquet through Arrow: ``read_parquet``, ``write_parquet``
    (``pip install "pyreflux[arrow]"``).
:mod:`reflux.connectors.sqlite`
    SQLite: ``read_sqlite``, ``write_sqlite`` (standard library).
:mod:`reflux.connectors.postgres`
    PostgreSQL: ``read_postgres``, ``write_postgres``
    (``pip install "pyreflux[postgres]"``, psycopg 3).

Every source resumes from a checkpoint at the position it reached (file and
offset, query key, rows read), and every sink here commits with checkpoints
so that its output is exactly-once across a crash (see :mod:`reflux.checkpoint`).
The modules are imported on demand, so a missing optional dependency only
matters to the connector that needs it.
"""
from __future__ import annotations

__all__ = ["files", "parquet", "postgres", "sqlite"]
