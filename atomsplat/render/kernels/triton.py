"""Footprint kernels (:class:`atomsplat.render.kernels.FootprintKernels`) in Triton, for CUDA
tensors. One program per (view, Gaussian) walks its window of S x S pixels in BLOCK x BLOCK
pieces:

* ``add``: forms the outer product ``rows (x) cols`` in registers and adds it into the image with
  atomic adds, dropping pixels outside the detector;
* ``contract``: reads the image gradient over the window once and writes both of its
  contractions with the footprint's factors, ``sum_j g[i, j] cols[j]`` and ``sum_i rows[i] g[i, j]``.

No footprint is ever stored in global memory. With ``TRITON_INTERPRET=1`` set before this module
is imported, the kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK_ELEMENTS = 1 << 24
"""Values per (V, k, S + 1) profile array of one chunk of Gaussians (64 MB in float32)."""


@triton.jit
def _add_kernel(image, rows, cols, start_y, start_x, count, size, height, width, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    view = pid // count
    y0 = tl.load(start_y + pid)
    x0 = tl.load(start_x + pid)
    base = image + view * height * width
    offsets = tl.arange(0, BLOCK)
    for first_row in range(0, size, BLOCK):
        i = first_row + offsets
        row_values = tl.load(rows + pid * size + i, mask=i < size, other=0.0)
        y = y0 + i
        row_ok = (i < size) & (y >= 0) & (y < height)
        for first_col in range(0, size, BLOCK):
            j = first_col + offsets
            col_values = tl.load(cols + pid * size + j, mask=j < size, other=0.0)
            x = x0 + j
            col_ok = (j < size) & (x >= 0) & (x < width)
            values = row_values[:, None] * col_values[None, :]
            tl.atomic_add(base + y[:, None] * width + x[None, :], values, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _contract_kernel(
    image, rows, cols, start_y, start_x, along_rows, along_cols, count, size, height, width, BLOCK: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    view = pid // count
    y0 = tl.load(start_y + pid)
    x0 = tl.load(start_x + pid)
    base = image + view * height * width
    offsets = tl.arange(0, BLOCK)
    for first_row in range(0, size, BLOCK):
        i = first_row + offsets
        row_values = tl.load(rows + pid * size + i, mask=i < size, other=0.0)
        y = y0 + i
        row_ok = (i < size) & (y >= 0) & (y < height)
        total = tl.zeros([BLOCK], dtype=row_values.dtype)
        for first_col in range(0, size, BLOCK):
            j = first_col + offsets
            col_values = tl.load(cols + pid * size + j, mask=j < size, other=0.0)
            x = x0 + j
            col_ok = (j < size) & (x >= 0) & (x < width)
            grad = tl.load(base + y[:, None] * width + x[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            total += tl.sum(grad * col_values[None, :], axis=1)
            # summed over row blocks; atomic adds keep these writes ordered (no other program
            # touches this output row, so they never contend)
            tl.atomic_add(along_cols + pid * size + j, tl.sum(row_values[:, None] * grad, axis=0), mask=j < size)
        tl.store(along_rows + pid * size + i, total, mask=i < size)


def _block(size: int) -> int:
    """Side of the square pieces a window is walked in: the window itself up to 32 pixels."""
    return min(32, triton.next_power_of_2(size))


class TritonFootprints:
    """Footprint kernels in Triton, for CUDA tensors."""

    name = "triton"

    @staticmethod
    def chunk(views: int, size: int) -> int:
        """Gaussians per chunk: their (V, k, S + 1) profiles hold at most CHUNK_ELEMENTS values."""
        return max(1, CHUNK_ELEMENTS // (views * (size + 1)))

    @staticmethod
    def add(image, rows, cols, start_y, start_x):
        """``image`` (V, H, W), contiguous, += each footprint, in place (atomic adds)."""
        views, height, width = image.shape
        count, size = rows.shape[1], rows.shape[2]
        if views * count == 0:
            return
        _add_kernel[(views * count,)](
            image,
            rows.to(image.dtype).contiguous(),
            cols.to(image.dtype).contiguous(),
            start_y.contiguous(),
            start_x.contiguous(),
            count,
            size,
            height,
            width,
            BLOCK=_block(size),
        )

    @staticmethod
    def contract(image, rows, cols, start_y, start_x):
        """(V, k, S) sums along each window's rows and columns."""
        views, height, width = image.shape
        count, size = rows.shape[1], rows.shape[2]
        along_rows = torch.zeros_like(rows)
        along_cols = torch.zeros_like(cols)
        if views * count == 0:
            return along_rows, along_cols
        _contract_kernel[(views * count,)](
            image.to(rows.dtype).contiguous(),
            rows.contiguous(),
            cols.contiguous(),
            start_y.contiguous(),
            start_x.contiguous(),
            along_rows,
            along_cols,
            count,
            size,
            height,
            width,
            BLOCK=_block(size),
        )
        return along_rows, along_cols
