"""From a trained nerfstudio run to atoms and a volume, in the files that microscopists open.

Atoms are in the sample frame (the frame at tilt angle 0, origin at the rotation centre), A.
:func:`write_atoms` writes them by the file's name (:data:`ATOM_FORMATS`); :func:`atoms_volume`
voxelizes them exactly for :func:`atomsplat.data.volume.write_volume`.

Weights. An atom's ``weight`` is its projection integrated over the detector area: the
projections' pixel values x A^2 (:func:`weight_unit`), so ``weight / pixel_size**2`` is the sum of
its projection over the pixels of one projection (for counts: the atom's detector counts in each
projection).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import ase
import numpy as np

from atomsplat.analysis.species import label_by_weight

# Atom files by name suffix: what is written, through ASE unless "csv". Files named POSCAR or
# CONTCAR (any suffix) are VASP's too.
ATOM_FORMATS = {
    ".xyz": "extxyz",
    ".extxyz": "extxyz",
    ".csv": "csv",
    ".cif": "cif",
    ".pdb": "proteindatabank",
    ".vasp": "vasp",
    ".xsf": "xsf",
}
VASP_NAMES = ("POSCAR", "CONTCAR")

# Formats that describe a periodic crystal: the atoms are put in an orthorhombic box with at least
# this much vacuum (A) on each side, so that periodic images are 2 x CELL_MARGIN apart.
CELL_FORMATS = ("cif", "vasp")
CELL_MARGIN = 5.0

# The largest volume written, in voxels (4 GiB of float32).
MAX_VOXELS = 2**30


def load_model(config: Path):
    """The trained :class:`AtomSplatModel` of a run's ``config.yml`` (latest checkpoint), on the CPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    from atomsplat.model.atomsplat_model import AtomSplatModel

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such run configuration (ns-train prints its path at the end)")
    _, pipeline, _, step = eval_setup(config, test_mode="inference", update_config_callback=_on_cpu)
    model = pipeline.model
    if not isinstance(model, AtomSplatModel):
        raise TypeError(f"{config}: a {type(model).__name__} run, not an atomsplat one")
    return model.cpu(), step


def _on_cpu(config):
    config.machine.device_type = "cpu"
    return config


def weight_unit(series) -> str:
    """The unit of the atoms' weights for ``series``: its pixel values x A^2 ("counts A^2" for
    data in counts; data in other units with a gain say how many counts one unit is)."""
    if series.counts and series.gain == 1.0:
        return "counts A^2"
    if series.counts:
        return f"data units A^2 ({series.gain:g} counts per data unit)"
    return "data units A^2"


def atoms_from_model(model, elements: Optional[Sequence[str]] = None) -> ase.Atoms:
    """The model's atoms (:meth:`AtomSplatModel.atoms`: a run that did not reach its final pass
    gets the merge-and-prune of one, on a copy); the model is not changed.

    Args:
        model: a trained AtomSplatModel.
        elements: species to label atoms with, by clustering their weights (heavier element =
            larger weight); None: the dataset's "elements" if it names them, else "X".

    Returns:
        ase.Atoms with positions in A (sample frame) and per-atom arrays "weight" (integrated
        weight, data units x A^2), "sigma" (A) and, when training ran its final pass,
        "uncertainty" (K, 3): the Cramer-Rao standard deviations of x, y, z (A), with ``info``
        "uncertainty_kind" saying how they were computed
        (:data:`atomsplat.model.refinement.UNCERTAINTY_KINDS`: "own block" is a lower bound,
        "scaled own block" an estimate of the marginal). ``info``
        holds "weight_unit" (:func:`weight_unit`), "pixel_size" (A) and, for atoms fitted as a core and
        a halo, "halo_fraction" (of the weight in the halo) and "halo_ratio" (halo width / sigma,
        sigma then being the core's width): extended XYZ writes them.
    """
    found = model.atoms()
    if elements is None:
        elements = model.series.elements
    symbols = label_by_weight(found["weights"], elements) if elements else np.full(len(found["weights"]), "X")
    atoms = ase.Atoms(symbols=list(symbols), positions=found["positions"])
    atoms.set_array("weight", found["weights"])
    atoms.set_array("sigma", found["sigmas"])
    if "uncertainty" in found:
        atoms.set_array("uncertainty", found["uncertainty"])
        from atomsplat.model.refinement import UNCERTAINTY_KINDS

        atoms.info["uncertainty_kind"] = UNCERTAINTY_KINDS[int(model.uncertainty_kind)]
    atoms.info["weight_unit"] = weight_unit(model.series)
    atoms.info["pixel_size"] = float(model.series.pixel_size)
    halo = model.cloud.halo()  # (fraction, ratio) of counting data, None otherwise
    if halo is not None:
        atoms.info["halo_fraction"], atoms.info["halo_ratio"] = halo
    return atoms


def corrections_from_model(model) -> dict:
    """The per-projection corrections a run learned, JSON-ready; empty when it learned none.

    Keys: "tilt_angles" (N,) degrees; "shifts" (N, 2) A, the detector shift of each projection
    in the dataset's convention (detector point = (M r)[:2] + shift; add them to known shifts);
    "background" (N, T) coefficients in data units of the monomials of
    :func:`atomsplat.model.corrections.background_basis` and "background_degree"; "gains" (N,) the
    factor of each projection's atoms (its dose over the training views' mean).
    """
    learned = model.corrections.as_dict()
    if not learned:
        return {}
    return {"tilt_angles": np.asarray(model.series.tilt_angles, float).tolist(), **learned}


# ----------------------------------------------------------------------------- atom files
def atom_format(path) -> str:
    """The format :func:`write_atoms` writes to ``path`` (a value of :data:`ATOM_FORMATS`), by its name.

    Raises ValueError (one line naming the suffix and listing the formats) for any other name.
    """
    path = Path(path)
    if path.name.upper().startswith(VASP_NAMES):
        return "vasp"
    suffix = path.suffix.lower()
    if suffix not in ATOM_FORMATS:
        known = ", ".join(ATOM_FORMATS) + ", " + " or ".join(VASP_NAMES)
        hint = " (a volume is written by --volume)" if suffix in (".mrc", ".map") else ""
        raise ValueError(f"{path}: cannot write atoms as {suffix or 'a file without a suffix'}{hint}; use {known}")
    return ATOM_FORMATS[suffix]


def write_atoms(atoms: ase.Atoms, path) -> str:
    """Write ``atoms`` (:func:`atoms_from_model`'s) to ``path`` in the format of its name and
    return a short description of what the file holds.

    * ``.xyz`` / ``.extxyz``: extended XYZ, positions and every per-atom array (weight, sigma,
      uncertainty as three columns), ``weight_unit`` and ``pixel_size`` in the comment line.
    * ``.csv``: one row per atom, :func:`write_csv`.
    * ``.pdb``, ``.xsf``: positions and species, non-periodic, in the sample frame.
    * ``.cif``, ``.vasp`` / ``POSCAR``: crystal formats, always periodic: the atoms are moved into
      an orthorhombic box with at least :data:`CELL_MARGIN` A of vacuum on every side; the file
      states the move (a comment line: sample frame = file coordinates - shift). POSCAR groups the
      atoms by species, in their order within each species.

    Raises ValueError for a name :func:`atom_format` refuses (before anything is written).
    """
    import ase.io

    path = Path(path)
    kind = atom_format(path)
    if kind == "csv":
        write_csv(atoms, path)
        uncertainty = f", uncertainty{_kind_note(atoms)}" if "uncertainty" in atoms.arrays else ""
        return f"CSV: species, x, y, z, weight, sigma{uncertainty}"
    if kind == "extxyz":
        ase.io.write(path, atoms, format="extxyz")
        arrays = [name for name in atoms.arrays if name not in ("numbers", "positions")]
        return f"extended XYZ: positions, {', '.join(arrays)}{_kind_note(atoms)}"
    if kind in CELL_FORMATS:
        boxed, shift = in_box(atoms)
        note = (
            f"atomsplat atoms, A; sample frame = these coordinates - ({shift[0]:g}, {shift[1]:g}, {shift[2]:g}); "
            f"a non-periodic particle in a box with >= {CELL_MARGIN:g} A of vacuum on each side"
        )
        if kind == "cif":
            data = io.BytesIO()  # ASE writes CIF as bytes
            ase.io.write(data, boxed, format="cif", wrap=False)
            path.write_text(f"# {note}\n{data.getvalue().decode()}")
        else:
            text = io.StringIO()
            order = np.argsort(boxed.get_atomic_numbers(), kind="stable")
            ase.io.write(text, boxed[order], format="vasp")
            lines = text.getvalue().splitlines(keepends=True)
            path.write_text(f"{note}\n" + "".join(lines[1:]))  # line 1 of a POSCAR is a free comment
        return f"{kind.upper()}: positions and species in a {' x '.join(f'{v:g}' for v in boxed.cell.lengths())} A box"
    ase.io.write(path, atoms, format=kind)
    return f"{'PDB' if kind == 'proteindatabank' else kind.upper()}: positions and species"


def _kind_note(atoms: ase.Atoms) -> str:
    """The note " (KIND)" of how the uncertainties were computed, from ``atoms.info``; "" if it does not say."""
    return f" ({atoms.info['uncertainty_kind']})" if "uncertainty_kind" in atoms.info else ""


def in_box(atoms: ase.Atoms, margin: float = CELL_MARGIN):
    """``atoms`` (positions and species) moved into an orthorhombic periodic box that holds them
    with at least ``margin`` A on every side; box edges and the shift are whole Angstroms.

    Returns:
        (boxed ase.Atoms, shift (3,) A): boxed positions = positions + shift.
    """
    positions = atoms.positions
    low = np.floor(positions.min(axis=0) - margin) if len(atoms) else np.full(3, -margin)
    high = np.ceil(positions.max(axis=0) + margin) if len(atoms) else np.full(3, margin)
    shift = -low
    boxed = ase.Atoms(atoms.get_chemical_symbols(), positions=positions + shift, cell=high - low, pbc=True)
    return boxed, shift


def csv_header(atoms: ase.Atoms) -> list:
    """The column names of :func:`write_csv` for ``atoms``: units in brackets."""
    unit = atoms.info.get("weight_unit", "data units A^2")
    columns = ["species", "x (A)", "y (A)", "z (A)", f"weight ({unit})"]
    if "halo_fraction" in atoms.info:
        columns += ["core sigma (A)", "halo sigma (A)", "halo fraction"]
    else:
        columns += ["sigma (A)"]
    if "uncertainty" in atoms.arrays:  # a lower bound is named as one: it is not the same quantity
        lower = ", own block: lower bound" if atoms.info.get("uncertainty_kind") == "own block" else ""
        columns += [f"uncertainty {axis} (A{lower})" for axis in "xyz"]
    return columns


def write_csv(atoms: ase.Atoms, path) -> None:
    """One row per atom: species, x, y, z (A, sample frame), weight (its unit in the header),
    sigma (A; for atoms fitted as core and halo the core's and the halo's sigma and the halo's
    fraction of the weight) and, when present, the Cramer-Rao standard deviations of x, y, z (A;
    named as lower bounds when each is its atom's own block); values with nine significant digits."""
    uncertainty = atoms.arrays.get("uncertainty")
    sigmas = atoms.arrays["sigma"][:, None]
    if "halo_fraction" in atoms.info:
        ratio, fraction = atoms.info["halo_ratio"], atoms.info["halo_fraction"]
        sigmas = np.column_stack([sigmas, ratio * sigmas, np.full(len(atoms), fraction)])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header(atoms))
        for k, symbol in enumerate(atoms.get_chemical_symbols()):
            values = [*atoms.positions[k], atoms.arrays["weight"][k], *sigmas[k]]
            if uncertainty is not None:
                values += list(uncertainty[k])
            writer.writerow([symbol] + [f"{v:.9g}" for v in values])


# ----------------------------------------------------------------------------- volume
def atom_gaussians(atoms: ase.Atoms):
    """The Gaussians of ``atoms``: (positions (G, 3) A, sigmas (G,) A, weights (G,)). One per atom,
    or, for atoms fitted as core and halo (``info`` "halo_fraction" f and "halo_ratio" r), two: the
    core of width sigma and weight (1 - f) w, the halo of width r sigma and weight f w."""
    positions, sigmas, weights = atoms.positions, atoms.arrays["sigma"], atoms.arrays["weight"]
    if "halo_fraction" not in atoms.info:
        return positions, sigmas, weights
    fraction, ratio = float(atoms.info["halo_fraction"]), float(atoms.info["halo_ratio"])
    return (
        np.concatenate([positions, positions]),
        np.concatenate([sigmas, ratio * sigmas]),
        np.concatenate([(1.0 - fraction) * weights, fraction * weights]),
    )


def volume_grid(positions: np.ndarray, sigmas: np.ndarray, series, voxel: float, window: float):
    """The grid of :func:`atoms_volume`: every Gaussian's ``+-window * sigma`` inside, voxel edges
    on the lines of the reconstruction cube (:mod:`atomsplat.data.dataparser`: ``max(H, W) * p``
    centred on the rotation centre), so that with ``voxel = pixel_size`` the x-y cells are
    detector pixels.

    Returns:
        (corner (3,) A, the grid's corner of smallest x, y, z; shape (nx, ny, nz)).
    """
    _, height, width = series.projections.shape
    side = max(height, width) * series.pixel_size
    lines = np.array([-width * series.pixel_size, -height * series.pixel_size, -side]) / 2.0
    reach = window * sigmas[:, None]
    low = (positions - reach).min(axis=0)
    high = (positions + reach).max(axis=0)
    first = np.floor((low - lines) / voxel)
    corner = lines + first * voxel
    shape = tuple(int(n) for n in np.maximum(np.ceil((high - corner) / voxel), 1))
    return corner, shape


def atoms_volume(atoms: ase.Atoms, series, voxel: Optional[float] = None):
    """The atoms' potential on a voxel grid: the exact mean density of their Gaussians
    (:func:`atom_gaussians`: core and halo for atoms fitted so) in each voxel
    (:func:`atomsplat.render.voxelize.voxelize`), of the exported atoms only (the model's diffuse
    Gaussians, which are not atoms, are left out).

    Args:
        atoms: :func:`atoms_from_model`'s atoms (positions, "sigma", "weight").
        series: the run's TiltSeries (pixel size, detector shape).
        voxel: voxel edge, A (default: the pixel size).

    Returns:
        (volume (nx, ny, nz) float32 in weight units per A^3, corner (3,) A of its voxel
        (0, 0, 0), voxel A). ``volume.sum() * voxel**3`` is the atoms' total weight (the grid holds
        every Gaussian's +-4 sigma); with ``voxel = pixel_size``, ``volume.sum(2).T * voxel`` is the
        model's projection at tilt 0 on the detector pixels the grid covers.

    Raises ValueError for no atoms, a voxel that is not positive or a grid over :data:`MAX_VOXELS`.
    """
    import torch

    from atomsplat.render.projector import DEFAULT_WINDOW
    from atomsplat.render.voxelize import voxelize

    voxel = float(series.pixel_size if voxel is None else voxel)
    if not (math.isfinite(voxel) and voxel > 0):
        raise ValueError(f"the voxel size must be a positive number of A, got {voxel}")
    if len(atoms) == 0:
        raise ValueError("no atoms to voxelize")
    positions, sigmas, weights = atom_gaussians(atoms)
    corner, shape = volume_grid(positions, sigmas, series, voxel, DEFAULT_WINDOW)
    if math.prod(shape) > MAX_VOXELS:
        raise ValueError(
            f"a {' x '.join(map(str, shape))} volume at {voxel:g} A voxels is too large (over {MAX_VOXELS} voxels); "
            "choose a larger voxel size"
        )
    volume = voxelize(
        torch.from_numpy(positions).float(),
        torch.from_numpy(sigmas).float(),
        torch.from_numpy(weights).float(),
        corner,
        shape,
        voxel,
        DEFAULT_WINDOW,
    )
    return volume.numpy(), corner, voxel
