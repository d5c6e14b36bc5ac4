"""The console scripts, run in-process: ``--help`` lists the options the README documents, and bad input stops
with one line on stderr naming the file, exit status 2, no traceback."""

import pytest

from atomsplat.cli import batch, demo, evaluate, export, simulate

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
        ["--load-config", "--output", "--elements", "--overwrite"],
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
