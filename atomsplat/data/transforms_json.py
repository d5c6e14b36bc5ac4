"""The paper's reference layout: a nerfstudio ``transforms.json`` of ORTHOPHOTO frames and 8-bit images.

The paper's public code writes, for each tilt angle theta, a frame whose ``transform_matrix``
(camera to world) has the rotation of Euler angles (z, y, x) = (0, 0, theta - 90 degrees), i.e.
a rotation by theta - 90 degrees about x, and the translation (0, cos theta, sin theta); its image
is ``256 * projection / max`` over the series as an 8-bit PNG (grey values in RGB), with
``"camera_model": "ORTHOPHOTO"``, ``fl_x`` = W, ``fl_y`` = H, ``cx`` = W / 2, ``cy`` = H / 2.

Geometry. Through nerfstudio's ORTHOPHOTO camera model (:mod:`atomsplat.geometry`,
:func:`~atomsplat.geometry.views_from_camera_to_worlds`) such a frame sees the scene point X at the
detector point ``(R_x(-90 - theta) X)[:2]``. This reader puts the sample frame at
``S = R_x(-90 degrees) X`` (a proper rotation of the scene), where the frame becomes the view
``R_x(-theta)``: **a tilt angle theta in transforms.json is the tilt angle -theta here**, with
the tilt axis along the detector x axis. (Tilt angles +theta with a mirrored sample would fit the
images equally; projections cannot tell a sample from its mirror image, and this reader keeps
the handedness that nerfstudio's camera model gives the scene.) Frames whose rotation is not a
rotation about x are refused; a translation off the viewing axis becomes the projection's shift.

Images are read as float32 grey values (0..255 for 8-bit files: arbitrary units, the absolute
intensities are lost); grey images and RGB images with three equal channels are accepted. Being
scaled to the series maximum, they are never detector counts (``counts=False``) unless a
``metadata.json`` beside ``transforms.json`` says ``"counts": true`` (with a ``"gain"``, as in
the dataset directory format). The pixel size is lost as well (the scene is the unit box): it
comes from ``"pixel_size"`` in that ``metadata.json``, or from the ``pixel_size`` argument.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from atomsplat.data.series import (
    METADATA,
    PIXEL_SIZE_HINT,
    TiltSeries,
    TiltSeriesError,
    check_pixel_size,
    counts_fields,
    metadata_elements,
    metadata_number,
    read_metadata,
)
from atomsplat.geometry import rotation_x, views_from_camera_to_worlds

TRANSFORMS = "transforms.json"

# Our sample frame from the scene frame of transforms.json: S = SCENE_TO_SAMPLE @ X.
SCENE_TO_SAMPLE = rotation_x(-90.0)

# Rotation matrices stored as JSON text are trusted to this absolute error.
MATRIX_TOLERANCE = 1e-5


def view_of_frame(camera_to_world: np.ndarray):
    """Tilt angle and detector shift of one ORTHOPHOTO camera, in the sample frame of this module.

    Args:
        camera_to_world: (3, 4) or (4, 4) nerfstudio camera-to-world matrix.

    Returns:
        tilt angle in degrees, in [-180, 180); shift (2,) on the detector in the scene's length unit.

    Raises:
        ValueError: the matrix is not a rigid motion, or its rotation is not a tilt about x.
    """
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    if c2w.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(c2w)):
        raise ValueError(f"transform_matrix must be a finite 3 x 4 or 4 x 4 matrix, got shape {c2w.shape}")
    rotation = c2w[:3, :3]
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > MATRIX_TOLERANCE or np.linalg.det(rotation) < 0:
        raise ValueError("the rotation part of transform_matrix is not a proper rotation")
    views, shifts = views_from_camera_to_worlds(torch.from_numpy(c2w[None, :3, :4]))
    view = views[0].numpy() @ SCENE_TO_SAMPLE.T
    if abs(view[0, 0] - 1.0) > MATRIX_TOLERANCE:
        raise ValueError(
            "transform_matrix is not a tilt about the x axis as the paper's layout writes it (rotation by "
            f"theta - 90 degrees about x); its camera x axis is {np.round(rotation[:, 0], 6).tolist()}, not (1, 0, 0)"
        )
    angle = math.degrees(math.atan2(view[2, 1], view[1, 1]))
    return (angle + 180.0) % 360.0 - 180.0, shifts[0].numpy()


def read_frame_image(path: Path) -> np.ndarray:
    """One frame's image as (H, W) float32 grey values: a grey image, or RGB with equal channels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except FileNotFoundError as err:
        raise TiltSeriesError(f"{path}: missing") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ... for truncated or foreign files
        raise TiltSeriesError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from err
    if mode == "RGB":
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
            raise TiltSeriesError(f"{path}: an RGB image whose channels differ; a projection is a grey image")
        pixels = pixels[..., 0]
    elif pixels.ndim != 2 or mode in ("1", "P"):
        raise TiltSeriesError(f"{path}: image mode {mode}; expected a grey image or RGB with three equal channels")
    return pixels.astype(np.float32)


def check_intrinsics(transforms: dict, shape, path: Path, need_focal: bool):
    """Check the camera intrinsics of ``transforms`` against the images' (H, W) ``shape``.

    Returns:
        (fl_x, fl_y) as an array when ``need_focal`` (to convert shifts), else None.
    """
    height, width = shape
    try:
        for key, expected in (("w", width), ("h", height), ("cx", width / 2.0), ("cy", height / 2.0)):
            if key in transforms and abs(float(transforms[key]) - expected) > 1e-6:
                raise TiltSeriesError(
                    f'{path}: "{key}" is {transforms[key]!r} but the images are {width} x {height} pixels '
                    f"(expected {expected:g}: the principal point at the image centre)"
                )
        if not need_focal:
            return None
        if "fl_x" not in transforms or "fl_y" not in transforms:
            raise TiltSeriesError(f'{path}: frames are shifted off the viewing axis, which needs "fl_x" and "fl_y"')
        return np.array([float(transforms["fl_x"]), float(transforms["fl_y"])])
    except (TypeError, ValueError) as err:
        raise TiltSeriesError(f"{path}: camera intrinsics must be numbers ({err})") from None


def read_transforms_series(path, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check a tilt series in the paper's layout (see the module docstring).

    Args:
        path: the ``transforms.json`` file.
        pixel_size: pixel size in A; required unless ``metadata.json`` beside the file gives it.
    """
    path = Path(path)
    directory = path.parent
    try:
        transforms = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TiltSeriesError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(transforms, dict):
        raise TiltSeriesError(f"{path}: must hold a JSON object")
    model = transforms.get("camera_model")
    if model != "ORTHOPHOTO":
        raise TiltSeriesError(
            f'{path}: camera_model is {model!r}; a tilt series in this layout has "camera_model": "ORTHOPHOTO"'
        )
    frames = transforms.get("frames")
    if not isinstance(frames, list) or not frames:
        raise TiltSeriesError(f'{path}: no "frames"')
    meta_path = directory / METADATA
    meta = read_metadata(meta_path, optional=True)
    for key in ("tilt_axis_angle", "shifts"):
        if key in meta:
            raise TiltSeriesError(
                f'{meta_path}: "{key}" is not used with {path.name}: its transform matrices give the views'
            )
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size, f"{path}: the pixel_size override")
    elif "pixel_size" in meta:
        pixel_size = check_pixel_size(metadata_number(meta, "pixel_size", meta_path), str(meta_path))
    else:
        raise TiltSeriesError(
            f"{path}: no pixel size: this layout does not store it (its scene is the unit box); {PIXEL_SIZE_HINT} "
            f"(beside {path.name}: {meta_path})"
        )

    images, projections, angles, shifts = [], [], [], []
    for k, frame in enumerate(frames):
        if (
            not isinstance(frame, dict)
            or not isinstance(frame.get("file_path"), str)
            or "transform_matrix" not in frame
        ):
            raise TiltSeriesError(f'{path}: frame {k} needs a "file_path" and a "transform_matrix"')
        where = f"{path}: frame {k} ({frame['file_path']})"
        try:
            angle, shift = view_of_frame(frame["transform_matrix"])
        except (TypeError, ValueError) as err:
            raise TiltSeriesError(f"{where}: {err}") from None
        image_path = directory / frame["file_path"]
        image = read_frame_image(image_path)
        if projections and image.shape != projections[0].shape:
            raise TiltSeriesError(
                f"{where}: image of {image.shape[1]} x {image.shape[0]} pixels, the first frame's is "
                f"{projections[0].shape[1]} x {projections[0].shape[0]}"
            )
        images.append(image_path)
        projections.append(image)
        angles.append(angle)
        shifts.append(shift)
    shifts = np.asarray(shifts)
    intrinsics = check_intrinsics(transforms, projections[0].shape, path, need_focal=np.abs(shifts).max() > 1e-6)
    # a shift in scene units is fl pixels per unit (fl_x = W, fl_y = H in the paper's layout)
    shifts = shifts * intrinsics * pixel_size if intrinsics is not None else None
    known = {"pixel_size", "elements", "counts", "gain", "offset"}
    return TiltSeries(
        projections=np.stack(projections),
        tilt_angles=np.asarray(angles),
        pixel_size=pixel_size,
        shifts=shifts,
        elements=metadata_elements(meta, meta_path),
        **counts_fields(meta, meta_path, counts=False),
        extra={k: v for k, v in meta.items() if k not in known},
        source=path,
        images=images,
        where=path,
    )
