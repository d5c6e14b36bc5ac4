"""nerfstudio cameras as :class:`atomsplat.model.cloud.Views`: the one place where a camera's scene
units become Angstrom and its pose a view matrix, for every model of the package."""

from __future__ import annotations

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from atomsplat.data.dataparser import SERIES_INDEX
from atomsplat.geometry import views_from_camera_to_worlds
from atomsplat.model.cloud import Views


def camera_views(cameras: Cameras, scale: float) -> Views:
    """The :class:`Views` of same-sized nerfstudio ``cameras`` (V,) of a scene of ``scale`` scene
    units per A (the dataparser's).

    ORTHOPHOTO cameras are exact. Any other camera (the viewer's perspective camera) is shown as a
    parallel projection along its axis, with the pixel size that the perspective camera has at the
    rotation centre's distance, so that zooming and panning behave as expected. Cameras of the
    dataset, of every split, carry their projections' indices in the series
    (``metadata["series_index"]``, :mod:`atomsplat.data.dataparser`): their views know their
    projections; other cameras (free ones) give ``indices`` None.
    """
    c2w = cameras.camera_to_worlds.reshape(-1, 3, 4)
    fx = float(cameras.fx.reshape(-1)[0])
    rotations, shifts = views_from_camera_to_worlds(c2w)
    if cameras.camera_type.reshape(-1)[0].item() == CameraType.ORTHOPHOTO.value:
        pixel = 1.0 / (fx * scale)
    else:
        pixel = float(c2w[0, :, 3].norm()) / (fx * scale)
    centre = torch.stack(
        [
            cameras.width.reshape(-1) / 2.0 - cameras.cx.reshape(-1),
            cameras.height.reshape(-1) / 2.0 - cameras.cy.reshape(-1),
        ],
        dim=-1,
    )
    metadata = cameras.metadata or {}
    indices = metadata[SERIES_INDEX].reshape(-1).long() if SERIES_INDEX in metadata else None
    return Views(
        rotations=rotations,
        offsets=shifts / scale - centre.to(shifts) * pixel,
        pixel_size=pixel,
        height=int(cameras.height.reshape(-1)[0]),
        width=int(cameras.width.reshape(-1)[0]),
        indices=indices,
    )
