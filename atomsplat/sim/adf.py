"""How many electrons an atom scatters into an annular dark-field (ADF) detector: the counting model
of low-dose ADF-STEM tilt series (DESIGN.md, "Real data: the low-dose regime").

An electron of the probe that passes through an atom is scattered onto the annular detector with a
probability set by the atom's ADF cross-section sigma(Z) (A^2): per unit dose (electrons / A^2) an
atom sends sigma electrons to the detector, spread over the positions of the probe with the atom's
footprint. Cross-sections follow the usual Z^1.7 contrast of ADF imaging (Rutherford scattering
by the nucleus goes as Z^2; the atom's electrons screen it, which lowers the exponent to between
about 1.6 and 1.9 depending on the detector's inner angle)::

    sigma(Z) = sigma_Si * (Z / 14) ** exponent,      exponent = 1.7 by default.

The footprint is the physical one, not a Gaussian: the atom's infinite projected potential (abTEM,
Lobato parametrization) blurred by the probe, normalised to integrate to one over the detector
plane. Its normalisation is the plane integral of one atom's projected potential,
:func:`projected_potential_integral` (V A^3), which abTEM gives as its projected scattering factor
at zero spatial frequency; the sum of a simulated image of one atom, times the pixel area, is the
same number (tests/test_simulate.py checks both). So the expected counts of a pixel of area p^2 are

    dose * p^2 * sum over species s of sigma_s / C_s * V_s(pixel)  +  pedestal

with V_s the probe-blurred projected potential of the atoms of species s (V A) and C_s the
integral above; the pedestal (counts per pixel) stands for the dark counts and the detector's
offset. :func:`atomsplat.sim.simulate.expected_counts` computes this expectation, and
:func:`atomsplat.sim.simulate.simulate_tilt_series` draws Poisson counts from it.

Calibration of sigma_Si (:data:`SI_ADF_CROSS_SECTION`): the amorphous Si particle of 2 nm
(``build_particle("si", "quick", seed)``, about 200 atoms), 60 projections over 0:3:177 degrees of
128 x 128 pixels of 0.195 A, probe sigma 0.5 A, pedestal 1 count, should show a brightest pixel
of about 9, 12 and 46 counts at 8e3, 1.6e4 and 1.6e5 e/A^2, as the public low-dose simulations of
this regime do. Read as the brightest pixel of a projection (averaged over the projections),
those three numbers fit one cross-section to within 4 % (3.4e-3 A^2); read as the brightest pixel
of the whole stack (a Poisson maximum over 10^6 pixels) no single value fits them to better than
10 %, as the low doses' maximum is mostly the pedestal's noise. With sigma_Si = 3.4e-3 A^2,
measured over particle seeds 0-2 and noise seeds 0-4 (mean +- standard deviation):

    dose (e/A^2)                                         8e3          1.6e4         1.6e5
    brightest pixel of a projection, counts          8.9 +- 0.1   11.2 +- 0.3   46.8 +- 1.2
    brightest pixel of the 60-projection stack           11.2          14.5          56.3
    largest expected count (pedestal included)            3.0           5.1          41.7

A Si atom then sends 3.4e-3 * 1.6e5 = 544 electrons to the detector per projection at the highest
dose, 27 at the lowest; the Z^1.7 law gives O 1.3e-3, Ge 1.4e-2, Sn 3.0e-2, Pt 6.3e-2 and Au
6.4e-2 A^2, of the order of measured HAADF cross-sections. Measured with::

    atoms = build_particle("si", "quick", seed)
    series = simulate_tilt_series(atoms, np.arange(0, 178, 3.0), pixel_size=0.195, shape=(128, 128),
                                  probe_sigma=0.5, dose=dose, seed=noise_seed)
    series.projections.max(axis=(1, 2)).mean(), series.projections.max()
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from abtem.parametrizations import LobatoParametrization
from ase.data import atomic_numbers

# The ADF cross-section of Si, A^2 (see the module notes for its calibration).
SI_ADF_CROSS_SECTION = 3.4e-3
REFERENCE_Z = 14  # Si
# The exponent of the Z dependence of ADF cross-sections: the usual Z^1.7 ADF contrast.
ADF_EXPONENT = 1.7
# Expected counts per pixel with no atom (dark counts, detector offset).
DEFAULT_PEDESTAL = 1.0


def adf_cross_sections(
    elements, exponent: float = ADF_EXPONENT, sigma_reference: float = SI_ADF_CROSS_SECTION
) -> dict[str, float]:
    """ADF cross-sections (A^2) of ``elements`` (chemical symbols): ``sigma_reference * (Z / 14) ** exponent``.

    Returns:
        {symbol: sigma} in A^2, the fraction of the electrons per A^2 that an atom of that element
        sends to the detector (by default Si 3.4e-3, O 1.3e-3, Au 6.4e-2).
    """
    if not exponent >= 0 or not sigma_reference > 0:
        raise ValueError(
            f"exponent must not be negative and sigma_reference must be positive, got {exponent}, {sigma_reference}"
        )
    out = {}
    for symbol in elements:
        if symbol not in atomic_numbers:
            raise ValueError(f"unknown chemical symbol {symbol!r}")
        out[symbol] = float(sigma_reference * (atomic_numbers[symbol] / REFERENCE_Z) ** exponent)
    return out


@lru_cache(maxsize=None)
def projected_potential_integral(symbol: str) -> float:
    """The integral over the plane of one atom's infinite projected potential, V A^3 (Lobato
    parametrization): abTEM's projected scattering factor at zero spatial frequency.

    Si: 279.4 V A^3; O: 97.1; Au: 506.3.
    """
    if symbol not in atomic_numbers:
        raise ValueError(f"unknown chemical symbol {symbol!r}")
    return float(LobatoParametrization().projected_scattering_factor(symbol)(np.zeros(1))[0])


def counts_per_potential(cross_sections: dict, dose: float, pixel_size: float) -> dict[str, float]:
    """Expected counts per V A of each species' projected potential image: ``dose * p^2 * sigma_s / C_s``.

    Args:
        cross_sections: {symbol: sigma} in A^2 (:func:`adf_cross_sections`).
        dose: electrons per A^2.
        pixel_size: p, A.

    Returns:
        {symbol: counts per pixel per V A}.
    """
    return {s: dose * pixel_size**2 * sigma / projected_potential_integral(s) for s, sigma in cross_sections.items()}
