"""Matching and detection metrics on hand-made cases with known answers, and the eval CLI."""

import json
import time

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from atomsplat.analysis.matching import evaluate, match_atoms
from atomsplat.cli.evaluate import main

# Atoms 2.5 A apart: farther than twice the matching radius, as in a real structure.
LATTICE = 2.5 * np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)


def test_identical_sets():
    r = evaluate(LATTICE, LATTICE)
    assert (r.n_true, r.n_pred, r.n_matched) == (64, 64, 64)
    assert (r.tpr, r.fpr, r.rmse, r.species_accuracy) == (1.0, 0.0, 0.0, None)
    pi, tj, _ = match_atoms(LATTICE, LATTICE)
    np.testing.assert_array_equal(pi, tj)


@pytest.mark.parametrize("shift, found", [(0.5, 1.0), (1.0, 0.0)])
def test_shifted_sets(shift, found):
    r = evaluate(LATTICE + [shift, 0, 0], LATTICE)
    assert r.tpr == found and r.fpr == 1.0 - found
    if found:
        assert r.rmse == pytest.approx(shift)
    else:
        assert r.rmse is None


def test_one_prediction_between_two_true_atoms_matches_once():
    true = [[0, 0, 0], [1.0, 0, 0]]
    r = evaluate([[0.5, 0, 0]], true)
    assert (r.n_matched, r.tpr, r.fpr) == (1, 0.5, 0.0)


def test_optimal_beats_greedy():
    # Greedy nearest-first takes (pred 0.5, true 0.0) or (pred 0.5, true 1.0) at 0.5 A, and the
    # first choice strands pred -0.6 (0.6 A from true 0.0 only). The optimum matches both.
    true = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    pred = np.array([[0.5, 0, 0], [-0.6, 0, 0]])
    pi, tj, d = match_atoms(pred, true, max_distance=0.75)
    np.testing.assert_array_equal(pi, [0, 1])
    np.testing.assert_array_equal(tj, [1, 0])
    np.testing.assert_allclose(d, [0.5, 0.6])


def test_fewest_total_distance_among_maximal_matchings():
    # Two preds, two trues, all four pairs within range: the cheaper pairing wins.
    true = np.array([[0.0, 0, 0], [0.6, 0, 0]])
    pred = np.array([[0.5, 0, 0], [0.1, 0, 0]])
    pi, tj, d = match_atoms(pred, true)
    np.testing.assert_array_equal(tj, [1, 0])
    np.testing.assert_allclose(d, [0.1, 0.1])


def test_extra_predictions_are_false_positives():
    extra = LATTICE[:16] + [1.25, 1.25, 1.25]  # between lattice sites, > 2 A from all
    r = evaluate(np.vstack([LATTICE, extra]), LATTICE)
    assert (r.tpr, r.fpr) == (1.0, 16 / 80)


def test_missing_predictions_lower_tpr():
    r = evaluate(LATTICE[:48], LATTICE)
    assert (r.n_matched, r.tpr, r.fpr) == (48, 0.75, 0.0)


def test_species_accuracy():
    true_sp = np.array(["Pt", "Ni"] * 32)
    pred_sp = true_sp.copy()
    pred_sp[:8] = "Pd"
    r = evaluate(LATTICE[::-1], LATTICE, pred_sp[::-1], true_sp)
    assert r.species_accuracy == 56 / 64


def test_empty_sets():
    r = evaluate(np.zeros((0, 3)), LATTICE)
    assert (r.n_pred, r.n_matched, r.tpr, r.fpr, r.rmse) == (0, 0, 0.0, 0.0, None)
    r = evaluate(LATTICE, [])
    assert (r.n_true, r.tpr, r.fpr) == (0, 0.0, 1.0)
    assert "n/a" in r.summary()


def test_100k_atoms_in_seconds():
    rng = np.random.default_rng(0)
    n = 100_000
    true = rng.uniform(0, (n * 15.6) ** (1 / 3), (n, 3))  # about one atom per 15.6 A^3, as in Au
    pred = np.vstack([true + rng.normal(0, 0.1, true.shape), rng.uniform(0, 100, (5_000, 3))])
    t = time.perf_counter()
    pi, tj, d = match_atoms(pred, true)
    assert time.perf_counter() - t < 10
    assert len(np.unique(pi)) == len(pi) and len(np.unique(tj)) == len(tj)
    assert np.all(d <= 0.75)
    assert len(pi) > 0.99 * n


def test_summary_and_dict():
    r = evaluate(LATTICE, LATTICE)
    assert "TPR" in r.summary() and "100.00 %" in r.summary()
    assert json.loads(json.dumps(r.as_dict()))["n_matched"] == 64


def _xyz(path, symbols, positions):
    write(path, Atoms(symbols, positions=positions))
    return str(path)


def test_cli_reports_and_writes_json(tmp_path, capsys):
    true = _xyz(tmp_path / "true.xyz", ["Pt", "Ni"] * 32, LATTICE)
    pred = _xyz(tmp_path / "pred.xyz", ["Pt"] * 64, LATTICE + [0.3, 0, 0])
    out = tmp_path / "report.json"
    assert main([pred, true, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100.00 %" in text and "0.3000 A" in text
    record = json.loads(out.read_text())
    assert record["tpr"] == 1.0 and record["species_accuracy"] == 0.5
    assert record["pred"] == pred


def test_cli_unlabelled_prediction_and_max_distance(tmp_path, capsys):
    true = _xyz(tmp_path / "true.xyz", ["Au"] * 64, LATTICE)
    pred = _xyz(tmp_path / "pred.xyz", ["X"] * 64, LATTICE + [0.3, 0, 0])
    assert main([pred, true, "--max-distance", "0.2", "--json", str(tmp_path / "r.json")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["species_accuracy"] is None and record["tpr"] == 0.0
    assert "species accuracy" in capsys.readouterr().out


def test_cli_missing_file(tmp_path, capsys):
    true = _xyz(tmp_path / "true.xyz", ["Au"] * 64, LATTICE)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.xyz"), true])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "missing.xyz" in err and "Traceback" not in err
