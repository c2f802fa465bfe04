"""Every napari-medgen panel opens after an image was drawn, and closing the viewer mid-job exits cleanly.

This is the user's path (open a scan, then Plugins > napari-medgen > ...).  Under Mesa's
software OpenGL it used to crash the process (triton's LLVM against Mesa's, see
``_widgets/_triton_guard.py``), and closing the viewer while a job ran crashed at exit.
It runs in a fresh subprocess, whose only imports are napari's, so a segfault fails
this test instead of killing pytest, and nothing imported by other tests hides the bug.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from npe2 import PluginManifest

SCRIPT = textwrap.dedent("""
    import faulthandler, sys, time
    faulthandler.enable()
    import napari
    from npe2 import PluginManager
    from qtpy.QtWidgets import QApplication

    def pump(seconds=0.0):
        end = time.monotonic() + seconds
        while True:
            QApplication.processEvents()
            if time.monotonic() >= end:
                return
            time.sleep(0.01)

    viewer = napari.Viewer()
    viewer.window.resize(1366, 768)
    viewer.open_sample("napari-medgen", "brain")
    pump(0.5)  # the image is drawn: Mesa's LLVM is loaded now
    assert "torch" not in sys.modules, "opening a sample must not import torch"
    widgets = {}
    for contrib in PluginManager.instance().get_manifest("napari-medgen").contributions.widgets:
        try:
            _dock, widget = viewer.window.add_plugin_dock_widget("napari-medgen", contrib.display_name)
        except Exception as err:
            print(f"FAILED {contrib.display_name}: {type(err).__name__}: {err}", flush=True)
            continue
        pump(0.2)
        widgets[contrib.display_name] = widget
        print(f"opened {contrib.display_name}", flush=True)
    segment = widgets["Segment"]
    segment.tta.setChecked(True)  # a longer job
    segment.run()
    pump(0.5)
    print("running at close:", segment.runner.running, flush=True)
    state = segment.runner.state
    viewer.close()
    print("after close:", state.status.value, flush=True)
""")


def test_every_panel_opens_after_draw_and_closing_mid_job_exits_cleanly(tmp_path):
    package = importlib.util.find_spec("napari_medgen").submodule_search_locations[0]
    manifest = PluginManifest.from_file(os.path.join(package, "napari.yaml"))
    names = [w.display_name for w in manifest.contributions.widgets]  # all of them, whoever adds one
    cmd = [sys.executable, "-c", SCRIPT]
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if not shutil.which("xvfb-run"):
            pytest.skip("needs a display or xvfb-run")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "xcb")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"exit status {res.returncode}:\n{out[-4000:]}"
    assert [line[7:] for line in res.stdout.splitlines() if line.startswith("opened ")] == names, out[-4000:]
    assert "running at close: True" in res.stdout
    assert "after close: cancelled" in res.stdout


DEMO = textwrap.dedent("""
    from napari_medgen.cli.demo import open_demo
    from qtpy.QtWidgets import QApplication, QTabBar

    viewer = open_demo(show=True)
    viewer.window._qt_window.resize(1366, 768)
    for _ in range(20):
        QApplication.processEvents()
    for bar in viewer.window._qt_window.findChildren(QTabBar):
        if bar.count() > 1 and bar.isVisible():
            cut = [bar.tabText(i) for i in range(bar.count()) if bar.tabRect(i).right() > bar.width()]
            print("tabs", bar.count(), "cut", cut, "tips", [bar.tabToolTip(i) for i in range(bar.count())], flush=True)
    viewer.close()
""")


def test_demo_tabs_are_all_readable_on_a_laptop_screen(tmp_path):
    """At 1366x768 every panel's tab shows whole, none hidden behind scroll arrows; hovering gives its full name."""
    cmd = [sys.executable, "-c", DEMO]
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if not shutil.which("xvfb-run"):
            pytest.skip("needs a display or xvfb-run")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ))
    lines = [line for line in res.stdout.splitlines() if line.startswith("tabs ")]
    assert res.returncode == 0 and len(lines) == 1, (res.stdout + res.stderr)[-4000:]
    assert "cut []" in lines[0] and "'VAE anomaly'" in lines[0], lines[0]
