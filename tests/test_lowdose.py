"""Low-dose counts: the noise model chosen from the data, an initialisation that finds the particle
at the lowest dose, an empty series refused, the data's verdict on which Gaussians are atoms, and
the species prior."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from atomsplat.data.series import TiltSeries
from atomsplat.geometry import resolution_stretch, view_rotations
from atomsplat.model.atomsplat_model import AtomSplatModelConfig, noise_model, species_prior
from atomsplat.model.corrections import background, background_basis, border_background
from atomsplat.model.init import EmptySeriesError, check_signal, initial_positions
from atomsplat.model.losses import NoiseModel
from atomsplat.model.species_prior import SpeciesPrior
from atomsplat.model.strategy import DensityOptions, DensityStrategy, Evidence, bond_halves, minimum_distance
from atomsplat.render.footprints import covariance_gradients, removal_gains
from atomsplat.render.projector import project_isotropic_dense


@pytest.fixture(scope="module")
def lowest_dose():
    """The issue's lowest dose: a 2 nm amorphous Si particle (about 200 atoms), 60 projections over
    0:3:177 degrees, 128 x 128 pixels of 0.195 A, 8e3 e/A^2 (a brightest pixel of about 9 counts over
    a pedestal of 1): (series, true positions)."""
    from atomsplat.sim.simulate import simulate_tilt_series
    from atomsplat.sim.structures import build_particle

    atoms = build_particle("si", "quick", 0)
    series = simulate_tilt_series(
        atoms, np.arange(0, 178, 3.0), pixel_size=0.195, shape=(128, 128), dose=8e3, seed=0, progress=False
    )
    return series, atoms.positions


def _signal(series):
    stack = torch.from_numpy(series.projections)
    basis = background_basis(*stack.shape[1:], 0)
    return stack - background(border_background(stack, basis), basis)


def additive(series):
    """The counts of ``series`` under additive Gaussian noise of 10 counts: a variance that hardly
    grows with the signal, so not counts (counts over an offset, such as + 0.5, are counts)."""
    return series.projections + np.random.default_rng(0).normal(0.0, 10.0, series.shape).astype(np.float32)


def test_counts_get_their_likelihood_and_a_plane_other_data_the_papers_loss(lowest_dose):
    series, _ = lowest_dose
    assert series.counts
    noise, degree = noise_model(series, AtomSplatModelConfig())
    assert (noise.kind, degree, noise.gain) == ("poisson", 1, 1.0)
    floats = TiltSeries(additive(series), series.tilt_angles, series.pixel_size)
    noise, degree = noise_model(floats, AtomSplatModelConfig())
    assert not floats.counts and (noise.kind, degree) == ("l1", -1)
    scaled = TiltSeries(series.projections / 2.5, series.tilt_angles, series.pixel_size)  # counts in another unit
    noise, degree = noise_model(scaled, AtomSplatModelConfig())
    assert scaled.counts and (noise.kind, degree) == ("poisson", 1) and noise.gain == pytest.approx(2.5, rel=1e-6)
    noise, degree = noise_model(series, AtomSplatModelConfig(loss="l2", background_degree=0))
    assert (noise.kind, degree) == ("l2", 0)  # what the user asks for wins
    assert AtomSplatModelConfig().refine_shifts is None  # solved for counts, shrunk to 0 where aligned
    assert AtomSplatModelConfig().refine_gains is None  # solved for counts, shrunk to 1 at one dose


def test_minimum_distance_of_counts_follows_the_shortest_bond_of_their_elements(lowest_dose):
    """Counts of named elements: 0.55 x twice the smallest covalent radius (Si: 1.22 A; with O
    beside it, O's); float data, or counts whose elements are not named: 1.6 A; a given distance
    always wins."""
    series, _ = lowest_dose
    named = TiltSeries(series.projections, series.tilt_angles, series.pixel_size, elements=["Si"])
    assert named.counts and minimum_distance(named, AtomSplatModelConfig()) == pytest.approx(0.55 * 2 * 1.11)
    named.elements = ["Si", "O"]
    assert minimum_distance(named, AtomSplatModelConfig()) == pytest.approx(0.55 * 2 * 0.66)
    named.elements = ["Au"]
    assert minimum_distance(named, AtomSplatModelConfig()) == pytest.approx(1.496)
    unnamed = TiltSeries(series.projections, series.tilt_angles, series.pixel_size)
    assert minimum_distance(unnamed, AtomSplatModelConfig()) == 1.6
    floats = TiltSeries(additive(series), series.tilt_angles, series.pixel_size, elements=["Si"])
    assert minimum_distance(floats, AtomSplatModelConfig()) == 1.6
    assert minimum_distance(named, AtomSplatModelConfig(merge_distance=1.3)) == 1.3


def test_initialisation_finds_the_particle_at_the_lowest_dose(lowest_dose):
    """Measured: "peaks" puts 73 % of its 262 Gaussians within 2 A of the particle and one within 1 A
    of 69 % of the atoms; "reconstruction" 97.5 % inside (its draws are not meant to cover atoms)."""
    series, truth = lowest_dose
    radius = np.linalg.norm(truth, axis=1).max() + 2.0
    config = AtomSplatModelConfig()
    peaks = initial_positions(series, _signal(series), config, torch.Generator().manual_seed(0)).numpy()
    assert 150 < len(peaks) < 400
    assert np.mean(np.linalg.norm(peaks, axis=1) < radius) > 0.6
    assert np.mean(cKDTree(peaks).query(truth)[0] < 1.0) > 0.55
    config.init_support = "reconstruction"
    drawn = initial_positions(series, _signal(series), config, torch.Generator().manual_seed(0)).numpy()
    assert np.mean(np.linalg.norm(drawn, axis=1) < radius) > 0.9


def test_an_empty_series_is_refused_with_a_clear_error(lowest_dose):
    series, _ = lowest_dose
    rng = np.random.default_rng(0)
    empty = rng.poisson(1.0, series.projections.shape).astype(np.float32)  # the pedestal alone
    stack = torch.from_numpy(empty)
    basis = background_basis(*stack.shape[1:], 0)
    signal = stack - background(border_background(stack, basis), basis)
    with pytest.raises(EmptySeriesError, match="no signal above their background"):
        check_signal(signal, "empty.tif")
    assert check_signal(_signal(series)) > 100  # the lowest dose is far from empty


def test_evidence_removes_a_planted_noise_gaussian_and_keeps_a_faint_real_atom():
    """Poisson counts of four atoms (one faint: a third of the others' weight) on a pedestal of 1;
    a fifth Gaussian of a typical atom's weight planted where there is none. With the other
    Gaussians held, removing the planted one lowers the negative log-likelihood, removing the faint
    atom raises it by far more than BIC's price of its five parameters."""
    angles = np.arange(0.0, 178.0, 6.0)
    rotations = torch.from_numpy(view_rotations(angles))
    offsets = torch.zeros(len(angles), 2, dtype=torch.float64)
    pixel, size = 0.25, 40
    truth = torch.tensor([[0.0, 0.0, 0.0], [2.4, 0.5, -0.8], [-1.6, 1.9, 1.0], [0.7, -2.3, 1.4]], dtype=torch.float64)
    sigmas = torch.full((4,), 0.6, dtype=torch.float64)
    weights = torch.tensor([30.0, 30.0, 30.0, 10.0], dtype=torch.float64)  # counts x A^2 per projection
    mean = project_isotropic_dense(truth, sigmas, weights, rotations, offsets, pixel, size, size) + 1.0
    counts = torch.poisson(mean, generator=torch.Generator().manual_seed(0))
    planted = torch.cat([truth, torch.tensor([[-2.0, -2.0, -2.0]], dtype=torch.float64)])
    all_sigmas, all_weights = torch.cat([sigmas, sigmas[:1]]), torch.cat([weights, weights[:1]])
    model = project_isotropic_dense(planted, all_sigmas, all_weights, rotations, offsets, pixel, size, size) + 1.0
    noise = NoiseModel("poisson", 1e-6)
    gains, touched = removal_gains(
        planted, all_sigmas, all_weights, rotations, offsets, pixel, model, counts, noise.negative_log_likelihood
    )
    params = {"positions": planted, "log_weights": all_weights.log(), "log_sigmas": all_sigmas.log()}
    price = DensityStrategy.price(params, touched)
    assert gains[4] < 0 < price[4]  # the planted Gaussian only costs likelihood
    assert gains[3] > 3 * price[3]  # the faint atom is worth far more than its parameters
    assert torch.all(gains[:3] > 10 * price[:3])


def test_evidence_keeps_one_half_of_a_split_atom_and_removes_a_noise_pair():
    """Three atoms and a faint one (weight 1.3) whose signal two half copies 0.9 A apart share, as a
    split leaves them, and two noise Gaussians 1 A apart. Each half alone buys less than its price,
    the two together about twice it: removed all at once (one round), the atom would go. In rounds,
    one half stays and takes the atom's signal, and both noise Gaussians go. Over ten noise draws
    (seeds 0-9) both halves were below their price in six, and one half stayed in all ten."""
    angles = np.arange(0.0, 178.0, 6.0)
    rotations = torch.from_numpy(view_rotations(angles))
    offsets = torch.zeros(len(angles), 2, dtype=torch.float64)
    pixel, size = 0.25, 40
    truth = torch.tensor([[0.0, 0.0, 0.0], [2.4, 0.5, -0.8], [-1.6, 1.9, 1.0], [0.7, -2.3, 1.4]], dtype=torch.float64)
    weights = torch.tensor([30.0, 30.0, 30.0, 1.3], dtype=torch.float64)
    sigmas = torch.full((4,), 0.6, dtype=torch.float64)
    mean = project_isotropic_dense(truth, sigmas, weights, rotations, offsets, pixel, size, size) + 1.0
    step = torch.tensor([0.45, 0.0, 0.0], dtype=torch.float64)
    noise_pair = torch.tensor([[-2.5, -2.0, -2.0], [-2.5, -1.0, -2.0]], dtype=torch.float64)
    positions = torch.cat([truth[:3], torch.stack([truth[3] + step, truth[3] - step]), noise_pair])
    fitted = torch.tensor([30.0, 30.0, 30.0, 0.65, 0.65, 5.0, 5.0], dtype=torch.float64)
    params = {"positions": positions, "log_weights": fitted.log(), "log_sigmas": torch.full((7,), 0.6).double().log()}
    noise = NoiseModel("poisson", 1e-6)
    both_below = 0
    for seed in range(10):
        counts = torch.poisson(mean, generator=torch.Generator().manual_seed(seed))

        def removal(params):
            sigmas, weights = params["log_sigmas"].exp(), params["log_weights"].exp()
            model = project_isotropic_dense(params["positions"], sigmas, weights, rotations, offsets, pixel, size, size)
            return removal_gains(
                params["positions"], sigmas, weights, rotations, offsets, pixel, model + 1.0, counts,
                noise.negative_log_likelihood,
            )  # fmt: skip

        gains, touched = removal(params)
        price = DensityStrategy.price(params, touched)
        kept = DensityStrategy(DensityOptions(merge_distance=1.2), evidence=Evidence(removal)).keep(params).tolist()
        assert kept[:3] == [0, 1, 2] and 5 not in kept and 6 not in kept
        if bool(torch.all(gains[3:5] < price[3:5])):
            both_below += 1
            assert len(kept) == 4  # one half of the faint atom
    assert both_below >= 3


def test_a_pair_along_the_beam_of_a_missing_wedge_is_crowded():
    """Two Gaussians 2.0 A apart along z and two 2.0 A apart along y (minimum distance 1.22 A: pair
    separation 1.83 A), each pair's first cheaper: seen from a full tilt range neither pair is
    crowded; from -70:70:3 about x, whose views see z less, the pair along z is and the one along y
    is not."""
    positions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [10.0, -1.0, 0.0], [10.0, 1.0, 0.0]])
    params = {"positions": positions, "log_sigmas": torch.full((4,), np.log(0.6)), "log_weights": torch.zeros(4)}
    gains = torch.tensor([30.0, 40.0, 30.0, 40.0])
    strategy = DensityStrategy(DensityOptions(merge_distance=1.22), evidence=Evidence(lambda params: None))
    full = resolution_stretch(view_rotations(np.arange(0.0, 178.0, 3.0)))
    assert strategy.crowded(params, gains, full).tolist() == []
    wedge = resolution_stretch(view_rotations(np.arange(-70.0, 71.0, 3.0)))
    assert strategy.crowded(params, gains, wedge).tolist() == [0]


def test_a_pair_is_crowded_by_the_bond_its_two_species_make():
    """SiO2's minimum distance is O's (0.55 x an O-O bond: 0.73 A, crowded below 1.09 A), but a Si
    and an O Gaussian 1.3 A apart are closer than any Si-O bond allows (0.55 x 1.77 A: crowded below
    1.46 A), and two O Gaussians 1.3 A apart are not crowded: the pair separation follows the bond
    of each pair's species (:func:`bond_halves`)."""
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.3, 0.0, 0.0], [10.0, 0.0, 0.0], [11.3, 0.0, 0.0]])
    params = {"positions": positions, "log_sigmas": torch.full((4,), np.log(0.6)), "log_weights": torch.zeros(4)}
    gains = torch.tensor([40.0, 30.0, 40.0, 30.0])
    halves = bond_halves(["Si", "O", "O", "O"])
    assert halves[1] * 2.0 == pytest.approx(0.55 * 2 * 0.66) and halves[0] + halves[1] == pytest.approx(0.55 * 1.77)
    strategy = DensityStrategy(DensityOptions(merge_distance=2 * halves[1]), evidence=Evidence(lambda params: None))
    assert strategy.crowded(params, gains, np.eye(3)).tolist() == []
    assert strategy.crowded(params, gains, np.eye(3), halves).tolist() == [1]


def test_a_gaussian_on_two_atoms_is_split_along_their_bond():
    """Poisson counts of two atoms 2.3 A apart (a bond) on a pedestal of 1, fitted by one wide
    Gaussian at their midpoint: the evidence's covariance gradient points the split along the bond,
    whichever way it lies (three directions), so that the two copies start towards the two atoms."""
    angles = np.arange(0.0, 178.0, 6.0)
    rotations = torch.from_numpy(view_rotations(angles))
    offsets = torch.zeros(len(angles), 2, dtype=torch.float64)
    pixel, size = 0.25, 40
    noise = NoiseModel("poisson", 1e-6)
    draws = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for seed, bond in enumerate(torch.nn.functional.normalize(draws, dim=1)):
        atoms = torch.stack([1.15 * bond, -1.15 * bond])
        widths, weights = torch.full((2,), 0.55).double(), torch.full((2,), 20.0).double()
        truth = project_isotropic_dense(atoms, widths, weights, rotations, offsets, pixel, size, size)
        counts = torch.poisson(truth + 1.0, generator=torch.Generator().manual_seed(seed))
        params = {
            "positions": torch.zeros(1, 3, dtype=torch.float64),
            "log_weights": torch.tensor([40.0], dtype=torch.float64).log(),
            "log_sigmas": torch.tensor([0.9], dtype=torch.float64).log(),
        }

        def stretch(params, chosen):
            sigmas, weights = params["log_sigmas"].exp(), params["log_weights"].exp()
            model = project_isotropic_dense(params["positions"], sigmas, weights, rotations, offsets, pixel, size, size)
            level = (model + 1.0).requires_grad_(True)
            (slope,) = torch.autograd.grad(noise.negative_log_likelihood(level, counts).sum(), level)
            return covariance_gradients(
                params["positions"][chosen], sigmas[chosen], weights[chosen], rotations, offsets, pixel, slope
            )

        strategy = DensityStrategy(DensityOptions(), evidence=Evidence(lambda params: None, stretch))
        direction = strategy.split_directions(params, torch.tensor([0]))
        assert abs(float(direction[0] @ bond)) > 0.98  # 0.995, 0.9998 and 0.99994 measured


def test_species_prior_ties_weights_and_widths_to_their_species():
    prior = SpeciesPrior(["Si", "Ge"], weight_spread=0.1, width_spread=0.05)
    log_weights = torch.log(torch.tensor([1.0, 1.1, 0.9, 4.0, 4.4, 3.6, 0.2]))
    log_widths = torch.log(torch.tensor([0.6, 0.62, 0.58, 0.7, 0.72, 0.68, 1.5]))
    members = torch.tensor([True] * 6 + [False])  # the last is diffuse: not held
    prior.update(log_weights, log_widths, members)
    assert prior.labels[:6].tolist() == [0, 0, 0, 1, 1, 1] and prior.ready(7)
    torch.testing.assert_close(prior.means[1, 0], log_weights[3:6].mean())
    at_means = prior.negative_log_prior(prior.means[prior.labels, 0], prior.means[prior.labels, 1])
    assert float(at_means) == pytest.approx(0.0, abs=1e-9)
    moved = log_weights.clone().requires_grad_(True)
    prior.negative_log_prior(moved, log_widths).backward()
    assert moved.grad[4] > 0 > moved.grad[5]  # pulled back to the species' mean
    assert moved.grad[6] == 0  # the diffuse Gaussian is free
    curvature = prior.curvature()
    assert curvature[0].tolist() == pytest.approx([100.0, 400.0]) and curvature[6].tolist() == [0.0, 0.0]


def test_a_dataset_that_names_no_elements_has_its_widths_tied_alone():
    prior = SpeciesPrior([], weight_spread=0.1, width_spread=0.05)
    log_weights = torch.log(torch.tensor([1.0, 4.0, 9.0, 0.06]))  # three species and a faint spike
    log_widths = torch.log(torch.tensor([0.30, 0.29, 0.31, 0.05]))
    prior.update(log_weights, log_widths, torch.ones(4, dtype=torch.bool))
    assert prior.labels.tolist() == [0, 0, 0, 0] and prior.means.shape == (1, 2)
    weights, widths = log_weights.clone().requires_grad_(True), log_widths.clone().requires_grad_(True)
    prior.negative_log_prior(weights, widths).backward()
    assert weights.grad.abs().max() == 0  # weights free: the species are unknown
    assert widths.grad[3] < 0  # the spike is pulled out to the others' width
    assert prior.curvature()[0].tolist() == pytest.approx([0.0, 400.0])


def test_species_are_tied_by_default_for_counts(lowest_dose):
    """The default ("auto") ties them in the final refinement only ("final"), where the data are
    counts (weights and widths where the dataset names its elements, widths alone where it does
    not); never for float data, which "final" and "on" refuse."""
    series, _ = lowest_dose
    named = TiltSeries(series.projections, series.tilt_angles, series.pixel_size, elements=["Si"])
    assert AtomSplatModelConfig().tie_species == "auto"
    noise, _ = noise_model(named, AtomSplatModelConfig())
    assert isinstance(species_prior(named, AtomSplatModelConfig(), noise), SpeciesPrior)
    assert species_prior(named, AtomSplatModelConfig(tie_species="off"), noise) is None
    unnamed = TiltSeries(series.projections, series.tilt_angles, series.pixel_size)
    assert species_prior(unnamed, AtomSplatModelConfig(), noise).elements == []
    floats = TiltSeries(additive(series), series.tilt_angles, series.pixel_size, elements=["Si"])
    l1, _ = noise_model(floats, AtomSplatModelConfig())
    assert species_prior(floats, AtomSplatModelConfig(), l1) is None
    for tie in ("final", "on"):
        with pytest.raises(ValueError, match=f"tie_species '{tie}' needs counts"):
            species_prior(floats, AtomSplatModelConfig(tie_species=tie), l1)
