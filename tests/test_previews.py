"""Other nerfstudio methods get correct 8-bit previews, never a silently misread TIFF stack."""

import numpy as np
import torch
from nerfstudio.data.datasets.base_dataset import InputDataset

from atomsplat.data.dataparser import TomographyDataParserConfig, bundled_demo_path
from atomsplat.data.formats import read_tilt_series


def test_stock_dataset_reads_one_preview_per_projection(atomsplat_cache):
    outputs = TomographyDataParserConfig(data=bundled_demo_path()).setup().get_dataparser_outputs("train")
    dataset = InputDataset(outputs)
    series = read_tilt_series(bundled_demo_path())
    top = float(series.projections.max())
    for k in (0, 30, len(dataset) - 1):
        image = dataset.get_image_float32(k)
        assert image.shape == (int(outputs.cameras.height[k]), int(outputs.cameras.width[k]), 3)
        expected = np.clip(series.projections[k] / top, 0, 1)
        assert torch.allclose(image[..., 0], torch.from_numpy(expected).float(), atol=0.5 / 255 + 1e-6)
    assert all(atomsplat_cache in path.parents for path in outputs.image_filenames)
    assert not any(p.suffix == ".png" for p in bundled_demo_path().iterdir())  # nothing beside the data


def test_previews_are_written_once(atomsplat_cache):
    parser = TomographyDataParserConfig(data=bundled_demo_path()).setup()
    first = parser.get_dataparser_outputs("train").image_filenames[0]
    stamp = first.stat().st_mtime_ns
    again = parser.get_dataparser_outputs("val").image_filenames[0]
    assert again == first and first.stat().st_mtime_ns == stamp
