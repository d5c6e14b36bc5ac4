"""Volumes as MRC files (MRC2014, read by mrcfile, ChimeraX, tomviz, IMOD).

The array is stored as MRC sections: file index (k, j, i) = (z, y, x), x the fastest (the MRC
default, mapc/mapr/maps = 1, 2, 3); a volume given as (nx, ny, nz) is transposed for it. The
header holds the voxel size (A) and, in its origin field, the sample-frame coordinates (A) of the
centre of voxel (0, 0, 0) (the convention of ChimeraX, which places voxel (i, j, k) at
``origin + (i, j, k) * voxel``). Labels (up to ten lines of 80 characters) say what the values are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_volume(path, volume: np.ndarray, voxel: float, corner, labels: Sequence[str] = (), overwrite=False) -> Path:
    """Write ``volume`` (nx, ny, nz) as a float32 MRC file.

    Args:
        path: the file to write (``.mrc``).
        volume: (nx, ny, nz) values; voxel (i, j, k) spans ``corner + (i, j, k) * voxel`` to
            ``corner + (i + 1, j + 1, k + 1) * voxel`` (the grid of :func:`atomsplat.render.voxelize.voxelize`).
        voxel: voxel edge, A.
        corner: (3,) A, the outer corner of voxel (0, 0, 0); the header's origin is its centre,
            ``corner + voxel / 2``.
        labels: lines for the header's labels (at most 9, each cut to 80 characters; mrcfile's
            own "Created by" label comes first).
        overwrite: replace an existing file (else FileExistsError).
    """
    import mrcfile

    path = Path(path)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{path}: a volume is (nx, ny, nz), got shape {volume.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    centre = np.asarray(corner, dtype=float) + voxel / 2.0
    with mrcfile.new(path, overwrite=overwrite) as mrc:
        mrc.set_data(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32))
        mrc.voxel_size = voxel
        mrc.header.origin = tuple(float(v) for v in centre)
        for label in list(labels)[:9]:
            mrc.add_label(label[:80])
    return path
