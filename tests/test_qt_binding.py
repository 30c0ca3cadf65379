"""napari runs on PyQt6: PyQt5 is not installed, and a fresh napari start shows no Qt5 deprecation warning."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

# A fresh interpreter that starts napari's Qt app and a shown viewer, the way a user's napari starts,
# and reports the Qt binding, every warning and every notification (toast) of the start.
_PROBE = r"""
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from napari.utils.notifications import notification_manager
    toasts = []
    notification_manager.notification_ready.connect(lambda n: toasts.append(str(n.message)))
    import napari, qtpy
    from qtpy.QtWidgets import QApplication
    viewer = napari.Viewer(show=True)
    for _ in range(20):
        QApplication.processEvents()
    viewer.close()
print(json.dumps({"api": qtpy.API_NAME, "pyqt5": "PyQt5" in sys.modules, "toasts": toasts,
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def test_pyqt5_is_not_installed():
    assert importlib.util.find_spec("PyQt5") is None, "PyQt5 is installed; napari-unet's extras use PyQt6"
    assert importlib.util.find_spec("PyQt6") is not None


def test_napari_starts_on_pyqt6_without_a_qt5_deprecation_warning():
    cmd = [sys.executable, "-c", _PROBE]
    if not os.environ.get("DISPLAY"):
        if not shutil.which("xvfb-run"):
            pytest.skip("no display and no xvfb-run to start napari's window")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("QT_API", "QT_QPA_PLATFORM")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["api"] == "PyQt6" and not report["pyqt5"], report
    said = " ".join(report["toasts"] + report["warnings"]) + out.stderr
    for phrase in ("PyQt5", "Qt5", "backend is deprecated"):
        assert phrase not in said, f"napari's start mentions {phrase!r}: {said[-2000:]}"
