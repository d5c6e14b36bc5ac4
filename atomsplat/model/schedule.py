"""Learning-rate schedules whose state holds only Python floats.

nerfstudio 1.1.5's ExponentialDecayScheduler computes with numpy, so numpy scalars end up in the
optimizer and scheduler state, and torch >= 2.6 then refuses to load the checkpoint
(``weights_only``): neither ``ns-train --load-dir`` nor export can read it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Type

import tyro
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler


@dataclass
class LogLinearDecaySchedulerConfig(SchedulerConfig):
    """Learning rate decaying exponentially from the optimizer's to ``lr_final`` over ``max_steps``."""

    _target: Type = field(default_factory=lambda: LogLinearDecayScheduler)
    lr_final: float = 1e-3
    """Learning rate at the last step."""
    max_steps: tyro.conf.Suppress[int] = 3000
    """Steps of the decay: set by the trainer to all the steps of the run (resumed ones included)."""


class LogLinearDecayScheduler(Scheduler):
    config: LogLinearDecaySchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        ratio = math.log(self.config.lr_final / lr_init)
        steps = max(1, self.config.max_steps)

        def factor(step: int) -> float:
            return math.exp(ratio * min(max(step / steps, 0.0), 1.0))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


@dataclass
class ConstantSchedulerConfig(SchedulerConfig):
    """Learning rate held at the optimizer's for the whole run."""

    _target: Type = field(default_factory=lambda: ConstantScheduler)


class ConstantScheduler(Scheduler):
    config: ConstantSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: 1.0)
