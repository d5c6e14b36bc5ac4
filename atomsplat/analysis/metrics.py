"""Volume metrics: SSIM between the true potential volume and a reconstruction, and one results row.

The paper scores every method by the SSIM between the true and the reconstructed potential
volumes (DESIGN.md, "Evaluation"). :func:`volume_ssim` is the SSIM of Wang et al. (IEEE TIP
2004) in 3-D: a Gaussian window of sigma 1.5 voxels truncated at 3.5 sigma (11^3 voxels),
population (co)variances, K1 = 0.01, K2 = 0.03, averaged over the voxels whose window lies wholly
inside the volume (5 voxels from each face are left out), as ``skimage.metrics.structural_similarity``
computes it with ``gaussian_weights=True, use_sample_covariance=False``.

Normalisation. The methods compared report volumes in different units (atomsplat's Gaussians as
weight per A^3, back-projections in projection units per A, the truth in V), and SSIM depends on
scale and, through its luminance term, on offset. So the truth is first scaled to [0, 1] by its
own minimum and maximum (for a potential, whose vacuum is 0, that is division by its peak), and
the reconstruction is then mapped onto the scaled truth by the affine map ``a * volume + b`` of
least squared difference (``a`` clamped at 0: a reconstruction that anti-correlates with the
truth is scored as a constant); SSIM's dynamic range is 1, ``C1 = K1^2``, ``C2 = K2^2``. The score
is invariant to the units and offset of either volume (any increasing affine map of either) and
measures what no calibration can fix: structure. Min-max scaling of the reconstruction as well
was the other candidate; it lets a single outlier voxel (a noise spike in a back-projection) set
the reconstruction's scale, and a negative background its offset.

Both volumes must lie on the same voxel grid (the same shape, same voxel centres); the
ground-truth volume comes from :func:`atomsplat.sim.potential.potential_volume`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, evaluate

WINDOW_SIGMA = 1.5  # voxels
TRUNCATE = 3.5  # window radius in sigmas: int(3.5 * 1.5 + 0.5) = 5 voxels
K1, K2 = 0.01, 0.03


def _volume(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def affine_fit(volume, truth) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising ``sum((a * volume + b - truth)^2)`` with ``a >= 0``.

    Args:
        volume: (nx, ny, nz) reconstruction, any unit.
        truth: (nx, ny, nz) true volume.

    Returns:
        ``a`` (truth units per volume unit) and ``b`` (truth units). A constant ``volume`` or one
        anti-correlated with ``truth`` gets ``a = 0`` and ``b = mean(truth)``.
    """
    volume, truth = _volume(volume, "volume"), _volume(truth, "truth")
    if volume.shape != truth.shape:
        raise ValueError(f"volumes differ in shape: {volume.shape} and {truth.shape}")
    mv, mt = volume.mean(), truth.mean()
    dv = volume - mv
    var = float(np.mean(dv * dv))
    cov = float(np.mean(dv * (truth - mt)))
    a = max(cov / var, 0.0) if var > 0 else 0.0
    return a, float(mt - a * mv)


def volume_ssim(truth, volume, sigma: float = WINDOW_SIGMA, k1: float = K1, k2: float = K2, chunk: int = 32) -> float:
    """3-D SSIM of ``volume`` against ``truth`` after the affine normalisation of the module notes.

    Args:
        truth: (nx, ny, nz) true volume; not constant.
        volume: (nx, ny, nz) reconstruction on the same grid, any unit.
        sigma: standard deviation of the Gaussian window, voxels.
        k1, k2: SSIM's constants, as fractions of the dynamic range (1 after normalisation).
        chunk: output slices along the first axis computed at a time (memory: a few arrays of
            ``(chunk + 10) * ny * nz`` float64 besides float64 copies of both volumes).

    Returns:
        The mean SSIM over the voxels whose whole window lies inside the volume; 1 for a volume
        that is an increasing affine function of the truth, at most 1 otherwise.
    """
    truth = _volume(truth, "truth")
    low, high = float(truth.min()), float(truth.max())
    if high == low:
        raise ValueError("the true volume is constant: SSIM is undefined")
    truth = (truth - low) / (high - low)
    volume = _volume(volume, "volume")
    a, b = affine_fit(volume, truth)
    volume = a * volume + b
    radius = int(TRUNCATE * sigma + 0.5)
    if min(truth.shape) <= 2 * radius:
        raise ValueError(f"every side of the volumes must exceed {2 * radius} voxels, got {truth.shape}")
    c1, c2 = k1**2, k2**2  # dynamic range 1

    def local_mean(x):  # windowed mean, cropped to the voxels whose window fits
        return gaussian_filter(x, sigma, truncate=TRUNCATE, mode="reflect")[:, radius:-radius, radius:-radius]

    total, count = 0.0, 0
    n = truth.shape[0]
    for start in range(radius, n - radius, chunk):
        stop = min(start + chunk, n - radius)
        t, r = truth[start - radius : stop + radius], volume[start - radius : stop + radius]
        keep = slice(radius, radius + stop - start)
        mt, mr = local_mean(t)[keep], local_mean(r)[keep]
        vt = local_mean(t * t)[keep] - mt * mt
        vr = local_mean(r * r)[keep] - mr * mr
        cov = local_mean(t * r)[keep] - mt * mr
        s = ((2 * mt * mr + c1) * (2 * cov + c2)) / ((mt * mt + mr * mr + c1) * (vt + vr + c2))
        total += float(s.sum())
        count += s.size
    return total / count


def method_scores(
    pred_positions,
    true_positions,
    pred_species=None,
    true_species=None,
    volume=None,
    truth_volume=None,
    max_distance: float = PAPER_MAX_DISTANCE,
) -> dict:
    """One row of a results table: :func:`atomsplat.analysis.matching.evaluate`'s metrics and SSIM.

    Args:
        pred_positions: (P, 3) identified atoms, A, sample frame.
        true_positions: (T, 3) true atoms, A.
        pred_species, true_species: optional (P,) and (T,) species labels (species accuracy).
        volume: optional (nx, ny, nz) reconstructed volume; with ``truth_volume``, gives SSIM.
        truth_volume: optional (nx, ny, nz) true potential volume on the same grid.
        max_distance: matching radius, A (the paper: 0.75).

    Returns:
        :meth:`MatchReport.as_dict` (n_true, n_pred, n_matched, tpr, fpr, rmse,
        species_accuracy, max_distance) plus ``ssim`` (None without both volumes).
    """
    row = evaluate(pred_positions, true_positions, pred_species, true_species, max_distance).as_dict()
    row["ssim"] = None if volume is None or truth_volume is None else volume_ssim(truth_volume, volume)
    return row
