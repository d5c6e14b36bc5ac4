"""The monitor's handle on nerfstudio's viewer: its viser server, the connected browsers, and
drawing between training steps."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional, Set

from nerfstudio.viewer.viewer_elements import ViewerControl
from viser import ClientHandle, ViserServer


class ViewerLink(ViewerControl):
    """nerfstudio's viewer finds it among the model's attributes (as it finds viewer elements) and
    calls ``_setup`` once it has installed the elements; then the link follows the browsers that
    connect and calls ``on_ready()``. A browser that connects is handed to ``on_browser(client)``.

    Without a viewer (tests, tensorboard-only runs, export) ``_setup`` is never called:
    :attr:`server` is None and no browser is ever connected.
    """

    def __init__(self, on_ready: Callable[[], None], on_browser: Callable[[ClientHandle], None]) -> None:
        self._on_ready = on_ready
        self._on_browser = on_browser
        self.browsers: Set[int] = set()
        """Ids of the connected browsers."""

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self._connected)
        self.viser_server.on_client_disconnect(lambda client: self.browsers.discard(client.client_id))
        self._on_ready()

    def _connected(self, client: ClientHandle) -> None:
        self.browsers.add(client.client_id)
        self._on_browser(client)

    @property
    def server(self) -> Optional[ViserServer]:
        """The viser server of nerfstudio's viewer, or None without a viewer."""
        return getattr(self, "viser_server", None)

    def between_steps(self, work: Callable[[], None]) -> None:
        """Run ``work()`` in a thread of its own once it holds the viewer's training lock (between
        training steps), and return at once.

        viser calls its connect handlers holding its client lock, which the training thread may
        need while it holds the training lock: work started from there must not wait for the
        training lock in viser's thread.
        """

        def locked() -> None:
            with self.viewer.train_lock or contextlib.nullcontext():
                work()

        threading.Thread(target=locked, daemon=True).start()
