"""Reading, writing and checking tilt-series datasets (DESIGN.md format), and the nerfstudio
DataParser on top of them."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tifffile
from ase import Atoms
from ase.io import read as ase_read
from nerfstudio.cameras.cameras import CameraType

from atomsplat.data.dataparser import TomographyDataParserConfig
from atomsplat.data.formats import ground_truth_path, read_tilt_series, write_tilt_series
from atomsplat.data.photon_transfer import photon_transfer
from atomsplat.data.series import (
    GROUND_TRUTH,
    LEAST_GROWTH,
    METADATA,
    TiltSeries,
    TiltSeriesError,
    parse_tilt_scheme,
    poisson_dispersion,
)
from atomsplat.data.tiff_dataset import ANGLES, PROJECTIONS

N, H, W = 5, 12, 16
ANGLE_VALUES = np.array([-60.0, -27.5, 0.0, 31.25, 60.0])


def make_series(**overrides):
    rng = np.random.default_rng(0)
    kwargs = dict(
        projections=rng.normal(size=(N, H, W)).astype(np.float32) * 123.4,
        tilt_angles=ANGLE_VALUES,
        pixel_size=0.37,
        tilt_axis_angle=12.5,
        shifts=rng.uniform(-1, 1, size=(N, 2)),
        elements=["Au", "Pt"],
        extra={"source": "test", "dose": 1e4},
    )
    kwargs.update(overrides)
    return TiltSeries(**kwargs)


@pytest.fixture
def dataset(tmp_path):
    """A valid dataset directory (with ground truth)."""
    truth = Atoms("AuPt", positions=[[0.1, 0.2, 0.3], [-1.5, 2.25, 0.75]])
    return write_tilt_series(tmp_path / "ds", make_series(), ground_truth=truth)


def test_round_trip(dataset):
    series = make_series()
    back = read_tilt_series(dataset)
    assert back.projections.dtype == np.float32 and back.shape == (N, H, W)
    np.testing.assert_array_equal(back.projections, series.projections)  # bit-exact
    np.testing.assert_array_equal(back.tilt_angles, ANGLE_VALUES)
    assert back.pixel_size == 0.37 and back.tilt_axis_angle == 12.5
    np.testing.assert_array_equal(back.shifts, series.shifts)
    assert back.elements == ["Au", "Pt"]
    assert back.extra == {"source": "test", "dose": 1e4}
    truth = ase_read(dataset / GROUND_TRUTH)
    assert truth.get_chemical_symbols() == ["Au", "Pt"]
    np.testing.assert_allclose(truth.get_positions(), [[0.1, 0.2, 0.3], [-1.5, 2.25, 0.75]])


def test_round_trip_minimal(tmp_path):
    series = TiltSeries(projections=np.ones((2, 3, 4), np.float32), tilt_angles=[0.0, 10.0], pixel_size=1.0)
    back = read_tilt_series(write_tilt_series(tmp_path / "d", series))
    assert back.shifts is None and back.elements is None and back.tilt_axis_angle == 0.0
    np.testing.assert_array_equal(back.shifts_or_zeros(), np.zeros((2, 2)))
    assert not (tmp_path / "d" / GROUND_TRUTH).exists()


def test_single_page_stack_reads_as_one_projection(tmp_path):
    back = read_tilt_series(
        write_tilt_series(
            tmp_path / "d", make_series(projections=np.ones((1, 4, 5), np.float32), tilt_angles=[3.0], shifts=None)
        )
    )
    assert back.shape == (1, 4, 5)


def test_angle_comments_and_blank_lines(dataset):
    (dataset / ANGLES).write_text("# degrees\n\n-60\n  -27.5\n# middle\n0\n31.25\n60\n\n")
    np.testing.assert_array_equal(read_tilt_series(dataset).tilt_angles, ANGLE_VALUES)


# --- bad input: every problem is a TiltSeriesError that names the file or the problem ----------------


def expect_error(directory, *fragments):
    with pytest.raises(TiltSeriesError) as info:
        read_tilt_series(directory)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "nope", "no such file or directory")
    (tmp_path / "file").write_text("x")
    expect_error(tmp_path / "file", "file", "not a tilt series")


@pytest.mark.parametrize("name", [PROJECTIONS, ANGLES, METADATA])
def test_missing_file(dataset, name):
    (dataset / name).unlink()
    expect_error(dataset, name, "missing")


def test_truncated_tiff(dataset):
    data = (dataset / PROJECTIONS).read_bytes()
    (dataset / PROJECTIONS).write_bytes(data[: len(data) // 2])
    expect_error(dataset, PROJECTIONS, "cannot read")


def test_non_tiff_bytes(dataset):
    (dataset / PROJECTIONS).write_bytes(b"this is not a TIFF file at all" * 10)
    expect_error(dataset, PROJECTIONS, "cannot read")
    (dataset / PROJECTIONS).write_bytes(b"")
    expect_error(dataset, PROJECTIONS)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int64])
def test_integer_stack(dataset, dtype):
    """8-bit stacks are refused unless declared counts (see the counts tests), 64-bit ones always."""
    tifffile.imwrite(dataset / PROJECTIONS, np.ones((N, H, W), dtype))
    expect_error(dataset, str(dataset), "floating point", np.dtype(dtype).name)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(dataset, value):
    stack = np.ones((N, H, W), np.float32)
    stack[3, 2, 1] = value
    tifffile.imwrite(dataset / PROJECTIONS, stack)
    expect_error(dataset, str(dataset), "NaN or infinite", "pages [3]")


@pytest.mark.filterwarnings("ignore:.*zero-size")
def test_zero_size_images(dataset):
    tifffile.imwrite(dataset / PROJECTIONS, np.zeros((N, 0, W), np.float32))
    expect_error(dataset, "empty")
    with pytest.raises(TiltSeriesError, match="empty"):
        make_series(projections=np.zeros((N, H, 0), np.float32))


def test_angle_count_mismatch(dataset):
    (dataset / ANGLES).write_text("\n".join(str(a) for a in ANGLE_VALUES[:-1]) + "\n")
    expect_error(dataset, ANGLES, "4 tilt angles", "5 projections")


def test_non_numeric_angle_line(dataset):
    (dataset / ANGLES).write_text("# header\n-60\nminus thirty\n0\n30\n60\n")
    expect_error(dataset, ANGLES, "line 3", "minus thirty")


def test_empty_and_bad_angle_files(dataset):
    (dataset / ANGLES).write_text("# only a comment\n")
    expect_error(dataset, ANGLES, "no tilt angles")
    (dataset / ANGLES).write_text("0\n0\n1\n2\n3\n")
    expect_error(dataset, "repeat")
    (dataset / ANGLES).write_text("0\nnan\n1\n2\n3\n")
    expect_error(dataset, "NaN or infinite")


def set_metadata(directory, **changes):
    meta = json.loads((directory / METADATA).read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (directory / METADATA).write_text(json.dumps(meta))


def test_missing_pixel_size(dataset):
    set_metadata(dataset, pixel_size=None)
    message = expect_error(dataset, METADATA, "pixel_size")
    assert "override" in message and "--pipeline.datamanager.dataparser.pixel-size 0.25" in message


def test_pixel_size_override(dataset):
    assert read_tilt_series(dataset, pixel_size=0.5).pixel_size == 0.5  # wins over metadata.json's 0.37
    (dataset / METADATA).unlink()  # and makes metadata.json optional
    series = read_tilt_series(dataset, pixel_size=0.5)
    assert series.pixel_size == 0.5 and series.tilt_axis_angle == 0.0 and series.shifts is None
    expect_error(dataset, METADATA, "missing", "override")
    with pytest.raises(TiltSeriesError, match=r"ds: pixel_size must be a number of Angstrom .* got 5e-10"):
        read_tilt_series(dataset, pixel_size=5e-10)


def test_bad_metadata_json(dataset):
    (dataset / METADATA).write_text("{pixel_size: 0.3")
    expect_error(dataset, METADATA, "JSON")
    (dataset / METADATA).write_text("[0.3]")
    expect_error(dataset, METADATA, "JSON object")
    (dataset / METADATA).write_text('{"pixel_size": "small"}')
    expect_error(dataset, METADATA, "pixel_size", "number")


@pytest.mark.parametrize("pixel_size", [2.5e-11, 0.0025, 250.0, -0.3, 0.0])
def test_absurd_pixel_size(dataset, pixel_size):
    set_metadata(dataset, pixel_size=pixel_size)
    expect_error(dataset, str(dataset), "pixel_size", "Angstrom")


@pytest.mark.parametrize("shifts", [[[0.0, 0.0]] * (N - 1), [[0.0, 0.0, 0.0]] * N, [0.0] * N, [[0.0, 0.0]] * (N + 1)])
def test_shifts_of_wrong_shape(dataset, shifts):
    set_metadata(dataset, shifts=shifts)
    expect_error(dataset, str(dataset), "shifts")


def test_shifts_not_numbers(dataset):
    set_metadata(dataset, shifts=[["a", "b"]] * N)
    expect_error(dataset, METADATA, "shifts")
    set_metadata(dataset, shifts=[[0.0, 1.0], [2.0]] + [[0.0, 0.0]] * (N - 2))
    expect_error(dataset, METADATA, "shifts")


def test_write_refuses_to_overwrite_and_leaves_dataset_untouched(dataset):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dataset.iterdir()}
    other = make_series(projections=np.zeros((N, H, W), np.float32))
    with pytest.raises(FileExistsError, match="already holds"):
        write_tilt_series(dataset, other)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dataset.iterdir()}
    assert after == before
    # explicit overwrite replaces it, and drops a ground truth that no longer belongs to it
    write_tilt_series(dataset, other, overwrite=True)
    assert not (dataset / GROUND_TRUTH).exists()
    np.testing.assert_array_equal(read_tilt_series(dataset).projections, 0.0)


def test_write_refuses_a_partial_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / METADATA).write_text("{}")
    with pytest.raises(FileExistsError, match=METADATA):
        write_tilt_series(tmp_path / "d", make_series())
    assert os.listdir(tmp_path / "d") == [METADATA]


def test_in_memory_validation():
    with pytest.raises(TiltSeriesError, match="shape"):
        make_series(projections=np.zeros((H, W), np.float32))
    with pytest.raises(TiltSeriesError, match="tilt angles"):
        make_series(tilt_angles=[0.0, 1.0])
    with pytest.raises(TiltSeriesError, match="tilt_axis_angle"):
        make_series(tilt_axis_angle=float("nan"))
    with pytest.raises(TiltSeriesError, match="shifts"):
        make_series(shifts=np.full((N, 2), np.inf))


# --- counts: detected from the values, declared in metadata.json, integer stacks ---------------------------


def poisson_stack(seed=0, mean=3.0):
    return np.random.default_rng(seed).poisson(mean, size=(N, H, W)).astype(np.float32)


def test_counts_detected_from_values():
    assert make_series(projections=poisson_stack()).counts is True
    assert make_series().counts is False  # Gaussian floats
    spoilt = poisson_stack()
    spoilt[2, 3, 4] = 2.5  # one value off the integers
    assert make_series(projections=spoilt).counts is False
    assert make_series(projections=poisson_stack() - 1.0).counts is False  # too few pixels to measure an offset
    series = make_series(projections=poisson_stack())
    assert series.gain == 1.0 and series.metadata()["counts"] is True and series.metadata()["gain"] == 1.0


@pytest.mark.parametrize("gain", [2.5, 0.37, 1 / 8000])
def test_counts_in_another_unit_are_detected_with_their_gain(tmp_path, gain):
    """Counts divided by a gain (or a dose) lie on a lattice of one step: counts, gain one over it."""
    stack = (poisson_stack() / gain).astype(np.float32)
    series = make_series(projections=stack)
    assert series.counts is True and series.gain == pytest.approx(gain, rel=1e-6)
    back = read_tilt_series(write_tilt_series(tmp_path / "s", series))  # written back
    assert back.counts is True and back.gain == pytest.approx(gain, rel=1e-6)
    assert make_series(projections=stack, gain=3.0).gain == 3.0  # a gain given wins
    offset = stack + np.float32(0.5 / gain)  # half a step off the lattice
    assert make_series(projections=offset).counts is False


def test_quantised_data_with_less_than_poisson_noise_are_not_counts():
    """Levels of an image (a smooth signal quantised to 0.01) lie on a lattice too, but vary from
    pixel to pixel far less than counts in that step would."""
    ramp = np.linspace(0.0, 3.0, N * H * W).reshape(N, H, W)
    levels = np.rint(ramp * 100).astype(np.float32) / np.float32(100)
    assert poisson_dispersion(levels * 100) < 0.1
    assert make_series(projections=levels).counts is False
    assert poisson_dispersion(poisson_stack()) == pytest.approx(1.0, abs=0.15)


def test_counts_in_metadata_override_detection_both_ways(tmp_path):
    counting = write_tilt_series(tmp_path / "c", make_series(projections=poisson_stack()))
    assert json.loads((counting / METADATA).read_text())["counts"] is True  # written back
    assert read_tilt_series(counting).counts is True
    set_metadata(counting, counts=False)
    back = read_tilt_series(counting)
    assert back.counts is False and "counts" not in back.extra
    floating = write_tilt_series(tmp_path / "f", make_series())
    assert read_tilt_series(floating).counts is False
    set_metadata(floating, counts=None)  # absent: detected
    assert read_tilt_series(floating).counts is False
    scaled = make_series(projections=poisson_stack() / 4.0, counts=True, gain=4.0)  # counts = 4 * value
    back = read_tilt_series(write_tilt_series(tmp_path / "s", scaled))
    assert back.counts is True and back.gain == 4.0 and back.extra == scaled.extra
    np.testing.assert_array_equal(back.projections, scaled.projections)
    set_metadata(tmp_path / "s", counts="yes")
    expect_error(tmp_path / "s", METADATA, '"counts" must be true or false', "'yes'")


def test_elements_must_be_chemical_symbols(dataset):
    """metadata.json's "elements" is read as given, or refused with the file named: the minimum
    distance, the species and their bonds are looked up by symbol when training starts."""
    set_metadata(dataset, elements=["Si", "O"])
    assert read_tilt_series(dataset).elements == ["Si", "O"]
    for bad in ("Si", ["Si", "Xx"], [14, 8]):
        set_metadata(dataset, elements=bad)
        expect_error(dataset, METADATA, '"elements" must be a list of chemical symbols', repr(bad))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint32, np.int32])
def test_integer_tiff_stack_is_read_as_counts_exactly(dataset, dtype):
    info = np.iinfo(dtype)
    values = np.random.default_rng(1).integers(0, min(info.max, 2**24), size=(N, H, W), endpoint=True)
    values.flat[:2] = (0, min(info.max, 2**24))  # the ends of the range float32 holds exactly
    tifffile.imwrite(dataset / PROJECTIONS, values.astype(dtype))
    set_metadata(dataset, counts=None)  # the writer recorded the float stack's "counts": false
    series = read_tilt_series(dataset)
    assert series.projections.dtype == np.float32 and series.counts is True
    np.testing.assert_array_equal(series.projections.astype(np.int64), values)


def test_integer_stack_with_negative_values(dataset):
    """A signed stack with an offset below zero is read, but is not counts; declared counts, it is refused."""
    values = np.random.default_rng(2).integers(-50, 3000, size=(N, H, W)).astype(np.int16)
    tifffile.imwrite(dataset / PROJECTIONS, values)
    set_metadata(dataset, counts=None)
    series = read_tilt_series(dataset)
    assert series.counts is False
    np.testing.assert_array_equal(series.projections, values)
    set_metadata(dataset, counts=True)
    expect_error(dataset, str(dataset / PROJECTIONS), "declared as counts", "negative")


def test_32_bit_values_that_float32_cannot_hold_are_refused(dataset):
    values = np.full((N, H, W), 7, np.int32)
    values[1, 2, 3] = 2**25  # even: float32 holds it exactly
    tifffile.imwrite(dataset / PROJECTIONS, values)
    assert read_tilt_series(dataset).projections[1, 2, 3] == 2**25
    values[4, 0, 0] = 2**24 + 1
    tifffile.imwrite(dataset / PROJECTIONS, values)
    expect_error(dataset, str(dataset / PROJECTIONS), "1 values", "int32", "no exact float32 equal", "16777217")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_8_bit_stack_is_counts_only_when_declared(dataset, dtype):
    values = np.random.default_rng(3).integers(0, 100, size=(N, H, W)).astype(dtype)
    tifffile.imwrite(dataset / PROJECTIONS, values)
    set_metadata(dataset, counts=False)
    expect_error(dataset, str(dataset), "floating point", np.dtype(dtype).name, '"counts": true')
    set_metadata(dataset, counts=True)
    series = read_tilt_series(dataset)
    assert series.counts is True and series.projections.dtype == np.float32
    np.testing.assert_array_equal(series.projections, values)
    if dtype == np.int8:
        values[3, 1, 1] = -4
        tifffile.imwrite(dataset / PROJECTIONS, values)
        expect_error(dataset, str(dataset / PROJECTIONS), "1 negative values", "pages [3]")


def test_negative_values_in_declared_counts_are_refused(dataset):
    stack = poisson_stack()
    stack[2, 5, 6] = -1.0
    tifffile.imwrite(dataset / PROJECTIONS, stack)
    set_metadata(dataset, counts=None)
    assert read_tilt_series(dataset).counts is False  # not declared: detected as no counts
    set_metadata(dataset, counts=True)
    expect_error(dataset, str(dataset / PROJECTIONS), "declared as counts hold 1 negative values", "pages [2]")
    with pytest.raises(TiltSeriesError, match=r"tilt series: projections declared as counts hold 1 negative"):
        make_series(projections=stack, counts=True)


@pytest.mark.parametrize("gain", [0.0, -2.0, float("nan"), float("inf"), "2", True, None])
def test_gain_must_be_finite_and_positive(gain):
    with pytest.raises(TiltSeriesError, match="tilt series: gain must be a"):
        make_series(gain=gain)


def test_gain_in_metadata(dataset):
    set_metadata(dataset, gain=2.5)
    assert read_tilt_series(dataset).gain == 2.5
    set_metadata(dataset, gain="high")
    expect_error(dataset, METADATA, '"gain" must be a number')
    set_metadata(dataset, gain=-1)
    expect_error(dataset, str(dataset), "gain must be a finite number of counts per data unit above 0")
    with pytest.raises(TiltSeriesError, match="counts must be True, False or None"):
        make_series(counts="yes")


# --- counts from their noise: a detector's gain and offset (photon transfer) ---------------------------


def expected_counts(seed, n=20, size=64, atoms=40, peak=10.0, width=2.5):
    """(n, size, size) mean counts: a pedestal of 1 and ``atoms`` Gaussian atoms of ``peak`` counts
    and ``width`` pixels a projection; 81,920 pixels, enough to measure the noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    mean = np.ones((n, size, size))
    for k in range(n):
        for cy, cx in rng.uniform(4, size - 4, size=(atoms, 2)):
            mean[k] += peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return mean


def detector_reading(seed, per_count=1.0, offset=0.0, read_noise=0.0):
    """Poisson counts of :func:`expected_counts` read as ``per_count`` data units a count over
    ``offset``, with Gaussian read noise of ``read_noise`` data units; float32."""
    rng = np.random.default_rng(100 + seed)
    counts = rng.poisson(expected_counts(seed))
    return (per_count * counts + offset + rng.normal(0.0, read_noise, counts.shape) * (read_noise > 0)).astype(
        np.float32
    )


def detector_series(stack, **fields):
    return TiltSeries(stack, np.linspace(-60, 60, len(stack)), 0.195, **fields)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_photon_transfer_measures_the_slope_and_offset(seed):
    """Over ten seeds the slope came within 17 % and the offset within 0.18 counts (whole counts)
    and 0.14 counts (37 data units a count over 1000, read noise of 20)."""
    transfer = photon_transfer(detector_reading(seed))
    assert transfer.slope == pytest.approx(1.0, rel=0.25) and abs(transfer.offset) < 0.5
    assert transfer.clean.sum() >= 5 and transfer.growth > LEAST_GROWTH
    transfer = photon_transfer(detector_reading(seed, 37.0, 1000.0, 20.0))
    assert transfer.slope == pytest.approx(37.0, rel=0.25)
    assert transfer.offset == pytest.approx(1000.0 - 20.0**2 / 37.0, abs=0.5 * 37.0)  # the read noise as counts
    assert photon_transfer(detector_reading(seed)[:, :20, :20]) is None  # too small to measure


def test_counts_over_a_detector_offset_are_counts_of_whole_numbers():
    """Whole counts read over an offset (a baseline added, or a dark level subtracted) are detected
    with it, to the lattice, and the series holds the counts themselves."""
    counts = detector_reading(0)
    for offset in (100.0, -1.0, -0.75):
        series = detector_series(counts + np.float32(offset))
        assert series.counts is True and (series.gain, series.subtracted) == (1.0, pytest.approx(offset, abs=1e-5))
        np.testing.assert_allclose(series.projections, counts, atol=1e-4)
        part = dataclasses.replace(series, projections=series.projections[:3], tilt_angles=series.tilt_angles[:3])
        np.testing.assert_array_equal(part.projections, series.projections[:3])  # not subtracted twice
        assert part.subtracted == series.subtracted
    plain = detector_series(counts)
    assert (plain.counts, plain.gain, plain.subtracted) == (True, 1.0, 0.0)
    np.testing.assert_array_equal(plain.projections, counts)


@pytest.mark.parametrize("digitised", [False, True])
def test_a_scaled_detector_with_read_noise_is_counts_by_its_noise(tmp_path, digitised):
    """37 data units a count over 1000, read noise of 20 (continuous, or digitised to whole numbers,
    a lattice that is not the counts'): counts with the measured gain and offset; written back and
    read, the same counts."""
    stack = detector_reading(0, 37.0, 1000.0, 20.0)
    stack = np.rint(stack) if digitised else stack
    series = detector_series(stack)
    assert series.counts is True and series.gain == pytest.approx(1 / 37.0, rel=0.2)
    assert series.subtracted == pytest.approx(1000.0 - 20.0**2 / 37.0, abs=0.5 * 37.0)
    effective = (20.0 / 37.0) ** 2 + expected_counts(0).mean()  # the counts and the read noise's as counts
    assert series.projections.dtype == np.float32
    assert float(np.mean(series.projections * series.gain)) == pytest.approx(effective, rel=0.1)
    back = read_tilt_series(write_tilt_series(tmp_path / "s", series))
    assert (back.counts, back.gain, back.subtracted) == (True, series.gain, 0.0)
    np.testing.assert_array_equal(back.projections, series.projections)


def test_additive_noise_of_one_level_is_not_counts():
    """The paper's data: a signal with Gaussian noise of one level (and the same signal without
    noise, or with little) is not counts, whatever the signal's own structure puts in the details."""
    signal = 37.0 * expected_counts(0)
    for noise in (20.0, 2.0, 0.0):
        stack = (signal + np.random.default_rng(5).normal(0.0, noise, signal.shape) * (noise > 0)).astype(np.float32)
        assert detector_series(stack).counts is False, noise


def test_offset_in_metadata_wins_and_is_checked(dataset):
    counts = poisson_stack()
    tifffile.imwrite(dataset / PROJECTIONS, counts + np.float32(7.0))
    set_metadata(dataset, counts=True, offset=7.0)
    series = read_tilt_series(dataset)
    assert series.subtracted == 7.0 and "offset" not in series.extra
    np.testing.assert_array_equal(series.projections, counts)
    set_metadata(dataset, offset="dark")
    expect_error(dataset, METADATA, '"offset" must be a number')
    with pytest.raises(TiltSeriesError, match="tilt series: offset must be a finite number"):
        make_series(offset=float("nan"))
    tifffile.imwrite(dataset / PROJECTIONS, counts - np.float32(1.0))
    set_metadata(dataset, offset=None)
    expect_error(dataset, "declared as counts", "negative", '"offset" in metadata.json')


# --- tilt schemes -------------------------------------------------------------------------------------


def test_parse_tilt_scheme():
    # 140 is not a multiple of 3: 47 angles from -70 to 68 (70 is off the 3-degree grid from -70)
    a = parse_tilt_scheme("-70:70:3")
    assert len(a) == 47 and a[0] == -70 and a[-1] == 68
    assert len(parse_tilt_scheme("-69:69:3")) == 47  # both ends on the grid
    np.testing.assert_allclose(np.diff(a), 3.0)
    b = parse_tilt_scheme("-90:90:1")
    assert len(b) == 181 and b[0] == -90 and b[-1] == 90
    assert len(parse_tilt_scheme("0:1:0.1")) == 11  # stop on the grid despite rounding
    np.testing.assert_allclose(parse_tilt_scheme("-70:70:6"), np.arange(-70, 69, 6))  # stop off the grid: -70..68
    np.testing.assert_array_equal(parse_tilt_scheme("5:5:1"), [5.0])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-70:70",
        "-70:70:3:1",
        "a:b:c",
        "-70:70:0",
        "-70:70:-3",
        "70:-70:3",
        "0:inf:1",
        "nan:10:1",
        "0:10:nan",
        "-70,70,3",
    ],
)
def test_parse_tilt_scheme_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="tilt scheme"):
        parse_tilt_scheme(text)


# --- the nerfstudio DataParser --------------------------------------------------------------------------


def test_dataparser_outputs(dataset):
    outputs = TomographyDataParserConfig(data=dataset).setup().get_dataparser_outputs("train")
    cameras = outputs.cameras
    assert len(cameras) == N
    assert (cameras.camera_type == CameraType.ORTHOPHOTO.value).all()
    assert (cameras.width == W).all() and (cameras.height == H).all()
    scale = 2.0 / (max(H, W) * 0.37)
    assert outputs.dataparser_scale == pytest.approx(scale)
    assert outputs.metadata["scale"] == pytest.approx(scale)
    # one pixel is 1 / fx scene units = pixel_size * scale
    assert float(cameras.fx[0]) == pytest.approx(1.0 / (0.37 * scale), rel=1e-6)
    assert float(cameras.cx[0]) == W / 2 and float(cameras.cy[0]) == H / 2
    assert outputs.metadata["ground_truth"] == dataset / GROUND_TRUTH
    assert len(outputs.image_filenames) == N


def test_dataparser_holdout_split(dataset):
    config = TomographyDataParserConfig(data=dataset, holdout_every=2)
    train = config.setup().get_dataparser_outputs("train")
    val = config.setup().get_dataparser_outputs("val")
    test = config.setup().get_dataparser_outputs("test")
    np.testing.assert_array_equal(train.metadata["indices"], [0, 2, 4])
    np.testing.assert_array_equal(val.metadata["indices"], [1, 3])
    np.testing.assert_array_equal(test.metadata["indices"], [1, 3])
    assert len(train.cameras) == 3 and len(val.cameras) == 2
    full = TomographyDataParserConfig(data=dataset).setup().get_dataparser_outputs("train")
    # held-out cameras are the full set's cameras at those indices
    np.testing.assert_allclose(val.cameras.camera_to_worlds.numpy(), full.cameras.camera_to_worlds[[1, 3]].numpy())
    np.testing.assert_allclose(train.cameras.camera_to_worlds.numpy(), full.cameras.camera_to_worlds[[0, 2, 4]].numpy())
    # without holdout every split sees everything
    assert len(TomographyDataParserConfig(data=dataset).setup().get_dataparser_outputs("val").cameras) == N


def test_dataparser_reports_bad_dataset(tmp_path):
    with pytest.raises(TiltSeriesError, match=r"missing: no such file or directory"):
        TomographyDataParserConfig(data=tmp_path / "missing").setup().get_dataparser_outputs("train")


def test_dataparser_pixel_size_override(dataset):
    outputs = TomographyDataParserConfig(data=dataset, pixel_size=0.5).setup().get_dataparser_outputs("train")
    assert outputs.metadata["tilt_series"].pixel_size == 0.5
    assert outputs.dataparser_scale == pytest.approx(2.0 / (max(H, W) * 0.5))


def test_ground_truth_path(dataset, tmp_path):
    assert ground_truth_path(dataset) == dataset / GROUND_TRUTH
    assert ground_truth_path(dataset / PROJECTIONS) == dataset / GROUND_TRUTH  # beside a stack file
    assert ground_truth_path(tmp_path) is None
