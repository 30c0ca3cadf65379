"""Start-up: time of `import napari_unet` (and of its widget modules) in a fresh interpreter,
and proof that none of them imports TensorFlow or Keras.

napari imports every plugin's package while it starts, so this import must stay cheap; TensorFlow
(about 3 s) loads only when training or prediction starts. `import tensorflow` is timed the same
way for comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from benchmarks._common import REPO, Report, bench_main, median

MANIFEST = REPO / "napari_unet" / "napari.yaml"
HEAVY = ("tensorflow", "keras")

_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
for name in sys.argv[1].split(","):
    __import__(name)
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def time_import(modules: Sequence[str]) -> tuple[float, list[str]]:
    """Seconds to import `modules` in a fresh interpreter and the TensorFlow/Keras modules it loaded."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(modules)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"importing {modules} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), list(result["heavy"])


def manifest_modules() -> list[str]:
    """Modules napari imports for this plugin's widgets and sample data (from the npe2 manifest)."""
    import yaml

    commands = yaml.safe_load(MANIFEST.read_text()).get("contributions", {}).get("commands", [])
    names = sorted({c["python_name"].split(":")[0] for c in commands if "python_name" in c})
    return [n for n in names if _exists(n)]


def _exists(name: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def run(quick: bool = False) -> Report:
    """Import time of napari_unet and its widgets in fresh interpreters; TensorFlow must stay unloaded."""
    report = Report("startup")
    repeats = 2 if quick else 5
    cases = [("import napari_unet", ["napari_unet"])]
    plugin_modules = manifest_modules()
    if plugin_modules:
        cases.append((f"import widget + sample modules ({len(plugin_modules)})", plugin_modules))
        report.note("modules from napari.yaml: " + ", ".join(plugin_modules))
    else:
        report.note("no widget modules found yet; only the package import was timed")
    no_tf = True
    package_time = None
    for label, modules in cases:
        times, heavy = [], []
        for _ in range(repeats):
            seconds, heavy = time_import(modules)
            times.append(seconds)
        report.add(f"{label}: time (median of {repeats})", median(times) * 1000, "ms")
        package_time = median(times) if package_time is None else package_time
        report.add(f"{label}: TensorFlow/Keras modules loaded", len(heavy), "", "<= 0", ", ".join(heavy[:5]))
        no_tf &= not heavy
    tf_times = [time_import(["tensorflow"])[0] for _ in range(1 if quick else 3)]
    report.add(f"import tensorflow, for comparison (median of {len(tf_times)})", median(tf_times), "s")
    report.add("import napari_unet / import tensorflow", package_time / median(tf_times))
    report.note("TensorFlow is " + ("not imported" if no_tf else "IMPORTED") + " by these imports.")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("startup", run, argv)


if __name__ == "__main__":
    sys.exit(main())
