# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot paths for a reflux pipeline, in Cython.

Calibrate (record lane): a CTransform over sensor readings, run by reflux
    without the GIL once per chunk of records.
Above (record lane): a CFilter keeping the calibrated readings at or above a
    temperature.
blur3x3 (object lane): a plain function over a numpy image tile that
    releases the GIL for its loops, so Transformer replicas run in parallel.
"""
from libc.math cimport isnan
from libc.stdint cimport uint8_t
from reflux_core.transform cimport CFilter, CTransform, reflux_status

READING = [("sensor", "<i4"), ("raw", "<f8")]
CELSIUS = [("sensor", "<i4"), ("celsius", "<f8")]

cdef packed struct reading:
    int sensor
    double raw

cdef packed struct celsius:
    int sensor
    double celsius

cdef enum:
    BAD_READING = 1  # error code: the raw value is NaN (a C constant: usable without the GIL)

ERR_BAD_READING = BAD_READING  # the same code, for Python


cdef class Calibrate(CTransform):
    """celsius = gain * raw + offset; drops readings below zero (sensor off),
    fails a NaN reading with error code BAD_READING."""
    cdef double gain, offset

    def __init__(self, double gain, double offset):
        super().__init__(READING, CELSIUS)
        self.gain = gain
        self.offset = offset

    cdef Py_ssize_t transform(self, const char* src, Py_ssize_t n, char* dst,
                              reflux_status* status) noexcept nogil:
        cdef const reading* a = <const reading*>src
        cdef celsius* b = <celsius*>dst
        cdef Py_ssize_t i, m = 0
        for i in range(n):
            if isnan(a[i].raw):
                status.index = i          # records before i are done,
                status.error = BAD_READING  # record i failed
                return m
            if a[i].raw < 0:
                continue                  # dropped: no output
            b[m].sensor = a[i].sensor
            b[m].celsius = self.gain * a[i].raw + self.offset
            m += 1
        return m


cdef class Above(CFilter):
    """Keeps the calibrated readings whose temperature is at least ``threshold``."""
    cdef double threshold

    def __init__(self, double threshold):
        super().__init__(CELSIUS, CELSIUS)
        self.threshold = threshold

    cdef Py_ssize_t keep(self, const char* src, Py_ssize_t n, uint8_t* keep,
                         reflux_status* status) noexcept nogil:
        cdef const celsius* a = <const celsius*>src
        cdef Py_ssize_t i, kept = 0
        for i in range(n):
            keep[i] = a[i].celsius >= self.threshold
            kept += keep[i]
        return kept


def blur3x3(const float[:, ::1] tile):
    """Mean of each pixel's 3x3 neighbourhood (edges repeated), as a new tile."""
    cdef Py_ssize_t h = tile.shape[0], w = tile.shape[1], y, x, dy, dx, yy, xx
    cdef float s
    import numpy as np
    out = np.empty((h, w), dtype=np.float32)
    cdef float[:, ::1] o = out
    with nogil:  # no Python objects in here: replicas run on all cores
        for y in range(h):
            for x in range(w):
                s = 0
                for dy in range(-1, 2):
                    yy = min(max(y + dy, 0), h - 1)
                    for dx in range(-1, 2):
                        xx = min(max(x + dx, 0), w - 1)
                        s = s + tile[yy, xx]
                o[y, x] = s / 9
    return out
