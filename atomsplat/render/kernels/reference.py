"""Reference footprint kernels (:class:`atomsplat.render.kernels.FootprintKernels`) in torch index
ops, on any device: every footprint value is formed in memory and written with one
``index_add_`` into an image padded by the window radius (cropped after), or read with one
``index_select``. Plain and short, so that the compiled backends can be checked against them.
"""

from __future__ import annotations

import torch

from atomsplat.render.windows import PaddedGrid

CHUNK_ELEMENTS = 1 << 23
"""Footprint values per (V, k, S, S) block of one chunk of Gaussians (32 MB in float32). Below
glibc's largest mmap threshold (32 MB), so that each block is served from the heap instead of
freshly mapped and zeroed pages on every call."""


class ReferenceFootprints:
    """Footprint kernels in torch index ops."""

    name = "reference"

    @staticmethod
    def chunk(views: int, size: int) -> int:
        """Gaussians per chunk: their (V, k, S, S) footprints hold at most CHUNK_ELEMENTS values."""
        return max(1, CHUNK_ELEMENTS // (views * size * size))

    @staticmethod
    def add(image, rows, cols, start_y, start_x):
        """``image`` (V, H, W) += each footprint, in place."""
        views, height, width = image.shape
        size = rows.shape[-1]
        grid = PaddedGrid(start_y, start_x, size, height, width, (size - 1) // 2)
        image += grid.crop(grid.scatter(rows[..., :, None] * cols[..., None, :]))

    @staticmethod
    def contract(image, rows, cols, start_y, start_x):
        """(V, k, S) sums along each window's rows and columns."""
        views, height, width = image.shape
        size = rows.shape[-1]
        radius = (size - 1) // 2
        grid = PaddedGrid(start_y, start_x, size, height, width, radius)
        block = grid.gather(torch.nn.functional.pad(image, (radius,) * 4).contiguous().view(-1), size)
        return (block @ cols[..., :, None])[..., 0], (rows[..., None, :] @ block)[..., 0, :]
