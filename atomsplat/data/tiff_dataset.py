"""atomsplat's own layout, the dataset directory of DESIGN.md: reader and writer.

A dataset is a directory::

    projections.tif    float32 stack (N, H, W), one projection a page (or 16- or 32-bit counts)
    tilt_angles.txt    N angles in degrees, one a line; lines starting with # are comments
    metadata.json      {"pixel_size": A, "tilt_axis_angle": deg, "shifts": [[x, y], ...] A,
                        "elements": ["Au", ...], "counts": true/false, "gain": counts per unit,
                        "offset": data units at zero counts, ...}
    ground_truth.xyz   optional: true atoms (extended XYZ, A, sample frame)

The pixel size (A) comes from the ``pixel_size`` argument when given (metadata.json may then be
absent), else from metadata.json.

Counts (:mod:`atomsplat.data.series`): ``"counts"`` says whether the projections are detector
counts (Poisson statistics); without it they are detected from the values and their noise.
``"gain"`` (default 1) is counts per data unit, ``"offset"`` the reading at zero counts (data
units, default detected): counts = gain * (value - offset). A stack of 16- or 32-bit integers is
converted to float32 exactly (values beyond 2^24 that float32 cannot hold are refused); an 8-bit
stack is refused unless ``"counts": true``; declared counts without an offset must not be
negative. The writer writes float32 (the counts over the offset) and records ``"counts"`` and
``"gain"`` (and ``"offset": 0`` where one was subtracted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from atomsplat.data.series import (
    GROUND_TRUTH,
    METADATA,
    PIXEL_SIZE_HINT,
    TiltSeries,
    TiltSeriesError,
    metadata_fields,
    metadata_number,
    read_angles,
    read_metadata,
)

PROJECTIONS = "projections.tif"
ANGLES = "tilt_angles.txt"


def read_projections(path: Path) -> np.ndarray:
    """The (N, H, W) stack of a multi-page TIFF, as stored (dtype checked by the series' validation)."""
    import tifffile

    try:
        stack = tifffile.imread(path)
    except FileNotFoundError as err:
        raise TiltSeriesError(f"{path}: missing") from err
    except Exception as err:  # tifffile raises many kinds for truncated or foreign files
        raise TiltSeriesError(f"{path}: cannot read as a TIFF stack ({type(err).__name__}: {err})") from err
    if stack.ndim == 2:
        stack = stack[None]
    return stack


def read_tiff_dataset(directory, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check a dataset directory (see the module docstring).

    Args:
        directory: the dataset directory.
        pixel_size: pixel size in A overriding metadata.json (which may then be absent).
    """
    directory = Path(directory)
    if not (directory / PROJECTIONS).is_file():
        raise TiltSeriesError(
            f"{directory / PROJECTIONS}: missing (a dataset directory holds {PROJECTIONS}, {ANGLES} and "
            f"{METADATA}, or the paper's transforms.json; an MRC stack is read from its own file path)"
        )
    if not (directory / ANGLES).is_file():
        raise TiltSeriesError(f"{directory / ANGLES}: missing")
    meta = read_metadata(directory / METADATA, optional=pixel_size is not None)
    if pixel_size is None and "pixel_size" not in meta:
        raise TiltSeriesError(
            f'{directory / METADATA}: no "pixel_size" (detector pixel size in Angstrom) given; {PIXEL_SIZE_HINT}'
        )
    stack = read_projections(directory / PROJECTIONS)
    angles = read_angles(directory / ANGLES)
    if len(angles) != len(stack):
        raise TiltSeriesError(
            f"{directory / ANGLES}: {len(angles)} tilt angles, "
            f"but {directory / PROJECTIONS} holds {len(stack)} projections"
        )
    if pixel_size is None:
        pixel_size = metadata_number(meta, "pixel_size", directory / METADATA)
    return TiltSeries(
        projections=stack,
        tilt_angles=angles,
        pixel_size=pixel_size,
        **metadata_fields(meta, directory / METADATA),
        source=directory / PROJECTIONS,
        where=directory,
    )


def check_writable(directory, overwrite: bool = False) -> None:
    """Raise FileExistsError if ``directory`` already holds a dataset and ``overwrite`` is False."""
    directory = Path(directory)
    existing = [n for n in (PROJECTIONS, ANGLES, METADATA, GROUND_TRUTH) if (directory / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{directory}: already holds {', '.join(existing)}; choose another output or pass overwrite"
        )


def write_tiff_dataset(directory, series: TiltSeries, ground_truth=None, overwrite: bool = False) -> Path:
    """Write ``series`` (and optional ``ground_truth`` ase.Atoms, sample frame, A) as a dataset directory.

    Refuses to touch an existing dataset unless ``overwrite`` is True; an overwritten dataset loses
    a ``ground_truth.xyz`` that ``ground_truth`` does not replace.
    """
    import tifffile
    from ase.io import write as ase_write

    directory = Path(directory)
    check_writable(directory, overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    stack = np.ascontiguousarray(series.projections, dtype=np.float32)
    tifffile.imwrite(directory / PROJECTIONS, stack, photometric="minisblack")  # pages, never RGB
    angles = "\n".join(f"{a:.6f}" for a in series.tilt_angles)
    (directory / ANGLES).write_text(f"# tilt angles in degrees, one per projection\n{angles}\n")
    (directory / METADATA).write_text(json.dumps(series.metadata(), indent=2) + "\n")
    if ground_truth is not None:
        ase_write(directory / GROUND_TRUTH, ground_truth, format="extxyz")
    elif (directory / GROUND_TRUTH).exists():
        (directory / GROUND_TRUTH).unlink()
    return directory
