"""Starting, forking, tracking and ending the worker processes of process-executor nodes.

Spawned workers are fresh interpreters running :mod:`reflux.run.process.child`
by path; forked ones (``start_method="fork"``) are forked when the run starts
and run the same worker loop on the inherited interpreter.  Every live worker
is tracked, so one a node did not get to stop is ended when this interpreter
exits.
"""
from __future__ import annotations

import atexit
import multiprocessing.spawn
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ...errors import RefluxError
from . import child as wire

__all__ = [
    "ForkedProcess",
    "ProcessWorkerError",
    "RemoteError",
    "default_workers",
    "discard_preforked",
    "grow_pipe",
    "prefork",
    "refuse_while_bootstrapping",
    "spawn_worker",
    "track",
    "untrack",
]

#: bytes asked for each pipe (Linux; ignored where it fails)
PIPE_SIZE = 1 << 20
#: live worker processes (subprocess.Popen or ForkedProcess), under _live_lock
_live: set[Any] = set()
_live_lock = threading.Lock()


class ProcessWorkerError(RefluxError):
    """A worker process could not start, or died while it held items.

    A worker that cannot load the function (or whose ``open()`` fails) fails
    the node; items held by a worker that died go through the error policy.
    """


class RemoteError(RefluxError):
    """Stands in for an exception raised in a worker that cannot be pickled;
    the message is ``"TypeName: message"`` and the worker's traceback is attached."""


def default_workers() -> int:
    """Worker processes by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def refuse_while_bootstrapping(owner: str) -> None:
    """Raise a clear error when a pipeline with process workers starts while this
    interpreter is itself a worker importing the parent's main module.

    That happens when a script builds and runs its pipeline at import time: each
    worker imports the script to find the user's function and would start a
    pipeline of its own (multiprocessing then refuses with a long message that
    reaches the user several times over, wrapped in the parent's errors).
    """
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None and getattr(mp.current_process(), "_inheriting", False):
        raise RuntimeError(
            f"{owner}: a worker process started to run this pipeline while it imported your "
            f"main module to find the function; put the code that builds and runs pipelines "
            f"under 'if __name__ == \"__main__\":' (process workers import the main module, "
            f"as multiprocessing's do)")


def spawn_worker() -> tuple[subprocess.Popen[bytes], int, int]:
    """Start one worker interpreter (the program in :mod:`reflux.run.process.child`)
    with a pipe each way; returns the process and the parent's write and read ends."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        for fd in (to_w, from_r):
            grow_pipe(fd)
        argv = [multiprocessing.spawn.get_executable(), *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                "-c", wire.BOOT, wire.__file__, str(to_r), str(from_w)]
        popen = subprocess.Popen(argv, pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL,
                                 close_fds=True, start_new_session=True)
    except BaseException:
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)
        raise
    os.close(to_r)
    os.close(from_w)
    track(popen)
    return popen, to_w, from_r


def grow_pipe(fd: int) -> None:
    """Ask for a larger pipe buffer (fewer wake-ups for big chunks); best effort."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[attr-defined,unused-ignore]  # Linux only
    except (ImportError, AttributeError, OSError):
        pass


def track(proc: Any) -> None:
    """Remember a live worker process, so it is ended if the interpreter exits first."""
    with _live_lock:
        _live.add(proc)


def untrack(proc: Any) -> None:
    """Forget a worker process that has ended."""
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    """At interpreter exit, end any worker a logic did not get to stop."""
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(1.0)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class ForkedProcess:
    """The parent's handle of a worker forked from it (``start_method="fork"``): the
    part of :class:`subprocess.Popen` the logic uses (``pid``, ``returncode``,
    ``poll``, ``wait``, ``terminate``, ``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is gone
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"reflux worker {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self._send(signal.SIGTERM)

    def kill(self) -> None:
        self._send(signal.SIGKILL)

    def _send(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _run_forked_worker(rfd: int, wfd: int, close: list[int], mask: set[int] | None) -> None:
    """The child side of a fork: drop the parent's other pipe ends, then run the
    worker loop on the inherited interpreter (no import, no preparation) and exit
    without running the parent's exit handlers.  Never returns.  ``mask`` is the
    signal mask to restore once SIGINT is ignored (the parent blocked it for the fork)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        _restore_signals(mask)
        for fd in close:
            try:
                os.close(fd)
            except OSError:
                pass
        os.setsid()  # as spawned workers: a terminal's Ctrl-C goes to the parent only
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        code = wire.main(["", str(rfd), str(wfd)])
    except BaseException:  # noqa: BLE001 - never return into the parent's code
        try:
            import traceback
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        wire._exit(code)


def prefork(nodes: list[Any], forked: dict[str, list[Any]]) -> None:
    """``start_method="fork"``: fork the worker processes of ``nodes`` now, at the
    start of the run, while this process runs a single thread (a fork then copies
    no lock another thread holds).  Puts the workers into ``forked`` by node
    name as they are made, as ``(process, write fd, read fd)``, for the nodes'
    logics to adopt when they open; :func:`discard_preforked` ends the ones
    never adopted (the caller holds ``forked`` before the first fork, so an
    interruption at any point leaves nothing it cannot end).  Raises
    ``RuntimeError`` naming the node when other threads run.

    SIGINT and SIGTERM are blocked while the workers are forked and unblocked
    afterwards: a Ctrl-C that arrives meanwhile is delivered then, as a
    ``KeyboardInterrupt`` in this thread, instead of inside the interpreter's
    fork handlers, which would report it as ignored and lose it.
    """
    if len(threading.enumerate()) > 1:
        others = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        raise RuntimeError(
            f"{nodes[0].label}: start_method='fork' forks the worker processes when the run starts, "
            f"which is only safe while this process runs a single thread; running: {others}. "
            f"Use start_method='spawn' (the default), or start this pipeline before other threads")
    for stream in (sys.stdout, sys.stderr):  # else the children would write the buffers again
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    parent_fds: list[int] = []  # every parent-side end made so far: no child may keep one
    blocked = _block_stop_signals()
    try:
        _fork_workers(nodes, forked, parent_fds, blocked)
    except BaseException:
        discard_preforked(forked)
        raise
    finally:
        _restore_signals(blocked)  # a signal that arrived meanwhile is delivered here


def _fork_workers(nodes: list[Any], forked: dict[str, list[Any]], parent_fds: list[int],
                  blocked: set[int] | None) -> None:
    for node in nodes:
        handles: list[Any] = []
        forked[node.name] = handles
        for _ in range(getattr(node, "workers", None) or default_workers()):
            to_r, to_w = os.pipe()
            from_r, from_w = os.pipe()
            try:
                for fd in (to_w, from_r):
                    grow_pipe(fd)
                pid = os.fork()
            except BaseException:
                for fd in (to_r, to_w, from_r, from_w):
                    os.close(fd)
                raise
            if pid == 0:  # the child
                _run_forked_worker(to_r, from_w, [*parent_fds, to_w, from_r], blocked)
            os.close(to_r)
            os.close(from_w)
            proc = ForkedProcess(pid)
            track(proc)
            handles.append((proc, to_w, from_r))
            parent_fds += (to_w, from_r)


def _block_stop_signals() -> set[int] | None:
    """Block SIGINT and SIGTERM in this thread; returns the mask to restore (None where
    signal masks do not exist)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}))


def _restore_signals(mask: set[int] | None) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def discard_preforked(forked: dict[str, list[Any]]) -> None:
    """End the forked workers no logic adopted (the run ended before the node opened);
    ``forked`` (as :func:`prefork` returned it) is emptied."""
    while forked:
        _, handles = forked.popitem()
        for proc, wfd, rfd in handles:
            for fd in (wfd, rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            proc.kill()
            proc.wait()
            untrack(proc)
