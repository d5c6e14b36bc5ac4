"""Every method on every particle and tilt scheme: the paper's evaluation as one reproducible run.

A preset (JSON, ``configs/benchmark_*.json``; :mod:`.preset`) names the particles
(:mod:`atomsplat.sim.structures`), their size, the tilt schemes, the simulation settings and the
methods with their options. For each particle and scheme the tilt series is simulated with abTEM
once and kept in the work directory under a key of every simulation setting (:mod:`.datasets`),
the true potential volume is computed on the reconstruction grid, and every method runs on the
same projections through one runner signature, ``runner(case, options) -> MethodResult``, looked
up by name in a registry (:mod:`.methods`):

- ``atomsplat`` and its ablations ``atomsplat-noiso``, ``atomsplat-nomerge``: nerfstudio training
  of this package's model; its atoms are the Gaussians, its volume their exact voxelization
  (:func:`atomsplat.render.voxelize.voxelize`, fitted widths, which include the probe blur, as
  every method's volume does);
- ``fbp``, ``sirt``: classical reconstructions (:mod:`atomsplat.analysis.baselines`) followed by
  atom tracing (:mod:`atomsplat.analysis.tracing`);
- ``inr``: an implicit neural representation (:mod:`atomsplat.analysis.inr`) followed by tracing.

Species of traced atoms come from their peak intensities, those of atomsplat from its weights,
both by the same 1-D k-means (:func:`atomsplat.analysis.species.label_by_weight`). Each method's
answer is scored into a typed row (:mod:`.results`: TPR, FPR, RMSE and species accuracy at
0.75 A matching, SSIM of :mod:`atomsplat.analysis.metrics`, the method's wall time); an ablation
of atomsplat without isotropy and without merging runs on one particle when the preset asks for
it. :mod:`.run` computes, :mod:`.report` presents (markdown tables and figures).
"""


class BenchmarkError(ValueError):
    """A preset, a choice from it, or an output directory that the benchmark cannot use; the
    message names the file or option and the problem."""
