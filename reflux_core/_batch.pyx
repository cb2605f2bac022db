# cython: language_level=3
"""Batch loops of the Python lane: a node function over a whole batch, at C speed.

The Python layer's Transformer, Filter and Loader call these once per batch.
They do what a ``for`` loop over the batch would do (call the function on each
item and keep every result in order) and, in the same pass, count the results
that need a second look (the node's special values, anything but ``None``).

Both loops stop at the first item whose call failed, so the node applies its
error policy (retries first) to that item before the next one is called, and
both check a :class:`StopFlag` before each call, so an abandoned run stops
within one call of user code whatever the batch size.
"""
from libc.stdint cimport uint32_t


cdef extern from "reflux_core/atomics.h" nogil:
    uint32_t rx_load32_relaxed(uint32_t* p)
    void rx_store32_relaxed(uint32_t* p, uint32_t v)


cdef class StopFlag:
    """A flag raised once, when a run is abandoned; the batch loops read it
    before each call.

    One 32-bit word, stored and loaded with relaxed atomics: it guards no other
    data, and a loop that sees it one call late only calls user code once more.
    """

    cdef uint32_t value  # 0 until set() (relaxed atomic; pairs with nothing)

    def set(self):
        """Raise the flag (from any thread)."""
        rx_store32_relaxed(&self.value, 1)

    @property
    def is_set(self):
        """``True`` once :meth:`set` was called."""
        return rx_load32_relaxed(&self.value) != 0

    def __repr__(self):
        return f"<StopFlag {'set' if rx_load32_relaxed(&self.value) else 'clear'}>"


#: the outcome a loop returns when it stopped because its StopFlag was set
STOPPED = object()


def call_all(fn, list batch, Py_ssize_t start, list into, error_type, special_type, StopFlag stop not None):
    """Append ``fn(item)`` for the items of ``batch[start:]`` to ``into``, in order,
    up to the first item whose call failed.

    A call failed when it raised (any ``BaseException``) or returned an exact
    ``error_type`` value.  Returns ``(index, outcome, specials, not_none)``:
    the index of the item the loop stopped at and why (its exception or
    ``error_type`` value, or :data:`STOPPED` when ``stop`` was set before its
    call), or ``(-1, None, ...)`` when every call succeeded; ``specials``
    counts the results of exact type ``special_type`` and ``not_none`` the
    results that are not ``None``, among those appended.  Exactly one result
    is appended per item before ``index``.
    """
    cdef Py_ssize_t i, n = len(batch)
    cdef Py_ssize_t specials = 0, not_none = 0
    cdef object item, r
    cdef type te = error_type, ts = special_type
    if start < 0:
        start = 0
    for i in range(start, n):
        if rx_load32_relaxed(&stop.value):
            return i, STOPPED, specials, not_none
        item = batch[i]
        try:
            r = fn(item)
        except BaseException as exc:  # user code: the caller applies the policy (or fails the node)
            return i, exc, specials, not_none
        if type(r) is te:
            return i, r, specials, not_none
        if type(r) is ts:
            specials += 1
        if r is not None:
            not_none += 1
        into.append(r)
    return -1, None, specials, not_none


def keep_all(pred, list batch, Py_ssize_t start, list into, error_type, StopFlag stop not None):
    """Append to ``into``, in order, the items of ``batch[start:]`` for which
    ``pred(item)`` is true, up to the first item whose call failed.

    A call failed when it raised (any ``BaseException``), returned an exact
    ``error_type`` value, or returned a value whose truth test raised.
    Returns ``(index, outcome)``: the index of the item the loop stopped at and
    why (its exception or ``error_type`` value, or :data:`STOPPED`), or
    ``(-1, None)`` when every call succeeded.  No list of flags is built: the
    kept items go straight into ``into``.
    """
    cdef Py_ssize_t i, n = len(batch)
    cdef object item, r
    cdef type te = error_type
    cdef bint keep
    if start < 0:
        start = 0
    for i in range(start, n):
        if rx_load32_relaxed(&stop.value):
            return i, STOPPED
        item = batch[i]
        try:
            r = pred(item)
            if type(r) is te:
                return i, r
            keep = r  # the truth test is user code too (a numpy array's raises)
        except BaseException as exc:  # user code: the caller applies the policy (or fails the node)
            return i, exc
        if keep:
            into.append(item)
    return -1, None
