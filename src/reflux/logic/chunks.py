"""Batches of NumPy chunks: a batched function sees their records as one array.

A batch whose items are all 1-d NumPy arrays of one dtype (chunks of records)
goes to a batched Transformer or Filter as one array of all their records;
the results (one per record) are cut back into one piece per chunk.
"""
from __future__ import annotations

from typing import Any

__all__ = ["as_chunk", "chunk_lengths", "split_like"]


def chunk_lengths(items: list[Any]) -> list[int] | None:
    """The record counts of ``items`` if every one is a 1-d NumPy array (a chunk of
    records) of one dtype, else ``None`` (the items are passed as a list)."""
    if not items:
        return None
    first = items[0]
    dtype = getattr(first, "dtype", None)
    if dtype is None or getattr(first, "ndim", 0) != 1:
        return None
    lengths = []
    for a in items:
        if getattr(a, "dtype", None) != dtype or getattr(a, "ndim", 0) != 1:
            return None
        lengths.append(len(a))
    return lengths


def as_chunk(chunks: list[Any]) -> Any:
    """One array of the records of ``chunks`` (the chunk itself when there is one)."""
    if len(chunks) == 1:
        return chunks[0]
    import numpy as np  # the items are NumPy arrays: NumPy is loaded

    return np.concatenate(chunks)


def split_like(values: Any, lengths: list[int]) -> list[Any]:
    """``values`` (one result per record) cut into one piece per chunk."""
    if len(lengths) == 1:
        return [values]
    pieces = []
    start = 0
    for n in lengths:
        pieces.append(values[start:start + n])
        start += n
    return pieces
