"""The benchmark suite in one command; numbers go to docs/performance.md, plots to docs/benchmarks/.

    python benchmarks/run_all.py

Measures, each case in a fresh Python process (so that its peak resident memory is its own):

* the projector at the Au particle's size, every backend (``benchmarks/projector.py``);
* the projector's forward + backward time per view and peak memory for 1k, 10k and 100k atoms
  at 128^2, 256^2 and 512^2 pixels, each beside its floor (the least time any implementation
  needs on this machine);
* one density-control pass at 10k, 100k and 1M Gaussians beside a KD-tree floor
  (``benchmarks/density.py``);
* one birth search (back-projected residual and its maxima) at the sizes of the Au particle and
  of the 100,000-atom sphere, beside a gather floor (``benchmarks/births.py``).

On a machine with CUDA every projector case runs on the GPU as well. The tables replace the part
of docs/performance.md between its two ``run_all`` markers; the rest of the page is left alone.

    python benchmarks/run_all.py --cuda

measures the projector on the GPU alone (the Au particle with the Triton and reference kernels, the
scaling grid and a million atoms with the Triton kernels) into the page's ``run_all cuda`` part and
``docs/benchmarks/scaling_cuda.png``, leaving the CPU part as it is.
About 6 minutes on the 2-core development machine (the projector cases measure the machine's
peak rates for their floors). The end-to-end Au training benchmark is
``benchmarks/au_particle.py`` (minutes per tilt scheme), not part of this suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import births  # benchmarks/, the script's folder
import density
import projector

from atomsplat.report import pyplot, save_figure

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
MARKERS = {"all": "run_all", "cuda": "run_all cuda"}  # each between <!-- NAME: begin --> and <!-- NAME: end -->
ATOMS = [1_000, 10_000, 100_000]
PIXELS = [128, 256, 512]
GAUSSIANS = [10_000, 100_000, 1_000_000]
RADII = [29.0, 74.0]  # A: the Au particle's size and the 100,000-atom sphere's
THREAD_SETTINGS = ["OMP_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS"]


def run(script: str, *args) -> list:
    """The JSON lines that ``script --json`` prints, run in a fresh process."""
    done = subprocess.run(
        [sys.executable, str(HERE / script), *map(str, args), "--json"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print("\n".join(f"  {script} {' '.join(map(str, args))}: {row}" for row in rows), flush=True)
    return rows


def plot(grid, dense, path: Path):
    """Time per view against atoms and against pixels (floors dashed), and the density pass
    (left out when ``dense`` is empty)."""
    figure, axes = pyplot().subplots(1, 3 if dense else 2, figsize=(15 if dense else 10, 4.4))
    for device in sorted({r["device"] for r in grid}):
        rows = [r for r in grid if r["device"] == device]
        for axis, (along, across) in zip(axes[:2], [("atoms", "pixels"), ("pixels", "atoms")]):
            for value in sorted({r[across] for r in rows}):
                line = sorted((r for r in rows if r[across] == value), key=lambda r: r[along])
                x = [r[along] for r in line]
                label = f"{device}, {value:,} {across}" if across == "atoms" else f"{device}, {value}^2 pixels"
                drawn = axis.plot(x, [r["ms_per_view"] for r in line], "o-", label=label)
                axis.plot(x, [r["floor_ms_per_view"] for r in line], "--", color=drawn[0].get_color(), alpha=0.6)
    axes[0].set(
        xlabel="atoms",
        ylabel="forward + backward per view (ms)",
        xscale="log",
        yscale="log",
        title="projector against atoms (dashed: floor)",
    )
    axes[1].set(
        xlabel="pixels per side",
        ylabel="forward + backward per view (ms)",
        xscale="log",
        yscale="log",
        title="projector against pixels (dashed: floor)",
    )
    axes[1].set_xticks(PIXELS, [str(p) for p in PIXELS])
    if dense:
        x = [r["gaussians"] for r in dense]
        axes[2].plot(x, [r["seconds"] for r in dense], "o-", label="merge + prune + split + duplicate")
        axes[2].plot(x, [r["floor_seconds"] for r in dense], "--", label="floor: KD-tree build")
        axes[2].set(xlabel="Gaussians", ylabel="seconds", xscale="log", yscale="log", title="one density-control pass")
    for axis in axes:
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def write(section: str, page: Path, name: str):
    """Replace the part of ``page`` between the markers ``name`` by ``section`` (append it if there
    are none)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = page.read_text() if page.exists() else "# Performance\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)


def cuda_section(page: Path, plot_path: Path) -> str:
    """The projector on the GPU alone: the Au particle (Triton and reference kernels), the scaling
    grid and a million atoms (Triton)."""
    start = time.perf_counter()
    au = run("projector.py", "--device", "cuda", "--backends", "triton", "reference")
    grid = [
        row
        for atoms in ATOMS + [1_000_000]
        for pixels in PIXELS
        for row in run("projector.py", "--device", "cuda", "--atoms", atoms, "--pixels", pixels, "--backends", "triton")
    ]
    minutes = (time.perf_counter() - start) / 60
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(grid, [], plot_path)
    machines = sorted({r["machine"] for r in au + grid})
    figure = plot_path.relative_to(page.parent).as_posix()
    return f"""## Measured by `python benchmarks/run_all.py --cuda`

{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes. Device: {"; ".join(machines)}.
The cases and the floor as in the CPU tables above, on the GPU: the peak multiply-add rate is that
of an 8192 x 8192 float32 matrix product with TF32 off, the bandwidth that of a device-to-device
copy; every time is the best of several runs, each run synchronised.

### Projector at the Au particle's size

{projector.table(au)}

### Projector scaling

Peak memory: CUDA's peak allocation.

{projector.table(grid, with_memory=True)}

![scaling on the GPU: projector time per view against atoms and pixels]({figure})
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=Path, default=DOCS / "performance.md")
    parser.add_argument("--plot", type=Path, help="default: docs/benchmarks/scaling.png (scaling_cuda.png with --cuda)")
    parser.add_argument("--cuda", action="store_true", help="the projector on the GPU alone, into its own part")
    args = parser.parse_args()
    if args.cuda:
        plot_path = args.plot or DOCS / "benchmarks" / "scaling_cuda.png"
        write(cuda_section(args.page, plot_path), args.page, MARKERS["cuda"])
        print(f"wrote {args.page} and {plot_path}")
        return
    args.plot = args.plot or DOCS / "benchmarks" / "scaling.png"
    start, load_before = time.perf_counter(), os.getloadavg()
    au = run("projector.py", "--backends", "auto", "reference")
    grid = [
        row
        for atoms in ATOMS
        for pixels in PIXELS
        for row in run("projector.py", "--atoms", atoms, "--pixels", pixels, "--backends", "auto")
    ]
    dense = [row for count in GAUSSIANS for row in run("density.py", "--gaussians", count)]
    born = [row for radius in RADII for row in run("births.py", "--radius", radius)]
    minutes, load_after = (time.perf_counter() - start) / 60, os.getloadavg()

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(grid, dense, args.plot)
    machines = sorted({r["machine"] for r in au + grid + dense + born})
    settings = ", ".join(f"{name}={os.environ[name]}" for name in THREAD_SETTINGS if name in os.environ) or "none"
    figure = args.plot.relative_to(args.page.parent).as_posix()
    section = f"""## Measured by `python benchmarks/run_all.py`

{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes. Machine: {"; ".join(machines)}.
Thread settings in the environment: {settings}. Load average (1, 5, 15 min)
{", ".join(f"{x:.1f}" for x in load_before)} before the run and {", ".join(f"{x:.1f}" for x in load_after)} after it
(other processes shared the cores); every time is the best of several runs.

### Projector at the Au particle's size

6,679 atoms (Au_NP.xyz), sigma 0.6 A, 280 x 280 pixels of 0.25 A, 4 views per call, float32.
The floor is the least time any implementation needs on this machine (`benchmarks/projector.py`):
three multiply-adds per footprint value (a window pixel inside the detector: one to add the outer
product into the image, one for each of the two contractions of the image gradient with it) at
the peak multiply-add rate of a matrix product, or the image written and its gradient read once
at the bandwidth of a copy, whichever takes longer; the rates are measured in each case's
process. The ratio is the measured time over the floor.

{projector.table(au)}

### Projector scaling

Atoms uniform in a ball filling 90 % of the field of view, sigma 0.6 A, pixels of 0.25 A
(23 x 23-pixel windows), 4 views per call, float32, the default backend, each case in a fresh
process. Peak memory: the process's peak resident set, torch and its libraries included (in
brackets what the case added), or on CUDA the peak allocation.

{projector.table(grid, with_memory=True)}

### Density control

One pass of merge (1.6 A), prune, split and duplicate, as `AtomSplatModel.refine` does it, on the
Gaussians of a particle at atomic density with 0.75 surplus Gaussians per atom near atom sites
(`benchmarks/density.py`); each size in a fresh process.

{density.table(dense)}

### Births

One search for missing atoms, as `AtomSplatModel.backprojected_residual` and
`density.residual_peaks` do it every 300 steps: 45 residual images back-projected onto the 0.5 A
grid over a ball of atoms (0.06 per A^3) and the maxima far from the atoms found; the floor is 45
bare gathers of one view's pixel values at the grid points (`benchmarks/births.py`).

{births.table(born)}

![scaling: projector time per view against atoms and pixels, density pass against Gaussians]({figure})
"""
    write(section, args.page, MARKERS["all"])
    print(f"wrote {args.page} and {args.plot} in {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
