"""Worker process of ``Transformer(fn, executor="process")``, and the framing both sides use.

This module uses the standard library only.  The parent (:mod:`reflux.run.process`)
imports it for :func:`encode` and the readers and writers below; a worker
process runs this very file by path (``python -c BOOT PATH rfd wfd``, or
``python -c BOOT PATH --portable rh wh``, see :data:`BOOT`), so a worker does
not import the ``reflux`` package (nor numpy, asyncio...) unless the user's
function needs it.

Message format (both directions)::

    header   <Q pickle length> <I number of out-of-band buffers> <Q length of each buffer>...
    pickle   pickle protocol 5 of one tuple (the message)
    buffers  the out-of-band buffers (e.g. numpy array data), raw, in order

Two transports carry it (:mod:`reflux.run.process.transport` picks one):

native (Linux)
    plain OS pipe file descriptors: a message is written with ``os.writev``
    (one system call when it fits the pipe) and read with ``os.readv``
    straight into freshly allocated ``bytearray`` objects.
portable (Windows, macOS; anywhere with ``REFLUX_PROCESS_TRANSPORT=portable``)
    :mod:`multiprocessing.connection` pipe connections (named pipes on
    Windows): the header and pickle go as one ``send_bytes`` message, each
    buffer as one more, read with ``recv_bytes_into`` into fresh ``bytearray``
    objects.

Either way array data is never copied into the pickle stream and arrives writable.

Messages (the first element of the tuple is the kind):

parent -> worker
    ``(SETUP, preparation, fn_pickle, options)`` once, first; then
    ``(WORK, seq, items)`` per chunk.  End of input (the parent closing its
    end) asks the worker to finish: it calls ``fn.close()`` and exits.
worker -> parent
    ``(READY, pid)`` or ``(FAILED_START, pid, traceback)`` once, first;
    ``(DONE, seq, values, errors, retried, busy, signals, None, events, joined)`` per chunk,
    in the order chunks arrived (``joined``: a flat-map's outputs of the whole chunk in one
    list, see :func:`join_outputs`); ``(CLOSED, pid, traceback or None)`` last.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable

SETUP, READY, FAILED_START, WORK, DONE, CLOSED = range(6)

_HEAD = struct.Struct("<QI")
_LEN = struct.Struct("<Q")
#: most iovecs handed to one writev (Linux IOV_MAX is 1024)
_IOV_MAX = 512

#: the flag before the two handles of a portable worker's connections on its command line
PORTABLE_FLAG = "--portable"

#: the code a worker interpreter runs (``sys.argv[1]`` is this file, then the two pipe
#: fds, or PORTABLE_FLAG and the two connection handles)
BOOT = ("import runpy, sys; "
        "runpy.run_path(sys.argv[1], run_name='__reflux_worker__')")


# ============================================================== framing (both sides)

def encode(obj: Any) -> list[Any]:
    """Pickle ``obj`` (protocol 5, out-of-band buffers) into the parts of one message.

    Raises whatever pickling raises (nothing has been written yet then).
    """
    bufs: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    if not bufs:
        return [_HEAD.pack(len(data), 0), data]
    raws = []
    for b in bufs:
        try:
            raws.append(b.raw())
        except BufferError:  # not contiguous: send a contiguous copy
            raws.append(memoryview(bytes(memoryview(b))))
    head = _HEAD.pack(len(data), len(raws)) + b"".join(_LEN.pack(r.nbytes) for r in raws)
    return [head, data, *raws]


def write_all(fd: int, parts: list[Any]) -> None:
    """Write every part to ``fd`` (``os.writev``, the GIL released while blocked)."""
    views = [memoryview(p) for p in parts if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n:
            v = views[i]
            if n >= v.nbytes:
                n -= v.nbytes
                i += 1
            else:
                views[i] = v[n:]
                n = 0


def _read_into(fd: int, bufs: list[Any]) -> None:
    """Fill every buffer of ``bufs`` from ``fd``; ``EOFError`` if the pipe ends first."""
    views = [memoryview(b) for b in bufs if len(b)]
    i = 0
    while i < len(views):
        n = os.readv(fd, views[i:i + _IOV_MAX])
        if n == 0:
            raise EOFError("pipe closed in the middle of a message")
        while n:
            v = views[i]
            if n >= v.nbytes:
                n -= v.nbytes
                i += 1
            else:
                views[i] = v[n:]
                n = 0


def read_raw(fd: int) -> tuple[bytearray, list[bytearray]]:
    """Read one message without unpickling it: ``(pickle, buffers)``.

    ``EOFError`` when the other side closed the pipe (cleanly, between messages
    or not).
    """
    head = bytearray(_HEAD.size)
    n = os.readv(fd, [head])
    if n == 0:
        raise EOFError("pipe closed")
    if n < _HEAD.size:
        _read_into(fd, [memoryview(head)[n:]])
    plen, nbuf = _HEAD.unpack(head)
    if nbuf:
        lens = bytearray(_LEN.size * nbuf)
        _read_into(fd, [lens])
        bufs = [bytearray(_LEN.unpack_from(lens, k * _LEN.size)[0]) for k in range(nbuf)]
    else:
        bufs = []
    data = bytearray(plen)
    _read_into(fd, [data, *bufs])
    return data, bufs


def read_msg(fd: int) -> Any:
    """Read and unpickle one message (``EOFError`` at the end)."""
    data, bufs = read_raw(fd)
    return pickle.loads(data, buffers=bufs)


def send_conn(conn: Any, parts: list[Any]) -> None:
    """Send the parts of one message (from :func:`encode`) over a
    :class:`multiprocessing.connection.Connection`: header and pickle as one
    message, then each out-of-band buffer as one (``OSError`` if the other side is gone)."""
    conn.send_bytes(parts[0] + parts[1])
    for raw in parts[2:]:
        conn.send_bytes(raw)


def recv_conn_raw(conn: Any) -> tuple[memoryview, list[bytearray]]:
    """Read one message sent by :func:`send_conn` without unpickling it: ``(pickle, buffers)``.

    ``EOFError`` when the other side closed its end.
    """
    first = conn.recv_bytes()
    plen, nbuf = _HEAD.unpack_from(first)
    start = _HEAD.size + _LEN.size * nbuf
    bufs = [bytearray(_LEN.unpack_from(first, _HEAD.size + k * _LEN.size)[0]) for k in range(nbuf)]
    for buf in bufs:
        conn.recv_bytes_into(buf)
    return memoryview(first)[start:start + plen], bufs


def open_connections(rh: int, wh: int) -> tuple[Any, Any]:
    """The worker's connections from the handles (file descriptors on POSIX, pipe
    handles on Windows) the parent passed on its command line: ``(reader, writer)``."""
    import multiprocessing.connection as mpc
    if sys.platform == "win32":
        cls = mpc.PipeConnection  # type: ignore[attr-defined]
    else:
        cls = mpc.Connection
    return cls(rh, writable=False), cls(wh, readable=False)


class _Endpoint:
    """The worker's side of its transport: the parent's messages in, results out."""

    def __init__(self, argv: list[str]) -> None:
        if len(argv) >= 3 and argv[-3] == PORTABLE_FLAG:
            self.reader, self.writer = open_connections(int(argv[-2]), int(argv[-1]))
            self.rfd = self.wfd = -1
        else:
            self.reader = self.writer = None
            self.rfd, self.wfd = int(argv[-2]), int(argv[-1])

    def recv_raw(self) -> tuple[Any, list[bytearray]]:
        """One message, not unpickled (``EOFError`` or ``OSError`` at the end of input)."""
        if self.reader is not None:
            return recv_conn_raw(self.reader)
        return read_raw(self.rfd)

    def send(self, parts: list[Any]) -> None:
        """One message, encoded (``OSError`` when the parent is gone)."""
        if self.writer is not None:
            send_conn(self.writer, parts)
        else:
            write_all(self.wfd, parts)


# ============================================================== the worker

def pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """``(pickle or None, type name, message, formatted traceback)`` of an exception.

    The pickle is ``None`` when the exception does not survive a pickle round
    trip (the parent then raises a stand-in carrying the type name and message).
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    t = type(exc)
    name = t.__qualname__ if t.__module__ in ("builtins", "__main__") else f"{t.__module__}.{t.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__
        message = "<unprintable>"
    data: bytes | None
    try:
        data = pickle.dumps(exc, protocol=5)
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - anything that does not round-trip
        data = None
    return data, name, message[:2000], tb


def _signal_classes() -> tuple[Any, Any]:
    """``(NeedsMoreWork, Error)`` if the user's code imported reflux, else ``(None, None)``."""
    nodes = sys.modules.get("reflux.signals")
    if nodes is None:
        return None, None
    return getattr(nodes, "NeedsMoreWork", None), getattr(nodes, "Error", None)


def run_chunk(fn: Callable[[Any], Any], items: list[Any], opts: dict[str, Any]
              ) -> tuple[list[Any], list[tuple[Any, ...]], int, bool]:
    """Apply ``fn`` to each item with the node's retry policy.

    Returns ``(values, errors, retried, signals)``: ``values[i]`` is the result
    of item ``i`` (a list of outputs when ``flat``; ``None`` for a failed item),
    ``errors`` holds ``(i, *pack_exception(exc), attempts)`` per failed item,
    ``retried`` counts calls after the first, ``signals`` tells whether a value
    is a ``NeedsMoreWork`` (so the parent can skip looking for them).
    """
    flat = opts["flat"]
    retries = opts["retries"]
    more_work, error_cls = _signal_classes()
    values: list[Any] = []
    errors: list[tuple[Any, ...]] = []
    retried = 0
    signals = False
    append = values.append
    r: Any  # a result, a list of them (flat), or the exception of a failed call
    for i, item in enumerate(items):
        try:
            r = list(fn(item)) if flat else fn(item)
        except Exception as exc:  # user code
            r = exc
            ok = False
        else:
            ok = True
            if r.__class__ is error_cls and not flat:
                ok = False
                r = r.exception
        if ok:
            if r.__class__ is more_work and more_work is not None:
                signals = True
            append(r)
            continue
        attempts = 1
        while attempts <= retries:
            backoff = opts["backoff"]
            if backoff > 0:
                time.sleep(min(opts["max_backoff"], backoff * opts["backoff_factor"] ** (attempts - 1)))
            retried += 1
            attempts += 1
            try:
                r = list(fn(item)) if flat else fn(item)
            except Exception as exc:  # user code
                r = exc
                continue
            if r.__class__ is error_cls and not flat:
                r = r.exception
                continue
            ok = True
            break
        if ok:
            if r.__class__ is more_work and more_work is not None:
                signals = True
            append(r)
        else:
            append(None)
            errors.append((i, *pack_exception(r), attempts))
    if flat and more_work is not None:
        signals = True  # outputs may hold NeedsMoreWork / Error: the parent looks
    return values, errors, retried, signals


def join_outputs(values: list[Any]) -> list[Any] | None:
    """A flat-map chunk's outputs (one list per item) as one list, or ``None`` when some
    output is a signal the parent must see item by item (``NeedsMoreWork``, ``Error``).

    One list crosses the pipe for less than a list per item (unpickling 65,536 one-tuple
    lists costs about twice what 65,536 tuples do), and the parent extends its outbox with
    it in one call instead of a Python loop over the items.
    """
    joined = [x for v in values for x in v]
    more_work, error_cls = _signal_classes()
    if more_work is not None:
        for x in joined:
            if x.__class__ is more_work or x.__class__ is error_cls:
                return None
    return joined


def _take_events() -> list[tuple[str, str, dict[str, Any]]]:
    """The events the user's function emitted (``reflux.emit``) since the last chunk,
    if it imported reflux; fields that cannot be pickled travel as their repr."""
    effects = sys.modules.get("reflux.logic.effects")
    if effects is None:
        return []
    events: list[tuple[str, str, dict[str, Any]]] = effects.take_worker_events()
    for i, (level, message, fields) in enumerate(events):
        try:
            pickle.dumps(fields, protocol=5)
        except Exception:  # noqa: BLE001 - a field that cannot travel: its repr instead
            events[i] = (level, message, {k: v if _picklable(v) else repr(v) for k, v in fields.items()})
    return events


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001
        return False
    return True


def _send_done(end: _Endpoint, seq: int, values: list[Any], errors: list[tuple[Any, ...]],
               retried: int, busy: float, signals: bool, flat: bool = False) -> None:
    """Send a chunk's results (and the events emitted meanwhile); values that cannot be
    pickled become per-item errors.  ``flat``: a flat-map's results, sent joined into one
    list when no item failed and no output is a signal."""
    events = _take_events()
    try:
        joined = join_outputs(values) if flat and not errors else None
        if joined is not None:
            parts = encode((DONE, seq, joined, errors, retried, busy, False, None, events, True))
        else:
            parts = encode((DONE, seq, values, errors, retried, busy, signals, None, events, False))
    except Exception:  # noqa: BLE001 - some value is not picklable: find which
        failed = {e[0] for e in errors}
        for i, v in enumerate(values):
            if i in failed:
                continue
            try:
                pickle.dumps(v, protocol=5)
            except Exception as exc:  # noqa: BLE001
                err = TypeError(f"the result of this item cannot be sent back from the worker "
                                f"process: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                values[i] = None
                errors.append((i, *pack_exception(err), 1))
        errors.sort(key=lambda e: e[0])
        parts = encode((DONE, seq, values, errors, retried, busy, signals, None, events, False))
    end.send(parts)


def _reader(end: _Endpoint, inbox: deque[Any], wake: threading.Semaphore, parent: int) -> None:
    """Reader thread: drain the input pipe as fast as it fills, so the parent never
    blocks on a full pipe while this worker blocks on a full result pipe.

    At the end of input: if the parent died (this process was re-parented), leave at
    once, abandoning any chunk queued or running; else let the queued chunks finish.
    """
    try:
        while True:
            inbox.append(end.recv_raw())
            wake.release()
    except (EOFError, OSError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    inbox.append(None)
    wake.release()


def _hook(fn: Any, name: str) -> Callable[[], Any] | None:
    """The user's ``open``/``close`` method of a callable object (never a function's attribute)."""
    import inspect
    if inspect.isroutine(fn) or isinstance(fn, type):
        return None
    h = getattr(fn, name, None)
    return h if callable(h) else None


def main(argv: list[str]) -> int:
    """Worker entry point: ``argv[-2:]`` are the input and output pipe fds, or (after
    :data:`PORTABLE_FLAG`) the handles of the input and output connections."""
    import signal
    end = _Endpoint(argv)
    # Ctrl-C goes to the parent, which stops its workers; a terminal sends
    # SIGINT to the whole process group, so ignore it here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # reflux.emit() in the user's function keeps its events for the parent (see _take_events)
    os.environ["REFLUX_PROCESS_WORKER"] = "1"
    pid = os.getpid()
    parent = os.getppid()
    try:
        data, bufs = end.recv_raw()
        _, prep, fn_pickle, opts = pickle.loads(data, buffers=bufs)
    except (EOFError, OSError):
        return 0
    try:
        if prep:
            import multiprocessing.process
            import multiprocessing.spawn
            # as multiprocessing's spawn does: while the parent's __main__ is imported
            # here, starting processes is refused with an explanation (a script
            # without an ``if __name__ == "__main__":`` guard would else recurse)
            me = multiprocessing.process.current_process()
            me._inheriting = True  # type: ignore[attr-defined]
            try:
                multiprocessing.spawn.prepare(prep)  # sys.path, cwd, the parent's __main__
            finally:
                me._inheriting = False  # type: ignore[attr-defined]
        fn = pickle.loads(fn_pickle)
        hook = _hook(fn, "open")
        if hook is not None:
            hook()
    except BaseException:  # noqa: BLE001 - reported to the parent
        try:
            end.send(encode((FAILED_START, pid, traceback.format_exc())))
        except OSError:
            pass
        return 1
    end.send(encode((READY, pid)))
    inbox: deque[Any] = deque()
    wake = threading.Semaphore(0)
    reader = threading.Thread(target=_reader, args=(end, inbox, wake, parent), daemon=True,
                              name="reflux-worker-reader")
    reader.start()
    perf = time.perf_counter
    try:
        while True:
            wake.acquire()
            raw = inbox.popleft()
            if raw is None:
                break
            data, bufs = raw
            _, seq, items = pickle.loads(data, buffers=bufs)
            t0 = perf()
            values, errors, retried, signals = run_chunk(fn, items, opts)
            _send_done(end, seq, values, errors, retried, perf() - t0, signals, opts["flat"])
    except (OSError, EOFError):  # the parent is gone (a broken pipe)
        return 0
    tb = None
    hook = _hook(fn, "close")
    if hook is not None:
        try:
            hook()
        except BaseException:  # noqa: BLE001 - reported to the parent
            tb = traceback.format_exc()
    try:
        end.send(encode((CLOSED, pid, tb)))
    except OSError:
        pass
    return 0


def _exit(code: int) -> None:
    """Leave quickly, as multiprocessing's forked children do: flush what the user may
    have buffered (stdio, logging), then ``os._exit`` (no interpreter tear-down, which
    costs tens of milliseconds with numpy loaded and would only delay the pipeline)."""
    logging = sys.modules.get("logging")
    if logging is not None:
        try:
            logging.shutdown()
        except Exception:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


if __name__ == "__reflux_worker__":
    _exit(main(sys.argv))
