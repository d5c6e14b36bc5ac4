"""Species labelling by weight and the separability score."""

import numpy as np
import pytest

from atomsplat.analysis.species import label_by_weight, separability


def _populations(rng, sizes, centres, spread=0.1):
    """Lognormal weights around ``centres``, with their true group index."""
    w = np.concatenate([np.exp(rng.normal(np.log(c), spread, n)) for n, c in zip(sizes, centres)])
    group = np.repeat(np.arange(len(sizes)), sizes)
    return w, group


@pytest.mark.parametrize("elements", [["Ni", "Pt"], ["Pt", "Ni"], ("Pt", "Ni")])
def test_two_species_in_either_order(elements):
    rng = np.random.default_rng(1)
    w, group = _populations(rng, [300, 100], [1.0, 3.0])
    labels = label_by_weight(w, elements)
    np.testing.assert_array_equal(labels, np.array(["Ni", "Pt"])[group])


def test_three_species_unequal_abundance():
    rng = np.random.default_rng(2)
    w, group = _populations(rng, [50, 400, 1000], [1.0, 2.0, 4.0], spread=0.05)
    labels = label_by_weight(w, ["Pt", "Ni", "Pd"])
    np.testing.assert_array_equal(labels, np.array(["Ni", "Pd", "Pt"])[group])


def test_many_atoms_use_bins_and_stay_right():
    rng = np.random.default_rng(3)
    w, group = _populations(rng, [60_000, 40_000], [1.0, 2.5])
    labels = label_by_weight(w, ["Fe", "Pt"])
    assert np.mean(labels == np.array(["Fe", "Pt"])[group]) > 0.999


def test_one_element_and_empty():
    assert list(label_by_weight([1.0, 5.0, 2.0], "Au")) == ["Au"] * 3
    assert len(label_by_weight([], ["Ni", "Pt"])) == 0


@pytest.mark.parametrize("elements", [["Ni", "Qq"], ["X", "Au"], ["au"], [], ["Pt", "Pt"]])
def test_invalid_elements(elements):
    with pytest.raises(ValueError, match="elements"):
        label_by_weight([1.0, 2.0], elements)


def test_invalid_weights():
    with pytest.raises(ValueError, match="positive"):
        label_by_weight([1.0, 0.0], ["Ni", "Pt"])
    with pytest.raises(ValueError, match="distinct"):
        label_by_weight([1.0, 1.0], ["Ni", "Pt"])


def test_separability():
    rng = np.random.default_rng(4)
    w, group = _populations(rng, [2000, 2000], [1.0, np.exp(0.4)])  # means 4 sd apart: F = 8
    assert separability(w, group) == pytest.approx(8.0, rel=0.1)
    w3, g3 = _populations(rng, [500] * 3, [1.0, np.exp(0.4), 10.0])
    assert separability(w3, g3) == pytest.approx(8.0, rel=0.2)  # the closest pair decides
    assert separability([1.0, 1.0, 2.0, 2.0], ["a", "a", "b", "b"]) == np.inf
    with pytest.raises(ValueError, match="two species"):
        separability(w, np.zeros(len(w)))
