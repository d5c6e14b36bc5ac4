"""From a trained nerfstudio run to a list of atoms (extended XYZ, A, sample frame)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import ase
import numpy as np

from atomsplat.analysis.species import label_by_weight


def load_model(config: Path):
    """The trained :class:`AtomSplatModel` of a run's ``config.yml`` (latest checkpoint), on the CPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    from atomsplat.model.atomsplat_model import AtomSplatModel

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such run configuration (ns-train prints its path at the end)")
    _, pipeline, _, step = eval_setup(config, test_mode="inference", update_config_callback=_on_cpu)
    model = pipeline.model
    if not isinstance(model, AtomSplatModel):
        raise TypeError(f"{config}: a {type(model).__name__} run, not an atomsplat one")
    return model.cpu(), step


def _on_cpu(config):
    config.machine.device_type = "cpu"
    return config


def atoms_from_model(model, elements: Optional[Sequence[str]] = None) -> ase.Atoms:
    """The model's atoms (:meth:`AtomSplatModel.atoms`: a run that did not reach its final pass
    gets the merge-and-prune of one, on a copy); the model is not changed.

    Args:
        model: a trained AtomSplatModel.
        elements: species to label atoms with, by clustering their weights (heavier element =
            larger weight); None: the dataset's "elements" if it names them, else "X".

    Returns:
        ase.Atoms with positions in A (sample frame) and per-atom arrays "weight" (integrated
        weight, data units x A^2), "sigma" (A) and, when training ran its final pass,
        "uncertainty" (K, 3): the Cramer-Rao standard deviations of x, y, z (A).
    """
    found = model.atoms()
    if elements is None:
        elements = model.series.elements
    symbols = label_by_weight(found["weights"], elements) if elements else np.full(len(found["weights"]), "X")
    atoms = ase.Atoms(symbols=list(symbols), positions=found["positions"])
    atoms.set_array("weight", found["weights"])
    atoms.set_array("sigma", found["sigmas"])
    if "uncertainty" in found:
        atoms.set_array("uncertainty", found["uncertainty"])
    return atoms


def corrections_from_model(model) -> dict:
    """The per-projection corrections a run learned, JSON-ready; empty when it learned none.

    Keys: "tilt_angles" (N,) degrees; "shifts" (N, 2) A, the detector shift of each projection
    in the dataset's convention (detector point = (M r)[:2] + shift; add them to known shifts);
    "background" (N, T) coefficients in data units of the monomials of
    :func:`atomsplat.model.corrections.background_basis` and "background_degree".
    """
    learned = model.corrections.as_dict()
    if not learned:
        return {}
    return {"tilt_angles": np.asarray(model.series.tilt_angles, float).tolist(), **learned}
