"""The nerfstudio methods of atomsplat: ``atomsplat`` and the paper's two ablations.

Learning rates are in physical units because the parameters are: positions move by about
``lr`` Angstrom per Adam step, widths and weights by about ``lr`` in log space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from atomsplat.data.dataparser import TomographyDataParserConfig, bundled_demo_path
from atomsplat.data.dataset import TiltSeriesDataManagerConfig
from atomsplat.model.atomsplat_model import AtomSplatModelConfig
from atomsplat.model.schedule import LogLinearDecaySchedulerConfig

STEPS = 3000


def _adam(lr: float, lr_final: float = None):
    scheduler = None if lr_final is None else LogLinearDecaySchedulerConfig(lr_final=lr_final, max_steps=STEPS)
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


class AtomSplatTrainer(Trainer):
    """nerfstudio's trainer, with two changes: a checkpoint is written whole or not at all (to a
    file beside the checkpoint directory, then renamed into it), and the model's final pass runs
    before the last checkpoint is saved, so that the saved atoms are the final ones."""

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint (the same keys, which ``--load-dir`` and ``ns-*`` tools read),
        written atomically: a run killed while saving leaves no half-written ``step-*.ckpt``."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        partial = self.base_dir / f".{path.name}.partial"  # not in the directory that nerfstudio lists
        torch.save(
            {
                "step": step,
                "pipeline": self.pipeline.state_dict(),
                "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
                "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
            },
            partial,
        )
        os.replace(partial, path)
        if self.config.save_only_latest_checkpoint:
            for older in self.checkpoint_dir.glob("*.ckpt"):
                if older != path:
                    older.unlink()

    def _after_train(self) -> None:
        with self.train_lock:
            self.pipeline.model.finish()
        super()._after_train()


@dataclass
class AtomSplatTrainerConfig(TrainerConfig):
    """nerfstudio's trainer whose learning-rate decays end with the last step, whatever
    ``max_num_iterations`` is, also when resuming (``--load-dir``: the loaded steps count too)."""

    _target: Type = field(default_factory=lambda: AtomSplatTrainer)

    def setup(self, **kwargs):
        total = self.max_num_iterations + resumed_steps(self.load_dir)
        for entry in self.optimizers.values():
            if isinstance(entry.get("scheduler"), LogLinearDecaySchedulerConfig):
                entry["scheduler"].max_steps = total
        return super().setup(**kwargs)


def resumed_steps(load_dir: Optional[Path]) -> int:
    """Steps already trained by the latest checkpoint in ``load_dir`` (0 without one), as
    nerfstudio's trainer picks it (``step-NNNNNNNNN.ckpt``, the largest number)."""
    if load_dir is None or not Path(load_dir).is_dir():
        return 0
    steps = [int(p.stem.split("-")[1]) for p in Path(load_dir).glob("step-*.ckpt") if p.stem.split("-")[1].isdigit()]
    return max(steps) + 1 if steps else 0


def trainer_config(method_name: str, model: AtomSplatModelConfig) -> AtomSplatTrainerConfig:
    """A complete training set-up; runs on CUDA when there is a device, else on the CPU."""
    widths = {"log_sigmas": _adam(0.01)} if model.isotropic else {"log_scales": _adam(0.01), "quats": _adam(0.005)}
    return AtomSplatTrainerConfig(
        method_name=method_name,
        max_num_iterations=STEPS,
        steps_per_save=1000,
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_eval_all_images=0,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=TiltSeriesDataManagerConfig(dataparser=TomographyDataParserConfig(), data=bundled_demo_path()),
            model=model,
        ),
        optimizers={
            "positions": _adam(0.05, 0.002),
            "log_weights": _adam(0.02),
            **widths,
            # per-projection corrections, used when the model enables them: shifts in A, the
            # background in units of the series maximum
            "view_shifts": _adam(0.01, 0.001),
            "background": _adam(0.001),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, default_composite_depth=False),
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
