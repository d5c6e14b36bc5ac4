"""Data terms: how far model projections are from measured ones, for the noise the data carry.

- ``"l1"``: mean absolute residual, the paper's loss; robust, and right for Gaussian-like noise
  at the doses of most simulations.
- ``"l2"``: mean squared residual (the Gaussian negative log-likelihood up to a constant).
- ``"poisson"``: mean Poisson negative log-likelihood ``mu - y log mu`` of counts ``y`` (the
  projections must be counts, or counts times any constant factor: the factor only scales the
  loss). ``mu`` is floored at ``floor`` so that pixels the model leaves empty have a finite loss.
- ``"mixed"``: Poisson-Gaussian noise (shot noise of ``gain`` counts per data unit plus detector
  read noise of standard deviation ``read_noise`` data units) in its Gaussian approximation, the
  negative log-likelihood of N(mu, mu / gain + read_noise^2). Approximation: exact in the mean and
  variance, it misses the skew of counts below a few per pixel, where ``"poisson"`` is exact.

All return a scalar averaged over pixels; tensors of any matching shape.
"""

from __future__ import annotations

import torch

LOSSES = ("l1", "l2", "poisson", "mixed")


def data_loss(
    model: torch.Tensor,
    measured: torch.Tensor,
    kind: str = "l1",
    floor: float = 1e-6,
    gain: float = 1.0,
    read_noise: float = 0.0,
) -> torch.Tensor:
    """Loss between model projections and measured ones (same shape, data units).

    Args:
        model, measured: projections, data units.
        kind: one of :data:`LOSSES`.
        floor: smallest model value used inside logarithms and variances ("poisson", "mixed").
        gain: counts per data unit ("mixed").
        read_noise: read-noise standard deviation in data units ("mixed").
    """
    if kind == "l1":
        return (model - measured).abs().mean()
    if kind == "l2":
        return (model - measured).square().mean()
    if kind == "poisson":
        mu = model.clamp_min(floor)
        return (mu - measured * torch.log(mu)).mean()
    if kind == "mixed":
        if not gain > 0:
            raise ValueError(f"the mixed loss needs a positive gain (counts per data unit), got {gain}")
        variance = model.clamp_min(floor) / gain + read_noise**2
        return 0.5 * ((model - measured).square() / variance + torch.log(variance)).mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
