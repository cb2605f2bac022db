"""How the parent talks to its worker processes: the native and the portable transport.

Both carry the messages of :mod:`reflux.run.process.child` (pickle protocol 5
with out-of-band buffers) to and from fresh worker interpreters; they differ in
what carries the bytes and how the parent waits for results:

``native`` (the default on Linux)
    plain OS pipes, one each way: ``os.writev`` / ``os.readv`` straight
    between the buffers and the pipe, a 1 MiB pipe buffer asked for, and
    ``select.poll`` to wait for results.  Needs POSIX (``os.writev``,
    ``select.poll``, file descriptors passed to the child).  Forked workers
    (``start_method="fork"``) always use it.
``portable`` (the default on Windows and macOS)
    :mod:`multiprocessing.connection` pipe connections, one each way
    (anonymous pipes on POSIX, overlapped named pipes on Windows), handed to
    the child as inherited handles, and :func:`multiprocessing.connection.wait`
    to wait for results.  Only what the standard library offers on every
    platform.

The environment variable ``REFLUX_PROCESS_TRANSPORT`` (``native``,
``portable`` or ``auto``, the default) is read when a process node opens; CI
sets ``portable`` on Linux to test the path Windows and macOS take.

A *link* is the parent's side of one worker's pair of pipes; a *waiter*
waits until some links have a message to read.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Any, Protocol

from . import child as wire
from .launch import track

__all__ = [
    "ConnectionLink",
    "ConnectionWaiter",
    "Link",
    "PipeLink",
    "PollWaiter",
    "TRANSPORTS",
    "TRANSPORT_ENV",
    "Waiter",
    "chosen_transport",
    "make_waiter",
    "spawn_portable_worker",
]

#: the environment variable that picks the transport of spawned workers
TRANSPORT_ENV = "REFLUX_PROCESS_TRANSPORT"
#: the values it accepts (besides "auto" and unset)
TRANSPORTS: tuple[str, ...] = ("native", "portable")


def chosen_transport() -> str:
    """The transport of spawned workers: ``REFLUX_PROCESS_TRANSPORT`` if set, else
    ``"native"`` on Linux and ``"portable"`` elsewhere.

    Raises ``ValueError`` for an unknown value, or ``"native"`` where there is no POSIX.
    """
    value = os.environ.get(TRANSPORT_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "native" if sys.platform.startswith("linux") else "portable"
    if value not in TRANSPORTS:
        raise ValueError(f"{TRANSPORT_ENV} must be one of 'auto', "
                         f"{', '.join(map(repr, TRANSPORTS))}, got {value!r}")
    if value == "native" and not _native_available():
        raise ValueError(f"{TRANSPORT_ENV}=native needs POSIX pipes (os.writev, select.poll), "
                         f"which {sys.platform} does not have; use 'portable' or 'auto'")
    return value


def _native_available() -> bool:
    return os.name == "posix" and hasattr(os, "writev") and hasattr(select, "poll")


# ============================================================== links

class Link(Protocol):
    """The parent's side of one worker's two pipes."""

    @property
    def waitable(self) -> Any:
        """What a :class:`Waiter` waits on: readable when the worker has sent something."""

    @property
    def input_open(self) -> bool:
        """Whether the pipe to the worker is still open on this side."""

    def send(self, parts: list[Any]) -> None:
        """Send one encoded message to the worker (``OSError`` if it is gone)."""

    def recv_raw(self) -> tuple[Any, list[bytearray]]:
        """Read one message from the worker, not unpickled (``EOFError``/``OSError`` at its end)."""

    def close_input(self) -> None:
        """Close the pipe to the worker: its end of input (idempotent)."""

    def close(self) -> None:
        """Close both pipes on this side (idempotent)."""


class PipeLink:
    """Native link: the parent's ends of two OS pipes (file descriptors)."""

    __slots__ = ("wfd", "rfd")

    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd = wfd
        self.rfd = rfd

    @property
    def waitable(self) -> int:
        return self.rfd

    @property
    def input_open(self) -> bool:
        return self.wfd >= 0

    def send(self, parts: list[Any]) -> None:
        wire.write_all(self.wfd, parts)

    def recv_raw(self) -> tuple[Any, list[bytearray]]:
        return wire.read_raw(self.rfd)

    def close_input(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def close(self) -> None:
        self.close_input()
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1


class ConnectionLink:
    """Portable link: the parent's ends of two :mod:`multiprocessing.connection` pipes."""

    __slots__ = ("writer", "reader")

    def __init__(self, writer: Any, reader: Any) -> None:
        self.writer = writer
        self.reader = reader

    @property
    def waitable(self) -> Any:
        return self.reader

    @property
    def input_open(self) -> bool:
        return not self.writer.closed

    def send(self, parts: list[Any]) -> None:
        wire.send_conn(self.writer, parts)

    def recv_raw(self) -> tuple[Any, list[bytearray]]:
        return wire.recv_conn_raw(self.reader)

    def close_input(self) -> None:
        self.writer.close()  # idempotent

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


# ============================================================== waiters

class Waiter(Protocol):
    """Waits until some registered links' workers have sent something."""

    def register(self, waitable: Any) -> None: ...

    def unregister(self, waitable: Any) -> None: ...

    def wait(self, timeout: float) -> list[Any]:
        """The registered waitables that are readable (or at their end), waiting up to
        ``timeout`` seconds for the first (0: do not block)."""


class PollWaiter:
    """Native: ``select.poll`` over the result pipes' file descriptors (GIL released while waiting)."""

    def __init__(self) -> None:
        self._poll = select.poll()

    def register(self, waitable: Any) -> None:
        self._poll.register(waitable, select.POLLIN)

    def unregister(self, waitable: Any) -> None:
        self._poll.unregister(waitable)

    def wait(self, timeout: float) -> list[Any]:
        ms = max(0, int(timeout * 1000 + 0.999)) if timeout > 0 else 0
        return [fd for fd, _ev in self._poll.poll(ms)]


class ConnectionWaiter:
    """Portable: :func:`multiprocessing.connection.wait` over connections (and, on POSIX,
    the file descriptors of forked workers)."""

    def __init__(self) -> None:
        import multiprocessing.connection
        self._wait = multiprocessing.connection.wait
        #: registered waitables, in registration order (a dict for O(1) removal)
        self._items: dict[Any, None] = {}

    def register(self, waitable: Any) -> None:
        self._items[waitable] = None

    def unregister(self, waitable: Any) -> None:
        self._items.pop(waitable, None)

    def wait(self, timeout: float) -> list[Any]:
        if not self._items:
            return []
        return list(self._wait(list(self._items), max(0.0, timeout)))


def make_waiter(transport: str) -> Waiter:
    """The waiter for a node whose spawned workers use ``transport``."""
    return PollWaiter() if transport == "native" else ConnectionWaiter()


# ============================================================== starting a portable worker

def spawn_portable_worker() -> tuple[subprocess.Popen[bytes], ConnectionLink]:
    """Start one worker interpreter (the program in :mod:`reflux.run.process.child`)
    connected by two :mod:`multiprocessing.connection` pipes; returns the process
    and the parent's link.

    The child's ends are inherited: listed in ``pass_fds`` on POSIX, in the
    ``handle_list`` of the process's start-up information on Windows (made
    inheritable for the moment of the start; nothing else is inherited).
    """
    from multiprocessing.connection import Pipe

    to_child_r, to_child_w = Pipe(duplex=False)
    from_child_r, from_child_w = Pipe(duplex=False)
    child_ends = (to_child_r, from_child_w)
    try:
        handles = [c.fileno() for c in child_ends]
        executable, env = _executable()
        argv = [executable, *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                "-c", wire.BOOT, wire.__file__, wire.PORTABLE_FLAG, *map(str, handles)]
        if sys.platform == "win32":
            for h in handles:
                os.set_handle_inheritable(h, True)
            info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": handles})  # type: ignore[attr-defined,unused-ignore]
            # a new process group: a console's Ctrl-C goes to the parent only (as setsid on POSIX)
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True, startupinfo=info,
                                     env=env,
                                     creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined,unused-ignore]
        else:
            popen = subprocess.Popen(argv, pass_fds=handles, stdin=subprocess.DEVNULL, close_fds=True,
                                     env=env, start_new_session=True)
    except BaseException:
        for c in (to_child_w, from_child_r):
            c.close()
        raise
    finally:
        for c in child_ends:  # the child has its own copies now (or never will)
            c.close()
    track(popen)
    return popen, ConnectionLink(to_child_w, from_child_r)


def _executable() -> tuple[str, dict[str, str] | None]:
    """The interpreter a worker runs and its environment (``None``: this one's).

    As multiprocessing does on Windows: in a virtual environment, start the base
    interpreter and name the environment's in ``__PYVENV_LAUNCHER__``, so the
    worker is the process started (not a launcher that starts it).
    """
    import multiprocessing.spawn
    exe = multiprocessing.spawn.get_executable()
    base = getattr(sys, "_base_executable", exe)
    if sys.platform == "win32" and os.path.normcase(exe) == os.path.normcase(sys.executable) \
            and os.path.normcase(base) != os.path.normcase(sys.executable):
        env = dict(os.environ)
        env["__PYVENV_LAUNCHER__"] = sys.executable
        return base, env
    return exe, None
