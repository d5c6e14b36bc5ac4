"""Simulated tilt series of an atomic structure: abTEM projected potentials on atomsplat's grid.

Each projection follows the paper's recipe (DESIGN.md, "The method in the paper"): the infinite
projected potential of the rotated structure (abTEM, Lobato parametrization, in V A), convolved
with a Gaussian probe, plus Gaussian noise; or, for the low-dose regime, ADF-STEM counts: each
species' projected potential weighted by its ADF cross-section (:mod:`atomsplat.sim.adf`), plus a
pedestal, with Poisson noise. Geometry and pixel grid are those of :mod:`atomsplat.geometry`.

abTEM's grid (checked in abTEM 1.0.11's ``ScatteringFactorProjectionIntegrals.integrate_on_grid``
and by placing single atoms): the array of an (nx, ny) potential is indexed ``[ix, iy]`` and the
value at ``[ix, iy]`` is the potential at ``x = ix * sampling``, ``y = iy * sampling`` measured
from the cell corner; the build is periodic in x and y. We therefore translate the atoms so that
pixel ``(i, j)`` of our (H, W) image lands on a grid point, embed the field of view in a grid
large enough that nothing wraps around, crop, and transpose to (row = y, column = x).
"""

from __future__ import annotations

import math
import sys

import abtem
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from scipy.ndimage import gaussian_filter

from atomsplat.data.series import TiltSeries
from atomsplat.sim.adf import ADF_EXPONENT, DEFAULT_PEDESTAL, adf_cross_sections, counts_per_potential

# Space (A) kept between any atom and the edge of the default field of view and of abTEM's grid:
# the projected potential of an atom falls below 1e-5 of its peak within 3 A.
MARGIN = 4.0


def center_structure(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` moved into the sample frame (A): the origin becomes the rotation centre.

    The centre is the centre of the cell when the cell spans all three directions (a structure
    built or saved in a box, e.g. ``Au_NP.xyz`` in its 70 A box, keeps the centre its author
    chose), otherwise the centre of the atoms' bounding box. The cell itself is kept unchanged: it
    no longer marks where the atoms are, only the size of the box (which sets the default field
    of view of :func:`simulate_tilt_series`).
    """
    out = atoms.copy()
    if out.cell.rank == 3:
        centre = out.cell.array.sum(axis=0) / 2.0
    else:
        centre = (out.positions.min(axis=0) + out.positions.max(axis=0)) / 2.0
    out.positions -= centre
    return out


def rotate_to_view(atoms: Atoms, tilt_angle: float, tilt_axis_angle: float = 0.0) -> Atoms:
    """A copy of sample-frame ``atoms`` as seen in a view: tilted ``tilt_angle`` degrees about x
    through the origin, then turned ``tilt_axis_angle`` degrees about z; the beam runs along z.

    The new positions are ``positions @ M.T`` with ``M`` from :func:`atomsplat.geometry.view_rotations`.
    """
    out = atoms.copy()
    out.rotate(tilt_angle, "x", center=(0.0, 0.0, 0.0))
    if tilt_axis_angle:
        out.rotate(tilt_axis_angle, "z", center=(0.0, 0.0, 0.0))
    return out


def default_shape(atoms: Atoms, pixel_size: float) -> tuple[int, int]:
    """Default (H, W) in pixels: the cell's y and x extent when the cell spans all three
    directions (the Au particle's 70 A box at 0.25 A gives 280 x 280), else a square holding
    every sample-frame atom at any tilt, ``2 * (max |r| + MARGIN)``; sides are rounded up to even.
    """
    if atoms.cell.rank == 3:
        extent_x, extent_y = np.abs(atoms.cell.array[:, :2]).sum(axis=0)
    else:
        extent_x = extent_y = 2.0 * (np.linalg.norm(atoms.positions, axis=1).max() + MARGIN)
    return _even_pixels(extent_y / pixel_size), _even_pixels(extent_x / pixel_size)


def _even_pixels(n: float) -> int:
    """``n`` rounded up to an even whole number of pixels (tolerating float round-off)."""
    return 2 * math.ceil(n / 2.0 - 1e-9)


def _projected_potential(atoms: Atoms, pixel_size: float, shape: tuple[int, int], shift) -> np.ndarray:
    """abTEM's infinite projected potential (V A) of view-frame ``atoms`` on our (H, W) grid.

    Args:
        atoms: atoms in the view frame (A), beam along z, origin on the detector centre.
        pixel_size: pixel size, A.
        shape: (H, W) of the image.
        shift: (2,) detector shift, A: the image is that of the atoms moved by ``+shift`` in x, y.

    Returns:
        (H, W) float32: pixel (i, j) at ``x = (j + 0.5 - W / 2) p``, ``y = (i + 0.5 - H / 2) p``.
    """
    p, (h, w) = pixel_size, shape
    xy = atoms.positions[:, :2] + np.asarray(shift, float)
    # Pad the field of view until every atom is at least MARGIN inside abTEM's periodic grid.
    reach = np.abs(xy).max(axis=0) + MARGIN
    pad_x, pad_y = (max(0, math.ceil((reach[k] - n * p / 2.0) / p)) for k, n in ((0, w), (1, h)))
    nx, ny = w + 2 * pad_x, h + 2 * pad_y
    z = atoms.positions[:, 2]
    depth = z.max() - z.min() + 2.0 * MARGIN
    # Column j of the field of view is grid index ix = j + pad_x, at x_abtem = ix * p.
    placed = atoms.copy()
    placed.positions[:, :2] = xy + ((pad_x + w / 2.0 - 0.5) * p, (pad_y + h / 2.0 - 0.5) * p)
    placed.positions[:, 2] = z - z.min() + MARGIN
    placed.cell = (nx * p, ny * p, depth)
    potential = abtem.Potential(
        placed,
        gpts=(nx, ny),
        slice_thickness=depth,  # one slice: the whole projection
        parametrization="lobato",
        projection="infinite",
    )
    array = potential.build(lazy=False).project().array  # (nx, ny), summed over slices
    return np.ascontiguousarray(array[pad_x : pad_x + w, pad_y : pad_y + h].T, dtype=np.float32)


def _project_series(
    atoms: Atoms,
    angles: np.ndarray,
    pixel_size: float,
    probe_sigma: float,
    shape: tuple[int, int],
    tilt_axis_angle: float,
    shifts: np.ndarray,
    weights: dict | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(N, H, W) probe-blurred projected potentials of the views of ``angles`` (see
    :func:`simulate_tilt_series`), each moved by ``shifts`` (N, 2) A on the detector.

    With ``weights`` None: float32, V A, one abTEM projection of all atoms per view. With
    ``weights`` {symbol: factor}: float64, the sum over species of factor times that species'
    projection (one abTEM projection per species per view).
    """
    progress = progress and sys.stderr.isatty()  # a counter rewritten in place: terminals only
    symbols = np.array(atoms.get_chemical_symbols())
    parts = [(atoms, 1.0)] if weights is None else [(atoms[symbols == s], w) for s, w in weights.items()]
    out = np.zeros((len(angles),) + tuple(shape), dtype=np.float32 if weights is None else np.float64)
    for k, angle in enumerate(angles):
        if progress:
            print(f"\rsimulating projection {k + 1}/{len(angles)}", end="", file=sys.stderr, flush=True)
        for part, weight in parts:
            image = _projected_potential(rotate_to_view(part, angle, tilt_axis_angle), pixel_size, shape, shifts[k])
            if probe_sigma > 0:
                image = gaussian_filter(image, sigma=probe_sigma / pixel_size, mode="constant")
            out[k] += image if weights is None else weight * image.astype(np.float64)
    if progress:
        print(file=sys.stderr)
    return out


def expected_counts(
    atoms: Atoms,
    tilt_angles,
    dose: float,
    pixel_size: float = 0.25,
    probe_sigma: float = 0.5,
    pedestal: float = DEFAULT_PEDESTAL,
    shape: tuple[int, int] | None = None,
    tilt_axis_angle: float = 0.0,
    shifts=None,
    exponent: float = ADF_EXPONENT,
    cross_sections: dict | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The noise-free expected ADF counts (N, H, W) of ``atoms`` at ``dose`` (:mod:`atomsplat.sim.adf`).

    Pixel (i, j) of view k expects ``dose * p^2 * sum_s sigma_s / C_s * V_s + pedestal`` counts,
    with ``V_s`` the probe-blurred infinite projected potential (V A) of the atoms of species s in
    view k as in :func:`simulate_tilt_series`, ``sigma_s`` their ADF cross-section (A^2) and
    ``C_s`` the plane integral of one atom's projected potential (V A^3): an atom of species s
    inside the field of view adds ``dose * sigma_s`` counts to the image.

    Args:
        atoms: the structure, positions in A in the sample frame.
        tilt_angles: (N,) tilt angles, degrees.
        dose: electrons per A^2 per projection.
        pixel_size: pixel size p, A.
        probe_sigma: standard deviation of the Gaussian probe, A.
        pedestal: expected counts per pixel with no atom.
        shape: (H, W) in pixels, or None for :func:`default_shape`.
        tilt_axis_angle: in-plane angle of the tilt axis from the detector x axis, degrees.
        shifts: (N, 2) detector shifts in A, or None.
        exponent: exponent n of ``sigma(Z) = sigma_Si (Z / 14)^n`` (:func:`atomsplat.sim.adf.adf_cross_sections`).
        cross_sections: {symbol: sigma in A^2} for every species present, overriding ``exponent``.
        progress: show a projection counter on stderr when it is a terminal.

    Returns:
        (N, H, W) float64 expected counts.
    """
    angles = np.atleast_1d(np.asarray(tilt_angles, dtype=float))
    if len(atoms) == 0:
        raise ValueError("the structure holds no atoms")
    if not dose > 0:
        raise ValueError(f"dose must be a positive number of electrons per A^2, got {dose!r}")
    if not pedestal >= 0:
        raise ValueError(f"pedestal must be a non-negative number of counts per pixel, got {pedestal!r}")
    if not pixel_size > 0 or not probe_sigma >= 0:
        raise ValueError("pixel_size must be positive and probe_sigma must not be negative")
    shape = default_shape(atoms, pixel_size) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive numbers of pixels (H, W), got {shape}")
    shifts = np.zeros((len(angles), 2)) if shifts is None else np.asarray(shifts, dtype=float)
    if shifts.shape != (len(angles), 2):
        raise ValueError(f"shifts must have shape ({len(angles)}, 2), got {shifts.shape}")
    present = [chemical_symbols[z] for z in np.unique(atoms.numbers)]
    if cross_sections is None:
        cross_sections = adf_cross_sections(present, exponent)
    missing = sorted(set(present) - set(cross_sections))
    if missing:
        raise ValueError(f"cross_sections gives no ADF cross-section for {missing}")
    weights = counts_per_potential({s: float(cross_sections[s]) for s in present}, dose, pixel_size)
    counts = _project_series(atoms, angles, pixel_size, probe_sigma, shape, tilt_axis_angle, shifts, weights, progress)
    # abTEM projects in Fourier space: its images ring at a few 1e-6 of their peak, also below zero.
    return np.clip(counts, 0.0, None) + float(pedestal)


def _planes(coefficients: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) planes ``c0 + c1 u + c2 v`` of ``coefficients`` (N, 3), with ``u, v`` the detector
    coordinates scaled to [-1, 1] at the pixel centres (as the model's background basis)."""
    u = (np.arange(shape[1]) + 0.5) / shape[1] * 2.0 - 1.0
    v = (np.arange(shape[0]) + 0.5) / shape[0] * 2.0 - 1.0
    constant, slope_x, slope_y = np.asarray(coefficients, dtype=float).T[:, :, None, None]
    return constant + slope_x * u[None, :] + slope_y * v[:, None]


def simulate_tilt_series(
    atoms: Atoms,
    tilt_angles,
    pixel_size: float = 0.25,
    probe_sigma: float = 0.5,
    noise_sigma: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
    shape: tuple[int, int] | None = None,
    tilt_axis_angle: float = 0.0,
    shifts=None,
    misalignment: float = 0.0,
    background_ramp: float = 0.0,
    pedestal: float = DEFAULT_PEDESTAL,
    adf_exponent: float = ADF_EXPONENT,
    progress: bool = True,
) -> TiltSeries:
    """Simulate the tilt series of ``atoms`` (sample frame, A): the paper's potential images with
    Gaussian noise, or ADF-STEM counts at a dose.

    Projection k is abTEM's infinite projected potential (Lobato parametrization, V A) of the
    structure in view k (:func:`rotate_to_view`), moved by ``shifts[k]`` on the detector,
    sampled at the pixel centres of :mod:`atomsplat.geometry`, convolved with a Gaussian probe
    (``scipy.ndimage.gaussian_filter``, zero outside the image). Then one of two noise models:

    - without ``dose`` (the paper's benchmark): the image in V A, plus additive Gaussian noise of
      standard deviation ``noise_sigma`` (V A; 0: none);
    - with ``dose`` (electrons per A^2 per projection): ADF counts. Each species' projected
      potential is weighted so that one atom sends ``dose * sigma(Z)`` electrons to the detector,
      with the ADF cross-section ``sigma(Z) = sigma_Si (Z / 14)^adf_exponent``, and a
      ``pedestal`` of counts is added to every pixel: the expectation of :func:`expected_counts`
      (:mod:`atomsplat.sim.adf` states the model and its calibration: the brightest pixel of a
      projection of a 2 nm amorphous Si particle at 0.195 A pixels is about 9, 12 and 46 counts
      at 8e3, 1.6e4 and 1.6e5 e/A^2). The projections are ``numpy.random.default_rng(seed).poisson(expectation)``:
      non-negative whole numbers of counts, stored as float32.

    Before the noise, the clean series may be spoilt as real data are (``misalignment``: a further
    unknown shift of each projection, uniform in [-m, m] pixels along x and y;
    ``background_ramp``: an unknown plane added to each projection, ``A M (1 + (g_x u + g_y v) /
    2)`` with ``M`` the largest value of the clean series (with the pedestal, for counts), ``u,
    v`` the detector coordinates scaled to [-1, 1] and ``g`` uniform in [-1, 1]).

    Args:
        atoms: the structure, positions in A in the sample frame (see :func:`center_structure`).
        tilt_angles: (N,) tilt angles, degrees.
        pixel_size: pixel size p, A; also abTEM's sampling.
        probe_sigma: standard deviation of the Gaussian probe, A (0: no blur).
        noise_sigma: standard deviation of additive Gaussian noise, V A (0: none).
        dose: electrons per A^2 per projection for ADF counts, or None; excludes ``noise_sigma``.
        seed: seed of ``numpy.random.default_rng`` for the noise.
        shape: (H, W) in pixels, or None for :func:`default_shape`.
        tilt_axis_angle: in-plane angle of the tilt axis from the detector x axis, degrees.
        shifts: (N, 2) known detector shifts in A (detector point = ``(M r)[:2] + shift``), or None.
        misalignment: largest unknown shift per axis, pixels (0: aligned). The true shifts are
            kept in ``extra["simulation"]["misalignment_shifts"]`` (N, 2) A, not in ``shifts``.
        background_ramp: level ``A`` of the unknown background ramp, as a fraction of the series
            maximum (0: none); its coefficients (N, 3) of 1, u, v in data units are kept in
            ``extra["simulation"]["background_coefficients"]``.
        pedestal: with ``dose``: expected counts per pixel with no atom (dark counts, offset).
        adf_exponent: with ``dose``: exponent of the Z dependence of the ADF cross-sections.
        progress: show a projection counter on stderr when it is a terminal.

    Returns:
        A :class:`TiltSeries` with (N, H, W) float32 projections (V A, or counts with ``dose``),
        ``elements`` the species present (by atomic number) and ``extra["simulation"]`` the
        simulation parameters; with ``dose`` also ``pedestal``, ``adf_exponent``,
        ``cross_sections`` {symbol: A^2} and ``counts_per_potential`` {symbol: expected counts per
        V A of that species' projected potential}, from which :func:`rebuild_expected_counts`
        rebuilds the noise-free expectation.
    """
    angles = np.atleast_1d(np.asarray(tilt_angles, dtype=float))
    if len(atoms) == 0:
        raise ValueError("the structure holds no atoms")
    if not pixel_size > 0 or not probe_sigma >= 0 or not noise_sigma >= 0:
        raise ValueError("pixel_size must be positive; probe_sigma and noise_sigma must not be negative")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be a positive number of electrons per A^2, got {dose!r}")
    if dose is not None and noise_sigma > 0:
        raise ValueError("give either noise_sigma (Gaussian noise) or dose (Poisson noise), not both")
    shape = default_shape(atoms, pixel_size) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive numbers of pixels (H, W), got {shape}")
    shift_array = np.zeros((len(angles), 2)) if shifts is None else np.asarray(shifts, dtype=float)
    if shift_array.shape != (len(angles), 2):
        raise ValueError(f"shifts must have shape ({len(angles)}, 2), got {shift_array.shape}")
    if not misalignment >= 0 or not background_ramp >= 0:
        raise ValueError("misalignment and background_ramp must not be negative")
    spoil = np.random.default_rng([seed, 1])  # apart from the noise, which keeps its stream
    unknown_shifts = spoil.uniform(-misalignment, misalignment, (len(angles), 2)) * pixel_size
    # background coefficients of 1, u, v in units of the series maximum
    ramps = background_ramp * np.column_stack([np.ones(len(angles)), 0.5 * spoil.uniform(-1.0, 1.0, (len(angles), 2))])

    moved = shift_array + unknown_shifts
    if dose is None:
        projections = _project_series(
            atoms, angles, pixel_size, probe_sigma, shape, tilt_axis_angle, moved, None, progress
        )
    else:
        cross_sections = adf_cross_sections([chemical_symbols[z] for z in np.unique(atoms.numbers)], adf_exponent)
        projections = expected_counts(
            atoms, angles, dose, pixel_size, probe_sigma, pedestal, shape, tilt_axis_angle, moved,
            cross_sections=cross_sections, progress=progress,
        )  # fmt: skip

    if background_ramp > 0:
        ramps *= float(projections.max())  # now in data units
        projections += _planes(ramps, shape).astype(projections.dtype)

    rng = np.random.default_rng(seed)
    if dose is not None:
        projections = rng.poisson(projections).astype(np.float32)
    elif noise_sigma > 0:
        projections += rng.normal(0.0, noise_sigma, projections.shape).astype(np.float32)

    simulation = {
        "probe_sigma": float(probe_sigma),
        "noise_sigma": float(noise_sigma),
        "dose": None if dose is None else float(dose),
        "seed": int(seed),
        "misalignment_pixels": float(misalignment),
        "misalignment_shifts": unknown_shifts.tolist(),
        "background_ramp": float(background_ramp),
        "background_coefficients": ramps.tolist(),
        "parametrization": "lobato",
        "tool": f"abTEM {abtem.__version__}",
    }
    if dose is not None:
        simulation.update(
            noise="poisson",
            pedestal=float(pedestal),
            adf_exponent=float(adf_exponent),
            cross_sections=cross_sections,
            counts_per_potential=counts_per_potential(cross_sections, dose, pixel_size),
        )
    return TiltSeries(
        projections=projections,
        tilt_angles=angles,
        pixel_size=float(pixel_size),
        tilt_axis_angle=float(tilt_axis_angle),
        shifts=None if shifts is None else shift_array,
        elements=[chemical_symbols[z] for z in np.unique(atoms.numbers)],
        extra={"simulation": simulation},
    )


def rebuild_expected_counts(series: TiltSeries, atoms: Atoms, progress: bool = False) -> np.ndarray:
    """The noise-free expectation (N, H, W) float64 from which :func:`simulate_tilt_series` drew
    the counts of ``series``, rebuilt from its ``extra["simulation"]`` record and the true
    ``atoms`` (sample frame, A; e.g. the dataset's ground_truth.xyz): :func:`expected_counts` with
    the recorded dose, probe, pedestal and cross-sections at the known plus unknown shifts, plus the
    recorded background planes. ``numpy.random.default_rng(seed).poisson`` of it gives back the
    projections.
    """
    record = series.extra.get("simulation", {}) if series.extra else {}
    if record.get("dose") is None:
        raise ValueError("the series holds no record of a simulation with a dose: nothing to rebuild")
    angles = np.asarray(series.tilt_angles, dtype=float)
    counts = expected_counts(
        atoms,
        angles,
        record["dose"],
        series.pixel_size,
        record["probe_sigma"],
        record["pedestal"],
        series.shape[1:],
        series.tilt_axis_angle,
        series.shifts_or_zeros() + np.asarray(record["misalignment_shifts"], dtype=float).reshape(len(angles), 2),
        cross_sections=record["cross_sections"],
        progress=progress,
    )
    if record.get("background_ramp", 0.0) > 0:
        counts += _planes(np.asarray(record["background_coefficients"], dtype=float), series.shape[1:])
    return counts
