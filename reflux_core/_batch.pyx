# cython: language_level=3, freethreading_compatible=True
"""Batch loops of the Python lane: a node function over a whole batch, at C speed.

The Python layer's Transformer, Filter and Loader call these once per batch.
They do what a ``for`` loop over the batch would do (call the function on each
item, keep every result in order, turn an exception into an ``Error`` value so
the calls after it go on) and, in the same pass, count the results that need
the slow path (the node's special values, or anything but ``None``), so the
common batch needs no second look at its results.
"""


def call_all(fn, list batch, list into, error_type, special_a, special_b, bint count_not_none=False):
    """Append ``fn(item)`` for every item of ``batch`` to ``into``.

    An item whose call raised an ``Exception`` gets ``error_type(exc)`` as its
    result (``BaseException`` that is not an ``Exception``, e.g.
    ``KeyboardInterrupt``, propagates).  Returns ``(specials, not_none)``:
    how many results are exactly of type ``special_a`` or ``special_b``
    (``error_type`` results included when it is one of them), and, with
    ``count_not_none``, how many results are not ``None`` (else 0).
    """
    cdef Py_ssize_t i, n = len(batch)
    cdef Py_ssize_t specials = 0, not_none = 0
    cdef object item, r
    cdef type ta = special_a, tb = special_b
    for i in range(n):
        item = batch[i]
        try:
            r = fn(item)
        except Exception as exc:  # user code: becomes an Error value
            r = error_type(exc)
        if type(r) is ta or type(r) is tb:
            specials += 1
        if count_not_none and r is not None:
            not_none += 1
        into.append(r)
    return specials, not_none


def keep_all(pred, list batch, Py_ssize_t start, list into, error_type):
    """Append to ``into``, in order, the items of ``batch[start:]`` for which
    ``pred(item)`` is true, and stop at the first item whose call failed.

    A failed call is one that raised an ``Exception`` or returned an exact
    ``error_type`` value (``BaseException`` that is not an ``Exception``
    propagates, as does an error from the result's truth test).  Returns
    ``(index, outcome)``: the index of the failed item and its exception or
    ``error_type`` value, or ``(-1, None)`` when every call succeeded.  No
    list of flags is built: the kept items go straight into ``into``.
    """
    cdef Py_ssize_t i, n = len(batch)
    cdef object item, r
    cdef type te = error_type
    if start < 0:
        start = 0
    for i in range(start, n):
        item = batch[i]
        try:
            r = pred(item)
        except Exception as exc:  # user code: handed back to the caller
            return i, exc
        if type(r) is te:
            return i, r
        if r:
            into.append(item)
    return -1, None
