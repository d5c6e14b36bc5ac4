"""Square pixel windows around detector positions: where each starts, and its pixels' flat
indices in an image padded by the window radius (the convention every projector path shares).

A window of radius R holds S = 2R + 1 pixels per axis around the pixel that contains the centre
(:func:`atomsplat.geometry.pixel_index`).
"""

from __future__ import annotations

import math

import torch

from atomsplat.geometry import pixel_index


def window_start(coord: torch.Tensor, n: int, pixel_size: float, radius: int) -> torch.Tensor:
    """First pixel (long) of the window of 2R + 1 pixels around detector coordinate ``coord``.

    Clamped to [-R, n - 1 - R] so that every window lies inside the grid padded by R on each
    side. A clamped window belongs to a centre off the detector; it still covers every detector
    pixel that the unclamped window covered, and its values are computed at the true centre."""
    return (pixel_index(coord, n, pixel_size) - radius).clamp_(-radius, n - 1 - radius)


class PaddedGrid:
    """Flat int32 indices of every (V, K, S, S) window in a (V, H + 2R, W + 2R) padded image.

    Windows never need clamping per pixel: values that fall into the padding are cropped away,
    and they are the pixels outside the detector.

    Args:
        start_y, start_x: (V, K) long first window pixels (:func:`window_start`), kept as attributes.
        size: window side S; height, width: detector size; radius: R = (S - 1) // 2.
    """

    def __init__(self, start_y, start_x, size, height, width, radius):
        self.shape = (start_y.shape[0], height + 2 * radius, width + 2 * radius)
        views, rows, cols = self.shape
        view = torch.arange(views, device=start_y.device, dtype=torch.int32)[:, None] * (rows * cols)
        base = view + ((start_y + radius) * cols + (start_x + radius)).int()  # (V, K)
        steps = torch.arange(size, device=start_y.device, dtype=torch.int32)
        local = steps[:, None] * cols + steps[None, :]  # (S, S)
        self.index = (base[..., None, None] + local).reshape(-1)
        self.radius, self.height, self.width = radius, height, width
        self.start_y, self.start_x = start_y, start_x

    def scatter(self, block: torch.Tensor, padded=None) -> torch.Tensor:
        """Add (V, K, S, S) window values into a flat padded image (new when ``padded`` is None)."""
        if padded is None:
            padded = block.new_zeros(math.prod(self.shape))
        return padded.index_add_(0, self.index, block.reshape(-1))

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        """The (V, H, W) detector part of a flat padded image."""
        r = self.radius
        return padded.view(self.shape)[:, r : r + self.height, r : r + self.width]

    def gather(self, padded: torch.Tensor, size: int) -> torch.Tensor:
        """The (V, K, S, S) window values of a flat padded image."""
        return padded.index_select(0, self.index).view(self.shape[0], -1, size, size)
