"""What the viewer shows, as pure functions: colours, pictures as PNG data URLs, the width groups
of the atoms, the table of a density pass. numpy, matplotlib and ASE only (no nerfstudio, no torch).
"""

from __future__ import annotations

import base64
import io
from typing import Dict, Optional, Tuple

import numpy as np
from ase.data import atomic_numbers
from ase.data.colors import jmol_colors
from matplotlib import colormaps
from PIL import Image

PANEL_WIDTH = 240
"""Width in screen pixels of images in the control panel (viser's markdown shows at most 240)."""

WIDTH_GROUPS = 4
"""Groups of similar width drawn with their own point size (viser draws one size per cloud)."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 of the same shape."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colour_map(values: np.ndarray, name: str) -> np.ndarray:
    """(..., 3) uint8 colours of values (...) in [0, 1] under the matplotlib colour map ``name``."""
    return to_uint8(colormaps[name](values)[..., :3])


def weight_colours(weights: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 viridis colours of weights (K,) from the lightest (violet) to the heaviest (yellow)."""
    span = float(np.ptp(weights)) if len(weights) else 0.0
    level = (weights - weights.min()) / span if span > 0 else np.zeros(len(weights))
    return colour_map(level, "viridis")


def species_colours(symbols: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 Jmol colours of chemical symbols (K,)."""
    numbers = np.array([atomic_numbers[s] for s in symbols], dtype=int)
    return to_uint8(jmol_colors[numbers])


def width_groups(sigmas: np.ndarray, count: int = WIDTH_GROUPS) -> np.ndarray:
    """Group index (K,) in [0, count) of widths (K,): equal steps of log-width between the
    narrowest and the widest atom."""
    logs = np.log(sigmas)
    span = float(logs.max() - logs.min())
    if span < 1e-6:
        return np.zeros(len(sigmas), dtype=int)
    return np.minimum((count * (logs - logs.min()) / span).astype(int), count - 1)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) images in [0, 1] side by side with a white gap of 1/32 of their width
    (at least a pixel): (H, 2 W + gap, 3)."""
    gap = np.ones((left.shape[0], max(1, left.shape[1] // 32), 3), dtype=left.dtype)
    return np.concatenate([left, gap, right], axis=1)


def png_data_url(image: np.ndarray, width: int = PANEL_WIDTH) -> str:
    """A data URL of an (H, W, 3) uint8 image as PNG, enlarged by whole pixels (no smoothing) to at
    least ``width`` pixels across when it is narrower."""
    factor = max(1, -(-width // image.shape[1]))
    picture = Image.fromarray(image)
    if factor > 1:
        picture = picture.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # fast: these images are small and short-lived
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def counts_table(
    record: Optional[dict],
    num_points: int,
    loss: Optional[Tuple[int, float]],
    loss_terms: Dict[str, float],
    legend: str,
) -> str:
    """A markdown table of the last density pass and the logged loss.

    Args:
        record: the pass's counts (keys step, after, merged, pruned, split, born, optional tpr, fpr),
            or None before the first pass.
        num_points: the atoms now, shown before the first pass.
        loss: (step, total loss) as last logged, or None.
        loss_terms: name -> value of the loss's terms, listed when there are several.
        legend: what the atoms' colours mean ("" for no row).
    """
    if record is None:
        header = ("density pass", "none yet")
        rows = [("atoms", f"{num_points}")]
    else:
        header = ("density pass", f"step {record['step']}")
        rows = [("atoms", f"{record['after']}")] + [
            (key, f"{record[key]}") for key in ("merged", "pruned", "split", "born", "diffuse") if key in record
        ]
        rows += [(key.upper(), f"{record[key]:.3f}") for key in ("tpr", "fpr") if key in record]
    if loss is not None:
        rows.append(("loss", f"{loss[1]:.4g} (step {loss[0]})"))
        if len(loss_terms) > 1:
            rows += [(f"loss: {name}", f"{value:.4g}") for name, value in loss_terms.items()]
    if legend:
        rows.append(("colour", legend))
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)
