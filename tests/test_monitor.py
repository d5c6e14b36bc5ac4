"""The viewer monitor without a browser: idle without a viewer; with a viser server (as nerfstudio's
viewer gives it) it draws the atoms, the counts, the loss, the slice and the projections."""

import base64
import io
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from atomsplat.data.dataparser import TomographyDataParserConfig, bundled_demo_path
from atomsplat.model.atomsplat_model import AtomSplatModelConfig
from atomsplat.render.voxelize import voxelize
from atomsplat.viewer.display import weight_colours, width_groups


@pytest.fixture(scope="module")
def model():
    outputs = TomographyDataParserConfig(data=bundled_demo_path()).setup().get_dataparser_outputs("train")
    return AtomSplatModelConfig(init_count=300).setup(
        scene_box=outputs.scene_box, num_train_data=len(outputs.image_filenames), metadata=outputs.metadata
    )


def _image(markdown: str) -> np.ndarray:
    """The (H, W, 3) uint8 image of the data URL in a markdown text."""
    data = markdown.split("data:image/png;base64,")[1].rstrip(")")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _until(condition, timeout=10.0):
    """Wait for ``condition()`` (GUI callbacks run in viser's threads)."""
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_without_a_viewer_the_monitor_does_nothing(model):
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes
    from nerfstudio.utils import writer

    monitor = model.monitor
    writers = list(writer.EVENT_WRITERS)
    assert monitor.server is None
    assert monitor.training_callbacks(TrainingCallbackAttributes(None, None, None, None)) == []
    monitor.refined({"step": 100, "before": 2, "merged": 1, "pruned": 0, "split": 0, "after": 1})
    monitor.draw()
    assert writer.EVENT_WRITERS == writers
    assert monitor.slice.content == "" and monitor.view.content == "" and monitor._frame is None
    assert all(not key.startswith("monitor") for key in model.state_dict())  # nothing in checkpoints


def test_with_a_viser_server_the_monitor_draws(model):
    import viser
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.utils import writer
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    try:
        # what nerfstudio's viewer does: install the elements it finds, then set up the controls
        found = [element for _, element in parse_object(model, ViewerElement, "Custom Elements")]
        monitor = model.monitor
        assert {
            monitor.atoms,
            monitor.colour,
            monitor.counts,
            monitor.height,
            monitor.slice,
            monitor.tilt,
            monitor.view,
        } <= set(found)
        for element in found:
            element.install(server)
        monitor.control._setup(SimpleNamespace(viser_server=server, train_lock=None))

        nodes = server.scene._handle_from_node_name
        groups = np.unique(width_groups(model.cloud.sigmas.detach().numpy()))
        assert {"/atoms"} | {f"/atoms/width{g}" for g in groups} <= set(nodes)
        assert f"| atoms | {model.num_points} |" in monitor.counts.content

        # the slice is voxelize's layer at z = 0 through the colour map; far away it is empty
        series = model.series
        _, height, width = series.projections.shape
        p = series.pixel_size
        slice_image = _image(monitor.slice.content)
        factor = slice_image.shape[1] // width
        layer = voxelize(
            model.cloud.positions.detach(),
            model.cloud.sigmas.detach(),
            model.cloud.weights.detach(),
            (-width * p / 2, -height * p / 2, -p / 2),
            (width, height, 1),
            p,
        )[:, :, 0].T
        brightest = np.unravel_index(int(layer.argmax()), layer.shape)
        assert slice_image.shape[:2] == (height * factor, width * factor)
        assert slice_image[brightest[0] * factor, brightest[1] * factor].sum() == slice_image.sum(axis=2).max()
        monitor.height.value = float(monitor.height.max)  # the top of the slider: outside the particle
        _until(lambda: f"z = {monitor.height.max:.2f} A" in monitor.slice.content)
        assert _image(monitor.slice.content).max() <= 5  # inferno's black

        # measured and rendered projection of the chosen tilt, side by side
        monitor.tilt.value = 3
        _until(lambda: f"Tilt 3 ({series.tilt_angles[3]:.1f} deg)" in monitor.view.content)
        view = _image(monitor.view.content)
        rendered = model.render_projections([3])[0]
        expected = (rendered / model.level).clamp(0, 1) * 255
        assert view.shape[0] % height == 0
        scale = view.shape[0] // height
        right = view[::scale, -width * scale :: scale, 0].astype(float)
        assert np.abs(right - expected.numpy()).max() <= 1.0

        # a density pass and the logged loss reach the table; the loss writer leaves with training
        callbacks = monitor.training_callbacks(TrainingCallbackAttributes(None, None, None, None))
        monitor.refined(
            {
                "step": 200,
                "before": 310,
                "merged": 7,
                "pruned": 2,
                "split": 4,
                "born": 3,
                "after": 308,
                "tpr": 0.5,
                "fpr": 0.25,
            }
        )
        writer.put_scalar("Train Loss", torch.tensor(12.5), 210)
        writer.write_out_storage()
        for row in (
            "| density pass | step 200 |",
            "| atoms | 308 |",
            "| merged | 7 |",
            "| born | 3 |",
            "| TPR | 0.500 |",
            "| FPR | 0.250 |",
            "| loss | 12.5 (step 210) |",
        ):
            assert row in monitor.counts.content
        for callback in callbacks:
            callback.run_callback_at_location(210, TrainingCallbackLocation.AFTER_TRAIN)
        assert monitor._writer is None and not any(type(w).__name__ == "_LossWriter" for w in writer.EVENT_WRITERS)

        monitor.atoms.value = False
        _until(lambda: monitor._frame.visible is False)

        # passes are drawn only while a browser watches; one that connects is brought up to date
        shown = monitor.view.content
        with torch.no_grad():
            model.cloud.params["positions"] += 0.75
        monitor.refined({"step": 300, "before": 305, "merged": 0, "pruned": 0, "split": 0, "after": 305})
        assert monitor.view.content == shown
        browser = SimpleNamespace(client_id=7, camera=SimpleNamespace())
        monitor._client_connected(browser)
        _until(lambda: monitor.view.content != shown)
        assert np.linalg.norm(browser.camera.position) > 0 and tuple(browser.camera.look_at) == (0.0, 0.0, 0.0)
    finally:
        server.stop()


def test_colours_and_width_groups():
    colours = weight_colours(np.array([1.0, 2.0, 3.0]))
    assert colours.dtype == np.uint8 and colours.shape == (3, 3)
    assert tuple(colours[0]) == (68, 1, 84) and tuple(colours[2]) == (253, 231, 37)  # viridis' ends
    assert np.all(weight_colours(np.array([2.0, 2.0])) == weight_colours(np.array([1.0, 2.0]))[0])
    groups = width_groups(np.array([0.5, 0.5 * 2**0.5, 1.0, 0.99]))
    assert groups.tolist() == [0, 2, 3, 3]
    assert width_groups(np.array([0.6, 0.6])).tolist() == [0, 0]


def test_the_panel_order_is_its_own_whatever_the_attribute_names(model):
    """nerfstudio's viewer finds the elements in the alphabetical order of their attribute names and
    installs them in that order (viser shows them in the order they are made). With the monitor's
    attributes renamed so that the alphabet reverses them, the viewer finds them reversed and the
    panel still shows them in its own order."""
    import viser
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    from atomsplat.viewer.monitor import TrainingMonitor

    intended = ["Show atoms", "Atom colour", "counts", "Slice height (A)", "slice", "Tilt index", "view"]
    monitor = TrainingMonitor(model)
    elements = {name: value for name, value in vars(monitor).items() if isinstance(value, ViewerElement)}
    for rank, name in enumerate(sorted(elements)):
        delattr(monitor, name)
        setattr(monitor, f"{chr(ord('z') - rank)}_{name}", elements[name])
    found = [element for _, element in parse_object(monitor, ViewerElement, "Custom Elements")]
    assert [element.name for element in found] == intended[::-1]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    try:
        for element in found:  # as nerfstudio's viewer does
            element.install(server)
        shown = sorted(found, key=lambda element: element.gui_handle.order)
        assert [element.name for element in shown] == intended
    finally:
        server.stop()
