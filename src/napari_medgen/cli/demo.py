"""``napari-medgen demo``: napari with the sample brain and every napari-medgen dock widget."""
from __future__ import annotations

# tab titles short enough for all seven tabs to show side by side in a 1366 px window's dock
TAB_TITLES = {"VAE anomaly": "VAE", "GAN synthesis": "GAN", "Time series": "Time"}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="open napari with the sample brain and all napari-medgen widgets")
    p.add_argument("--screenshot", metavar="PNG",
                   help="save a screenshot of the window (1366x768) to this PNG file and quit "
                        "(default: keep napari open)")
    p.add_argument("--no-widgets", action="store_true",
                   help="open the sample data only, without the napari-medgen dock widgets")
    p.set_defaults(func=run)


def open_demo(show: bool = True, widgets: bool = True):
    """Create the demo viewer; returns it (used by the command and by the screenshot script)."""
    import napari
    from npe2 import PluginManager

    viewer = napari.Viewer(title="napari-medgen demo", show=show)
    viewer.open_sample("napari-medgen", "brain")
    viewer.dims.current_step = (47, 58, 49)
    if widgets:
        manifest = PluginManager.instance().get_manifest("napari-medgen")
        docked = []
        for contrib in manifest.contributions.widgets or []:
            dock, _ = viewer.window.add_plugin_dock_widget("napari-medgen", contrib.display_name, tabify=True)
            dock.setWindowTitle(TAB_TITLES.get(contrib.display_name, contrib.display_name))  # not "... (napari-medgen)"
            docked.append(dock)
        if docked:  # show the first widget's tab (Segment) once the tabs exist
            from qtpy.QtCore import Qt
            from qtpy.QtWidgets import QApplication, QTabBar

            QApplication.processEvents()
            full = {TAB_TITLES.get(n, n): n for n in (c.display_name for c in manifest.contributions.widgets)}
            for bar in viewer.window._qt_window.findChildren(QTabBar):  # whole titles; arrows when they overflow
                bar.setElideMode(Qt.TextElideMode.ElideNone)
                bar.setUsesScrollButtons(True)
                for i in range(bar.count()):  # the panel's full name on hover
                    bar.setTabToolTip(i, full.get(bar.tabText(i), bar.tabText(i)))
            docked[0].raise_()
    return viewer


def run(args) -> int:
    import napari

    viewer = open_demo(show=True, widgets=not args.no_widgets)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        viewer.window._qt_window.resize(1366, 768)
        for _ in range(20):
            QApplication.processEvents()
        viewer.screenshot(args.screenshot, canvas_only=False)
        print(f"saved {args.screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0
