"""How many noise maxima pass the births' score test after the final refinement, by particle size?

    python benchmarks/noise_maxima.py [--radii 10 18] [--seeds 4]

The score test of one more atom (``DensityStrategy.birth_map``, "score": the matched filter's
standard score on a 0.5 A grid) on residuals of pure noise (unit-variance pixels, 49 views over
+-72 degrees of 0.4 A pixels), over a particle of Gaussians 2.4 A apart filling a sphere of each
radius. Within 2 x 1.22 A of a Gaussian (inside the particle) it counts the map's local maxima, how
many exceed the 3 standard deviations of the births after the final refinement
(``FINAL_BIRTH_SIGNIFICANCE``), and the depth of the deepest local minimum, the noise's mirror (a
missing atom makes a maximum, never a minimum), with the maxima above it. No atom is missing, so
every maximum above a threshold is a false birth.

Writes docs/benchmarks/noise_maxima.json: per radius and seed those counts and depths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.spatial import cKDTree

from atomsplat.geometry import view_rotations
from atomsplat.model.cloud import AtomCloud, Views
from atomsplat.model.density import grid_points, grid_positions
from atomsplat.model.strategy import FINAL_BIRTH_SIGNIFICANCE, DensityOptions, DensityStrategy, Evidence

ROOT = Path(__file__).resolve().parents[1]
SPACING, REACH, PIXEL, SIZE = 2.4, 2 * 1.22, 0.4, 112  # A, A, A, pixels


def count(radius: float, seed: int) -> dict:
    """The score map's maxima and minima inside a particle of ``radius`` A on one draw of noise."""
    rng = np.random.default_rng(seed)
    _, grid = grid_points(np.full(3, -radius), np.full(3, radius), SPACING)
    positions = grid[np.linalg.norm(grid, axis=1) < radius]
    cloud = AtomCloud(torch.from_numpy(positions).float(), 0.5, 10.0)
    angles = np.arange(-72.0, 73.0, 3.0)
    rotations = torch.from_numpy(view_rotations(angles)).float()
    views = Views(rotations, torch.zeros(len(angles), 2), PIXEL, SIZE, SIZE, torch.arange(len(angles)))
    noise = torch.from_numpy(rng.standard_normal((len(angles), SIZE, SIZE))).float()
    strategy = DensityStrategy(DensityOptions(), evidence=Evidence(None))
    with torch.no_grad():
        search = strategy.birth_map(cloud, lambda _: (noise, views, torch.ones_like(noise)), "score", 3.0)
    score = search.score
    points = grid_positions(np.arange(score.size), score.shape, search.origin, search.spacing)
    near = np.isfinite(cKDTree(positions).query(points, distance_upper_bound=REACH)[0]).reshape(score.shape)
    maxima = score[(score == maximum_filter(score, size=3)) & near]
    deepest = float(-score[(score == minimum_filter(score, size=3)) & near].min())
    return {
        "radius": radius,
        "seed": seed,
        "gaussians": len(positions),
        "standard_deviation_inside": round(float(score[near].std()), 3),
        "maxima": int(len(maxima)),
        "above_final_significance": int((maxima > FINAL_BIRTH_SIGNIFICANCE).sum()),
        "deepest_minimum": round(deepest, 2),
        "above_deepest_minimum": int((maxima > deepest).sum()),
        "highest_maximum": round(float(maxima.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radii", type=float, nargs="+", default=[10.0, 18.0], help="A")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for radius in args.radii:
        for seed in range(args.seeds):
            rows.append(count(radius, seed))
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "docs" / "benchmarks" / "noise_maxima.json"
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
