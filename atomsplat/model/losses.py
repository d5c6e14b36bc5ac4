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

:class:`NoiseModel` holds one choice with its constants; :meth:`NoiseModel.fit_linear` finds the
coefficients of a linear term of the model (a background, a pedestal) that minimise the data term
for fixed atoms, which is how :mod:`atomsplat.model.corrections` keeps the background at its
optimum instead of chasing it by gradient steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    """Loss between model projections and measured ones (same shape, data units), averaged over pixels.

    Args:
        model, measured: projections, data units.
        kind: one of :data:`LOSSES`.
        floor: smallest model value used inside logarithms and variances ("poisson", "mixed").
        gain: counts per data unit ("mixed").
        read_noise: read-noise standard deviation in data units ("mixed").
    """
    return pixel_loss(model, measured, kind, floor, gain, read_noise).mean()


def pixel_loss(model, measured, kind: str = "l1", floor: float = 1e-6, gain: float = 1.0, read_noise: float = 0.0):
    """The data term of every pixel (same shape as ``model``); :func:`data_loss` is its mean."""
    if kind == "l1":
        return (model - measured).abs()
    if kind == "l2":
        return (model - measured).square()
    if kind == "poisson":
        mu = model.clamp_min(floor)
        return mu - measured * torch.log(mu)
    if kind == "mixed":
        if not gain > 0:
            raise ValueError(f"the mixed loss needs a positive gain (counts per data unit), got {gain}")
        variance = model.clamp_min(floor) / gain + read_noise**2
        return 0.5 * ((model - measured).square() / variance + torch.log(variance))
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


@dataclass(frozen=True)
class NoiseModel:
    """A data term with its constants (see the module docstring): ``kind`` in :data:`LOSSES`,
    ``floor`` (data units), ``gain`` (counts per data unit) and ``read_noise`` (data units)."""

    kind: str = "l1"
    floor: float = 1e-6
    gain: float = 1.0
    read_noise: float = 0.0

    def __post_init__(self):
        if self.kind not in LOSSES:
            raise ValueError(f"unknown loss {self.kind!r}; choose one of {', '.join(LOSSES)}")

    def loss(self, model: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """The mean data term (:func:`data_loss`)."""
        return data_loss(model, measured, self.kind, self.floor, self.gain, self.read_noise)

    def pixels(self, model: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """The data term of every pixel (:func:`pixel_loss`)."""
        return pixel_loss(model, measured, self.kind, self.floor, self.gain, self.read_noise)

    @property
    def is_likelihood(self) -> bool:
        """Whether :meth:`negative_log_likelihood` is an absolute likelihood (counting noise of a
        known gain), which model selection and uncertainties need."""
        return self.kind in ("poisson", "mixed")

    @property
    def nats(self) -> Optional[float]:
        """Nats per unit of the summed data term (a likelihood's scale: the gain for counts, 1 for
        "mixed"), or None where the data term is no absolute likelihood."""
        return {"poisson": self.gain, "mixed": 1.0}.get(self.kind)

    @property
    def smooth(self) -> "NoiseModel":
        """The smooth data term for a final refinement to convergence: this one, or, for "l1", the
        Gaussian likelihood "l2" (exact for additive Gaussian noise, which L1 stands in for)."""
        return NoiseModel("l2", self.floor, self.gain, self.read_noise) if self.kind == "l1" else self

    def negative_log_likelihood(self, model: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """Each pixel's negative log-likelihood in nats (same shape), up to a constant that does not
        depend on the model: "poisson" of the counts ``gain * measured``, "mixed" as its Gaussian
        approximation. Only for :attr:`is_likelihood` data terms."""
        if not self.is_likelihood:
            raise ValueError(f"the {self.kind} data term has no absolute likelihood (the noise level is unknown)")
        scale = self.gain if self.kind == "poisson" else 1.0
        return scale * self.pixels(model, measured)

    def variance(self, model: torch.Tensor, residual_variance: float = None) -> torch.Tensor:
        """The variance of every pixel (data units^2) for the model values ``model``: ``model /
        gain`` for counts ("poisson"), plus ``read_noise^2`` ("mixed"); for "l1" and "l2", the
        ``residual_variance`` measured from the fit (additive noise of unknown level)."""
        if self.kind == "poisson":
            return model.clamp_min(self.floor) / self.gain
        if self.kind == "mixed":
            return model.clamp_min(self.floor) / self.gain + self.read_noise**2
        if residual_variance is None:
            raise ValueError(f"the {self.kind} data term needs the residual variance for pixel variances")
        return torch.full_like(model, float(residual_variance))

    @torch.no_grad()
    def fit_linear(
        self,
        fixed: torch.Tensor,
        measured: torch.Tensor,
        basis: torch.Tensor,
        start: torch.Tensor,
        iterations: int = 30,
    ) -> torch.Tensor:
        """Coefficients c (V, T) minimising the data term of ``fixed + sum_t c_t basis_t`` per view.

        Args:
            fixed: (V, H, W) the rest of the model (the atoms' projections), held fixed.
            measured: (V, H, W) measured projections.
            basis: (T, H, W) the linear term's images (e.g. background monomials); ``basis[0]`` is the
                constant image 1.
            start: (V, T) coefficients to start from (e.g. the last fit).
            iterations: most Newton (or, for "l1", reweighting) steps.

        Returns:
            (V, T) float32 coefficients.

        "l2" is solved exactly; "poisson" and "mixed" by Newton steps with step halving from
        ``start``, each of which lowers the data term; "l1" by iteratively reweighted least squares
        from ``start`` (weights ``1 / max(|r|, eps)``), each step of which lowers the sum of absolute
        residuals. Every problem is convex with T unknowns per view: from a warm start (the last
        fit, during training) a few steps reach the optimum, and steps stop once the coefficients
        no longer change.
        """
        fixed, measured, basis = fixed.double(), measured.double(), basis.to(fixed.device).double()
        design = basis.reshape(basis.shape[0], -1)  # (T, P)
        flat, measured_flat = fixed.reshape(len(fixed), -1), measured.reshape(len(fixed), -1)
        target = measured_flat - flat  # (V, P)
        if self.kind == "l2":
            return torch.linalg.solve(design @ design.T, design @ target.T).T.float()
        current = start.to(target).clone()
        if self.kind == "l1":
            scale = 1e-6 * target.abs().mean(dim=1, keepdim=True).clamp_min(1e-30)
            for _ in range(iterations):  # each reweighted step lowers the sum of |residuals|
                weight = 1.0 / (target - current @ design).abs().clamp_min(scale)
                weighted = design[None] * weight[:, None, :]  # (V, T, P)
                before, current = (
                    current,
                    torch.linalg.solve(weighted @ design.T, (weighted @ target[:, :, None])[..., 0]),
                )
                if _converged(before, current):
                    break
            return current.float()
        value = self._view_totals(flat + current @ design, measured_flat)
        stuck = ~torch.isfinite(value)  # an infeasible start: lift the constant term above the floor
        if bool(stuck.any()):
            lowest = (flat + current @ design).amin(dim=1)
            current[stuck, 0] += 2.0 * self.floor - lowest[stuck] + 1e-3 * measured_flat[stuck].abs().mean(dim=1)
            value = self._view_totals(flat + current @ design, measured_flat)
        eye = torch.eye(len(design), dtype=design.dtype, device=design.device)
        for _ in range(iterations):
            first, second = self._derivatives(flat + current @ design, measured_flat)
            hessian = (design[None] * second[:, None, :]) @ design.T  # (V, T, T)
            hessian = hessian + 1e-12 * hessian.diagonal(dim1=1, dim2=2).abs().amax(1)[:, None, None] * eye
            step = torch.linalg.solve(hessian, first @ design.T)
            before = current
            size = torch.ones(len(flat), 1, dtype=step.dtype, device=step.device)
            for _ in range(40):  # halve each view's step until its data term does not grow
                trial = current - size * step
                trial_value = self._view_totals(flat + trial @ design, measured_flat)
                better = trial_value <= value
                current = torch.where(better[:, None], trial, current)
                value = torch.where(better, trial_value, value)
                size = torch.where(better[:, None], torch.zeros_like(size), 0.5 * size)
                if not bool(size.any()):
                    break
            if _converged(before, current):
                break
        return current.float()

    def _derivatives(self, model: torch.Tensor, measured: torch.Tensor):
        """First and second derivatives of each pixel's data term by its model value (same shape)."""
        if self.kind == "poisson":
            mu = model.clamp_min(self.floor)
            ratio = measured / mu
            return 1.0 - ratio, ratio / mu
        model = model.detach().requires_grad_(True)
        with torch.enable_grad():
            first = torch.autograd.grad(self.pixels(model, measured).sum(), model, create_graph=True)[0]
            second = torch.autograd.grad(first.sum(), model)[0]
        return first.detach(), second

    def _view_totals(self, model: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """(V,) the summed data term of each view of flattened (V, P) images; infinite where the
        model is not above the floor ("poisson": the likelihood needs a positive mean)."""
        total = self.pixels(model, measured).sum(dim=1)
        if self.kind == "poisson":
            total = torch.where((model > self.floor).all(dim=1), total, torch.full_like(total, float("inf")))
        return total


def _converged(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether no coefficient moved by more than 1e-7 of its size (or of 1)."""
    return bool(((after - before).abs() <= 1e-7 * after.abs().clamp_min(1.0)).all())
