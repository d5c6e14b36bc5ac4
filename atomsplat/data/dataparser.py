"""Nerfstudio DataParser for tilt series (every layout :func:`atomsplat.data.formats.read_tilt_series` reads).

The scene is scaled once, here: the cube of side ``L = max(H, W) * pixel_size`` (A) centred on
the rotation centre becomes nerfstudio's box [-1, 1]^3, ``dataparser_scale = 2 / L`` scene units
per A. Cameras are ORTHOPHOTO cameras built by :func:`atomsplat.geometry.orthophoto_camera_to_worlds`
so that any nerfstudio method sees the geometry of :mod:`atomsplat.geometry`.

Other nerfstudio methods read ``image_filenames``: 8-bit previews (:mod:`atomsplat.data.previews`),
or the dataset's own 8-bit images in the transforms.json layout; atomsplat reads the float32 stack
carried in the metadata.

This module imports only nerfstudio's base dataparser, cameras and scene box, so that the entry
point that registers it (``dataparser_spec``) does not close an import cycle in ``ns-train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, Optional, Tuple, Type

import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from atomsplat.data.formats import ground_truth_path, read_tilt_series
from atomsplat.data.previews import preview_images
from atomsplat.data.series import TiltSeries
from atomsplat.geometry import orthophoto_camera_to_worlds, view_rotations

# Ray origins start this far (scene units) before the rotation centre: outside the [-1, 1]^3 box.
CAMERA_DEPTH = 2.0


# Tilt series read before a run starts (:func:`read_ahead`), by (data, pixel_size), until the
# DataParser of that run takes them: the files are read, and their warnings given, once.
_READ_AHEAD: Dict[Tuple[Path, Optional[float]], TiltSeries] = {}


def bundled_demo_path() -> Path:
    """The small simulated tilt series shipped with the package (the default dataset)."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo"


@dataclass
class TomographyDataParserConfig(DataParserConfig):
    """Tilt series: a dataset directory (``projections.tif``, ``tilt_angles.txt``, ``metadata.json``
    [, ``ground_truth.xyz``], or the paper's ``transforms.json``) or an MRC stack with its IMOD angle file."""

    _target: Type = field(default_factory=lambda: TomographyDataParser)
    data: tyro.conf.Suppress[Path] = field(default_factory=bundled_demo_path)
    """Dataset directory or MRC stack file (default: the small tilt series bundled with atomsplat);
    set by ns-train's ``--data``."""
    pixel_size: Optional[float] = None
    """Detector pixel size in A, overriding metadata.json and the MRC header (the transforms.json layout needs it
    unless a metadata.json beside it gives it)."""
    holdout_every: int = 0
    """Hold out every n-th projection for validation (0: train on all, validate on all)."""


class TomographyDataParser(DataParser):
    """Reads a tilt-series directory into orthographic nerfstudio cameras (scene units)."""

    config: TomographyDataParserConfig

    @cached_property
    def series(self):
        """The dataset, read once for all splits (nerfstudio asks for train, then val or test), or
        taken from :func:`read_ahead` when the run read it before it started."""
        series = _READ_AHEAD.pop((Path(self.config.data), self.config.pixel_size), None)
        return read_tilt_series(self.config.data, pixel_size=self.config.pixel_size) if series is None else series

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        series = self.series
        indices = split_indices(len(series.tilt_angles), split, self.config.holdout_every)
        n, height, width = series.shape
        scale = 2.0 / (max(height, width) * series.pixel_size)
        rotations = torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle)).float()
        shifts = torch.from_numpy(series.shifts_or_zeros()).float() * scale
        c2w = orthophoto_camera_to_worlds(rotations, shifts, CAMERA_DEPTH)[indices]
        focal = 1.0 / (series.pixel_size * scale)
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=focal,
            fy=focal,
            cx=width / 2.0,
            cy=height / 2.0,
            width=width,
            height=height,
            camera_type=CameraType.ORTHOPHOTO,
        )
        ground_truth = ground_truth_path(self.config.data)
        previews = series.images if series.images is not None else preview_images(series.source, series)
        return DataparserOutputs(
            image_filenames=[previews[k] for k in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            dataparser_scale=scale,
            metadata={
                "tilt_series": series,
                "scale": scale,
                "indices": indices,
                "ground_truth": ground_truth,
            },
        )


def read_ahead(data: Path, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read the tilt series at ``data`` before a run starts, and keep it for the run's DataParser
    of the same ``data`` and ``pixel_size`` (which takes it instead of reading the files again);
    a series read ahead and not yet taken is not read again.

    Raises :class:`atomsplat.data.series.TiltSeriesError` (one line naming the file) on bad data.
    """
    key = (Path(data), pixel_size)
    if key not in _READ_AHEAD:
        _READ_AHEAD[key] = read_tilt_series(data, pixel_size=pixel_size)
    return _READ_AHEAD[key]


def split_indices(count: int, split: str, holdout_every: int) -> np.ndarray:
    """Projection indices of a split: all of them for every split unless ``holdout_every`` > 0,
    in which case every n-th projection is held out of "train" and forms "val"/"test"."""
    every = np.arange(count)
    if holdout_every <= 0:
        return every
    held = every % holdout_every == holdout_every // 2
    return every[~held] if split == "train" else every[held]
