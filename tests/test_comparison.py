"""The comparison: presets, the method registry, the dataset cache, typed results, the tables, the
command's errors, and the quick preset end to end (CI)."""

import inspect
import json

import ase.io
import numpy as np
import pytest
import torch

from atomsplat.benchmark import BenchmarkError
from atomsplat.benchmark.datasets import SETTINGS, SimulatedDataset, simulated_dataset
from atomsplat.benchmark.methods import METHODS, MethodResult, grid_shape, runner
from atomsplat.benchmark.preset import CONFIGS, Ablation, Preset, SimulationSettings, load_preset, preset_path
from atomsplat.benchmark.report import results_markdown
from atomsplat.benchmark.results import AblationRow, Finished, Results, Row, load_finished, save_finished
from atomsplat.benchmark.run import run_case
from atomsplat.cli.benchmark import main
from atomsplat.data.series import GROUND_TRUTH
from atomsplat.sim.potential import potential_volume

THREE_TILTS = "-60:60:60"  # a cheap scheme for the tests that only need some dataset


def test_presets_in_configs_load():
    for name in ("quick", "full"):
        preset = load_preset(name)
        assert set(preset.methods) == {"atomsplat", "fbp", "sirt", "inr"}
        assert preset.ablation.particle == "nanotube"
    assert load_preset("nobirths").simulation == SimulationSettings(0.25, 0.5, 50.0, 0)
    assert preset_path("quick") == CONFIGS / "benchmark_quick.json"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not a valid preset"),
        ('{"particles": ["gold"]}', "unknown particles"),
        ('{"particles": ["pd"], "methods": {"splatter": {}}}', "unknown particles or methods .*'splatter'"),
        ('{"particles": ["pd"], "colour": 1}', "preset has unknown fields \\['colour'\\]"),
        ('{"particles": ["pd"], "pixel_size": 0.3}', "unknown fields \\['pixel_size'\\]"),
        ('{"particles": ["pd"], "simulation": {"gain": 2}}', "simulation has unknown fields \\['gain'\\]"),
        ('{"particles": ["pd"], "size": "huge"}', "pd has no size 'huge'"),
        ('{"particles": ["pd"], "schemes": {"x": "10:0:5"}}', "tilt scheme 'x'"),
        ('{"particles": ["pd"], "ablation": {"particle": "pd"}}', "not a valid preset"),
    ],
)
def test_bad_presets_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "preset.json"
    path.write_text(content)
    with pytest.raises(BenchmarkError, match=message) as err:
        load_preset(str(path))
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- the registry
def test_every_method_is_a_runner_of_one_signature():
    assert {"atomsplat", "atomsplat-noiso", "atomsplat-nomerge", "fbp", "sirt", "inr"} <= set(METHODS)
    for name, run in METHODS.items():
        assert list(inspect.signature(run).parameters) == ["case", "options"], name
        assert runner(name) is run
    with pytest.raises(BenchmarkError, match="unknown method 'splatter'; methods: atomsplat, "):
        runner("splatter")


def oracle(case, options):
    """A registered method for the test: the true atoms and the true potential as its answer."""
    truth = ase.io.read(case.data / GROUND_TRUTH)
    volume = potential_volume(truth, case.series.pixel_size, grid_shape(case.series))
    return MethodResult(truth.positions, np.array(truth.get_chemical_symbols()), volume, seconds=0.0)


def test_a_registered_method_runs_scores_and_is_kept(tmp_path, monkeypatch):
    """Adding a method is one registry entry: the comparison runs it, scores it (the truth as
    answer scores TPR 1, FPR 0, RMSE 0, SSIM 1) and keeps its result for the next run."""
    monkeypatch.setitem(METHODS, "oracle", oracle)
    preset = Preset(["pd"], size="quick", schemes={"three": THREE_TILTS}, methods={"oracle": {}})
    lines = []
    (row,) = run_case("pd", "three", preset, tmp_path / "work", tmp_path, lines.append)
    assert (row.particle, row.scheme, row.tilt, row.method) == ("pd", "three", THREE_TILTS, "oracle")
    assert (row.n_true, row.n_pred, row.tpr, row.fpr, row.rmse) == (263, 263, 1.0, 0.0, 0.0)
    assert row.species_accuracy is None  # one element: nothing to tell apart
    assert row.ssim == pytest.approx(1.0, abs=1e-9)
    assert (tmp_path / "slices_pd_three.png").is_file()

    preset.schemes = {"renamed": THREE_TILTS}  # the same tilts under another name: still the same result
    (kept,) = run_case("pd", "renamed", preset, tmp_path / "work", tmp_path, lines.append)
    assert any("kept from" in line for line in lines)
    assert kept == Row(**{**row.to_dict(), "scheme": "renamed"})


# ----------------------------------------------------------------------------- the dataset cache
def test_simulated_datasets_are_keyed_by_every_setting(tmp_path):
    """Same settings reuse the dataset; another noise or pixel size makes a new one; a dataset
    whose stored settings do not match (a killed write, a hand edit) is simulated again."""
    base = SimulatedDataset("pd", "quick", THREE_TILTS, SimulationSettings())
    first = simulated_dataset(base, tmp_path)
    stamp = (first / "projections.tif").stat().st_mtime_ns
    assert simulated_dataset(SimulatedDataset("pd", "quick", THREE_TILTS, SimulationSettings()), tmp_path) == first
    assert (first / "projections.tif").stat().st_mtime_ns == stamp
    assert json.loads((first / SETTINGS).read_text()) == base.settings()

    noisier = simulated_dataset(
        SimulatedDataset("pd", "quick", THREE_TILTS, SimulationSettings(noise_sigma=100.0)), tmp_path
    )
    finer = simulated_dataset(
        SimulatedDataset("pd", "quick", THREE_TILTS, SimulationSettings(pixel_size=0.2)), tmp_path
    )
    assert len({first, noisier, finer}) == 3
    assert json.loads((noisier / "metadata.json").read_text())["simulation"]["noise_sigma"] == 100.0
    assert json.loads((finer / "metadata.json").read_text())["pixel_size"] == 0.2

    (first / SETTINGS).unlink()
    assert simulated_dataset(base, tmp_path) == first
    assert (first / "projections.tif").stat().st_mtime_ns != stamp


# ----------------------------------------------------------------------------- typed results
def _row(particle="pd", method="atomsplat", tpr=1.0, fpr=0.0, species_accuracy=None, **extra):
    values = dict(
        particle=particle,
        scheme="wedge",
        tilt="-70:70:3",
        method=method,
        n_true=100,
        n_pred=100,
        n_matched=100,
        tpr=tpr,
        fpr=fpr,
        rmse=0.05,
        species_accuracy=species_accuracy,
        max_distance=0.75,
        ssim=0.8,
        seconds=12.0,
        projection_psnr=None,
        projection_ssim=None,
    )
    return (AblationRow if extra else Row)(**values, **extra)


def test_results_round_trip_through_json(tmp_path):
    preset = Preset(["pd", "hea"], size="quick", ablation=Ablation("nanotube", "-90:90:2", steps=800))
    results = Results(
        "test machine",
        preset,
        [_row(), _row("hea", species_accuracy=0.97)],
        [_row("nanotube", gaussians_per_atom=0.61, separability=None)],
        total_seconds=61.5,
    )
    path = results.write(tmp_path / "results.json")
    assert Results.read(path) == results
    raw = json.loads(path.read_text())  # field names as docs/benchmarks/*/results.json have them
    assert set(raw) == {"machine", "preset", "rows", "ablation", "total_seconds", "skipped"}
    assert raw["rows"][1]["species_accuracy"] == 0.97 and raw["ablation"][0]["gaussians_per_atom"] == 0.61
    assert raw["preset"]["simulation"]["noise_sigma"] == 50.0

    path.write_text(json.dumps({**raw, "rows": [{"particle": "pd"}]}))
    with pytest.raises(BenchmarkError, match="results.json: not a results file"):
        Results.read(path)


DOCUMENTED_RESULTS = sorted((CONFIGS.parent / "docs" / "benchmarks").glob("*/results.json"))


@pytest.mark.parametrize("path", DOCUMENTED_RESULTS, ids=lambda p: p.parent.name)
def test_the_results_in_the_docs_read_with_this_version(path):
    """The runs the docs quote stay readable (``Results.read``), so their rows can be merged with new ones."""
    results = Results.read(path)
    assert results.rows and all(row.n_true > 0 for row in results.rows)


def test_finished_results_are_kept_only_for_the_same_settings(tmp_path):
    finished = Finished(_row(), np.random.default_rng(0).normal(size=(5, 3)), np.ones((4, 3)), np.arange(5.0))
    settings = {"dataset": {"particle": "pd"}, "method": "atomsplat", "options": {"steps": 800}}
    save_finished(tmp_path / "kept.npz", settings, finished)
    kept = load_finished(tmp_path / "kept.npz", settings)
    assert kept.row == finished.row
    for name in ("positions", "slab", "weights"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(finished, name))
    assert load_finished(tmp_path / "kept.npz", {**settings, "options": {"steps": 900}}) is None
    assert load_finished(tmp_path / "absent.npz", settings) is None


def test_results_markdown_tables_and_means():
    rows = [_row("pd", "atomsplat", 1.0, 0.0), _row("hea", "atomsplat", 0.9, 0.1), _row("pd", "fbp", 0.8, 0.2)]
    text = results_markdown(Results("test machine", Preset(["pd", "hea"]), rows))
    assert "Tilts -70:70:3 (wedge)" in text and "test machine" in text
    assert "| atomsplat | 0.9500 | 0.0500 | 0.800 |" in text  # mean over the two particles
    assert "| fbp | 0.8000 | 0.2000 | 0.800 |" in text
    assert "n/a" in text  # no species accuracy for one-element particles


# ----------------------------------------------------------------------------- the command
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--preset", "nope"], "benchmark_nope.json: no such preset; presets by name: full, lowdose, nobirths, quick"),
        (["--particles", "gold"], "--particles: ['gold'] not in the preset"),
        (["--schemes", "none"], "--schemes: ['none'] not in the preset"),
        (["--methods", "fbp", "splatter"], "--methods: unknown ['splatter']; methods: atomsplat, "),
        (["--engine", "serial", "--workers", "2"], "--ray-address, --workers and --gpus-per-job need --engine ray"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, arguments, message):
    assert main(["--output", str(tmp_path / "out"), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atomsplat-benchmark: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_overwrite_results_of_other_settings(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert main(["--preset", "quick", "--output", str(tmp_path)]) == 2
    assert "already holds results of other settings" in capsys.readouterr().err


# (low, high) of each row on the quick test's case, set outside the spread measured over two
# seeds and two thread counts (the docstring of test_quick_preset_one_particle_and_scheme).
QUICK_FEPT_WEDGE = {
    "fbp": dict(tpr=(0.97, 1), fpr=(0, 0.02), rmse=(0.11, 0.24), species_accuracy=(0.97, 1), ssim=(0.879, 0.901)),
    "sirt": dict(tpr=(0.95, 1), fpr=(0, 0.12), rmse=(0.14, 0.26), species_accuracy=(0.96, 1), ssim=(0.890, 0.911)),
    "inr": dict(tpr=(0.97, 1), fpr=(0, 0.03), rmse=(0.09, 0.16), species_accuracy=(0.97, 1), ssim=(0.892, 0.914)),
    "atomsplat": dict(tpr=(0.92, 1), fpr=(0, 0.03), rmse=(0.01, 0.12), species_accuracy=(0.77, 1), ssim=(0.903, 0.930)),
}


def test_quick_preset_one_particle_and_scheme(tmp_path, capsys):
    """The whole chain on the quick FePt particle (287 atoms) in the missing wedge: every method,
    the table, the figures; each row within bounds of its known good values. Run again, it keeps
    every result.

    Measured on the 2-core development machine with the quick preset's hold-out (every 10th
    projection), simulation seed 0 (this test's) and 1, OMP_NUM_THREADS=NUMBA_NUM_THREADS=2 (and 1
    for atomsplat); TPR / FPR / RMSE (A) / species accuracy / SSIM:

    - fbp, seed 0: 0.9930 / 0 / 0.211 / 1 / 0.889; seed 1: 0.9965 / 0 / 0.145 / 1 / 0.891
    - sirt, seed 0: 0.9756 / 0.0939 / 0.227 / 0.993 / 0.900; seed 1: 0.9965 / 0.0103 / 0.177 / 1 / 0.901
    - inr, seed 0: 1 / 0 / 0.132 / 1 / 0.902; seed 1: 0.9931 / 0.0069 / 0.119 / 0.997 / 0.904
    - atomsplat, seed 0: 0.9686 / 0 / 0.059 / 0.921 / 0.920 (1 thread), 0.9930 / 0 / 0.044 / 0.982 /
      0.920 (2); seed 1: 1 / 0 / 0.043 / 0.979 / 0.913 (1), 1 / 0 / 0.044 / 0.979 / 0.913 (2)

    In the full suite on a fresh clone under CI (2 threads, seed 0) atomsplat gave 0.9547 / 0.0036 /
    0.070 / 0.799 / 0.919, outside the four runs above, while this test alone and the full suite
    on the development checkout stayed within them. The likely cause is the CPU: on the development
    machine (AVX-512) the same run with torch's AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``) gave
    0.9721 / 0.0036 / 0.061 / 0.928 / 0.920, so the instruction set a machine dispatches to moves
    the outcome as far as the thread count does, and CI's machine need not be this one. So
    atomsplat's bounds are set from all six.

    Since the diffuse Gaussians still diffuse after the final refinement are removed and the atoms
    refined again (2026-12-02), atomsplat gives (same order; seed 0 also with AVX2 kernels, and
    in a run of the whole quick preset in one process): seed 0: 0.9547 / 0 / 0.091 / 0.894 / 0.912
    (1), 0.9756 / 0 / 0.079 / 0.946 / 0.911 (2), 0.9512 / 0.0073 / 0.087 / 0.908 / 0.912 (AVX2),
    0.9861 / 0 / 0.048 / 0.961 / 0.912 (whole preset); seed 1: 0.9931 / 0 / 0.086 / 0.965 / 0.910
    (1), 0.9896 / 0.0035 / 0.074 / 0.969 / 0.910 (2). Here, 800 steps short of convergence in the
    wedge, that removal costs position error (0.048-0.091 A against 0.043-0.070) and species
    (0.894-0.969 against 0.921-0.982 on this machine); at full size it is what brings the species
    back (docs/benchmarks.md). Since atoms are born after that removal where the residual shows
    them missing (2026-12-03), seed 0: 0.9895 / 0 / 0.050 / 0.933 / 0.913 (2); in the
    quick preset (Ray, 1 thread), 0.9791 / 0 / 0.057 / 0.922 / 0.914 (1).

    FBP, SIRT and INR give the same results with 1 and 2 threads (to 1e-6): their spread is the
    seed's. The bounds (:data:`QUICK_FEPT_WEDGE`) lie outside the spread by about its width:
    TPR 0.02 below it (atomsplat 0.03), FPR 0.02 above, RMSE 0.03 either side, species accuracy
    0.03 below, SSIM 0.01 either side; atomsplat's from all runs above, old and new.
    """
    command = [
        "--preset",
        "quick",
        "--output",
        str(tmp_path / "out"),
        "--particles",
        "fept",
        "--schemes",
        "wedge",
        "--no-ablation",
        "--engine",
        "serial",  # as the bounds were measured; tests/test_batch.py runs the comparison through Ray
    ]
    assert main(command) == 0
    results = Results.read(tmp_path / "out" / "results.json")
    rows = {r.method: r for r in results.rows}
    assert set(rows) == set(QUICK_FEPT_WEDGE)
    for method, bounds in QUICK_FEPT_WEDGE.items():
        assert rows[method].n_true == 287
        for metric, (low, high) in bounds.items():
            assert low <= getattr(rows[method], metric) <= high, (method, metric, getattr(rows[method], metric))
    figures = tmp_path / "out" / "figures"
    assert (figures / "slices_fept_wedge.png").is_file() and (figures / "bars.png").is_file()
    assert "| fept | atomsplat |" in (tmp_path / "out" / "results.md").read_text()

    capsys.readouterr()
    (figures / "slices_fept_wedge.png").unlink()
    assert main(command) == 0
    assert capsys.readouterr().out.count("kept from") == len(rows)
    assert Results.read(tmp_path / "out" / "results.json").rows == results.rows
    assert (figures / "slices_fept_wedge.png").is_file()


# ----------------------------------------------------------------------------- nerfstudio methods by name
SEVEN_TILTS = "-60:60:20"  # seven projections: with the hold-out of every 10th, projection 5 is held out


@pytest.fixture(scope="module")
def seven_tilts_work(tmp_path_factory):
    """A work directory holding the quick Pd particle simulated at :data:`SEVEN_TILTS` (once)."""
    work = tmp_path_factory.mktemp("work")
    simulated_dataset(SimulatedDataset("pd", "quick", SEVEN_TILTS, SimulationSettings()), work)
    return work


def test_any_nerfstudio_method_runs_by_name_and_download_failures_are_skipped(seven_tilts_work, tmp_path, monkeypatch):
    """A method registered with nerfstudio runs by its name: ``atomsplat-inr`` trains through
    nerfstudio on the case's training projections, and is scored on the held-out one (PSNR, SSIM)
    and by its traced atoms; a stock method whose model downloads weights when it is built
    (splatfacto: LPIPS) is skipped with a message when the download fails (made to fail here, so
    that the test is the same on a machine with internet), and the comparison goes on."""
    import urllib.error

    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    preset = Preset(
        ["pd"],
        size="quick",
        schemes={"seven": SEVEN_TILTS},
        methods={"atomsplat-inr": {"steps": 20}, "splatfacto": {}},
        holdout_every=10,
    )
    skipped, lines = {}, []
    (row,) = run_case("pd", "seven", preset, seven_tilts_work, tmp_path, lines.append, skipped)
    assert row.method == "atomsplat-inr" and row.n_true == 263
    assert row.tpr is not None and row.n_pred > 0  # the traced maxima of its volume
    assert 10.0 < row.projection_psnr < 60.0 and 0.0 < row.projection_ssim <= 1.0
    assert set(skipped) == {"splatfacto"}
    assert "splatfacto: skipped: its model downloads weights" in skipped["splatfacto"]
    assert "URLError" in skipped["splatfacto"]
    assert any("splatfacto: skipped" in line for line in lines)
    assert (tmp_path / "projections_pd_seven.png").is_file() and (tmp_path / "slices_pd_seven.png").is_file()


class _RadianceField:
    """A stand-in for a stock nerfstudio model: it renders "rgb" only and has no atoms."""

    device = "cpu"

    def __init__(self, grey: float):
        self.grey = grey

    def eval(self):
        return self

    def get_outputs_for_camera(self, camera):
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        return {"rgb": torch.full((height, width, 3), self.grey)}


def test_a_model_without_atoms_gets_projection_scores_only(seven_tilts_work):
    """A stock model's answer: its grey level, learned from the 8-bit previews (p / max), times the
    series maximum; no atoms, no volume; its row has projection scores and None for the rest."""
    from atomsplat.benchmark.methods import Case, model_answer
    from atomsplat.benchmark.run import prepare, score
    from atomsplat.data.formats import read_tilt_series

    dataset = SimulatedDataset("pd", "quick", SEVEN_TILTS, SimulationSettings())
    case, truth = prepare(dataset, seven_tilts_work, holdout_every=10)
    answer = model_answer(_RadianceField(0.25), case, seconds=1.0)
    top = float(read_tilt_series(case.data).projections.max())
    assert answer.positions is None and answer.volume is None
    np.testing.assert_allclose(answer.projections, 0.25 * top, rtol=1e-6)
    assert answer.projections.shape == (1,) + case.series.shape[1:]
    row = score(answer, truth, case, "pd", "seven", SEVEN_TILTS, "radiance-field")
    assert row.tpr is None and row.n_pred is None and row.ssim is None and row.n_true == 263
    assert row.projection_psnr is not None and row.projection_ssim is not None
    assert isinstance(case, Case) and list(case.held_out) == [5]
