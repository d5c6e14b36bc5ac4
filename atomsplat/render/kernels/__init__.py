"""Footprint kernels: the two operations of the windowed projector that touch every pixel of
every window, one module per backend.

* :mod:`atomsplat.render.kernels.reference` - torch index ops, on any device;
* :mod:`atomsplat.render.kernels.numba` - compiled, multi-threaded loops for CPU tensors;
* :mod:`atomsplat.render.kernels.triton` - Triton programs for CUDA tensors.

Every backend implements :class:`FootprintKernels` and computes the same values within float
rounding. The projector's autograd function (:mod:`atomsplat.render.projector`) holds all the
calculus and drives the kernels; :mod:`atomsplat.render.backend` chooses a backend. The compiled
backends import numba or Triton, so only the module of the backend in use is imported.
"""

from __future__ import annotations

from typing import Protocol

import torch


class FootprintKernels(Protocol):
    """A set of footprint kernels (each backend's class, used as is: its methods are static).

    A footprint is the outer product of ``rows`` (V, k, S) and ``cols`` (V, k, S) over the window
    of S x S pixels whose first pixel is (``start_y``, ``start_x``) (V, k) long, as
    :func:`atomsplat.render.windows.window_start` places it: pixel ``(y0 + i, x0 + j)`` of view v
    holds ``rows[v, k, i] * cols[v, k, j]``. Pixels outside the (V, H, W) image are dropped.
    """

    name: str
    """The backend's name, as :mod:`atomsplat.render.backend` spells it."""

    @staticmethod
    def chunk(views: int, size: int) -> int:
        """How many Gaussians of window side ``size`` to hand to one call for ``views`` views:
        the projector forms their profiles and calls the kernels chunk by chunk, so that its
        temporaries stay of a size that suits the backend."""
        ...

    @staticmethod
    def add(
        image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, start_y: torch.Tensor, start_x: torch.Tensor
    ) -> None:
        """``image`` (V, H, W), contiguous, += every footprint, in place."""
        ...

    @staticmethod
    def contract(
        image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, start_y: torch.Tensor, start_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over each window of ``image`` (V, H, W) times the footprint's factors.

        Returns:
            (V, k, S) ``sum_j image[y0 + i, x0 + j] cols[j]`` and (V, k, S)
            ``sum_i rows[i] image[y0 + i, x0 + j]``.
        """
        ...
