"""Training through nerfstudio's trainer from Python (what ``ns-train`` does from the shell)."""

from __future__ import annotations

import copy
from pathlib import Path


def training_config(
    data: Path,
    steps: int,
    output_dir: Path,
    method: str = "atomsplat",
    vis: str = "tensorboard",
    load_dir: Path = None,
    viewer_host: str = "127.0.0.1",
    pixel_size: float = None,
    steps_per_save: int = None,
    keep_checkpoints: bool = False,
    holdout_every: int = 0,
    learning_rates: dict = None,
    **model_options,
):
    """The nerfstudio TrainerConfig of ``method`` on ``data``, as ``ns-train`` would build it.

    ``load_dir``: a checkpoint directory to resume from (``steps`` more steps, as ``ns-train``).
    ``viewer_host``: where the web viewer listens when ``vis`` includes it (loopback by default).
    ``pixel_size``: detector pixel size in A overriding the dataset's (None: the dataset's own).
    ``steps_per_save``: steps between checkpoints (None: the method's); ``keep_checkpoints``: keep
    every checkpoint, not only the latest.
    ``holdout_every``: hold every n-th projection out of training, for evaluation only (0, the
    default here: train on every projection, for the atoms; ``ns-train`` holds out every
    :data:`atomsplat.data.dataparser.HOLDOUT_EVERY`-th).
    ``learning_rates``: {parameter group: starting learning rate} overriding the method's (e.g.
    ``{"positions": 0.01}``, A per Adam step; an unknown group is an error).
    ``model_options``: fields of the model config to override (an unknown name is an error).
    """
    from atomsplat import method as methods

    config = copy.deepcopy(getattr(methods, method.replace("-", "_")).config)
    config.pipeline.datamanager.data = Path(data)
    config.pipeline.datamanager.dataparser.data = Path(data)
    config.pipeline.datamanager.dataparser.pixel_size = pixel_size
    config.pipeline.datamanager.dataparser.holdout_every = holdout_every
    config.max_num_iterations = steps
    config.output_dir = Path(output_dir)
    config.vis = vis
    config.viewer.quit_on_train_completion = True
    config.viewer.websocket_host = viewer_host
    config.load_dir = load_dir
    if steps_per_save is not None:
        config.steps_per_save = steps_per_save
    config.save_only_latest_checkpoint = not keep_checkpoints
    for group, rate in (learning_rates or {}).items():
        if group not in config.optimizers:
            raise TypeError(f"{method} has no parameter group {group!r}")
        config.optimizers[group]["optimizer"].lr = rate
    for key, value in model_options.items():
        if not hasattr(config.pipeline.model, key):
            raise TypeError(f"{method} has no model option {key!r}")
        setattr(config.pipeline.model, key, value)
    return config


def run_trainer(config) -> None:
    """Run nerfstudio's trainer (``ns-train``'s ``main``) on the TrainerConfig ``config``.

    nerfstudio keeps its event writers (the console's, tensorboard's) in a list global to the
    process, and every run adds its own: the writers this run added are closed and dropped when it
    ends, or a later run in the same process would write its scalars into this run's files too."""
    from nerfstudio.scripts.train import main as nerfstudio_train
    from nerfstudio.utils import writer

    before = list(writer.EVENT_WRITERS)
    try:
        nerfstudio_train(config)
    finally:
        for added in [w for w in writer.EVENT_WRITERS if w not in before]:
            summary = getattr(added, "tb_writer", None)
            if summary is not None:
                summary.close()
        writer.EVENT_WRITERS[:] = before


def train(data: Path, steps: int, output_dir: Path, **options) -> Path:
    """Train on ``data`` through nerfstudio's trainer (options: those of :func:`training_config`;
    :func:`run_trainer`); returns the run's config.yml. Bad data raise
    :class:`atomsplat.data.series.TiltSeriesError` before anything is written (``ns-train`` prints
    its message and exits instead)."""
    from atomsplat.data.dataparser import read_ahead

    config = training_config(data, steps, output_dir, **options)
    read_ahead(Path(data), config.pipeline.datamanager.dataparser.pixel_size)  # the run takes the series read here
    run_trainer(config)
    return config.get_base_dir() / "config.yml"
