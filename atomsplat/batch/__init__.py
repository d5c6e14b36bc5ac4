"""Many reconstructions at once, and time series of one particle.

- :mod:`.engine`: run independent jobs one after another or as Ray tasks (on this machine or a
  cluster), results kept as each finishes, one job's failure reported without losing the others;
  the comparison (:mod:`atomsplat.benchmark.run`) and the dataset batch use it.
- :mod:`.datasets`: atomsplat on every dataset of a list, one configuration (``atomsplat-batch``).
- :mod:`.timeseries`: an ordered list of tilt series of one particle, each started from the
  atoms of the one before, the atoms followed across time (``atomsplat-batch --time-series``).
"""
