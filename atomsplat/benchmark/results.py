"""The comparison's results as typed records, and their files.

- :class:`Row`: one method on one particle and tilt scheme (the fields of a results table);
  :class:`AblationRow` adds what the ablation measures.
- :class:`Results`: a whole run, written as ``results.json`` (:meth:`Results.write`, read back by
  :meth:`Results.read`).
- :class:`Finished`: a method's row and what the figures show of it, kept in the work directory
  (:func:`save_finished`, :func:`load_finished`) so that a later run with the same settings
  reuses it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from atomsplat.benchmark import BenchmarkError
from atomsplat.benchmark.preset import Preset


@dataclass(frozen=True)
class Row:
    """One method on one particle and tilt scheme.

    Attributes:
        particle: the particle's name.
        scheme: the tilt scheme's name in the preset ("ablation" for the ablation's rows).
        tilt: the tilt scheme, "start:stop:step" in degrees.
        method: the method's name.
        n_true, n_pred, n_matched: true atoms, atoms found, and pairs matched within ``max_distance``.
        tpr: true-positive rate n_matched / n_true.
        fpr: false-positive rate (n_pred - n_matched) / n_pred.
        rmse: RMS distance of matched pairs, A; None when nothing matched.
        species_accuracy: fraction of matched pairs of equal species; None without species (a
            method that tells none, or a particle of one element).
        max_distance: matching radius, A.
        ssim: SSIM of the method's volume against the true potential
            (:func:`atomsplat.analysis.metrics.volume_ssim`).
        seconds: the method's wall time.
        projection_psnr, projection_ssim: PSNR (dB) and SSIM of the method's model of the held-out
            projections against the measured ones, the mean over them, on the data's own scale
            (:mod:`atomsplat.analysis.image_metrics`, data range: the measured series' maximum
            minus minimum); None without a hold-out or for a method that cannot model them.
        dose: electrons per A^2 of the case's simulated counts; None for float data.
        crb: the case's physical floor, A: the Cramer-Rao bound of the atom positions at the true
            atoms (:func:`atomsplat.benchmark.bound.truth_bound`), from atomsplat's fit of the case's
            counts, the same in every row of the case (:func:`share_bound`); None for float data or
            when atomsplat did not run on the case.

    A method without atoms (a radiance field) has None for n_pred, n_matched, tpr, fpr, rmse,
    species_accuracy and ssim.
    """

    particle: str
    scheme: str
    tilt: str
    method: str
    n_true: int
    n_pred: Optional[int]
    n_matched: Optional[int]
    tpr: Optional[float]
    fpr: Optional[float]
    rmse: Optional[float]
    species_accuracy: Optional[float]
    max_distance: float
    ssim: Optional[float]
    seconds: float
    projection_psnr: Optional[float] = None
    projection_ssim: Optional[float] = None
    dose: Optional[float] = None
    crb: Optional[float] = None

    @property
    def rmse_over_crb(self) -> Optional[float]:
        """RMSE / CRB: how far above the physical floor the positions are; None without both."""
        return None if self.rmse is None or not self.crb else self.rmse / self.crb

    def to_dict(self) -> dict:
        """The row as plain JSON values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict):
        """The row of ``raw`` (as :meth:`to_dict` writes it; fields added later with a default,
        ``projection_psnr``, ``projection_ssim``, ``dose`` and ``crb``, may be missing: results
        written before them read as None); TypeError when the fields differ otherwise."""
        names = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        if not isinstance(raw, dict) or not (names - optional <= set(raw) <= names):
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise TypeError(f"a {cls.__name__} needs the fields {sorted(names)}, got {got}")
        return cls(**raw)


def share_bound(rows: List[Row]) -> List[Row]:
    """The rows of one case (one particle, scheme and dose), each with the ``crb`` of the case's
    atomsplat row (None without one): the physical floor is the case's, not a method's."""
    crb = next((r.crb for r in rows if r.method == "atomsplat"), None)
    return [replace(r, crb=crb) for r in rows]


@dataclass(frozen=True, kw_only=True)
class AblationRow(Row):
    """A row of the ablation.

    Attributes:
        gaussians_per_atom: Gaussians the model ends with per true atom (n_pred / n_true).
        separability: how well the true species of matched atoms separate by learned weight
            (:func:`atomsplat.analysis.species.separability`); None for a particle of one element.
    """

    gaussians_per_atom: float
    separability: Optional[float]


@dataclass
class Results:
    """A comparison run (``results.json``).

    Attributes:
        machine: the machine the times were measured on, in words.
        preset: what was run.
        rows: the methods' rows, by particle, scheme and method.
        ablation: the ablation's rows (empty without one).
        total_seconds: the whole run's wall time; None while it runs.
        skipped: method name -> why it did not run (e.g. a download on an offline machine).
    """

    machine: str
    preset: Preset
    rows: List[Row] = field(default_factory=list)
    ablation: List[AblationRow] = field(default_factory=list)
    total_seconds: Optional[float] = None
    skipped: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The results as plain JSON values."""
        return {
            "machine": self.machine,
            "preset": self.preset.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "ablation": [r.to_dict() for r in self.ablation],
            "total_seconds": self.total_seconds,
            "skipped": dict(self.skipped),
        }

    def write(self, path: Path) -> Path:
        """Write the results as JSON to ``path`` (replaced whole: never half-written)."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        partial.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> "Results":
        """The results in a ``results.json``; :class:`BenchmarkError` naming the file otherwise."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(
                machine=raw["machine"],
                preset=Preset.from_dict(raw["preset"], f"{path}, preset"),
                rows=[Row.from_dict(r) for r in raw["rows"]],
                ablation=[AblationRow.from_dict(r) for r in raw["ablation"]],
                total_seconds=raw["total_seconds"],
                skipped=dict(raw.get("skipped", {})),
            )
        except FileNotFoundError:
            raise BenchmarkError(f"{path}: no such results file") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise BenchmarkError(f"{path}: not a results file of this version: {err}") from None


@dataclass
class Finished:
    """A method's finished run on one case: its row and what the figures show of it.

    Attributes:
        row: the scores.
        positions: (K, 3) atoms found, A; None for a method without atoms.
        slab: (nx, ny) the central slab of its volume (:func:`atomsplat.benchmark.report.central_slab`);
            None for a method without a volume.
        weights: (K,) learned weights of the atoms, or None for a method without.
        projection: (H, W) its model of the first held-out projection, data units, or None.
    """

    row: Row
    positions: Optional[np.ndarray]
    slab: Optional[np.ndarray]
    weights: Optional[np.ndarray] = None
    projection: Optional[np.ndarray] = None


def save_finished(path: Path, settings: dict, finished: Finished) -> None:
    """Keep ``finished`` at ``path`` (.npz) with the ``settings`` (JSON-ready) that made it; a run
    killed while writing leaves no half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"settings": settings, "row": finished.row.to_dict()})
    arrays = {
        name: value
        for name in ("positions", "slab", "weights", "projection")
        if (value := getattr(finished, name)) is not None
    }
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez_compressed(partial, meta=np.array(meta), **arrays)
    partial.replace(path)


def load_finished(path: Path, settings: dict) -> Optional[Finished]:
    """The :class:`Finished` kept at ``path`` by a run with the same ``settings``, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        if meta["settings"] != json.loads(json.dumps(settings)):
            return None
        arrays = {
            name: stored[name] if name in stored.files else None
            for name in ("positions", "slab", "weights", "projection")
        }
        return Finished(Row.from_dict(meta["row"]), **arrays)
