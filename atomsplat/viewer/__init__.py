"""nerfstudio's web viewer for atomsplat: the training monitor and what it is built from.

- :mod:`atomsplat.viewer.monitor`: :class:`TrainingMonitor`, the panel and the atoms in the scene;
- :mod:`atomsplat.viewer.widgets`: a markdown element and :class:`Panel`, which fixes the order
  of a panel's elements;
- :mod:`atomsplat.viewer.link`: the monitor's handle on the viewer (server, browsers, drawing
  between training steps);
- :mod:`atomsplat.viewer.loss_feed`: the training loss as nerfstudio logs it;
- :mod:`atomsplat.viewer.display`: pure functions (colours, pictures, tables), no nerfstudio.
"""
