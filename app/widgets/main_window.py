"""The SAMScope application window: napari with the Segment and Benchmark docks.

``create_main_window`` is what ``samscope`` (no arguments) calls; tests and the self-test call
it too. The same two docks reach plain napari users through the plugin manifest.
"""

from __future__ import annotations

__all__ = ["create_main_window", "MainWindow", "raise_dock", "fit_to_screen"]


def share_width(qt_window, segment_dock) -> None:
    """Give the canvas the room: the right-hand docks about 30 % of the window (enough for
    three candidate tiles), napari's layer list and controls about 20 %."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    def dock_of(widget):
        while widget is not None and not isinstance(widget, QDockWidget):
            widget = widget.parent()
        return widget

    width = max(qt_window.width(), 800)
    right = dock_of(segment_dock)
    if right is not None:
        qt_window.resizeDocks([right], [int(min(max(430, 0.3 * width), 520))],
                              Qt.Orientation.Horizontal)
    left = [d for d in qt_window.findChildren(QDockWidget)
            if qt_window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea
            and not d.isFloating()]
    if left:
        qt_window.resizeDocks(left[:1], [int(min(max(220, 0.18 * width), 300))],
                              Qt.Orientation.Horizontal)


def fit_to_screen(qt_window, fraction: float = 0.92) -> None:
    """Open at ``fraction`` of the screen's available area, centred: napari's remembered
    size of a first launch (about 1089x700) leaves the image a strip beside the docks."""
    screen = qt_window.screen() if hasattr(qt_window, "screen") else None
    if screen is None:
        return
    area = screen.availableGeometry()
    w, h = int(area.width() * fraction), int(area.height() * fraction)
    qt_window.resize(w, h)
    qt_window.move(area.x() + (area.width() - w) // 2, area.y() + (area.height() - h) // 2)


def raise_dock(widget) -> None:
    """Bring the dock holding ``widget`` to the front of its tab group."""
    from qtpy.QtWidgets import QDockWidget

    w = widget
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parent()
    if w is not None:
        w.show()
        w.raise_()


class MainWindow:
    """The viewer and its two docks (plain attributes, for scripts and tests)."""

    def __init__(self, viewer, segment_dock, benchmark_dock):
        self.viewer = viewer
        self.segment_dock = segment_dock
        self.benchmark_dock = benchmark_dock

    @property
    def qt_window(self):
        """The top-level QMainWindow."""
        return self.viewer.window._qt_window

    def close(self) -> None:
        self.segment_dock.controller.shutdown()
        self.segment_dock.scheduler.shutdown(1.0)
        self.viewer.close()


def create_main_window(image_path=None, *, viewer=None, show: bool = True,
                       benchmark: bool = True) -> MainWindow:
    """Open a napari window titled SAMScope with the Segment dock (and the Benchmark dock
    tabbed behind it); open ``image_path`` if given.

    Parameters
    ----------
    image_path : str or Path, optional
        DICOM file/folder, NIfTI, NRRD or 2D picture to open right away.
    viewer : napari.Viewer, optional
        Use this viewer (tests pass ``make_napari_viewer()``) instead of a new one.
    """
    import napari

    from app.widgets.segment_dock import SegmentDock

    if viewer is None:
        viewer = napari.Viewer(title="SAMScope", show=show)
        fit_to_screen(viewer.window._qt_window)
    else:
        viewer.title = "SAMScope"
    seg = SegmentDock(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    bench = None
    if benchmark:
        try:
            from app.widgets.benchmark_dock import BenchmarkDock
        except ModuleNotFoundError as exc:  # the benchmark dock is optional in a slim build
            if exc.name != "app.widgets.benchmark_dock":
                raise
            BenchmarkDock = None  # noqa: N806
    if benchmark and BenchmarkDock is not None:
        bench = BenchmarkDock(viewer)
        viewer.window.add_dock_widget(bench, name="Benchmark", area="right", tabify=True)
        # tabify brings the new tab to the front; the clinician's dock comes first
        raise_dock(seg)
    try:  # the Adapt dock (fine-tuning) joins the same tab group when it is installed
        from app.widgets.adapt_dock import AdaptDock
    except ModuleNotFoundError as exc:
        if exc.name != "app.widgets.adapt_dock":
            raise
    else:
        adapt = AdaptDock(viewer)
        viewer.window.add_dock_widget(adapt, name="Adapt", area="right", tabify=True)
        raise_dock(seg)
    share_width(viewer.window._qt_window, seg)
    if image_path:
        seg.open_path(str(image_path))
    return MainWindow(viewer, seg, bench)
