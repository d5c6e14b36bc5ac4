"""Microscope formats (MRC stacks with IMOD angle files, the paper's transforms.json layout), the one
reader that dispatches between them, the tilt-axis check, and bad input in each format."""

import json
import warnings

import mrcfile
import numpy as np
import pytest
import tifffile
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from PIL import Image
from scipy.spatial.transform import Rotation

from atomsplat.analysis.tilt_axis import TiltAxisWarning, check_tilt_axis
from atomsplat.data.dataparser import TomographyDataParserConfig
from atomsplat.data.formats import read_tilt_series, write_tilt_series
from atomsplat.data.mrc import read_mrc_series
from atomsplat.data.series import GROUND_TRUTH, METADATA, TiltSeries, TiltSeriesError
from atomsplat.data.tiff_dataset import PROJECTIONS
from atomsplat.data.transforms_json import SCENE_TO_SAMPLE, TRANSFORMS
from atomsplat.geometry import view_rotations
from atomsplat.render.projector import project_isotropic

ANGLES = np.array([-60.0, -41.5, -20.0, 0.0, 15.0, 37.25, 60.0])


def random_atoms(count, radius, seed):
    """(K, 3) positions uniform in a ball of ``radius``: an asymmetric little particle."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * radius * rng.uniform(0, 1, size=(count, 1)) ** (1 / 3)


def project(positions, angles, axis=0.0, shifts=None, pixel=0.5, shape=(48, 48), sigma=0.7):
    """(N, H, W) float64 projections of unit-weight atoms (A) with atomsplat's geometry."""
    count = len(positions)
    offsets = np.zeros((len(angles), 2)) if shifts is None else shifts
    return project_isotropic(
        torch.from_numpy(np.asarray(positions, float)),
        torch.full((count,), sigma, dtype=torch.float64),
        torch.ones(count, dtype=torch.float64),
        torch.from_numpy(view_rotations(angles, axis)),
        torch.from_numpy(np.asarray(offsets, float)),
        pixel,
        *shape,
    ).numpy()


def noisy_series(axis, angles=np.arange(-70.0, 71.0, 10.0), noise=0.02, seed=0):
    """A simulated tilt series about the detector axis at ``axis`` degrees, with random shifts of up
    to 1.5 pixels and Gaussian noise of ``noise`` times the maximum."""
    rng = np.random.default_rng(seed)
    shifts = rng.uniform(-0.75, 0.75, size=(len(angles), 2))
    stack = project(random_atoms(60, 9.0, seed), angles, axis, shifts)
    return stack + noise * stack.max() * rng.normal(size=stack.shape)


# --- MRC stacks with IMOD angle files ---------------------------------------------------------------


def write_mrc(path, data, voxel_size=0.0, angles=ANGLES, angle_suffix=".rawtlt"):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    if angles is not None:
        path.with_suffix(angle_suffix).write_text("".join(f"{a:8.2f}\n" for a in angles))
    return path


def counts(shape=(len(ANGLES), 10, 12), dtype=np.int16, seed=0):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(max(info.min, -3000), min(info.max, 30000), size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float16, np.float32])
def test_mrc_stack_converts_to_float32_exactly(tmp_path, dtype):
    data = counts(dtype=np.int16).astype(dtype) if dtype in (np.float16, np.float32) else counts(dtype=dtype)
    path = write_mrc(tmp_path / "tilt.st", data, voxel_size=0.42)
    series = read_tilt_series(path)
    assert series.projections.dtype == np.float32 and series.shape == data.shape
    np.testing.assert_array_equal(series.projections, data.astype(np.float64))
    np.testing.assert_array_equal(series.tilt_angles, ANGLES)
    assert series.pixel_size == pytest.approx(0.42) and series.tilt_axis_angle == 0.0
    assert series.source == path and series.images is None and series.shifts is None


def test_mrc_counts(tmp_path):
    """int16 counts are read exactly as counts; metadata.json beside the stack declares otherwise or
    gives a gain; signed data below zero (a detector offset) are read but are not counts."""
    values = np.abs(counts(dtype=np.int16))
    values.flat[0] = np.iinfo(np.int16).max
    path = write_mrc(tmp_path / "tilt.st", values, voxel_size=0.42)
    series = read_tilt_series(path)
    assert series.counts is True and series.gain == 1.0 and series.projections.dtype == np.float32
    np.testing.assert_array_equal(series.projections, values)
    (tmp_path / METADATA).write_text(json.dumps({"counts": False}))
    assert read_tilt_series(path).counts is False
    (tmp_path / METADATA).write_text(json.dumps({"gain": 0.25}))
    series = read_tilt_series(path)
    assert series.counts is True and series.gain == 0.25 and series.extra == {}
    (tmp_path / METADATA).unlink()
    offset = write_mrc(tmp_path / "offset.mrc", counts(dtype=np.int16), voxel_size=0.42)
    assert read_tilt_series(offset).counts is False
    (tmp_path / METADATA).write_text(json.dumps({"counts": True}))
    with pytest.raises(TiltSeriesError, match=r"offset\.mrc: projections declared as counts hold \d+ negative values"):
        read_tilt_series(offset)


def test_mrc_8_bit_counts_when_declared(tmp_path):
    values = np.random.default_rng(5).integers(0, 127, size=(len(ANGLES), 10, 12), endpoint=True).astype(np.int8)
    path = write_mrc(tmp_path / "tilt.mrc", values, voxel_size=0.5)
    (tmp_path / METADATA).write_text(json.dumps({"counts": True}))
    series = read_tilt_series(path)
    assert series.counts is True
    np.testing.assert_array_equal(series.projections, values)
    (tmp_path / METADATA).write_text(json.dumps({"counts": False}))
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: MRC mode 0 \(int8\).*8-bit.*\"counts\": true"):
        read_tilt_series(path)


def test_single_image_mrc_is_one_projection(tmp_path):
    path = write_mrc(tmp_path / "one.mrc", np.ones((6, 7), np.float32), voxel_size=0.3, angles=[12.0])
    assert read_tilt_series(path).shape == (1, 6, 7)


def test_mrc_pixel_size_sources_and_precedence(tmp_path):
    data = counts()
    # unset (0) and the placeholder 1.0 are no pixel size: the error says how to give one
    for placeholder in (0.0, 1.0):
        path = write_mrc(tmp_path / "tilt.mrc", data, voxel_size=placeholder)
        with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: no pixel size.*placeholder.*pixel_size.*metadata\.json"):
            read_tilt_series(path)
        assert read_tilt_series(path, pixel_size=0.33).pixel_size == 0.33
    (tmp_path / METADATA).write_text(
        json.dumps({"pixel_size": 0.27, "tilt_axis_angle": 4.0, "elements": ["Pt"], "note": 1})
    )
    series = read_tilt_series(path)
    assert (series.pixel_size, series.tilt_axis_angle, series.elements, series.extra) == (
        0.27,
        4.0,
        ["Pt"],
        {"note": 1},
    )
    # the header's own pixel size, when set; metadata.json wins over it (with a warning if they differ)
    path = write_mrc(tmp_path / "tilt.mrc", data, voxel_size=0.5)
    with pytest.warns(UserWarning, match=r"metadata\.json: pixel_size 0\.27 A differs from the voxel size 0\.5 A"):
        assert read_tilt_series(path).pixel_size == 0.27
    (tmp_path / METADATA).unlink()
    assert read_tilt_series(path).pixel_size == 0.5
    assert read_tilt_series(path, pixel_size=0.61).pixel_size == 0.61  # the override wins over all


def test_mrc_angle_file_choice(tmp_path):
    data = counts()
    raw, refined = ANGLES, ANGLES + 0.5
    for name in ("tilt.ali", "tilt.st"):
        write_mrc(tmp_path / name, data, voxel_size=0.5, angles=raw, angle_suffix=".rawtlt")
        (tmp_path / "tilt.tlt").write_text("\n".join(str(a) for a in refined))
    # an aligned stack takes the refined angles, a raw stack the microscope's
    np.testing.assert_allclose(read_tilt_series(tmp_path / "tilt.ali").tilt_angles, refined)
    np.testing.assert_allclose(read_tilt_series(tmp_path / "tilt.st").tilt_angles, raw)
    (tmp_path / "tilt.rawtlt").unlink()
    np.testing.assert_allclose(read_tilt_series(tmp_path / "tilt.st").tilt_angles, refined)  # whichever exists


def test_mrc_missing_angle_file(tmp_path):
    path = write_mrc(tmp_path / "tilt.st", counts(), voxel_size=0.5, angles=None)
    with pytest.raises(
        TiltSeriesError, match=r"tilt\.st: no tilt angles: expected tilt\.rawtlt or tilt\.tlt beside it"
    ):
        read_tilt_series(path)


def test_mrc_angle_count_mismatch(tmp_path):
    path = write_mrc(tmp_path / "tilt.st", counts(), voxel_size=0.5, angles=ANGLES[:-2])
    with pytest.raises(TiltSeriesError, match=r"tilt\.rawtlt: 5 tilt angles, but .*tilt\.st holds 7 projections"):
        read_tilt_series(path)


def test_truncated_and_foreign_mrc(tmp_path):
    path = write_mrc(tmp_path / "tilt.mrc", counts(), voxel_size=0.5)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: cannot read as an MRC stack"):
        read_tilt_series(path)
    path.write_bytes(whole[:500])  # not even a whole header
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: cannot read as an MRC stack"):
        read_tilt_series(path)
    path.write_bytes(b"not an MRC file " * 200)
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: cannot read as an MRC stack"):
        read_tilt_series(path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")  # mrcfile, writing the test file
def test_mrc_nan_values(tmp_path):
    data = counts().astype(np.float32)
    data[4, 2, 3] = np.nan
    path = write_mrc(tmp_path / "tilt.mrc", data, voxel_size=0.5)
    with pytest.raises(
        TiltSeriesError, match=r"tilt\.mrc: projections contain 1 NaN or infinite values \(pages \[4\]\)"
    ):
        read_tilt_series(path)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # mrcfile's voxel size of 0 pixels
def test_mrc_zero_size_images(tmp_path):
    path = write_mrc(tmp_path / "tilt.mrc", np.zeros((len(ANGLES), 0, 8), np.float32), voxel_size=0.5)
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: the stack is empty, shape \(7, 0, 8\)"):
        read_tilt_series(path)


def test_mrc_refuses_8_bit_data(tmp_path):
    path = write_mrc(tmp_path / "tilt.mrc", counts(dtype=np.int8), voxel_size=0.5)
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: MRC mode 0 \(int8\).*8-bit"):
        read_tilt_series(path)


@pytest.mark.parametrize("voxel_size", [1e-10, 0.004, 35.0, -0.5])
def test_mrc_absurd_header_pixel_size(tmp_path, voxel_size):
    path = write_mrc(tmp_path / "tilt.mrc", counts(), voxel_size=voxel_size)
    with pytest.raises(
        TiltSeriesError, match=r"tilt\.mrc: the voxel size in the MRC header: pixel_size must be a number of Angstrom"
    ):
        read_tilt_series(path)


def test_absurd_pixel_size_override(tmp_path):
    path = write_mrc(tmp_path / "tilt.mrc", counts(), voxel_size=0.5)
    with pytest.raises(
        TiltSeriesError, match=r"tilt\.mrc: the pixel_size override: pixel_size must be a number of Angstrom"
    ):
        read_tilt_series(path, pixel_size=250.0)


def test_mrc_non_square_pixels(tmp_path):
    path = write_mrc(tmp_path / "tilt.mrc", counts(), voxel_size=(0.5, 0.7, 0.5))
    with pytest.raises(TiltSeriesError, match=r"tilt\.mrc: pixels are not square"):
        read_mrc_series(path)


# --- the paper's transforms.json layout ---------------------------------------------------------------


def paper_camera_to_world(theta, offset=(0.0, 0.0)):
    """DESIGN.md's recipe: rotation of Euler (z, y, x) = (0, 0, theta - 90 degrees), translation
    (0, cos theta, sin theta); ``offset`` moves the camera along its own x and y axes (scene units)."""
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("zyx", (0.0, 0.0, theta - 90.0), degrees=True).as_matrix()
    t = np.deg2rad(theta)
    c2w[:3, 3] = (0.0, np.cos(t), np.sin(t)) + offset[0] * c2w[:3, 0] + offset[1] * c2w[:3, 1]
    return c2w


def write_paper_layout(directory, projections, thetas, offsets=None, pixel_size=None, rgb=True):
    """A tilt series as the paper's code stores it: 8-bit images of 256 * p / max (clipped), in RGB."""
    (directory / "images").mkdir(parents=True)
    top = projections.max()
    frames = []
    for k, (projection, theta) in enumerate(zip(projections, thetas)):
        grey = np.clip(256.0 * projection / top, 0, 255).astype(np.uint8)
        name = f"images/frame_{k:05d}.png"
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2) if rgb else grey).save(directory / name)
        offset = (0.0, 0.0) if offsets is None else offsets[k]
        frames.append({"file_path": name, "transform_matrix": paper_camera_to_world(theta, offset).tolist()})
    n, height, width = projections.shape
    transforms = {
        "camera_model": "ORTHOPHOTO",
        "fl_x": width,
        "fl_y": height,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "frames": frames,
    }
    (directory / TRANSFORMS).write_text(json.dumps(transforms, indent=2))
    if pixel_size is not None:
        (directory / METADATA).write_text(json.dumps({"pixel_size": pixel_size, "elements": ["Au"]}))
    return directory


def test_paper_angles_read_back(tmp_path):
    """Angles written with the DESIGN.md recipe come back as tilt angles -theta (the convention of
    atomsplat.data.transforms_json), images as float32 grey values, with the metadata's pixel size."""
    thetas = np.array([-90.0, -70.0, -33.3, -3.0, 0.0, 1.0, 45.5, 70.0, 89.0])
    projections = np.random.default_rng(1).uniform(0.0, 1.0, size=(len(thetas), 6, 8))
    directory = write_paper_layout(tmp_path / "paper", projections, thetas, pixel_size=0.3)
    series = read_tilt_series(directory)
    np.testing.assert_allclose(series.tilt_angles, -thetas, atol=1e-9)
    assert series.pixel_size == 0.3 and series.tilt_axis_angle == 0.0 and series.shifts is None
    assert series.elements == ["Au"] and series.source == directory / TRANSFORMS
    assert series.projections.dtype == np.float32 and series.shape == projections.shape
    expected = np.clip(256.0 * projections / projections.max(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(series.projections, expected)
    assert series.images == [directory / f"images/frame_{k:05d}.png" for k in range(len(thetas))]
    # the same through the transforms.json path, and from grey (not RGB) images
    np.testing.assert_array_equal(read_tilt_series(directory / TRANSFORMS).tilt_angles, series.tilt_angles)
    grey = read_tilt_series(write_paper_layout(tmp_path / "grey", projections, thetas, pixel_size=0.3, rgb=False))
    np.testing.assert_array_equal(grey.projections, series.projections)


def test_paper_layout_is_never_counts(tmp_path):
    """Its 8-bit grey values (integers, scaled to the series maximum) are not detector counts,
    unless a metadata.json beside transforms.json says they are."""
    projections = np.random.default_rng(4).poisson(5.0, size=(3, 6, 8)).astype(float)
    directory = write_paper_layout(tmp_path / "paper", projections, [-10.0, 0.0, 10.0], pixel_size=0.3)
    series = read_tilt_series(directory)
    assert series.counts is False and series.gain == 1.0
    assert series.projections.min() >= 0 and np.array_equal(series.projections, np.rint(series.projections))
    (directory / METADATA).write_text(json.dumps({"pixel_size": 0.3, "counts": True, "gain": 0.5}))
    series = read_tilt_series(directory)
    assert series.counts is True and series.gain == 0.5 and series.extra == {}


def render_through_nerfstudio(c2w, centres, sigma, width, height, oversample=4):
    """Pixel means of line integrals of unit-weight isotropic Gaussians (scene units) along the rays
    of nerfstudio ORTHOPHOTO cameras with the paper's intrinsics (fl_x = W, fl_y = H, centred)."""
    cameras = Cameras(
        camera_to_worlds=torch.from_numpy(c2w[:, :3, :4]).float(),
        fx=float(width * oversample),
        fy=float(height * oversample),
        cx=width * oversample / 2.0,
        cy=height * oversample / 2.0,
        width=width * oversample,
        height=height * oversample,
        camera_type=CameraType.ORTHOPHOTO,
    )
    images = []
    for k in range(len(c2w)):
        rays = cameras.generate_rays(camera_indices=k)
        origins, directions = rays.origins.double().numpy(), rays.directions.double().numpy()
        rel = centres[None, None] - origins[..., None, :]  # (h, w, K, 3)
        along = np.einsum("hwkc,hwc->hwk", rel, directions)
        distance2 = (rel**2).sum(-1) - along**2
        fine = np.exp(-distance2 / (2 * sigma**2)).sum(-1) / (2 * np.pi * sigma**2)
        images.append(fine.reshape(height, oversample, width, oversample).mean(axis=(1, 3)))
    return np.stack(images)


def test_paper_view_is_our_view_of_minus_theta(tmp_path):
    """What nerfstudio's ORTHOPHOTO model renders from the paper's cameras is what atomsplat's
    geometry projects at tilt -theta, in the sample frame S = SCENE_TO_SAMPLE @ X: an asymmetric
    set of Gaussians, with two frames moved off the viewing axis (shifts)."""
    width = height = 40
    pixel = 0.5  # A; the scene's unit box is width * pixel = 20 A wide
    centres = random_atoms(25, 0.3, seed=3)  # scene units
    sigma = 2.0 / width  # two pixels
    thetas = np.array([-70.0, -35.0, -10.0, 0.0, 20.0, 55.0, 80.0])
    offsets = np.zeros((len(thetas), 2))
    offsets[2], offsets[5] = (0.05, -0.02), (-0.03, 0.075)  # scene units: 2 and 3 pixels
    c2w = np.stack([paper_camera_to_world(t, o) for t, o in zip(thetas, offsets)])
    images = render_through_nerfstudio(c2w, centres, sigma, width, height)
    directory = write_paper_layout(tmp_path / "paper", images, thetas, offsets=offsets)

    series = read_tilt_series(directory, pixel_size=pixel)
    np.testing.assert_allclose(series.tilt_angles, -thetas, atol=1e-9)
    expected_shifts = np.zeros((len(thetas), 2))
    expected_shifts[2], expected_shifts[5] = (-2.0 * pixel, -0.8 * pixel), (1.2 * pixel, 3.0 * pixel)
    np.testing.assert_allclose(series.shifts, expected_shifts, atol=1e-6)

    sample = centres @ SCENE_TO_SAMPLE.T * width * pixel  # A

    def ours(angles):
        image = project(
            sample, angles, shifts=series.shifts, pixel=pixel, shape=(height, width), sigma=sigma * width * pixel
        )
        return 256.0 * image / image.max()

    # 8-bit truncation (< 1) and pixel means of 4 x 4 samples against exact pixel integrals
    assert np.abs(ours(series.tilt_angles) - series.projections).max() < 1.5
    assert np.abs(ours(thetas) - series.projections).max() > 50  # +theta in this frame is another view


def test_transforms_frame_not_a_tilt_about_x(tmp_path):
    directory = write_paper_layout(tmp_path / "paper", np.ones((3, 4, 4)), [-10.0, 0.0, 10.0], pixel_size=0.3)
    transforms = json.loads((directory / TRANSFORMS).read_text())
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("zyx", (15.0, 0.0, -80.0), degrees=True).as_matrix()
    transforms["frames"][1]["transform_matrix"] = c2w.tolist()
    (directory / TRANSFORMS).write_text(json.dumps(transforms))
    with pytest.raises(
        TiltSeriesError, match=r"transforms\.json: frame 1 \(images/frame_00001\.png\): .*not a tilt about the x axis"
    ):
        read_tilt_series(directory)
    transforms["frames"][1]["transform_matrix"] = (2 * c2w).tolist()
    (directory / TRANSFORMS).write_text(json.dumps(transforms))
    with pytest.raises(TiltSeriesError, match=r"frame 1 .*not a proper rotation"):
        read_tilt_series(directory)
    transforms["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    (directory / TRANSFORMS).write_text(json.dumps(transforms))
    with pytest.raises(TiltSeriesError, match=r"frame 1 .*3 x 4 or 4 x 4"):
        read_tilt_series(directory)


def test_transforms_needs_a_pixel_size(tmp_path):
    directory = write_paper_layout(tmp_path / "paper", np.ones((3, 4, 4)), [-10.0, 0.0, 10.0])
    with pytest.raises(
        TiltSeriesError,
        match=r"transforms\.json: no pixel size: this layout does not store it.*"
        r"\{\"pixel_size\": 0\.25\} in metadata\.json.*pixel-size",
    ):
        read_tilt_series(directory)
    assert read_tilt_series(directory, pixel_size=0.2).pixel_size == 0.2
    (directory / METADATA).write_text(json.dumps({"pixel_size": 0.3, "tilt_axis_angle": 90}))
    with pytest.raises(TiltSeriesError, match=r"metadata\.json: \"tilt_axis_angle\" is not used with transforms\.json"):
        read_tilt_series(directory)
    (directory / METADATA).write_text(json.dumps({"pixel_size": 3e-10}))
    with pytest.raises(TiltSeriesError, match=r"metadata\.json: pixel_size must be a number of Angstrom"):
        read_tilt_series(directory)


def test_transforms_bad_images(tmp_path):
    directory = write_paper_layout(tmp_path / "paper", np.ones((3, 4, 4)), [-10.0, 0.0, 10.0], pixel_size=0.3)
    frame = directory / "images/frame_00001.png"
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(frame)
    with pytest.raises(TiltSeriesError, match=r"frame_00001\.png: an RGB image whose channels differ"):
        read_tilt_series(directory)
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(frame)
    with pytest.raises(TiltSeriesError, match=r"frame_00001\.png: image mode RGBA"):
        read_tilt_series(directory)
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(frame)
    with pytest.raises(
        TiltSeriesError, match=r"frame 1 \(images/frame_00001\.png\): image of 4 x 5 pixels, the first frame's is 4 x 4"
    ):
        read_tilt_series(directory)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(frame)
    frame.write_bytes(frame.read_bytes()[:60])  # truncated
    with pytest.raises(TiltSeriesError, match=r"frame_00001\.png: cannot read as an image"):
        read_tilt_series(directory)
    frame.unlink()
    with pytest.raises(TiltSeriesError, match=r"frame_00001\.png: missing"):
        read_tilt_series(directory)


def test_transforms_bad_file(tmp_path):
    directory = write_paper_layout(tmp_path / "paper", np.ones((3, 4, 4)), [-10.0, 0.0, 10.0], pixel_size=0.3)
    transforms = json.loads((directory / TRANSFORMS).read_text())
    for change, message in [
        ({"camera_model": "OPENCV"}, r"camera_model is 'OPENCV'; .*ORTHOPHOTO"),
        ({"frames": []}, r"no \"frames\""),
        ({"cx": 1.0}, r"\"cx\" is 1\.0 but the images are 4 x 4 pixels"),
        (
            {"frames": [{"file_path": "images/frame_00000.png"}]},
            r"frame 0 needs a \"file_path\" and a \"transform_matrix\"",
        ),
    ]:
        (directory / TRANSFORMS).write_text(json.dumps({**transforms, **change}))
        with pytest.raises(TiltSeriesError, match=r"transforms\.json: " + message):
            read_tilt_series(directory)
    (directory / TRANSFORMS).write_text("{ not json")
    with pytest.raises(TiltSeriesError, match=r"transforms\.json: not valid JSON"):
        read_tilt_series(directory)


# --- one entry point ---------------------------------------------------------------------------------


def test_reader_dispatch(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        TiltSeriesError, match=r"notes\.txt: not a tilt series: .*MRC stack \(\.mrc, \.mrcs, \.st, \.ali, \.preali\)"
    ):
        read_tilt_series(tmp_path / "notes.txt")
    with pytest.raises(TiltSeriesError, match=r"nowhere: no such file or directory"):
        read_tilt_series(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        TiltSeriesError, match=r"projections\.tif: missing \(a dataset directory holds .*transforms\.json"
    ):
        read_tilt_series(tmp_path / "empty")
    # a directory with both layouts is read from its float32 stack
    both = write_paper_layout(tmp_path / "both", np.ones((2, 4, 4)), [0.0, 10.0], pixel_size=0.3)
    (both / METADATA).unlink()
    write_tilt_series(
        both, TiltSeries(projections=np.full((2, 4, 4), 7.5, np.float32), tilt_angles=[0.0, 10.0], pixel_size=0.4)
    )
    series = read_tilt_series(both)
    assert series.source == both / PROJECTIONS and series.images is None
    np.testing.assert_array_equal(series.projections, 7.5)


def test_dataparser_reads_mrc_and_paper_layouts(tmp_path):
    (tmp_path / "mrc").mkdir()
    path = write_mrc(tmp_path / "mrc" / "tilt.ali", counts(), voxel_size=1.0, angle_suffix=".tlt")
    (tmp_path / "mrc" / GROUND_TRUTH).write_text("1\n\nAu 0 0 0\n")
    outputs = TomographyDataParserConfig(data=path, pixel_size=0.35).setup().get_dataparser_outputs("train")
    assert outputs.metadata["tilt_series"].pixel_size == 0.35
    assert outputs.dataparser_scale == pytest.approx(2.0 / (12 * 0.35))
    assert outputs.metadata["ground_truth"] == tmp_path / "mrc" / GROUND_TRUTH
    assert len(outputs.image_filenames) == len(ANGLES) and all(p.is_file() for p in outputs.image_filenames)
    with pytest.raises(TiltSeriesError, match="no pixel size"):
        TomographyDataParserConfig(data=path).setup().get_dataparser_outputs("train")
    # the paper's layout: stock nerfstudio methods read its own 8-bit images
    directory = write_paper_layout(tmp_path / "paper", np.ones((3, 4, 4)), [-10.0, 0.0, 10.0], pixel_size=0.3)
    outputs = TomographyDataParserConfig(data=directory).setup().get_dataparser_outputs("train")
    assert outputs.image_filenames == [directory / f"images/frame_{k:05d}.png" for k in range(3)]
    assert outputs.metadata["ground_truth"] is None


# --- the tilt-axis check -----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0.0, 35.0, 90.0])
def test_tilt_axis_check_on_simulated_series(axis):
    stack = noisy_series(axis)
    assert not check_tilt_axis(stack, axis).suspicious
    assert check_tilt_axis(stack, axis).ratio < 0.5
    wrong = check_tilt_axis(stack, axis + 90.0)
    assert wrong.suspicious and wrong.ratio > 3.0
    assert f"detector axis at {axis:g} degrees" in wrong.message()
    assert f"tilt_axis_angle {axis + 90:g} degrees" in wrong.message()


def test_tilt_axis_check_gives_no_verdict_on_noise_or_flat_series():
    noise = np.random.default_rng(0).normal(size=(15, 40, 40))
    assert not check_tilt_axis(noise, 0.0).suspicious and not check_tilt_axis(noise, 90.0).suspicious
    flat = check_tilt_axis(np.ones((5, 8, 8)), 0.0)
    assert flat.along == pytest.approx(0.0, abs=1e-20) and not flat.suspicious
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        check_tilt_axis(np.ones((8, 8)))


def test_reader_warns_about_a_wrong_tilt_axis(tmp_path):
    """A series tilted about the detector y axis but declared about x (tilt_axis_angle 0)."""
    angles = np.arange(-70.0, 71.0, 10.0)
    truth = TiltSeries(
        projections=noisy_series(90.0, angles).astype(np.float32),
        tilt_angles=angles,
        pixel_size=0.5,
        tilt_axis_angle=90.0,
    )
    right = write_tilt_series(tmp_path / "right", truth)
    wrong = write_tilt_series(
        tmp_path / "wrong", TiltSeries(projections=truth.projections, tilt_angles=angles, pixel_size=0.5)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiltAxisWarning)
        read_tilt_series(right)
    message = (
        r"wrong/projections\.tif: the projections look tilted about the detector axis at 90 degrees, "
        r"not about the declared tilt axis \(tilt_axis_angle 0 degrees\)"
    )
    with pytest.warns(TiltAxisWarning, match=message):
        read_tilt_series(wrong)
    with pytest.warns(TiltAxisWarning, match=message):  # the DataParser reads through the same reader
        TomographyDataParserConfig(data=wrong).setup().get_dataparser_outputs("train")
    # an MRC stack of the same series, with its axis declared beside it or not
    (tmp_path / "mrc").mkdir()
    stack = write_mrc(
        tmp_path / "mrc" / "tilt.ali", truth.projections, voxel_size=0.5, angles=angles, angle_suffix=".tlt"
    )
    with pytest.warns(TiltAxisWarning, match=r"tilt\.ali: .*detector axis at 90 degrees"):
        read_tilt_series(stack)
    (tmp_path / "mrc" / METADATA).write_text(json.dumps({"tilt_axis_angle": 90.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiltAxisWarning)
        assert read_tilt_series(stack).tilt_axis_angle == 90.0


def test_integer_stacks_follow_one_rule_in_tiff_and_mrc(tmp_path):
    """The same uint16 counts give the same series from a TIFF dataset and from an MRC stack."""
    values = counts(dtype=np.uint16)
    directory = write_tilt_series(
        tmp_path / "d", TiltSeries(projections=values.astype(np.float32), tilt_angles=ANGLES, pixel_size=0.5)
    )
    tifffile.imwrite(directory / PROJECTIONS, values)
    stack = write_mrc(tmp_path / "tilt.mrc", values, voxel_size=0.5)
    from_tiff, from_mrc = read_tilt_series(directory), read_tilt_series(stack)
    for series in (from_tiff, from_mrc):
        assert series.counts is True and series.projections.dtype == np.float32
        np.testing.assert_array_equal(series.projections, values)
