"""Viewer elements beyond nerfstudio's: read-only markdown, and a panel whose order is its own.

How nerfstudio's viewer (1.1.5) installs custom elements: ``parse_object`` walks the model's
attributes (and those of its torch sub-modules) in the alphabetical order of their names, collects
every :class:`ViewerElement` it finds, and the viewer installs them in that order into folders
named by the attribute path; viser shows the elements of a folder in the order they were made.
"""

from __future__ import annotations

from nerfstudio.viewer.viewer_elements import ViewerElement
from viser import ViserServer


class ViewerMarkdown(ViewerElement[str]):
    """Read-only markdown (text, tables, images as data URLs) in the viewer's control panel.

    Setting :attr:`content` sends it to the browser and triggers no callback or re-render.
    """

    def __init__(self, name: str, content: str = "") -> None:
        super().__init__(name)
        self._content = content

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._content, visible=self.visible)

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)

    @property
    def content(self) -> str:
        return self._content

    @content.setter
    def content(self, text: str) -> None:
        self._content = text
        if self.gui_handle is not None:
            self.gui_handle.content = text


class Panel:
    """Viewer elements shown in the order given, whatever the names of the attributes that hold them.

    The elements stay attributes of their module, so nerfstudio's viewer finds them, wires their
    callbacks and installs them one by one in the alphabetical order of those names (see the module
    docstring). The panel takes over their ``install``: whichever element the viewer installs first,
    the panel then installs all of them in its order, in the folder being filled; the viewer's later
    calls find theirs installed. The elements must therefore be attributes of one module (one folder).
    The panel itself is neither an element nor a module: the viewer does not look into it.
    """

    def __init__(self, *elements: ViewerElement) -> None:
        self.elements = elements
        for element in elements:
            element.install = self.install  # what nerfstudio's viewer calls on each element it finds

    def install(self, viser_server: ViserServer) -> None:
        """Install the elements not yet installed, in the panel's order."""
        for element in self.elements:
            if element.gui_handle is None:
                type(element).install(element, viser_server)
