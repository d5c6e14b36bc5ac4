"""Tilt series in memory, the dataset directory of DESIGN.md, and the one reader of every layout.

:func:`read_tilt_series` ``(path, pixel_size=None)`` reads

* a dataset directory (DESIGN.md; :func:`write_tilt_series` writes it)::

      projections.tif    float32 stack (N, H, W), one projection a page
      tilt_angles.txt    N angles in degrees, one a line; lines starting with # are comments
      metadata.json      {"pixel_size": A, "tilt_axis_angle": deg, "shifts": [[x, y], ...] A,
                          "elements": ["Au", ...], ...}
      ground_truth.xyz   optional: true atoms (extended XYZ, A, sample frame)

* an MRC stack (``.mrc``, ``.mrcs``, ``.st``, ``.ali``, ``.preali``) with its IMOD angle file
  beside it (:mod:`atomsplat.data.mrc`);
* a directory in the paper's layout, a nerfstudio ``transforms.json`` with 8-bit images
  (:mod:`atomsplat.data.transforms_json`).

The pixel size (A) comes from the ``pixel_size`` argument when given, else from metadata.json,
else (MRC only) from the file header. After reading, a cheap check compares the series with its
declared tilt axis (:mod:`atomsplat.analysis.tilt_axis`) and issues a ``TiltAxisWarning`` naming
the file when the axis looks wrong. Every problem with the files raises :class:`TiltSeriesError`,
whose message names the file and the problem.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from atomsplat.analysis.tilt_axis import TiltAxisWarning, check_tilt_axis

PROJECTIONS = "projections.tif"
ANGLES = "tilt_angles.txt"
METADATA = "metadata.json"
GROUND_TRUTH = "ground_truth.xyz"

# Pixel sizes outside this range (A) are almost surely a unit mistake (nm or m for A).
PIXEL_SIZE_RANGE = (0.01, 20.0)

# How a user gives the pixel size where a file does not (appended to error messages).
PIXEL_SIZE_HINT = (
    'give it in Angstrom as {"pixel_size": 0.25} in metadata.json, or as an override: '
    "read_tilt_series(path, pixel_size=0.25), ns-train atomsplat --data PATH tomography --pixel-size 0.25, "
    "atomsplat-demo --pixel-size 0.25"
)


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
        source: the file the projections were read from (TIFF or MRC stack, transforms.json), or
            None for a series made in memory.
        images: for the transforms.json layout, the 8-bit image file of each projection (stock
            nerfstudio methods read them as they are); None otherwise.
    """

    projections: np.ndarray
    tilt_angles: np.ndarray
    pixel_size: float
    tilt_axis_angle: float = 0.0
    shifts: Optional[np.ndarray] = None
    elements: Optional[list] = None
    extra: dict = field(default_factory=dict)
    source: Optional[Path] = None
    images: Optional[List[Path]] = None

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
    check_pixel_size(series.pixel_size, where)
    if not math.isfinite(series.tilt_axis_angle):
        raise TiltSeriesError(f"{where}: tilt_axis_angle must be finite, got {series.tilt_axis_angle!r}")
    if series.shifts is not None:
        if series.shifts.shape != (n, 2) or not np.all(np.isfinite(series.shifts)):
            raise TiltSeriesError(
                f"{where}: shifts must be {n} finite pairs [x, y] in A, got shape {series.shifts.shape}"
            )


def check_pixel_size(value, where: str) -> float:
    """``value`` as a float if it is a plausible pixel size in A, else :class:`TiltSeriesError` naming ``where``."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and PIXEL_SIZE_RANGE[0] <= value <= PIXEL_SIZE_RANGE[1]):
        raise TiltSeriesError(
            f"{where}: pixel_size must be a number of Angstrom in {PIXEL_SIZE_RANGE}, got {value!r} "
            "(nanometres or metres by mistake?)"
        )
    return float(value)


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


def read_metadata(path: Path, optional: bool = False) -> dict:
    """The metadata dictionary of ``path``; ``{}`` if it is missing and ``optional``."""
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        if optional:
            return {}
        raise TiltSeriesError(
            f'{path}: missing (it must give at least the pixel size, e.g. {{"pixel_size": 0.25}}, '
            "unless an override gives it)"
        ) from err
    except (OSError, ValueError) as err:
        raise TiltSeriesError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise TiltSeriesError(f"{path}: must hold a JSON object")
    return meta


def metadata_number(meta: dict, key: str, path: Path, default=None) -> float:
    """``meta[key]`` as a float (``default`` if absent), or an error naming ``path`` and the key."""
    value = meta.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TiltSeriesError(f'{path}: "{key}" must be a number, got {value!r}') from err


def metadata_fields(meta: dict, path: Path) -> dict:
    """The TiltSeries fields that metadata.json ``path`` gives besides the pixel size:
    tilt_axis_angle (default 0), shifts, elements and the other keys as ``extra``."""
    try:
        shifts = None if meta.get("shifts") is None else np.asarray(meta["shifts"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TiltSeriesError(f'{path}: "shifts" must be a list of [x, y] pairs in A') from err
    known = {"pixel_size", "tilt_axis_angle", "shifts", "elements"}
    return dict(
        tilt_axis_angle=metadata_number(meta, "tilt_axis_angle", path, 0.0),
        shifts=shifts,
        elements=meta.get("elements"),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def build_series(where, **fields) -> TiltSeries:
    """A :class:`TiltSeries` whose validation errors name ``where`` (a file or directory)."""
    try:
        return TiltSeries(**fields)
    except TiltSeriesError as err:
        raise TiltSeriesError(str(err).replace("tilt series:", f"{where}:", 1)) from None


def read_tiff_dataset(directory, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check a dataset directory in the DESIGN.md format.

    Args:
        directory: the dataset directory.
        pixel_size: pixel size in A overriding metadata.json (which may then be absent).
    """
    directory = Path(directory)
    if not (directory / PROJECTIONS).is_file():
        raise TiltSeriesError(
            f"{directory / PROJECTIONS}: missing (a dataset directory holds {PROJECTIONS}, {ANGLES} and "
            f"{METADATA}, or the paper's transforms.json; an MRC stack is read from its own file path)"
        )
    if not (directory / ANGLES).is_file():
        raise TiltSeriesError(f"{directory / ANGLES}: missing")
    meta = read_metadata(directory / METADATA, optional=pixel_size is not None)
    if pixel_size is None and "pixel_size" not in meta:
        raise TiltSeriesError(
            f'{directory / METADATA}: no "pixel_size" (detector pixel size in Angstrom) given; {PIXEL_SIZE_HINT}'
        )
    stack = read_projections(directory / PROJECTIONS)
    angles = read_angles(directory / ANGLES)
    if len(angles) != len(stack):
        raise TiltSeriesError(
            f"{directory / ANGLES}: {len(angles)} tilt angles, "
            f"but {directory / PROJECTIONS} holds {len(stack)} projections"
        )
    if pixel_size is None:
        pixel_size = metadata_number(meta, "pixel_size", directory / METADATA)
    return build_series(
        directory,
        projections=stack,
        tilt_angles=angles,
        pixel_size=pixel_size,
        **metadata_fields(meta, directory / METADATA),
        source=directory / PROJECTIONS,
    )


def read_tilt_series(path, pixel_size: Optional[float] = None) -> TiltSeries:
    """Read and check a tilt series in any supported layout, chosen by what ``path`` is.

    Args:
        path: a dataset directory (``projections.tif``, ... or a ``transforms.json``; a directory
            holding both is read from the float32 TIFF), an MRC stack file, or a ``transforms.json``.
        pixel_size: detector pixel size in A; overrides metadata.json and the MRC header.

    Returns:
        The :class:`TiltSeries`; a ``TiltAxisWarning`` is issued when the projections look tilted
        about another axis than the declared one (:func:`atomsplat.analysis.tilt_axis.check_tilt_axis`).
    """
    from atomsplat.data import mrc, transforms_json

    path = Path(path)
    if path.is_dir():
        if not (path / PROJECTIONS).exists() and (path / transforms_json.TRANSFORMS).is_file():
            series = transforms_json.read_transforms_series(path / transforms_json.TRANSFORMS, pixel_size)
        else:
            series = read_tiff_dataset(path, pixel_size)
    elif path.is_file() and path.suffix.lower() in mrc.MRC_SUFFIXES:
        series = mrc.read_mrc_series(path, pixel_size)
    elif path.is_file() and path.name == transforms_json.TRANSFORMS:
        series = transforms_json.read_transforms_series(path, pixel_size)
    elif path.is_file():
        raise TiltSeriesError(
            f"{path}: not a tilt series: give a dataset directory ({PROJECTIONS}, {ANGLES}, {METADATA}, or the "
            f"paper's {transforms_json.TRANSFORMS}) or an MRC stack ({', '.join(mrc.MRC_SUFFIXES)})"
        )
    else:
        raise TiltSeriesError(f"{path}: no such file or directory")
    check = check_tilt_axis(series.projections, series.tilt_axis_angle)
    if check.suspicious:
        warnings.warn(f"{series.source}: {check.message()}", TiltAxisWarning, stacklevel=2)
    return series


def ground_truth_path(path) -> Optional[Path]:
    """The ``ground_truth.xyz`` of the dataset at ``path`` (in its directory, or beside its MRC
    stack or transforms.json), or None when there is none."""
    path = Path(path)
    candidate = (path if path.is_dir() else path.parent) / GROUND_TRUTH
    return candidate if candidate.is_file() else None


def check_writable(directory, overwrite: bool = False) -> None:
    """Raise FileExistsError if ``directory`` already holds a dataset and ``overwrite`` is False."""
    directory = Path(directory)
    existing = [n for n in (PROJECTIONS, ANGLES, METADATA, GROUND_TRUTH) if (directory / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{directory}: already holds {', '.join(existing)}; choose another output or pass overwrite"
        )


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
