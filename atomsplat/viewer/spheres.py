"""The atoms as coloured, depth-composited spheres through gsplat's rasterizer (CUDA only).

gsplat composites Gaussians front to back by depth, with opacity: wrong for a transmission
projection (``benchmarks/gsplat_comparison.py`` measures how wrong), and exactly what a picture of
opaque balls needs. So the viewer's free camera gets, on CUDA, a second image beside the exact
projection: output "spheres", each atom a near-opaque Gaussian ball of half its covalent radius
(ASE's ``covalent_radii``) in its species' Jmol colour (ASE's ``jmol_colors``), species from the
weights (:func:`atomsplat.analysis.species.label_by_weight`); without the dataset's elements, one
width and a colour by weight.

:func:`gsplat_camera` turns a nerfstudio camera into gsplat's world-to-camera matrix and
intrinsics, in A (gsplat's OpenCV camera: x right, y down, looking along +z; nerfstudio's: x right,
y up, looking along -z); :func:`sphere_style` gives the colours and widths. Both are plain torch and
tested on the CPU; :func:`render_spheres` alone needs CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, covalent_radii
from nerfstudio.cameras.cameras import CameraType

from atomsplat.viewer.display import species_colours, weight_colours

SPHERE_FRACTION = 0.5
"""Width of an atom's ball, as a fraction of its covalent radius."""
UNLABELLED_WIDTH = 0.6
"""Width of the balls of atoms without a species, A."""
OPACITY = 0.99
"""Opacity of every ball (gsplat clamps an alpha at 0.999)."""


@dataclass(frozen=True)
class GsplatCamera:
    """One camera as gsplat's ``rasterization`` takes it, lengths in A.

    Attributes:
        viewmat: (1, 4, 4) world-to-camera matrix (OpenCV axes), world in A.
        K: (1, 3, 3) intrinsics: pixels per A (orthographic) or the focal length in pixels
            (pinhole), principal point in pixels.
        width, height: image size, pixels.
        model: gsplat's ``camera_model``: "ortho" or "pinhole".
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    model: str


def gsplat_camera(camera, scale: float) -> GsplatCamera:
    """gsplat's view of one nerfstudio camera (``Cameras`` of one camera) of a scene of ``scale``
    scene units per A: translation in A; an ORTHOPHOTO camera's focal length (pixels per scene
    unit) becomes pixels per A, any other camera's stays in pixels (pinhole)."""
    c2w = camera.camera_to_worlds.reshape(-1, 3, 4)[0].double()
    rotation = c2w[:, :3] * c2w.new_tensor([1.0, -1.0, -1.0])  # nerfstudio's axes -> OpenCV's
    position = c2w[:, 3] / scale
    viewmat = torch.eye(4, dtype=torch.float64, device=c2w.device)
    viewmat[:3, :3] = rotation.T
    viewmat[:3, 3] = -(rotation.T @ position)
    ortho = int(camera.camera_type.reshape(-1)[0]) == CameraType.ORTHOPHOTO.value
    factor = scale if ortho else 1.0
    K = torch.zeros(3, 3, dtype=torch.float64, device=c2w.device)
    K[0, 0] = float(camera.fx.reshape(-1)[0]) * factor
    K[1, 1] = float(camera.fy.reshape(-1)[0]) * factor
    K[0, 2], K[1, 2], K[2, 2] = float(camera.cx.reshape(-1)[0]), float(camera.cy.reshape(-1)[0]), 1.0
    return GsplatCamera(
        viewmat[None].float(),
        K[None].float(),
        int(camera.width.reshape(-1)[0]),
        int(camera.height.reshape(-1)[0]),
        "ortho" if ortho else "pinhole",
    )


def sphere_style(weights: np.ndarray, symbols: Optional[Sequence[str]]):
    """Colours (K, 3) in [0, 1] and widths (K,) A of the balls of atoms with ``weights`` (K,):
    Jmol colours and :data:`SPHERE_FRACTION` of the covalent radius by species ``symbols`` (K,),
    or, without them (None), colours by weight (:func:`atomsplat.viewer.display.weight_colours`)
    and :data:`UNLABELLED_WIDTH`."""
    weights = np.asarray(weights, dtype=float)
    if symbols is None:
        return weight_colours(weights) / 255.0, np.full(len(weights), UNLABELLED_WIDTH)
    numbers = np.array([atomic_numbers[s] for s in symbols], dtype=int)
    return species_colours(np.asarray(symbols)) / 255.0, SPHERE_FRACTION * covalent_radii[numbers]


def render_spheres(
    positions: torch.Tensor, colours: np.ndarray, widths: np.ndarray, camera: GsplatCamera, background=(0.0, 0.0, 0.0)
) -> torch.Tensor:
    """(H, W, 3) the balls of atoms at ``positions`` (K, 3) A (on a CUDA device) with ``colours``
    (K, 3) and ``widths`` (K,) A (:func:`sphere_style`), seen by ``camera``, depth-composited by
    gsplat's rasterizer over ``background``. RuntimeError off CUDA (gsplat's kernels need it)."""
    if positions.device.type != "cuda":
        raise RuntimeError("the sphere picture uses gsplat's rasterizer, which needs CUDA tensors")
    from gsplat import rasterization

    device = positions.device
    count = len(positions)
    backgrounds = torch.tensor([background], dtype=torch.float32, device=device)
    if count == 0:
        return backgrounds[0].expand(camera.height, camera.width, 3).clone()
    quats = torch.zeros(count, 4, device=device)
    quats[:, 0] = 1.0
    scales = torch.as_tensor(widths, dtype=torch.float32, device=device)[:, None].expand(count, 3).contiguous()
    image, _, _ = rasterization(
        means=positions.float(),
        quats=quats,
        scales=scales,
        opacities=torch.full((count,), OPACITY, device=device),
        colors=torch.as_tensor(colours, dtype=torch.float32, device=device),
        viewmats=camera.viewmat.to(device),
        Ks=camera.K.to(device),
        width=camera.width,
        height=camera.height,
        camera_model=camera.model,
        backgrounds=backgrounds,
    )
    return image[0].clamp(0.0, 1.0)
