"""One birth search (where are atoms missing?), beside a gather floor.

    python benchmarks/births.py [--radius 29 74] [--json]

What ``AtomSplatModel.backprojected_residual`` and ``density.residual_peaks`` do in a training
pass that gives birth, on the sizes of the benchmark particles: atoms at atomic density (0.06 per
A^3) in a ball of ``radius`` A, the 0.5 A grid over their bounding box padded by 1.6 A, 45 residual
images (Gaussian noise) of a detector that holds the ball (pixels of 0.25 A, tilts -70..70
degrees), the back-projection of every image onto every grid point and the search for maxima far
from the atoms. The modelled projections that the residual needs are one projector call per view
(``benchmarks/projector.py``) and are not counted.

The floor is 45 times one bare ``index_select`` of one view's pixel values at the grid points'
pixels, into a buffer allocated once: the memory traffic of any back-projection that reads one
pixel per point and view.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from timing import best_time, machine, peak_rss_mb, rss_mb, sized_main

from atomsplat.geometry import pixel_index, view_rotations
from atomsplat.model import density
from atomsplat.render.projector import backproject_points, detector_centres

PIXEL, SPACING, MERGE, VIEWS = 0.25, 0.5, 1.6, 45


def measure(radius: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    count = int(0.06 * 4 / 3 * math.pi * radius**3)
    direction = rng.normal(size=(count, 3))
    atoms = direction / np.linalg.norm(direction, axis=1, keepdims=True) * radius * rng.random((count, 1)) ** (1 / 3)
    side = int(math.ceil(2 * (radius + 3.0) / PIXEL))
    images = torch.from_numpy(rng.normal(size=(VIEWS, side, side)).astype(np.float32))
    rotations = torch.from_numpy(view_rotations(np.linspace(-70.0, 70.0, VIEWS))).float()
    offsets = torch.zeros(VIEWS, 2)
    before = rss_mb()

    def search():
        shape, points = density.grid_points(atoms.min(0) - MERGE, atoms.max(0) + MERGE, SPACING)
        score = backproject_points(images, rotations, offsets, PIXEL, torch.from_numpy(points)).numpy().reshape(shape)
        return density.residual_peaks(score, 3.0, MERGE, SPACING, atoms, atoms.min(0) - MERGE), len(points)

    _, points = search()
    seconds = best_time(search, "cpu", min_repeats=2, max_repeats=3, budget=0.0)
    peak = peak_rss_mb()

    _, grid = density.grid_points(atoms.min(0) - MERGE, atoms.max(0) + MERGE, SPACING)
    centres = detector_centres(torch.from_numpy(grid), rotations[:1], offsets[:1])[0]  # the first view's (M, 2)
    flat = pixel_index(centres[:, 1], side, PIXEL).clamp(0, side - 1) * side + pixel_index(
        centres[:, 0], side, PIXEL
    ).clamp(0, side - 1)
    values, buffer = images[0].reshape(-1), torch.empty(flat.shape[0])
    floor = VIEWS * best_time(lambda: torch.index_select(values, 0, flat, out=buffer), "cpu", max_repeats=5)
    return {
        "machine": machine("cpu"),
        "radius": radius,
        "atoms": count,
        "pixels": side,
        "grid_points": points,
        "seconds": seconds,
        "floor_seconds": floor,
        "ratio": seconds / floor,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
    }


def table(rows) -> str:
    """Markdown table of measurements."""
    lines = [
        "| particle radius (A) | atoms | detector | grid points | search (s) | floor: gather (s) | ratio "
        "| peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['radius']:.0f} | {r['atoms']:,} | {r['pixels']}^2 | {r['grid_points']:,} | {r['seconds']:.2f} | "
            f"{r['floor_seconds']:.2f} | {r['ratio']:.1f} | {r['peak_rss_mb']:.0f} "
            f"({r['peak_rss_mb'] - r['rss_before_mb']:.0f} above start) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sized_main(__doc__, "radius", float, [29.0, 74.0], measure, table)
