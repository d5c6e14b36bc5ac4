"""Volume SSIM and the results row against hand-made cases with known answers."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.metrics import affine_fit, method_scores, volume_ssim


def _atoms_volume(shape=(24, 22, 20), count=12, sigma=0.9, seed=0):
    """A volume of Gaussian blobs at random voxel positions (voxel units)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    volume = np.zeros(shape)
    for centre in rng.uniform(5, np.array(shape) - 5, (count, 3)):
        volume += rng.uniform(1, 3) * np.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma**2))
    return volume


def _brute_force_ssim(t, r, sigma=1.5, k1=0.01, k2=0.03):
    """Wang et al.'s SSIM with an explicit 11^3 Gaussian window at every voxel it fits around."""
    g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * sigma**2))
    g /= g.sum()
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    c1, c2 = k1**2, k2**2  # t and r on the scale of a truth in [0, 1]
    tw, rw = sliding_window_view(t, (11, 11, 11)), sliding_window_view(r, (11, 11, 11))
    axes = (-3, -2, -1)
    mt, mr = (tw * w).sum(axes), (rw * w).sum(axes)
    vt = (tw**2 * w).sum(axes) - mt**2
    vr = (rw**2 * w).sum(axes) - mr**2
    cov = (tw * rw * w).sum(axes) - mt * mr
    return float(np.mean((2 * mt * mr + c1) * (2 * cov + c2) / ((mt**2 + mr**2 + c1) * (vt + vr + c2))))


def test_matches_explicit_window_formula():
    t = _atoms_volume((16, 15, 14))
    r = t + 0.2 * np.random.default_rng(1).normal(size=t.shape)
    unit = (t - t.min()) / (t.max() - t.min())
    a, b = affine_fit(r, unit)
    expected = _brute_force_ssim(unit, a * r + b)
    for chunk in (1, 3, 32):
        assert volume_ssim(t, r, chunk=chunk) == pytest.approx(expected, rel=1e-10)


def test_identical_volumes_score_one():
    t = _atoms_volume()
    assert volume_ssim(t, t) == pytest.approx(1.0, abs=1e-12)
    assert volume_ssim(t, t.astype(np.float32)) == pytest.approx(1.0, abs=1e-6)


def test_invariant_to_units_and_offsets():
    t = _atoms_volume()
    r = t + 0.3 * np.random.default_rng(2).normal(size=t.shape)
    base = volume_ssim(t, r)
    assert base < 0.99
    assert volume_ssim(t, 37.0 * r - 5.0) == pytest.approx(base, rel=1e-9)  # reconstruction's units
    assert volume_ssim(0.01 * t + 4.0, r) == pytest.approx(base, rel=1e-9)  # truth's units
    assert volume_ssim(t, 1e-3 * t + 2.0) == pytest.approx(1.0, abs=1e-9)


def test_noise_lowers_it_monotonically():
    t = _atoms_volume()
    noise = np.random.default_rng(3).normal(size=t.shape)
    scores = [volume_ssim(t, t + s * noise) for s in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[-1] < 0.5


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_voxel_shift_lowers_it(axis):
    t = _atoms_volume()
    shifted = volume_ssim(t, np.roll(t, 1, axis=axis))
    assert shifted < 0.95
    assert shifted < volume_ssim(t, t + 0.01 * np.random.default_rng(4).normal(size=t.shape))


def test_affine_fit_recovers_a_known_map_and_refuses_anticorrelation():
    t = _atoms_volume()
    a, b = affine_fit((t - 3.0) / 2.5, t)
    assert a == pytest.approx(2.5) and b == pytest.approx(3.0)
    a, b = affine_fit(-t, t)
    assert a == 0.0 and b == pytest.approx(t.mean())
    # Scored as a constant: the structure term vanishes wherever the truth varies.
    assert volume_ssim(t, -t) == pytest.approx(volume_ssim(t, np.full(t.shape, 7.0)), rel=1e-12)
    assert volume_ssim(t, -t) < 0.5


def test_bad_volumes_are_refused():
    t = _atoms_volume()
    with pytest.raises(ValueError, match="shape"):
        volume_ssim(t, t[:-1])
    with pytest.raises(ValueError, match="constant"):
        volume_ssim(np.ones((12, 12, 12)), np.zeros((12, 12, 12)))
    with pytest.raises(ValueError, match="exceed 10"):
        volume_ssim(t[:10], t[:10])
    with pytest.raises(ValueError, match="3-D"):
        volume_ssim(t[0], t[0])
    bad = t.copy()
    bad[3, 3, 3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        volume_ssim(t, bad)


def test_method_scores_bundles_matching_and_ssim():
    true = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    pred = np.array([[0.1, 0.0, 0.0], [3.0, 0.2, 0.0], [9.0, 9.0, 9.0]])
    species_true, species_pred = ["Pt", "Ni", "Ni"], ["Pt", "Pt", "Ni"]
    row = method_scores(pred, true, species_pred, species_true)
    assert row == {**evaluate(pred, true, species_pred, species_true).as_dict(), "ssim": None}
    assert row["tpr"] == pytest.approx(2 / 3) and row["fpr"] == pytest.approx(1 / 3)
    assert row["species_accuracy"] == pytest.approx(0.5)
    t = _atoms_volume()
    row = method_scores(pred, true, volume=2 * t, truth_volume=t)
    assert row["ssim"] == pytest.approx(1.0)
