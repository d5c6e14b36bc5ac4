"""Density control (merge, prune, duplicate) on hand-made cases with known answers."""

import math
import time

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from atomsplat.model.density import (
    append,
    close_pairs,
    cluster_labels,
    duplicate,
    grid_points,
    grid_positions,
    matched_filter,
    merge,
    prune,
    residual_peaks,
    strongest,
    width_of,
)
from atomsplat.model.refinement import refine


def same_partition(a, b):
    """True when two label arrays describe the same grouping (labels may differ by a permutation)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --- clustering ---------------------------------------------------------------------------------------


def test_cluster_labels_hand_made():
    positions = np.array(
        [
            [0.0, 0.0, 0.0],  # 0 -- 1 at 1.5: merged
            [1.5, 0.0, 0.0],  # 1
            [3.2, 0.0, 0.0],  # 2: 1.7 from 1, alone
            [10.0, 10.0, 10.0],  # 3 -- 4 at 1.55 (diagonal): merged
            [10.0 + 1.55 / math.sqrt(2), 10.0 + 1.55 / math.sqrt(2), 10.0],
            [20.0, 0.0, 0.0],  # 5 - 6 - 7: a chain 1.4 apart, one cluster
            [20.0, 1.4, 0.0],
            [20.0, 2.8, 0.0],
            [-20.0, 0.0, 0.0],  # 8: alone
            [-20.0, 0.0, 1.65],  # 9: alone (1.65 > 1.6)
        ]
    )
    for neighbours_above in (10000, 1):  # all pairs, and the k-nearest-neighbour path
        labels = cluster_labels(positions, 1.6, neighbours_above=neighbours_above)
        assert labels.shape == (10,)
        expected = [0, 0, 1, 2, 2, 3, 3, 3, 4, 5]
        assert same_partition(labels, expected), labels


def brute_force_labels(positions, distance):
    close = squareform(pdist(positions)) < distance
    return connected_components(close, directed=False)[1]


def test_cluster_labels_knn_path_equals_all_pairs_on_a_sparse_set():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 40, size=(3000, 3))  # ~0.05 per A^3: a few neighbours within 1.6 A
    full = cluster_labels(positions, 1.6)
    knn = cluster_labels(positions, 1.6, neighbours=20, neighbours_above=100)
    assert same_partition(full, knn)
    assert 0 < len(positions) - len(np.unique(full)) < len(positions)  # some, not all, merge
    small = positions[:800]
    assert same_partition(cluster_labels(small, 1.6), brute_force_labels(small, 1.6))
    assert same_partition(cluster_labels(small, 1.6, neighbours_above=10), brute_force_labels(small, 1.6))


def test_cluster_labels_knn_path_merges_coincident_gaussians():
    # exact duplicates tie with the query point itself in the k-nearest list: both must still pair
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 30, size=(500, 3))
    positions[[7, 8, 9]] = positions[3]
    positions[[20, 21]] = positions[11] + np.array([0.5, 0.0, 0.0])
    labels = cluster_labels(positions, 1.6, neighbours=20, neighbours_above=10)
    assert same_partition(labels, brute_force_labels(positions, 1.6))
    assert len(set(labels[[3, 7, 8, 9]].tolist())) == 1 and labels[20] == labels[11]


def test_close_pairs_knn_path_equals_all_pairs_without_self_pairs():
    rng = np.random.default_rng(5)
    positions = rng.uniform(0, 25, size=(800, 3))
    knn = close_pairs(positions, 1.6, neighbours=20, neighbours_above=10)
    every = close_pairs(positions, 1.6, neighbours=20, neighbours_above=10_000)
    assert (knn[:, 0] != knn[:, 1]).all()
    assert set(map(tuple, np.sort(knn, axis=1).tolist())) == set(map(tuple, np.sort(every, axis=1).tolist()))
    assert len(close_pairs(positions[:1], 1.6, 20, 0)) == 0


def test_cluster_labels_knn_path_limits_the_search_in_a_dense_blob():
    # 30 Gaussians in one tight blob: with 5 neighbours each, the graph is still connected
    rng = np.random.default_rng(2)
    blob = rng.normal(scale=0.1, size=(30, 3))
    assert len(np.unique(cluster_labels(blob, 1.6, neighbours=5, neighbours_above=1))) == 1


# --- merge -----------------------------------------------------------------------------------------------


def make_params():
    positions = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0], [9.0, 0.0, 0.0], [9.0, 1.0, 0.0], [9.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    weights = torch.tensor([1.0, 3.0, 2.0, 0.5, 1.5, 2.0], dtype=torch.float64)
    log_sigmas = torch.tensor([0.1, -0.3, 0.0, 0.2, -0.1, 0.4], dtype=torch.float64)
    return {"positions": positions, "log_weights": weights.log(), "log_sigmas": log_sigmas}


LABELS = torch.tensor([0, 0, 1, 2, 2, 2])


def test_merge_weighted_conserves_weight_and_uses_weighted_means():
    params = make_params()
    merged, source = merge(params, LABELS)
    w = params["log_weights"].exp()
    assert set(merged) == set(params) and merged["positions"].shape == (3, 3)
    torch.testing.assert_close(merged["log_weights"].exp().sum(), w.sum())
    torch.testing.assert_close(merged["log_weights"].exp(), torch.tensor([4.0, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(merged["positions"][0], torch.tensor([0.75, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(merged["positions"][1], params["positions"][2])
    expected = (params["positions"][3:] * w[3:, None]).sum(0) / w[3:].sum()
    torch.testing.assert_close(merged["positions"][2], expected)
    torch.testing.assert_close(merged["log_sigmas"][0], (0.1 * 1 - 0.3 * 3) / 4 * torch.ones((), dtype=torch.float64))
    torch.testing.assert_close(merged["log_sigmas"][2], (params["log_sigmas"][3:] * w[3:]).sum() / w[3:].sum())
    assert source.tolist() == [-1, 2, -1]


def test_merge_mean_mode_gives_plain_means():
    params = make_params()
    merged, source = merge(params, LABELS, mode="mean")
    torch.testing.assert_close(merged["log_weights"].exp(), torch.tensor([2.0, 2.0, 4.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(merged["positions"][0], torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(merged["positions"][2], params["positions"][3:].mean(0))
    torch.testing.assert_close(merged["log_sigmas"][2], params["log_sigmas"][3:].mean())
    torch.testing.assert_close(merged["log_sigmas"][1], params["log_sigmas"][2])
    assert source.tolist() == [-1, 2, -1]
    with pytest.raises(ValueError, match="merge mode"):
        merge(params, LABELS, mode="median")


def test_merge_all_singletons_is_identity_and_keeps_sources():
    params = make_params()
    merged, source = merge(params, torch.arange(6))
    assert source.tolist() == list(range(6))
    for name in params:
        torch.testing.assert_close(merged[name], params[name])


def test_merge_with_anisotropic_scales_and_unordered_labels():
    params = make_params()
    params.pop("log_sigmas")
    params["log_scales"] = torch.arange(18, dtype=torch.float64).reshape(6, 3) / 10
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    merged, source = merge(params, labels)
    w = params["log_weights"].exp()
    for c in range(3):
        members = (labels == c).nonzero().squeeze(1)
        torch.testing.assert_close(
            merged["log_scales"][c], (params["log_scales"][members] * w[members, None]).sum(0) / w[members].sum()
        )
    assert source.tolist() == [-1, -1, -1]
    assert width_of(merged).shape == (3,)


def test_cluster_then_merge_from_numpy_labels():
    params = make_params()
    labels = torch.from_numpy(cluster_labels(params["positions"].numpy(), 1.6)).long()
    merged, source = merge(params, labels)
    assert len(merged["positions"]) == 3
    torch.testing.assert_close(merged["log_weights"].exp().sum(), params["log_weights"].exp().sum())


# --- prune and duplicate -----------------------------------------------------------------------------------


def test_prune_removes_below_fraction_of_median():
    weights = torch.tensor([1.0, 2.0, 0.29, 4.0, 0.31, 3.0, 0.05], dtype=torch.float64)
    params = {
        "positions": torch.randn(7, 3, dtype=torch.float64),
        "log_weights": weights.log(),
        "log_sigmas": torch.zeros(7, dtype=torch.float64),
    }
    kept, keep = prune(params, 0.15)  # median weight 1.0: threshold 0.15
    assert keep.tolist() == [0, 1, 2, 3, 4, 5]
    kept, keep = prune(params, 0.3)  # threshold 0.3
    assert keep.tolist() == [0, 1, 3, 4, 5]
    torch.testing.assert_close(kept["positions"], params["positions"][keep])
    torch.testing.assert_close(kept["log_weights"].exp(), weights[keep])


@pytest.mark.parametrize("offset", [0.4, torch.tensor([0.1, 0.25, 0.7], dtype=torch.float64)])
def test_duplicate(offset):
    params = make_params()
    chosen = torch.tensor([1, 3, 4])
    new, source = duplicate(params, chosen, offset, generator=torch.Generator().manual_seed(0))
    count = 6
    assert new["positions"].shape == (9, 3) and new["log_sigmas"].shape == (9,)
    torch.testing.assert_close(new["log_weights"].exp().sum(), params["log_weights"].exp().sum())
    torch.testing.assert_close(new["log_weights"][chosen].exp(), params["log_weights"][chosen].exp() / 2)
    torch.testing.assert_close(new["log_weights"][count:].exp(), params["log_weights"][chosen].exp() / 2)
    apart = (new["positions"][chosen] - new["positions"][count:]).norm(dim=1)
    torch.testing.assert_close(apart, 2 * torch.as_tensor(offset, dtype=torch.float64).expand(3))
    torch.testing.assert_close((new["positions"][chosen] + new["positions"][count:]) / 2, params["positions"][chosen])
    untouched = torch.tensor([0, 2, 5])
    torch.testing.assert_close(new["positions"][untouched], params["positions"][untouched])
    torch.testing.assert_close(new["log_sigmas"][count:], params["log_sigmas"][chosen])
    assert source.tolist() == [0, 1, 2, 3, 4, 5, -1, -1, -1]


# --- scale ---------------------------------------------------------------------------------------------------


def test_cluster_and_merge_200k_gaussians_runs():
    # 200,000 Gaussians at about atomic density (the k-nearest-neighbour path); the timings of a
    # whole pass up to 1,000,000 Gaussians are in docs/performance.md (benchmarks/density.py).
    # No time assert.
    rng = np.random.default_rng(3)
    count = 200_000
    side = (count * 2.5**3) ** (1 / 3)
    positions = rng.uniform(0, side, size=(count, 3))
    params = {
        "positions": torch.from_numpy(positions),
        "log_weights": torch.from_numpy(rng.normal(size=count)),
        "log_sigmas": torch.full((count,), -0.5, dtype=torch.float64),
    }
    start = time.perf_counter()
    labels = torch.from_numpy(cluster_labels(positions, 1.6)).long()
    merged, source = merge(params, labels)
    elapsed = time.perf_counter() - start
    print(f"cluster_labels + merge of {count} Gaussians: {elapsed:.2f} s, {len(source)} left")
    assert len(source) == int(labels.max()) + 1 < count
    torch.testing.assert_close(merged["log_weights"].exp().sum(), params["log_weights"].exp().sum())


# --- births where atoms are missing -----------------------------------------------------------------


def test_grid_points_cover_the_box_in_c_order():
    shape, points = grid_points(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 2.0]), 0.5)
    assert tuple(shape) == (5, 2, 1)
    assert points.shape == (10, 3)
    np.testing.assert_allclose(points[0], [-1.0, 0.0, 2.0])
    np.testing.assert_allclose(points[1], [-1.0, 0.5, 2.0])  # the last axis runs fastest
    np.testing.assert_allclose(points[-1], [1.0, 0.5, 2.0])
    some = np.array([0, 1, 7, 9])
    np.testing.assert_array_equal(grid_positions(some, shape, np.array([-1.0, 0.0, 2.0]), 0.5), points[some])


LOW = np.full(3, -8.0)  # the blob grid's first point, A


def _blob_grid(centres, heights, spacing=0.5, sigma=0.7):
    shape, points = grid_points(LOW, np.full(3, 8.0), spacing)
    score = np.zeros(len(points))
    for centre, height in zip(centres, heights):
        score += height * np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * sigma**2))
    return score.reshape(shape), points


def test_residual_peaks_finds_the_missing_atoms_only():
    centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [-4.0, 2.5, 1.0], [0.0, -5.0, 3.5]])
    score, points = _blob_grid(centres, [1.0, 0.6, 0.2, 1.0])
    existing = np.array([[0.3, -5.2, 3.4], [6.0, 6.0, 6.0]])  # the fourth blob is an existing atom's misfit
    found = residual_peaks(score, 0.3, 1.6, 0.5, existing, LOW)
    np.testing.assert_allclose(points[found], centres[:2], atol=1e-9)  # the third is below the threshold
    # with nothing existing, the fourth is found too; with a high threshold, only the strong ones
    assert len(residual_peaks(score, 0.3, 1.6, 0.5, np.zeros((0, 3)), LOW)) == 3
    np.testing.assert_allclose(points[residual_peaks(score, 0.8, 1.6, 0.5, existing, LOW)], centres[:1])


def test_residual_peaks_keeps_one_maximum_per_blob():
    rng = np.random.default_rng(0)
    score, points = _blob_grid([[1.1, -0.4, 0.7]], [1.0])
    score += 1e-3 * rng.normal(size=score.shape)  # noise makes shallow maxima in the tails, all far below
    found = residual_peaks(score, 0.3, 1.6, 0.5, np.zeros((0, 3)), LOW)
    assert len(found) == 1
    assert np.linalg.norm(points[found[0]] - [1.1, -0.4, 0.7]) <= 0.5 * math.sqrt(3) / 2 + 1e-9


def test_strongest_keeps_the_highest_scores_in_their_order():
    score = np.array([[0.5, 3.0], [2.0, 1.0]])
    np.testing.assert_array_equal(strongest(np.array([3, 0, 1, 2]), score, 2), [1, 2])
    np.testing.assert_array_equal(strongest(np.array([3, 0]), score, 2), [3, 0])  # fewer than the count: all


def test_append_adds_gaussians_of_median_width_with_fresh_state():
    params = make_params()
    positions = torch.tensor([[2.0, 2.0, 2.0], [-3.0, 0.0, 1.0]], dtype=torch.float64)
    new, source = append(params, positions, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert len(new["positions"]) == 8
    torch.testing.assert_close(new["positions"][6:], positions)
    torch.testing.assert_close(new["log_weights"][6:], torch.tensor([0.5, 1.5], dtype=torch.float64))
    median = torch.sort(params["log_sigmas"]).values[3]
    torch.testing.assert_close(new["log_sigmas"][6:], median.expand(2))
    torch.testing.assert_close(new["positions"][:6], params["positions"])
    assert source.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]


def _model_missing_atoms(tmp_path, missing, light=(), light_weight=15.0, counts=False, elements=None, **options):
    """A model whose Gaussians are the true atoms of a noise-free series (with ``counts``, Poisson
    counts of it over a pedestal of 1) but ``missing`` of them; the atoms ``light`` weigh
    ``light_weight`` where the others weigh 100; ``elements``: the series' (the species prior's);
    ``options``: of the model config."""
    from ase import Atoms

    from atomsplat.data.dataparser import TomographyDataParserConfig
    from atomsplat.data.formats import write_tilt_series
    from atomsplat.data.series import TiltSeries
    from atomsplat.geometry import view_rotations
    from atomsplat.model.atomsplat_model import AtomSplatModelConfig
    from atomsplat.render.projector import project_isotropic_dense
    from atomsplat.sim.structures import random_packing

    truth = torch.from_numpy(random_packing(6.0, 0.03, 2.5, np.random.default_rng(3)))
    sigmas, weights = (
        torch.full((len(truth),), 0.6, dtype=torch.float64),
        torch.full((len(truth),), 100.0, dtype=torch.float64),
    )
    weights[list(light)] = light_weight
    angles = np.arange(-60.0, 61.0, 4.0)
    stack = project_isotropic_dense(
        truth,
        sigmas,
        weights,
        torch.from_numpy(view_rotations(angles)),
        torch.zeros(len(angles), 2, dtype=torch.float64),
        0.25,
        64,
        64,
    )
    if counts:
        stack = torch.poisson(stack + 1.0, generator=torch.Generator().manual_seed(0))
    series = TiltSeries(stack.numpy().astype(np.float32), angles, 0.25, elements=elements)
    write_tilt_series(tmp_path / "series", series, ground_truth=Atoms(["Pt"] * len(truth), positions=truth.numpy()))
    outputs = TomographyDataParserConfig(data=tmp_path / "series").setup().get_dataparser_outputs("train")
    model = AtomSplatModelConfig(init_count=10, **options).setup(
        scene_box=outputs.scene_box, num_train_data=len(outputs.image_filenames), metadata=outputs.metadata
    )
    keep = np.setdiff1d(np.arange(len(truth)), missing)
    model.cloud.install(
        {
            "positions": truth[keep].float(),
            "log_sigmas": sigmas[keep].log().float(),
            "log_weights": weights[keep].log().float(),
        }
    )
    return model, truth.numpy()


@pytest.mark.parametrize("counts, method", [(False, "residual"), (True, "reconstruction")])
def test_refine_gives_birth_where_atoms_are_missing_and_nowhere_else(tmp_path, counts, method):
    """Training's births, by two searches: noise-free float data (weight selection) the
    back-projected residual, whatever ``birth_search`` says; Poisson counts over a pedestal
    (evidence selection) the residual's reconstruction (``birth_search="reconstruction"``)."""
    missing = [2, 7, 11]
    model, truth = _model_missing_atoms(tmp_path, missing, counts=counts, birth_search="reconstruction")
    assert model.strategy.birth_method(final=False) == method
    assert model.strategy.birth_method(final=True) == ("residual" if method == "residual" else "score")
    count = model.num_points

    def birth_pass():
        return model.strategy.refine(model.cloud, {}, 300, residuals=model.residuals)

    record = birth_pass()
    assert record.born == 3 and model.num_points == count + 3
    born = model.cloud.positions[count:].detach().numpy()
    distance = np.linalg.norm(born[:, None] - truth[missing][None], axis=2).min(axis=1)
    assert np.all(distance < 0.5), distance  # within the 0.5 A grid's half-diagonal
    # the weight explains the residual's peak: about the missing atom's (100), not far off
    weights = model.cloud.weights[count:].detach().numpy()
    assert np.all((weights > 50) & (weights < 150)), weights
    assert birth_pass().born == 0  # nothing is missing any more


def test_weight_selection_births_at_most_half_the_gaussians_per_pass(tmp_path):
    """Under weight selection nothing but :data:`WEIGHT_BIRTH_GROWTH` bounds a pass's births: with
    15 of 35 atoms missing, a pass gives birth to that share of the Gaussians, the strongest maxima, each
    at a missing atom; the next passes give birth to the rest and then to none."""
    from atomsplat.model.strategy import WEIGHT_BIRTH_GROWTH

    missing = list(range(0, 30, 2))
    model, truth = _model_missing_atoms(tmp_path, missing)
    for _ in range(5):
        count = model.num_points
        record = model.strategy.refine(model.cloud, {}, 300, residuals=model.residuals)
        assert record.born == min(math.ceil(WEIGHT_BIRTH_GROWTH * count), len(truth) - count)
        born = model.cloud.positions[count:].detach().numpy()
        # near a missing atom: the grid's half-diagonal plus a missing neighbour's pull (0.55 A measured)
        assert np.all(np.linalg.norm(born[:, None] - truth[missing][None], axis=2).min(axis=1) < 0.75)
    assert model.num_points == len(truth)


def test_births_for_counts_are_by_the_score_test_unless_asked_otherwise(tmp_path):
    model, _ = _model_missing_atoms(tmp_path, [2], counts=True)
    assert model.strategy.birth_method(final=False) == model.strategy.birth_method(final=True) == "score"


@pytest.mark.parametrize("birth_every", [300, 0])
def test_atoms_a_diffuse_gaussian_stood_for_are_born_after_its_removal(tmp_path, birth_every):
    """Two atoms stood for by one diffuse Gaussian (3 x the median width, their weight) after the
    final refinement: the model removes it, refines the rest, and gives the atoms birth where the
    residual shows them missing; every atom is found, none false. With births off (``birth_every``
    0) they stay missing: the births, not the refinement, find them (as on the quick FePt particle in
    the wedge, an atom beside them widens into diffuse signal, taking the removed signal)."""
    from atomsplat.analysis.matching import evaluate

    missing = [2, 7]
    model, truth = _model_missing_atoms(tmp_path, missing, birth_every=birth_every)
    params = model.cloud.detached()
    wide = {
        "positions": torch.from_numpy(truth[missing].mean(axis=0, keepdims=True)).float(),
        "log_sigmas": torch.tensor([math.log(1.8)]),
        "log_weights": torch.tensor([math.log(200.0)]),
    }
    model.cloud.install({name: torch.cat([values, wide[name]]) for name, values in params.items()})
    model._take_back_diffuse(model.refinement_args(), None)
    scores = evaluate(model.atoms()["positions"], truth, max_distance=0.3)
    if birth_every:
        assert (scores.tpr, scores.fpr) == (1.0, 0.0) and model.num_points == len(truth)
    else:
        # the two stay missing, and a neighbour widens into diffuse signal taking theirs (measured: 32 of 35)
        assert scores.tpr <= (len(truth) - len(missing)) / len(truth)


def test_a_light_atom_beside_heavy_ones_is_born_when_the_data_decide(tmp_path):
    """A missing atom of 0.15 of the others' weight (Fe beside Pt in ADF counts) is below 0.3 x the
    median peak: under weight selection it is not born. Under evidence selection (a likelihood) births
    need only stand out of the residual's noise, and the next pass keeps only what the data call for:
    the light atom is born and stays, anything else born is removed."""
    model, truth = _model_missing_atoms(tmp_path / "l2", [7], light=[7], loss="l2")
    assert model.strategy.evidence is None
    assert model.strategy.refine(model.cloud, {}, 300, residuals=model.residuals).born == 0

    model, truth = _model_missing_atoms(tmp_path / "poisson", [7], light=[7], loss="poisson")
    assert model.strategy.evidence is not None
    count = model.num_points
    assert model.strategy.refine(model.cloud, {}, 300, residuals=model.residuals).born >= 1
    # the score test's weight is the light atom's (15), not a multiple of it (a newborn too heavy
    # widens to shed its excess and ends as diffuse signal)
    newborn = np.linalg.norm(model.cloud.positions[count:].detach().numpy() - truth[7], axis=1).argmin()
    assert 10.0 < float(model.cloud.weights[count + newborn]) < 20.0
    model.strategy.refine(model.cloud, {}, 400)
    assert model.num_points == count + 1
    assert np.linalg.norm(model.cloud.positions.detach().numpy() - truth[7], axis=1).min() < 0.5


@pytest.mark.parametrize("halo", [None, (0.3, 2.0)])
def test_matched_filter_gives_an_atoms_weight_and_standard_score(halo):
    """An atom at a pixel's centre, alone in the residual: the matched filter's S / I there is its
    weight and S / sqrt(I) the square root of sum(residual^2 / var), the score test's statistic of
    a model that is exactly right; with a halo too (core and halo as the projector makes them)."""
    from atomsplat.render.projector import project_isotropic

    weight, sigma, pixel = 3.0, 0.55, 0.2
    fraction, ratio = (0.0, 1.0) if halo is None else halo
    centre = torch.zeros(2, 3, dtype=torch.float64)
    image = project_isotropic(
        centre,
        torch.tensor([sigma, ratio * sigma], dtype=torch.float64),
        torch.tensor([(1 - fraction) * weight, fraction * weight], dtype=torch.float64),
        torch.eye(3, dtype=torch.float64)[None],
        torch.zeros(1, 2, dtype=torch.float64),
        pixel,
        41,
        41,
        6.0,
    )
    variance = 0.5 + torch.rand(image.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score, information = matched_filter(image, variance, sigma, pixel, halo)
    assert int(image.argmax()) == 20 * 41 + 20  # the atom sits on the centre pixel
    s, i = score[0, 20, 20], information[0, 20, 20]
    torch.testing.assert_close(s / i, torch.tensor(weight, dtype=torch.float64))
    torch.testing.assert_close(s / i.sqrt(), (image**2 / variance).sum().sqrt(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("light_weight, kept", [(1.7, False), (15.0, True)])
def test_final_births_keep_only_what_pays_its_price(tmp_path, light_weight, kept):
    """Under evidence selection the births after the final refinement search down to
    FINAL_BIRTH_SIGNIFICANCE standard deviations, below training's ``birth_significance``, and
    then every newborn is refined and must pay its price like any Gaussian: a missing atom of
    weight 1.7 (score 4 at its place, noise-free counts: below 5; refitted, it gains less than
    its price) is born and pruned again, and then no round gives birth again (the next would only
    find it anew); one of weight 15 (score 36) is born and stays."""
    from atomsplat.model.strategy import FINAL_BIRTH_SIGNIFICANCE

    model, truth = _model_missing_atoms(tmp_path, [7], light=[7], light_weight=light_weight, loss="poisson")
    if not kept:  # training's threshold does not see it
        assert model.strategy.refine(model.cloud, {}, 300, residuals=model.residuals).born == 0
    count = model.num_points
    records = []
    model.report = records.append
    model._final_births(model.refinement_args(), None, FINAL_BIRTH_SIGNIFICANCE)
    assert records[0].born >= 1  # found at FINAL_BIRTH_SIGNIFICANCE
    assert model.num_points == count + kept
    assert (records[1].newborn_kept > 0) == kept
    if not kept:
        assert all(record.born == 0 for record in records[1:])
    closest = np.linalg.norm(model.cloud.positions.detach().numpy() - truth[7], axis=1).min()
    assert (closest < 0.3) == kept, closest


def test_final_newborns_stay_out_of_the_species_prior_until_tested(tmp_path, monkeypatch):
    """With species tied (one element), a newborn after the final refinement is refined outside the
    species prior: the missing atom of weight 1.7 (the others 100) keeps a weight of its own and is
    pruned for not paying its price, not pulled towards 100, where it would misfit the data around it
    (a 5.5 nm Si particle at 1.6e5 e/A^2: hundreds of births chasing that misfit). Once tested, the
    atoms are all in the prior again."""
    import atomsplat.model.atomsplat_model as module
    from atomsplat.model.strategy import FINAL_BIRTH_SIGNIFICANCE

    model, truth = _model_missing_atoms(
        tmp_path, [7], light=[7], light_weight=1.7, loss="poisson", elements=["Pt"], tie_species="final"
    )
    count = model.num_points
    prior = model.fitted_prior()
    assert prior is not None and bool(prior.members.all())
    newborn_weights, original = [], module.refine

    def refine(*args, prior=None, **options):
        done = original(*args, prior=prior, **options)
        if model.num_points > count:
            assert not bool(prior.members[count:].any()) and bool(prior.members[:count].all())
            newborn_weights.append(float(model.cloud.weights[count:].max()))
        return done

    monkeypatch.setattr(module, "refine", refine)
    records = []
    model.report = records.append
    prior = model._final_births(model.refinement_args(), prior, FINAL_BIRTH_SIGNIFICANCE)
    assert records[0].born >= 1 and newborn_weights
    assert newborn_weights[0] < 10.0, newborn_weights
    assert model.num_points == count and bool(prior.members.all())


def test_a_newborn_beside_another_gaussian_is_removed_and_one_apart_stays(tmp_path):
    """``remove_crowded`` looks only at the last pass's births: one newborn 1.0 A from an atom's
    Gaussian (a second Gaussian on that atom) is removed, one 2.5 A from every Gaussian stays, and
    the older Gaussians are left alone."""
    model, truth = _model_missing_atoms(tmp_path, [], loss="poisson")
    params = model.cloud.detached()
    count = model.num_points
    far = params["positions"][params["positions"][:, 0].argmax()] + torch.tensor([2.5, 0.0, 0.0])  # outside
    beside = params["positions"][0] + torch.tensor([1.0, 0.0, 0.0])
    newborn = {
        "positions": torch.stack([beside, far]),
        "log_sigmas": params["log_sigmas"][:2],
        "log_weights": params["log_weights"][:2],
    }
    model.cloud.install({name: torch.cat([values, newborn[name]]) for name, values in params.items()})
    assert float(torch.cdist(far[None], params["positions"]).min()) >= 2.5 - 1e-5
    assert model.strategy.remove_crowded(model.cloud, {}, 2, 2.0) == 1
    assert model.num_points == count + 1
    torch.testing.assert_close(model.cloud.positions.detach()[:count], params["positions"])
    torch.testing.assert_close(model.cloud.positions.detach()[count], far)


def _closest_pair(truth):
    gaps = np.linalg.norm(truth[:, None] - truth[None], axis=2) + np.diag(np.full(len(truth), np.inf))
    return list(np.unravel_index(np.argmin(gaps), gaps.shape)), float(gaps.min())


def test_a_gaussian_between_two_atoms_is_refitted_out_and_the_atoms_stay(tmp_path):
    """Poisson counts; the closest two atoms (weight 15 each, the others 100) fitted at 0.7 of their
    weight, and a Gaussian at their midpoint with 0.6 of one atom's (a split along the bond that left
    its middle), all refined. With its neighbours refitted without it, the atoms take their weight
    back and the data term hardly rises, so it goes (the gate that spares the refits of costly
    Gaussians opened); the atoms stay. The series' -60:60 wedge makes heavy atoms close along z
    crowded too, and with the gate open they are tested first: the refit may carry the midpoint
    Gaussian onto one of them, so the atoms are compared one-to-one, not by index."""
    from atomsplat.analysis.matching import match_atoms

    model, truth = _model_missing_atoms(tmp_path, [], counts=True, loss="poisson")
    pair, _ = _closest_pair(truth)
    model, truth = _model_missing_atoms(tmp_path / "light", [], light=pair, counts=True, loss="poisson")
    params = model.cloud.detached()
    params["log_weights"][pair] += np.log(0.7)
    midpoint = {
        "positions": params["positions"][pair].mean(dim=0, keepdim=True),
        "log_sigmas": params["log_sigmas"][:1],
        "log_weights": torch.tensor([np.log(0.6 * 15.0)], dtype=params["log_weights"].dtype),
    }
    model.cloud.install({name: torch.cat([values, midpoint[name]]) for name, values in params.items()})
    refine(*model.refinement_args())  # converged, as after the final births
    model._refit_crowded(model.refinement_args(), None)
    assert model.num_points == len(truth)
    found, atoms, errors = match_atoms(model.cloud.positions.detach().numpy(), truth)
    assert len(atoms) == len(truth)
    assert errors.max() < 0.2 and np.median(errors) < 0.05  # the light atoms in Poisson noise: 0.10 A measured
    light = [int(found[list(atoms).index(atom)]) for atom in pair]
    torch.testing.assert_close(model.cloud.weights.detach()[light], torch.tensor([15.0, 15.0]), rtol=0.1, atol=0)


def test_a_crowded_light_atom_stays(tmp_path):
    """The closest two atoms, one of them light (weight 15, the others 100), within the pair
    separation of a minimum distance of 2 A: the light one is tested, and with its neighbours
    refitted without it the data term rises by far more than CROWDED_RISE, so all stays as it was,
    the optimizers' moments too."""
    from atomsplat.model.strategy import PAIR_SEPARATION

    model, truth = _model_missing_atoms(tmp_path, [], counts=True, loss="poisson")
    pair, gap = _closest_pair(truth)
    model, truth = _model_missing_atoms(
        tmp_path / "light", [], light=pair[:1], counts=True, loss="poisson", merge_distance=2.0
    )
    assert gap < PAIR_SEPARATION * 2.0
    refine(*model.refinement_args())  # converged, as after the final births
    params = {name: values.clone() for name, values in model.cloud.detached().items()}
    model.optimizers = {name: torch.optim.Adam([p], lr=1e-3) for name, p in model.cloud.params.items()}
    for name, p in model.cloud.params.items():  # moments to carry through the removal and back
        p.grad = torch.ones_like(p)
        model.optimizers[name].step()
        p.data.copy_(params[name])
    model._refit_crowded(model.refinement_args(), None)
    assert model.num_points == len(truth)
    for name, values in model.cloud.detached().items():
        torch.testing.assert_close(values, params[name])
        (live,) = model.optimizers[name].param_groups[0]["params"]
        assert live is model.cloud.params[name]
        assert model.optimizers[name].state[live]["exp_avg"].shape == live.shape
