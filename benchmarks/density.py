"""One density-control pass (merge, prune, split and duplicate), beside a KD-tree floor.

    python benchmarks/density.py [--gaussians 10000 100000 1000000] [--json]

The Gaussians are those of a training run midway: the atoms of a particle at atomic density
(0.06 atoms per A^3: a jittered lattice in a ball, 0.05 A jitter) and 0.75 as many surplus
Gaussians within ~0.4 A of random atom sites, in random order, with random weights and widths
around 0.6 A. The pass does on tensors what ``AtomSplatModel.refine`` does: clusters closer than
1.6 A (20 nearest neighbours above 10,000 Gaussians), weighted merge, pruning below 0.15 x the
median weight, splitting of Gaussians wider than 1.5 x the median width and duplication of the 5 %
with the largest (here random) position-gradient score.

The floor is the time to build a KD-tree of the same positions (scipy's cKDTree, as the pass
builds it): any KD-tree neighbour search pays at least that.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from timing import best_time, machine, peak_rss_mb, rss_mb, sized_main

from atomsplat.model import density

ATOMS_PER_A3 = 0.06
SURPLUS = 0.75


def gaussians(count: int, seed: int = 0):
    """Parameters (dict of (K, ...) float32 tensors) of ``count`` Gaussians, and scores (K,)."""
    rng = np.random.default_rng(seed)
    atoms = int(round(count / (1 + SURPLUS)))
    spacing = ATOMS_PER_A3 ** (-1 / 3)
    radius = (3 * atoms / (4 * math.pi * ATOMS_PER_A3)) ** (1 / 3)
    side = int(math.ceil(2 * radius / spacing)) + 4
    grid = (np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3) - side / 2) * spacing
    grid = grid[np.argsort(np.linalg.norm(grid, axis=1))[:atoms]]  # the ball holding exactly `atoms`
    sites = grid + rng.normal(scale=0.05, size=grid.shape)
    near = sites[rng.integers(0, atoms, count - atoms)] + rng.normal(scale=0.4, size=(count - atoms, 3))
    positions = np.concatenate([sites, near])[rng.permutation(count)]
    params = {
        "positions": torch.from_numpy(positions).float(),
        "log_weights": torch.from_numpy(rng.normal(scale=0.3, size=count)).float(),
        "log_sigmas": torch.from_numpy(math.log(0.6) + rng.normal(scale=0.15, size=count)).float(),
    }
    return params, torch.from_numpy(rng.random(count)).float()


def density_pass(params, scores, generator: torch.Generator):
    """Merge, prune, split and duplicate as ``AtomSplatModel.refine`` does; the new parameters."""
    labels = torch.from_numpy(density.cluster_labels(params["positions"].numpy(), 1.6, 20, 10000))
    params, source = density.merge(params, labels)
    scores = torch.where(source >= 0, scores[source.clamp_min(0)], torch.zeros_like(source, dtype=scores.dtype))
    params, keep = density.prune(params, 0.15)
    scores = scores[keep]
    widths = density.width_of(params)
    wide = torch.nonzero(widths > 1.5 * widths.median()).squeeze(1)
    chosen = torch.unique(torch.cat([wide, torch.topk(scores, int(round(0.05 * len(scores)))).indices]))
    offset = torch.maximum(widths[chosen], widths.new_tensor(0.55 * 1.6))
    return density.duplicate(params, chosen, offset, generator)[0]


def measure(count: int) -> dict:
    params, scores = gaussians(count)
    before = rss_mb()
    generator = torch.Generator().manual_seed(0)
    result = density_pass(params, scores, generator)
    seconds = best_time(
        lambda: density_pass(params, scores, generator), "cpu", min_repeats=2, max_repeats=3, budget=0.0
    )
    peak = peak_rss_mb()
    positions = params["positions"].numpy().astype(np.float64)
    floor = best_time(lambda: cKDTree(positions, balanced_tree=False, compact_nodes=False), "cpu", max_repeats=5)
    return {
        "machine": machine("cpu"),
        "gaussians": count,
        "after": len(result["positions"]),
        "seconds": seconds,
        "floor_seconds": floor,
        "ratio": seconds / floor,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
    }


def table(rows) -> str:
    """Markdown table of measurements."""
    lines = [
        "| Gaussians | after the pass | pass (s) | floor: KD-tree build (s) | ratio | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['gaussians']:,} | {r['after']:,} | {r['seconds']:.2f} | {r['floor_seconds']:.3f} | "
            f"{r['ratio']:.1f} | {r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] - r['rss_before_mb']:.0f} above start) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sized_main(__doc__, "gaussians", int, [10_000, 100_000, 1_000_000], measure, table)
