"""gsplat's rasterizer against atomsplat's projector and brute-force line integrals.

    python benchmarks/gsplat_comparison.py     # about 7 s on one CPU core
    # writes docs/benchmarks/gsplat_comparison.json and .md, docs/figures/gsplat_comparison.png

A transmission projection is the line integral of the density: additive, every atom's whole weight
in every view. This renders the same atoms four ways and compares each with the truth:

* **brute force**: the mean over each pixel (8 x 8 Gauss-Legendre points) of the line integral
  along the beam (trapezoid rule, step sigma / 4 over +-8 sigma around each atom), of the 3D
  density sum_a w_a (2 pi sigma_a^2)^(-3/2) exp(-|r - r_a|^2 / 2 sigma_a^2); no 2D Gaussian assumed;
* **atomsplat**: :func:`atomsplat.render.projector.project_isotropic` (exact pixel integrals);
* **gsplat, the paper's fork**: gsplat 1.4.0's own pure-torch projection
  (``gsplat.cuda._torch_impl._fully_fused_projection``: EWA splatting, ``camera_model="ortho"``,
  the "classic" 0.3 px^2 screen-space blur, a radius of 3 sigma for the tile binning) and the
  compositing of the paper's fork of ``rasterize_to_pixels_fwd.cu`` (nalinimsingh/gsplat:
  ``pix_out += color * alpha`` with alpha = opacity exp(-sigma), contributions under 1/255
  skipped, no transmittance, no 0.999 clamp), with the parameters the paper's splatfacto passed:
  opacity not squashed (``clamp(opacities, 0)``), images on the scale of its 8-bit PNGs (data over
  the series maximum). Each atom is given the representation that renders its own exact peak on
  its own: colour 1, opacity = its peak w / (2 pi sigma^2) over the image maximum. The
  pure-torch ``_rasterize_to_pixels`` of gsplat itself cannot run here (its
  ``rasterize_to_indices_in_range`` and nerfacc's ``accumulate`` need CUDA), so the compositing
  is written out below from the kernel, pixel by pixel, in torch;
* **gsplat as released**: the same projection with gsplat 1.4.0's own kernel compositing (front to
  back by depth, alpha = min(0.999, opacity exp(-sigma)), contributions under 1/255 skipped, a
  pixel done when its transmittance would fall to 1e-4: C = sum c alpha T).

Cases: the bundled demo particle (201 Pt/Ni atoms; widths 0.6 A, weights proportional to Z^1.7, a
common Z-contrast law) at tilts 0, 30 and 60 degrees on its 104 x 104 pixels of 0.25 A; columns of
1 to 12 equal atoms stacked along the beam (2.5 A apart, sigma 0.6 A), side by side in one image,
which isolates the bias against the number of overlapping atoms; and single atoms whose peaks are
1 to 0.02 of the brightest, side by side in one image (a light atom beside heavy ones).

The brute force evaluates the 3D density at its quadrature points; an isotropic Gaussian factors
into x, y and z parts, which the quadrature uses to stay cheap (the line integral along z is
summed numerically once per atom), never the closed-form 2D Gaussian.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from atomsplat.data.dataparser import bundled_demo_path
from atomsplat.geometry import view_rotations
from atomsplat.render.projector import project_isotropic

ROOT = Path(__file__).resolve().parents[1]
PIXEL, SIZE, SIGMA = 0.25, 104, 0.6
TILTS = (0.0, 30.0, 60.0)
COLUMN_SPACING, COLUMN_ATOMS = 2.5, 12
TILE = 16  # gsplat's tile size (splatfacto's BLOCK_WIDTH)
EPS2D = 0.3  # gsplat's "classic" screen-space blur, px^2
ALPHA_MIN = 1.0 / 255.0  # both kernels skip contributions below this
DONE_T = 1e-4  # gsplat's kernel: a pixel is done when its transmittance would fall to this


# ----------------------------------------------------------------------------- the truth
def brute_force(positions, sigmas, weights, rotation, pixel, height, width, n_xy=8, dz=0.25, reach=8.0):
    """(H, W) mean over each pixel of the line integral of the 3D density along the beam (module
    notes), in weight per A^2; each atom evaluated in its window of +-6 sigma on the detector."""
    nodes, gl = np.polynomial.legendre.leggauss(n_xy)
    offsets = (nodes + 1.0) / 2.0  # in pixels, from the pixel's corner
    wxy = np.outer(gl, gl).reshape(-1) / 4.0
    image = np.zeros((height, width))
    for r_a, s, w in zip(positions @ rotation.T, sigmas, weights):  # r_a: detector frame (x, y, depth)
        z = r_a[2] + np.arange(-reach, reach + 1e-9, dz) * s
        tz = np.full(len(z), dz * s)
        tz[[0, -1]] *= 0.5
        lo_j = max(0, int(np.floor((r_a[0] - 6 * s) / pixel + width / 2)))
        hi_j = min(width, int(np.ceil((r_a[0] + 6 * s) / pixel + width / 2)) + 1)
        lo_i = max(0, int(np.floor((r_a[1] - 6 * s) / pixel + height / 2)))
        hi_i = min(height, int(np.ceil((r_a[1] + 6 * s) / pixel + height / 2)) + 1)
        if lo_i >= hi_i or lo_j >= hi_j:
            continue
        js, is_ = np.arange(lo_j, hi_j), np.arange(lo_i, hi_i)
        x = ((js[:, None] + offsets[None, :]) - width / 2) * pixel  # (J, n)
        y = ((is_[:, None] + offsets[None, :]) - height / 2) * pixel  # (I, n)
        gx = np.exp(-((x - r_a[0]) ** 2) / (2 * s * s))
        gy = np.exp(-((y - r_a[1]) ** 2) / (2 * s * s))
        line = (np.exp(-((z - r_a[2]) ** 2) / (2 * s * s)) * tz).sum()  # the integral along the beam, numerically
        values = w * (2 * np.pi * s * s) ** -1.5 * line * np.einsum("ia,jb,ab->ij", gy, gx, wxy.reshape(n_xy, n_xy))
        image[lo_i:hi_i, lo_j:hi_j] += values
    return image


# ----------------------------------------------------------------------------- gsplat
def gsplat_projection(positions, sigmas, rotation, pixel, height, width):
    """gsplat's own pure-torch projection of isotropic Gaussians into an orthographic view whose
    image is atomsplat's detector (pixel (i, j) at ((j + 0.5 - W/2) p, (i + 0.5 - H/2) p)).

    Returns radii (N,) px, means2d (N, 2) px, depths (N,), conics (N, 3), all of camera 0."""
    means = torch.from_numpy(positions)
    n = len(means)
    quats = means.new_zeros(n, 4)
    quats[:, 0] = 1.0
    scales = torch.from_numpy(np.asarray(sigmas, dtype=float))[:, None].expand(n, 3).contiguous()
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    viewmat = torch.eye(4, dtype=means.dtype)
    viewmat[:3, :3] = torch.from_numpy(rotation)
    viewmat[2, 3] = 100.0  # in front of the near plane; ortho: depth does not scale anything
    K = torch.tensor(
        [[1.0 / pixel, 0.0, width / 2.0], [0.0, 1.0 / pixel, height / 2.0], [0.0, 0.0, 1.0]], dtype=means.dtype
    )
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height, eps2d=EPS2D, camera_model="ortho"
    )
    return radii[0], means2d[0], depths[0], conics[0]


def gsplat_composite(radii, means2d, depths, conics, opacities, height, width, transmittance: bool):
    """(H, W) the single-channel image (colour 1) of gsplat's rasterizer: every Gaussian on the
    pixels of the tiles its radius reaches (as ``isect_tiles`` bins them), evaluated at the pixel
    centre; ``transmittance`` True: gsplat 1.4.0's kernel (front to back, alpha clamped at 0.999,
    a pixel done at T <= 1e-4), False: the paper's fork (a plain sum, no clamp). Both skip
    contributions under 1/255."""
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    pairs_g, pairs_p = [], []
    for g in torch.nonzero(radii > 0)[:, 0].tolist():
        (cx, cy), radius = (means2d[g] / TILE).tolist(), float(radii[g]) / TILE
        x0, x1 = int(np.clip(np.floor(cx - radius), 0, tiles_x)), int(np.clip(np.ceil(cx + radius), 0, tiles_x))
        y0, y1 = int(np.clip(np.floor(cy - radius), 0, tiles_y)), int(np.clip(np.ceil(cy + radius), 0, tiles_y))
        cols = torch.arange(x0 * TILE, min(x1 * TILE, width))
        rows = torch.arange(y0 * TILE, min(y1 * TILE, height))
        pixels = (rows[:, None] * width + cols[None, :]).reshape(-1)
        pairs_g.append(torch.full_like(pixels, g))
        pairs_p.append(pixels)
    g, p = torch.cat(pairs_g), torch.cat(pairs_p)
    delta = means2d[g] - torch.stack([p % width, p // width], dim=-1).to(means2d) - 0.5
    c = conics[g]
    sigma = 0.5 * (c[:, 0] * delta[:, 0] ** 2 + c[:, 2] * delta[:, 1] ** 2) + c[:, 1] * delta[:, 0] * delta[:, 1]
    alpha = opacities[g] * torch.exp(-sigma)
    if transmittance:
        alpha = alpha.clamp(max=0.999)
    alpha = torch.where((sigma < 0) | (alpha < ALPHA_MIN), torch.zeros_like(alpha), alpha)
    image = torch.zeros(height * width, dtype=alpha.dtype)
    if not transmittance:
        return image.index_add_(0, p, alpha).reshape(height, width)
    order = torch.argsort(p * (depths.max() - depths.min() + 1.0) + (depths[g] - depths.min()), stable=True)
    g, p, alpha = g[order], p[order], alpha[order]
    log_keep = torch.log1p(-alpha)
    total = torch.cumsum(log_keep, 0)
    first = torch.ones_like(p, dtype=torch.bool)
    first[1:] = p[1:] != p[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(p)), torch.zeros_like(p)), 0).values
    before = total - log_keep - (total[start] - log_keep[start])  # log T before each Gaussian, per pixel
    after = before + log_keep
    counted = after > np.log(DONE_T)  # T only falls: the pixel is done at the first that would reach 1e-4
    weights = torch.where(counted, alpha * torch.exp(before), torch.zeros_like(alpha))
    return image.index_add_(0, p, weights).reshape(height, width)


# ----------------------------------------------------------------------------- one case
def render_all(positions, sigmas, weights, tilt, height, width):
    """The four images (H, W) of one view, in weight per A^2 (module notes)."""
    rotation = view_rotations([tilt])[0]
    truth = brute_force(positions, sigmas, weights, rotation, PIXEL, height, width)
    exact = project_isotropic(
        *(torch.from_numpy(np.asarray(a, dtype=float)) for a in (positions, sigmas, weights)),
        torch.from_numpy(rotation)[None],
        torch.zeros(1, 2, dtype=torch.float64),
        PIXEL,
        height,
        width,
    )[0].numpy()
    top = float(truth.max())  # the 8-bit PNG scale: data over the image's maximum
    peaks = torch.from_numpy(np.asarray(weights) / (2 * np.pi * np.asarray(sigmas) ** 2))
    projected = gsplat_projection(positions, sigmas, rotation, PIXEL, height, width)
    opacities = peaks / top
    fork = gsplat_composite(*projected, opacities, height, width, transmittance=False).numpy() * top
    stock = gsplat_composite(*projected, opacities, height, width, transmittance=True).numpy() * top
    return {"brute force": truth, "atomsplat": exact, "gsplat, paper's fork": fork, "gsplat 1.4.0": stock}


def scores(images, weights):
    """Per renderer: total mass over the atoms' weight, peak over the brute force's, and the
    largest and RMS difference from the brute force over its peak."""
    truth = images["brute force"]
    out = {}
    for name, image in images.items():
        out[name] = {
            "mass": float(image.sum() * PIXEL**2 / np.sum(weights)),
            "peak": float(image.max() / truth.max()),
            "max_error": float(np.abs(image - truth).max() / truth.max()),
            "rms_error": float(np.sqrt(np.mean((image - truth) ** 2)) / truth.max()),
        }
    return out


def particle_case():
    """The demo particle's atoms (A, sample frame), widths and Z-contrast weights."""
    atoms = ase.io.read(bundled_demo_path() / "ground_truth.xyz")
    positions = atoms.positions - atoms.positions.mean(axis=0)
    weights = atoms.numbers.astype(float) ** 1.7
    return positions, np.full(len(atoms), SIGMA), 1000.0 * weights / weights.max()


def spots(count: int) -> np.ndarray:
    """x (A) of ``count`` spots 6 A apart, centred on the detector."""
    return (np.arange(1, count + 1) - (count + 1) / 2) * 6.0


def columns_case():
    """Columns of 1..12 equal atoms along the beam (z), 6 A apart on the detector, in one image."""
    positions = []
    for n, x in zip(range(1, COLUMN_ATOMS + 1), spots(COLUMN_ATOMS)):
        positions += [[x, 0.0, (k - (n - 1) / 2) * COLUMN_SPACING] for k in range(n)]
    positions = np.array(positions)
    return positions, np.full(len(positions), SIGMA), np.full(len(positions), 1000.0)


BRIGHTNESS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)


def brightness_case():
    """Single atoms whose peaks are the fractions :data:`BRIGHTNESS` of the brightest, 6 A apart in
    one image (a light atom beside heavy ones, on the 8-bit scale of the image maximum)."""
    positions = np.array([[x, 0.0, 0.0] for x in spots(len(BRIGHTNESS))])
    return positions, np.full(len(positions), SIGMA), 1000.0 * np.array(BRIGHTNESS)


def spot_ratios(images, width, count):
    """Per renderer, per spot of :func:`spots`: its peak pixel and its mass (the pixels within 3 A
    of it on x) over the brute force's."""
    truth = images["brute force"]
    x = (np.arange(width) + 0.5 - width / 2) * PIXEL
    out = {name: {"peak": [], "mass": []} for name in images}
    for centre in spots(count):
        near = np.abs(x - centre) < 3.0
        for name, image in images.items():
            out[name]["peak"].append(float(image[:, near].max() / truth[:, near].max()))
            out[name]["mass"].append(float(image[:, near].sum() / truth[:, near].sum()))
    return out


# ----------------------------------------------------------------------------- the report
def figure(particle_images, result, path: Path):
    """The particle at tilt 0 (brute force, each renderer's difference), and the column and
    brightness ratios."""
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()
    names = list(particle_images)
    fig = plt.figure(figsize=(16, 8.4), constrained_layout=True)
    grid = fig.add_gridspec(2, 4)
    truth = particle_images["brute force"]
    extent = np.array([-SIZE, SIZE, SIZE, -SIZE]) * PIXEL / 2
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(truth, cmap="gray", extent=extent)
    ax.set(title="brute force, tilt 0", xlabel="x (A)", ylabel="y (A)")
    image_axes = [fig.add_subplot(grid[0, k]) for k in range(1, 4)]
    for ax, name in zip(image_axes, names[1:]):
        difference = (particle_images[name] - truth) / truth.max()
        shown = ax.imshow(difference, cmap="RdBu_r", vmin=-0.1, vmax=0.1, extent=extent)
        ax.set(title=f"{name} - brute force", xlabel="x (A)")
    fig.colorbar(shown, ax=image_axes, shrink=0.8, label="difference / brute-force peak (clipped at 0.1)")
    panels = (
        (
            grid[1, :2],
            np.arange(1, COLUMN_ATOMS + 1),
            result["columns"],
            "atoms in the column",
            "columns along the beam",
        ),
        (grid[1, 2:], np.array(BRIGHTNESS), result["brightness"], "atom's peak / image maximum", "light beside heavy"),
    )
    for where, x, ratios, label, title in panels:
        ax = fig.add_subplot(where)
        for name, style in zip(names[1:], ("o-", "s--", "^:")):
            ax.plot(x, ratios[name]["peak"], style, label=f"{name}: peak")
            ax.plot(x, ratios[name]["mass"], style, alpha=0.4, label=f"{name}: mass")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set(xlabel=label, ylabel="renderer / brute force", title=title, ylim=(0.6, 1.1))
        if x.dtype.kind == "f":
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def markdown(result) -> str:
    lines = [
        "| renderer | tilt | total mass / sum of weights | peak / brute force | max error / peak | RMS error / peak |",
        "|---|---|---|---|---|---|",
    ]
    for tilt, per in result["particle"].items():
        for name, s in per.items():
            lines.append(
                f"| {name} | {tilt} | {s['mass']:.4f} | {s['peak']:.4f} | {s['max_error']:.2e} | {s['rms_error']:.2e} |"
            )
    for key, head, values in (
        ("columns", "atoms in the column", [str(n) for n in range(1, COLUMN_ATOMS + 1)]),
        ("brightness", "atom's peak / image maximum", [f"{b:g}" for b in BRIGHTNESS]),
    ):
        lines += ["", f"| {head} | " + " | ".join(values) + " |", "|---" * (len(values) + 1) + "|"]
        for name, r in result[key].items():
            if name == "brute force":
                continue
            lines.append(f"| {name}: peak | " + " | ".join(f"{v:.3f}" for v in r["peak"]) + " |")
            lines.append(f"| {name}: mass | " + " | ".join(f"{v:.3f}" for v in r["mass"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "gsplat_comparison")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "gsplat_comparison.png")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    positions, sigmas, weights = particle_case()
    result = {"particle": {}}
    first = None
    for tilt in TILTS:
        images = render_all(positions, sigmas, weights, tilt, SIZE, SIZE)
        first = first or images
        result["particle"][f"{tilt:g}"] = scores(images, weights)
    for key, case, count in (("columns", columns_case, COLUMN_ATOMS), ("brightness", brightness_case, len(BRIGHTNESS))):
        width = int(round((count + 1) * 6.0 / PIXEL))
        result[key] = spot_ratios(render_all(*case(), 0.0, 48, width), width, count)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(markdown(result))
    figure(first, result, args.figure)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
