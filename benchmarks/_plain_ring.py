"""Builds benchmarks/plain_ring.c with the system C compiler into a temporary
folder and wraps it with ctypes (see plain_ring.c for what it is)."""
from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

__all__ = ["PlainRing", "PlainRingUnavailable", "Tally", "load"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plain_ring.c")
MAX_PRODUCERS = 64


class PlainRingUnavailable(RuntimeError):
    """No C compiler, or the ring did not compile here."""


class Tally(ctypes.Structure):
    # same layout as pr_tally in plain_ring.c (and Tally in reflux_core/_stress.pyx)
    _fields_ = [
        ("count", ctypes.c_uint64),
        ("order_errors", ctypes.c_uint64),
        ("bad_producer", ctypes.c_uint64),
        ("counts", ctypes.c_uint64 * MAX_PRODUCERS),
        ("sums", ctypes.c_uint64 * MAX_PRODUCERS),
        ("last", ctypes.c_int64 * MAX_PRODUCERS),
    ]

    def as_dict(self, nproducers: int) -> dict:
        return {
            "count": self.count,
            "order_errors": self.order_errors,
            "bad_producer": self.bad_producer,
            "counts": list(self.counts[:nproducers]),
            "sums": list(self.sums[:nproducers]),
        }


def compiler() -> list[str]:
    """The C compiler command: $CC, else the one Python was built with, else cc."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cmd = shlex.split(cc)
    if not cmd or shutil.which(cmd[0]) is None:
        cmd = ["cc"]
        if shutil.which("cc") is None:
            raise PlainRingUnavailable(f"no C compiler found (CC={cc!r}, no cc on PATH)")
    return cmd


def build(folder: str) -> str:
    """Compile the ring into ``folder``; returns the shared library's path."""
    if sys.platform == "win32":
        raise PlainRingUnavailable("the plain C ring needs a POSIX compiler and pthreads")
    out = os.path.join(folder, "plain_ring" + (sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"))
    cmd = compiler() + ["-O2", "-shared", "-fPIC", "-pthread", SOURCE, "-o", out]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PlainRingUnavailable(f"{' '.join(cmd)}: {exc}") from None
    if proc.returncode != 0:
        raise PlainRingUnavailable(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return out


class PlainRing:
    """The compiled ring.  ``lib`` functions release the GIL while they run
    (ctypes.CDLL), so two Python threads calling into it run in parallel."""

    def __init__(self, path: str, command: list[str]):
        self.path = path
        self.command = command
        lib = self.lib = ctypes.CDLL(path)
        u64, p = ctypes.c_uint64, ctypes.c_void_p
        lib.pr_ring_new.argtypes = [u64]
        lib.pr_ring_new.restype = p
        lib.pr_ring_free.argtypes = [p]
        lib.pr_ring_free.restype = None
        lib.pr_produce.argtypes = [p, ctypes.c_uint32, u64, u64, ctypes.c_int]
        lib.pr_produce.restype = u64
        lib.pr_consume.argtypes = [p, u64, ctypes.POINTER(Tally)]
        lib.pr_consume.restype = u64
        lib.pr_run_threads.argtypes = [u64, u64, u64, ctypes.POINTER(Tally), ctypes.POINTER(u64)]
        lib.pr_run_threads.restype = ctypes.c_int64

    def run_threads(self, capacity: int, n: int, batch: int):
        """1P1C on the ring's own pthreads: (seconds, pushed, tally dict)."""
        tally = Tally()
        pushed = ctypes.c_uint64(0)
        ns = self.lib.pr_run_threads(capacity, n, batch, ctypes.byref(tally), ctypes.byref(pushed))
        if ns < 0:
            raise RuntimeError("plain ring: could not allocate the ring or start the threads")
        return ns / 1e9, pushed.value, tally.as_dict(1)

    def new_ring(self, capacity: int) -> int:
        ring = self.lib.pr_ring_new(capacity)
        if not ring:
            raise MemoryError("plain ring: cannot allocate the ring")
        return ring

    def free_ring(self, ring: int) -> None:
        self.lib.pr_ring_free(ring)

    def produce(self, ring: int, producer: int, n: int, batch: int, close: bool) -> int:
        return self.lib.pr_produce(ring, producer, n, batch, int(close))

    def consume(self, ring: int, batch: int) -> dict:
        tally = Tally()
        self.lib.pr_consume(ring, batch, ctypes.byref(tally))
        return tally.as_dict(1)


def load() -> PlainRing:
    """Compile and load the ring (raises PlainRingUnavailable)."""
    folder = tempfile.mkdtemp(prefix="reflux-bench-")
    atexit.register(shutil.rmtree, folder, True)
    path = build(folder)
    return PlainRing(path, compiler())
