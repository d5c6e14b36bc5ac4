"""Scores of a modelled projection against the measured one, on the projections' own scale.

Projections are not photographs: their values are data units (a projected potential, counts) with
no fixed white level, and nerfstudio's stock metrics (PSNR and SSIM of 8-bit colour images in
[0, 1]) would depend on how they were scaled for display. Here every score is of the projection in
data units against a data range ``R`` that the caller fixes once for a whole tilt series (atomsplat
uses the measured series' maximum minus its minimum), so that the scores of every view and every
method are on one scale:

- PSNR = 10 log10(R^2 / MSE), in dB;
- SSIM: Wang et al. (IEEE TIP 2004) with a Gaussian window of sigma 1.5 pixels, population
  (co)variances, K1 = 0.01, K2 = 0.03 and dynamic range R, as
  ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``;
- L1: mean absolute difference, data units; relative L2: ||model - measured|| / ||measured||.

Measured projections hold noise, so a perfect model scores the noise: PSNR = 10 log10(R^2 / s^2)
for noise of standard deviation s, not infinity.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from skimage.metrics import structural_similarity

SSIM_SIGMA = 1.5  # pixels


def _image(x, name: str) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) projection, got shape {array.shape}")
    return array


def projection_psnr(model, measured, data_range: float) -> float:
    """PSNR (dB) of ``model`` (H, W) against ``measured`` (H, W), both in data units, for the data
    range ``data_range`` (data units); infinite for identical images."""
    model, measured = _image(model, "model"), _image(measured, "measured")
    mse = float(np.mean((model - measured) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def projection_ssim(model, measured, data_range: float) -> float:
    """SSIM of ``model`` (H, W) against ``measured`` (H, W), both in data units, with dynamic range
    ``data_range`` (see the module notes); 1 for identical images."""
    model, measured = _image(model, "model"), _image(measured, "measured")
    if min(model.shape) < 7:
        raise ValueError(f"projections of {model.shape} pixels are too small for SSIM's 7-pixel window")
    return float(
        structural_similarity(
            measured,
            model,
            data_range=data_range,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
        )
    )


def projection_scores(model, measured, data_range: float) -> Dict[str, float]:
    """ "psnr", "ssim", "l1" and "relative_l2" of ``model`` (H, W) against ``measured`` (H, W) in
    data units, for the data range ``data_range`` > 0 of the whole series (module notes)."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    m, t = _image(model, "model"), _image(measured, "measured")
    if m.shape != t.shape:
        raise ValueError(f"model and measured projections differ in shape: {m.shape} and {t.shape}")
    residual = m - t
    return {
        "psnr": projection_psnr(m, t, data_range),
        "ssim": projection_ssim(m, t, data_range),
        "l1": float(np.abs(residual).mean()),
        "relative_l2": float(np.linalg.norm(residual) / max(np.linalg.norm(t), 1e-30)),
    }
