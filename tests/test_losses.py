"""Data terms against their definitions."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaln

from atomsplat.model.losses import LOSSES, data_loss


def test_l1_and_l2():
    model, measured = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 1.0])
    assert float(data_loss(model, measured, "l1")) == pytest.approx((0.5 + 0 + 3) / 3)
    assert float(data_loss(model, measured, "l2")) == pytest.approx((0.25 + 0 + 9) / 3)


def test_poisson_is_the_negative_log_likelihood_up_to_a_constant():
    mu = torch.tensor([0.5, 2.0, 7.0, 30.0], dtype=torch.float64)
    counts = torch.tensor([0.0, 3.0, 5.0, 28.0], dtype=torch.float64)
    nll = -stats.poisson.logpmf(counts.numpy(), mu.numpy()) - gammaln(counts.numpy() + 1)
    assert float(data_loss(mu, counts, "poisson")) == pytest.approx(nll.mean())


def test_poisson_is_smallest_at_the_counts():
    counts = torch.tensor([1.0, 4.0, 9.0])
    mu = counts.clone().requires_grad_(True)
    data_loss(mu, counts, "poisson").backward()
    assert mu.grad.abs().max() < 1e-6
    assert data_loss(counts * 1.1, counts, "poisson") > data_loss(counts, counts, "poisson")


def test_poisson_floor_keeps_empty_model_pixels_finite():
    loss = data_loss(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0]), "poisson", floor=1e-3)
    assert torch.isfinite(loss)


def test_mixed_is_a_gaussian_with_shot_plus_read_variance():
    mu = torch.tensor([10.0, 40.0], dtype=torch.float64)
    measured = torch.tensor([12.0, 35.0], dtype=torch.float64)
    gain, read = 2.0, 1.5
    var = mu.numpy() / gain + read**2
    nll = -stats.norm.logpdf(measured.numpy(), mu.numpy(), np.sqrt(var)) - 0.5 * np.log(2 * np.pi)
    assert float(data_loss(mu, measured, "mixed", gain=gain, read_noise=read)) == pytest.approx(nll.mean())


def test_bad_loss_arguments():
    x = torch.ones(2)
    with pytest.raises(ValueError, match="unknown loss"):
        data_loss(x, x, "huber")
    with pytest.raises(ValueError, match="gain"):
        data_loss(x, x, "mixed", gain=0.0)
    assert set(LOSSES) == {"l1", "l2", "poisson", "mixed"}
