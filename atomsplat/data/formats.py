"""The one entry point for tilt series on disk: it chooses the layout by what the path is.

:func:`read_tilt_series` ``(path, pixel_size=None)`` reads

* a dataset directory, atomsplat's own layout (:mod:`atomsplat.data.tiff_dataset`;
  :func:`write_tilt_series` writes it);
* an MRC stack (``.mrc``, ``.mrcs``, ``.st``, ``.ali``, ``.preali``) with its IMOD angle file
  beside it (:mod:`atomsplat.data.mrc`);
* a directory in the paper's layout, a nerfstudio ``transforms.json`` with 8-bit images
  (:mod:`atomsplat.data.transforms_json`).

The format modules build the series and never import this module. After reading, a cheap check
compares the series with its declared tilt axis (:mod:`atomsplat.analysis.tilt_axis`) and issues
a ``TiltAxisWarning`` naming the file when the axis looks wrong. Every problem with the files
raises :class:`~atomsplat.data.series.TiltSeriesError`, whose message names the file and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from atomsplat.analysis.tilt_axis import TiltAxisWarning, check_tilt_axis
from atomsplat.data.mrc import MRC_SUFFIXES, read_mrc_series
from atomsplat.data.series import GROUND_TRUTH, METADATA, TiltSeries, TiltSeriesError
from atomsplat.data.tiff_dataset import ANGLES, PROJECTIONS, read_tiff_dataset, write_tiff_dataset
from atomsplat.data.transforms_json import TRANSFORMS, read_transforms_series


def read_tilt_series(path, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check a tilt series in any supported layout, chosen by what ``path`` is.

    Args:
        path: a dataset directory (``projections.tif``, ... or a ``transforms.json``; a directory
            holding both is read from the float32 TIFF), an MRC stack file, or a ``transforms.json``.
        pixel_size: detector pixel size in A; overrides metadata.json and the MRC header.

    Returns:
        The :class:`TiltSeries`; a ``TiltAxisWarning`` is issued when the projections look tilted
        about another axis than the declared one (:func:`atomsplat.analysis.tilt_axis.check_tilt_axis`).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / PROJECTIONS).exists() and (path / TRANSFORMS).is_file():
            series = read_transforms_series(path / TRANSFORMS, pixel_size)
        else:
            series = read_tiff_dataset(path, pixel_size)
    elif path.is_file() and path.suffix.lower() in MRC_SUFFIXES:
        series = read_mrc_series(path, pixel_size)
    elif path.is_file() and path.name == TRANSFORMS:
        series = read_transforms_series(path, pixel_size)
    elif path.is_file():
        raise TiltSeriesError(
            f"{path}: not a tilt series: give a dataset directory ({PROJECTIONS}, {ANGLES}, {METADATA}, or the "
            f"paper's {TRANSFORMS}) or an MRC stack ({', '.join(MRC_SUFFIXES)})"
        )
    else:
        raise TiltSeriesError(f"{path}: no such file or directory")
    check = check_tilt_axis(series.projections, series.tilt_axis_angle)
    if check.suspicious:
        warnings.warn(f"{series.source}: {check.message()}", TiltAxisWarning, stacklevel=2)
    return series


def write_tilt_series(directory, series: TiltSeries, ground_truth=None, overwrite: bool = False) -> Path:
    """Write ``series`` (and optional ``ground_truth`` ase.Atoms, sample frame, A) in atomsplat's own
    layout, the dataset directory (:func:`atomsplat.data.tiff_dataset.write_tiff_dataset`), the one
    layout written. Refuses to touch an existing dataset unless ``overwrite`` is True."""
    return write_tiff_dataset(directory, series, ground_truth=ground_truth, overwrite=overwrite)


def ground_truth_path(path) -> Optional[Path]:
    """The ``ground_truth.xyz`` of the dataset at ``path`` (in its directory, or beside its MRC
    stack or transforms.json), or None when there is none."""
    path = Path(path)
    candidate = (path if path.is_dir() else path.parent) / GROUND_TRUTH
    return candidate if candidate.is_file() else None
