"""Watching training in nerfstudio's web viewer: atoms, counts, a potential slice, projections.

:class:`TrainingMonitor` is a module of the model whose viewer elements nerfstudio's viewer finds
and installs in its control panel ("Custom Elements" / "monitor"), in the order of its
:class:`~atomsplat.viewer.widgets.Panel`; it reaches the viser server through a
:class:`~atomsplat.viewer.link.ViewerLink`. With a viewer it shows

* the atoms as a point cloud in the 3D scene (nerfstudio's scene units), drawn in a few groups of
  similar width with a point diameter of their mean width, coloured by weight (viridis, lightest
  violet, heaviest yellow) or by species (Jmol colours, species from the weights as export labels
  them, when the dataset names its elements);
* the last density-control pass (atoms, merged, pruned, split, born, TPR/FPR when the dataset has
  ground truth) and the training loss as nerfstudio logs it (every ``steps_per_log`` steps);
* the reconstructed potential in a one-voxel layer at a chosen height z (A), exact
  (:func:`atomsplat.render.voxelize.voxelize`) on the detector's pixel grid;
* the measured and the rendered projection of a chosen tilt, side by side.

Everything is drawn when the viewer starts, when training starts, when a browser connects, after
every density-control pass while a browser is connected, and when a control changes: nothing runs
in the training step itself. Without a viewer (tests, tensorboard-only runs, export) the monitor
draws nothing and holds no writer.
"""

from __future__ import annotations

import weakref
from typing import Dict, List

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerDropdown, ViewerSlider

from atomsplat.analysis.species import label_by_weight
from atomsplat.data.dataset import display_image
from atomsplat.render.voxelize import voxelize
from atomsplat.viewer.display import (
    colour_map,
    counts_table,
    png_data_url,
    side_by_side,
    species_colours,
    to_uint8,
    weight_colours,
    width_groups,
)
from atomsplat.viewer.link import ViewerLink
from atomsplat.viewer.loss_feed import follow_loss, stop_following
from atomsplat.viewer.widgets import Panel, ViewerMarkdown

ATOMS_NODE = "/atoms"
"""Scene node under which the atom point clouds hang (one child per width group)."""


def _viser_per_scene_unit() -> float:
    """viser's length unit per nerfstudio scene unit (nerfstudio's viewer draws its scene scaled).

    Read from nerfstudio's viewer module when drawing: that module takes seconds to import (its
    render and export panels), which runs without a viewer need not pay."""
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

    return VISER_NERFSTUDIO_SCALE_RATIO


class TrainingMonitor(torch.nn.Module):
    """Viewer panel and scene nodes of an AtomSplatModel (see the module docstring).

    A torch module without parameters, so that nerfstudio's viewer finds its elements (it looks
    through modules); it holds the model by weak reference and adds nothing to checkpoints.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self._model = weakref.ref(model)
        series = model.series
        count, height, width = series.projections.shape
        reach = 0.5 * min(height, width) * series.pixel_size
        upright = int(np.argmin(np.abs(np.asarray(series.tilt_angles))))
        self._record = None
        self._loss = None
        self._loss_terms: Dict[str, float] = {}
        self._writer = None
        self._frame = None
        self._clouds = []
        self._legend = ""
        self._reach = reach
        self.control = ViewerLink(on_ready=self.draw, on_browser=self._client_connected)
        self.atoms = ViewerCheckbox(
            "Show atoms",
            True,
            cb_hook=lambda _: self._show_atoms(),
            hint="Atoms as points: diameter = width, colour below",
        )
        options = ("weight", "species") if series.elements else ("weight",)
        self.colour = ViewerDropdown(
            "Atom colour",
            "weight",
            options,
            cb_hook=lambda _: self.draw_atoms(),
            hint="weight: viridis, light to heavy; species: from the weights",
        )
        self.counts = ViewerMarkdown("counts", "Waiting for the viewer.")
        self.height = ViewerSlider(
            "Slice height (A)",
            0.0,
            -reach,
            reach,
            step=series.pixel_size,
            cb_hook=lambda _: self.draw_slice(),
            hint="z of the one-voxel layer of the potential shown below",
        )
        self.slice = ViewerMarkdown("slice")
        self.tilt = ViewerSlider(
            "Tilt index",
            upright,
            0,
            count - 1,
            step=1,
            cb_hook=lambda _: self.draw_view(),
            hint="Projection shown below: measured left, rendered right",
        )
        self.view = ViewerMarkdown("view")
        self.panel = Panel(self.atoms, self.colour, self.counts, self.height, self.slice, self.tilt, self.view)
        """The order in the viewer: atoms, their colour, the counts, the slice, the projections."""

    # ----------------------------------------------------------------------------- hooks
    @property
    def server(self):
        """The viser server of nerfstudio's viewer, or None without a viewer."""
        return self.control.server

    def _client_connected(self, client) -> None:
        """A new browser: its camera starts outside the particle, looking at the rotation centre
        obliquely from -y, 3 detector half-widths away; the panels are brought up to date between
        training steps (passes that no browser watched were not drawn)."""
        distance = 3.0 * self._reach * self._model().scale * _viser_per_scene_unit()
        client.camera.position = (0.0, -distance * np.cos(np.pi / 6), distance * np.sin(np.pi / 6))
        client.camera.look_at = (0.0, 0.0, 0.0)
        self.control.between_steps(self.draw)

    def training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """With a viewer: draw the starting state (after any checkpoint was loaded), follow the
        logged loss until training ends. Without one: nothing."""
        if self.server is None:
            return []
        self.draw()
        self._writer = follow_loss(self)
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self._training_ended)]

    def _training_ended(self, step: int) -> None:
        stop_following(self._writer)
        self._writer = None

    def refined(self, record: dict) -> None:
        """After a density-control pass (``record``: the counts of the model's report): redraw
        when a browser is watching (one that connects later is drawn for then)."""
        if self.server is None:
            return
        self._record = record
        if self.control.browsers:
            self.draw()

    def loss_logged(self, step: int, loss: float) -> None:
        """The total training loss that nerfstudio logged at ``step``: shown in the table."""
        self._loss = (step, loss)
        self.draw_counts()

    def loss_terms_logged(self, terms: Dict[str, float]) -> None:
        """The terms of the logged loss (name -> value), shown when there are several."""
        self._loss_terms = terms

    # ----------------------------------------------------------------------------- drawing
    @torch.no_grad()
    def draw(self) -> None:
        """Redraw everything (nothing without a viewer)."""
        if self.server is None:
            return
        self.draw_atoms()
        self.draw_counts()
        self.draw_slice()
        self.draw_view()

    @torch.no_grad()
    def draw_atoms(self) -> None:
        """One point cloud per width group under :data:`ATOMS_NODE`, in viser's scene units."""
        server = self.server
        if server is None:
            return
        model = self._model()
        atoms = model.cloud.atoms()
        sigmas, weights = atoms["sigmas"], atoms["weights"]
        ratio = _viser_per_scene_unit()
        points = (model.cloud.positions.detach() * model.scale).double().cpu().numpy() * ratio  # scene units
        scale = model.scale * ratio  # A -> viser units
        if not len(weights):
            colours, groups = np.zeros((0, 3), np.uint8), np.zeros(0, int)
            self._legend = "no atoms"
        elif self.colour.value == "weight":
            colours, groups = weight_colours(weights), width_groups(sigmas)
            self._legend = f"weight {weights.min():.3g} (violet) to {weights.max():.3g} (yellow)"
        else:
            colours, groups = species_colours(label_by_weight(weights, model.series.elements)), width_groups(sigmas)
            self._legend = "species (Jmol colours)"
        with server.atomic():
            if self._frame is None:
                self._frame = server.scene.add_frame(ATOMS_NODE, show_axes=False, visible=bool(self.atoms.value))
            for cloud in self._clouds:
                cloud.remove()
            self._clouds = []
            for group in np.unique(groups):
                members = groups == group
                self._clouds.append(
                    server.scene.add_point_cloud(
                        f"{ATOMS_NODE}/width{group}",
                        points=points[members].astype(np.float32),
                        colors=colours[members],
                        point_size=float(sigmas[members].mean() * scale),
                        point_shape="circle",
                    )
                )

    def _show_atoms(self) -> None:
        if self._frame is not None:
            self._frame.visible = bool(self.atoms.value)

    def draw_counts(self) -> None:
        """The table of the last density-control pass and the logged loss."""
        num_points = self._model().num_points
        self.counts.content = counts_table(self._record, num_points, self._loss, self._loss_terms, self._legend)

    @torch.no_grad()
    def draw_slice(self) -> None:
        """The potential in the one-voxel layer centred on z = height, on the detector's pixel
        grid (rows along y, columns along x), inferno: brightest at the peak density of the densest
        atom."""
        if self.server is None:
            return
        model = self._model()
        series = model.series
        _, height, width = series.projections.shape
        p = series.pixel_size
        z = float(self.height.value)
        cloud = model.cloud
        positions, sigmas, weights = cloud.positions.detach(), cloud.sigmas.detach(), cloud.weights.detach()
        layer = voxelize(
            positions, sigmas, weights, (-width * p / 2, -height * p / 2, z - p / 2), (width, height, 1), p
        )
        peak = float((weights * (2.0 * np.pi * sigmas**2) ** -1.5).max()) if len(weights) else 0.0
        level = (layer[:, :, 0].T / max(peak, 1e-30)).clamp(0.0, 1.0).cpu().numpy()
        image = colour_map(level, "inferno")
        self.slice.content = f"Potential, z = {z:.2f} A ({p:g} A layer)\n\n![potential slice]({png_data_url(image)})"

    @torch.no_grad()
    def draw_view(self) -> None:
        """Measured (left) and modelled (right) projection of the chosen tilt, with its solved shift
        and background when the model learns them; the series maximum is white."""
        if self.server is None:
            return
        model = self._model()
        series = model.series
        k = int(self.tilt.value)
        rendered = model.render_projections([k])[0].cpu()
        measured = torch.from_numpy(np.asarray(series.projections[k], dtype=np.float32))
        both = side_by_side(display_image(measured, model.level).numpy(), display_image(rendered, model.level).numpy())
        self.view.content = (
            f"Tilt {k} ({float(series.tilt_angles[k]):.1f} deg): measured, rendered\n\n"
            f"![measured and rendered projection]({png_data_url(to_uint8(both))})"
        )
