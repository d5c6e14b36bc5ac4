"""One-to-one matching of identified atoms to true atoms, and the paper's detection metrics.

A true atom counts as found when an identified atom lies within ``max_distance`` (0.75 A in the
paper) and no other true atom claims that identified atom. The matching maximises first the
number of matched pairs and then minimises their total distance, so a greedy nearest-first
choice can never cost a true atom its match.

All positions are in A, in the sample frame (DESIGN.md, "Geometry").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

PAPER_MAX_DISTANCE = 0.75  # A


def _positions(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return x.reshape(0, 3)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite positions")
    return x


def match_atoms(pred, true, max_distance: float = PAPER_MAX_DISTANCE):
    """Optimal one-to-one matching of predicted to true atoms within ``max_distance``.

    Candidate pairs are those at distance <= ``max_distance``. The candidate graph is split into
    connected components; a component with a single atom on one side is solved by its shortest
    pair (vectorised over all such components), every other component by
    :func:`scipy.optimize.linear_sum_assignment` with a cost that ranks any assignment with more
    pairs above any with fewer, and among equals the one with the smaller total distance. With
    atoms farther apart than ``2 * max_distance`` components stay small, so this scales to
    millions of atoms; a component is solved densely, in memory quadratic in its size.

    Args:
        pred: (P, 3) predicted positions, A.
        true: (T, 3) true positions, A.
        max_distance: largest distance of a matched pair, A.

    Returns:
        ``(pred_idx, true_idx, distances)``: three (M,) arrays, ``pred[pred_idx[m]]`` matched to
        ``true[true_idx[m]]`` at distance ``distances[m]`` (A), sorted by ``pred_idx``.
    """
    pred, true = _positions(pred, "pred"), _positions(true, "true")
    if max_distance <= 0:
        raise ValueError(f"max_distance must be positive, got {max_distance}")
    n_pred = len(pred)
    if n_pred == 0 or len(true) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)

    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(true), max_distance, output_type="ndarray")
    ei, ej, ed = pairs["i"], pairs["j"], pairs["v"]  # (E,) candidate pred, true, distance

    # Bipartite graph: nodes 0..P-1 are predictions, P..P+T-1 true atoms.
    n_nodes = n_pred + len(true)
    graph = coo_matrix((np.ones(len(ei)), (ei, ej + n_pred)), shape=(n_nodes, n_nodes))
    n_comp, comp = connected_components(graph, directed=False)
    preds_in = np.bincount(comp[:n_pred], minlength=n_comp)
    trues_in = np.bincount(comp[n_pred:], minlength=n_comp)

    # Edges grouped by component, shortest first within each.
    ec = comp[ei]
    order = np.lexsort((ed, ec))
    ei, ej, ed, ec = ei[order], ej[order], ed[order], ec[order]
    starts = np.flatnonzero(np.diff(ec, prepend=-1))  # first edge of each component

    star = (preds_in[ec[starts]] == 1) | (trues_in[ec[starts]] == 1)
    out_i, out_j = [ei[starts[star]]], [ej[starts[star]]]

    ends = np.r_[starts[1:], len(ec)]
    for s, e in zip(starts[~star], ends[~star]):
        pi, li = np.unique(ei[s:e], return_inverse=True)
        tj, lj = np.unique(ej[s:e], return_inverse=True)
        # Candidate cost d - big < 0, non-candidate 0: one more pair always beats any distances.
        big = (min(len(pi), len(tj)) + 1) * max_distance + 1.0
        cost = np.zeros((len(pi), len(tj)))
        cost[li, lj] = ed[s:e] - big
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < 0
        rows, cols = rows[keep], cols[keep]
        out_i.append(pi[rows])
        out_j.append(tj[cols])

    pi, tj = np.concatenate(out_i), np.concatenate(out_j)
    order = np.argsort(pi)
    pi, tj = pi[order], tj[order]
    return pi, tj, np.linalg.norm(pred[pi] - true[tj], axis=1)


@dataclass
class MatchReport:
    """Detection metrics of identified atoms against the true atoms.

    Ratios with an empty denominator are 0 (no true atoms: ``tpr`` 0; no predictions: ``fpr``
    0); quantities over matched pairs are None when nothing matched.

    Attributes:
        n_true: number of true atoms T.
        n_pred: number of predicted atoms P.
        n_matched: number of matched pairs M.
        tpr: true-positive rate M / T (fraction of true atoms found).
        fpr: false-positive rate (P - M) / P (fraction of predictions that match nothing).
        rmse: root-mean-square distance of matched pairs, A.
        species_accuracy: fraction of matched pairs of equal species; None without species.
        max_distance: matching radius, A.
    """

    n_true: int
    n_pred: int
    n_matched: int
    tpr: float
    fpr: float
    rmse: Optional[float]
    species_accuracy: Optional[float]
    max_distance: float

    def summary(self) -> str:
        """A compact human-readable table."""

        def pct(x):
            return "n/a" if x is None else f"{100 * x:.2f} %"

        rows = [
            ("true atoms", f"{self.n_true}"),
            ("predicted atoms", f"{self.n_pred}"),
            (f"matched (<= {self.max_distance:g} A)", f"{self.n_matched}"),
            ("TPR (true atoms found)", pct(self.tpr)),
            ("FPR (false predictions)", pct(self.fpr)),
            ("RMSE of matched", "n/a" if self.rmse is None else f"{self.rmse:.4f} A"),
            ("species accuracy", pct(self.species_accuracy)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def evaluate(
    pred_positions,
    true_positions,
    pred_species=None,
    true_species=None,
    max_distance: float = PAPER_MAX_DISTANCE,
) -> MatchReport:
    """Match predicted to true atoms and report the paper's metrics.

    Args:
        pred_positions: (P, 3) predicted positions, A.
        true_positions: (T, 3) true positions, A.
        pred_species: optional (P,) species labels (e.g. chemical symbols) of the predictions.
        true_species: optional (T,) species labels of the true atoms. Species accuracy is
            reported only when both are given.
        max_distance: matching radius, A.
    """
    pred_positions = _positions(pred_positions, "pred_positions")
    true_positions = _positions(true_positions, "true_positions")
    pi, tj, d = match_atoms(pred_positions, true_positions, max_distance)
    n_pred, n_true, n_matched = len(pred_positions), len(true_positions), len(pi)

    species_accuracy = None
    if pred_species is not None and true_species is not None:
        pred_species, true_species = np.asarray(pred_species), np.asarray(true_species)
        if pred_species.shape != (n_pred,) or true_species.shape != (n_true,):
            raise ValueError("species must have one label per atom")
        if n_matched:
            species_accuracy = float(np.mean(pred_species[pi] == true_species[tj]))

    return MatchReport(
        n_true=n_true,
        n_pred=n_pred,
        n_matched=n_matched,
        tpr=n_matched / n_true if n_true else 0.0,
        fpr=(n_pred - n_matched) / n_pred if n_pred else 0.0,
        rmse=float(np.sqrt(np.mean(d**2))) if n_matched else None,
        species_accuracy=species_accuracy,
        max_distance=float(max_distance),
    )
