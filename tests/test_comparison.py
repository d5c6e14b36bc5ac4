"""The comparison command: presets, the results table, and the quick preset end to end (CI)."""

import json

import pytest

from atomsplat.cli.benchmark import CONFIGS, main, preset_path
from atomsplat.comparison import METHODS, load_preset, results_markdown


def test_presets_in_configs_load():
    for name in ("quick", "full"):
        preset = load_preset(preset_path(name))
        assert set(preset.methods) == set(METHODS)
        assert preset.ablation["particle"] == "nanotube"
    assert preset_path("quick") == CONFIGS / "benchmark_quick.json"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not a valid preset"),
        ('{"particles": ["gold"]}', "unknown particles"),
        ('{"particles": ["pd"], "colour": 1}', "not a valid preset"),
        ('{"particles": ["pd"], "schemes": {"x": "10:0:5"}}', "tilt scheme 'x'"),
    ],
)
def test_bad_presets_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "preset.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_preset(path)
    assert str(path) in str(err.value)


def test_results_markdown_tables_and_means():
    rows = [
        {
            "particle": p,
            "scheme": "wedge",
            "tilt": "-70:70:3",
            "method": m,
            "n_true": 100,
            "tpr": tpr,
            "fpr": fpr,
            "rmse": 0.05,
            "species_accuracy": None,
            "ssim": 0.8,
            "seconds": 12.0,
        }
        for p, m, tpr, fpr in [("pd", "atomsplat", 1.0, 0.0), ("hea", "atomsplat", 0.9, 0.1), ("pd", "fbp", 0.8, 0.2)]
    ]
    text = results_markdown({"machine": "test machine", "rows": rows, "ablation": []})
    assert "Tilts -70:70:3 (wedge)" in text and "test machine" in text
    assert "| atomsplat | 0.9500 | 0.0500 | 0.800 |" in text  # mean over the two particles
    assert "| fbp | 0.8000 | 0.2000 | 0.800 |" in text
    assert "n/a" in text  # no species accuracy for one-element particles


def test_cli_refuses_to_overwrite_results(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--preset", "quick", "--output", str(tmp_path)])
    assert "already holds results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "quick", "--output", str(tmp_path / "new"), "--particles", "gold"])
    assert "not in the preset" in capsys.readouterr().err


def test_quick_preset_one_particle_and_scheme(tmp_path, capsys):
    """The whole chain on the quick FePt particle in the missing wedge: every method, the table,
    the figures; atomsplat finds the atoms and tells Fe from Pt. Run again, it keeps every result."""
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
    ]
    assert main(command) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == set(METHODS)
    for row in rows.values():
        assert 0.0 <= row["tpr"] <= 1.0 and 0.0 <= row["fpr"] <= 1.0 and -1.0 <= row["ssim"] <= 1.0
    assert rows["atomsplat"]["tpr"] >= 0.85 and rows["atomsplat"]["fpr"] <= 0.1  # 800 steps: a smoke run
    figures = tmp_path / "out" / "figures"
    assert (figures / "slices_fept_wedge.png").is_file() and (figures / "bars.png").is_file()
    assert "| fept | atomsplat |" in (tmp_path / "out" / "results.md").read_text()

    capsys.readouterr()
    (figures / "slices_fept_wedge.png").unlink()
    assert main(command) == 0
    assert capsys.readouterr().out.count("kept from") == len(METHODS)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == results["rows"]
    assert (figures / "slices_fept_wedge.png").is_file()
