"""reflux_core: the compiled core of reflux (channels, worker loops, plug-in ABI).

Cython users build against it with :func:`get_include`::

    from setuptools import Extension
    import reflux_core
    Extension("mymod", ["mymod.pyx"], include_dirs=[reflux_core.get_include()])

and ``cimport reflux_core.channel`` (or ``from reflux_core cimport ...``).
"""
from __future__ import annotations

import os

__all__ = ["ABI_VERSION", "get_include", "build_info"]

#: Version of the public cimport surface and C ABI (the .pxd files and
#: include/reflux_core/abi.h).  Bumped on every incompatible change.
ABI_VERSION = 1


def get_include() -> str:
    """Folder to add to ``include_dirs`` when compiling against reflux_core.

    It holds ``reflux_core/*.h``; the ``.pxd`` files are found by Cython
    through the installed package itself.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def build_info() -> dict:
    """How this copy of the core was built and runs: debug checks, parking back end,
    barrier mode, whether it was compiled for a free-threaded CPython and whether
    the GIL is on now."""
    import sys

    from reflux_core import channel

    gil = getattr(sys, "_is_gil_enabled", None)
    return {
        "abi_version": ABI_VERSION,
        "debug": bool(channel._debug_build()),
        "park_backend": channel.park_backend(),
        "barrier_mode": channel.barrier_mode(),
        "free_threaded": bool(channel._free_threaded_build()),
        "gil_enabled": True if gil is None else bool(gil()),
    }
