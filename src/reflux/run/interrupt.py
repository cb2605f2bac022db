"""Ctrl-C while a pipeline runs: noted by a handler, acted on by the waiting thread.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main
thread happens to be.  When that is inside a weak-reference callback or a
finaliser (the import system runs such callbacks, and a run imports lazily),
the interpreter prints "Exception ignored" and the Ctrl-C is lost: a run that
should stop goes on.  While :meth:`Pipeline.run` or :meth:`Pipeline.join`
waits, :class:`InterruptLatch` replaces that handler with one that only notes
the signal; the waiting loop polls the note and raises ``KeyboardInterrupt``
itself, at a point where nothing can swallow it.  A second Ctrl-C before the
first was acted on raises at once, as the default handler would.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

__all__ = ["InterruptLatch"]


class InterruptLatch:
    """Context manager: while active, SIGINT sets :attr:`pending` instead of raising.

    It takes over only where the default handler is installed and only in the
    main thread (the only thread Python runs signal handlers in); elsewhere it
    does nothing and Ctrl-C behaves as usual.  Entering again while active
    (``run()`` calling ``join()``) is a no-op.
    """

    def __init__(self) -> None:
        self.pending = False
        self._installed = False
        self._depth = 0

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.pending:  # the first one is not acted on yet: the user insists
            raise KeyboardInterrupt
        self.pending = True

    def take(self) -> bool:
        """``True`` once for each noted Ctrl-C (clears the note)."""
        if self.pending:
            self.pending = False
            return True
        return False

    def __enter__(self) -> InterruptLatch:
        self._depth += 1
        if self._depth == 1:
            self.pending = False
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    signal.signal(signal.SIGINT, self._note)
                    self._installed = True
            except ValueError:  # not the main interpreter: signals are not ours to set
                pass
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0 and self._installed:
            self._installed = False
            # only if it is still ours: user code may have installed its own meanwhile
            if signal.getsignal(signal.SIGINT) == self._note:
                signal.signal(signal.SIGINT, signal.default_int_handler)
