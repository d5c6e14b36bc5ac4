"""nerfstudio's trainer and the parts of its configuration that atomsplat uses.

:class:`AtomSplatTrainer` writes checkpoints atomically and runs the model's final pass before the
last one. The configuration classes here are nerfstudio's, with the options that atomsplat does
not read (or that would silently do the wrong thing for tilt series) fixed and hidden from
``ns-train atomsplat --help``: mixed precision and gradient scaling (the projector is float32),
gradient accumulation, multi-device training, the optimizers' epsilon, norm clipping and weight
decay, and display settings of ray-based models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Type

import torch
import tyro
from nerfstudio.configs import base_config
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from atomsplat.cli import fail
from atomsplat.data.dataparser import TomographyDataParserConfig, read_ahead
from atomsplat.data.series import TiltSeriesError
from atomsplat.model.schedule import LogLinearDecaySchedulerConfig


@dataclass
class MachineConfig(base_config.MachineConfig):
    """One device: atomsplat trains on one CPU or GPU."""

    num_devices: tyro.conf.Suppress[int] = 1
    num_machines: tyro.conf.Suppress[int] = 1
    machine_rank: tyro.conf.Suppress[int] = 0
    dist_url: tyro.conf.Suppress[str] = "auto"


@dataclass
class ViewerConfig(base_config.ViewerConfig):
    """nerfstudio's web viewer; the options of ray-based models, of image transport and of its log
    file are fixed (PNG: projections are shown without compression artefacts)."""

    relative_log_filename: tyro.conf.Suppress[str] = "viewer_log_filename.txt"
    websocket_port_default: tyro.conf.Suppress[int] = 7007
    num_rays_per_chunk: tyro.conf.Suppress[int] = 1 << 15
    default_composite_depth: tyro.conf.Suppress[bool] = False
    image_format: tyro.conf.Suppress[Literal["jpeg", "png"]] = "png"
    jpeg_quality: tyro.conf.Suppress[int] = 75
    camera_frustum_scale: tyro.conf.Suppress[float] = 0.1


@dataclass
class LoggingConfig(base_config.LoggingConfig):
    """nerfstudio's logging, with its buffers, profiler and console table fixed."""

    relative_log_dir: tyro.conf.Suppress[Path] = Path("./")
    max_buffer_size: tyro.conf.Suppress[int] = 20
    local_writer: tyro.conf.Suppress[base_config.LocalWriterConfig] = field(
        default_factory=lambda: base_config.LocalWriterConfig(enable=True)
    )
    profiler: tyro.conf.Suppress[Literal["none", "basic", "pytorch"]] = "basic"


@dataclass
class AdamConfig(AdamOptimizerConfig):
    """Adam with the learning rate as its one option (epsilon 1e-15, no clipping, no decay)."""

    eps: tyro.conf.Suppress[float] = 1e-15
    max_norm: tyro.conf.Suppress[Optional[float]] = None
    weight_decay: tyro.conf.Suppress[float] = 0.0


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
    ``max_num_iterations`` is, also when resuming (``--load-dir``: the loaded steps count too), and
    which reads the tilt series before ns-train prints or saves anything (:meth:`set_timestamp`)."""

    _target: Type = field(default_factory=lambda: AtomSplatTrainer)
    prompt: tyro.conf.Suppress[Optional[str]] = None
    relative_model_dir: tyro.conf.Suppress[Path] = Path("nerfstudio_models/")
    mixed_precision: tyro.conf.Suppress[bool] = False
    use_grad_scaler: tyro.conf.Suppress[bool] = False
    log_gradients: tyro.conf.Suppress[bool] = False
    gradient_accumulation_steps: tyro.conf.Suppress[Dict[str, int]] = field(default_factory=dict)

    def set_timestamp(self) -> None:
        """ns-train's first call on the configuration, before it prints it and writes it to a new
        output directory (nerfstudio's ``scripts.train.main``): the tilt series is read here, so that
        bad data stops the run with the reader's one-line message on stderr (exit status 2),
        nothing printed before it and nothing written. The DataParser takes the series read here."""
        datamanager = self.pipeline.datamanager
        if isinstance(datamanager.dataparser, TomographyDataParserConfig):
            data = datamanager.data if datamanager.data is not None else datamanager.dataparser.data
            try:
                read_ahead(Path(data), datamanager.dataparser.pixel_size)
            except TiltSeriesError as err:
                fail("ns-train", str(err))
        super().set_timestamp()

    def setup(self, **kwargs):
        total = self.max_num_iterations + resumed_steps(self.load_dir, self.load_checkpoint)
        for entry in self.optimizers.values():
            if isinstance(entry.get("scheduler"), LogLinearDecaySchedulerConfig):
                entry["scheduler"].max_steps = total
        return super().setup(**kwargs)


def resumed_steps(load_dir: Optional[Path], load_checkpoint: Optional[Path] = None) -> int:
    """Steps already trained by the checkpoint a run resumes from (0 for none): ``load_checkpoint``,
    else the latest in ``load_dir``, as nerfstudio's trainer picks it (``step-NNNNNNNNN.ckpt``, the
    largest number)."""
    if load_checkpoint is not None:
        candidates = [Path(load_checkpoint)]
    elif load_dir is not None and Path(load_dir).is_dir():
        candidates = list(Path(load_dir).glob("step-*.ckpt"))
    else:
        return 0
    steps = [int(p.stem.split("-")[1]) for p in candidates if p.stem.split("-")[-1].isdigit()]
    return max(steps) + 1 if steps else 0
