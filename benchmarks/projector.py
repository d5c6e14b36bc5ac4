"""Projector speed and memory: forward + backward per view, beside the floor no implementation can beat.

    python benchmarks/projector.py                      # the Au particle's size, every backend
    python benchmarks/projector.py --atoms 10000 --pixels 256 --json

The Au case: the 6,679 atoms of Au_NP.xyz, sigma 0.6 A, 280 x 280 pixels of 0.25 A. A sized case
(``--atoms``, ``--pixels``): that many atoms uniform in a ball filling 90 % of the field of view,
sigma 0.6 A, pixels of 0.25 A (23 x 23-pixel windows). Both: float32, 4 views per call (tilts
-60..60 degrees), the time of one call divided by the views.

The floor is the larger of two times, each a part of the work that every implementation of the
windowed projector must do, at this machine's measured peak rate:

* arithmetic: three multiply-adds per footprint value (a window pixel inside the detector): one to
  add the outer product into the image, and one for each of the two contractions of the image
  gradient with the footprint's factors that the gradients need. At the peak float32
  multiply-add rate of a large matrix product (:func:`timing.multiply_add_rate`). Left out, so
  that the floor only omits work and never adds any: the erf values of the 1D profiles forward
  and the exp values of their derivatives backward (2 (S + 1) of each per view and Gaussian: no
  honest lower bound on their cost is known), all the other O(S) arithmetic per window, every
  index computation and every per-call overhead.
* memory: the float32 image written once and its gradient read once, and five parameters per
  Gaussian read and their gradients written once, at the bandwidth of a plain copy of the
  image's size (in cache where it fits) or of 256 MB, whichever is higher
  (:func:`timing.copy_bandwidth`).

The rates are measured in the same process, best of several runs; on the CPU the higher of all
cores together and one core times their number. A measurement below its floor stops the
benchmark: the floor model would be wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
import torch
from timing import best_time, copy_bandwidth, machine, multiply_add_rate, peak_rss_mb, rss_mb

from atomsplat.geometry import view_rotations
from atomsplat.render.backend import footprint_kernels, projector_backend
from atomsplat.render.projector import detector_centres, project_isotropic, window_radii
from atomsplat.render.windows import window_start

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


def footprint_values(centres: torch.Tensor, sigmas: torch.Tensor, pixels: int) -> int:
    """Footprint values of one call: the pixels inside the detector of every (view, Gaussian)
    window, as the projector places them (detector centres (V, K, 2), widths (K,), A)."""
    total = 0
    radii = window_radii(sigmas, PIXEL)
    for radius in torch.unique(radii).tolist():
        group = centres[:, radii == radius]
        inside = []
        for axis in (0, 1):
            start = window_start(group[..., axis], pixels, PIXEL, radius)
            inside.append((start + 2 * radius + 1).clamp(0, pixels) - start.clamp(0, pixels))
        total += int((inside[0] * inside[1]).sum())
    return total


def floor_seconds(values: int, views: int, pixels: int, atoms: int, device: str) -> dict:
    """The least time in which any implementation can do one forward + backward call, and its
    parts, from this machine's measured peak rates (see the module docstring)."""
    multiply_adds = 3 * values  # one per footprint value forward, one per contraction backward
    image_bytes = 4 * views * pixels * pixels  # float32
    traffic = 2 * image_bytes + 4 * 10 * atoms  # image and its gradient; 5 parameters and their gradients
    rate = multiply_add_rate(device)
    bandwidth = copy_bandwidth(device, image_bytes)
    arithmetic, memory = multiply_adds / rate, traffic / bandwidth
    return {
        "seconds": max(arithmetic, memory),
        "bound": "arithmetic" if arithmetic >= memory else "memory",
        "arithmetic_seconds": arithmetic,
        "memory_seconds": memory,
        "multiply_adds_per_s": rate,
        "bytes_per_s": bandwidth,
    }


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
    memory.update(rss_before_mb=before, peak_rss_mb=peak_rss_mb())  # before the floor's measurements

    values = footprint_values(detector_centres(means.detach(), rotations, offsets), sigmas.detach(), pixels)
    floor = floor_seconds(values, VIEWS, pixels, count, device)
    if seconds < floor["seconds"]:
        raise RuntimeError(
            f"{kernels.name} on {device}: {1e3 * seconds:.3f} ms per call beats its floor of "
            f"{1e3 * floor['seconds']:.3f} ms ({floor}): the floor model is wrong"
        )
    return {
        "device": device,
        "machine": machine(device),
        "backend": kernels.name,
        "atoms": count,
        "pixels": pixels,
        "views": VIEWS,
        "footprint_values_per_view": values // VIEWS,
        "ms_per_view": 1e3 * seconds / VIEWS,
        "multiply_adds_per_s": floor["multiply_adds_per_s"],
        "bytes_per_s": floor["bytes_per_s"],
        "floor_bound": floor["bound"],
        "floor_ms_per_view": 1e3 * floor["seconds"] / VIEWS,
        "ratio": seconds / floor["seconds"],
        **memory,
    }


def memory(row) -> str:
    """Peak memory of a measurement: CUDA's peak allocation, or the process's peak resident set
    (torch and its libraries included) with, in brackets, what the case added to it."""
    if "peak_cuda_mb" in row:
        return f"{row['peak_cuda_mb']:.0f} (CUDA, allocated)"
    return f"{row['peak_rss_mb']:.0f} ({row['peak_rss_mb'] - row['rss_before_mb']:.0f} above start)"


def milliseconds(value: float) -> str:
    """A time in ms with three decimals, or three significant digits below 0.01 ms (GPU floors)."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.3g}"


def table(rows, with_memory: bool = False) -> str:
    """Markdown table of measurements."""
    head = (
        "| device | backend | atoms | pixels | footprint values per view | fwd+bwd per view (ms) "
        "| peak multiply-adds (G/s) | bandwidth (GB/s) | floor per view (ms) | ratio |"
    )
    rule = "| --- " * 10 + "|"
    lines = [head + (" peak memory (MB) |" if with_memory else ""), rule + (" --- |" if with_memory else "")]
    for r in rows:
        line = (
            f"| {r['device']} | {r['backend']} | {r['atoms']:,} | {r['pixels']}^2 "
            f"| {r['footprint_values_per_view']:,} | {r['ms_per_view']:.2f} "
            f"| {r['multiply_adds_per_s'] / 1e9:.0f} | {r['bytes_per_s'] / 1e9:.0f} "
            f"| {milliseconds(r['floor_ms_per_view'])} ({r['floor_bound']}) | {r['ratio']:.0f} |"
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
