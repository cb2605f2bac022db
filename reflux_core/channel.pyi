"""Type stubs of reflux_core.channel (compiled): bounded lock-free channels.

Object channels are generic in the items they carry (``SPSCChannel[int]``;
plain ``SPSCChannel`` carries ``Any``).  Record channels carry numpy arrays
of records.
"""
import queue
from collections.abc import Iterable, Iterator
from typing import Any, Final, Generic, Literal, NamedTuple, final

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeVar

_T = TypeVar("_T", default=Any)

__all__ = [
    "Channel", "SPSCChannel", "MPMCChannel", "RecordChannel",
    "ChannelClosed", "Full", "Empty", "EMPTY", "ChannelStats",
    "park_backend", "barrier_mode", "set_wait_policy", "MAX_CAPACITY",
]

class ChannelClosed(Exception):
    """The channel is closed: no more pushes; for consumers, it is also drained."""

class Full(queue.Full):
    """A push timed out because the channel stayed full."""

class Empty(queue.Empty):
    """A pop timed out because the channel stayed empty."""

@final
class _EmptyType:
    def __bool__(self) -> Literal[False]: ...
    def __reduce__(self) -> str: ...

#: returned by ``try_pop()`` when nothing is available (items may be ``None``)
EMPTY: Final[_EmptyType]

class ChannelStats(NamedTuple):
    """Items pushed and popped so far; times a producer waited (full) and a consumer waited (empty)."""

    pushed: int
    popped: int
    full_waits: int
    empty_waits: int

#: largest capacity a channel accepts (slots)
MAX_CAPACITY: Final[int]

class Channel(Generic[_T]):
    """Base class of the object channels (:class:`SPSCChannel`, :class:`MPMCChannel`)."""

    @property
    def capacity(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def stats(self) -> ChannelStats: ...
    def push(self, item: _T, timeout: float | None = None) -> None: ...
    def try_push(self, item: _T) -> bool: ...
    def push_many(self, items: Iterable[_T], timeout: float | None = None) -> int: ...
    def pop(self, timeout: float | None = None) -> _T: ...
    def try_pop(self) -> _T | _EmptyType: ...
    def pop_many(self, max_items: int, timeout: float | None = None) -> list[_T]: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[_T]: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...

class SPSCChannel(Channel[_T]):
    """Single producer, single consumer: the fastest channel."""

    def __init__(self, capacity: int) -> None: ...

class MPMCChannel(Channel[_T]):
    """Any number of producers and consumers."""

    def __init__(self, capacity: int) -> None: ...

class RecordChannel:
    """Bounded channel of fixed-size records described by a numpy dtype."""

    def __init__(self, dtype: npt.DTypeLike, capacity: int, *, mode: Literal["spsc", "mpmc"] = "spsc") -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def itemsize(self) -> int: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def mode(self) -> Literal["spsc", "mpmc"]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def stats(self) -> ChannelStats: ...
    def push(self, records: npt.ArrayLike, timeout: float | None = None) -> int: ...
    def try_push(self, records: npt.ArrayLike) -> int: ...
    def pop(self, max_records: int | None = None, timeout: float | None = None) -> npt.NDArray[np.void]: ...
    def try_pop(self, max_records: int | None = None) -> npt.NDArray[np.void]: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[npt.NDArray[np.void]]: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...

def park_backend() -> Literal["futex", "waitonaddress", "condvar"]:
    """Name of the parking primitive this build uses."""

def barrier_mode() -> Literal["membarrier", "fence"]:
    """How parked threads and the hot path agree on ordering."""

def set_wait_policy(python_ns: int | None = None, nogil_ns: int | None = None) -> tuple[int, int]:
    """Set how long a blocked call spins before it parks, in nanoseconds; returns the previous values."""

def _debug_build() -> int: ...
def _free_threaded_build() -> bool: ...
def _raw_record_channel(capacity: int, itemsize: int, mode: Literal["spsc", "mpmc"] = "mpmc") -> RecordChannel: ...
