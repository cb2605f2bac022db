"""Benchmarks of reflux, run as modules from the repository root, e.g.::

    python -m benchmarks.channels          # full run (a few minutes on 2 cores)
    python -m benchmarks.channels --quick  # smoke run

They print tables of throughput and ratios against peers measured in the same
run; they are never timed tests.
"""
from __future__ import annotations

import importlib
import os
import sys

__all__ = ["import_core", "run_meta"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_root(entry: str) -> bool:
    try:
        return os.path.samefile(entry or os.curdir, _ROOT)
    except OSError:
        return False


def import_core(*submodules: str):
    """Import ``reflux_core`` submodules (e.g. ``"channel"``) and return them.

    Run from the repository root, the checkout's ``reflux_core/`` folder comes
    first on ``sys.path``; after a plain ``pip install .`` it holds no compiled
    modules and would shadow the installed package.  In that case import the
    installed one instead (an editable install builds in place, so the
    checkout itself works there).
    """
    names = [f"reflux_core.{name}" for name in submodules]
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError:
        trimmed = [entry for entry in sys.path if not _is_root(entry)]
        if len(trimmed) == len(sys.path):
            raise
    for name in list(sys.modules):
        if name == "reflux_core" or name.startswith("reflux_core."):
            del sys.modules[name]
    saved = sys.path[:]
    sys.path[:] = trimmed
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        # the package is bound now; keep the root for `benchmarks` itself
        # (multiprocessing children import it again)
        sys.path[:] = saved


def run_meta() -> dict:
    """When and where a run was made, for its ``--json`` file (the charts print it)."""
    import datetime
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_end": load,
    }
