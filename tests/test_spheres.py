"""The sphere picture of the viewer (gsplat's rasterizer, CUDA only), checked on the CPU for its
inputs: the camera conversion against nerfstudio's own rays and atomsplat's detector geometry,
through gsplat's pure-torch projection; colours and widths; and the clear refusal off CUDA."""

import ase.io
import numpy as np
import pytest
import torch
from ase.data import covalent_radii
from ase.data.colors import jmol_colors
from gsplat.cuda._torch_impl import _fully_fused_projection
from nerfstudio.cameras.cameras import Cameras, CameraType

from atomsplat.data.dataparser import TomographyDataParserConfig, bundled_demo_path
from atomsplat.model.camera_views import camera_views
from atomsplat.viewer.spheres import UNLABELLED_WIDTH, gsplat_camera, render_spheres, sphere_style

OUTPUTS = TomographyDataParserConfig(data=bundled_demo_path()).setup().get_dataparser_outputs("train")
SCALE = float(OUTPUTS.metadata["scale"])


def _project(points_a: torch.Tensor, camera) -> tuple:
    """gsplat's own pure-torch projection of points (N, 3) A: (radii (N,), means2d (N, 2), depths (N,))."""
    g = gsplat_camera(camera, SCALE)
    covars = torch.eye(3).expand(len(points_a), 3, 3) * 0.01
    radii, means2d, depths, _, _ = _fully_fused_projection(
        points_a.float(), covars, g.viewmat, g.K, g.width, g.height, camera_model=g.model
    )
    return radii[0], means2d[0], depths[0]


def _perspective_camera() -> Cameras:
    c2w = torch.tensor([[1.0, 0.0, 0.0, 0.2], [0.0, 0.0, -1.0, -3.0], [0.0, 1.0, 0.0, 0.1]])[None]
    return Cameras(
        camera_to_worlds=c2w,
        fx=200.0,
        fy=210.0,
        cx=64.0,
        cy=48.0,
        width=128,
        height=96,
        camera_type=CameraType.PERSPECTIVE,
    )


@pytest.mark.parametrize("which", ["orthophoto", "perspective"])
def test_points_on_nerfstudios_rays_land_on_their_pixels(which):
    """A point on nerfstudio's ray of pixel (i, j) (``Cameras.generate_rays``, scene units) lands,
    through the converted camera and gsplat's projection (A), on that pixel's centre (j + 0.5,
    i + 0.5) in front of the camera."""
    camera = OUTPUTS.cameras[17:18] if which == "orthophoto" else _perspective_camera()
    rays = camera.generate_rays(camera_indices=0)
    rows, cols = np.meshgrid([0, 7, 40, int(camera.height) - 1], [0, 11, 50, int(camera.width) - 1], indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    origins, directions = rays.origins[rows, cols], rays.directions[rows, cols]
    points = (origins + 2.5 * directions) / SCALE  # scene units -> A
    radii, means2d, depths = _project(points, camera)
    expected = torch.stack([torch.from_numpy(cols + 0.5), torch.from_numpy(rows + 0.5)], dim=-1).float()
    torch.testing.assert_close(means2d, expected, atol=2e-3, rtol=0)
    assert (depths > 0).all() and (radii > 0).all()


def test_dataset_cameras_put_atoms_where_the_projector_does():
    """For the tilt series' own cameras, gsplat's pixel of every atom is the one of atomsplat's
    detector convention (pixel (i, j) centred at ((j + 0.5 - W/2) p, (i + 0.5 - H/2) p))."""
    atoms = torch.from_numpy(ase.io.read(bundled_demo_path() / "ground_truth.xyz").positions).float()
    for k in (0, 20, 45):
        camera = OUTPUTS.cameras[k : k + 1]
        views = camera_views(camera, SCALE)
        detector = atoms @ views.rotations[0, :2].T + views.offsets[0]
        expected = detector / views.pixel_size + torch.tensor([views.width / 2.0, views.height / 2.0])
        radii, means2d, _ = _project(atoms, camera)
        torch.testing.assert_close(means2d, expected, atol=2e-3, rtol=0)
        assert (radii > 0).all()


def test_sphere_style_by_species_and_without():
    weights = np.array([900.0, 250.0, 880.0])
    colours, widths = sphere_style(weights, ["Pt", "Ni", "Pt"])
    assert colours.shape == (3, 3) and colours.min() >= 0.0 and colours.max() <= 1.0
    np.testing.assert_allclose(colours[1], jmol_colors[28], atol=1 / 255)
    np.testing.assert_allclose(widths, 0.5 * covalent_radii[[78, 28, 78]])
    colours, widths = sphere_style(weights, None)
    assert colours.shape == (3, 3) and np.all(widths == UNLABELLED_WIDTH)
    assert not np.allclose(colours[0], colours[1])  # coloured by weight


def test_spheres_need_cuda_and_are_no_output_on_the_cpu():
    camera = gsplat_camera(_perspective_camera(), SCALE)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        render_spheres(torch.zeros(2, 3), np.ones((2, 3)), np.ones(2), camera)
    from atomsplat.model.atomsplat_model import AtomSplatModelConfig

    model = AtomSplatModelConfig(init_count=20).setup(
        scene_box=OUTPUTS.scene_box, num_train_data=len(OUTPUTS.image_filenames), metadata=OUTPUTS.metadata
    )
    assert "spheres" not in model.get_outputs_for_camera(_perspective_camera())
