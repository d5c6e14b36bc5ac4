"""Watching training in nerfstudio's web viewer: atoms, counts, a potential slice, projections.

:class:`TrainingMonitor` is a module of the model whose viewer elements nerfstudio's viewer finds
and installs in its control panel ("Custom Elements" / "monitor"); it reaches the viser server
through a :class:`ViewerControl`. With a viewer it shows

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

import base64
import contextlib
import io
import threading
import weakref
from typing import List

import numpy as np
import torch
from ase.data import atomic_numbers
from ase.data.colors import jmol_colors
from matplotlib import colormaps
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils import writer
from nerfstudio.viewer.viewer_elements import (
    ViewerCheckbox,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
    ViewerSlider,
)
from PIL import Image

from atomsplat.analysis.species import label_by_weight
from atomsplat.data.dataset import display_image
from atomsplat.render.voxelize import voxelize

ATOMS_NODE = "/atoms"
"""Scene node under which the atom point clouds hang (one child per width group)."""

WIDTH_GROUPS = 4
"""Groups of similar width drawn with their own point size (viser draws one size per cloud)."""

PANEL_WIDTH = 240
"""Width in screen pixels of images in the control panel (viser's markdown shows at most 240)."""


class ViewerMarkdown(ViewerElement[str]):
    """Read-only markdown (text, tables, images as data URLs) in the viewer's control panel.

    Setting :attr:`content` sends it to the browser and triggers no callback or re-render.
    """

    def __init__(self, name: str, content: str = "") -> None:
        super().__init__(name)
        self._content = content

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._content, visible=self.visible)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)

    @property
    def content(self) -> str:
        return self._content

    @content.setter
    def content(self, text: str) -> None:
        self._content = text
        if self.gui_handle is not None:
            self.gui_handle.content = text


class _MonitorControl(ViewerControl):
    """The viewer's handle on the monitor: nerfstudio's viewer calls ``_setup`` once its panel
    (with the monitor's elements) is built, and the monitor then starts."""

    def __init__(self, on_setup) -> None:
        self._on_setup = on_setup

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self._on_setup()


class _LossWriter(writer.Writer):
    """A nerfstudio event writer that hands the logged training loss to the monitor."""

    def __init__(self, monitor: "TrainingMonitor") -> None:
        self._monitor = weakref.ref(monitor)

    def write_scalar(self, name, scalar, step) -> None:
        monitor = self._monitor()
        if monitor is not None and name == "Train Loss":
            monitor.loss_logged(step, float(scalar.detach() if isinstance(scalar, torch.Tensor) else scalar))

    def write_scalar_dict(self, name, scalar_dict, step) -> None:
        monitor = self._monitor()
        if monitor is not None and name == "Train Loss Dict":
            monitor.loss_terms_logged(
                {key: float(torch.as_tensor(value).detach()) for key, value in scalar_dict.items()}
            )

    def write_image(self, name, image, step) -> None:
        pass

    def write_config(self, name, config_dict, step) -> None:
        pass


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


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) values in [0, 1] -> uint8 numpy."""
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def weight_colours(weights: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 viridis colours of weights (K,) from the lightest (violet) to the heaviest (yellow)."""
    span = float(np.ptp(weights)) if len(weights) else 0.0
    level = (weights - weights.min()) / span if span > 0 else np.zeros(len(weights))
    return (colormaps["viridis"](level)[:, :3] * 255.0 + 0.5).astype(np.uint8)


def species_colours(symbols: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 Jmol colours of chemical symbols (K,)."""
    numbers = np.array([atomic_numbers[s] for s in symbols], dtype=int)
    return (jmol_colors[numbers] * 255.0 + 0.5).astype(np.uint8)


def width_groups(sigmas: np.ndarray, count: int = WIDTH_GROUPS) -> np.ndarray:
    """Group index (K,) in [0, count) of widths (K,): equal steps of log-width between the
    narrowest and the widest atom."""
    logs = np.log(sigmas)
    span = float(logs.max() - logs.min())
    if span < 1e-6:
        return np.zeros(len(sigmas), dtype=int)
    return np.minimum((count * (logs - logs.min()) / span).astype(int), count - 1)


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
        self._loss_terms = {}
        self._writer = None
        self._frame = None
        self._clouds = []
        self._legend = ""
        self._reach = reach
        self._watchers = set()  # ids of the connected browsers
        self.control = _MonitorControl(self._viewer_ready)
        # nerfstudio installs the elements in the order of their attribute names.
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

    # ----------------------------------------------------------------------------- hooks
    @property
    def server(self):
        """The viser server of nerfstudio's viewer, or None without a viewer."""
        return getattr(self.control, "viser_server", None)

    def _viewer_ready(self) -> None:
        self.server.on_client_connect(self._client_connected)
        self.server.on_client_disconnect(lambda client: self._watchers.discard(client.client_id))
        self.draw()

    def _client_connected(self, client) -> None:
        """A new browser: its camera starts outside the particle, looking at the rotation centre
        obliquely from -y, 3 detector half-widths away; the panels are brought up to date (passes
        that no browser watched were not drawn).

        viser calls this holding its client lock, which the training thread may need while it
        holds the training lock: the drawing waits for the training lock in a thread of its own.
        """
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        self._watchers.add(client.client_id)
        distance = 3.0 * self._reach * self._model().scale * VISER_NERFSTUDIO_SCALE_RATIO
        client.camera.position = (0.0, -distance * np.cos(np.pi / 6), distance * np.sin(np.pi / 6))
        client.camera.look_at = (0.0, 0.0, 0.0)
        threading.Thread(target=self._draw_between_steps, daemon=True).start()

    def _draw_between_steps(self) -> None:
        with self.control.viewer.train_lock or contextlib.nullcontext():
            self.draw()

    def training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """With a viewer: draw the starting state (after any checkpoint was loaded), follow the
        logged loss until training ends. Without one: nothing."""
        if self.server is None:
            return []
        self.draw()
        self._writer = _LossWriter(self)
        writer.EVENT_WRITERS.append(self._writer)
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self._training_ended)]

    def _training_ended(self, step: int) -> None:
        if self._writer in writer.EVENT_WRITERS:
            writer.EVENT_WRITERS.remove(self._writer)
        self._writer = None

    def refined(self, record: dict) -> None:
        """After a density-control pass (``record``: AtomSplatModel.refine's counts): redraw when a
        browser is watching (one that connects later is drawn for then)."""
        if self.server is None:
            return
        self._record = record
        if self._watchers:
            self.draw()

    def loss_logged(self, step: int, loss: float) -> None:
        """The total training loss that nerfstudio logged at ``step``: shown in the table."""
        self._loss = (step, loss)
        self.draw_counts()

    def loss_terms_logged(self, terms: dict) -> None:
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

    def _atoms(self):
        """(positions in scene units (K, 3), widths A (K,), weights (K,)) as float64 numpy."""
        model = self._model()
        atoms = model.cloud.atoms()
        return model.means.double().cpu().numpy(), atoms["sigmas"], atoms["weights"]

    def _colours(self, weights: np.ndarray) -> np.ndarray:
        if self.colour.value == "species":
            return species_colours(label_by_weight(weights, self._model().series.elements))
        return weight_colours(weights)

    @torch.no_grad()
    def draw_atoms(self) -> None:
        """One point cloud per width group under :data:`ATOMS_NODE`, in viser's scene units."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        server = self.server
        if server is None:
            return
        means, sigmas, weights = self._atoms()
        scale = self._model().scale * VISER_NERFSTUDIO_SCALE_RATIO  # A -> viser units
        points = means * VISER_NERFSTUDIO_SCALE_RATIO
        colours = self._colours(weights) if len(weights) else np.zeros((0, 3), np.uint8)
        groups = width_groups(sigmas) if len(weights) else np.zeros(0, int)
        if not len(weights):
            self._legend = "no atoms"
        elif self.colour.value == "weight":
            self._legend = f"weight {weights.min():.3g} (violet) to {weights.max():.3g} (yellow)"
        else:
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
        record, loss = self._record, self._loss
        if record is None:
            header = ("density pass", "none yet")
            rows = [("atoms", f"{self._model().num_points}")]
        else:
            header = ("density pass", f"step {record['step']}")
            rows = [("atoms", f"{record['after']}")] + [
                (key, f"{record[key]}") for key in ("merged", "pruned", "split", "born") if key in record
            ]
            rows += [(key.upper(), f"{record[key]:.3f}") for key in ("tpr", "fpr") if key in record]
        if loss is not None:
            rows.append(("loss", f"{loss[1]:.4g} (step {loss[0]})"))
            if len(self._loss_terms) > 1:
                rows += [(f"loss: {name}", f"{value:.4g}") for name, value in self._loss_terms.items()]
        if self._legend:
            rows.append(("colour", self._legend))
        lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
        self.counts.content = "\n".join(lines)

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
        image = (colormaps["inferno"](level)[..., :3] * 255.0 + 0.5).astype(np.uint8)
        self.slice.content = f"Potential, z = {z:.2f} A ({p:g} A layer)\n\n![potential slice]({png_data_url(image)})"

    @torch.no_grad()
    def draw_view(self) -> None:
        """Measured (left) and modelled (right) projection of the chosen tilt, with its learned shift
        and background when the model learns them; the series maximum is white."""
        if self.server is None:
            return
        model = self._model()
        series = model.series
        _, height, width = series.projections.shape
        k = int(self.tilt.value)
        rendered = model.render_projections([k])[0].cpu()
        measured = torch.from_numpy(np.asarray(series.projections[k], dtype=np.float32))
        gap = torch.ones(height, max(1, width // 32), 3)
        both = torch.cat([display_image(measured, model.level), gap, display_image(rendered, model.level)], 1)
        self.view.content = (
            f"Tilt {k} ({float(series.tilt_angles[k]):.1f} deg): measured, rendered\n\n"
            f"![measured and rendered projection]({png_data_url(_to_uint8(both))})"
        )
