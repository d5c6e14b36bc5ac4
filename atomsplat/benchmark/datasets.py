"""Simulated tilt series of the benchmark, kept in the work directory under a key of every setting.

A dataset is :class:`SimulatedDataset`: particle, size, tilt scheme and the
:class:`~atomsplat.benchmark.preset.SimulationSettings`. Its directory is
``WORK/data/<particle>_<size>_<tilt>_<hash>``, the hash a digest of all of them, and holds the
dataset (:func:`atomsplat.data.formats.write_tilt_series`, with the true atoms) and
``settings.json``, the settings it was simulated with, written last. A dataset is reused only
when ``settings.json`` matches the settings asked for; otherwise (another setting, a run killed
while writing) it is simulated again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from atomsplat.benchmark.preset import SimulationSettings
from atomsplat.data.formats import write_tilt_series
from atomsplat.data.series import parse_tilt_scheme
from atomsplat.sim.simulate import simulate_tilt_series
from atomsplat.sim.structures import PARTICLES, build_particle

SETTINGS = "settings.json"


def digest(settings: dict, length: int = 12) -> str:
    """A short hex digest of JSON-ready ``settings`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class SimulatedDataset:
    """A particle's simulated tilt series, as the settings that make it.

    Attributes:
        particle: a name in :data:`atomsplat.sim.structures.PARTICLES`.
        size: one of its sizes ("quick", "full").
        tilt: tilt scheme "start:stop:step", degrees.
        simulation: how the series is simulated.
    """

    particle: str
    size: str
    tilt: str
    simulation: SimulationSettings

    def settings(self) -> dict:
        """Every setting that makes the series, as plain JSON values (what ``settings.json`` holds):
        the simulation's as :meth:`SimulationSettings.keywords` gives them."""
        return json.loads(json.dumps(dict(asdict(self), simulation=self.simulation.keywords())))

    def key(self) -> str:
        """The directory name: readable labels and a digest of every setting."""
        return f"{self.particle}_{self.size}_{self.tilt.replace(':', '_')}_{digest(self.settings())}"


def stored_settings(directory: Path):
    """The settings a dataset directory was simulated with, or None when it holds none (readable)."""
    try:
        return json.loads((Path(directory) / SETTINGS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def simulated_dataset(dataset: SimulatedDataset, work: Path) -> Path:
    """The directory of ``dataset`` under ``work/data``: simulated once, then reused while its
    stored settings match."""
    directory = Path(work) / "data" / dataset.key()
    settings = dataset.settings()
    if stored_settings(directory) == settings:
        return directory
    atoms = build_particle(dataset.particle, dataset.size, dataset.simulation.seed)
    series = simulate_tilt_series(atoms, parse_tilt_scheme(dataset.tilt), **dataset.simulation.keywords())
    series.elements = list(PARTICLES[dataset.particle].elements)
    (directory / SETTINGS).unlink(missing_ok=True)  # a write killed half-way leaves no settings behind
    write_tilt_series(directory, series, ground_truth=atoms, overwrite=True)
    (directory / SETTINGS).write_text(json.dumps(settings, indent=1) + "\n")
    return directory
