"""MRC tilt-series stacks with IMOD angle files.

A stack ``NAME.mrc`` (or ``.mrcs``, ``.st``, ``.ali``, ``.preali``) is read with the tilt angles
of ``NAME.tlt`` or ``NAME.rawtlt`` beside it (IMOD: one angle in degrees a line). For an aligned
stack (``.ali``) the refined ``.tlt`` comes first, for the others the microscope's ``.rawtlt``;
whichever of the two exists is used.

* Projections: the sections of the stack, (N, H, W) = the file's (nz, ny, nx) as stored: row i
  is the MRC y index, column j the x index, so the detector y of :mod:`atomsplat.geometry` points
  where IMOD draws y (upwards). Microscopes write 16-bit integers (MRC modes 1 and 6) and float16
  (mode 12): these are converted to float32, exactly. Integers are detector counts
  (:mod:`atomsplat.data.series`) unless they hold negative values or ``metadata.json`` says
  ``"counts": false``. 8-bit data (mode 0) is refused, as for the TIFF format: it has usually
  been scaled for display and lost the absolute intensities a tomographic fit needs; unless
  ``metadata.json`` says ``"counts": true``, when it is read as counts. Complex data is refused.
* Pixel size (A): the ``pixel_size`` argument, else ``"pixel_size"`` in a ``metadata.json``
  beside the stack, else the header's voxel size. A header voxel size of 0 means "unset", and
  1.0 is what many programs store when they do not know the pixel size, so 1.0 counts as unset
  too: a real 1.0 A pixel must be given explicitly.
* Tilt axis: ``"tilt_axis_angle"`` from that ``metadata.json``, else 0 (the detector x axis).
  IMOD's aligned stacks (``.ali``) have the tilt axis along the image y axis, which is
  ``"tilt_axis_angle": 90`` (or -90: the two give mirror images of each other, which the
  projections alone cannot tell apart). The reader's tilt-axis check warns when the declared
  axis looks wrong.
* ``metadata.json`` beside the stack is optional; it may also give ``"shifts"``, ``"elements"``,
  ``"counts"`` and ``"gain"`` as in the dataset directory format.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from atomsplat.data.series import (
    METADATA,
    PIXEL_SIZE_HINT,
    TiltSeries,
    TiltSeriesError,
    check_pixel_size,
    counts_fields,
    metadata_fields,
    metadata_number,
    read_angles,
    read_metadata,
)

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".preali")

# Header voxel sizes (A) that mean "unknown": 0 (unset) and the common placeholder 1.0.
UNSET_VOXEL_SIZES = (0.0, 1.0)


def angle_file(stack: Path) -> Path:
    """The IMOD angle file of ``stack``: ``.tlt`` first for an aligned ``.ali``, ``.rawtlt`` first otherwise."""
    order = (".tlt", ".rawtlt") if stack.suffix.lower() == ".ali" else (".rawtlt", ".tlt")
    for suffix in order:
        if stack.with_suffix(suffix).is_file():
            return stack.with_suffix(suffix)
    names = " or ".join(stack.with_suffix(s).name for s in order)
    raise TiltSeriesError(f"{stack}: no tilt angles: expected {names} beside it (one angle in degrees a line)")


def read_mrc_stack(path: Path, counts: Optional[bool] = None):
    """The projections and the header's pixel size of an MRC file.

    Args:
        path: the MRC file.
        counts: whether the data are declared detector counts (None: not declared); 8-bit data are
            refused unless they are.

    Returns:
        stack (N, H, W): float32 for float data, integers as stored (the series converts them);
        pixel size in A from the header, or None when it is unset.
    """
    import mrcfile

    try:
        with mrcfile.open(path, mode="r", permissive=False) as mrc:
            data = mrc.data
            voxel = mrc.voxel_size
            mode = int(mrc.header.mode)
    except Exception as err:  # mrcfile raises ValueError and others for truncated or foreign files
        raise TiltSeriesError(f"{path}: cannot read as an MRC stack ({type(err).__name__}: {err})") from err
    if data is None or data.ndim not in (2, 3):
        shape = None if data is None else data.shape
        raise TiltSeriesError(f"{path}: expected a stack of 2D projections, got data of shape {shape}")
    kind, size = data.dtype.kind, data.dtype.itemsize
    if kind == "c":
        raise TiltSeriesError(
            f"{path}: MRC mode {mode} ({data.dtype}) cannot be a tilt series: projections must be float or "
            "16-bit integer counts"
        )
    if kind in "iu" and size == 1 and counts is not True:
        raise TiltSeriesError(
            f"{path}: MRC mode {mode} ({data.dtype}) cannot be a tilt series: projections must be float or "
            "16-bit integer counts; 8-bit images have lost the absolute intensities a tomographic fit needs "
            f'(8-bit detector counts: say "counts": true in {METADATA} beside the stack)'
        )
    stack = np.array(data, dtype=np.float32 if kind == "f" else data.dtype)  # float16 converts exactly
    if stack.ndim == 2:
        stack = stack[None]
    if stack.size == 0:
        raise TiltSeriesError(f"{path}: the stack is empty, shape {stack.shape}")
    x, y = float(voxel.x), float(voxel.y)
    header = None if x in UNSET_VOXEL_SIZES or not np.isfinite(x) else x
    if header is not None and np.isfinite(y) and y not in UNSET_VOXEL_SIZES and abs(x - y) > 1e-3 * abs(x):
        raise TiltSeriesError(f"{path}: pixels are not square (header voxel size x {x:g} A, y {y:g} A)")
    return stack, header


def read_mrc_series(path, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check an MRC tilt series with its IMOD angle file (see the module docstring).

    Args:
        path: the MRC stack.
        pixel_size: pixel size in A, overriding metadata.json and the header.
    """
    path = Path(path)
    angles_path = angle_file(path)
    meta_path = path.parent / METADATA
    meta = read_metadata(meta_path, optional=True)
    stack, header = read_mrc_stack(path, counts_fields(meta, meta_path)["counts"])
    angles = read_angles(angles_path)
    if len(angles) != len(stack):
        raise TiltSeriesError(f"{angles_path}: {len(angles)} tilt angles, but {path} holds {len(stack)} projections")
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size, f"{path}: the pixel_size override")
    elif "pixel_size" in meta:
        pixel_size = check_pixel_size(metadata_number(meta, "pixel_size", meta_path), str(meta_path))
        if header is not None and abs(header - pixel_size) > 0.01 * pixel_size:
            warnings.warn(
                f"{meta_path}: pixel_size {pixel_size:g} A differs from the voxel size {header:g} A in the header "
                f"of {path}; using {pixel_size:g} A"
            )
    elif header is not None:
        pixel_size = check_pixel_size(header, f"{path}: the voxel size in the MRC header")
    else:
        raise TiltSeriesError(
            f"{path}: no pixel size: the voxel size in the MRC header is unset (0, or the placeholder 1.0 A); "
            f"{PIXEL_SIZE_HINT} (beside the stack: {meta_path})"
        )
    return TiltSeries(
        projections=stack,
        tilt_angles=angles,
        pixel_size=pixel_size,
        **metadata_fields(meta, meta_path),
        source=path,
        where=path,
    )
