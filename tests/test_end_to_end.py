"""End to end: nerfstudio training of atomsplat on small simulated tilt series (CPU, minutes).

The thresholds are far above what a broken projector, loader, convention or merge reaches: a
flipped tilt sign or row order loses most atoms, a missing merge leaves several Gaussians per
atom (false-positive rate of tens of percent), and a half-pixel offset of the convention moves
every atom by 0.18 A, which the position-error bounds catch.
"""

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch

from atomsplat.analysis.matching import evaluate
from atomsplat.cli.demo import main as demo_main
from atomsplat.data.dataparser import bundled_demo_path
from atomsplat.export import atoms_from_model, load_model
from atomsplat.training import train

STEPS = 1000


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The bundled Pt-Ni particle trained through nerfstudio's trainer; returns (config, model)."""
    config = train(bundled_demo_path(), STEPS, tmp_path_factory.mktemp("runs"))
    model, step = load_model(config)
    assert step == STEPS - 1
    return config, model


def test_bundled_series_reconstructs(demo_run):
    _, model = demo_run
    atoms = atoms_from_model(model)
    truth = ase.io.read(bundled_demo_path() / "ground_truth.xyz")
    report = evaluate(atoms.positions, truth.positions, atoms.get_chemical_symbols(), truth.get_chemical_symbols())
    print(report.summary())
    assert report.tpr >= 0.95
    assert report.fpr <= 0.05
    assert report.rmse < 0.15
    assert report.species_accuracy >= 0.9
    assert np.all(atoms.arrays["sigma"] > 0) and np.all(atoms.arrays["weight"] > 0)


def test_training_projection_matches_measurement(demo_run):
    _, model = demo_run
    from atomsplat.data.dataparser import TomographyDataParserConfig

    outputs = TomographyDataParserConfig(data=bundled_demo_path()).setup().get_dataparser_outputs("train")
    series = outputs.metadata["tilt_series"]
    noise = series.extra["simulation"]["noise_sigma"]
    for k in (0, len(series.tilt_angles) // 2):
        rendered = model.get_outputs_for_camera(outputs.cameras[k : k + 1])
        measured = torch.from_numpy(series.projections[k])
        rms = (rendered["projection"][..., 0] - measured).pow(2).mean().sqrt()
        assert rms < 1.2 * noise  # the fit explains the projection down to the noise
        assert rendered["rgb"].shape == measured.shape + (3,)


def test_viewer_perspective_camera_renders(demo_run):
    """The viewer's own (perspective) camera gets a parallel projection along its axis."""
    from nerfstudio.cameras.cameras import Cameras, CameraType

    _, model = demo_run
    c2w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -3.0], [0.0, 1.0, 0.0, 0.0]])[None]
    camera = Cameras(
        camera_to_worlds=c2w,
        fx=200.0,
        fy=200.0,
        cx=64.0,
        cy=48.0,
        width=128,
        height=96,
        camera_type=CameraType.PERSPECTIVE,
    )
    out = model.get_outputs_for_camera(camera)
    assert out["rgb"].shape == (96, 128, 3) and out["depth"].shape == (96, 128, 1)
    assert float(out["rgb"].min()) >= 0.0 and float(out["rgb"].max()) <= 1.0
    assert float(out["rgb"].max()) > 0.2  # the particle is in view
    assert torch.isfinite(out["depth"]).all()


def test_training_with_the_web_viewer(tmp_path):
    """The default ``ns-train atomsplat`` serves the viewer: camera thumbnails, scene, model attributes."""
    model, _ = load_model(train(bundled_demo_path(), 30, tmp_path, vis="viewer"))
    assert model.num_points > 0


def test_demo_command_writes_atoms_and_report(tmp_path, capsys):
    assert demo_main(["--steps", "200", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "TPR" in printed
    assert len(list(tmp_path.rglob("atoms.xyz"))) == 1
    assert len(list(tmp_path.rglob("report.png"))) == 1


def _abtem_series_by_hand(directory, atoms, angles, pixel_size, size):
    """A tilt series written without atomsplat: abTEM directly, DESIGN.md geometry, tifffile."""
    import abtem
    import tifffile
    from scipy.ndimage import gaussian_filter

    images = []
    for angle in angles:
        view = atoms.copy()
        view.rotate(angle, "x", center=(0, 0, 0))  # the DESIGN.md convention, as ase spells it
        # pixel (i, j) is the detector point ((j + 0.5 - W/2) p, (i + 0.5 - H/2) p); abTEM samples
        # x = ix * p from its cell corner: move the detector origin to ((W/2 - 0.5) p, (H/2 - 0.5) p)
        view.positions += ((size / 2 - 0.5) * pixel_size, (size / 2 - 0.5) * pixel_size, 15.0)
        view.cell = (size * pixel_size, size * pixel_size, 30.0)
        potential = abtem.Potential(
            view, gpts=(size, size), slice_thickness=30.0, projection="infinite", parametrization="lobato"
        )
        image = potential.build(lazy=False).project().array.T  # abTEM is (x, y): rows must run along y
        images.append(gaussian_filter(image, 0.5 / pixel_size, mode="constant"))
    stack = np.asarray(images, dtype=np.float32)
    stack += np.random.default_rng(1).normal(0, 50, stack.shape).astype(np.float32)
    directory.mkdir()
    tifffile.imwrite(directory / "projections.tif", stack)
    (directory / "tilt_angles.txt").write_text("\n".join(str(a) for a in angles))
    (directory / "metadata.json").write_text(json.dumps({"pixel_size": pixel_size}))


def test_tilt_series_made_outside_atomsplat(tmp_path):
    """The convention is the documented one: a series simulated without atomsplat fits as well."""
    from ase.cluster import Decahedron

    atoms = Decahedron("Au", 4, 2, 0)
    atoms.positions -= atoms.positions.mean(axis=0) + np.array([1.1, -0.7, 0.4])  # off-centre on purpose
    data = tmp_path / "outside"
    _abtem_series_by_hand(data, atoms, np.arange(-90.0, 90.0, 3.0), 0.25, 96)
    model, _ = load_model(train(data, 800, tmp_path / "runs"))
    found = atoms_from_model(model)
    report = evaluate(found.positions, atoms.positions)
    print(report.summary())
    assert report.tpr >= 0.95
    assert report.fpr <= 0.05
    assert report.rmse < 0.08


def test_training_resumes_from_checkpoint(tmp_path):
    """``ns-train --load-dir`` continues from the saved step with the saved (resized) Gaussians."""
    first, _ = load_model(train(bundled_demo_path(), 200, tmp_path / "a"))
    run = next((tmp_path / "a").rglob("nerfstudio_models"))
    resumed_config = train(bundled_demo_path(), 100, tmp_path / "b", load_dir=run)
    resumed, step = load_model(resumed_config)
    assert step == 299
    assert resumed.num_points > 0
    moved = resumed.positions.shape != first.positions.shape or not torch.equal(resumed.positions, first.positions)
    assert moved  # the optimizers updated the live (loaded) parameters


@pytest.mark.parametrize("method", ["atomsplat-noiso", "atomsplat-nomerge"])
def test_ablation_methods_train(tmp_path, method):
    model, _ = load_model(train(bundled_demo_path(), 120, tmp_path, method=method))
    assert model.num_points > 0
    assert torch.isfinite(model.positions).all()


def test_ns_train_knows_the_methods():
    result = subprocess.run(
        [sys.executable, "-m", "nerfstudio.scripts.train", "atomsplat", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tomography" in result.stdout or "atomsplat" in result.stdout


def test_interrupted_training_resumes_from_its_last_checkpoint(tmp_path):
    """``ns-train`` killed mid-run (no clean exit) continues from its last checkpoint with --load-dir."""
    import signal
    import time

    command = [
        sys.executable,
        "-m",
        "nerfstudio.scripts.train",
        "atomsplat",
        "--data",
        str(bundled_demo_path()),
        "--output-dir",
        str(tmp_path / "a"),
        "--max-num-iterations",
        "100000",
        "--steps-per-save",
        "40",
        "--vis",
        "tensorboard",
        "--timestamp",
        "run",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "a").rglob("step-*.ckpt")) and time.monotonic() < deadline:
            assert process.poll() is None, "training ended before its first checkpoint"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint's write finish
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    checkpoints = sorted((tmp_path / "a").rglob("step-*.ckpt"))
    assert checkpoints, "no checkpoint was written"
    saved_step = int(checkpoints[-1].stem.split("-")[1])
    resumed, step = load_model(train(bundled_demo_path(), 60, tmp_path / "b", load_dir=checkpoints[-1].parent))
    assert step > saved_step
    assert resumed.num_points > 0 and torch.isfinite(resumed.positions).all()


def test_misaligned_series_on_a_background_is_recovered(tmp_path):
    """Unknown shifts of up to 2 pixels and a background ramp of 10 % of the maximum: with
    ``refine_shifts`` and a plane background learned jointly, the atoms are found and the shifts
    are recovered (up to the rigid translation that the atoms take instead)."""
    from atomsplat.data.formats import write_tilt_series
    from atomsplat.geometry import view_rotations
    from atomsplat.model.corrections import gauge_basis, shift_error
    from atomsplat.sim.simulate import center_structure, simulate_tilt_series

    truth = center_structure(ase.io.read(bundled_demo_path() / "ground_truth.xyz"))
    angles = np.arange(-90.0, 90.0, 4.0)
    series = simulate_tilt_series(
        truth, angles, noise_sigma=50.0, misalignment=2.0, background_ramp=0.1, progress=False
    )
    write_tilt_series(tmp_path / "spoilt", series, ground_truth=truth)
    # The corrections alone: births (on by default) trade atoms against the plane on this small series,
    # so that its slopes land anywhere from 6.3 to 10.9 against the bound of 7.6 from run to run
    # (rounding that depends on memory layout, amplified by training); open work, see README.
    model, _ = load_model(
        train(tmp_path / "spoilt", 1000, tmp_path / "runs", refine_shifts=True, background_degree=1, birth_every=0)
    )
    report = evaluate(atoms_from_model(model).positions, truth.positions)
    print(report.summary())
    assert report.tpr >= 0.95
    assert report.fpr <= 0.05
    basis = gauge_basis(torch.from_numpy(view_rotations(angles)).float())
    true_shifts = torch.tensor(series.extra["simulation"]["misalignment_shifts"], dtype=torch.float32)
    assert (
        shift_error(model.view_params["view_shifts"].detach(), true_shifts, basis) < 0.05
    )  # A; misaligned up to 0.5 A
    background = model.view_params["background"].detach() * model.display_top
    expected = torch.tensor(series.extra["simulation"]["background_coefficients"], dtype=torch.float32)
    assert float((background - expected).abs().max()) < 0.05 * float(expected[:, 0].max())
