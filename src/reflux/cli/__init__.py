"""The ``reflux`` command (``reflux demo``, ``reflux run``, ``reflux graph``; also ``python -m reflux``).

``main``
    the argument parser, the commands and their exit codes.
``demo``
    the built-in analytics pipeline ``reflux demo`` runs.
"""
from __future__ import annotations

from .main import main

__all__ = ["main"]
