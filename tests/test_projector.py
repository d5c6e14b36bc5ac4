"""The projector against its oracle, against brute-force line integrals of the 3D density, and
for mass, gradients, edges, the anisotropic path, float32 and bad input (DESIGN.md, "Physics")."""

import math

import numpy as np
import pytest
import torch

from atomsplat.geometry import view_rotations
from atomsplat.render import backend
from atomsplat.render.backend import footprint_kernels, projector_backend
from atomsplat.render.kernels.reference import ReferenceFootprints
from atomsplat.render.projector import (
    backproject_points,
    project_anisotropic,
    project_isotropic,
    project_isotropic_dense,
    window_radii,
)

F64 = torch.float64


def problem(
    atoms=30,
    angles=(-60.0, -13.0, 0.0, 37.0, 71.0),
    axis=17.0,
    pixel=0.4,
    height=40,
    width=56,
    sigma_range=(0.3, 1.5),
    extent=0.35,
    seed=0,
    dtype=F64,
):
    """Random atoms inside the field of view, views with a rotated tilt axis and non-zero offsets."""
    gen = torch.Generator().manual_seed(seed)
    half = extent * min(height, width) * pixel
    means = (torch.rand(atoms, 3, generator=gen, dtype=F64) * 2 - 1) * half
    lo, hi = sigma_range
    sigmas = lo + (hi - lo) * torch.rand(atoms, generator=gen, dtype=F64)
    weights = 0.5 + torch.rand(atoms, generator=gen, dtype=F64)
    rotations = torch.from_numpy(view_rotations(angles, axis))
    offsets = (torch.rand(len(angles), 2, generator=gen, dtype=F64) * 2 - 1) * 1.0
    tensors = [t.to(dtype) for t in (means, sigmas, weights, rotations, offsets)]
    return (*tensors, pixel, height, width)


# --- fast path vs oracle ------------------------------------------------------------------------


def test_fast_matches_dense_oracle():
    args = problem()
    fast = project_isotropic(*args)
    dense = project_isotropic_dense(*args)
    assert fast.shape == dense.shape == (5, 40, 56) and fast.dtype == F64
    err = (fast - dense).abs().max() / dense.abs().max()
    assert err < 1e-3, err


@pytest.mark.parametrize("sigma_in_pixels", [0.05, 0.3, 1.0, 2.7, 6.0])
def test_fast_matches_dense_for_any_width(sigma_in_pixels):
    means, _, weights, rot, off, p, h, w = problem(atoms=6, height=48, width=36, seed=1)
    sigmas = torch.full((6,), sigma_in_pixels * p, dtype=F64)
    fast = project_isotropic(means, sigmas, weights, rot, off, p, h, w)
    dense = project_isotropic_dense(means, sigmas, weights, rot, off, p, h, w)
    assert (fast - dense).abs().max() / dense.abs().max() < 1e-3


def test_fast_mixed_widths_use_several_windows_and_still_match():
    # widths spanning several rungs of the window ladder in one call
    means, _, weights, rot, off, p, h, w = problem(atoms=8, seed=2)
    sigmas = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.9, 1.4, 2.0, 3.0], dtype=F64)
    fast = project_isotropic(means, sigmas, weights, rot, off, p, h, w)
    dense = project_isotropic_dense(means, sigmas, weights, rot, off, p, h, w)
    assert (fast - dense).abs().max() / dense.abs().max() < 1e-3


def test_compiled_cpu_kernels_equal_the_reference_kernels():
    # atoms inside, across the edges and far away; widths on several rungs of the window ladder
    means, _, weights, rot, off, p, h, w = problem(atoms=14, extent=0.7, seed=12)
    means[0, 0], means[1, 1], means[2] = 13.0, -9.0, torch.tensor([400.0, -3.0, 1.0], dtype=F64)
    sigmas = torch.linspace(0.03, 2.5, 14, dtype=F64)
    upstream = torch.randn(5, h, w, generator=torch.Generator().manual_seed(13), dtype=F64)
    results = []
    for name in ("numba", "reference"):
        kernels = footprint_kernels("cpu", name)
        leaves = [t.clone().requires_grad_(True) for t in (means, sigmas, weights, off)]
        image = project_isotropic(leaves[0], leaves[1], leaves[2], rot, leaves[3], p, h, w, kernels=kernels)
        (image * upstream).sum().backward()
        results.append([image.detach()] + [leaf.grad for leaf in leaves])
    for ours, reference in zip(*results):
        assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_window_radii_follow_the_ladder():
    # needed radius ceil(4 sigma / p + 0.5); a rung shares its largest radius; rungs grow by 1.4x
    sigmas = torch.tensor([0.01, 0.1, 0.11, 0.3, 0.31, 2.0], dtype=F64)
    needed = torch.ceil(4 * sigmas / 0.25 + 0.5)  # 1, 3, 3, 6, 6, 33
    radii = window_radii(sigmas, 0.25)
    assert radii.dtype == torch.long and (radii >= needed).all()
    assert radii.tolist() == [1, 3, 3, 6, 6, 33]
    assert window_radii(torch.tensor([0.45, 0.55]), 0.25).tolist() == [10, 10]  # need 8 and 10: one rung


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("ATOMSPLAT_PROJECTOR", raising=False)
    assert projector_backend("cpu") == "numba"
    for value in ("", " AUTO ", "auto"):
        monkeypatch.setenv("ATOMSPLAT_PROJECTOR", value)
        assert projector_backend("cpu") == "numba"
    for name in ("reference", "numba"):
        monkeypatch.setenv("ATOMSPLAT_PROJECTOR", name)
        assert projector_backend("cpu") == name
        assert footprint_kernels("cpu").name == name
    with pytest.raises(ValueError, match="CPU tensors only"):
        projector_backend("cuda")
    monkeypatch.setenv("ATOMSPLAT_PROJECTOR", "fastest")
    with pytest.raises(ValueError, match="ATOMSPLAT_PROJECTOR='fastest'"):
        projector_backend("cpu")
    # an explicit choice wins over the variable, and its errors name the argument
    assert projector_backend("cpu", "reference") == "reference"
    with pytest.raises(ValueError, match="projector backend='fastest'"):
        projector_backend("cpu", "fastest")


def test_backend_whose_package_does_not_import(monkeypatch):
    # auto falls back to the reference kernels; a named backend is an error, never a silent fallback
    monkeypatch.setattr(backend, "_imports", lambda package: package != "numba")
    monkeypatch.delenv("ATOMSPLAT_PROJECTOR", raising=False)
    assert projector_backend("cpu") == "reference"
    monkeypatch.setenv("ATOMSPLAT_PROJECTOR", "numba")
    with pytest.raises(RuntimeError, match="ATOMSPLAT_PROJECTOR=numba, but the numba package does not import"):
        projector_backend("cpu")


class CountingKernels(ReferenceFootprints):
    """The reference kernels, counting their calls."""

    calls = {"add": 0, "contract": 0}

    @staticmethod
    def add(*args):
        CountingKernels.calls["add"] += 1
        ReferenceFootprints.add(*args)

    @staticmethod
    def contract(*args):
        CountingKernels.calls["contract"] += 1
        return ReferenceFootprints.contract(*args)


def test_explicit_kernels_are_used_and_the_variable_is_not_read(monkeypatch):
    monkeypatch.setenv("ATOMSPLAT_PROJECTOR", "fastest")  # reading it would raise
    means, sigmas, weights, rot, off, p, h, w = problem(atoms=6, seed=14)
    leaves = [t.clone().requires_grad_(True) for t in (means, sigmas, weights)]
    CountingKernels.calls.update(add=0, contract=0)
    image = project_isotropic(*leaves, rot, off, p, h, w, kernels=CountingKernels)
    image.sum().backward()
    assert CountingKernels.calls["add"] > 0 and CountingKernels.calls["contract"] > 0
    monkeypatch.setenv("ATOMSPLAT_PROJECTOR", "reference")
    torch.testing.assert_close(image, project_isotropic(means, sigmas, weights, rot, off, p, h, w), rtol=0, atol=0)


# --- oracle vs brute-force integration of the 3D density -----------------------------------------


def brute_force_pixel(means, sigmas, weights, rotation, shift, pixel, height, width, i, j, n_xy=24, dz_per_sigma=0.2):
    """Mean over pixel (i, j) of the line integral along the beam of the 3D density.

    Gauss-Legendre points over the pixel area; along the beam a trapezoid rule of step
    0.2 sigma over +-10 sigma around each atom's depth. Sample-frame point = M^T [x - sx, y - sy, z].
    """
    nodes, gl_w = np.polynomial.legendre.leggauss(n_xy)
    x0, y0 = (j - width / 2) * pixel, (i - height / 2) * pixel
    xs = x0 + (nodes + 1) / 2 * pixel
    ys = y0 + (nodes + 1) / 2 * pixel
    wxy = np.outer(gl_w, gl_w).reshape(-1) / 4.0  # sums to 1: a mean over the pixel
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx, gy = gx.reshape(-1), gy.reshape(-1)
    total = 0.0
    for r_a, s, w in zip(means, sigmas, weights):
        zc = (rotation @ r_a)[2]
        z = zc + np.arange(-10.0, 10.0 + 1e-9, dz_per_sigma) * s
        tz = np.full(len(z), dz_per_sigma * s)
        tz[[0, -1]] *= 0.5
        local = np.stack(np.broadcast_arrays(gx[:, None] - shift[0], gy[:, None] - shift[1], z[None, :]), -1)
        r = local @ rotation  # rows: M^T applied to each local point
        f = w * (2 * np.pi * s**2) ** -1.5 * np.exp(-((r - r_a) ** 2).sum(-1) / (2 * s**2))
        total += float((f @ tz) @ wxy)
    return total


@pytest.mark.parametrize("sigma_in_pixels", [0.3, 1.0, 2.2])
def test_oracle_matches_brute_force_line_integrals(sigma_in_pixels):
    pixel, height, width = 0.5, 20, 24
    means = np.array([[0.7, -1.1, 2.3], [-1.6, 0.9, -0.8]])
    sigmas = np.array([sigma_in_pixels, 0.8 * sigma_in_pixels]) * pixel
    weights = np.array([1.3, 0.6])
    rotations = view_rotations([-52.0, 0.0, 33.0], 24.0)
    shifts = np.array([[0.3, -0.45], [0.0, 0.0], [-0.7, 0.2]])
    image = project_isotropic_dense(
        *(torch.from_numpy(a) for a in (means, sigmas, weights, rotations, shifts)), pixel, height, width
    ).numpy()
    for v, (rot, shift) in enumerate(zip(rotations, shifts)):
        det = means @ rot[:2].T + shift
        pixels = set()
        for dx, dy in det:
            jc, ic = int(dx // pixel + width / 2), int(dy // pixel + height / 2)
            pixels |= {(ic, jc), (ic + 1, jc), (ic, jc - 1), (ic - 1, jc + 1), (ic + 2, jc - 2)}
        brute = np.array(
            [brute_force_pixel(means, sigmas, weights, rot, shift, pixel, height, width, i, j) for i, j in pixels]
        )
        ours = np.array([image[v, i, j] for i, j in pixels])
        assert brute.max() > 0.2 * (weights / (2 * np.pi * sigmas**2)).min()  # the pixels hold real signal
        err = np.abs(ours - brute).max() / brute.max()
        assert err < 1e-5, (v, err)


# --- mass -----------------------------------------------------------------------------------------


def test_mass_is_conserved_at_every_angle():
    angles = np.arange(-90.0, 91.0, 15.0)
    # every atom at least 7 sigma inside the detector at every angle
    means, sigmas, weights, _, _, p, h, w = problem(
        atoms=25, angles=angles, height=64, width=64, extent=0.12, sigma_range=(0.3, 1.0), seed=3
    )
    rot = torch.from_numpy(view_rotations(angles, 30.0))
    off = torch.zeros(len(angles), 2, dtype=F64) + torch.tensor([0.4, -0.3], dtype=F64)
    total = float(weights.sum())
    dense = project_isotropic_dense(means, sigmas, weights, rot, off, p, h, w).sum(dim=(1, 2)) * p**2
    assert torch.allclose(dense, torch.full_like(dense, total), rtol=1e-10, atol=0)
    # fast path with a wide window: exact to 1e-5
    wide = project_isotropic(means, sigmas, weights, rot, off, p, h, w, window=6.0).sum(dim=(1, 2)) * p**2
    assert ((wide - total).abs() / total).max() < 1e-5
    # default +-4 sigma window: the truncation bound (2 * erfc(4 / sqrt 2) = 1.3e-4 at worst)
    fast = project_isotropic(means, sigmas, weights, rot, off, p, h, w).sum(dim=(1, 2)) * p**2
    assert ((fast - total).abs() / total).max() < 1.3e-4


# --- gradients --------------------------------------------------------------------------------------


def test_gradcheck_isotropic():
    pixel, height, width = 0.5, 10, 12
    means = torch.tensor([[0.3, -0.4, 0.2], [-0.8, 0.6, -0.3], [0.1, 0.2, 0.9], [2.6, -0.1, 0.4]], dtype=F64)
    sigmas = torch.tensor([0.31, 0.55, 1.1, 0.45], dtype=F64)  # three window sizes; last atom at the edge
    weights = torch.tensor([1.0, 0.7, 1.6, 0.9], dtype=F64)
    rotations = torch.from_numpy(view_rotations([-35.0, 50.0], 12.0))
    offsets = torch.tensor([[0.13, -0.21], [-0.07, 0.16]], dtype=F64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (means, sigmas, weights, offsets))

    def fn(m, s, w, o):
        return project_isotropic(m, s, w, rotations, o, pixel, height, width)

    # fast mode: random projections of the Jacobian, against finite differences (the full Jacobian
    # takes ~8 s on 2 cores; it is checked on a smaller problem below)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name", ["numba", "reference"])
def test_gradcheck_isotropic_full_jacobian_small(name):
    kernels = footprint_kernels("cpu", name)
    pixel, height, width = 0.5, 6, 7
    means = torch.tensor([[0.3, -0.4, 0.2], [1.6, 0.5, -0.3]], dtype=F64)  # the second one at the edge
    sigmas = torch.tensor([0.42, 0.9], dtype=F64)
    weights = torch.tensor([1.0, 0.7], dtype=F64)
    rotations = torch.from_numpy(view_rotations([27.0], -31.0))
    offsets = torch.tensor([[0.11, -0.23]], dtype=F64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (means, sigmas, weights, offsets))

    def fn(m, s, w, o):
        return project_isotropic(m, s, w, rotations, o, pixel, height, width, kernels=kernels)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fast_gradients_match_dense_autograd():
    args = list(problem(atoms=12, seed=4))
    grads = []
    upstream = torch.randn(5, 40, 56, generator=torch.Generator().manual_seed(9), dtype=F64)
    for fn in (project_isotropic, project_isotropic_dense):
        leaves = [args[i].clone().requires_grad_(True) for i in (0, 1, 2, 4)]
        out = fn(leaves[0], leaves[1], leaves[2], args[3], leaves[3], *args[5:])
        (out * upstream).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for fast, dense in zip(*grads):
        assert (fast - dense).abs().max() <= 2e-3 * dense.abs().max()


def test_finite_difference_of_one_coordinate():
    means, sigmas, weights, rot, off, p, h, w = problem(atoms=5, seed=5)
    target = project_isotropic_dense(means, sigmas, weights, rot, off, p, h, w) * 1.1

    def loss(m):
        return ((project_isotropic(m, sigmas, weights, rot, off, p, h, w) - target) ** 2).sum()

    m = means.clone().requires_grad_(True)
    loss(m).backward()
    eps = 1e-6
    plus, minus = means.clone(), means.clone()
    plus[2, 1] += eps
    minus[2, 1] -= eps
    fd = (loss(plus) - loss(minus)) / (2 * eps)
    assert float(m.grad[2, 1]) == pytest.approx(float(fd), rel=1e-5)


# --- atoms at and beyond the detector edge ------------------------------------------------------------


def test_atoms_partly_or_fully_outside_the_detector():
    pixel, height, width = 0.5, 16, 20
    half_x, half_y = width * pixel / 2, height * pixel / 2
    s = 0.6
    means = torch.tensor(
        [
            [half_x + 1.0 * s, 0.0, 0.0],  # centre beyond the right edge by 1 sigma
            [-half_x - 2.5 * s, 0.5, 0.0],  # beyond the left edge
            [0.0, half_y + 0.5 * s, 0.0],  # just beyond the bottom edge
            [half_x + 0.5 * s, -half_y - 0.5 * s, 0.0],  # beyond a corner
            [0.0, 0.0, 0.0],  # inside
            [100.0, 0.0, 0.0],  # far away
            [0.0, -1e4, 0.0],  # very far away
            [-1e6, 1e6, 0.0],
        ],
        dtype=F64,
    )
    sigmas = torch.full((8,), s, dtype=F64)
    sigmas[1] = 2.0  # a wide one: its window is clamped
    weights = torch.ones(8, dtype=F64)
    rotations = torch.from_numpy(view_rotations([0.0], 0.0))
    offsets = torch.zeros(1, 2, dtype=F64)
    args = (rotations, offsets, pixel, height, width)
    fast = project_isotropic(means, sigmas, weights, *args)
    dense = project_isotropic_dense(means, sigmas, weights, *args)
    scale = 1 / (2 * math.pi * s**2)
    assert torch.isfinite(fast).all()
    assert (fast - dense).abs().max() < 1e-3 * scale
    # each partly visible atom alone gives its own partial image
    for k in range(4):
        one = [t[k : k + 1] for t in (means, sigmas, weights)]
        f1, d1 = project_isotropic(*one, *args), project_isotropic_dense(*one, *args)
        assert d1.max() > 1e-3 * scale and (f1 - d1).abs().max() < 1e-3 * scale
    # far-away atoms leave nothing, and gradients stay finite
    far = [t[5:].clone().requires_grad_(True) for t in (means, sigmas, weights)]
    out = project_isotropic(*far, *args)
    assert out.abs().max() < 1e-30
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in far)
    # and with rotated views and offsets pushing atoms off the detector
    rot = torch.from_numpy(view_rotations([-70.0, 20.0, 65.0], 40.0))
    off = torch.tensor([[4.0, -3.0], [-6.0, 0.5], [0.0, 7.0]], dtype=F64)
    m = (torch.rand(20, 3, generator=torch.Generator().manual_seed(6), dtype=F64) * 2 - 1) * 7
    sg = torch.full((20,), 0.7, dtype=F64)
    w = torch.ones(20, dtype=F64)
    a = project_isotropic(m, sg, w, rot, off, pixel, height, width)
    b = project_isotropic_dense(m, sg, w, rot, off, pixel, height, width)
    assert (a - b).abs().max() < 1e-3 * b.max()


def test_empty_atom_set_gives_zero_image():
    rot = torch.from_numpy(view_rotations([0.0, 30.0]))
    empty = torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64)
    out = project_isotropic(*empty, rot, torch.zeros(2, 2, dtype=F64), 0.5, 6, 8)
    assert out.shape == (2, 6, 8) and (out == 0).all()


# --- anisotropic path --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_in_pixels", [1.0, 1.6, 3.0])
def test_anisotropic_with_isotropic_covariance_matches_exact(sigma_in_pixels):
    means, _, weights, rot, off, p, h, w = problem(atoms=10, seed=7)
    sigmas = torch.full((10,), sigma_in_pixels * p, dtype=F64)
    cov = sigmas[:, None, None] ** 2 * torch.eye(3, dtype=F64)
    aniso = project_anisotropic(means, cov, weights, rot, off, p, h, w)
    exact = project_isotropic_dense(means, sigmas, weights, rot, off, p, h, w)
    assert (aniso - exact).abs().max() < 0.01 * exact.max()


def rotated_covariance(scales, seed):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q @ torch.diag(torch.tensor(scales, dtype=F64) ** 2) @ q.T


def test_anisotropic_mass_and_second_moments():
    pixel, height, width = 0.25, 100, 96  # the detector holds +-6.5 sigma of the widest axis
    cov = rotated_covariance([0.5, 1.0, 1.8], seed=8)
    mean = torch.tensor([[0.4, -0.3, 0.2]], dtype=F64)
    weight = torch.tensor([2.5], dtype=F64)
    angles = [-70.0, -25.0, 0.0, 40.0, 85.0]
    rot = torch.from_numpy(view_rotations(angles, -20.0))
    off = torch.tensor([[0.2, 0.1]] * 5, dtype=F64)
    image = project_anisotropic(mean, cov[None], weight, rot, off, pixel, height, width, window=6.0)
    x = (torch.arange(width, dtype=F64) + 0.5 - width / 2) * pixel
    y = (torch.arange(height, dtype=F64) + 0.5 - height / 2) * pixel
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    for v in range(len(angles)):
        img = image[v]
        mass = img.sum() * pixel**2
        assert float(mass) == pytest.approx(2.5, rel=1e-5)
        cx, cy = (img * gx).sum() / img.sum(), (img * gy).sum() / img.sum()
        expected_centre = rot[v, :2] @ mean[0] + off[v]
        assert torch.allclose(torch.stack([cx, cy]), expected_centre, atol=1e-6)
        dx, dy = gx - cx, gy - cy
        moments = (
            torch.stack(
                [
                    torch.stack([(img * dx * dx).sum(), (img * dx * dy).sum()]),
                    torch.stack([(img * dx * dy).sum(), (img * dy * dy).sum()]),
                ]
            )
            / img.sum()
        )
        expected = (rot[v] @ cov @ rot[v].T)[:2, :2] + torch.eye(2, dtype=F64) * pixel**2 / 12
        assert torch.allclose(moments, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    # the default +-4 sigma window conserves mass to the truncation bound
    default = project_anisotropic(mean, cov[None], weight, rot, off, pixel, height, width)
    assert torch.allclose(default.sum(dim=(1, 2)) * pixel**2, torch.full((5,), 2.5, dtype=F64), rtol=3e-4)


def test_anisotropic_mixed_widths_use_several_windows_and_still_match():
    """Narrow and wide Gaussians get windows of their own size; the image equals that of one
    window wide enough for all of them, to the truncation bound of the default window."""
    means, _, weights, rot, off, p, h, w = problem(atoms=12, height=64, width=60, seed=12)
    cov = torch.stack(
        [rotated_covariance(scales, seed=s) for s, scales in enumerate([[0.3, 0.4, 0.35]] * 6 + [[0.9, 1.4, 1.1]] * 6)]
    )
    grouped = project_anisotropic(means, cov, weights, rot, off, p, h, w)
    wide = project_anisotropic(means, cov, weights, rot, off, p, h, w, window=9.0)
    assert (grouped - wide).abs().max() < 2e-4 * wide.max()
    torch.testing.assert_close(grouped.sum(dim=(1, 2)), wide.sum(dim=(1, 2)), rtol=3e-4, atol=0)


def test_anisotropic_is_differentiable():
    means, sigmas, weights, rot, off, p, h, w = problem(atoms=3, height=16, width=18, angles=(0.0, 45.0), seed=10)
    cov = torch.stack([rotated_covariance([0.5, 0.7, 0.9], seed=s) for s in range(3)]).requires_grad_(True)
    m = means.clone().requires_grad_(True)
    project_anisotropic(m, cov, weights, rot, off, p, h, w).pow(2).sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0 and torch.isfinite(cov.grad).all()


# --- float32 -------------------------------------------------------------------------------------------


def test_float32_matches_float64():
    args64 = problem(seed=11)
    args32 = problem(seed=11, dtype=torch.float32)
    out64 = project_isotropic(*args64)
    out32 = project_isotropic(*args32)
    assert out32.dtype == torch.float32
    assert (out32.double() - out64).abs().max() / out64.abs().max() < 1e-4
    dense32 = project_isotropic_dense(*args32)
    assert dense32.dtype == torch.float32
    assert (dense32.double() - out64).abs().max() / out64.abs().max() < 1e-3
    # gradients in float32 run and are finite
    leaves = [args32[i].clone().requires_grad_(True) for i in (0, 1, 2, 4)]
    project_isotropic(leaves[0], leaves[1], leaves[2], args32[3], leaves[3], *args32[5:]).sum().backward()
    assert all(leaf.grad.dtype == torch.float32 and torch.isfinite(leaf.grad).all() for leaf in leaves)


# --- bad input -----------------------------------------------------------------------------------------


def _good():
    means, sigmas, weights, rot, off, p, h, w = problem(atoms=4, angles=(0.0, 30.0), height=8, width=8)
    return dict(
        means=means, sigmas=sigmas, weights=weights, rotations=rot, offsets=off, pixel_size=p, height=h, width=w
    )


@pytest.mark.parametrize(
    "name, bad",
    [
        ("means", torch.zeros(4, 2, dtype=F64)),
        ("means", torch.zeros(4, dtype=F64)),
        ("sigmas", torch.ones(5, dtype=F64)),
        ("sigmas", torch.ones(4, 1, dtype=F64)),
        ("weights", torch.ones(3, dtype=F64)),
        ("rotations", torch.eye(3, dtype=F64)),
        ("rotations", torch.zeros(2, 2, 3, dtype=F64)),
        ("offsets", torch.zeros(2, 3, dtype=F64)),
        ("offsets", torch.zeros(3, 2, dtype=F64)),
        ("offsets", torch.zeros(2, dtype=F64)),
    ],
)
def test_bad_shapes_raise_value_error(name, bad):
    for fn in (project_isotropic, project_isotropic_dense):
        kwargs = _good()
        kwargs[name] = bad
        with pytest.raises(ValueError, match="projector: .* expected, got"):
            fn(**kwargs)
    kwargs = _good()
    sig = kwargs.pop("sigmas")
    kwargs["covariances"] = sig[:, None, None] ** 2 * torch.eye(3, dtype=F64)
    if name != "sigmas":
        kwargs[name] = bad
        with pytest.raises(ValueError, match="projector: .* expected, got"):
            project_anisotropic(**kwargs)


@pytest.mark.parametrize("shape", [(4, 2, 2), (4, 3), (4, 3, 2), (5, 3, 3)])
def test_bad_covariance_shape_raises_value_error(shape):
    kwargs = _good()
    kwargs.pop("sigmas")
    kwargs["covariances"] = torch.ones(shape, dtype=F64)
    with pytest.raises(ValueError, match="projector: "):
        project_anisotropic(**kwargs)


# --- back-projection of residuals ------------------------------------------------------------------


def test_backproject_points_reads_each_view_at_the_detector_position():
    means, sigmas, weights, rotations, offsets, pixel, height, width = problem(atoms=3)
    images = project_isotropic_dense(means, sigmas, weights, rotations, offsets, pixel, height, width)
    read = backproject_points(images, rotations, offsets, pixel, means)
    # by hand: the value of the pixel holding each centre's detector position, averaged over views
    centres = torch.einsum("vij,kj->vki", rotations[:, :2], means) + offsets[:, None]
    cols = torch.floor(centres[..., 0] / pixel + width / 2).long()
    rows = torch.floor(centres[..., 1] / pixel + height / 2).long()
    expected = torch.stack([images[v, rows[v], cols[v]] for v in range(len(images))]).mean(0)
    torch.testing.assert_close(read, expected)


def test_backproject_points_averages_views_and_reads_zero_off_the_detector():
    rotations = torch.from_numpy(view_rotations([-40.0, 0.0, 25.0, 60.0]))
    offsets = torch.zeros(4, 2, dtype=F64)
    images = torch.zeros(4, 20, 20, dtype=F64)
    images[0] = 2.0  # one view bright everywhere: a streak through every point
    points = torch.tensor([[0.1, 0.2, 0.3], [100.0, 0.0, 0.0]], dtype=F64)  # inside; off the detector
    read = backproject_points(images, rotations, offsets, 0.5, points)
    torch.testing.assert_close(read, torch.tensor([0.5, 0.0], dtype=F64))
