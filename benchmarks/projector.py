"""Projector speed and memory: forward + backward per view, beside a scatter/gather floor.

    python benchmarks/projector.py                      # the Au particle's size, every backend
    python benchmarks/projector.py --atoms 10000 --pixels 256 --json

The Au case: the 6,679 atoms of Au_NP.xyz, sigma 0.6 A, 280 x 280 pixels of 0.25 A. A sized case
(``--atoms``, ``--pixels``): that many atoms uniform in a ball filling 90 % of the field of view,
sigma 0.6 A, pixels of 0.25 A (23 x 23-pixel windows). Both: float32, 4 views per call (tilts
-60..60 degrees), the time of one call divided by the views.

The floor is the time to add one view's footprint values (every window pixel of every atom) into
its image with one bare ``index_add_`` and to read them back with one ``index_select``, at the
atoms' real pixels, into buffers allocated once: the memory traffic that any projector which
writes footprints pixel by pixel pays, without computing a single value. A projector that does
not form every value in memory can beat it (ratio below 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
import torch
from timing import best_time, machine, peak_rss_mb, rss_mb

from atomsplat.geometry import view_rotations
from atomsplat.render.backend import footprint_kernels, projector_backend
from atomsplat.render.projector import detector_centres, project_isotropic, window_radii
from atomsplat.render.windows import PaddedGrid, window_start

STRUCTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "Au_NP.xyz"
PIXEL = 0.25  # A
SIGMA = 0.6  # A
VIEWS = 4


def au_case(structure: Path = STRUCTURE):
    """Positions (K, 3) A of the Au particle, centred, and its detector side in pixels."""
    atoms = ase.io.read(structure)
    return atoms.positions - atoms.cell.array.sum(0) / 2, 280


def ball_case(atoms: int, pixels: int, seed: int = 0):
    """Positions (K, 3) A uniform in a ball of radius 0.45 x the field of view, and the side."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(atoms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = 0.45 * pixels * PIXEL * rng.random((atoms, 1)) ** (1 / 3)
    return direction * radius, pixels


def measure(positions: np.ndarray, pixels: int, device: str, backend: str) -> dict:
    """Forward + backward time per view and its floor, in ms, and memory, in MB."""
    kernels = footprint_kernels(device, backend)
    count = len(positions)
    means = torch.tensor(positions, dtype=torch.float32, device=device).requires_grad_()
    sigmas = torch.full((count,), SIGMA, device=device, requires_grad=True)
    weights = torch.full((count,), 400.0, device=device, requires_grad=True)
    rotations = torch.tensor(view_rotations(np.linspace(-60, 60, VIEWS)), dtype=torch.float32, device=device)
    offsets = torch.zeros(VIEWS, 2, device=device)

    def step():
        image = project_isotropic(means, sigmas, weights, rotations, offsets, PIXEL, pixels, pixels, kernels=kernels)
        image.sum().backward()

    before = rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = best_time(step, device)
    memory = {"peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20} if device == "cuda" else {}
    memory.update(rss_before_mb=before, peak_rss_mb=peak_rss_mb())  # the floor below is not in these

    # the floor: one view's footprint values, scattered and gathered
    radius = int(window_radii(sigmas.detach(), PIXEL).max())
    size = 2 * radius + 1
    centres = detector_centres(means.detach(), rotations[:1], offsets[:1])
    grid = PaddedGrid(
        window_start(centres[..., 1], pixels, PIXEL, radius),
        window_start(centres[..., 0], pixels, PIXEL, radius),
        size,
        pixels,
        pixels,
        radius,
    )
    values = grid.index.numel()
    source = torch.rand(values, device=device)
    padded = torch.zeros(grid.shape, device=device).view(-1)
    gathered = torch.empty(values, device=device)

    def floor():
        padded.zero_().index_add_(0, grid.index, source)
        torch.index_select(padded, 0, grid.index, out=gathered)

    floor_seconds = best_time(floor, device)
    return {
        "device": device,
        "machine": machine(device),
        "backend": kernels.name,
        "atoms": count,
        "pixels": pixels,
        "views": VIEWS,
        "footprint_values_per_view": values,
        "ms_per_view": 1e3 * seconds / VIEWS,
        "floor_ms_per_view": 1e3 * floor_seconds,
        "ratio": seconds / VIEWS / floor_seconds,
        **memory,
    }


def memory(row) -> str:
    """Peak memory of a measurement: CUDA's peak allocation, or the process's peak resident set
    (torch and its libraries included) with, in brackets, what the case added to it."""
    if "peak_cuda_mb" in row:
        return f"{row['peak_cuda_mb']:.0f} (CUDA, allocated)"
    return f"{row['peak_rss_mb']:.0f} ({row['peak_rss_mb'] - row['rss_before_mb']:.0f} above start)"


def table(rows, with_memory: bool = False) -> str:
    """Markdown table of measurements."""
    head = (
        "| device | backend | atoms | pixels | footprint values per view | fwd+bwd per view (ms) "
        "| floor per view (ms) | ratio |"
    )
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    lines = [head + (" peak memory (MB) |" if with_memory else ""), rule + (" --- |" if with_memory else "")]
    for r in rows:
        line = (
            f"| {r['device']} | {r['backend']} | {r['atoms']:,} | {r['pixels']}^2 "
            f"| {r['footprint_values_per_view']:,} | "
            f"{r['ms_per_view']:.2f} | {r['floor_ms_per_view']:.2f} | {r['ratio']:.2f} |"
        )
        lines.append(line + (f" {memory(r)} |" if with_memory else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, help="a ball of this many atoms instead of the Au particle")
    parser.add_argument("--pixels", type=int, default=256, help="detector side of the ball case")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: every device present")
    parser.add_argument("--backends", nargs="+", default=["auto", "reference"], help="auto, numba, triton, reference")
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    parser.add_argument("--structure", type=Path, default=STRUCTURE)
    args = parser.parse_args()
    positions, pixels = ball_case(args.atoms, args.pixels) if args.atoms else au_case(args.structure)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        done = set()
        for backend in args.backends:
            if projector_backend(device, backend) in done:
                continue  # "auto" is one of the others
            rows.append(measure(positions, pixels, device, backend))
            done.add(rows[-1]["backend"])
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print("; ".join(sorted({r["machine"] for r in rows})))
        print(table(rows))
