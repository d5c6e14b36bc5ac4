"""What a comparison runs: the preset (``configs/benchmark_*.json``) as typed records.

A preset file::

    {"particles": ["fept", "pd"], "size": "quick",
     "schemes": {"all": "-90:90:2", "wedge": "-70:70:3"},
     "simulation": {"pixel_size": 0.25, "probe_sigma": 0.5, "noise_sigma": 50.0, "seed": 0},
     "methods": {"atomsplat": {"steps": 800}, "fbp": {}, "sirt": {"iterations": 30}},
     "ablation": {"particle": "nanotube", "size": "quick", "scheme": "-90:90:2", "steps": 800,
                  "merge_distance": 1.2}}

Omitted fields take the defaults of :class:`Preset`, :class:`SimulationSettings` and
:class:`Ablation`. A low-dose preset (``configs/benchmark_lowdose.json``) simulates ADF counts
(``"simulation": {..., "noise_sigma": 0, "shape": [128, 128]}``) and runs every case once per dose
of ``"doses": [8000, 16000, 160000]`` (e/A^2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from atomsplat.benchmark import BenchmarkError
from atomsplat.benchmark.methods import METHODS, nerfstudio_methods
from atomsplat.data.series import parse_tilt_scheme
from atomsplat.sim.adf import ADF_EXPONENT, DEFAULT_PEDESTAL
from atomsplat.sim.structures import PARTICLES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the presets by name: benchmark_<name>.json


@dataclass(frozen=True)
class SimulationSettings:
    """How a particle's tilt series is simulated.

    Every field is the keyword of the same name of :func:`atomsplat.sim.simulate.simulate_tilt_series`
    and reaches it through :meth:`keywords`; ``seed`` also seeds the structure
    (:func:`atomsplat.sim.structures.build_particle`). The key of the simulated dataset in the work
    directory digests :meth:`keywords` (:mod:`atomsplat.benchmark.datasets`), so a setting added
    here reaches the simulation and the cache key with no other change. :meth:`keywords` leaves out
    what does not change the simulation: the counting mode's ``pedestal`` and ``adf_exponent``
    without a ``dose``, and ``dose`` and ``shape`` when None; the presets of float data therefore
    keep the keys they had before the counting mode was added.

    Attributes:
        pixel_size: A; also the voxel size of every volume.
        probe_sigma: standard deviation of the Gaussian probe blur, A.
        noise_sigma: standard deviation of additive Gaussian noise, V A (0 with a dose).
        seed: seeds the structure and the noise.
        dose: electrons per A^2 per projection: ADF counts with Poisson noise
            (:mod:`atomsplat.sim.adf`); None: the paper's float images in V A.
        pedestal: with a dose, expected counts per pixel with no atom.
        adf_exponent: with a dose, the exponent of the Z dependence of the ADF cross-sections.
        shape: detector (H, W) in pixels; None: the simulator's default for the particle.
    """

    pixel_size: float = 0.25
    probe_sigma: float = 0.5
    noise_sigma: float = 50.0
    seed: int = 0
    dose: Optional[float] = None
    pedestal: float = DEFAULT_PEDESTAL
    adf_exponent: float = ADF_EXPONENT
    shape: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if self.shape is not None:
            shape = tuple(self.shape)
            if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
                raise ValueError(
                    f"simulation shape must be two positive whole numbers of pixels [H, W], got {self.shape}"
                )
            object.__setattr__(self, "shape", shape)  # a JSON list as a tuple: hashable, compared as one
        if self.dose is not None:
            if isinstance(self.dose, bool) or not (isinstance(self.dose, (int, float)) and math.isfinite(self.dose)):
                raise ValueError(f"simulation dose must be a number of electrons per A^2 or null, got {self.dose!r}")
            if not self.dose > 0:
                raise ValueError(f"simulation dose must be positive, got {self.dose!r}")
            if self.noise_sigma:
                raise ValueError("simulation: a dose (Poisson counts) needs noise_sigma 0 (no Gaussian noise)")
            object.__setattr__(self, "dose", float(self.dose))  # 8000 and 8000.0: one dataset key

    def keywords(self) -> dict:
        """The settings as keywords of ``simulate_tilt_series``: those that change the simulation
        (the class docstring)."""
        out = asdict(self)
        if self.dose is None:
            for name in ("dose", "pedestal", "adf_exponent"):
                del out[name]
        if self.shape is None:
            del out["shape"]
        return out


ABLATION_METHODS = ("atomsplat", "atomsplat-noiso", "atomsplat-nomerge")


@dataclass(frozen=True)
class Ablation:
    """atomsplat with and without isotropy and merging (:data:`ABLATION_METHODS`) on one particle.

    Attributes:
        particle: a name in :data:`atomsplat.sim.structures.PARTICLES`.
        scheme: tilt scheme "start:stop:step", degrees.
        size: the particle's size; None: the preset's.
        steps: training steps of each method.
        merge_distance: minimum distance of merged Gaussians, A (not given to atomsplat-nomerge).
    """

    particle: str
    scheme: str
    size: Optional[str] = None
    steps: int = 3000
    merge_distance: float = 1.6

    def options(self, method: str) -> dict:
        """The runner options of ``method`` in the ablation."""
        if method == "atomsplat-nomerge":
            return {"steps": self.steps}
        return {"steps": self.steps, "merge_distance": self.merge_distance}


@dataclass
class Preset:
    """What a comparison runs (the fields of a ``configs/benchmark_*.json`` file).

    Attributes:
        particles: names in :data:`atomsplat.sim.structures.PARTICLES`.
        size: "quick" or "full" (the builders' sizes).
        schemes: tilt schemes by name, e.g. {"all": "-90:90:1", "wedge": "-70:70:3"}.
        simulation: how every tilt series is simulated.
        methods: method name (:data:`atomsplat.benchmark.methods.METHODS`, or any method registered
            with nerfstudio) -> its runner's options (atomsplat and nerfstudio methods: "steps" and
            model-config fields; fbp: fbp's keywords; sirt: sirt's; inr: fit_inr's; the traced
            methods: also "trace" with trace_atoms' keywords).
        ablation: None, or the ablation to run.
        holdout_every: every n-th projection is held out of every method's training and scores the
            methods' models of it (PSNR, SSIM; :mod:`atomsplat.analysis.image_metrics`); 0: no
            hold-out and no projection scores.
        doses: None, or electrons per A^2: every case (particle and scheme) runs once per dose, the
            simulation's ``dose`` replaced by it (:meth:`simulations`); needs noise_sigma 0.
    """

    particles: List[str]
    size: str = "full"
    schemes: Dict[str, str] = field(default_factory=lambda: {"all": "-90:90:1", "wedge": "-70:70:3"})
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    methods: Dict[str, dict] = field(default_factory=lambda: {name: {} for name in ("atomsplat", "fbp", "sirt", "inr")})
    ablation: Optional[Ablation] = None
    holdout_every: int = 0
    doses: Optional[List[float]] = None

    def simulations(self) -> List[SimulationSettings]:
        """The simulation of each case: one per dose of :attr:`doses`, or the preset's own."""
        if self.doses is None:
            return [self.simulation]
        return [replace(self.simulation, dose=float(dose)) for dose in self.doses]

    def to_dict(self) -> dict:
        """The preset as plain JSON values (the layout of a preset file)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> "Preset":
        """The preset of the plain values ``raw``, checked; errors name ``where`` and the problem."""
        if not isinstance(raw, dict):
            raise BenchmarkError(f"{where}: not a valid preset: expected a JSON object")
        raw = dict(raw)
        try:
            if "simulation" in raw:
                raw["simulation"] = _record(SimulationSettings, raw["simulation"], "simulation")
            if raw.get("ablation") is not None:
                raw["ablation"] = _record(Ablation, raw["ablation"], "ablation")
            preset = _record(cls, raw, "preset")
        except (TypeError, ValueError) as err:
            raise BenchmarkError(f"{where}: not a valid preset: {err}") from None
        preset.check(where)
        try:
            preset.simulations()  # each dose checked as a simulation's
        except ValueError as err:
            raise BenchmarkError(f"{where}: not a valid preset: doses: {err}") from None
        return preset

    def check(self, where: str) -> None:
        """Raise :class:`BenchmarkError` naming ``where`` if a particle, size, scheme or method is unknown."""
        if self.doses is not None and (not isinstance(self.doses, list) or not self.doses):
            raise BenchmarkError(f"{where}: doses must be a list of electrons per A^2 (or null), got {self.doses!r}")
        particles = list(self.particles) + ([self.ablation.particle] if self.ablation else [])
        unknown = [p for p in particles if p not in PARTICLES] + [m for m in self.methods if not known_method(m)]
        if unknown:
            raise BenchmarkError(
                f"{where}: unknown particles or methods {unknown}; particles: {sorted(PARTICLES)}, "
                f"methods: {sorted(METHODS)}"
            )
        sizes = [(p, self.size) for p in self.particles]
        if self.ablation:
            sizes.append((self.ablation.particle, self.ablation.size or self.size))
        for particle, size in sizes:
            if size not in PARTICLES[particle].sizes:
                raise BenchmarkError(
                    f"{where}: {particle} has no size {size!r}; sizes: {sorted(PARTICLES[particle].sizes)}"
                )
        if int(self.holdout_every) != self.holdout_every or self.holdout_every < 0:
            raise BenchmarkError(f"{where}: holdout_every must be a whole number >= 0, got {self.holdout_every!r}")
        schemes = dict(self.schemes, **({"ablation": self.ablation.scheme} if self.ablation else {}))
        for name, scheme in schemes.items():
            try:
                parse_tilt_scheme(scheme)
            except ValueError as err:
                raise BenchmarkError(f"{where}: tilt scheme {name!r}: {err}") from None


def known_method(name: str) -> bool:
    """Whether ``name`` is a method of :data:`METHODS` or one registered with nerfstudio (only
    names not in :data:`METHODS` ask nerfstudio, which imports its plugins)."""
    return name in METHODS or name in nerfstudio_methods()


def _record(cls, raw, name: str):
    """``cls(**raw)``, with a message naming the record when ``raw`` is not a dict of its fields."""
    if not isinstance(raw, dict):
        raise TypeError(f"{name} must be a JSON object")
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{name} has unknown fields {unknown}; fields: {[f.name for f in fields(cls)]}")
    return cls(**raw)


def preset_path(name: str) -> Path:
    """A preset by name (``configs/benchmark_<name>.json``) or by path (a name ending in .json or
    an existing file)."""
    path = Path(name)
    return path if path.suffix == ".json" or path.exists() else CONFIGS / f"benchmark_{name}.json"


def load_preset(name: str) -> Preset:
    """Read and check a preset by name or path; errors name the file and the problem."""
    path = preset_path(name)
    if not path.is_file():
        known = sorted(p.stem.removeprefix("benchmark_") for p in CONFIGS.glob("benchmark_*.json"))
        raise BenchmarkError(f"{path}: no such preset; presets by name: {', '.join(known)}, or a path to a JSON file")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"{path}: not a valid preset: {err}") from None
    return Preset.from_dict(raw, str(path))
