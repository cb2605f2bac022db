# cython: language_level=3, freethreading_compatible=True, embedsignature=True, embedsignature.format=clinic, boundscheck=False, wraparound=False, cdivision=True
"""Record plug-ins: user code that reflux runs without the GIL, a batch at a time.

Three lanes reach the same C ABI (``include/reflux_core/abi.h``):

``CTransform`` / ``CFilter`` / ``CKey``
    Cython base classes.  Subclass one in a ``.pyx`` built against
    ``reflux_core.get_include()`` and override its ``cdef ... noexcept nogil``
    batch method (declared in ``transform.pxd``).
A C ABI struct
    C or C++ code fills a ``reflux_plugin`` struct and exposes it as a
    PyCapsule named ``"reflux_core.plugin"`` in the ``__reflux_plugin__``
    attribute of any object (the Cython classes do exactly that).
``RecordPump``
    Moves records from a :class:`~reflux_core.channel.RecordChannel` through
    a plug-in into one or more record channels, entirely without the GIL.

:func:`plugin_header` / :func:`plugin_info` read a capsule;
:func:`run_transform`, :func:`run_filter` and :func:`run_key` run a plug-in over
numpy buffers with the GIL released (the Python layer, ``reflux.plugins``,
builds on these and checks the ABI version and size first).
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.pycapsule cimport (PyCapsule_New, PyCapsule_GetPointer, PyCapsule_IsValid,
                                 PyCapsule_GetContext, PyCapsule_SetContext, PyCapsule_Destructor)
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from reflux_core.channel cimport RecordChannel

cdef extern from "reflux_core/atomics.h" nogil:
    # private to the core (never in a .pxd)
    uint32_t rx_load32_acquire(uint32_t* p)
    void rx_store32_release(uint32_t* p, uint32_t v)
    uint32_t rx_xchg32_acqrel(uint32_t* p, uint32_t v)
    uint64_t rx_load64_relaxed(uint64_t* p)
    void rx_store64_relaxed(uint64_t* p, uint64_t v)
    uint64_t rx_add64_relaxed(uint64_t* p, uint64_t v)
    uint64_t rx_sub64_relaxed(uint64_t* p, uint64_t v)

cdef extern from "reflux_core/park.h" nogil:
    int64_t rx_now_ns()

__all__ = [
    "ABI_VERSION", "CAPSULE_NAME", "CPlugin", "CTransform", "CFilter", "CKey", "RecordPump",
    "RecordError", "plugin_header", "plugin_info", "run_transform", "run_filter", "run_key",
    "KIND_TRANSFORM", "KIND_FILTER", "KIND_KEY", "ERR_NOT_IMPLEMENTED", "ERR_ROUTE", "ERR_BAD_RETURN",
    "STRUCT_SIZE", "gil_wanted", "plugin_nogil_ns",
]

# Threads that ran a plug-in without the GIL and are taking it back now.  On a
# GIL build a thread running Python keeps the GIL until the interpreter's switch
# interval (5 ms) makes it let go, so a plug-in's thread would idle that long
# after every chunk; the pool's Python lane reads this between its steps and
# hands the GIL over at once.  Relaxed: a scheduling hint, never a correctness
# condition (a missed hint costs one switch interval).
cdef uint64_t _gil_wanted = 0
# Nanoseconds plug-ins ran without the GIL in run_transform/run_filter/run_key,
# summed over all threads: the pool hands the GIL over to them only while they
# do a noticeable share of the work.  Relaxed: a statistic.
cdef uint64_t _nogil_ns = 0


cdef inline void _plugin_ran(int64_t t0) noexcept nogil:
    """After a plug-in's call, still without the GIL: count its time, and announce
    that this thread is about to take the GIL back (undone by _gil_taken)."""
    rx_add64_relaxed(&_nogil_ns, <uint64_t>(rx_now_ns() - t0))
    rx_add64_relaxed(&_gil_wanted, 1)


cdef inline void _gil_taken() noexcept nogil:
    rx_sub64_relaxed(&_gil_wanted, 1)


def gil_wanted():
    """How many threads wait to take the GIL back after a plug-in's work (a hint)."""
    return rx_load64_relaxed(&_gil_wanted)


def plugin_nogil_ns():
    """Nanoseconds plug-ins have run without the GIL in this process, over all threads."""
    return rx_load64_relaxed(&_nogil_ns)

#: version of the C ABI this module was compiled with (== reflux_core.ABI_VERSION)
ABI_VERSION = REFLUX_ABI_VERSION
#: sizeof(reflux_plugin) in this build
STRUCT_SIZE = sizeof(reflux_plugin)
#: name of the PyCapsule holding a ``reflux_plugin*``
CAPSULE_NAME = (<bytes>REFLUX_PLUGIN_CAPSULE).decode("ascii")
KIND_TRANSFORM = REFLUX_PLUGIN_TRANSFORM
KIND_FILTER = REFLUX_PLUGIN_FILTER
KIND_KEY = REFLUX_PLUGIN_KEY
ERR_NOT_IMPLEMENTED = REFLUX_ERR_NOT_IMPLEMENTED
ERR_ROUTE = REFLUX_ERR_ROUTE
ERR_BAD_RETURN = REFLUX_ERR_BAD_RETURN


class RecordError(Exception):
    """A plug-in reported an error code for a record.

    ``code`` is the plug-in's error code, ``index`` the record's position in
    its batch (or chunk), ``record`` the record (a numpy record, or ``None``),
    ``node`` the node's name (or ``None``)."""

    def __init__(self, message, *, code=0, index=-1, record=None, node=None):
        super().__init__(message)
        self.code = code
        self.index = index
        self.record = record
        self.node = node

    def __reduce__(self):
        return (_rebuild_record_error, (self.args[0] if self.args else "", self.code, self.index,
                                        self.record, self.node))


def _rebuild_record_error(message, code, index, record, node):
    return RecordError(message, code=code, index=index, record=record, node=node)


# ---------------------------------------------------------------- trampolines
# The C ABI calls these with `self` = the CPlugin object (a borrowed pointer;
# the capsule holds a reference).  The cast below is a plain pointer cast in
# C: no reference counting, so it is valid without the GIL.

cdef int64_t _call_transform(void* self, const void* src, int64_t n, void* dst,
                             reflux_status* status) noexcept nogil:
    return (<CTransform>self).transform(<const char*>src, <Py_ssize_t>n, <char*>dst, status)


cdef int64_t _call_filter(void* self, const void* src, int64_t n, uint8_t* keep,
                          reflux_status* status) noexcept nogil:
    return (<CFilter>self).keep(<const char*>src, <Py_ssize_t>n, keep, status)


cdef int64_t _call_key(void* self, const void* src, int64_t n, int64_t* keys,
                       reflux_status* status) noexcept nogil:
    (<CKey>self).key(<const char*>src, <Py_ssize_t>n, keys, status)
    return 0


cdef void _capsule_release(object capsule) noexcept:
    # the capsule's context is the plug-in object it points into (a reference)
    cdef void* ctx = PyCapsule_GetContext(capsule)
    if ctx != NULL:
        Py_DECREF(<object>ctx)


# ---------------------------------------------------------------- base classes

cdef class CPlugin:
    """Base of :class:`CTransform`, :class:`CFilter` and :class:`CKey`.

    ``in_dtype`` is the numpy dtype of input records; ``out_dtype`` that of
    output records (a CTransform's; default: ``in_dtype``).  Subclasses that
    define ``__init__`` must call ``super().__init__(in_dtype, out_dtype)``.
    """

    def __cinit__(self, *args, **kwargs):
        self.plugin.abi_version = REFLUX_ABI_VERSION
        self.plugin.struct_size = sizeof(reflux_plugin)
        self.plugin.kind = 0
        self.plugin.flags = 0
        self.plugin.in_itemsize = 0
        self.plugin.out_itemsize = 0
        self.plugin.name = NULL
        self.plugin.self = <void*>self
        self.plugin.transform = NULL
        self.plugin.filter = NULL
        self.plugin.key = NULL

    def __init__(self, in_dtype, out_dtype=None, *, name=None):
        import numpy as np
        cls = type(self).__name__
        ind = np.dtype(in_dtype)
        outd = ind if out_dtype is None else np.dtype(out_dtype)
        for label, dt in (("in_dtype", ind), ("out_dtype", outd)):
            if dt.hasobject or dt.itemsize < 1 or dt.subdtype is not None:
                raise TypeError(f"{cls}: {label} {dt} must be a plain fixed-size record dtype "
                                "(no Python objects, no bare sub-array)")
        if self.plugin.kind != REFLUX_PLUGIN_TRANSFORM and outd != ind:
            raise TypeError(f"{cls}: only a CTransform has an out_dtype different from its in_dtype")
        self.in_dtype = ind
        self.out_dtype = outd
        self.plugin.in_itemsize = ind.itemsize
        self.plugin.out_itemsize = outd.itemsize
        self._name = (name if name is not None else cls).encode("utf-8", "replace")
        self.plugin.name = self._name

    @property
    def reflux_name(self):
        """The name a node gets by default (the class name, or ``name=``)."""
        return self._name.decode("utf-8", "replace") if self._name is not None else type(self).__name__

    @property
    def __reflux_plugin__(self):
        """A PyCapsule named ``"reflux_core.plugin"`` pointing at this plug-in's
        ``reflux_plugin`` struct; it keeps the object alive."""
        if self.plugin.in_itemsize == 0:
            raise TypeError(f"{type(self).__name__}: not initialised (a subclass __init__ must "
                            "call super().__init__(in_dtype, out_dtype))")
        cap = PyCapsule_New(<void*>&self.plugin, REFLUX_PLUGIN_CAPSULE, <PyCapsule_Destructor>_capsule_release)
        Py_INCREF(self)
        PyCapsule_SetContext(cap, <void*>self)
        return cap

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__}: a C plug-in cannot be pickled")

    def __repr__(self):
        return (f"<{type(self).__name__} {self.reflux_name!r} in={self.in_dtype} "
                f"out={self.out_dtype}>")


cdef class CTransform(CPlugin):
    """Cython record transformer: override ``transform`` (see ``transform.pxd``).

    Runs without the GIL, once per batch; each input record gives zero
    (dropped) or one output record."""

    def __cinit__(self, *args, **kwargs):
        self.plugin.kind = REFLUX_PLUGIN_TRANSFORM
        self.plugin.transform = _call_transform

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        status.index = 0
        status.error = REFLUX_ERR_NOT_IMPLEMENTED
        return 0


cdef class CFilter(CPlugin):
    """Cython record filter: override ``keep`` (see ``transform.pxd``)."""

    def __cinit__(self, *args, **kwargs):
        self.plugin.kind = REFLUX_PLUGIN_FILTER
        self.plugin.filter = _call_filter

    cdef Py_ssize_t keep(self, const char* src, Py_ssize_t n, uint8_t* keep,
                         reflux_status* status) noexcept nogil:
        status.index = 0
        status.error = REFLUX_ERR_NOT_IMPLEMENTED
        return 0


cdef class CKey(CPlugin):
    """Cython routing key: override ``key`` (see ``transform.pxd``)."""

    def __cinit__(self, *args, **kwargs):
        self.plugin.kind = REFLUX_PLUGIN_KEY
        self.plugin.key = _call_key

    cdef void key(self, const char* src, Py_ssize_t n, int64_t* keys,
                  reflux_status* status) noexcept nogil:
        status.index = 0
        status.error = REFLUX_ERR_NOT_IMPLEMENTED


# ---------------------------------------------------------------- reading a capsule

cdef const reflux_plugin* _raw(object capsule) except NULL:
    if not PyCapsule_IsValid(capsule, REFLUX_PLUGIN_CAPSULE):
        raise TypeError(f"expected a PyCapsule named {CAPSULE_NAME!r}, got {capsule!r:.80}")
    return <const reflux_plugin*>PyCapsule_GetPointer(capsule, REFLUX_PLUGIN_CAPSULE)


cdef const reflux_plugin* _checked(object capsule) except NULL:
    """The struct, after the version and size check (callers in reflux.plugins
    check first and name the node; this guards direct use)."""
    cdef const reflux_plugin* p = _raw(capsule)
    if p.abi_version != REFLUX_ABI_VERSION or p.struct_size != sizeof(reflux_plugin):
        raise TypeError(f"plug-in built for reflux ABI {p.abi_version} (struct of {p.struct_size} "
                        f"bytes); this reflux_core has ABI {REFLUX_ABI_VERSION} "
                        f"({sizeof(reflux_plugin)} bytes)")
    return p


def plugin_header(capsule):
    """``(abi_version, struct_size)`` of the plug-in in ``capsule``: only the
    two leading fields, which every ABI version keeps in place."""
    cdef const reflux_plugin* p = _raw(capsule)
    return int(p.abi_version), int(p.struct_size)


def plugin_info(capsule):
    """Everything in the plug-in's struct (after the ABI check) as a dict:
    ``kind``, ``in_itemsize``, ``out_itemsize``, ``name``, ``has_function``."""
    cdef const reflux_plugin* p = _checked(capsule)
    cdef bint has_fn = (
        (p.kind == REFLUX_PLUGIN_TRANSFORM and p.transform != NULL)
        or (p.kind == REFLUX_PLUGIN_FILTER and p.filter != NULL)
        or (p.kind == REFLUX_PLUGIN_KEY and p.key != NULL))
    return {
        "abi_version": int(p.abi_version),
        "struct_size": int(p.struct_size),
        "kind": int(p.kind),
        "flags": int(p.flags),
        "in_itemsize": int(p.in_itemsize),
        "out_itemsize": int(p.out_itemsize),
        "name": None if p.name == NULL else (<bytes>p.name).decode("utf-8", "replace"),
        "has_function": bool(has_fn),
    }


# ---------------------------------------------------------------- running over buffers

cdef Py_ssize_t _records(Py_buffer* view, int64_t itemsize, str what) except -1:
    if itemsize <= 0 or view.len % itemsize != 0:
        raise ValueError(f"{what}: buffer of {view.len} bytes is not a whole number of "
                         f"{itemsize}-byte records")
    return view.len // itemsize


def run_transform(capsule, src, dst):
    """Run a transform plug-in over ``src`` into ``dst`` (C-contiguous buffers
    of n input records and room for n output records) with the GIL released.

    Returns ``(n_out, error, index)``: outputs written, the error code (0 if
    none) and the failing record's index (n when none failed)."""
    cdef const reflux_plugin* p = _checked(capsule)
    cdef Py_buffer sv, dv
    cdef reflux_status st
    cdef int64_t n, n_out, t0
    if p.kind != REFLUX_PLUGIN_TRANSFORM or p.transform == NULL:
        raise TypeError("run_transform: the plug-in is not a transform")
    PyObject_GetBuffer(src, &sv, PyBUF_C_CONTIGUOUS)
    try:
        PyObject_GetBuffer(dst, &dv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            n = _records(&sv, p.in_itemsize, "run_transform: src")
            if dv.len < n * p.out_itemsize:
                raise ValueError(f"run_transform: dst has room for fewer than {n} records")
            st.index = n
            st.error = 0
            st.reserved = 0
            with nogil:
                t0 = rx_now_ns()
                n_out = p.transform(p.self, sv.buf, n, dv.buf, &st)
                _plugin_ran(t0)
            _gil_taken()
        finally:
            PyBuffer_Release(&dv)
    finally:
        PyBuffer_Release(&sv)
    return _result(n_out, &st, n, "transform")


def run_filter(capsule, src, keep):
    """Run a filter plug-in over ``src``, writing one byte per record into
    ``keep`` (1 keep, 0 drop), with the GIL released.

    Returns ``(n_kept, error, index)``."""
    cdef const reflux_plugin* p = _checked(capsule)
    cdef Py_buffer sv, kv
    cdef reflux_status st
    cdef int64_t n, n_kept, t0
    if p.kind != REFLUX_PLUGIN_FILTER or p.filter == NULL:
        raise TypeError("run_filter: the plug-in is not a filter")
    PyObject_GetBuffer(src, &sv, PyBUF_C_CONTIGUOUS)
    try:
        PyObject_GetBuffer(keep, &kv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            n = _records(&sv, p.in_itemsize, "run_filter: src")
            if kv.len < n:
                raise ValueError(f"run_filter: keep has fewer than {n} bytes")
            st.index = n
            st.error = 0
            st.reserved = 0
            with nogil:
                t0 = rx_now_ns()
                n_kept = p.filter(p.self, sv.buf, n, <uint8_t*>kv.buf, &st)
                _plugin_ran(t0)
            _gil_taken()
        finally:
            PyBuffer_Release(&kv)
    finally:
        PyBuffer_Release(&sv)
    return _result(n_kept, &st, n, "filter")


def run_key(capsule, src, keys):
    """Run a key plug-in over ``src``, writing one int64 key per record into
    ``keys``, with the GIL released.

    Returns ``(0, error, index)``."""
    cdef const reflux_plugin* p = _checked(capsule)
    cdef Py_buffer sv, kv
    cdef reflux_status st
    cdef int64_t n, r, t0
    if p.kind != REFLUX_PLUGIN_KEY or p.key == NULL:
        raise TypeError("run_key: the plug-in is not a key function")
    PyObject_GetBuffer(src, &sv, PyBUF_C_CONTIGUOUS)
    try:
        PyObject_GetBuffer(keys, &kv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            n = _records(&sv, p.in_itemsize, "run_key: src")
            if kv.len < n * <Py_ssize_t>sizeof(int64_t):
                raise ValueError(f"run_key: keys has room for fewer than {n} int64 keys")
            st.index = n
            st.error = 0
            st.reserved = 0
            with nogil:
                t0 = rx_now_ns()
                r = p.key(p.self, sv.buf, n, <int64_t*>kv.buf, &st)
                _plugin_ran(t0)
            _gil_taken()
        finally:
            PyBuffer_Release(&kv)
    finally:
        PyBuffer_Release(&sv)
    return _result(0, &st, n, "key")


cdef tuple _result(int64_t value, reflux_status* st, int64_t n, str what):
    if st.error == 0:
        st.index = n
    elif st.index < 0 or st.index >= n:
        raise RuntimeError(f"{what} plug-in reported error {st.error} at index {st.index}, "
                           f"outside the batch of {n}")
    if value < 0 or value > (st.index if st.error else n):
        raise RuntimeError(f"{what} plug-in returned {value} for a batch of {n} "
                           f"(error {st.error} at {st.index})")
    return int(value), int(st.error), int(st.index)


# ---------------------------------------------------------------- the nogil pump

cdef inline bint _stopping(RecordPump self) noexcept nogil:
    # acquire: pairs with the release store in stop_nogil(), so whatever the
    # stopping thread wrote before stop() is visible once the flag is seen
    return rx_load32_acquire(&self.stop_flag) != 0


@cython.final
cdef class RecordPump:
    """Moves records from ``src`` through ``plugin`` into ``dst`` with no GIL.

    ``plugin`` is any object with a ``__reflux_plugin__`` capsule (a
    :class:`CTransform`, :class:`CFilter` or :class:`CKey`, or a C plug-in).
    ``dst`` is a RecordChannel, or for a key plug-in a list of them: a
    record whose key is ``k`` goes to ``dst[k]``; a key outside
    ``range(len(dst))`` goes to ``default`` if given, else it is an error
    (code ``ERR_ROUTE``).

    :meth:`run` releases the GIL and loops (pop a batch of up to
    ``batch_size`` records, run the plug-in once, push the outputs) until the
    input ends (then it closes every output, unless ``close_outputs=False``:
    several pumps sharing MPMC channels leave closing to their owner),
    :meth:`stop` is called, an output is closed by its consumer, or a record
    fails (``on_error``).  A wait lasts at most ``slice`` seconds at a time,
    so :meth:`stop` is seen, and about every ``slice`` seconds the loop takes
    the GIL once to run signal handlers (Ctrl-C).  From Cython, the
    ``run_nogil()`` method runs one such slice without the GIL (see
    ``transform.pxd``), so a worker loop can interleave pumps with other work.

    Counters (records): ``received == emitted + filtered + errors + dropped``
    once :meth:`run` returned; ``dropped`` counts records abandoned by a stop
    or a closed output.
    """

    def __cinit__(self, *args, **kwargs):
        self.inbuf = NULL
        self.outbuf = NULL
        self.mask = NULL
        self.keys = NULL
        self.out_ptrs = NULL
        self.errbuf = NULL

    def __init__(self, RecordChannel src not None, plugin, dst, *, Py_ssize_t batch_size=256,
                 double slice=0.05, bint close_outputs=True, RecordChannel default=None):
        cdef Py_ssize_t i
        if self.inbuf != NULL:
            raise RuntimeError("RecordPump: already initialised")
        if batch_size < 1:
            raise ValueError(f"RecordPump: batch_size must be >= 1, got {batch_size}")
        if not slice > 0:
            raise ValueError(f"RecordPump: slice must be > 0 seconds, got {slice}")
        cap = getattr(plugin, "__reflux_plugin__", None)
        if cap is None:
            raise TypeError(f"RecordPump: {plugin!r:.80} is not a reflux plug-in "
                            "(no __reflux_plugin__ capsule)")
        self.plug = _checked(cap)
        self.plugin_owner = (plugin, cap)
        outs = list(dst) if isinstance(dst, (list, tuple)) else [dst]
        if not outs:
            raise ValueError("RecordPump: no output channel")
        for ch in outs:
            if not isinstance(ch, RecordChannel):
                raise TypeError(f"RecordPump: outputs must be RecordChannels, got {ch!r:.80}")
        if self.plug.kind != REFLUX_PLUGIN_KEY and (len(outs) != 1 or default is not None):
            raise ValueError("RecordPump: only a key plug-in feeds several outputs or a default")
        self.n_out = len(outs)
        self.default_out = -1
        if default is not None:
            self.default_out = len(outs)
            outs.append(default)
        if src.itemsize != self.plug.in_itemsize:
            raise TypeError(f"RecordPump: src holds {src.itemsize}-byte records, the plug-in "
                            f"takes {self.plug.in_itemsize}")
        out_size = self.plug.out_itemsize if self.plug.kind == REFLUX_PLUGIN_TRANSFORM else self.plug.in_itemsize
        for ch in outs:
            if (<RecordChannel>ch).itemsize != out_size:
                raise TypeError(f"RecordPump: an output holds {(<RecordChannel>ch).itemsize}-byte "
                                f"records, the plug-in makes {out_size}")
        self.src = src
        self.outputs = outs
        self.batch = batch_size
        self.slice_s = slice
        self.close_outputs = close_outputs
        self.out_ptrs = <void**>PyMem_Malloc(len(outs) * sizeof(void*))
        self.inbuf = <char*>PyMem_Malloc(batch_size * self.plug.in_itemsize)
        self.outbuf = <char*>PyMem_Malloc(batch_size * max(out_size, self.plug.in_itemsize))
        self.mask = <uint8_t*>PyMem_Malloc(batch_size)
        self.keys = <int64_t*>PyMem_Malloc(batch_size * sizeof(int64_t))
        self.errbuf = <char*>PyMem_Malloc(self.plug.in_itemsize)
        if (self.out_ptrs == NULL or self.inbuf == NULL or self.outbuf == NULL or self.mask == NULL
                or self.keys == NULL or self.errbuf == NULL):
            raise MemoryError("RecordPump: cannot allocate its buffers")
        for i in range(len(outs)):
            self.out_ptrs[i] = <void*>outs[i]   # borrowed: self.outputs holds them
        self.got = 0
        self.pos = 0

    def __dealloc__(self):
        PyMem_Free(self.inbuf)
        PyMem_Free(self.outbuf)
        PyMem_Free(self.mask)
        PyMem_Free(self.keys)
        PyMem_Free(self.out_ptrs)
        PyMem_Free(self.errbuf)

    # -- counters (written only by the thread running the pump; read from
    # any thread as a progress snapshot: relaxed loads, exact once run() returned)

    @property
    def received(self):
        """Records taken from the input."""
        return rx_load64_relaxed(&self.n_received)

    @property
    def emitted(self):
        """Records pushed to the output(s)."""
        return rx_load64_relaxed(&self.n_emitted)

    @property
    def filtered(self):
        """Records the plug-in dropped (filter, or a transform writing no output)."""
        return rx_load64_relaxed(&self.n_filtered)

    @property
    def errors(self):
        """Records the plug-in failed on."""
        return rx_load64_relaxed(&self.n_errors)

    @property
    def dropped(self):
        """Records abandoned by a stop or a closed output."""
        return rx_load64_relaxed(&self.n_dropped)

    @property
    def error_code(self):
        """The error code of the last failing record (0 if none failed)."""
        return self.last_error

    def error_record(self):
        """A copy of the last failing record, as ``bytes`` (``None`` if none failed)."""
        if self.last_error == 0:
            return None
        return self.errbuf[:self.plug.in_itemsize]

    # -- the loop

    cdef void stop_nogil(self) noexcept nogil:
        # release: pairs with the acquire load in _stopping()
        rx_store32_release(&self.stop_flag, 1)

    def stop(self):
        """Ask :meth:`run` to return soon (within one batch or ``slice``); safe from any thread."""
        self.stop_nogil()

    cdef pump_status run_nogil(self) noexcept nogil:
        cdef const reflux_plugin* p = self.plug
        cdef reflux_status st
        cdef Py_ssize_t n, i, j, kept, rest, port, size = p.in_itemsize
        cdef int64_t r
        cdef int pushed
        cdef int64_t yield_at = rx_now_ns() + <int64_t>(self.slice_s * 1e9)
        while True:
            if self.pos >= self.got:
                if _stopping(self):
                    return PUMP_STOPPED
                if rx_now_ns() >= yield_at:
                    return PUMP_YIELD
                r = self.src.pop_records(self.inbuf, self.batch, self.slice_s)
                if r == 0:
                    continue
                if r < 0:
                    if self.close_outputs:
                        for i in range(self.n_out + (self.default_out >= 0)):
                            (<RecordChannel>self.out_ptrs[i]).close_nogil()
                    return PUMP_END
                self.got = r
                self.pos = 0
                _count(&self.n_received, r)
            rest = self.got - self.pos
            st.index = rest
            st.error = 0
            st.reserved = 0
            if p.kind == REFLUX_PLUGIN_TRANSFORM:
                r = p.transform(p.self, self.inbuf + self.pos * size, rest, self.outbuf, &st)
                n = st.index if st.error != 0 else rest
                if st.error != 0 and (n < 0 or n >= rest) or r < 0 or r > n:
                    # a broken plug-in: fail the first record and go on after it
                    return _fail_at(self, self.pos, REFLUX_ERR_BAD_RETURN)
                _count(&self.n_filtered, n - r)
                pushed = _push(self, 0, self.outbuf, r)
            elif p.kind == REFLUX_PLUGIN_FILTER:
                p.filter(p.self, self.inbuf + self.pos * size, rest, self.mask, &st)
                n = st.index if st.error != 0 else rest
                if st.error != 0 and (n < 0 or n >= rest):
                    return _fail_at(self, self.pos, REFLUX_ERR_BAD_RETURN)
                kept = 0
                for i in range(n):
                    if self.mask[i]:
                        memcpy(self.outbuf + kept * size, self.inbuf + (self.pos + i) * size, size)
                        kept += 1
                _count(&self.n_filtered, n - kept)
                pushed = _push(self, 0, self.outbuf, kept)
            else:
                p.key(p.self, self.inbuf + self.pos * size, rest, self.keys, &st)
                n = st.index if st.error != 0 else rest
                if st.error != 0 and (n < 0 or n >= rest):
                    return _fail_at(self, self.pos, REFLUX_ERR_BAD_RETURN)
                pushed = 0
                i = 0
                while i < n and pushed == 0:
                    if 0 <= self.keys[i] < self.n_out:
                        port = <Py_ssize_t>self.keys[i]
                    elif self.default_out >= 0:
                        port = self.default_out
                    else:
                        # a key naming no output fails like a plug-in error
                        st.error = REFLUX_ERR_ROUTE
                        n = i
                        break
                    # a run of equal keys goes out in one push
                    j = i + 1
                    while j < n and self.keys[j] == self.keys[i]:
                        j += 1
                    pushed = _push(self, port, self.inbuf + (self.pos + i) * size, j - i)
                    i = j
                if pushed != 0:
                    # records of this batch after the interrupted run never went out
                    _count(&self.n_dropped, n - i)
            if pushed != 0:
                self.pos += n
                if st.error != 0:
                    self.pos += 1
                    _count(&self.n_dropped, 1)
                return _drop_rest(self, PUMP_STOPPED if pushed == 1 else PUMP_CLOSED)
            if st.error != 0:
                return _fail_at(self, self.pos + n, st.error)
            self.pos = self.got

    def run(self, on_error="raise", name=None):
        """Run the pump with the GIL released until it ends; returns
        ``"end"``, ``"stopped"`` or ``"closed"``.

        ``on_error``: ``"raise"`` raises :class:`RecordError` at the first
        failing record (the pump can be run again to go on after it);
        ``"skip"`` counts failures in ``errors`` and goes on; a callable is
        called as ``on_error(record_bytes, code)`` with the GIL, then the pump
        goes on.  ``name`` names the node in messages.  One thread at a time.
        """
        if self.inbuf == NULL:
            raise RuntimeError("RecordPump: not initialised")
        if on_error not in ("raise", "skip") and not callable(on_error):
            raise ValueError(f"RecordPump: on_error must be 'raise', 'skip' or a callable, got {on_error!r}")
        # acq_rel exchange: pairs with the release store below, so a later
        # run() in another thread sees everything this run wrote
        if rx_xchg32_acqrel(&self.running, 1):
            raise RuntimeError("RecordPump: run() is already running in another thread")
        try:
            return self._run(on_error, name)
        finally:
            rx_store32_release(&self.running, 0)

    def _run(self, on_error, name):
        """The body of :meth:`run` (which guards it)."""
        cdef pump_status status
        while True:
            with nogil:
                status = self.run_nogil()
            if status == PUMP_YIELD:
                PyErr_CheckSignals()  # Ctrl-C reaches a pump run from the main thread
                continue
            if status == PUMP_ERROR:
                if on_error == "skip":
                    continue
                record = self.error_record()
                if on_error == "raise":
                    who = f"{name}: " if name else ""
                    raise RecordError(f"{who}plug-in {_plugin_name(self.plug)} failed on a record "
                                      f"with error code {self.last_error}",
                                      code=self.last_error, record=record, node=name)
                on_error(record, self.last_error)
                continue
            return {PUMP_END: "end", PUMP_STOPPED: "stopped", PUMP_CLOSED: "closed"}[status]


cdef inline void _count(uint64_t* counter, int64_t v) noexcept nogil:
    # single writer (the pump's thread), so load + store is enough; relaxed
    # atomics because other threads read snapshots (the counter properties);
    # nothing is published through them, so no ordering is needed
    rx_store64_relaxed(counter, rx_load64_relaxed(counter) + <uint64_t>v)


cdef int _push(RecordPump self, Py_ssize_t port, const char* buf, Py_ssize_t n) noexcept nogil:
    """Push n records to one output, waiting in slices: 0 done, 1 stopped, 2
    output closed.  Records that could not go in are counted as dropped."""
    # a borrowed pointer (self.outputs holds the channel): a cast, no reference
    cdef void* ch = self.out_ptrs[port]
    cdef Py_ssize_t done = 0, r
    cdef Py_ssize_t size = (<RecordChannel>ch).itemsize
    while done < n:
        r = (<RecordChannel>ch).push_records(buf + done * size, n - done, self.slice_s)
        if r < 0:
            _count(&self.n_dropped, n - done)
            return 2
        done += r
        _count(&self.n_emitted, r)
        if done < n and _stopping(self):
            _count(&self.n_dropped, n - done)
            return 1
    return 0


cdef pump_status _fail_at(RecordPump self, Py_ssize_t i, int32_t code) noexcept nogil:
    """Record i of the input buffer failed: keep a copy, count it, resume after it."""
    memcpy(self.errbuf, self.inbuf + i * self.plug.in_itemsize, self.plug.in_itemsize)
    self.last_error = code
    _count(&self.n_errors, 1)
    self.pos = i + 1
    return PUMP_ERROR


cdef pump_status _drop_rest(RecordPump self, pump_status status) noexcept nogil:
    _count(&self.n_dropped, self.got - self.pos)
    self.pos = self.got
    return status


cdef str _plugin_name(const reflux_plugin* p):
    return repr("?" if p.name == NULL else (<bytes>p.name).decode("utf-8", "replace"))
