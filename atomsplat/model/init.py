"""Where the Gaussians start: random positions in the particle's support, from the projections."""

from __future__ import annotations

import math

import torch

from atomsplat.geometry import pixel_index, view_rotations
from atomsplat.render.projector import detector_centres


def initial_positions(series, signal: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """(K, 3) random initial positions, A, sample frame, from the projections ``signal`` (N, H, W)
    of the atoms (the series less any fitted background).

    Candidates are uniform in the sphere seen by every projection (radius: half the smaller
    detector side). With ``init_support="hull"`` only candidates whose pixel exceeds
    ``hull_threshold`` x the series maximum in at least 95 % of the views are kept: the visual
    hull of the particle, which puts no Gaussians in the empty space around it. The count is
    ``init_density`` x the volume of the support unless ``init_count`` is set.
    """
    _, height, width = series.shape
    radius = 0.5 * min(height, width) * series.pixel_size
    volume = 4.0 / 3.0 * math.pi * radius**3
    rotations = torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle))
    shifts = torch.from_numpy(series.shifts_or_zeros())
    stack = signal
    level = config.hull_threshold * float(stack.max())

    def sphere(count):
        direction = torch.nn.functional.normalize(
            torch.randn(count, 3, generator=generator, dtype=torch.float64), dim=1
        )
        return direction * radius * torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1.0 / 3.0)

    def in_hull(points):
        centres = detector_centres(points, rotations, shifts)  # (V, K, 2)
        cols = pixel_index(centres[..., 0], width, series.pixel_size).clamp(0, width - 1)
        rows = pixel_index(centres[..., 1], height, series.pixel_size).clamp(0, height - 1)
        values = stack[torch.arange(len(stack))[:, None], rows, cols]
        return points[(values > level).float().mean(0) >= 0.95]

    if config.init_support == "sphere":
        return sphere(config.init_count or max(1, int(config.init_density * volume))).float()
    batch = max(20000, int(config.init_density * volume))
    hull = in_hull(sphere(batch))
    if len(hull) == 0:
        raise ValueError("initialisation: no point of the volume is bright in every projection (is the data empty?)")
    count = config.init_count or max(1, int(config.init_density * volume * len(hull) / batch))
    while len(hull) < count:
        hull = torch.cat([hull, in_hull(sphere(batch))])
    return hull[:count].float()
