"""The geometric conventions of DESIGN.md ("Geometry"): ASE rotations, the pixel grid, and the
nerfstudio ORTHOPHOTO cameras that carry them."""

import numpy as np
import pytest
import torch
from ase import Atoms
from nerfstudio.cameras.cameras import Cameras, CameraType

from atomsplat.geometry import (
    detector_positions,
    orthophoto_camera_to_worlds,
    pixel_centers,
    resolution_stretch,
    rotation_x,
    rotation_z,
    view_rotations,
    views_from_camera_to_worlds,
)

RNG = np.random.default_rng(0)
POSITIONS = RNG.uniform(-5, 5, size=(12, 3))
ANGLES = [-70.0, -33.5, 0.0, 12.0, 45.0, 90.0, 151.0]


def ase_rotated(positions, angle, axis_angle=0.0):
    atoms = Atoms("H" * len(positions), positions=positions)
    atoms.rotate(angle, "x", center=(0, 0, 0))
    if axis_angle:
        atoms.rotate(axis_angle, "z", center=(0, 0, 0))
    return atoms.get_positions()


@pytest.mark.parametrize("axis_angle", [0.0, 23.0, -71.0])
def test_view_rotations_match_ase(axis_angle):
    mats = view_rotations(ANGLES, axis_angle)
    assert mats.shape == (len(ANGLES), 3, 3) and mats.dtype == np.float64
    for angle, m in zip(ANGLES, mats):
        np.testing.assert_allclose(POSITIONS @ m.T, ase_rotated(POSITIONS, angle, axis_angle), atol=1e-12)
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-14)
        assert np.linalg.det(m) == pytest.approx(1.0)


def test_rotations_are_right_handed_and_scalar_angle_works():
    # +90 degrees about x takes y to z; about z takes x to y
    np.testing.assert_allclose(rotation_x(90) @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(rotation_z(90) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    assert view_rotations(30.0).shape == (1, 3, 3)
    np.testing.assert_allclose(view_rotations(30.0, 10.0)[0], rotation_z(10.0) @ rotation_x(30.0))


def test_tilt_axis_appears_at_tilt_axis_angle_on_the_detector():
    # a point on the tilt axis (sample x) stays on it at every tilt and lands at tilt_axis_angle
    for m in view_rotations(ANGLES, 30.0):
        d = detector_positions([[1.0, 0.0, 0.0]], m)[0]
        np.testing.assert_allclose(d, [np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))], atol=1e-14)


def test_detector_positions():
    m = view_rotations([37.0], 15.0)[0]
    shift = (0.4, -1.2)
    d = detector_positions(POSITIONS, m, shift)
    assert d.shape == (len(POSITIONS), 2)
    np.testing.assert_allclose(d, ase_rotated(POSITIONS, 37.0, 15.0)[:, :2] + shift, atol=1e-12)
    np.testing.assert_allclose(detector_positions(POSITIONS, m), (POSITIONS @ m.T)[:, :2], atol=1e-14)


@pytest.mark.parametrize("axis_angle", [0.0, 30.0])
def test_resolution_stretch_shortens_only_what_a_missing_wedge_leaves_unseen(axis_angle):
    """A full range of equal steps sees every direction: the identity. -70:70:3 about x sees z on
    average mean(sin^2) of its tilts (against 1/2 across the axis of a full range): z counts
    shorter by the square root of twice that, x and y not at all; the tilt axis's angle on the
    detector changes nothing in the sample frame."""
    full = resolution_stretch(view_rotations(np.arange(0.0, 178.0, 3.0), axis_angle))
    np.testing.assert_allclose(full @ full.T, np.eye(3), atol=1e-12)
    tilts = np.arange(-70.0, 71.0, 3.0)
    wedge = resolution_stretch(view_rotations(tilts, axis_angle))
    metric = wedge @ wedge.T
    seen_z = np.mean(np.sin(np.deg2rad(tilts)) ** 2)
    assert np.linalg.norm(np.array([0.0, 0.0, 1.0]) @ wedge) == pytest.approx(np.sqrt(2 * seen_z), abs=2e-3)
    assert metric[0, 0] == pytest.approx(1.0, abs=1e-12) and metric[1, 1] == pytest.approx(1.0, abs=1e-3)


def test_pixel_centers_convention():
    np.testing.assert_allclose(pixel_centers(4, 0.5), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(pixel_centers(3, 2.0), [-2.0, 0.0, 2.0])
    # the detector centre is the origin: centres are symmetric for any n
    for n in (1, 2, 7, 10):
        c = pixel_centers(n, 0.3)
        np.testing.assert_allclose(c, -c[::-1], atol=1e-15)
        np.testing.assert_allclose(np.diff(c), 0.3)


def cameras_for(angles, axis_angle, shifts, pixel, height, width, depth):
    rotations = torch.from_numpy(view_rotations(angles, axis_angle))
    c2w = orthophoto_camera_to_worlds(rotations, torch.as_tensor(shifts, dtype=torch.float64), depth)
    cameras = Cameras(
        camera_to_worlds=c2w.float(),
        fx=1.0 / pixel,
        fy=1.0 / pixel,
        cx=width / 2.0,
        cy=height / 2.0,
        width=width,
        height=height,
        camera_type=CameraType.ORTHOPHOTO,
    )
    return rotations.numpy(), c2w, cameras


def test_nerfstudio_orthophoto_rays_pass_through_the_projected_points():
    angles, axis_angle, pixel, height, width, depth = [-60.0, 0.0, 25.0, 70.0], 35.0, 0.3, 60, 64, 50.0
    shifts = np.array([[0.45, -0.2], [0.0, 0.0], [-1.3, 0.7], [0.25, 0.95]])
    rotations, c2w, cameras = cameras_for(angles, axis_angle, shifts, pixel, height, width, depth)
    assert c2w.shape == (len(angles), 3, 4)
    points = RNG.uniform(-4, 4, size=(40, 3))
    for k, (m, shift) in enumerate(zip(rotations, shifts)):
        rays = cameras.generate_rays(camera_indices=k)
        origins, directions = rays.origins.double().numpy(), rays.directions.double().numpy()
        assert origins.shape == directions.shape == (height, width, 3)
        # every ray travels along the beam (+z of the view frame), starting at -depth
        np.testing.assert_allclose(directions.reshape(-1, 3), np.tile(m[2], (height * width, 1)), atol=1e-6)
        np.testing.assert_allclose(origins.reshape(-1, 3) @ m[2], -depth, atol=1e-4)
        d = detector_positions(points, m, shift)
        j = np.floor(d[:, 0] / pixel + width / 2).astype(int)
        i = np.floor(d[:, 1] / pixel + height / 2).astype(int)
        assert ((0 <= i) & (i < height) & (0 <= j) & (j < width)).all()
        o, u = origins[i, j], directions[i, j]
        rel = points - o
        perp = rel - (rel * u).sum(-1, keepdims=True) * u  # from the ray to the point
        in_plane = perp @ m[:2].T  # detector components of that offset
        assert np.abs(in_plane).max() <= pixel / 2 + 1e-5
        # exactly: the ray runs through the centre of pixel (i, j)
        centre = np.stack([pixel_centers(width, pixel)[j], pixel_centers(height, pixel)[i]], -1)
        np.testing.assert_allclose(in_plane, d - centre, atol=1e-5)


def test_views_from_camera_to_worlds_inverts_orthophoto_camera_to_worlds():
    rotations = torch.from_numpy(view_rotations(ANGLES, -17.0))
    shifts = torch.from_numpy(RNG.uniform(-2, 2, size=(len(ANGLES), 2)))
    for depth in (0.0, 2.0, 30.0):
        c2w = orthophoto_camera_to_worlds(rotations, shifts, depth)
        back_rot, back_shift = views_from_camera_to_worlds(c2w)
        torch.testing.assert_close(back_rot, rotations, atol=1e-12, rtol=0)
        torch.testing.assert_close(back_shift, shifts, atol=1e-12, rtol=0)
        torch.testing.assert_close(orthophoto_camera_to_worlds(back_rot, back_shift, depth), c2w, atol=1e-12, rtol=0)


def test_camera_rotation_is_proper():
    c2w = orthophoto_camera_to_worlds(
        torch.from_numpy(view_rotations(ANGLES, 50.0)), torch.zeros(len(ANGLES), 2, dtype=torch.float64), 2.0
    )
    rot = c2w[:, :, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(len(ANGLES), 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(ANGLES), dtype=torch.float64))
