"""Build of the compiled core (reflux_core).  Metadata lives in pyproject.toml.

Build modes, chosen by environment variables at build time:

  (none)                    the release build: optimised, without debug
                            information (-g0, and the linker strips any that
                            remains on Linux), so wheels stay small
  REFLUX_DEBUG=1            asserts on, -O0 -g, Cython bounds checks, SPSC misuse
                            checks on every call
  REFLUX_SANITIZE=address   AddressSanitizer (set LD_PRELOAD=$(gcc -print-file-name=libasan.so)
                            when running Python)
  REFLUX_PARK=portable      park on a mutex + condition variable instead of the
                            futex (the fallback other platforms use), to test it here
  REFLUX_BARRIER=fence      seq_cst fences on both sides of every Dekker handshake
                            instead of membarrier (what platforms without an
                            asymmetric barrier use), to test it here
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("REFLUX_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("REFLUX_SANITIZE", "")
PARK = os.environ.get("REFLUX_PARK", "")
BARRIER = os.environ.get("REFLUX_BARRIER", "")

# one extension module per public .pxd / internal helper module
MODULES = ["channel", "transform", "_stress", "_batch", "_sched", "_testplugins", "_demo"]

define_macros = [("REFLUX_DEBUG", "1" if DEBUG else "0")]
if PARK == "portable":
    define_macros.append(("RX_PARK_PORTABLE", "1"))
elif PARK not in ("", "auto"):
    sys.exit(f"REFLUX_PARK must be 'portable' or unset, got {PARK!r}")
if BARRIER == "fence":
    define_macros.append(("RX_NO_ASYM_BARRIER", "1"))
elif BARRIER not in ("", "auto"):
    sys.exit(f"REFLUX_BARRIER must be 'fence' or unset, got {BARRIER!r}")


#: release builds carry no debug information (see BuildExt.build_extensions)
STRIP = not DEBUG and not SANITIZE

MODE_TAG = (f"debug={int(DEBUG)} sanitize={SANITIZE or '-'} park={PARK or 'auto'} barrier={BARRIER or 'auto'} "
            f"strip={int(STRIP)}")


class BuildExt(build_ext):
    """Adds the flags each compiler needs (C11 atomics on MSVC, build modes).

    Rebuilds everything when the build mode differs from the one the
    existing build outputs were made with (pip builds in the source tree, so
    a debug build must never be reused by a later release build)."""

    def run(self):
        stamp = os.path.join(self.build_temp, "reflux-build-mode")
        previous = None
        if os.path.exists(stamp):
            with open(stamp, encoding="utf-8") as f:
                previous = f.read()
        if previous != MODE_TAG:
            self.force = True
        super().run()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w", encoding="utf-8") as f:
            f.write(MODE_TAG)

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        for ext in self.extensions:
            if msvc:
                ext.extra_compile_args += ["/std:c11", "/experimental:c11atomics"]
                if DEBUG:
                    ext.extra_compile_args += ["/Od", "/Zi", "/UNDEBUG"]
            else:
                if DEBUG:
                    ext.extra_compile_args += ["-O0", "-g", "-UNDEBUG"]
                if STRIP:
                    # release: no debug information (Python's own CFLAGS often carry -g,
                    # which would make the extensions about four times larger)
                    ext.extra_compile_args += ["-g0"]
                    if sys.platform.startswith("linux"):
                        ext.extra_link_args += ["-Wl,--strip-debug"]
                if SANITIZE:
                    flags = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"]
                    ext.extra_compile_args += flags
                    ext.extra_link_args += flags
        super().build_extensions()


extensions = [
    Extension(
        f"reflux_core.{name}",
        [f"reflux_core/{name}.pyx"],
        include_dirs=["reflux_core/include"],
        define_macros=define_macros,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "embedsignature.format": "clinic",  # inspect.signature() works on methods
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
        },
        force=DEBUG or bool(SANITIZE) or bool(PARK) or bool(BARRIER),
    ),
    cmdclass={"build_ext": BuildExt},
)
