"""Reading and writing the tilt-series dataset directory of DESIGN.md.

A dataset is a directory::

    projections.tif    float32 stack (N, H, W), one projection a page
    tilt_angles.txt    N angles in degrees, one a line; lines starting with # are comments
    metadata.json      {"pixel_size": A, "tilt_axis_angle": deg, "shifts": [[x, y], ...] A,
                        "elements": ["Au", ...], ...}
    ground_truth.xyz   optional: true atoms (extended XYZ, A, sample frame)

Every problem with the files raises :class:`TiltSeriesError`, whose message names the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

PROJECTIONS = "projections.tif"
ANGLES = "tilt_angles.txt"
METADATA = "metadata.json"
GROUND_TRUTH = "ground_truth.xyz"

# Pixel sizes outside this range (A) are almost surely a unit mistake (nm or m for A).
PIXEL_SIZE_RANGE = (0.01, 20.0)


class TiltSeriesError(ValueError):
    """A tilt-series dataset on disk is missing, unreadable or inconsistent."""


@dataclass
class TiltSeries:
    """A tilt series in memory.

    Attributes:
        projections: (N, H, W) float32 projections; pixel (i, j) as in :mod:`atomsplat.geometry`.
        tilt_angles: (N,) float64 tilt angles, degrees.
        pixel_size: detector pixel size, A.
        tilt_axis_angle: in-plane angle of the tilt axis from the detector x axis, degrees.
        shifts: (N, 2) known per-projection shifts in A, or None for none.
        elements: species expected in the sample (chemical symbols), or None.
        extra: any further metadata keys, kept as they were read.
    """

    projections: np.ndarray
    tilt_angles: np.ndarray
    pixel_size: float
    tilt_axis_angle: float = 0.0
    shifts: Optional[np.ndarray] = None
    elements: Optional[list] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.projections = np.asarray(self.projections)
        self.tilt_angles = np.asarray(self.tilt_angles, dtype=np.float64).reshape(-1)
        if self.shifts is not None:
            self.shifts = np.asarray(self.shifts, dtype=np.float64)
        validate(self, where="tilt series")

    @property
    def shape(self):
        """(N, H, W)."""
        return self.projections.shape

    def shifts_or_zeros(self) -> np.ndarray:
        """(N, 2) shifts in A, zeros when none were given."""
        return self.shifts if self.shifts is not None else np.zeros((len(self.tilt_angles), 2))

    def metadata(self) -> dict:
        """The content of ``metadata.json``."""
        meta = dict(self.extra)
        meta["pixel_size"] = float(self.pixel_size)
        meta["tilt_axis_angle"] = float(self.tilt_axis_angle)
        if self.shifts is not None:
            meta["shifts"] = self.shifts.tolist()
        if self.elements is not None:
            meta["elements"] = list(self.elements)
        return meta


def validate(series: TiltSeries, where: str) -> None:
    """Raise :class:`TiltSeriesError` naming ``where`` if ``series`` is not a usable tilt series."""
    proj = series.projections
    if proj.ndim != 3:
        raise TiltSeriesError(f"{where}: projections must be a stack of shape (N, H, W), got shape {proj.shape}")
    if min(proj.shape) == 0:
        raise TiltSeriesError(f"{where}: projections stack is empty, shape {proj.shape}")
    if not np.issubdtype(proj.dtype, np.floating):
        raise TiltSeriesError(
            f"{where}: projections must be floating point (float32), got {proj.dtype}; integer or 8-bit "
            "images have lost the absolute intensities a tomographic fit needs"
        )
    bad = ~np.isfinite(proj)
    if bad.any():
        pages = np.unique(np.nonzero(bad)[0])
        raise TiltSeriesError(
            f"{where}: projections contain {int(bad.sum())} NaN or infinite values "
            f"(pages {pages[:10].tolist()}{' ...' if len(pages) > 10 else ''})"
        )
    n = proj.shape[0]
    if series.tilt_angles.shape != (n,):
        raise TiltSeriesError(f"{where}: {len(series.tilt_angles)} tilt angles for {n} projections")
    if not np.all(np.isfinite(series.tilt_angles)):
        raise TiltSeriesError(f"{where}: tilt angles contain NaN or infinite values")
    if len(np.unique(series.tilt_angles)) != n:
        raise TiltSeriesError(f"{where}: tilt angles repeat")
    p = series.pixel_size
    if not (isinstance(p, (int, float)) and math.isfinite(p) and PIXEL_SIZE_RANGE[0] <= p <= PIXEL_SIZE_RANGE[1]):
        raise TiltSeriesError(
            f"{where}: pixel_size must be a number of Angstrom in {PIXEL_SIZE_RANGE}, got {p!r} "
            "(nanometres or metres by mistake?)"
        )
    if not math.isfinite(series.tilt_axis_angle):
        raise TiltSeriesError(f"{where}: tilt_axis_angle must be finite, got {series.tilt_axis_angle!r}")
    if series.shifts is not None:
        if series.shifts.shape != (n, 2) or not np.all(np.isfinite(series.shifts)):
            raise TiltSeriesError(f"{where}: shifts must be {n} finite pairs [x, y] in A, got shape {series.shifts.shape}")


def read_angles(path: Path) -> np.ndarray:
    """Tilt angles (N,) in degrees from a text file: one number a line, # starts a comment line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TiltSeriesError(f"{path}: cannot read tilt angles ({err})") from err
    values = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values.append(float(text))
        except ValueError as err:
            raise TiltSeriesError(f"{path}, line {number}: not a number of degrees: {text!r}") from err
    if not values:
        raise TiltSeriesError(f"{path}: no tilt angles")
    return np.asarray(values)


def read_projections(path: Path) -> np.ndarray:
    """The (N, H, W) stack of a multi-page TIFF, as stored (dtype checked by :func:`validate`)."""
    import tifffile

    try:
        stack = tifffile.imread(path)
    except FileNotFoundError as err:
        raise TiltSeriesError(f"{path}: missing") from err
    except Exception as err:  # tifffile raises many kinds for truncated or foreign files
        raise TiltSeriesError(f"{path}: cannot read as a TIFF stack ({type(err).__name__}: {err})") from err
    if stack.ndim == 2:
        stack = stack[None]
    return stack


def read_metadata(path: Path) -> dict:
    """The metadata dictionary, with a clear error for a missing file or pixel size."""
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise TiltSeriesError(f"{path}: missing (it must give at least the pixel size, e.g. {{\"pixel_size\": 0.25}})") from err
    except (OSError, ValueError) as err:
        raise TiltSeriesError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise TiltSeriesError(f"{path}: must hold a JSON object")
    if "pixel_size" not in meta:
        raise TiltSeriesError(f"{path}: no \"pixel_size\" (detector pixel size in Angstrom) given")
    return meta


def read_tilt_series(directory) -> TiltSeries:
    """Read and check a dataset directory (DESIGN.md format)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TiltSeriesError(f"{directory}: not a directory (a tilt-series dataset is a directory)")
    for name in (PROJECTIONS, ANGLES):
        if not (directory / name).is_file():
            raise TiltSeriesError(f"{directory / name}: missing")
    meta = read_metadata(directory / METADATA)
    stack = read_projections(directory / PROJECTIONS)
    angles = read_angles(directory / ANGLES)
    if len(angles) != len(stack):
        raise TiltSeriesError(
            f"{directory / ANGLES}: {len(angles)} tilt angles, but {directory / PROJECTIONS} holds {len(stack)} projections"
        )
    known = {"pixel_size", "tilt_axis_angle", "shifts", "elements"}

    def number(key, default):
        value = meta.get(key, default)
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise TiltSeriesError(f"{directory / METADATA}: \"{key}\" must be a number, got {value!r}") from err

    try:
        shifts = None if meta.get("shifts") is None else np.asarray(meta["shifts"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TiltSeriesError(f"{directory / METADATA}: \"shifts\" must be a list of [x, y] pairs in A") from err
    try:
        return TiltSeries(
            projections=stack,
            tilt_angles=angles,
            pixel_size=number("pixel_size", None),
            tilt_axis_angle=number("tilt_axis_angle", 0.0),
            shifts=shifts,
            elements=meta.get("elements"),
            extra={k: v for k, v in meta.items() if k not in known},
        )
    except TiltSeriesError as err:
        raise TiltSeriesError(str(err).replace("tilt series:", f"{directory}:", 1)) from None


def check_writable(directory, overwrite: bool = False) -> None:
    """Raise FileExistsError if ``directory`` already holds a dataset and ``overwrite`` is False."""
    directory = Path(directory)
    existing = [n for n in (PROJECTIONS, ANGLES, METADATA, GROUND_TRUTH) if (directory / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{directory}: already holds {', '.join(existing)}; choose another output or pass overwrite")


def write_tilt_series(directory, series: TiltSeries, ground_truth=None, overwrite: bool = False) -> Path:
    """Write ``series`` (and optional ``ground_truth`` ase.Atoms, sample frame, A) as a dataset.

    Refuses to touch an existing dataset unless ``overwrite`` is True.
    """
    import tifffile
    from ase.io import write as ase_write

    directory = Path(directory)
    check_writable(directory, overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    stack = np.ascontiguousarray(series.projections, dtype=np.float32)
    tifffile.imwrite(directory / PROJECTIONS, stack, photometric="minisblack")  # pages, never RGB
    angles = "\n".join(f"{a:.6f}" for a in series.tilt_angles)
    (directory / ANGLES).write_text(f"# tilt angles in degrees, one per projection\n{angles}\n")
    (directory / METADATA).write_text(json.dumps(series.metadata(), indent=2) + "\n")
    if ground_truth is not None:
        ase_write(directory / GROUND_TRUTH, ground_truth, format="extxyz")
    elif (directory / GROUND_TRUTH).exists():
        (directory / GROUND_TRUTH).unlink()
    return directory


def parse_tilt_scheme(text: str) -> np.ndarray:
    """Angles in degrees from ``"start:stop:step"`` (stop included when on the grid), e.g. "-70:70:3"."""
    parts = text.split(":")
    try:
        start, stop, step = (float(x) for x in parts)
    except ValueError as err:
        raise ValueError(f"tilt scheme {text!r}: expected start:stop:step in degrees, e.g. -70:70:3") from err
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ValueError(f"tilt scheme {text!r}: start, stop and step must be finite numbers of degrees")
    if step <= 0 or stop < start:
        raise ValueError(f"tilt scheme {text!r}: need step > 0 and stop >= start")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return start + step * np.arange(count)
