"""A second simulator, independent of abTEM: incoherent ADF-STEM counts with an aperture-limited
probe, to test atomsplat on atoms of a shape it was not tuned on.

    python benchmarks/incoherent_adf.py SOURCE OUTPUT [--aperture 25] [--voltage 300]
        [--defocus 0] [--cs 0] [--focal-spread 0] [--source-size 0.25] [--thermal 0.08] [--seed 0]
        [--figure PNG]

SOURCE: a counts dataset of ``atomsplat-simulate --dose`` (its atoms, tilt angles, pixels, dose
and pedestal are kept; one that is misaligned, has a ramp, or whose projections are no longer
those its simulation record draws, e.g. after microscope_effects.py, is refused: those would be
lost). OUTPUT gets the same atoms imaged another way:

- the image of an atom is the probe's intensity (not a projected potential): incoherent ADF
  imaging, whose object is the atom's high-angle scattering, far narrower than the probe;
- the probe is that of a round aperture of ``--aperture`` mrad at ``--voltage`` kV with defocus
  and spherical aberration (an Airy disc and its rings when both are 0) and a spread of defocus
  (chromatic aberration: a broad tail around the core), blurred by a Gaussian
  source of ``--source-size`` A and by the atoms' thermal vibration ``--thermal`` A (rms per
  axis; the time average of a scan's dwell); the footprint is one radial profile for every
  element;
- each probe position (pixel centre, :mod:`atomsplat.geometry`) counts the electrons that the atoms
  scatter from the probe there, ``dose * p^2 * sigma_s * footprint(r)``, point-sampled, not
  averaged over the pixel, plus the source's pedestal, with Poisson noise;
- the cross-sections follow Z^1.7 (:func:`atomsplat.sim.adf.adf_cross_sections`), scaled (by
  bisection, one noise draw) so that the brightest pixel of a projection is on average that of
  SOURCE: the same peak counts as the issue's series (about 9, 12 and 46 at 8e3, 1.6e4 and 1.6e5),
  from atoms of another shape.

Electrons the footprint sends beyond ``--window`` A of the atom (the Airy rings' far tail) are not
counted; the share is printed and kept in metadata.json. OUTPUT's metadata.json names only the
pixel size and tilt axis, as a microscope's file might: ``ns-train atomsplat --data OUTPUT`` must
find the counts and has no elements to tie (the record is kept under ``"incoherent_adf"``).
Refuses an existing OUTPUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import tifffile
from ase.io import read as ase_read
from scipy.special import j0

from atomsplat.data.series import GROUND_TRUTH, METADATA
from atomsplat.data.tiff_dataset import ANGLES, PROJECTIONS, read_tiff_dataset
from atomsplat.geometry import view_rotations
from atomsplat.sim.adf import adf_cross_sections
from atomsplat.sim.simulate import rebuild_expected_counts


def wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength, A, at ``voltage_kv`` kV (300 kV: 0.01969 A)."""
    volts = voltage_kv * 1e3
    return 12.2643 / np.sqrt(volts * (1.0 + 0.97848e-6 * volts))


def footprint(
    radii: np.ndarray,
    aperture_mrad: float,
    voltage_kv: float,
    defocus: float,
    cs_mm: float,
    blur: float,
    focal_spread: float = 0.0,
) -> tuple[np.ndarray, float]:
    """The probe's intensity, blurred by a Gaussian of ``blur`` A (rms per axis), at ``radii`` (A).

    Hankel transforms of the round aperture's wave ``exp(-i chi(k))``, ``chi = pi lambda defocus k^2 +
    pi / 2 Cs lambda^3 k^4`` (k in 1/A, defocus in A, Cs in mm), the intensity averaged over a
    Gaussian spread of defocus of ``focal_spread`` A rms (chromatic aberration times the beam's
    energy spread); the blurred intensity's transform is the intensity's times ``exp(-2 pi^2
    blur^2 q^2)``.

    Returns:
        (footprint (len(radii),) in 1/A^2, normalised to integrate to 1 over the whole plane; the
        share of its integral beyond ``radii[-1]``).
    """
    lam = wavelength(voltage_kv)
    k_max = aperture_mrad * 1e-3 / lam
    k = np.linspace(0.0, k_max, 1500)
    # psi(r) = 2 pi int a(k) J0(2 pi k r) k dk on a fine radial grid reaching well past the window
    r = np.linspace(0.0, 4.0 * radii[-1], 8000)
    dk = k[1] - k[0]
    kernel = j0(2.0 * np.pi * np.outer(r, k))
    # the focal spread: intensities averaged over a Gaussian spread of defocus (Gauss-Hermite nodes)
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(21 if focal_spread > 0 else 1)
    intensity = np.zeros_like(r)
    for node, node_weight in zip(nodes, node_weights / node_weights.sum()):
        focus = defocus + focal_spread * node
        chi = np.pi * lam * focus * k**2 + 0.5 * np.pi * cs_mm * 1e7 * lam**3 * k**4
        psi = 2.0 * np.pi * (kernel @ (np.exp(-1j * chi) * k)) * dk
        intensity += node_weight * np.abs(psi) ** 2
    # the blur, in Hankel space: I(q) = 2 pi int I(r) J0(2 pi q r) r dr, q up to twice the aperture
    q = np.linspace(0.0, 2.0 * k_max, 1500)
    dr = r[1] - r[0]
    spectrum = 2.0 * np.pi * (j0(2.0 * np.pi * np.outer(q, r)) @ (intensity * r)) * dr
    spectrum *= np.exp(-2.0 * np.pi**2 * blur**2 * q**2)
    dq = q[1] - q[0]
    total = np.pi * k_max**2  # the plane integral of |psi|^2 (Parseval)
    values = 2.0 * np.pi * (j0(2.0 * np.pi * np.outer(radii, q)) @ (spectrum * q)) * dq / total
    inside = np.trapezoid(values * 2.0 * np.pi * radii, radii)
    return values, float(1.0 - inside)


def unit_images(
    positions: np.ndarray, weights: np.ndarray, angles: np.ndarray, tilt_axis: float, pixel_size: float, shape, table
) -> np.ndarray:
    """(N, H, W) sum over atoms of ``weights * footprint(|d - pixel|)``, point-sampled at the pixel
    centres; ``positions`` (n, 3) A in the sample frame, ``table`` (radii, values)."""
    radii, values = table
    h, w = shape
    reach = int(np.ceil(radii[-1] / pixel_size))
    offsets = np.arange(-reach, reach + 1)
    out = np.zeros((len(angles), h, w))
    for k, rotation in enumerate(view_rotations(angles, tilt_axis)):
        detector = positions @ rotation[:2].T  # (n, 2) x, y in A
        # continuous pixel coordinates: x = (j + 0.5 - W / 2) p
        col = detector[:, 0] / pixel_size + w / 2.0 - 0.5
        row = detector[:, 1] / pixel_size + h / 2.0 - 0.5
        j = np.rint(col).astype(int)[:, None, None] + offsets[None, None, :]
        i = np.rint(row).astype(int)[:, None, None] + offsets[None, :, None]
        dist = pixel_size * np.hypot(j - col[:, None, None], i - row[:, None, None])
        contrib = weights[:, None, None] * np.interp(dist, radii, values, right=0.0)
        ii, jj = np.broadcast_arrays(i, j)
        keep = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        np.add.at(out[k], (ii[keep], jj[keep]), contrib[keep])
    return out


def plot(radii, values, source: np.ndarray, made: np.ndarray, title: str, path: Path) -> None:
    """The footprint (its profile and encircled share) beside one projection of SOURCE and of OUTPUT."""
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()
    fig, (profile, left, right) = plt.subplots(1, 3, figsize=(13, 4.2))
    profile.semilogy(radii, values / values[0], label="footprint / its peak")
    encircled = np.cumsum(values * 2.0 * np.pi * radii) * (radii[1] - radii[0])
    profile.semilogy(radii, np.clip(1.0 - encircled, 1e-6, None), label="share beyond r")
    profile.set_ylim(1e-5, 1.5)
    profile.set_xlabel("r (A)")
    profile.legend()
    profile.set_title("the atom's image")
    for axis, image, name in ((left, source, "SOURCE (abTEM)"), (right, made, "this simulator")):
        shown = axis.imshow(image, cmap="magma")
        fig.colorbar(shown, ax=axis, label="counts")
        axis.set_title(f"{name}, projection 0")
        axis.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--aperture", type=float, default=25.0, help="probe semi-angle, mrad")
    parser.add_argument("--voltage", type=float, default=300.0, help="kV")
    parser.add_argument("--defocus", type=float, default=0.0, help="A")
    parser.add_argument("--cs", type=float, default=0.0, help="spherical aberration, mm")
    parser.add_argument("--focal-spread", type=float, default=0.0, help="rms spread of defocus, A (Cc dE / E)")
    parser.add_argument("--source-size", type=float, default=0.25, help="Gaussian source, rms per axis, A")
    parser.add_argument("--thermal", type=float, default=0.08, help="atoms' vibration, rms per axis, A")
    parser.add_argument("--window", type=float, default=6.0, help="footprint's reach, A")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=None, help="write the footprint and a projection here (.png)")
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output}: exists; choose another output")
    series = read_tiff_dataset(args.source)
    record = (series.extra or {}).get("simulation", {})
    if record.get("dose") is None:
        raise SystemExit(f"{args.source}: not a counts dataset of atomsplat-simulate --dose")
    # what this simulator does not reproduce would be silently dropped: refuse it instead
    spoilt = {
        "an unknown misalignment": record.get("misalignment_pixels", 0.0) > 0,
        "a background ramp": record.get("background_ramp", 0.0) > 0,
    }
    if any(spoilt.values()):
        raise SystemExit(f"{args.source}: holds {', '.join(k for k, v in spoilt.items() if v)}; use an unspoilt series")
    atoms = ase_read(args.source / GROUND_TRUTH)
    redrawn = np.random.default_rng(record["seed"]).poisson(rebuild_expected_counts(series, atoms))
    if not np.array_equal(redrawn, series.projections):
        raise SystemExit(
            f"{args.source}: its projections are not those its simulation record draws (changed after "
            "atomsplat-simulate, e.g. by benchmarks/microscope_effects.py); use an unspoilt series"
        )
    symbols = atoms.get_chemical_symbols()
    sigma = adf_cross_sections(sorted(set(symbols)))
    weights = np.array([sigma[s] for s in symbols])
    radii = np.linspace(0.0, args.window, 3001)
    blur = float(np.hypot(args.source_size, args.thermal))
    values, lost = footprint(radii, args.aperture, args.voltage, args.defocus, args.cs, blur, args.focal_spread)
    shifts = series.shifts_or_zeros()
    if np.any(shifts):
        raise SystemExit(f"{args.source}: known shifts are not supported here")
    dose, p = record["dose"], series.pixel_size
    unit = dose * p**2 * unit_images(atoms.positions, weights, series.tilt_angles, series.tilt_axis_angle, p,
                                     series.shape[1:], (radii, values))  # fmt: skip
    target = series.projections.max(axis=(1, 2)).mean()
    low, high = 0.0, 10.0 * target / unit.max(axis=(1, 2)).mean()
    for _ in range(30):  # bisection on the scale; the same draw's seed throughout
        scale = 0.5 * (low + high)
        counts = np.random.default_rng(args.seed).poisson(scale * unit + record["pedestal"]).astype(np.float32)
        low, high = (scale, high) if counts.max(axis=(1, 2)).mean() < target else (low, scale)
    meta = {
        "pixel_size": p,
        "tilt_axis_angle": series.tilt_axis_angle,
        "incoherent_adf": {
            "source": str(args.source),
            "aperture_mrad": args.aperture,
            "voltage_kv": args.voltage,
            "defocus": args.defocus,
            "cs_mm": args.cs,
            "focal_spread": args.focal_spread,
            "source_size": args.source_size,
            "thermal": args.thermal,
            "window": args.window,
            "lost_beyond_window": lost,
            "dose": dose,
            "pedestal": record["pedestal"],
            "cross_sections": {s: v * scale for s, v in sigma.items()},
            "seed": args.seed,
            "mean_brightest_pixel": float(counts.max(axis=(1, 2)).mean()),
        },
    }
    args.output.mkdir(parents=True)
    tifffile.imwrite(args.output / PROJECTIONS, counts, photometric="minisblack")
    for name in (ANGLES, GROUND_TRUTH):
        shutil.copy(args.source / name, args.output / name)
    (args.output / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    fwhm = 2.0 * radii[np.argmax(values < values[0] / 2.0)]
    if args.figure is not None:
        title = (f"{args.output.name}: {args.aperture:g} mrad at {args.voltage:g} kV, focal spread "
                 f"{args.focal_spread:g} A, blur {blur:.2f} A; FWHM {fwhm:.2f} A")  # fmt: skip
        plot(radii, values, series.projections[0], counts[0], title, args.figure)
    print(
        f"{args.output}: {len(counts)} projections; footprint FWHM {fwhm:.2f} A, {100 * lost:.2f} % beyond "
        f"{args.window} A; Si cross-section {scale * sigma.get('Si', sigma[symbols[0]]):.2e} A^2 "
        f"(x {scale:.2f}); brightest pixel of a projection {meta['incoherent_adf']['mean_brightest_pixel']:.1f}"
    )


if __name__ == "__main__":
    main()
