"""Which footprint kernels (:mod:`atomsplat.render.kernels`) the projector uses.

The environment variable ``ATOMSPLAT_PROJECTOR`` chooses for every call of
:func:`atomsplat.render.projector.project_isotropic` that does not pass its own ``kernels``:

* ``auto`` (the default, also when unset or empty): ``triton`` for CUDA tensors when Triton
  imports, ``numba`` for CPU tensors when numba imports, else ``reference``;
* ``numba``: compiled CPU kernels; CPU tensors only;
* ``triton``: Triton kernels, for CUDA tensors (and for CPU tensors under Triton's interpreter,
  ``TRITON_INTERPRET=1``, which is how the tests check them without a GPU);
* ``reference``: torch index ops, on any device.

All compute the same pixels and gradients within float rounding. An unknown name, ``numba`` for
tensors on another device, or a named backend whose package does not import is an error, never a
silent fallback. This module alone reads the variable.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from atomsplat.render.kernels import FootprintKernels

BACKEND_VARIABLE = "ATOMSPLAT_PROJECTOR"
BACKENDS = ("auto", "numba", "triton", "reference")


def projector_backend(device, choice: str | None = None) -> str:
    """The backend (``numba``, ``triton`` or ``reference``) for tensors on ``device``.

    Args:
        device: a torch device or its name.
        choice: one of :data:`BACKENDS`; None reads ``ATOMSPLAT_PROJECTOR`` (unset: ``auto``).

    Raises:
        ValueError: an unknown choice, or ``numba`` for tensors that are not on the CPU.
        RuntimeError: the chosen backend's package does not import.
    """
    source = "projector backend" if choice is not None else BACKEND_VARIABLE
    if choice is None:
        choice = os.environ.get(BACKEND_VARIABLE, "")
    choice = choice.strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{source}={choice!r}: expected one of {', '.join(BACKENDS)}")
    kind = torch.device(device).type
    if choice == "auto":
        if kind == "cuda" and _imports("triton"):
            return "triton"
        return "numba" if kind == "cpu" and _imports("numba") else "reference"
    if choice != "reference" and not _imports(choice):
        raise RuntimeError(f"{source}={choice}, but the {choice} package does not import")
    if choice == "numba" and kind != "cpu":
        raise ValueError(f"{source}=numba runs on CPU tensors only, got tensors on {kind}")
    return choice


def footprint_kernels(device, choice: str | None = None) -> FootprintKernels:
    """The kernel set of :func:`projector_backend` ``(device, choice)``; a compiled backend's
    module is imported when first asked for."""
    backend = projector_backend(device, choice)
    if backend == "numba":
        from atomsplat.render.kernels.numba import NumbaFootprints

        return NumbaFootprints
    if backend == "triton":
        from atomsplat.render.kernels.triton import TritonFootprints

        return TritonFootprints
    from atomsplat.render.kernels.reference import ReferenceFootprints

    return ReferenceFootprints


@functools.lru_cache(maxsize=None)
def _imports(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:  # missing or broken: auto falls back to the reference kernels
        return False
    return True
