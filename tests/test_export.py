"""Exported files read back, by the readers microscopists use (ASE, mrcfile, csv), to the atoms of a
trained run; bad names are refused before anything is written; the report has its panels.

One training of the bundled series (200 steps, about 30 s on one core, with the final pass, so
that the atoms carry uncertainties) serves the whole module.
"""

import csv
import io
import re

import ase.io
import mrcfile
import numpy as np
import pytest

from atomsplat.cli.export import main as export_main
from atomsplat.data.dataparser import bundled_demo_path
from atomsplat.export import (
    ATOM_FORMATS,
    CELL_MARGIN,
    atom_format,
    atoms_from_model,
    atoms_volume,
    load_model,
    weight_unit,
    write_atoms,
)
from atomsplat.report import projection_fit, report_figure, species_boundaries
from atomsplat.training import train

STEPS = 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config.yml, model, atoms) of the bundled series trained for STEPS steps."""
    config = train(bundled_demo_path(), STEPS, tmp_path_factory.mktemp("runs"))
    model, _ = load_model(config)
    return config, model, atoms_from_model(model)


def test_atoms_carry_their_units(run):
    _, model, atoms = run
    assert len(atoms) > 150
    assert atoms.info["weight_unit"] == "data units A^2"  # the bundled series is not counts
    assert atoms.info["pixel_size"] == model.series.pixel_size
    assert atoms.arrays["uncertainty"].shape == (len(atoms), 3)  # the run reached its final pass
    assert atoms.info["uncertainty_kind"] == "marginal"  # fewer atoms than full_uncertainty_limit


def test_a_run_saved_before_the_kind_was_kept_says_not_recorded(run):
    _, model, _ = run
    state = {key: value.clone() for key, value in model.state_dict().items()}  # not views of the buffers
    try:
        model.load_state_dict({key: value for key, value in state.items() if key != "uncertainty_kind"})
        assert atoms_from_model(model).info["uncertainty_kind"] == "not recorded"
    finally:
        model.load_state_dict(state)
    assert atoms_from_model(model).info["uncertainty_kind"] == "marginal"


def test_lower_bounds_are_named_as_such(tmp_path):
    """Each atom's own Fisher block (above full_uncertainty_limit atoms) is a lower bound, not the
    Cramer-Rao deviation: the CSV's columns, the description and the extended XYZ say so."""
    atoms = ase.Atoms("Si2", positions=[[0.0, 0.0, 0.0], [2.3, 0.0, 0.0]])
    atoms.set_array("weight", np.array([1.0, 2.0]))
    atoms.set_array("sigma", np.array([0.5, 0.5]))
    atoms.set_array("uncertainty", np.full((2, 3), 0.02))
    atoms.info["uncertainty_kind"] = "own block"
    assert write_atoms(atoms, tmp_path / "atoms.csv").endswith("uncertainty (own block)")
    with open(tmp_path / "atoms.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[-3:] == [f"uncertainty {axis} (A, own block: lower bound)" for axis in "xyz"]
    assert write_atoms(atoms, tmp_path / "atoms.xyz").endswith("(own block)")
    assert ase.io.read(tmp_path / "atoms.xyz").info["uncertainty_kind"] == "own block"


def test_weight_unit_follows_the_data():
    from types import SimpleNamespace

    assert weight_unit(SimpleNamespace(counts=True, gain=1.0)) == "counts A^2"
    assert weight_unit(SimpleNamespace(counts=True, gain=2.5)) == "data units A^2 (2.5 counts per data unit)"
    assert weight_unit(SimpleNamespace(counts=False, gain=1.0)) == "data units A^2"


def _shift_in(text: str) -> np.ndarray:
    """The shift a CIF or POSCAR states: sample frame = file coordinates - shift."""
    found = re.search(r"sample frame = these coordinates - \(([^)]*)\)", text)
    return np.array([float(v) for v in found.group(1).split(",")])


@pytest.mark.parametrize(
    "name", ["atoms.xyz", "atoms.extxyz", "atoms.xsf", "atoms.pdb", "atoms.cif", "POSCAR", "atoms.vasp"]
)
def test_atom_files_read_back_to_the_same_atoms(run, tmp_path, name):
    """Positions within the format's precision (PDB: 3 decimals; the others 8 or more), species,
    and for extended XYZ every per-atom value and the weight's unit; the crystal formats (CIF,
    POSCAR) hold the atoms in a box with the stated vacuum and state their shift."""
    _, _, atoms = run
    path = tmp_path / name
    write_atoms(atoms, path)
    back = ase.io.read(path)
    expected = atoms
    shift = np.zeros(3)
    if atom_format(path) in ("cif", "vasp"):
        shift = _shift_in(path.read_text())
        assert back.pbc.all()
        inside = back.positions
        assert inside.min() >= CELL_MARGIN and np.all(back.cell.lengths() - inside.max(axis=0) >= CELL_MARGIN)
    else:
        assert not back.pbc.any()
    if atom_format(path) == "vasp":  # POSCAR groups the atoms by species, in their order
        expected = atoms[np.argsort(atoms.get_atomic_numbers(), kind="stable")]
    tolerance = 6e-4 if name.endswith(".pdb") else 1e-6
    assert back.get_chemical_symbols() == expected.get_chemical_symbols()
    assert np.abs(back.positions - shift - expected.positions).max() < tolerance
    if atom_format(path) == "extxyz":
        for key in ("weight", "sigma", "uncertainty"):
            np.testing.assert_allclose(back.arrays[key], atoms.arrays[key], rtol=1e-7, atol=1e-8)
        assert back.info["weight_unit"] == atoms.info["weight_unit"]


def test_csv_has_one_row_per_atom_with_units_in_the_header(run, tmp_path):
    _, _, atoms = run
    write_atoms(atoms, tmp_path / "atoms.csv")
    with open(tmp_path / "atoms.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "species", "x (A)", "y (A)", "z (A)", "weight (data units A^2)", "sigma (A)",
        "uncertainty x (A)", "uncertainty y (A)", "uncertainty z (A)",
    ]  # fmt: skip
    assert [row["species"] for row in rows] == atoms.get_chemical_symbols()
    columns = lambda *names: np.array([[float(row[n]) for n in names] for row in rows])  # noqa: E731
    np.testing.assert_allclose(columns("x (A)", "y (A)", "z (A)"), atoms.positions, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(columns("weight (data units A^2)")[:, 0], atoms.arrays["weight"], rtol=1e-8)
    np.testing.assert_allclose(columns("sigma (A)")[:, 0], atoms.arrays["sigma"], rtol=1e-8)
    uncertainty = columns("uncertainty x (A)", "uncertainty y (A)", "uncertainty z (A)")
    np.testing.assert_allclose(uncertainty, atoms.arrays["uncertainty"], rtol=1e-8)


@pytest.mark.parametrize("name", ["atoms.txt", "atoms.mrc", "atoms", "atoms.png"])
def test_a_name_that_cannot_hold_atoms_is_refused(tmp_path, name):
    with pytest.raises(ValueError) as error:
        atom_format(tmp_path / name)
    message = str(error.value)
    assert "\n" not in message and name in message
    assert all(suffix in message for suffix in ATOM_FORMATS) and "POSCAR" in message


def test_export_command_writes_atoms_volume_and_report(run, tmp_path, capsys):
    """One command writes the three files: the MRC volume has the pixel size as its voxel size, x, y,
    z of the sample frame (header origin: the centre of voxel (0, 0, 0)), the atoms' total weight
    (the grid holds every atom's +-4 sigma: truncated mass below 2e-4 of an atom), and its
    brightest voxel on an atom."""
    config, model, atoms = run
    out = tmp_path / "out"
    args = ["--load-config", str(config), "--output", str(out / "atoms.csv"), "--volume", str(out / "potential.mrc")]
    assert export_main(args + ["--report", str(out / "report.png")]) == 0
    printed = capsys.readouterr().out
    assert f"{len(atoms)} atoms from step {STEPS - 1} written to {out / 'atoms.csv'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["atoms.csv", "potential.mrc", "report.png"]

    p = model.series.pixel_size
    assert mrcfile.validate(out / "potential.mrc", print_file=io.StringIO())  # MRC2014 as the standard has it
    with mrcfile.open(out / "potential.mrc") as mrc:
        volume = np.asarray(mrc.data).transpose(2, 1, 0)  # MRC sections (z, y, x) -> (x, y, z)
        assert mrc.voxel_size.tolist() == pytest.approx([p, p, p])
        origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=float)
        labels = b" ".join(mrc.header.label[: mrc.header.nlabl]).decode()
    assert "weight per A^3" in labels and "x, y, z: sample frame, A" in labels
    assert volume.sum() * p**3 == pytest.approx(atoms.arrays["weight"].sum(), rel=2e-4)
    brightest = origin + np.array(np.unravel_index(np.argmax(volume), volume.shape)) * p
    assert np.linalg.norm(atoms.positions - brightest, axis=1).min() < p * np.sqrt(3) / 2


def test_export_refuses_to_overwrite_and_to_write_what_it_cannot(run, tmp_path, capsys):
    config, _, _ = run
    target = tmp_path / "atoms.xyz"
    target.write_text("the user's file\n")
    for args, complaint in (
        (["--output", str(target)], "exists; choose another name or pass --overwrite"),
        (["--output", str(tmp_path / "atoms.mrc")], "cannot write atoms as .mrc (a volume is written by --volume)"),
        (["--volume", str(tmp_path / "potential.map")], "--volume cannot write .map; use .mrc"),
        (["--report", str(tmp_path / "report.jpg")], "--report cannot write .jpg"),
        (["--volume", str(tmp_path / "v.mrc"), "--voxel", "0"], "--voxel must be a positive number"),
        ([], "nothing to write"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            export_main(["--load-config", str(config)] + args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("atomsplat-export: error: ") and err.count("\n") == 1 and complaint in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atoms.xyz"]
    assert target.read_text() == "the user's file\n"
    assert export_main(["--load-config", str(config), "--output", str(target), "--overwrite"]) == 0
    assert len(ase.io.read(target)) > 150


def test_report_shows_weights_by_species_and_uncertainties(run):
    """The report's panels; per projection (float data trained on all projections, no shifts, no
    background) the atoms' best factor is about 1 and the residual's RMS about the noise."""
    _, model, atoms = run
    fit = projection_fit(model)
    count = len(model.series.tilt_angles)
    assert fit["trained"].all() and fit["shifts"] is None and fit["background"] is None and fit["gains"] is None
    assert fit["misfit_label"] == "residual RMS (data units)" and fit["misfit"].shape == (count,)
    scale, deviation = fit["scale"], fit["scale_deviation"]
    assert np.abs(scale - 1.0).max() < 0.03  # 0.994-1.006 (deviations 0.002) after the fixture's 200 steps
    sigma = model.series.extra["simulation"]["noise_sigma"]  # 50; the residual RMS was 49.3-51.0
    assert (0.9 * sigma < fit["misfit"]).all() and (fit["misfit"] < 1.1 * sigma).all()
    spread, noise = 100.0 * scale.std(), 100.0 * np.sqrt(np.mean(deviation**2))
    figure = report_figure(model, atoms, bundled_demo_path() / "ground_truth.xyz")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [
        "measured, tilt 0 deg",
        f"model ({len(atoms)} atoms)",
        "measured - model",
        "atoms with |z| < 1.5 A",
        f"atom weights ({len(atoms)} atoms)",
        "positional uncertainty (Cramer-Rao)",
        "shift per projection",
        "background per projection",
        f"atoms' scale per projection\nspread {spread:.1f} %, noise {noise:.1f} %",
        "misfit per projection",
    ]
    assert tuple(figure.get_size_inches()) == (16, 15)
    weights_panel = figure.axes[4]
    assert weights_panel.get_xscale() == "log"
    legend = [text.get_text() for text in weights_panel.get_legend().get_texts()]
    found = atoms.get_chemical_symbols()
    true = ase.io.read(bundled_demo_path() / "ground_truth.xyz").get_chemical_symbols()
    assert legend == [f"{s}: {found.count(s)} (true {true.count(s)})" for s in ("Ni", "Pt")] + ["species split"]


def test_species_boundary_lies_between_the_species():
    weights = np.array([1.0, 1.2, 0.9, 4.0, 5.0])
    symbols = np.array(["Ni", "Ni", "Ni", "Pt", "Pt"])
    (bound,) = species_boundaries(weights, symbols)
    assert bound == pytest.approx(np.sqrt(1.2 * 4.0))
    assert species_boundaries(weights, np.array(["X"] * 5)) == []


def test_atoms_of_core_and_halo_give_both_gaussians(run, tmp_path):
    """Atoms fitted as a core and a halo (counting data): the volume holds both Gaussians of each
    atom (its total weight, the halo's reach), and the CSV gives both widths and the fraction."""
    import torch

    from atomsplat.render.voxelize import voxelize

    _, model, plain = run
    atoms = plain.copy()
    atoms.info.update(halo_fraction=0.3, halo_ratio=1.6)
    volume, corner, voxel = atoms_volume(atoms, model.series)
    assert volume.sum() * voxel**3 == pytest.approx(atoms.arrays["weight"].sum(), rel=2e-4)
    plain_volume, _, _ = atoms_volume(plain, model.series)
    assert all(h > p for h, p in zip(volume.shape, plain_volume.shape))  # the halo reaches 1.6 x further
    positions, w, sigma = atoms.positions, atoms.arrays["weight"], atoms.arrays["sigma"]
    f32 = lambda a: torch.from_numpy(a).float()  # noqa: E731  (float32 of the float64 values, as the export)
    both = voxelize(f32(positions), f32(sigma), f32(0.7 * w), corner, volume.shape, voxel) + voxelize(
        f32(positions), f32(1.6 * sigma), f32(0.3 * w), corner, volume.shape, voxel
    )
    # Windows end at +-4 sigma or a little further (voxelize gives a Gaussian the window of the widest
    # on its rung of window sizes, so a core in company of halos may get a wider one): voxels at the
    # edge of a window differ by at most the density there, exp(-8) = 3.4e-4 of the peak.
    np.testing.assert_allclose(volume, both.numpy(), rtol=1e-5, atol=3.4e-4 * float(both.max()))

    write_atoms(atoms, tmp_path / "atoms.csv")
    with open(tmp_path / "atoms.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert float(first["core sigma (A)"]) == pytest.approx(atoms.arrays["sigma"][0])
    assert float(first["halo sigma (A)"]) == pytest.approx(1.6 * atoms.arrays["sigma"][0])
    assert float(first["halo fraction"]) == 0.3
