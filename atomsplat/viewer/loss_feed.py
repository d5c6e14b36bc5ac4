"""The training loss as nerfstudio logs it (every ``steps_per_log`` steps), handed to a listener
through an event writer of nerfstudio's among its others."""

from __future__ import annotations

import weakref
from typing import Dict, Protocol

import torch
from nerfstudio.utils import writer


class LossListener(Protocol):
    def loss_logged(self, step: int, loss: float) -> None:
        """The total training loss logged at ``step``."""

    def loss_terms_logged(self, terms: Dict[str, float]) -> None:
        """The terms of the logged loss (name -> value)."""


class _LossWriter(writer.Writer):
    """A nerfstudio event writer that hands the logged loss to a listener, held by weak reference
    (nerfstudio's list of writers is global and must not keep a model alive)."""

    def __init__(self, listener: LossListener) -> None:
        self._listener = weakref.ref(listener)

    def write_scalar(self, name, scalar, step) -> None:
        listener = self._listener()
        if listener is not None and name == "Train Loss":
            listener.loss_logged(step, float(scalar.detach() if isinstance(scalar, torch.Tensor) else scalar))

    def write_scalar_dict(self, name, scalar_dict, step) -> None:
        listener = self._listener()
        if listener is not None and name == "Train Loss Dict":
            listener.loss_terms_logged(
                {key: float(torch.as_tensor(value).detach()) for key, value in scalar_dict.items()}
            )

    def write_image(self, name, image, step) -> None:
        pass

    def write_config(self, name, config_dict, step) -> None:
        pass


def follow_loss(listener: LossListener) -> writer.Writer:
    """Start handing the logged loss to ``listener``; returns the writer for :func:`stop_following`."""
    loss_writer = _LossWriter(listener)
    writer.EVENT_WRITERS.append(loss_writer)
    return loss_writer


def stop_following(loss_writer: writer.Writer) -> None:
    """Remove a writer of :func:`follow_loss` from nerfstudio's writers (nothing if it left already)."""
    if loss_writer in writer.EVENT_WRITERS:
        writer.EVENT_WRITERS.remove(loss_writer)
