"""The measured variance against the mean of tilt series, and what the detection of counts makes of it.

    python benchmarks/photon_transfer_figure.py DATASET [DATASET ...] [--output docs/figures/photon_transfer.png]

One panel a dataset directory: the bins of :func:`atomsplat.data.photon_transfer.photon_transfer`
(filled where the signal does not leak into the details, so fitted; open where it does), the
fitted line, and in the title the verdict of :func:`atomsplat.data.series.detected_counts` (gain
in counts per data unit and offset in data units, or "not counts").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from atomsplat.data.photon_transfer import photon_transfer  # noqa: E402
from atomsplat.data.series import detected_counts  # noqa: E402
from atomsplat.data.tiff_dataset import PROJECTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "figures" / "photon_transfer.png")
    args = parser.parse_args()
    figure, axes = plt.subplots(1, len(args.datasets), figsize=(4.2 * len(args.datasets), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], args.datasets):
        stack = tifffile.imread(dataset / PROJECTIONS).astype(np.float32)
        transfer, found = photon_transfer(stack), detected_counts(stack)
        verdict = "not counts" if found is None else f"counts: gain {found[0]:.4g}, offset {found[1]:.5g}"
        axis.set_title(f"{dataset.name}\n{verdict}", fontsize=9)
        axis.set_xlabel("mean of a bin (data units)")
        axis.set_ylabel("mean squared diagonal detail")
        if transfer is None:
            axis.text(0.5, 0.5, "too few pixels to measure", ha="center", transform=axis.transAxes)
            continue
        clean = transfer.clean
        axis.plot(transfer.means[clean], transfer.variances[clean], "o", color="C0", label="fitted bins")
        axis.plot(transfer.means[~clean], transfer.variances[~clean], "o", mfc="none", color="C1", label="signal leaks")
        line = np.linspace(transfer.means[clean].min(), transfer.means[clean].max(), 50)  # where it was fitted
        axis.plot(line, transfer.slope * line + transfer.intercept, "-", color="k", lw=1, label="fitted line")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
