"""The one place for atomsplat's geometric conventions (DESIGN.md, "Geometry").

Sample frame
    The frame of the sample at tilt angle 0, in Angstrom, origin at the rotation centre.
    Exported atoms and ``ground_truth.xyz`` live in this frame.

View k
    The sample is rotated by ``tilt_angles[k]`` degrees about the x axis through the origin,
    right-handed (as ``ase.Atoms.rotate(angle, "x", center=(0, 0, 0))`` rotates it), the tilt
    axis then appears on the detector at ``tilt_axis_angle`` degrees counter-clockwise from the
    detector x axis, and the projection integrates along z. In one matrix::

        M_k = R_z(tilt_axis_angle) @ R_x(tilt_angles[k])          (3, 3)
        detector point of r:  d = (M_k @ r)[:2] + shift_k         (A)

    ``shift_k`` (A) is the known displacement of projection k on the detector: the recorded
    image is the ideal one moved by ``+shift_k``.

Pixel grid
    Pixel (i, j) of an (H, W) projection is the detector point
    ``x = (j + 0.5 - W / 2) p``, ``y = (i + 0.5 - H / 2) p``; row i runs along y, column j along x.

Nerfstudio cameras
    An ORTHOPHOTO camera maps pixel (i, j) to the ray origin
    ``c2w @ [(j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, 0, 1]`` with direction ``c2w[:, :3] @ (0, 0, -1)``.
    With ``fx = fy = 1 / p`` (in the camera's length unit), ``cx = W / 2``, ``cy = H / 2``, the
    camera of view k has rotation ``M_k^T diag(1, -1, -1)`` and translation
    ``M_k^T (-shift_x, -shift_y, -depth)``: the same rays as the convention above.
"""

from __future__ import annotations

import numpy as np
import torch

_FLIP_YZ = (1.0, -1.0, -1.0)


def rotation_x(angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` degrees about x, shape (3, 3), float64."""
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_z(angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` degrees about z, shape (3, 3), float64."""
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def view_rotations(tilt_angles_deg, tilt_axis_angle_deg: float = 0.0) -> np.ndarray:
    """Matrices ``M_k = R_z(tilt_axis_angle) R_x(tilt_k)``, shape (N, 3, 3), float64.

    Args:
        tilt_angles_deg: (N,) tilt angles in degrees.
        tilt_axis_angle_deg: in-plane angle of the tilt axis on the detector, degrees.
    """
    rz = rotation_z(tilt_axis_angle_deg)
    return np.stack([rz @ rotation_x(a) for a in np.atleast_1d(np.asarray(tilt_angles_deg, float))])


def detector_positions(positions: np.ndarray, rotation: np.ndarray, shift=(0.0, 0.0)) -> np.ndarray:
    """Detector points (K, 2) in A of sample-frame positions (K, 3) in A for one view.

    Args:
        positions: (K, 3) sample-frame positions, A.
        rotation: (3, 3) view matrix ``M_k`` from :func:`view_rotations`.
        shift: (2,) known shift of the projection on the detector, A.
    """
    return np.asarray(positions, float) @ np.asarray(rotation, float)[:2].T + np.asarray(shift, float)


def resolution_stretch(rotations) -> np.ndarray:
    """(3, 3) L such that ``|d @ L|`` measures a sample-frame step d (A) against what the views
    (N, 3, 3) ``M_k`` resolve: a direction u that the detector planes see, on average over the
    views, less than a full tilt range about an axis sees the directions across it (``mean_k
    |M_k[:2] u|^2`` below 1/2) counts shorter by the square root of the ratio. A full range of
    equally spaced tilts (or any series that sees every direction at least that well) gives the
    identity; -70:70:3 about x shortens z by 0.86 (its detector planes see z 0.37 on average)."""
    rows = np.asarray(rotations, float)[:, :2]
    seen = np.einsum("kij,kil->jl", rows, rows) / len(rows)
    values, vectors = np.linalg.eigh(seen)
    return vectors * np.sqrt(np.clip(values / 0.5, 0.0, 1.0))


def pixel_centers(n: int, pixel_size: float) -> np.ndarray:
    """Detector coordinates (n,) in A of the centres of n pixels along one axis."""
    return (np.arange(n) + 0.5 - n / 2.0) * pixel_size


def pixel_index(coord: torch.Tensor, n: int, pixel_size: float) -> torch.Tensor:
    """Index (long, unclamped) of the pixel that contains detector coordinate ``coord`` along an
    axis of ``n`` pixels: the inverse of :func:`pixel_centers`."""
    return torch.floor(coord / pixel_size + n / 2.0).long()


def orthophoto_camera_to_worlds(rotations: torch.Tensor, shifts: torch.Tensor, depth: float) -> torch.Tensor:
    """Nerfstudio camera-to-world matrices (N, 3, 4) of the views.

    Args:
        rotations: (N, 3, 3) view matrices ``M_k``.
        shifts: (N, 2) detector shifts, in the same length unit as the result.
        depth: distance of the ray origins from the origin along the beam (same unit); rays start
            at ``-depth`` along the beam and travel through the sample.
    """
    flip = rotations.new_tensor(_FLIP_YZ)
    rot_t = rotations.transpose(-1, -2)
    cam_rot = rot_t * flip  # M^T diag(1, -1, -1): scales the columns
    local = torch.cat([-shifts, torch.full_like(shifts[:, :1], -depth)], dim=-1)
    trans = (rot_t @ local[..., None])[..., 0]
    return torch.cat([cam_rot, trans[..., None]], dim=-1)


def views_from_camera_to_worlds(camera_to_worlds: torch.Tensor):
    """Inverse of :func:`orthophoto_camera_to_worlds` for any camera pose.

    Args:
        camera_to_worlds: (N, 3, 4) nerfstudio camera poses.

    Returns:
        rotations (N, 3, 3) with ``M = diag(1, -1, -1) R^T``; shifts (N, 2): minus the detector
        position of the camera origin, so that the camera's own axis lands on the detector centre
        for ``cx = W / 2``, ``cy = H / 2``.
    """
    flip = camera_to_worlds.new_tensor(_FLIP_YZ)
    rotations = camera_to_worlds[..., :3, :3].transpose(-1, -2) * flip[:, None]
    shifts = -(rotations[..., :2, :] @ camera_to_worlds[..., :3, 3:4])[..., 0]
    return rotations, shifts
