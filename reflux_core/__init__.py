"""reflux_core: the compiled core of reflux (channels, worker loops, plug-in ABI).

Cython users build against it with :func:`get_include`::

    from setuptools import Extension
    import reflux_core
    Extension("mymod", ["mymod.pyx"], include_dirs=[reflux_core.get_include()])

and ``cimport reflux_core.channel`` (or ``from reflux_core cimport ...``).
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["ABI_VERSION", "get_include", "build_info"]


def _refuse_an_unbuilt_source_tree() -> None:
    """Fail clearly when this is the source folder of a checkout that was not built in place.

    Python run from a checkout's root finds the checkout's ``reflux_core/``
    (its ``.pyx`` sources, no compiled modules) before the installed package;
    without this check the first import of a compiled module fails with a
    bare ``No module named 'reflux_core.channel'``.
    """
    import importlib.machinery

    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, "channel.pyx")):
        return  # an installed package: nothing to check
    if any(os.path.exists(os.path.join(here, "channel" + suffix))
           for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        return  # built in place (an editable install)
    raise ImportError(
        f"reflux_core is being imported from its source folder {here}, which holds no compiled "
        f"modules: Python was probably started in a reflux checkout, whose folder comes before the "
        f"installed package on sys.path. Run it from another folder to use the installed reflux "
        f"(pip install . installs it), or build the checkout in place for development with "
        f"pip install -e . (run it again after changing a .pyx or .pxd file).",
        name="reflux_core", path=here)


_refuse_an_unbuilt_source_tree()

#: Version of the public cimport surface and C ABI (the .pxd files and
#: include/reflux_core/abi.h).  Bumped on every incompatible change.
ABI_VERSION = 1


def get_include() -> str:
    """Folder to add to ``include_dirs`` when compiling against reflux_core.

    It holds ``reflux_core/*.h``; the ``.pxd`` files are found by Cython
    through the installed package itself.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def build_info() -> dict[str, Any]:
    """How this copy of the core was built and runs: debug checks, parking back end, barrier mode."""
    from reflux_core import channel

    return {
        "abi_version": ABI_VERSION,
        "debug": bool(channel._debug_build()),
        "park_backend": channel.park_backend(),
        "barrier_mode": channel.barrier_mode(),
    }
