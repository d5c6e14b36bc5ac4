"""A tilt series in memory, its validation, and the small readers that every file layout shares.

This is the bottom of ``atomsplat.data``: the format modules (:mod:`atomsplat.data.tiff_dataset`,
:mod:`atomsplat.data.mrc`, :mod:`atomsplat.data.transforms_json`) build a :class:`TiltSeries` from
their files, and :mod:`atomsplat.data.formats` chooses between them; this module imports none of
them. Every problem with a series raises :class:`TiltSeriesError`, whose message names the place
(``where``: the file or directory a reader read, else "tilt series") and the problem.

Counts. Low-dose projections are detector counts with Poisson statistics. ``TiltSeries.counts``
says so; left None it is detected when the series is made (:func:`detected_counts`), from the
noise where the stack holds at least 80,000 pixels (:mod:`atomsplat.data.photon_transfer`: a
pixel's variance grows with its mean by one count per count): values on a lattice of one step
whose noise grows by one step per step are counts of that step over an offset (whole numbers as
they are, counts divided by a gain or a dose, a detector offset added or a dark level
subtracted), and values off any lattice whose noise grows with their mean are counts of the
measured gain over the measured offset (a scintillator detector's reading with read noise, which
the offset carries as a constant number of counts). A smaller stack is judged by its values alone
(:func:`detected_gain`): non-negative integers, or non-negative whole multiples of one step
spread from pixel to pixel at least as Poisson counts are. Integer stacks of 16 or 32 bits are
converted to float32 exactly; 8-bit stacks are refused unless declared counts, as they have
usually been scaled for display. ``TiltSeries.gain`` gives counts per data unit and
``TiltSeries.offset`` the reading at zero counts: counts = gain * (value - offset); given, they
win over the ones detected; the offset is subtracted from the projections when the series is
made (``TiltSeries.subtracted`` keeps it). Declared counts without an offset must not be negative.
"""

from __future__ import annotations

import json
import math
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from ase.data import atomic_numbers

from atomsplat.data.photon_transfer import photon_transfer

# Files that every layout may hold beside its projections.
METADATA = "metadata.json"
GROUND_TRUTH = "ground_truth.xyz"

# float32 holds every integer up to this magnitude exactly (a 24-bit significand).
FLOAT32_EXACT_INTEGERS = 2**24

MOST_COUNTS = 2**16
"""Values that are whole multiples of one step are counts in that step's unit only up to this many
steps (:func:`detected_gain`): beyond, float32 no longer tells a step from its rounding error, and
data quantised that finely are an image's levels, not counts."""

LATTICE_AGREEMENT = 0.2
"""Values on a lattice of steps are counts in those steps where the measured noise
(:func:`atomsplat.data.photon_transfer.photon_transfer`) grows by one step per step of the mean,
to within this fraction or three standard errors of the slope, whichever is larger (0.013 off on
the low-dose preset's series); else the lattice is a digitiser's, not the counts'."""

LEAST_GROWTH = 1.25
"""Values off any lattice are counts (a detector's shot noise, read in other units, perhaps with
read noise) where the measured variance grows by at least this factor from the darkest to the
brightest part of the stack that the signal does not leak into, with a slope of at least
:data:`SLOPE_SIGNIFICANCE` standard errors; additive noise of one level (the paper's) does not grow."""

SLOPE_SIGNIFICANCE = 5.0
"""Standard errors of its slope that a variance growing with the mean needs to be taken for shot
noise (:data:`LEAST_GROWTH`)."""

LEAST_DISPERSION = 0.8
"""Values on a lattice of steps are counts only where, in those steps, half the mean squared
difference of neighbouring pixels is at least this x their mean (:func:`poisson_dispersion`):
Poisson counts give 1 or more (the signal's gradients add), data quantised with less noise than
Poisson's, or counts read at twice their step, less."""

# Pixel sizes outside this range (A) are almost surely a unit mistake (nm or m for A).
PIXEL_SIZE_RANGE = (0.01, 20.0)

# How a user gives the pixel size where a file does not (appended to error messages).
PIXEL_SIZE_HINT = (
    'give it in Angstrom as {"pixel_size": 0.25} in metadata.json, or as an override: '
    "read_tilt_series(path, pixel_size=0.25), "
    "ns-train atomsplat --data PATH --pipeline.datamanager.dataparser.pixel-size 0.25, "
    "atomsplat-demo --pixel-size 0.25"
)


class TiltSeriesError(ValueError):
    """A tilt-series dataset on disk is missing, unreadable or inconsistent."""


@dataclass
class TiltSeries:
    """A tilt series in memory, validated when it is made.

    Attributes:
        projections: (N, H, W) float32 projections; pixel (i, j) as in :mod:`atomsplat.geometry`
            (integer stacks are converted exactly when the series is made, see the module docstring).
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
        counts: the projections are detector counts (Poisson statistics); None when made means
            "detect from the values and their noise" (:func:`detected_counts`), so it is a bool after.
        gain: counts per data unit, finite and > 0 (1 for data recorded in counts); detected with
            the counts where it was 1 and ``counts`` None.
        offset: the detector's reading at zero counts (data units) still in ``projections`` when the
            series is made; None means detected with the counts (0 where they are declared, or are
            not counts). It is subtracted then, added to ``subtracted``, and 0.0 after: counts =
            gain * projections (so a copy made by ``dataclasses.replace`` subtracts nothing again).
        subtracted: data units subtracted from the projections as their offset, in all (0.0 for
            none).
        where: (init only) the place that validation errors name: the file or directory a reader
            read; None (a series made in memory) names it "tilt series".
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
    counts: Optional[bool] = None
    gain: float = 1.0
    offset: Optional[float] = None
    subtracted: float = 0.0
    where: InitVar[Optional[Union[str, Path]]] = None

    def __post_init__(self, where):
        where = "tilt series" if where is None else where
        stack = where if self.source is None else self.source
        self.projections = integers_as_float32(np.asarray(self.projections), self.counts, stack)
        self.tilt_angles = np.asarray(self.tilt_angles, dtype=np.float64).reshape(-1)
        if self.shifts is not None:
            self.shifts = np.asarray(self.shifts, dtype=np.float64)
        validate(self, where)
        if self.counts is None:
            found = detected_counts(self.projections)
            self.counts = found is not None
            if found is not None and self.gain == 1:  # a gain or offset given wins over the one detected
                self.gain = found[0]
            if found is not None and self.offset is None:
                self.offset = found[1]
        self.counts = bool(self.counts)
        self.gain = float(self.gain)
        if self.offset:
            self.projections = self.projections - self.projections.dtype.type(self.offset)
            self.subtracted = float(self.subtracted) + float(self.offset)
        self.offset = 0.0

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
        meta["counts"] = bool(self.counts)
        meta["gain"] = float(self.gain)
        if self.subtracted:  # the projections are the counts over the offset: a reading of 0 is zero counts
            meta["offset"] = 0.0
        return meta


def integers_as_float32(stack: np.ndarray, counts: Optional[bool], where) -> np.ndarray:
    """``stack`` as float32 if it is an integer stack that a tilt series takes, else as it is.

    16- and 32-bit integers are taken, 8-bit ones only when ``counts`` is True (:func:`validate`
    refuses the rest). Raises :class:`TiltSeriesError` naming ``where`` when a value has no exact
    float32 equal (beyond +-2^24).
    """
    size = stack.dtype.itemsize
    if stack.dtype.kind not in "iu" or size not in (1, 2, 4) or (size == 1 and counts is not True):
        return stack
    if size == 4:
        big = stack[(stack > FLOAT32_EXACT_INTEGERS) | (stack < -FLOAT32_EXACT_INTEGERS)].astype(np.int64)
        inexact = big[big.astype(np.float32).astype(np.int64) != big]
        if inexact.size:
            raise TiltSeriesError(
                f"{where}: {inexact.size} values of the {stack.dtype} projections have no exact float32 equal "
                f"(e.g. {int(inexact[0])}; float32 holds every integer up to 2^24 = {FLOAT32_EXACT_INTEGERS}); "
                "store the stack as float32 or smaller numbers"
            )
    return stack.astype(np.float32)


def detected_counts(projections: np.ndarray) -> Optional[Tuple[float, float]]:
    """(gain, offset) if ``projections`` (N, H, W) look like detector counts, else None: counts =
    gain * (value - offset), gain in counts per data unit, offset in data units.

    From the noise where the stack is large enough to measure it
    (:func:`atomsplat.data.photon_transfer.photon_transfer`): values on a lattice of one step
    (:func:`lattice_step`) whose variance grows by one step per step of the mean (within
    :data:`LATTICE_AGREEMENT` or three standard errors) are counts of that step, their offset the
    measured one moved to the nearest point of the lattice (0 for counts recorded as they are, b
    for a detector offset b);
    values off any lattice whose variance grows with the mean (:data:`LEAST_GROWTH`) are counts of
    the measured slope and offset, the read noise carried as a constant number of counts (the
    module docstring of :mod:`atomsplat.data.photon_transfer`), up to :data:`MOST_COUNTS` at the
    brightest pixel. A smaller stack is judged by its values alone (:func:`detected_gain`)."""
    transfer = photon_transfer(projections)
    if transfer is None:
        gain = detected_gain(projections)
        return None if gain is None else (gain, 0.0)
    step = lattice_step(projections)
    if step is not None and abs(transfer.slope - step) <= max(LATTICE_AGREEMENT * step, 3 * transfer.slope_error):
        origin = float(projections.min())
        offset = origin + round((transfer.offset_at(step) - origin) / step) * step
        return 1.0 / step, (0.0 if abs(offset) < 0.5 * step else offset)
    if transfer.slope <= SLOPE_SIGNIFICANCE * transfer.slope_error or transfer.growth < LEAST_GROWTH:
        return None
    if transfer.gain * (float(projections.max()) - transfer.offset) > MOST_COUNTS:
        return None
    return transfer.gain, transfer.offset


def lattice_step(projections: np.ndarray) -> Optional[float]:
    """The step u if every value of ``projections`` is the lowest one plus a whole number k of
    steps (any origin: a detector offset), else None: 1 for integers; otherwise u is the smallest
    gap between distinct values and the gap between most neighbouring ones, k at most
    :data:`MOST_COUNTS`, to float32's rounding, and u is fitted to all the distinct values."""
    if np.array_equal(np.rint(projections), projections):
        return 1.0
    if len(np.unique(projections.reshape(-1)[: 2**20])) > MOST_COUNTS + 1:  # a quick look first
        return None
    levels = np.unique(projections).astype(np.float64)
    if len(levels) < 2 or len(levels) > MOST_COUNTS + 1:
        return None
    gaps, above = np.diff(levels), levels - levels[0]
    steps = np.rint(above / gaps.min())
    if steps.max() > MOST_COUNTS or np.mean(gaps < 1.5 * gaps.min()) < 0.5:  # a step that most neighbours take
        return None
    step = float((steps * above).sum() / (steps * steps).sum())
    rounding = 4 * float(np.finfo(np.float32).eps) * (np.abs(levels) + abs(levels[0])) / step + 1e-6
    return step if np.all(np.abs(above / step - steps) <= rounding) else None


def detected_gain(projections: np.ndarray) -> Optional[float]:
    """Counts per data unit if the values of ``projections`` (N, H, W) alone look like detector
    counts recorded without an offset, else None (:func:`detected_counts` for a stack too small to
    measure its noise).

    1.0 when every value is a non-negative integer. Otherwise, when every value is non-negative and
    a whole multiple k of one step u (the smallest gap between two distinct values, and the gap
    between most neighbouring distinct values: one value off the integers makes no half-counts), to
    float32's rounding, with k at most :data:`MOST_COUNTS`, and the values in steps are spread at least as
    Poisson counts are (:func:`poisson_dispersion` at least :data:`LEAST_DISPERSION`): 1 / u, fitted
    to all the distinct values by least squares."""
    if projections.min() < 0:
        return None
    if np.array_equal(np.rint(projections), projections):
        return 1.0
    step = lattice_step(projections)
    if step is None:
        return None
    origin = float(projections.min()) / step  # on a lattice through zero
    if abs(origin - round(origin)) > 4 * float(np.finfo(np.float32).eps) * origin + 1e-6:
        return None
    gain = 1.0 / step
    return gain if poisson_dispersion(projections * gain) >= LEAST_DISPERSION else None


def poisson_dispersion(counts: np.ndarray) -> float:
    """Half the mean squared difference of horizontally neighbouring pixels of ``counts`` (N, H, W)
    over their mean: for Poisson counts its expectation is 1 plus half the signal's mean squared
    difference over the mean, so never below 1."""
    counts = counts.astype(np.float64)
    mean = float(counts.mean())
    if mean <= 0:
        return 0.0
    return float((np.diff(counts, axis=2) ** 2).mean()) / (2.0 * mean)


def validate(series: TiltSeries, where) -> None:
    """Raise :class:`TiltSeriesError` naming ``where`` if ``series`` is not a usable tilt series."""
    proj = series.projections
    if proj.ndim != 3:
        raise TiltSeriesError(f"{where}: projections must be a stack of shape (N, H, W), got shape {proj.shape}")
    if min(proj.shape) == 0:
        raise TiltSeriesError(f"{where}: projections stack is empty, shape {proj.shape}")
    if proj.dtype.kind in "iu" and proj.dtype.itemsize == 1:
        raise TiltSeriesError(
            f"{where}: projections must be floating point (float32), got {proj.dtype}; 8-bit images have lost "
            'the absolute intensities a tomographic fit needs (8-bit detector counts: say "counts": true in '
            f"{METADATA})"
        )
    if not np.issubdtype(proj.dtype, np.floating):
        raise TiltSeriesError(
            f"{where}: projections must be floating point (float32) or 16- or 32-bit integer counts, got {proj.dtype}"
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
    if series.counts is not None and not isinstance(series.counts, (bool, np.bool_)):
        raise TiltSeriesError(f"{where}: counts must be True, False or None (detect), got {series.counts!r}")
    gain = series.gain
    if isinstance(gain, (bool, np.bool_)) or not isinstance(gain, (int, float, np.integer, np.floating)):
        raise TiltSeriesError(f"{where}: gain must be a number of counts per data unit, got {gain!r}")
    if not (math.isfinite(gain) and gain > 0):
        raise TiltSeriesError(f"{where}: gain must be a finite number of counts per data unit above 0, got {gain!r}")
    offset = series.offset
    if offset is not None and (
        isinstance(offset, (bool, np.bool_))
        or not isinstance(offset, (int, float, np.integer, np.floating))
        or not math.isfinite(offset)
    ):
        raise TiltSeriesError(
            f"{where}: offset must be a finite number of data units (the reading at zero counts), got {offset!r}"
        )
    if series.counts and offset is None and proj.min() < 0:
        negative = proj < 0
        pages = np.unique(np.nonzero(negative)[0])
        stack = where if series.source is None else series.source
        raise TiltSeriesError(
            f"{stack}: projections declared as counts hold {int(negative.sum())} negative values "
            f"(pages {pages[:10].tolist()}{' ...' if len(pages) > 10 else ''}); counts are never negative "
            '(counts over a detector offset: give the reading at zero counts as "offset" in metadata.json; '
            'data that are not counts: declare "counts": false)'
        )


def check_pixel_size(value, where) -> float:
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


def metadata_elements(meta: dict, path: Path) -> Optional[list]:
    """``meta["elements"]``: a list of chemical symbols (None if absent), or an error naming ``path``."""
    value = meta.get("elements")
    if value is None:
        return None
    symbols = isinstance(value, list) and all(isinstance(e, str) and atomic_numbers.get(e, 0) for e in value)
    if not symbols:
        raise TiltSeriesError(f'{path}: "elements" must be a list of chemical symbols like ["Si", "O"]; got {value!r}')
    return value


def counts_fields(meta: dict, path: Path, counts: Optional[bool] = None) -> dict:
    """The TiltSeries fields ``counts``, ``gain`` and ``offset`` from metadata.json ``path``: its
    ``"counts"`` (true or false) wins over ``counts`` (None: detect from the values), its ``"gain"``
    defaults to 1, its ``"offset"`` (data units at zero counts) to None (detected with the counts)."""
    value = meta.get("counts")
    if value is not None and not isinstance(value, bool):
        raise TiltSeriesError(f'{path}: "counts" must be true or false, got {value!r}')
    offset = None if meta.get("offset") is None else metadata_number(meta, "offset", path)
    return dict(counts=counts if value is None else value, gain=metadata_number(meta, "gain", path, 1.0), offset=offset)


def metadata_fields(meta: dict, path: Path) -> dict:
    """The TiltSeries fields that metadata.json ``path`` gives besides the pixel size:
    tilt_axis_angle (default 0), shifts, elements, counts, gain and offset (:func:`counts_fields`) and the
    other keys as ``extra``."""
    try:
        shifts = None if meta.get("shifts") is None else np.asarray(meta["shifts"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TiltSeriesError(f'{path}: "shifts" must be a list of [x, y] pairs in A') from err
    known = {"pixel_size", "tilt_axis_angle", "shifts", "elements", "counts", "gain", "offset"}
    return dict(
        tilt_axis_angle=metadata_number(meta, "tilt_axis_angle", path, 0.0),
        shifts=shifts,
        elements=metadata_elements(meta, path),
        **counts_fields(meta, path),
        extra={k: v for k, v in meta.items() if k not in known},
    )


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
