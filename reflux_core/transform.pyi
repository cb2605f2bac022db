"""Type stubs of reflux_core.transform (compiled): record plug-ins and the record pump.

The plug-in classes are subclassed in Cython (their batch methods are
``cdef``, declared in ``transform.pxd``); from Python they are built, handed
to nodes and inspected.
"""
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, TypedDict, final

import numpy as np
import numpy.typing as npt
from reflux_core.channel import RecordChannel
from typing_extensions import CapsuleType

__all__ = [
    "ABI_VERSION", "CAPSULE_NAME", "CPlugin", "CTransform", "CFilter", "CKey", "RecordPump",
    "RecordError", "plugin_header", "plugin_info", "run_transform", "run_filter", "run_key",
    "KIND_TRANSFORM", "KIND_FILTER", "KIND_KEY", "ERR_NOT_IMPLEMENTED", "ERR_ROUTE", "ERR_BAD_RETURN",
    "STRUCT_SIZE", "gil_wanted", "plugin_nogil_ns",
]

#: version of the C ABI this module was compiled with (== reflux_core.ABI_VERSION)
ABI_VERSION: Final[int]
#: sizeof(reflux_plugin) in this build
STRUCT_SIZE: Final[int]
#: name of the PyCapsule holding a ``reflux_plugin*`` (``"reflux_core.plugin"``)
CAPSULE_NAME: Final[str]
#: ``kind`` of a transform plug-in (REFLUX_PLUGIN_TRANSFORM)
KIND_TRANSFORM: Final[int]
#: ``kind`` of a filter plug-in (REFLUX_PLUGIN_FILTER)
KIND_FILTER: Final[int]
#: ``kind`` of a key plug-in (REFLUX_PLUGIN_KEY)
KIND_KEY: Final[int]
#: error code: the base class method was not overridden
ERR_NOT_IMPLEMENTED: Final[int]
#: error code: a key names no receiver (record pumps)
ERR_ROUTE: Final[int]
#: error code: a plug-in returned an impossible count
ERR_BAD_RETURN: Final[int]

class RecordError(Exception):
    """A plug-in reported an error code for a record."""

    code: int
    index: int
    record: Any
    node: str | None
    def __init__(self, message: str, *, code: int = 0, index: int = -1, record: Any = None,
                 node: str | None = None) -> None: ...

class CPlugin:
    """Base of :class:`CTransform`, :class:`CFilter` and :class:`CKey`."""

    def __init__(self, in_dtype: npt.DTypeLike, out_dtype: npt.DTypeLike | None = None, *,
                 name: str | None = None) -> None: ...
    @property
    def in_dtype(self) -> np.dtype[Any]: ...
    @property
    def out_dtype(self) -> np.dtype[Any]: ...
    @property
    def reflux_name(self) -> str: ...
    @property
    def __reflux_plugin__(self) -> CapsuleType: ...

class CTransform(CPlugin):
    """Cython record transformer: zero or one output record per input record."""

class CFilter(CPlugin):
    """Cython record filter: keeps or drops each record."""

class CKey(CPlugin):
    """Cython record key: the routing key (an int) of each record."""

class _PluginInfo(TypedDict):
    abi_version: int
    struct_size: int
    kind: int
    flags: int
    in_itemsize: int
    out_itemsize: int
    name: str | None
    has_function: bool

def plugin_header(capsule: CapsuleType) -> tuple[int, int]:
    """``(abi_version, struct_size)`` of the plug-in in ``capsule``."""

def plugin_info(capsule: CapsuleType) -> _PluginInfo:
    """Everything in the plug-in's struct (after the ABI check)."""

def run_transform(capsule: CapsuleType, src: Any, dst: Any) -> tuple[int, int, int]:
    """Run a transform plug-in over buffers; ``(n_out, error, index)``."""

def run_filter(capsule: CapsuleType, src: Any, keep: Any) -> tuple[int, int, int]:
    """Run a filter plug-in over buffers; ``(n_kept, error, index)``."""

def run_key(capsule: CapsuleType, src: Any, keys: Any) -> tuple[int, int, int]:
    """Run a key plug-in over buffers; ``(0, error, index)``."""

def gil_wanted() -> int:
    """How many threads wait to take the GIL back after a plug-in's work (a scheduling hint)."""

def plugin_nogil_ns() -> int:
    """Nanoseconds plug-ins have run without the GIL in this process, over all threads."""

@final
class RecordPump:
    """Moves records from a RecordChannel through a plug-in into record channels, without the GIL."""

    def __init__(self, src: RecordChannel, plugin: Any, dst: RecordChannel | Sequence[RecordChannel], *,
                 batch_size: int = 256, slice: float = 0.05, close_outputs: bool = True,
                 default: RecordChannel | None = None) -> None: ...
    @property
    def received(self) -> int: ...
    @property
    def emitted(self) -> int: ...
    @property
    def filtered(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def error_code(self) -> int: ...
    def error_record(self) -> bytes | None: ...
    def stop(self) -> None: ...
    def run(self, on_error: Literal["raise", "skip"] | Callable[[bytes, int], object] = "raise",
            name: str | None = None) -> Literal["end", "stopped", "closed"]: ...
    def _run(self, on_error: Any, name: str | None) -> Literal["end", "stopped", "closed"]: ...
