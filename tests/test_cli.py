"""The console scripts, run in-process: ``--help`` lists the options the README documents, and bad input stops
with one line on stderr naming the file, exit status 2, no traceback; ``ns-train atomsplat`` (a subprocess) too."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomsplat.cli import batch, demo, evaluate, export, simulate
from atomsplat.data.dataparser import bundled_demo_path

# Per command: its main, the options the README's "Commands" section spells, and a command line with a missing file.
COMMANDS = {
    "atomsplat-simulate": (
        simulate.main,
        ["STRUCTURE", "--tilt", "--output", "--pixel-size", "--probe-sigma", "--noise-sigma", "--dose", "--seed"]
        + ["--shape", "--tilt-axis-angle", "--misalign", "--background-ramp", "--overwrite"],
        lambda tmp: [str(tmp / "missing.xyz"), "--tilt=-70:70:3", "--output", str(tmp / "out")],
    ),
    "atomsplat-export": (
        export.main,
        ["--load-config", "--output", "--elements", "--volume", "--voxel", "--report", "--overwrite"],
        lambda tmp: ["--load-config", str(tmp / "missing.yml"), "--output", str(tmp / "atoms.xyz")],
    ),
    "atomsplat-eval": (
        evaluate.main,
        ["PRED", "TRUE", "--max-distance", "--json"],
        lambda tmp: [str(tmp / "missing.xyz"), str(tmp / "missing.xyz")],
    ),
    "atomsplat-batch": (
        batch.main,
        ["DATA", "--output", "--steps", "--config", "--method", "--pixel-size", "--time-series", "--warm-steps"]
        + ["--max-distance", "--significance", "--engine", "--ray-address", "--workers", "--cpus-per-job"]
        + ["--gpus-per-job"],
        lambda tmp: [str(tmp / "missing"), "--output", str(tmp / "out")],
    ),
    "atomsplat-demo": (
        demo.main,
        ["--data", "--pixel-size", "--steps", "--output-dir", "--max-distance"],
        lambda tmp: ["--data", str(tmp / "missing"), "--output-dir", str(tmp / "runs")],
    ),
}


@pytest.mark.parametrize("prog", COMMANDS)
def test_help_lists_the_documented_options(prog, capsys):
    main, options, _ = COMMANDS[prog]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    assert [o for o in options if o not in out] == []


@pytest.mark.parametrize("prog", COMMANDS)
def test_bad_input_is_one_line_naming_the_file(prog, tmp_path, capsys):
    main, _, bad_command = COMMANDS[prog]
    with pytest.raises(SystemExit) as exit_info:
        main(bad_command(tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1
    assert "missing" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_noise_sigma_and_dose_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.main(["s.xyz", "--tilt=-70:70:3", "--output", str(tmp_path), "--noise-sigma", "1", "--dose", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--noise-sigma" in err and "--dose" in err and "not allowed together" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- ns-train on bad data
def _spoil_stack(make):
    """A spoiler that rewrites the copied dataset's projections.tif as ``make(stack)``."""

    def spoil(data):
        import tifffile

        stack = tifffile.imread(data / "projections.tif")
        tifffile.imwrite(data / "projections.tif", make(stack), photometric="minisblack")
        return data

    return spoil


def _spoil_metadata(change):
    def spoil(data):
        meta = json.loads((data / "metadata.json").read_text())
        change(meta)
        (data / "metadata.json").write_text(json.dumps(meta))
        return data

    return spoil


def _drop_last_angle(data):
    lines = (data / "tilt_angles.txt").read_text().strip().splitlines()
    (data / "tilt_angles.txt").write_text("\n".join(lines[:-1]) + "\n")
    return data


def _with_nan(stack):
    stack = stack.copy()
    stack[3, 5, 7] = np.nan
    return stack


def _not_a_tiff(data):
    (data / "projections.tif").write_bytes(b"not a TIFF at all" * 100)
    return data


# The README's bad data: how to spoil a copy of the bundled dataset (returns the --data path).
BAD_DATA = {
    "wrong stack shape": _spoil_stack(lambda stack: np.stack([stack, stack], axis=-1)),
    "angle count mismatch": _drop_last_angle,
    "NaN values": _spoil_stack(_with_nan),
    "8-bit images": _spoil_stack(lambda stack: (255 * stack / stack.max()).clip(0, 255).astype(np.uint8)),
    "missing pixel size": _spoil_metadata(lambda meta: meta.pop("pixel_size")),
    "absurd pixel size": _spoil_metadata(lambda meta: meta.update(pixel_size=25.0)),  # 2.5 nm given as A
    "unreadable file": _not_a_tiff,
    "missing dataset": lambda data: data.parent / "no_such_dataset",
}

# Warnings that torch and nerfstudio print while nerfstudio imports itself, before any atomsplat
# code runs (with torch 2.14: torch.jit.script and torch.cuda.amp.custom_fwd/bwd deprecations in
# nerfstudio's modules, 3 warnings of 2 lines each): a "path/torch|nerfstudio/...py:N: XWarning:"
# line and the source line after it. Every ns-train command prints them; they are not counted.
IMPORT_WARNING = re.compile(r"^\S*/site-packages/(torch|nerfstudio)/\S+\.py:\d+: \w*Warning: ")


def _without_import_warnings(lines):
    """``lines`` without the import warnings of torch and nerfstudio (each two lines)."""
    kept, skip = [], False
    for line in lines:
        if skip:
            skip = False
        elif IMPORT_WARNING.match(line):
            skip = True
        else:
            kept.append(line)
    return kept


def _bad_dataset(case, tmp_path):
    """(--data path, --output-dir path) of a spoiled copy of the bundled dataset."""
    work = tmp_path / re.sub(r"\W+", "_", case)
    data = BAD_DATA[case](Path(shutil.copytree(bundled_demo_path(), work / "data")))
    return data, work / "outputs"


def _ns_train_args(data, outputs):
    return ["atomsplat", "--data", str(data), "--vis", "tensorboard", "--output-dir", str(outputs)]


@pytest.mark.parametrize("case", BAD_DATA)
def test_ns_train_stops_on_bad_data_with_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capfd):
    """``ns-train atomsplat --data BAD`` for every bad input of the README, through nerfstudio's own
    entry point (argument parsing included) in this process: exit status 2, no traceback, two lines
    (nerfstudio's "Using --data alias" log line, then the reader's one-line message naming the
    file), no output directory. The whole command, imports included, is run by the test below."""
    from nerfstudio.scripts.train import entrypoint

    data, outputs = _bad_dataset(case, tmp_path)
    monkeypatch.setattr(sys, "argv", ["ns-train"] + _ns_train_args(data, outputs))
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert "Traceback" not in captured.out + captured.err
    assert len(lines) == 2 and "Using --data alias" in lines[0], lines
    assert lines[1].startswith("ns-train: error: ") and str(data) in lines[1], lines
    assert not outputs.exists()


def test_ns_train_command_on_bad_data_prints_at_most_five_lines(tmp_path):
    """The command itself, ``python -m nerfstudio.scripts.train atomsplat --data BAD``, for a file
    that is missing and for data that fail validation (subprocesses; about 10 s of CPU each, most of
    it nerfstudio's import): exit status 2, no traceback, at most 5 lines (2) besides the warnings
    that torch and nerfstudio print while nerfstudio imports itself (6 lines with torch 2.14, before
    any atomsplat code runs), no output directory."""
    from concurrent.futures import ThreadPoolExecutor

    def ns_train(case):
        data, outputs = _bad_dataset(case, tmp_path)
        command = [sys.executable, "-m", "nerfstudio.scripts.train"] + _ns_train_args(data, outputs)
        return data, outputs, subprocess.run(command, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(ns_train, ["missing dataset", "NaN values"]))
    for data, outputs, done in results:
        printed = (done.stdout + done.stderr).splitlines()
        lines = _without_import_warnings(printed)
        assert done.returncode == 2, printed
        assert "Traceback" not in done.stdout + done.stderr
        assert len(lines) <= 5, lines
        assert lines[-1].startswith("ns-train: error: ") and str(data) in lines[-1], lines
        assert not outputs.exists()
        assert len(printed) - len(lines) <= 6, printed  # only the known import warnings were left out


def test_ns_train_reads_the_data_once(tmp_path):
    """The series read before ns-train starts (to stop it on bad data) is the one the DataParser
    uses: the files are read, and their warnings given, once."""
    from atomsplat.data.dataparser import TomographyDataParserConfig, read_ahead

    series = read_ahead(bundled_demo_path())
    parser = TomographyDataParserConfig(data=bundled_demo_path()).setup()
    assert parser.series is series
    assert TomographyDataParserConfig(data=bundled_demo_path()).setup().series is not series  # handed over once


def test_training_from_python_raises_on_bad_data(tmp_path):
    """:func:`atomsplat.training.train` (the demo's and the benchmark's way to ns-train) raises the
    reader's error, not SystemExit, and writes nothing."""
    from atomsplat.data.series import TiltSeriesError
    from atomsplat.training import train

    with pytest.raises(TiltSeriesError, match="no such file or directory"):
        train(tmp_path / "missing", 10, tmp_path / "outputs")
    assert list(tmp_path.iterdir()) == []


def test_training_config_sets_learning_rates_and_names_an_unknown_group(tmp_path):
    """``learning_rates`` overrides a parameter group's starting rate on a copy of the method's
    config; a group the method lacks is an error naming it, not a silently ignored setting."""
    from atomsplat import method as methods
    from atomsplat.data.dataparser import bundled_demo_path
    from atomsplat.training import training_config

    config = training_config(bundled_demo_path(), 10, tmp_path, learning_rates={"positions": 0.01})
    assert config.optimizers["positions"]["optimizer"].lr == 0.01
    assert methods.atomsplat.config.optimizers["positions"]["optimizer"].lr == 0.05
    with pytest.raises(TypeError, match="'position'"):
        training_config(bundled_demo_path(), 10, tmp_path, learning_rates={"position": 0.01})
