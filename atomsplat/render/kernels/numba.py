"""Footprint kernels (:class:`atomsplat.render.kernels.FootprintKernels`) compiled by numba, for
CPU tensors.

No footprint value is stored: each window row is a short contiguous loop that the compiler
vectorises, and the image stays in cache. The work is spread over the cores by (view, band of
image rows) when adding, so that each band is written by one thread only and no write needs a
lock, and by (view, Gaussian) when contracting, where the threads share nothing. numba comes with
abTEM; it compiles each kernel once per dtype (a few seconds) and caches the result on disk.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 19
"""Values per (V, k, S + 1) profile array of one chunk of Gaussians (2 MB in float32): the
elementwise torch work between the kernels then stays in cache."""


@numba.njit(parallel=True, fastmath=True, cache=True)
def _add(image, rows, cols, start_y, start_x, bands):  # pragma: no cover - compiled
    views, height, width = image.shape
    count, size = rows.shape[1], rows.shape[2]
    band = (height + bands - 1) // bands
    for job in numba.prange(views * bands):
        v = job // bands
        top = (job % bands) * band
        bottom = min(height, top + band)
        for k in range(count):
            y0 = start_y[v, k]
            i0, i1 = max(top, y0), min(bottom, y0 + size)
            if i0 >= i1:
                continue
            x0 = start_x[v, k]
            j0, j1 = max(0, x0), min(width, x0 + size)
            col = cols[v, k, j0 - x0 : j1 - x0]
            for i in range(i0, i1):
                value = rows[v, k, i - y0]
                line = image[v, i, j0:j1]
                for j in range(j1 - j0):
                    line[j] += value * col[j]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _contract(image, rows, cols, start_y, start_x, along_rows, along_cols):  # pragma: no cover - compiled
    views, height, width = image.shape
    count, size = rows.shape[1], rows.shape[2]
    for job in numba.prange(views * count):
        v, k = job // count, job % count
        y0, x0 = start_y[v, k], start_x[v, k]
        i0, i1 = max(0, y0), min(height, y0 + size)
        j0, j1 = max(0, x0), min(width, x0 + size)
        out_rows = along_rows[v, k]
        out_cols = along_cols[v, k]
        out_rows[:] = 0.0
        out_cols[:] = 0.0
        col = cols[v, k, j0 - x0 : j1 - x0]
        acc_cols = out_cols[j0 - x0 : j1 - x0]
        for i in range(i0, i1):
            line = image[v, i, j0:j1]
            value = rows[v, k, i - y0]
            total = out_rows[i - y0]  # zero, in the arrays' dtype
            for j in range(j1 - j0):
                pixel = line[j]
                total += pixel * col[j]
                acc_cols[j] += value * pixel
            out_rows[i - y0] = total


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous numpy view of a CPU tensor (a copy only where it is not contiguous)."""
    return tensor.detach().contiguous().numpy()


class NumbaFootprints:
    """Footprint kernels compiled by numba, for CPU tensors."""

    name = "numba"

    @staticmethod
    def chunk(views: int, size: int) -> int:
        """Gaussians per chunk: their (V, k, S + 1) profiles hold at most CHUNK_ELEMENTS values."""
        return max(1, CHUNK_ELEMENTS // (views * (size + 1)))

    @staticmethod
    def add(image, rows, cols, start_y, start_x):
        """``image`` (V, H, W), contiguous, += each footprint, in place."""
        views = image.shape[0]
        bands = max(1, math.ceil(2 * numba.get_num_threads() / views))
        _add(
            image.numpy(),
            _array(rows.to(image.dtype)),
            _array(cols.to(image.dtype)),
            _array(start_y),
            _array(start_x),
            bands,
        )

    @staticmethod
    def contract(image, rows, cols, start_y, start_x):
        """(V, k, S) sums along each window's rows and columns."""
        along_rows = torch.empty_like(rows)
        along_cols = torch.empty_like(cols)
        _contract(
            _array(image.to(rows.dtype)),
            _array(rows),
            _array(cols),
            _array(start_y),
            _array(start_x),
            along_rows.numpy(),
            along_cols.numpy(),
        )
        return along_rows, along_cols
