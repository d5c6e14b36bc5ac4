"""8-bit preview images of a tilt series, for nerfstudio methods other than atomsplat.

Stock nerfstudio datasets read one image file per camera through PIL as 8-bit RGB; given the
float32 TIFF stack they would silently read its first page, clipped to 0..255, for every camera.
The tomography DataParser therefore points ``image_filenames`` at one grey PNG per projection,
``round(255 * clip(p / max, 0, 1))`` with ``max`` the series maximum (the paper's public code fed
its baselines the same kind of images; negative noise is clipped). atomsplat itself never reads
them: it trains on the float32 stack. The PNGs live in a cache directory, never beside the data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List

import numpy as np

from atomsplat.data.series import TiltSeries


def cache_root() -> Path:
    """``$ATOMSPLAT_CACHE``, else ``$XDG_CACHE_HOME/atomsplat``, else ``~/.cache/atomsplat``."""
    if os.environ.get("ATOMSPLAT_CACHE"):
        return Path(os.environ["ATOMSPLAT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atomsplat"


def preview_images(stack: Path, series: TiltSeries) -> List[Path]:
    """Paths of the N preview PNGs of ``series``, read from the file ``stack`` (TIFF or MRC), written
    once per version of that file."""
    stack = Path(stack).resolve()
    stat = stack.stat()
    key = hashlib.sha1(f"{stack}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "previews" / key
    paths = [folder / f"projection_{k:04d}.png" for k in range(len(series.tilt_angles))]
    if not all(p.is_file() for p in paths):
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        top = max(float(series.projections.max()), 1e-30)
        for path, projection in zip(paths, series.projections):
            grey = np.round(255.0 * np.clip(projection / top, 0.0, 1.0)).astype(np.uint8)
            Image.fromarray(grey, mode="L").save(path)
    return paths
