"""Nerfstudio dataset and data manager serving float32 projections, several views a step."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

from atomsplat.data.dataparser import TomographyDataParserConfig
from atomsplat.ns_tools import refuse_meaningless_tool


def display_image(projection: torch.Tensor, top: float) -> torch.Tensor:
    """(H, W) or (H, W, 1) projection -> (H, W, 3) grey image in [0, 1], ``top`` mapped to white."""
    grey = (projection.reshape(projection.shape[0], projection.shape[1], 1) / max(top, 1e-12)).clamp(0.0, 1.0)
    return grey.expand(-1, -1, 3)


class TiltSeriesDataset(InputDataset):
    """The projections of one split as (H, W, 1) float32 tensors, values exactly as stored.

    Training and evaluation read :meth:`get_image_float32`, which is exact. What nerfstudio's tools
    show of a projection (``dataset[i]``: the viewer's thumbnails; :meth:`get_data`: ``ns-render
    dataset``'s "gt-" images) is the display image of :func:`display_image` (series maximum white),
    beside "normalized_projection", the projection over the series maximum (not clipped), the
    counterpart of the model's output of that name.
    """

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        series = self.metadata["tilt_series"]
        self.projections = torch.from_numpy(series.projections[self.metadata["indices"]].astype("float32"))
        self.display_top = float(series.projections.max())

    def get_image_float32(self, image_idx: int) -> torch.Tensor:
        return self.projections[image_idx][..., None]

    def __getitem__(self, image_idx: int) -> Dict:
        return {"image_idx": image_idx, "image": display_image(self.projections[image_idx], self.display_top)}

    def get_data(self, image_idx: int, image_type: str = "float32") -> Dict:
        projection = self.projections[image_idx][..., None]
        return {
            "image_idx": image_idx,
            "image": display_image(projection, self.display_top),
            "normalized_projection": projection / max(self.display_top, 1e-30),
        }


@dataclass
class TiltSeriesDataManagerConfig(FullImageDatamanagerConfig):
    """Full projections, ``views_per_step`` random views (without replacement per epoch) a step."""

    _target: Type = field(default_factory=lambda: TiltSeriesDataManager)
    dataparser: TomographyDataParserConfig = field(default_factory=TomographyDataParserConfig)
    """Tilt series are read by the tomography DataParser only."""
    views_per_step: int = 4
    """Projections per optimisation step."""
    train_cameras_sampling_strategy: Literal["random", "fps"] = "random"
    """Projection order: random (without replacement per epoch) or farthest point sampling."""
    train_cameras_sampling_seed: int = 42
    """Seed of that order."""
    # nerfstudio's options that this data manager does not read, or that would rescale the
    # cameras but not the float32 projections: fixed, and hidden from the CLI (``--data`` is ns-train's)
    data: tyro.conf.Suppress[Optional[Path]] = None
    masks_on_gpu: tyro.conf.Suppress[bool] = False
    images_on_gpu: tyro.conf.Suppress[bool] = False
    camera_res_scale_factor: tyro.conf.Suppress[float] = 1.0
    eval_num_images_to_sample_from: tyro.conf.Suppress[int] = -1
    eval_num_times_to_repeat_images: tyro.conf.Suppress[int] = -1
    eval_image_indices: tyro.conf.Suppress[Optional[Tuple[int, ...]]] = (0,)
    cache_images: tyro.conf.Suppress[Literal["cpu", "gpu"]] = "gpu"
    cache_images_type: tyro.conf.Suppress[Literal["uint8", "float32"]] = "float32"
    max_thread_workers: tyro.conf.Suppress[Optional[int]] = None
    fps_reset_every: tyro.conf.Suppress[int] = 100


class TiltSeriesDataManager(FullImageDatamanager[TiltSeriesDataset]):
    """Keeps the whole stack on the training device (it is small next to the model) and batches views."""

    config: TiltSeriesDataManagerConfig

    def __init__(self, config: TiltSeriesDataManagerConfig, *args, **kwargs):
        refuse_meaningless_tool(sys.argv)  # first: before the data and the checkpoint are read
        super().__init__(config, *args, **kwargs)

    def _load_images(self, split: Literal["train", "eval"], cache_images_device) -> List[Dict[str, torch.Tensor]]:
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        self.train_cameras = self.train_dataset.cameras.to(self.device)
        return [{"image_idx": i, "image": dataset.get_image_float32(i).to(self.device)} for i in range(len(dataset))]

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        count = min(self.config.views_per_step, len(self.train_dataset))
        indices = []
        while len(indices) < count:
            indices.append(self.train_unseen_cameras.pop(0))
            if not self.train_unseen_cameras:
                self.train_unseen_cameras = self.sample_train_cameras()
        images = torch.stack([self.cached_train[i]["image"] for i in indices])
        cameras = self.train_cameras[torch.tensor(indices)]  # their metadata: the series indices
        return cameras, {"image": images, "image_idx": torch.tensor(indices)}
