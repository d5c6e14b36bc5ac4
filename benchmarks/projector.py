"""Projector speed on the Au particle's size: forward + backward per view, beside a floor.

    python benchmarks/projector.py [--views 4] [--repeats 10]

The case: the 6,679 atoms of Au_NP.xyz, sigma 0.6 A, 280 x 280 pixels of 0.25 A, float32,
CPU (and CUDA when present). The floor is the time to add the same footprint values, at the
same pixels (the atoms' real windows), into the image with one bare ``index_add_`` and to read
them back with one ``index_select``: the memory traffic that any scatter-based projector pays,
without computing a single footprint value. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

from atomsplat.geometry import view_rotations
from atomsplat.render.projector import _PaddedGrid, _window_start, detector_centres, project_isotropic, window_radius

STRUCTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "Au_NP.xyz"


def best_time(fn, repeats: int, device: str) -> float:
    """Smallest wall time of ``fn`` over ``repeats`` runs (after one warm-up), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(device: str, views: int, repeats: int, structure: Path):
    atoms = ase.io.read(structure)
    positions = torch.tensor(atoms.positions - atoms.cell.array.sum(0) / 2, dtype=torch.float32, device=device)
    count = len(positions)
    means = positions.clone().requires_grad_()
    sigmas = torch.full((count,), 0.6, device=device, requires_grad=True)
    weights = torch.full((count,), 400.0, device=device, requires_grad=True)
    rotations = torch.tensor(view_rotations(np.linspace(-60, 60, views)), dtype=torch.float32, device=device)
    offsets = torch.zeros(views, 2, device=device)

    def step():
        image = project_isotropic(means, sigmas, weights, rotations, offsets, 0.25, 280, 280)
        image.sum().backward()

    radius = window_radius(0.6, 0.25)
    size = 2 * radius + 1
    centres = detector_centres(positions, rotations, offsets)
    grid = _PaddedGrid(_window_start(centres[..., 1], 280, 0.25, radius), _window_start(centres[..., 0], 280, 0.25, radius),
                       size, 280, 280, radius)
    values = grid.index.numel()
    source = torch.rand(values, device=device)

    padded = torch.zeros(grid.shape, device=device).view(-1)
    gathered = torch.empty(values, device=device)

    def floor():  # buffers allocated once: only the scatter and gather traffic is timed
        padded.zero_().index_add_(0, grid.index, source)
        torch.index_select(padded, 0, grid.index, out=gathered)

    t_step, t_floor = best_time(step, repeats, device), best_time(floor, repeats, device)
    return count, values, t_step, t_floor


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--structure", type=Path, default=STRUCTURE)
    args = parser.parse_args()
    print("| device | atoms | footprint values | fwd+bwd per view (ms) | floor per view (ms) | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        count, values, t_step, t_floor = measure(device, args.views, args.repeats, args.structure)
        name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        print(f"| {name} | {count} | {values // args.views:,} per view | {1e3 * t_step / args.views:.1f} | "
              f"{1e3 * t_floor / args.views:.1f} | {t_step / t_floor:.1f} |")
