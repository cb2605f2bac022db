"""What the file connectors share: finding the input files, opening them (gzip or not),
and writing output files atomically, rolled by size or count, committed by checkpoints.

**Reading.** ``paths`` is a file, a folder (its files, sorted by name, hidden
ones left out), a glob pattern (``data/*.jsonl.gz``, ``**`` for sub-folders),
or a list of those; they are looked up when the run starts, so a later run
sees new files.  A file is read as gzip when it starts with the gzip magic
bytes, whatever its name.

**Writing** (:class:`RollingFileSink`).  Output goes to a hidden temporary
file next to its final name (``.NAME.inprogress``) and is renamed into place
when the file is finished, so a reader never sees half a file.  Without
``roll_items``/``roll_bytes`` there is one file, ``path``, finished when the
run ends; with them, files ``STEM-00000.EXT``, ``STEM-00001.EXT``... each
finished when it reaches the limit (``out/events.jsonl`` rolls to
``out/events-00000.jsonl`` and on).  A name ending in ``.gz`` is gzip-compressed.

Under checkpoints (``checkpoint_role = "files"``) finished files are renamed
only when a checkpoint commits, and at each checkpoint the file in progress is
flushed (a gzip member is ended, so the file can be cut back there) and its
length recorded: a restart cuts it back to that length, redoes the renames
the checkpoint promised, deletes files begun after it, and appends.  Each
item is then in the final files exactly once.
"""
from __future__ import annotations

import glob
import gzip
import io
import os
import threading
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["RollingFileSink", "expand_paths", "open_input", "split_name"]

GZIP_MAGIC = b"\x1f\x8b"


def _as_list(paths: Any) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, Iterable):
        out = []
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                raise TypeError(f"paths must be file names, folders or glob patterns, got {p!r:.60}")
            out.append(os.fspath(p))
        return out
    raise TypeError(f"paths must be a file name, a folder, a glob pattern or a list of them, got {paths!r:.60}")


def check_paths(paths: Any) -> list[str]:
    """``paths`` as a list of strings (raises ``TypeError`` for anything else)."""
    found = _as_list(paths)
    if not found:
        raise ValueError("paths is empty")
    return found


def expand_paths(paths: list[str]) -> list[str]:
    """The files ``paths`` names now, in order (see the module docs); a missing plain file raises."""
    files: list[str] = []
    seen: set[str] = set()
    for p in paths:
        if glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
        elif os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if not f.startswith(".") and os.path.isfile(os.path.join(p, f)))
        elif os.path.isfile(p):
            found = [p]
        else:
            raise FileNotFoundError(f"no such file or folder: {p!r}")
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    return files


def open_input(path: str) -> IO[bytes]:
    """``path`` opened for reading bytes, through gzip when it is gzip-compressed."""
    raw = open(path, "rb")
    try:
        head = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    except Exception:
        raw.close()
        raise
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def close_input(f: IO[bytes]) -> None:
    """Close a file from :func:`open_input` (and the file under a gzip reader)."""
    inner = getattr(f, "fileobj", None)
    f.close()
    if inner is not None:
        inner.close()


def split_name(path: str) -> tuple[str, str, str, bool]:
    """``(folder, stem, extension, gzip)`` of an output path: ``out/a.jsonl.gz`` ->
    ``("out", "a", ".jsonl.gz", True)``."""
    folder, name = os.path.split(os.path.abspath(path))
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    stem, ext = os.path.splitext(base)
    if not stem:
        stem, ext = base, ""
    return folder, stem, ext + (".gz" if gz else ""), gz


class RollingFileSink:
    """The file-writing machinery of the file and Parquet sinks (see the module docs).

    Subclasses say how a batch is written: :meth:`_write` (returns the bytes it
    wrote, before compression), and optionally :meth:`_begin` (a new file: a
    header), :meth:`_end` (finish a file) and ``appendable`` (``False``: a file
    cannot be cut back and continued, so every checkpoint finishes the file in
    progress, as Parquet needs).
    """

    batched = True
    checkpoint_role = "files"
    #: whether a file in progress can be cut back to a checkpoint and continued
    appendable = True

    def __init__(self, path: str | os.PathLike[str], *, roll_items: int | None = None,
                 roll_bytes: int | None = None) -> None:
        for name, value in (("roll_items", roll_items), ("roll_bytes", roll_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.path = os.fspath(path)
        self.folder, self.stem, self.ext, self.gzip = split_name(self.path)
        self.roll_items = roll_items
        self.roll_bytes = roll_bytes
        #: whether files are numbered (rolled); under checkpoints a format that cannot be
        #: continued (Parquet) is always numbered: every checkpoint finishes a file
        self.rolling = roll_items is not None or roll_bytes is not None
        self._rolls = self.rolling
        #: items written by this run
        self.written = 0
        #: final names of the files finished (renamed) by this run
        self.finished: list[str] = []
        self._index = 0
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | None = None  # what batches are written to: _raw, or a gzip member over it
        self._tmp: str | None = None  # the file in progress
        self._items = 0  # in the file in progress
        self._bytes = 0
        self._pending: list[tuple[str, str]] = []  # finished files waiting for a checkpoint: (temp, final)
        #: protects _pending and finished: the Loader's calls add to them while a checkpoint's
        #: commit thread renames what an earlier checkpoint prepared
        self._lock = threading.Lock()
        self._attached = False
        self._durable = False

    # ------------------------------------------------------------------ names

    def final_name(self, index: int) -> str:
        if not self.rolling:
            return os.path.join(self.folder, self.stem + self.ext)
        return os.path.join(self.folder, f"{self.stem}-{index:05d}{self.ext}")

    def temp_name(self, index: int) -> str:
        return os.path.join(self.folder, "." + os.path.basename(self.final_name(index)) + ".inprogress")

    def _own_temp(self, name: str) -> bool:
        """Whether ``name`` (in the folder) is a temporary file of this sink."""
        if not (name.startswith(".") and name.endswith(".inprogress")):
            return False
        inner = name[1:-len(".inprogress")]
        if not self.rolling:
            return inner == self.stem + self.ext
        head, _, tail = inner.rpartition("-")
        return head == self.stem and tail.endswith(self.ext) and tail[:-len(self.ext) or None].isdigit()

    # ------------------------------------------------------------------ the Loader's hooks

    def open(self) -> None:
        """A run starts (without checkpoints: from the first file)."""
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"folder {self.folder!r} does not exist")
        self.written = 0
        self.finished = []
        if not self._attached:
            self._index = 0
            self._pending = []
            self._drop_temps(keep=())

    def __call__(self, batch: list[Any]) -> None:
        start = 0
        n = len(batch)
        while start < n:
            if self._out is None:
                if self._raw is None:
                    self._open_file()
                else:
                    self._open_member()  # a file continued after a checkpoint or a restart
            end = n
            if self.roll_items is not None:
                end = min(n, start + self.roll_items - self._items)
            part = batch if start == 0 and end == n else batch[start:end]
            assert self._out is not None
            self._bytes += self._write(self._out, part)
            self._items += len(part)
            self.written += len(part)
            start = end
            if (self.roll_items is not None and self._items >= self.roll_items
                    or self.roll_bytes is not None and self._bytes >= self.roll_bytes):
                self._finish_file()

    def close(self) -> None:
        """The run ends: without checkpoints, finish the file (renamed into place);
        under checkpoints the last checkpoint finishes it (or a restart continues it)."""
        if not self._attached or not self.appendable:
            self._finish_file()  # under checkpoints: renamed by the last one (or dropped by a restart)
        else:
            self._pause_file()

    def result(self) -> int:
        """Items written by this run."""
        return self.written

    # ------------------------------------------------------------------ files

    def _open_file(self) -> None:
        self._tmp = self.temp_name(self._index)
        self._raw = open(self._tmp, "wb")
        self._items = self._bytes = 0
        self._open_member()
        self._begin(self._out)  # type: ignore[arg-type]

    def _open_member(self) -> None:
        assert self._raw is not None
        self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0) if self.gzip else self._raw  # type: ignore[assignment]

    def _end_member(self) -> None:
        """End the gzip member in progress (a file may be cut back after it); flush."""
        if self._out is not None and self._out is not self._raw:
            self._out.close()  # a GzipFile over _raw leaves _raw open
        self._out = None
        if self._raw is not None:
            self._raw.flush()
            if self._durable:
                os.fsync(self._raw.fileno())

    def _pause_file(self) -> None:
        """Close the file in progress without finishing it (a later checkpoint or run does)."""
        if self._raw is None:
            return
        self._end_member()
        self._raw.close()
        self._raw = None

    def _finish_file(self) -> None:
        """Finish the file in progress: without checkpoints rename it now, else at the next commit."""
        if self._tmp is None:
            return
        if self._raw is not None:
            try:
                if self._out is not None:
                    self._end(self._out)
                self._end_member()
            except BaseException:  # the file cannot be finished: close it, never rename it
                self._raw.close()
                self._raw = self._out = None
                self._tmp = None
                raise
            self._raw.close()
            self._raw = None
        done = (self._tmp, self.final_name(self._index))
        self._tmp = None
        self._index += 1
        if self._attached:
            with self._lock:
                self._pending.append(done)
        else:
            self._rename([done])

    def _rename(self, moves: list[tuple[str, str]]) -> None:
        for tmp, final in moves:
            if os.path.exists(tmp):
                os.replace(tmp, final)
            with self._lock:
                self.finished.append(final)
        if moves and self._durable:
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _drop_temps(self, keep: Iterable[str]) -> None:
        """Delete this sink's temporary files, but those in ``keep``."""
        keep = {os.path.abspath(k) for k in keep}
        for name in os.listdir(self.folder):
            full = os.path.join(self.folder, name)
            if self._own_temp(name) and full not in keep:
                os.remove(full)

    # ------------------------------------------------------------------ what subclasses write

    def _begin(self, out: IO[bytes]) -> None:
        """A new file starts (a CSV header)."""

    def _write(self, out: IO[bytes], batch: list[Any]) -> int:
        """Write ``batch``; returns the bytes written (before compression)."""
        raise NotImplementedError

    def _end(self, out: IO[bytes]) -> None:
        """The file is being finished (a Parquet footer)."""

    # ------------------------------------------------------------------ checkpoints (see reflux.checkpoint.protocol)

    def checkpoint_attach(self, run_id: str, key: str, durable: bool = False) -> None:
        self._attached = True
        self._durable = durable
        self.rolling = self._rolls or not self.appendable

    def checkpoint_recover(self, prepared: Any) -> None:
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"folder {self.folder!r} does not exist")
        self._pending = []
        self._tmp = None
        if prepared is None:
            self._index = 0
            self._drop_temps(keep=())
            return
        self._rename([(tmp, final) for tmp, final in prepared["pending"]])
        self.finished = []
        self._index = prepared["index"]
        current = prepared["current"]
        self._drop_temps(keep=[current[0]] if current else [])
        if current:
            tmp, size, items, nbytes = current
            if not os.path.exists(tmp):
                raise FileNotFoundError(f"the file in progress at the checkpoint, {tmp!r}, is gone")
            with open(tmp, "r+b") as f:
                f.truncate(size)
            self._raw = open(tmp, "ab")
            self._tmp = tmp
            self._items, self._bytes = items, nbytes

    def checkpoint_prepare(self, checkpoint: int, final: bool) -> Any:
        if final or not self.appendable:
            self._finish_file()
        elif self._raw is not None or self._tmp is not None:
            self._end_member()
        current = None
        if self._tmp is not None:
            size = self._raw.tell() if self._raw is not None else os.path.getsize(self._tmp)
            current = (self._tmp, size, self._items, self._bytes)
        if self._raw is not None and self._out is None:
            self._open_member()  # the next batch starts a new gzip member
        with self._lock:
            pending = list(self._pending)
        return {"index": self._index, "current": current, "pending": pending}

    def checkpoint_commit(self, checkpoint: int, prepared: Any) -> None:
        moves = [(tmp, final) for tmp, final in prepared["pending"]]
        self._rename(moves)
        done = set(moves)
        with self._lock:
            self._pending = [m for m in self._pending if m not in done]

    def checkpoint_detach(self, rollback: bool) -> None:
        if self._raw is not None:
            self._end_member()
            self._raw.close()
            self._raw = None
        self._out = None
        self._attached = False
        self.rolling = self._rolls
