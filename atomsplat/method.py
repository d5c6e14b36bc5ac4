"""The nerfstudio methods of atomsplat: ``atomsplat``, the paper's two ablations, and the package's
implicit-neural-representation baseline ``atomsplat-inr`` (:mod:`atomsplat.model.inr_model`).

Learning rates are in physical units because the parameters are: positions move by about
``lr`` Angstrom per Adam step, widths and weights by about ``lr`` in log space.
"""

from __future__ import annotations

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from atomsplat.data.dataparser import HOLDOUT_EVERY, TomographyDataParserConfig, bundled_demo_path
from atomsplat.data.dataset import TiltSeriesDataManagerConfig
from atomsplat.model.atomsplat_model import AtomSplatModelConfig
from atomsplat.model.inr_model import INRModelConfig
from atomsplat.model.schedule import ConstantSchedulerConfig, LogLinearDecaySchedulerConfig
from atomsplat.trainer import AdamConfig, AtomSplatTrainerConfig, LoggingConfig, MachineConfig, ViewerConfig

STEPS = 3000


def _adam(lr: float, lr_final: float = None):
    """Adam at ``lr``, decaying to ``lr_final`` over the run, or constant when it is None."""
    if lr_final is None:
        scheduler = ConstantSchedulerConfig()
    else:
        scheduler = LogLinearDecaySchedulerConfig(lr_final=lr_final, max_steps=STEPS)
    return {"optimizer": AdamConfig(lr=lr), "scheduler": scheduler}


def trainer_config(method_name: str, model: AtomSplatModelConfig) -> AtomSplatTrainerConfig:
    """A complete training set-up; runs on CUDA when there is a device, else on the CPU."""
    widths = {"log_sigmas": _adam(0.01)} if model.isotropic else {"log_scales": _adam(0.01), "quats": _adam(0.005)}
    optimizers = {
        "positions": _adam(0.05, 0.002),
        "log_weights": _adam(0.02),
        **widths,
        # the atoms' shape, used when the model enables it
        "atom_shape": _adam(0.01),
    }
    return _trainer(method_name, model, STEPS, optimizers)


def _trainer(method_name: str, model, steps: int, optimizers: dict) -> AtomSplatTrainerConfig:
    """The training set-up of a model of this package on tilt series (the bundled one by default)."""
    return AtomSplatTrainerConfig(
        method_name=method_name,
        max_num_iterations=steps,
        steps_per_save=1000,
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_eval_all_images=0,
        pipeline=VanillaPipelineConfig(
            datamanager=TiltSeriesDataManagerConfig(
                dataparser=TomographyDataParserConfig(holdout_every=HOLDOUT_EVERY), data=bundled_demo_path()
            ),
            model=model,
        ),
        optimizers=optimizers,
        viewer=ViewerConfig(),
        logging=LoggingConfig(),
        vis="viewer",
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
    )


atomsplat = MethodSpecification(
    config=trainer_config("atomsplat", AtomSplatModelConfig()),
    description="Atoms straight from a tilt series: isotropic Gaussians, exact projector, minimum-distance merging",
)
atomsplat_noiso = MethodSpecification(
    config=trainer_config("atomsplat-noiso", AtomSplatModelConfig(isotropic=False)),
    description="atomsplat ablation without the isotropy prior (full-covariance Gaussians)",
)
atomsplat_nomerge = MethodSpecification(
    config=trainer_config("atomsplat-nomerge", AtomSplatModelConfig(merge=False)),
    description="atomsplat ablation without the minimum-distance prior (no merging)",
)
atomsplat_inr = MethodSpecification(
    # fit_inr's defaults: 500 steps of 8 slices, Adam at 1e-2 (atomsplat.analysis.inr)
    config=_trainer("atomsplat-inr", INRModelConfig(), 500, {"fields": _adam(1e-2)}),
    description="Baseline: an implicit neural representation of the density (multiresolution grids and a small MLP)",
)
