"""The low-dose benchmark: the preset over dose, the counting settings in the dataset key, the
rows' dose and Cramer-Rao bound, the dose figure and table, and results written before doses."""

import json

import ase.io
import numpy as np
import pytest
import torch

from atomsplat.benchmark import BenchmarkError
from atomsplat.benchmark.bound import truth_bound
from atomsplat.benchmark.datasets import SimulatedDataset, simulated_dataset
from atomsplat.benchmark.methods import METHODS, MethodResult, grid_shape
from atomsplat.benchmark.preset import Preset, SimulationSettings, load_preset
from atomsplat.benchmark.report import results_markdown
from atomsplat.benchmark.results import Results, Row
from atomsplat.benchmark.run import run_comparison
from atomsplat.cli.benchmark import Benchmark
from atomsplat.data.formats import read_tilt_series
from atomsplat.data.series import GROUND_TRUTH, parse_tilt_scheme
from atomsplat.geometry import view_rotations
from atomsplat.model.cloud import AtomCloud, Views
from atomsplat.model.corrections import ViewCorrections
from atomsplat.model.losses import NoiseModel
from atomsplat.model.refinement import position_uncertainties
from atomsplat.render.projector import project_isotropic_dense
from atomsplat.sim.potential import potential_volume

THREE_TILTS = "-60:60:60"
# A cheap counting simulation: 3 views of 64 x 64 pixels of 0.4 A (25.6 A: the 2 nm particles fit).
SMALL_COUNTS = dict(pixel_size=0.4, probe_sigma=0.5, noise_sigma=0.0, seed=0, shape=(64, 64))


def test_lowdose_preset_runs_three_particles_at_three_doses():
    preset = load_preset("lowdose")
    assert preset.particles == ["si", "fept", "sigesn"] and preset.size == "quick"
    assert set(preset.methods) == {"atomsplat", "fbp", "sirt"}  # no INR
    assert preset.methods["atomsplat"] == {"steps": 3000}  # the defaults, no flags
    assert preset.ablation is None
    angles = parse_tilt_scheme(preset.schemes["half"])
    assert len(angles) == 60 and angles[0] == 0.0 and angles[-1] == 177.0
    simulations = preset.simulations()
    assert [s.dose for s in simulations] == [8000.0, 16000.0, 160000.0]
    assert all(s.shape == (128, 128) and s.pixel_size == 0.195 and s.noise_sigma == 0 for s in simulations)
    assert load_preset("quick").simulations() == [load_preset("quick").simulation]  # no dose axis


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"particles": ["si"], "doses": [8000]}', "doses: .*needs noise_sigma 0"),  # default noise 50
        ('{"particles": ["si"], "simulation": {"noise_sigma": 0}, "doses": [-5]}', "dose must be positive"),
        ('{"particles": ["si"], "simulation": {"noise_sigma": 0}, "doses": []}', "doses must be a list"),
        ('{"particles": ["si"], "simulation": {"shape": [128]}}', "shape must be two positive whole numbers"),
        ('{"particles": ["si"], "simulation": {"dose": "high", "noise_sigma": 0}}', "dose must be a number"),
    ],
)
def test_bad_counting_settings_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "preset.json"
    path.write_text(content)
    with pytest.raises(BenchmarkError, match=message) as err:
        load_preset(str(path))
    assert str(path) in str(err.value)


def test_counting_settings_reach_the_simulation_and_the_dataset_key(tmp_path):
    """Another dose is another dataset directory, of counts at that dose; the float settings keep
    the key they had before the counting mode existed (the digest is that of main's code)."""
    float_key = SimulatedDataset("pd", "quick", THREE_TILTS, SimulationSettings()).key()
    assert float_key == "pd_quick_-60_60_60_9dbb3cdd13b2"
    directories = {}
    for dose in (8000.0, 160000.0):
        dataset = SimulatedDataset("si", "quick", THREE_TILTS, SimulationSettings(dose=dose, **SMALL_COUNTS))
        directories[dose] = simulated_dataset(dataset, tmp_path)
    assert len(set(directories.values())) == 2
    low, high = (read_tilt_series(directories[d]) for d in (8000.0, 160000.0))
    for series, dose in ((low, 8000.0), (high, 160000.0)):
        assert series.counts and series.shape == (3, 64, 64)
        assert series.extra["simulation"]["dose"] == dose and series.extra["simulation"]["pedestal"] == 1.0
    assert high.projections.sum() > 5 * low.projections.sum()
    other = SimulationSettings(dose=8000.0, **{**SMALL_COUNTS, "shape": (64, 48)})
    assert SimulatedDataset("si", "quick", THREE_TILTS, other).key() != directories[8000.0].name
    pedestal = SimulationSettings(dose=8000.0, pedestal=2.0, **SMALL_COUNTS)
    assert SimulatedDataset("si", "quick", THREE_TILTS, pedestal).key() != directories[8000.0].name


def oracle_with_bound(case, options):
    """The true atoms as the answer, and a made-up bound that every row of the case must share."""
    truth = ase.io.read(case.data / GROUND_TRUTH)
    volume = potential_volume(truth, case.series.pixel_size, grid_shape(case.series))
    return MethodResult(truth.positions, None, volume, seconds=0.0, crb=0.0125)


def test_a_dose_axis_end_to_end(tmp_path, monkeypatch):
    """Two doses of a small Si case, FBP and an oracle standing in for atomsplat: one row per
    method and dose carrying its dose, every row of a case the atomsplat row's bound; the table's
    dose, CRB and ratio columns; the dose figure and one slice figure per dose."""
    monkeypatch.setitem(METHODS, "atomsplat", oracle_with_bound)
    preset = Preset(
        ["si"],
        size="quick",
        schemes={"three": THREE_TILTS},
        simulation=SimulationSettings(**SMALL_COUNTS),
        methods={"atomsplat": {}, "fbp": {}},
        doses=[8000.0, 160000.0],
    )
    results, failures = run_comparison(preset, tmp_path / "out", tmp_path / "work", log=lambda line: None)
    assert failures == []
    assert [(r.dose, r.method) for r in results.rows] == [
        (8000.0, "atomsplat"),
        (8000.0, "fbp"),
        (160000.0, "atomsplat"),
        (160000.0, "fbp"),
    ]
    assert all(r.crb == 0.0125 for r in results.rows)
    assert results.rows[0].rmse == 0.0 and results.rows[0].rmse_over_crb == 0.0
    assert Results.read(tmp_path / "out" / "results.json") == results
    figures = tmp_path / "out" / "figures"
    assert (figures / "dose.png").is_file() and not (figures / "bars.png").exists()
    assert {p.name for p in figures.glob("slices_*")} == {
        "slices_si_three_dose8000.png",
        "slices_si_three_dose160000.png",
    }
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| particle | dose (e/A^2) | method | atoms | TPR | FPR | RMSE (A) | CRB (A) | RMSE / CRB |" in text
    assert "| si | 160000 | atomsplat | 202 | 1.0000 | 0.0000 | 0.000 | 0.0125 | 0.00 |" in text
    assert "| 8000 | fbp |" in text  # the means per dose and method


def test_float_rows_have_no_dose_columns():
    row = Row("pd", "all", "-90:90:2", "fbp", 10, 10, 10, 1.0, 0.0, 0.05, None, 0.75, 0.8, 1.0)
    assert row.dose is None and row.crb is None and row.rmse_over_crb is None
    text = results_markdown(Results("m", Preset(["pd"]), [row]))
    assert "dose" not in text and "CRB" not in text


def test_results_written_before_doses_still_read(tmp_path):
    """A results.json of the code before doses (rows without dose and crb, a preset without doses
    and counting settings) reads with None for them, and the command still takes its output
    directory as holding results of the same settings."""
    preset = load_preset("quick")
    row = Row("fept", "wedge", "-70:70:3", "fbp", 287, 290, 285, 0.993, 0.017, 0.2, 1.0, 0.75, 0.88, 3.0)
    old_row = {k: v for k, v in row.to_dict().items() if k not in ("dose", "crb")}
    old_preset = preset.to_dict()
    del old_preset["doses"]
    for name in ("dose", "pedestal", "adf_exponent", "shape"):
        del old_preset["simulation"][name]
    raw = {"machine": "m", "preset": old_preset, "rows": [old_row], "ablation": [], "total_seconds": 1.0}
    (tmp_path / "results.json").write_text(json.dumps(raw))
    results = Results.read(tmp_path / "results.json")
    assert results.rows == [row] and results.rows[0].dose is None and results.preset == preset
    Benchmark(output=tmp_path)._check_output(preset.to_dict())  # no error: the same settings
    with pytest.raises(BenchmarkError, match="already holds results of other settings"):
        Benchmark(output=tmp_path)._check_output(Preset(["pd"]).to_dict())


def test_truth_bound_is_the_cramer_rao_bound_of_the_matched_atoms_at_their_true_positions():
    """Four atoms and a wide Gaussian that is not an atom, on a pedestal of Poisson counts; the
    true atoms are the found ones moved by up to 0.1 A, plus one far from any found atom. The
    bound is sqrt(mean over the 4 matched atoms of sigma_x^2 + sigma_y^2 + sigma_z^2), with sigma
    from position_uncertainties of the cloud with those atoms at the truth (the wide Gaussian and
    every weight and width as fitted); the cloud itself is not changed."""
    p, h, w = 0.3, 28, 28
    found = torch.tensor([[0.0, 0.0, 0.0], [1.9, 0.3, -0.6], [-1.6, 1.7, 0.8], [0.5, -2.0, 1.0], [0.2, 0.1, 0.3]])
    sigmas, weights = torch.tensor([0.5, 0.6, 0.45, 0.7, 1.6]), torch.tensor([40.0, 25.0, 60.0, 30.0, 15.0])
    angles = np.arange(-60.0, 61.0, 20.0)
    rotations = torch.from_numpy(view_rotations(angles)).float()
    views = Views(rotations, torch.zeros(len(angles), 2), p, h, w, torch.arange(len(angles)))
    mean = project_isotropic_dense(found.double(), sigmas.double(), weights.double(), rotations.double(),
                                   views.offsets.double(), p, h, w).float() + 1.0  # fmt: skip
    counts = torch.poisson(mean, generator=torch.Generator().manual_seed(0))
    cloud = AtomCloud(found, 0.5, 20.0)
    with torch.no_grad():
        cloud.params["log_sigmas"].copy_(sigmas.log())
        cloud.params["log_weights"].copy_(weights.log())
    noise = NoiseModel("poisson", 1e-3)
    corrections = ViewCorrections(rotations, views.indices, counts, background_degree=0, noise=noise)
    atoms = np.arange(4)  # the fifth Gaussian is not an atom
    moved = np.random.default_rng(1).uniform(-0.1, 0.1, (4, 3))
    truth = np.concatenate([found[:4].numpy() + moved, [[6.0, 6.0, 6.0]]])[[4, 2, 0, 3, 1]]  # any order

    bound = truth_bound(cloud, corrections, counts, views, noise, atoms, truth)

    reference = AtomCloud(found, 0.5, 20.0)
    with torch.no_grad():
        reference.params["positions"][:4] += torch.from_numpy(moved).float()
        reference.params["log_sigmas"].copy_(sigmas.log())
        reference.params["log_weights"].copy_(weights.log())
    expected, how = position_uncertainties(reference, corrections, counts, views, noise)
    assert how == "marginal"
    assert bound == pytest.approx(float(expected[:4].double().square().sum(dim=1).mean().sqrt()), rel=1e-6)
    assert 0.005 < bound < 0.5  # A: a bound of a few pm to tens of pm for these counts
    torch.testing.assert_close(cloud.positions.detach(), found)  # the fitted cloud is left as it was
    assert truth_bound(cloud, corrections, counts, views, noise, atoms, truth[:1] + 5.0) is None  # nothing matched
